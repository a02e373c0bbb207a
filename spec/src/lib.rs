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
mod extensions;
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

/// Serialises a project as YAML in the shape `docker compose config` prints. A literal `$` is
/// written as `$$` (as compose does) so the output can be loaded again unchanged.
pub fn to_yaml(project: &Project) -> String {
    // `$` has no meaning in YAML or JSON syntax, so escaping the text is safe; it also doubles a
    // `$` inside a map key, which compose does not interpolate — a documented limitation.
    yaml_string(project)
        .map(|s| s.replace('$', "$$"))
        .unwrap_or_else(|e| format!("# serialisation failed: {e}\n"))
}

/// YAML as compose's encoder writes it: a long single-line string stays one plain or quoted
/// scalar (never a folded `>` block), a multi-line string is a literal `|` block.
fn yaml_string<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

/// What `dcpp config` prints: the project followed by the file's top-level `x-*` extensions,
/// as `docker compose config` prints them.
pub fn config_yaml(loaded: &Loaded) -> String {
    let mut out = to_yaml(&loaded.project);
    if !loaded.extensions.is_empty() {
        // Both are block mappings at the root, so the extensions can follow the project's keys.
        match yaml_string(&loaded.extensions) {
            Ok(s) => out.push_str(&s.replace('$', "$$")),
            Err(e) => out.push_str(&format!("# serialisation failed: {e}\n")),
        }
    }
    out
}

/// [`config_yaml`] as pretty JSON: the project's keys, then the extensions.
pub fn config_json(loaded: &Loaded) -> String {
    #[derive(serde::Serialize)]
    struct Config<'a> {
        #[serde(flatten)]
        project: &'a Project,
        #[serde(flatten)]
        extensions: &'a std::collections::BTreeMap<String, serde_json::Value>,
    }
    let config = Config {
        project: &loaded.project,
        extensions: &loaded.extensions,
    };
    serde_json::to_string_pretty(&config)
        .map(|s| s.replace('$', "$$"))
        .unwrap_or_else(|e| format!("serialisation failed: {e}"))
}

/// Serialises a project as pretty JSON, with `$` escaped as in [`to_yaml`]. The raft store and
/// API use plain serde instead, which keeps strings unescaped.
pub fn to_json(project: &Project) -> String {
    serde_json::to_string_pretty(project)
        .map(|s| s.replace('$', "$$"))
        .unwrap_or_else(|e| format!("serialisation failed: {e}"))
}

/// The JSON Schema of the canonical model.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Project)).unwrap_or_default()
}
