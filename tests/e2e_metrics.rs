//! `dcpp daemon --metrics-addr` through the real binary: a stack is applied, a container is
//! killed and a healthcheck made to fail, and each scrape, parsed with a Prometheus
//! text-format parser, must show exactly what happened; the containers' figures must match
//! their cgroup files.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};
use rig::*;

/// `GET /metrics` over an open connection (TCP or the API's unix socket), which must answer
/// 200: the parsed body and the content type.
fn get_metrics(mut s: impl Read + Write) -> (Scrape, String) {
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses");
    (parsed, ctype)
}

/// `GET /metrics` on `127.0.0.1:port`: the parsed body, the content type and the time taken.
fn scrape(port: u16) -> (Scrape, String, Duration) {
    let t0 = Instant::now();
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (parsed, ctype) = get_metrics(s);
    (parsed, ctype, t0.elapsed())
}

/// `GET /metrics` on the daemon's unix socket.
fn scrape_socket(rig: &Rig) -> Scrape {
    let u = std::os::unix::net::UnixStream::connect(&rig.socket).expect("the API socket");
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    get_metrics(u).0
}

/// A daemon with `--metrics-addr` on a free loopback port, and that port.
fn with_metrics(tag: &str) -> (Rig, u16) {
    let port = free_port();
    let mut rig = Rig::unstarted(tag);
    rig.extra = vec!["--metrics-addr".into(), format!("127.0.0.1:{port}")];
    rig.start_daemon();
    (rig, port)
}

fn number(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        v => panic!("{}: not a number: {v:?}", s.metric),
    }
}

/// Samples of `metric` whose labels include `labels`.
fn find<'a>(sc: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    sc.samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The sum of the matching samples (0 when none: a counter not yet incremented).
fn sum(sc: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    find(sc, metric, labels).iter().map(|s| number(s)).sum()
}

fn one(sc: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let f = find(sc, metric, labels);
    assert_eq!(f.len(), 1, "{metric} {labels:?}: {} samples", f.len());
    number(f[0])
}

/// A cgroup file of the container (v1: under the controller's mount; v2: the unified tree).
fn cgroup_file(rel: &str, controller: &str, file: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    let v1 = PathBuf::from("/sys/fs/cgroup").join(controller);
    if v1.join("cgroup.procs").exists() {
        v1.join(rel).join(file)
    } else {
        PathBuf::from("/sys/fs/cgroup").join(rel).join(file)
    }
}

fn read_u64(p: &PathBuf) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

fn cgroup_v1() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
}

