//! The CLI a user meets, through the real binary (as root on the real kernel where a daemon is
//! involved): the error for a missing daemon, `down` that returns when everything is gone and
//! stops replicas in parallel, `watch` that reports a broken file once, tables with health,
//! restarts and ages, `--format json` everywhere, `version`, `events --since/--filter`,
//! `apply --profile`, `service update` flags and the aliases users type.
//!
//! Each daemon is a test rig of its own (data dir, socket, listen address, cgroup parent,
//! bridge prefix, nft table and address pool from its slot), and leaves none of them behind.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rig::*;

/// A number within a year of now in epoch milliseconds: a raw time leaking into a table
/// (node ids are numbers too, but not of that size by more than chance).
fn has_epoch_ms(s: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let year = 365 * 24 * 3600 * 1000;
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse::<u64>().ok())
        .any(|n| n.abs_diff(now) < year)
}

#[test]
fn a_missing_daemon_is_one_line_naming_the_address_and_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let host = format!("unix://{}", sock.display());
    // -H with no socket file at all.
    let out = Command::new(BIN)
        .args(["-H", &host, "ps"])
        .env_remove("DCPP_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: no dcpp daemon answers at {host} (from -H/--host)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("dcpp daemon --socket {}", sock.display())),
        "{err}"
    );
    assert!(!err.contains("transport"), "{err}");
    // A socket file nobody listens on, named by DCPP_HOST.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let out = Command::new(BIN)
        .args(["stack", "ls"])
        .env("DCPP_HOST", &host)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("(from DCPP_HOST)"), "{err}");
    // `version` still tells the client's version, and fails for the daemon's.
    let out = Command::new(BIN)
        .args(["-H", &host, "version"])
        .env_remove("DCPP_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with(&format!("Client: dcpp {}\n", env!("CARGO_PKG_VERSION"))),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("no dcpp daemon answers"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn durations_are_read_as_compose_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, format!("services:\n  a:\n    image: {IMAGE}\n")).unwrap();
    let host = format!("unix://{}", dir.path().join("none.sock").display());
    // A dry run needs no daemon; the point is that clap takes `1m30s`.
    let out = Command::new(BIN)
        .args([
            "-H",
            &host,
            "apply",
            "--dry-run",
            "--timeout",
            "1m30s",
            "-p",
            "d",
        ])
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("+ service a"), "{}", stdout(&out));
    let out = Command::new(BIN)
        .args(["-H", &host, "apply", "--dry-run", "--timeout", "1m30"])
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid duration"),
        "{}",
        stderr(&out)
    );
}

