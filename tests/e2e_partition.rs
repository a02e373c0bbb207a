//! Node loss on test hosts, end to end through the real binary: three managers and two workers,
//! each daemon in a network namespace of its own on an underlay of the test's, stack networks
//! across them (VXLAN). A worker dies (its link goes and its daemon is killed -9) while a client
//! on another node fetches a service by name; another is partitioned (its link goes) and heals.
//! What runs where is read from the store (`dcpp ps` on a manager) and from each node's own
//! runtime; what a name resolves to from inside a container; forwarding and neighbour entries
//! from each host's VXLAN devices.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rig::cluster::{Cluster, Join};
use rig::overlay::{self, Ctr};
use rig::*;
use serde_json::Value;

/// Managers `a`, `b`, `c`; workers `d`, `e` (web runs on the workers, the client on `a`).
const A: usize = 0;
const D: usize = 3;
const E: usize = 4;
const WEB_REPLICAS: usize = 4;
const HELLO: &str = "hello from dcpp\n";

fn five(tag: &str) -> Cluster {
    Cluster::form_in_netns(
        tag,
        &[Join::Manager, Join::Manager, Join::Worker, Join::Worker],
        &["--overlay", "on"],
    )
}

/// `replicas` of web on the nodes of `role`, a client on node `client_node`.
fn compose(role: &str, replicas: usize, client_node: u64) -> String {
    format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    # httpd is PID 1 and ignores SIGTERM: each stop takes the whole grace.
    stop_grace_period: 2s
    deploy:
      replicas: {replicas}
      placement:
        constraints: ["node.role=={role}"]
  client:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy:
      placement:
        constraints: ["node.id=={client_node}"]
"#
    )
}

/// Applies the stack (web spread over the workers, the client on `a`) and returns the client
/// container once it fetches web by name.
fn deploy(cl: &Cluster, stack: &str) -> Ctr {
    deploy_on(cl, stack, "worker", A, &[0, 0, 0, 2, 2])
}

