//! Image store against the real filesystem and kernel (as root): import, resolve, holders,
//! rm/prune, and safe unpacking of hostile or whiteout-carrying layers via `image load`-free
//! paths (a layer tar imported directly).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::oci::{Entry, tar_entries};
use dcpp_runtime::image::{ImageError, ImageStore, Platform, get_xattr};

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::Builder::new()
        .prefix("dcpp-store-")
        .tempdir()
        .unwrap();
    let s = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, s)
}

#[test]
fn import_directory_resolves_by_name_id_and_prefix() {
    let (_d, s) = store();
    let rootfs = common::busybox::rootfs_tempdir();
    let img = s.import_rootfs(rootfs.path(), "busybox").unwrap();
    assert_eq!(img.references, vec!["docker.io/library/busybox:latest"]);
    for r in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox",
        img.id.as_str(),
        img.id.short(),
        &img.id.hex()[..6],
    ] {
        assert_eq!(s.resolve(r).unwrap().id, img.id, "resolve {r}");
    }
    assert!(matches!(
        s.resolve("busybox:nope"),
        Err(ImageError::NotFound(_))
    ));
    let dirs = img.layer_dirs();
    assert_eq!(dirs.len(), 1);
    let bb = dirs[0].join("bin/busybox");
    assert_eq!(
        fs::metadata(&bb).unwrap().len(),
        fs::metadata("/bin/busybox").unwrap().len()
    );
    assert_eq!(fs::metadata(&bb).unwrap().mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::metadata(dirs[0].join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(img.config.os, "linux");
    assert_eq!(img.config.rootfs.diff_ids.len(), 1);

    // A second store handle (as another process would open it) sees the same image.
    let s2 = ImageStore::open(s.root()).unwrap();
    assert_eq!(s2.resolve("busybox").unwrap().id, img.id);
}

#[test]
fn shared_layers_refcounted_by_images_and_holders() {
    let (_d, s) = store();
    let rootfs = common::busybox::rootfs_tempdir();
    let tar = rootfs.path().with_extension("tar");
    fs::write(&tar, common::oci::tar_dir(rootfs.path())).unwrap();
    let a = s.import_rootfs(&tar, "a:1").unwrap();
    let cfg = dcpp_runtime::image::ContainerConfig {
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let b = s.import_rootfs_with_config(&tar, "b:1", cfg).unwrap();
    fs::remove_file(&tar).unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(b.config.cmd(), ["sh"]);
    assert_eq!(
        a.layer_dirs(),
        b.layer_dirs(),
        "one unpacked dir shared by both images"
    );
    assert_eq!(fs::read_dir(s.root().join("layers")).unwrap().count(), 1);
    let layer = a.layer_dirs()[0].clone();

    // A container holding b keeps it (and the layer) from removal.
    s.add_holder(&b.id, "ctr-1").unwrap();
    let err = s.remove("b:1").unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("ctr-1"));
    let pruned = s.prune(true).unwrap();
    assert_eq!(pruned.images_deleted, vec![a.id.clone()]);
    assert!(layer.is_dir(), "layer still used by held image b");
    assert!(s.resolve("b:1").is_ok());
    assert!(matches!(s.resolve("a:1"), Err(ImageError::NotFound(_))));

    s.remove_holder(&b.id, "ctr-1").unwrap();
    s.remove_holder(&b.id, "ctr-1").unwrap(); // idempotent
    let rep = s.remove("b:1").unwrap();
    assert_eq!(rep.deleted, vec![b.id.clone()]);
    assert!(!layer.exists(), "last image gone, layer freed");
    assert_eq!(
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(),
        0
    );
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn removing_one_of_two_tags_only_untags() {
    let (_d, s) = store();
    let rootfs = common::busybox::rootfs_tempdir();
    let img = s.import_rootfs(rootfs.path(), "x:1").unwrap();
    s.tag("x:1", "y:2").unwrap();
    let rep = s.remove("x:1").unwrap();
    assert_eq!(rep.untagged, vec!["docker.io/library/x:1"]);
    assert!(rep.deleted.is_empty());
    assert_eq!(s.resolve("y:2").unwrap().id, img.id);
    assert!(img.layer_dirs()[0].is_dir());
}

/// Import a hand-made layer tar into a fresh store and return the unpack result.
fn import_tar(s: &ImageStore, tar: &[u8]) -> Result<std::path::PathBuf, ImageError> {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), tar).unwrap();
    s.import_rootfs(f.path(), "t:1")
        .map(|i| i.layer_dirs()[0].clone())
}

