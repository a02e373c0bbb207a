//! Multi-node behaviour on in-process clusters over real HTTP on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, eventually};
use dcpp_raft::{Error, Kind, Op, Precondition, Txn};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// Writes through any live node, retrying while the cluster elects a leader.
async fn write_retry(
    c: &Cluster,
    id: &str,
    v: serde_json::Value,
    timeout: Duration,
) -> (Duration, usize) {
    let start = Instant::now();
    loop {
        for i in c.alive() {
            if c.client(i).put(Kind::Config, id, &v).await.is_ok() {
                return (start.elapsed(), i);
            }
        }
        assert!(
            start.elapsed() < timeout,
            "write {id} not accepted within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn failover(n: usize) {
    let mut c = Cluster::start(n).await;
    assert_eq!(c.node(0).status().unwrap().members.len(), n);
    c.client(1)
        .put(Kind::Config, "before", &json!(1))
        .await
        .expect("write before");
    let mut times = Vec::new();
    // With 5 nodes two successive leaders can die and a quorum remains.
    for round in 0..(n - 1) / 2 {
        let leader = c.leader(T).await;
        c.kill(leader);
        let (took, via) = write_retry(&c, &format!("after-{round}"), json!(round), T).await;
        eprintln!(
            "{n}-node cluster: leader {leader} killed, write accepted via node {via} after {took:?}"
        );
        times.push(took);
    }
    for t in &times {
        assert!(*t < Duration::from_secs(2), "failover took {t:?}");
    }
    let survivor = c.alive()[0];
    let o = c
        .client(survivor)
        .get(Kind::Config, "before")
        .await
        .expect("read");
    assert_eq!(o.value, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_leader_killed_new_leader_accepts_writes() {
    failover(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_two_leaders_killed_new_leader_accepts_writes() {
    failover(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_killed_and_restarted_keep_every_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let mut acked = BTreeMap::new();
    // Concurrent writers through every node; only acknowledged writes are expected back.
    let mut tasks = Vec::new();
    for w in 0..3 {
        let cl = c.client(w);
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            for k in 0..20 {
                let id = format!("w{w}-{k}");
                if cl
                    .put(Kind::Task, &id, &json!({"w": w, "k": k}))
                    .await
                    .is_ok()
                {
                    ok.push(id);
                }
            }
            ok
        }));
    }
    for t in tasks {
        for id in t.await.unwrap() {
            acked.insert(id, ());
        }
    }
    assert_eq!(
        acked.len(),
        60,
        "all writes acknowledged on a healthy cluster"
    );
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i).await;
    }
    let leader = c.leader(T).await;
    let list = c.client(leader).list(Kind::Task).await.expect("list");
    let got: Vec<_> = list.objects.iter().map(|o| o.id.clone()).collect();
    for id in acked.keys() {
        assert!(
            got.contains(id),
            "acknowledged write {id} lost after restart"
        );
    }
    // The cluster keeps accepting writes after the restart.
    write_retry(&c, "post-restart", json!(true), T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_node_catches_up_after_heal() {
    let c = Cluster::start(3).await;
    let leader = c.leader(T).await;
    let victim = (0..3).find(|i| *i != leader).unwrap();
    c.node(victim).faults().set_isolated(true);
    for k in 0..30 {
        c.client(leader)
            .put(Kind::Service, &format!("s{k}"), &json!(k))
            .await
            .expect("write while cut off");
    }
    // The isolated node saw none of it.
    let stale = c.node(victim).reader().list(Kind::Service).unwrap().0.len();
    assert!(
        stale < 30,
        "isolated node must not receive writes, saw {stale}"
    );
    let target = c.node(leader).reader().revision();
    c.node(victim).faults().set_isolated(false);
    let n = c.node(victim);
    eventually(T, "isolated node catching up", || {
        let n = n.clone();
        async move {
            n.reader().revision() >= target && n.reader().list(Kind::Service).unwrap().0.len() == 30
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_receives_snapshot() {
    fn small_snapshots(cfg: &mut dcpp_raft::NodeConfig) {
        cfg.snapshot_every = 20;
        cfg.keep_logs = 0;
    }
    let mut c = Cluster::start_with(3, small_snapshots).await;
    for k in 0..60 {
        c.client(0)
            .put(Kind::Stack, &format!("st{k}"), &json!({"k": k}))
            .await
            .expect("write");
    }
    let leader = c.leader(T).await;
    let ln = c.node(leader);
    eventually(T, "leader log purged behind a snapshot", || {
        let ln = ln.clone();
        async move { ln.raft().metrics().borrow().purged.is_some() }
    })
    .await;
    // A manager joins: it catches up as a learner, from the snapshot, before it votes.
    let tokens = c.node(0).join_tokens().unwrap();
    let i = c.add_fresh(&tokens.manager).await;
    let n = c.node(i);
    eventually(T, "fresh node has all objects", || {
        let n = n.clone();
        async move { n.reader().list(Kind::Stack).unwrap().0.len() == 60 }
    })
    .await;
    let m = n.raft().metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "state arrived by snapshot install");
    let st = c.node(leader).status().unwrap();
    let me = st.members.iter().find(|m| m.id == n.id()).expect("member");
    assert!(me.voter, "a manager votes once it caught up");
    // Watchers on the fresh node start at the snapshot horizon.
    let h = n.reader().revision();
    assert!(matches!(
        n.reader().changes_after(1, 10),
        Err(Error::Compacted { .. })
    ));
    assert!(n.reader().changes_after(h, 10).is_ok());
    // The time of a revision comes with the entry: the member that installed the snapshot
    // stores the same time as the leader.
    c.client(0)
        .put(Kind::Stack, "after", &json!({}))
        .await
        .expect("write");
    eventually(T, "fresh node applied the write", || {
        let n = n.clone();
        async move { n.reader().revision() > h }
    })
    .await;
    let at_leader = c.node(leader).reader().changes_after(h, 10).unwrap();
    assert!(at_leader.iter().all(|e| e.time.is_some()), "{at_leader:?}");
    assert_eq!(n.reader().changes_after(h, 10).unwrap(), at_leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_stores_the_leaders_time_of_each_revision() {
    let c = Cluster::start(3).await;
    let leader = c.leader(T).await;
    let f = (0..3).find(|i| *i != leader).unwrap();
    let before = time::OffsetDateTime::now_utc();
    for k in 0..10 {
        // Through a follower: the leader stamps what is forwarded to it.
        c.client(f)
            .put(Kind::Stack, &format!("t{k}"), &json!({"k": k}))
            .await
            .expect("write");
    }
    let rev = c.node(leader).reader().revision();
    for i in 0..3 {
        let n = c.node(i);
        eventually(T, "every node applied the writes", || {
            let n = n.clone();
            async move { n.reader().revision() >= rev }
        })
        .await;
    }
    let history = c.node(leader).reader().changes_after(0, 1000).unwrap();
    for i in 0..3 {
        assert_eq!(c.node(i).reader().changes_after(0, 1000).unwrap(), history);
    }
    let stacks: Vec<_> = history
        .iter()
        .filter(|e| e.object.kind == Kind::Stack)
        .collect();
    assert_eq!(stacks.len(), 10);
    let after = time::OffsetDateTime::now_utc();
    let mut last = None;
    for e in &stacks {
        let t = e.time.expect("a time");
        assert!(
            t >= before - std::time::Duration::from_millis(1) && t <= after,
            "{e:?}"
        );
        assert!(last.is_none_or(|l| l <= t), "times go back: {history:?}");
        last = Some(t);
    }
    // The revision just before a revision's time precedes it.
    let first = stacks[0];
    let r = c
        .client(f)
        .revision_before(first.time.unwrap())
        .await
        .unwrap();
    assert!(r < first.revision, "{r} {first:?}");
    let r = c
        .client(f)
        .revision_before(after + std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(r, rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_writes_and_reads_and_cas_conflicts_are_errors() {
    let c = Cluster::start(3).await;
    let leader = c.leader(T).await;
    let f = (0..3).find(|i| *i != leader).unwrap();
    let cl = c.client(f);
    let r1 = cl
        .create(Kind::Volume, "v", &json!({"size": 1}))
        .await
        .expect("create via follower");
    let o = cl
        .get(Kind::Volume, "v")
        .await
        .expect("linearizable read via follower");
    assert_eq!(o.create_revision, r1.revision);
    assert_eq!(o.mod_revision, r1.revision);
    let err = cl.create(Kind::Volume, "v", &json!({})).await.unwrap_err();
    assert!(
        matches!(err, Error::PreconditionFailed(ref p) if p.actual_mod_revision == Some(r1.revision)),
        "{err}"
    );
    let r2 = cl
        .put_if(Kind::Volume, "v", &json!({"size": 2}), r1.revision)
        .await
        .expect("cas");
    assert_eq!(r2.revision, r1.revision + 1);
    let err = cl
        .put_if(Kind::Volume, "v", &json!({"size": 3}), r1.revision)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PreconditionFailed(_)));
    let o = cl.get(Kind::Volume, "v").await.unwrap();
    assert_eq!(
        (o.create_revision, o.mod_revision, o.value.clone()),
        (r1.revision, r2.revision, json!({"size": 2}))
    );
    // Multi-op transaction: atomic, one revision.
    let t = Txn::new()
        .when(Precondition::ModRevision {
            kind: Kind::Volume,
            id: "v".into(),
            revision: r2.revision,
        })
        .op(Op::delete(Kind::Volume, "v"))
        .op(Op::put(Kind::Volume, "w", &json!(1)).unwrap());
    let r3 = cl.txn(&t).await.unwrap();
    assert_eq!(r3.revision, r2.revision + 1);
    assert!(matches!(
        cl.get(Kind::Volume, "v").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        cl.get(Kind::Volume, "w").await.unwrap().mod_revision,
        r3.revision
    );
    // Bad input is a clean error.
    assert!(matches!(
        cl.txn(&Txn::new()).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        cl.put(Kind::Volume, "", &json!(1)).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_leaves_remaining_members_continue_and_it_becomes_standalone() {
    fn member_records(cfg: &mut dcpp_raft::NodeConfig) {
        cfg.member_kind = Some(Kind::Node);
    }
    let c = Cluster::start_with(3, member_records).await;
    // The application's per-member records (the orchestrator's node records).
    for i in 0..3 {
        let id = c.node(i).id();
        c.client(0)
            .put(Kind::Node, &id.to_string(), &json!({ "id": id }))
            .await
            .unwrap();
    }
    c.client(0)
        .put(Kind::Network, "net", &json!(1))
        .await
        .unwrap();
    let leader = c.leader(T).await;
    let ln = c.node(leader);
    let leaving_id = ln.id();
    common::on(&c.nodes[leader], async move { ln.leave().await })
        .await
        .expect("leader leaves");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (_, via) = write_retry(&c, "after-leave", json!(2), T).await;
    assert!(others.contains(&via));
    let st = c.node(others[0]).status().unwrap();
    assert_eq!(st.members.len(), 2, "{st:?}");
    assert!(st.members.iter().all(|m| m.id != leaving_id));
    let nodes = c.client(others[0]).list(Kind::Node).await.unwrap();
    assert_eq!(nodes.objects.len(), 2, "record of the leaving node deleted");
    // The node that left is a new one-node cluster without the old data.
    let me = c.node(leader).status().unwrap();
    assert_eq!(me.members.len(), 1);
    assert_ne!(me.cluster_id, st.cluster_id);
    assert!(
        c.node(leader)
            .reader()
            .get(Kind::Network, "net")
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_updates_lose_no_increment_under_contention() {
    let c = Cluster::start(3).await;
    let mut tasks = Vec::new();
    for w in 0..3 {
        let cl = c.client(w);
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                cl.update::<u64, _>(Kind::Config, "counter", |v| Ok(v.unwrap_or(0) + 1))
                    .await
                    .expect("update");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (v, _) = c
        .client(1)
        .get_as::<u64>(Kind::Config, "counter")
        .await
        .unwrap();
    assert_eq!(v, 30, "every CAS increment applied exactly once");
}

/// A client of a follower does not see the leader's crash: a write and a linearizable read sent
/// while the follower still takes the dead node for the leader wait for the next leader
/// instead of failing on the dead one's address (the CLI and the node agents on the other
/// nodes each talk to their local daemon, so this is what they see of a failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_rides_out_a_leader_crash() {
    let mut c = Cluster::start(3).await;
    let leader = c.leader(T).await;
    let c_leader_id = c.node(leader).id();
    let f = (0..3).find(|i| *i != leader).unwrap();
    let cl = c.client(f);
    cl.put(Kind::Config, "before", &json!(1))
        .await
        .expect("write");
    c.kill(leader);
    // Past the instant of the crash (a write in flight then may or may not have been received,
    // and is not resent), but well before the election timeout.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        c.node(f).raft().metrics().borrow().current_leader,
        Some(c_leader_id),
        "the follower still takes the dead node for the leader"
    );
    let start = Instant::now();
    let read = cl.get(Kind::Config, "before").await.expect("a read too");
    assert_eq!(read.value, json!(1));
    let r = cl
        .put(Kind::Config, "after", &json!(2))
        .await
        .expect("a write right after the crash commits under the next leader");
    let took = start.elapsed();
    let o = cl.get(Kind::Config, "after").await.expect("read");
    assert_eq!(o.mod_revision, r.revision);
    eprintln!("read + write through a follower right after the leader crashed: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
