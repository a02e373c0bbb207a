//! Golden corpus: every directory under `tests/corpus/` is one case.
//!
//! A case holds `compose.yml` (plus any other files it uses) and optionally `args`, one option
//! per line: `-f FILE`, `-p NAME`, `--profile P`, `--env-file FILE`, `--project-directory DIR`,
//! `env KEY=VALUE` (process environment). The expectation is `expected.yaml` (canonical output,
//! plus `expected.warnings` when there are warnings) or `expected.err` (all error lines). The
//! case directory is written as `$DIR` in expectations.
//!
//! `DCPP_BLESS=1 cargo nextest run -p dcpp-spec --test corpus` rewrites the expectations; every
//! rewritten file must be reviewed before it is committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dcpp_spec::{LoadOptions, load};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Builds the load options of a case from its `args` file.
fn options(dir: &Path) -> LoadOptions {
    let mut opts = LoadOptions {
        working_dir: dir.to_path_buf(),
        environment: BTreeMap::from([
            ("HOME".to_owned(), "/home/tester".to_owned()),
            ("USER".to_owned(), "tester".to_owned()),
        ]),
        ..LoadOptions::default()
    };
    let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
    for line in args.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (flag, value) = line.split_once(' ').expect("args line: FLAG VALUE");
        match flag {
            "-f" => opts.files.push(value.into()),
            "-p" => opts.project_name = Some(value.to_owned()),
            "--profile" => opts.profiles.push(value.to_owned()),
            "--env-file" => opts.env_files.push(value.into()),
            "--project-directory" => opts.project_dir = Some(value.into()),
            "env" => {
                let (k, v) = value.split_once('=').expect("env KEY=VALUE");
                opts.environment.insert(k.to_owned(), v.to_owned());
            }
            other => panic!("{}: unknown flag {other}", dir.display()),
        }
    }
    opts
}

fn lines<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| format!("{i}\n")).collect()
}

fn check(path: &Path, actual: &str, bless: bool, failures: &mut Vec<String>) {
    if bless {
        if actual.is_empty() {
            let _ = std::fs::remove_file(path);
        } else {
            std::fs::write(path, actual).expect("write expectation");
        }
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        ));
    }
}

#[test]
fn corpus_matches_expectations() {
    let bless = std::env::var_os("DCPP_BLESS").is_some();
    let cases = cases();
    assert!(cases.len() >= 80, "corpus has only {} cases", cases.len());
    let mut failures = Vec::new();
    for dir in &cases {
        let d = dir.display().to_string();
        let opts = options(dir);
        let (yaml, warnings, errors) = match load(&opts) {
            Ok(l) => (
                dcpp_spec::config_yaml(&l),
                lines(&l.warnings),
                String::new(),
            ),
            Err(e) => (String::new(), lines(&e.warnings), lines(&e.errors)),
        };
        let yaml = yaml.replace(&d, "$DIR");
        let errors = errors.replace(&d, "$DIR");
        let warnings = warnings.replace(&d, "$DIR");
        if !bless {
            let want_err = dir.join("expected.err").exists();
            let want_ok = dir.join("expected.yaml").exists();
            if want_err == want_ok {
                failures.push(format!(
                    "{d}: needs exactly one of expected.yaml / expected.err"
                ));
                continue;
            }
        }
        check(&dir.join("expected.yaml"), &yaml, bless, &mut failures);
        check(&dir.join("expected.err"), &errors, bless, &mut failures);
        check(
            &dir.join("expected.warnings"),
            &warnings,
            bless,
            &mut failures,
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `dcpp config` output loaded again gives the identical model, and the JSON form (what the
/// raft store keeps) deserialises to the identical model.
#[test]
fn canonical_output_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for dir in cases() {
        let opts = options(&dir);
        let Ok(first) = load(&opts) else { continue };
        let yaml = dcpp_spec::config_yaml(&first);
        let file = tmp.path().join(format!("{checked}.yml"));
        std::fs::write(&file, &yaml).expect("write");
        // The output names its project; an ambient COMPOSE_PROJECT_NAME would override it
        // (compose's precedence), so the reload runs without it.
        let mut environment = opts.environment.clone();
        environment.remove("COMPOSE_PROJECT_NAME");
        let again = load(&LoadOptions {
            files: vec![file],
            environment,
            project_name: None,
            env_files: Vec::new(),
            project_dir: None,
            working_dir: tmp.path().to_path_buf(),
            ..opts
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}: canonical output does not load:\n{e}\n{yaml}",
                dir.display()
            )
        });
        assert_eq!(
            first.project,
            again.project,
            "{}: YAML round trip",
            dir.display()
        );
        assert_eq!(
            first.extensions,
            again.extensions,
            "{}: extensions round trip",
            dir.display()
        );
        assert_eq!(
            yaml,
            dcpp_spec::config_yaml(&again),
            "{}: bytes differ",
            dir.display()
        );
        let config: serde_json::Value =
            serde_json::from_str(&dcpp_spec::config_json(&first).replace("$$", "$")).expect("json");
        for (k, v) in &first.extensions {
            assert_eq!(
                config.get(k),
                Some(v),
                "{}: JSON extension {k}",
                dir.display()
            );
        }
        let json = serde_json::to_string(&first.project).expect("json");
        let back: dcpp_spec::Project = serde_json::from_str(&json).expect("json");
        assert_eq!(first.project, back, "{}: JSON round trip", dir.display());
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} valid cases round-tripped");
}
