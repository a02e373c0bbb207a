//! A one-node raft store on loopback, as a manager's daemon runs it (no containers), for the
//! control tests.

use std::time::Duration;

use dcpp_control::leader::reconcile_once;
use dcpp_control::nodes::{SelfInfo, heartbeat};
use dcpp_control::schema::now_ms;
use dcpp_raft::{Node, NodeConfig, Role};

pub struct OneNode {
    pub node: Node,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl OneNode {
    /// Bootstrapped and leading, serving its API, with the record its agent would write.
    pub async fn start() -> OneNode {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let node = Node::open(NodeConfig::fast(dir.path(), &addr))
            .await
            .unwrap();
        let n2 = node.clone();
        let server = tokio::spawn(async move {
            dcpp_raft::api::serve_tcp(n2, listener, std::future::pending())
                .await
                .ok();
        });
        node.bootstrap().await.unwrap();
        node.wait_leader(Duration::from_secs(10)).await.unwrap();
        let me = SelfInfo::local(node.id(), &addr, Role::Manager);
        heartbeat(&node, &me, now_ms()).await.unwrap();
        OneNode {
            node,
            server,
            _dir: dir,
        }
    }

    pub async fn stop(self) {
        self.node.shutdown().await.ok();
        self.server.abort();
    }
}

/// Runs the leader's rounds until one writes nothing.
pub async fn converge(node: &Node) {
    for _ in 0..20 {
        let (_, wrote) = reconcile_once(node).await.unwrap();
        if !wrote {
            return;
        }
    }
    panic!("the leader loop did not reach a fixpoint");
}
