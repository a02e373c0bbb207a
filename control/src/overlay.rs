//! Cluster-wide IPAM and the endpoint table of every stack network (`Kind::Network`, id
//! `<stack>_<network>`), written by the leader only.
//!
//! Each stack network gets one subnet and one VXLAN id for the whole cluster, and each task one
//! address on each of its networks, while its container may exist. So addresses never collide
//! across nodes and survive agent restarts, and every node learns from one document what it
//! needs to reach the network's containers elsewhere: their addresses, their nodes' underlay
//! addresses and the names they answer to. A worker's certificate reads the documents of the
//! networks it runs a task on ([`crate::scope`]).
//!
//! Names resolve by DNS round robin (swarm's `dnsrr`) rather than through a virtual IP: a client
//! talks to a replica directly, so the replica sees the client's own address, and no per-node
//! load-balancer state has to follow the replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use dcpp_raft::{Kind, Op, Precondition, Store, Txn};
use dcpp_reconciler::{DesiredState, Health, Task, TaskId, TaskState};
use dcpp_spec::ipam::{AddressPool, AddressRange, IpamError, IpamSpec, Ipv4Net, choose_subnet};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::nodes::NodeInfo;
use crate::schema::ServiceDoc;

/// VXLAN ids handed out from here up (low ids are what hand-made devices tend to use).
pub const FIRST_VNI: u32 = 4096;

/// One stack network, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDoc {
    /// Subnet, `a.b.c.d/len`; its first address is every node's gateway (and resolver) unless
    /// `gateway` says otherwise.
    pub subnet: String,
    pub vni: u32,
    /// The network's own addressing (compose `ipam`): gateway, range and reserved addresses;
    /// `None` for a block of the pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamSpec>,
    /// Every task that holds an address on it, by task id.
    #[serde(default)]
    pub endpoints: BTreeMap<u64, EndpointDoc>,
}

/// One task's address on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDoc {
    pub ip: Ipv4Addr,
    /// Raft id of the task's node.
    pub node: u64,
    /// The node's underlay (advertise) address; unknown while the node has no record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<Ipv4Addr>,
    /// Container name.
    pub name: String,
    /// Compose service name.
    pub service: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Running, healthy when it has a healthcheck, and meant to keep running: its service name
    /// resolves to it. A replica about to be stopped leaves the names first.
    pub serving: bool,
}

impl NetworkDoc {
    /// The subnet; `None` for a document that does not parse (never written by dcpp).
    pub fn net(&self) -> Option<Ipv4Net> {
        self.subnet.parse().ok()
    }

    /// Every node's bridge address on the network.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        match &self.ipam {
            Some(i) => Some(i.gateway()),
            None => self.net().map(|n| n.gateway()),
        }
    }

    fn range(&self) -> Option<AddressRange<'_>> {
        let subnet = self.net()?;
        Some(match &self.ipam {
            Some(i) => AddressRange {
                subnet,
                ip_range: i.ip_range,
                gateway: i.gateway(),
                reserved: &i.reserved,
            },
            None => AddressRange::whole(subnet),
        })
    }
}

/// The underlay address in a node's `host:port` advertise address.
pub fn underlay_of(address: &str) -> Option<Ipv4Addr> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_matches(['[', ']']).parse().ok()
}

/// What the network documents are derived from.
pub struct Inputs<'a> {
    pub services: &'a BTreeMap<String, ServiceDoc>,
    pub tasks: &'a BTreeMap<TaskId, Task>,
    pub nodes: &'a [NodeInfo],
    pub existing: &'a BTreeMap<String, NetworkDoc>,
    /// The leader's `--network-pool`s, in order.
    pub pools: &'a [AddressPool],
}

/// The documents [`desired`] derives, and why a network (or a task's address on one) could not
/// be given: those networks are left out, or keep what they had, until the cause goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub docs: BTreeMap<String, NetworkDoc>,
    pub errors: Vec<IpamError>,
}

/// The stack networks a service joins, by their key in the file, with its aliases there.
pub fn service_networks(doc: &ServiceDoc) -> Vec<(String, Vec<String>)> {
    if doc.service.networks.is_empty() {
        return vec![("default".into(), Vec::new())];
    }
    doc.service
        .networks
        .iter()
        .map(|(k, n)| {
            let aliases = n.as_ref().map(|n| n.aliases.clone()).unwrap_or_default();
            (k.clone(), aliases)
        })
        .collect()
}