/// Applies the stack with web on the nodes of `role` and the client on node `client_at`;
/// web must be placed as `want` (replicas per node index).
fn deploy_on(cl: &Cluster, stack: &str, role: &str, client_at: usize, want: &[usize]) -> Ctr {
    let replicas = want.iter().sum();
    let file = cl.nodes[A].write(
        "compose.yml",
        &compose(role, replicas, cl.nodes[client_at].id),
    );
    let out = cl.ok(A, &["apply", "-f", &file, "-p", stack, "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(placement(cl, &format!("{stack}_web")), want, "web's spread");
    let client = overlay::running(&cl.nodes[client_at], Some("client"));
    assert_eq!(client.len(), 1, "{client:?}");
    let client = client[0].clone();
    cl.wait_until("web answers the client by name", 20, || {
        fetch(&cl.nodes[client_at], &client.id).is_ok()
    });
    client
}

/// One request from the client, as a user's would be: by name, bounded by a timeout.
fn fetch(n: &Rig, client: &str) -> Result<(), String> {
    match overlay::exec(n, client, &["timeout", "3", "wget", "-qO-", "http://web/"]) {
        (true, out) if out == HELLO => Ok(()),
        (_, out) => Err(out),
    }
}

/// Live tasks as the store says (through manager `a`).
fn tasks(cl: &Cluster) -> Vec<Value> {
    serde_json::from_str(&cl.ok(A, &["ps", "--format", "json"])).unwrap()
}

fn running_tasks(cl: &Cluster, service: &str) -> Vec<Value> {
    tasks(cl)
        .into_iter()
        .filter(|t| t["service"] == service && t["state"] == "running")
        .collect()
}

/// Running tasks of `service` per node index, from the store.
fn placement(cl: &Cluster, service: &str) -> Vec<usize> {
    let running = running_tasks(cl, service);
    cl.nodes
        .iter()
        .map(|n| {
            let id = n.id.to_string();
            running.iter().filter(|t| t["node"] == id.as_str()).count()
        })
        .collect()
}

/// Task containers, of any state, in node `n`'s runtime.
fn task_containers(n: &Rig) -> usize {
    let out = n.dcpp(&["container", "ls", "-a", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .filter(|c| c["labels"]["org.dcpp.task"].is_string())
        .count()
}

/// Everything that must hold once the cluster has converged: `Ok` with a summary, or what
/// still differs.
///
/// - the store runs exactly one task per slot of each service, each on a node that is up;
/// - every node's runtime runs exactly the containers of the tasks the store places there;
/// - every host with a VXLAN device lists exactly the containers on other hosts, each behind
///   its host's underlay address (FDB) and with its address (neighbours), nothing else;
/// - `web` resolves, from the client on node `client_at`, to exactly the running replicas.
fn converged(
    cl: &Cluster,
    stack: &str,
    (client_at, client): (usize, &Ctr),
    replicas: usize,
) -> Result<String, String> {
    let tasks = tasks(cl);
    let mut slots = BTreeMap::new();
    for t in tasks.iter().filter(|t| t["state"] == "running") {
        *slots
            .entry(format!("{}/{}", t["service"], t["slot"]))
            .or_insert(0) += 1;
    }
    let web = format!("{stack}_web");
    let web_slots = slots.keys().filter(|s| s.contains(&web)).count();
    if web_slots != replicas || slots.values().any(|n| *n != 1) || slots.len() != replicas + 1 {
        return Err(format!("running tasks per slot: {slots:?}"));
    }
    let nodes: Vec<Value> =
        serde_json::from_str(&cl.ok(A, &["node", "ls", "--format", "json"])).unwrap();
    if let Some(n) = nodes.iter().find(|n| n["status"] != "ready") {
        return Err(format!("node not ready: {n}"));
    }
    // Node index → its running containers (with addresses).
    let u = cl.underlay.as_ref().unwrap();
    let mut here: Vec<Vec<(Ctr, String)>> = Vec::new();
    for n in &cl.nodes {
        let id = n.id.to_string();
        let want: BTreeSet<u64> = tasks
            .iter()
            .filter(|t| t["state"] == "running" && t["node"] == id.as_str())
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        let running = overlay::running(n, None);
        let got: BTreeSet<u64> = running.iter().map(|c| c.task).collect();
        if got != want || running.len() != want.len() {
            return Err(format!(
                "node {}: runtime runs tasks {got:?}, the store places {want:?} there",
                n.id
            ));
        }
        here.push(
            running
                .into_iter()
                .map(|c| {
                    let ip = overlay::address(n, &c.id);
                    (c, ip)
                })
                .collect(),
        );
    }
    for i in 0..cl.nodes.len() {
        let entries = overlay::overlay_entries(cl, i);
        let (fdb, neigh): (BTreeSet<String>, BTreeSet<String>) = here
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(j, cs)| {
                cs.iter().map(move |(_, ip)| {
                    (format!("{} {}", overlay::mac(ip), u.addrs[j]), ip.clone())
                })
            })
            .unzip();
        match entries {
            None if here[i].is_empty() => {}
            None => return Err(format!("host {i} runs tasks but has no VXLAN device")),
            Some(got) if got == (fdb.clone(), neigh.clone()) => {}
            Some(got) => {
                return Err(format!(
                    "host {i}: overlay entries {got:?}, the running tasks elsewhere are \
                     {fdb:?} / {neigh:?}"
                ));
            }
        }
    }
    let web_at: BTreeSet<String> = here
        .iter()
        .flatten()
        .filter(|(c, _)| c.service == "web")
        .map(|(_, ip)| ip.clone())
        .collect();
    let resolved = overlay::resolve(&cl.nodes[client_at], &client.id, "web");
    if resolved != web_at {
        return Err(format!(
            "web resolves to {resolved:?}, the replicas are at {web_at:?}"
        ));
    }
    Ok(format!(
        "{slots:?}; web at {web_at:?}; containers per node {:?}",
        here.iter().map(Vec::len).collect::<Vec<_>>()
    ))
}

/// Polls [`converged`] until it holds; panics with the last difference after `secs`.
fn wait_converged(
    cl: &Cluster,
    stack: &str,
    client: (usize, &Ctr),
    replicas: usize,
    secs: u64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match converged(cl, stack, client, replicas) {
            Ok(summary) => return summary,
            Err(e) if Instant::now() >= deadline => {
                panic!("not converged after {secs}s: {e}\n{}", cl.logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// One request of the client loop: when it started and ended, what it asked (`web`, or one
/// of the addresses `web` resolved to) and how it went.
#[derive(Debug)]
struct Request {
    start: Instant,
    end: Instant,
    target: String,
    ok: bool,
}

/// One turn of the client: `web` by name, and at the same time each address the name
/// resolves to now (whichever replica the resolver's address sorting would favour, every
/// replica the name offers is asked). Prints `ok|fail TARGET` lines.
const CLIENT_TURN: &str = r#"
for ip in $(nslookup web | awk '/^Name:/ {n = 1; next} n && /^Address/ {print $2}'); do
  (if timeout 3 wget -qO- "http://$ip/" >/dev/null; then echo "ok $ip"; else echo "fail $ip"; fi) &
done
if timeout 3 wget -qO- http://web/ >/dev/null; then echo "ok web"; else echo "fail web"; fi
wait
"#;

fn client_turn(n: &Rig, client: &str) -> Vec<Request> {
    let start = Instant::now();
    let (_, out) = overlay::exec(n, client, &["sh", "-c", CLIENT_TURN]);
    let end = Instant::now();
    let mut turn: Vec<Request> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(o, _)| *o == "ok" || *o == "fail")
        .map(|(o, t)| Request {
            start,
            end,
            target: t.to_string(),
            ok: o == "ok",
        })
        .collect();
    if !turn.iter().any(|r| r.target == "web") {
        turn.push(Request {
            start,
            end,
            target: "web".into(),
            ok: false,
        });
    }
    turn
}

/// Cuts node `i` off the underlay and waits for both sides of the partition grace: the
/// managers reschedule its slots (`rescheduled` holds), and the node itself stops its task
/// containers, not before the grace (10 s from the last heartbeat that got through, up to a
/// second before the cut) and not long after it and the stop grace, then removes them.
fn cut_off(cl: &Cluster, i: usize, tag: &str, rescheduled: impl FnMut() -> bool) {
    let n = &cl.nodes[i];
    let cut = Instant::now();
    cl.underlay.as_ref().unwrap().set_link(i, false);
    let moved = cl.wait_until("the cut-off node's slots rescheduled", 30, rescheduled);
    let mut stopped = Duration::ZERO;
    slot::wait_until(
        "the cut-off node stopped its containers",
        Duration::from_secs(30),
        || {
            stopped = cut.elapsed();
            overlay::running(n, None).is_empty()
        },
        || n.log(),
    );
    eprintln!(
        "timings ({tag}): rescheduled {moved:.1?} after the cut, cut-off node stopped its \
         tasks after {stopped:.1?}"
    );
    assert!(
        stopped > Duration::from_secs(8) && stopped < Duration::from_secs(16),
        "stopped {stopped:?} after the cut"
    );
    // Removed too, right after the stop.
    slot::wait_until(
        "the stopped containers removed",
        Duration::from_secs(10),
        || task_containers(n) == 0,
        || n.log(),
    );
    assert!(
        n.log().contains("no heartbeat reached the managers"),
        "{}",
        n.log()
    );
}

/// Polls `f` every 50 ms (finer than the rig's polls, for timings); returns how long until
/// it held.
fn time_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn a_killed_workers_replicas_run_elsewhere_in_seconds_and_only_requests_at_the_kill_fail() {
    let cl = five("pk");
    let client = deploy(&cl, "pk");
    let u = cl.underlay.as_ref().unwrap();
    let dead: BTreeSet<String> = overlay::running(&cl.nodes[D], Some("web"))
        .iter()
        .map(|c| overlay::address(&cl.nodes[D], &c.id))
        .collect();
    assert_eq!(dead.len(), 2);
    let log: Mutex<Vec<Request>> = Mutex::default();
    let stop = AtomicBool::new(false);
    let turns = || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|r| r.target == "web")
            .count()
    };
    let (killed, replaced) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let turn = client_turn(&cl.nodes[A], &client.id);
                log.lock().unwrap().extend(turn);
            }
        });
        cl.wait_until("the client loop runs", 20, || turns() >= 5);

        // The worker dies: its network goes at once, its daemon is killed -9.
        let killed = Instant::now();
        u.set_link(D, false);
        let pid = cl.nodes[D].pid().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap()
                .success()
        );
        let moved = time_until("d's replicas running on e", 30, || {
            placement(&cl, "pk_web") == vec![0, 0, 0, 0, WEB_REPLICAS]
        });
        let replaced = Instant::now();
        eprintln!("timings (pk): d's replicas ran on e {moved:.1?} after the kill");
        // The goal is under 5 s (3.8–4.5 s measured); the bound leaves a loaded machine room.
        assert!(
            moved < Duration::from_secs(6),
            "replicas of the killed worker ran elsewhere {moved:?} after the kill\n{}",
            cl.logs()
        );
        // The replacements serve: the loop goes on for a while on them alone.
        let after = turns();
        cl.wait_until("client turns after the replacements run", 30, || {
            turns() >= after + 10
        });
        stop.store(true, Ordering::Relaxed);
        (killed, replaced)
    });

    let log = log.into_inner().unwrap();
    // Seconds from the kill (negative: before it).
    let at = |t: Instant| {
        t.saturating_duration_since(killed).as_secs_f64()
            - killed.saturating_duration_since(t).as_secs_f64()
    };
    let describe = |r: &Request| format!("{:+.2}s..{:+.2}s {}", at(r.start), at(r.end), r.target);
    let failed: Vec<String> = log.iter().filter(|r| !r.ok).map(describe).collect();
    eprintln!(
        "client loop (pk): {} requests ({} by name), replacements ran {:+.2}s, failed: {failed:#?}",
        log.len(),
        log.iter().filter(|r| r.target == "web").count(),
        at(replaced)
    );
    // Until the kill none failed. Then only requests to the dead replicas, sent before the
    // leader declared their node down and took them out of the name; none once the
    // replacements run.
    for r in log.iter().filter(|r| !r.ok) {
        assert!(
            r.end > killed && r.start < replaced,
            "a failure outside the window of the kill: {}\n{failed:#?}",
            describe(r)
        );
        assert!(
            r.target == "web" || dead.contains(&r.target),
            "a request to a live replica failed: {}\n{failed:#?}",
            describe(r)
        );
    }
    let after: Vec<&Request> = log.iter().filter(|r| r.start > replaced).collect();
    assert!(after.iter().filter(|r| r.target == "web").count() >= 10);
    // (The replacements may take the dead replicas' addresses again: the leader frees them
    // when it orphans their tasks.)
    assert!(after.iter().all(|r| r.ok));
    // What the store says runs, runs: four web replicas on e, one per slot.
    let on_e = overlay::running(&cl.nodes[E], Some("web"));
    assert_eq!(on_e.len(), WEB_REPLICAS, "{on_e:?}");
    let slots: BTreeSet<&str> = on_e.iter().map(|c| c.slot.as_str()).collect();
    assert_eq!(
        slots.len(),
        WEB_REPLICAS,
        "one container per slot: {on_e:?}"
    );
}

