//! `dcpp node ls|inspect|update|promote|demote|rm`: the node records of the cluster.

use anyhow::Context;
use dcpp_control::nodes::{Availability, NodeInfo};
use dcpp_raft::Kind;

use crate::Global;
use crate::cmd::cluster::{Format, FormatArgs, block_on, client};

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// List the cluster's nodes.
    Ls(FormatArgs),
    /// Show one node's record as JSON.
    Inspect {
        /// Node id.
        id: String,
        #[arg(long, value_enum, default_value = "json")]
        format: crate::cmd::apply::JsonOnly,
    },
    /// Change a node's availability or labels (as `docker node update`).
    ///
    /// `drain` moves the node's tasks to other nodes and stops its containers; `pause` keeps
    /// its tasks but places no new ones; `active` makes it schedulable again. Labels are
    /// matched by placement constraints (`node.labels.KEY==VALUE`).
    Update {
        /// New availability.
        #[arg(long, value_enum)]
        availability: Option<AvailabilityArg>,
        /// Add or replace a label (KEY=VALUE); repeatable.
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a label; repeatable.
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
        /// Node id.
        id: String,
    },
    /// Make a worker a manager (a raft voter); its certificate is re-issued with the role.
    Promote {
        /// Node id.
        id: String,
    },
    /// Make a manager a worker (out of raft: it wipes its copy of the log); its certificate is
    /// re-issued with the role and it gives up its key to the cluster's root.
    Demote {
        /// Node id.
        id: String,
    },
    /// Remove a node that is gone for good from the cluster: its Raft membership and record
    /// go, and its tasks are rescheduled at once (instead of staying "down" forever, and a
    /// dead manager counting against the Raft majority). A node that can still run should
    /// `dcpp cluster leave` instead; a removed node must not come back with its data dir.
    Rm {
        /// Remove it even though it is not down (it will keep running what it runs now, cut off
        /// from the cluster).
        #[arg(short, long)]
        force: bool,
        /// Node id.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

impl From<AvailabilityArg> for Availability {
    fn from(a: AvailabilityArg) -> Self {
        match a {
            AvailabilityArg::Active => Availability::Active,
            AvailabilityArg::Pause => Availability::Pause,
            AvailabilityArg::Drain => Availability::Drain,
        }
    }
}

/// A node record as `node ls` shows it: plus whether the leader takes the node for alive.
#[derive(serde::Serialize)]
struct NodeRow {
    #[serde(flatten)]
    info: NodeInfo,
    status: &'static str,
}

/// `ready` or `down`, by the rule the leader schedules by ([`dcpp_control::nodes::status`]).
fn status_of(n: &NodeInfo, now: u64) -> &'static str {
    match dcpp_control::nodes::status(n, now) {
        dcpp_reconciler::NodeStatus::Ready => "ready",
        dcpp_reconciler::NodeStatus::Down => "down",
    }
}

/// Parses `KEY=VALUE` labels; an empty key is refused (it could never be matched).
fn parse_labels(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("invalid label {l:?}: expected KEY=VALUE"),
        })
        .collect()
}

