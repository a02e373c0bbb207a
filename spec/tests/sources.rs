//! The data of the secrets and configs a project uses: where it cannot be read is reported at
//! its position (for `apply`, not as an error of the file), and the variables that hold it.

use std::collections::BTreeMap;

use dcpp_spec::{LoadOptions, load};

fn load_in(dir: &std::path::Path, yaml: &str, env: &[(&str, &str)]) -> dcpp_spec::Loaded {
    std::fs::write(dir.join("compose.yml"), yaml).unwrap();
    load(&LoadOptions {
        files: vec![dir.join("compose.yml")],
        project_name: None,
        profiles: vec![],
        env_files: vec![],
        working_dir: dir.to_path_buf(),
        project_dir: None,
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn unreadable_data_is_reported_at_its_key_and_variables_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("here.txt"), "x").unwrap();
    let l = load_in(
        dir.path(),
        "name: p\nservices:\n  a:\n    image: busybox\n    secrets: [gone, var, here, ext]\n    configs: [unset, inline]\nsecrets:\n  gone:\n    file: ./nope\n  var:\n    environment: P_VAR\n  here:\n    file: ./here.txt\n  ext:\n    external: true\n  unused:\n    file: ./also-nope\nconfigs:\n  unset:\n    environment: P_UNSET\n  inline:\n    content: hi\n",
        &[("P_VAR", "value")],
    );
    let got: Vec<String> = l.sources.iter().map(|e| e.to_string()).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].contains("compose.yml:9:11: secrets.gone.file: reading "),
        "{got:?}"
    );
    assert!(
        got[1].ends_with(
            "compose.yml:20:18: configs.unset.environment: environment variable P_UNSET is not set"
        ),
        "{got:?}"
    );
    assert_eq!(
        l.source_env.0.get("P_VAR").map(String::as_str),
        Some("value")
    );
    assert_eq!(l.source_env.0.len(), 1);
    // Never printed by `{:?}`.
    assert!(!format!("{l:?}").contains("value\""), "{l:?}");
}
