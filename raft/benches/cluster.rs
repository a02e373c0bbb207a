//! Cluster benchmark (not run by CI): `cargo bench -p dcpp-raft --bench cluster`.
//!
//! A 3-node in-process cluster on loopback HTTPS (mutual TLS), every node with its own redb
//! file (fsync on each commit) and production Raft timers. Measures committed writes/s and
//! commit latency percentiles through the API of the leader at several client concurrencies,
//! the time a fresh worker and a fresh manager take to join (token check, certificate, and
//! for a manager the catch-up), then the
//! failover time (leader crash → first write accepted by the new leader) over 20 leader kills.
//! Environment: BENCH_SECS (default 5) per load level, BENCH_KILLS (default 20).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use dcpp_raft::{Kind, NodeConfig};

fn production_timers(cfg: &mut NodeConfig) {
    let p = NodeConfig::new(&cfg.data_dir, &cfg.advertise);
    cfg.heartbeat_ms = p.heartbeat_ms;
    cfg.election_min_ms = p.election_min_ms;
    cfg.election_max_ms = p.election_max_ms;
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn throughput(c: &Cluster, concurrency: usize, secs: u64) {
    let leader = c.leader(Duration::from_secs(10)).await;
    let client = c.client(leader);
    let end = Instant::now() + Duration::from_secs(secs);
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            let mut mine = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                client
                    .put(
                        Kind::Config,
                        &format!("bench-{w}-{}", k % 100),
                        &serde_json::json!({"k": k}),
                    )
                    .await
                    .expect("write");
                mine.push(t.elapsed());
                k += 1;
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    let mut l = lat.lock().unwrap().clone();
    l.sort();
    println!(
        "concurrency {concurrency:>3}: {:>7.0} committed writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} writes)",
        l.len() as f64 / took.as_secs_f64(),
        pct(&l, 0.50).as_secs_f64() * 1e3,
        pct(&l, 0.99).as_secs_f64() * 1e3,
        l.len()
    );
}

async fn failover(c: &mut Cluster, kills: usize) {
    let mut times = Vec::new();
    for round in 0..kills {
        let leader = c.leader(Duration::from_secs(10)).await;
        let t = Instant::now();
        c.kill(leader);
        'outer: loop {
            for i in c.alive() {
                let cl = c.client(i);
                let put = cl.put(Kind::Config, "failover", &round);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), put).await {
                    break 'outer;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(15), "no failover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(t.elapsed());
        c.restart(leader).await;
        // Let the restarted node catch up so the next kill leaves a healthy quorum.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    times.sort();
    println!(
        "failover over {kills} leader kills: min {:.0} ms  median {:.0} ms  max {:.0} ms",
        times[0].as_secs_f64() * 1e3,
        pct(&times, 0.5).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let kills: usize = std::env::var("BENCH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Cluster::start_with(3, production_timers).await;
        println!(
            "3-node loopback cluster over mutual TLS, redb fsync per commit, heartbeat 100 ms, election 300-600 ms"
        );
        for conc in [1, 8, 32] {
            throughput(&c, conc, secs).await;
        }
        let tokens = c.node(0).join_tokens().expect("tokens");
        // A worker only gets its certificate and is registered; a manager also catches up
        // with the log (as a learner) before it votes.
        for (role, token) in [("worker", &tokens.worker), ("manager", &tokens.manager)] {
            let mut joins = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let i = c.add_fresh(token).await;
                joins.push(t.elapsed());
                let id = c.node(i).id();
                c.client(0).remove_node(id).await.expect("remove the joined node");
                c.kill(i);
            }
            joins.sort();
            println!(
                "join of a fresh {role} (5 joins): median {:.0} ms  max {:.0} ms",
                pct(&joins, 0.5).as_secs_f64() * 1e3,
                joins[joins.len() - 1].as_secs_f64() * 1e3
            );
        }
        failover(&mut c, kills).await;
    });
}
