//! Shared helpers for the runtime crate's integration tests: a real registry, a busybox root
//! filesystem and OCI layout building. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

pub mod busybox;
pub mod oci;
pub mod registry;