#[test]
fn a_partitioned_worker_stops_its_tasks_after_the_grace_and_the_healed_cluster_is_exact() {
    let cl = five("pp");
    let client = deploy(&cl, "pp");
    let u = cl.underlay.as_ref().unwrap();
    let d = &cl.nodes[D];
    assert_eq!(overlay::running(d, Some("web")).len(), 2);

    // d is cut off: the managers move its slots to e; d itself stops its own after the grace.
    cut_off(&cl, D, "pp", || {
        placement(&cl, "pp_web") == vec![0, 0, 0, 0, WEB_REPLICAS]
    });
    // The slots serve twice no longer: d's stopped, e serves them, the name says so.
    let web_on_e: BTreeSet<String> = overlay::running(&cl.nodes[E], Some("web"))
        .iter()
        .map(|c| overlay::address(&cl.nodes[E], &c.id))
        .collect();
    assert_eq!(web_on_e.len(), WEB_REPLICAS);
    cl.wait_until("web resolves to e's replicas", 20, || {
        overlay::resolve(&cl.nodes[A], &client.id, "web") == web_on_e
    });

    // Healed: exactly one task per slot cluster-wide, and no stale entry anywhere.
    let healed = Instant::now();
    u.set_link(D, true);
    slot::wait_until(
        "d reached the managers again",
        Duration::from_secs(30),
        || d.log().contains("reached the managers again"),
        || d.log(),
    );
    let summary = wait_converged(&cl, "pp", (A, &client), WEB_REPLICAS, 40);
    eprintln!(
        "timings (pp): converged {:.1?} after the heal: {summary}",
        healed.elapsed()
    );
    // d keeps nothing of what it ran and starts nothing of it again (its agent has had
    // several rounds since it reached the managers).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        assert_eq!(task_containers(d), 0, "{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_converged(&cl, "pp", (A, &client), WEB_REPLICAS, 20);
    for _ in 0..4 {
        fetch(&cl.nodes[A], &client.id).unwrap();
    }
}

