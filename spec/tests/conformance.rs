//! The conformance table (`dcpp_spec::conformance`) cannot drift: `spec/CONFORMANCE.md` is
//! generated from it, and every entry's example is loaded to check that the loader does what
//! the entry says.
//!
//! `DCPP_BLESS=1 cargo test -p dcpp-spec --test conformance` rewrites the document.

use std::path::Path;

use dcpp_spec::conformance::{Key, OBJECTS, Object, Support, markdown};
use dcpp_spec::{LoadOptions, SpecError, load};

const DOC: &str = "CONFORMANCE.md";

#[test]
fn conformance_md_is_generated_from_the_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let generated = markdown();
    if std::env::var_os("DCPP_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write CONFORMANCE.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "spec/{DOC} is not what spec/src/conformance.rs generates; regenerate it with \
         `DCPP_BLESS=1 cargo test -p dcpp-spec --test conformance` and review the diff"
    );
}

/// `services.web.ports[0].name` → `services.*.ports.[].name` segments, compared with a
/// pattern where `*` stands for any one name.
fn segments(concrete: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in concrete.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        out.push(name.to_owned());
        for _ in rest.split('[').filter(|r| !r.is_empty()) {
            out.push("[]".to_owned());
        }
    }
    out
}

fn matches(pattern: &[&str], concrete: &[String]) -> bool {
    pattern.len() == concrete.len()
        && pattern
            .iter()
            .zip(concrete)
            .all(|(p, c)| *p == "*" || p == c)
}

fn at(pattern: &str, e: &SpecError) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    matches(&p, &segments(&e.path))
}

/// A warning at a key above `pattern` (the parent whose warning covers it).
fn above(pattern: &str, e: &SpecError) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let c = segments(&e.path);
    c.len() < p.len() && matches(&p[..c.len()], &c)
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A compose file that uses `key` of `object` as its example says: the example goes into
/// service `web`, network `n`, volume `v`, config `c` or secret `s`, or the top level.
fn compose_file(object: &Object, key: &Key) -> String {
    let section = object.path.split('.').next().unwrap_or_default();
    let mut service = String::from("image: busybox\n");
    let mut network = String::new();
    let mut volume = String::new();
    let mut top = String::new();
    match section {
        "services" => service.push_str(&indent(key.example, 0)),
        "networks" => network = indent(key.example, 0),
        "volumes" => volume = indent(key.example, 0),
        // Used by `web`: an object no service mounts is left out of the model. Without an
        // example, neither the object nor the reference.
        "configs" | "secrets" if !key.example.is_empty() => {
            let name = if section == "configs" { "c" } else { "s" };
            top = format!("{section}:\n  {name}:\n{}", indent(key.example, 4));
            service.push_str(&format!("{section}: [{name}]\n"));
        }
        "configs" | "secrets" => {}
        _ => {
            top = indent(key.example, 0);
            for (section, name) in [("configs", "c"), ("secrets", "s")] {
                if key.example.starts_with(&format!("{section}:")) {
                    service.push_str(&format!("{section}: [{name}]\n"));
                }
            }
        }
    }
    // A service's reference to a config or secret needs the config or secret.
    if section == "services" {
        if key.example.contains("configs:") {
            top.push_str("configs:\n  c:\n    file: ./c.txt\n");
        }
        if key.example.contains("secrets:") {
            top.push_str("secrets:\n  s:\n    file: ./s.txt\n");
        }
    }
    let block = |s: &str| {
        if s.is_empty() {
            " {}\n".to_owned()
        } else {
            format!("\n{}", indent(s, 4))
        }
    };
    format!(
        "services:\n  web:\n{}  db:\n    image: busybox\n    environment: {{DB: '1'}}\n    networks: [default, n]\n    volumes: ['v:/data']\nnetworks:\n  n:{}volumes:\n  v:{}{top}",
        indent(&service, 4),
        block(&network),
        block(&volume),
    )
}

fn load_example(dir: &Path, yaml: &str) -> Result<dcpp_spec::Loaded, dcpp_spec::SpecErrors> {
    let file = dir.join("compose.yml");
    std::fs::write(&file, yaml).expect("write compose.yml");
    load(&LoadOptions {
        files: vec![file],
        working_dir: dir.to_path_buf(),
        ..LoadOptions::default()
    })
}

/// Applied entries whose example is the value dcpp assumes when the key is absent.
const SAME_AS_DEFAULT: &[&str] = &[
    "networks.*.external",
    "networks.*.internal",
    "networks.*.attachable",
    "networks.*.enable_ipv6",
];

fn positioned(e: &SpecError) -> bool {
    e.line > 0 && e.column > 0 && e.file.ends_with("compose.yml")
}

