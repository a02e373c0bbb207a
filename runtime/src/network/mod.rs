//! Container networking: bridges, IPAM, DNS, published ports.
//!
//! One [`NetworkManager`] per dcpp instance. Everything it makes on the host carries names
//! derived from its options, so several instances (and parallel tests) run side by side:
//!
//! - bridge `<prefix><n>` per network, host veth ends `<prefix>v<8 hex>`, temporary peer names
//!   `<prefix>p<8 hex>` (the prefix is at most 6 characters so every name fits Linux's 15);
//! - subnets carved from `pools` (default [`DEFAULT_POOLS`]: /20s of 10.208.0.0/12), skipping
//!   any prefix the host already routes, or a compose network's own (`ipam`), which must lie in
//!   a pool; addresses persisted under `<data_dir>/network/state.json`;
//! - one nftables table (`ip <nft_table>`) holding published ports, masquerade and isolation.
//!
//! Published ports are pure kernel path (nftables DNAT, round robin over replicas with
//! `numgen inc`), including connections to 127.0.0.1: each bridge gets `route_localnet=1` and
//! loopback-sourced connections are masqueraded to the gateway, which is what docker does with
//! its userland proxy off. No proxy process means host → container throughput through a
//! published port equals the direct path. To keep other programs off a published port and to
//! report a taken one at apply time, the manager also binds the host port itself and holds the
//! socket while the port is published.
//!
//! Bridges, veths, addresses and routes are made through rtnetlink (see `netlink.rs`); nft
//! rules through `nft -f -` (see `nft.rs`); names through the resolver in `dns.rs`.
//!
//! `network_mode: host` and `none` never reach this module (the container layer gives such a
//! container the host's namespace or one with only `lo`); `service:NAME` joins another
//! container's namespace, which already has its interfaces, so it is not attached either.

mod dns;
mod hook;
mod ipam;
mod netlink;
mod nft;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use dns::{DnsTable, parse_resolv_conf};
pub use hook::{ContainerNetworks, ContainerPlan, PlannedNetwork};
pub use ipam::{
    AddressPool, DEFAULT_POOLS, DEFAULT_SUBNET_LEN, IpamError, IpamSpec, Ipv4Net, ParseNetError,
    default_pools, parse_pools, pools_string,
};
pub use state::{Endpoint, MeshForward, NetworkRecord, PortBinding, Protocol, RemoteEndpoint};

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("netlink: {what}: {msg}")]
    Netlink {
        /// What was being done.
        what: String,
        /// Kernel's answer.
        msg: String,
    },
    /// `nft` rejected the ruleset.
    #[error("nftables: {0}")]
    Nft(String),
    /// The state file cannot be read.
    #[error("corrupt network state: {0}")]
    Corrupt(String),
    /// Bad input from the caller.
    #[error("{0}")]
    Invalid(String),
    /// No such network.
    #[error("network {0:?} not found")]
    NotFound(String),
    /// The network still has containers.
    #[error("network {network:?} is in use by container(s) {containers}")]
    InUse {
        /// Network.
        network: String,
        /// Comma-separated container names.
        containers: String,
    },
    /// The address pool (or the subnet) is exhausted, or an address is taken.
    #[error("address allocation: {0}")]
    Exhausted(String),
    /// A network cannot have the addressing asked for: its own subnet overlaps another or lies
    /// outside the pools, every pool is full, or its range has no address left.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A host port is already taken.
    #[error("host port {port}/{protocol} is already in use: {by}")]
    PortInUse {
        /// Port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
        /// Who holds it.
        by: String,
    },
}

/// A container's own name-resolution settings (compose's `dns`, `dns_search`, `dns_opt`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvSettings {
    /// Nameservers; used as such only where the resolver does not run.
    pub nameservers: Vec<std::net::IpAddr>,
    /// Search domains.
    pub search: Vec<String>,
    /// `options` entries.
    pub options: Vec<String>,
}

/// A resolv.conf made from the host's `host` text: `nameservers`, `search` and `options`
/// replace the host's nameserver, search and options lines (docker's rule). Without own
/// nameservers the host's loopback ones are dropped unless `keep_loopback` (a container in
/// the host's network namespace can reach them; one in its own cannot).
pub fn resolv_from_host<N: std::fmt::Display>(
    host: &str,
    nameservers: &[N],
    search: &[String],
    options: &[String],
    keep_loopback: bool,
) -> String {
    let mut out = String::new();
    for l in host.lines() {
        let mut f = l.split_whitespace();
        let keep = match f.next() {
            Some("nameserver") => {
                nameservers.is_empty()
                    && (keep_loopback
                        || !f
                            .next()
                            .is_some_and(|a| a.starts_with("127.") || a == "::1"))
            }
            Some("search" | "domain") => search.is_empty(),
            Some("options") => options.is_empty(),
            _ => true,
        };
        if keep {
            out.push_str(l);
            out.push('\n');
        }
    }
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// UDP port on each gateway address (53 for real containers).
    pub port: u16,
    /// Where other names go; `None` reads the host's `/etc/resolv.conf`.
    pub upstreams: Option<Vec<SocketAddr>>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            port: 53,
            upstreams: None,
        }
    }
}

/// Everything that makes one instance distinct from another on the same machine.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// Data directory of the daemon; state goes to `<data_dir>/network/`.
    pub data_dir: PathBuf,
    /// Prefix of every interface name this instance creates (1–6 characters of `[a-z0-9]`).
    pub bridge_prefix: String,
    /// Where network subnets come from, in order, each with the size of its blocks.
    pub pools: Vec<AddressPool>,
    /// Name of the nftables table (family `ip`) this instance owns.
    pub nft_table: String,
    /// Masquerade traffic that leaves the machine from non-internal networks.
    pub masquerade: bool,
    /// Run the resolver (needs a tokio runtime when the manager is opened).
    pub dns: Option<DnsOptions>,
}

impl NetworkOptions {
    /// Daemon defaults under `data_dir`: prefix `dcpp`, pools [`DEFAULT_POOLS`], table `dcpp`,
    /// masquerade on, DNS on port 53.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NetworkOptions {
            data_dir: data_dir.into(),
            bridge_prefix: "dcpp".into(),
            pools: default_pools(),
            nft_table: "dcpp".into(),
            masquerade: true,
            dns: Some(DnsOptions::default()),
        }
    }

    /// The options the instance using `data_dir` last ran with (without DNS), if any; what
    /// `dcpp network …` uses so that it touches exactly the daemon's bridges and table.
    pub fn saved(data_dir: &Path) -> Result<Option<NetworkOptions>, Error> {
        let dir = data_dir.join("network");
        if !dir.join("state.json").exists() {
            return Ok(None);
        }
        let st = state::Store::open(data_dir)?.load()?;
        Ok(st.settings.map(|s| NetworkOptions {
            data_dir: data_dir.to_owned(),
            pools: s.pools(),
            bridge_prefix: s.bridge_prefix,
            nft_table: s.nft_table,
            masquerade: s.masquerade,
            dns: None,
        }))
    }

    fn settings(&self) -> state::Settings {
        state::Settings {
            bridge_prefix: self.bridge_prefix.clone(),
            pools: self.pools.clone(),
            pool: None,
            subnet_len: None,
            nft_table: self.nft_table.clone(),
            masquerade: self.masquerade,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let p = &self.bridge_prefix;
        if p.is_empty()
            || p.len() > 6
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Error::Invalid(format!(
                "bridge prefix {p:?} must be 1-6 characters of a-z and 0-9 (interface names are at most 15 characters)"
            )));
        }
        let t = &self.nft_table;
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::Invalid(format!(
                "nft table name {t:?} must be letters, digits, '_' or '-'"
            )));
        }
        if self.pools.is_empty() {
            return Err(Error::Invalid("no address pool".into()));
        }
        if let Some(p) = self
            .pools
            .iter()
            .find(|p| p.size < p.base.prefix_len() || p.size > 30)
        {
            return Err(Error::Invalid(format!(
                "address pool {p}: the block size must lie between the pool's length and 30"
            )));
        }
        Ok(())
    }
}

