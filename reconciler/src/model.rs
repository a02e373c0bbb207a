//! The reconciler's own view of desired and observed state.
//!
//! These types are what the leader loop stores in the raft document store (as JSON) and hands to
//! [`crate::plan`]. Desired state (services) and observed state (tasks, nodes, per-service rollout
//! status) are kept apart, as in swarmkit. All times are plain milliseconds supplied by the caller:
//! the reconciler never reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A point in time, in milliseconds since an epoch chosen by the caller.
pub type Time = u64;
/// A duration in milliseconds.
pub type Millis = u64;

/// Service identity: `<stack>_<service>`, the name swarm gives stack services.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceId(pub String);

impl ServiceId {
    pub fn new(stack: &str, name: &str) -> Self {
        ServiceId(format!("{stack}_{name}"))
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Task identity. Allocated from [`Observed::next_task_id`] so that planning stays deterministic
/// (no random ids) and ids are never reused, even after a slot's history was deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// A stable position of a service: replica number (1-based) or, for global services, the node.
/// Replacement tasks inherit the slot of the task they replace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Replica(u32),
    Node(NodeId),
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Replica(n) => write!(f, "{n}"),
            Slot::Node(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Replicated { replicas: u32 },
    Global,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

/// When a task that should be running has stopped, whether and when to replace it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Minimum wait before the replacement may start.
    pub delay: Millis,
    /// Give up after this many restarts (within `window`, if set). `None` = unlimited.
    pub max_attempts: Option<u32>,
    /// Only restarts within this trailing window count toward `max_attempts`.
    pub window: Option<Millis>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: 0,
            max_attempts: None,
            window: None,
        }
    }
}

impl RestartPolicy {
    /// Maps compose's service-level `restart:` value. `unless-stopped` behaves like `always`
    /// because dcpp has no "stopped by the user" state for a single task: stopping is done by
    /// changing the desired state, which the reconciler honours anyway.
    pub fn from_compose(value: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidRestartPolicy(value.to_string());
        let condition = match value {
            "no" | "none" => RestartCondition::None,
            "always" | "unless-stopped" | "any" => RestartCondition::Any,
            "on-failure" => RestartCondition::OnFailure,
            other => {
                let n = other.strip_prefix("on-failure:").ok_or_else(invalid)?;
                let max: u32 = n.trim().parse().map_err(|_| invalid())?;
                return Ok(RestartPolicy {
                    condition: RestartCondition::OnFailure,
                    max_attempts: Some(max),
                    ..RestartPolicy::default()
                });
            }
        };
        Ok(RestartPolicy {
            condition,
            ..RestartPolicy::default()
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    Pause,
    Rollback,
    Continue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

/// Swarm's `update_config` / `rollback_config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Slots replaced at the same time; 0 = all at once.
    pub parallelism: u32,
    /// Wait after a slot's new task is running before that slot counts as done.
    pub delay: Millis,
    pub failure_action: FailureAction,
    /// A new task that fails within this long after starting counts as an update failure.
    pub monitor: Millis,
    /// Tolerated fraction of failed slots (0.0 = any failure triggers `failure_action`).
    pub max_failure_ratio: f64,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: 0,
            failure_action: FailureAction::Pause,
            monitor: 5_000,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintField {
    NodeId,
    Hostname,
    Role,
    Label(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    Eq,
    Ne,
}

/// A placement constraint such as `node.labels.zone==east` or `node.role!=manager`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub field: ConstraintField,
    pub op: ConstraintOp,
    pub value: String,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::InvalidConstraint {
            constraint: text.to_string(),
            reason: why.to_string(),
        };
        let (lhs, op, rhs) = if let Some((l, r)) = text.split_once("!=") {
            (l, ConstraintOp::Ne, r)
        } else if let Some((l, r)) = text.split_once("==") {
            (l, ConstraintOp::Eq, r)
        } else {
            return Err(invalid("expected `==` or `!=`"));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(invalid("empty value"));
        }
        let field = match lhs {
            "node.id" => ConstraintField::NodeId,
            "node.hostname" => ConstraintField::Hostname,
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(invalid("node.role must be `manager` or `worker`"));
                }
                ConstraintField::Role
            }
            other => match other.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => ConstraintField::Label(label.to_string()),
                _ => {
                    return Err(invalid(
                        "unknown field (node.id, node.hostname, node.role, node.labels.<key>)",
                    ));
                }
            },
        };
        Ok(Constraint {
            field,
            op,
            value: value.to_string(),
        })
    }

