//! The node's container runtime: images, containers, networks, volumes, logs.
//!
//! All side effects of dcpp on the local machine live in this crate; `unsafe` is allowed only
//! here, and every block carries a `// SAFETY:` comment.
//!
//! Where to start: [`container`]'s module doc maps its files (the manager with one file per
//! lifecycle verb and the on-disk records, then `shim/`: the per-container monitor, the
//! built-in executor and `exec`, three programs of their own); [`image`] is the store and the
//! registry client; [`network`] the bridges, IPAM, DNS and published ports.

pub mod build;
pub(crate) mod commit;
pub mod container;
pub mod datadir;
pub mod image;
pub mod network;
pub mod process;
