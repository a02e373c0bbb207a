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

/// `dcpp events --since/--until` as JSON lines.
fn events_json(rig: &Rig, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["events", "--format", "json"];
    all.extend_from_slice(args);
    rig.ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(evs: &[serde_json::Value]) -> Vec<(u64, String)> {
    evs.iter()
        .map(|e| {
            (
                e["revision"].as_u64().unwrap(),
                format!("{}/{}", e["object"]["kind"], e["object"]["id"]),
            )
        })
        .collect()
}

#[test]
fn events_since_and_until_a_time_replay_what_was_committed_then() {
    let rig = Rig::new("et");
    use time::format_description::well_known::Rfc3339;
    let parse = |s: &str| time::OffsetDateTime::parse(s, &Rfc3339).unwrap();
    let stack = |name: &str| {
        rig.write(
            &format!("{name}.yml"),
            &format!(
                "name: {name}\nservices:\n  s:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    stop_signal: SIGKILL\n"
            ),
        )
    };
    let (one, two) = (stack("eta"), stack("etb"));
    let start = revision(&rig);
    rig.ok(&["apply", "-d", "-f", &one]);
    rig.wait_until("eta running", 20, || rig.running("eta_s") == 1);
    // A time between the two applies, with room on both sides for clock granularity.
    std::thread::sleep(Duration::from_millis(300));
    let cut_at = time::OffsetDateTime::now_utc();
    let cut = cut_at.format(&Rfc3339).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    rig.ok(&["apply", "-d", "-f", &two]);
    rig.wait_until("etb running", 20, || rig.running("etb_s") == 1);
    let end = revision(&rig);

    // Every change of the range, with the time the store recorded for it.
    let all = events_json(
        &rig,
        &["--since", &start.to_string(), "--until", &end.to_string()],
    );
    assert!(all.len() >= 4, "{all:?}");
    let time_of = |e: &serde_json::Value| parse(e["time"].as_str().expect("a time"));
    let (before, after): (Vec<_>, Vec<_>) = all.iter().cloned().partition(|e| time_of(e) < cut_at);
    assert!(!before.is_empty() && !after.is_empty(), "{all:?}");
    assert!(
        all.windows(2).all(|w| time_of(&w[0]) <= time_of(&w[1])),
        "{all:?}"
    );

    // From the cut on: exactly the changes committed at or after it.
    let since_cut = events_json(&rig, &["--since", &cut, "--until", &end.to_string()]);
    assert_eq!(ids(&since_cut), ids(&after));
    // Up to the cut: exactly those before it.
    let until_cut = events_json(&rig, &["--since", &start.to_string(), "--until", &cut]);
    assert_eq!(ids(&until_cut), ids(&before));
    // Each side holds its own stack's service and nothing of the other's.
    let services = |evs: &[serde_json::Value]| {
        evs.iter()
            .filter(|e| e["object"]["kind"] == "service")
            .map(|e| e["object"]["id"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        services(&before),
        ["eta_s".to_string()].into_iter().collect()
    );
    assert_eq!(
        services(&after),
        ["etb_s".to_string()].into_iter().collect()
    );

    // A duration counts back from now: ten minutes ago is before everything here.
    let recent = events_json(&rig, &["--since", "10m", "--until", &end.to_string()]);
    let recent = ids(&recent);
    assert!(
        ids(&all).iter().all(|e| recent.contains(e)),
        "{recent:?} lacks some of {all:?}"
    );

    // The text form shows the time after the revision.
    let text = rig.ok(&["events", "--since", &cut, "--until", &end.to_string()]);
    let first = text.lines().next().expect("a line");
    let mut f = first.split(' ');
    assert_eq!(
        f.next().and_then(|r| r.parse::<u64>().ok()),
        Some(after[0]["revision"].as_u64().unwrap())
    );
    assert_eq!(f.next().map(parse), Some(time_of(&after[0])), "{first}");

    let bad = rig.dcpp(&["events", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("RFC 3339"), "{}", stderr(&bad));
    rig.ok(&["down", "-p", "eta"]);
    rig.ok(&["down", "-p", "etb"]);
}