    pub fn matches(&self, node: &Node) -> bool {
        let actual = match &self.field {
            ConstraintField::NodeId => Some(node.id.0.as_str()),
            ConstraintField::Hostname => Some(node.hostname.as_str()),
            ConstraintField::Role => Some(match node.role {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            }),
            ConstraintField::Label(key) => node.labels.get(key).map(String::as_str),
        };
        match self.op {
            ConstraintOp::Eq => actual == Some(self.value.as_str()),
            ConstraintOp::Ne => actual != Some(self.value.as_str()),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            ConstraintField::NodeId => f.write_str("node.id")?,
            ConstraintField::Hostname => f.write_str("node.hostname")?,
            ConstraintField::Role => f.write_str("node.role")?,
            ConstraintField::Label(l) => write!(f, "node.labels.{l}")?,
        }
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{op}{}", self.value)
    }
}

/// Spread tasks evenly over the values of a node label (swarm `preferences: - spread: node.labels.zone`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpreadPreference {
    pub label: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub constraints: Vec<Constraint>,
    pub max_replicas_per_node: Option<u32>,
    pub preferences: Vec<SpreadPreference>,
}

/// CPU in millicores and memory in bytes. On a node, a zero means "not reported, not enforced".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

/// `depends_on` entry: a service of the same stack that must meet `condition` before this
/// service's tasks are assigned to nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub service: String,
    pub condition: DependencyCondition,
}

/// What scheduling needs to know about one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub stack: String,
    pub name: String,
    pub image: String,
    /// Opaque version of the container-relevant spec. Whoever builds the spec must change it
    /// whenever anything that requires new containers changes (image, env, ports, …). Scaling,
    /// restart policy, update configs and placement do not need a new version.
    pub version: u64,
    pub mode: Mode,
    pub restart: RestartPolicy,
    pub update_config: UpdateConfig,
    pub rollback_config: UpdateConfig,
    pub placement: Placement,
    pub reservations: Resources,
    pub depends_on: Vec<Dependency>,
    pub healthcheck: bool,
    /// `network_mode`, `ipc` or `pid: service:NAME`: the tasks join namespaces of a running
    /// task of service NAME (same stack), so they are placed on a node where one runs, start
    /// after it (an implicit `depends_on` with `service_started`), and are replaced when the
    /// task whose namespaces they joined is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_peer: Option<String>,
    /// Named volumes the service mounts: the key in the compose file → the volume's actual name
    /// (`<stack>_<key>`, the top-level `name:`, or the key itself for an external volume).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, String>,
    /// Actual names of the `external: true` volumes among them: created outside the stack, so
    /// they must exist (compose refuses to start otherwise) and `down -v` leaves them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub external_volumes: BTreeSet<String>,
    /// The secrets and configs mounted into the containers, each at one stored version: a new
    /// version is a new container version, so changing a secret rolls the service like any
    /// other change (and a rollback mounts the previous version again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMount>,
    /// [`ServiceSpec::version`] before the versions of `files` were folded in (0: not yet, or
    /// no files), so that it can be folded again when one of them changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base_version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Whether a [`FileMount`] is a secret or a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One secret or config as a service's containers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMount {
    pub kind: FileKind,
    /// The key in the compose file's top-level section.
    pub source: String,
    /// The stored object's name (`<stack>_<key>`, the top-level `name:`, or the key of an
    /// external one).
    pub name: String,
    /// The stored version mounted; 0 until the caller that stores the data sets it
    /// ([`ServiceSpec::with_file_versions`]).
    pub version: u64,
    /// Absolute path in the container.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

impl ServiceSpec {
    pub fn id(&self) -> ServiceId {
        ServiceId::new(&self.stack, &self.name)
    }

