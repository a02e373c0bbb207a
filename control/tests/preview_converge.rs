//! `dcpp diff`'s planned actions and the convergence rule, on the in-memory store: a node
//! heartbeats, stacks are stored as `apply` stores them, the leader's rounds run, and an
//! "agent" marks tasks as running the way a real one reports them.

use std::collections::BTreeMap;
use std::time::Duration;

use dcpp_control::converge::{Outcome, assess, follow};
use dcpp_control::leader::reconcile_once;
use dcpp_control::nodes::{SelfInfo, heartbeat};
use dcpp_control::preview::preview;
use dcpp_control::schema::{
    ServiceDoc, now_ms, stack_docs, stack_services, task_status_write, tasks,
};
use dcpp_control::stacks::store_stack;
use dcpp_raft::{MemStore, Role, Store, Txn};
use dcpp_reconciler::{Convergence, DesiredState, TaskState};

fn docs(dir: &std::path::Path, yaml: &str) -> (dcpp_control::schema::StackDoc, Vec<ServiceDoc>) {
    let f = dir.join("compose.yml");
    std::fs::write(&f, yaml).unwrap();
    let project = dcpp_spec::load(&dcpp_spec::LoadOptions {
        files: vec![f],
        project_name: Some("shop".into()),
        profiles: vec![],
        env_files: vec![],
        working_dir: dir.to_path_buf(),
        project_dir: None,
        environment: Default::default(),
    })
    .unwrap()
    .project;
    stack_docs(&project, "compose.yml").unwrap()
}

/// The stack's services by name, as `apply` and `diff` key them.
fn load(dir: &std::path::Path, yaml: &str) -> BTreeMap<String, ServiceDoc> {
    let (_, docs) = docs(dir, yaml);
    docs.into_iter().map(|d| (d.spec.name.clone(), d)).collect()
}

/// Stores the stack as `apply` does.
async fn apply(s: &MemStore, dir: &std::path::Path, yaml: &str) -> Vec<ServiceDoc> {
    let (mut stack, _) = docs(dir, yaml);
    let new = load(dir, yaml);
    let old = stack_services(s, "shop").await.unwrap();
    store_stack(s, &mut stack, &old, &new, None, true, new.len())
        .await
        .unwrap();
    new.into_values().collect()
}

/// Leader rounds until nothing is written.
async fn settle(s: &MemStore) {
    for _ in 0..50 {
        if !reconcile_once(s).await.unwrap().1 {
            return;
        }
    }
    panic!("the leader loop did not reach a fixpoint");
}

/// What an agent reports: assigned tasks run, tasks told to stop are stopped.
async fn agent_round(s: &MemStore) -> bool {
    let mut txn = Txn::new();
    for (mut t, revs) in tasks(s).await.unwrap().into_values() {
        let now = now_ms();
        if t.desired == DesiredState::Running && t.state == TaskState::Assigned {
            t.transition(TaskState::Running, now).unwrap();
        } else if t.desired != DesiredState::Running && t.is_live() {
            t.transition(TaskState::Shutdown, now).unwrap();
        } else {
            continue;
        }
        txn = task_status_write(txn, revs, &t).unwrap();
    }
    let wrote = !txn.ops.is_empty();
    if wrote {
        s.txn(txn).await.unwrap();
    }
    wrote
}

async fn run_to_steady_state(s: &MemStore) {
    for _ in 0..50 {
        settle(s).await;
        if !agent_round(s).await {
            return;
        }
    }
    panic!("no steady state");
}

async fn one_node() -> MemStore {
    let s = MemStore::new();
    let me = SelfInfo {
        id: 1,
        hostname: "n1".into(),
        address: "127.0.0.1:1".into(),
        role: Role::Manager,
        resources: dcpp_control::nodes::local_resources(),
        heartbeat_ms: dcpp_control::nodes::DEFAULT_HEARTBEAT_MS,
    };
    heartbeat(&s, &me, now_ms()).await.unwrap();
    s
}

const V1: &str = "
services:
  web:
    image: busybox:1
    deploy: { replicas: 2 }
  worker:
    image: busybox:1
    deploy: { replicas: 5 }
  old:
    image: busybox:1
";

