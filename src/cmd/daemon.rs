//! `dcpp daemon`: runs this machine's cluster member — the Raft node and the store API. Peers
//! and remote clients reach it over TCP with mutual TLS (certificates of the cluster's own
//! root); local clients over a unix socket (mode 0600). With no cluster options it is a
//! persistent one-node cluster.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dcpp_raft::{Node, NodeConfig};

use crate::Global;

pub const DEFAULT_SOCKET: &str = "/run/dcpp/dcpp.sock";

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// TCP address for peer Raft RPCs and the remote API.
    #[arg(long, default_value = "127.0.0.1:2377")]
    pub listen: SocketAddr,
    /// Address other members use to reach this node (default: --listen; required when
    /// listening on a wildcard address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Unix socket for local clients.
    #[arg(long, env = "DCPP_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Validity of node certificates in a cluster this daemon creates (renewed when a third
    /// is left).
    #[arg(long, default_value = "90d", value_parser = crate::cmd::duration::parse)]
    pub cert_ttl: std::time::Duration,
    /// How long the old root stays trusted after `dcpp cluster ca --rotate` (a node down for
    /// longer must rejoin).
    #[arg(long, default_value = "10m", value_parser = crate::cmd::duration::parse)]
    pub ca_rotation_grace: std::time::Duration,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (a loopback address: the listener
    /// has no authentication). `GET /metrics` is always on the API too: the unix socket, and
    /// --listen with a client certificate of the cluster.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub listener: ListenerArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Limits of the TCP listener (anyone who reaches the port can connect).
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerArgs {
    /// Time a TCP client has to send a request head (also the idle time after which a
    /// kept-alive connection is closed).
    #[arg(long, default_value = "20s", value_parser = crate::cmd::duration::parse)]
    pub listen_header_timeout: std::time::Duration,
    /// A TCP connection without a client certificate (only joining nodes have none) is closed
    /// this long after it was accepted.
    #[arg(long, default_value = "30s", value_parser = crate::cmd::duration::parse)]
    pub listen_unauthenticated_timeout: std::time::Duration,
    /// TCP connections open at once (further ones are closed at once); at most a quarter of
    /// the NOFILE limit, which keeps descriptors for containers, the store and the socket.
    #[arg(long, default_value_t = 512)]
    pub listen_max_connections: usize,
    /// Not-yet-authenticated TCP connections open at once from one address (IPv6: one /64).
    #[arg(long, default_value_t = 32)]
    pub listen_max_per_source: usize,
    /// How often refused TCP requests and connections are summarised in the log.
    #[arg(long, default_value = "60s", value_parser = crate::cmd::duration::parse)]
    pub listen_log_interval: std::time::Duration,
}

impl ListenerArgs {
    fn limits(&self, nofile: u64) -> dcpp_raft::api::ListenerLimits {
        let budget = usize::try_from(nofile / 4).unwrap_or(usize::MAX).max(1);
        dcpp_raft::api::ListenerLimits {
            header_read_timeout: self.listen_header_timeout,
            unauthenticated_timeout: self.listen_unauthenticated_timeout,
            max_connections: self.listen_max_connections.min(budget),
            max_unauthenticated_per_source: self.listen_max_per_source,
            log_interval: self.listen_log_interval,
            ..Default::default()
        }
    }
}

/// Settings of the node agent the daemon runs (each daemon on one machine needs its own).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// cgroup under which task containers are placed.
    #[arg(long, env = "DCPP_CGROUP_PARENT", default_value = "dcpp")]
    pub cgroup_parent: String,
    /// Prefix of the bridges and veths this daemon creates (1–6 of [a-z0-9]).
    #[arg(long, default_value = "dcpp")]
    pub bridge_prefix: String,
    /// nftables table (family ip) for published ports.
    #[arg(long, default_value = "dcpp")]
    pub nft_table: String,
    /// Address pools stack networks are carved from, as docker's `default-address-pools`:
    /// `CIDR/SIZE` gives each network a /SIZE block of CIDR (`CIDR` alone: /20 blocks, or the
    /// pool itself when smaller). Comma-separated or repeated; pools are used in order. A
    /// compose network's own `ipam` subnet must lie inside one. Default `10.208.0.0/12/20`:
    /// 256 networks of 4094 addresses each, room for a thousand replicas on one network (a /24
    /// holds 253). In a cluster the leader's pools are the cluster's.
    #[arg(long = "network-pool", value_name = "CIDR[/SIZE]")]
    pub network_pools: Vec<String>,
    /// UDP port of the containers' DNS resolver on each gateway.
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Run only the store (no agent, no reconciler).
    #[arg(long)]
    pub no_agent: bool,
    /// Keep one stack per compose file of this directory applied (see `dcpp watch`).
    #[arg(long)]
    pub watch: Option<PathBuf>,
    /// Registry (host:port) the agent pulls from over plain HTTP; loopback registries always
    /// are. Repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// How often this node's agent reports to the cluster. The leader declares a node down
    /// after three missed heartbeats plus a second (4 s with the default), then reschedules
    /// its tasks; a shorter interval notices sooner and costs one raft write per node per
    /// interval.
    #[arg(long, default_value = "1s", value_parser = crate::cmd::duration::parse)]
    pub heartbeat: std::time::Duration,
    /// How long this node may go without a heartbeat reaching the managers (a partition, or
    /// managers without a quorum) before it stops and removes its own task containers; it
    /// starts nothing until a heartbeat gets through again, then does what the store says.
    /// Meanwhile the leader has declared the node down and started its tasks elsewhere, so a
    /// slot may serve twice, on both sides of a partition, for up to this long. Shorter limits
    /// that; longer rides out longer network blips without stopping anything. Must exceed the
    /// time the leader takes to declare the node down (see --heartbeat). `0`: never stop.
    /// Default: 10s, or two and a half times the down time if --heartbeat makes that longer.
    #[arg(long, value_parser = crate::cmd::duration::parse)]
    pub partition_grace: Option<std::time::Duration>,
    /// Stack networks span the nodes (VXLAN overlay, cluster-wide addresses and names).
    /// `auto`: when the advertise address is not a loopback one (nodes that share one
    /// machine's network cannot carry an overlay between them).
    #[arg(long, value_enum, default_value_t = OverlayMode::Auto)]
    pub overlay: OverlayMode,
    /// UDP port of the overlay's VXLAN traffic (the same on every node).
    #[arg(long, default_value_t = 4789)]
    pub vxlan_port: u16,
    /// MTU of the underlay network; overlay interfaces get 50 bytes less.
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
}

