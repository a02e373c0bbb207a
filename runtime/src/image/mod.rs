//! OCI images: content-addressed store, registry client, import/load, layer unpacking.
//!
//! [`ImageStore`] is synchronous (file locks make it safe across processes); the registry
//! client in [`registry`] is async and writes through the store.

mod archive;
mod auth;
mod digest;
mod error;
mod lock;
mod reference;
pub mod registry;
mod spec;
mod store;
mod unpack;

pub use digest::Digest;
pub use error::ImageError;
pub use reference::{ImageRef, is_loopback_host};
pub use spec::{
    Compression, ContainerConfig, Descriptor, ImageConfig, Index, Manifest, Platform, RootFs,
};
pub(crate) use store::decoder;
pub use store::{
    ImageRecord, ImageStore, LayerRecord, LocalImage, PruneReport, RemoveReport, rfc3339,
};
pub use unpack::get_xattr;
pub(crate) use unpack::unpack as unpack_archive;

/// Media type constants.
pub mod media_types {
    pub use super::spec::{
        DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_LAYER_ZSTD, DOCKER_LIST,
        DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD,
        OCI_MANIFEST,
    };
}
