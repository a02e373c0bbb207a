//! End to end through the real binary, as root on the real kernel: a `dcpp daemon` (store,
//! leader loop, node agent) per test with its own data dir, socket, port, cgroup parent, bridge
//! prefix, nft table and address pool; a busybox image imported from a local directory; stacks
//! applied with `dcpp apply` and checked through `dcpp ps`, the published port and the runtime.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rig::*;

fn web_compose(stack: &str, port: u16, replicas: u32, image: &str) -> String {
    format!(
        r#"name: {stack}
services:
  web:
    image: {image}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    stop_grace_period: 1s
    ports:
      - "127.0.0.1:{port}:8080"
    deploy:
      replicas: {replicas}
      update_config:
        failure_action: rollback
        monitor: 2s
  client:
    image: {IMAGE}
    stop_grace_period: 1s
    command: ["sh", "-c", "while true; do if ! wget -q -O- http://web:8080/; then echo FAIL; fi; sleep 0.3; done"]
    depends_on: [web]
"#
    )
}

/// `n` requests in a row to the published port, each answered by the page: no retry, so a
/// stale backend in the port map (a stopped replica) fails it.
fn assert_port_serves(port: u16, n: usize) {
    for i in 0..n {
        let body = http_get(port);
        assert!(
            body.as_deref()
                .is_some_and(|b| b.contains("hello from dcpp")),
            "request {i} of {n} to the published port failed: {body:?}"
        );
    }
}