#[test]
fn metrics_count_starts_kills_and_failed_healthchecks_and_read_the_cgroups() {
    // Plain HTTP metrics are for this machine only.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["daemon", "--metrics-addr", "0.0.0.0:9100", "--socket"])
        .arg(tmp.path().join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a loopback address"),
        "{}",
        stderr(&out)
    );

    let (rig, port) = with_metrics("mt");
    // The same metrics on the API's unix socket.
    assert_eq!(one(&scrape_socket(&rig), "dcpp_raft_is_leader", &[]), 1.0);
    let (first, ctype, _) = scrape(port);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert_eq!(sum(&first, "dcpp_agent_container_starts_total", &[]), 0.0);
    assert!(one(&first, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(one(&first, "process_open_fds", &[]) > 3.0);
    assert_eq!(one(&first, "dcpp_raft_is_leader", &[]), 1.0);
    assert!(one(&first, "dcpp_raft_term", &[]) >= 1.0);
    assert!(one(&first, "dcpp_raft_last_applied_index", &[]) >= 1.0);

    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: mts
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "head -c 3000000 /dev/zero > /tmp/blob; exec sleep 3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 2
      resources:
        limits:
          memory: 64M
  hc:
    image: {IMAGE}
    command: ["sh", "-c", "touch /tmp/ok; exec sleep 3600"]
    stop_signal: SIGKILL
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ok"]
      interval: 300ms
      retries: 1
"#
        ),
    );
    rig.ok(&["apply", "-f", &file]);
    rig.wait_until("hc healthy", 30, || {
        rig.tasks()
            .iter()
            .any(|t| t["service"] == "mts_hc" && t["health"] == "healthy")
    });
    let (sc, _, _) = scrape(port);
    assert_eq!(sum(&sc, "dcpp_agent_container_starts_total", &[]), 3.0);
    assert_eq!(sum(&sc, "dcpp_agent_task_restarts_total", &[]), 0.0);
    assert_eq!(sum(&sc, "dcpp_agent_container_exits_total", &[]), 0.0);
    assert_eq!(sum(&sc, "dcpp_agent_healthcheck_failures_total", &[]), 0.0);
    assert!(sum(&sc, "dcpp_agent_healthchecks_total", &[]) >= 1.0);
    let running = [("stack", "mts"), ("service", "web"), ("state", "running")];
    assert_eq!(one(&sc, "dcpp_tasks", &running), 2.0);
    assert_eq!(
        one(
            &sc,
            "dcpp_tasks",
            &[("service", "hc"), ("state", "running")]
        ),
        1.0
    );
    assert!(sum(&sc, "dcpp_reconcile_rounds_total", &[]) >= 1.0);
    assert!(
        sum(
            &sc,
            "dcpp_reconcile_actions_total",
            &[("kind", "create_task")]
        ) >= 3.0
    );
    assert!(
        sum(
            &sc,
            "dcpp_reconcile_actions_total",
            &[("kind", "assign_task")]
        ) >= 3.0
    );
    assert!(
        sum(
            &sc,
            "dcpp_api_requests_total",
            &[("route", "/v1/txn"), ("status", "200")]
        ) >= 1.0
    );
    // Each answered request is timed once, in its route's histogram.
    let txn = [("route", "/v1/txn")];
    assert_eq!(
        sum(&sc, "dcpp_api_request_duration_seconds_count", &txn),
        sum(&sc, "dcpp_api_requests_total", &txn)
    );
    assert!(sum(&sc, "dcpp_reconcile_plan_duration_seconds_count", &[]) >= 1.0);
    assert!(sum(&sc, "dcpp_reconcile_round_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(
        sum(
            &sc,
            "dcpp_agent_container_create_start_duration_seconds_count",
            &[]
        ),
        3.0
    );

    // A replica killed from outside: one exit by a signal, one start in its place.
    let web = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "mts_web" && t["state"] == "running")
        .unwrap();
    let wid = web["container_id"].as_str().unwrap().to_string();
    rig.ok(&["container", "kill", &wid]);
    rig.wait_until("replacement", 30, || {
        rig.tasks()
            .iter()
            .filter(|t| {
                t["service"] == "mts_web" && t["state"] == "running" && t["container_id"] != wid
            })
            .count()
            == 2
    });
    let (sc, _, _) = scrape(port);
    assert_eq!(
        sum(
            &sc,
            "dcpp_agent_container_exits_total",
            &[("reason", "killed")]
        ),
        1.0
    );
    assert_eq!(sum(&sc, "dcpp_agent_container_exits_total", &[]), 1.0);
    assert_eq!(sum(&sc, "dcpp_agent_container_starts_total", &[]), 4.0);
    assert_eq!(sum(&sc, "dcpp_agent_task_restarts_total", &[]), 1.0);
    assert_eq!(one(&sc, "dcpp_tasks", &running), 2.0);
    assert_eq!(
        one(
            &sc,
            "dcpp_tasks",
            &[("service", "web"), ("state", "failed")]
        ),
        1.0
    );

    // The healthcheck fails: the container is stopped as unhealthy (not an exit of its own)
    // and replaced.
    let hc = rig
        .tasks()
        .into_iter()
        .find(|t| t["service"] == "mts_hc" && t["state"] == "running")
        .unwrap();
    let hid = hc["container_id"].as_str().unwrap().to_string();
    rig.ok(&["container", "exec", &hid, "rm", "/tmp/ok"]);
    rig.wait_until("hc replaced and healthy", 30, || {
        rig.tasks().iter().any(|t| {
            t["service"] == "mts_hc" && t["health"] == "healthy" && t["container_id"] != hid
        })
    });
    let (sc, _, _) = scrape(port);
    assert!(sum(&sc, "dcpp_agent_healthcheck_failures_total", &[]) >= 1.0);
    assert_eq!(sum(&sc, "dcpp_agent_unhealthy_stops_total", &[]), 1.0);
    assert_eq!(sum(&sc, "dcpp_agent_container_exits_total", &[]), 1.0);
    assert_eq!(sum(&sc, "dcpp_agent_container_starts_total", &[]), 5.0);
    assert_eq!(sum(&sc, "dcpp_agent_task_restarts_total", &[]), 2.0);

    // Each running container's figures are its cgroup's.
    let tasks: Vec<_> = rig
        .tasks()
        .into_iter()
        .filter(|t| t["state"] == "running")
        .collect();
    assert_eq!(tasks.len(), 3);
    let node = rig.id.to_string();
    let mut took = Vec::new();
    for t in &tasks {
        let id = t["container_id"].as_str().unwrap();
        let info = rig.json(&["container", "inspect", id]);
        let info = &info[0];
        let (name, cg) = (
            info["name"].as_str().unwrap(),
            info["cgroup_path"].as_str().unwrap(),
        );
        let task = match &t["id"] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let labels = [
            ("name", name),
            ("task", task.as_str()),
            ("node", node.as_str()),
        ];
        let (cpu_file, mem_file) = if cgroup_v1() {
            (
                cgroup_file(cg, "cpuacct", "cpuacct.usage"),
                cgroup_file(cg, "memory", "memory.usage_in_bytes"),
            )
        } else {
            (
                cgroup_file(cg, "", "cpu.stat"),
                cgroup_file(cg, "", "memory.current"),
            )
        };
        let cpu_before = if cgroup_v1() {
            read_u64(&cpu_file) as f64 / 1e9
        } else {
            0.0
        };
        let mem_before = read_u64(&mem_file) as f64;
        let (sc, _, d) = scrape(port);
        took.push(d);
        let mem_after = read_u64(&mem_file) as f64;
        let cpu = one(&sc, "container_cpu_usage_seconds_total", &labels);
        if cgroup_v1() {
            let cpu_after = read_u64(&cpu_file) as f64 / 1e9;
            assert!(
                cpu_before <= cpu && cpu <= cpu_after,
                "{name}: cpu {cpu} outside [{cpu_before}, {cpu_after}]"
            );
        }
        assert!(cpu > 0.0, "{name}: no cpu time");
        let mem = one(&sc, "container_memory_usage_bytes", &labels);
        let (lo, hi) = (mem_before.min(mem_after), mem_before.max(mem_after));
        assert!(
            mem >= lo * 0.95 && mem <= hi * 1.05,
            "{name}: memory {mem} vs the cgroup's {mem_before}..{mem_after}"
        );
        let ws = one(&sc, "container_memory_working_set_bytes", &labels);
        assert!(ws > 0.0 && ws <= mem, "{name}: working set {ws} of {mem}");
        assert!(one(&sc, "container_threads", &labels) >= 1.0);
        // Each container has its own netns with a veth: counters exist (zero traffic is fine).
        assert!(one(&sc, "container_network_receive_bytes_total", &labels) >= 0.0);
        assert!(one(&sc, "container_fs_writes_bytes_total", &labels) >= 0.0);
        let stack_service = (
            info["labels"]["org.dcpp.stack"].as_str().unwrap(),
            info["labels"]["org.dcpp.service"].as_str().unwrap(),
        );
        assert_eq!(stack_service.0, "mts");
        if t["service"] == "mts_web" {
            assert_eq!(
                one(&sc, "container_spec_memory_limit_bytes", &labels),
                (64u64 << 20) as f64
            );
            // The 3 MB file in its tmpfs-less /tmp is page cache charged to it.
            assert!(mem > 3e6, "{name}: {mem}");
        }
    }
    took.sort();
    eprintln!(
        "scrape latency with 3 containers: min {:?}, max {:?}; daemon RSS {} MiB",
        took[0],
        took[took.len() - 1],
        one(&scrape(port).0, "process_resident_memory_bytes", &[]) / 1048576.0
    );
    rig.ok(&["down", "-p", "mts"]);
}

