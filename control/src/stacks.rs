//! Stack writes and service history: what `apply`, GitOps, `down`, `service update` and
//! `service rollback` write, and what a rollback restores.
//!
//! Every write of a service document that replaces another records the replaced one as the
//! service's [`ServiceHistory::previous`], in the same transaction; `service rollback` goes
//! back to it (and the version left becomes the previous one, so a second rollback goes
//! forward again, as in swarm). An automatic rollback ([`crate::leader`]) keeps the rejected
//! document as history instead.

use std::collections::BTreeMap;

use dcpp_raft::{Kind, Op, Precondition, Store, Txn};
use dcpp_reconciler::ServiceStatus;

use crate::Error;
use crate::schema::{
    ServiceDoc, ServiceHistory, StackDoc, VolumeRemoval, history, rolled_back_doc, stack_services,
    volume_removal_key,
};

/// Writes the stack and its changed services in one transaction; writes nothing when neither
/// the services nor the stack's provenance changed. `effective` counts the changes that will
/// be written (a removed service only counts with `prune`).
pub async fn store_stack<S: Store>(
    s: &S,
    stack: &mut StackDoc,
    old: &BTreeMap<String, ServiceDoc>,
    new: &BTreeMap<String, ServiceDoc>,
    stored: Option<&StackDoc>,
    prune: bool,
    effective: usize,
) -> Result<(), Error> {
    let unchanged_stack = stored.is_some_and(|s| s.hash == stack.hash && s.source == stack.source);
    if effective == 0 && unchanged_stack {
        return Ok(());
    }
    if let Some(st) = stored
        && effective == 0
    {
        // Only provenance changed: keep the stack's original apply time.
        stack.applied_at_ms = st.applied_at_ms;
    }
    let mut txn = Txn::new().op(Op::put(Kind::Stack, stack.name.clone(), &*stack)?);
    for (name, d) in new {
        match old.get(name) {
            Some(o) if o == d => {}
            Some(o) => {
                let mut h = history(s, &d.id()).await?;
                h.previous = Some(o.clone());
                txn = txn
                    .op(Op::put(Kind::ServiceHistory, d.id().0, &h)?)
                    .op(Op::put(Kind::Service, d.id().0, d)?);
            }
            None => txn = txn.op(Op::put(Kind::Service, d.id().0, d)?),
        }
    }
    if prune {
        for (name, d) in old {
            if !new.contains_key(name) {
                txn = txn
                    .op(Op::delete(Kind::Service, d.id().0))
                    .op(Op::delete(Kind::ServiceHistory, d.id().0));
            }
        }
    }
    s.txn(txn).await?;
    Ok(())
}

/// What `down` asks for besides removing the stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// Remove the stack's named and anonymous volumes on every node (`down --volumes`).
    pub volumes: bool,
    /// The caller waits for the nodes' reports ([`VolumeRemoval::removed`]) and deletes them;
    /// otherwise each agent deletes its record when done.
    pub report: bool,
}

/// Deletes a stack, its services and their history in one transaction (with `volumes`, also
/// the per-node [`VolumeRemoval`] records the agents act on). Returns the removed services.
pub async fn delete_stack<S: Store>(
    s: &S,
    name: &str,
    removal: &Removal,
) -> Result<Vec<ServiceDoc>, Error> {
    let old: Vec<ServiceDoc> = stack_services(s, name).await?.into_values().collect();
    let mut txn = Txn::new().op(Op::delete(Kind::Stack, name.to_string()));
    for d in &old {
        txn = txn
            .op(Op::delete(Kind::Service, d.id().0))
            .op(Op::delete(Kind::ServiceHistory, d.id().0));
    }
    if removal.volumes {
        // The volumes go on every node, so their homes go too: the stack applied again
        // starts afresh wherever its tasks are placed.
        let homes = crate::schema::volume_homes(s).await?;
        let names: std::collections::BTreeSet<&String> =
            old.iter().flat_map(|d| d.spec.local_volumes()).collect();
        for v in names.into_iter().filter(|v| homes.contains_key(*v)) {
            txn = txn.op(Op::delete(Kind::VolumeHome, v.clone()));
        }
        for n in crate::nodes::list(s).await? {
            let r = VolumeRemoval {
                stack: name.to_string(),
                node: n.id,
                services: old.clone(),
                report: removal.report,
                removed: None,
                errors: Vec::new(),
            };
            txn = txn.op(Op::put(Kind::Volume, volume_removal_key(n.id, name), &r)?);
        }
    }
    s.txn(txn).await?;
    Ok(old)
}

/// The volume removals of one stack, by node.
pub async fn volume_removals<S: Store>(
    s: &S,
    stack: &str,
) -> Result<BTreeMap<u64, VolumeRemoval>, Error> {
    let mut out = BTreeMap::new();
    for o in s.list(Kind::Volume).await?.objects {
        if let Ok(r) = o.decode::<VolumeRemoval>()
            && r.stack == stack
        {
            out.insert(r.node, r);
        }
    }
    Ok(out)
}

/// Deletes the volume removal records of `stack` for `nodes` (after `down` read the reports).
pub async fn forget_volume_removals<S: Store>(
    s: &S,
    stack: &str,
    nodes: impl IntoIterator<Item = u64>,
) -> Result<(), Error> {
    let mut txn = Txn::new();
    for n in nodes {
        txn = txn.op(Op::delete(Kind::Volume, volume_removal_key(n, stack)));
    }
    if !txn.ops.is_empty() {
        s.txn(txn).await?;
    }
    Ok(())
}

