//! `dcpp node ls|inspect`: the node records of the cluster.

use dcpp_raft::{Kind, NodeInfo};

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
    },
}

pub fn run(global: &Global, cmd: NodeCommand) -> anyhow::Result<u8> {
    let c = client(global)?;
    block_on(async move {
        match cmd {
            NodeCommand::Ls(f) => {
                let list = c.list(Kind::Node).await?;
                let st = c.status().await?;
                let mut nodes = Vec::new();
                for o in &list.objects {
                    nodes.push(o.decode::<NodeInfo>()?);
                }
                if f.format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&nodes)?);
                    return Ok(0);
                }
                println!(
                    "{:<20} {:<16} {:<22} {:<8} {:<12} {:<10}",
                    "ID", "HOSTNAME", "ADDRESS", "ROLE", "AVAILABILITY", "RAFT"
                );
                for n in nodes {
                    let raft = match st.members.iter().find(|m| m.id == n.id) {
                        _ if Some(n.id) == st.leader => "leader",
                        Some(m) if m.voter => "voter",
                        Some(_) => "learner",
                        None => "-",
                    };
                    println!(
                        "{:<20} {:<16} {:<22} {:<8} {:<12} {:<10}",
                        n.id, n.hostname, n.address, n.role, n.availability, raft
                    );
                }
                Ok(0)
            }
            NodeCommand::Inspect { id } => {
                let o = c.get(Kind::Node, &id).await?;
                println!("{}", serde_json::to_string_pretty(&o)?);
                Ok(0)
            }
        }
    })
}
