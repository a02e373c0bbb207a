//! Node records and the node-status rule.
//!
//! Each node's agent keeps its own record (`Kind::Node`, id = raft node id) fresh with a
//! heartbeat ([`heartbeat`]); `node update` edits availability and labels. Whether a node is up
//! is one rule, [`status`], used by the leader's scheduling and by `node ls` alike. The raft
//! layer only knows that such records exist (it deletes one with its member); what they hold is
//! decided here.

use std::collections::BTreeMap;
use std::fmt;

use dcpp_raft::{Kind, Op, Precondition, Role, Store, Txn};
use dcpp_reconciler::{NodeId, NodeRole, NodeStatus};
use serde::{Deserialize, Serialize};

use crate::Error;

/// How often an agent refreshes its record unless told otherwise (`dcpp daemon --heartbeat`).
pub const DEFAULT_HEARTBEAT_MS: u64 = 1_000;
/// The interval of records written before they carried their own.
const LEGACY_HEARTBEAT_MS: u64 = 5_000;
/// Heartbeats a node may miss before it is down: with the default interval a dead node is down
/// 3–4 s after it died. Fewer would take a slow raft write (an fsync on a loaded disk) for a
/// dead node; a longer interval costs fewer writes (one raft write per node per interval) and
/// notices later.
const MISSED_HEARTBEATS: u64 = 3;
/// Slack on top, for clock differences between the node and the leader.
const TIMEOUT_SLACK_MS: u64 = 1_000;

/// Whether the scheduler may place work on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        })
    }
}

/// Capacity a node offers to the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

/// The record of a cluster node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    pub hostname: String,
    /// Address peers reach its Raft/API endpoint at (`host:port`).
    pub address: String,
    pub role: Role,
    #[serde(default)]
    pub availability: Availability,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub last_heartbeat_ms: u64,
    /// The node's own heartbeat interval (0: a record from before it was written).
    #[serde(default)]
    pub heartbeat_ms: u64,
}

/// What only the node itself knows about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfInfo {
    pub id: u64,
    pub hostname: String,
    pub address: String,
    pub role: Role,
    pub resources: Resources,
    pub heartbeat_ms: u64,
}

impl SelfInfo {
    /// This host, with the role and address raft gives it.
    pub fn local(id: u64, address: &str, role: Role) -> SelfInfo {
        SelfInfo {
            id,
            hostname: hostname(),
            address: address.to_string(),
            role,
            resources: local_resources(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
        }
    }
}

/// How long node `n` may go without a heartbeat before it is down: [`down_after_ms`] of its
/// own interval.
pub fn timeout_ms(n: &NodeInfo) -> u64 {
    let interval = match n.heartbeat_ms {
        0 => LEGACY_HEARTBEAT_MS,
        i => i,
    };
    down_after_ms(interval)
}

/// How long a node that heartbeats every `heartbeat_ms` may stay silent before the leader
/// declares it down: [`MISSED_HEARTBEATS`] intervals plus [`TIMEOUT_SLACK_MS`].
pub fn down_after_ms(heartbeat_ms: u64) -> u64 {
    MISSED_HEARTBEATS * heartbeat_ms + TIMEOUT_SLACK_MS
}

/// Up or down, by the rule the leader schedules by: a node whose agent has not reported for
/// [`timeout_ms`] is down.
pub fn status(n: &NodeInfo, now_ms: u64) -> NodeStatus {
    if now_ms.saturating_sub(n.last_heartbeat_ms) < timeout_ms(n) {
        NodeStatus::Ready
    } else {
        NodeStatus::Down
    }
}

/// In how many milliseconds the first of `nodes` that is up now goes down if it stays silent
/// (the leader plans again then, so a dead node is noticed on time, not at the next resync).
pub fn next_down_in_ms<'a>(
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    now_ms: u64,
) -> Option<u64> {
    nodes
        .into_iter()
        .filter(|n| status(n, now_ms) == NodeStatus::Ready)
        .map(|n| (n.last_heartbeat_ms + timeout_ms(n)).saturating_sub(now_ms))
        .min()
}

/// Whether a change of a node record from `before` (absent: not seen yet) to `after` can
/// change a plan: anything but a fresh heartbeat of a node that was up. At a thousand nodes
/// the records change a thousand times a second, and re-planning on each kept the leader busy
/// with rounds that could not differ; a node that goes silent is noticed on time all the same
/// (the leader looks again when it would be down, [`next_down_in_ms`]).
pub fn change_matters(before: Option<&NodeInfo>, after: &NodeInfo, now_ms: u64) -> bool {
    let Some(b) = before else { return true };
    if status(b, now_ms) == NodeStatus::Down {
        return true;
    }
    let refreshed = NodeInfo {
        last_heartbeat_ms: after.last_heartbeat_ms,
        ..b.clone()
    };
    refreshed != *after
}