impl AgentArgs {
    /// How long the leader waits for a silent node before it declares it down.
    fn down_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(dcpp_control::nodes::down_after_ms(
            self.heartbeat.as_millis() as u64,
        ))
    }

    /// `--partition-grace`, or its default for this heartbeat.
    pub fn partition_grace(&self) -> std::time::Duration {
        self.partition_grace.unwrap_or_else(|| {
            dcpp_node_agent::agent::PARTITION_GRACE.max(self.down_after() * 5 / 2)
        })
    }
}

/// Whether stack networks span nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverlayMode {
    Auto,
    On,
    Off,
}

impl OverlayMode {
    /// Whether a node advertised at `advertise` (`host:port`) joins the overlay.
    pub fn enabled(self, advertise: &str) -> bool {
        match self {
            OverlayMode::On => true,
            OverlayMode::Off => false,
            OverlayMode::Auto => dcpp_control::overlay::underlay_of(advertise)
                .is_some_and(|ip| !ip.is_loopback() && !ip.is_unspecified()),
        }
    }
}

pub fn run(global: &Global, args: DaemonArgs) -> anyhow::Result<u8> {
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None if args.listen.ip().is_unspecified() => {
            anyhow::bail!(
                "--listen {} is a wildcard address: pass --advertise HOST:PORT",
                args.listen
            )
        }
        None => args.listen.to_string(),
    };
    prepare_data_dir(&global.data_dir)?;
    let nofile = match dcpp_runtime::process::raise_nofile_limit() {
        Ok((_, now)) => now,
        Err(e) => {
            tracing::warn!("cannot raise the NOFILE limit: {e}");
            dcpp_runtime::process::nofile_limit().unwrap_or(1024)
        }
    };
    let limits = args.listener.limits(nofile);
    dcpp_runtime::process::limit_malloc_arenas(2);
    let rt = tokio::runtime::Runtime::new().context("start tokio runtime")?;
    if args.cert_ttl < std::time::Duration::from_secs(10) {
        anyhow::bail!("--cert-ttl must be at least 10s");
    }
    if args.agent.heartbeat < std::time::Duration::from_millis(100)
        || args.agent.heartbeat > std::time::Duration::from_secs(600)
    {
        anyhow::bail!("--heartbeat must be between 100ms and 10m");
    }
    let (grace, down_after) = (args.agent.partition_grace(), args.agent.down_after());
    if !grace.is_zero() && grace <= down_after {
        anyhow::bail!(
            "--partition-grace {grace:?} must exceed the {down_after:?} after which the leader \
             declares a silent node down (three heartbeats and a second), or be 0 to disable: \
             a shorter one stops tasks before any replacement starts"
        );
    }
    if let Some(addr) = args.metrics_addr {
        crate::cmd::metrics::check_addr(addr, args.listen)?;
    }
    rt.block_on(serve(
        global.data_dir.join("raft"),
        (args.listen, args.metrics_addr),
        advertise,
        args.socket,
        limits,
        (args.cert_ttl, args.ca_rotation_grace),
        Some((global.data_dir.clone(), args.agent.clone())),
    ))?;
    Ok(0)
}

