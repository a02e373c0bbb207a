//! `dcpp config` / `dcpp schema` as a user runs them: the real binary, real files.

use std::path::Path;
use std::process::{Command, Output};

fn dcpp(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcpp"))
        .args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_PROFILES")
        .env("DCPP_LOG", "error")
        .output()
        .expect("run dcpp")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const COMPOSE: &str = r#"
services:
  web:
    image: nginx:${TAG:-1.27}
    ports: ["127.0.0.1:8080:80"]
    volumes: ["./html:/usr/share/nginx/html:ro"]
    environment: [MODE=prod]
    depends_on: [db]
    healthcheck:
      test: curl -f http://localhost
      interval: 90s
  db:
    image: postgres
  debug:
    image: busybox
    profiles: [debug]
"#;

#[test]
fn config_discovers_prints_canonical_yaml_and_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("shop");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("compose.yaml"), COMPOSE).expect("write");
    let out = dcpp(&dir, &["config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.starts_with("name: shop\n"), "{yaml}");
    for needle in [
        "image: nginx:1.27",
        "published: \"8080\"",
        "host_ip: \"127.0.0.1\"",
        "condition: service_started",
        "interval: 1m30s",
        "- CMD-SHELL",
        "MODE: prod",
        &format!("source: {}/html", dir.display()),
    ] {
        assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
    }
    assert!(!yaml.contains("debug"), "profile service leaked:\n{yaml}");

    // Feeding the output back yields byte-identical output.
    std::fs::write(tmp.path().join("canonical.yml"), &yaml).expect("write");
    let again = dcpp(tmp.path(), &["config", "-f", "canonical.yml"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), yaml);
}

#[test]
fn config_flags_project_profile_env_file_and_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("compose.yml"), COMPOSE).expect("write");
    std::fs::write(tmp.path().join("prod.env"), "TAG=2.0\n").expect("write");
    let out = dcpp(
        tmp.path(),
        &[
            "config",
            "-p",
            "custom",
            "--profile",
            "debug",
            "--env-file",
            "prod.env",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(v["name"], "custom");
    assert_eq!(v["services"]["web"]["image"], "nginx:2.0");
    assert_eq!(v["services"]["debug"]["image"], "busybox");
    assert_eq!(v["services"]["web"]["ports"][0]["published"], "8080");
    assert_eq!(v["networks"]["default"]["name"], "custom_default");
}

#[test]
fn config_reports_every_error_with_position_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("compose.yml"),
        "services:\n  web:\n    image: nginx\n    ports:\n      - \"8080:80\"\n      - \"80:xx\"\n    deploy:\n      replicas: -1\n    depends_on: [ghost]\n",
    )
    .expect("write");
    let out = dcpp(tmp.path(), &["config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert_eq!(
        err,
        "compose.yml:6:9: services.web.ports[1]: invalid port \"80:xx\"\n\
         compose.yml:8:17: services.web.deploy.replicas: replicas must be a non-negative integer, found \"-1\"\n\
         compose.yml:9:18: services.web.depends_on.ghost: depends on undefined service \"ghost\"\n"
    );

    let none = tempfile::tempdir().expect("tempdir");
    let out = dcpp(none.path(), &["config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no compose file found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn schema_is_json_schema_of_the_model() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = dcpp(tmp.path(), &["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["title"], "Project");
    assert!(
        v["$defs"]["Service"]["properties"]["deploy"].is_object(),
        "{v}"
    );
    assert!(v["$defs"]["Port"]["properties"]["published"].is_object());
}

#[test]
fn shipped_examples_are_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&examples).expect("examples dir") {
        let dir = e.expect("entry").path();
        let file = dir.join("compose.yml");
        if !file.exists() {
            continue;
        }
        let out = dcpp(&dir, &["config", "-q"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        n += 1;
    }
    assert!(n > 0, "no examples found");
}

#[test]
fn config_prints_top_level_extensions_and_keeps_services_named_x() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "name: ext\nx-owner: team-a\nservices:\n  x-tool:\n    image: busybox\n",
    )
    .unwrap();
    let out = dcpp(dir.path(), &["config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.contains("\n  x-tool:\n"), "{yaml}");
    assert!(yaml.contains("\nx-owner: team-a\n"), "{yaml}");
    let out = dcpp(dir.path(), &["config", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["x-owner"], "team-a", "{v}");
    assert_eq!(v["services"]["x-tool"]["image"], "busybox", "{v}");
}
