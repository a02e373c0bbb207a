//! Work spread over nodes, end to end through the real binary, as root on the real kernel: three
//! `dcpp daemon`s side by side on this machine, each a full node (Raft member, node agent,
//! own data dir and image store, socket, TCP port, cgroup parent, bridge prefix, nft table and
//! address pool), joined into one cluster with `dcpp cluster join --token …` as a user would.
//! What runs where is read twice: from the store (`dcpp ps` through each node's socket) and
//! from each node's own runtime (`dcpp --data-dir NODE container ls`).
//!
//! Not covered (not built): networking between nodes. Each node gives a stack its own bridge,
//! so a task reaches by name only the replicas on its own node.

#[path = "rig/slot.rs"]
mod slot;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dcpp");
const IMAGE: &str = "dcpp.local/busybox:cluster";
/// Label the node agent puts on task containers (node-agent `docs::LABEL_TASK`).
const LABEL_TASK: &str = "org.dcpp.task";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn busybox_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static must be installed");
    for applet in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One daemon of the cluster.
struct Node {
    name: String,
    data: PathBuf,
    socket: PathBuf,
    port: u16,
    cgroup: String,
    prefix: String,
    table: String,
    pool: String,
    log: PathBuf,
    child: Option<Child>,
    /// Raft node id (also the id in task records and `dcpp node …`).
    id: u64,
    // Last: released only after `Drop` has cleaned up under its names.
    _slot: crate::slot::Slot,
}

