//! The leader loop against a real one-node raft store (no containers): services become
//! assigned tasks in the store, an unchanged state writes nothing, scaling down marks surplus
//! tasks for removal and keeps the agent-reported running one.

mod common;

use common::{OneNode, converge};
use dcpp_control::leader::reconcile_once;
use dcpp_control::nodes::node_id;
use dcpp_control::schema::{ServiceDoc, ServiceHistory, TaskRevs, now_ms, task_status_write};
use dcpp_raft::{Kind, Node, Op, Txn};
use dcpp_reconciler::{DesiredState, ServiceSpec, Task, TaskState};

async fn tasks(node: &Node) -> Vec<(Task, TaskRevs)> {
    dcpp_control::schema::tasks(node)
        .await
        .unwrap()
        .into_values()
        .collect()
}

fn service(replicas: u32) -> ServiceDoc {
    ServiceDoc {
        spec: ServiceSpec::new("st", "web", "busybox", replicas),
        service: dcpp_spec::Service {
            image: Some("busybox".into()),
            ..Default::default()
        },
        ipam: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_become_assigned_tasks_and_scale_down_removes_surplus() {
    let one = OneNode::start().await;
    let node = one.node.clone();

    let put = |d: ServiceDoc| Txn::new().op(Op::put(Kind::Service, d.id().0, &d).unwrap());
    node.txn(put(service(3))).await.unwrap();
    converge(&node).await;
    let ts = tasks(&node).await;
    assert_eq!(ts.len(), 3);
    for (t, _) in &ts {
        assert_eq!(t.state, TaskState::Assigned, "{t:?}");
        assert_eq!(t.node, Some(node_id(node.id())));
    }
    // Nothing changed: nothing is written.
    let (_, wrote) = reconcile_once(&node).await.unwrap();
    assert!(!wrote);

    // An agent reports one task running; scaling to 1 keeps that task and its report.
    let (mut t, revs) = ts[0].clone();
    t.state = TaskState::Running;
    node.txn(task_status_write(Txn::new(), revs, &t).unwrap())
        .await
        .unwrap();
    node.txn(put(service(1))).await.unwrap();
    converge(&node).await;
    let ts = tasks(&node).await;
    let running: Vec<_> = ts
        .iter()
        .filter(|(t, _)| t.desired == DesiredState::Running && t.is_live())
        .collect();
    assert_eq!(running.len(), 1, "{ts:?}");
    assert!(
        ts.iter()
            .any(|(x, _)| x.id == t.id && x.state == TaskState::Running)
    );
    one.stop().await;
}

/// Marks every live task that should run as running, as an agent would report.
async fn run_all(node: &Node) {
    let mut txn = Txn::new();
    for (mut t, revs) in tasks(node).await {
        if t.is_live() && t.state < TaskState::Running && t.desired == DesiredState::Running {
            t.state = TaskState::Running;
            t.started_at = Some(now_ms());
            txn = task_status_write(txn, revs, &t).unwrap();
        } else if t.is_live() && t.desired != DesiredState::Running {
            t.state = TaskState::Shutdown;
            t.finished_at = Some(now_ms());
            txn = task_status_write(txn, revs, &t).unwrap();
        }
    }
    if !txn.ops.is_empty() {
        node.txn(txn).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_rollback_resets_the_stored_service_and_keeps_the_rejected_one() {
    let one = OneNode::start().await;
    let node = one.node.clone();

    let mut good = service(1);
    good.spec.update_config.failure_action = dcpp_reconciler::FailureAction::Rollback;
    let put = |d: &ServiceDoc| Txn::new().op(Op::put(Kind::Service, d.id().0, d).unwrap());
    node.txn(put(&good)).await.unwrap();
    converge(&node).await;
    run_all(&node).await;
    converge(&node).await;

    // `apply` of a bad version: the document it replaces is kept as the previous one.
    let mut bad = good.clone();
    bad.spec.version = 2;
    bad.spec.image = "busybox:bad".into();
    bad.service.image = Some("busybox:bad".into());
    let history = ServiceHistory {
        previous: Some(good.clone()),
        rejected: None,
    };
    node.txn(put(&bad).op(Op::put(Kind::ServiceHistory, good.id().0, &history).unwrap()))
        .await
        .unwrap();
    converge(&node).await;
    run_all(&node).await;
    converge(&node).await;
    let (mut t, revs) = tasks(&node)
        .await
        .into_iter()
        .find(|(t, _)| t.spec_version == 2 && t.is_live())
        .expect("a task of version 2");
    t.state = TaskState::Failed;
    t.finished_at = Some(now_ms());
    t.exit_code = Some(1);
    node.txn(task_status_write(Txn::new(), revs, &t).unwrap())
        .await
        .unwrap();
    converge(&node).await;

    let id = good.id().0;
    let stored: ServiceDoc = node
        .get(Kind::Service, &id, false)
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(stored.spec.version, 1);
    assert_eq!(stored.service.image.as_deref(), Some("busybox"));
    let history: ServiceHistory = node
        .get(Kind::ServiceHistory, &id, false)
        .await
        .unwrap()
        .decode()
        .unwrap();
    // The rejected version is kept; there is nothing to roll back to any more.
    assert_eq!(history.rejected, Some(bad));
    assert_eq!(history.previous, None);
    // The stored spec matches the version that runs, so the rejection is lifted.
    let st: dcpp_reconciler::ServiceStatus = node
        .get(Kind::ServiceStatus, &id, false)
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!((st.spec.version, st.rejected), (1, None));
    assert_eq!(st.update.unwrap().rolled_back_from, Some(2));
    one.stop().await;
}