/// Replaces a service document read at revision `rev` by `after`, recording `before` as what
/// a rollback restores.
pub async fn update_service<S: Store>(
    s: &S,
    before: &ServiceDoc,
    rev: u64,
    after: &ServiceDoc,
) -> Result<(), Error> {
    let id = after.id();
    let mut h = history(s, &id).await?;
    h.previous = Some(before.clone());
    replace_service(s, rev, after, &h).await
}

/// Writes `doc` over the service document read at revision `rev`, with its history, in one
/// transaction.
async fn replace_service<S: Store>(
    s: &S,
    rev: u64,
    doc: &ServiceDoc,
    history: &ServiceHistory,
) -> Result<(), Error> {
    let id = doc.id().0;
    let txn = Txn::new()
        .when(Precondition::ModRevision {
            kind: Kind::Service,
            id: id.clone(),
            revision: rev,
        })
        .op(Op::put(Kind::ServiceHistory, id.clone(), history)?)
        .op(Op::put(Kind::Service, id, doc)?);
    s.txn(txn).await?;
    Ok(())
}

/// `service rollback`: goes back to the spec the orchestrator ran before the last update
/// (with the container settings stored at that update when they belong to that version,
/// otherwise only the image goes back). Returns the document now desired.
pub async fn rollback_service<S: Store>(
    s: &S,
    current: &ServiceDoc,
    rev: u64,
) -> Result<ServiceDoc, Error> {
    let id = current.id();
    let status: ServiceStatus = crate::schema::status(s, &id)
        .await?
        .ok_or_else(|| Error::NoRollback(format!("{id} has no rollout status yet")))?;
    let Some(prev) = status.previous else {
        if let Some(u) = status
            .update
            .as_ref()
            .filter(|u| u.rolled_back_from.is_some())
        {
            return Err(Error::NoRollback(format!(
                "{id} has no previous spec to roll back to: {} (version {} runs)",
                u.message, status.spec.version
            )));
        }
        return Err(Error::NoRollback(format!(
            "{id} has no previous spec to roll back to"
        )));
    };
    let h = history(s, &id).await?;
    let back = rolled_back_doc(current, h.previous.as_ref(), &prev);
    let h = ServiceHistory {
        previous: Some(current.clone()),
        rejected: h.rejected,
    };
    replace_service(s, rev, &back, &h).await?;
    Ok(back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::stack_docs;
    use dcpp_raft::MemStore;
    use dcpp_reconciler::ServiceSpec;

    fn doc(image: &str) -> ServiceDoc {
        ServiceDoc {
            spec: ServiceSpec::new("st", "web", image, 1),
            service: dcpp_spec::Service {
                image: Some(image.into()),
                ..Default::default()
            },
            ipam: Default::default(),
        }
    }

    fn stack() -> StackDoc {
        StackDoc {
            name: "st".into(),
            services: vec!["web".into()],
            networks: vec![],
            source: "f.yml".into(),
            hash: "h1".into(),
            applied_at_ms: 1,
        }
    }

    #[tokio::test]
    async fn an_update_records_what_it_replaced_and_delete_forgets_it() {
        let s = MemStore::new();
        let v1 = BTreeMap::from([("web".to_string(), doc("busybox:1"))]);
        let v2 = BTreeMap::from([("web".to_string(), doc("busybox:2"))]);
        store_stack(&s, &mut stack(), &BTreeMap::new(), &v1, None, false, 1)
            .await
            .unwrap();
        let sid = doc("x").id();
        assert!(history(&s, &sid).await.unwrap().is_empty());
        let mut st2 = stack();
        st2.hash = "h2".into();
        store_stack(&s, &mut st2, &v1, &v2, Some(&stack()), false, 1)
            .await
            .unwrap();
        assert_eq!(
            history(&s, &sid).await.unwrap().previous,
            Some(doc("busybox:1"))
        );
        assert_eq!(stack_services(&s, "st").await.unwrap(), v2);
        let gone = delete_stack(&s, "st", &Removal::default()).await.unwrap();
        assert_eq!(gone, vec![doc("busybox:2")]);
        assert!(history(&s, &sid).await.unwrap().is_empty());
        assert!(s.snapshot(Kind::Stack).objects.is_empty());
        assert!(s.snapshot(Kind::Volume).objects.is_empty());
    }

    #[tokio::test]
    async fn an_unchanged_stack_writes_nothing() {
        let s = MemStore::new();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("compose.yml");
        std::fs::write(&f, "services:\n  web:\n    image: busybox\n").unwrap();
        let loaded = dcpp_spec::load(&dcpp_spec::LoadOptions {
            files: vec![f],
            project_name: Some("st".into()),
            working_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        let (mut st, docs) = stack_docs(&loaded.project, "f.yml").unwrap();
        let new: BTreeMap<_, _> = docs.into_iter().map(|d| (d.spec.name.clone(), d)).collect();
        store_stack(&s, &mut st, &BTreeMap::new(), &new, None, false, 1)
            .await
            .unwrap();
        let rev = s.snapshot(Kind::Stack).revision;
        let stored = st.clone();
        store_stack(&s, &mut st, &new, &new, Some(&stored), false, 0)
            .await
            .unwrap();
        assert_eq!(s.snapshot(Kind::Stack).revision, rev);
    }
}
