//! The data model of the store: kinds, versioned objects, transactions, watch events and
//! membership. Values are plain JSON so that the crates owning the typed structs stay decoupled.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The kinds of object the cluster store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Stack,
    Service,
    Task,
    /// The observed side of a task (state, container, exit, health), apart from its desired side.
    TaskStatus,
    Node,
    Network,
    Volume,
    Secret,
    Config,
    /// The orchestrator's rollout status of a service.
    ServiceStatus,
    /// What an update of a service replaced and what an automatic rollback rejected.
    ServiceHistory,
    /// Monotonic counters (e.g. the next task id).
    Counter,
    /// The node a local named volume lives on.
    VolumeHome,
    /// Where the published ports of the routing mesh are served, cluster-wide.
    Mesh,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Stack,
        Kind::Service,
        Kind::Task,
        Kind::TaskStatus,
        Kind::Node,
        Kind::Network,
        Kind::Volume,
        Kind::Secret,
        Kind::Config,
        Kind::ServiceStatus,
        Kind::ServiceHistory,
        Kind::Counter,
        Kind::VolumeHome,
        Kind::Mesh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stack => "stack",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::TaskStatus => "task_status",
            Kind::Node => "node",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Secret => "secret",
            Kind::Config => "config",
            Kind::ServiceStatus => "service_status",
            Kind::ServiceHistory => "service_history",
            Kind::Counter => "counter",
            Kind::VolumeHome => "volume_home",
            Kind::Mesh => "mesh",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown kind `{s}`")))
    }
}

/// One stored object with its revisions (etcd semantics: `create_revision` is the cluster revision
/// of the put that created it, `mod_revision` the one of its latest put).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub kind: Kind,
    pub id: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub value: Value,
}

impl Object {
    /// Converts the JSON value into the caller's typed struct.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        // From a reference: cloning the value first doubled the cost of every typed read
        // (the leader reads every task each round).
        T::deserialize(&self.value).map_err(|e| Error::Decode {
            kind: self.kind,
            id: self.id.clone(),
            reason: e.to_string(),
        })
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Put {
        kind: Kind,
        id: String,
        value: Value,
    },
    Delete {
        kind: Kind,
        id: String,
    },
}

impl Op {
    /// A put of any serializable value.
    pub fn put<T: Serialize>(kind: Kind, id: impl Into<String>, value: &T) -> Result<Op, Error> {
        let value =
            serde_json::to_value(value).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Op::Put {
            kind,
            id: id.into(),
            value,
        })
    }

    pub fn delete(kind: Kind, id: impl Into<String>) -> Op {
        Op::Delete {
            kind,
            id: id.into(),
        }
    }
}

/// A condition that must hold, when the transaction is applied, for any of its ops to happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "if", rename_all = "snake_case")]
pub enum Precondition {
    /// The object exists and its `mod_revision` equals `revision` (compare-and-set).
    ModRevision {
        kind: Kind,
        id: String,
        revision: u64,
    },
    /// The object does not exist (create-only).
    Absent { kind: Kind, id: String },
}

/// An atomic batch of ops guarded by preconditions: all ops happen with one new cluster revision,
/// or none do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    #[serde(default)]
    pub preconditions: Vec<Precondition>,
    #[serde(default)]
    pub ops: Vec<Op>,
    /// The leader's wall clock when it proposed the transaction: set by the leader (whatever
    /// a client sent), so the time is part of the log entry and every replica stores the same
    /// one. Absent in entries written before the store kept times.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub proposed_at: Option<time::OffsetDateTime>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }
    pub fn when(mut self, p: Precondition) -> Txn {
        self.preconditions.push(p);
        self
    }
    pub fn op(mut self, op: Op) -> Txn {
        self.ops.push(op);
        self
    }
}

/// Why a transaction's preconditions did not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionFailed {
    /// Index into `Txn::preconditions`.
    pub index: usize,
    pub kind: Kind,
    pub id: String,
    /// The object's `mod_revision` at apply time, `None` if absent.
    pub actual_mod_revision: Option<u64>,
}

/// The outcome of a committed transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The cluster revision after the transaction (unchanged if it failed or changed nothing).
    pub revision: u64,
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<PreconditionFailed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Put,
    Delete,
}

