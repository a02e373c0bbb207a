//! Compose files → the canonical desired-state model.
//!
//! [`load`] reads one or more compose files the way `docker compose` v2 does (interpolation,
//! `.env`, several `-f` files, `extends`, `include`, profiles, anchors and `<<` merge keys),
//! validates them collecting every problem with `file:line:col: key.path: message`, and returns
//! the canonical [`Project`]. No I/O beyond reading the compose files and the env files they name;
//! the process environment is passed in through [`LoadOptions`].

pub mod conformance;
mod convert;
mod dotenv;
mod error;
mod extensions;
mod interp;
pub mod ipam;
mod loader;
mod merge;
pub mod model;
mod syntax;
mod units;
mod yaml;

pub use convert::normalize_project_name;
pub use error::{SpecError, SpecErrors};
pub use loader::{DEFAULT_FILES, LoadOptions, Loaded, SourceEnv, load};
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

/// [`config_yaml`] as JSON, shaped as compose-go's `Project.MarshalJSON` writes it: the
/// top-level keys in alphabetical order (compose builds them as a Go map, extensions
/// included), every object in its field order, `command` and `entrypoint` always present
/// (`null` when unset, compose cannot omit them), `x-*` keys only at the top level (compose's
/// JSON leaves them out elsewhere), and `<`, `>`, `&` escaped as Go's encoder escapes them.
pub fn config_json(loaded: &Loaded) -> String {
    config_json_value(loaded)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map(|s| go_json_escapes(&s).replace('$', "$$"))
        .unwrap_or_else(|e| format!("serialisation failed: {e}"))
}

/// A JSON value whose objects keep their keys in the order they were written, so a struct
/// serialised through it keeps its field order.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Ordered {
    Map(indexmap::IndexMap<String, Ordered>),
    Seq(Vec<Ordered>),
    Leaf(serde_json::Value),
}

fn ordered<T: serde::Serialize>(v: &T) -> Result<Ordered, serde_json::Error> {
    serde_json::from_str(&serde_json::to_string(v)?)
}

fn config_json_value(
    loaded: &Loaded,
) -> Result<std::collections::BTreeMap<String, Ordered>, serde_json::Error> {
    use std::collections::BTreeMap;

    fn without_x<T: Clone>(m: &BTreeMap<String, T>, clear: impl Fn(&mut T)) -> BTreeMap<String, T> {
        let mut m = m.clone();
        m.values_mut().for_each(clear);
        m
    }
    let p = &loaded.project;
    let mut top = BTreeMap::new();
    top.insert("name".to_owned(), Ordered::Leaf(p.name.clone().into()));
    let mut services = indexmap::IndexMap::new();
    for (name, s) in &p.services {
        let mut s = s.clone();
        s.clear_extensions();
        // Placeholders put the two keys where the struct order puts them; they become null.
        let (no_command, no_entrypoint) = (s.command.is_none(), s.entrypoint.is_none());
        s.command.get_or_insert_with(Vec::new);
        s.entrypoint.get_or_insert_with(Vec::new);
        let mut o = ordered(&s)?;
        if let Ordered::Map(m) = &mut o {
            for (key, unset) in [("command", no_command), ("entrypoint", no_entrypoint)] {
                if let Some(v) = m.get_mut(key).filter(|_| unset) {
                    *v = Ordered::Leaf(serde_json::Value::Null);
                }
            }
        }
        services.insert(name.clone(), o);
    }
    top.insert("services".to_owned(), Ordered::Map(services));
    if !p.networks.is_empty() {
        let n = without_x(&p.networks, Network::clear_extensions);
        top.insert("networks".to_owned(), ordered(&n)?);
    }
    if !p.volumes.is_empty() {
        let v = without_x(&p.volumes, |v| v.extensions.clear());
        top.insert("volumes".to_owned(), ordered(&v)?);
    }
    for (key, objects) in [("secrets", &p.secrets), ("configs", &p.configs)] {
        if !objects.is_empty() {
            let o = without_x(objects, |o| o.extensions.clear());
            top.insert(key.to_owned(), ordered(&o)?);
        }
    }
    for (k, v) in &loaded.extensions {
        top.insert(k.clone(), Ordered::Leaf(v.clone()));
    }
    Ok(top)
}