/// How to create a network.
#[derive(Debug, Clone, Default)]
pub struct NetworkConfig {
    /// A subnet decided elsewhere (the cluster's leader): only checked against the other
    /// networks here, not against the pools.
    pub subnet: Option<Ipv4Net>,
    /// The network's own addressing (compose `ipam`): without `subnet`, its subnet must lie
    /// in a pool and overlap no other network; its range, gateway and reserved addresses are
    /// kept either way.
    pub own: Option<IpamSpec>,
    /// No route out and no forwarding to other networks.
    pub internal: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// MTU of the containers' interfaces (see [`NetworkRecord::mtu`]).
    pub mtu: Option<u32>,
}

/// A network's containers on other nodes, as [`NetworkManager::set_remote`] takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// VXLAN network identifier.
    pub vni: u32,
    /// This node's underlay address.
    pub local: Ipv4Addr,
    /// UDP port of the overlay.
    pub port: u16,
    /// The remote containers.
    pub endpoints: Vec<RemoteEndpoint>,
}

/// The routing mesh as [`NetworkManager::set_mesh`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// This node's underlay address (its interface carries the forwarded connections).
    pub local: Ipv4Addr,
    /// Where each port's new connections go while no replica here serves it.
    pub ports: Vec<MeshForward>,
}

/// The VXLAN overhead (outer Ethernet, IP, UDP and VXLAN headers) an overlay network's MTU
/// leaves room for.
pub const VXLAN_OVERHEAD: u32 = 50;

/// A request to give a container an interface on a network.
#[derive(Debug, Clone, Default)]
pub struct AttachRequest {
    /// Container id.
    pub container_id: String,
    /// Container name (resolvable by other containers).
    pub container_name: String,
    /// Compose service, resolvable to all replicas.
    pub service: Option<String>,
    /// Network name.
    pub network: String,
    /// Extra names on this network.
    pub aliases: Vec<String>,
    /// Fixed address (compose `ipv4_address`).
    pub ipv4_address: Option<Ipv4Addr>,
    /// Attach withdrawn: the service name, the aliases and the published ports of the container
    /// stay out of DNS and of the port map until [`NetworkManager::set_serving`] says it serves
    /// (an orchestrated replica joins once it runs, and is healthy when it has a healthcheck).
    pub withdrawn: bool,
}

/// What an attach made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Network name.
    pub network: String,
    /// Interface inside the container.
    pub ifname: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// MAC of the interface.
    pub mac: String,
    /// Bridge address; also the DNS server when the resolver runs.
    pub gateway: Ipv4Addr,
    /// Whether the container's default route goes through this network.
    pub default_route: bool,
}

/// A port to publish (one host port to one container port; ranges are expanded by
/// [`PortMapping::expand`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Host address; all of the host's addresses when unset.
    pub host_ip: Option<Ipv4Addr>,
    /// Host port; 0 picks a free one.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl PortMapping {
    /// Expands compose's `published` (`"8080"`, `"8000-8001"` or unset) and a target range of the
    /// same length into single mappings.
    pub fn expand(
        host_ip: Option<Ipv4Addr>,
        published: Option<&str>,
        target: (u16, u16),
        protocol: Protocol,
    ) -> Result<Vec<PortMapping>, Error> {
        let bad = |s: &str| Error::Invalid(format!("invalid published port {s:?}"));
        let (lo, hi) = match published {
            None => (0, 0),
            Some(s) => match s.split_once('-') {
                Some((a, b)) => (
                    a.parse().map_err(|_| bad(s))?,
                    b.parse().map_err(|_| bad(s))?,
                ),
                None => {
                    let p: u16 = s.parse().map_err(|_| bad(s))?;
                    (p, p)
                }
            },
        };
        let (tlo, thi) = target;
        if hi < lo || thi < tlo || tlo == 0 {
            return Err(Error::Invalid(format!(
                "invalid port range {lo}-{hi}:{tlo}-{thi}"
            )));
        }
        if published.is_some() && hi - lo != thi - tlo {
            return Err(Error::Invalid(format!(
                "published range {lo}-{hi} and target range {tlo}-{thi} differ in length"
            )));
        }
        Ok((0..=thi - tlo)
            .map(|i| PortMapping {
                host_ip,
                host_port: if published.is_some() { lo + i } else { 0 },
                container_port: tlo + i,
                protocol,
            })
            .collect())
    }
}

/// A network with its endpoints, for `ls`/`inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The network.
    #[serde(flatten)]
    pub network: NetworkRecord,
    /// Attached containers.
    pub endpoints: Vec<Endpoint>,
    /// Ports published by those containers.
    pub ports: Vec<PortBinding>,
}

/// What [`NetworkManager::cleanup_stale`] removed or restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Links of this instance that no state entry referred to, deleted.
    pub removed_links: Vec<String>,
    /// Endpoints whose container is gone (its veth vanished with its namespace), forgotten.
    pub removed_endpoints: Vec<String>,
    /// Bridges of known networks that were missing (e.g. after a reboot), recreated.
    pub recreated_bridges: Vec<String>,
}

