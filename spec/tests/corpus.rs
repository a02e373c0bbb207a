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

/// Loads one case and compares (or, when blessing, rewrites) its expectations.
fn run_case(dir: &Path, bless: bool, failures: &mut Vec<String>) {
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
            return;
        }
    }
    check(&dir.join("expected.yaml"), &yaml, bless, failures);
    check(&dir.join("expected.err"), &errors, bless, failures);
    check(&dir.join("expected.warnings"), &warnings, bless, failures);
}

#[test]
fn corpus_matches_expectations() {
    let bless = std::env::var_os("DCPP_BLESS").is_some();
    let cases = cases();
    assert!(cases.len() >= 80, "corpus has only {} cases", cases.len());
    let mut failures = Vec::new();
    for dir in &cases {
        run_case(dir, bless, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Whether a case's files name compose-go's tests as the source of its expectations.
fn from_compose_go(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .expect("case dir")
        .filter_map(|e| std::fs::read_to_string(e.expect("entry").path()).ok())
        .any(|text| text.contains("compose-go"))
}

/// The kind of compose-go test a case's expectations come from, by the case's name.
fn area(name: &str) -> &'static str {
    let has = |words: &[&str]| words.iter().any(|w| name.contains(w));
    if has(&["dotenv", "env-file"]) {
        "dotenv"
    } else if has(&["interpolation"]) {
        "interpolation"
    } else if has(&["merge", "extends", "include", "unicity"]) {
        "merge"
    } else if has(&["invalid", "validation", "errors", "refused", "zero"]) {
        "validation"
    } else {
        "loader"
    }
}

/// The closing count of issue 16: how many corpus cases were written from compose-go's
/// loader, interpolation, merge, dotenv and validation expectations, and how many pass.
/// `cargo test -p dcpp-spec --test corpus compose_go -- --nocapture` prints it.
#[test]
fn compose_go_expectations_pass() {
    let mut by_area: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for dir in cases().iter().filter(|d| from_compose_go(d)) {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let before = failures.len();
        run_case(dir, false, &mut failures);
        let e = by_area.entry(area(&name)).or_default();
        e.0 += 1;
        e.1 += usize::from(failures.len() == before);
    }
    let (total, passed) = by_area
        .values()
        .fold((0, 0), |(t, p), (n, ok)| (t + n, p + ok));
    for (a, (n, ok)) in &by_area {
        println!("compose-go {a} cases: {n}, passing: {ok}");
    }
    println!("compose-go cases: {total}, passing: {passed}");
    assert!(total >= 60, "only {total} cases name compose-go");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
