//! Pull and push against a real registry (Debian's docker-registry on 127.0.0.1, started per
//! test) with images built here from busybox-static; nothing is downloaded.

mod common;

use std::fs;
use std::sync::{Arc, Mutex};

use common::oci::{Comp, Entry, Layout, tar_dir, tar_entries};
use common::registry::{Registry, RegistryOptions as RegOpts, skopeo_copy};
use dcpp_runtime::image::registry::{
    Progress, ProgressFn, PullOptions, RegistryClient, RegistryOptions, progress_channel,
};
use dcpp_runtime::image::{ImageError, ImageStore, Platform};
use serde_json::json;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("dcpp-pull-")
                .tempdir()
                .unwrap(),
        }
    }
    fn store(&self, name: &str) -> ImageStore {
        ImageStore::open(&self.dir.path().join(name).join("images")).unwrap()
    }
    fn client(&self, store: &ImageStore) -> RegistryClient {
        RegistryClient::new(store.clone(), anon())
    }
}

fn anon() -> RegistryOptions {
    RegistryOptions {
        auth_file: None,
        ..Default::default()
    }
}

fn platform(arch: &str, variant: Option<&str>) -> Platform {
    Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: variant.map(Into::into),
        os_version: None,
    }
}

fn recorder() -> (ProgressFn, Arc<Mutex<Vec<Progress>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e2 = events.clone();
    (Arc::new(move |p| e2.lock().unwrap().push(p)), events)
}

