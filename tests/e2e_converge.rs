//! apply's exit code is the truth: through the real binary on a real daemon, each rule of
//! `dcpp_reconciler::converge` decides `dcpp apply`'s exit code and its one line per failing
//! service.

mod rig;
#[path = "rig/slot.rs"]
mod slot;
use rig::*;

/// The lines of `err` that report `service` as failed.
fn failed_lines<'a>(err: &'a str, service: &str) -> Vec<&'a str> {
    let head = format!("service {service}: failed: ");
    err.lines().filter(|l| l.starts_with(&head)).collect()
}

#[test]
fn four_services_exiting_at_once_fail_apply_with_one_line_each() {
    let rig = Rig::new("cq");
    let mut yaml = "name: crash\nservices:\n".to_string();
    for i in 1..=4 {
        yaml.push_str(&format!(
            "  s{i}:\n    image: {IMAGE}\n    command: [\"sh\", \"-c\", \"echo boom {i}; exit 3\"]\n"
        ));
    }
    let file = rig.write("crash.yml", &yaml);
    let (code, _, err, secs) = rig.run(&["apply", "-f", &file, "--timeout", "120s"]);
    assert_eq!(code, Some(1), "{err}");
    for i in 1..=4 {
        let lines = failed_lines(&err, &format!("s{i}"));
        assert_eq!(lines.len(), 1, "s{i}: {err}");
        assert!(
            lines[0].contains("crash loop") && lines[0].contains("exited with code 3"),
            "{}",
            lines[0]
        );
    }
    assert!(err.contains("4 of 4 service(s) failed"), "{err}");
    assert!(secs < 60.0, "a crash loop fails promptly, took {secs:.1}s");
}

#[test]
fn one_shot_service_and_its_dependent_converge() {
    let rig = Rig::new("co");
    let file = rig.write(
        "oneshot.yml",
        &format!(
            r#"name: once
services:
  init:
    image: {IMAGE}
    restart: "no"
    command: ["sh", "-c", "echo migrated"]
  app:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    depends_on:
      init:
        condition: service_completed_successfully
"#
        ),
    );
    let (code, out, err, secs) = rig.run(&["apply", "-f", &file, "--timeout", "60s"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("converged"), "{out}");
    assert!(secs < 30.0, "took {secs:.1}s");
    assert_eq!(rig.running("once_app"), 1);
    // Applying again is a no-op that also exits 0 at once.
    let (code, out, err, _) = rig.run(&["apply", "-f", &file, "--timeout", "30s"]);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn always_unhealthy_service_fails_apply_with_the_healthcheck_output() {
    let rig = Rig::new("cu");
    let file = rig.write(
        "sick.yml",
        &format!(
            r#"name: sick
services:
  api:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    healthcheck:
      test: ["CMD-SHELL", "echo probe-says-no; exit 1"]
      interval: 300ms
      retries: 2
"#
        ),
    );
    let (code, _, err, _) = rig.run(&["apply", "-f", &file, "--timeout", "120s"]);
    assert_eq!(code, Some(1), "{err}");
    let lines = failed_lines(&err, "api");
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("unhealthy") && lines[0].contains("probe-says-no"),
        "{}",
        lines[0]
    );
    // The agent failed the unhealthy tasks (as swarm does) and the slot was replaced.
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&rig.ok(&["ps", "-a", "--format", "json"])).unwrap();
    let failed = all
        .iter()
        .filter(|t| t["service"] == "sick_api" && t["state"] == "failed")
        .count();
    assert!(failed >= 3, "{all:?}");
}

#[test]
fn failed_pulls_and_unsatisfiable_constraints_fail_with_reasons() {
    let rig = Rig::new("cp");
    let file = rig.write(
        "nope.yml",
        &format!(
            r#"name: nope
services:
  local:
    image: dcpp.local/does-not:exist
    pull_policy: never
    command: ["sleep", "3600"]
  remote:
    image: 127.0.0.1:1/nothing:here
    command: ["sleep", "3600"]
  placed:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy:
      placement:
        constraints: ["node.labels.zone == mars"]
  fine:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
"#
        ),
    );
    let (code, _, err, _) = rig.run(&["apply", "-f", &file, "--timeout", "120s"]);
    assert_eq!(code, Some(1), "{err}");
    let local = failed_lines(&err, "local");
    assert!(
        local.len() == 1 && local[0].contains("rejected") && local[0].contains("pull_policy"),
        "{err}"
    );
    let remote = failed_lines(&err, "remote");
    assert!(
        remote.len() == 1 && remote[0].contains("127.0.0.1:1"),
        "{err}"
    );
    let placed = failed_lines(&err, "placed");
    assert!(
        placed.len() == 1 && placed[0].contains("no node satisfies node.labels.zone==mars"),
        "{err}"
    );
    assert!(failed_lines(&err, "fine").is_empty(), "{err}");
    assert!(err.contains("3 of 4 service(s) failed"), "{err}");
}

#[test]
fn timeout_lists_only_the_followed_stack() {
    let rig = Rig::new("ct");
    // Another stack with a task that stays pending.
    let other = rig.write(
        "other.yml",
        &format!(
            "name: other\nservices:\n  stuck:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    deploy:\n      placement:\n        constraints: [\"node.labels.zone == mars\"]\n"
        ),
    );
    rig.ok(&["apply", "-d", "-f", &other]);
    // A service whose healthcheck never decides within the timeout.
    let slow = rig.write(
        "slow.yml",
        &format!(
            r#"name: slow
services:
  api:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    healthcheck:
      test: ["CMD", "false"]
      interval: 1h
"#
        ),
    );
    let (code, _, err, _) = rig.run(&["apply", "-f", &slow, "--timeout", "4s"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(
        err.contains("service api: slow_api.1 running, waiting to be healthy"),
        "{err}"
    );
    assert!(!err.contains("other") && !err.contains("stuck"), "{err}");
}
