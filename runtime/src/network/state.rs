//! What one dcpp instance knows about its networks, persisted as `<data_dir>/network/state.json`.
//!
//! Every mutation happens under an exclusive `flock` on `<data_dir>/network/lock` and re-reads the
//! file first, so the daemon and a `dcpp network rm` running beside it never lose each other's
//! changes, and a restarted daemon finds every address it handed out (no duplicates).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::Error;
use super::ipam::{AddressPool, AddressRange, Ipv4Net};
use crate::commit::{Backing, GroupCommit};

/// A network (one Linux bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Name as given by the caller (`<project>_<key>` for compose networks).
    pub name: String,
    /// 12 hex characters, stable for the network's life.
    pub id: String,
    /// Bridge interface name (`<prefix><n>`).
    pub bridge: String,
    /// Subnet; the bridge holds its first address.
    pub subnet: Ipv4Net,
    /// Bridge address, default route and DNS server of the containers.
    pub gateway: Ipv4Addr,
    /// Where container addresses come from (compose `ip_range`); the whole subnet without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Net>,
    /// Addresses never given to a container (compose `aux_addresses`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Ipv4Addr>,
    /// No route out of the machine and no forwarding to other networks.
    pub internal: bool,
    /// Free-form labels (compose project, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: u64,
    /// MTU of the containers' interfaces, lower than the host's when the network may span
    /// nodes (a VXLAN frame carries 50 bytes of headers); the kernel's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl NetworkRecord {
    /// What container addresses are picked from.
    pub fn range(&self) -> AddressRange<'_> {
        AddressRange {
            subnet: self.subnet,
            ip_range: self.ip_range,
            gateway: self.gateway,
            reserved: &self.reserved,
        }
    }
}

/// The containers of a network that run on other nodes, reached through the network's VXLAN
/// device: what the overlay's forwarding and neighbour entries and the resolver hold for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteNet {
    /// VXLAN network identifier, the same on every node.
    pub vni: u32,
    /// This node's underlay address (the source of its VXLAN packets).
    pub local: Ipv4Addr,
    /// UDP port of the overlay.
    pub port: u16,
    /// The remote containers, by address.
    pub endpoints: Vec<RemoteEndpoint>,
}

/// One container on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    /// Its address on the network.
    pub ip: Ipv4Addr,
    /// The underlay address of its node.
    pub underlay: Ipv4Addr,
    /// Container name (resolvable).
    pub name: String,
    /// Compose service: the name resolves to it while it serves.
    pub service: Option<String>,
    /// Extra names on this network, while it serves.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Running (and healthy, when it has a healthcheck) and not being stopped.
    pub serving: bool,
}

/// One container's interface on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Container id.
    pub container_id: String,
    /// Container name (resolvable).
    pub container_name: String,
    /// Compose service (resolvable to all its replicas).
    pub service: Option<String>,
    /// Network name.
    pub network: String,
    /// Extra names on this network.
    pub aliases: Vec<String>,
    /// Address.
    pub ip: Ipv4Addr,
    /// MAC address of the container end, `aa:bb:…`.
    pub mac: String,
    /// Interface name inside the container (`eth0`, `eth1`, …).
    pub ifname: String,
    /// Host end of the veth pair.
    pub host_ifname: String,
    /// Default route of the container, if this network carries it.
    pub gateway: Option<Ipv4Addr>,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(Error::Invalid(format!(
                "unsupported port protocol {s:?}: use tcp or udp"
            ))),
        }
    }
}

/// A host port forwarded to one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// Container id.
    pub container_id: String,
    /// Replicas of the same service may share a host port; anyone else gets an error.
    pub service: Option<String>,
    /// Host address; all of the host's addresses when unset.
    pub host_ip: Option<Ipv4Addr>,
    /// Host port.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Container address the traffic goes to.
    pub target_ip: Ipv4Addr,
}

