//! The control plane at issue 20's cluster size, on the real store (not run by `cargo test`):
//! `cargo bench -p dcpp-control --bench cluster`.
//!
//! One manager: a one-node raft store on redb (fsync per commit), its leader loop
//! ([`leader::run`]) as the daemon runs it. 1000 simulated workers, registered as real workers
//! (`add_member`), each heartbeating its own node record every second through
//! [`nodes::heartbeat`], and an agent per node in the same process that reports its tasks
//! running through [`schema::task_status_write`], one transaction per node per round as the
//! real agent flushes. 100 services × 100 replicas: 10 000 tasks.
//!
//! Measured:
//! - (a) a full round of the leader (read the whole state, plan, write) at steady state;
//! - (b) one service scaled 100 → 1000: from the write of the service document until the
//!   900 new tasks are planned, placed and written (seen by a watcher), and until running;
//! - (c) 100 nodes stop heartbeating: from the moment the node-status rule declares the
//!   last of them down until every service has all its replicas on live nodes again;
//! - (d) a watcher of the store during (b) and (c) sees every revision, in order, without
//!   `Compacted`.
//!
//! Environment: BENCH_NODES (default 1000), BENCH_SERVICES (100), BENCH_REPLICAS (100),
//! BENCH_LOST (100), BENCH_HEARTBEAT_MS (the agents' default, 1000), BENCH_SNAPSHOT_EVERY
//! (the store's default, 5000 entries).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcpp_control::leader;
use dcpp_control::metrics::LeaderMetrics;
use dcpp_control::nodes::{self, Availability, NodeInfo, Resources, SelfInfo};
use dcpp_control::schema::{self, ServiceDoc, TaskDoc, now_ms};
use dcpp_raft::{AddMember, EventType, Kind, Node, NodeConfig, Op, Role, Store, Txn};
use dcpp_reconciler::{DesiredState, Mode, ServiceSpec, TaskReport, TaskState};
use futures::StreamExt;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Latencies since the last [`Stats::take`]: raft commits (propose → applied) and heartbeats.
#[derive(Default)]
struct Stats {
    commits: Mutex<Vec<Duration>>,
    heartbeats: Mutex<Vec<Duration>>,
}

impl Stats {
    fn heartbeat(&self, d: Duration) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(d);
    }

    /// "commits: n, p50, p99, max; heartbeats: …" of what was recorded since the last call.
    fn take(&self) -> String {
        let f = |m: &Mutex<Vec<Duration>>| {
            let mut v = std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()));
            if v.is_empty() {
                return "none".to_string();
            }
            v.sort();
            let p = |q: f64| ms(v[((v.len() - 1) as f64 * q) as usize]);
            format!(
                "{} (p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms)",
                v.len(),
                p(0.5),
                p(0.99),
                p(1.0)
            )
        };
        format!(
            "raft commits {}; heartbeats {}",
            f(&self.commits),
            f(&self.heartbeats)
        )
    }
}

/// The leader's written actions by kind, as its metrics count them.
fn actions(m: &LeaderMetrics) -> String {
    let mut out = Vec::new();
    for k in [
        "create_task",
        "assign_task",
        "set_pending_reason",
        "orphan_task",
        "restart_task",
        "shutdown_task",
    ] {
        let n = m.actions.get_or_create(&[("kind", k)]).get();
        if n > 0 {
            out.push(format!("{k} {n}"));
        }
    }
    out.join(", ")
}

/// A simulated worker: its raft id and whether it is still alive (heartbeats and reports).
struct Sim {
    id: u64,
    alive: AtomicBool,
    /// The heartbeat time its record holds (ms since the epoch).
    last_heartbeat_ms: AtomicU64,
}

fn service(i: usize, replicas: u32) -> ServiceDoc {
    ServiceDoc {
        spec: ServiceSpec::new(
            &format!("st{}", i / 10),
            &format!("svc{i}"),
            "busybox",
            replicas,
        ),
        service: dcpp_spec::Service {
            image: Some("busybox".into()),
            ..Default::default()
        },
        ipam: Default::default(),
    }
}

/// What the watcher follows: the task documents, and how many of them are placed on a node
/// that is not lost and should run.
#[derive(Default)]
struct Seen {
    /// Task key → (service, node, desired).
    tasks: HashMap<String, TaskDoc>,
    last_revision: u64,
    events: u64,
    gaps: u64,
    compacted: u64,
    errors: u64,
    /// The nodes counted as lost.
    lost: HashSet<String>,
}

impl Seen {
    fn placed(&self, service: Option<&str>) -> usize {
        self.tasks
            .values()
            .filter(|d| {
                d.desired == DesiredState::Running
                    && service.is_none_or(|s| d.service.0 == s)
                    && d.node.as_ref().is_some_and(|n| !self.lost.contains(&n.0))
            })
            .count()
    }
}

