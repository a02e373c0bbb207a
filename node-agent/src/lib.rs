//! The node's side. [`agent`] is the loop: it turns the tasks the leader assigned to this node
//! into local containers, networks and volumes and reports their state back, executing for each
//! task the pure decision of [`step`] (healthcheck bookkeeping included); [`contact`] decides
//! whether it may, or must stand down as cut off from the managers. [`options`] makes container
//! options of a service document; [`pull`] pulls images; [`exits`] notices container exits; [`volumes`] carries out
//! `down --volumes` on this node; [`host`] is the runtime side (containers, networks, images,
//! clock) behind the traits the agent uses. The store layout it reads and writes is
//! `dcpp_control::schema`.

pub mod agent;
pub mod contact;
pub mod exits;
pub mod host;
pub mod metrics;
pub mod options;
pub mod pull;
pub mod step;
#[cfg(test)]
mod testing;
pub mod volumes;

pub use agent::{Agent, Networking};

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused or failed a request.
    #[error(transparent)]
    Store(#[from] dcpp_raft::Error),
    /// A control-plane read or write failed.
    #[error(transparent)]
    Control(#[from] dcpp_control::Error),
    /// The planner's output did not apply to the state it was planned on.
    #[error("reconciler: {0}")]
    Reconciler(#[from] dcpp_reconciler::Error),
    /// The image is not in the local store.
    #[error("image not found: {0}")]
    ImageNotFound(String),
    /// Pulling the image from its registry failed (the reason names reference and registry).
    #[error("image pull failed: {0}")]
    Pull(String),
    /// The container runtime or the network layer failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A stack network cannot have the addressing it asks for (see
    /// [`crate::host::EnsureError::Refused`]): the task is rejected, not retried.
    #[error("network: {0}")]
    NetworkRefused(String),
    /// A document or a service setting is not usable.
    #[error("{0}")]
    Invalid(String),
}

impl From<host::EnsureError> for Error {
    fn from(e: host::EnsureError) -> Self {
        match e {
            host::EnsureError::Refused(m) => Error::NetworkRefused(m),
            host::EnsureError::Host(h) => Error::Runtime(h.to_string()),
        }
    }
}