/// Go's JSON encoder writes `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes. None of them
/// is JSON syntax, so each one found is inside a string and the swap keeps the value.
fn go_json_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
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

/// Every key path of the model's JSON schema, `*` for a user-chosen key, `[]` for a list item:
/// what the conformance table must cover.
pub fn schema_paths() -> std::collections::BTreeSet<String> {
    fn walk(
        defs: &serde_json::Value,
        node: &serde_json::Value,
        path: &str,
        seen: &[String],
        out: &mut std::collections::BTreeSet<String>,
    ) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_owned()
            } else {
                format!("{path}.{k}")
            }
        };
        if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
            let name = r.rsplit('/').next().unwrap_or_default().to_owned();
            if !seen.contains(&name) {
                let mut seen = seen.to_vec();
                seen.push(name.clone());
                walk(defs, &defs[&name], path, &seen, out);
            }
            return;
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            for alt in node.get(k).and_then(|a| a.as_array()).into_iter().flatten() {
                walk(defs, alt, path, seen, out);
            }
        }
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                let p = join(k);
                out.insert(p.clone());
                walk(defs, v, &p, seen, out);
            }
        }
        if let Some(ap) = node.get("additionalProperties").filter(|a| a.is_object()) {
            walk(defs, ap, &join("*"), seen, out);
        }
        if let Some(items) = node.get("items").filter(|a| a.is_object()) {
            walk(defs, items, &join("[]"), seen, out);
        }
    }
    let schema = schema();
    let mut out = std::collections::BTreeSet::new();
    walk(&schema["$defs"], &schema, "", &[], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_is_shaped_as_compose_prints_it() {
        let web = Service {
            image: Some("nginx".into()),
            command: Some(vec!["sh".into(), "-c".into(), "a && b <x>".into()]),
            extensions: [("x-owner".to_owned(), "team".into())].into(),
            healthcheck: Some(Healthcheck {
                test: vec!["NONE".into()],
                extensions: [("x-probe".to_owned(), "fast".into())].into(),
                ..Healthcheck::default()
            }),
            ..Service::default()
        };
        let loaded = Loaded {
            project: Project {
                name: "p".into(),
                services: [("web".to_owned(), web)].into(),
                networks: [(
                    "default".to_owned(),
                    Network {
                        name: Some("p_default".into()),
                        extensions: [("x-vlan".to_owned(), 1.into())].into(),
                        ..Network::default()
                    },
                )]
                .into(),
                volumes: Default::default(),
                configs: Default::default(),
                secrets: Default::default(),
            },
            warnings: Vec::new(),
            files: Vec::new(),
            extensions: [("x-top".to_owned(), "$1".into())].into(),
            sources: Vec::new(),
            source_env: Default::default(),
        };
        let json = config_json(&loaded);
        let keys: Vec<&str> = json
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap_or_default())
            .collect();
        assert_eq!(keys, ["name", "networks", "services", "x-top"], "{json}");
        assert!(
            json.contains(r#""a \u0026\u0026 b \u003cx\u003e""#),
            "{json}"
        );
        assert!(json.contains(r#""entrypoint": null"#), "{json}");
        let command = json.find("\"command\"").expect("command");
        let entrypoint = json.find("\"entrypoint\"").expect("entrypoint");
        let image = json.find("\"image\"").expect("image");
        assert!(command < entrypoint && entrypoint < image, "{json}");
        assert!(
            !json.contains("x-owner") && !json.contains("x-vlan") && !json.contains("x-probe"),
            "{json}"
        );
        assert!(json.contains(r#""x-top": "$$1""#), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["services"]["web"]["command"][2], "a && b <x>");
    }
}
