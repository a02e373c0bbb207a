//! The errors of the container verbs.

use super::{HookError, cgroup, user, volume};

/// Errors of the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid (bad limit, unknown capability, …); nothing was created.
    #[error("{0}")]
    InvalidConfig(String),
    /// The image reference could not be resolved.
    #[error("image {0}: not found")]
    ImageNotFound(String),
    /// The user could not be resolved from the image.
    #[error(transparent)]
    User(#[from] user::UserError),
    /// No container has this id, id prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An id prefix matches several containers.
    #[error("container reference {0:?} is ambiguous")]
    Ambiguous(String),
    /// A container with this name exists already.
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
    /// The operation does not fit the container's state.
    #[error("container {id}: {msg}")]
    State {
        /// container id
        id: String,
        /// what is wrong
        msg: String,
    },
    /// Creating or starting the container failed; whatever was created has been removed.
    #[error("creating container: {0}")]
    Create(String),
    /// The network hook failed.
    #[error("network: {0}")]
    Network(#[source] HookError),
    /// Volume errors.
    #[error(transparent)]
    Volume(#[from] volume::VolumeError),
    /// cgroup errors.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// I/O on the data dir.
    #[error("{context}: {source}")]
    Io {
        /// what was being done
        context: String,
        /// the cause
        source: std::io::Error,
    },
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