/// The node id the reconciler uses for a raft node.
pub fn node_id(id: u64) -> NodeId {
    NodeId(id.to_string())
}

/// The reconciler's view of a node record.
pub fn to_reconciler(n: &NodeInfo, now_ms: u64) -> dcpp_reconciler::Node {
    let mut r = dcpp_reconciler::Node::new(&n.id.to_string());
    r.hostname = n.hostname.clone();
    r.role = match n.role {
        Role::Manager => NodeRole::Manager,
        Role::Worker => NodeRole::Worker,
    };
    r.availability = match n.availability {
        Availability::Active => dcpp_reconciler::Availability::Active,
        Availability::Pause => dcpp_reconciler::Availability::Pause,
        Availability::Drain => dcpp_reconciler::Availability::Drain,
    };
    r.status = status(n, now_ms);
    r.labels = n.labels.clone();
    r.resources.memory = n.resources.memory_bytes;
    r.resources.cpu_millis = n.resources.nano_cpus / 1_000_000;
    r
}

/// Every node record.
pub async fn list<S: Store>(s: &S) -> Result<Vec<NodeInfo>, Error> {
    let mut out = Vec::new();
    for o in s.list(Kind::Node).await?.objects {
        out.push(o.decode()?);
    }
    Ok(out)
}