#[test]
fn a_manager_cut_off_in_the_minority_stops_its_tasks_and_takes_none_back_when_healed() {
    const C: usize = 2;
    let cl = five("pm");
    // One replica on each manager; the client on worker d.
    let client = deploy_on(&cl, "pm", "manager", D, &[1, 1, 1, 0, 0]);
    let u = cl.underlay.as_ref().unwrap();
    let c = &cl.nodes[C];

    // c alone has no quorum; its reads still answer from its own copy of the store, where its
    // task runs on.
    cut_off(&cl, C, "pm", || {
        let p = placement(&cl, "pm_web");
        p[C] == 0 && p[0] + p[1] == 3
    });

    // Healed: c's copy catches up before its agent acts on it, so its old slot stays where
    // the leader put it.
    let healed = Instant::now();
    u.set_link(C, true);
    slot::wait_until(
        "c reached the managers again",
        Duration::from_secs(30),
        || c.log().contains("reached the managers again"),
        || c.log(),
    );
    let summary = wait_converged(&cl, "pm", (D, &client), 3, 40);
    eprintln!(
        "timings (pm): converged {:.1?} after the heal: {summary}",
        healed.elapsed()
    );
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        assert_eq!(task_containers(c), 0, "{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // (c's return makes the managers elect a leader again: a moment without one.)
    wait_converged(&cl, "pm", (D, &client), 3, 20);
    // The client ran on throughout (the same container): a worker that was talking to c
    // moved on to another manager, and no other node was ever cut off.
    fetch(&cl.nodes[D], &client.id).unwrap();
    for (i, n) in cl.nodes.iter().enumerate().filter(|(i, _)| *i != C) {
        assert!(
            !n.log().contains("no heartbeat reached the managers"),
            "node {i} was cut off too:\n{}",
            n.log()
        );
    }
}

/// Whether the leader lists node `id` as down.
fn node_down(cl: &Cluster, id: u64) -> bool {
    let out = cl.nodes[A].dcpp(&["node", "ls", "--format", "json"]);
    serde_json::from_slice::<Vec<Value>>(&out.stdout).is_ok_and(|v| {
        v.iter().any(|n| {
            n["id"].as_u64() == Some(id)
                && n["status"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("down"))
        })
    })
}

#[test]
#[ignore = "benchmark: run bench/node-loss.sh"]
fn bench_node_loss_detection_and_rescheduling_over_ten_kills() {
    let mut cl = five("pb");
    deploy(&cl, "pb");
    let u = cl.underlay.as_ref().unwrap();
    let (mut detect, mut moved) = (Vec::new(), Vec::new());
    // Kill the worker that runs the replicas, alternately d and e, ten times.
    for round in 0..10 {
        let (dead, other) = if round % 2 == 0 { (D, E) } else { (E, D) };
        let mut want = vec![0; 5];
        want[other] = WEB_REPLICAS;
        if placement(&cl, "pb_web")[dead] == 0 {
            continue;
        }
        let t = Instant::now();
        u.set_link(dead, false);
        cl.nodes[dead].kill9();
        let id = cl.nodes[dead].id;
        detect.push(time_until("the node marked down", 30, || {
            node_down(&cl, id)
        }));
        time_until("its replicas running elsewhere", 30, || {
            placement(&cl, "pb_web") == want
        });
        moved.push(t.elapsed());
        u.set_link(dead, true);
        cl.nodes[dead].start_daemon();
        let dead_id = cl.nodes[dead].id;
        cl.wait_until("the node back", 30, || !node_down(&cl, dead_id));
        cl.wait_until("its stale replicas stopped", 30, || {
            overlay::running(&cl.nodes[dead], Some("web")).is_empty()
        });
    }
    let stat = |mut v: Vec<Duration>| {
        v.sort();
        format!(
            "median {:.2} s, max {:.2} s over {}",
            v[v.len() / 2].as_secs_f64(),
            v[v.len() - 1].as_secs_f64(),
            v.len()
        )
    };
    eprintln!(
        "FIGURES: kill -9 of a worker -> marked down: {}",
        stat(detect)
    );
    eprintln!(
        "FIGURES: kill -9 of a worker -> all its replicas running elsewhere: {}",
        stat(moved)
    );
}