impl Node {
    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
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
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.dcpp(&["cluster", "status", "--format", "json"]);
            if out.status.success()
                && let Ok(st) = serde_json::from_slice::<Value>(&out.stdout)
                && st["leader"].is_u64()
                && st["cluster_id"].is_string()
            {
                self.id = st["node_id"].as_u64().unwrap();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon {} did not start: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn dcpp(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("-H")
            .arg(self.host())
            .env("DCPP_CGROUP_PARENT", &self.cgroup)
            .args(args)
            .output()
            .unwrap()
    }

    /// This node's task containers as its own runtime sees them: (task id, running).
    fn containers(&self) -> Vec<(u64, bool)> {
        let out = self.dcpp(&["container", "ls", "-a", "--format", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.iter()
            .filter_map(|c| {
                let task = c["labels"][LABEL_TASK].as_str()?.parse().ok()?;
                Some((task, c["status"] == "running"))
            })
            .collect()
    }

    fn running_tasks(&self) -> BTreeSet<u64> {
        self.containers()
            .into_iter()
            .filter(|(_, r)| *r)
            .map(|(t, _)| t)
            .collect()
    }
}

struct Cluster {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Three daemons: `a` creates the cluster, `b` joins with the manager token and `c` with
    /// the worker token (or the manager token if `c_manager`). `tag`: two lowercase letters
    /// naming the test; each node's names and pool come from its own slot.
    fn new(tag: &str, c_manager: bool) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dcpp-e2e-{tag}-"))
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        let rootfs = root.join("rootfs");
        busybox_rootfs(&rootfs);
        let nodes = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let slot = crate::slot::Slot::take(&format!("{tag}{n}"));
                Node {
                    name: n.to_string(),
                    data: root.join(n),
                    socket: root.join(format!("{n}.sock")),
                    port: free_port(),
                    cgroup: slot.cgroup.clone(),
                    prefix: slot.prefix.clone(),
                    table: slot.table.clone(),
                    pool: slot.pool.clone(),
                    log: root.join(format!("{n}.log")),
                    child: None,
                    id: 0,
                    _slot: slot,
                }
            })
            .collect();
        let mut cl = Cluster {
            _tmp: tmp,
            root,
            nodes,
        };
        for n in &mut cl.nodes {
            // Every node has its own image store.
            let out = n.dcpp(&["image", "import", rootfs.to_str().unwrap(), IMAGE]);
            assert!(out.status.success(), "{}", stderr(&out));
            n.start();
        }
        let init = cl.ok(0, &["cluster", "init"]);
        let token = |kind: &str| {
            init.lines()
                .filter_map(|l| l.trim().strip_prefix("dcpp cluster join --token "))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|w| w[0].contains(kind))
                .map(|w| (w[0].to_string(), w[1].to_string()))
                .unwrap_or_else(|| panic!("no {kind} join command in:\n{init}"))
        };
        let (manager, addr) = token("-M-");
        let (worker, _) = token("-W-");
        assert_eq!(addr, format!("127.0.0.1:{}", cl.nodes[0].port), "{init}");
        let out = cl.ok(1, &["cluster", "join", "--token", &manager, &addr]);
        assert!(out.contains("as a manager"), "{out}");
        let (token, role) = if c_manager {
            (&manager, "as a manager")
        } else {
            (&worker, "as a worker")
        };
        let out = cl.ok(2, &["cluster", "join", "--token", token, &addr]);
        assert!(out.contains(role), "{out}");
        // Every node knows all three, each with a fresh heartbeat from its agent.
        cl.wait_until("three nodes", 30, || {
            cl.nodes.iter().all(|n| {
                let out = n.dcpp(&["node", "ls", "--format", "json"]);
                out.status.success()
                    && serde_json::from_slice::<Vec<Value>>(&out.stdout).is_ok_and(|v| v.len() == 3)
            })
        });
        cl
    }

    /// Runs a command on node `i` that must succeed; returns stdout.
    fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.nodes[i].dcpp(args);
        assert!(
            out.status.success(),
            "dcpp {args:?} on {} failed: {}\n{}\n{}",
            self.nodes[i].name,
            stderr(&out),
            String::from_utf8_lossy(&out.stdout),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- daemon {} ({}) log ---\n{}", n.name, n.id, n.log()))
            .collect()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.root.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// A node whose daemon runs (to ask while another one is down).
    fn live(&self) -> usize {
        self.nodes.iter().position(|n| n.child.is_some()).unwrap()
    }

    /// Live tasks as the store on node `i` reports them.
    fn tasks(&self, i: usize) -> Vec<Value> {
        serde_json::from_str(&self.ok(i, &["ps", "--format", "json"])).unwrap()
    }

    /// Running tasks of `service` per node index (from the store, through node `via`).
    fn placement(&self, via: usize, service: &str) -> Vec<usize> {
        let tasks = self.tasks(via);
        self.nodes
            .iter()
            .map(|n| {
                let id = n.id.to_string();
                tasks
                    .iter()
                    .filter(|t| {
                        t["service"] == service
                            && t["state"] == "running"
                            && t["node"] == id.as_str()
                    })
                    .count()
            })
            .collect()
    }

    fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            let ps = self
                .nodes
                .iter()
                .find(|n| n.child.is_some())
                .map(|n| String::from_utf8_lossy(&n.dcpp(&["ps", "-a"]).stdout).into_owned());
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}\n{}\n{}",
                ps.unwrap_or_default(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        start.elapsed()
    }

    /// What the store says runs where must be what the nodes' runtimes run: every running
    /// task's container runs on its node, and no node runs a container of another task.
    fn assert_runtimes_match_store(&self) {
        let tasks = self.tasks(self.live());
        for n in &self.nodes {
            let id = n.id.to_string();
            let want: BTreeSet<u64> = tasks
                .iter()
                .filter(|t| t["state"] == "running" && t["node"] == id.as_str())
                .map(|t| t["id"].as_u64().unwrap())
                .collect();
            assert_eq!(
                n.running_tasks(),
                want,
                "node {}: running containers vs. the store's running tasks\n{tasks:#?}",
                n.name
            );
        }
    }

    /// `dcpp down` of every stack, then stop the daemons; asserts nothing is left on the host.
    fn teardown(mut self) {
        let stacks = self.ok(self.live(), &["stack", "ls"]);
        for s in stacks
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
        {
            self.ok(self.live(), &["down", "-p", s, "--timeout", "30s"]);
        }
        self.wait_until("every node's containers removed", 20, || {
            self.nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| n.containers().is_empty())
        });
        for n in &mut self.nodes {
            n.stop();
        }
        let links = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let tables = String::from_utf8_lossy(
            &Command::new("nft")
                .args(["list", "tables"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        for n in &self.nodes {
            assert!(
                !links.contains(&format!(": {}", n.prefix)),
                "links of {} left:\n{links}",
                n.name
            );
            assert!(
                !tables
                    .lines()
                    .any(|l| l.ends_with(&format!(" {}", n.table))),
                "nft table of {} left:\n{tables}",
                n.name
            );
            for c in ["memory", "pids", "freezer"] {
                let p = format!("/sys/fs/cgroup/{c}/{}", n.cgroup);
                assert!(!Path::new(&p).exists(), "{p} left");
            }
        }
    }
}

impl Drop for Cluster {
    /// Whatever a failed test left: daemons, containers, then networking and cgroups.
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.wipe();
        }
    }
}

