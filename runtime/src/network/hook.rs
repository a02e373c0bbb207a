//! The bridge between the container executor and the network manager: the daemon plans a
//! container's networks before creating it, and the executor's [`NetworkHook`] call (namespaces
//! made, process not started) carries the plan out.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{AttachRequest, Attachment, NetworkManager, PortMapping};
use crate::container::{HookError, NetworkHook};

/// One network of a planned container.
#[derive(Debug, Clone, Default)]
pub struct PlannedNetwork {
    /// Network name.
    pub network: String,
    /// Extra names on it.
    pub aliases: Vec<String>,
    /// Fixed address.
    pub ipv4_address: Option<Ipv4Addr>,
}

/// Everything the network layer does for one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerPlan {
    /// Compose service (resolvable; replicas share published ports).
    pub service: Option<String>,
    /// Networks in order; the first non-internal one carries the default route.
    pub networks: Vec<PlannedNetwork>,
    /// Ports to publish once attached.
    pub ports: Vec<PortMapping>,
    /// Attach withdrawn (see [`AttachRequest::withdrawn`]): the caller puts the container into
    /// service with [`NetworkManager::set_serving`] once it runs (and is healthy).
    pub withdrawn: bool,
    /// The container's own nameservers (compose's `dns:`), where the resolver forwards the
    /// names that are not the stack's; empty: the host's.
    pub dns: Vec<std::net::IpAddr>,
}

/// A [`NetworkHook`] that attaches containers as planned with [`plan`](Self::plan). A container
/// created without a plan keeps only `lo`.
pub struct ContainerNetworks {
    mgr: Arc<NetworkManager>,
    plans: Mutex<HashMap<String, ContainerPlan>>,
    attached: Mutex<HashMap<String, Vec<Attachment>>>,
}

impl ContainerNetworks {
    /// Wraps a manager.
    pub fn new(mgr: Arc<NetworkManager>) -> Self {
        ContainerNetworks {
            mgr,
            plans: Mutex::default(),
            attached: Mutex::default(),
        }
    }

    /// Records what the container named `name` gets when the executor creates it.
    pub fn plan(&self, name: &str, plan: ContainerPlan) {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), plan);
    }

    /// What the container with this id got.
    pub fn attachments(&self, id: &str) -> Vec<Attachment> {
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    fn run_plan(
        &self,
        id: &str,
        name: &str,
        netns: &Path,
        plan: &ContainerPlan,
    ) -> Result<Vec<Attachment>, super::Error> {
        let mut out = Vec::new();
        for n in &plan.networks {
            let req = AttachRequest {
                container_id: id.to_owned(),
                container_name: name.to_owned(),
                service: plan.service.clone(),
                network: n.network.clone(),
                aliases: n.aliases.clone(),
                ipv4_address: n.ipv4_address,
                withdrawn: plan.withdrawn,
            };
            out.push(self.mgr.attach(&req, netns)?);
        }
        if !plan.dns.is_empty() {
            self.mgr.set_upstreams(id, &plan.dns)?;
        }
        if !plan.ports.is_empty() {
            self.mgr.publish(id, plan.service.as_deref(), &plan.ports)?;
        }
        Ok(out)
    }
}

impl NetworkHook for ContainerNetworks {
    fn attach(&self, id: &str, name: &str, netns: &Path) -> Result<(), HookError> {
        let Some(plan) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        else {
            return Ok(());
        };
        match self.run_plan(id, name, netns, &plan) {
            Ok(a) => {
                self.attached
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_owned(), a);
                Ok(())
            }
            Err(e) => {
                // Leave nothing half-attached: the executor fails the create.
                let _ = self.mgr.detach(id, None);
                Err(e.into())
            }
        }
    }

    fn detach(&self, id: &str, name: &str) {
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Err(e) = self.mgr.detach(id, None) {
            tracing::warn!(container = id, "detaching from networks: {e}");
        }
        // Written for the container before it was created; it goes with it.
        if let Err(e) = self.mgr.remove_resolv_conf(name) {
            tracing::warn!(container = id, "{e}");
        }
    }
}
