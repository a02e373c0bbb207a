//! Rounds of the agent against an in-memory store and recording fakes of the host: each test
//! asserts the exact calls a round makes and the exact task record it writes back.

use std::sync::Arc;
use std::time::Duration;

use dcpp_control::nodes::SelfInfo;
use dcpp_control::schema::{
    LABEL_IMAGE_ID, LABEL_TASK, ServiceDoc, TaskRevs, container_name, now_ms, split_task,
    stack_docs, task_key, tasks,
};
use dcpp_raft::{Kind, MemStore, Op, Txn};
use dcpp_reconciler::{
    DesiredState, Health, NodeId, PullProgress, ServiceId, Slot, Task, TaskId, TaskState,
};

use super::Agent;
use crate::contact::Transition;
use crate::host::Host;
use crate::step::ContainerView;
use crate::testing::{
    Call, Calls, CutStore, FakeClock, FakeContainers, FakeImages, FakeNetworks, STOPPED_CODE,
    container, image_id,
};

/// The fake clock's start, in milliseconds since the epoch.
const START_MS: u64 = 1_000_000;
/// Stands for "stamped by this round" in an expected record: `report` takes the wall clock.
const WALL: u64 = u64::MAX;

const WEB: &str = "name: st\nservices:\n  web:\n    image: busybox\n";

struct World {
    store: MemStore,
    calls: Calls,
    ctr: Arc<FakeContainers>,
    net: Arc<FakeNetworks>,
    images: Arc<FakeImages>,
    clock: Arc<FakeClock>,
    agent: Agent<MemStore>,
}

/// An agent for node 1 on an empty store and an empty host.
fn world() -> World {
    let store = MemStore::new();
    let calls = Calls::default();
    let ctr = Arc::new(FakeContainers::new(&calls));
    let net = Arc::new(FakeNetworks::new(&calls));
    let images = Arc::new(FakeImages::new(&calls));
    let clock = Arc::new(FakeClock::new(START_MS));
    let host = Host {
        containers: ctr.clone(),
        networks: Some(net.clone()),
        images: Arc::new(images.clone()),
        clock: clock.clone(),
    };
    let me = SelfInfo::local(1, "127.0.0.1:7001", dcpp_raft::Role::Worker);
    let agent = Agent::with_host(store.clone(), me, || false, host);
    // Construction probes the networks once (whether networking was ever used).
    assert_eq!(calls.take(), vec![Call::Networks]);
    World {
        store,
        calls,
        ctr,
        net,
        images,
        clock,
        agent,
    }
}