pub fn run(global: &Global, cmd: NodeCommand) -> anyhow::Result<u8> {
    let c = client(global)?;
    block_on(async move {
        match cmd {
            NodeCommand::Ls(f) => {
                let list = c.list(Kind::Node).await?;
                let st = c.status().await?;
                let mut nodes = Vec::new();
                let now = dcpp_control::schema::now_ms();
                for o in &list.objects {
                    let info = o.decode::<NodeInfo>()?;
                    nodes.push(NodeRow {
                        status: status_of(&info, now),
                        info,
                    });
                }
                if f.format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&nodes)?);
                    return Ok(0);
                }
                println!(
                    "{:<20} {:<16} {:<22} {:<8} {:<7} {:<12} {:<10}",
                    "ID", "HOSTNAME", "ADDRESS", "ROLE", "STATUS", "AVAILABILITY", "RAFT"
                );
                for NodeRow { info: n, status } in nodes {
                    let raft = match st.members.iter().find(|m| m.id == n.id) {
                        _ if Some(n.id) == st.leader => "leader",
                        Some(m) if m.voter => "voter",
                        Some(m) if m.worker => "-",
                        Some(_) => "learner",
                        None => "-",
                    };
                    println!(
                        "{:<20} {:<16} {:<22} {:<8} {:<7} {:<12} {:<10}",
                        n.id, n.hostname, n.address, n.role, status, n.availability, raft
                    );
                }
                Ok(0)
            }
            NodeCommand::Inspect { id, format: _ } => {
                let o = c.get(Kind::Node, &id).await?;
                println!("{}", serde_json::to_string_pretty(&o)?);
                Ok(0)
            }
            NodeCommand::Update {
                availability,
                label_add,
                label_rm,
                id,
            } => {
                let add = parse_labels(&label_add)?;
                if availability.is_none() && add.is_empty() && label_rm.is_empty() {
                    anyhow::bail!(
                        "nothing to update: pass --availability, --label-add or --label-rm"
                    );
                }
                // Compare-and-set on the record: the node's agent rewrites it with every
                // heartbeat, and neither write may lose the other's change.
                let (info, _) = c
                    .update(Kind::Node, &id, |cur: Option<NodeInfo>| {
                        let Some(mut n) = cur else {
                            return Err(dcpp_raft::Error::NotFound {
                                kind: Kind::Node,
                                id: id.clone(),
                            });
                        };
                        if let Some(a) = availability {
                            n.availability = a.into();
                        }
                        for (k, v) in &add {
                            n.labels.insert(k.clone(), v.clone());
                        }
                        for k in &label_rm {
                            n.labels.remove(k);
                        }
                        Ok(n)
                    })
                    .await
                    .with_context(|| format!("update node {id}"))?;
                println!("node {} is {}", info.id, info.availability);
                Ok(0)
            }
            NodeCommand::Promote { id } => set_role(&c, &id, dcpp_raft::Role::Manager).await,
            NodeCommand::Demote { id } => set_role(&c, &id, dcpp_raft::Role::Worker).await,
            NodeCommand::Rm { force, id } => {
                let nid: u64 = id
                    .parse()
                    .map_err(|_| anyhow::anyhow!("invalid node id {id:?}: expected a number"))?;
                let st = c.status().await?;
                if nid == st.node_id {
                    anyhow::bail!(
                        "node {nid} is the node you are talking to: run `dcpp cluster leave` on it instead"
                    );
                }
                let member = st.members.iter().any(|m| m.id == nid);
                let info = match c.get(Kind::Node, &id).await {
                    Ok(o) => Some(o.decode::<NodeInfo>()?),
                    Err(dcpp_raft::Error::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                if info.is_none() && !member {
                    anyhow::bail!("no node {nid} in this cluster");
                }
                if let Some(n) = &info {
                    let now = dcpp_control::schema::now_ms();
                    let silent = now.saturating_sub(n.last_heartbeat_ms);
                    if !force && status_of(n, now) != "down" {
                        anyhow::bail!(
                            "node {nid} is not down (last heartbeat {:.1}s ago): stop it and wait until it is, run `dcpp cluster leave` on it, or pass --force",
                            silent as f64 / 1000.0
                        );
                    }
                }
                c.remove_node(nid)
                    .await
                    .with_context(|| format!("remove node {nid}"))?;
                println!(
                    "node {nid} removed; its certificates are revoked and its tasks rescheduled"
                );
                Ok(0)
            }
        }
    })
}

/// Promotes or demotes node `id`. Its certificate follows: the node renews it within a second
/// of seeing its membership change, and until then it counts for no more than a worker's.
async fn set_role(c: &dcpp_raft::Client, id: &str, role: dcpp_raft::Role) -> anyhow::Result<u8> {
    let nid: u64 = id
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid node id {id:?}: expected a number"))?;
    c.set_role(nid, role)
        .await
        .with_context(|| format!("change the role of node {nid}"))?;
    println!("node {nid} is now a {role}");
    Ok(0)
}