/// Follows every change from `since`, checking that revisions come in order without gaps.
async fn watch(node: Node, since: u64, seen: Arc<Mutex<Seen>>, changed: Arc<tokio::sync::Notify>) {
    let mut s = Store::watch(&node, since, None);
    while let Some(ev) = s.next().await {
        let mut g = seen.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            Ok(ev) => {
                g.events += 1;
                if ev.revision != g.last_revision && ev.revision != g.last_revision + 1 {
                    g.gaps += 1;
                }
                g.last_revision = ev.revision;
                if ev.object.kind == Kind::Task {
                    match ev.event_type {
                        EventType::Put => match ev.object.decode::<TaskDoc>() {
                            Ok(d) => {
                                g.tasks.insert(ev.object.id.clone(), d);
                            }
                            Err(_) => g.errors += 1,
                        },
                        EventType::Delete => {
                            g.tasks.remove(&ev.object.id);
                        }
                    }
                    drop(g);
                    changed.notify_waiters();
                }
            }
            Err(dcpp_raft::Error::Compacted { .. }) => {
                g.compacted += 1;
                return;
            }
            Err(_) => {
                g.errors += 1;
                return;
            }
        }
    }
}

/// Waits until `cond` holds on what the watcher saw; the time it first held.
async fn until(
    seen: &Arc<Mutex<Seen>>,
    changed: &tokio::sync::Notify,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&Seen) -> bool,
) -> Instant {
    let end = Instant::now() + timeout;
    loop {
        let n = changed.notified();
        if cond(&seen.lock().unwrap_or_else(|e| e.into_inner())) {
            return Instant::now();
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        let _ = tokio::time::timeout(Duration::from_millis(50), n).await;
    }
}

async fn heartbeats(node: Node, sim: Arc<Sim>, stats: Arc<Stats>, heartbeat_ms: u64) {
    let me = SelfInfo {
        id: sim.id,
        hostname: format!("sim{}", sim.id),
        address: format!("127.0.0.1:{}", sim.id),
        role: Role::Worker,
        resources: Resources {
            nano_cpus: 64_000_000_000,
            memory_bytes: 256 << 30,
        },
        heartbeat_ms,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(heartbeat_ms));
    // As the agent: the next beat an interval after the last, never a burst of missed ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !sim.alive.load(Ordering::SeqCst) {
            return;
        }
        let now = now_ms();
        let t = Instant::now();
        if let Ok(Some(_)) = nodes::heartbeat(&node, &me, now).await {
            sim.last_heartbeat_ms.fetch_max(now, Ordering::SeqCst);
        }
        stats.heartbeat(t.elapsed());
    }
}

