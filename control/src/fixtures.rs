//! Stores of services, tasks and nodes for the pure functions' tests.

use std::collections::BTreeMap;

use dcpp_reconciler::{
    DesiredState, Health, NodeId, Resources, ServiceId, ServiceSpec, Slot, Task, TaskId, TaskState,
};

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
        id: TaskId(id),
        service: ServiceId(service.into()),
        slot: Slot::Replica(id as u32),
        spec_version: 1,
        image: "busybox".into(),
        reservations: Resources::default(),
        node: Some(NodeId(node.to_string())),
        desired: DesiredState::Running,
        state,
        container_id: None,
        health: Health::Unknown,
        exit_code: None,
        created_at: 1,
        updated_at: 1,
        started_at: None,
        finished_at: None,
        not_before: None,
        message: String::new(),
        error: None,
        restart_count: 0,
        restarts: vec![],
        fast_failures: 0,
        healthy_at: None,
        pull: None,
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