#[derive(Debug)]
#[allow(dead_code)] // The sockets are held, never read: holding them is their purpose.
enum Held {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

type PortKey = (Option<Ipv4Addr>, u16, Protocol);

/// The network driver of one dcpp instance. Methods are synchronous and block for the netlink
/// and nft round trips (milliseconds); call them from `spawn_blocking` in async code.
pub struct NetworkManager {
    opts: NetworkOptions,
    store: state::Store,
    held: Mutex<HashMap<PortKey, Held>>,
    dns: Option<dns::DnsServer>,
    /// The state sequence number (see [`state::Store::read`]) the resolver was last synced to.
    dns_seq: Mutex<u64>,
}

enum LinkKind {
    Bridge,
    Veth,
    Peer,
    Vxlan,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn short_hash(parts: &[&str], hex_len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..hex_len].to_owned()
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl NetworkManager {
    /// Opens the instance described by `opts`. With DNS on, this must run inside a tokio runtime
    /// (the resolver's tasks are spawned on it). Nothing on the host changes until
    /// [`cleanup_stale`](Self::cleanup_stale) or a mutating call.
    pub fn open(opts: NetworkOptions) -> Result<Self, Error> {
        opts.validate()?;
        let store = state::Store::open(&opts.data_dir)?;
        let dns = match &opts.dns {
            None => None,
            Some(d) => {
                let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::Invalid(
                        "the DNS server needs a tokio runtime: open the manager inside one".into(),
                    )
                })?;
                let ups = match &d.upstreams {
                    Some(u) => u.clone(),
                    None => parse_resolv_conf(
                        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                    ),
                };
                Some(dns::DnsServer::new(handle, d.port, ups))
            }
        };
        Ok(NetworkManager {
            opts,
            store,
            held: Mutex::default(),
            dns,
            dns_seq: Mutex::new(0),
        })
    }

    /// The options this manager was opened with.
    pub fn options(&self) -> &NetworkOptions {
        &self.opts
    }