/// The agents of all simulated nodes: on every change, each live node reports its assigned
/// tasks running and its tasks told to stop shut down, in one transaction per node.
async fn agents(node: Node, sims: Arc<BTreeMap<String, Arc<Sim>>>, reports: Arc<AtomicU64>) {
    let wake = Arc::new(tokio::sync::Notify::new());
    // Woken by what they are told to run, not by every heartbeat of the cluster.
    let w = wake.clone();
    let n = node.clone();
    tokio::spawn(async move {
        let since = Store::list(&n, Kind::Task).await.map_or(0, |l| l.revision);
        let mut s = Store::watch(&n, since, Some(Kind::Task));
        while let Some(Ok(_)) = s.next().await {
            w.notify_one();
        }
    });
    loop {
        let n = wake.notified();
        let Ok(tasks) = schema::tasks(&node).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let now = now_ms();
        let mut per_node: BTreeMap<String, Txn> = BTreeMap::new();
        for (t, revs) in tasks.values() {
            let Some(nid) = &t.node else { continue };
            let Some(sim) = sims.get(&nid.0) else {
                continue;
            };
            if !sim.alive.load(Ordering::SeqCst) || !t.is_live() {
                continue;
            }
            let to = if t.desired == DesiredState::Running {
                (t.state < TaskState::Running).then_some(TaskState::Running)
            } else {
                Some(TaskState::Shutdown)
            };
            let Some(to) = to else { continue };
            let mut obs = dcpp_reconciler::Observed::default();
            obs.tasks.insert(t.id, t.clone());
            let r = TaskReport {
                state: Some(to),
                container_id: Some(format!("c{}", t.id.0)),
                ..TaskReport::default()
            };
            if dcpp_reconciler::report(&mut obs, t.id, &r, now).is_err() {
                continue;
            }
            let after = &obs.tasks[&t.id];
            let txn = per_node.remove(&nid.0).unwrap_or_default();
            let Ok(txn) = schema::task_status_write(txn, *revs, after) else {
                continue;
            };
            per_node.insert(nid.0.clone(), txn);
        }
        let writes: Vec<_> = per_node
            .into_values()
            .map(|txn| {
                let node = node.clone();
                let reports = reports.clone();
                tokio::spawn(async move {
                    let k = txn.ops.len() as u64;
                    if node.txn(txn).await.is_ok() {
                        reports.fetch_add(k, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let wrote = !writes.is_empty();
        for w in writes {
            let _ = w.await;
        }
        if !wrote {
            let _ = tokio::time::timeout(Duration::from_secs(1), n).await;
        }
    }
}

/// Times `rounds` leader rounds on the unchanged state: read, plan, (nothing to) write.
async fn steady_rounds(node: &Node, rounds: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        leader::reconcile_since(node, 0, Some(node.id()))
            .await
            .expect("round");
        out.push(t.elapsed());
    }
    out.sort();
    out
}

fn summary(v: &[Duration]) -> String {
    format!(
        "min {:.1} ms  median {:.1} ms  max {:.1} ms",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

async fn run() {
    let n_nodes = env("BENCH_NODES", 1000);
    let n_services = env("BENCH_SERVICES", 100);
    let replicas = env("BENCH_REPLICAS", 100) as u32;
    let n_lost = env("BENCH_LOST", 100).min(n_nodes);
    let total = n_services * replicas as usize;
    let heartbeat_ms = env("BENCH_HEARTBEAT_MS", nodes::DEFAULT_HEARTBEAT_MS as usize) as u64;

    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut cfg = NodeConfig::new(dir.path(), &addr);
    cfg.member_kind = Some(Kind::Node);
    cfg.snapshot_every = env("BENCH_SNAPSHOT_EVERY", cfg.snapshot_every as usize) as u64;
    let node = Node::open(cfg).await.expect("open");
    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    node.observe_commits(Arc::new(move |d| {
        st.commits.lock().unwrap_or_else(|e| e.into_inner()).push(d)
    }));
    let n2 = node.clone();
    tokio::spawn(async move {
        dcpp_raft::api::serve_tcp(n2, listener, std::future::pending())
            .await
            .ok();
    });
    node.bootstrap().await.expect("bootstrap");
    node.wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    // The manager runs no tasks here: every task goes to a simulated worker.
    let me = SelfInfo::local(node.id(), &addr, Role::Manager);
    nodes::heartbeat(&node, &me, now_ms())
        .await
        .expect("heartbeat");
    let mut rec: NodeInfo = Store::get(&node, Kind::Node, &node.id().to_string())
        .await
        .expect("record")
        .decode()
        .expect("decode");
    rec.availability = Availability::Drain;
    node.txn(Txn::new().op(Op::put(Kind::Node, node.id().to_string(), &rec).unwrap()))
        .await
        .expect("drain the manager");

    let t = Instant::now();
    let mut sims = BTreeMap::new();
    let joins: Vec<_> = (0..n_nodes as u64)
        .map(|i| {
            let node = node.clone();
            let id = 1_000_000 + i;
            tokio::spawn(async move {
                let req = AddMember {
                    id,
                    address: format!("127.0.0.1:{id}"),
                    role: Role::Worker,
                    hostname: format!("sim{id}"),
                };
                node.add_member(req, false).await.expect("add worker");
                id
            })
        })
        .collect();
    for j in joins {
        let id = j.await.expect("join");
        sims.insert(
            id.to_string(),
            Arc::new(Sim {
                id,
                alive: AtomicBool::new(true),
                last_heartbeat_ms: AtomicU64::new(0),
            }),
        );
    }
    let sims = Arc::new(sims);
    for (k, sim) in sims.values().enumerate() {
        let node = node.clone();
        let sim = sim.clone();
        let stats = stats.clone();
        // Spread over the interval, as independent agents are.
        let offset = Duration::from_micros((k as u64 * heartbeat_ms * 1000) / n_nodes as u64);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            heartbeats(node, sim, stats, heartbeat_ms).await;
        });
    }
    loop {
        let listed = nodes::list(&node).await.expect("nodes").len();
        if listed > n_nodes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{n_nodes} workers registered and heartbeating in {:.0} ms",
        ms(t.elapsed())
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("    idle: {}", stats.take());

    let reports = Arc::new(AtomicU64::new(0));
    tokio::spawn(agents(node.clone(), sims.clone(), reports.clone()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let changed = Arc::new(tokio::sync::Notify::new());
    let since = Store::list(&node, Kind::Stack)
        .await
        .expect("list")
        .revision;
    seen.lock().unwrap().last_revision = since;
    tokio::spawn(watch(node.clone(), since, seen.clone(), changed.clone()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(LeaderMetrics::default());
    let lead = tokio::spawn(leader::run(node.clone(), None, stop_rx, metrics.clone()));

    // Desired state: the services, in one write as an apply of their stacks makes it.
    let t = Instant::now();
    let mut txn = Txn::new();
    for i in 0..n_services {
        let d = service(i, replicas);
        txn = txn.op(Op::put(Kind::Service, d.id().0, &d).unwrap());
    }
    node.txn(txn).await.expect("services");
    let placed = until(
        &seen,
        &changed,
        Duration::from_secs(120),
        "placement",
        |s| s.placed(None) >= total,
    )
    .await;
    println!(
        "{total} tasks planned, placed and written in {:.0} ms",
        ms(placed - t)
    );
    let all_running = |want: usize| {
        let node = node.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(120);
            loop {
                let ts = schema::tasks(&node).await.expect("tasks");
                let running = ts
                    .values()
                    .filter(|(t, _)| {
                        t.desired == DesiredState::Running && t.state == TaskState::Running
                    })
                    .count();
                if running >= want {
                    return Instant::now();
                }
                assert!(Instant::now() < end, "{running}/{want} running");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let running = all_running(total).await;
    println!(
        "{total} tasks running (reported by the agents) {:.0} ms after the write",
        ms(running - t)
    );
    println!("    {}; leader wrote {}", stats.take(), actions(&metrics));

    // (a) Rounds at steady state, beside the live loop, heartbeats and agents.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stats.take();
    let rounds = steady_rounds(&node, 10).await;
    println!(
        "(a) full leader round at steady state (read {} objects, plan, nothing to write): {}",
        2 * total + n_nodes + n_services,
        summary(&rounds)
    );
    println!("    {}", stats.take());

    // (b) One service 100 → 1000.
    let (doc, rev) = schema::services(&node).await.expect("services")[&service(0, 0).id()].clone();
    let mut scaled = doc.clone();
    scaled.spec.mode = Mode::Replicated { replicas: 1000 };
    let sid = scaled.id().0;
    let target = total - replicas as usize + 1000;
    let t = Instant::now();
    dcpp_control::stacks::update_service(&node, &doc, rev, &scaled)
        .await
        .expect("scale");
    let written = until(&seen, &changed, Duration::from_secs(60), "scale", |s| {
        s.placed(Some(&sid)) >= 1000
    })
    .await;
    println!(
        "(b) {sid} scaled {replicas} → 1000: planned and written in {:.0} ms",
        ms(written - t)
    );
    let running = all_running(target).await;
    println!(
        "    all {target} tasks running {:.0} ms after the write",
        ms(running - t)
    );
    println!("    {}; leader wrote {}", stats.take(), actions(&metrics));

    // (c) n_lost nodes go silent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lost: Vec<Arc<Sim>> = sims.values().take(n_lost).cloned().collect();
    {
        let mut g = seen.lock().unwrap();
        g.lost = lost.iter().map(|s| s.id.to_string()).collect();
    }
    let t = Instant::now();
    for s in &lost {
        s.alive.store(false, Ordering::SeqCst);
    }
    // A heartbeat in flight may still land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = lost
        .iter()
        .map(|s| s.last_heartbeat_ms.load(Ordering::SeqCst))
        .max()
        .unwrap_or(0);
    let down_at_ms = last + nodes::down_after_ms(heartbeat_ms);
    let on_lost = seen.lock().unwrap().placed(None);
    let back = until(
        &seen,
        &changed,
        Duration::from_secs(60),
        "rescheduling",
        |s| s.placed(None) >= target,
    )
    .await;
    let back_ms = now_ms() - (Instant::now() - back).as_millis() as u64;
    println!(
        "(c) {n_lost} nodes lost ({} tasks on them): rescheduled {} ms after the last of them was down by the rule ({:.0} ms after they went silent)",
        target - on_lost,
        back_ms as i64 - down_at_ms as i64,
        ms(back - t),
    );
    println!("    {}; leader wrote {}", stats.take(), actions(&metrics));

    // (d) The watcher.
    let current = Store::list(&node, Kind::Stack)
        .await
        .expect("list")
        .revision;
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let g = seen.lock().unwrap();
        println!(
            "(d) watcher: {} events up to revision {} (store at {current} before the last look), {} gaps, {} compacted, {} errors",
            g.events, g.last_revision, g.gaps, g.compacted, g.errors
        );
    }
    println!(
        "leader loop: {} rounds, {} failed; {} status reports written by the agents",
        metrics.rounds.get(),
        metrics.round_errors.get(),
        reports.load(Ordering::Relaxed)
    );
    stop_tx.send(true).ok();
    let _ = lead.await;
    node.shutdown().await.ok();
}

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: this one takes minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster: run with `cargo bench -p dcpp-control --bench cluster`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}
