//! Compose files → the canonical desired-state model.
//!
//! [`load`] reads one or more compose files the way `docker compose` v2 does (interpolation,
//! `.env`, several `-f` files, `extends`, `include`, profiles, anchors and `<<` merge keys),
//! validates them collecting every problem with `file:line:col: key.path: message`, and returns
//! the canonical [`Project`]. No I/O beyond reading the compose files and the env files they name;
//! the process environment is passed in through [`LoadOptions`].

mod convert;
mod dotenv;
mod error;
mod interp;
mod loader;
mod merge;
pub mod model;
mod syntax;
mod units;
mod yaml;

pub use convert::normalize_project_name;
pub use error::{SpecError, SpecErrors};
pub use loader::{DEFAULT_FILES, LoadOptions, Loaded, load};
pub use model::*;

/// Serialises a project as YAML in the shape `docker compose config` prints.
pub fn to_yaml(project: &Project) -> String {
    serde_saphyr::to_string(project).unwrap_or_else(|e| format!("# serialisation failed: {e}\n"))
}

/// Serialises a project as pretty JSON.
pub fn to_json(project: &Project) -> String {
    serde_json::to_string_pretty(project).unwrap_or_else(|e| format!("serialisation failed: {e}"))
}

/// The JSON Schema of the canonical model.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Project)).unwrap_or_default()
}