/// Stores hold no leftovers after a failed pull: no layers, no temp files, no image.
fn assert_clean_after_failure(store: &ImageStore) {
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        0
    );
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_by_tag_and_by_digest() {
    let reg = Registry::start();
    let env = Env::new();
    let src = env.store("src");
    let rootfs = common::busybox::rootfs_tempdir();
    let reference = format!("{}/test/busybox:1", reg.addr);
    let local = src.import_rootfs(rootfs.path(), &reference).unwrap();

    let (pf, events) = recorder();
    let manifest_digest = env
        .client(&src)
        .push(&reference, None, Some(pf))
        .await
        .unwrap();
    assert_eq!(manifest_digest, local.manifest_digest);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Progress::Done { .. }))
    );

    // Pushing again uploads nothing: every blob already exists.
    let (pf, events) = recorder();
    env.client(&src)
        .push(&reference, None, Some(pf))
        .await
        .unwrap();
    {
        let ev = events.lock().unwrap();
        assert!(ev.iter().any(|e| matches!(e, Progress::Exists { .. })));
        assert!(!ev.iter().any(|e| matches!(e, Progress::Bytes { .. })));
    }

    let dst = env.store("dst");
    let pulled = env.client(&dst).pull(&reference, None).await.unwrap();
    assert_eq!(pulled.id, local.id);
    assert_eq!(pulled.manifest_digest, local.manifest_digest);
    assert_eq!(pulled.references, vec![reference.clone()]);
    let layer = &pulled.layer_dirs()[0];
    assert_eq!(
        fs::read(layer.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert!(
        dst.resolve(&format!("{}/test/busybox@{}", reg.addr, manifest_digest))
            .is_ok()
    );

    let by_digest = format!("{}/test/busybox@{}", reg.addr, manifest_digest);
    let dst2 = env.store("dst2");
    let pulled2 = env.client(&dst2).pull(&by_digest, None).await.unwrap();
    assert_eq!(pulled2.id, local.id);
    assert!(
        pulled2.references.is_empty(),
        "a digest pull creates no tag"
    );
    assert_eq!(dst2.resolve(&by_digest).unwrap().id, local.id);
}

/// One index with three platforms, each a different compression: gzip (amd64), zstd (arm64/v8)
/// and uncompressed (arm/v7); uploaded by skopeo so push is not tested against itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_selects_platform_and_handles_each_compression() {
    let reg = Registry::start();
    let env = Env::new();
    let bb = common::busybox::rootfs_tempdir();
    let base = tar_dir(bb.path());
    let mut layout = Layout::new(&env.dir.path().join("layout"));
    let mk = |arch: &str, variant: Option<&str>, c: Comp| {
        let marker = format!(
            "{arch}{}",
            variant.map(|v| format!("/{v}")).unwrap_or_default()
        );
        let top = tar_entries(&[
            Entry::Dir("etc/"),
            Entry::File("etc/arch", marker.as_bytes()),
        ]);
        layout.add_image(
            &[(base.clone(), c), (top, c)],
            json!({"Cmd": ["sh"], "Env": [format!("ARCH={marker}")]}),
            (arch, variant),
        )
    };
    let amd = mk("amd64", None, Comp::Gzip);
    let arm64 = mk("arm64", Some("v8"), Comp::Zstd);
    let arm7 = mk("arm", Some("v7"), Comp::None);
    let (_, idx) = layout.add_index(&[&amd, &arm64, &arm7]);
    layout.tag(&idx, "multi");
    skopeo_copy(
        &format!("oci:{}:multi", layout.dir.display()),
        &reg.docker_url("test/multi:1"),
        &["--multi-arch", "all", "--preserve-digests"],
    );
    let reference = format!("{}/test/multi:1", reg.addr);

    for (plat, built, marker) in [
        (platform("amd64", None), &amd, "amd64"),
        (platform("arm64", Some("v8")), &arm64, "arm64/v8"),
        (platform("arm", Some("v7")), &arm7, "arm/v7"),
    ] {
        let store = env.store(&format!("s-{}", marker.replace('/', "-")));
        let client = RegistryClient::new(
            store.clone(),
            RegistryOptions {
                platform: plat,
                ..anon()
            },
        );
        let img = client.pull(&reference, None).await.unwrap();
        assert_eq!(img.id.as_str(), built.config_digest, "{marker}");
        assert_eq!(img.manifest_digest.as_str(), built.manifest_digest);
        assert_eq!(img.config.env(), [format!("ARCH={marker}")]);
        let dirs = img.layer_dirs();
        assert_eq!(dirs.len(), 2);
        assert_eq!(
            fs::read_to_string(dirs[0].join("etc/arch")).unwrap(),
            marker
        );
        assert!(dirs[1].join("bin/busybox").is_file());
    }

    let store = env.store("s-armv6");
    let client = RegistryClient::new(
        store.clone(),
        RegistryOptions {
            platform: platform("arm", Some("v6")),
            ..anon()
        },
    );
    let err = client.pull(&reference, None).await.unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("arm/v7"),
        "lists what is available: {err}"
    );
    assert_clean_after_failure(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    let reg = Registry::start();
    let env = Env::new();
    let src = env.store("src");
    let rootfs = common::busybox::rootfs_tempdir();
    // Some incompressible bulk so the two pulls overlap in time.
    let mut bulk = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in bulk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(rootfs.path().join("bulk"), &bulk).unwrap();
    let reference = format!("{}/test/bulk:1", reg.addr);
    let local = src.import_rootfs(rootfs.path(), &reference).unwrap();
    env.client(&src).push(&reference, None, None).await.unwrap();

    let dst = env.store("dst");
    // Two handles on one store, as two processes would have.
    let dst2 = ImageStore::open(dst.root()).unwrap();
    let (c1, c2) = (env.client(&dst), env.client(&dst2));
    let (a, b) = tokio::join!(c1.pull(&reference, None), c2.pull(&reference, None));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, local.id);
    assert_eq!(b.id, local.id);
    let layer = &local.layers[0].digest;
    assert_eq!(
        reg.blob_gets(layer.as_str()),
        1,
        "layer fetched once:\n{}",
        reg.log()
    );
    assert_eq!(fs::read(a.layer_dirs()[0].join("bulk")).unwrap(), bulk);
    assert_eq!(dst.list().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_is_rejected_and_leaves_nothing() {
    let reg = Registry::start();
    let env = Env::new();
    let src = env.store("src");
    let rootfs = common::busybox::rootfs_tempdir();
    let reference = format!("{}/test/tamper:1", reg.addr);
    let local = src.import_rootfs(rootfs.path(), &reference).unwrap();
    env.client(&src).push(&reference, None, None).await.unwrap();

    // Flip bytes inside busybox's data in the registry's copy of the layer (same size).
    let data = reg.blob_data_path(local.layers[0].digest.as_str());
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    fs::write(&data, &bytes).unwrap();

    let dst = env.store("dst");
    let err = env.client(&dst).pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(local.layers[0].digest.as_str()),
        "{err}"
    );
    assert!(!dst.has_blob(&local.layers[0].digest));
    assert_clean_after_failure(&dst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_and_unreachable_registry_are_one_line_errors() {
    let reg = Registry::start();
    let env = Env::new();
    let store = env.store("s");
    let reference = format!("{}/test/none:nope", reg.addr);
    let err = env.client(&store).pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::RemoteNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&reference) && msg.contains(&reg.addr) && !msg.contains('\n'),
        "{msg}"
    );

    let port = common::registry::free_port();
    let reference = format!("127.0.0.1:{port}/x:1");
    let err = env.client(&store).pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_clean_after_failure(&store);
}