/// 50 replicas of `sleep 3600` (PID 1 ignores SIGTERM, so each stop waits out the grace
/// period): `down` returns after about one grace period with everything gone.
#[test]
fn down_stops_all_replicas_at_once_and_returns_when_everything_is_gone() {
    let rig = Rig::new("dn");
    let port = free_port();
    let grace = 3;
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: many\nservices:\n  app:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    stop_grace_period: {grace}s\n    ports: ['127.0.0.1:{port}:80']\n    deploy:\n      replicas: 50\n"
        ),
    );
    rig.ok(&["apply", "-f", &file, "--timeout", "3m"]);
    assert_eq!(rig.containers().len(), 50);
    assert!(rig.nft().contains(&port.to_string()), "{}", rig.nft());
    assert!(!rig.links().is_empty());

    let t0 = Instant::now();
    let out = rig.dcpp(&["down", "-p", "many", "--timeout", "2m"]);
    let took = t0.elapsed();
    eprintln!("down of 50 replicas ({grace}s grace period) took {took:?}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        rig.log()
    );
    assert!(
        stdout(&out).contains("stack many removed"),
        "{}",
        stdout(&out)
    );
    // Eight at a time, each waiting out its grace period, took 7 × 3 s; all at once is one.
    assert!(
        took < Duration::from_secs(grace * 3),
        "down took {took:?} for 50 replicas with a {grace}s grace period"
    );
    assert!(took >= Duration::from_secs(grace), "down took {took:?}");
    // Nothing left the moment it returns: containers, bridges and veths, port rules.
    assert!(rig.containers().is_empty(), "{:?}", rig.containers());
    assert!(rig.links().is_empty(), "{:?}", rig.links());
    assert!(!rig.nft().contains(&port.to_string()), "{}", rig.nft());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the published port still answers"
    );
    let nets = rig.json(&["network", "ls", "--format", "json"]);
    assert_eq!(nets.as_array().map(Vec::len), Some(0), "{nets}");

    // A stack that does not exist is an error.
    let out = rig.dcpp(&["down", "-p", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no stack \"nosuch\""),
        "{}",
        stderr(&out)
    );
    let out = rig.dcpp(&["stack", "rm", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn watch_reports_a_broken_file_once_per_change() {
    let rig = Rig::new("wt");
    let dir = rig.root.join("stacks");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("alpha.yml"), "services:\n  app: [unclosed\n").unwrap();
    let log_path = rig.root.join("watch.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut watcher = rig
        .cmd()
        .arg("watch")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let reports = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("is invalid")
            .count()
    };
    // A later round of the watcher, known by a marker file it applies (a stack of no
    // replicas): the round that read the broken file again for it must not report it again.
    let marker_applied = |name: &str| {
        std::fs::write(
            dir.join(format!("{name}.yml")),
            format!("services:\n  app:\n    image: {IMAGE}\n    deploy:\n      replicas: 0\n"),
        )
        .unwrap();
        rig.wait_until(&format!("the watcher applying {name}"), 20, || {
            rig.tasks_stacks().contains(name)
        });
    };
    let log = || std::fs::read_to_string(&log_path).unwrap();
    rig.wait_until("first report", 20, || reports() >= 1);
    // The watcher reading the file must not count as a change: after rounds that read it
    // again, the report is not repeated.
    marker_applied("marka");
    marker_applied("markb");
    assert_eq!(reports(), 1, "{}", log());
    // Another broken version is another report, once.
    std::fs::write(dir.join("alpha.yml"), "services:\n  app: {image: [1\n").unwrap();
    rig.wait_until("second report", 20, || reports() >= 2);
    marker_applied("markc");
    assert_eq!(reports(), 2, "{}", log());
    // Fixed: applied.
    std::fs::write(
        dir.join("alpha.yml"),
        format!("services:\n  app:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    stop_signal: SIGKILL\n"),
    )
    .unwrap();
    rig.wait_until("applied", 30, || {
        rig.tasks()
            .iter()
            .any(|t| t["service"] == "alpha_app" && t["state"] == "running")
    });
    watcher.kill().ok();
    watcher.wait().ok();
}

#[test]
fn tables_json_version_events_profiles_update_flags_and_aliases() {
    let rig = Rig::new("tb");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: day
services:
  web:
    image: {IMAGE}
    command: [sh, -c, "echo hello-from-web; exec sleep 3600"]
    stop_signal: SIGKILL
    environment: {{A: "1"}}
    healthcheck:
      test: [CMD, "true"]
      interval: 1s
  crash:
    image: {IMAGE}
    command: [sh, -c, "echo first-line; echo second-line; exit 3"]
    deploy:
      restart_policy: {{condition: on-failure, delay: 30s}}
  extra:
    image: {IMAGE}
    command: [sleep, "3600"]
    stop_signal: SIGKILL
    profiles: [tools]
"#
        ),
    );
    // --profile: the profiled service is part of the stack only when asked for.
    let plain = rig.ok(&["apply", "--dry-run", "-f", &file]);
    assert!(!plain.contains("extra"), "{plain}");
    rig.ok(&["apply", "-d", "--profile", "tools", "-f", &file]);
    rig.wait_until("web healthy, crash restarting", 60, || {
        let t = rig.tasks();
        t.iter()
            .any(|t| t["service"] == "day_web" && t["health"] == "healthy")
            && t.iter()
                .any(|t| t["service"] == "day_crash" && t["restart_count"].as_u64() >= Some(1))
            && t.iter()
                .any(|t| t["service"] == "day_extra" && t["state"] == "running")
    });

    // ps: health next to the state, restarts, ages; errors on one line; no epoch milliseconds.
    let ps = rig.ok(&["ps", "-a"]);
    assert!(!has_epoch_ms(&ps), "{ps}");
    let header = ps.lines().next().unwrap();
    for col in ["STATE", "RESTARTS", "SINCE", "ERROR"] {
        assert!(header.contains(col), "{ps}");
    }
    let web = ps.lines().find(|l| l.starts_with("day_web.1")).unwrap();
    assert!(web.contains("running (healthy)"), "{ps}");
    assert!(web.contains(" ago") || web.contains("just now"), "{ps}");
    let pending = ps
        .lines()
        .find(|l| l.starts_with("day_crash.1") && l.contains("pending"))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(pending.contains("(restarting in "), "{ps}");
    let failed = ps
        .lines()
        .find(|l| l.starts_with("day_crash.1") && l.contains("failed"))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        failed.contains("exited with code 3") && failed.contains("first-line | second-line"),
        "{ps}"
    );
    // Every line is a task (or the header): the log tail did not spill onto lines of its own.
    let all = rig.json(&["ps", "-a", "--format", "json"]);
    assert_eq!(
        ps.lines().count(),
        all.as_array().unwrap().len() + 1,
        "{ps}"
    );

    // service ls: replicas with health, restarts.
    let ls = rig.ok(&["service", "ls"]);
    assert!(!has_epoch_ms(&ls), "{ls}");
    let row = ls.lines().find(|l| l.starts_with("day_web")).unwrap();
    assert!(row.contains("1/1 (1 healthy)"), "{ls}");
    let rows = rig.json(&["service", "ls", "--format", "json"]);
    let crash = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "day_crash")
        .unwrap();
    assert!(crash["restarts"].as_u64() >= Some(1), "{rows}");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "day_extra"),
        "{rows}"
    );

    // --format json on the list and inspect commands.
    let sps = rig.json(&["service", "ps", "web", "--format", "json"]);
    assert_eq!(sps[0]["service"], "day_web", "{sps}");
    let stacks = rig.json(&["stack", "ls", "--format", "json"]);
    assert_eq!(stacks[0]["name"], "day", "{stacks}");
    let vols = rig.json(&["volume", "ls", "--format", "json"]);
    assert!(vols.is_array(), "{vols}");
    let insp = rig.json(&["service", "inspect", "web", "--format", "json"]);
    assert_eq!(insp["spec"]["name"], "web");
    let diff = rig.dcpp(&[
        "diff",
        "--profile",
        "tools",
        "-f",
        &file,
        "--format",
        "json",
    ]);
    assert_eq!(diff.status.code(), Some(0), "{}", stderr(&diff));
    let d: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert_eq!(d["stack"], "day");
    assert_eq!(d["changes"].as_array().map(Vec::len), Some(0), "{d}");

    // version: client and daemon.
    let v = rig.ok(&["version"]);
    let ver = env!("CARGO_PKG_VERSION");
    assert!(
        v.contains(&format!("Client: dcpp {ver}")) && v.contains(&format!("Daemon: dcpp {ver}")),
        "{v}"
    );
    let vj = rig.json(&["version", "--format", "json"]);
    assert_eq!(vj["daemon"]["version"], ver);

    // service update with swarm's flags; events from a revision, filtered by type.
    let since = rig.json(&["cluster", "status", "--format", "json"])["revision"]
        .as_u64()
        .unwrap();
    let old_web = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "day_web")
        .unwrap();
    rig.ok(&[
        "service",
        "update",
        "web",
        "--env-add",
        "B=2",
        "--env-rm",
        "A",
        "--update-order",
        "start-first",
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--timeout",
        "1m",
    ]);
    let insp = rig.json(&["service", "inspect", "day_web"]);
    assert_eq!(
        insp["service"]["environment"],
        serde_json::json!({"B": "2"})
    );
    assert_eq!(insp["spec"]["update_config"]["parallelism"], 2);
    assert_eq!(insp["spec"]["update_config"]["delay"], 1000);
    assert_eq!(insp["spec"]["update_config"]["order"], "start_first");
    let new_web = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "day_web" && t["state"] == "running")
        .unwrap();
    assert_ne!(
        new_web["id"], old_web["id"],
        "the environment change replaced the task"
    );
    let cid = new_web["container_id"].as_str().unwrap();
    let env = rig.ok(&["container", "exec", cid, "env"]);
    assert!(env.contains("B=2") && !env.contains("A=1"), "{env}");
    // --replicas changes no container; --force replaces them without a change.
    rig.ok(&[
        "service",
        "update",
        "web",
        "--replicas",
        "2",
        "--timeout",
        "1m",
    ]);
    assert!(rig.tasks().iter().any(|t| t["id"] == new_web["id"]));
    rig.ok(&["service", "update", "web", "--force", "--timeout", "1m"]);
    rig.wait_until("forced replacement", 30, || {
        let t = rig.tasks();
        !t.iter().any(|t| t["id"] == new_web["id"])
            && t.iter()
                .filter(|t| t["service"] == "day_web" && t["state"] == "running")
                .count()
                == 2
    });
    let out = rig.ok(&["service", "update", "web"]);
    assert!(out.contains("no changes"), "{out}");
    let bad = rig.dcpp(&["service", "update", "web", "--env-add", "NOVALUE"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("KEY=VALUE"), "{}", stderr(&bad));

    let mut events = rig
        .cmd()
        .args(["events", "--since", &since.to_string()])
        .args(["--filter", "type=service", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Three updates of day_web happened after `since`; the stream replays them first.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("events after {since}: {seen:?}"));
        let ev: serde_json::Value = serde_json::from_str(&l).unwrap();
        seen.push(ev);
    }
    events.kill().ok();
    events.wait().ok();
    for ev in &seen {
        assert_eq!(ev["object"]["kind"], "service", "{ev}");
        assert_eq!(ev["object"]["id"], "day_web", "{ev}");
        assert!(ev["revision"].as_u64() > Some(since), "{ev}");
    }
    let bad = rig.dcpp(&["events", "--filter", "colour=red"]);
    assert_eq!(bad.status.code(), Some(1));

    // Aliases users type.
    let logs = rig.ok(&["service", "logs", "web"]);
    assert!(logs.contains("hello-from-web"), "{logs}");
    let out = rig.ok(&["stack", "rm", "day", "--timeout", "1m"]);
    assert!(out.contains("stack day removed"), "{out}");
    assert!(rig.containers().is_empty());
    let stacks = rig.json(&["stack", "ls", "--format", "json"]);
    assert_eq!(stacks.as_array().map(Vec::len), Some(0), "{stacks}");
}
