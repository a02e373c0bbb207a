//! Property tests: the loader returns `Ok` or `Err` for any input and never panics, hangs or
//! blows the stack. Bounded: a few hundred cases each, a few seconds in CI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dcpp_spec::{LoadOptions, load};
use proptest::prelude::*;

fn corpus_files() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut out = Vec::new();
    for case in std::fs::read_dir(root).expect("corpus") {
        let p = case.expect("entry").path().join("compose.yml");
        if let Ok(text) = std::fs::read_to_string(&p) {
            out.push(text);
        }
    }
    out.sort();
    out
}

fn load_bytes(dir: &Path, bytes: &[u8], extra: Option<&[u8]>) {
    let file: PathBuf = dir.join("compose.yml");
    std::fs::write(&file, bytes).expect("write");
    let mut files = vec![file];
    if let Some(extra) = extra {
        let f = dir.join("override.yml");
        std::fs::write(&f, extra).expect("write");
        files.push(f);
    }
    let opts = LoadOptions {
        files,
        working_dir: dir.to_path_buf(),
        environment: BTreeMap::from([
            ("HOME".to_owned(), "/home/x".to_owned()),
            ("SET".to_owned(), "v".to_owned()),
        ]),
        profiles: vec!["debug".to_owned()],
        ..LoadOptions::default()
    };
    match load(&opts) {
        Ok(l) => {
            // Whatever loads must also print and load back.
            let yaml = dcpp_spec::to_yaml(&l.project);
            assert!(yaml.starts_with("name: "), "{yaml}");
        }
        Err(e) => assert!(!e.errors.is_empty(), "Err without errors"),
    }
}

/// A mutation applied to a valid compose text.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, String),
    Duplicate(usize, usize),
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(":".to_owned()),
        Just("- ".to_owned()),
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: *a\n".to_owned()),
        Just("${".to_owned()),
        Just("$".to_owned()),
        Just("${SET:-x}".to_owned()),
        Just("${X:?e}".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("!reset ".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("extends: a\n".to_owned()),
        Just("depends_on: [web]\n".to_owned()),
        Just("\u{0}".to_owned()),
        Just("é".to_owned()),
        "[a-z_]{1,8}".prop_map(|s| s),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), token()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), 1usize..20).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), token()).prop_map(|(i, t)| Mutation::Replace(i, t)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for m in muts {
        let len = b.len().max(1);
        match m {
            Mutation::Insert(i, t) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, t.bytes());
            }
            Mutation::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Mutation::Replace(i, t) => {
                let at = i % len;
                let end = (at + t.len()).min(b.len());
                if at <= end && end <= b.len() {
                    b.splice(at..end, t.bytes());
                }
            }
            Mutation::Duplicate(i, n) => {
                let at = i % len;
                let end = (at + n).min(b.len());
                if at < end {
                    let chunk: Vec<u8> = b[at..end].to_vec();
                    b.splice(end..end, chunk);
                }
            }
        }
    }
    b
}

proptest! {
    // PROPTEST_CASES raises the count for a longer local fuzzing run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().expect("tempdir");
        load_bytes(dir.path(), &bytes, None);
    }

    #[test]
    fn mutated_corpus_files_never_panic(
        pick in any::<prop::sample::Index>(),
        pick2 in any::<prop::sample::Index>(),
        muts in proptest::collection::vec(mutation(), 1..8),
        as_override in any::<bool>(),
    ) {
        let files = corpus_files();
        let text = &files[pick.index(files.len())];
        let mutated = apply(text, &muts);
        let dir = tempfile::tempdir().expect("tempdir");
        if as_override {
            let base = files[pick2.index(files.len())].as_bytes();
            load_bytes(dir.path(), base, Some(&mutated));
        } else {
            load_bytes(dir.path(), &mutated, None);
        }
    }
}

/// Deep nesting and aliases that multiply depth must be refused, not overflow the stack.
#[test]
fn deep_nesting_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deep = format!("services: {}{}", "[".repeat(5000), "]".repeat(5000));
    load_bytes(dir.path(), deep.as_bytes(), None);
    let mut chain = String::from(
        "a0: &a0 [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
    );
    for i in 1..60 {
        chain.push_str(&format!(
            "a{i}: &a{i} [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a{}]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
            i - 1
        ));
    }
    load_bytes(dir.path(), chain.as_bytes(), None);
}
