//! The replicated, durable, authenticated cluster store (openraft + redb + axum).
//!
//! A generic versioned document store in the style of etcd / the Kubernetes API server: objects
//! are keyed by ([`Kind`], id), carry JSON values with `create_revision`/`mod_revision`, and are
//! changed by [`Txn`]s with compare-and-set preconditions. Every change bumps a cluster-wide
//! revision; [`Node::watch`] streams changes after any retained revision.

pub mod access;
pub mod api;
mod client;
mod error;
pub mod network;
mod node;
pub mod pki;
pub mod scope;
pub mod store;
pub mod tls;
pub mod types;
mod worker;

pub use access::{MemStore, Store};
pub use client::{Client, Endpoint};
pub use error::Error;
pub use node::{
    AddMember, AdminCert, CommitObserver, JoinGrant, JoinRequest, Node, NodeConfig, ObjectList,
    RemoveMember, RenewGrant, RenewRequest, RevokeAdmin, RotateToken, SetRole,
};
pub use pki::CertRole;
pub use types::*;

/// Raft node id.
pub type NodeId = u64;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// The openraft type configuration of the dcpp store.
    pub TypeConfig:
        D = Request,
        R = Response,
);

/// The openraft handle for our store.
pub type Raft = openraft::Raft<TypeConfig>;