    /// The actual names of the named volumes that live on one node and so bind the service's
    /// tasks to it: the stack's own (an external volume is the user's to place). None for a
    /// global service: each of its tasks has a node of its own and keeps its volume there.
    pub fn local_volumes(&self) -> impl Iterator<Item = &String> + '_ {
        let bound = matches!(self.mode, Mode::Replicated { .. });
        self.volumes
            .values()
            .filter(move |v| bound && !self.external_volumes.contains(*v))
    }

    /// A replicated service with swarm defaults; tests and callers adjust fields from here.
    pub fn new(stack: &str, name: &str, image: &str, replicas: u32) -> Self {
        ServiceSpec {
            stack: stack.to_string(),
            name: name.to_string(),
            image: image.to_string(),
            version: 1,
            mode: Mode::Replicated { replicas },
            restart: RestartPolicy::default(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            placement: Placement::default(),
            reservations: Resources::default(),
            depends_on: Vec::new(),
            healthcheck: false,
            network_peer: None,
            volumes: BTreeMap::new(),
            external_volumes: BTreeSet::new(),
            files: Vec::new(),
            base_version: 0,
        }
    }

    /// Sets the stored version of each secret and config (by kind and object name) and folds
    /// them into [`ServiceSpec::version`]: a spec built by [`ServiceSpec::from_compose`] knows
    /// what it mounts but not which version the store holds. The same versions give the same
    /// spec version however often it is called.
    pub fn with_file_versions(mut self, version_of: impl Fn(FileKind, &str) -> u64) -> Self {
        if self.files.is_empty() {
            return self;
        }
        if self.base_version == 0 {
            self.base_version = self.version;
        }
        let mut h = self.base_version;
        for f in &mut self.files {
            f.version = version_of(f.kind, &f.name);
            for b in format!("{}:{}:{};", f.kind, f.name, f.version).bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        self.version = h;
        self
    }

    /// [`ServiceSpec::with_file_versions`] changing only `kind`/`name` to `version`.
    pub fn with_file_version(self, kind: FileKind, name: &str, version: u64) -> Self {
        let current: Vec<(FileKind, String, u64)> = self
            .files
            .iter()
            .map(|f| (f.kind, f.name.clone(), f.version))
            .collect();
        self.with_file_versions(|k, n| {
            if k == kind && n == name {
                return version;
            }
            current
                .iter()
                .find(|(ck, cn, _)| *ck == k && cn == n)
                .map_or(0, |c| c.2)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    /// Stop the container and keep the task as history.
    Shutdown,
    /// Stop and delete the container; the reconciler deletes the record once it is terminal.
    Remove,
}

/// Observed task state. Declaration order is the only allowed direction of travel (as in
/// swarmkit): a task moves forward, and once terminal it never changes again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Preparing,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Orphaned,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    pub fn can_move_to(self, next: TaskState) -> bool {
        !self.is_terminal() && next > self
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        };
        f.write_str(s)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No healthcheck, or nothing reported yet.
    #[default]
    Unknown,
    Starting,
    Healthy,
    Unhealthy,
}

/// One attempt at running one slot of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub service: ServiceId,
    pub slot: Slot,
    /// `ServiceSpec::version` this task runs.
    pub spec_version: u64,
    pub image: String,
    pub reservations: Resources,
    pub node: Option<NodeId>,
    pub desired: DesiredState,
    pub state: TaskState,
    pub container_id: Option<String>,
    pub health: Health,
    pub exit_code: Option<i32>,
    pub created_at: Time,
    /// Last change of `state`.
    pub updated_at: Time,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    /// Restart delay: the task is not assigned (so not started) before this time.
    pub not_before: Option<Time>,
    /// Why the task is pending, or the last status message.
    pub message: String,
    pub error: Option<String>,
    /// Restarts of this slot so far (this task is restart number `restart_count`).
    pub restart_count: u32,
    /// Times of the restarts that still count toward `max_attempts` (trimmed to the window).
    pub restarts: Vec<Time>,
    /// Consecutive predecessors that died shortly after starting; drives the crash-loop backoff.
    pub fast_failures: u32,
    /// First report of `Health::Healthy`. For a service with a healthcheck this, not
    /// `started_at`, is when the task counts as up: rollouts wait for it and the update monitor
    /// window starts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<Time>,
    /// While `Preparing`: the image pull's progress (cleared by any later state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullProgress>,
}

/// How far an image pull for a task has come, as its agent last wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    pub image: String,
    /// `None` while the manifest is being resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerProgress>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub layers_done: usize,
    pub layers_total: usize,
}

impl fmt::Display for PullProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(l) = self.layers else {
            return write!(f, "pulling {}: resolving", self.image);
        };
        let mb = |b: u64| b as f64 / 1_000_000.0;
        write!(
            f,
            "pulling {}: {:.1}/{:.1} MB, {}/{} layers",
            self.image,
            mb(l.bytes_done.min(l.bytes_total)),
            mb(l.bytes_total),
            l.layers_done.min(l.layers_total),
            l.layers_total
        )
    }
}

impl Task {
    /// A task just made for `slot` of a service at `spec_version`: not placed, nothing run or
    /// reported yet.
    pub fn new(
        id: TaskId,
        service: ServiceId,
        slot: Slot,
        spec_version: u64,
        image: String,
        reservations: Resources,
        now: Time,
    ) -> Task {
        Task {
            id,
            service,
            slot,
            spec_version,
            image,
            reservations,
            node: None,
            desired: DesiredState::Running,
            state: TaskState::New,
            container_id: None,
            health: Health::Unknown,
            exit_code: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            not_before: None,
            message: String::new(),
            error: None,
            restart_count: 0,
            restarts: Vec::new(),
            fast_failures: 0,
            healthy_at: None,
            pull: None,
        }
    }

