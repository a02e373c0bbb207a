//! A compose user's everyday loop against the data plane, through the real binary on a real
//! daemon: a web service of 4 replicas with a healthcheck behind a published port, and a client
//! container that reaches it by its service name. While 20 rolling updates (image tag and env
//! changes, each replacing every replica) and 20 scale up/down cycles run, a client loop on the
//! host hits the published port on 127.0.0.1 and the client container fetches `http://web:8080/`;
//! not one request may fail (no retries), and after every step the service name resolves to
//! exactly the running, healthy replicas and the port map holds exactly them.
//!
//! Before the fix, stopped replicas stayed in the DNAT map and in DNS until a daemon restart:
//! after the first update half the connections failed.

#[path = "support/dataplane_rig.rs"]
mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rig::{IMAGE, IMAGE2, Rig, free_port};

const STACK: &str = "sp";
const WEB: &str = "sp_web";

fn compose(port: u16, replicas: u32, image: &str, generation: u32) -> String {
    format!(
        r#"name: {STACK}
services:
  web:
    image: {image}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    stop_grace_period: 1s
    environment:
      GENERATION: "{generation}"
    ports:
      - "127.0.0.1:{port}:8080"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 300ms
      timeout: 2s
      retries: 1
    deploy:
      replicas: {replicas}
      update_config:
        parallelism: 1
        delay: 500ms
        order: start-first
  client:
    image: {IMAGE}
    stop_grace_period: 1s
    depends_on:
      web:
        condition: service_healthy
    command: ["sh", "-c", "while true; do if wget -q -O /dev/null http://web:8080/; then echo ok; else echo FAIL; fi; sleep 0.1; done"]
"#
    )
}

/// One request to the published port: the page, or why not.
fn fetch(port: u16) -> Result<(), String> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    if out.starts_with("HTTP/1.") && out.contains(" 200 ") && out.contains("hello from dcpp") {
        Ok(())
    } else {
        Err(format!("bad answer {out:?}"))
    }
}

/// Hits the published port until stopped, counting every request and keeping each failure.
struct HostClient {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl HostClient {
    fn start(port: u16) -> HostClient {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let (mut total, mut failures) = (0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                total += 1;
                if let Err(e) = fetch(port) {
                    failures.push(format!("{:.3}s: {e}", started.elapsed().as_secs_f64()));
                }
                std::thread::sleep(Duration::from_millis(15));
            }
            (total, failures)
        });
        HostClient {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for HostClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Container ids of the service's live tasks, and whether every one runs and is healthy.
fn web_tasks(rig: &Rig) -> (Vec<String>, bool) {
    let tasks: Vec<serde_json::Value> = rig
        .tasks()
        .into_iter()
        .filter(|t| t["service"] == WEB)
        .collect();
    let ready = tasks
        .iter()
        .all(|t| t["state"] == "running" && t["health"] == "healthy");
    let ids = tasks
        .iter()
        .filter_map(|t| t["container_id"].as_str().map(str::to_string))
        .collect();
    (ids, ready)
}

/// Waits until exactly `n` replicas run healthy, none of them in `old`, with `image`.
fn wait_replaced(rig: &Rig, n: usize, old: &BTreeSet<String>, image: &str) -> Vec<String> {
    let mut ids = Vec::new();
    rig.wait_until(&format!("{n} new healthy replicas of {image}"), 120, || {
        let tasks: Vec<serde_json::Value> = rig
            .tasks()
            .into_iter()
            .filter(|t| t["service"] == WEB)
            .collect();
        let (cur, ready) = web_tasks(rig);
        ids = cur;
        tasks.len() == n
            && ready
            && tasks.iter().all(|t| t["image"] == image)
            && ids.len() == n
            && ids.iter().all(|i| !old.contains(i))
    });
    ids
}

/// Waits until exactly `n` replicas run healthy.
fn wait_scaled(rig: &Rig, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    rig.wait_until(&format!("{n} healthy replicas"), 120, || {
        let (cur, ready) = web_tasks(rig);
        ids = cur;
        ids.len() == n && ready
    });
    ids
}

/// Addresses `web` resolves to, asked by `nslookup` in the client container.
fn resolve_web(rig: &Rig, client: &str) -> BTreeSet<String> {
    let (_, out) = rig.exec(client, &["nslookup", "web"]);
    if !out.contains("Name:") {
        eprintln!(
            "nslookup: {out}\n{}\n{}",
            String::from_utf8_lossy(&rig.dcpp(&["ps", "-a"]).stdout),
            rig::tail(&rig.log(), 80)
        );
    }
    // After the "Name: web" line, each answer is "Address: IP" (the server line has a port).
    out.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .collect()
}

/// Addresses of these containers on the stack network.
fn addresses_of(rig: &Rig, ids: &[String]) -> BTreeSet<String> {
    let out = rig.ok(&["network", "inspect", &format!("{STACK}_default")]);
    let nets: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    nets[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let cid = e["container_id"].as_str().unwrap_or("");
            ids.iter().any(|i| cid.starts_with(i.as_str()))
        })
        .map(|e| e["ip"].as_str().unwrap().to_string())
        .collect()
}

/// Backends of the published port in the nft ruleset.
fn port_backends(rig: &Rig) -> usize {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "ip", &rig.table])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rule = text
        .lines()
        .find(|l| l.contains("dnat") && l.contains("numgen"))
        .unwrap_or("");
    rule.split("mod ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::from(rule.contains("dnat")))
}

