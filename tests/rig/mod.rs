//! A daemon per test for the apply, compose, convergence and scenario suites (own
//! data dir, socket, port, cgroup parent, bridge prefix, nft table and address pool; busybox
//! imported from a local directory), plus what those suites need on top.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::slot::Slot;

pub const BIN: &str = env!("CARGO_BIN_EXE_dcpp");
pub const IMAGE: &str = "dcpp.local/busybox:e2e";

pub struct Rig {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    data: PathBuf,
    pub socket: PathBuf,
    port: u16,
    cgroup: String,
    pub prefix: String,
    table: String,
    pool: String,
    daemon: Option<Child>,
    // Last: released only after `Drop` has cleaned up under its names.
    _slot: Slot,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "www"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static must be installed");
    let out = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("www/index.html"), "hello from dcpp\n").unwrap();
}

impl Rig {
    /// `tag`: 2–3 lowercase letters naming the test; names and pool come from a [`Slot`].
    pub fn new(tag: &str) -> Rig {
        let slot = Slot::take(tag);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dcpp-e2e-{tag}-"))
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        let mut rig = Rig {
            data: root.join("data"),
            socket: root.join("dcpp.sock"),
            port: free_port(),
            cgroup: slot.cgroup.clone(),
            prefix: slot.prefix.clone(),
            table: slot.table.clone(),
            pool: slot.pool.clone(),
            root,
            _tmp: tmp,
            daemon: None,
            _slot: slot,
        };
        let rootfs = rig.root.join("rootfs");
        busybox_rootfs(&rootfs);
        let out = rig.dcpp(&["image", "import", rootfs.to_str().unwrap(), IMAGE]);
        assert!(out.status.success(), "{}", stderr(&out));
        rig.start_daemon();
        rig
    }

    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("daemon.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["--log", "info", "--data-dir"])
            .arg(&self.data)
            .arg("daemon")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--socket")
            .arg(&self.socket)
            .args(["--cgroup-parent", &self.cgroup])
            .args(["--bridge-prefix", &self.prefix])
            .args(["--nft-table", &self.table])
            .args(["--network-pool", &self.pool])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.dcpp(&["cluster", "status"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SIGTERM: the daemon's clean shutdown path.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            c.kill().ok();
            c.wait().ok();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    pub fn dcpp(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .env("DCPP_CGROUP_PARENT", &self.cgroup)
            .args(args)
            .current_dir(&self.root)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.dcpp(args);
        assert!(
            out.status.success(),
            "dcpp {args:?} failed: {}\n{}\n--- daemon log ---\n{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.root.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Live tasks as (name, id, image, state).
    pub fn tasks(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["ps", "--format", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    pub fn running(&self, service: &str) -> usize {
        self.tasks()
            .iter()
            .filter(|t| t["service"] == service && t["state"] == "running")
            .count()
    }

    /// Ids of the task containers in the runtime.
    pub fn containers(&self) -> BTreeSet<String> {
        let out = self.ok(&["container", "ls", "-a", "-q"]);
        out.lines().map(str::to_string).collect()
    }

    pub fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}\n--- daemon log ---\n{}",
                self.ok(&["ps", "-a"]),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for s in self.tasks_stacks() {
                let _ = self.dcpp(&["down", "-p", &s, "--timeout", "30s"]);
            }
        }
        self.stop_daemon();
        // Whatever a failed test left: containers, then networking and cgroups.
        for id in self.containers_best_effort() {
            let _ = self.dcpp(&["container", "rm", "-f", &id]);
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .stderr(Stdio::null())
            .status();
        if let Ok(out) = Command::new("ip").args(["-o", "link"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = l.split(": ").nth(1) {
                    let name = name.split('@').next().unwrap_or("");
                    if name.starts_with(&self.prefix) {
                        let _ = Command::new("ip").args(["link", "del", name]).status();
                    }
                }
            }
        }
        // Every mounted hierarchy, whatever the host co-mounts (cpu and cpuacct are
        // separate here, `cpu,cpuacct` elsewhere): a fixed list leaked the others.
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(&self.cgroup));
        }
    }
}

impl Rig {
    pub fn tasks_stacks(&self) -> BTreeSet<String> {
        let out = self.dcpp(&["stack", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    pub fn containers_best_effort(&self) -> Vec<String> {
        let out = self.dcpp(&["container", "ls", "-a", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl Rig {
    /// Imports `rootfs` (a copy of the rig's busybox root changed by `change`) as `image`.
    pub fn import_variant(&self, image: &str, change: impl FnOnce(&Path)) {
        let dir = self
            .root
            .join(format!("rootfs-{}", image.replace(['/', ':', '.'], "-")));
        busybox_rootfs(&dir);
        change(&dir);
        self.ok(&["image", "import", dir.to_str().unwrap(), image]);
    }

    /// Runs `dcpp args` and returns (exit code, stdout, stderr, seconds taken).
    pub fn run(&self, args: &[&str]) -> (Option<i32>, String, String, f64) {
        let t = Instant::now();
        let o = self.dcpp(args);
        (
            o.status.code(),
            stdout(&o),
            stderr(&o),
            t.elapsed().as_secs_f64(),
        )
    }
}
