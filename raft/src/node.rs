//! A running cluster member: the Raft instance, its store and the operations the HTTP API and
//! the daemon call. Writes and linearizable reads that reach a follower are forwarded to the
//! leader over the authenticated HTTP API.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::Client;
use crate::api::FORWARDED_HEADER;
use crate::network::{Faults, Transport};
use crate::pki::{self, CertRole, SealKey, Validity};
use crate::scope::ScopeRef;
use crate::store::{self, LogStore, StoreReader};
use crate::tls::{LocalTls, NodeTls};
use crate::types::{
    ClusterSecrets, ClusterStatus, Event, JoinTokens, Kind, Member, Object, Op, Request, Role,
    Sealed, Txn, TxnResponse, WhoAmI, WorkerEntry,
};
use crate::worker::Remote;
use crate::{Error, NodeId, Raft};

/// Tuning and identity of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory for `raft.redb`.
    pub data_dir: PathBuf,
    /// `host:port` other members use to reach this node.
    pub advertise: String,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (lagging followers catch up from them instead
    /// of a snapshot).
    pub keep_logs: u64,
    /// Revisions of change history kept for watchers.
    pub history_limit: u64,
    /// How long a request waits for a leader to appear before failing with `NoLeader`.
    pub leader_wait: Duration,
    /// The kind whose object with a member's decimal id describes that member (written by the
    /// application): it is deleted together with the member, and a node holding only such
    /// objects still counts as empty when it joins a cluster.
    pub member_kind: Option<Kind>,
    /// Validity of the node certificates this node's cluster issues (set by the node that
    /// creates the cluster; renewed when a third of it is left).
    pub cert_ttl: Duration,
    /// What a worker's certificate may read and write (none without).
    pub worker_scope: Option<ScopeRef>,
    /// How long the old root stays trusted after a rotation of the cluster's root (every node
    /// that is up moves to the new root within seconds; one that is down longer must rejoin).
    pub ca_rotation_grace: Duration,
}

impl NodeConfig {
    /// Production defaults. openraft makes a follower wait out the leader lease
    /// (`election_max_ms`) plus a random election timeout after the last heartbeat, so a dead
    /// leader is replaced after roughly 0.9–1.2 s plus one election round.
    pub fn new(data_dir: impl Into<PathBuf>, advertise: impl Into<String>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            advertise: advertise.into(),
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 5000,
            keep_logs: 1000,
            history_limit: 100_000,
            leader_wait: Duration::from_secs(5),
            member_kind: None,
            cert_ttl: DEFAULT_CERT_TTL,
            worker_scope: None,
            ca_rotation_grace: Duration::from_secs(600),
        }
    }

    /// Short timers for in-process test clusters.
    pub fn fast(data_dir: impl Into<PathBuf>, advertise: impl Into<String>) -> NodeConfig {
        NodeConfig {
            heartbeat_ms: 50,
            election_min_ms: 200,
            election_max_ms: 400,
            ..NodeConfig::new(data_dir, advertise)
        }
    }
}

/// Swarm's default for node certificates.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(90 * 86400);

/// Sent by a joining node: the secret of its join token, the id it will have, and a request
/// for a certificate of its own key (hex of the DER).
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    #[serde(default)]
    pub node_id: NodeId,
    #[serde(default)]
    pub csr: String,
}

// Written by hand so that a `{:?}` in a log line can never print a join token.
impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Returned to a joining node that presented a valid token: its certificate, the roots, and
/// for a manager the key that opens the sealed cluster secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    pub cluster_id: String,
    pub role: Role,
    pub cert_pem: String,
    pub ca_certs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<String>,
    /// The managers' addresses (a worker talks to them, never to the log).
    #[serde(default)]
    pub managers: Vec<String>,
}

/// A client certificate for remote administration, as `DCPP_CERT_PATH` holds it.
#[derive(Clone, Serialize, Deserialize)]
pub struct AdminCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AdminCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCert").finish_non_exhaustive()
    }
}

/// A certificate request of a member renewing its certificate (hex of the DER).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr: String,
}

/// The renewed certificate, and for a node that became a manager the seal key.
#[derive(Clone, Serialize, Deserialize)]
pub struct RenewGrant {
    pub cert_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<String>,
}

/// Asks the leader to promote or demote a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetRole {
    pub id: NodeId,
    pub role: Role,
}

/// Asks the leader for a new join secret of one role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateToken {
    pub role: Role,
}

/// Asks the leader to revoke the admin certificates of one name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeAdmin {
    pub name: String,
}

/// Asks the leader to make a node a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddMember {
    pub id: NodeId,
    pub address: String,
    pub role: Role,
    pub hostname: String,
}

/// Asks the leader to remove a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveMember {
    pub id: NodeId,
}

const LOCAL_NODE_ID: &str = "node_id";
const LOCAL_TLS: &str = "tls";
/// On a worker: the managers it talks to (it has no membership of its own to look them up).
const LOCAL_MANAGERS: &str = "managers";
/// How long a manager goes without a leader before it asks its peers whether it was demoted.
const LEADERLESS_CHECK: Duration = Duration::from_secs(2);
/// The seal key's file, apart from the store that holds what it seals.
const SEAL_KEY_FILE: &str = "seal.key";

/// A cluster member. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    cfg: NodeConfig,
    tls: Arc<NodeTls>,
    faults: Arc<Faults>,
    log: LogStore,
    reader: StoreReader,
    raft: RwLock<Raft>,
    /// Serializes membership changes of this node (join/leave/bootstrap).
    membership_lock: Mutex<()>,
    /// Set on a worker: the managers it reads and writes through.
    remote: RwLock<Option<Arc<Remote>>>,
    /// Since when this raft member has seen no leader (for [`Node::check_demoted`]).
    leaderless_since: std::sync::Mutex<Option<Instant>>,
    /// A demoted manager is wiping its copy of the log: reads go to the managers even though
    /// the stopped raft still counts this node a voter (its agent must never see the empty
    /// store and take its containers for strays).
    wiping: std::sync::atomic::AtomicBool,
    /// Told how long each transaction this node proposed as leader took to commit and apply.
    commit_observer: std::sync::OnceLock<CommitObserver>,
}

/// Receives, on the leader, the time from proposing a transaction to its being applied
/// there (for a commit-latency metric; the crate keeps no metrics of its own).
pub type CommitObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Inside an [`Node::on_leader`] closure: the value of a raft write, or the early return
/// `on_leader` expects (forward to the leader, or fail).
macro_rules! step {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => return Err(Some(f)),
            Err(e) => return Ok(Err(raft_err(e))),
        }
    };
}

pub(crate) fn random_hex(bytes: usize) -> Result<String, Error> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn raft_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Raft(e.to_string())
}

