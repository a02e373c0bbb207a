//! `dcpp cluster …`: create, join, leave and inspect the cluster of the local daemon.
//!
//! Roles: a node joined with the manager token becomes a Raft voter (takes part in elections
//! and commits); one joined with the worker token is no raft member at all: it never receives
//! the log, and reads and writes through a manager with a certificate that shows it only its
//! own node record, its tasks and what they need, and lets it write only its record and its
//! tasks' status. Every TCP connection is mutual TLS under the cluster's own root;
//! remote administration uses a certificate from `dcpp cluster admin-cert`.

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
    /// Print the join token of a role; with --rotate, replace it first (the old one stops
    /// working; nodes that joined with it are unaffected).
    JoinToken {
        #[arg(value_enum)]
        role: TokenRole,
        #[arg(long)]
        rotate: bool,
        /// Print only the token.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show the cluster root's digest; with --rotate, replace the root: every node moves to a
    /// certificate of the new one within seconds, the old one stays trusted for the daemons'
    /// --ca-rotation-grace, and join tokens change (they name the root).
    Ca {
        #[arg(long)]
        rotate: bool,
    },
    /// Write a client certificate for remote administration into DIR (ca.pem, cert.pem,
    /// key.pem); point DCPP_CERT_PATH at it and use `-H tcp://MANAGER:PORT`.
    AdminCert {
        /// Directory to create (must not exist or be empty).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Name recorded in the certificate.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Validity.
        #[arg(long, default_value = "30d", value_parser = crate::cmd::duration::parse)]
        ttl: std::time::Duration,
    },
    /// Refuse, on every member at once, every admin certificate named NAME issued until now
    /// (issue a new one afterwards if its holder should keep access).
    AdminRevoke {
        /// The name the certificates were issued with (`admin-cert --name`).
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    Worker,
    Manager,
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
/// endpoints need a client certificate: DCPP_CERT_PATH names the directory
/// `dcpp cluster admin-cert` wrote.
pub fn client(global: &Global) -> anyhow::Result<Client> {
    let host = global
        .host
        .clone()
        .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
    let ep = Endpoint::parse(&host)?;
    let certs = std::env::var_os("DCPP_CERT_PATH").map(std::path::PathBuf::from);
    Ok(Client::new(&ep, certs.as_deref())?)
}

/// Writes an admin certificate's files, readable by root only.
fn write_cert_dir(dir: &std::path::Path, c: &dcpp_raft::AdminCert) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", dir.display());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    for (name, text) in [
        ("ca.pem", &c.ca_pem),
        ("cert.pem", &c.cert_pem),
        ("key.pem", &c.key_pem),
    ] {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
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
                let addr = own_address(&st);
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
            ClusterCommand::JoinToken {
                role,
                rotate,
                quiet,
            } => {
                let r = match role {
                    TokenRole::Worker => dcpp_raft::Role::Worker,
                    TokenRole::Manager => dcpp_raft::Role::Manager,
                };
                let t = if rotate {
                    c.rotate_join_token(r).await?
                } else {
                    c.join_tokens().await?
                };
                let token = match role {
                    TokenRole::Worker => &t.worker,
                    TokenRole::Manager => &t.manager,
                };
                if quiet {
                    println!("{token}");
                } else {
                    if rotate {
                        println!("The {r} join token was rotated; the old one no longer works.\n");
                    }
                    println!("To add a {r} to this cluster, run on the new node:\n");
                    let st = c.status().await?;
                    let addr = own_address(&st);
                    println!("    dcpp cluster join --token {token} {addr}");
                }
                Ok(0)
            }
            ClusterCommand::Ca { rotate } => {
                if rotate {
                    let t = c.rotate_ca().await?;
                    println!(
                        "The cluster root was rotated; its digest is now {}.\n\
                         Nodes move to certificates of the new root within seconds; the old root \
                         stays trusted for the grace period. Join tokens changed:\n\n    \
                         manager: {}\n    worker:  {}",
                        t.ca_digest, t.manager, t.worker
                    );
                } else {
                    println!("{}", c.join_tokens().await?.ca_digest);
                }
                Ok(0)
            }
            ClusterCommand::AdminRevoke { name } => {
                c.revoke_admin(&name).await?;
                println!("Revoked every admin certificate named {name:?} issued until now.");
                Ok(0)
            }
            ClusterCommand::AdminCert { out, name, ttl } => {
                let cert = c.admin_cert(&name, ttl).await?;
                write_cert_dir(&out, &cert)?;
                println!(
                    "Wrote an admin certificate ({name}, valid {}) to {}.\n\nUse it with:\n\n    DCPP_CERT_PATH={} dcpp -H tcp://MANAGER:PORT …",
                    humantime(ttl),
                    out.display(),
                    out.display()
                );
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
                if let Some(c) = &st.certificate {
                    let left = c.not_after - dcpp_control::schema::now_ms() as i64 / 1000;
                    println!(
                        "Certificate:   {} (serial {}…), expires in {}",
                        c.role,
                        &c.serial[..c.serial.len().min(12)],
                        humantime(std::time::Duration::from_secs(left.max(0) as u64))
                    );
                }
                if !st.managers.is_empty() {
                    // A worker knows no membership, only where the managers are.
                    println!("Managers:      {}", st.managers.join(", "));
                    return Ok(0);
                }
                println!("Members:");
                println!("  {:<20} {:<24} {:<8} LEADER", "ID", "ADDRESS", "ROLE");
                for m in &st.members {
                    println!(
                        "  {:<20} {:<24} {:<8} {}",
                        m.id,
                        m.address,
                        match (m.voter, m.worker) {
                            (true, _) => "voter",
                            (_, true) => "worker",
                            _ => "learner",
                        },
                        if Some(m.id) == st.leader { "*" } else { "" }
                    );
                }
                Ok(0)
            }
        }
    })
}

/// The address other nodes join this one at, as the membership records it.
fn own_address(st: &dcpp_raft::ClusterStatus) -> String {
    st.members
        .iter()
        .find(|m| m.id == st.node_id)
        .map(|m| m.address.clone())
        .unwrap_or_else(|| "<this-node-address>".into())
}

/// A duration in its largest whole unit, rounded down (`30d`, `11h`, `59s`).
fn humantime(d: std::time::Duration) -> String {
    match d.as_secs() {
        s if s >= 86400 => format!("{}d", s / 86400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
