//! `dcpp container …`, `dcpp logs`, `dcpp volume …` as a user runs them (as root): the real binary
//! re-executes itself (or dcpp-shim) as the per-container monitor.

#[path = "rig/slot.rs"]
mod slot;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Cli {
    tmp: tempfile::TempDir,
    parent: String,
}

impl Cli {
    fn new() -> Cli {
        let tmp = tempfile::Builder::new()
            .prefix("dcpp-cli-ct-")
            .tempdir()
            .unwrap();
        let parent = format!(
            "dcpp-cli-{}",
            tmp.path().file_name().unwrap().to_string_lossy()
        );
        let c = Cli { tmp, parent };
        let root = c.tmp.path().join("rootfs");
        for d in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for a in ["sh", "echo", "sleep", "hostname", "cat", "true"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let out = c.run(&["image", "import", &root.to_string_lossy(), "bb:1"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        c
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dcpp"))
            .arg("--data-dir")
            .arg(self.data())
            .env("DCPP_CGROUP_PARENT", &self.parent)
            .env("DCPP_LOG", "error")
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let ids = self.run(&["container", "ls", "-a", "-q"]);
        for id in text(&ids.stdout).lines() {
            self.run(&["container", "rm", "-f", id]);
        }
        for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ = std::fs::remove_dir(e.path().join(&self.parent));
        }
        let me = self.tmp.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        if !std::thread::panicking() {
            assert!(!mounts.contains(&me), "mounts left behind");
            assert!(
                !Path::new("/sys/fs/cgroup/memory")
                    .join(&self.parent)
                    .exists(),
                "cgroup left behind"
            );
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_foreground_passes_output_and_exit_code() {
    let c = Cli::new();
    let out = c.run(&[
        "container",
        "run",
        "--rm",
        "--hostname",
        "h1",
        "bb:1",
        "sh",
        "-c",
        "hostname; echo oops >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "h1\n");
    assert!(text(&out.stderr).contains("oops"));
    let ls = c.run(&["container", "ls", "-a", "-q"]);
    assert_eq!(text(&ls.stdout), "", "--rm left the container");
}

#[test]
fn detached_lifecycle_logs_exec_stop_rm() {
    let c = Cli::new();
    let out = c.run(&[
        "container",
        "run",
        "-d",
        "--name",
        "web",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "-v",
        "vol1:/data",
        "bb:1",
        "sh",
        "-c",
        "echo started; while true; do sleep 0.1; done",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ls = text(&c.run(&["container", "ls"]).stdout);
    assert!(ls.contains("web") && ls.contains("running"), "{ls}");
    let mut logs = String::new();
    slot::wait_until(
        "the container's first line in its log",
        std::time::Duration::from_secs(10),
        || {
            logs = text(&c.run(&["logs", "web"]).stdout);
            !logs.is_empty()
        },
        String::new,
    );
    assert_eq!(logs, "started\n");
    let ex = c.run(&[
        "container",
        "exec",
        "web",
        "sh",
        "-c",
        "echo hi > /data/f; cat /data/f",
    ]);
    assert_eq!(text(&ex.stdout), "hi\n", "{}", text(&ex.stderr));
    let stats = text(
        &c.run(&["container", "stats", "--format", "json", "web"])
            .stdout,
    );
    assert!(
        stats.contains("\"memory_limit_bytes\": 67108864"),
        "{stats}"
    );
    let vols = text(&c.run(&["volume", "ls", "-q"]).stdout);
    assert_eq!(vols, "vol1\n");
    // In use: refused.
    assert!(!c.run(&["volume", "rm", "vol1"]).status.success());
    assert!(
        c.run(&["container", "stop", "-t", "1", "web"])
            .status
            .success()
    );
    let inspect = text(&c.run(&["container", "inspect", "web"]).stdout);
    assert!(
        inspect.contains("\"status\": \"exited\"") && inspect.contains("\"exit_code\": 137"),
        "{inspect}"
    );
    assert!(c.run(&["container", "rm", "web"]).status.success());
    assert!(c.run(&["volume", "rm", "vol1"]).status.success());
}

#[test]
fn errors_exit_125_with_a_clear_message() {
    let c = Cli::new();
    let out = c.run(&["container", "run", "--rm", "no-such-image:1", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no-such-image"),
        "{}",
        text(&out.stderr)
    );
    let out = c.run(&["container", "run", "--rm", "bb:1", "no-such-command"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("executable file not found"),
        "{}",
        text(&out.stderr)
    );
    let out = c.run(&[
        "container",
        "run",
        "--rm",
        "--memory",
        "lots",
        "bb:1",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("invalid size"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&c.run(&["container", "ls", "-a", "-q"]).stdout), "");
}

#[test]
fn runc_runtime_runs_the_same_bundle() {
    let c = Cli::new();
    let out = c.run(&[
        "container",
        "run",
        "--rm",
        "--runtime",
        "runc",
        "bb:1",
        "sh",
        "-c",
        "echo pid=$$; exit 2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pid=1\n");
}

#[test]
fn network_container_joins_a_running_container() {
    let c = Cli::new();
    let out = c.run(&[
        "container",
        "run",
        "-d",
        "--name",
        "svc",
        "bb:1",
        "sleep",
        "30",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    // The joiner takes the target's hostname along with its network namespace.
    let out = c.run(&[
        "container",
        "run",
        "--rm",
        "--network",
        "container:svc",
        "bb:1",
        "hostname",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}\n", &id[..12]));
    let out = c.run(&[
        "container",
        "run",
        "--rm",
        "--network",
        "container:ghost",
        "bb:1",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("network container:ghost: no such container"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sysctl_flag_sets_namespaced_parameters_only() {
    let c = Cli::new();
    let out = c.run(&[
        "container",
        "run",
        "--rm",
        "--sysctl",
        "net.core.somaxconn=1234",
        "bb:1",
        "cat",
        "/proc/sys/net/core/somaxconn",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1234\n");
    let out = c.run(&[
        "container",
        "run",
        "--rm",
        "--sysctl",
        "vm.swappiness=1",
        "bb:1",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("sysctl \"vm.swappiness\": not allowed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&c.run(&["container", "ls", "-a", "-q"]).stdout), "");
}

#[test]
fn detached_rm_container_releases_its_image_when_it_exits() {
    let c = Cli::new();
    let out = c.run(&["container", "run", "-d", "--rm", "bb:1", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The monitor removes the container when it exits, and with it the hold on the image.
    // (Watched on disk: a `dcpp` command opening the data dir in between could do the
    // release itself for a container found exited.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let left = || {
        std::fs::read_dir(c.data().join("containers"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != ".lock" && e.file_name() != ".names")
            .count()
    };
    while left() > 0 {
        assert!(std::time::Instant::now() < deadline, "--rm container left");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = c.run(&["image", "rm", "bb:1"]);
    assert!(
        out.status.success(),
        "the image is still held: {}",
        text(&out.stderr)
    );
}
