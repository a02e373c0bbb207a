//! `image load` of hostile archives (issue 12): a member used as config or layer that is a link
//! to a host file, a `..` path, a hardlink out of the archive. Each is refused with a clear
//! error, the host file's content never reaches the store, and a failed load leaves no blob,
//! layer or temporary file behind. Real files, real `openat2`, as root.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::oci::{Entry, sha256, tar_entries};
use dcpp_runtime::image::ImageStore;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: ImageStore,
    /// A root-only host file the archives try to reach.
    secret: PathBuf,
    secret_bytes: Vec<u8>,
    /// A valid layer tar lying on the host, outside any archive.
    host_tar: PathBuf,
    host_tar_bytes: Vec<u8>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::Builder::new()
        .prefix("dcpp-ah-")
        .tempdir()
        .unwrap();
    let root = tmp.path().to_path_buf();
    let store = ImageStore::open(&root.join("images")).unwrap();
    let secret = root.join("secret.json");
    // Valid JSON, so that reading it is the only thing standing between it and the store.
    let secret_bytes = br#"{"rpc_token":"host-secret-4b1d"}"#.to_vec();
    fs::write(&secret, &secret_bytes).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let host_tar_bytes = tar_entries(&[
        Entry::Dir("etc/"),
        Entry::File("etc/from-the-host", b"host layer"),
    ]);
    let host_tar = root.join("host-layer.tar");
    fs::write(&host_tar, &host_tar_bytes).unwrap();
    Fixture {
        _tmp: tmp,
        root,
        store,
        secret,
        secret_bytes,
        host_tar,
        host_tar_bytes,
    }
}

fn good_layer() -> Vec<u8> {
    tar_entries(&[Entry::Dir("etc/"), Entry::File("etc/motd", b"hi")])
}

fn config_for(diff_ids: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|t| sha256(t)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap()
}

fn manifest(config: &str, layers: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([{
        "Config": config, "RepoTags": ["hostile:latest"], "Layers": layers}]))
    .unwrap()
}

impl Fixture {
    fn write_tar(&self, name: &str, tar: Vec<u8>) -> PathBuf {
        let p = self.root.join(name);
        fs::write(&p, tar).unwrap();
        p
    }

    fn listing(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.store.root().join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The load fails with an error containing `expect`; the store is as before, holds no byte
    /// of the host files, and has no temporary files.
    fn assert_refused(&self, archive: &Path, expect: &str) {
        let blobs = self.listing("blobs/sha256");
        let layers = self.listing("layers");
        let err = self
            .store
            .load(archive)
            .expect_err("a hostile archive must not load")
            .to_string();
        assert!(err.contains(expect), "error {err:?} lacks {expect:?}");
        assert_eq!(self.listing("blobs/sha256"), blobs, "blobs left behind");
        assert_eq!(self.listing("layers"), layers, "layers left behind");
        assert_eq!(self.listing("tmp"), Vec::<String>::new(), "temp files left");
        assert!(
            self.store.list().unwrap().is_empty(),
            "an image was recorded"
        );
        for b in self.listing("blobs/sha256") {
            let bytes = fs::read(self.store.root().join("blobs/sha256").join(&b)).unwrap();
            assert_ne!(bytes, self.secret_bytes, "the host secret is in the store");
            assert_ne!(bytes, self.host_tar_bytes, "the host tar is in the store");
        }
        assert!(
            !self.store.root().join("layers").exists()
                || walk_has(&self.store.root().join("layers"), "from-the-host").is_none(),
            "the host tar was unpacked"
        );
    }
}

fn walk_has(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir()
            && let Some(f) = walk_has(&p, name)
        {
            return Some(f);
        }
    }
    None
}

#[test]
fn a_config_member_linking_to_a_host_file_is_refused() {
    let f = fixture();
    let layer = good_layer();
    let secret = f.secret.to_str().unwrap().to_string();
    let climbing = format!("../../../../../../../..{secret}");
    for (i, target) in [secret.as_str(), climbing.as_str()].into_iter().enumerate() {
        let tar = tar_entries(&[
            Entry::File("manifest.json", &manifest("cfg.json", &["l1/layer.tar"])),
            Entry::Symlink("cfg.json", target),
            Entry::Dir("l1/"),
            Entry::File("l1/layer.tar", &layer),
        ]);
        let archive = f.write_tar(&format!("cfg-link-{i}.tar"), tar);
        f.assert_refused(&archive, "leading outside the archive");
    }

    // The same as a directory handed to `image load`.
    let dir = f.root.join("cfg-link-dir");
    fs::create_dir_all(dir.join("l1")).unwrap();
    fs::write(
        dir.join("manifest.json"),
        manifest("cfg.json", &["l1/layer.tar"]),
    )
    .unwrap();
    std::os::unix::fs::symlink(&f.secret, dir.join("cfg.json")).unwrap();
    fs::write(dir.join("l1/layer.tar"), &layer).unwrap();
    f.assert_refused(&dir, "leading outside the archive");
}