    /// Swarm-style task name, e.g. `web_api.3`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.service, self.slot)
    }

    pub fn is_live(&self) -> bool {
        !self.state.is_terminal()
    }

    /// Since when the task is up: healthy (since its first `Healthy` report) for a service
    /// with a healthcheck, started otherwise. `None` while it is not up (not started, not yet
    /// healthy, or unhealthy now). Callers check that the task is running.
    pub fn ready_at(&self, healthcheck: bool) -> Option<Time> {
        if !healthcheck {
            return self.started_at;
        }
        // A task recorded before `healthy_at` existed counts from its start.
        (self.health == Health::Healthy).then(|| self.healthy_at.or(self.started_at))?
    }

    /// Moves the observed state forward; a backward move (or any move out of a terminal state)
    /// is refused, because it means a stale or buggy report.
    pub fn transition(&mut self, to: TaskState, now: Time) -> Result<(), Error> {
        if to == self.state {
            return Ok(());
        }
        if !self.state.can_move_to(to) {
            return Err(Error::BackwardTransition {
                task: self.id,
                from: self.state,
                to,
            });
        }
        self.state = to;
        self.updated_at = now;
        if to != TaskState::Preparing {
            self.pull = None;
        }
        if to == TaskState::Running && self.started_at.is_none() {
            self.started_at = Some(now);
        }
        if to.is_terminal() && self.finished_at.is_none() {
            self.finished_at = Some(now);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Manager,
    Worker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Takes new tasks.
    Active,
    /// Keeps its tasks but takes no new ones.
    Pause,
    /// Its tasks are moved elsewhere.
    Drain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    Down,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub hostname: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
    /// Capacity for reservations.
    pub resources: Resources,
}

impl Node {
    pub fn new(id: &str) -> Self {
        Node {
            id: NodeId(id.to_string()),
            hostname: id.to_string(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            resources: Resources::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollingBack,
    RollbackPaused,
    RolledBack,
}

impl UpdateState {
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollingBack | UpdateState::RollbackPaused | UpdateState::RolledBack
        )
    }

    pub fn is_paused(self) -> bool {
        matches!(self, UpdateState::Paused | UpdateState::RollbackPaused)
    }

    /// A rollout whose task failures are being watched.
    pub fn is_active(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollingBack)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: Time,
    pub completed_at: Option<Time>,
    pub message: String,
    /// The spec version an automatic rollback moved away from; while the user's desired spec
    /// still has this version, the rolled-back spec stays in force.
    pub rolled_back_from: Option<u64>,
    /// The config used while rolling back (the failed spec's `rollback_config`).
    pub rollback_config: Option<UpdateConfig>,
    /// Why the update failed (kept when the rollback completes and its message changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Per-service rollout bookkeeping, owned by the reconciler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The spec tasks are converged to (the desired spec, or the rollback target).
    pub spec: ServiceSpec,
    /// The last spec before the current rollout: the rollback target. `None` after an
    /// automatic rollback: the spec it left was rejected, and there is nothing older to go to.
    pub previous: Option<ServiceSpec>,
    /// A version an automatic rollback rejected, while the desired spec still names it. The
    /// leader resets the desired spec to the version that runs in the same write as the
    /// rollback; once desired matches, this is cleared, so applying the rejected version again
    /// retries the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u64>,
    pub update: Option<UpdateStatus>,
}

/// Desired state: what the user declared.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub services: BTreeMap<ServiceId, ServiceSpec>,
}

impl Desired {
    pub fn insert(&mut self, spec: ServiceSpec) {
        self.services.insert(spec.id(), spec);
    }
}

/// Observed state: nodes, tasks (what agents report) and the reconciler's own rollout status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub nodes: BTreeMap<NodeId, Node>,
    pub tasks: BTreeMap<TaskId, Task>,
    pub services: BTreeMap<ServiceId, ServiceStatus>,
    /// Next task id to hand out; only ever grows.
    pub next_task_id: u64,
    /// The node each local named volume lives on (by the volume's actual name), recorded when
    /// the first task that mounts it is assigned. A task mounting it may only go there: its
    /// data is on that node's disk, and another node would silently start from empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, NodeId>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            nodes: BTreeMap::new(),
            tasks: BTreeMap::new(),
            services: BTreeMap::new(),
            next_task_id: 1,
            volumes: BTreeMap::new(),
        }
    }
}

impl Observed {
    pub fn add_node(&mut self, node: Node) {
        self.nodes.insert(node.id.clone(), node);
    }
}