const V2: &str = "
services:
  web:
    image: busybox:2
    deploy: { replicas: 2 }
  worker:
    image: busybox:1
    deploy: { replicas: 3 }
  api:
    image: busybox:1
    deploy:
      placement:
        constraints: [node.labels.disk==ssd]
";

#[tokio::test]
async fn diff_lists_the_planned_task_actions_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let s = one_node().await;
    apply(&s, dir.path(), V1).await;
    run_to_steady_state(&s).await;

    let new = load(dir.path(), V2);
    let p = preview(&s, "shop", &new, true).await.unwrap();
    let changes: Vec<String> = p.changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        changes,
        [
            "+ service api",
            "~ service web: image",
            "~ service worker: deploy.replicas",
            "- service old",
        ]
    );
    let actions: Vec<String> = p.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        actions,
        [
            "stop old.1: service old removed",
            "pending api.1: no suitable node (1: constraint node.labels.disk==ssd not met)",
            "replace web.1: image changed",
            "stop worker.4: scale 5→3",
            "stop worker.5: scale 5→3",
            "replace web.2: image changed (when the rolling update reaches it)",
        ]
    );
    // A preview writes nothing.
    assert_eq!(stack_services(&s, "shop").await.unwrap().len(), 3);

    // Without --prune the removed service is kept and nothing of it is planned.
    let p = preview(&s, "shop", &new, false).await.unwrap();
    assert!(
        p.actions.iter().all(|a| !a.to_string().contains("old")),
        "{p:?}"
    );

    // Scaling up places the new replicas.
    let up = load(dir.path(), &V1.replace("replicas: 2", "replicas: 3"));
    let p = preview(&s, "shop", &up, false).await.unwrap();
    let actions: Vec<String> = p.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(actions, ["create web.3 on n1"]);

    // Nothing changed: nothing planned.
    let same = load(dir.path(), V1);
    assert!(preview(&s, "shop", &same, true).await.unwrap().is_empty());
}

#[tokio::test]
async fn follow_converges_when_the_agent_runs_the_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let s = one_node().await;
    let docs = apply(&s, dir.path(), V1).await;
    settle(&s).await;
    let r = assess(&s, &docs).await.unwrap();
    assert_eq!(r.summary(), "old 0/1, web 0/2, worker 0/5");
    assert!(r.pending().count() == 3 && r.failed().count() == 0, "{r:?}");

    // The leader and the agent run beside the follower, as in the daemon.
    let bg = s.clone();
    let driver = tokio::spawn(async move {
        loop {
            run_to_steady_state(&bg).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut rounds = Vec::new();
    let out = follow(&s, &docs, Duration::from_secs(10), |r| {
        rounds.push(r.summary())
    })
    .await
    .unwrap();
    driver.abort();
    assert!(matches!(out, Outcome::Converged(_)), "{out:?}");
    assert_eq!(rounds.last().unwrap(), "old 1/1, web 2/2, worker 5/5");
}

#[tokio::test]
async fn a_crash_loop_fails_follow_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = one_node().await;
    let docs = apply(&s, dir.path(), "services:\n  bad:\n    image: busybox:1\n").await;
    // Every start exits at once with code 1: the leader restarts it, the agent fails it again.
    let bg = s.clone();
    let driver = tokio::spawn(async move {
        loop {
            settle(&bg).await;
            let mut txn = Txn::new();
            for (mut t, revs) in tasks(&bg).await.unwrap().into_values() {
                if t.desired == DesiredState::Running && t.state == TaskState::Assigned {
                    let now = now_ms();
                    t.transition(TaskState::Running, now).unwrap();
                    t.transition(TaskState::Failed, now).unwrap();
                    t.exit_code = Some(1);
                    txn = task_status_write(txn, revs, &t).unwrap();
                }
            }
            if !txn.ops.is_empty() {
                bg.txn(txn).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let out = follow(&s, &docs, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    driver.abort();
    let Outcome::Failed(r) = out else {
        panic!("{out:?}")
    };
    let failed: Vec<_> = r.failed().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "bad");
    assert!(failed[0].1.contains("exit code 1"), "{failed:?}");
    assert!(matches!(r.services[0].verdict, Convergence::Failed(_)));
}