/// Creates or refreshes this node's record: the heartbeat, and what the node knows about
/// itself (hostname, address, role, resources); availability and labels set by `node update`
/// are kept. A concurrent edit wins (the next heartbeat comes soon). Returns the revision the
/// record was committed at, `None` when the concurrent edit won.
pub async fn heartbeat<S: Store>(s: &S, me: &SelfInfo, now_ms: u64) -> Result<Option<u64>, Error> {
    let id = me.id.to_string();
    let (mut info, pre) = match s.get(Kind::Node, &id).await {
        Ok(o) => (
            o.decode::<NodeInfo>()?,
            Precondition::ModRevision {
                kind: Kind::Node,
                id: id.clone(),
                revision: o.mod_revision,
            },
        ),
        Err(dcpp_raft::Error::NotFound { .. }) => (
            NodeInfo {
                id: me.id,
                hostname: String::new(),
                address: String::new(),
                role: me.role,
                availability: Availability::default(),
                labels: BTreeMap::new(),
                resources: Resources::default(),
                last_heartbeat_ms: 0,
                heartbeat_ms: 0,
            },
            Precondition::Absent {
                kind: Kind::Node,
                id: id.clone(),
            },
        ),
        Err(e) => return Err(e.into()),
    };
    info.hostname = me.hostname.clone();
    info.address = me.address.clone();
    info.role = me.role;
    info.resources = me.resources.clone();
    info.last_heartbeat_ms = now_ms;
    info.heartbeat_ms = me.heartbeat_ms;
    match s
        .txn(Txn::new().when(pre).op(Op::put(Kind::Node, id, &info)?))
        .await
    {
        Ok(r) => Ok(Some(r.revision)),
        Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the records of nodes that are not members (any more): a member that left or was
/// removed may have had a heartbeat in flight, and a removed node that comes back still
/// heartbeats. Run by the leader, which knows the membership. Returns how many went.
pub async fn forget_non_members<S: Store>(
    s: &S,
    members: &std::collections::BTreeSet<u64>,
) -> Result<usize, Error> {
    let mut txn = Txn::new();
    let mut n = 0;
    for o in s.list(Kind::Node).await?.objects {
        let member = o.id.parse::<u64>().is_ok_and(|id| members.contains(&id));
        if !member {
            n += 1;
            txn = txn
                .when(Precondition::ModRevision {
                    kind: Kind::Node,
                    id: o.id.clone(),
                    revision: o.mod_revision,
                })
                .op(Op::delete(Kind::Node, o.id));
        }
    }
    if n == 0 {
        return Ok(0);
    }
    match s.txn(txn).await {
        Ok(_) => Ok(n),
        // A record changed meanwhile: the next round looks again.
        Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Whether this node's record is missing or says something else about it than `me` (a new
/// member, a promotion): then a heartbeat is due at once.
pub async fn record_stale<S: Store>(s: &S, me: &SelfInfo) -> bool {
    match s.get(Kind::Node, &me.id.to_string()).await {
        Ok(o) => o
            .decode::<NodeInfo>()
            .map_or(true, |n| n.role != me.role || n.address != me.address),
        Err(_) => true,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// CPU and memory of this host, as offered to the scheduler.
pub fn local_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Resources {
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: mem_kb * 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcpp_raft::MemStore;

    fn me(role: Role) -> SelfInfo {
        SelfInfo {
            id: 7,
            hostname: "h".into(),
            address: "10.0.0.7:2377".into(),
            role,
            resources: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
        }
    }

    #[test]
    fn a_node_is_down_once_its_heartbeat_is_older_than_the_timeout() {
        let n = NodeInfo {
            id: 1,
            hostname: "h".into(),
            address: "a".into(),
            role: Role::Manager,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            resources: Resources::default(),
            last_heartbeat_ms: 1_000,
            heartbeat_ms: 1_000,
        };
        // Three missed heartbeats of its own interval, and a second of slack.
        assert_eq!(timeout_ms(&n), 4_000);
        assert_eq!(status(&n, 4_999), NodeStatus::Ready);
        assert_eq!(status(&n, 5_000), NodeStatus::Down);
        assert_eq!(status(&n, 0), NodeStatus::Ready);
        assert_eq!(to_reconciler(&n, 5_000).status, NodeStatus::Down);
        // A record from before intervals were recorded: the old 5 s interval.
        let old = NodeInfo {
            heartbeat_ms: 0,
            ..n.clone()
        };
        assert_eq!(timeout_ms(&old), 16_000);
        // The leader's next look: when the first node still up would go down.
        let slow = NodeInfo {
            id: 2,
            heartbeat_ms: 10_000,
            ..n.clone()
        };
        assert_eq!(next_down_in_ms([&n, &slow], 2_000), Some(3_000));
        assert_eq!(
            next_down_in_ms([&n, &slow], 6_000),
            Some(26_000),
            "n is down already"
        );
        assert_eq!(next_down_in_ms([&n], 6_000), None);
    }

    #[test]
    fn only_a_heartbeat_of_a_node_that_was_up_changes_no_plan() {
        let n = NodeInfo {
            id: 1,
            hostname: "h".into(),
            address: "a".into(),
            role: Role::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            resources: Resources::default(),
            last_heartbeat_ms: 1_000,
            heartbeat_ms: 1_000,
        };
        let beat = NodeInfo {
            last_heartbeat_ms: 2_000,
            ..n.clone()
        };
        assert!(!change_matters(Some(&n), &beat, 2_000));
        assert!(change_matters(None, &beat, 2_000), "a record not seen yet");
        // Down at 5 000 (4 s timeout): its heartbeat brings it back.
        assert!(change_matters(Some(&n), &beat, 5_000));
        let mut drained = beat.clone();
        drained.availability = Availability::Drain;
        assert!(change_matters(Some(&n), &drained, 2_000));
        let mut labelled = beat.clone();
        labelled.labels.insert("zone".into(), "a".into());
        assert!(change_matters(Some(&n), &labelled, 2_000));
        let slower = NodeInfo {
            heartbeat_ms: 5_000,
            ..beat.clone()
        };
        assert!(
            change_matters(Some(&n), &slower, 2_000),
            "its timeout changed"
        );
    }

    #[tokio::test]
    async fn heartbeat_creates_the_record_then_refreshes_it_keeping_operator_settings() {
        let s = MemStore::new();
        assert!(record_stale(&s, &me(Role::Worker)).await);
        // The revision it committed at: the agent's proof that it reached the managers.
        assert_eq!(heartbeat(&s, &me(Role::Worker), 5).await.unwrap(), Some(1));
        assert!(!record_stale(&s, &me(Role::Worker)).await);
        let mut n: NodeInfo = s.get(Kind::Node, "7").await.unwrap().decode().unwrap();
        assert_eq!((n.role, n.last_heartbeat_ms), (Role::Worker, 5));
        n.availability = Availability::Drain;
        n.labels.insert("disk".into(), "ssd".into());
        s.apply(Txn::new().op(Op::put(Kind::Node, "7", &n).unwrap()))
            .unwrap();
        // Promoted: the record is stale until the next heartbeat.
        assert!(record_stale(&s, &me(Role::Manager)).await);
        assert_eq!(heartbeat(&s, &me(Role::Manager), 9).await.unwrap(), Some(3));
        let n: NodeInfo = s.get(Kind::Node, "7").await.unwrap().decode().unwrap();
        assert_eq!(n.role, Role::Manager);
        assert_eq!(n.last_heartbeat_ms, 9);
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(n.labels["disk"], "ssd");
        assert_eq!(n.resources.memory_bytes, 1 << 30);
    }

    #[tokio::test]
    async fn the_records_of_non_members_are_forgotten() {
        let s = MemStore::new();
        heartbeat(&s, &me(Role::Manager), 5).await.unwrap();
        let mut other = me(Role::Worker);
        other.id = 8;
        heartbeat(&s, &other, 5).await.unwrap();
        let members = std::collections::BTreeSet::from([7]);
        assert_eq!(forget_non_members(&s, &members).await.unwrap(), 1);
        let ids: Vec<u64> = list(&s).await.unwrap().iter().map(|n| n.id).collect();
        assert_eq!(ids, [7]);
        assert_eq!(forget_non_members(&s, &members).await.unwrap(), 0);
    }
}