#[test]
fn path_escape_is_rejected_and_leaves_nothing() {
    let (d, s) = store();
    let victim = d.path().join("victim");
    let tar = tar_entries(&[
        Entry::Dir("a/"),
        Entry::File("../../../../../../victim", b"pwned"),
    ]);
    let err = import_tar(&s, &tar).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeLayer { .. }), "{err}");
    assert!(err.to_string().contains("escapes the layer root"), "{err}");
    assert!(!victim.exists());
    assert_eq!(fs::read_dir(s.root().join("layers")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn absolute_paths_and_symlink_escapes_are_contained() {
    let (d, s) = store();
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_s = outside.to_str().unwrap().to_string();
    let tar = tar_entries(&[
        // Absolute entry: re-rooted.
        Entry::File("/etc/abs", b"abs"),
        // Symlink to an absolute host dir, then a file written "through" it.
        Entry::Symlink("esc", &outside_s),
        Entry::File("esc/through-abs", b"x"),
        // Relative symlink climbing out, then a file through it.
        Entry::Symlink("up", "../../../../../.."),
        Entry::File("up/through-rel", b"y"),
        // Hardlink to a file outside the root is refused below; a contained one works.
        Entry::File("data", b"d"),
        Entry::Hardlink("data-link", "data"),
        Entry::CharDev("dev-null"),
    ]);
    let layer = import_tar(&s, &tar).unwrap();
    assert_eq!(fs::read(layer.join("etc/abs")).unwrap(), b"abs");
    // The link is kept verbatim (it only resolves inside a container) ...
    assert_eq!(fs::read_link(layer.join("esc")).unwrap(), outside);
    // ... but what was written through it landed inside the layer.
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing escaped"
    );
    assert_eq!(
        fs::read(
            layer
                .join(outside.strip_prefix("/").unwrap())
                .join("through-abs")
        )
        .unwrap(),
        b"x"
    );
    assert_eq!(fs::read(layer.join("through-rel")).unwrap(), b"y");
    assert_eq!(
        fs::metadata(layer.join("data")).unwrap().ino(),
        fs::metadata(layer.join("data-link")).unwrap().ino()
    );
    assert!(
        fs::symlink_metadata(layer.join("dev-null")).is_err(),
        "device nodes skipped"
    );
}

/// A directory replaced by an escaping symlink in the same layer: files after the swap go
/// through the new link, which must still resolve inside the layer (the unpacker reuses the
/// parent directory it resolved for the previous entry).
#[test]
fn directory_replaced_by_symlink_mid_layer_stays_contained() {
    let (d, s) = store();
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_s = outside.to_str().unwrap().to_string();
    let tar = tar_entries(&[
        Entry::Dir("a/"),
        Entry::Dir("a/b/"),
        Entry::File("a/b/first", b"1"),
        Entry::Symlink("a", &outside_s),
        Entry::File("a/b/second", b"2"),
    ]);
    let layer = import_tar(&s, &tar).unwrap();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing escaped"
    );
    assert_eq!(fs::read_link(layer.join("a")).unwrap(), outside);
    let inside = layer.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("b/second")).unwrap(), b"2");
}