fn stat_value(stat: &str, key: &str) -> u64 {
    stat.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn stats_no_stream_json_matches_the_cgroup_files() {
    let rig = Rig::new("sx");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: sxs
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "head -c 4000000 /dev/zero > /tmp/blob; exec sleep 3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 2
      resources:
        limits:
          memory: 64M
  other:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
"#
        ),
    );
    rig.ok(&["apply", "-f", &file]);
    // An unknown name is an error, not an empty table.
    let out = rig.dcpp(&["stats", "--no-stream", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));

    let out = rig.ok(&["stats", "--no-stream", "--format", "json", "web"]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert_eq!(r["service"], "web", "{r}");
        assert_eq!(r["node"], rig.id, "{r}");
        let id = r["id"].as_str().unwrap();
        let info = rig.json(&["container", "inspect", id]);
        let cg = info[0]["cgroup_path"].as_str().unwrap().to_string();
        let (usage, stat, limit) = if cgroup_v1() {
            (
                read_u64(&cgroup_file(&cg, "memory", "memory.usage_in_bytes")),
                std::fs::read_to_string(cgroup_file(&cg, "memory", "memory.stat")).unwrap(),
                read_u64(&cgroup_file(&cg, "memory", "memory.limit_in_bytes")),
            )
        } else {
            (
                read_u64(&cgroup_file(&cg, "", "memory.current")),
                std::fs::read_to_string(cgroup_file(&cg, "", "memory.stat")).unwrap(),
                read_u64(&cgroup_file(&cg, "", "memory.max")),
            )
        };
        let inactive = stat_value(
            &stat,
            if cgroup_v1() {
                "total_inactive_file"
            } else {
                "inactive_file"
            },
        );
        let ws = usage.saturating_sub(inactive) as f64;
        let shown = r["memory_working_set_bytes"].as_f64().unwrap();
        assert!(
            (shown - ws).abs() <= ws * 0.05 + 65536.0,
            "{id}: working set {shown} vs the cgroup's {ws}"
        );
        let used = r["memory_usage_bytes"].as_f64().unwrap();
        assert!(
            (used - usage as f64).abs() <= usage as f64 * 0.05 + 65536.0,
            "{id}: usage {used} vs {usage}"
        );
        // The 4 MB file in /tmp is page cache charged to the container.
        assert!(used > 4e6, "{id}: {used}");
        assert_eq!(r["memory_limit_bytes"].as_u64(), Some(limit));
        assert_eq!(limit, 64 << 20);
        let pct = r["memory_percent"].as_f64().unwrap();
        assert!((pct - shown / limit as f64 * 100.0).abs() < 1e-6, "{r}");
        assert!(r["pids"].as_u64().unwrap() >= 1, "{r}");
        let cpu = r["cpu_percent"].as_f64().unwrap();
        // A sleeping container: next to nothing of one CPU.
        assert!((0.0..5.0).contains(&cpu), "{r}");
    }
    // The table, all containers.
    let table = rig.ok(&["stats", "--no-stream"]);
    assert!(table.starts_with("CONTAINER ID"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.contains("64MiB") || table.contains("64.00MiB"),
        "{table}"
    );
    rig.ok(&["down", "-p", "sxs"]);
}