impl Node {
    /// The machine is gone: its daemon dies and its containers, networking and cgroups with
    /// it (done by hand here, since all nodes share this one host).
    fn wipe(&mut self) {
        self.kill9();
        let out = self.dcpp(&["container", "ls", "-a", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.dcpp(&["container", "rm", "-f", id]);
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

fn compose(stack: &str, replicas: u32, with_global: bool) -> String {
    let mut s = format!(
        r#"name: {stack}
services:
  app:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: {replicas}
"#
    );
    if with_global {
        s.push_str(&format!(
            r#"  mon:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      mode: global
"#
        ));
    }
    s
}

/// The same live tasks, with the same node and state, through every node's socket.
fn same_everywhere(cl: &Cluster) {
    let view = |i: usize| -> BTreeMap<u64, (String, String)> {
        cl.tasks(i)
            .iter()
            .map(|t| {
                (
                    t["id"].as_u64().unwrap(),
                    (t["node"].to_string(), t["state"].to_string()),
                )
            })
            .collect()
    };
    let a = view(0);
    assert!(!a.is_empty());
    assert_eq!(a, view(1), "ps through a and b differ");
    assert_eq!(a, view(2), "ps through a and c differ");
}

#[test]
fn replicas_spread_global_runs_everywhere_and_drain_moves_work() {
    let t0 = Instant::now();
    let cl = Cluster::new("sp", false);
    let ls = cl.ok(2, &["node", "ls"]);
    assert_eq!(ls.lines().count(), 4, "{ls}");
    assert!(ls.contains("learner") && ls.contains("worker"), "{ls}");
    let formed = t0.elapsed();

    // Applied through a follower's socket: the writes are forwarded to the leader.
    let file = cl.write("compose.yml", &compose("sps", 6, true));
    let out = cl.ok(1, &["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(
        cl.placement(0, "sps_app"),
        vec![2, 2, 2],
        "6 replicas over 3 nodes"
    );
    assert_eq!(
        cl.placement(0, "sps_mon"),
        vec![1, 1, 1],
        "global: one per node"
    );
    same_everywhere(&cl);
    cl.assert_runtimes_match_store();
    let applied = t0.elapsed();

    // Placement constraints against node roles and labels set with `dcpp node update`.
    let b_id = cl.nodes[1].id.to_string();
    let file = cl.write(
        "placed.yml",
        &format!(
            r#"name: spc
services:
  ssd:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 2
      placement:
        constraints: ["node.labels.disk == ssd"]
  wk:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 2
      placement:
        constraints: ["node.role == worker"]
"#
        ),
    );
    cl.ok(0, &["apply", "-d", "-f", &file]);
    cl.wait_until("workers-only service on c", 30, || {
        cl.placement(0, "spc_wk") == vec![0, 0, 2]
    });
    // No node has the label yet: pending, saying why.
    let pending: Vec<Value> = cl
        .tasks(0)
        .into_iter()
        .filter(|t| t["service"] == "spc_ssd")
        .collect();
    assert_eq!(pending.len(), 2, "{pending:#?}");
    for t in &pending {
        assert_eq!(t["state"], "pending", "{t}");
        assert!(t["message"].as_str().unwrap().contains("disk"), "{t}");
    }
    let out = cl.ok(0, &["node", "update", "--label-add", "disk=ssd", &b_id]);
    assert!(out.contains(&b_id), "{out}");
    cl.wait_until("labelled node takes the service", 30, || {
        cl.placement(0, "spc_ssd") == vec![0, 2, 0]
    });
    let node: Value = serde_json::from_str(&cl.ok(2, &["node", "inspect", &b_id])).unwrap();
    assert_eq!(node["value"]["labels"]["disk"], "ssd", "{node}");
    cl.assert_runtimes_match_store();
    cl.ok(0, &["node", "update", "--label-rm", "disk", &b_id]);
    cl.ok(0, &["down", "-p", "spc"]);
    let node: Value = serde_json::from_str(&cl.ok(2, &["node", "inspect", &b_id])).unwrap();
    assert!(node["value"]["labels"].get("disk").is_none(), "{node}");

    // Drain c (through the worker's own socket): its tasks move, its containers stop.
    let c_id = cl.nodes[2].id.to_string();
    let out = cl.ok(2, &["node", "update", "--availability", "drain", &c_id]);
    assert!(out.contains("drain"), "{out}");
    assert!(cl.ok(0, &["node", "ls"]).contains("drain"));
    cl.wait_until("c drained", 30, || {
        cl.placement(0, "sps_app") == vec![3, 3, 0] && cl.placement(0, "sps_mon") == vec![1, 1, 0]
    });
    cl.wait_until("c's containers stopped", 20, || {
        cl.nodes[2].running_tasks().is_empty()
    });
    // Nothing of c's is live in the store any more (drained ≠ down: c keeps reporting).
    assert!(
        !cl.tasks(0).iter().any(|t| t["node"] == c_id.as_str()),
        "{:#?}",
        cl.tasks(0)
    );
    cl.assert_runtimes_match_store();
    same_everywhere(&cl);
    let drained = t0.elapsed();

    // Active again: the global service comes back to c; replicas are not rebalanced (as swarm).
    cl.ok(0, &["node", "update", "--availability", "active", &c_id]);
    cl.wait_until("global task back on c", 30, || {
        cl.placement(0, "sps_mon") == vec![1, 1, 1]
    });
    assert_eq!(cl.placement(0, "sps_app"), vec![3, 3, 0]);
    cl.assert_runtimes_match_store();

    // c leaves: its record goes at once (no node timeout), so does its global task, and its
    // daemon, now a standalone cluster that knows no such task, removes the container.
    let out = cl.ok(2, &["cluster", "leave"]);
    assert!(out.contains("left the cluster"), "{out}");
    cl.wait_until("c's container removed", 30, || {
        cl.nodes[2].containers().is_empty()
    });
    let left = t0.elapsed();
    assert_eq!(cl.placement(0, "sps_mon"), vec![1, 1, 0]);
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&cl.ok(0, &["node", "ls", "--format", "json"]))
            .unwrap()
            .len(),
        2
    );
    assert!(
        cl.tasks(2).is_empty(),
        "c is on its own: {:#?}",
        cl.tasks(2)
    );
    let st: Value =
        serde_json::from_str(&cl.ok(2, &["cluster", "status", "--format", "json"])).unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 1, "{st}");

    // Bad input: a clear error, not a panic.
    let out = cl.nodes[0].dcpp(&["node", "update", "--availability", "drain", "12345"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = cl.nodes[0].dcpp(&["node", "update", &c_id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = cl.nodes[0].dcpp(&["node", "update", "--label-add", "=x", &c_id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    cl.teardown();
    eprintln!(
        "timings: cluster formed {formed:.1?}, applied {applied:.1?}, drained {drained:.1?}, left {left:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

/// kill -9 the daemon of node `victim`: its containers keep running (their monitors outlive
/// it), but after the node timeout the leader — a new one if the victim led — gives its slots
/// to the other nodes. When it comes back its agent stops the containers of the slots that
/// moved, so no slot is served twice, and the node takes new work again.
fn kill_node_then_bring_it_back(tag: &str, victim: usize) -> Cluster {
    let t0 = Instant::now();
    // To lose the leader, c is a manager too, so the survivors keep a Raft majority; otherwise
    // c is a worker (a Raft learner).
    let mut cl = Cluster::new(tag, victim == 0);
    let stack = format!("{tag}s");
    let app = format!("{stack}_app");
    let file = cl.write("compose.yml", &compose(&stack, 6, false));
    let out = cl.ok(victim, &["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(cl.placement(victim, &app), vec![2, 2, 2]);
    cl.assert_runtimes_match_store();
    let stale = cl.nodes[victim].running_tasks();
    assert_eq!(stale.len(), 2);
    let was_leader = {
        let st: Value =
            serde_json::from_str(&cl.ok(victim, &["cluster", "status", "--format", "json"]))
                .unwrap();
        st["leader"] == st["node_id"]
    };
    assert_eq!(
        was_leader,
        victim == 0,
        "a created the cluster and leads it"
    );

    cl.nodes[victim].kill9();
    let killed = Instant::now();
    let via = cl.live();
    let mut expect = vec![3, 3, 3];
    expect[victim] = 0;
    // A survivor answers at once, or, while it still forwards to the dead leader, as soon as
    // the next one is elected: no error either way.
    cl.ok(via, &["ps"]);
    let answered = killed.elapsed();
    cl.wait_until("the lost node's slots rescheduled", 60, || {
        cl.placement(via, &app) == expect
    });
    let moved = killed.elapsed();
    assert!(
        moved >= Duration::from_secs(10),
        "a node is declared down only after its heartbeats stop for a while ({moved:?})"
    );
    let status = |cl: &Cluster| -> Vec<String> {
        let nodes: Vec<Value> =
            serde_json::from_str(&cl.ok(cl.live(), &["node", "ls", "--format", "json"])).unwrap();
        cl.nodes
            .iter()
            .map(|n| {
                let r = nodes.iter().find(|r| r["id"] == n.id).expect("node record");
                r["status"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let mut want = vec!["ready"; 3];
    want[victim] = "down";
    assert_eq!(status(&cl), want);
    assert!(cl.ok(via, &["node", "ls"]).contains(" down "));
    let tasks: Vec<Value> =
        serde_json::from_str(&cl.ok(via, &["ps", "-a", "--format", "json"])).unwrap();
    for id in &stale {
        let t = tasks
            .iter()
            .find(|t| t["id"].as_u64() == Some(*id))
            .unwrap_or_else(|| panic!("task {id} of the lost node is kept as history"));
        assert_eq!(t["state"], "orphaned", "{t}");
    }
    assert_eq!(
        cl.nodes[victim].running_tasks(),
        stale,
        "down in the store, its containers still run on the host"
    );

    cl.nodes[victim].start();
    let back = Instant::now();
    cl.wait_until("stale containers stopped", 30, || {
        cl.nodes[victim].running_tasks().is_empty()
    });
    let cleaned = back.elapsed();
    assert_eq!(status(&cl), vec!["ready"; 3]);
    let tasks = cl.tasks(victim);
    let slots: BTreeSet<String> = tasks
        .iter()
        .map(|t| format!("{}/{}", t["service"], t["slot"]))
        .collect();
    assert_eq!(slots.len(), 6, "one live task per slot: {tasks:#?}");
    assert_eq!(tasks.len(), 6);
    cl.assert_runtimes_match_store();
    let out = cl.ok(victim, &["service", "scale", "app=9"]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(cl.placement(0, &app), vec![3, 3, 3], "it takes work again");
    cl.assert_runtimes_match_store();
    same_everywhere(&cl);
    eprintln!(
        "timings ({tag}): first answer {answered:.1?} after kill -9, rescheduled {moved:.1?}, stale containers stopped {cleaned:.1?} after restart, total {:.1?}",
        t0.elapsed()
    );
    cl
}

#[test]
fn killed_node_loses_its_tasks_and_cleans_up_when_it_returns() {
    let mut cl = kill_node_then_bring_it_back("kn", 2);
    let app = "kns_app";
    // Then c is lost for good. `node rm` refuses while it is up, then takes it out of the
    // cluster, and its slots move at once (no node timeout to wait out).
    let c_id = cl.nodes[2].id.to_string();
    let out = cl.nodes[0].dcpp(&["node", "rm", &c_id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not down"), "{}", stderr(&out));
    let own = cl.nodes[0].id.to_string();
    let out = cl.nodes[0].dcpp(&["node", "rm", &own]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cluster leave"), "{}", stderr(&out));
    cl.nodes[2].wipe();
    let out = cl.ok(1, &["node", "rm", "--force", &c_id]);
    assert!(out.contains("removed"), "{out}");
    let removed = Instant::now();
    cl.wait_until("the removed node's slots rescheduled", 20, || {
        let p = cl.placement(0, app);
        p[2] == 0 && p[0] + p[1] == 9
    });
    let moved = removed.elapsed();
    assert!(moved < Duration::from_secs(10), "{moved:?}");
    let nodes: Vec<Value> =
        serde_json::from_str(&cl.ok(0, &["node", "ls", "--format", "json"])).unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    let st: Value =
        serde_json::from_str(&cl.ok(1, &["cluster", "status", "--format", "json"])).unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 2, "{st}");
    cl.assert_runtimes_match_store();
    eprintln!("timings (kn): slots of a removed node rescheduled {moved:.1?} after node rm");
    cl.teardown();
}

#[test]
fn killed_leader_node_loses_its_tasks_to_the_new_leader() {
    kill_node_then_bring_it_back("kl", 0).teardown();
}
#[test]
fn global_service_converges_with_a_drained_node() {
    let cl = Cluster::new("gd", false);
    let file = cl.write("compose.yml", &compose("gds", 1, true));
    let out = cl.ok(0, &["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    let c_id = cl.nodes[2].id.to_string();
    cl.ok(0, &["node", "update", "--availability", "drain", &c_id]);
    cl.wait_until("c drained", 30, || {
        cl.placement(0, "gds_mon") == vec![1, 1, 0]
    });
    // The service is as converged as it can be: two of two eligible nodes.
    let ls = cl.ok(0, &["service", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("gds_mon") && l.contains("2/2")),
        "{ls}"
    );
    // A change of the global service: two nodes take it, so apply must converge.
    let changed = compose("gds", 1, true).replace(
        "command: [\"sleep\", \"3600\"]\n    stop_signal: SIGKILL\n    deploy:\n      mode: global",
        "command: [\"sleep\", \"3601\"]\n    stop_signal: SIGKILL\n    deploy:\n      mode: global",
    );
    assert_ne!(changed, compose("gds", 1, true));
    let file = cl.write("compose2.yml", &changed);
    let out = cl.nodes[0].dcpp(&["apply", "-f", &file, "--timeout", "20s"]);
    assert!(
        out.status.success(),
        "apply with a drained node: {}\n{}\nservice ls:\n{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout),
        cl.ok(0, &["service", "ls"])
    );
    cl.teardown();
}
