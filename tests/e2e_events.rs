//! `dcpp events` for CI jobs through the real binary: `--wait-for` blocks until the store shows
//! a condition (or times out with a message), `--since`/`--until` replay a bounded range and
//! exit, `--filter` keeps one service's task changes.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::time::{Duration, Instant};

use rig::*;

fn revision(rig: &Rig) -> u64 {
    rig.json(&["cluster", "status", "--format", "json"])["revision"]
        .as_u64()
        .expect("a revision")
}

#[test]
fn events_wait_for_a_condition_and_replay_a_bounded_filtered_range() {
    let rig = Rig::new("ev");
    let bad = rig.dcpp(&["events", "--wait-for", "service=web colour=red"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("colour=red"), "{}", stderr(&bad));

    let since = revision(&rig);
    let waiter = rig
        .cmd()
        .args(["events", "--wait-for", "service=web state=running count=3"])
        .args(["--timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Before anything is applied the condition does not hold: the waiter is still waiting.
    std::thread::sleep(Duration::from_millis(500));
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: evs
services:
  web:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 3
  db:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
"#
        ),
    );
    rig.ok(&["apply", "-d", "-f", &file]);
    let t0 = Instant::now();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(30));
    // It returned because the condition held, not early.
    assert_eq!(rig.running("evs_web"), 3);

    // Not met within the timeout: exit 3 and what it saw.
    let t0 = Instant::now();
    let out = rig.dcpp(&[
        "events",
        "--wait-for",
        "service=web state=running count=4",
        "--timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(t0.elapsed() >= Duration::from_secs(2));
    let e = stderr(&out);
    assert!(
        e.contains("timed out") && e.contains("3 task(s) match"),
        "{e}"
    );

    // A bounded replay ends by itself and holds only web's task changes in that range.
    rig.wait_until("db running", 20, || rig.running("evs_db") == 1);
    let until = revision(&rig);
    let out = rig.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=task,service=web",
        "--format",
        "json",
    ]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 6, "{out}");
    let web_tasks: std::collections::BTreeSet<String> = rig
        .tasks()
        .into_iter()
        .filter(|t| t["service"] == "evs_web")
        .map(|t| match &t["id"] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        })
        .collect();
    for ev in &events {
        let r = ev["revision"].as_u64().unwrap();
        assert!(r > since && r <= until, "{ev}");
        let kind = ev["object"]["kind"].as_str().unwrap();
        assert!(kind == "task" || kind == "task_status", "{ev}");
        let id = ev["object"]["id"].as_str().unwrap();
        assert!(
            web_tasks
                .iter()
                .any(|t| id.trim_start_matches('0') == t.as_str() || id == t),
            "{id} is not one of web's tasks {web_tasks:?}: {ev}"
        );
    }
    // `--until` a duration ends a live stream.
    let t0 = Instant::now();
    rig.ok(&["events", "--until", "1s"]);
    assert!(t0.elapsed() < Duration::from_secs(10));
    rig.ok(&["down", "-p", "evs"]);
}
