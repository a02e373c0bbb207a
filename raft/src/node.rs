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

use crate::api::FORWARDED_HEADER;
use crate::network::{Auth, Faults, Transport};
use crate::store::{self, LogStore, StoreReader};
use crate::types::{
    ClusterSecrets, ClusterStatus, Event, JoinTokens, Kind, Member, Object, Op, Request, Role, Txn,
    TxnResponse,
};
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

/// Credentials a node keeps locally (outside the replicated state) so it can talk to its peers
/// before it has applied anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalAuth {
    cluster_id: String,
    rpc_token: String,
}

/// Sent by a joining node with its join token.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
}

// Written by hand so that a `{:?}` in a log line can never print a join token.
impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Returned to a joining node that presented a valid token.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    pub cluster_id: String,
    pub rpc_token: String,
    pub role: Role,
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
const LOCAL_AUTH: &str = "auth";

/// A cluster member. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    cfg: NodeConfig,
    http: reqwest::Client,
    auth: Arc<Auth>,
    faults: Arc<Faults>,
    log: LogStore,
    reader: StoreReader,
    raft: RwLock<Raft>,
    /// Serializes membership changes of this node (join/leave/bootstrap).
    membership_lock: Mutex<()>,
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
        let local: Option<LocalAuth> = log.get_local(LOCAL_AUTH)?;
        let auth = Arc::new(Auth::new(local.map(|a| a.rpc_token)));
        let faults = Arc::new(Faults::default());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        let raft = start_raft(id, &cfg, &http, &auth, &faults, &log).await?;
        tracing::info!(node_id = id, advertise = %cfg.advertise, "raft node started");
        Ok(Node {
            inner: Arc::new(Inner {
                id,
                cfg,
                http,
                auth,
                faults,
                log,
                reader,
                raft: RwLock::new(raft),
                membership_lock: Mutex::new(()),
            }),
        })
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

    pub(crate) fn auth(&self) -> &Arc<Auth> {
        &self.inner.auth
    }

    /// The cluster bearer token (a secret: TCP API clients need it).
    pub fn cluster_token(&self) -> Option<String> {
        self.inner.auth.token()
    }

    /// Fault injection hook for tests (see [`Faults`]).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.inner.faults
    }

    /// Whether this node has never been part of any cluster (no credentials stored).
    pub fn is_pristine(&self) -> Result<bool, Error> {
        Ok(self.inner.log.get_local::<LocalAuth>(LOCAL_AUTH)?.is_none())
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
        // Either just initialized, or a previous bootstrap crashed before saving credentials.
        self.wait_leader(self.inner.cfg.leader_wait * 2).await?;
        let secrets = match self.inner.reader.secrets()? {
            Some(s) => s,
            None => {
                let s = ClusterSecrets {
                    cluster_id: random_hex(8)?,
                    rpc_token: random_hex(32)?,
                    manager_token: format!("DCPP-1-M-{}", random_hex(24)?),
                    worker_token: format!("DCPP-1-W-{}", random_hex(24)?),
                };
                raft.client_write(Request::SetSecrets(s.clone()))
                    .await
                    .map_err(raft_err)?;
                s
            }
        };
        self.save_auth(&secrets.cluster_id, &secrets.rpc_token)?;
        Ok(())
    }

    fn save_auth(&self, cluster_id: &str, rpc_token: &str) -> Result<(), Error> {
        self.inner.log.put_local(
            LOCAL_AUTH,
            &LocalAuth {
                cluster_id: cluster_id.into(),
                rpc_token: rpc_token.into(),
            },
        )?;
        self.inner.auth.set(Some(rpc_token.into()));
        Ok(())
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
        let url = format!("http://{addr}{path}");
        let read = method == reqwest::Method::GET;
        let mut rb = self
            .inner
            .http
            .request(method, &url)
            .header(FORWARDED_HEADER, self.inner.id.to_string());
        if let Some(t) = self.inner.auth.token() {
            rb = rb.bearer_auth(t);
        }
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
        let resp: TxnResponse = self
            .on_leader::<_, _, _>(
                forwarded,
                || {
                    let raft = self.raft();
                    let txn = txn.clone();
                    async move {
                        match raft.client_write(Request::Txn(txn)).await {
                            Ok(r) => Ok(Ok(r.data.txn)),
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
        let local = || {
            let reader = self.inner.reader.clone();
            async move {
                if linearizable && let Err(e) = self.read_barrier().await? {
                    return Ok(Err(e));
                }
                Ok(reader
                    .list(kind)
                    .map(|(objects, revision)| ObjectList { revision, objects }))
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
    }

    /// The ids of the current members (voters and learners), from raft's in-memory view.
    pub fn member_ids(&self) -> BTreeSet<NodeId> {
        let m = self.raft().metrics().borrow().membership_config.clone();
        m.membership().nodes().map(|(id, _)| *id).collect()
    }

    /// Whether this node is the raft leader now.
    pub fn is_leader(&self) -> bool {
        self.raft().metrics().borrow().state == ServerState::Leader
    }

    /// Leader, term, members and indexes as seen by this node.
    pub fn status(&self) -> Result<ClusterStatus, Error> {
        let m = self.raft().metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let members = mem
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                address: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader_address = m
            .current_leader
            .and_then(|l| mem.get_node(&l).map(|n| n.addr.clone()));
        let state = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        Ok(ClusterStatus {
            cluster_id: self
                .inner
                .log
                .get_local::<LocalAuth>(LOCAL_AUTH)?
                .map(|a| a.cluster_id),
            node_id: self.inner.id,
            state: state.into(),
            leader: m.current_leader,
            leader_address,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: m.last_applied.map(|l| l.index),
            revision: self.inner.reader.revision(),
            members,
        })
    }

    /// The join tokens of the cluster this node belongs to.
    pub fn join_tokens(&self) -> Result<JoinTokens, Error> {
        let s = self.inner.reader.secrets()?.ok_or_else(|| {
            Error::Conflict("this node has not received the cluster credentials yet".into())
        })?;
        Ok(JoinTokens {
            cluster_id: s.cluster_id,
            manager: s.manager_token,
            worker: s.worker_token,
        })
    }

    /// Checks a join token (on any member) and hands out the peer credentials.
    pub fn grant_join(&self, req: &JoinRequest) -> Result<JoinGrant, Error> {
        let s = self.inner.reader.secrets()?.ok_or_else(|| {
            Error::Unauthorized("cluster credentials not available on this node".into())
        })?;
        let role = if crate::network::ct_eq(req.token.as_bytes(), s.manager_token.as_bytes()) {
            Role::Manager
        } else if crate::network::ct_eq(req.token.as_bytes(), s.worker_token.as_bytes()) {
            Role::Worker
        } else {
            return Err(Error::Unauthorized("invalid join token".into()));
        };
        Ok(JoinGrant {
            cluster_id: s.cluster_id,
            rpc_token: s.rpc_token,
            role,
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
                        match raft.add_learner(req.id, node, true).await {
                            Ok(_) => {}
                            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                                return Err(Some(f));
                            }
                            Err(e) => return Ok(Err(raft_err(e))),
                        }
                        if req.role == Role::Manager {
                            let ch = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
                            match raft.change_membership(ch, false).await {
                                Ok(_) => {}
                                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                                    return Err(Some(f));
                                }
                                Err(e) => return Ok(Err(raft_err(e))),
                            }
                        }
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
                    async move {
                        let m = raft.metrics().borrow().membership_config.clone();
                        let mem = m.membership();
                        let is_voter = mem.voter_ids().any(|v| v == id);
                        if is_voter && mem.voter_ids().count() == 1 {
                            return Ok(Err(Error::Conflict(
                                "the last manager cannot leave the cluster".into(),
                            )));
                        }
                        // Delete the member's record first: a leader removing itself cannot
                        // write after.
                        if let Some(kind) = member_kind {
                            let del = Txn::new().op(Op::delete(kind, id.to_string()));
                            match raft.client_write(Request::Txn(del)).await {
                                Ok(_) => {}
                                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                                    return Err(Some(f));
                                }
                                Err(e) => return Ok(Err(raft_err(e))),
                            }
                        }
                        let change = if is_voter {
                            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                        } else if mem.get_node(&id).is_some() {
                            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                        } else {
                            return Ok(Ok(serde_json::Value::Null));
                        };
                        match raft.change_membership(change, false).await {
                            Ok(_) => Ok(Ok(serde_json::Value::Null)),
                            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                                Err(Some(f))
                            }
                            Err(e) => Ok(Err(raft_err(e))),
                        }
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
        let grant: JoinGrant = {
            let resp = self
                .inner
                .http
                .post(format!("http://{addr}/v1/cluster/join"))
                .json(&JoinRequest {
                    token: token.into(),
                })
                .send()
                .await
                .map_err(|e| Error::Transport(format!("contact {addr}: {e}")))?;
            crate::api::decode_response(resp).await?
        };
        self.reset_raft(Some((&grant.cluster_id, &grant.rpc_token)))
            .await?;
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

    /// Stops Raft, erases the Raft state and starts a fresh uninitialized Raft; `auth` replaces
    /// the local credentials (None: forget them, making the node pristine).
    async fn reset_raft(&self, auth: Option<(&str, &str)>) -> Result<(), Error> {
        let old = self.raft();
        old.shutdown().await.map_err(raft_err)?;
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || log.wipe_raft_state())
            .await
            .map_err(|e| Error::Storage(e.to_string()))??;
        match auth {
            Some((cid, tok)) => self.save_auth(cid, tok)?,
            None => {
                self.inner.log.remove_local(LOCAL_AUTH)?;
                self.inner.auth.set(None);
            }
        }
        let i = &self.inner;
        let raft = start_raft(i.id, &i.cfg, &i.http, &i.auth, &i.faults, &i.log).await?;
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
    http: &reqwest::Client,
    auth: &Arc<Auth>,
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
        http: http.clone(),
        auth: auth.clone(),
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
