//! The daemon rig of the data-plane scenarios (`scenario_ports.rs`, `e2e_limits.rs`): one
//! `dcpp daemon` per test with its own data dir, socket, port, cgroup parent, bridge prefix,
//! nft table and address pool, and a busybox image imported from a local directory under two
//! tags. Everything it made is removed on drop, whatever the test left.

#![allow(dead_code)] // Each test file uses a part of it.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dcpp");
pub const IMAGE: &str = "dcpp.local/busybox:dp1";
pub const IMAGE2: &str = "dcpp.local/busybox:dp2";

pub struct Rig {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub cgroup: String,
    pub prefix: String,
    pub table: String,
    pub pool: String,
    daemon: Option<Child>,
    // Last: released only after `Drop` has cleaned up under its names.
    _slot: crate::slot::Slot,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn busybox_rootfs(root: &Path) {
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

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl Rig {
    /// `tag`: 2 lowercase letters naming the test; names and pool come from a slot.
    pub fn new(tag: &str) -> Rig {
        Rig::with_pools(tag, str::to_owned)
    }

    /// [`Rig::new`] with `--network-pool` made from the slot's own /16 pool.
    pub fn with_pools(tag: &str, pools: impl FnOnce(&str) -> String) -> Rig {
        let slot = crate::slot::Slot::take(tag);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dcpp-dp-{tag}-"))
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
            pool: pools(&slot.pool),
            root,
            _tmp: tmp,
            daemon: None,
            _slot: slot,
        };
        let rootfs = rig.root.join("rootfs");
        busybox_rootfs(&rootfs);
        for image in [IMAGE, IMAGE2] {
            let out = rig.dcpp(&["image", "import", rootfs.to_str().unwrap(), image]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        rig.start_daemon();
        rig
    }

    fn start_daemon(&mut self) {
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

    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
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

    /// Live tasks (`dcpp ps --format json`).
    pub fn tasks(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["ps", "--format", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// Every task, finished ones included (`dcpp ps -a --format json`).
    pub fn all_tasks(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["ps", "-a", "--format", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// `dcpp container exec ID args…`: (success, stdout + stderr).
    pub fn exec(&self, id: &str, args: &[&str]) -> (bool, String) {
        let mut a = vec!["container", "exec", id];
        a.extend_from_slice(args);
        let out = self.dcpp(&a);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&stderr(&out));
        (out.status.success(), text)
    }

    pub fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}\n--- daemon log (tail) ---\n{}",
                String::from_utf8_lossy(&self.dcpp(&["ps", "-a"]).stdout),
                tail(&self.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stacks(&self) -> BTreeSet<String> {
        let out = self.dcpp(&["stack", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    fn containers_best_effort(&self) -> Vec<String> {
        let out = self.dcpp(&["container", "ls", "-a", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for s in self.stacks() {
                let _ = self.dcpp(&["down", "-p", &s, "--timeout", "30s"]);
            }
        }
        self.stop_daemon();
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
