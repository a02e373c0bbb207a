//! The crate's one error type.

use crate::model::{TaskId, TaskState};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// A placement constraint that cannot be parsed.
    #[error("invalid placement constraint `{constraint}`: {reason}")]
    InvalidConstraint { constraint: String, reason: String },
    /// A compose `restart:` value that is not `no`, `always`, `on-failure[:N]` or `unless-stopped`.
    #[error("invalid restart policy `{0}` (expected no, always, on-failure[:N] or unless-stopped)")]
    InvalidRestartPolicy(String),
    /// A compose service that cannot be scheduled as written.
    #[error("service `{service}`: {reason}")]
    InvalidService { service: String, reason: String },
    /// A report or action that would move a task's state backward (or out of a terminal state).
    #[error("task {task}: refusing backward state transition {from} -> {to}")]
    BackwardTransition {
        task: TaskId,
        from: TaskState,
        to: TaskState,
    },
    /// The plan refers to a task or service that is gone, or in a state the plan did not expect:
    /// the state changed between planning and applying.
    #[error("stale plan: {0}")]
    Stale(String),
}

impl Error {
    /// Transient errors go away by planning again against fresh state; the others mean bad
    /// input or a bug.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Stale(_))
    }
}