/// The documents every stack network should have: existing subnets, VXLAN ids and addresses
/// are kept; new networks get their own subnet (compose `ipam`) or the lowest free block of
/// the pools, new tasks the lowest free address of the network's range. A network stays while
/// a service uses it or a task still holds an address on it. One network that cannot be given
/// what it asks for (its subnet overlaps another, the pools are full) holds up no other: it is
/// left out and named in [`Desired::errors`].
pub fn desired(inp: &Inputs) -> Desired {
    let mut out: BTreeMap<String, NetworkDoc> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut wanted: BTreeMap<String, ()> = BTreeMap::new();
    let mut own: BTreeMap<String, IpamSpec> = BTreeMap::new();
    for doc in inp.services.values() {
        for (k, _) in service_networks(doc) {
            let name = format!("{}_{k}", doc.spec.stack);
            if let Some(spec) = doc.ipam.get(&k) {
                own.insert(name.clone(), spec.clone());
            }
            wanted.insert(name, ());
        }
    }
    let underlay: BTreeMap<u64, Option<Ipv4Addr>> = inp
        .nodes
        .iter()
        .map(|n| (n.id, underlay_of(&n.address)))
        .collect();
    // Endpoints per network, keeping each task's old address when it has one.
    let mut held: BTreeMap<String, BTreeMap<u64, EndpointDoc>> = BTreeMap::new();
    let mut fresh: Vec<(String, u64, EndpointDoc)> = Vec::new();
    for t in inp.tasks.values() {
        let Some(node) = t.node.as_ref().and_then(|n| n.0.parse::<u64>().ok()) else {
            continue;
        };
        if t.desired != DesiredState::Running && t.state.is_terminal() {
            continue;
        }
        let Some(doc) = inp.services.get(&t.service.0) else {
            continue;
        };
        let serving = serving(t, doc);
        for (k, aliases) in service_networks(doc) {
            let net = format!("{}_{k}", doc.spec.stack);
            let mut ep = EndpointDoc {
                ip: Ipv4Addr::UNSPECIFIED,
                node,
                underlay: underlay.get(&node).copied().flatten(),
                name: crate::schema::container_name(t),
                service: doc.spec.name.clone(),
                aliases,
                serving,
            };
            match inp
                .existing
                .get(&net)
                .and_then(|n| n.endpoints.get(&t.id.0))
            {
                Some(old) if old.node == node => {
                    ep.ip = old.ip;
                    held.entry(net).or_default().insert(t.id.0, ep);
                }
                _ => fresh.push((net, t.id.0, ep)),
            }
        }
    }
    let mut names: BTreeSet<String> = wanted.keys().cloned().collect();
    names.extend(held.keys().cloned());
    names.extend(fresh.iter().map(|(n, ..)| n.clone()));
    // Networks that exist keep their subnet and id; new ones avoid them.
    let mut taken: Vec<(String, Ipv4Net)> = Vec::new();
    let mut vnis: BTreeSet<u32> = BTreeSet::new();
    for (name, d) in inp.existing {
        if names.contains(name)
            && let Some(c) = d.net()
        {
            if let Some(spec) = own.get(name)
                && d.ipam.as_ref() != Some(spec)
            {
                // A network's addressing is fixed for its life, as in docker.
                errors.push(IpamError::Invalid(format!(
                    "network {name} has subnet {c}; the stack now asks for {}: remove the stack (`dcpp down`) to change a network's addressing",
                    spec.subnet
                )));
            }
            taken.push((name.clone(), c));
            vnis.insert(d.vni);
            out.insert(
                name.clone(),
                NetworkDoc {
                    endpoints: BTreeMap::new(),
                    ..d.clone()
                },
            );
        }
    }
    // Own subnets first, so that no block of the pools is given where one is asked for.
    let (mine, auto): (Vec<&String>, Vec<&String>) = names
        .iter()
        .filter(|n| !out.contains_key(*n))
        .partition(|n| own.contains_key(*n));
    for name in mine.into_iter().chain(auto) {
        let spec = own.get(name);
        let subnet = match choose_subnet(name, spec, inp.pools, &taken) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        taken.push((name.clone(), subnet));
        let vni = (FIRST_VNI..)
            .find(|v| !vnis.contains(v))
            .unwrap_or(FIRST_VNI);
        vnis.insert(vni);
        out.insert(
            name.clone(),
            NetworkDoc {
                subnet: subnet.to_string(),
                vni,
                ipam: spec.cloned(),
                endpoints: BTreeMap::new(),
            },
        );
    }
    for (net, eps) in held {
        if let Some(d) = out.get_mut(&net) {
            d.endpoints = eps;
        }
    }
    let mut used: BTreeMap<String, BTreeSet<Ipv4Addr>> = out
        .iter()
        .map(|(n, d)| (n.clone(), d.endpoints.values().map(|e| e.ip).collect()))
        .collect();
    let mut full: BTreeSet<String> = BTreeSet::new();
    for (net, task, mut ep) in fresh {
        let Some(d) = out.get_mut(&net) else { continue };
        if full.contains(&net) {
            continue;
        }
        let Some(range) = d.range() else { continue };
        let used = used.entry(net.clone()).or_default();
        match range.pick(&net, used) {
            Ok(ip) => {
                ep.ip = ip;
                used.insert(ip);
                d.endpoints.insert(task, ep);
            }
            Err(e) => {
                full.insert(net);
                errors.push(e);
            }
        }
    }
    Desired { docs: out, errors }
}

