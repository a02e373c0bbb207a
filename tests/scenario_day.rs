//! A compose user's day through the real binary on a real daemon: deploy a web service with a
//! healthcheck and a published port plus a client that reaches it by name; update its image
//! (good, then unhealthy, then crashing); change only an env var; roll back; scale up and
//! down; kill a container. Each step asserts the exit code and message of apply / update / scale /
//! rollback, what `service ls` and `service inspect` say runs, and that the port answers.

mod rig;
#[path = "rig/slot.rs"]
mod slot;
use rig::*;

const GOOD2: &str = "dcpp.local/busybox:day2";
/// Serves 404 for `/`: runs, but its healthcheck never passes.
const SICK: &str = "dcpp.local/busybox:daysick";

fn compose(port: u16, image: &str, command: &str, mode: &str) -> String {
    format!(
        r#"name: day
services:
  web:
    image: {image}
    command: {command}
    stop_grace_period: 1s
    ports:
      - "127.0.0.1:{port}:8080"
    environment:
      MODE: "{mode}"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 300ms
      retries: 2
    deploy:
      replicas: 2
      update_config:
        parallelism: 1
        order: start-first
        failure_action: rollback
        monitor: 3s
      rollback_config:
        parallelism: 0
        monitor: 1s
  client:
    image: {IMAGE}
    stop_grace_period: 1s
    command: ["sh", "-c", "while true; do wget -q -O- http://web:8080/; sleep 0.5; done"]
"#
    )
}

const HTTPD: &str = r#"["httpd", "-f", "-p", "8080", "-h", "/www"]"#;
/// Serves (and turns healthy), then exits 1 after two seconds: within the 3 s monitor.
const CRASHING: &str = r#"["sh", "-c", "httpd -p 8080 -h /www; sleep 2; exit 1"]"#;

