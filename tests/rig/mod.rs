//! A daemon per test (own data dir, socket, listen address, cgroup parent, bridge prefix, nft
//! table and address pool, all from a [`Slot`]; busybox imported from a local directory),
//! optionally under a wrapper (`prlimit`, `nsenter`) or with further daemon flags; several of
//! them make a cluster. Plus what the suites need on top.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::slot::Slot;

pub mod cluster;
pub mod netns;
pub mod overlay;

pub const BIN: &str = env!("CARGO_BIN_EXE_dcpp");
pub const IMAGE: &str = "dcpp.local/busybox:e2e";

pub struct Rig {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub data: PathBuf,
    /// Set before [`Rig::start_daemon`] to put the socket elsewhere.
    pub socket: PathBuf,
    /// `--listen` address, the slot's own.
    pub listen: String,
    pub cgroup: String,
    pub prefix: String,
    pub table: String,
    pub pool: String,
    /// Command the daemon is started under (`prlimit …`, `nsenter …`); set before starting.
    pub wrapper: Vec<String>,
    /// Further `dcpp daemon` flags; set before starting.
    pub extra: Vec<String>,
    /// The daemon's `--log` level.
    pub log_level: String,
    /// Raft node id of the running daemon (known once it started).
    pub id: u64,
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
    /// A running daemon. `tag`: 2–3 lowercase letters naming the test; names, pool and
    /// listen address come from a [`Slot`].
    pub fn new(tag: &str) -> Rig {
        let mut rig = Rig::unstarted(tag);
        rig.start_daemon();
        rig
    }

    /// The busybox image imported, no daemon yet (to set [`Rig::wrapper`], [`Rig::extra`],
    /// … first).
    pub fn unstarted(tag: &str) -> Rig {
        Rig::unstarted_with(tag, |_| {})
    }

    /// As [`Rig::unstarted`], with `change` applied to the busybox root before it is imported.
    pub fn unstarted_with(tag: &str, change: impl FnOnce(&Path)) -> Rig {
        let slot = Slot::take(tag);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dcpp-e2e-{tag}-"))
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        let rig = Rig {
            data: root.join("data"),
            socket: root.join("dcpp.sock"),
            listen: slot.listen.clone(),
            cgroup: slot.cgroup.clone(),
            prefix: slot.prefix.clone(),
            table: slot.table.clone(),
            pool: slot.pool.clone(),
            wrapper: Vec::new(),
            extra: Vec::new(),
            // A failing run is read from these logs: DCPP_TEST_LOG widens them (e.g.
            // `info,dcpp_raft::worker=debug`).
            log_level: std::env::var("DCPP_TEST_LOG").unwrap_or_else(|_| "info".into()),
            id: 0,
            root,
            _tmp: tmp,
            daemon: None,
            _slot: slot,
        };
        let rootfs = rig.root.join("rootfs");
        busybox_rootfs(&rootfs);
        change(&rootfs);
        let out = rig.dcpp(&["image", "import", rootfs.to_str().unwrap(), IMAGE]);
        assert!(out.status.success(), "{}", stderr(&out));
        rig
    }

    /// Starts the daemon and returns once it answers with a leader and a cluster id.
    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("daemon.log"))
            .unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["--log", &self.log_level, "--data-dir"])
            .arg(&self.data)
            .arg("daemon")
            .args(["--listen", &self.listen])
            .arg("--socket")
            .arg(&self.socket)
            .args(["--cgroup-parent", &self.cgroup])
            .args(["--bridge-prefix", &self.prefix])
            .args(["--nft-table", &self.table])
            .args(["--network-pool", &self.pool])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.dcpp(&["cluster", "status", "--format", "json"]);
            if out.status.success()
                && let Ok(st) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                // A worker knows no leader, only managers.
                && (st["leader"].is_u64() || st["state"] == "Worker")
                && st["cluster_id"].is_string()
                && let Some(id) = st["node_id"].as_u64()
            {
                self.id = id;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn running_daemon(&self) -> bool {
        self.daemon.is_some()
    }

    /// PID of the daemon (of its wrapper's exec, which is the daemon itself).
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("a running daemon").id()
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

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `dcpp` for this daemon, with the slot's names for the commands that act locally.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data-dir")
            .arg(&self.data)
            .arg("-H")
            .arg(self.host())
            .env("DCPP_CGROUP_PARENT", &self.cgroup)
            .env("DCPP_BRIDGE_PREFIX", &self.prefix)
            .env("DCPP_NFT_TABLE", &self.table)
            .env("DCPP_ADDRESS_POOL", &self.pool)
            .current_dir(&self.root);
        c
    }

    pub fn dcpp(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("dcpp {args:?}: {e}: {out}"))
    }

    /// Links on the host under this slot's bridge prefix.
    pub fn links(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with(&self.prefix))
            .collect()
    }

    /// This daemon's nft table as `nft list` prints it (empty when it does not exist).
    pub fn nft(&self) -> String {
        let out = Command::new("nft")
            .args(["list", "table", "ip", &self.table])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
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
                stdout(&self.dcpp(&["ps", "-a"])),
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
        self.wipe();
    }
}

impl Rig {
    /// The machine is gone: its daemon dies (if it still runs), and its containers,
    /// networking and cgroups go with it (by hand, since every daemon shares this host).
    pub fn wipe(&mut self) {
        self.kill9();
        for id in self.containers_best_effort() {
            let _ = self.dcpp(&["container", "rm", "-f", &id]);
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .stderr(Stdio::null())
            .status();
        for l in self.links() {
            let _ = Command::new("ip").args(["link", "del", &l]).status();
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

/// A process started by a test (a watcher, a server), killed when dropped, also when the test
/// panics: a leftover child keeps every descriptor the test process had (a build lock held
/// around the test run, for one).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