    fn link_kind(&self, name: &str) -> Option<LinkKind> {
        let rest = name.strip_prefix(&self.opts.bridge_prefix)?;
        let hex8 = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            Some(LinkKind::Bridge)
        } else if let Some(h) = rest.strip_prefix('v').filter(|h| hex8(h)) {
            let _ = h;
            Some(LinkKind::Veth)
        } else if rest.strip_prefix('p').is_some_and(hex8) {
            Some(LinkKind::Peer)
        } else if rest
            .strip_suffix('x')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(LinkKind::Vxlan)
        } else {
            None
        }
    }

    /// The VXLAN device of the network on `bridge`: `<prefix><n>x` for bridge `<prefix><n>`.
    /// No other instance's link has that shape (its bridges end in digits, its veths in eight
    /// hex digits), so deleting it can only hit this network's.
    fn vxlan_of(&self, bridge: &str) -> String {
        format!("{bridge}x")
    }

    /// Runs `f` on the freshly loaded state under the inter-process lock and saves the result
    /// (together with this process's concurrent updates); the resolver knows the result when
    /// this returns.
    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut state::State) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let r = self
            .store
            .update(|st| {
                let r = f(st);
                st.settings = Some(self.opts.settings());
                // Whatever `f` did to the kernel before failing is already reflected in `st`.
                r
            })
            .and_then(|r| r);
        self.sync_dns();
        r
    }

    /// Brings the resolver up to the state this process last read or wrote, unless it is
    /// there already: of a batch of updates returning together, one rebuilds its table.
    fn sync_dns(&self) {
        if self.dns.is_none() {
            return;
        }
        let mut synced = self.dns_seq.lock().unwrap_or_else(|e| e.into_inner());
        let res = self.store.read(|st, seq| {
            if seq != *synced {
                self.refresh_dns(st);
                *synced = seq;
            }
        });
        if let Err(e) = res {
            tracing::warn!("DNS: {e}");
        }
    }

    /// Reads the state (no lock needed: writes are atomic renames).
    fn snapshot(&self) -> Result<state::State, Error> {
        self.store.load()
    }

    fn refresh_dns(&self, st: &state::State) {
        if let Some(d) = &self.dns
            && let Err(e) = d.sync(st)
        {
            tracing::warn!("DNS: {e}");
        }
    }

    /// Turns forwarding through the uplink on while this node has a published port that
    /// clients on other machines reach (its own replicas' or the mesh's: the kernel routes a
    /// translated connection only when the interface it enters through forwards), if it was
    /// off, and off again once none is left. Only with an uplink, i.e. in a cluster's overlay.
    fn sync_uplink(st: &mut state::State) -> Result<(), Error> {
        let state::State { mesh, ports, .. } = st;
        let Some(m) = mesh.as_mut() else {
            return Ok(());
        };
        let need = m.ports.iter().any(|p| !p.to.is_empty())
            || ports
                .iter()
                .any(|p| p.host_ip.is_none_or(|ip| !ip.is_loopback()));
        if need && !m.enabled_forwarding && !netlink::forwarding(&m.uplink)? {
            netlink::set_forwarding(&m.uplink, true)?;
            m.enabled_forwarding = true;
        } else if !need && m.enabled_forwarding {
            netlink::set_forwarding(&m.uplink, false)?;
            m.enabled_forwarding = false;
        }
        Ok(())
    }

    fn apply_nft(&self, st: &mut state::State) -> Result<(), Error> {
        Self::sync_uplink(st)?;
        let bridges: Vec<nft::BridgeRule> = st
            .networks
            .values()
            .map(|n| nft::BridgeRule {
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                internal: n.internal,
            })
            .collect();
        let mut groups: BTreeMap<PortKey, Vec<(Ipv4Addr, u16)>> = BTreeMap::new();
        for p in &st.ports {
            let group = groups
                .entry((p.host_ip, p.host_port, p.protocol))
                .or_default();
            // A withdrawn replica takes no new connections; its established ones keep their
            // conntrack entry and finish.
            if !st.withdrawn.contains(&p.container_id) {
                group.push((p.target_ip, p.container_port));
            }
        }
        // A replica here serves its port itself (the client's address stays visible to it);
        // the mesh forwards only ports no local replica takes new connections for.
        let mesh = st.mesh.as_ref().map(|m| nft::MeshRules {
            uplink: m.uplink.clone(),
            guard: m.enabled_forwarding,
            ports: m
                .ports
                .iter()
                .filter(|f| {
                    groups
                        .get(&(None, f.port, f.protocol))
                        .is_none_or(|b| b.is_empty())
                })
                .map(|f| nft::MeshRule {
                    port: f.port,
                    protocol: f.protocol,
                    to: f.to.clone(),
                })
                .collect(),
        });
        let ports: Vec<nft::PortRule> = groups
            .into_iter()
            .map(|((host_ip, host_port, protocol), backends)| nft::PortRule {
                host_ip,
                host_port,
                protocol,
                backends,
            })
            .collect();
        nft::install(
            &self.opts.nft_table,
            &bridges,
            &ports,
            mesh.as_ref(),
            self.opts.masquerade,
        )
    }

    /// Removes what a crashed predecessor of this instance left behind and restores what the
    /// state says should exist: links named like this instance's but unknown to the state are
    /// deleted, endpoints whose veth vanished (their container's namespace is gone) are
    /// forgotten with their ports, missing bridges are recreated, the nft table is rewritten and
    /// held ports are re-bound. Other instances' links (other prefixes) are never touched.
    pub fn cleanup_stale(&self) -> Result<CleanupReport, Error> {
        self.with_state(|st| {
            let mut report = CleanupReport::default();
            let links = netlink::list_links()?;
            let present: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
            let bridges: BTreeSet<&str> = st.networks.values().map(|n| n.bridge.as_str()).collect();
            let veths: BTreeSet<&str> = st
                .endpoints
                .iter()
                .map(|e| e.host_ifname.as_str())
                .collect();
            for l in &links {
                let stale = match self.link_kind(&l.name) {
                    Some(LinkKind::Bridge) => !bridges.contains(l.name.as_str()),
                    Some(LinkKind::Veth) => !veths.contains(l.name.as_str()),
                    Some(LinkKind::Peer) => true,
                    Some(LinkKind::Vxlan) => !st.networks.values().any(|n| {
                        st.remote.contains_key(&n.name) && self.vxlan_of(&n.bridge) == l.name
                    }),
                    None => false,
                };
                if stale {
                    netlink::delete_link(&l.name)?;
                    report.removed_links.push(l.name.clone());
                }
            }
            let (gone, kept): (Vec<Endpoint>, Vec<Endpoint>) = st
                .endpoints
                .drain(..)
                .partition(|e| !present.contains(e.host_ifname.as_str()));
            st.endpoints = kept;
            for e in gone {
                st.ports.retain(|p| p.container_id != e.container_id);
                st.withdrawn.remove(&e.container_id);
                report
                    .removed_endpoints
                    .push(format!("{}@{}", e.container_name, e.network));
            }
            for n in st.networks.values() {
                if !present.contains(n.bridge.as_str()) {
                    report.recreated_bridges.push(n.bridge.clone());
                }
                netlink::ensure_bridge(&n.bridge, n.gateway, n.subnet.prefix_len(), !n.internal)?;
            }
            st.remote.retain(|name, _| st.networks.contains_key(name));
            for (name, r) in &st.remote {
                let n = &st.networks[name];
                self.program_remote(n, r, &[])?;
            }
            self.release_unused_ports(st);
            self.apply_nft(st)?;
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<PortKey> = st
                .ports
                .iter()
                .map(|p| (p.host_ip, p.host_port, p.protocol))
                .chain(mesh_keys(st))
                .collect();
            for key in keys {
                if let std::collections::hash_map::Entry::Vacant(v) = held.entry(key) {
                    match hold(key.0, key.1, key.2) {
                        Ok((h, _)) => {
                            v.insert(h);
                        }
                        Err(e) => tracing::warn!("re-holding published port: {e}"),
                    }
                }
            }
            Ok(report)
        })
    }

    /// Creates network `name` (idempotent: an existing network of that name is returned as is).
    pub fn create_network(&self, name: &str, cfg: NetworkConfig) -> Result<NetworkRecord, Error> {
        if name.is_empty()
            || name.len() > 128
            || name.chars().any(|c| c.is_whitespace() || c == '/')
        {
            return Err(Error::Invalid(format!("invalid network name {name:?}")));
        }
        self.with_state(|st| {
            if let Some(n) = st.networks.get(name) {
                return Ok(n.clone());
            }
            let mut taken: Vec<(String, Ipv4Net)> =
                st.networks.values().map(|n| (n.name.clone(), n.subnet)).collect();
            // Each bridge's own route comes after its network, which names the overlap.
            taken.extend(netlink::host_routes()?.into_iter().map(|r| (String::new(), r)));
            let subnet = match (&cfg.own, cfg.subnet) {
                (_, Some(s)) => {
                    if s.prefix_len() > 30 {
                        return Err(Error::Invalid(format!("subnet {s} is too small (at most /30)")));
                    }
                    if let Some((n, t)) = taken.iter().find(|(_, t)| t.overlaps(&s)) {
                        let by = if n.is_empty() { "a route of this host".to_owned() } else { format!("network {n}") };
                        return Err(Error::Exhausted(format!("subnet {s} overlaps {t} of {by}, already in use")));
                    }
                    s
                }
                (own, _) => ipam::choose_subnet(name, own.as_ref(), &self.opts.pools, &taken)?,
            };
            let gateway = cfg.own.as_ref().map_or(subnet.gateway(), IpamSpec::gateway);
            let used: BTreeSet<&str> = st.networks.values().map(|n| n.bridge.as_str()).collect();
            let bridge = (0..)
                .map(|i| format!("{}{i}", self.opts.bridge_prefix))
                .find(|b| !used.contains(b.as_str()))
                .expect("a free bridge name exists");
            let rec = NetworkRecord {
                name: name.to_owned(),
                id: short_hash(&[name, &bridge, &format!("{:?}", std::time::SystemTime::now())], 12),
                bridge,
                subnet,
                gateway,
                ip_range: cfg.own.as_ref().and_then(|o| o.ip_range),
                reserved: cfg.own.map(|o| o.reserved).unwrap_or_default(),
                internal: cfg.internal,
                labels: cfg.labels,
                created: now_secs(),
                mtu: cfg.mtu,
            };
            netlink::ensure_bridge(&rec.bridge, rec.gateway, subnet.prefix_len(), !rec.internal)?;
            st.networks.insert(name.to_owned(), rec.clone());
            if let Err(e) = self.apply_nft(st) {
                st.networks.remove(name);
                let _ = netlink::delete_link(&rec.bridge);
                return Err(e);
            }
            tracing::info!(network = name, bridge = %rec.bridge, subnet = %rec.subnet, "network created");
            Ok(rec)
        })
    }

    /// Removes a network without containers.
    pub fn remove_network(&self, name: &str) -> Result<(), Error> {
        self.with_state(|st| {
            let n = st
                .networks
                .get(name)
                .cloned()
                .ok_or_else(|| Error::NotFound(name.to_owned()))?;
            let users: Vec<&str> = st
                .endpoints
                .iter()
                .filter(|e| e.network == name)
                .map(|e| e.container_name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(Error::InUse {
                    network: name.to_owned(),
                    containers: users.join(", "),
                });
            }
            st.networks.remove(name);
            st.remote.remove(name);
            self.apply_nft(st)?;
            netlink::delete_link(&self.vxlan_of(&n.bridge))?;
            netlink::delete_link(&n.bridge)?;
            tracing::info!(network = name, "network removed");
            Ok(())
        })
    }

    /// Removes every network without containers; returns their names.
    pub fn prune(&self) -> Result<Vec<String>, Error> {
        let st = self.snapshot()?;
        let idle: Vec<String> = st
            .networks
            .keys()
            .filter(|n| !st.endpoints.iter().any(|e| &e.network == *n))
            .cloned()
            .collect();
        for n in &idle {
            self.remove_network(n)?;
        }
        Ok(idle)
    }

    /// All networks with their endpoints and ports.
    pub fn list(&self) -> Result<Vec<NetworkInfo>, Error> {
        let st = self.snapshot()?;
        Ok(st
            .networks
            .values()
            .map(|n| {
                let endpoints: Vec<Endpoint> = st
                    .endpoints
                    .iter()
                    .filter(|e| e.network == n.name)
                    .cloned()
                    .collect();
                let ids: BTreeSet<&str> =
                    endpoints.iter().map(|e| e.container_id.as_str()).collect();
                let subnet = n.subnet;
                let ports = st
                    .ports
                    .iter()
                    .filter(|p| {
                        ids.contains(p.container_id.as_str()) && subnet.contains(p.target_ip)
                    })
                    .cloned()
                    .collect();
                NetworkInfo {
                    network: n.clone(),
                    endpoints,
                    ports,
                }
            })
            .collect())
    }

    /// One network by name, id or id prefix.
    pub fn inspect(&self, name: &str) -> Result<NetworkInfo, Error> {
        let all = self.list()?;
        let by_name = all.iter().position(|i| i.network.name == name);
        let by_id: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].network.id.starts_with(name))
            .collect();
        let idx = by_name.or(if by_id.len() == 1 {
            Some(by_id[0])
        } else {
            None
        });
        idx.map(|i| all[i].clone())
            .ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    /// Every endpoint of a container.
    pub fn endpoints_of(&self, container_id: &str) -> Result<Vec<Endpoint>, Error> {
        self.store.read(|st, _| {
            st.endpoints
                .iter()
                .filter(|e| e.container_id == container_id)
                .cloned()
                .collect()
        })
    }

    /// Gives the container whose network namespace is `netns` (a `/proc/<pid>/ns/net` path or a
    /// bind mount of one) an interface on `req.network`: a veth pair with the host end on the
    /// bridge, an address from IPAM (or `ipv4_address`), `lo` up, and the default route via the
    /// gateway unless the network is internal or an earlier network already carries it. The
    /// container's names become resolvable on that network.
    pub fn attach(&self, req: &AttachRequest, netns: &Path) -> Result<Attachment, Error> {
        if req.container_id.is_empty() || req.container_name.is_empty() {
            return Err(Error::Invalid(
                "attach needs a container id and name".into(),
            ));
        }
        let ns = File::open(netns).map_err(|e| Error::Io {
            what: format!("opening network namespace {}", netns.display()),
            source: e,
        })?;
        // The address is taken and the endpoint recorded first, the veth made after, outside
        // the state's lock: creating it is most of an attach (tens of ms with a thousand
        // containers on the machine), and done under the lock it made every create of the
        // machine wait for every other. An endpoint whose veth is not there (yet, or because
        // the attach died) is what `cleanup_stale` removes, as for a container that died.
        let (ep, plan, prefix_len, gateway) = self.with_state(|st| {
            let net = st
                .networks
                .get(&req.network)
                .cloned()
                .ok_or_else(|| Error::NotFound(req.network.clone()))?;
            if st
                .endpoints
                .iter()
                .any(|e| e.container_id == req.container_id && e.network == req.network)
            {
                return Err(Error::Invalid(format!(
                    "container {} is already attached to network {:?}",
                    req.container_name, req.network
                )));
            }
            let used: BTreeSet<Ipv4Addr> = st
                .endpoints
                .iter()
                .filter(|e| e.network == req.network)
                .map(|e| e.ip)
                .collect();
            let range = net.range();
            let ip = match req.ipv4_address {
                Some(ip) => {
                    if !range.usable(ip) {
                        return Err(Error::Invalid(format!(
                            "ipv4_address {ip} is not a usable address of {} ({})",
                            net.subnet, net.name
                        )));
                    }
                    if used.contains(&ip) {
                        return Err(Error::Exhausted(format!(
                            "address {ip} is already in use on {}",
                            net.name
                        )));
                    }
                    ip
                }
                None => range.pick(&net.name, &used)?,
            };
            let mine = st
                .endpoints
                .iter()
                .filter(|e| e.container_id == req.container_id);
            let has_default = mine.clone().any(|e| e.gateway.is_some());
            let default_gw = (!net.internal && !has_default).then_some(net.gateway);
            let h = short_hash(&[&req.container_id, &req.network], 8);
            let plan = netlink::VethPlan {
                bridge: net.bridge.clone(),
                host_ifname: format!("{}v{h}", self.opts.bridge_prefix),
                ip,
                prefix: net.subnet.prefix_len(),
                default_gw,
                mtu: net.mtu,
            };
            let ep = Endpoint {
                container_id: req.container_id.clone(),
                container_name: req.container_name.clone(),
                service: req.service.clone(),
                network: req.network.clone(),
                aliases: req.aliases.clone(),
                ip,
                mac: fmt_mac(netlink::mac_of(ip)),
                // What `attach_veth` names it unless the namespace has other interfaces; fixed
                // below if it differs.
                ifname: format!("eth{}", mine.count()),
                host_ifname: plan.host_ifname.clone(),
                gateway: default_gw,
            };
            st.endpoints.push(ep.clone());
            if req.withdrawn {
                st.withdrawn.insert(req.container_id.clone());
            }
            Ok((ep, plan, net.subnet.prefix_len(), net.gateway))
        })?;
        let is_ep = |e: &Endpoint| e.container_id == ep.container_id && e.network == ep.network;
        let res = match netlink::attach_veth(ns, plan) {
            Ok(r) => r,
            Err(e) => {
                if let Err(e2) = self.with_state(|st| {
                    st.endpoints.retain(|x| !is_ep(x));
                    if !st
                        .endpoints
                        .iter()
                        .any(|x| x.container_id == ep.container_id)
                    {
                        st.withdrawn.remove(&ep.container_id);
                    }
                    Ok(())
                }) {
                    tracing::warn!(container = %req.container_name, "releasing the address of a failed attach: {e2}");
                }
                return Err(e);
            }
        };
        let mac = fmt_mac(res.mac);
        if res.ifname != ep.ifname || mac != ep.mac {
            self.with_state(|st| {
                let mut fixed = ep.clone();
                fixed.ifname = res.ifname.clone();
                fixed.mac = mac.clone();
                st.endpoints.retain(|x| !is_ep(x));
                st.endpoints.push(fixed);
                Ok(())
            })?;
        }
        tracing::debug!(container = %req.container_name, network = %req.network, ip = %ep.ip, "attached");
        Ok(Attachment {
            network: req.network.clone(),
            ifname: res.ifname,
            ip: ep.ip,
            prefix_len,
            mac,
            gateway,
            default_route: ep.gateway.is_some(),
        })
    }

    /// Removes the container's interface on `network` (all of them when `None`) and, when it
    /// leaves all networks, its published ports. Detaching twice is not an error.
    pub fn detach(&self, container_id: &str, network: Option<&str>) -> Result<(), Error> {
        self.with_state(|st| {
            let (gone, kept): (Vec<Endpoint>, Vec<Endpoint>) =
                st.endpoints.drain(..).partition(|e| {
                    e.container_id == container_id && network.is_none_or(|n| n == e.network)
                });
            st.endpoints = kept;
            if !st.endpoints.iter().any(|e| e.container_id == container_id) {
                st.withdrawn.remove(container_id);
                st.upstreams.remove(container_id);
            }
            let mut first_err = None;
            for e in &gone {
                if let Err(err) = netlink::delete_link(&e.host_ifname) {
                    first_err.get_or_insert(err);
                }
            }
            let gone_ips: BTreeSet<Ipv4Addr> = gone.iter().map(|e| e.ip).collect();
            let before = st.ports.len();
            st.ports
                .retain(|p| !(p.container_id == container_id && gone_ips.contains(&p.target_ip)));
            if st.ports.len() != before {
                self.release_unused_ports(st);
                self.apply_nft(st)?;
            }
            first_err.map_or(Ok(()), Err)
        })
    }

    fn release_unused_ports(&self, st: &state::State) {
        let live: BTreeSet<PortKey> = st
            .ports
            .iter()
            .map(|p| (p.host_ip, p.host_port, p.protocol))
            .chain(mesh_keys(st))
            .collect();
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
    }

    /// Publishes `ports` of an attached container. Replicas of one `service` may publish the
    /// same host port (connections are spread round robin); a port held by another service or
    /// by any other program on the machine is an [`Error::PortInUse`], and nothing of this call
    /// is kept then. Publishing a mapping the container already has is a no-op. Returns the
    /// bindings with ephemeral ports filled in.
    pub fn publish(
        &self,
        container_id: &str,
        service: Option<&str>,
        ports: &[PortMapping],
    ) -> Result<Vec<PortBinding>, Error> {
        self.with_state(|st| {
            let mine: Vec<&Endpoint> = st
                .endpoints
                .iter()
                .filter(|e| e.container_id == container_id)
                .collect();
            let target = mine
                .iter()
                .find(|e| st.networks.get(&e.network).is_some_and(|n| !n.internal))
                .or(mine.first())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "container {container_id} is not attached to any network"
                    ))
                })?;
            let target_ip = target.ip;
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let mut new_held: Vec<PortKey> = Vec::new();
            let mut added = Vec::new();
            let mut already = Vec::new();
            let mut result = Ok(());
            for m in ports {
                if m.container_port == 0 {
                    result = Err(Error::Invalid(
                        "container port 0 cannot be published".into(),
                    ));
                    break;
                }
                let mut host_port = m.host_port;
                // Publishing again what is already published (a re-run reconcile) is a no-op.
                if let Some(same) = st.ports.iter().find(|p| {
                    host_port != 0
                        && p.container_id == container_id
                        && p.host_ip == m.host_ip
                        && p.host_port == host_port
                        && p.protocol == m.protocol
                        && p.container_port == m.container_port
                }) {
                    already.push(same.clone());
                    continue;
                }
                if host_port != 0 {
                    let clash = st
                        .ports
                        .iter()
                        .chain(added.iter())
                        .find(|p: &&PortBinding| {
                            p.host_port == host_port
                                && p.protocol == m.protocol
                                && (p.host_ip.is_none()
                                    || m.host_ip.is_none()
                                    || p.host_ip == m.host_ip)
                        });
                    if let Some(c) = clash {
                        let same_group = match (service, &c.service) {
                            (Some(a), Some(b)) => a == b && c.host_ip == m.host_ip,
                            _ => false,
                        };
                        if !same_group || c.container_id == container_id {
                            let owner = st
                                .endpoints
                                .iter()
                                .find(|e| e.container_id == c.container_id)
                                .map_or(c.container_id.clone(), |e| e.container_name.clone());
                            result = Err(Error::PortInUse {
                                port: host_port,
                                protocol: m.protocol,
                                by: format!("published by container {owner}"),
                            });
                            break;
                        }
                    }
                }
                let key = (m.host_ip, host_port, m.protocol);
                if host_port == 0 || !held.contains_key(&key) {
                    match hold(m.host_ip, host_port, m.protocol) {
                        Ok((h, port)) => {
                            host_port = port;
                            let key = (m.host_ip, port, m.protocol);
                            held.insert(key, h);
                            new_held.push(key);
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                added.push(PortBinding {
                    container_id: container_id.to_owned(),
                    service: service.map(str::to_owned),
                    host_ip: m.host_ip,
                    host_port,
                    container_port: m.container_port,
                    protocol: m.protocol,
                    target_ip,
                });
            }
            if result.is_ok() {
                st.ports.extend(added.iter().cloned());
                // A withdrawn container's ports are not in the ruleset yet: nothing to rewrite
                // (this keeps the start of many replicas to one nft run each).
                if !st.withdrawn.contains(container_id) {
                    result = self.apply_nft(st);
                }
                if result.is_err() {
                    st.ports.truncate(st.ports.len() - added.len());
                }
            }
            if let Err(e) = result {
                for k in new_held {
                    held.remove(&k);
                }
                return Err(e);
            }
            already.extend(added);
            Ok(already)
        })
    }

    /// Removes every published port of the container.
    pub fn unpublish(&self, container_id: &str) -> Result<(), Error> {
        self.with_state(|st| {
            let before = st.ports.len();
            st.ports.retain(|p| p.container_id != container_id);
            if st.ports.len() == before {
                return Ok(());
            }
            self.release_unused_ports(st);
            self.apply_nft(st)
        })
    }

    /// Puts an attached container into service (its service name and aliases resolve, its
    /// published ports take connections) or withdraws it. Returns whether anything changed; a
    /// container without endpoints is left alone (`false`). The DNS table and the port map are
    /// updated before this returns, so a caller that withdraws a replica and then stops it
    /// sends no new connection to the dying container.
    pub fn set_serving(&self, container_id: &str, serving: bool) -> Result<bool, Error> {
        if self.is_serving(container_id)? == Some(serving) {
            return Ok(false);
        }
        self.with_state(|st| {
            if !st.endpoints.iter().any(|e| e.container_id == container_id) {
                return Ok(false);
            }
            let changed = if serving {
                st.withdrawn.remove(container_id)
            } else {
                st.withdrawn.insert(container_id.to_owned())
            };
            if changed
                && st.ports.iter().any(|p| p.container_id == container_id)
                && let Err(e) = self.apply_nft(st)
            {
                // Keep the state what the kernel has.
                if serving {
                    st.withdrawn.insert(container_id.to_owned());
                } else {
                    st.withdrawn.remove(container_id);
                }
                return Err(e);
            }
            tracing::debug!(container = container_id, serving, changed, "serving");
            Ok(changed)
        })
    }

    /// Whether the container serves (`None`: not attached). Reads the state without the lock.
    pub fn is_serving(&self, container_id: &str) -> Result<Option<bool>, Error> {
        self.store.read(|st, _| {
            st.endpoints
                .iter()
                .any(|e| e.container_id == container_id)
                .then(|| !st.withdrawn.contains(container_id))
        })
    }

    /// Where the resolver forwards the queries of container `container_id` that are not for
    /// the stack's names (docker's embedded DNS forwarding to `--dns` servers), port 53 each.
    /// The container must be attached already; its record goes when it leaves its last
    /// network.
    pub fn set_upstreams(
        &self,
        container_id: &str,
        servers: &[std::net::IpAddr],
    ) -> Result<(), Error> {
        self.with_state(|st| {
            if !st.endpoints.iter().any(|e| e.container_id == container_id) {
                return Err(Error::Invalid(format!(
                    "container {container_id} is not attached to any network"
                )));
            }
            let ups: Vec<SocketAddr> = servers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect();
            if ups.is_empty() {
                st.upstreams.remove(container_id);
            } else {
                st.upstreams.insert(container_id.to_owned(), ups);
            }
            Ok(())
        })
    }

    /// Makes network `name` reach its containers on other nodes, exactly `overlay`'s (`None`:
    /// none): the VXLAN device exists while there is one, its forwarding and neighbour entries
    /// are those containers' (entries of containers gone are removed), and the resolver answers
    /// their names. Returns whether anything changed.
    pub fn set_remote(&self, name: &str, overlay: Option<Overlay>) -> Result<bool, Error> {
        self.with_state(|st| {
            let net = st
                .networks
                .get(name)
                .cloned()
                .ok_or_else(|| Error::NotFound(name.to_owned()))?;
            let want = overlay
                .filter(|o| !o.endpoints.is_empty())
                .map(|o| state::RemoteNet {
                    vni: o.vni,
                    local: o.local,
                    port: o.port,
                    endpoints: o.endpoints,
                });
            let had = st.remote.get(name).cloned();
            if want == had {
                return Ok(false);
            }
            match (&want, &had) {
                (None, _) => {
                    netlink::delete_link(&self.vxlan_of(&net.bridge))?;
                    st.remote.remove(name);
                }
                (Some(w), Some(h)) if (w.vni, w.local, w.port) == (h.vni, h.local, h.port) => {
                    let old = h.endpoints.clone();
                    st.remote.insert(name.to_owned(), w.clone());
                    self.program_remote(&net, w, &old)?;
                }
                (Some(w), _) => {
                    // A device with other parameters cannot be changed in place.
                    netlink::delete_link(&self.vxlan_of(&net.bridge))?;
                    st.remote.insert(name.to_owned(), w.clone());
                    self.program_remote(&net, w, &[])?;
                }
            }
            tracing::debug!(
                network = name,
                remote = st.remote.get(name).map_or(0, |r| r.endpoints.len()),
                "overlay programmed"
            );
            Ok(true)
        })
    }

    /// Makes this node answer the routing mesh's ports as `mesh` says (`None`: not in a
    /// cluster's overlay, or leaving it): each
    /// port served elsewhere is held here, and while no local replica serves it, new
    /// connections go to the other nodes that do, leaving with this node's underlay address so the answers come back through
    /// it. Forwarding through the uplink is turned on if it was off while any published port
    /// is reachable through it, and then limited to translated connections and the
    /// containers' replies; it is turned off again after the last. A port
    /// another program holds here is left out with a warning. Returns whether anything changed.
    pub fn set_mesh(&self, mesh: Option<Mesh>) -> Result<bool, Error> {
        self.with_state(|st| {
            let Some(m) = mesh else {
                let Some(old) = st.mesh.take() else {
                    return Ok(false);
                };
                if old.enabled_forwarding {
                    netlink::set_forwarding(&old.uplink, false)?;
                }
                self.release_unused_ports(st);
                self.apply_nft(st)?;
                return Ok(true);
            };
            let uplink = match &st.mesh {
                Some(old) if netlink::iface_with_addr(m.local)?.as_deref() == Some(&old.uplink) => {
                    (old.uplink.clone(), old.enabled_forwarding)
                }
                _ => {
                    if let Some(old) = st.mesh.take()
                        && old.enabled_forwarding
                    {
                        netlink::set_forwarding(&old.uplink, false)?;
                    }
                    let name = netlink::iface_with_addr(m.local)?.ok_or_else(|| {
                        Error::Invalid(format!(
                            "no interface holds the underlay address {}",
                            m.local
                        ))
                    })?;
                    // Whether it must forward is decided with the ruleset (`sync_uplink`).
                    (name, false)
                }
            };
            let mut ports = Vec::new();
            {
                let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                for p in m.ports {
                    let key = (None, p.port, p.protocol);
                    // A port served only here is held by its replicas' publish.
                    if !p.to.is_empty() && !held.contains_key(&key) {
                        match hold(None, p.port, p.protocol) {
                            Ok((h, _)) => {
                                held.insert(key, h);
                            }
                            Err(e) => {
                                tracing::warn!("routing mesh: port {}/{}: {e}", p.port, p.protocol);
                                continue;
                            }
                        }
                    }
                    ports.push(p);
                }
            }
            let want = state::MeshState {
                uplink: uplink.0,
                enabled_forwarding: uplink.1,
                ports,
            };
            if st.mesh.as_ref() == Some(&want) {
                return Ok(false);
            }
            st.mesh = Some(want);
            self.release_unused_ports(st);
            self.apply_nft(st)?;
            Ok(true)
        })
    }

    /// Creates the VXLAN device of `net` if needed and moves its entries from `old`'s to `r`'s.
    fn program_remote(
        &self,
        net: &NetworkRecord,
        r: &state::RemoteNet,
        old: &[RemoteEndpoint],
    ) -> Result<(), Error> {
        let dev = self.vxlan_of(&net.bridge);
        netlink::ensure_vxlan(netlink::VxlanPlan {
            name: dev.clone(),
            bridge: net.bridge.clone(),
            vni: r.vni,
            local: r.local,
            port: r.port,
            mtu: net.mtu.unwrap_or(1500 - VXLAN_OVERHEAD),
        })?;
        let entry = |e: &RemoteEndpoint| netlink::OverlayEntry {
            ip: e.ip,
            underlay: e.underlay,
        };
        let new: BTreeSet<netlink::OverlayEntry> = r.endpoints.iter().map(entry).collect();
        let was: BTreeSet<netlink::OverlayEntry> = old.iter().map(entry).collect();
        let add: Vec<_> = new.difference(&was).copied().collect();
        let del: Vec<_> = was.difference(&new).copied().collect();
        // An address that moved to another node is re-added (replace) after its old entry goes.
        netlink::program_overlay(&dev, add, del)
    }

    /// The resolv.conf a container on `networks` should get: the resolver on the gateway of the
    /// first network when DNS runs, else the host's non-loopback nameservers.
    pub fn resolv_conf(&self, networks: &[&str]) -> Result<String, Error> {
        self.resolv_conf_with(networks, &ResolvSettings::default())
    }

    /// [`resolv_conf`](Self::resolv_conf) with the container's own settings: search domains
    /// and options replace the host's; with the resolver running, nameservers stay the
    /// resolver (which forwards to the container's own, see [`set_upstreams`](Self::set_upstreams))
    /// so that the stack's names keep resolving; without it they replace the host's.
    pub fn resolv_conf_with(
        &self,
        networks: &[&str],
        own: &ResolvSettings,
    ) -> Result<String, Error> {
        let st = self.snapshot()?;
        if self.dns.is_some()
            && let Some(n) = networks.iter().find_map(|n| st.networks.get(*n))
        {
            let mut out = format!("nameserver {}\n", n.gateway);
            if !own.search.is_empty() {
                out.push_str(&format!("search {}\n", own.search.join(" ")));
            }
            // The stack's names are single labels: ndots:0 sends them as they are, unless the
            // container chose its own ndots (docker's rule for its embedded resolver).
            let mut options = own.options.clone();
            if !options.iter().any(|o| o.starts_with("ndots:")) {
                options.push("ndots:0".into());
            }
            out.push_str(&format!("options {}\n", options.join(" ")));
            return Ok(out);
        }
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Ok(resolv_from_host(
            &host,
            &own.nameservers,
            &own.search,
            &own.options,
            false,
        ))
    }

    /// Writes [`resolv_conf`](Self::resolv_conf) for container `name` to
    /// `<data_dir>/network/resolv/<name>.conf` and returns the path, for the caller to bind-mount
    /// at `/etc/resolv.conf`.
    pub fn write_resolv_conf(&self, name: &str, networks: &[&str]) -> Result<PathBuf, Error> {
        self.write_resolv_conf_with(name, networks, &ResolvSettings::default())
    }

    /// [`write_resolv_conf`](Self::write_resolv_conf) with the container's own settings (see
    /// [`resolv_conf_with`](Self::resolv_conf_with)).
    pub fn write_resolv_conf_with(
        &self,
        name: &str,
        networks: &[&str],
        own: &ResolvSettings,
    ) -> Result<PathBuf, Error> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::Invalid(format!("invalid container name {name:?}")));
        }
        let dir = self.opts.data_dir.join("network").join("resolv");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        let path = dir.join(format!("{name}.conf"));
        // Bind-mounted at /etc/resolv.conf, where non-root users read it.
        crate::datadir::write_shared_file(&path, self.resolv_conf_with(networks, own)?.as_bytes())
            .map_err(|e| Error::Io {
                what: format!("writing {}", path.display()),
                source: e,
            })?;
        Ok(path)
    }

    /// Deletes the file [`write_resolv_conf`](Self::write_resolv_conf) wrote for container
    /// `name` (called when the container is removed; a missing file is fine).
    pub fn remove_resolv_conf(&self, name: &str) -> Result<(), Error> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Ok(());
        }
        let path = self
            .opts
            .data_dir
            .join("network")
            .join("resolv")
            .join(format!("{name}.conf"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                what: format!("removing {}", path.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Removes everything this instance owns: endpoints (host veth ends), published ports,
    /// bridges, the nft table, resolver listeners and the state file's contents.
    pub fn destroy(&self) -> Result<(), Error> {
        self.with_state(|st| {
            let mut first_err = None;
            for e in st.endpoints.drain(..) {
                if let Err(err) = netlink::delete_link(&e.host_ifname) {
                    first_err.get_or_insert(err);
                }
            }
            st.ports.clear();
            st.withdrawn.clear();
            st.upstreams.clear();
            self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
            st.remote.clear();
            if let Some(m) = st.mesh.take()
                && m.enabled_forwarding
                && let Err(err) = netlink::set_forwarding(&m.uplink, false)
            {
                first_err.get_or_insert(err);
            }
            for (_, n) in std::mem::take(&mut st.networks) {
                if let Err(err) = netlink::delete_link(&self.vxlan_of(&n.bridge)) {
                    first_err.get_or_insert(err);
                }
                if let Err(err) = netlink::delete_link(&n.bridge) {
                    first_err.get_or_insert(err);
                }
            }
            if let Err(err) = nft::uninstall(&self.opts.nft_table) {
                first_err.get_or_insert(err);
            }
            first_err.map_or(Ok(()), Err)
        })
    }
}

/// The host ports the routing mesh holds.
fn mesh_keys(st: &state::State) -> impl Iterator<Item = PortKey> + '_ {
    st.mesh
        .iter()
        .flat_map(|m| m.ports.iter().filter(|p| !p.to.is_empty()))
        .map(|p| (None, p.port, p.protocol))
}

/// Binds the host port so no other program can take it while published, and so a taken port is
/// reported now. Port 0 picks a free one.
fn hold(host_ip: Option<Ipv4Addr>, port: u16, protocol: Protocol) -> Result<(Held, u16), Error> {
    let addr = SocketAddr::from((host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port));
    let res = match protocol {
        Protocol::Tcp => {
            TcpListener::bind(addr).and_then(|l| Ok((l.local_addr()?.port(), Held::Tcp(l))))
        }
        Protocol::Udp => {
            UdpSocket::bind(addr).and_then(|s| Ok((s.local_addr()?.port(), Held::Udp(s))))
        }
    };
    match res {
        Ok((p, h)) => Ok((h, p)),
        Err(e) => Err(Error::PortInUse {
            port,
            protocol,
            by: if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("another program on this machine is bound to {addr}")
            } else {
                format!("cannot bind {addr}: {e}")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let mut o = NetworkOptions::new("/tmp/x");
        o.dns = None;
        assert!(o.validate().is_ok());
        o.bridge_prefix = "toolongx".into();
        assert!(matches!(o.validate(), Err(Error::Invalid(m)) if m.contains("1-6")));
        o.bridge_prefix = "dc".into();
        o.nft_table = "a b".into();
        assert!(o.validate().is_err());
        o.nft_table = "t".into();
        o.pools[0].size = 8;
        assert!(o.validate().is_err());
        o.pools.clear();
        assert!(o.validate().is_err());
    }

    #[test]
    fn port_ranges_expand() {
        let m = PortMapping::expand(None, Some("8000-8001"), (80, 81), Protocol::Tcp).unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.host_port, m.container_port))
                .collect::<Vec<_>>(),
            vec![(8000, 80), (8001, 81)]
        );
        let m = PortMapping::expand(None, None, (53, 53), Protocol::Udp).unwrap();
        assert_eq!((m[0].host_port, m[0].container_port), (0, 53));
        assert!(PortMapping::expand(None, Some("8000-8002"), (80, 81), Protocol::Tcp).is_err());
        assert!(PortMapping::expand(None, Some("x"), (80, 80), Protocol::Tcp).is_err());
    }

    #[test]
    fn link_names_are_recognised_by_prefix_shape() {
        let mut o = NetworkOptions::new("/tmp/x");
        o.dns = None;
        o.bridge_prefix = "dt".into();
        let dir = tempfile::tempdir().unwrap();
        let m = NetworkManager {
            store: state::Store::open(dir.path()).unwrap(),
            opts: o,
            held: Mutex::default(),
            dns: None,
            dns_seq: Mutex::new(0),
        };
        assert!(matches!(m.link_kind("dt0"), Some(LinkKind::Bridge)));
        assert!(matches!(m.link_kind("dtv0123abcd"), Some(LinkKind::Veth)));
        assert!(matches!(m.link_kind("dtp0123abcd"), Some(LinkKind::Peer)));
        // A network's VXLAN device carries its bridge's number.
        assert!(matches!(m.link_kind("dt0x"), Some(LinkKind::Vxlan)));
        assert_eq!(m.vxlan_of("dt12"), "dt12x");
        // Another instance's bridge (prefix `dtx`) is not ours.
        assert!(m.link_kind("dtx0").is_none());
        assert!(m.link_kind("dtx").is_none());
        assert!(m.link_kind("dt").is_none());
        assert!(m.link_kind("eth0").is_none());
    }
}