async fn serve(
    raft_dir: PathBuf,
    (listen, metrics_addr): (SocketAddr, Option<SocketAddr>),
    advertise: String,
    socket: PathBuf,
    limits: dcpp_raft::api::ListenerLimits,
    (cert_ttl, ca_rotation_grace): (std::time::Duration, std::time::Duration),
    agent: Option<(PathBuf, AgentArgs)>,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let metrics_listener = match metrics_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("--metrics-addr {a}"))?,
        ),
        None => None,
    };
    let unix = bind_socket(&socket)?;
    let mut cfg = NodeConfig::new(&raft_dir, &advertise);
    // Each agent keeps its node's record; a member that leaves takes its record with it.
    cfg.member_kind = Some(dcpp_raft::Kind::Node);
    cfg.cert_ttl = cert_ttl;
    cfg.ca_rotation_grace = ca_rotation_grace;
    cfg.worker_scope = Some(dcpp_raft::scope::ScopeRef(std::sync::Arc::new(
        dcpp_control::scope::Workers,
    )));
    let node = Node::open(cfg)
        .await
        .with_context(|| format!("open raft store in {}", raft_dir.display()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx1 = stop_rx.clone();
    let data_dir = raft_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let metrics = crate::cmd::metrics::Metrics::new(node.clone());
    let leader_watch = metrics.spawn_leader_watch();
    let builds: crate::cmd::build_route::BuildSlot = Default::default();
    let routes = || dcpp_raft::api::Embedding {
        routes: dcpp_control::api::routes()
            .merge(crate::cmd::logs::routes(data_dir.clone()))
            .merge(crate::cmd::metrics::route(metrics.clone()))
            .merge(crate::cmd::stats::routes(metrics.clone()))
            .merge(crate::cmd::build_route::routes(builds.clone())),
        observer: Some(metrics.api.clone()),
    };
    let metrics_server = metrics_listener.map(|l| {
        tokio::spawn(crate::cmd::metrics::serve(
            metrics.clone(),
            l,
            stop_rx.clone(),
        ))
    });
    let peer = tokio::spawn(dcpp_raft::api::serve_tcp_with(
        node.clone(),
        tcp,
        limits,
        routes(),
        async move {
            let _ = rx1.wait_for(|s| *s).await;
        },
    ));
    let mut rx2 = stop_rx.clone();
    let local = tokio::spawn(dcpp_raft::api::serve_unix_with(
        node.clone(),
        unix,
        routes(),
        async move {
            let _ = rx2.wait_for(|s| *s).await;
        },
    ));
    // Zero config: a node that never belonged to a cluster becomes a one-node cluster.
    node.bootstrap().await.context("bootstrap")?;
    let watch_dir = agent.as_ref().and_then(|(_, a)| a.watch.clone());
    let agent = match agent {
        Some((data_dir, a)) if !a.no_agent => Some(crate::cmd::agent::start_agent(
            &node, &data_dir, &a, &stop_rx, &metrics,
        )?),
        _ => None,
    };
    if let Some(a) = &agent {
        let _ = builds.set(a.build_env(&data_dir));
    }
    let watcher = watch_dir.map(|dir| {
        let node = node.clone();
        let builds = builds.clone();
        tokio::spawn(async move {
            let builder = std::sync::Arc::new(crate::cmd::build_route::DaemonBuilder(builds));
            if let Err(e) = dcpp_control::gitops::watch_loop(node, dir, builder).await {
                tracing::error!("watch: {e}");
            }
        })
    });
    eprintln!(
        "dcpp daemon: node {} ready; peers at {advertise}, local API at unix://{}",
        node.id(),
        socket.display()
    );
    if let Some(a) = metrics_addr {
        eprintln!("dcpp daemon: metrics at http://{a}/metrics");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(w) = watcher {
        w.abort();
    }
    if let Some(a) = agent {
        a.stop().await;
    }
    leader_watch.abort();
    if let Some(m) = metrics_server {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), m).await;
    }
    node.shutdown().await.ok();
    // Long-lived watch streams would hold graceful shutdown open; don't wait for them forever.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = peer.await;
        let _ = local.await;
    })
    .await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Creates the data dir private, or takes away group/other access from one an older dcpp (or a
/// hand) left loose: it holds the cluster's tokens and the containers' secrets (see
/// `dcpp_runtime::datadir`). The umask (set by `cmd::run`) covers everything created later.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let t = dcpp_runtime::datadir::tighten(dir)
        .with_context(|| format!("tighten the modes under {}", dir.display()))?;
    if t.dirs + t.files + t.failed > 0 {
        tracing::warn!(
            "data dir {}: removed group/other access from {} directories and {} files \
             ({} entries checked, {} could not be changed)",
            dir.display(),
            t.dirs,
            t.files,
            t.checked,
            t.failed
        );
    }
    Ok(())
}

fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        // A directory created here is 0700 (umask); an existing one (e.g. /tmp) is not ours to
        // change: the socket's own mode keeps others out.
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        if Some(dir) == Path::new(DEFAULT_SOCKET).parent() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
    }
    if path.exists() {
        // A live daemon answers on it; a dead one left a stale file behind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is listening on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    let l =
        tokio::net::UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    // The socket grants full control of the cluster without a token: root only (it is created
    // 0600 under the umask already; this keeps it so under any umask).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(l)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn grace(args: &[&str]) -> (Duration, Duration) {
        let f = Flags::try_parse_from(std::iter::once("dcpp").chain(args.iter().copied())).unwrap();
        (f.agent.partition_grace(), f.agent.down_after())
    }

    #[test]
    fn the_partition_grace_defaults_to_well_past_the_down_time() {
        let s = Duration::from_secs;
        assert_eq!(grace(&[]), (s(10), s(4)));
        assert_eq!(
            grace(&["--heartbeat", "500ms"]),
            (s(10), Duration::from_millis(2500))
        );
        assert_eq!(grace(&["--heartbeat", "5s"]), (s(40), s(16)));
        assert_eq!(grace(&["--partition-grace", "6s"]), (s(6), s(4)));
        assert_eq!(grace(&["--partition-grace", "0"]), (s(0), s(4)));
    }
}