fn shown(items: &[SpecError]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// What is wrong with one entry, if anything.
fn check(dir: &Path, object: &Object, key: &Key) -> Option<String> {
    let path = object.key_path(key);
    let yaml = compose_file(object, key);
    let result = load_example(dir, &yaml);
    let problem = match (key.support, &result) {
        (Support::Applied, Ok(l)) if l.warnings.is_empty() => {
            // An applied key reaches the model: a key the loader accepted and dropped would
            // leave it as the skeleton alone gives it.
            if key.example.is_empty() || SAME_AS_DEFAULT.contains(&path.as_str()) {
                return None;
            }
            let plain = compose_file(
                object,
                &Key {
                    example: "",
                    ..*key
                },
            );
            match load_example(dir, &plain) {
                Ok(base) if base.project != l.project => return None,
                Ok(_) => "applied but the model is the same without it".to_owned(),
                Err(e) => format!("the skeleton does not load: {e}"),
            }
        }
        (Support::Applied, Ok(l)) => format!("applied but warned: {:?}", shown(&l.warnings)),
        (Support::Refused, Err(e)) => {
            if e.errors
                .iter()
                .any(|x| at(&path, x) && positioned(x) && x.message.contains(key.why))
            {
                return None;
            }
            format!("no positioned error saying why: {:?}", shown(&e.errors))
        }
        (Support::Refused, Ok(_)) => "refused but loads".to_owned(),
        (_, Err(e)) => format!("does not load: {:?}", shown(&e.errors)),
        (Support::Unapplied, Ok(l)) if key.why.is_empty() => {
            let parent = l.warnings.iter().any(|w| {
                above(&path, w)
                    && positioned(w)
                    && w.message.starts_with("accepted but not applied by dcpp: ")
            });
            if parent && !l.warnings.iter().any(|w| at(&path, w)) {
                return None;
            }
            format!("no warning of its parent alone: {:?}", shown(&l.warnings))
        }
        (Support::Unapplied | Support::Ignored | Support::Deprecated, Ok(l)) => {
            let prefix = if key.support == Support::Unapplied {
                "accepted but not applied by dcpp: "
            } else {
                ""
            };
            if l.warnings.iter().any(|w| {
                at(&path, w)
                    && positioned(w)
                    && w.message.starts_with(prefix)
                    && w.message.ends_with(key.why)
            }) {
                return None;
            }
            format!("no positioned warning saying why: {:?}", shown(&l.warnings))
        }
    };
    Some(format!(
        "{path} ({:?}, {}):\n{yaml}→ {problem}",
        key.support, key.when
    ))
}

#[test]
fn every_entry_is_what_the_loader_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("c.txt", "c"),
        ("s.txt", "s"),
        ("app.env", "A=1\n"),
        ("labels", "team=web\n"),
        (
            "other.yml",
            "services:\n  other:\n    image: busybox\n    environment: {OTHER: '1'}\n",
        ),
    ] {
        std::fs::write(dir.path().join(name), text).expect("write fixture");
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for object in OBJECTS {
        for key in object.keys {
            if let Some(p) = check(dir.path(), object, key) {
                problems.push(p);
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "only {checked} entries");
    assert!(
        problems.is_empty(),
        "{} of {checked} entries are not what the loader does:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// The first entry of a key says what happens to the key itself; the others hold for some
/// values only, and each key of an object is listed together.
#[test]
fn each_key_is_listed_once_with_its_value_rules_after_it() {
    let mut problems = Vec::new();
    for object in OBJECTS {
        let mut seen: Vec<&str> = Vec::new();
        for (i, key) in object.keys.iter().enumerate() {
            let first = object.get(key.name).map(|k| std::ptr::eq(k, key));
            if first == Some(false) {
                if key.when.is_empty() {
                    problems.push(format!(
                        "{}: a second entry for every value",
                        object.key_path(key)
                    ));
                }
                if object.keys[i - 1].name != key.name {
                    problems.push(format!(
                        "{}: value rule apart from its key",
                        object.key_path(key)
                    ));
                }
            } else if seen.contains(&key.name) {
                problems.push(format!("{}: listed twice", object.key_path(key)));
            }
            seen.push(key.name);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The segment helper the checks rely on.
#[test]
fn concrete_paths_match_their_patterns() {
    let e = |path: &str| SpecError {
        file: "compose.yml".into(),
        line: 1,
        column: 1,
        path: path.into(),
        message: String::new(),
    };
    assert!(at(
        "services.*.ports.[].name",
        &e("services.web.ports[0].name")
    ));
    assert!(!at("services.*.ports.[].name", &e("services.web.ports[0]")));
    assert!(above(
        "services.*.configs.[].source",
        &e("services.web.configs")
    ));
    assert!(!above(
        "services.*.configs.[].source",
        &e("services.web.configs[0].source")
    ));
    assert!(at("version", &e("version")));
}

/// A key the model gains is classified in the table before it can be loaded.
#[test]
fn every_key_of_the_model_is_in_the_table() {
    let mut known: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for object in OBJECTS {
        known.insert(object.path.to_owned());
        for key in object.keys {
            known.insert(object.key_path(key));
        }
    }
    // Configs and secrets share one type in the model; compose gives secrets no `content`,
    // and the loader refuses one as an unknown key.
    let shared_type = ["secrets.*.content"];
    let missing: Vec<String> = dcpp_spec::schema_paths()
        .into_iter()
        .filter(|p| !known.contains(p) && !shared_type.contains(&p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "keys of the model missing from spec/src/conformance.rs: {missing:?}"
    );
}