/// The service documents of a compose file, through the real loader.
fn service(yaml: &str, name: &str) -> ServiceDoc {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("compose.yml");
    std::fs::write(&f, yaml).unwrap();
    let loaded = dcpp_spec::load(&dcpp_spec::LoadOptions {
        files: vec![f],
        working_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let (_, docs) = stack_docs(&loaded.project, "test").unwrap();
    docs.into_iter().find(|d| d.spec.name == name).unwrap()
}

/// Task 7, slot 1 of `doc`, assigned to `node`.
fn task(doc: &ServiceDoc, node: &str, state: TaskState) -> Task {
    Task {
        node: Some(NodeId(node.into())),
        state,
        ..Task::new(
            TaskId(7),
            ServiceId::new(&doc.spec.stack, &doc.spec.name),
            Slot::Replica(1),
            doc.spec.version,
            doc.spec.image.clone(),
            Default::default(),
            START_MS - 1000,
        )
    }
}

impl World {
    /// Stores the service and both documents of the task, as the leader would.
    fn put(&self, doc: &ServiceDoc, t: &Task) {
        let (desired, status) = split_task(t);
        self.store
            .apply(
                Txn::new()
                    .op(Op::put(Kind::Service, doc.id().0, doc).unwrap())
                    .op(Op::put(Kind::Task, task_key(t.id), &desired).unwrap())
                    .op(Op::put(Kind::TaskStatus, task_key(t.id), &status).unwrap()),
            )
            .unwrap();
    }

    /// The stored record of task 7 (both documents joined) and their revisions.
    async fn stored(&self) -> (Task, TaskRevs) {
        tasks(&self.store)
            .await
            .unwrap()
            .remove(&TaskId(7))
            .expect("task 7 is stored")
    }

    /// A round; returns whether it did something and the calls it made.
    /// Every round also checks that the agent wrote no task document: what runs where is the
    /// leader's to write, the agent writes only the status.
    async fn round(&self) -> (bool, Vec<Call>) {
        let desired = self.store.snapshot(Kind::Task).objects;
        let did = self.agent.reconcile_once().await.unwrap();
        assert_eq!(self.store.snapshot(Kind::Task).objects, desired);
        (did, self.calls.take())
    }

    /// Waits for the background pull to end (it wakes the agent).
    async fn pulled(&self) {
        tokio::time::timeout(Duration::from_secs(5), self.agent.wake.notified())
            .await
            .expect("the pull ends and wakes the agent");
    }

    /// The container of task 7 as an earlier round left it.
    fn add_container(&self, id: &str, t: &Task, status: ContainerView) {
        let image = image_id(&t.image);
        self.ctr.add(container(
            id,
            &container_name(t),
            &[(LABEL_TASK, "7"), (LABEL_IMAGE_ID, &image)],
            status,
        ));
    }
}

/// Asserts that `got` is `want`, where `want`'s [`WALL`] stamps mean "set by a report written
/// since `since`" (wall-clock milliseconds).
fn assert_record(got: &Task, mut want: Task, since: u64) {
    let until = now_ms();
    let stamp = |w: &mut u64, g: u64| {
        if *w == WALL {
            assert!(
                (since..=until).contains(&g),
                "stamp {g} not in {since}..={until}"
            );
            *w = g;
        }
    };
    stamp(&mut want.updated_at, got.updated_at);
    for (w, g) in [
        (&mut want.started_at, got.started_at),
        (&mut want.finished_at, got.finished_at),
        (&mut want.healthy_at, got.healthy_at),
    ] {
        if let (Some(w), Some(g)) = (w.as_mut(), g) {
            stamp(w, g);
        }
    }
    assert_eq!(*got, want);
}

#[tokio::test]
async fn a_new_task_is_pulled_then_created_and_started_and_reported_running() {
    let w = world();
    let doc = service(WEB, "web");
    let t = task(&doc, "1", TaskState::Assigned);
    w.put(&doc, &t);
    let name = container_name(&t);
    let since = now_ms();

    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(
        calls,
        vec![
            Call::List,
            Call::Resolve("busybox".into()),
            Call::Pull("busybox".into()),
            Call::Networks,
        ]
    );
    let pull = PullProgress {
        image: "busybox".into(),
        layers: None,
    };
    let mut want = t.clone();
    want.state = TaskState::Preparing;
    want.updated_at = WALL;
    want.message = pull.to_string();
    want.pull = Some(pull);
    assert_record(&w.stored().await.0, want.clone(), since);

    w.pulled().await;
    let m = w.agent.metrics.clone();
    assert_eq!(m.pulls.get_or_create(&[("result", "ok")]).get(), 1);
    assert_eq!(m.pulls.get_or_create(&[("result", "failed")]).get(), 0);
    assert_eq!(m.starts.get(), 0);
    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(m.starts.get(), 1);
    let net = vec!["st_default".to_string()];
    assert_eq!(
        calls,
        vec![
            Call::List,
            Call::Resolve("busybox".into()),
            Call::Networks,
            Call::Ensure {
                network: "st_default".into(),
                stack: "st".into(),
            },
            Call::Plan {
                container: name.clone(),
                networks: net.clone(),
            },
            Call::ResolvConf {
                container: name.clone(),
                networks: net,
            },
            Call::Create {
                name: name.clone(),
                image: "busybox".into(),
            },
            Call::Start("c1".into()),
            Call::SetServing {
                id: "c1".into(),
                serving: true,
            },
            Call::Hold {
                image: image_id("busybox"),
                holder: "c1".into(),
            },
            Call::Networks,
        ]
    );
    let (got, rev) = w.stored().await;
    want.state = TaskState::Running;
    want.container_id = Some("c1".into());
    want.started_at = Some(WALL);
    want.updated_at = WALL;
    // Leaving `preparing` drops the progress; the message stays until the leader's next one.
    want.pull = None;
    assert_record(&got, want, since);
    assert_eq!(w.ctr.get("c1").unwrap().status, ContainerView::Running);
    assert_eq!(w.net.names(), vec!["st_default".to_string()]);

    // The first look at the running container puts it into service once more (the start
    // bypasses the agent's record of what is in service; the network manager finds nothing
    // to change), then rounds only look.
    let serve = Call::SetServing {
        id: "c1".into(),
        serving: true,
    };
    assert_eq!(
        w.round().await,
        (false, vec![Call::List, serve, Call::Networks])
    );
    assert_eq!(w.round().await, (false, vec![Call::List, Call::Networks]));
    assert_eq!(w.stored().await.1, rev);
}

#[tokio::test]
async fn a_container_that_does_not_start_is_removed_and_the_task_fails() {
    let w = world();
    let doc = service(WEB, "web");
    let t = task(&doc, "1", TaskState::Assigned);
    w.put(&doc, &t);
    w.images.add("busybox");
    w.ctr.fail("start", "exec format error");
    let name = container_name(&t);
    let since = now_ms();

    let (did, calls) = w.round().await;
    assert!(did);
    let net = vec!["st_default".to_string()];
    assert_eq!(
        calls,
        vec![
            Call::List,
            Call::Resolve("busybox".into()),
            Call::Networks,
            Call::Ensure {
                network: "st_default".into(),
                stack: "st".into(),
            },
            Call::Plan {
                container: name.clone(),
                networks: net.clone(),
            },
            Call::ResolvConf {
                container: name.clone(),
                networks: net,
            },
            Call::Create {
                name,
                image: "busybox".into(),
            },
            Call::Start("c1".into()),
            Call::Remove("c1".into()),
            Call::Networks,
        ]
    );
    let mut want = t.clone();
    want.state = TaskState::Failed;
    want.error = Some("runtime: exec format error".into());
    want.updated_at = WALL;
    want.finished_at = Some(WALL);
    assert_record(&w.stored().await.0, want, since);
    assert!(w.ctr.get("c1").is_none());
}

#[tokio::test]
async fn a_task_asked_to_shut_down_is_stopped_reported_then_removed_when_asked() {
    let w = world();
    let doc = service(WEB, "web");
    let mut t = task(&doc, "1", TaskState::Running);
    t.desired = DesiredState::Shutdown;
    t.container_id = Some("c1".into());
    t.started_at = Some(START_MS - 500);
    w.put(&doc, &t);
    w.add_container("c1", &t, ContainerView::Running);
    let since = now_ms();

    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(
        calls,
        vec![
            Call::List,
            // Out of DNS and the port map before the stop signal.
            Call::SetServing {
                id: "c1".into(),
                serving: false,
            },
            Call::Stop("c1".into()),
            Call::Detach("c1".into()),
            Call::ExitCode("c1".into()),
            Call::Networks,
        ]
    );
    let mut want = t.clone();
    want.state = TaskState::Shutdown;
    want.exit_code = Some(STOPPED_CODE);
    want.updated_at = WALL;
    want.finished_at = Some(WALL);
    let (got, rev) = w.stored().await;
    assert_record(&got, want, since);

    // Shut down, its container kept (desired `shutdown` keeps it for logs and inspection).
    let (did, calls) = w.round().await;
    assert!(!did);
    assert_eq!(calls, vec![Call::List, Call::Networks]);
    assert!(w.ctr.get("c1").is_some());

    // The leader asks for removal: the container goes, the record is left as it is.
    let mut removed = got.clone();
    removed.desired = DesiredState::Remove;
    w.put(&doc, &removed);
    let rev_removed = w.stored().await.1;
    assert!(rev_removed.doc > rev.doc);
    let (_, calls) = w.round().await;
    assert_eq!(
        calls,
        vec![
            Call::List,
            Call::Remove("c1".into()),
            Call::Release {
                image: image_id("busybox"),
                holder: "c1".into(),
            },
            Call::Networks,
        ]
    );
    assert!(w.ctr.get("c1").is_none());
    assert_eq!(w.stored().await, (removed, rev_removed));
}

#[tokio::test]
async fn a_container_of_a_task_not_in_the_store_is_removed() {
    let w = world();
    let image = image_id("busybox");
    w.ctr.add(container(
        "c9",
        "st_web.1.99",
        &[(LABEL_TASK, "99"), (LABEL_IMAGE_ID, &image)],
        ContainerView::Running,
    ));
    // Not the agent's: no task label.
    w.ctr
        .add(container("mine", "mine", &[], ContainerView::Running));

    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(
        calls,
        vec![
            Call::List,
            Call::SetServing {
                id: "c9".into(),
                serving: false,
            },
            Call::Remove("c9".into()),
            Call::Release {
                image,
                holder: "c9".into(),
            },
            Call::Networks,
        ]
    );
    assert!(w.ctr.get("c9").is_none());
    assert!(w.ctr.get("mine").is_some());
    assert!(w.store.snapshot(Kind::Task).objects.is_empty());
}

#[tokio::test]
async fn a_failed_pull_rejects_the_task_with_the_registrys_reason() {
    let w = world();
    let doc = service(WEB, "web");
    let t = task(&doc, "1", TaskState::Assigned);
    w.put(&doc, &t);
    w.images.fail_pull("busybox", "manifest unknown");
    let since = now_ms();

    let (_, calls) = w.round().await;
    assert_eq!(
        calls,
        vec![
            Call::List,
            Call::Resolve("busybox".into()),
            Call::Pull("busybox".into()),
            Call::Networks,
        ]
    );
    assert_eq!(w.stored().await.0.state, TaskState::Preparing);
    w.pulled().await;
    let m = w.agent.metrics.clone();
    assert_eq!(m.pulls.get_or_create(&[("result", "failed")]).get(), 1);
    assert_eq!(m.pulls.get_or_create(&[("result", "ok")]).get(), 0);

    // The failure is remembered (no second pull right away) and ends the task.
    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(
        calls,
        vec![Call::List, Call::Resolve("busybox".into()), Call::Networks]
    );
    let (got, _) = w.stored().await;
    let mut want = t.clone();
    want.state = TaskState::Rejected;
    want.error = Some("image pull failed: manifest unknown".into());
    want.message = got.message.clone();
    want.updated_at = WALL;
    want.finished_at = Some(WALL);
    assert_record(&got, want, since);
    assert!(
        got.message.starts_with("pulling busybox"),
        "{}",
        got.message
    );
}

#[tokio::test]
async fn an_exited_container_reports_its_exit_code_and_last_log_lines() {
    for (code, state, error) in [
        (
            3,
            TaskState::Failed,
            Some("exited with code 3; last log lines:\nstarting\nboom"),
        ),
        (0, TaskState::Complete, None),
    ] {
        let w = world();
        let doc = service(WEB, "web");
        let mut t = task(&doc, "1", TaskState::Running);
        t.container_id = Some("c1".into());
        t.started_at = Some(START_MS - 500);
        w.put(&doc, &t);
        w.add_container("c1", &t, ContainerView::Running);
        w.ctr.exit("c1", code);
        w.ctr.set_logs("c1", &["starting\n", "boom\n"]);
        let since = now_ms();

        let (did, calls) = w.round().await;
        assert!(did);
        assert_eq!(
            calls,
            vec![
                Call::List,
                Call::Detach("c1".into()),
                Call::Logs("c1".into()),
                Call::Networks,
            ]
        );
        let mut want = t.clone();
        want.state = state;
        want.exit_code = Some(code);
        want.error = error.map(String::from);
        want.updated_at = WALL;
        want.finished_at = Some(WALL);
        assert_record(&w.stored().await.0, want, since);
    }
}

const CHECKED: &str = "name: st\nservices:\n  web:\n    image: busybox\n    healthcheck:\n      test: [\"CMD\", \"check\"]\n      interval: 10s\n      timeout: 1s\n      retries: 2\n      start_period: 30s\n";

/// A running task of [`CHECKED`] started at the fake clock's start.
fn checked() -> (World, ServiceDoc, Task) {
    let w = world();
    let doc = service(CHECKED, "web");
    let mut t = task(&doc, "1", TaskState::Running);
    t.container_id = Some("c1".into());
    t.started_at = Some(START_MS);
    w.put(&doc, &t);
    w.add_container("c1", &t, ContainerView::Running);
    (w, doc, t)
}

fn check() -> Call {
    Call::Check {
        id: "c1".into(),
        args: vec!["check".into()],
    }
}

#[tokio::test]
async fn failing_healthchecks_fail_the_task_once_retries_are_spent_after_the_start_period() {
    let (w, _, t) = checked();
    w.ctr.script_checks([
        (false, "no"),
        (false, "no"),
        (false, "no"),
        (false, "still no"),
    ]);

    // First check (due at once) fails inside the start period: starting, not in service.
    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(
        calls,
        vec![
            Call::List,
            check(),
            Call::SetServing {
                id: "c1".into(),
                serving: false,
            },
            Call::Networks,
        ]
    );
    let mut want = t.clone();
    want.health = Health::Starting;
    let (got, rev) = w.stored().await;
    assert_eq!(got, want);

    // Not due again before the interval.
    w.clock.advance(Duration::from_secs(9));
    assert_eq!(w.round().await, (false, vec![Call::List, Call::Networks]));

    // Retries spent, but still inside the start period: no change.
    for secs in [1, 10] {
        w.clock.advance(Duration::from_secs(secs));
        assert_eq!(
            w.round().await,
            (false, vec![Call::List, check(), Call::Networks])
        );
        assert_eq!(w.stored().await.1, rev);
    }

    // 30s after the start: past the start period, the next failure makes it unhealthy; the
    // task fails and its container is stopped.
    let since = now_ms();
    w.clock.advance(Duration::from_secs(10));
    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(
        calls,
        vec![
            Call::List,
            check(),
            Call::Stop("c1".into()),
            Call::ExitCode("c1".into()),
            Call::Networks,
        ]
    );
    want.state = TaskState::Failed;
    want.health = Health::Unhealthy;
    want.exit_code = Some(STOPPED_CODE);
    want.error = Some("unhealthy: last healthcheck still no".into());
    want.updated_at = WALL;
    want.finished_at = Some(WALL);
    assert_record(&w.stored().await.0, want, since);
}

#[tokio::test]
async fn a_passing_healthcheck_puts_the_task_into_service_and_reports_it_healthy() {
    let (w, _, t) = checked();
    w.ctr.script_checks([(true, "ok")]);
    let since = now_ms();
    let (did, calls) = w.round().await;
    assert!(did);
    assert_eq!(
        calls,
        vec![
            Call::List,
            check(),
            Call::SetServing {
                id: "c1".into(),
                serving: true,
            },
            Call::Networks,
        ]
    );
    let mut want = t.clone();
    want.health = Health::Healthy;
    want.healthy_at = Some(WALL);
    assert_record(&w.stored().await.0, want, since);

    w.clock.advance(Duration::from_secs(5));
    assert_eq!(w.round().await, (false, vec![Call::List, Call::Networks]));
}

#[tokio::test]
async fn a_task_assigned_to_another_node_is_left_alone() {
    let w = world();
    let doc = service(WEB, "web");
    let t = task(&doc, "2", TaskState::Assigned);
    w.put(&doc, &t);
    let before = w.stored().await;
    assert_eq!(w.round().await, (false, vec![Call::List, Call::Networks]));
    assert_eq!(w.stored().await, before);
}

#[test]
fn the_mesh_plan_forwards_what_other_nodes_serve() {
    use dcpp_control::mesh::{MeshDoc, MeshPort};
    use dcpp_runtime::network::{Mesh, MeshForward, Protocol};
    let ip = |s: &str| -> std::net::Ipv4Addr { s.parse().unwrap() };
    let port = |published: u16, protocol: &str, serving: &[(u64, u32)]| MeshPort {
        service: "s_web".into(),
        published,
        protocol: protocol.into(),
        serving: serving.iter().copied().collect(),
    };
    let doc = MeshDoc {
        nodes: [
            (1, ip("10.1.0.1")),
            (2, ip("10.1.0.2")),
            (3, ip("10.1.0.3")),
        ]
        .into(),
        ports: vec![
            port(53, "udp", &[(2, 1)]),
            port(8080, "tcp", &[(1, 1), (2, 2)]),
            port(9000, "tcp", &[(3, 1)]),
        ],
    };
    assert_eq!(
        super::mesh_plan(&doc, 3, ip("10.1.0.3")),
        Mesh {
            local: ip("10.1.0.3"),
            ports: vec![
                MeshForward {
                    port: 53,
                    protocol: Protocol::Udp,
                    to: vec![ip("10.1.0.2")],
                },
                MeshForward {
                    port: 8080,
                    protocol: Protocol::Tcp,
                    to: vec![ip("10.1.0.1"), ip("10.1.0.2"), ip("10.1.0.2")],
                },
                MeshForward {
                    port: 9000,
                    protocol: Protocol::Tcp,
                    to: vec![],
                },
            ],
        }
    );
    let only_mine = MeshDoc {
        ports: vec![port(9000, "tcp", &[(3, 1)])],
        ..doc
    };
    assert_eq!(
        super::mesh_plan(&only_mine, 3, ip("10.1.0.3")).ports,
        vec![MeshForward {
            port: 9000,
            protocol: Protocol::Tcp,
            to: vec![],
        }]
    );
    assert_eq!(
        super::mesh_plan(&MeshDoc::default(), 3, ip("10.1.0.3")).ports,
        vec![]
    );
}

/// Stores the service and both documents of `t` in `store`, as the leader would.
fn put_into(store: &MemStore, doc: &ServiceDoc, t: &Task) {
    let (desired, status) = split_task(t);
    store
        .apply(
            Txn::new()
                .op(Op::put(Kind::Service, doc.id().0, doc).unwrap())
                .op(Op::put(Kind::Task, task_key(t.id), &desired).unwrap())
                .op(Op::put(Kind::TaskStatus, task_key(t.id), &status).unwrap()),
        )
        .unwrap();
}

#[tokio::test]
async fn a_node_cut_off_for_the_grace_stops_its_tasks_and_starts_none_until_it_has_caught_up() {
    let store = CutStore::new(MemStore::new());
    let calls = Calls::default();
    let ctr = Arc::new(FakeContainers::new(&calls));
    let clock = Arc::new(FakeClock::new(START_MS));
    let host = Host {
        containers: ctr.clone(),
        networks: Some(Arc::new(FakeNetworks::new(&calls))),
        images: Arc::new(Arc::new(FakeImages::new(&calls))),
        clock: clock.clone(),
    };
    let me = SelfInfo::local(1, "127.0.0.1:7001", dcpp_raft::Role::Manager);
    let agent = Agent::with_host(store.clone(), me, || true, host)
        .with_partition_grace(Some(Duration::from_secs(10)));
    calls.take();
    let doc = service(WEB, "web");
    let mut t = task(&doc, "1", TaskState::Running);
    t.container_id = Some("c1".into());
    t.started_at = Some(START_MS - 500);
    put_into(&store.live, &doc, &t);
    let image = image_id("busybox");
    ctr.add(container(
        "c1",
        &container_name(&t),
        &[(LABEL_TASK, "7"), (LABEL_IMAGE_ID, &image)],
        ContainerView::Running,
    ));

    // Before a heartbeat got through, the agent does nothing (it started cut off, perhaps).
    assert!(!agent.turn().await.unwrap());
    assert_eq!(calls.take(), vec![]);
    assert!(agent.beat_once(true).await);
    assert!(!agent.turn().await.unwrap());
    assert_eq!(
        calls.take(),
        vec![
            Call::List,
            Call::SetServing {
                id: "c1".into(),
                serving: true,
            },
            Call::Networks,
        ]
    );

    // The partition: no write gets through, and reads come from the copy this manager had,
    // which stopped changing.
    let copy = store.live.fork();
    store.read_from(Some(copy.clone()));
    store.set_cut(true);
    assert!(!agent.beat_once(true).await);
    clock.advance(Duration::from_millis(9_999));
    assert_eq!(agent.check_contact(), None);
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        agent.check_contact(),
        Some(Transition::CutOff {
            silent: Duration::from_secs(10)
        })
    );
    // Out of DNS first, stopped with its grace, out of the networks, removed.
    assert!(agent.turn().await.unwrap());
    assert_eq!(
        calls.take(),
        vec![
            Call::List,
            Call::SetServing {
                id: "c1".into(),
                serving: false,
            },
            Call::Stop("c1".into()),
            Call::Detach("c1".into()),
            Call::Remove("c1".into()),
            Call::Release {
                image: image.clone(),
                holder: "c1".into(),
            },
        ]
    );
    assert!(ctr.get("c1").is_none());
    // The copy assigns a task to this node, and still shows task 7 running here: nothing
    // starts while cut off.
    let mut t9 = task(&doc, "1", TaskState::Assigned);
    t9.id = TaskId(9);
    t9.slot = Slot::Replica(2);
    put_into(&copy, &doc, &t9);
    clock.advance(Duration::from_secs(30));
    assert_eq!(agent.check_contact(), None);
    assert!(!agent.turn().await.unwrap());
    assert_eq!(calls.take(), vec![Call::List]);

    // Meanwhile the leader declared the node down: both tasks are orphaned, replaced
    // elsewhere.
    for mut o in [t.clone(), t9.clone()] {
        o.state = TaskState::Orphaned;
        o.message = "node 1 is down".into();
        put_into(&store.live, &doc, &o);
    }
    let live = store.live.snapshot(Kind::TaskStatus);
    // Healed: a heartbeat gets through, but this copy has not caught up yet.
    store.set_cut(false);
    assert!(agent.beat_once(true).await);
    assert!(!agent.turn().await.unwrap());
    assert_eq!(calls.take(), vec![], "nothing acts on the old copy");
    // Caught up: the tasks moved away stay away.
    store.read_from(None);
    assert!(!agent.turn().await.unwrap());
    assert_eq!(calls.take(), vec![Call::List, Call::Networks]);
    assert_eq!(store.live.snapshot(Kind::TaskStatus).objects, live.objects);
    assert!(crate::host::Containers::list(&*ctr).is_empty());
}
