//! Wiring of the node agent and the leader's reconcile loop into `dcpp daemon`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dcpp_node_agent::{Agent, Networking};
use dcpp_raft::Node;
use dcpp_runtime::container::{ContainerManager, ManagerOptions, RuntimeKind, ShimCommand};
use dcpp_runtime::image::registry::RegistryOptions;
use dcpp_runtime::network::{ContainerNetworks, DnsOptions, NetworkManager, NetworkOptions};

use crate::cmd::daemon::AgentArgs;

/// The running agent and leader loop.
pub struct Running {
    agent: Arc<Agent>,
    net: Arc<NetworkManager>,
    ctr: Arc<ContainerManager>,
    hook: Arc<ContainerNetworks>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// What the daemon's builds run with: this agent's containers and networks.
    pub fn build_env(&self, data_dir: &Path) -> crate::cmd::build_route::BuildEnv {
        crate::cmd::build_route::BuildEnv {
            data_dir: data_dir.to_path_buf(),
            containers: self.ctr.clone(),
            net: self.net.clone(),
            hook: self.hook.clone(),
            running: Default::default(),
        }
    }

    /// Waits for both loops to finish (after the daemon's stop signal). Networking is torn down
    /// only when no task container is left, so that running containers keep their network
    /// across a daemon restart.
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        if !self.agent.has_containers() {
            if self.agent.used_networking()
                && let Err(e) = self.net.destroy()
            {
                tracing::warn!("tearing down networking: {e}");
            }
            self.ctr.remove_cgroup_parent();
        }
    }
}

pub fn start_agent(
    node: &Node,
    data_dir: &Path,
    a: &AgentArgs,
    stop: &tokio::sync::watch::Receiver<bool>,
    metrics: &crate::cmd::metrics::Metrics,
) -> anyhow::Result<Running> {
    let mut opts = NetworkOptions::new(data_dir);
    opts.bridge_prefix = a.bridge_prefix.clone();
    opts.nft_table = a.nft_table.clone();
    if !a.network_pools.is_empty() {
        opts.pools =
            dcpp_runtime::network::parse_pools(&a.network_pools).context("--network-pool")?;
    }
    let pools = opts.pools.clone();
    opts.dns = Some(DnsOptions {
        port: a.dns_port,
        upstreams: None,
    });
    let net = Arc::new(NetworkManager::open(opts).context("open network manager")?);
    // After a restart: forget endpoints of containers that died meanwhile, restore bridges,
    // nft rules and the resolver's names for the containers that kept running.
    // A daemon that never had a network leaves the host alone (no nft table).
    if !net.list().context("read network state")?.is_empty() {
        let report = net.cleanup_stale().context("restore networking")?;
        tracing::info!(?report, "networking restored");
    }
    let hook = Arc::new(ContainerNetworks::new(net.clone()));
    let ctr = Arc::new(
        ContainerManager::open(ManagerOptions {
            data_dir: data_dir.to_path_buf(),
            cgroup_parent: a.cgroup_parent.clone(),
            runtime: RuntimeKind::parse("dcpp"),
            shim: ShimCommand::locate().context("locating the dcpp executable")?,
            network_hook: Some(hook.clone()),
        })
        .context("open container manager")?,
    );
    let registry = RegistryOptions {
        insecure_registries: a.insecure_registries.clone(),
        ..Default::default()
    };
    let overlay = a.overlay.enabled(node.advertise()).then_some(pools);
    if overlay.is_some() && dcpp_control::overlay::underlay_of(node.advertise()).is_none() {
        anyhow::bail!(
            "--overlay on needs an IPv4 advertise address (the VXLAN underlay), not {}",
            node.advertise()
        );
    }
    if overlay.is_some() && a.underlay_mtu < 576 + dcpp_runtime::network::VXLAN_OVERHEAD {
        anyhow::bail!("--underlay-mtu {} is too small", a.underlay_mtu);
    }
    let mut agent = Agent::new(
        node.clone(),
        ctr.clone(),
        data_dir.join("images"),
        Some(Networking {
            manager: net.clone(),
            hook: hook.clone(),
        }),
    )
    .with_registry(registry)
    .with_files(Arc::new(dcpp_node_agent::host::NodeFiles(node.clone())))
    .with_metrics(metrics.agent.clone())
    .with_heartbeat(a.heartbeat)
    .with_partition_grace(Some(a.partition_grace()));
    if overlay.is_some() {
        tracing::info!(
            port = a.vxlan_port,
            "stack networks span the nodes (overlay)"
        );
        agent = agent.with_overlay(dcpp_node_agent::agent::OverlayConf {
            port: a.vxlan_port,
            underlay_mtu: a.underlay_mtu,
        });
    }
    metrics.watch_containers(ctr.clone());
    let agent = Arc::new(agent);
    let tasks = vec![
        tokio::spawn(dcpp_control::leader::run(
            node.clone(),
            overlay,
            stop.clone(),
            metrics.leader.clone(),
        )),
        tokio::spawn(agent.clone().run(stop.clone())),
    ];
    Ok(Running {
        agent,
        net,
        ctr,
        hook,
        tasks,
    })
}
