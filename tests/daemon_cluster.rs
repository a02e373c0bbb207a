//! Real `dcpp daemon` processes on 127.0.0.1: zero-config start, init/join through the CLI,
//! kill -9 of every daemon, restart from disk, data present; leave.

#[path = "rig/slot.rs"]
mod slot;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcpp_raft::{Client, Endpoint, Kind};
use serde_json::json;
use slot::Slot;

struct Daemon {
    child: Option<Child>,
    data: PathBuf,
    socket: PathBuf,
    port: u16,
    log: PathBuf,
    // Last: released only after `Drop` has cleaned up under its names.
    slot: Slot,
}

impl Daemon {
    fn start(root: &Path, name: &str, port: u16) -> Daemon {
        let mut d = Daemon {
            child: None,
            data: root.join(name),
            socket: root.join(format!("{name}.sock")),
            port,
            log: root.join(format!("{name}.log")),
            // Never the host's default bridge prefix, nft table, cgroup parent or pool.
            slot: Slot::take(&format!("dc{name}")),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dcpp"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--log")
            .arg("info")
            .arg("daemon")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--socket")
            .arg(&self.socket)
            .args(["--cgroup-parent", &self.slot.cgroup])
            .args(["--bridge-prefix", &self.slot.prefix])
            .args(["--nft-table", &self.slot.table])
            .args(["--network-pool", &self.slot.pool])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dcpp daemon");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok(); // SIGKILL
            c.wait().ok();
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn client(&self) -> Client {
        Client::new(&Endpoint::Unix(self.socket.clone()), None).expect("client")
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_dcpp"))
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .expect("run dcpp");
        assert!(
            out.status.success(),
            "dcpp {args:?} failed: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(st) = self.client().status().await
                && st.leader.is_some()
                && st.cluster_id.is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.slot.table])
            .stderr(Stdio::null())
            .status();
        if let Ok(out) = Command::new("ip").args(["-o", "link"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = l.split(": ").nth(1) {
                    let name = name.split('@').next().unwrap_or("");
                    if name.starts_with(&self.slot.prefix) {
                        let _ = Command::new("ip").args(["link", "del", name]).status();
                    }
                }
            }
        }
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(&self.slot.cgroup));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_form_cluster_survive_kill9_of_all_and_keep_data() {
    let root = tempfile::TempDir::new().unwrap();
    let mut ds: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|n| Daemon::start(root.path(), n, free_port()))
        .collect();
    for d in &ds {
        d.wait_ready().await; // zero config: each is its own one-node cluster
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "API socket is root-only");
    }
    let tokens: serde_json::Value =
        serde_json::from_str(&ds[0].cli(&["cluster", "init", "--format", "json"])).unwrap();
    let manager = tokens["manager"].as_str().unwrap().to_string();
    let human = ds[0].cli(&["cluster", "init"]);
    assert!(human.contains(&manager) && human.contains("dcpp cluster join --token"));
    let leader_addr = format!("127.0.0.1:{}", ds[0].port);
    for d in &ds[1..] {
        let out = d.cli(&["cluster", "join", "--token", &manager, &leader_addr]);
        assert!(out.contains("manager"), "{out}");
    }
    let st: serde_json::Value =
        serde_json::from_str(&ds[2].cli(&["cluster", "status", "--format", "json"])).unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 3, "{st}");

    // Writes through every daemon's socket (followers forward to the leader).
    for (i, d) in ds.iter().enumerate() {
        let c = d.client();
        for k in 0..10 {
            c.put(Kind::Stack, &format!("s{i}-{k}"), &json!({"i": i, "k": k}))
                .await
                .expect("acknowledged write");
        }
    }
    for d in &mut ds {
        d.kill9();
    }
    for d in &mut ds {
        d.spawn();
    }
    for d in &ds {
        d.wait_ready().await;
    }
    let list = ds[1]
        .client()
        .list(Kind::Stack)
        .await
        .expect("list after restart");
    assert_eq!(
        list.objects.len(),
        30,
        "every acknowledged write survives kill -9 of all"
    );
    let ls = ds[0].cli(&["node", "ls"]);
    assert_eq!(ls.lines().count(), 4, "header + 3 nodes:\n{ls}");
    assert!(ls.contains("leader"), "{ls}");
    let st = ds[0].cli(&["cluster", "status"]);
    assert!(
        st.contains("Leader:") && st.contains("Commit index:"),
        "{st}"
    );

    // Leaving turns the node back into a standalone cluster; the others keep two members.
    let left: serde_json::Value =
        serde_json::from_str(&ds[2].cli(&["cluster", "status", "--format", "json"])).unwrap();
    ds[2].cli(&["cluster", "leave"]);
    let st: serde_json::Value =
        serde_json::from_str(&ds[0].cli(&["cluster", "status", "--format", "json"])).unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 2, "{st}");
    ds[2].wait_ready().await;
    let st2 = ds[2].client().status().await.unwrap();
    assert_eq!(st2.members.len(), 1);
    assert_ne!(
        st2.cluster_id.as_deref(),
        st["cluster_id"].as_str(),
        "a new cluster"
    );
    let gone = ds[0]
        .client()
        .get(Kind::Node, &left["node_id"].as_u64().unwrap().to_string())
        .await;
    assert!(gone.is_err(), "the leaving node's record is deleted");
    // A joined node's record carries what only that host knows (its resources).
    let joined = ds[1].client().status().await.unwrap().node_id.to_string();
    let inspect: serde_json::Value =
        serde_json::from_str(&ds[0].cli(&["node", "inspect", &joined])).unwrap();
    assert_eq!(inspect["value"]["role"], "manager", "{inspect}");
    assert!(
        inspect["value"]["resources"]["memory_bytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{inspect}"
    );
}
