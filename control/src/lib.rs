//! dcpp's control plane: everything that decides what the cluster should run and whether it
//! does, written once against the [`Store`](dcpp_raft::Store) trait so the same code runs in
//! the daemon (on the raft node), in the CLI (over the API client) and in tests (on an
//! in-memory store).
//!
//! Follow a service through it:
//! - [`schema`]: the store layout — which [`Kind`](dcpp_raft::Kind) holds what, under which id,
//!   and the typed reads. Start here.
//! - [`stacks`]: what `apply`, GitOps, `down`, `service update` and `rollback` write (one
//!   transaction each), and what a rollback restores.
//! - [`leader`]: on the raft leader, reads desired and observed state, runs the pure planner
//!   (`dcpp_reconciler::plan`) and writes tasks and rollout status back.
//! - [`nodes`]: node records, the heartbeat each agent writes, and the one node-status rule.
//! - [`converge`]: the one rule for "is this apply done", used by apply, update, scale, GitOps
//!   and the API alike.
//! - [`preview`]: `dcpp diff` / `apply --dry-run`: the same planner on the stored state and the
//!   new desired state, rendered as actions with reasons.
//! - [`gitops`]: a directory of compose files kept in sync with the stored stacks; each change
//!   it applies is followed with [`converge`] and its outcome logged.
//! - [`api`]: the control plane's own HTTP routes (a stack's convergence verdict).
//!
//! The node agent (`dcpp-node-agent`) reads the tasks assigned to its node, drives the runtime
//! and writes task state back; the leader's next round sees it.

use std::path::{Path, PathBuf};

pub mod api;
pub mod converge;
pub mod files;
#[cfg(test)]
mod fixtures;
pub mod gitops;
pub mod images;
pub mod leader;
pub mod mesh;
pub mod metrics;
pub mod migrate;
pub mod nodes;
pub mod overlay;
pub mod preview;
pub mod schema;
pub mod scope;
pub mod stacks;

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] dcpp_raft::Error),
    #[error(transparent)]
    Reconciler(#[from] dcpp_reconciler::Error),
    /// A document that cannot be built from the compose model.
    #[error("{0}")]
    Invalid(String),
    /// `service rollback` when there is nothing to go back to.
    #[error("{0}")]
    NoRollback(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify_debouncer_full::notify::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
