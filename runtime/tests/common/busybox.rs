//! A minimal root filesystem from Debian's busybox-static: `/bin/busybox`, a symlink per
//! applet at its usual path, `/etc/passwd`, `/etc/group` and the usual empty mount points.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

pub const BUSYBOX: &str = "/bin/busybox";

/// Populate `root` (created if missing) with a busybox system.
pub fn rootfs(root: &Path) {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} missing: install Debian's busybox-static (scripts/setup.sh)"
    );
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "var",
        "home",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        let link = root.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/:/bin/false\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n",
    )
    .unwrap();
}

/// A fresh temporary directory holding a busybox root filesystem.
pub fn rootfs_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dcpp-busybox-")
        .tempdir()
        .unwrap();
    rootfs(dir.path());
    dir
}