#[test]
fn hardlink_outside_root_is_rejected() {
    let (_d, s) = store();
    for target in ["../../etc/passwd", "/etc/passwd"] {
        let tar = tar_entries(&[Entry::Hardlink("pw", target)]);
        let err = import_tar(&s, &tar).unwrap_err();
        assert!(
            matches!(err, ImageError::UnsafeLayer { .. }),
            "{target}: {err}"
        );
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_hide_lower_files() {
    let (d, s) = store();
    let lower = tar_entries(&[
        Entry::Dir("keep/"),
        Entry::File("keep/a", b"a"),
        Entry::File("gone", b"g"),
        Entry::Dir("opq/"),
        Entry::File("opq/old", b"o"),
    ]);
    let upper = tar_entries(&[
        Entry::File(".wh.gone", b""),
        Entry::Dir("opq/"),
        Entry::File("opq/.wh..wh..opq", b""),
        Entry::File("opq/new", b"n"),
    ]);
    let lower_dir = import_tar(&s, &lower).unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), &upper).unwrap();
    let upper_dir = s.import_rootfs(f.path(), "u:1").unwrap().layer_dirs()[0].clone();

    let wh = fs::symlink_metadata(upper_dir.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        get_xattr(&upper_dir.join("opq"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(!upper_dir.join("opq/.wh..wh..opq").exists());

    // Mount them as a real overlay and look at the merged view.
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let opts = format!("lowerdir={}:{}", upper_dir.display(), lower_dir.display());
    nix::mount::mount(
        Some("overlay"),
        &mnt,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("mount overlay (tests run as root)");
    let seen = (
        mnt.join("keep/a").exists(),
        mnt.join("gone").exists(),
        mnt.join("opq/old").exists(),
        mnt.join("opq/new").exists(),
    );
    nix::mount::umount(&mnt).unwrap();
    assert_eq!(seen, (true, false, false, true));
}

#[test]
fn load_oci_layout_directory_and_docker_save_tar() {
    let (d, s) = store();
    let bb = common::busybox::rootfs_tempdir();
    let base = common::oci::tar_dir(bb.path());
    let top = tar_entries(&[Entry::Dir("etc/"), Entry::File("etc/motd", b"hi")]);

    // OCI layout, gzip layers, named with containerd's annotation.
    let mut layout = common::oci::Layout::new(&d.path().join("layout"));
    let built = layout.add_image(
        &[
            (base.clone(), common::oci::Comp::Gzip),
            (top.clone(), common::oci::Comp::Zstd),
        ],
        serde_json::json!({"Cmd": ["sh"]}),
        (Platform::current().architecture.as_str(), None),
    );
    let mut desc = built.descriptor.clone();
    desc["annotations"] = serde_json::json!({"io.containerd.image.name": "example.com/app:2"});
    layout.tag(&desc, "unused");
    let imgs = s.load(&layout.dir).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].id.as_str(), built.config_digest);
    assert_eq!(s.resolve("example.com/app:2").unwrap().id, imgs[0].id);
    let dirs = imgs[0].layer_dirs();
    assert_eq!(fs::read(dirs[0].join("etc/motd")).unwrap(), b"hi");
    assert!(dirs[1].join("bin/busybox").is_file());

    // docker save (legacy layout: <id>/layer.tar, config json, manifest.json), as a tar file.
    let save = d.path().join("save");
    fs::create_dir_all(save.join("l1")).unwrap();
    fs::create_dir_all(save.join("l2")).unwrap();
    fs::write(save.join("l1/layer.tar"), &base).unwrap();
    fs::write(save.join("l2/layer.tar"), &top).unwrap();
    let cfg = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["echo", "saved"], "Env": null},
        "rootfs": {"type": "layers", "diff_ids": [
            common::oci::sha256(&base), common::oci::sha256(&top)]},
    });
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_name = format!("{}.json", &common::oci::sha256(&cfg_bytes)[7..]);
    fs::write(save.join(&cfg_name), &cfg_bytes).unwrap();
    fs::write(
        save.join("manifest.json"),
        serde_json::to_vec(&serde_json::json!([{
            "Config": cfg_name, "RepoTags": ["saved:latest"],
            "Layers": ["l1/layer.tar", "l2/layer.tar"]}]))
        .unwrap(),
    )
    .unwrap();
    let tarfile = d.path().join("save.tar");
    fs::write(&tarfile, common::oci::tar_dir(&save)).unwrap();
    let imgs = s.load(&tarfile).unwrap();
    assert_eq!(imgs.len(), 1);
    let img = s.resolve("saved").unwrap();
    assert_eq!(img.id, imgs[0].id);
    assert_eq!(img.config.cmd(), ["echo", "saved"]);
    // The base layer is shared with the OCI-layout image: unpacked once.
    assert_eq!(img.layer_dirs()[1], dirs[1]);
    assert_eq!(fs::read_dir(s.root().join("layers")).unwrap().count(), 2);
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);

    // Something that is neither is a clear error.
    let err = s.load(bb.path()).unwrap_err();
    assert!(err.to_string().contains("neither an OCI layout"), "{err}");
}