#[test]
fn an_oom_kill_and_a_failing_exit_are_counted_each_by_its_reason() {
    let (rig, port) = with_metrics("mo");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: mos
services:
  hog:
    image: {IMAGE}
    restart: "no"
    # One 300 MiB buffer at once: killed at the limit within moments.
    command: ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=300M count=1 && echo survived"]
    deploy:
      resources:
        limits:
          memory: 16M
  quit:
    image: {IMAGE}
    restart: "no"
    command: ["sh", "-c", "exit 3"]
"#
        ),
    );
    rig.ok(&["apply", "-d", "-f", &file]);
    rig.wait_until("hog and quit failed", 30, || {
        let ps = rig.json(&["ps", "-a", "--format", "json"]);
        let failed = |svc: &str| {
            ps.as_array()
                .unwrap()
                .iter()
                .any(|t| t["service"] == svc && t["state"] == "failed")
        };
        failed("mos_hog") && failed("mos_quit")
    });
    let (sc, _, _) = scrape(port);
    assert_eq!(
        sum(
            &sc,
            "dcpp_agent_container_exits_total",
            &[("reason", "oom")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &sc,
            "dcpp_agent_container_exits_total",
            &[("reason", "nonzero")]
        ),
        1.0
    );
    assert_eq!(sum(&sc, "dcpp_agent_container_exits_total", &[]), 2.0);
    assert_eq!(sum(&sc, "dcpp_agent_container_starts_total", &[]), 2.0);
    assert_eq!(sum(&sc, "dcpp_agent_task_restarts_total", &[]), 0.0);
    for svc in ["hog", "quit"] {
        assert_eq!(
            one(&sc, "dcpp_tasks", &[("service", svc), ("state", "failed")]),
            1.0,
            "{svc}"
        );
    }
    rig.ok(&["down", "-p", "mos"]);
}

