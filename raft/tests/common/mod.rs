//! In-process test clusters. Each node runs in its own tokio runtime on its own threads, so
//! "killing" a node drops its runtime: every task (Raft core, replication, HTTP connections)
//! stops at once without any graceful step, like a crashed process, and its redb file closes.
#![allow(dead_code)]

pub mod lin;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dcpp_raft::{Client, Node, NodeConfig};
use tempfile::TempDir;

pub struct TestNode {
    pub node: Node,
    rt: tokio::runtime::Runtime,
}

pub struct Cluster {
    _dir: TempDir,
    pub dirs: Vec<PathBuf>,
    pub addrs: Vec<String>,
    pub nodes: Vec<Option<TestNode>>,
    /// An admin certificate of the cluster, for API clients.
    pub admin: Option<dcpp_raft::AdminCert>,
    pub tweak: fn(&mut NodeConfig),
}

pub fn no_tweak(_: &mut NodeConfig) {}

async fn spawn_node(cfg: NodeConfig, port: u16) -> (TestNode, u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let (node, port) = rt
        .spawn(async move {
            let listener = bind(port).await;
            let port = listener.local_addr().expect("addr").port();
            let mut cfg = cfg;
            cfg.advertise = format!("127.0.0.1:{port}");
            let node = Node::open(cfg).await.expect("open node");
            let n2 = node.clone();
            tokio::spawn(async move {
                dcpp_raft::api::serve_tcp(n2, listener, std::future::pending())
                    .await
                    .ok();
            });
            (node, port)
        })
        .await
        .expect("spawn node");
    (TestNode { node, rt }, port)
}

async fn bind(port: u16) -> tokio::net::TcpListener {
    // A restarted node reuses its port; retry briefly in case the old socket is still closing.
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("cannot bind 127.0.0.1:{port}");
}

impl Cluster {
    /// Starts node 0 as a new cluster and joins the others as managers (voters).
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, no_tweak).await
    }

    pub async fn start_with(n: usize, tweak: fn(&mut NodeConfig)) -> Cluster {
        let dir = TempDir::new().expect("tempdir");
        let mut c = Cluster {
            dirs: (0..n).map(|i| dir.path().join(format!("n{i}"))).collect(),
            _dir: dir,
            addrs: Vec::new(),
            nodes: Vec::new(),
            admin: None,
            tweak,
        };
        for i in 0..n {
            let mut cfg = NodeConfig::fast(&c.dirs[i], "");
            tweak(&mut cfg);
            let (tn, port) = spawn_node(cfg, 0).await;
            c.addrs.push(format!("127.0.0.1:{port}"));
            c.nodes.push(Some(tn));
        }
        let first = c.node(0);
        on(&c.nodes[0], async move { first.bootstrap().await })
            .await
            .expect("bootstrap");
        let tokens = c.node(0).join_tokens().expect("tokens");
        for i in 1..n {
            c.join(i, &tokens.manager).await;
        }
        c.admin = Some(
            c.node(0)
                .issue_cert(
                    dcpp_raft::CertRole::Admin,
                    "test",
                    dcpp_raft::pki::Validity::from_now(Duration::from_secs(3600)),
                )
                .expect("admin certificate"),
        );
        c
    }

    pub async fn join(&self, i: usize, token: &str) {
        let n = self.node(i);
        let addr = self.addrs[0].clone();
        let token = token.to_string();
        on(&self.nodes[i], async move { n.join(&addr, &token).await })
            .await
            .unwrap_or_else(|e| panic!("join node {i}: {e}"));
    }

    /// Runs `f` on node `i`'s runtime.
    pub async fn on<T: Send + 'static>(
        &self,
        i: usize,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        on(&self.nodes[i], f).await
    }

    /// Starts a fresh node that belongs to no cluster; returns its index.
    pub async fn spawn_fresh(&mut self) -> usize {
        let i = self.nodes.len();
        let dir = self.dirs[0].parent().expect("parent").join(format!("n{i}"));
        let mut cfg = NodeConfig::fast(&dir, "");
        (self.tweak)(&mut cfg);
        let (tn, port) = spawn_node(cfg, 0).await;
        self.dirs.push(dir);
        self.addrs.push(format!("127.0.0.1:{port}"));
        self.nodes.push(Some(tn));
        i
    }

    /// Adds a fresh node (not started with the cluster); returns its index.
    pub async fn add_fresh(&mut self, token: &str) -> usize {
        let i = self.spawn_fresh().await;
        self.join(i, token).await;
        i
    }

    pub fn node(&self, i: usize) -> Node {
        self.nodes[i]
            .as_ref()
            .expect("node is running")
            .node
            .clone()
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    pub fn client(&self, i: usize) -> Client {
        Client::over(&self.addrs[i], self.admin_http())
    }

    /// An HTTPS client with the admin certificate.
    pub fn admin_http(&self) -> reqwest::Client {
        let a = self.admin.as_ref().expect("cluster started");
        dcpp_raft::tls::client_from_pems(&a.ca_pem, &a.cert_pem, &a.key_pem, None)
            .expect("admin client")
    }

    /// Crash-stops node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(tn) = self.nodes[i].take() {
            drop(tn.node);
            tn.rt.shutdown_background();
        }
    }

    /// Restarts node `i` from its data dir on its old port.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} still running");
        let port: u16 = self.addrs[i]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let mut cfg = NodeConfig::fast(&self.dirs[i], "");
        (self.tweak)(&mut cfg);
        let (tn, _) = spawn_node(cfg, port).await;
        self.nodes[i] = Some(tn);
    }

    /// Index of the node all running nodes agree is leader, waiting up to `timeout`.
    pub async fn leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for i in self.alive() {
                let n = self.node(i);
                let m = n.raft().metrics().borrow().clone();
                if m.current_leader == Some(n.id()) && m.state == openraft::ServerState::Leader {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Runs a future on a node's own runtime.
pub async fn on<T: Send + 'static>(
    tn: &Option<TestNode>,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    tn.as_ref()
        .expect("running")
        .rt
        .spawn(f)
        .await
        .expect("task")
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
