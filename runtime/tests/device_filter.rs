//! The cgroup2 device program on the real kernel: attached to a fresh cgroup of the unified
//! hierarchy (on this hybrid host `/sys/fs/cgroup/unified`, where only the program confines: the
//! process stays in the root v1 devices cgroup, which allows everything), a process moved in can
//! open and create only what the rules allow.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use dcpp_runtime::container::Hierarchy;
use dcpp_runtime::container::devices::{self, DeviceRule};

/// A cgroup2 directory, removed on drop.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The only process ever moved in has been waited for.
        std::fs::remove_dir(&self.0).expect("removing the test cgroup");
    }
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod with a valid C string.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Runs busybox `script` inside `cgroup` and returns its stdout+stderr.
fn run_in(cgroup: &Path, script: &str) -> String {
    let procs =
        std::ffi::CString::new(cgroup.join("cgroup.procs").as_os_str().as_encoded_bytes()).unwrap();
    let mut cmd = std::process::Command::new("/bin/busybox");
    cmd.args(["sh", "-c", script]);
    // SAFETY: only open/write/close, which are async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        })
    };
    let out = cmd.output().expect("running busybox in the test cgroup");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn program_denies_what_the_rules_do_not_allow() {
    let hier = Hierarchy::detect().unwrap();
    let name = format!("dcpp-test-devfilter-{}", std::process::id());
    let Some(dir) = hier.unified_path(&name) else {
        panic!("no cgroup2 hierarchy on this host: the device program cannot be tested");
    };
    std::fs::create_dir(&dir).unwrap();
    let cg = TestCgroup(dir);

    let rule = |allow, major, minor, access| DeviceRule {
        allow,
        kind: Some('c'),
        major: Some(major),
        minor,
        access,
    };
    // Deny all; null fully; zero read-only (no mknod, no write).
    let mut rules = vec![DeviceRule {
        allow: false,
        kind: None,
        major: None,
        minor: None,
        access: 7,
    }];
    rules.push(rule(true, 1, Some(3), 7));
    rules.push(rule(true, 1, Some(5), 2));
    devices::attach(&cg.0, &rules).unwrap();
    assert_eq!(devices::attached_programs(&cg.0).unwrap(), 1);

    let nodes = tempfile::tempdir().unwrap();
    let d = nodes.path();
    mknod(&d.join("null"), libc::S_IFCHR, 1, 3);
    mknod(&d.join("zero"), libc::S_IFCHR, 1, 5);
    mknod(&d.join("full"), libc::S_IFCHR, 1, 7);
    mknod(&d.join("loop"), libc::S_IFBLK, 7, 0);
    let script = format!(
        "cd {}; echo x > null && echo NULL-W-OK; head -c1 zero | wc -c; echo x > zero || echo ZERO-W-DENIED; \
         head -c1 full || echo FULL-DENIED; head -c0 loop || echo LOOP-DENIED; \
         mknod made c 1 5 || echo MKNOD-DENIED",
        d.display()
    );
    let out = run_in(&cg.0, &script);
    for want in [
        "NULL-W-OK",
        "ZERO-W-DENIED",
        "FULL-DENIED",
        "LOOP-DENIED",
        "MKNOD-DENIED",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // Reading zero is allowed: one byte came through.
    assert!(out.lines().any(|l| l.trim() == "1"), "{out}");
    assert_eq!(
        out.matches("Operation not permitted").count(),
        4,
        "every denial is EPERM: {out}"
    );
    assert!(!d.join("made").exists());

    // Outside the cgroup nothing is denied: the program is what denied.
    let out = run_in(Path::new(&hier.unified_path("").unwrap()), &script);
    assert!(!out.contains("Operation not permitted"), "{out}");
    std::fs::remove_file(d.join("made")).unwrap();
}

/// Where no program can be attached (here: a "cgroup2 root" that is a plain directory), a v2
/// host refuses to create the container's cgroup instead of running it unconfined.
#[test]
fn v2_without_a_device_program_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let hier = Hierarchy::V2 {
        root: t.path().to_path_buf(),
    };
    let err = hier
        .create("dcpp-test-nobpf/c1", None, false)
        .expect_err("a v2 cgroup without device confinement");
    let msg = err.to_string();
    assert!(
        msg.contains("device program") && msg.contains("cannot run"),
        "{msg}"
    );
    // Privileged containers need no program.
    hier.create("dcpp-test-nobpf/c2", None, true).unwrap();
    hier.remove("dcpp-test-nobpf/c2");
    assert!(!t.path().join("dcpp-test-nobpf/c1").exists());
    assert!(!t.path().join("dcpp-test-nobpf/c2").exists());
}