/// The cost of metrics at 100 containers: scrape latency and the daemon's RSS and CPU.
/// `cargo test --test e2e_metrics metrics_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement (100 containers), run by hand"]
fn metrics_cost_at_100_containers() {
    let port = free_port();
    let mut rig = Rig::unstarted("mc");
    rig.log_level = "info,dcpp::cmd::metrics=debug".into();
    rig.extra = vec!["--metrics-addr".into(), format!("127.0.0.1:{port}")];
    rig.start_daemon();
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: mcs
services:
  web:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 100
"#
        ),
    );
    let t0 = Instant::now();
    rig.ok(&["apply", "-f", &file, "--timeout", "10m"]);
    eprintln!("apply of 100 replicas: {:?}", t0.elapsed());
    let rss = |sc: &Scrape| one(sc, "process_resident_memory_bytes", &[]) / 1048576.0;
    let cpu = |sc: &Scrape| one(sc, "process_cpu_seconds_total", &[]);
    let (first, _, _) = scrape(port);
    let (rss0, cpu0) = (rss(&first), cpu(&first));
    let mut took = Vec::new();
    let mut server = Vec::new();
    let mut last = first;
    for _ in 0..50 {
        let (sc, _, d) = scrape(port);
        took.push(d);
        last = sc;
        server.push(one(&last, "dcpp_metrics_scrape_duration_seconds_sum", &[]));
    }
    assert_eq!(
        find(&last, "container_cpu_usage_seconds_total", &[]).len(),
        100
    );
    took.sort();
    let server_mean = (server[49] - server[0]) / 49.0;
    eprintln!(
        "100 containers, 50 scrapes: client-side p50 {:?}, p90 {:?}, max {:?}; server-side mean {:.2} ms; \
         RSS {rss0:.1} MiB -> {:.1} MiB; daemon CPU over the 50 scrapes {:.2} s",
        took[25],
        took[45],
        took[49],
        server_mean * 1000.0,
        rss(&last),
        cpu(&last) - cpu0
    );
    let log = rig.log();
    let reads: Vec<&str> = log.lines().filter(|l| l.contains("metrics read")).collect();
    eprintln!("{}", reads[reads.len().saturating_sub(3)..].join("\n"));
    rig.ok(&["down", "-p", "mcs", "--timeout", "5m"]);
}

#[test]
fn raft_metrics_time_every_commit_and_follow_the_log() {
    let (rig, port) = with_metrics("mr");
    let revision = || {
        rig.json(&["cluster", "status", "--format", "json"])["revision"]
            .as_u64()
            .expect("a revision")
    };
    let (s1, _, _) = scrape(port);
    let rev_a = revision();
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: mrs\nservices:\n  s:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    stop_signal: SIGKILL\n    deploy:\n      replicas: 2\n"
        ),
    );
    rig.ok(&["apply", "-f", &file]);
    let rev_b = revision();
    let (s2, _, _) = scrape(port);
    let committed = (rev_b - rev_a) as f64;
    assert!(committed >= 4.0, "{rev_a} -> {rev_b}");
    // Every revision in between is a transaction this leader proposed and timed (besides
    // transactions that changed nothing, which are committed all the same).
    let count = |sc: &Scrape| sum(sc, "dcpp_raft_commit_duration_seconds_count", &[]);
    let n = count(&s2) - count(&s1);
    assert!(
        n >= committed,
        "{n} commits timed for {committed} revisions"
    );
    let total = |sc: &Scrape| sum(sc, "dcpp_raft_commit_duration_seconds_sum", &[]);
    let secs = total(&s2) - total(&s1);
    // Each commit took some time (an fsync at least), and not seconds on one node.
    assert!(secs > 0.0 && secs / n < 1.0, "{secs} s over {n} commits");
    // The buckets are cumulative and the last holds every commit.
    let buckets: Vec<(f64, f64)> = s2
        .samples
        .iter()
        .find_map(|s| match &s.value {
            Value::Histogram(h) if s.metric == "dcpp_raft_commit_duration_seconds" => {
                Some(h.iter().map(|b| (b.less_than, b.count)).collect())
            }
            _ => None,
        })
        .expect("the commit histogram");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().map(|b| b.1), Some(count(&s2)), "{buckets:?}");
    // Each of those transactions is one more entry of the log (no snapshot purged it yet).
    let entries = |sc: &Scrape| one(sc, "dcpp_raft_log_entries", &[]);
    assert!(entries(&s2) - entries(&s1) >= committed);
    let last = |sc: &Scrape| one(sc, "dcpp_raft_last_log_index", &[]);
    assert!(last(&s2) - last(&s1) >= committed);
    // The leader applies what it commits before it answers: nothing stays behind for long.
    rig.wait_until("no apply lag", 10, || {
        one(&scrape(port).0, "dcpp_raft_apply_lag_entries", &[]) == 0.0
    });
    rig.ok(&["down", "-p", "mrs"]);
}

