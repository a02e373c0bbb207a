//! `dcpp cluster …`: create, join, leave and inspect the cluster of the local daemon.
//!
//! Roles: a node joined with the manager token becomes a Raft voter (takes part in elections
//! and commits); one joined with the worker token becomes a Raft learner (receives the full
//! replicated state and can serve reads and watches locally, but does not vote).

use anyhow::Context;
use dcpp_raft::{Client, Endpoint};

use crate::Global;
use crate::cmd::daemon::DEFAULT_SOCKET;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Make sure this daemon's cluster exists and print its join tokens.
    Init(FormatArgs),
    /// Join the cluster a member at ADDR (host:port) belongs to.
    Join {
        /// Join token printed by `dcpp cluster init` (manager or worker token).
        #[arg(long)]
        token: String,
        /// Address (host:port) of any member of the cluster.
        addr: String,
    },
    /// Leave the cluster; this node becomes a standalone one-node cluster again.
    Leave,
    /// Show leader, term, members and commit index.
    Status(FormatArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct FormatArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// The client of the daemon named by `-H/--host` (default: the local unix socket). TCP
/// endpoints need the cluster token in DCPP_TOKEN.
pub fn client(global: &Global) -> anyhow::Result<Client> {
    let host = global
        .host
        .clone()
        .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
    let ep = Endpoint::parse(&host)?;
    let token = std::env::var("DCPP_TOKEN").ok();
    Ok(Client::new(&ep, token)?)
}

pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?
        .block_on(f)
}

pub fn run(global: &Global, cmd: ClusterCommand) -> anyhow::Result<u8> {
    let c = client(global)?;
    block_on(async move {
        match cmd {
            ClusterCommand::Init(f) => {
                // A daemon that has just started answers on its socket before its first
                // single-node cluster has committed the credentials: wait for them (bounded)
                // rather than fail a `daemon & cluster init` script.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
                let t = loop {
                    match c.join_tokens().await {
                        Err(dcpp_raft::Error::Conflict(_))
                            if std::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        r => break r.context("get join tokens (is `dcpp daemon` running?)")?,
                    }
                };
                let st = c.status().await?;
                if f.format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&t)?);
                    return Ok(0);
                }
                let addr = st
                    .members
                    .iter()
                    .find(|m| m.id == st.node_id)
                    .map(|m| m.address.clone())
                    .unwrap_or_else(|| "<this-node-address>".into());
                println!(
                    "Cluster {} is ready; node {} is a manager.\n",
                    t.cluster_id, st.node_id
                );
                println!("To add a manager to this cluster, run on the new node:\n");
                println!("    dcpp cluster join --token {} {addr}\n", t.manager);
                println!("To add a worker to this cluster, run on the new node:\n");
                println!("    dcpp cluster join --token {} {addr}", t.worker);
                Ok(0)
            }
            ClusterCommand::Join { token, addr } => {
                let role = c.join(&addr, &token).await?;
                println!("This node joined the cluster as a {role}.");
                Ok(0)
            }
            ClusterCommand::Leave => {
                c.leave().await?;
                println!("This node left the cluster and is now a standalone one-node cluster.");
                Ok(0)
            }
            ClusterCommand::Status(f) => {
                let st = c.status().await?;
                if f.format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&st)?);
                    return Ok(0);
                }
                println!("Cluster:       {}", st.cluster_id.as_deref().unwrap_or("-"));
                println!("Node:          {} ({})", st.node_id, st.state);
                println!(
                    "Leader:        {}",
                    match (st.leader, &st.leader_address) {
                        (Some(l), Some(a)) => format!("{l} ({a})"),
                        (Some(l), None) => l.to_string(),
                        _ => "none".into(),
                    }
                );
                println!("Term:          {}", st.term);
                println!(
                    "Commit index:  {}",
                    st.commit_index.map_or("-".into(), |i| i.to_string())
                );
                println!(
                    "Last log:      {}",
                    st.last_log_index.map_or("-".into(), |i| i.to_string())
                );
                println!("Revision:      {}", st.revision);
                println!("Members:");
                println!("  {:<20} {:<24} {:<8} LEADER", "ID", "ADDRESS", "ROLE");
                for m in &st.members {
                    println!(
                        "  {:<20} {:<24} {:<8} {}",
                        m.id,
                        m.address,
                        if m.voter { "voter" } else { "learner" },
                        if Some(m.id) == st.leader { "*" } else { "" }
                    );
                }
                Ok(0)
            }
        }
    })
}
