//! Stores of services, tasks and nodes for the pure functions' tests.

use std::collections::BTreeMap;

use dcpp_reconciler::{NodeId, Resources, ServiceId, ServiceSpec, Slot, Task, TaskId, TaskState};

use crate::nodes::NodeInfo;
use crate::schema::ServiceDoc;

pub fn doc(stack: &str, name: &str, networks: &[(&str, &[&str])]) -> ServiceDoc {
    let mut service = dcpp_spec::Service {
        image: Some("busybox".into()),
        ..Default::default()
    };
    for (k, aliases) in networks {
        service.networks.insert(
            (*k).into(),
            Some(dcpp_spec::ServiceNetwork {
                aliases: aliases.iter().map(|a| (*a).into()).collect(),
                ..Default::default()
            }),
        );
    }
    ServiceDoc {
        spec: ServiceSpec::new(stack, name, "busybox", 1),
        service,
        ipam: BTreeMap::new(),
    }
}

pub fn task(id: u64, service: &str, node: u64, state: TaskState) -> Task {
    Task {
        node: Some(NodeId(node.to_string())),
        state,
        ..Task::new(
            TaskId(id),
            ServiceId(service.into()),
            Slot::Replica(id as u32),
            1,
            "busybox".into(),
            Resources::default(),
            1,
        )
    }
}

pub fn node(id: u64, address: &str) -> NodeInfo {
    NodeInfo {
        id,
        hostname: format!("n{id}"),
        address: address.into(),
        role: dcpp_raft::Role::Manager,
        availability: Default::default(),
        labels: BTreeMap::new(),
        resources: Default::default(),
        last_heartbeat_ms: 0,
        heartbeat_ms: 1000,
    }
}
