//! How a compose service and one of its tasks become the runtime's [`CreateOptions`]. Pure: the
//! agent does the I/O (image lookup, networks) and hands the results in, so every mapping rule
//! can be tested without a kernel.

use std::time::Duration;

use dcpp_reconciler::Task;
use dcpp_runtime::container::{CreateOptions, ImageInput, NetworkMode};
use dcpp_runtime::image::LocalImage;

use crate::Error;
use crate::docs::{LABEL_IMAGE_ID, LABEL_SERVICE, LABEL_SLOT, LABEL_STACK, LABEL_TASK, ServiceDoc};

/// Finds the running container (its id) of another service of the same stack on this node,
/// for `network_mode: service:NAME`.
pub type PeerLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Builds the create options of task `t` of `doc` named `name` from image `img`. Networks
/// attached through the runtime's hook (and the resolv.conf that goes with them) are added by
/// the agent afterwards when the result's `network` is [`NetworkMode::Private`].
pub fn container_options(
    t: &Task,
    doc: &ServiceDoc,
    img: &LocalImage,
    name: &str,
    peer: PeerLookup<'_>,
) -> Result<CreateOptions, Error> {
    let _ = peer;
    let svc = &doc.service;
    let mut o = CreateOptions::new(ImageInput::from_local(img));
    o.name = Some(name.to_string());
    o.command = svc.command.clone();
    o.entrypoint = svc.entrypoint.clone();
    o.env = svc
        .environment
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    o.working_dir = svc.working_dir.clone();
    o.user = svc.user.clone();
    o.hostname = svc.hostname.clone();
    o.init = svc.init.unwrap_or(false);
    o.stop_signal = svc.stop_signal.clone();
    o.stop_grace_period = svc
        .stop_grace_period
        .map(|d| Duration::from_nanos(d.0))
        .or(Some(Duration::from_secs(10)));
    o.memory = svc.mem_limit;
    o.cpus = svc.cpus;
    o.pids_limit = svc.pids_limit;
    o.privileged = svc.privileged;
    o.read_only = svc.read_only;
    o.cap_add = svc.cap_add.clone();
    o.cap_drop = svc.cap_drop.clone();
    o.shm_size = svc.shm_size;
    let mut labels = svc.labels.clone();
    labels.insert(LABEL_STACK.into(), doc.spec.stack.clone());
    labels.insert(LABEL_SERVICE.into(), doc.spec.name.clone());
    labels.insert(LABEL_SLOT.into(), t.slot.to_string());
    labels.insert(LABEL_TASK.into(), t.id.0.to_string());
    labels.insert(LABEL_IMAGE_ID.into(), img.id.to_string());
    o.labels = labels;
    o.network = match svc.network_mode.as_deref() {
        Some("host") => NetworkMode::Host,
        Some("none") => NetworkMode::None,
        _ => NetworkMode::Private,
    };
    Ok(o)
}