impl Node {
    /// Opens the store under `cfg.data_dir` and starts Raft. A brand-new node is neither a
    /// cluster member nor a cluster of its own until [`Node::bootstrap`] or [`Node::join`].
    pub async fn open(cfg: NodeConfig) -> Result<Node, Error> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let path = cfg.data_dir.join("raft.redb");
        // A just-killed in-process instance may still hold the file for a moment.
        let mut tries = 0;
        let (log, _sm, reader) = loop {
            match store::open(&path, cfg.history_limit) {
                Ok(v) => break v,
                Err(e) if tries < 50 && e.to_string().contains("already open") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let id = match log.get_local::<NodeId>(LOCAL_NODE_ID)? {
            Some(id) => id,
            None => {
                let hex = random_hex(8)?;
                // Keep ids positive in JSON consumers that use i64 / f64.
                let id =
                    u64::from_str_radix(&hex, 16).map_err(|e| Error::Storage(e.to_string()))? >> 12;
                log.put_local(LOCAL_NODE_ID, &id)?;
                id
            }
        };
        let tls = Arc::new(NodeTls::default());
        if let Some(l) = log.get_local::<LocalTls>(LOCAL_TLS)? {
            tls.install(&l)?;
        }
        let faults = Arc::new(Faults::default());
        let remote = log
            .get_local::<Vec<String>>(LOCAL_MANAGERS)?
            .map(|m| Arc::new(Remote::new(m)));
        let raft = start_raft(id, &cfg, &tls, &faults, &log).await?;
        tracing::info!(node_id = id, advertise = %cfg.advertise, "raft node started");
        let node = Node {
            inner: Arc::new(Inner {
                id,
                cfg,
                tls,
                faults,
                log,
                reader,
                raft: RwLock::new(raft),
                membership_lock: Mutex::new(()),
                remote: RwLock::new(remote),
                leaderless_since: std::sync::Mutex::new(None),
                wiping: std::sync::atomic::AtomicBool::new(false),
                commit_observer: std::sync::OnceLock::new(),
            }),
        };
        tokio::spawn(renew_loop(Arc::downgrade(&node.inner)));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn advertise(&self) -> &str {
        &self.inner.cfg.advertise
    }

    /// The openraft handle (for metrics and tests).
    pub fn raft(&self) -> Raft {
        self.inner
            .raft
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reader(&self) -> &StoreReader {
        &self.inner.reader
    }

    pub(crate) fn tls(&self) -> &Arc<NodeTls> {
        &self.inner.tls
    }

    pub(crate) fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// Fault injection hook for tests (see [`Faults`]).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.inner.faults
    }

    /// Whether this node has never been part of any cluster (no credentials stored).
    pub fn is_pristine(&self) -> Result<bool, Error> {
        Ok(self.inner.log.get_local::<LocalTls>(LOCAL_TLS)?.is_none())
    }

    fn is_voter(&self) -> bool {
        let m = self.raft().metrics().borrow().membership_config.clone();
        m.membership().voter_ids().any(|v| v == self.inner.id)
    }

    /// On a worker (not a raft member, with managers to talk to): the way to them, and the
    /// client that presents this node's certificate.
    fn remote(&self) -> Option<(Arc<Remote>, reqwest::Client)> {
        let r = self
            .inner
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        // A worker being promoted keeps reading through the managers until it is a voter: by
        // then its log has caught up, so its agent never acts on a half-received store.
        if self.is_voter() && !self.inner.wiping.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let http = self.inner.tls.active()?.managers.clone();
        Some((r, http))
    }

    /// Whether this node is a worker: it holds no copy of the cluster's state.
    pub fn is_remote_worker(&self) -> bool {
        self.remote().is_some()
    }

    /// Makes this node a worker that talks to `managers` (or forgets them: `None`).
    fn set_remote(&self, managers: Option<Vec<String>>) -> Result<(), Error> {
        match &managers {
            Some(m) => self.inner.log.put_local(LOCAL_MANAGERS, m)?,
            None => self.inner.log.remove_local(LOCAL_MANAGERS)?,
        }
        *self.inner.remote.write().unwrap_or_else(|e| e.into_inner()) =
            managers.map(|m| Arc::new(Remote::new(m)));
        Ok(())
    }

    /// The addresses of the managers (raft voters) as this node's membership has them.
    fn manager_addresses(&self) -> Vec<String> {
        let m = self.raft().metrics().borrow().membership_config.clone();
        let mem = m.membership();
        mem.voter_ids()
            .filter_map(|v| mem.get_node(&v).map(|n| n.addr.clone()))
            .collect()
    }

    /// What a manager tells member `id` about itself (see [`WhoAmI`]).
    pub fn whoami(&self, id: NodeId) -> Result<WhoAmI, Error> {
        let s = self.inner.reader.secrets()?;
        Ok(WhoAmI {
            role: self.member_role(id),
            managers: self.manager_addresses(),
            ca_certs: s.as_ref().map(|s| s.ca_certs.clone()).unwrap_or_default(),
            chain: s.and_then(|s| s.cross_signed).into_iter().collect(),
        })
    }

    /// Makes a pristine node a one-node cluster with fresh credentials; on a node that already
    /// belongs to a cluster it only finishes an interrupted bootstrap. Idempotent.
    pub async fn bootstrap(&self) -> Result<(), Error> {
        let _g = self.inner.membership_lock.lock().await;
        let raft = self.raft();
        if !raft.is_initialized().await.map_err(raft_err)? {
            if !self.is_pristine()? {
                // Joined (or joining) another cluster: its leader will contact us.
                return Ok(());
            }
            let members = BTreeMap::from([(
                self.inner.id,
                BasicNode {
                    addr: self.inner.cfg.advertise.clone(),
                },
            )]);
            raft.initialize(members).await.map_err(raft_err)?;
            tracing::info!(
                node_id = self.inner.id,
                "bootstrapped a new one-node cluster"
            );
        }
        if !self.is_pristine()? {
            return Ok(());
        }
        // Either just initialized, or a previous bootstrap crashed before saving credentials,
        // or the store was written by a dcpp from before certificates (its secrets have no
        // root): make the cluster's root and this node's manager certificate.
        self.wait_leader(self.inner.cfg.leader_wait * 2).await?;
        let seal = match self.seal_key()? {
            Some(k) => k,
            None => {
                let k = SealKey::generate()?;
                self.save_seal_key(Some(&k))?;
                k
            }
        };
        let secrets = match self.inner.reader.secrets()? {
            Some(s) if !s.ca_certs.is_empty() => s,
            _ => {
                let cluster_id = random_hex(8)?;
                let ca = pki::Ca::generate(&cluster_id)?;
                let sealed = Sealed {
                    ca_key_pem: ca.key_pem(),
                    manager_secret: pki::random_secret()?,
                    worker_secret: pki::random_secret()?,
                };
                let s = ClusterSecrets {
                    cluster_id,
                    ca_certs: vec![ca.cert_pem().to_string()],
                    sealed: seal_json(&seal, &sealed)?,
                    cert_ttl_secs: self.inner.cfg.cert_ttl.as_secs().max(1),
                    revoked: Default::default(),
                    revoked_admins: Default::default(),
                    rotation_started: None,
                    cross_signed: None,
                };
                raft.client_write(Request::SetSecrets(s.clone()))
                    .await
                    .map_err(raft_err)?;
                s
            }
        };
        let (ca, _) = self.open_secrets(&secrets)?;
        let (cert_pem, key_pem) = ca.issue(
            CertRole::Manager,
            &self.inner.id.to_string(),
            &secrets.cluster_id,
            Validity::from_now(cert_ttl(&secrets)),
        )?;
        self.save_tls(Some(&LocalTls {
            cluster_id: secrets.cluster_id.clone(),
            ca_certs: secrets.ca_certs.clone(),
            cert_pem,
            key_pem,
            chain: secrets.cross_signed.iter().cloned().collect(),
        }))?;
        Ok(())
    }

    /// Stores (or, with `None`, forgets) this node's certificate and starts using it.
    fn save_tls(&self, l: Option<&LocalTls>) -> Result<(), Error> {
        match l {
            Some(l) => {
                self.inner.tls.install(l)?;
                self.inner.log.put_local(LOCAL_TLS, l)?;
            }
            None => {
                self.inner.log.remove_local(LOCAL_TLS)?;
                self.inner.tls.clear();
            }
        }
        Ok(())
    }

    fn seal_key_path(&self) -> PathBuf {
        self.inner.cfg.data_dir.join(SEAL_KEY_FILE)
    }

    /// The key that opens the sealed secrets; only managers have one.
    fn seal_key(&self) -> Result<Option<SealKey>, Error> {
        match std::fs::read_to_string(self.seal_key_path()) {
            Ok(s) => Ok(Some(SealKey::from_hex(&s)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn save_seal_key(&self, k: Option<&SealKey>) -> Result<(), Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.seal_key_path();
        let Some(k) = k else {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        };
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(k.to_hex().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The seal key a node of `role` is handed (with its certificate): managers only.
    fn seal_key_for(&self, role: Role) -> Result<Option<String>, Error> {
        Ok(match role {
            Role::Manager => self.seal_key()?.map(|k| k.to_hex()),
            Role::Worker => None,
        })
    }

    /// The root and the join secrets, opened with this node's seal key.
    fn open_secrets(&self, s: &ClusterSecrets) -> Result<(pki::Ca, Sealed), Error> {
        let key = self.seal_key()?.ok_or_else(|| {
            Error::Forbidden("this node is not a manager: it cannot open the cluster's root".into())
        })?;
        let sealed: Sealed = serde_json::from_slice(&key.open(&s.sealed)?)
            .map_err(|e| Error::Storage(format!("sealed secrets: {e}")))?;
        let root = s
            .ca_certs
            .first()
            .ok_or_else(|| Error::Conflict("the cluster has no root yet".into()))?;
        let ca = pki::Ca::from_pem(root, &sealed.ca_key_pem)?;
        Ok((ca, sealed))
    }

    /// Seals data only managers may read (the secrets of services), bound to `context` (the
    /// object and version it is stored as). Only a manager holds the key.
    pub fn seal_data(&self, context: &str, plain: &[u8]) -> Result<String, Error> {
        let key = self.seal_key()?.ok_or_else(|| {
            Error::Forbidden("this node is not a manager: it cannot seal secrets".into())
        })?;
        Ok(key.seal_for(context.as_bytes(), plain)?)
    }

    /// Opens what [`Node::seal_data`] sealed for `context` (on a manager only).
    pub fn open_data(&self, context: &str, sealed: &str) -> Result<Vec<u8>, Error> {
        let key = self.seal_key()?.ok_or_else(|| {
            Error::Forbidden("this node is not a manager: it cannot open secrets".into())
        })?;
        Ok(key.open_for(context.as_bytes(), sealed)?)
    }

    /// On a worker, `POST path` (a route an embedder added) on one of the managers with this
    /// node's certificate; `None` on a node that holds the store itself (it answers locally).
    pub async fn post_to_managers<B, T>(&self, path: &str, body: &B) -> Option<Result<T, Error>>
    where
        B: serde::Serialize + Sync,
        T: serde::de::DeserializeOwned,
    {
        let (r, http) = self.remote()?;
        Some(
            r.call(
                &http,
                true,
                |c| async move { c.post_route(path, body).await },
            )
            .await,
        )
    }

    fn cluster_secrets(&self) -> Result<ClusterSecrets, Error> {
        self.inner
            .reader
            .secrets()?
            .filter(|s| !s.ca_certs.is_empty())
            .ok_or_else(|| {
                Error::Conflict("this node has not received the cluster credentials yet".into())
            })
    }

    /// Issues a certificate from this manager's copy of the root: admin certificates (and,
    /// with any role and validity, certificates for tests).
    pub fn issue_cert(
        &self,
        role: CertRole,
        name: &str,
        validity: Validity,
    ) -> Result<AdminCert, Error> {
        let s = self.cluster_secrets()?;
        let (ca, _) = self.open_secrets(&s)?;
        let (cert_pem, key_pem) = ca.issue(role, name, &s.cluster_id, validity)?;
        Ok(AdminCert {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem,
            key_pem,
        })
    }

    /// Who this node's current certificate says it is (none before it belongs to a cluster).
    pub fn identity(&self) -> Option<pki::Identity> {
        self.inner.tls.active().map(|a| a.identity.clone())
    }

    /// Promotes a worker to a manager (raft voter: it receives the log first, as a learner) or
    /// demotes a manager to a worker (out of raft; it wipes its copy of the log when it notices,
    /// see [`Node::check_demoted`]). The node's certificate follows within seconds: it renews
    /// when its role no longer matches its membership, and until then counts for no more than
    /// the membership gives.
    pub async fn set_role(&self, r: SetRole, forwarded: bool) -> Result<(), Error> {
        let _: serde_json::Value = self
            .on_leader::<_, _, _>(
                forwarded,
                || {
                    let raft = self.raft();
                    let SetRole { id, role } = r.clone();
                    let registered = self.inner.reader.workers().map(|mut w| w.remove(&id));
                    let peers = self.inner.tls.active().map(|a| a.peers.clone());
                    async move {
                        let registered = match registered {
                            Ok(w) => w,
                            Err(e) => return Ok(Err(e)),
                        };
                        let m = raft.metrics().borrow().membership_config.clone();
                        let mem = m.membership();
                        let in_raft = mem.get_node(&id).cloned();
                        if in_raft.is_none() && registered.is_none() {
                            return Ok(Err(Error::NotFound {
                                kind: Kind::Node,
                                id: id.to_string(),
                            }));
                        }
                        let voter = mem.voter_ids().any(|v| v == id);
                        match (role, in_raft) {
                            (Role::Manager, in_raft) if !voter => {
                                // A worker has no log yet: it catches up as a learner first.
                                if let (None, Some(w)) = (in_raft, &registered) {
                                    let n = BasicNode {
                                        addr: w.address.clone(),
                                    };
                                    step!(raft.add_learner(id, n, true).await);
                                }
                                let ch = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                                step!(raft.change_membership(ch, false).await);
                                if registered.is_some() {
                                    let w = Request::SetWorker { id, worker: None };
                                    step!(raft.client_write(w).await);
                                }
                            }
                            (Role::Worker, Some(n)) => {
                                if voter && mem.voter_ids().count() == 1 {
                                    return Ok(Err(Error::Conflict(
                                        "the last manager cannot be demoted".into(),
                                    )));
                                }
                                // Registered first, so it is a member all along; then out of
                                // raft, so it receives no more of the log.
                                let w = Request::SetWorker {
                                    id,
                                    worker: Some(WorkerEntry {
                                        address: n.addr.clone(),
                                        hostname: String::new(),
                                    }),
                                };
                                step!(raft.client_write(w).await);
                                let ch = if voter {
                                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                                } else {
                                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                                };
                                step!(raft.change_membership(ch, false).await);
                                // Tell it now: it would notice only once it misses the leader,
                                // and meanwhile its agent could not report.
                                if let Some(http) = peers.clone() {
                                    let url = format!("https://{}/v1/cluster/demoted", n.addr);
                                    tokio::spawn(async move {
                                        if let Err(e) = http.post(url).send().await {
                                            tracing::debug!("telling a demoted node: {e}");
                                        }
                                    });
                                }
                            }
                            _ => {}
                        }
                        Ok(Ok(serde_json::Value::Null))
                    }
                },
                reqwest::Method::POST,
                "/v1/cluster/role",
                Some(&r),
            )
            .await?;
        tracing::info!(node_id = r.id, role = %r.role, "member role changed");
        Ok(())
    }

    /// Whether a certificate was revoked: a node's, when its node was removed after it was
    /// issued; an admin's, when its name was revoked after it was issued.
    pub fn is_revoked(&self, id: &pki::Identity) -> bool {
        let until = |s: &ClusterSecrets| match (id.role, id.node_id()) {
            (CertRole::Admin, _) => s.revoked_admins.get(&id.name).copied(),
            (_, Some(n)) => s.revoked.get(&n).copied(),
            (_, None) => None,
        };
        match self.inner.reader.secrets() {
            Ok(Some(s)) => until(&s).is_some_and(|at| id.issued_at() <= at),
            Ok(None) => false,
            // Unreadable: refuse rather than let a removed node back in.
            Err(_) => true,
        }
    }

    /// A member's role: voters are managers; registered workers (and learners, which are
    /// workers being promoted) are workers; `None` for a node that is not (or no longer) a
    /// member. A worker knows only that it is one.
    pub fn member_role(&self, id: NodeId) -> Option<Role> {
        let m = self.raft().metrics().borrow().membership_config.clone();
        let mem = m.membership();
        if mem.voter_ids().any(|v| v == id) {
            Some(Role::Manager)
        } else if mem.get_node(&id).is_some()
            || self
                .inner
                .reader
                .workers()
                .is_ok_and(|w| w.contains_key(&id))
            || (id == self.inner.id && self.is_remote_worker())
        {
            Some(Role::Worker)
        } else {
            None
        }
    }

    /// Signs a member's certificate request with the role its membership gives it.
    pub(crate) fn renew_for(&self, id: NodeId, req: &RenewRequest) -> Result<RenewGrant, Error> {
        let role = self
            .member_role(id)
            .ok_or_else(|| Error::Forbidden(format!("node {id} is not a member")))?;
        let s = self.cluster_secrets()?;
        let (ca, _) = self.open_secrets(&s)?;
        let csr = hex::decode(&req.csr)
            .map_err(|_| Error::InvalidArgument("certificate request is not hex".into()))?;
        let cert_pem = ca.sign_request(
            &csr,
            cert_role(role),
            &id.to_string(),
            &s.cluster_id,
            Validity::from_now(cert_ttl(&s)),
        )?;
        let seal_key = self.seal_key_for(role)?;
        Ok(RenewGrant { cert_pem, seal_key })
    }

    /// Renews this node's certificate when a third of its validity is left, or at once when
    /// its role no longer matches the membership (promoted or demoted). Returns whether it did.
    pub async fn renew_if_due(&self) -> Result<bool, Error> {
        let Some(active) = self.inner.tls.active() else {
            return Ok(false);
        };
        let Some(role) = self.member_role(self.inner.id) else {
            return Ok(false);
        };
        let id = &active.identity;
        let now = time_now();
        let left = id.not_after - now;
        let third = (id.not_after - id.not_before) / 3;
        let root = active
            .ca_certs
            .first()
            .map(|r| pki::pem_to_der(r))
            .transpose()?;
        let current_root = root.map(|r| pki::subject(&r)).transpose()?;
        let from_current_root = current_root.as_deref() == Some(id.issuer.as_str());
        if id.role == cert_role(role) && left > third && from_current_root {
            return Ok(false);
        }
        if role == Role::Worker {
            // Demoted: a worker holds no key to the root.
            self.save_seal_key(None)?;
        } else if self.is_voter() {
            // Promoted: the membership says where the managers are from now on.
            self.set_remote(None)?;
        }
        let (key_pem, csr) = pki::key_and_request()?;
        let req = RenewRequest {
            csr: hex::encode(csr),
        };
        let grant = if role == Role::Manager && self.seal_key()?.is_some() {
            self.renew_for(self.inner.id, &req)?
        } else if let Some((r, http)) = self.remote() {
            r.call(&http, true, |c| {
                let req = req.clone();
                async move { c.renew(&req).await }
            })
            .await?
        } else {
            let addr = self
                .leader_address()
                .ok_or_else(|| Error::NoLeader("no leader to renew the certificate".into()))?;
            self.forward::<_, RenewGrant>(
                &addr,
                reqwest::Method::POST,
                "/v1/cluster/renew",
                Some(&req),
            )
            .await?
        };
        let issued = pki::identity(&pki::pem_to_der(&grant.cert_pem)?)?;
        if issued.node_id() != Some(self.inner.id) {
            return Err(Error::Conflict(
                "renewal returned another node's certificate".into(),
            ));
        }
        if let Some(k) = &grant.seal_key {
            self.save_seal_key(Some(&SealKey::from_hex(k)?))?;
        }
        self.save_tls(Some(&LocalTls {
            cluster_id: active.cluster_id.clone(),
            ca_certs: active.ca_certs.clone(),
            cert_pem: grant.cert_pem,
            key_pem,
            chain: self
                .inner
                .log
                .get_local::<LocalTls>(LOCAL_TLS)?
                .map(|l| l.chain)
                .unwrap_or_default(),
        }))?;
        tracing::info!(role = %issued.role, not_after = issued.not_after, "node certificate renewed");
        Ok(true)
    }

    fn leader_address(&self) -> Option<String> {
        let m = self.raft().metrics().borrow().clone();
        let l = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.addr.clone())
    }

    /// Replaces the cluster secrets on the leader with what `change` makes of the current ones
    /// (opened with the leader's seal key, which `change` seals the result with again). Every
    /// writer of the secrets after bootstrap goes through here.
    async fn reseal_on_leader<B: Serialize>(
        &self,
        forwarded: bool,
        path: &str,
        body: Option<&B>,
        change: impl Fn(&ClusterSecrets, Sealed, &SealKey) -> Result<ClusterSecrets, Error>,
    ) -> Result<(), Error> {
        let _: serde_json::Value = self
            .on_leader::<_, _, _>(
                forwarded,
                || {
                    let raft = self.raft();
                    let new = (|| {
                        let s = self.cluster_secrets()?;
                        let (_, sealed) = self.open_secrets(&s)?;
                        let key = self
                            .seal_key()?
                            .ok_or_else(|| Error::Forbidden("no seal key on this node".into()))?;
                        change(&s, sealed, &key)
                    })();
                    async move {
                        let new = match new {
                            Ok(n) => n,
                            Err(e) => return Ok(Err(e)),
                        };
                        leader_step(raft.client_write(Request::SetSecrets(new)).await)
                    }
                },
                reqwest::Method::POST,
                path,
                body,
            )
            .await?;
        Ok(())
    }

    /// Replaces the join secret of `role` (the old token stops working at once; joined nodes
    /// keep their certificates). Runs on the leader.
    pub async fn rotate_join_token(
        &self,
        r: RotateToken,
        forwarded: bool,
    ) -> Result<JoinTokens, Error> {
        let before = self.join_tokens().ok();
        let role = r.role;
        self.reseal_on_leader(
            forwarded,
            "/v1/cluster/rotate",
            Some(&r),
            |s, sealed, key| {
                let mut sealed = sealed;
                match role {
                    Role::Manager => sealed.manager_secret = pki::random_secret()?,
                    Role::Worker => sealed.worker_secret = pki::random_secret()?,
                }
                Ok(ClusterSecrets {
                    sealed: seal_json(key, &sealed)?,
                    ..s.clone()
                })
            },
        )
        .await?;
        tracing::info!(role = %r.role, "join token rotated");
        // This node may be a follower that has not applied the new secrets yet.
        let deadline = Instant::now() + self.inner.cfg.leader_wait;
        loop {
            let now = self.join_tokens();
            match (&now, &before) {
                (Ok(n), Some(b)) if n == b && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return now,
            }
        }
    }

    /// Waits until some leader is known, returning its id.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let mut rx = self.raft().metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Ok(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::NoLeader("raft stopped".into())),
                Err(_) => return Err(Error::NoLeader(format!("no leader after {timeout:?}"))),
            }
        }
    }

    fn leader_addr(&self, f: &ForwardToLeader<NodeId, BasicNode>) -> Option<String> {
        f.leader_node.as_ref().map(|n| n.addr.clone())
    }

    /// Calls the same API endpoint on the leader.
    async fn forward<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, Error> {
        self.forward_once(addr, method, path, body).await?
    }

    /// [`Self::forward`], except that a transport failure that is safe to retry elsewhere is
    /// `Err(..)`: the leader could not even be connected to (the request never left this
    /// node), or the request was a read. Any other outcome, including errors, is `Ok(..)`: a
    /// write the leader may have received is never sent twice.
    async fn forward_once<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Result<Resp, Error>, Error> {
        let url = format!("https://{addr}{path}");
        let read = method == reqwest::Method::GET;
        let http = self
            .inner
            .tls
            .active()
            .ok_or_else(|| Error::Unauthorized("this node has no certificate yet".into()))?
            .managers
            .clone();
        let mut rb = http
            .request(method, &url)
            .header(FORWARDED_HEADER, self.inner.id.to_string());
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let err = |e: reqwest::Error| Error::Transport(format!("forward to leader {addr}: {e}"));
        match rb.send().await {
            Ok(resp) => Ok(crate::api::decode_response(resp).await),
            Err(e) if e.is_connect() || read => Err(err(e)),
            Err(e) => Ok(Err(err(e))),
        }
    }

    /// Runs `local` on this node if it is the leader, otherwise forwards to the leader. Retries
    /// only while no leader is known or the known one cannot be connected to (it crashed and
    /// this node has not noticed yet), so a proposal is never submitted twice, and a client of
    /// a follower rides out a leader crash instead of seeing a transport error.
    async fn on_leader<T, Fut, Req>(
        &self,
        forwarded: bool,
        local: impl Fn() -> Fut,
        method: reqwest::Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<T, Error>
    where
        Fut: std::future::Future<
                Output = Result<Result<T, Error>, Option<ForwardToLeader<NodeId, BasicNode>>>,
            >,
        T: DeserializeOwned,
        Req: Serialize,
    {
        let deadline = Instant::now() + self.inner.cfg.leader_wait;
        loop {
            match local().await {
                Ok(r) => return r,
                Err(fwd) => {
                    let addr = fwd.as_ref().and_then(|f| self.leader_addr(f));
                    match addr {
                        Some(addr) if !forwarded && addr != self.inner.cfg.advertise => {
                            match self.forward_once(&addr, method.clone(), path, body).await {
                                Ok(r) => return r,
                                Err(e) if Instant::now() >= deadline => return Err(e),
                                Err(e) => {
                                    tracing::debug!("{e}; waiting for a new leader");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                        // Demoted meanwhile: the caller goes through the managers now.
                        _ if self.is_remote_worker() => {
                            return Err(Error::NoLeader(
                                "this node became a worker; retry through the managers".into(),
                            ));
                        }
                        _ if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        _ => return Err(Error::NoLeader("no leader elected in time".into())),
                    }
                }
            }
        }
    }

    /// Proposes a transaction and returns once it is committed and applied. A failed
    /// precondition is [`Error::PreconditionFailed`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.txn_inner(txn, false).await
    }

    pub(crate) async fn txn_inner(&self, txn: Txn, forwarded: bool) -> Result<TxnResponse, Error> {
        validate_txn(&txn)?;
        if let Some((r, http)) = self.remote() {
            // Not retried at another manager: the first may have committed it.
            return r
                .call(&http, false, |c| {
                    let txn = txn.clone();
                    async move { c.txn(&txn).await }
                })
                .await;
        }
        let resp: TxnResponse = self
            .on_leader::<_, _, _>(
                forwarded,
                || {
                    let raft = self.raft();
                    let mut txn = txn.clone();
                    // Stamped here, on the leader, as part of the entry: replicas never read
                    // their own clocks for it.
                    let now = time::OffsetDateTime::now_utc();
                    // Milliseconds are what a reader can use; finer would only be noise.
                    txn.proposed_at =
                        Some(now.replace_millisecond(now.millisecond()).unwrap_or(now));
                    let observer = self.inner.commit_observer.get().cloned();
                    async move {
                        let started = Instant::now();
                        match raft.client_write(Request::Txn(txn)).await {
                            Ok(r) => {
                                if let Some(o) = observer {
                                    o(started.elapsed());
                                }
                                Ok(Ok(r.data.txn))
                            }
                            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                                Err(Some(f))
                            }
                            Err(e) => Ok(Err(raft_err(e))),
                        }
                    }
                },
                reqwest::Method::POST,
                "/v1/txn",
                Some(&txn),
            )
            .await?;
        match resp.failed {
            Some(f) => Err(Error::PreconditionFailed(f)),
            None => Ok(resp),
        }
    }

    /// Sets who is told the commit latency of this node's transactions (once; later calls
    /// are ignored).
    pub fn observe_commits(&self, o: CommitObserver) {
        let _ = self.inner.commit_observer.set(o);
    }

    /// The revision the store was at just before `t` (see [`StoreReader::revision_before`]);
    /// a worker asks a manager.
    pub async fn revision_before(&self, t: time::OffsetDateTime) -> Result<u64, Error> {
        if let Some((r, http)) = self.remote() {
            return r
                .call(&http, true, |c| async move { c.revision_before(t).await })
                .await;
        }
        self.inner.reader.revision_before(t)
    }

    /// Confirms leadership with a quorum (read index) and waits until this node applied up to it.
    async fn read_barrier(
        &self,
    ) -> Result<Result<(), Error>, Option<ForwardToLeader<NodeId, BasicNode>>> {
        match self.raft().ensure_linearizable().await {
            Ok(_) => Ok(Ok(())),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(Some(f)),
            // Lost quorum contact mid-check: a new leader may be elected; retry/forward.
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Err(None),
            Err(e) => Ok(Err(raft_err(e))),
        }
    }

    /// Reads one object. `linearizable` reads see every write committed before the call.
    pub async fn get(&self, kind: Kind, id: &str, linearizable: bool) -> Result<Object, Error> {
        self.get_inner(kind, id, linearizable, false).await
    }

    pub(crate) async fn get_inner(
        &self,
        kind: Kind,
        id: &str,
        linearizable: bool,
        forwarded: bool,
    ) -> Result<Object, Error> {
        if let Some((r, http)) = self.remote() {
            return r
                .call(&http, true, |c| {
                    let id = id.to_string();
                    async move {
                        if linearizable {
                            c.get(kind, &id).await
                        } else {
                            c.get_stale(kind, &id).await
                        }
                    }
                })
                .await;
        }
        let local = || {
            let reader = self.inner.reader.clone();
            let id = id.to_string();
            async move {
                if linearizable && let Err(e) = self.read_barrier().await? {
                    return Ok(Err(e));
                }
                Ok(reader
                    .get(kind, &id)
                    .and_then(|o| o.ok_or(Error::NotFound { kind, id })))
            }
        };
        if !linearizable {
            return local()
                .await
                .unwrap_or_else(|_| unreachable!("stale reads never forward"));
        }
        self.on_leader::<_, _, ()>(
            forwarded,
            local,
            reqwest::Method::GET,
            &format!("/v1/objects/{kind}/{}", crate::api::encode_path(id)),
            None,
        )
        .await
    }

    /// Lists all objects of a kind and the revision the list is consistent with (use it as the
    /// `since` of a following watch).
    pub async fn list(&self, kind: Kind, linearizable: bool) -> Result<ObjectList, Error> {
        self.list_inner(kind, linearizable, false).await
    }

    pub(crate) async fn list_inner(
        &self,
        kind: Kind,
        linearizable: bool,
        forwarded: bool,
    ) -> Result<ObjectList, Error> {
        if let Some((r, http)) = self.remote() {
            return r
                .call(&http, true, |c| async move { c.list(kind).await })
                .await;
        }
        let local = || {
            let reader = self.inner.reader.clone();
            async move {
                if linearizable && let Err(e) = self.read_barrier().await? {
                    return Ok(Err(e));
                }
                // Off the async workers: a list of every task decodes tens of thousands of
                // objects, and the raft core and the heartbeats run on the same workers.
                let listed = match tokio::task::spawn_blocking(move || reader.list(kind)).await {
                    Ok(r) => r,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                };
                Ok(listed.map(|(objects, revision)| ObjectList { revision, objects }))
            }
        };
        if !linearizable {
            return local()
                .await
                .unwrap_or_else(|_| unreachable!("stale reads never forward"));
        }
        self.on_leader::<_, _, ()>(
            forwarded,
            local,
            reqwest::Method::GET,
            &format!("/v1/objects/{kind}"),
            None,
        )
        .await
    }

    /// Streams every change after revision `since` (optionally of one kind), in revision order,
    /// from this node's applied state. Ends with [`Error::Compacted`] if `since` (or the
    /// position reached) falls behind the retained history.
    pub fn watch(
        &self,
        since: u64,
        kind: Option<Kind>,
    ) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        use futures::StreamExt;
        if let Some((r, http)) = self.remote() {
            return r.watch(&http, since, kind);
        }
        struct St {
            reader: StoreReader,
            rx: tokio::sync::watch::Receiver<u64>,
            last: u64,
            kind: Option<Kind>,
            buf: VecDeque<Event>,
            done: bool,
        }
        let st = St {
            rx: self.inner.reader.subscribe(),
            reader: self.inner.reader.clone(),
            last: since,
            kind,
            buf: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(e) = st.buf.pop_front() {
                    return Some((Ok(e), st));
                }
                if st.done {
                    return None;
                }
                // Mark the revision seen *before* reading, so a change committed after the read
                // still wakes us: no lost wake-ups, and the table is the only source of events,
                // so there are no gaps.
                st.rx.borrow_and_update();
                let (reader, last) = (st.reader.clone(), st.last);
                match tokio::task::spawn_blocking(move || reader.changes_after(last, 256)).await {
                    Ok(Ok(events)) if !events.is_empty() => {
                        st.last = events.last().map(|e| e.revision).unwrap_or(st.last);
                        st.buf.extend(
                            events
                                .into_iter()
                                .filter(|e| st.kind.is_none_or(|k| e.object.kind == k)),
                        );
                    }
                    Ok(Ok(_)) => {
                        if st.rx.changed().await.is_err() {
                            return None;
                        }
                    }
                    Ok(Err(e)) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    Err(e) => {
                        st.done = true;
                        return Some((Err(Error::Storage(e.to_string())), st));
                    }
                }
            }
        })
        .boxed()
    }

    /// The ids of the current members: raft's (voters and learners) and the workers.
    pub fn member_ids(&self) -> BTreeSet<NodeId> {
        let m = self.raft().metrics().borrow().membership_config.clone();
        let mut ids: BTreeSet<NodeId> = m.membership().nodes().map(|(id, _)| *id).collect();
        ids.extend(self.inner.reader.workers().unwrap_or_default().into_keys());
        ids
    }

    /// Refuses, everywhere and from now on, every admin certificate named `name` issued until
    /// now (one issued later with the same name works).
    pub async fn revoke_admin(&self, r: RevokeAdmin, forwarded: bool) -> Result<(), Error> {
        if r.name.is_empty() {
            return Err(Error::InvalidArgument("an admin name is needed".into()));
        }
        let _: serde_json::Value = self
            .on_leader::<_, _, _>(
                forwarded,
                || {
                    let raft = self.raft();
                    let w = Request::RevokeAdmin {
                        name: r.name.clone(),
                        at: time_now(),
                    };
                    async move {
                        step!(raft.client_write(w).await);
                        Ok(Ok(serde_json::Value::Null))
                    }
                },
                reqwest::Method::POST,
                "/v1/cluster/admin/revoke",
                Some(&r),
            )
            .await?;
        tracing::info!(name = %r.name, "admin certificates revoked");
        Ok(())
    }

    /// The mutual-TLS client this node calls other members with (its own certificate; any
    /// member's server certificate is accepted). `None` before it has a certificate.
    pub fn member_http(&self) -> Option<reqwest::Client> {
        self.inner.tls.active().map(|a| a.peers.clone())
    }

    /// Whether this node is the raft leader now.
    pub fn is_leader(&self) -> bool {
        self.raft().metrics().borrow().state == ServerState::Leader
    }

    /// The term this node leads in, if it is the leader now. A node re-elected after an
    /// election it lost nothing in (a returning member's higher term forced one) leads a new
    /// term: what it knew of the others' heartbeats went through a time without a leader.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft().metrics().borrow().clone();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// Leader, term, members and indexes as seen by this node.
    pub fn status(&self) -> Result<ClusterStatus, Error> {
        let m = self.raft().metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let mut members: Vec<Member> = mem
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                address: n.addr.clone(),
                voter: voters.contains(id),
                worker: false,
            })
            .collect();
        for (id, w) in self.inner.reader.workers()? {
            if !members.iter().any(|m| m.id == id) {
                members.push(Member {
                    id,
                    address: w.address,
                    voter: false,
                    worker: true,
                });
            }
        }
        let remote = self.remote();
        let leader_address = m
            .current_leader
            .and_then(|l| mem.get_node(&l).map(|n| n.addr.clone()));
        let state = match m.state {
            _ if remote.is_some() => "Worker",
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        Ok(ClusterStatus {
            cluster_id: self.inner.tls.active().map(|a| a.cluster_id.clone()),
            node_id: self.inner.id,
            state: state.into(),
            leader: m.current_leader,
            leader_address,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: m.last_applied.map(|l| l.index),
            revision: self.inner.reader.revision(),
            members,
            managers: remote.map(|(r, _)| r.managers()).unwrap_or_default(),
            certificate: self.identity().map(|id| crate::types::CertSummary {
                role: id.role.to_string(),
                serial: id.serial,
                not_after: id.not_after,
                issuer: id.issuer,
            }),
        })
    }

    /// The join tokens of the cluster this node belongs to (managers only: the secrets are
    /// sealed).
    pub fn join_tokens(&self) -> Result<JoinTokens, Error> {
        let s = self.cluster_secrets()?;
        let (ca, sealed) = self.open_secrets(&s)?;
        let ca_digest = ca.digest()?;
        let token = |secret: String| {
            pki::JoinToken {
                ca_digest: ca_digest.clone(),
                secret,
            }
            .to_string()
        };
        Ok(JoinTokens {
            cluster_id: s.cluster_id.clone(),
            manager: token(sealed.manager_secret),
            worker: token(sealed.worker_secret),
            ca_digest,
        })
    }

    /// Checks a join token (on a manager) and issues the joining node's certificate.
    pub fn grant_join(&self, req: &JoinRequest) -> Result<JoinGrant, Error> {
        let s = self.cluster_secrets().map_err(|_| {
            Error::Unauthorized("cluster credentials not available on this node".into())
        })?;
        let (ca, sealed) = self.open_secrets(&s)?;
        let token: pki::JoinToken = req.token.parse()?;
        let digest_ok = crate::network::ct_eq(token.ca_digest.as_bytes(), ca.digest()?.as_bytes());
        let role = if digest_ok
            && crate::network::ct_eq(token.secret.as_bytes(), sealed.manager_secret.as_bytes())
        {
            Role::Manager
        } else if digest_ok
            && crate::network::ct_eq(token.secret.as_bytes(), sealed.worker_secret.as_bytes())
        {
            Role::Worker
        } else {
            return Err(Error::Unauthorized("invalid join token".into()));
        };
        // An id in use would let the joiner act as that member.
        if req.node_id == 0 || self.member_role(req.node_id).is_some() {
            return Err(Error::Conflict(format!(
                "node id {} is already a member of this cluster",
                req.node_id
            )));
        }
        let csr = hex::decode(&req.csr)
            .map_err(|_| Error::InvalidArgument("certificate request is not hex".into()))?;
        let cert_pem = ca.sign_request(
            &csr,
            cert_role(role),
            &req.node_id.to_string(),
            &s.cluster_id,
            Validity::from_now(cert_ttl(&s)),
        )?;
        let seal_key = self.seal_key_for(role)?;
        Ok(JoinGrant {
            cluster_id: s.cluster_id,
            role,
            cert_pem,
            ca_certs: s.ca_certs,
            seal_key,
            managers: self.manager_addresses(),
        })
    }

    /// Leader side of a join: add as learner (waiting until it caught up), promote managers to
    /// voters, and record the node.
    pub async fn add_member(&self, req: AddMember, forwarded: bool) -> Result<(), Error> {
        let node = BasicNode {
            addr: req.address.clone(),
        };
        let _: serde_json::Value = self
            .on_leader::<_, _, _>(
                forwarded,
                || {
                    let raft = self.raft();
                    let node = node.clone();
                    let req = req.clone();
                    async move {
                        if req.role == Role::Worker {
                            // A worker never receives the log: the managers only remember it.
                            let w = Request::SetWorker {
                                id: req.id,
                                worker: Some(WorkerEntry {
                                    address: req.address.clone(),
                                    hostname: req.hostname.clone(),
                                }),
                            };
                            step!(raft.client_write(w).await);
                            return Ok(Ok(serde_json::Value::Bool(true)));
                        }
                        step!(raft.add_learner(req.id, node, true).await);
                        let ch = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
                        step!(raft.change_membership(ch, false).await);
                        Ok(Ok(serde_json::Value::Bool(true)))
                    }
                },
                reqwest::Method::POST,
                "/v1/cluster/add",
                Some(&req),
            )
            .await?;
        tracing::info!(node_id = req.id, address = %req.address, role = %req.role, "member added");
        Ok(())
    }

    /// Leader side of a leave: demote and remove the node, and delete its record.
    pub async fn remove_member(&self, req: RemoveMember, forwarded: bool) -> Result<(), Error> {
        let _: serde_json::Value = self
            .on_leader::<_, _, _>(
                forwarded,
                || {
                    let raft = self.raft();
                    let id = req.id;
                    let member_kind = self.inner.cfg.member_kind;
                    let worker = self.inner.reader.workers().map(|w| w.contains_key(&id));
                    async move {
                        let worker = match worker {
                            Ok(w) => w,
                            Err(e) => return Ok(Err(e)),
                        };
                        let m = raft.metrics().borrow().membership_config.clone();
                        let mem = m.membership();
                        let is_voter = mem.voter_ids().any(|v| v == id);
                        if is_voter && mem.voter_ids().count() == 1 {
                            return Ok(Err(Error::Conflict(
                                "the last manager cannot leave the cluster".into(),
                            )));
                        }
                        // Revoke its certificates and delete its record first: a leader
                        // removing itself cannot write after.
                        let revoke = Request::Revoke {
                            node: id,
                            at: time_now(),
                        };
                        step!(raft.client_write(revoke).await);
                        if let Some(kind) = member_kind {
                            let del = Txn::new().op(Op::delete(kind, id.to_string()));
                            step!(raft.client_write(Request::Txn(del)).await);
                        }
                        if worker {
                            let w = Request::SetWorker { id, worker: None };
                            step!(raft.client_write(w).await);
                        }
                        let change = if is_voter {
                            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                        } else if mem.get_node(&id).is_some() {
                            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                        } else {
                            return Ok(Ok(serde_json::Value::Null));
                        };
                        leader_step(raft.change_membership(change, false).await)
                    }
                },
                reqwest::Method::POST,
                "/v1/cluster/remove",
                Some(&req),
            )
            .await?;
        tracing::info!(node_id = req.id, "member removed");
        Ok(())
    }

    /// Joins the cluster at `addr` with a join token. Only a node that holds no data of its own
    /// (a fresh zero-config one-node cluster, or an interrupted join) may join: its local Raft
    /// state is discarded and it receives the cluster's state from the leader.
    pub async fn join(&self, addr: &str, token: &str) -> Result<Role, Error> {
        let _g = self.inner.membership_lock.lock().await;
        if self.is_remote_worker() {
            return Err(Error::Conflict(
                "this node is a worker of a cluster; leave it first or use a fresh data dir".into(),
            ));
        }
        let st = self.status()?;
        let others = st.members.iter().any(|m| m.id != self.inner.id);
        let member_kind = self.inner.cfg.member_kind;
        let has_data = Kind::ALL
            .iter()
            .filter(|k| Some(**k) != member_kind)
            .any(|k| {
                self.inner
                    .reader
                    .list(*k)
                    .map(|(v, _)| !v.is_empty())
                    .unwrap_or(true)
            });
        if others || has_data {
            return Err(Error::Conflict(
                "this node already belongs to a cluster with members or data; leave it first or use a fresh data dir"
                    .into(),
            ));
        }
        let parsed: pki::JoinToken = token.parse()?;
        let (key_pem, csr) = pki::key_and_request()?;
        let grant: JoinGrant = {
            // The server must show the root the token names before anything is sent.
            let resp = crate::tls::pinned_client(&parsed.ca_digest)?
                .post(format!("https://{addr}/v1/cluster/join"))
                .json(&JoinRequest {
                    token: token.into(),
                    node_id: self.inner.id,
                    csr: hex::encode(csr),
                })
                .send()
                .await
                .map_err(|e| Error::Transport(format!("contact {addr}: {e}")))?;
            crate::api::decode_response(resp).await?
        };
        let root = grant
            .ca_certs
            .first()
            .map(|c| pki::pem_to_der(c))
            .transpose()?;
        if root.map(|r| pki::digest(&r)) != Some(parsed.ca_digest.clone()) {
            return Err(Error::Unauthorized(
                "the cluster answered with a root the join token does not name".into(),
            ));
        }
        let seal = grant
            .seal_key
            .as_deref()
            .map(SealKey::from_hex)
            .transpose()?;
        self.reset_raft(Some(LocalTls {
            cluster_id: grant.cluster_id.clone(),
            ca_certs: grant.ca_certs.clone(),
            cert_pem: grant.cert_pem.clone(),
            key_pem,
            // During a root rotation the cross-signed root follows with the replicated state.
            chain: Vec::new(),
        }))
        .await?;
        self.save_seal_key(seal.as_ref())?;
        if grant.role == Role::Worker {
            let mut managers = grant.managers.clone();
            if managers.is_empty() {
                managers.push(addr.to_string());
            }
            self.set_remote(Some(managers))?;
        }
        let req = AddMember {
            id: self.inner.id,
            address: self.inner.cfg.advertise.clone(),
            role: grant.role,
            hostname: hostname(),
        };
        self.forward::<_, serde_json::Value>(
            addr,
            reqwest::Method::POST,
            "/v1/cluster/add",
            Some(&req),
        )
        .await?;
        tracing::info!(cluster_id = %grant.cluster_id, role = %grant.role, "joined cluster");
        Ok(grant.role)
    }

    /// Leaves the cluster: the leader removes this node, then the node wipes its Raft state and
    /// becomes a fresh one-node cluster again (zero-config standalone).
    pub async fn leave(&self) -> Result<(), Error> {
        if let Some((r, http)) = self.remote() {
            let _g = self.inner.membership_lock.lock().await;
            let me = RemoveMember { id: self.inner.id };
            r.call_within(
                &http,
                true,
                None,
                |c| async move { c.remove_node(me.id).await },
            )
            .await?;
            self.reset_raft(None).await?;
            drop(_g);
            return self.bootstrap().await;
        }
        {
            let _g = self.inner.membership_lock.lock().await;
            let st = self.status()?;
            if !st.members.iter().any(|m| m.id != self.inner.id) {
                return Err(Error::Conflict(
                    "this node is the only member; nothing to leave".into(),
                ));
            }
            self.remove_member(RemoveMember { id: self.inner.id }, false)
                .await?;
            self.reset_raft(None).await?;
        }
        self.bootstrap().await
    }

    /// Stops Raft, erases the Raft state and starts a fresh uninitialized Raft; `tls` replaces
    /// the local credentials (None: forget them and the seal key, making the node pristine).
    async fn reset_raft(&self, tls: Option<LocalTls>) -> Result<(), Error> {
        let old = self.raft();
        old.shutdown().await.map_err(raft_err)?;
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || log.wipe_raft_state())
            .await
            .map_err(|e| Error::Storage(e.to_string()))??;
        if tls.is_none() {
            self.save_seal_key(None)?;
            self.set_remote(None)?;
        }
        self.save_tls(tls.as_ref())?;
        let i = &self.inner;
        let raft = start_raft(i.id, &i.cfg, &i.tls, &i.faults, &i.log).await?;
        *i.raft.write().unwrap_or_else(|e| e.into_inner()) = raft;
        Ok(())
    }