/// The instance's naming and policy, saved so that `dcpp network …` run beside (or after) the
/// daemon acts on the same bridges and nft table with the same masquerade setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Interface name prefix.
    pub bridge_prefix: String,
    /// Address pools, each with its block size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<AddressPool>,
    /// The one pool of a state written by an older dcpp (cut into `subnet_len` blocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_len: Option<u8>,
    /// nftables table.
    pub nft_table: String,
    /// Outbound masquerade.
    pub masquerade: bool,
}

impl Settings {
    /// The pools, also of a state an older dcpp wrote (one pool of /24s by default).
    pub fn pools(&self) -> Vec<AddressPool> {
        match (self.pools.is_empty(), self.pool) {
            (false, _) => self.pools.clone(),
            (true, None) => super::ipam::default_pools(),
            (true, Some(base)) => vec![AddressPool {
                base,
                size: self.subnet_len.unwrap_or(24),
            }],
        }
    }
}

/// The whole persisted state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Settings of the instance that last wrote the state.
    #[serde(default)]
    pub settings: Option<Settings>,
    /// Networks by name.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Every attached interface.
    pub endpoints: Vec<Endpoint>,
    /// Every published port.
    pub ports: Vec<PortBinding>,
    /// Containers (ids) that are attached but not serving: their service name and aliases do
    /// not resolve and their published ports take no new connections. A replica is withdrawn
    /// before it is stopped and until it runs (and is healthy, when it has a healthcheck), so
    /// no connection is sent to a container that is starting, dying or unhealthy.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub withdrawn: BTreeSet<String>,
    /// Containers (ids) with nameservers of their own (compose's `dns:`): the resolver answers
    /// their stack names itself and forwards their other queries there, not to the host's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, Vec<std::net::SocketAddr>>,
    /// Networks that span nodes, by name: their containers elsewhere, as last programmed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote: BTreeMap<String, RemoteNet>,
    /// The routing mesh as last programmed (see `NetworkManager::set_mesh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshState>,
}

/// What this node forwards for the routing mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshState {
    /// Interface holding the node's underlay address.
    pub uplink: String,
    /// dcpp turned forwarding on for the uplink (and turns it off with the mesh).
    pub enabled_forwarding: bool,
    pub ports: Vec<MeshForward>,
}

/// One port of the mesh: where new connections go while no local replica serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshForward {
    pub port: u16,
    pub protocol: Protocol,
    /// Other nodes' underlay addresses, one entry per serving replica there.
    pub to: Vec<Ipv4Addr>,
}

/// The state directory of one instance.
pub struct Store {
    dir: PathBuf,
    /// Updates of this process's threads go out in batches (see [`GroupCommit`]).
    commit: GroupCommit<State, Flock<File>>,
    /// The state as last read or written by this process, with the file it came from (kept
    /// open, so its inode cannot be reused while we compare against it): a reader finding
    /// that file still in place skips parsing it.
    cache: Mutex<Option<Cached>>,
}