#[test]
fn apply_runs_a_stack_and_reapply_scale_and_kill_behave() {
    let rig = Rig::new("ap");
    let port = free_port();

    // Invalid input: located error, nothing stored.
    let bad = rig.write("bad.yml", "services:\n  web:\n    image: [1\n");
    let out = rig.dcpp(&["apply", "-f", &bad, "-p", "bad"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.yml:"), "{}", stderr(&out));
    assert!(!rig.ok(&["stack", "ls"]).contains("bad"));

    let file = rig.write("compose.yml", &web_compose("ape", port, 2, IMAGE));
    let out = rig.ok(&["apply", "-f", &file]);
    assert!(
        out.contains("+ service web") && out.contains("converged"),
        "{out}"
    );
    assert_eq!(rig.running("ape_web"), 2);
    assert_eq!(rig.running("ape_client"), 1);
    let body = http_get(port).expect("published port answers");
    assert!(body.contains("hello from dcpp"), "{body}");
    // The client reaches the web service by its name.
    let client = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "ape_client")
        .unwrap();
    let cid = client["container_id"].as_str().unwrap().to_string();
    rig.wait_until("client output", 20, || {
        rig.ok(&["logs", &cid]).contains("hello from dcpp")
    });
    // Service-level logs: replicas merged with compose-style prefixes.
    let merged = rig.ok(&["logs", "client"]);
    assert!(merged.contains("client.1 | hello from dcpp"), "{merged}");

    // Unchanged: nothing touched, no container restarted.
    let before = rig.containers();
    let t0 = Instant::now();
    let out = rig.ok(&["apply", "-f", &file]);
    assert!(out.contains("no changes"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(rig.containers(), before);
    let d = rig.dcpp(&["diff", "-f", &file]);
    assert_eq!(d.status.code(), Some(0));

    // Scale 2 → 5 → 1 through the CLI; the client is untouched.
    rig.ok(&["service", "scale", "web=5"]);
    assert_eq!(rig.running("ape_web"), 5);
    assert_port_serves(port, 30);
    rig.ok(&["service", "scale", "web=1"]);
    rig.wait_until("scale down to 1", 30, || rig.containers().len() == 2);
    assert_eq!(rig.running("ape_web"), 1);
    // Scaled-down replicas left the port map and DNS before they stopped.
    assert_port_serves(port, 30);
    let logs = rig.ok(&["logs", &cid]);
    assert!(
        !logs.contains("FAIL"),
        "the client failed a request while scaling: {logs}"
    );
    assert!(rig.containers().contains(&cid[..12]));
    let d = rig.dcpp(&["diff", "-f", &file]);
    assert_eq!(d.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&d.stdout).contains("deploy.replicas"));

    // A container killed by hand is replaced.
    let web = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "ape_web")
        .unwrap();
    let wid = web["container_id"].as_str().unwrap().to_string();
    rig.ok(&["container", "kill", &wid]);
    rig.wait_until("replacement", 20, || {
        rig.tasks().iter().any(|t| {
            t["service"] == "ape_web" && t["state"] == "running" && t["container_id"] != wid
        })
    });
    assert_port_serves(port, 30);

    // Down removes everything.
    rig.ok(&["down", "-p", "ape"]);
    assert!(rig.containers().is_empty());
    rig.wait_until("network removal", 10, || {
        !String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .contains(&format!("{}0", rig.prefix))
    });
}

#[test]
fn update_to_a_missing_image_fails_and_rolls_back() {
    let rig = Rig::new("rb");
    let port = free_port();
    let file = rig.write("compose.yml", &web_compose("rbs", port, 2, IMAGE));
    rig.ok(&["apply", "-f", &file]);
    let old: BTreeSet<String> = rig.containers();
    let broken = rig.write(
        "broken.yml",
        // Port 1 of loopback: nothing listens, so the pull fails at once (and stays local).
        &web_compose("rbs", port, 2, "127.0.0.1:1/nothing:here"),
    );
    let out = rig.dcpp(&["apply", "-f", &broken]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("image pull failed") && err.contains("registry 127.0.0.1:1 unreachable"),
        "{err}"
    );
    // The rollback brings the old image back on every slot and the port keeps answering.
    rig.wait_until("rollback", 60, || {
        let tasks = rig.tasks();
        let web: Vec<_> = tasks.iter().filter(|t| t["service"] == "rbs_web").collect();
        web.len() == 2
            && web
                .iter()
                .all(|t| t["state"] == "running" && t["image"] == IMAGE)
    });
    assert_port_serves(port, 30);
    assert_eq!(old.len(), 3);

    // Manual update to another (good) image, then `service rollback` back to the first.
    let rootfs = rig.root.join("rootfs");
    rig.ok(&[
        "image",
        "import",
        rootfs.to_str().unwrap(),
        "dcpp.local/busybox:e2e2",
    ]);
    let out = rig.ok(&[
        "service",
        "update",
        "rbs_web",
        "--image",
        "dcpp.local/busybox:e2e2",
    ]);
    assert!(out.contains("converged"), "{out}");
    let images = |img: &str| {
        rig.tasks()
            .iter()
            .filter(|t| t["service"] == "rbs_web")
            .all(|t| t["state"] == "running" && t["image"] == img)
    };
    assert!(images("dcpp.local/busybox:e2e2"));
    let out = rig.ok(&["service", "rollback", "rbs_web"]);
    assert!(out.contains("converged"), "{out}");
    assert!(images(IMAGE));
}

#[test]
fn daemon_killed_mid_apply_converges_without_duplicates() {
    let mut rig = Rig::new("kd");
    let port = free_port();
    let file = rig.write("compose.yml", &web_compose("kds", port, 6, IMAGE));
    rig.ok(&["apply", "-d", "-f", &file]);
    // Mid-apply: the agent has started creating the replicas.
    rig.wait_until("the first replica's container", 20, || {
        !rig.containers().is_empty()
    });
    rig.kill9();
    rig.start_daemon();
    let out = rig.ok(&["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    // One container per live task, one task per slot.
    let tasks = rig.tasks();
    let slots: BTreeSet<String> = tasks
        .iter()
        .map(|t| format!("{}/{}", t["service"], t["slot"]))
        .collect();
    assert_eq!(slots.len(), tasks.len(), "{tasks:?}");
    assert_eq!(tasks.len(), 7);
    rig.wait_until("stray containers removed", 20, || {
        rig.containers().len() == 7
    });
    // Restarting again re-adopts: the very same containers keep running.
    let before = rig.containers();
    rig.stop_daemon();
    rig.start_daemon();
    // The restarted daemon puts the re-adopted replicas back behind the port.
    rig.wait_until("the port serves again", 20, || {
        http_get(port).is_some_and(|b| b.contains("hello"))
    });
    // Synchronised on the restarted daemon's work, not on time: a marker stack converges only
    // after the leader planned and the agent ran a round over every task, re-adopted ones
    // included; a replacement of one would have begun by then.
    let marker = rig.write(
        "marker.yml",
        &format!(
            "name: kdm\nservices:\n  m:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    stop_signal: SIGKILL\n"
        ),
    );
    let out = rig.ok(&["apply", "-f", &marker]);
    assert!(out.contains("converged"), "{out}");
    let now = rig.containers();
    assert!(before.is_subset(&now), "{before:?} -> {now:?}");
    assert_eq!(now.len(), before.len() + 1, "{before:?} -> {now:?}");
    assert_eq!(rig.running("kds_web"), 6);
}

/// `GET /v1/stacks/NAME/convergence` on the daemon's socket: `{"status": CODE, "body": JSON}`.
fn convergence(rig: &Rig, stack: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&rig.socket)
        .arg(format!("http://dcpp/v1/stacks/{stack}/convergence"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    serde_json::json!({
        "status": code.trim().parse::<u16>().unwrap_or(0),
        "body": serde_json::from_str::<serde_json::Value>(body).unwrap_or(serde_json::Value::Null),
    })
}

fn sleeper(replicas: u32) -> String {
    format!(
        "services:\n  app:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {replicas}\n"
    )
}

#[test]
fn watched_directory_add_change_break_delete() {
    let rig = Rig::new("wa");
    let dir = rig.root.join("stacks");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("alpha.yml"), sleeper(1)).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a stack").unwrap();
    let log = std::fs::File::create(rig.root.join("watch.log")).unwrap();
    let watcher = Command::new(BIN)
        .arg("-H")
        .arg(format!("unix://{}", rig.socket.display()))
        .arg("watch")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _watcher = KillOnDrop(watcher);
    let watch_log = || std::fs::read_to_string(rig.root.join("watch.log")).unwrap_or_default();
    // Added on start; the watcher follows the change to its verdict, as `apply` would.
    rig.wait_until("alpha applied", 30, || rig.running("alpha_app") == 1);
    rig.wait_until("alpha's outcome logged", 30, || {
        watch_log().contains("watch: stack alpha converged in ")
    });
    let v = convergence(&rig, "alpha");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"]["state"], "converged", "{v}");
    assert_eq!(v["body"]["services"][0]["name"], "app", "{v}");
    assert_eq!(v["body"]["services"][0]["running"], 1, "{v}");
    assert_eq!(v["body"]["services"][0]["desired"], 1, "{v}");
    let v = convergence(&rig, "nosuch");
    assert_eq!(v["status"], 404, "{v}");
    assert_eq!(v["body"]["code"], "not_found", "{v}");
    let ls = rig.ok(&["stack", "ls"]);
    assert!(ls.contains("alpha") && ls.contains("alpha.yml"), "{ls}");
    assert!(!ls.contains("notes"), "{ls}");
    // Changed.
    std::fs::write(dir.join("alpha.yml"), sleeper(2)).unwrap();
    rig.wait_until("alpha scaled", 30, || rig.running("alpha_app") == 2);
    // Broken: logged, last good state kept.
    let hash = rig.ok(&["stack", "ls"]);
    std::fs::write(dir.join("alpha.yml"), "services:\n  app: [unclosed\n").unwrap();
    rig.wait_until("error logged", 30, || watch_log().contains("is invalid"));
    assert_eq!(
        rig.ok(&["stack", "ls"])
            .lines()
            .nth(1)
            .map(|l| l.split_whitespace().nth(2).map(str::to_string)),
        hash.lines()
            .nth(1)
            .map(|l| l.split_whitespace().nth(2).map(str::to_string))
    );
    assert_eq!(rig.running("alpha_app"), 2);
    // A second file is a second stack.
    std::fs::write(dir.join("beta.yaml"), sleeper(1)).unwrap();
    rig.wait_until("beta applied", 30, || rig.running("beta_app") == 1);
    // A stack that crash-loops: nobody waits on a terminal, so the log and the API say so.
    std::fs::write(
        dir.join("gamma.yml"),
        format!(
            "services:\n  app:\n    image: {IMAGE}\n    command: [\"sh\", \"-c\", \"exit 3\"]\n"
        ),
    )
    .unwrap();
    rig.wait_until("gamma's failure logged", 60, || {
        watch_log().contains("watch: stack gamma failed: app: ")
    });
    let v = convergence(&rig, "gamma");
    assert_eq!(v["body"]["state"], "failed", "{v}");
    let reason = v["body"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("app: crash loop: ") && reason.ends_with("exited with code 3"),
        "{v}"
    );
    assert_eq!(
        v["body"]["services"][0]["verdict"]["state"], "failed",
        "{v}"
    );
    std::fs::remove_file(dir.join("gamma.yml")).unwrap();
    // Deleted: its stack goes, the other stays.
    std::fs::remove_file(dir.join("alpha.yml")).unwrap();
    rig.wait_until("alpha removed", 30, || {
        !rig.ok(&["stack", "ls"]).contains("alpha")
            && !rig.tasks().iter().any(|t| t["service"] == "alpha_app")
    });
    assert_eq!(rig.running("beta_app"), 1);
}

#[test]
fn healthcheck_runs_in_the_container_and_gates_service_healthy_dependents() {
    let rig = Rig::new("hc");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: hcs
services:
  db:
    image: {IMAGE}
    command: ["sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 3600"]
    stop_signal: SIGKILL
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 500ms
      retries: 30
  app:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    depends_on:
      db:
        condition: service_healthy
"#
        ),
    );
    let mut apply = Command::new(BIN)
        .arg("-H")
        .arg(format!("unix://{}", rig.socket.display()))
        .args(["apply", "-f", &file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While db is not healthy yet, app waits for it.
    rig.wait_until("db running", 20, || rig.running("hcs_db") == 1);
    let app = rig.tasks().into_iter().find(|t| t["service"] == "hcs_app");
    assert!(
        app.as_ref().is_none_or(|t| t["state"] != "running"),
        "{app:?}"
    );
    let status = apply.wait().unwrap();
    assert!(status.success());
    let tasks = rig.tasks();
    let db = tasks.iter().find(|t| t["service"] == "hcs_db").unwrap();
    assert_eq!(db["health"], "healthy", "{db}");
    assert_eq!(rig.running("hcs_app"), 1);
}
