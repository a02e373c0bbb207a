//! Work spread over nodes, end to end through the real binary, as root on the real kernel: three
//! `dcpp daemon`s side by side on this machine, each a full node (Raft member, node agent, and
//! a test rig of its own: data dir and image store, socket, listen address, cgroup parent,
//! bridge prefix, nft table and address pool), joined into one cluster with
//! `dcpp cluster join --token …` as a user would. What runs where is read twice: from the store
//! (`dcpp ps` through each node's socket) and from each node's own runtime
//! (`dcpp --data-dir NODE container ls`).
//!
//! These daemons share this machine's network (loopback advertise addresses), so their stack
//! networks stay node-local (`--overlay auto`); networks across nodes are `e2e_overlay`'s, on
//! hosts with namespaces of their own.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rig::cluster::{Cluster, Join};
use rig::*;
use serde_json::Value;

/// Label the node agent puts on task containers (node-agent `docs::LABEL_TASK`).
const LABEL_TASK: &str = "org.dcpp.task";

/// A node's task containers as its own runtime sees them: (task id, running).
fn containers(n: &Rig) -> Vec<(u64, bool)> {
    let out = n.dcpp(&["container", "ls", "-a", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .filter_map(|c| {
            let task = c["labels"][LABEL_TASK].as_str()?.parse().ok()?;
            Some((task, c["status"] == "running"))
        })
        .collect()
}

fn running_tasks(n: &Rig) -> BTreeSet<u64> {
    containers(n)
        .into_iter()
        .filter(|(_, r)| *r)
        .map(|(t, _)| t)
        .collect()
}

/// Three daemons: `a` creates the cluster, `b` joins with the manager token and `c` with the
/// worker token (or the manager token if `c_manager`).
fn three(tag: &str, c_manager: bool) -> Cluster {
    let c = if c_manager {
        Join::Manager
    } else {
        Join::Worker
    };
    Cluster::form(tag, &[Join::Manager, c])
}

/// Live tasks as the store on node `i` reports them.
fn tasks(cl: &Cluster, i: usize) -> Vec<Value> {
    serde_json::from_str(&cl.ok(i, &["ps", "--format", "json"])).unwrap()
}

/// Running tasks of `service` per node index (from the store, through node `via`).
fn placement(cl: &Cluster, via: usize, service: &str) -> Vec<usize> {
    let tasks = tasks(cl, via);
    cl.nodes
        .iter()
        .map(|n| {
            let id = n.id.to_string();
            tasks
                .iter()
                .filter(|t| {
                    t["service"] == service && t["state"] == "running" && t["node"] == id.as_str()
                })
                .count()
        })
        .collect()
}

/// What the store says runs where must be what the nodes' runtimes run: every running task's
/// container runs on its node, and no node runs a container of another task.
fn assert_runtimes_match_store(cl: &Cluster) {
    let tasks = tasks(cl, cl.live());
    for (n, name) in cl.nodes.iter().zip(&cl.names) {
        let id = n.id.to_string();
        let want: BTreeSet<u64> = tasks
            .iter()
            .filter(|t| t["state"] == "running" && t["node"] == id.as_str())
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        assert_eq!(
            running_tasks(n),
            want,
            "node {name}: running containers vs. the store's running tasks\n{tasks:#?}"
        );
    }
}

/// `dcpp down` of every stack, then stop the daemons; asserts nothing is left on the host.
fn teardown(mut cl: Cluster) {
    let stacks = cl.ok(cl.live(), &["stack", "ls"]);
    for s in stacks
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        cl.ok(cl.live(), &["down", "-p", s, "--timeout", "30s"]);
    }
    cl.wait_until("every node's containers removed", 20, || {
        cl.nodes
            .iter()
            .filter(|n| n.running_daemon())
            .all(|n| containers(n).is_empty())
    });
    for n in &mut cl.nodes {
        n.stop_daemon();
    }
    let links = stdout(&Command::new("ip").args(["-o", "link"]).output().unwrap());
    let tables = stdout(
        &Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap(),
    );
    for (n, name) in cl.nodes.iter().zip(&cl.names) {
        assert!(
            !links.contains(&format!(": {}", n.prefix)),
            "links of {name} left:\n{links}"
        );
        assert!(
            !tables
                .lines()
                .any(|l| l.ends_with(&format!(" {}", n.table))),
            "nft table of {name} left:\n{tables}"
        );
        for c in ["memory", "pids", "freezer"] {
            let p = format!("/sys/fs/cgroup/{c}/{}", n.cgroup);
            assert!(!Path::new(&p).exists(), "{p} left");
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

/// The same live tasks, with the same node and state, through every manager's socket; a
/// worker's socket has no cluster state to show and says so.
fn same_everywhere(cl: &Cluster) {
    let view = |i: usize| -> BTreeMap<u64, (String, String)> {
        tasks(cl, i)
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
    if is_worker(cl, 2) {
        worker_refuses(cl, 2, &["ps"]);
    } else {
        assert_eq!(a, view(2), "ps through a and c differ");
    }
}

fn is_worker(cl: &Cluster, i: usize) -> bool {
    let st: Value =
        serde_json::from_str(&cl.ok(i, &["cluster", "status", "--format", "json"])).unwrap();
    st["state"] == "Worker"
}

/// A worker's own socket refuses `args` (it holds no cluster state), pointing at a manager.
fn worker_refuses(cl: &Cluster, i: usize, args: &[&str]) {
    let out = cl.nodes[i].dcpp(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("this node is a worker") && err.contains(&cl.nodes[0].listen),
        "{args:?}: {err}"
    );
}

#[test]
fn replicas_spread_global_runs_everywhere_and_drain_moves_work() {
    let t0 = Instant::now();
    let cl = three("sp", false);
    let ls = cl.ok(1, &["node", "ls"]);
    assert_eq!(ls.lines().count(), 4, "{ls}");
    assert!(ls.contains("worker") && !ls.contains("learner"), "{ls}");
    worker_refuses(&cl, 2, &["node", "ls"]);
    let formed = t0.elapsed();

    // Applied through a follower's socket: the writes are forwarded to the leader.
    let file = cl.nodes[0].write("compose.yml", &compose("sps", 6, true));
    let out = cl.ok(1, &["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(
        placement(&cl, 0, "sps_app"),
        vec![2, 2, 2],
        "6 replicas over 3 nodes"
    );
    assert_eq!(
        placement(&cl, 0, "sps_mon"),
        vec![1, 1, 1],
        "global: one per node"
    );
    same_everywhere(&cl);
    assert_runtimes_match_store(&cl);
    let applied = t0.elapsed();

    // Placement constraints against node roles and labels set with `dcpp node update`.
    let b_id = cl.nodes[1].id.to_string();
    let file = cl.nodes[0].write(
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
        placement(&cl, 0, "spc_wk") == vec![0, 0, 2]
    });
    // No node has the label yet: pending, saying why.
    let pending: Vec<Value> = tasks(&cl, 0)
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
        placement(&cl, 0, "spc_ssd") == vec![0, 2, 0]
    });
    let node: Value = serde_json::from_str(&cl.ok(1, &["node", "inspect", &b_id])).unwrap();
    assert_eq!(node["value"]["labels"]["disk"], "ssd", "{node}");
    assert_runtimes_match_store(&cl);
    cl.ok(0, &["node", "update", "--label-rm", "disk", &b_id]);
    cl.ok(0, &["down", "-p", "spc"]);
    let node: Value = serde_json::from_str(&cl.ok(1, &["node", "inspect", &b_id])).unwrap();
    assert!(node["value"]["labels"].get("disk").is_none(), "{node}");

    // A worker's own socket can neither read nor change the cluster (it holds none of the
    // log; its certificate may write only its own record and task status): a clear refusal
    // that names the way.
    let c_id = cl.nodes[2].id.to_string();
    let out = cl.nodes[2].dcpp(&["node", "update", "--availability", "drain", &c_id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("this node is a worker") && stderr(&out).contains("manager"),
        "{}",
        stderr(&out)
    );
    // Drain c through a manager: its tasks move, its containers stop.
    let out = cl.ok(1, &["node", "update", "--availability", "drain", &c_id]);
    assert!(out.contains("drain"), "{out}");
    assert!(cl.ok(0, &["node", "ls"]).contains("drain"));
    cl.wait_until("c drained", 30, || {
        placement(&cl, 0, "sps_app") == vec![3, 3, 0]
            && placement(&cl, 0, "sps_mon") == vec![1, 1, 0]
    });
    cl.wait_until("c's containers stopped", 20, || {
        running_tasks(&cl.nodes[2]).is_empty()
    });
    // Nothing of c's is live in the store any more (drained ≠ down: c keeps reporting).
    assert!(
        !tasks(&cl, 0).iter().any(|t| t["node"] == c_id.as_str()),
        "{:#?}",
        tasks(&cl, 0)
    );
    assert_runtimes_match_store(&cl);
    same_everywhere(&cl);
    let drained = t0.elapsed();

    // Active again: the global service comes back to c; replicas are not rebalanced (as swarm).
    cl.ok(0, &["node", "update", "--availability", "active", &c_id]);
    cl.wait_until("global task back on c", 30, || {
        placement(&cl, 0, "sps_mon") == vec![1, 1, 1]
    });
    assert_eq!(placement(&cl, 0, "sps_app"), vec![3, 3, 0]);
    assert_runtimes_match_store(&cl);

    // c leaves: its record goes at once (no node timeout), so does its global task, and its
    // daemon, now a standalone cluster that knows no such task, removes the container.
    let out = cl.ok(2, &["cluster", "leave"]);
    assert!(out.contains("left the cluster"), "{out}");
    cl.wait_until("c's container removed", 30, || {
        containers(&cl.nodes[2]).is_empty()
    });
    let left = t0.elapsed();
    assert_eq!(placement(&cl, 0, "sps_mon"), vec![1, 1, 0]);
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&cl.ok(0, &["node", "ls", "--format", "json"]))
            .unwrap()
            .len(),
        2
    );
    assert!(
        tasks(&cl, 2).is_empty(),
        "c is on its own: {:#?}",
        tasks(&cl, 2)
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

    teardown(cl);
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
    // c is a worker (no raft member: it goes through the managers).
    let mut cl = three(tag, victim == 0);
    let stack = format!("{tag}s");
    let app = format!("{stack}_app");
    let file = cl.nodes[0].write("compose.yml", &compose(&stack, 6, false));
    // Changes go through a manager (a worker's socket refuses them): the victim itself unless
    // it is the worker.
    let writer = if victim == 2 { 1 } else { victim };
    let out = cl.ok(writer, &["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(placement(&cl, writer, &app), vec![2, 2, 2]);
    assert_runtimes_match_store(&cl);
    let stale = running_tasks(&cl.nodes[victim]);
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
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let via = cl.live();
    let mut expect = vec![3, 3, 3];
    expect[victim] = 0;
    // A survivor answers at once, or, while it still forwards to the dead leader, as soon as
    // the next one is elected: no error either way.
    cl.ok(via, &["ps"]);
    let answered = killed.elapsed();
    cl.wait_until("the lost node's slots rescheduled", 60, || {
        placement(&cl, via, &app) == expect
    });
    let moved = killed.elapsed();
    // Down is a rule on the record (three missed heartbeats of the node's own interval and a
    // second): computed from what the record says, the dead node was down in under 5 s.
    let victim_id = cl.nodes[victim].id.to_string();
    let rec: Value = serde_json::from_str(&cl.ok(via, &["node", "inspect", &victim_id])).unwrap();
    let (last, interval) = (
        rec["value"]["last_heartbeat_ms"].as_u64().unwrap(),
        rec["value"]["heartbeat_ms"].as_u64().unwrap(),
    );
    assert_eq!(interval, 1000, "the default heartbeat: {rec}");
    let down_after = Duration::from_millis((last + 3 * interval + 1000).saturating_sub(killed_ms));
    assert!(
        down_after > Duration::from_secs(1) && down_after < Duration::from_secs(5),
        "down {down_after:?} after the kill ({rec})"
    );
    assert!(
        moved >= down_after,
        "rescheduled only once the node is down ({moved:?} < {down_after:?})"
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
    let history: Vec<Value> =
        serde_json::from_str(&cl.ok(via, &["ps", "-a", "--format", "json"])).unwrap();
    for id in &stale {
        let t = history
            .iter()
            .find(|t| t["id"].as_u64() == Some(*id))
            .unwrap_or_else(|| panic!("task {id} of the lost node is kept as history"));
        assert_eq!(t["state"], "orphaned", "{t}");
    }
    assert_eq!(
        running_tasks(&cl.nodes[victim]),
        stale,
        "down in the store, its containers still run on the host"
    );

    cl.nodes[victim].start_daemon();
    let back = Instant::now();
    cl.wait_until("stale containers stopped", 30, || {
        running_tasks(&cl.nodes[victim]).is_empty()
    });
    let cleaned = back.elapsed();
    assert_eq!(status(&cl), vec!["ready"; 3]);
    let tasks = tasks(&cl, writer);
    let slots: BTreeSet<String> = tasks
        .iter()
        .map(|t| format!("{}/{}", t["service"], t["slot"]))
        .collect();
    assert_eq!(slots.len(), 6, "one live task per slot: {tasks:#?}");
    assert_eq!(tasks.len(), 6);
    assert_runtimes_match_store(&cl);
    let out = cl.ok(writer, &["service", "scale", "app=9"]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(
        placement(&cl, 0, &app),
        vec![3, 3, 3],
        "it takes work again"
    );
    assert_runtimes_match_store(&cl);
    same_everywhere(&cl);
    eprintln!(
        "timings ({tag}): first answer {answered:.1?} after kill -9, down after {down_after:.1?}, rescheduled {moved:.1?}, stale containers stopped {cleaned:.1?} after restart, total {:.1?}",
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
        let p = placement(&cl, 0, app);
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
    assert_runtimes_match_store(&cl);
    eprintln!("timings (kn): slots of a removed node rescheduled {moved:.1?} after node rm");
    teardown(cl);
}

#[test]
fn killed_leader_node_loses_its_tasks_to_the_new_leader() {
    teardown(kill_node_then_bring_it_back("kl", 0));
}

#[test]
fn global_service_converges_with_a_drained_node() {
    let cl = three("gd", false);
    let file = cl.nodes[0].write("compose.yml", &compose("gds", 1, true));
    let out = cl.ok(0, &["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    let c_id = cl.nodes[2].id.to_string();
    cl.ok(0, &["node", "update", "--availability", "drain", &c_id]);
    cl.wait_until("c drained", 30, || {
        placement(&cl, 0, "gds_mon") == vec![1, 1, 0]
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
    let file = cl.nodes[0].write("compose2.yml", &changed);
    let out = cl.nodes[0].dcpp(&["apply", "-f", &file, "--timeout", "20s"]);
    assert!(
        out.status.success(),
        "apply with a drained node: {}\n{}\nservice ls:\n{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout),
        cl.ok(0, &["service", "ls"])
    );
    teardown(cl);
}

/// This node's certificate as its own `cluster status` reports it.
fn certificate(cl: &Cluster, i: usize) -> Value {
    let st: Value =
        serde_json::from_str(&cl.ok(i, &["cluster", "status", "--format", "json"])).unwrap();
    st["certificate"].clone()
}

/// Cluster trust through five real daemons (three managers, two workers) over mutual TLS:
/// certificates that expire after 15 s are renewed while clients keep asking and tasks keep
/// running; promote and demote re-issue a node's certificate; a removed node's certificate is
/// refused when it comes back.
#[test]
fn five_daemons_renew_certificates_promote_demote_and_revoke() {
    let cl = Cluster::form_with(
        "tr",
        &[Join::Manager, Join::Manager, Join::Worker, Join::Worker],
        &["--cert-ttl", "15s", "--ca-rotation-grace", "8s"],
    );
    let roles: Vec<String> = (0..5)
        .map(|i| certificate(&cl, i)["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(roles, ["manager", "manager", "manager", "worker", "worker"]);
    let (d_id, e_id) = (cl.nodes[3].id.to_string(), cl.nodes[4].id.to_string());
    // e runs nothing, so that it can be removed and come back without leftovers.
    cl.ok(0, &["node", "update", "--availability", "drain", &e_id]);
    let file = cl.nodes[0].write("compose.yml", &compose("trs", 4, false));
    let out = cl.ok(0, &["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    let live = |cl: &Cluster| -> BTreeMap<u64, (String, u64)> {
        tasks(cl, 0)
            .iter()
            .filter(|t| t["state"] == "running")
            .map(|t| {
                (
                    t["id"].as_u64().unwrap(),
                    (
                        t["node"].to_string(),
                        t["restart_count"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect()
    };
    let before = live(&cl);
    assert_eq!(before.len(), 4, "{before:?}");
    // The workers hold none of the log: their raft store never saw the stack, though d runs
    // its tasks (a manager's does, which shows the search would find it).
    let holds_stack = |i: usize| {
        let out = Command::new("grep")
            .args(["-rl", "trs_app"])
            .arg(cl.nodes[i].data.join("raft"))
            .output()
            .unwrap();
        !stdout(&out).trim().is_empty()
    };
    assert!(holds_stack(0));
    assert!(!holds_stack(3) && !holds_stack(4));
    assert!(
        before.values().any(|(n, _)| *n == format!("{d_id:?}")),
        "d runs tasks: {before:?}"
    );
    worker_refuses(&cl, 3, &["ps"]);
    let first: Vec<Value> = (0..5).map(|i| certificate(&cl, i)).collect();
    // Longer than a certificate lives: every node renews (a third before expiry) while each
    // manager answers `ps` every 200 ms and the workers keep reporting.
    let t0 = Instant::now();
    let mut asked = 0;
    while t0.elapsed() < Duration::from_secs(20) {
        for i in 0..3 {
            cl.ok(i, &["ps", "--format", "json"]);
            asked += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (i, old) in first.iter().enumerate() {
        let now = certificate(&cl, i);
        assert_ne!(
            now["serial"], old["serial"],
            "node {i} renewed its certificate"
        );
        assert!(now["not_after"].as_i64() > old["not_after"].as_i64());
        assert_eq!(now["role"], old["role"]);
    }
    assert_eq!(
        live(&cl),
        before,
        "no task restarted or moved while certificates renewed"
    );
    let nodes: Vec<Value> =
        serde_json::from_str(&cl.ok(0, &["node", "ls", "--format", "json"])).unwrap();
    assert!(
        nodes.iter().all(|n| n["status"] == "ready"),
        "every node kept its heartbeat: {nodes:#?}"
    );
    // Promote d, then demote it: its own certificate follows.
    let wait_role = |i: usize, role: &str| {
        cl.wait_until(&format!("a {role} certificate on node {i}"), 15, || {
            certificate(&cl, i)["role"] == role
        })
    };
    let out = cl.ok(0, &["node", "promote", &d_id]);
    assert!(out.contains("manager"), "{out}");
    let promoted = wait_role(3, "manager");
    let st: Value =
        serde_json::from_str(&cl.ok(0, &["cluster", "status", "--format", "json"])).unwrap();
    assert!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |m| m["id"].as_u64().map(|v| v.to_string()) == Some(d_id.clone())
                    && m["voter"] == true
            ),
        "{st}"
    );
    cl.ok(0, &["node", "demote", &d_id]);
    let demoted = wait_role(3, "worker");
    cl.wait_until("d out of raft, a worker again", 15, || is_worker(&cl, 3));
    // The root rotates: every node, workers included, moves to the new root while the
    // managers keep answering; after the grace the old root is trusted nowhere and every node
    // still reports.
    let old_issuer = certificate(&cl, 0)["issuer"].clone();
    assert!(old_issuer.as_str().is_some_and(|s| !s.is_empty()));
    let out = cl.ok(1, &["cluster", "ca", "--rotate"]);
    assert!(out.contains("rotated"), "{out}");
    let moved = cl.wait_until("every node on the new root", 30, || {
        for i in 0..3 {
            cl.ok(i, &["ps", "--format", "json"]);
        }
        (0..5).all(|i| certificate(&cl, i)["issuer"] != old_issuer)
    });
    cl.wait_until("the rotation finished", 30, || {
        cl.logs().contains("root rotation finished")
    });
    std::thread::sleep(Duration::from_secs(6));
    let nodes: Vec<Value> =
        serde_json::from_str(&cl.ok(0, &["node", "ls", "--format", "json"])).unwrap();
    assert!(
        nodes.iter().all(|n| n["status"] == "ready"),
        "every node reports under the new root alone: {nodes:#?}"
    );
    assert_eq!(
        live(&cl),
        before,
        "no task restarted or moved through promote, demote and the root rotation"
    );
    // Revocation: e is stopped and removed; when it comes back its certificate is refused.
    let mut cl = cl;
    cl.nodes[4].stop_daemon();
    let out = cl.ok(1, &["node", "rm", "--force", &e_id]);
    assert!(out.contains("revoked"), "{out}");
    cl.nodes[4].start_daemon();
    cl.wait_until("e's requests refused as revoked", 20, || {
        cl.nodes[4].log().contains("revoked")
    });
    let nodes: Vec<Value> =
        serde_json::from_str(&cl.ok(0, &["node", "ls", "--format", "json"])).unwrap();
    assert_eq!(nodes.len(), 4, "{nodes:#?}");
    eprintln!(
        "FIGURES: 5 daemons, 15 s certificates: {asked} ps calls through the managers over 20 s, \
         all answered; promote took {promoted:.1?}, demote {demoted:.1?}, every node on a \
         new root {moved:.1?} after the rotation"
    );
    cl.nodes[4].stop_daemon();
    teardown(cl);
}

fn volume_stack(constrained: bool) -> String {
    let placement = if constrained {
        "      placement:\n        constraints: [node.labels.disk==here]\n"
    } else {
        ""
    };
    format!(
        r#"name: vhs
services:
  db:
    image: {IMAGE}
    command: ["sh", "-c", "echo boot >> /data/boots; cat /data/boots; sleep 3600"]
    stop_signal: SIGKILL
    volumes: ["data:/data"]
    deploy:
      replicas: 1
{placement}volumes:
  data: {{}}
"#
    )
}

/// A named local volume keeps its service on its node: when that node's daemon dies the task
/// waits, saying where its volume lives, instead of starting over on an empty volume
/// elsewhere; it comes back to the same data; moving it takes the user's `volume rm --force`.
#[test]
fn a_service_with_a_named_volume_waits_for_its_node_and_returns_to_its_data() {
    let mut cl = three("vh", false);
    let c_id = cl.nodes[2].id.to_string();
    cl.ok(0, &["node", "update", "--label-add", "disk=here", &c_id]);
    let file = cl.nodes[0].write("compose.yml", &volume_stack(true));
    cl.ok(0, &["apply", "-f", &file]);
    assert_eq!(placement(&cl, 0, "vhs_db"), vec![0, 0, 1]);
    // Without the constraint only the volume holds it on c.
    let file = cl.nodes[0].write("compose.yml", &volume_stack(false));
    cl.ok(0, &["apply", "-f", &file]);
    assert_eq!(placement(&cl, 0, "vhs_db"), vec![0, 0, 1]);

    cl.nodes[2].kill9();
    let why = format!("volume vhs_data lives on node {c_id}, which is down");
    cl.wait_until("the task pending for its volume's node", 30, || {
        tasks(&cl, 0)
            .iter()
            .any(|t| t["service"] == "vhs_db" && t["state"] == "pending" && t["message"] == why)
    });
    // Well past the node's loss: still nowhere else.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(placement(&cl, 0, "vhs_db"), vec![0, 0, 0], "not moved");
    assert!(cl.ok(1, &["ps"]).contains(&why));
    let out = cl.nodes[0].dcpp(&["volume", "rm", "vhs_data"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "volume vhs_data lives on node {c_id}: remove it there"
        )),
        "{}",
        stderr(&out)
    );

    cl.nodes[2].start_daemon();
    cl.wait_until("the task back on its volume's node", 60, || {
        placement(&cl, 0, "vhs_db") == vec![0, 0, 1]
    });
    let cid = tasks(&cl, 0)
        .iter()
        .find(|t| t["service"] == "vhs_db" && t["state"] == "running")
        .and_then(|t| t["container_id"].as_str().map(str::to_string))
        .expect("the running task's container");
    cl.wait_until("the second boot on the same data", 20, || {
        stdout(&cl.nodes[2].dcpp(&["logs", &cid])) == "boot\nboot\n"
    });

    // The user's explicit move: c is lost, its record forgotten, the slot starts afresh.
    cl.nodes[2].kill9();
    cl.wait_until("the task pending again", 30, || {
        tasks(&cl, 0)
            .iter()
            .any(|t| t["service"] == "vhs_db" && t["state"] == "pending" && t["message"] == why)
    });
    let out = cl.ok(0, &["volume", "rm", "--force", "vhs_data"]);
    assert!(out.contains("forgotten"), "{out}");
    cl.wait_until("the task placed elsewhere", 30, || {
        let p = placement(&cl, 0, "vhs_db");
        p[2] == 0 && p[0] + p[1] == 1
    });
    cl.nodes[2].start_daemon();
    teardown(cl);
}

/// `dcpp logs SERVICE` shows the replicas of every node, each line naming its task and node;
/// a node that cannot be reached is named on stderr and makes the exit code 1.
#[test]
fn logs_of_a_service_merge_every_node_and_name_an_unreachable_one() {
    let mut cl = three("lg", false);
    let file = cl.nodes[0].write(
        "compose.yml",
        &format!(
            r#"name: lgs
services:
  app:
    image: {IMAGE}
    command: ["sh", "-c", "echo hello; sleep 3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 2
      placement:
        constraints: [node.role==manager]
        max_replicas_per_node: 1
"#
        ),
    );
    cl.ok(0, &["apply", "-f", &file]);
    assert_eq!(placement(&cl, 0, "lgs_app"), vec![1, 1, 0]);
    let (a, b, c) = (cl.nodes[0].id, cl.nodes[1].id, cl.nodes[2].id);
    let nodes_of = |out: &str| -> BTreeSet<String> {
        out.lines()
            .filter(|l| l.ends_with("| hello"))
            .filter_map(|l| l.split(" |").next()?.trim().split('@').nth(1))
            .map(str::to_string)
            .collect()
    };
    let mut out = String::new();
    cl.wait_until("both replicas' lines", 20, || {
        out = cl.ok(1, &["logs", "app"]);
        nodes_of(&out).len() == 2
    });
    assert_eq!(
        nodes_of(&out),
        [a.to_string(), b.to_string()].into(),
        "{out}"
    );
    // Labels are padded to one width: `app.1@12  | hello`.
    let from = |l: &str, node: u64| {
        l.ends_with("| hello")
            && l.split(" |")
                .next()
                .is_some_and(|p| p.trim().ends_with(&format!("@{node}")))
    };
    assert!(out.lines().any(|l| from(l, a)), "{out}");

    // `logs -f` follows every node, and replicas that start later join the stream.
    /// The follower goes with the test, also when it fails.
    struct Follower(std::process::Child);
    impl Drop for Follower {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follow = Follower(
        cl.nodes[1]
            .cmd()
            .args(["logs", "-f", "app"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::io::BufReader::new(follow.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(reader).map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    // Waits until the stream holds `n` hello lines from each of nodes a and b.
    let wait_for = |what: &str, n: usize, seen: &mut String| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let count = |seen: &str, node: u64| seen.lines().filter(|l| from(l, node)).count();
        while count(seen, a) < n || count(seen, b) < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    seen.push_str(&l);
                    seen.push('\n');
                }
                Err(_) => panic!("logs -f never showed {what}:\n{seen}"),
            }
        }
        assert_eq!(
            (count(seen, a), count(seen, b)),
            (n, n),
            "each line once:\n{seen}"
        );
    };
    wait_for("both nodes' replicas", 1, &mut seen);
    // Replaced replicas on both nodes: the new containers' lines join the stream.
    cl.ok(0, &["service", "update", "--force", "lgs_app"]);
    wait_for("the replicas that replaced them", 2, &mut seen);
    drop(follow);

    cl.nodes[2].kill9();
    let o = cl.nodes[0].dcpp(&["logs", "app"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "node {c} ({}) could not be reached",
            cl.nodes[2].listen
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(nodes_of(&stdout(&o)).len(), 2, "{}", stdout(&o));
    cl.nodes[2].start_daemon();
    teardown(cl);
}
