//! The one error type of the image subsystem.

use std::path::PathBuf;

/// Everything that can go wrong while storing, pulling, pushing, importing or unpacking images.
/// Each message is one line and names the object it is about (reference, registry, path).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference the user typed could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// No local image matches a name, tag, id or digest prefix.
    #[error("no such image: {0}")]
    NotFound(String),

    /// A short id or digest prefix matched more than one image.
    #[error("image reference {0:?} is ambiguous: it matches several images")]
    Ambiguous(String),

    /// The image is used by containers and cannot be removed.
    #[error("image {image} is in use by {holders} container(s): {first}")]
    InUse {
        image: String,
        holders: usize,
        first: String,
    },

    /// Content did not hash to the digest it was announced with.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// A digest string is not `sha256:<64 hex>`.
    #[error("invalid or unsupported digest {0:?} (only sha256 is supported)")]
    InvalidDigest(String),

    /// A layer archive tried to write outside its root or was otherwise unsafe.
    #[error("unsafe layer {layer}: entry {entry:?}: {reason}")]
    UnsafeLayer {
        layer: String,
        entry: String,
        reason: String,
    },

    /// A manifest, config, index or archive did not have the expected shape.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    /// A media type we cannot handle.
    #[error("unsupported media type {media_type:?} in {context}")]
    UnsupportedMediaType { media_type: String, context: String },

    /// No manifest in an index matches the platform we run on.
    #[error("{reference}: no manifest for platform {platform} in index (available: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },

    /// The registry answered that the repository, tag or digest does not exist.
    #[error("{reference}: not found in registry {registry}: {detail}")]
    RemoteNotFound {
        reference: String,
        registry: String,
        detail: String,
    },

    /// The registry refused our credentials (or demanded some we do not have).
    #[error("{reference}: authentication refused by registry {registry}: {detail}")]
    AuthRefused {
        reference: String,
        registry: String,
        detail: String,
    },

    /// The registry could not be reached at all.
    #[error("{reference}: registry {registry} unreachable: {detail}")]
    Unreachable {
        reference: String,
        registry: String,
        detail: String,
    },

    /// Any other error the registry returned.
    #[error("{reference}: registry {registry}: {detail}")]
    Registry {
        reference: String,
        registry: String,
        detail: String,
    },

    /// Reading the Docker credentials file failed.
    #[error("credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },

    /// A filesystem operation on the store failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The on-disk store metadata could not be parsed.
    #[error("corrupt image store metadata {path}: {reason}")]
    CorruptStore { path: PathBuf, reason: String },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ImageError::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Whether retrying the same operation later could succeed (network trouble), as opposed to
    /// errors that will repeat (bad reference, corrupt content, refused credentials).
    pub fn is_transient(&self) -> bool {
        matches!(self, ImageError::Unreachable { .. } | ImageError::Io { .. })
    }
}

/// Shorthand used throughout the image module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Attach an operation and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| ImageError::io(op, path, e))
    }
}