struct Cached {
    _file: File,
    id: (u64, u64),
    /// Bumped with every state the cache takes.
    seq: u64,
    state: State,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// `<data_dir>/network`, created if missing.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("network");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        Ok(Store {
            dir,
            commit: GroupCommit::new(),
            cache: Mutex::new(None),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Takes the inter-process lock; released when the guard drops.
    pub fn lock(&self) -> Result<Flock<File>, Error> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Io {
                what: format!("opening {}", path.display()),
                source: e,
            })?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
            what: format!("locking {}", path.display()),
            source: e.into(),
        })
    }

    /// Reads the state; a missing file is an empty state.
    pub fn load(&self) -> Result<State, Error> {
        self.read(|st, _| st.clone())
    }

    /// Runs `f` on the current state (as [`load`](Self::load) reads it) without copying it,
    /// with a number that changes whenever the state this process knows does. Readers of
    /// this process wait for each other while `f` runs: keep it short.
    pub fn read<T>(&self, f: impl FnOnce(&State, u64) -> T) -> Result<T, Error> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(f(&State::default(), 0));
            }
            Err(e) => {
                return Err(Error::Io {
                    what: format!("reading {}", path.display()),
                    source: e,
                });
            }
        };
        let io = |e| Error::Io {
            what: format!("reading {}", path.display()),
            source: e,
        };
        let id = file_id(&file).map_err(io)?;
        let mut cache = self.cached();
        if let Some(c) = cache.as_ref().filter(|c| c.id == id) {
            return Ok(f(&c.state, c.seq));
        }
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut b).map_err(io)?;
        let state: State = serde_json::from_slice(&b)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
        let seq = cache.as_ref().map_or(1, |c| c.seq + 1);
        let c = cache.insert(Cached {
            _file: file,
            id,
            seq,
            state,
        });
        Ok(f(&c.state, c.seq))
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self, state: &State) -> Result<(), Error> {
        use std::io::Write;
        let path = self.path();
        let tmp = self.dir.join("state.json.tmp");
        let data = serde_json::to_vec(state).map_err(|e| Error::Corrupt(e.to_string()))?;
        let io = |what: &str| {
            let what = format!("{what} {}", tmp.display());
            move |e| Error::Io { what, source: e }
        };
        let mut f = File::create(&tmp).map_err(io("creating"))?;
        f.write_all(&data).map_err(io("writing"))?;
        f.sync_all().map_err(io("syncing"))?;
        let id = file_id(&f).map_err(io("reading"))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::Io {
            what: format!("renaming to {}", path.display()),
            source: e,
        })?;
        let mut cache = self.cached();
        let seq = cache.as_ref().map_or(1, |c| c.seq + 1);
        *cache = Some(Cached {
            _file: f,
            id,
            seq,
            state: state.clone(),
        });
        Ok(())
    }

    /// Runs `f` on the current state under the inter-process lock and returns once what it
    /// changed is on disk; concurrent updates of this process share one write (see
    /// [`GroupCommit`]). The state is written whatever `f` returns.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, Error> {
        self.commit.update(self, f)
    }
}

fn file_id(f: &File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

impl Backing<State> for Store {
    type Lock = Flock<File>;
    type Error = Error;
    fn lock(&self) -> Result<Flock<File>, Error> {
        Store::lock(self)
    }
    fn load(&self) -> Result<State, Error> {
        Store::load(self)
    }
    fn write(&self, state: &State) -> Result<(), Error> {
        self.save(state)
    }
    fn batch_failed(&self, msg: &str) -> Error {
        Error::Io {
            what: format!("writing {} with other updates", self.path().display()),
            source: std::io::Error::other(msg.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_written_by_an_older_dcpp_keeps_its_24s_and_its_pool() {
        // As dcpp wrote it before networks had own addressing and several pools.
        let old = r#"{
            "settings": {"bridge_prefix": "dcpp", "pool": "10.210.0.0/16", "subnet_len": 24,
                         "nft_table": "dcpp", "masquerade": true},
            "networks": {"s_default": {"name": "s_default", "id": "0123456789ab",
                "bridge": "dcpp0", "subnet": "10.210.0.0/24", "gateway": "10.210.0.1",
                "internal": false, "created": 1}},
            "endpoints": [], "ports": []
        }"#;
        let st: State = serde_json::from_str(old).unwrap();
        let s = st.settings.unwrap();
        assert_eq!(
            super::super::ipam::pools_string(&s.pools()),
            "10.210.0.0/16/24"
        );
        let n = &st.networks["s_default"];
        assert_eq!(n.subnet.to_string(), "10.210.0.0/24");
        let r = n.range();
        assert_eq!(
            r.pick("s_default", &BTreeSet::new()).unwrap(),
            Ipv4Addr::new(10, 210, 0, 2)
        );
        // A state without settings opens with the default pools.
        let none = Settings {
            pools: vec![],
            pool: None,
            subnet_len: None,
            ..s
        };
        assert_eq!(
            super::super::ipam::pools_string(&none.pools()),
            super::super::ipam::DEFAULT_POOLS
        );
    }
}