/// The `service ls` row of day_web: (replicas, image).
fn ls_web(rig: &Rig) -> (String, String) {
    let out = rig.ok(&["service", "ls", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let row = rows
        .iter()
        .find(|r| r["name"] == "day_web")
        .unwrap_or_else(|| panic!("{out}"));
    (
        format!("{}/{}", row["running"], row["desired"]),
        row["image"].as_str().unwrap().to_string(),
    )
}

fn inspect_web(rig: &Rig) -> serde_json::Value {
    serde_json::from_str(&rig.ok(&["service", "inspect", "day_web"])).unwrap()
}

/// Light request check: the published port answers with `body` (a few tries: a replica
/// may be between the port map and its start).
fn answers(rig: &Rig, port: u16, body: &str, step: &str) {
    rig.wait_until(
        &format!("port {port} answering {body:?} after {step}"),
        15,
        || http_get(port).is_some_and(|b| b.contains(body)),
    );
}

/// Check after each change: every running web replica serves `body` itself, and the published
/// port answers `body` ten times in a row with no retry (once apply has returned, no stopped
/// replica may be left in the port map, nor a new one missing from it).
fn serves(rig: &Rig, port: u16, body: &str) {
    for i in 0..10 {
        let got = http_get(port);
        assert!(
            got.as_deref().is_some_and(|b| b.contains(body)),
            "request {i} to port {port}: {got:?}"
        );
    }
    for t in web_tasks(rig) {
        let cid = t["container_id"].as_str().unwrap();
        let out = rig.ok(&[
            "container",
            "exec",
            cid,
            "wget",
            "-q",
            "-O-",
            "http://127.0.0.1:8080/",
        ]);
        assert!(out.contains(body), "task {}: {out}", t["id"]);
    }
}

fn web_tasks(rig: &Rig) -> Vec<serde_json::Value> {
    rig.tasks()
        .into_iter()
        .filter(|t| t["service"] == "day_web")
        .collect()
}

#[test]
fn a_compose_users_day() {
    let rig = Rig::new("dy");
    rig.import_variant(GOOD2, |root| {
        std::fs::write(root.join("www/index.html"), "hello v2\n").unwrap();
    });
    rig.import_variant(SICK, |root| {
        std::fs::remove_file(root.join("www/index.html")).unwrap();
    });
    let port = free_port();
    let good1 = rig.write("good1.yml", &compose(port, IMAGE, HTTPD, "a"));
    let good2 = rig.write("good2.yml", &compose(port, GOOD2, HTTPD, "a"));
    let sick = rig.write("sick.yml", &compose(port, SICK, HTTPD, "a"));
    let crashing = rig.write("crash.yml", &compose(port, GOOD2, CRASHING, "a"));
    let env_b = rig.write("envb.yml", &compose(port, GOOD2, HTTPD, "b"));

    // Morning: deploy.
    let (code, out, err, _) = rig.run(&["apply", "-f", &good1]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("converged"), "{out}");
    assert_eq!(ls_web(&rig), ("2/2".into(), IMAGE.into()));
    assert!(web_tasks(&rig).iter().all(|t| t["health"] == "healthy"));
    answers(&rig, port, "hello from dcpp", "deploy");
    let client = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "day_client")
        .unwrap()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    rig.wait_until("client reaches web by name", 20, || {
        rig.ok(&["logs", &client]).contains("hello from dcpp")
    });

    // A good image update.
    let (code, out, err, secs) = rig.run(&["apply", "-f", &good2]);
    assert_eq!(code, Some(0), "{out}{err}");
    // A figure for the record (2 replicas, start-first, 300 ms healthcheck, 3 s monitor).
    eprintln!("image update of 2 replicas to all healthy and monitored: {secs:.2}s");
    assert!(
        out.contains("~ service web: image") && out.contains("converged"),
        "{out}"
    );
    assert_eq!(ls_web(&rig), ("2/2".into(), GOOD2.into()));
    serves(&rig, port, "hello v2");

    // An image that runs but never turns healthy: rolled back, apply says so.
    let (code, out, err, _) = rig.run(&["apply", "-f", &sick]);
    assert_eq!(code, Some(1), "{out}{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("service web: failed: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("rolled back") && line.contains("unhealthy") && line.contains("404"),
        "{line}"
    );
    // The state tells the truth: the version that runs is the stored one, the rejected one is
    // history, and the diff against the bad file shows the change again.
    assert_eq!(ls_web(&rig), ("2/2".into(), GOOD2.into()));
    let doc = inspect_web(&rig);
    assert_eq!(doc["spec"]["image"], GOOD2);
    assert_eq!(doc["rejected"]["spec"]["image"], SICK, "{doc}");
    assert_eq!(doc["update_status"]["state"], "rolled_back", "{doc}");
    let d = rig.dcpp(&["diff", "-f", &sick]);
    assert_eq!(d.status.code(), Some(2));
    assert!(
        stdout(&d).contains("~ service web: image"),
        "{}",
        stdout(&d)
    );
    assert!(web_tasks(&rig).iter().all(|t| t["image"] == GOOD2));
    serves(&rig, port, "hello v2");
    // There is nothing to roll back to: the rollback already happened.
    let (code, _, err, _) = rig.run(&["service", "rollback", "day_web"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no previous spec to roll back to"), "{err}");
    // Applying the bad file again retries the update (and fails the same way).
    let (code, out, err, _) = rig.run(&["apply", "-f", &sick]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("~ service web: image"), "{out}");
    assert!(
        err.contains("service web: failed: update to version"),
        "{err}"
    );
    assert_eq!(ls_web(&rig).1, GOOD2);

    // A version that serves, then crashes within the monitor window.
    let (code, out, err, _) = rig.run(&["apply", "-f", &crashing]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("service web: failed: ") && err.contains("exited with code 1"),
        "{err}"
    );
    let doc = inspect_web(&rig);
    assert_eq!(doc["service"]["command"][0], "httpd", "{doc}");
    serves(&rig, port, "hello v2");

    // Only an env var changes: new web containers, the client untouched.
    let (code, out, err, _) = rig.run(&["apply", "-f", &env_b]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("~ service web: environment"), "{out}");
    assert_eq!(inspect_web(&rig)["service"]["environment"]["MODE"], "b");
    assert!(rig.containers().contains(&client[..12]));
    serves(&rig, port, "hello v2");

    // `service rollback`: back to MODE=a, with the rollback_config.
    let (code, out, err, _) = rig.run(&["service", "rollback", "day_web"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("converged"), "{out}");
    let doc = inspect_web(&rig);
    assert_eq!(doc["service"]["environment"]["MODE"], "a", "{doc}");
    assert_eq!(doc["update_status"]["state"], "rolled_back", "{doc}");
    assert_eq!(ls_web(&rig), ("2/2".into(), GOOD2.into()));
    serves(&rig, port, "hello v2");
    let d = rig.dcpp(&["diff", "-f", &good2]);
    assert_eq!(d.status.code(), Some(0), "{}", stdout(&d));

    // Scale up and down.
    let (code, out, err, _) = rig.run(&["service", "scale", "web=4"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(ls_web(&rig).0, "4/4");
    let (code, out, err, _) = rig.run(&["service", "scale", "web=1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(ls_web(&rig).0, "1/1");
    assert_eq!(web_tasks(&rig).len(), 1);
    serves(&rig, port, "hello v2");
    let (code, out, err, _) = rig.run(&["service", "scale", "web=2"]);
    assert_eq!(code, Some(0), "{out}{err}");

    // A container killed by hand is replaced; apply then finds nothing to do.
    let victim = web_tasks(&rig)[0]["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    rig.ok(&["container", "kill", &victim]);
    rig.wait_until("replacement healthy", 30, || {
        let w = web_tasks(&rig);
        w.len() == 2
            && w.iter()
                .all(|t| t["container_id"] != victim.as_str() && t["health"] == "healthy")
    });
    let (code, out, err, _) = rig.run(&["apply", "-f", &good2]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("no changes"), "{out}");
    serves(&rig, port, "hello v2");
}
