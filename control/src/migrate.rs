//! Stores written by dcpp before the schema had dedicated kinds kept the leader's bookkeeping
//! under reserved `config` ids (which compose `configs:` would have collided with). The leader
//! moves them once, in one transaction, before it first plans.

use std::collections::BTreeMap;

use dcpp_raft::{Kind, Op, Precondition, Store, Txn};

use crate::Error;
use crate::schema::{ServiceDoc, ServiceHistory, TASK_COUNTER_ID};

const LEGACY_COUNTER: &str = "dcpp/next-task-id";
const LEGACY_STATUS: &str = "dcpp/status/";
const LEGACY_PREVIOUS: &str = "dcpp/previous/";
const LEGACY_REJECTED: &str = "dcpp/rejected/";

/// Moves every legacy object; returns how many were moved. Objects already moved are not
/// overwritten by their legacy copy.
pub async fn legacy_config_ids<S: Store>(s: &S) -> Result<usize, Error> {
    let legacy: Vec<_> = s
        .list(Kind::Config)
        .await?
        .objects
        .into_iter()
        .filter(|o| o.id.starts_with("dcpp/"))
        .collect();
    if legacy.is_empty() {
        return Ok(0);
    }
    let mut txn = Txn::new();
    let mut histories: BTreeMap<String, ServiceHistory> = BTreeMap::new();
    for o in &legacy {
        txn = txn
            .when(Precondition::ModRevision {
                kind: Kind::Config,
                id: o.id.clone(),
                revision: o.mod_revision,
            })
            .op(Op::delete(Kind::Config, o.id.clone()));
        if o.id == LEGACY_COUNTER {
            if s.get(Kind::Counter, TASK_COUNTER_ID).await.is_err() {
                txn = txn.op(Op::Put {
                    kind: Kind::Counter,
                    id: TASK_COUNTER_ID.into(),
                    value: o.value.clone(),
                });
            }
        } else if let Some(sid) = o.id.strip_prefix(LEGACY_STATUS) {
            if s.get(Kind::ServiceStatus, sid).await.is_err() {
                txn = txn.op(Op::Put {
                    kind: Kind::ServiceStatus,
                    id: sid.into(),
                    value: o.value.clone(),
                });
            }
        } else if let Some(sid) = o.id.strip_prefix(LEGACY_PREVIOUS) {
            histories.entry(sid.into()).or_default().previous = o.decode::<ServiceDoc>().ok();
        } else if let Some(sid) = o.id.strip_prefix(LEGACY_REJECTED) {
            histories.entry(sid.into()).or_default().rejected = o.decode::<ServiceDoc>().ok();
        }
    }
    for (sid, h) in histories {
        if !h.is_empty() && s.get(Kind::ServiceHistory, &sid).await.is_err() {
            txn = txn.op(Op::put(Kind::ServiceHistory, sid, &h)?);
        }
    }
    s.txn(txn).await?;
    Ok(legacy.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcpp_raft::MemStore;
    use dcpp_reconciler::ServiceSpec;

    #[tokio::test]
    async fn legacy_ids_move_to_their_kinds_and_leave_user_configs_alone() {
        let s = MemStore::new();
        let doc = ServiceDoc {
            spec: ServiceSpec::new("st", "web", "busybox", 1),
            service: dcpp_spec::Service::default(),
            ipam: Default::default(),
        };
        s.apply(
            Txn::new()
                .op(Op::put(Kind::Config, LEGACY_COUNTER, &12u64).unwrap())
                .op(Op::put(Kind::Config, "dcpp/previous/st_web", &doc).unwrap())
                .op(Op::put(Kind::Config, "st_app-config", &"user data").unwrap()),
        )
        .unwrap();
        assert_eq!(legacy_config_ids(&s).await.unwrap(), 2);
        let n: u64 = s
            .get(Kind::Counter, TASK_COUNTER_ID)
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(n, 12);
        let h: ServiceHistory = s
            .get(Kind::ServiceHistory, "st_web")
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(h.previous, Some(doc));
        let left: Vec<String> = s
            .snapshot(Kind::Config)
            .objects
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(left, vec!["st_app-config".to_string()]);
        assert_eq!(legacy_config_ids(&s).await.unwrap(), 0);
    }
}