/// bcrypt of "secret" (cost 4), as htpasswd -B would write it.
const HTPASSWD: &str = "dcpp:$2b$04$t49h65mtYfMcE4poKgDRcepo.KIcVYStkP3mfRyy4GctH8o5dkrFi\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_uses_docker_config_credentials() {
    let reg = Registry::start_with(RegOpts {
        htpasswd: Some(HTPASSWD.into()),
        ..Default::default()
    });
    let env = Env::new();
    let src = env.store("src");
    let rootfs = common::busybox::rootfs_tempdir();
    let reference = format!("{}/private/bb:1", reg.addr);
    src.import_rootfs(rootfs.path(), &reference).unwrap();

    let err = env
        .client(&src)
        .push(&reference, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");

    let cfg = env.dir.path().join("docker-config.json");
    let wrong = env.dir.path().join("wrong.json");
    // base64("dcpp:secret") and base64("dcpp:wrong")
    fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"ZGNwcDpzZWNyZXQ="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    fs::write(
        &wrong,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"ZGNwcDp3cm9uZw=="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let with = |store: &ImageStore, file: &std::path::Path| {
        RegistryClient::new(
            store.clone(),
            RegistryOptions {
                auth_file: Some(file.to_path_buf()),
                ..Default::default()
            },
        )
    };
    with(&src, &cfg).push(&reference, None, None).await.unwrap();

    let dst = env.store("dst");
    let err = with(&dst, &wrong).pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");
    let img = with(&dst, &cfg).pull(&reference, None).await.unwrap();
    assert!(img.layer_dirs()[0].join("bin/busybox").is_file());
}

/// skopeo converts to Docker schema 2: a manifest list over Docker v2 manifests with
/// `rootfs.diff.tar.gzip` layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_v2_manifest_list_is_pulled() {
    let reg = Registry::start();
    let env = Env::new();
    let bb = common::busybox::rootfs_tempdir();
    let mut layout = Layout::new(&env.dir.path().join("layout"));
    let here = Platform::current();
    let mine = layout.add_image(
        &[(tar_dir(bb.path()), Comp::Gzip)],
        json!({"Cmd": ["sh"]}),
        (here.architecture.as_str(), here.variant.as_deref()),
    );
    let other = layout.add_image(
        &[(tar_entries(&[Entry::File("other", b"o")]), Comp::Gzip)],
        json!({}),
        ("s390x", None),
    );
    let (_, idx) = layout.add_index(&[&other, &mine]);
    layout.tag(&idx, "v2");
    skopeo_copy(
        &format!("oci:{}:v2", layout.dir.display()),
        &reg.docker_url("test/v2:1"),
        &["--multi-arch", "all", "--format", "v2s2"],
    );
    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(reg.docker_url("test/v2:1"))
        .output()
        .unwrap();
    assert!(raw.status.success());
    let body = raw.stdout;
    let top: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        top["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );

    let store = env.store("s");
    let img = env
        .client(&store)
        .pull(&format!("{}/test/v2:1", reg.addr), None)
        .await
        .unwrap();
    let rec = store.record(&img.id).unwrap();
    assert_eq!(
        rec.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        rec.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(img.config.cmd(), ["sh"]);
    assert!(img.layer_dirs()[0].join("bin/busybox").is_file());
    // The list digest is recorded, so the image resolves by it.
    assert_eq!(img.repo_digests.len(), 2, "{:?}", img.repo_digests);
}

/// The progress API as an async consumer (the node agent) uses it: events through a channel,
/// per-layer byte counts that reach the manifest's size; and a pull without unpacking, whose
/// layers `ensure_unpacked` unpacks later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_progress_channel_and_pull_without_unpack() {
    let reg = Registry::start();
    let env = Env::new();
    let src = env.store("src");
    let rootfs = common::busybox::rootfs_tempdir();
    let reference = format!("{}/test/progress:1", reg.addr);
    let local = src.import_rootfs(rootfs.path(), &reference).unwrap();
    env.client(&src).push(&reference, None, None).await.unwrap();

    let dst = env.store("dst");
    let (progress, mut rx) = progress_channel();
    let consumer = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(p) = rx.recv().await {
            events.push(p);
        }
        events
    });
    let opts = PullOptions {
        unpack: false,
        progress: Some(progress),
    };
    let img = env.client(&dst).pull_with(&reference, opts).await.unwrap();
    let events = consumer.await.unwrap();
    let layer = &local.layers[0];
    assert_eq!(
        events.first(),
        Some(&Progress::Started {
            reference: reference.clone(),
            layers: vec![(layer.digest.clone(), layer.size)],
        })
    );
    let mut last = 0;
    let mut sum = 0;
    for e in &events {
        if let Progress::Bytes {
            digest,
            bytes,
            done,
            total,
        } = e
        {
            assert_eq!(digest, &layer.digest);
            assert_eq!(*total, layer.size);
            assert_eq!(*done, last + bytes, "done is cumulative");
            last = *done;
            sum += bytes;
        }
    }
    assert_eq!((last, sum), (layer.size, layer.size), "{events:?}");
    assert_eq!(
        events.last(),
        Some(&Progress::Done {
            digest: layer.digest.clone()
        })
    );
    // Blobs verified and stored, nothing unpacked yet.
    assert!(dst.has_blob(&layer.digest));
    assert!(!img.layer_dirs()[0].exists());
    dst.ensure_unpacked(&img).unwrap();
    assert_eq!(
        fs::read(img.layer_dirs()[0].join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    // A second pull finds everything: one Exists, no bytes.
    let (progress, events) = recorder();
    env.client(&dst)
        .pull(&reference, Some(progress))
        .await
        .unwrap();
    let ev = events.lock().unwrap();
    assert!(ev.contains(&Progress::Exists {
        digest: layer.digest.clone()
    }));
    assert!(!ev.iter().any(|e| matches!(e, Progress::Bytes { .. })));
}

/// `credHelpers` / `credsStore` in a Docker config: real helper executables (shell scripts in
/// a temp dir put first on PATH) speaking docker's protocol. Each case pulls in a child
/// process (this test binary re-run) so PATH is changed for it alone.
#[test]
fn credential_helpers_and_creds_store_from_docker_config() {
    const CHILD: &str = "DCPP_TEST_CREDS_CHILD";
    if let Ok(spec) = std::env::var(CHILD) {
        // "<config> <store root> <reference>"; prints the outcome for the parent.
        let v: Vec<&str> = spec.split(' ').collect();
        let store = ImageStore::open(std::path::Path::new(v[1])).unwrap();
        let client = RegistryClient::new(
            store,
            RegistryOptions {
                auth_file: Some(v[0].into()),
                ..Default::default()
            },
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        match rt.block_on(client.pull(v[2], None)) {
            Ok(img) => println!("RESULT ok {}", img.id),
            Err(e) => println!("RESULT err {e}"),
        }
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let reg = Registry::start_with(RegOpts {
        htpasswd: Some(HTPASSWD.into()),
        ..Default::default()
    });
    let env = Env::new();
    let src = env.store("src");
    let rootfs = common::busybox::rootfs_tempdir();
    let reference = format!("{}/private/helper:1", reg.addr);
    let local = src.import_rootfs(rootfs.path(), &reference).unwrap();
    let basic = env.dir.path().join("basic.json");
    fs::write(
        &basic,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"ZGNwcDpzZWNyZXQ="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(
        RegistryClient::new(
            src.clone(),
            RegistryOptions {
                auth_file: Some(basic),
                ..Default::default()
            },
        )
        .push(&reference, None, None),
    )
    .unwrap();

    let bin = env.dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = env.dir.path().join("helper.log");
    let helper = |name: &str, body: &str| {
        let p = bin.join(format!("docker-credential-{name}"));
        fs::write(
            &p,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r server\n\
                 echo \"{name} $server\" >> {}\n{body}\n",
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    helper(
        "good",
        r#"printf '{"ServerURL":"%s","Username":"dcpp","Secret":"secret"}' "$server""#,
    );
    helper(
        "wrong",
        r#"printf '{"ServerURL":"%s","Username":"dcpp","Secret":"wrong"}' "$server""#,
    );
    helper(
        "none",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    helper("broken", "echo 'keychain locked' >&2; exit 2");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut n = 0;
    let mut pull = |config: String| -> String {
        n += 1;
        let cfg = env.dir.path().join(format!("config-{n}.json"));
        fs::write(&cfg, config).unwrap();
        let store = env.dir.path().join(format!("dst-{n}"));
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "credential_helpers_and_creds_store_from_docker_config",
                "--nocapture",
            ])
            .env(
                CHILD,
                format!("{} {} {reference}", cfg.display(), store.display()),
            )
            .env("PATH", &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("child said nothing: {out:?}"))
            .to_string()
    };
    let addr = &reg.addr;
    let ok = format!("ok {}", local.id);

    // credHelpers wins over credsStore (whose helper does not even exist).
    assert_eq!(
        pull(format!(
            r#"{{"credsStore":"absent","credHelpers":{{"{addr}":"good"}}}}"#
        )),
        ok
    );
    // credsStore serves every registry; an `auths` entry is only its marker.
    assert_eq!(
        pull(format!(
            r#"{{"credsStore":"good","auths":{{"{addr}":{{}}}}}}"#
        )),
        ok
    );
    // The helper was asked for this registry's host, once per pull.
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!("good {addr}\ngood {addr}\n")
    );
    // Refused credentials: a one-line auth error naming the reference and registry.
    let wrong = pull(format!(r#"{{"credHelpers":{{"{addr}":"wrong"}}}}"#));
    assert!(wrong.starts_with("err "), "{wrong}");
    assert!(
        wrong.contains(&reference) && wrong.contains(addr),
        "{wrong}"
    );
    // No credentials stored: anonymous, which this registry refuses.
    let none = pull(format!(r#"{{"credHelpers":{{"{addr}":"none"}}}}"#));
    assert!(
        none.starts_with("err ") && none.contains(&reference),
        "{none}"
    );
    // A failing or missing helper is a credentials error naming it, not anonymous access.
    let broken = pull(format!(r#"{{"credHelpers":{{"{addr}":"broken"}}}}"#));
    assert!(
        broken.contains("docker-credential-broken") && broken.contains("keychain locked"),
        "{broken}"
    );
    let missing = pull(r#"{"credsStore":"nosuch"}"#.to_string());
    assert!(
        missing.contains("docker-credential-nosuch") && missing.contains("not found on PATH"),
        "{missing}"
    );
}