#[test]
fn ownership_modes_and_xattrs_are_kept() {
    let (_d, s) = store();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.dcpp", b"kept".as_slice())])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(2);
    h.set_mode(0o4750);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mtime(1_000_000_000);
    b.append_data(&mut h, "suid", b"hi".as_slice()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o700);
    h.set_uid(7);
    h.set_gid(8);
    h.set_mtime(1_100_000_000);
    b.append_data(&mut h, "private/", std::io::empty()).unwrap();
    let layer = import_tar(&s, &b.into_inner().unwrap()).unwrap();

    let m = fs::metadata(layer.join("suid")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 4321, 0o4750));
    assert_eq!(m.mtime(), 1_000_000_000);
    assert_eq!(
        get_xattr(&layer.join("suid"), "user.dcpp").unwrap(),
        Some(b"kept".to_vec())
    );
    let m = fs::metadata(layer.join("private")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 8, 0o700));
    assert_eq!(m.mtime(), 1_100_000_000);
}

/// The store caches the parsed `db.json` per process; another process changing it (here a
/// re-executed copy of this test binary) must be seen by the very next resolve, also when the
/// new file has the same size as the old one and may get the same inode number.
#[test]
fn resolve_sees_changes_made_by_other_processes() {
    const CHILD: &str = "DCPP_TEST_STORE_CHILD";
    if let Ok(spec) = std::env::var(CHILD) {
        // Child: "<root> <source> <target> <holder>"
        let v: Vec<&str> = spec.split(' ').collect();
        let s = ImageStore::open(Path::new(v[0])).unwrap();
        let img = s.tag(v[1], v[2]).unwrap();
        s.add_holder(&img.id, v[3]).unwrap();
        return;
    }
    let (_d, s) = store();
    let src = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        fs::write(src.path().join("which"), format!("{i}")).unwrap();
        ids.push(s.import_rootfs(src.path(), &format!("img{i}")).unwrap().id);
    }
    assert!(s.resolve("app:cur").is_err());
    for round in 0..12 {
        let want = &ids[round % 2];
        let holder = format!("c{}", round % 10);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "resolve_sees_changes_made_by_other_processes",
                "--nocapture",
            ])
            .env(
                CHILD,
                format!("{} img{} app:cur {holder}", s.root().display(), round % 2),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "child: {out:?}");
        let got = s.resolve("app:cur").unwrap();
        assert_eq!(&got.id, want, "round {round}");
        assert!(got.holders.contains(&holder), "round {round}: {got:?}");
        // The holder is dropped again here, so the next child writes a file of equal size.
        s.remove_holder(&got.id, &holder).unwrap();
        assert!(s.resolve("app:cur").unwrap().holders.is_empty());
    }
}
