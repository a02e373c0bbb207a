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
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::nodes::NodeInfo;
use crate::schema::ServiceDoc;

/// VXLAN ids handed out from here up (low ids are what hand-made devices tend to use).
pub const FIRST_VNI: u32 = 4096;

/// One stack network, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDoc {
    /// Subnet, `a.b.c.d/len`; the first address is every node's gateway (and resolver).
    pub subnet: String,
    pub vni: u32,
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

/// Where subnets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub base: Ipv4Addr,
    pub len: u8,
    /// Prefix length of each network's subnet.
    pub subnet_len: u8,
}

impl Pool {
    /// `pool` as `a.b.c.d/len`, cut into subnets of `subnet_len`.
    pub fn parse(pool: &str, subnet_len: u8) -> Result<Pool, Error> {
        let (base, len) = parse_cidr(pool)
            .ok_or_else(|| Error::Invalid(format!("invalid address pool {pool:?}")))?;
        if subnet_len < len || subnet_len > 30 {
            return Err(Error::Invalid(format!(
                "subnet length /{subnet_len} does not fit pool {pool}"
            )));
        }
        Ok(Pool {
            base,
            len,
            subnet_len,
        })
    }
}

/// `a.b.c.d/len` with the host bits cleared.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let ip: Ipv4Addr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    (len <= 32).then(|| (Ipv4Addr::from(u32::from(ip) & mask(len)), len))
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let l = a.1.min(b.1);
    u32::from(a.0) & mask(l) == u32::from(b.0) & mask(l)
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
    pub pool: Pool,
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
/// are kept; new networks and tasks get the lowest free ones. A network stays while a service
/// uses it or a task still holds an address on it. Errors name what ran out.
pub fn desired(inp: &Inputs) -> Result<BTreeMap<String, NetworkDoc>, Error> {
    let mut out: BTreeMap<String, NetworkDoc> = BTreeMap::new();
    let mut wanted: BTreeMap<String, ()> = BTreeMap::new();
    for doc in inp.services.values() {
        for (k, _) in service_networks(doc) {
            wanted.insert(format!("{}_{k}", doc.spec.stack), ());
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
    let mut subnets: Vec<(Ipv4Addr, u8)> = Vec::new();
    let mut vnis: BTreeSet<u32> = BTreeSet::new();
    for (name, d) in inp.existing {
        if names.contains(name)
            && let Some(c) = parse_cidr(&d.subnet)
        {
            subnets.push(c);
            vnis.insert(d.vni);
            out.insert(
                name.clone(),
                NetworkDoc {
                    subnet: d.subnet.clone(),
                    vni: d.vni,
                    endpoints: BTreeMap::new(),
                },
            );
        }
    }
    for name in &names {
        if out.contains_key(name) {
            continue;
        }
        let subnet = free_subnet(inp.pool, &subnets).ok_or_else(|| {
            Error::Invalid(format!(
                "no free /{} left in the cluster's address pool {}/{} for network {name}",
                inp.pool.subnet_len, inp.pool.base, inp.pool.len
            ))
        })?;
        subnets.push(subnet);
        let vni = (FIRST_VNI..)
            .find(|v| !vnis.contains(v))
            .unwrap_or(FIRST_VNI);
        vnis.insert(vni);
        out.insert(
            name.clone(),
            NetworkDoc {
                subnet: format!("{}/{}", subnet.0, subnet.1),
                vni,
                endpoints: BTreeMap::new(),
            },
        );
    }
    for (net, eps) in held {
        if let Some(d) = out.get_mut(&net) {
            d.endpoints = eps;
        }
    }
    for (net, task, mut ep) in fresh {
        let Some(d) = out.get_mut(&net) else { continue };
        let (base, len) = parse_cidr(&d.subnet).unwrap_or((Ipv4Addr::UNSPECIFIED, 32));
        let used: BTreeSet<Ipv4Addr> = d.endpoints.values().map(|e| e.ip).collect();
        ep.ip = free_address(base, len, &used).ok_or_else(|| {
            Error::Invalid(format!("subnet {} of network {net} is full", d.subnet))
        })?;
        d.endpoints.insert(task, ep);
    }
    Ok(out)
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

/// The lowest subnet of the pool that overlaps none of `taken`.
fn free_subnet(pool: Pool, taken: &[(Ipv4Addr, u8)]) -> Option<(Ipv4Addr, u8)> {
    let count = 1u64 << (pool.subnet_len - pool.len);
    let step = 1u64 << (32 - pool.subnet_len);
    (0..count)
        .map(|i| {
            let a = u64::from(u32::from(pool.base)) + i * step;
            (Ipv4Addr::from(a as u32), pool.subnet_len)
        })
        .find(|s| !taken.iter().any(|t| overlaps(*s, *t)))
}

/// The lowest address of the subnet that is neither the network address, the gateway (the
/// first host), the broadcast address nor in `used`.
fn free_address(base: Ipv4Addr, len: u8, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let size = 1u64 << (32 - len);
    (2..size.saturating_sub(1))
        .map(|i| Ipv4Addr::from((u64::from(u32::from(base)) + i) as u32))
        .find(|ip| !used.contains(ip))
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
/// was read. Returns whether anything was written.
pub async fn sync<S: Store>(store: &S, pool: Pool, snap: &Snapshot) -> Result<bool, Error> {
    let mut existing = BTreeMap::new();
    let mut revs = BTreeMap::new();
    for o in store.list(Kind::Network).await?.objects {
        if let Ok(d) = o.decode::<NetworkDoc>() {
            revs.insert(o.id.clone(), o.mod_revision);
            existing.insert(o.id, d);
        }
    }
    let want = desired(&Inputs {
        services: &snap.services,
        tasks: &snap.tasks,
        nodes: &snap.nodes,
        existing: &existing,
        pool,
    })?;
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