    /// Stops Raft; the store is closed once every clone of this node is dropped.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.raft().shutdown().await.map_err(raft_err)
    }
}

async fn start_raft(
    id: NodeId,
    cfg: &NodeConfig,
    tls: &Arc<NodeTls>,
    faults: &Arc<Faults>,
    log: &LogStore,
) -> Result<Raft, Error> {
    let config = openraft::Config {
        cluster_name: "dcpp".into(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_min_ms,
        election_timeout_max: cfg.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
        max_in_snapshot_log_to_keep: cfg.keep_logs,
        install_snapshot_timeout: 2000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let transport = Transport {
        id,
        tls: tls.clone(),
        faults: faults.clone(),
    };
    Raft::new(
        id,
        Arc::new(config),
        transport,
        log.clone(),
        log.state_machine(),
    )
    .await
    .map_err(raft_err)
}

/// A raft write as the local step of [`Node::on_leader`] reports it: not the leader means
/// forward, any other failure is the request's error.
fn leader_step<T>(
    r: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
) -> Result<Result<serde_json::Value, Error>, Option<ForwardToLeader<NodeId, BasicNode>>> {
    match r {
        Ok(_) => Ok(Ok(serde_json::Value::Null)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(Some(f)),
        Err(e) => Ok(Err(raft_err(e))),
    }
}

fn seal_json(key: &SealKey, sealed: &Sealed) -> Result<String, Error> {
    let plain = serde_json::to_vec(sealed).map_err(|e| Error::Storage(e.to_string()))?;
    Ok(key.seal(&plain)?)
}

fn cert_ttl(s: &ClusterSecrets) -> Duration {
    match s.cert_ttl_secs {
        0 => DEFAULT_CERT_TTL,
        n => Duration::from_secs(n),
    }
}

fn cert_role(r: Role) -> CertRole {
    match r {
        Role::Manager => CertRole::Manager,
        Role::Worker => CertRole::Worker,
    }
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Node {
    /// Follows the replicated roots: trusts what the cluster trusts now (both roots while it
    /// rotates), and on the leader ends a rotation whose grace period is over. Returns whether
    /// the trusted roots changed here.
    pub async fn follow_roots(&self) -> Result<bool, Error> {
        let Some(active) = self.inner.tls.active() else {
            return Ok(false);
        };
        let Some(s) = self.inner.reader.secrets()? else {
            return Ok(false);
        };
        if s.cluster_id != active.cluster_id || s.ca_certs.is_empty() {
            return Ok(false);
        }
        if let Some(started) = s.rotation_started
            && self.is_leader()
            && time_now() - started >= self.inner.cfg.ca_rotation_grace.as_secs() as i64
        {
            let done = ClusterSecrets {
                ca_certs: s.ca_certs[..1].to_vec(),
                rotation_started: None,
                cross_signed: None,
                ..s.clone()
            };
            self.raft()
                .client_write(Request::SetSecrets(done))
                .await
                .map_err(raft_err)?;
            tracing::info!("root rotation finished: the old root is no longer trusted");
        }
        let Some(mut local) = self.inner.log.get_local::<LocalTls>(LOCAL_TLS)? else {
            return Ok(false);
        };
        let chain: Vec<String> = s.cross_signed.iter().cloned().collect();
        if s.ca_certs == active.ca_certs && chain == local.chain {
            return Ok(false);
        }
        local.ca_certs = s.ca_certs.clone();
        local.chain = chain;
        self.save_tls(Some(&local))?;
        tracing::info!(roots = s.ca_certs.len(), "trusted roots changed");
        Ok(true)
    }

    /// On a worker: follows what the managers say, the roots to trust (during a root rotation)
    /// and where the managers are. Returns whether the trusted roots changed.
    pub async fn follow_remote(&self) -> Result<bool, Error> {
        let Some((r, http)) = self.remote() else {
            return Ok(false);
        };
        let who = r
            .call(&http, true, |c| async move { c.whoami().await })
            .await?;
        let mut managers = who.managers.clone();
        managers.sort();
        if !managers.is_empty() && managers != r.managers() {
            r.set_managers(managers.clone());
            self.inner.log.put_local(LOCAL_MANAGERS, &managers)?;
            tracing::info!(?managers, "managers changed");
        }
        let Some(mut local) = self.inner.log.get_local::<LocalTls>(LOCAL_TLS)? else {
            return Ok(false);
        };
        if who.ca_certs.is_empty() || (who.ca_certs == local.ca_certs && who.chain == local.chain) {
            return Ok(false);
        }
        local.ca_certs = who.ca_certs;
        local.chain = who.chain;
        self.save_tls(Some(&local))?;
        tracing::info!(roots = local.ca_certs.len(), "trusted roots changed");
        Ok(true)
    }

    /// On a manager that sees no leader (or itself outside the membership) for a while: asks
    /// its peers whether it was demoted while it could not be told. If so it wipes its copy of
    /// the log, forgets the seal key and goes on as a worker. Returns whether it did.
    pub async fn check_demoted(&self) -> Result<bool, Error> {
        self.check_demoted_inner(false).await
    }

    /// [`Node::check_demoted`] at once, leader or not: the leader that demoted this node says
    /// so right after (the node still verifies it with the leader before it wipes anything).
    pub async fn demoted_hint(&self) -> Result<bool, Error> {
        self.check_demoted_inner(true).await
    }

    async fn check_demoted_inner(&self, now: bool) -> Result<bool, Error> {
        let Some(active) = self.inner.tls.active() else {
            return Ok(false);
        };
        if self
            .inner
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
            && !self.is_voter()
        {
            return Ok(false);
        }
        let m = self.raft().metrics().borrow().clone();
        let mem = m.membership_config.membership();
        if mem.nodes().next().is_none() {
            // Pristine, or joining: nothing to have been demoted from.
            return Ok(false);
        }
        let outside = mem.get_node(&self.inner.id).is_none();
        {
            let mut g = self
                .inner
                .leaderless_since
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !now {
                if m.current_leader.is_some() && !outside {
                    *g = None;
                    return Ok(false);
                }
                let since = *g.get_or_insert_with(Instant::now);
                if since.elapsed() < LEADERLESS_CHECK {
                    return Ok(false);
                }
            }
            // Asked at most once per period.
            *g = Some(Instant::now());
        }
        // The leader first: it applied the demotion before anyone else.
        let mut ids: Vec<NodeId> = mem.voter_ids().filter(|v| *v != self.inner.id).collect();
        ids.sort_by_key(|v| Some(*v) != m.current_leader);
        let peers: Vec<String> = ids
            .iter()
            .filter_map(|v| mem.get_node(v).map(|n| n.addr.clone()))
            .collect();
        for addr in peers {
            match Client::over(&addr, active.managers.clone()).whoami().await {
                Ok(w) if w.role == Some(Role::Worker) => {
                    let local = self.inner.log.get_local::<LocalTls>(LOCAL_TLS)?;
                    // Reads move to the managers before the local copy goes.
                    self.set_remote(Some(w.managers))?;
                    self.inner
                        .wiping
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    let reset = self.reset_raft(local).await;
                    self.inner
                        .wiping
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    reset?;
                    self.save_seal_key(None)?;
                    tracing::info!("demoted: this node is a worker now");
                    return Ok(true);
                }
                // A manager answered: this node is not a worker (or was removed).
                Ok(_) => return Ok(false),
                Err(_) => continue,
            }
        }
        Ok(false)
    }

    /// Replaces the cluster's root: the new one issues from now on, both are trusted until
    /// `ca_rotation_grace` has passed, every node renews its certificate from the new root as
    /// soon as it sees it, and join tokens carry the new root's digest. Runs on the leader.
    pub async fn rotate_ca(&self, forwarded: bool) -> Result<JoinTokens, Error> {
        self.reseal_on_leader::<()>(
            forwarded,
            "/v1/cluster/ca/rotate",
            None,
            |s, sealed, key| {
                if s.rotation_started.is_some() {
                    return Err(Error::Conflict(
                        "a root rotation is already under way".into(),
                    ));
                }
                let old = pki::Ca::from_pem(&s.ca_certs[0], &sealed.ca_key_pem)?;
                let (ca, cross) = pki::Ca::generate_replacing(&s.cluster_id, &old)?;
                let sealed = Sealed {
                    ca_key_pem: ca.key_pem(),
                    ..sealed
                };
                Ok(ClusterSecrets {
                    ca_certs: vec![ca.cert_pem().to_string(), old.cert_pem().to_string()],
                    sealed: seal_json(key, &sealed)?,
                    rotation_started: Some(time_now()),
                    cross_signed: Some(cross),
                    ..s.clone()
                })
            },
        )
        .await?;
        tracing::info!("cluster root rotated");
        let deadline = Instant::now() + self.inner.cfg.leader_wait;
        loop {
            match self.cluster_secrets() {
                Ok(s) if s.rotation_started.is_some() => return self.join_tokens(),
                _ if Instant::now() >= deadline => return self.join_tokens(),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Renews the node's certificate when due (see [`Node::renew_if_due`]); ends with the node.
async fn renew_loop(inner: std::sync::Weak<Inner>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else { return };
        let node = Node { inner };
        let roots = node.follow_roots().await;
        let remote = node.follow_remote().await;
        if let Err(e) = node.check_demoted().await {
            tracing::debug!("demotion check: {e}");
        }
        match roots.and(remote).and(node.renew_if_due().await) {
            Ok(_) => failing = false,
            // Retried every second; said once per failing streak.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("certificate renewal failed (retrying): {e}");
            }
            Err(_) => {}
        }
    }
}

fn validate_txn(txn: &Txn) -> Result<(), Error> {
    if txn.ops.is_empty() && txn.preconditions.is_empty() {
        return Err(Error::InvalidArgument("empty transaction".into()));
    }
    for op in &txn.ops {
        let id = match op {
            Op::Put { id, .. } | Op::Delete { id, .. } => id,
        };
        if id.is_empty() || id.len() > 512 || id.chars().any(|c| c.is_control()) {
            return Err(Error::InvalidArgument(format!("invalid object id {id:?}")));
        }
    }
    Ok(())
}

/// A consistent listing of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectList {
    pub revision: u64,
    pub objects: Vec<Object>,
}
