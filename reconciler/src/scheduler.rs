//! Node selection as a filter pipeline (swarmkit `scheduler/filter.go` style): every node either
//! passes all filters or is rejected with the first filter's reason, so a pending task can say
//! exactly why no node fits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{
    Availability, Constraint, Node, NodeId, NodeStatus, Observed, Resources, ServiceId,
    ServiceSpec, Task,
};

/// Why one node cannot take a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    Down,
    Drained,
    Paused,
    Constraint(Constraint),
    /// Global task: this node is not the task's slot.
    OtherNode,
    Cpu {
        need: u64,
        free: u64,
    },
    Memory {
        need: u64,
        free: u64,
    },
    MaxReplicasPerNode(u32),
    /// `network_mode: service:NAME`: no running task of NAME on this node to share a network
    /// namespace with.
    NetworkPeer(String),
    /// The task mounts a local named volume that lives on another node.
    Volume {
        volume: String,
        node: NodeId,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Down => f.write_str("node is down"),
            Rejection::Drained => f.write_str("node is drained"),
            Rejection::Paused => f.write_str("node is paused"),
            Rejection::Constraint(c) => write!(f, "constraint {c} not met"),
            Rejection::OtherNode => f.write_str("global task belongs to another node"),
            Rejection::Cpu { need, free } => {
                write!(f, "insufficient cpu (need {need}m, free {free}m)")
            }
            Rejection::Memory { need, free } => {
                write!(f, "insufficient memory (need {need} B, free {free} B)")
            }
            Rejection::MaxReplicasPerNode(n) => write!(f, "max_replicas_per_node {n} reached"),
            Rejection::NetworkPeer(p) => {
                write!(f, "no running task of {p} (network_mode: service:{p})")
            }
            Rejection::Volume { volume, node } => {
                write!(f, "volume {volume} lives on node {node}")
            }
        }
    }
}

/// Whether a node may keep running tasks of `spec` (as opposed to taking new ones, which also
/// needs availability `Active` and free resources).
pub(crate) fn may_keep(node: &Node, spec: &ServiceSpec) -> Result<(), Rejection> {
    if node.status == NodeStatus::Down {
        return Err(Rejection::Down);
    }
    if node.availability == Availability::Drain {
        return Err(Rejection::Drained);
    }
    constraints(node, spec)
}

fn constraints(node: &Node, spec: &ServiceSpec) -> Result<(), Rejection> {
    match spec.placement.constraints.iter().find(|c| !c.matches(node)) {
        Some(c) => Err(Rejection::Constraint(c.clone())),
        None => Ok(()),
    }
}

/// Whether a node may take a new task of `spec`, ignoring resources (global slot selection).
pub(crate) fn may_take(node: &Node, spec: &ServiceSpec) -> Result<(), Rejection> {
    may_keep(node, spec)?;
    if node.availability == Availability::Pause {
        return Err(Rejection::Paused);
    }
    Ok(())
}

#[derive(Clone, Debug, Default)]
struct NodeLoad {
    used: Resources,
    total: u32,
    by_service: BTreeMap<ServiceId, u32>,
}

/// Reservations and task counts per node, from the live tasks that have a node.
#[derive(Clone, Debug, Default)]
pub(crate) struct Load {
    nodes: BTreeMap<NodeId, NodeLoad>,
}

impl Load {
    pub(crate) fn of(observed: &Observed) -> Self {
        let mut load = Load::default();
        for task in observed.tasks.values() {
            if task.is_live()
                && let Some(node) = &task.node
            {
                load.add(node, task);
            }
        }
        load
    }

    pub(crate) fn add(&mut self, node: &NodeId, task: &Task) {
        let l = match self.nodes.get_mut(node) {
            Some(l) => l,
            None => self.nodes.entry(node.clone()).or_default(),
        };
        l.used.cpu_millis += task.reservations.cpu_millis;
        l.used.memory += task.reservations.memory;
        l.total += 1;
        match l.by_service.get_mut(&task.service) {
            Some(n) => *n += 1,
            None => {
                l.by_service.insert(task.service.clone(), 1);
            }
        }
    }

    fn service_on(&self, node: &NodeId, service: &ServiceId) -> u32 {
        self.nodes
            .get(node)
            .and_then(|l| l.by_service.get(service))
            .copied()
            .unwrap_or(0)
    }

    fn total_on(&self, node: &NodeId) -> u32 {
        self.nodes.get(node).map_or(0, |l| l.total)
    }

