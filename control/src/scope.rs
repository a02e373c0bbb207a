//! What a worker's certificate may see and change: its own node record, the tasks placed on
//! it, their status, the services those tasks run, the endpoint tables of the networks those
//! tasks are on, the routing mesh, and the volume removals addressed to it.
//! Everything else (stacks, other nodes' tasks, secrets, the other nodes) stays out of reach
//! even for a worker whose machine is compromised.

use dcpp_raft::scope::WorkerScope;
use dcpp_raft::store::StoreReader;
use dcpp_raft::{Kind, NodeId, Object};

/// The worker rule of dcpp's store layout (see [`crate::schema`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Workers;

/// The node a task document (either layout) places its task on.
fn placed_on(v: &serde_json::Value) -> Option<NodeId> {
    v.get("node")?.as_str()?.parse().ok()
}

fn task_on(store: &StoreReader, id: &str, w: NodeId) -> bool {
    matches!(store.get(Kind::Task, id), Ok(Some(t)) if placed_on(&t.value) == Some(w))
}

/// Whether a network document (see [`crate::overlay`]) has an endpoint on worker `w`.
fn network_of(v: &serde_json::Value, w: NodeId) -> bool {
    v.get("endpoints")
        .and_then(|e| e.as_object())
        .is_some_and(|eps| {
            eps.values()
                .any(|e| e.get("node").and_then(|n| n.as_u64()) == Some(w))
        })
}

fn volume_for(v: &serde_json::Value, w: NodeId) -> bool {
    v.get("node").and_then(|n| n.as_u64()) == Some(w)
}

impl WorkerScope for Workers {
    fn may_read(&self, store: &StoreReader, w: NodeId, o: &Object) -> bool {
        match o.kind {
            Kind::Node => o.id == w.to_string(),
            Kind::Task => placed_on(&o.value) == Some(w),
            Kind::TaskStatus => task_on(store, &o.id, w),
            Kind::Volume => volume_for(&o.value, w),
            // The addresses and names of the networks its tasks are on, to reach their peers.
            Kind::Network => network_of(&o.value, w),
            // Any node may have to answer a published port of the routing mesh.
            Kind::Mesh => true,
            Kind::Service => store.list(Kind::Task).is_ok_and(|(tasks, _)| {
                tasks.iter().any(|t| {
                    placed_on(&t.value) == Some(w)
                        && t.value.get("service").and_then(|s| s.as_str()) == Some(o.id.as_str())
                })
            }),
            _ => false,
        }
    }

    fn may_write(&self, store: &StoreReader, w: NodeId, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Node => id == w.to_string(),
            Kind::TaskStatus => task_on(store, id, w),
            Kind::Volume => {
                matches!(store.get(Kind::Volume, id), Ok(Some(v)) if volume_for(&v.value, w))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_and_volume_owner_are_read_from_the_stored_shapes() {
        // The task document's node is the reconciler's node id (a decimal string); a volume
        // removal's node is the raft id (a number).
        let doc = serde_json::json!({"node": "42", "service": "s_web"});
        assert_eq!(placed_on(&doc), Some(42));
        assert_eq!(placed_on(&serde_json::json!({"node": null})), None);
        assert_eq!(placed_on(&serde_json::json!({"node": "n1"})), None);
        assert!(volume_for(&serde_json::json!({"node": 42}), 42));
        assert!(!volume_for(&serde_json::json!({"node": 43}), 42));
        // A network's endpoint table: readable by the nodes its tasks run on, and no other.
        let net = serde_json::to_value(crate::overlay::NetworkDoc {
            subnet: "10.0.0.0/24".into(),
            vni: 4096,
            ipam: None,
            endpoints: [(
                7,
                crate::overlay::EndpointDoc {
                    ip: "10.0.0.2".parse().unwrap(),
                    node: 42,
                    underlay: None,
                    name: "s_web.1.t7".into(),
                    service: "web".into(),
                    aliases: vec![],
                    serving: true,
                },
            )]
            .into(),
        })
        .unwrap();
        assert!(network_of(&net, 42));
        assert!(!network_of(&net, 43));
        assert!(!network_of(&serde_json::json!({"endpoints": {}}), 42));
        let t = serde_json::to_value(dcpp_reconciler::NodeId("42".into())).unwrap();
        assert_eq!(placed_on(&serde_json::json!({ "node": t })), Some(42));
    }
}
