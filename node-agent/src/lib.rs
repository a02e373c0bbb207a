//! The per-node loop that turns assigned tasks into local containers and reports their state
//! ([`agent`]), the leader's reconcile loop that turns services into tasks ([`leader`]), and the
//! store documents they share with the CLI ([`docs`]).

pub mod agent;
pub mod docs;
pub mod exits;
pub mod leader;
pub mod options;
pub mod pull;
pub mod step;

pub use agent::{Agent, Networking};

/// Errors of the agent and the leader loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused or failed a request.
    #[error(transparent)]
    Store(#[from] dcpp_raft::Error),
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
    /// A document or a service setting is not usable.
    #[error("{0}")]
    Invalid(String),
}