    fn used_on(&self, node: &NodeId) -> Resources {
        self.nodes
            .get(node)
            .map_or(Resources::default(), |l| l.used)
    }
}

/// The first of the service's local volumes that lives on a node other than `node`.
pub(crate) fn volume_elsewhere(
    node: &NodeId,
    spec: &ServiceSpec,
    homes: &BTreeMap<String, NodeId>,
) -> Option<Rejection> {
    spec.local_volumes().find_map(|v| {
        let home = homes.get(v)?;
        (home != node).then(|| Rejection::Volume {
            volume: v.clone(),
            node: home.clone(),
        })
    })
}

fn filter(
    node: &Node,
    spec: &ServiceSpec,
    task: &Task,
    load: &Load,
    peers: Option<&BTreeSet<NodeId>>,
    homes: &BTreeMap<String, NodeId>,
) -> Result<(), Rejection> {
    // First: on any other node the data is not there, whatever else that node could offer,
    // and that is what a user needs to read for every node but the volume's own.
    if let Some(r) = volume_elsewhere(&node.id, spec, homes) {
        return Err(r);
    }
    may_take(node, spec)?;
    if let crate::model::Slot::Node(slot_node) = &task.slot
        && *slot_node != node.id
    {
        return Err(Rejection::OtherNode);
    }
    if let (Some(peer), Some(nodes)) = (&spec.network_peer, peers)
        && !nodes.contains(&node.id)
    {
        return Err(Rejection::NetworkPeer(peer.clone()));
    }
    let used = load.used_on(&node.id);
    let need = task.reservations;
    let cap = node.resources;
    if cap.cpu_millis > 0 && need.cpu_millis > 0 {
        let free = cap.cpu_millis.saturating_sub(used.cpu_millis);
        if need.cpu_millis > free {
            return Err(Rejection::Cpu {
                need: need.cpu_millis,
                free,
            });
        }
    }
    if cap.memory > 0 && need.memory > 0 {
        let free = cap.memory.saturating_sub(used.memory);
        if need.memory > free {
            return Err(Rejection::Memory {
                need: need.memory,
                free,
            });
        }
    }
    if let Some(max) = spec.placement.max_replicas_per_node
        && load.service_on(&node.id, &task.service) >= max
    {
        return Err(Rejection::MaxReplicasPerNode(max));
    }
    Ok(())
}

/// Picks the node for `task`, or returns why each node was rejected. Among the nodes that pass,
/// spread preferences come first (fewest tasks of the service per label value), then the
/// fewest tasks of the service on the node, then the fewest tasks overall, then the node id, so
/// the choice is deterministic. `peers`: for a service with a network peer, the nodes where
/// a task of the peer runs. `homes`: the node each local named volume lives on.
pub(crate) fn select(
    nodes: &BTreeMap<NodeId, Node>,
    spec: &ServiceSpec,
    task: &Task,
    load: &Load,
    peers: Option<&BTreeSet<NodeId>>,
    homes: &BTreeMap<String, NodeId>,
) -> Result<NodeId, Vec<(NodeId, Rejection)>> {
    let mut rejected = Vec::new();
    let mut best: Option<(Vec<u32>, &NodeId)> = None;
    // Per preference, the service's tasks on each label value (nodes without the label form a
    // group of their own), over every node, rejected or not: summed once here instead of for
    // each candidate, which made a placement quadratic in the number of nodes.
    let groups: Vec<BTreeMap<Option<&String>, u32>> = spec
        .placement
        .preferences
        .iter()
        .map(|pref| {
            let mut g = BTreeMap::new();
            for n in nodes.values() {
                *g.entry(n.labels.get(&pref.label)).or_insert(0) +=
                    load.service_on(&n.id, &task.service);
            }
            g
        })
        .collect();
    for node in nodes.values() {
        if let Err(r) = filter(node, spec, task, load, peers, homes) {
            rejected.push((node.id.clone(), r));
            continue;
        }
        let mut key = Vec::with_capacity(spec.placement.preferences.len() + 2);
        for (pref, group) in spec.placement.preferences.iter().zip(&groups) {
            let value = node.labels.get(&pref.label);
            key.push(group.get(&value).copied().unwrap_or(0));
        }
        key.push(load.service_on(&node.id, &task.service));
        key.push(load.total_on(&node.id));
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, &node.id));
        }
    }
    match best {
        Some((_, id)) => Ok(id.clone()),
        None => Err(rejected),
    }
}
