//! `down --volumes` on this node: the leader-independent half of a stack removal. `down`
//! writes one [`VolumeRemoval`] per node; this node's agent removes the stack's volumes from
//! its own volume store once no container of the stack is left here, then reports (or, when
//! nobody waits, deletes the record). Volumes live where the containers ran, so the node that
//! holds them does the removal, whichever machine `down` ran on.

use dcpp_control::schema::{LABEL_STACK, VolumeRemoval};
use dcpp_raft::{Kind, Op, Precondition, Store, Txn};

use crate::Error;
use crate::host::Containers;

/// Acts on the pending volume removals of node `me` whose stack has no container here any
/// more. Returns whether anything was done.
pub async fn remove_pending<S: Store>(
    node: &S,
    me: u64,
    ctr: &dyn Containers,
) -> Result<bool, Error> {
    let mut did = false;
    for o in node.list(Kind::Volume).await?.objects {
        let Ok(mut r) = o.decode::<VolumeRemoval>() else {
            continue;
        };
        if r.node != me || r.removed.is_some() {
            continue;
        }
        let containers = ctr.list();
        let busy = containers
            .iter()
            .any(|c| c.labels.get(LABEL_STACK) == Some(&r.stack));
        if busy {
            continue;
        }
        let existing = ctr.volumes();
        let mut removed = Vec::new();
        for v in crate::options::stack_volumes(&r.services, &existing) {
            let users: Vec<String> = containers
                .iter()
                .filter(|c| c.volumes.contains(&v))
                .map(|c| c.name.clone())
                .collect();
            match ctr.remove_volume(&v, &users) {
                Ok(()) => {
                    tracing::info!(volume = %v, stack = %r.stack, "volume removed");
                    removed.push(v);
                }
                Err(e) => r.errors.push(format!("volume {v}: {e}")),
            }
        }
        let txn = Txn::new().when(Precondition::ModRevision {
            kind: Kind::Volume,
            id: o.id.clone(),
            revision: o.mod_revision,
        });
        let txn = if r.report {
            r.removed = Some(removed);
            txn.op(Op::put(Kind::Volume, o.id, &r)?)
        } else {
            txn.op(Op::delete(Kind::Volume, o.id))
        };
        match node.txn(txn).await {
            Ok(_) | Err(dcpp_raft::Error::PreconditionFailed(_)) => did = true,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(did)
}