#[test]
fn metrics_over_the_api_refuse_a_client_without_a_certificate() {
    use dcpp_raft::{pki, tls};
    let mut rig = Rig::unstarted("ma");
    rig.extra = vec!["--no-agent".into()];
    rig.start_daemon();
    rig.ok(&["cluster", "init"]);
    let token: pki::JoinToken = rig
        .ok(&["cluster", "join-token", "worker", "-q"])
        .trim()
        .parse()
        .expect("a join token");
    // Trusts the cluster's root, presents no certificate of its own.
    let anon = tls::pinned_client(&token.ca_digest).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let r = anon
            .get(format!("https://{}/metrics", rig.listen))
            .send()
            .await
            .expect("an HTTP answer");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("dcpp_raft_term"), "{body}");
    // The same daemon serves them on its unix socket.
    assert!(one(&scrape_socket(&rig), "dcpp_raft_term", &[]) >= 1.0);
}

/// `dcpp stats SERVICE` through one node of a cluster whose nodes each run in a network
/// namespace of their own: a row for the service's replica on every node, with that node's
/// id; a remote replica's figures are its cgroup's. With a node gone (daemon killed, link
/// cut), the others still show, and the one that did not answer is named. That node led the
/// cluster: a survivor's metrics count the leader change.
#[test]
fn stats_of_a_service_shows_its_replicas_on_every_node_and_names_a_node_that_is_down() {
    use rig::cluster::{Cluster, Join};
    use std::collections::BTreeSet;
    let mut cl = Cluster::form_in_netns("sc", &[Join::Manager, Join::Manager], &[]);
    let file = cl.nodes[0].write(
        "compose.yml",
        &format!(
            r#"name: scs
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "head -c 4000000 /dev/zero > /tmp/blob; exec sleep 3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: 3
      resources:
        limits:
          memory: 64M
  other:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
"#
        ),
    );
    cl.ok(0, &["apply", "-f", &file]);
    // (container id, node id) of each running replica, as the store has them.
    let replicas: BTreeSet<(String, u64)> =
        serde_json::from_str::<Vec<serde_json::Value>>(&cl.ok(0, &["ps", "--format", "json"]))
            .unwrap()
            .into_iter()
            .filter(|t| t["service"] == "scs_web" && t["state"] == "running")
            .map(|t| {
                (
                    t["container_id"].as_str().unwrap().to_string(),
                    t["node"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
    let ids: BTreeSet<u64> = cl.nodes.iter().map(|n| n.id).collect();
    assert_eq!(
        replicas.iter().map(|r| r.1).collect::<BTreeSet<_>>(),
        ids,
        "one replica on each node: {replicas:?}"
    );

    // The table through node a: one line per replica, each with its node.
    let table = cl.ok(0, &["stats", "--no-stream", "web"]);
    let mut lines = table.lines();
    let head = lines.next().unwrap_or_default();
    assert!(head.contains("NODE"), "{table}");
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), 3, "{table}");
    for (id, node) in &replicas {
        let line = body
            .iter()
            .find(|l| l.starts_with(&id[..12]))
            .unwrap_or_else(|| panic!("no line for {id}:\n{table}"));
        assert!(
            line.split_whitespace().any(|w| w == node.to_string()),
            "{id} on node {node}: {line}"
        );
    }

    let rows = |out: &str| -> Vec<serde_json::Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let out = cl.ok(0, &["stats", "--no-stream", "--format", "json", "web"]);
    let got = rows(&out);
    let shown: BTreeSet<(String, u64)> = got
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["node"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, replicas, "{out}");
    let mut remote = 0;
    for r in got.iter().filter(|r| r["node"] != cl.nodes[0].id) {
        remote += 1;
        let id = r["id"].as_str().unwrap();
        // The node that runs it knows its cgroup.
        let n = cl.nodes.iter().find(|n| r["node"] == n.id).unwrap();
        let info = n.json(&["container", "inspect", id]);
        let cg = info[0]["cgroup_path"].as_str().unwrap().to_string();
        let (usage, pids) = if cgroup_v1() {
            (
                cgroup_file(&cg, "memory", "memory.usage_in_bytes"),
                cgroup_file(&cg, "pids", "pids.current"),
            )
        } else {
            (
                cgroup_file(&cg, "", "memory.current"),
                cgroup_file(&cg, "", "pids.current"),
            )
        };
        let (usage, pids) = (read_u64(&usage) as f64, read_u64(&pids));
        let used = r["memory_usage_bytes"].as_f64().unwrap();
        assert!(
            (used - usage).abs() <= usage * 0.05 + 65536.0,
            "{id} on node {}: usage {used} vs the cgroup's {usage}",
            r["node"]
        );
        assert!(
            used > 4e6,
            "{id}: the 4 MB in /tmp is charged to it: {used}"
        );
        // An idle container: nothing starts or ends in it.
        assert_eq!(r["pids"].as_u64(), Some(pids), "{r}");
        assert!(pids >= 1);
        assert_eq!(r["memory_limit_bytes"].as_u64(), Some(64 << 20), "{r}");
    }
    assert_eq!(remote, 2);

    // Node a, the leader, is gone: its daemon killed and its link cut, so nothing answers at
    // its address. Asked through b.
    let (gone, via) = (cl.nodes[0].id, 1);
    let before = scrape_socket(&cl.nodes[via]);
    assert_eq!(one(&before, "dcpp_raft_is_leader", &[]), 0.0);
    cl.underlay.as_ref().unwrap().set_link(0, false);
    cl.nodes[0].kill9();
    let t0 = Instant::now();
    let out = cl.nodes[via].dcpp(&["stats", "--no-stream", "--format", "json", "web"]);
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    // Two readings a second apart, each waiting at most the 3 s a member has to answer.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let err = stderr(&out);
    assert_eq!(
        err.matches(&format!("node {gone} did not answer")).count(),
        1,
        "{err}"
    );
    let got = rows(&stdout(&out));
    assert!(got.iter().all(|r| r["node"] != gone), "{}", stdout(&out));
    // The replicas of b and c are there (the new leader may already have given a's slot to
    // one of them: that new replica may show too).
    let shown: BTreeSet<(String, u64)> = got
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["node"].as_u64().unwrap(),
            )
        })
        .collect();
    for r in replicas.iter().filter(|r| r.1 != gone) {
        assert!(shown.contains(r), "{r:?} missing: {shown:?}");
    }
    // The table says it too, after the rows it has.
    let out = cl.nodes[via].dcpp(&["stats", "--no-stream", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("node {gone} did not answer")),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).starts_with("CONTAINER ID"), "{}", stdout(&out));
    // b and c elect a leader of a later term; b saw the leader change.
    let changes = |sc: &Scrape| one(sc, "dcpp_raft_leader_changes_total", &[]);
    let term = |sc: &Scrape| one(sc, "dcpp_raft_term", &[]);
    cl.wait_until("a new leader", 30, || {
        let now = scrape_socket(&cl.nodes[via]);
        term(&now) > term(&before) && changes(&now) > changes(&before)
    });
}

