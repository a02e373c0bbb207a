//! The routing mesh (`Kind::Mesh`, one document, id [`ID`]), written by the leader only: for
//! every published `ingress` port, how many serving replicas each node runs, and every node's
//! underlay address. Each node's agent turns it into its own rules: a node with a serving
//! replica answers the port itself (the replica sees the client's address, as without a mesh);
//! a node without one forwards new connections to the nodes that have one, spread by their
//! replica counts, rewriting the source to its own underlay address so the answer comes back
//! through it (the one hop where the client's address cannot be kept without tunnelling).
//!
//! Every node reads this document (a worker's certificate too, see [`crate::scope`]): any node
//! may have to answer a published port.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dcpp_raft::{Kind, Op, Precondition, Store, Txn};
use dcpp_reconciler::{Task, TaskId};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::nodes::NodeInfo;
use crate::overlay::{serving, underlay_of};
use crate::schema::ServiceDoc;

/// Store id of the one mesh document.
pub const ID: &str = "mesh";

/// The routing mesh of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshDoc {
    /// Underlay address of every node that has one, by raft id.
    #[serde(default)]
    pub nodes: BTreeMap<u64, Ipv4Addr>,
    /// Every mesh port, in (protocol, port) order.
    #[serde(default)]
    pub ports: Vec<MeshPort>,
}

/// One published port of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPort {
    /// Service id (`<stack>_<service>`).
    pub service: String,
    pub published: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Serving replicas per node (raft id); nodes without one are absent.
    #[serde(default)]
    pub serving: BTreeMap<u64, u32>,
}

/// The ports of `doc` the mesh carries: `ingress` mode (compose's default), a fixed host port,
/// no host address (a port bound to one address is that machine's own business), TCP or UDP.
/// Ephemeral host ports differ per node and stay node-local.
pub fn mesh_ports(doc: &ServiceDoc) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for p in &doc.service.ports {
        if p.mode != "ingress" || p.host_ip.as_deref().is_some_and(|h| !is_any(h)) {
            continue;
        }
        if !matches!(p.protocol.as_str(), "tcp" | "udp") {
            continue;
        }
        let Some(published) = p.published.as_deref() else {
            continue;
        };
        // A range "8000-8001" maps one-to-one onto a target range.
        let (lo, hi) = match published.split_once('-') {
            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) if a <= b => (a, b),
                _ => continue,
            },
            None => match published.parse::<u16>() {
                Ok(a) => (a, a),
                Err(_) => continue,
            },
        };
        for port in lo..=hi {
            if port != 0 {
                out.push((port, p.protocol.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn is_any(h: &str) -> bool {
    matches!(h, "0.0.0.0" | "::" | "")
}

/// The mesh the store should hold for these services, tasks and nodes.
pub fn desired(
    services: &BTreeMap<String, ServiceDoc>,
    tasks: &BTreeMap<TaskId, Task>,
    nodes: &[NodeInfo],
) -> MeshDoc {
    let mut doc = MeshDoc {
        nodes: nodes
            .iter()
            .filter_map(|n| Some((n.id, underlay_of(&n.address)?)))
            .collect(),
        ports: Vec::new(),
    };
    let mut per_service: BTreeMap<&str, BTreeMap<u64, u32>> = BTreeMap::new();
    for t in tasks.values() {
        let Some(node) = t.node.as_ref().and_then(|n| n.0.parse::<u64>().ok()) else {
            continue;
        };
        let Some(svc) = services.get(&t.service.0) else {
            continue;
        };
        if serving(t, svc) {
            *per_service
                .entry(t.service.0.as_str())
                .or_default()
                .entry(node)
                .or_default() += 1;
        }
    }
    for (id, svc) in services {
        for (published, protocol) in mesh_ports(svc) {
            doc.ports.push(MeshPort {
                service: id.clone(),
                published,
                protocol,
                serving: per_service.get(id.as_str()).cloned().unwrap_or_default(),
            });
        }
    }
    doc.ports
        .sort_by(|a, b| (&a.protocol, a.published).cmp(&(&b.protocol, b.published)));
    doc
}

/// Brings the stored mesh to [`desired`], conditioned on what was read. Returns whether
/// anything was written.
pub async fn sync<S: Store>(store: &S, snap: &crate::overlay::Snapshot) -> Result<bool, Error> {
    let want = desired(&snap.services, &snap.tasks, &snap.nodes);
    let old = match store.get(Kind::Mesh, ID).await {
        Ok(o) => Some(o),
        Err(dcpp_raft::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    // Without a mesh port there is no document at all (a fresh node holds no data, so it can
    // still join a cluster).
    let put = !want.ports.is_empty();
    let cond = match &old {
        Some(o) if put && o.decode::<MeshDoc>().ok().as_ref() == Some(&want) => return Ok(false),
        Some(o) => Precondition::ModRevision {
            kind: Kind::Mesh,
            id: ID.into(),
            revision: o.mod_revision,
        },
        None if !put => return Ok(false),
        None => Precondition::Absent {
            kind: Kind::Mesh,
            id: ID.into(),
        },
    };
    let op = if put {
        Op::put(Kind::Mesh, ID.to_string(), &want)?
    } else {
        Op::delete(Kind::Mesh, ID.to_string())
    };
    let txn = Txn::new().when(cond).op(op);
    match store.txn(txn).await {
        Ok(_) => Ok(true),
        // A previous leader wrote meanwhile: the next round reads it.
        Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The stored mesh (empty when there is none yet).
pub async fn get<S: Store>(store: &S) -> Result<MeshDoc, Error> {
    match store.get(Kind::Mesh, ID).await {
        Ok(o) => Ok(o.decode()?),
        Err(dcpp_raft::Error::NotFound { .. }) => Ok(MeshDoc::default()),
        Err(e) => Err(e.into()),
    }
}

/// Where node `me` can forward each mesh port: (port, protocol, the other nodes' underlay
/// addresses to spread new connections over, one entry per serving replica). The node uses it
/// only while it has no serving replica of its own (its runtime knows that first: a local
/// replica withdrawn for an update hands its port to the others at once). Nodes without a
/// known underlay address are skipped; a port served nowhere else has no addresses.
pub fn forwards(doc: &MeshDoc, me: u64) -> Vec<(u16, String, Vec<Ipv4Addr>)> {
    let mut out = Vec::new();
    for p in &doc.ports {
        let mut to = Vec::new();
        for (node, n) in p.serving.iter().filter(|(node, _)| **node != me) {
            if let Some(ip) = doc.nodes.get(node) {
                to.extend(std::iter::repeat_n(*ip, *n as usize));
            }
        }
        out.push((p.published, p.protocol.clone(), to));
    }
    out
}

#[cfg(test)]
mod tests;
