//! Secrets and configs on a real one-node raft store (no containers): stored sealed, a new
//! version only for new data, delivered only for a task placed on the asking node and only
//! the files its service mounts, rolled into the services that mount them, and not removed
//! while in use.

mod common;

use common::{OneNode, converge};
use dcpp_control::files::{
    FileData, FileDoc, FileWanted, Plain, PutFile, TaskFiles, put, remove, task_files,
};
use dcpp_control::schema::{ServiceDoc, ServiceHistory, task_key};
use dcpp_raft::api::Access;
use dcpp_raft::{Kind, Op, Txn};
use dcpp_reconciler::{FileKind, FileMount, ServiceSpec};

fn service() -> ServiceDoc {
    let mut spec = ServiceSpec::new("st", "web", "busybox", 1);
    spec.files = vec![FileMount {
        kind: FileKind::Secret,
        source: "pw".into(),
        name: "st_pw".into(),
        version: 0,
        target: "/run/secrets/pw".into(),
        uid: 0,
        gid: 0,
        mode: 0o400,
    }];
    ServiceDoc {
        spec: spec.with_file_versions(|_, _| 1),
        service: dcpp_spec::Service {
            image: Some("busybox".into()),
            ..Default::default()
        },
        ipam: Default::default(),
    }
}

fn data(s: &str) -> PutFile {
    PutFile {
        data: Plain(s.as_bytes().to_vec()),
        ..PutFile::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_versioned_delivered_to_their_node_only_and_rolled() {
    let one = OneNode::start().await;
    let node = one.node.clone();

    let v1 = put(&node, FileKind::Secret, "st_pw", data("first-password"))
        .await
        .unwrap();
    assert_eq!((v1.version, v1.changed), (1, true));
    let again = put(&node, FileKind::Secret, "st_pw", data("first-password"))
        .await
        .unwrap();
    assert_eq!((again.version, again.changed), (1, false));
    // The store holds ciphertext only.
    let raw = node.get(Kind::Secret, "st_pw", false).await.unwrap();
    let text = raw.value.to_string();
    assert!(!text.contains("first-password") && !text.contains(&hex::encode("first-password")));

    let svc = service();
    node.txn(Txn::new().op(Op::put(Kind::Service, svc.id().0, &svc).unwrap()))
        .await
        .unwrap();
    converge(&node).await;
    let tasks = dcpp_control::schema::tasks(&node).await.unwrap();
    let (task, _) = tasks.values().next().expect("a task").clone();
    let wanted = |name: &str, version: u64| TaskFiles {
        task: task_key(task.id),
        files: vec![FileWanted {
            kind: FileKind::Secret,
            name: name.into(),
            version,
        }],
    };
    let got: Vec<FileData> = task_files(&node, Access::Worker(node.id()), &wanted("st_pw", 1))
        .await
        .unwrap();
    assert_eq!(got[0].data.0, b"first-password");
    // Another node, or a file the service does not mount: as if absent.
    let other = task_files(&node, Access::Worker(node.id() + 1), &wanted("st_pw", 1)).await;
    assert!(other.unwrap_err().to_string().contains("not found"));
    put(&node, FileKind::Secret, "elsewhere", data("x"))
        .await
        .unwrap();
    let e = task_files(&node, Access::Worker(node.id()), &wanted("elsewhere", 1)).await;
    assert!(e.unwrap_err().to_string().contains("not found"));

    // A new version rolls the service; the replaced document is its history.
    let v2 = put(
        &node,
        FileKind::Secret,
        "st_pw",
        PutFile {
            roll: true,
            ..data("second")
        },
    )
    .await
    .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.rolled, vec![svc.id().0.clone()]);
    let now: ServiceDoc = node
        .get(Kind::Service, &svc.id().0, false)
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(now.spec.files[0].version, 2);
    assert_ne!(now.spec.version, svc.spec.version);
    let h: ServiceHistory = node
        .get(Kind::ServiceHistory, &svc.id().0, false)
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(h.previous.unwrap().spec.files[0].version, 1);
    // Version 1 is kept while the history mounts it; after one more, only what is mounted
    // (2, by the history) and the current one remain.
    put(
        &node,
        FileKind::Secret,
        "st_pw",
        PutFile {
            roll: true,
            ..data("third")
        },
    )
    .await
    .unwrap();
    let doc: FileDoc = node
        .get(Kind::Secret, "st_pw", false)
        .await
        .unwrap()
        .decode()
        .unwrap();
    let kept: Vec<u64> = doc.versions.iter().map(|v| v.version).collect();
    assert_eq!(kept, vec![2, 3]);

    let e = remove(&node, FileKind::Secret, "st_pw").await.unwrap_err();
    assert!(e.to_string().contains("in use by service st_web"), "{e}");
    remove(&node, FileKind::Secret, "elsewhere").await.unwrap();
    one.stop().await;
}