/// The daemon's log without terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut it = log.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            // CSI: up to and including the final letter.
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_debug_log_follows_a_request_its_reconcile_round_and_the_agent_step_with_timings() {
    let mut rig = Rig::unstarted("mg");
    rig.log_level =
        "info,dcpp_raft::api=debug,dcpp_control::leader=debug,dcpp_node_agent=debug".into();
    rig.start_daemon();
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: mgs\nservices:\n  s:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    stop_signal: SIGKILL\n"
        ),
    );
    rig.ok(&["apply", "-f", &file]);
    let log = plain(&rig.log());
    let has = |what: &str, parts: &[&str]| {
        assert!(
            log.lines().any(|l| parts.iter().all(|p| l.contains(p))),
            "no {what} line with {parts:?} in:\n{log}"
        );
    };
    // The apply's transaction: its route, status and time.
    has(
        "request",
        &[
            "api{method=POST route=\"/v1/txn\"}",
            "answered",
            "status=200",
            "took=",
        ],
    );
    // The round that planned the task, with the number of actions it wrote.
    has(
        "reconcile",
        &["reconcile{actions=", "reconcile actions=", "ops="],
    );
    // The agent step that started the container, with the time of each part.
    has(
        "agent step",
        &[
            "agent_step{task=",
            "container timings",
            "create_ms=",
            "start_ms=",
        ],
    );
    rig.ok(&["down", "-p", "mgs"]);
}