/// One change, as delivered by a watch. For a delete, `object` is the object's last state with
/// `mod_revision` set to the deleting revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub object: Object,
    /// When the revision was committed: the proposing leader's clock, never earlier than the
    /// revision before (see [`Txn::proposed_at`]). Absent for changes stored before the
    /// store kept times.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub time: Option<time::OffsetDateTime>,
}

/// Role of a cluster member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A Raft voter: takes part in elections and commits.
    Manager,
    /// Runs tasks; not a raft member: it sees only its own tasks, through a manager.
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// The cluster's credentials, created once by the first node and replicated to every member.
/// Only public material is readable: the roots, and the root key and join secrets sealed
/// under a key that only managers hold (it never enters the log).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecrets {
    pub cluster_id: String,
    /// Trusted roots (PEM); the first one issues certificates.
    #[serde(default)]
    pub ca_certs: Vec<String>,
    /// [`Sealed`], sealed by [`crate::pki::SealKey::seal`].
    #[serde(default)]
    pub sealed: String,
    /// Validity of the node certificates the managers issue.
    #[serde(default)]
    pub cert_ttl_secs: u64,
    /// Removed nodes and when (seconds since the epoch): a certificate of such a node issued
    /// before then is refused everywhere. Only ever grows (see [`Request::Revoke`]).
    #[serde(default)]
    pub revoked: std::collections::BTreeMap<u64, i64>,
    /// Revoked admin certificates by name, and until when they were issued (as `revoked`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub revoked_admins: std::collections::BTreeMap<String, i64>,
    /// While the root is being rotated: when it started (seconds since the epoch). The old
    /// root stays trusted (second in `ca_certs`) until the grace period after it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_started: Option<i64>,
    /// During a rotation: the new root signed by the old one (PEM), presented by every member
    /// so that clients that trust only the old root still verify it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_signed: Option<String>,
}

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

/// What [`ClusterSecrets::sealed`] holds.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sealed {
    pub ca_key_pem: String,
    pub manager_secret: String,
    pub worker_secret: String,
}

/// What a Raft log entry carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Txn(Txn),
    /// Sets the cluster credentials (the bootstrap node, token rotation). Revocations already
    /// applied are kept whatever the new value says.
    SetSecrets(ClusterSecrets),
    /// Revokes the certificates node `node` was issued until `at`.
    Revoke {
        node: u64,
        at: i64,
    },
    /// Revokes the admin certificates named `name` issued until `at`.
    RevokeAdmin {
        name: String,
        at: i64,
    },
    /// Registers (`Some`) or forgets (`None`) a worker: workers are not raft members, so the
    /// managers keep who they are here.
    SetWorker {
        id: u64,
        worker: Option<WorkerEntry>,
    },
}

/// A worker as the managers know it: it never receives the log, only its own tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerEntry {
    pub address: String,
    #[serde(default)]
    pub hostname: String,
}

/// What a manager tells a member about itself (`GET /v1/cluster/whoami`): its role by the
/// current membership (none once removed), the managers to talk to, and the roots to trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub role: Option<Role>,
    pub managers: Vec<String>,
    pub ca_certs: Vec<String>,
    #[serde(default)]
    pub chain: Vec<String>,
}

/// What applying a log entry returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub txn: TxnResponse,
}

/// A member as seen by `cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub address: String,
    pub voter: bool,
    /// A worker: not a raft member at all (neither voter nor learner).
    #[serde(default)]
    pub worker: bool,
}

/// Output of `cluster status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    pub node_id: u64,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    pub leader: Option<u64>,
    pub leader_address: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// Index of the last entry known committed and applied on this node.
    pub commit_index: Option<u64>,
    pub revision: u64,
    pub members: Vec<Member>,
    /// On a worker (which holds no copy of the log): the managers it talks to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// This node's own certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertSummary>,
}

/// A certificate as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    pub role: String,
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
    /// The subject of the root that issued it (a root rotation changes it).
    #[serde(default)]
    pub issuer: String,
}

/// The join tokens printed by `cluster init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub cluster_id: String,
    pub manager: String,
    pub worker: String,
    /// SHA-256 of the root certificate the tokens pin.
    #[serde(default)]
    pub ca_digest: String,
}