/// DNS answers and the port map are exactly the running, healthy replicas.
fn assert_served_by(rig: &Rig, client: &str, ids: &[String], step: &str) {
    let want = addresses_of(rig, ids);
    assert_eq!(
        want.len(),
        ids.len(),
        "{step}: every replica has an address"
    );
    let got = resolve_web(rig, client);
    assert_eq!(got, want, "{step}: `web` resolves to the running replicas");
    assert_eq!(
        port_backends(rig),
        ids.len(),
        "{step}: the published port goes to the running replicas"
    );
}

#[test]
fn rolling_updates_and_scaling_fail_no_request_and_dns_follows_replicas() {
    let rig = Rig::new("sp");
    let port = free_port();
    let file = rig.write("compose.yml", &compose(port, 4, IMAGE, 0));
    rig.ok(&["apply", "-f", &file]);
    let mut ids = wait_scaled(&rig, 4);
    let client = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "sp_client")
        .and_then(|t| t["container_id"].as_str().map(str::to_string))
        .expect("client task");
    rig.wait_until("client running", 30, || rig.exec(&client, &["true"]).0);
    assert_served_by(&rig, &client, &ids, "initial deploy");

    let host = HostClient::start(port);
    let mut image = IMAGE;
    let mut times = Vec::new();
    for i in 1..=20u32 {
        let old: BTreeSet<String> = ids.iter().cloned().collect();
        let t0 = Instant::now();
        if i % 2 == 1 {
            // Image change through `service update`.
            image = if image == IMAGE { IMAGE2 } else { IMAGE };
            rig.ok(&["service", "update", WEB, "--image", image]);
        } else {
            // Env change through `apply` (the file keeps the image in place).
            let f = rig.write("compose.yml", &compose(port, 4, image, i));
            rig.ok(&["apply", "-f", &f]);
        }
        ids = wait_replaced(&rig, 4, &old, image);
        times.push(t0.elapsed());
        assert_served_by(&rig, &client, &ids, &format!("update {i}"));
    }
    // The compose file is the truth again before scaling through the CLI.
    let f = rig.write("compose.yml", &compose(port, 4, image, 20));
    rig.ok(&["apply", "-f", &f]);
    for i in 1..=20 {
        rig.ok(&["service", "scale", "web=7"]);
        ids = wait_scaled(&rig, 7);
        assert_served_by(&rig, &client, &ids, &format!("scale up {i}"));
        rig.ok(&["service", "scale", "web=4"]);
        ids = wait_scaled(&rig, 4);
        assert_served_by(&rig, &client, &ids, &format!("scale down {i}"));
    }
    let (total, failures) = host.finish();

    let logs = rig.ok(&["logs", &client]);
    let in_ok = logs.lines().filter(|l| l.trim() == "ok").count();
    let in_fail = logs.lines().filter(|l| l.trim() == "FAIL").count();
    times.sort();
    let secs = |d: &Duration| d.as_secs_f64();
    eprintln!(
        "FIGURES: host requests {total}, failed {}; in-container requests {}, failed {in_fail}; \
         service update -> 4 replicas healthy: min {:.2}s median {:.2}s max {:.2}s",
        failures.len(),
        in_ok + in_fail,
        secs(&times[0]),
        secs(&times[times.len() / 2]),
        secs(&times[times.len() - 1]),
    );
    assert!(total > 500, "the host client ran the whole time ({total})");
    assert!(
        failures.is_empty(),
        "{} of {total} requests to the published port failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        in_ok > 100,
        "the client container ran the whole time ({in_ok})"
    );
    assert_eq!(
        in_fail, 0,
        "requests by name from the client container failed"
    );
}