/// The own subnets (compose `ipam`) of `services`' networks that overlap a network the
/// cluster already has (`docs`, the stored documents): what `apply` refuses before it writes,
/// naming both networks. A network that exists keeps its subnet and is not checked again.
pub fn conflicts(docs: &BTreeMap<String, NetworkDoc>, services: &[ServiceDoc]) -> Vec<IpamError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for d in services {
        for (k, spec) in &d.ipam {
            let name = format!("{}_{k}", d.spec.stack);
            if docs.contains_key(&name) || !seen.insert(name.clone()) {
                continue;
            }
            if let Some((other, o)) = docs
                .iter()
                .filter_map(|(n, doc)| Some((n, doc.net()?)))
                .find(|(_, o)| o.overlaps(&spec.subnet))
            {
                out.push(IpamError::Overlap {
                    network: name,
                    subnet: spec.subnet,
                    other: other.clone(),
                    other_subnet: o,
                });
            }
        }
    }
    out
}

/// Whether task `t` of `doc` takes connections: running, healthy when it has a healthcheck,
/// and meant to keep running (a replica about to be stopped leaves its names and ports first).
pub fn serving(t: &Task, doc: &ServiceDoc) -> bool {
    t.desired == DesiredState::Running
        && t.state == TaskState::Running
        && match t.health {
            Health::Healthy => true,
            Health::Unknown => doc.health_command().is_none(),
            Health::Starting | Health::Unhealthy => false,
        }
}

/// What the leader derives the network documents and the routing mesh from, read once per
/// round for both.
pub struct Snapshot {
    pub services: BTreeMap<String, ServiceDoc>,
    pub tasks: BTreeMap<TaskId, Task>,
    pub nodes: Vec<NodeInfo>,
}

impl Snapshot {
    pub async fn read<S: Store>(store: &S) -> Result<Snapshot, Error> {
        Ok(Snapshot {
            services: crate::schema::services(store)
                .await?
                .into_iter()
                .map(|(id, (d, _))| (id.0, d))
                .collect(),
            tasks: crate::schema::tasks(store)
                .await?
                .into_iter()
                .map(|(id, (t, _))| (id, t))
                .collect(),
            nodes: crate::nodes::list(store).await?,
        })
    }
}

/// Brings the stored network documents to [`desired`] in one transaction conditioned on what
/// was read. Returns whether anything was written; a network that could not be given what it
/// asks for is logged (its tasks wait for an address).
pub async fn sync<S: Store>(
    store: &S,
    pools: &[AddressPool],
    snap: &Snapshot,
) -> Result<bool, Error> {
    let mut existing = BTreeMap::new();
    let mut revs = BTreeMap::new();
    for o in store.list(Kind::Network).await?.objects {
        if let Ok(d) = o.decode::<NetworkDoc>() {
            revs.insert(o.id.clone(), o.mod_revision);
            existing.insert(o.id, d);
        }
    }
    let Desired { docs: want, errors } = desired(&Inputs {
        services: &snap.services,
        tasks: &snap.tasks,
        nodes: &snap.nodes,
        existing: &existing,
        pools,
    });
    for e in &errors {
        tracing::warn!("networks: {e}");
    }
    let mut txn = Txn::new();
    for (name, d) in &want {
        if existing.get(name) == Some(d) {
            continue;
        }
        txn = match revs.get(name) {
            Some(rev) => txn.when(Precondition::ModRevision {
                kind: Kind::Network,
                id: name.clone(),
                revision: *rev,
            }),
            None => txn.when(Precondition::Absent {
                kind: Kind::Network,
                id: name.clone(),
            }),
        };
        txn = txn.op(Op::put(Kind::Network, name.clone(), d)?);
    }
    for name in existing.keys().filter(|n| !want.contains_key(*n)) {
        txn = txn.op(Op::delete(Kind::Network, name.clone()));
    }
    if txn.ops.is_empty() {
        return Ok(false);
    }
    match store.txn(txn).await {
        Ok(_) => Ok(true),
        // Another writer (a previous leader) got there first: the next round reads it.
        Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The stored document of every stack network.
pub async fn list<S: Store>(store: &S) -> Result<BTreeMap<String, NetworkDoc>, Error> {
    let mut out = BTreeMap::new();
    for o in store.list(Kind::Network).await?.objects {
        out.insert(o.id.clone(), o.decode()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
