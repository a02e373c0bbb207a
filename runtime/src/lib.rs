//! The node's container runtime: images, containers, networks, volumes, logs.
//!
//! All side effects of dcpp on the local machine live in this crate; `unsafe` is allowed only
//! here, and every block carries a `// SAFETY:` comment.

pub mod container;
pub mod datadir;
pub mod image;
pub mod network;
pub mod process;