#[test]
fn a_layer_member_linking_to_a_host_tar_is_refused() {
    let f = fixture();
    // The config names the host tar's diff id, so following the link would load it.
    let cfg = config_for(&[&f.host_tar_bytes]);
    let host_tar = f.host_tar.to_str().unwrap().to_string();
    let tar = tar_entries(&[
        Entry::File("manifest.json", &manifest("cfg.json", &["l1/layer.tar"])),
        Entry::File("cfg.json", &cfg),
        Entry::Dir("l1/"),
        Entry::Symlink("l1/layer.tar", &host_tar),
    ]);
    let archive = f.write_tar("layer-link.tar", tar);
    f.assert_refused(&archive, "leading outside the archive");

    // An OCI layout whose layer blob is a link to the host tar (its digest matches).
    let mut layout = common::oci::Layout::new(&f.root.join("layout"));
    let built = layout.add_image(
        &[(f.host_tar_bytes.clone(), common::oci::Comp::None)],
        serde_json::json!({"Cmd": ["sh"]}),
        (
            dcpp_runtime::image::Platform::current()
                .architecture
                .as_str(),
            None,
        ),
    );
    layout.tag(&built.descriptor, "hostile");
    let blob = layout
        .dir
        .join("blobs/sha256")
        .join(&built.layer_digests[0][7..]);
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&f.host_tar, &blob).unwrap();
    f.assert_refused(&layout.dir, "leading outside the archive");
}

#[test]
fn dotdot_paths_and_hardlinks_out_of_the_archive_are_refused() {
    let f = fixture();
    let layer = good_layer();
    let cfg = config_for(&[&layer]);
    // A member name that climbs out.
    let tar = tar_entries(&[
        Entry::File("manifest.json", &manifest("cfg.json", &["../l1/layer.tar"])),
        Entry::File("cfg.json", &cfg),
    ]);
    let archive = f.write_tar("dotdot.tar", tar);
    f.assert_refused(&archive, "leaves the archive");

    // Hardlink members naming a host file, by absolute and by climbing path.
    let secret = f.secret.to_str().unwrap().to_string();
    let climbing = format!("../../../../../../..{secret}");
    for (i, target) in [secret.as_str(), climbing.as_str()].into_iter().enumerate() {
        let tar = tar_entries(&[
            Entry::File("manifest.json", &manifest("cfg.json", &["l1/layer.tar"])),
            Entry::Hardlink("cfg.json", target),
            Entry::Dir("l1/"),
            Entry::File("l1/layer.tar", &layer),
        ]);
        let archive = f.write_tar(&format!("hardlink-{i}.tar"), tar);
        f.assert_refused(&archive, "hardlink");
    }
}

#[test]
fn a_load_failing_at_its_second_layer_leaves_nothing_behind() {
    let f = fixture();
    let (l1, l2) = (good_layer(), f.host_tar_bytes.clone());
    let cfg = config_for(&[&l1, &l2]);
    let host_tar = f.host_tar.to_str().unwrap().to_string();
    let tar = tar_entries(&[
        Entry::File(
            "manifest.json",
            &manifest("cfg.json", &["l1/layer.tar", "l2/layer.tar"]),
        ),
        Entry::File("cfg.json", &cfg),
        Entry::Dir("l1/"),
        Entry::File("l1/layer.tar", &l1),
        Entry::Dir("l2/"),
        Entry::Symlink("l2/layer.tar", &host_tar),
    ]);
    let archive = f.write_tar("second-bad.tar", tar);
    f.assert_refused(&archive, "leading outside the archive");
    assert!(f.listing("blobs/sha256").is_empty());
    assert!(f.listing("layers").is_empty());
}

#[test]
fn links_between_members_inside_the_archive_still_load() {
    // Older `docker save` writes a layer shared by two v1 ids once and links the other to it.
    let f = fixture();
    let layer = good_layer();
    let cfg = config_for(&[&layer, &layer]);
    let tar = tar_entries(&[
        Entry::File(
            "manifest.json",
            &manifest("cfg.json", &["l1/layer.tar", "l2/layer.tar"]),
        ),
        Entry::File("cfg.json", &cfg),
        Entry::Dir("l1/"),
        Entry::File("l1/layer.tar", &layer),
        Entry::Dir("l2/"),
        Entry::Symlink("l2/layer.tar", "../l1/layer.tar"),
    ]);
    let archive = f.write_tar("shared.tar", tar);
    let imgs = f.store.load(&archive).unwrap();
    assert_eq!(imgs.len(), 1);
    let dirs = imgs[0].layer_dirs();
    assert_eq!(fs::read(dirs[0].join("etc/motd")).unwrap(), b"hi");
    assert!(f.listing("tmp").is_empty());
}
