//! Watch ordering/resumption and linearizability under leader kills.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use common::lin::{self, HOp};
use dcpp_raft::{Error, EventType, Kind, Op, Txn};
use futures::StreamExt;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_node_restart_without_gaps_or_duplicates() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader(T).await;
    let w = (0..3).find(|i| *i != leader).unwrap();
    let start_rev = c
        .client(leader)
        .put(Kind::Config, "start", &json!(0))
        .await
        .unwrap()
        .revision;
    let mut stream = Box::pin(c.client(w).watch(start_rev, None));

    // Every txn writes two objects, so a revision carries two events and a reconnect can fall
    // between them.
    let writer = c.client(leader);
    let expected = Arc::new(Mutex::new(BTreeSet::new()));
    let exp = expected.clone();
    let wtask = tokio::spawn(async move {
        let mut last = 0;
        for k in 0..120u64 {
            let t = Txn::new()
                .op(Op::put(Kind::Task, format!("a{k}"), &json!(k)).unwrap())
                .op(Op::put(Kind::Task, format!("b{k}"), &json!(k)).unwrap());
            let r = writer.txn(&t).await.expect("write on healthy leader");
            exp.lock().unwrap().insert((r.revision, format!("a{k}")));
            exp.lock().unwrap().insert((r.revision, format!("b{k}")));
            last = r.revision;
            if k % 40 == 39 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        last
    });
    let mut seen = Vec::new();
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 240 {
        let ev = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("watch stalled")
            .expect("stream ended")
            .expect("watch error");
        seen.push((ev.revision, ev.object.id.clone(), ev.event_type));
        // Crash and restart the watched node mid-stream, between the two events of a revision.
        if !restarted && seen.len() == 61 {
            c.kill(w);
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.restart(w).await;
            restarted = true;
        }
    }
    let last = wtask.await.unwrap();
    assert!(restarted);
    let revs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert!(revs.windows(2).all(|w| w[0] <= w[1]), "events out of order");
    let got: BTreeSet<(u64, String)> = seen.iter().map(|s| (s.0, s.1.clone())).collect();
    assert_eq!(got.len(), seen.len(), "duplicate events delivered");
    assert_eq!(got, *expected.lock().unwrap(), "missing or extra events");
    assert_eq!(*revs.last().unwrap(), last);
    assert!(seen.iter().all(|s| s.2 == EventType::Put));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_filters_by_kind_and_reports_deletes() {
    let c = Cluster::start(1).await;
    let cl = c.client(0);
    let list = cl.list(Kind::Service).await.unwrap();
    let mut s = Box::pin(c.node(0).watch(list.revision, Some(Kind::Service)));
    cl.put(Kind::Task, "t", &json!(1)).await.unwrap();
    let r1 = cl
        .put(Kind::Service, "web", &json!({"image": "x"}))
        .await
        .unwrap();
    let r2 = cl.delete(Kind::Service, "web").await.unwrap();
    let e1 = s.next().await.unwrap().unwrap();
    let e2 = s.next().await.unwrap().unwrap();
    assert_eq!(
        (e1.revision, e1.event_type, e1.object.kind),
        (r1.revision, EventType::Put, Kind::Service)
    );
    assert_eq!(
        (e2.revision, e2.event_type),
        (r2.revision, EventType::Delete)
    );
    assert_eq!(
        e2.object.value,
        json!({"image": "x"}),
        "a delete carries the last value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_behind_retained_history_gets_compacted_error() {
    fn short_history(cfg: &mut dcpp_raft::NodeConfig) {
        cfg.history_limit = 10;
    }
    let c = Cluster::start_with(1, short_history).await;
    let cl = c.client(0);
    for k in 0..30 {
        cl.put(Kind::Config, &format!("k{k}"), &json!(k))
            .await
            .unwrap();
    }
    let first = Box::pin(cl.watch(1, None)).next().await.expect("one item");
    match first {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, 1);
            assert!(compacted >= 20, "horizon {compacted}");
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let r = c
        .admin_http()
        .get(format!("https://{}/v1/watch?since=1", c.addrs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    // Re-list and watch from the list's revision works.
    let list = cl.list(Kind::Config).await.unwrap();
    let mut s = Box::pin(cl.watch(list.revision, None));
    let r = cl.put(Kind::Config, "again", &json!(1)).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().revision, r.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_linearizable_under_concurrent_writes_and_leader_kills() {
    let c = Arc::new(tokio::sync::Mutex::new(Cluster::start(3).await));
    let epoch = Instant::now();
    let history = Arc::new(Mutex::new(Vec::<HOp>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = {
        let g = c.lock().await;
        (0..3).map(|i| g.client(i)).collect()
    };
    let mut tasks = Vec::new();
    for (w, _) in clients.iter().enumerate() {
        let clients = clients.clone();
        let history = history.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let mut rng = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let cl = &clients[(rng % 3) as usize];
                let call = epoch.elapsed().as_nanos();
                let timeout = Duration::from_secs(3);
                let op = if rng.is_multiple_of(2) {
                    seq += 1;
                    let v = w as u64 * 1_000_000 + seq;
                    let r = tokio::time::timeout(timeout, cl.put(Kind::Config, "reg", &v)).await;
                    let ok = matches!(r, Ok(Ok(_)));
                    HOp {
                        kind: lin::Kind::Write(v),
                        call,
                        ret: ok.then(|| epoch.elapsed().as_nanos()),
                    }
                } else {
                    let r = tokio::time::timeout(timeout, cl.get(Kind::Config, "reg")).await;
                    let (val, ok) = match r {
                        Ok(Ok(o)) => (o.value.as_u64(), true),
                        Ok(Err(Error::NotFound { .. })) => (None, true),
                        _ => (None, false),
                    };
                    HOp {
                        kind: lin::Kind::Read(val),
                        call,
                        ret: ok.then(|| epoch.elapsed().as_nanos()),
                    }
                };
                if op.ret.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                history.lock().unwrap().push(op);
            }
        }));
    }
    // Kill the leader three times, restarting it after a pause.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mut g = c.lock().await;
        let l = g.leader(T).await;
        g.kill(l);
        drop(g);
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.lock().await.restart(l).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let h = history.lock().unwrap().clone();
    let ok_writes = h
        .iter()
        .filter(|o| o.ret.is_some() && matches!(o.kind, lin::Kind::Write(_)))
        .count();
    let ok_reads = h
        .iter()
        .filter(|o| o.ret.is_some() && matches!(o.kind, lin::Kind::Read(_)))
        .count();
    eprintln!(
        "history: {} ops, {ok_writes} acknowledged writes, {ok_reads} successful reads",
        h.len()
    );
    assert!(
        ok_writes >= 20 && ok_reads >= 20,
        "too little progress: {ok_writes} writes, {ok_reads} reads"
    );
    assert!(lin::linearizable(&h), "history is not linearizable: {h:?}");
}
