//! Hostile clients and hostile input against the real binary, as root on the real kernel: a
//! connection flood on the daemon's TCP listener, token guessing, bad compose input and closed
//! pipes. Each daemon is a test rig of its own (data dir, socket, listen address, cgroup
//! parent, bridge prefix, nft table and pool from its slot).
//!
//! Figures are printed with `FIGURES:`; see them with `--nocapture`.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rig::*;

fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// (soft, hard) NOFILE limit of a process, from /proc/PID/limits.
fn nofile(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let l = s.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let v: Vec<u64> = l
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// (task id, container id, restart count) of the live tasks.
fn task_identities(rig: &Rig) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = rig
        .tasks()
        .iter()
        .map(|t| {
            (
                t["id"].to_string(),
                t["container_id"].as_str().unwrap_or_default().to_string(),
                t["restart_count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

/// Wall time of `dcpp ps` over the unix socket, each call checked to succeed.
fn ps_latencies(rig: &Rig, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = rig.dcpp(&["ps"]);
        v.push(t.elapsed());
        assert!(out.status.success(), "dcpp ps: {}", stderr(&out));
    }
    v.sort();
    v
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[((sorted.len() * 99).div_ceil(100)).saturating_sub(1)]
}

const FLOOD: u64 = 20_000;

#[test]
fn tcp_flood_leaves_the_socket_the_agent_and_the_tasks_alone() {
    // Room for the flood plus the test's own descriptors; root may raise its hard limit.
    let me = std::process::id().to_string();
    let want = FLOOD + 1_000;
    let prlimit = |lim: String| {
        Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={lim}")])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let raised = prlimit(format!("{want}:{want}"));
    if !raised {
        // Without CAP_SYS_RESOURCE: as far as the hard limit goes.
        prlimit(format!("{0}:{0}", nofile(std::process::id()).1));
    }
    let (soft, _) = nofile(std::process::id());
    let conns = FLOOD.min(soft.saturating_sub(200));
    if conns < FLOOD {
        eprintln!("FIGURES: NOFILE hard limit {soft} lets the test open only {conns} connections");
    }

    let mut rig = Rig::unstarted("fl");
    // The daemon starts with the usual small soft limit and a hard limit below the flood: the
    // flood could take every descriptor it may have.
    rig.wrapper = vec!["prlimit".into(), "--nofile=1024:16384".into(), "--".into()];
    rig.extra = [
        "--listen-header-timeout",
        "2s",
        "--listen-unauthenticated-timeout",
        "3s",
    ]
    .map(String::from)
    .to_vec();
    rig.start_daemon();
    let pid = rig.pid();
    assert_eq!(
        nofile(pid),
        (16_384, 16_384),
        "the daemon raises its soft NOFILE limit to the hard one"
    );

    let file = rig.write(
        "compose.yml",
        &format!(
            "name: fl\nservices:\n  sleeper:\n    image: {IMAGE}\n    command: [\"sleep\", \"100000\"]\n    stop_grace_period: 1s\n"
        ),
    );
    rig.ok(&["apply", "-f", &file]);
    rig.wait_until("the replica runs", 60, || {
        rig.tasks()
            .iter()
            .any(|t| t["state"] == "running" && t["container_id"].is_string())
    });
    let tasks_before = task_identities(&rig);
    // Settle: the agent's first passes after the replica started (its exit watch, the store's
    // allocations) open descriptors. Nothing reports that they are done, so the baseline is
    // taken once the count has held for one round of an agent that watches exits (1 s).
    let mut last = (fd_count(pid), Instant::now());
    rig.wait_until("the daemon's descriptor count to settle", 20, || {
        let n = fd_count(pid);
        if n != last.0 {
            last = (n, Instant::now());
        }
        last.1.elapsed() >= Duration::from_secs(1)
    });
    let lat_before = ps_latencies(&rig, 10);
    let fds_before = fd_count(pid);
    let rss_before = status_field(pid, "VmRSS:");

    let addr: SocketAddr = rig.listen.parse().unwrap();
    let t0 = Instant::now();
    let mut flood = Vec::with_capacity(conns as usize);
    let (mut connected, mut refused_connect) = (0u64, 0u64);
    for _ in 0..conns {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(mut s) => {
                connected += 1;
                // Half a request line, never finished.
                let _ = s.write_all(b"POST /v1/tx");
                flood.push(s);
            }
            Err(_) => refused_connect += 1,
        }
    }
    let flood_secs = t0.elapsed().as_secs_f64();
    let fds_during = fd_count(pid);
    let rss_during = status_field(pid, "VmRSS:");
    let lat_during = ps_latencies(&rig, 30);
    let tasks_during = task_identities(&rig);

    drop(flood);
    // Every connection is closed by now; the daemon's side goes when it notices (at the latest
    // after the header-read timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut fds_after, mut rss_after);
    loop {
        fds_after = fd_count(pid);
        rss_after = status_field(pid, "VmRSS:");
        if (fds_after <= fds_before + 2 && rss_after <= rss_before + 10 * 1024)
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tasks_after = task_identities(&rig);
    let lat_after = ps_latencies(&rig, 10);

    eprintln!(
        "FIGURES: flood {connected} connections opened ({refused_connect} failed to connect) in {flood_secs:.1}s; \
         dcpp ps latency before p99 {:?} max {:?}, during p99 {:?} max {:?} (n=30), after p99 {:?}; \
         daemon fds before {fds_before} during {fds_during} after {fds_after}; \
         VmRSS before {rss_before} kB during {rss_during} kB after {rss_after} kB; \
         tasks before {tasks_before:?} after {tasks_after:?}",
        p99(&lat_before),
        lat_before.last().unwrap(),
        p99(&lat_during),
        lat_during.last().unwrap(),
        p99(&lat_after),
    );
    assert!(
        connected >= conns * 9 / 10,
        "the kernel accepted only {connected} of {conns} connections"
    );
    assert!(
        fds_during < fds_before + 600,
        "the flood took {} descriptors of the daemon",
        fds_during - fds_before
    );
    // Relative to the same command before the flood: `ps` itself costs tens of milliseconds in
    // a debug build on a loaded machine (and 30 samples make a noisy p99); a flood that
    // reached the local API would cost seconds.
    assert!(
        p99(&lat_during) < p99(&lat_before) * 2 + Duration::from_millis(100),
        "dcpp ps during the flood: {lat_during:?}, before: {lat_before:?}"
    );
    assert_eq!(
        tasks_during, tasks_before,
        "no task restarted during the flood"
    );
    assert_eq!(
        tasks_after, tasks_before,
        "no task restarted after the flood"
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors: {fds_before} before, {fds_after} after"
    );
    assert!(
        rss_after <= rss_before + 10 * 1024,
        "VmRSS {rss_before} kB before, {rss_after} kB after"
    );
    // The agent never ran out of descriptors.
    assert!(!rig.log().contains("Too many open files"), "{}", rig.log());
}

/// One plaintext HTTP/1.1 request on a fresh connection; returns the status code, or 0 when
/// the connection ends without an HTTP answer (a TLS listener refuses it at the handshake).
fn plaintext(addr: &str, path: &str) -> u16 {
    let addr: SocketAddr = addr.parse().unwrap();
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Status codes of `n` requests (0: no HTTP answer).
async fn statuses(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: &serde_json::Value,
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let rb = match method {
            "GET" => http.get(url),
            _ => http.post(url).json(body),
        };
        out.push(rb.send().await.map_or(0, |r| r.status().as_u16()));
    }
    out
}

#[test]
fn join_guessing_is_rate_limited_and_a_worker_token_gets_no_power() {
    use dcpp_raft::{pki, tls};
    let mut rig = Rig::unstarted("au");
    rig.extra = ["--listen-log-interval", "2s", "--no-agent"]
        .map(String::from)
        .to_vec();
    rig.start_daemon();
    rig.ok(&["cluster", "init"]);
    let worker_token = rig
        .ok(&["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    let token: pki::JoinToken = worker_token.parse().expect("a join token");
    let base = format!("https://{}", rig.listen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pinned = tls::pinned_client(&token.ca_digest).unwrap();
    let guess = serde_json::json!({"token": pki::JoinToken {
        ca_digest: token.ca_digest.clone(),
        secret: "0".repeat(32),
    }.to_string(), "node_id": 1, "csr": "00"});
    let t0 = Instant::now();
    let plain: Vec<u16> = (0..100)
        .map(|_| plaintext(&rig.listen, "/v1/cluster/status"))
        .collect();
    let anon = rt.block_on(statuses(
        &pinned,
        "GET",
        &format!("{base}/v1/cluster/status"),
        &serde_json::Value::Null,
        300,
    ));
    let joins = rt.block_on(statuses(
        &pinned,
        "POST",
        &format!("{base}/v1/cluster/join"),
        &guess,
        500,
    ));
    let secs = t0.elapsed().as_secs_f64();
    let count = |v: &[u16], c: u16| v.iter().filter(|&&s| s == c).count();
    let (j401, j429) = (count(&joins, 401), count(&joins, 429));
    // Even the right token is not looked at while the source is limited.
    let (key, csr) = pki::key_and_request().unwrap();
    let right =
        serde_json::json!({"token": worker_token, "node_id": 4242, "csr": hex::encode(&csr)});
    let same_source = rt.block_on(statuses(
        &pinned,
        "POST",
        &format!("{base}/v1/cluster/join"),
        &right,
        1,
    ));
    // Another source is not affected: it joins, and gets a worker's certificate.
    let other =
        tls::pinned_client_from(&token.ca_digest, Some("127.0.0.2".parse().unwrap())).unwrap();
    let grant: serde_json::Value = rt.block_on(async {
        let r = other
            .post(format!("{base}/v1/cluster/join"))
            .json(&right)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    });
    let cert = grant["cert_pem"].as_str().unwrap();
    let ca = grant["ca_certs"][0].as_str().unwrap();
    // The probe that gave local root before: use what the join hands out to create a service.
    let thief = tls::client_from_pems(ca, cert, &key, Some(Duration::from_secs(10))).unwrap();
    let service = serde_json::json!({"ops": [{"op": "put", "kind": "service", "id": "evil_web",
        "value": {"image": "busybox", "privileged": true}}]});
    let probe = rt.block_on(async {
        let txn = thief
            .post(format!("{base}/v1/txn"))
            .json(&service)
            .send()
            .await
            .unwrap();
        let status = thief
            .get(format!("{base}/v1/cluster/status"))
            .send()
            .await
            .unwrap();
        let tokens = thief
            .get(format!("{base}/v1/cluster/tokens"))
            .send()
            .await
            .unwrap();
        (
            txn.status().as_u16(),
            status.status().as_u16(),
            tokens.status().as_u16(),
        )
    });
    assert_eq!(
        probe,
        (403, 403, 403),
        "a worker certificate writes no service, reads no tokens"
    );
    assert!(!rig.ok(&["service", "ls"]).contains("evil"));

    rig.wait_until("the refusal summary in the log", 15, || {
        rig.log().contains("refused from")
    });
    let log = rig.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused") || l.contains("unauthenticated"))
        .collect();
    eprintln!(
        "FIGURES: {} bad joins, {} plaintext and {} certificate-less requests from one source \
         in {secs:.2}s: join {j401}×401 {j429}×429; {} log line(s) about them:\n{}",
        joins.len(),
        plain.len(),
        anon.len(),
        lines.len(),
        lines.join("\n")
    );
    assert!(
        j401 <= 20 + secs.ceil() as usize + 1,
        "{j401} join tokens checked"
    );
    assert_eq!(j401 + j429, joins.len(), "only 401 and 429: {joins:?}");
    assert!(j429 >= 450, "{j429}");
    assert_eq!(same_source, [429], "a limited source is not checked at all");
    assert!(
        plain.iter().all(|&c| c != 200 && c != 401),
        "plaintext: {plain:?}"
    );
    assert_eq!(count(&anon, 401), anon.len(), "no certificate: {anon:?}");
    assert!(lines.len() <= 4, "{} lines: {lines:#?}", lines.len());
    assert!(
        !log.contains(&worker_token)
            && !log.contains(&token.secret)
            && !log.contains(cert.lines().nth(1).unwrap()),
        "tokens and certificates never logged"
    );
}

#[test]
fn rotated_tokens_and_remote_admin_through_the_cli() {
    let mut rig = Rig::unstarted("rt");
    rig.extra = ["--no-agent"].map(String::from).to_vec();
    rig.start_daemon();
    rig.ok(&["cluster", "init"]);
    let old = rig
        .ok(&["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    let out = rig.ok(&["cluster", "join-token", "worker", "--rotate"]);
    assert!(out.contains("rotated") && !out.contains(&old), "{out}");
    let new = rig
        .ok(&["cluster", "join-token", "worker", "-q"])
        .trim()
        .to_string();
    assert_ne!(old, new);
    let (mgr1, mgr2) = (
        rig.ok(&["cluster", "join-token", "manager", "-q"]),
        rig.ok(&["cluster", "join-token", "manager", "-q"]),
    );
    assert_eq!(mgr1, mgr2, "showing a token does not change it");
    // The old token is refused by the cluster (its root still matches).
    let parsed: dcpp_raft::pki::JoinToken = old.parse().unwrap();
    let http = dcpp_raft::tls::pinned_client(&parsed.ca_digest).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, csr) = dcpp_raft::pki::key_and_request().unwrap();
    let body = serde_json::json!({"token": old, "node_id": 99, "csr": hex::encode(&csr)});
    let code = rt.block_on(statuses(
        &http,
        "POST",
        &format!("https://{}/v1/cluster/join", rig.listen),
        &body,
        1,
    ));
    assert_eq!(code, [401], "a rotated token no longer joins");
    // Remote administration needs a client certificate; a directory from admin-cert gives one.
    let remote = format!("tcp://{}", rig.listen);
    let remote_cli = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dcpp"));
        c.args(["-H", &remote]).env_remove("DCPP_CERT_PATH");
        c
    };
    let out = remote_cli().args(["service", "ls"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DCPP_CERT_PATH"), "{err}");
    let dir = rig.root.join("admin-certs");
    let out = rig.ok(&[
        "cluster",
        "admin-cert",
        "--out",
        dir.to_str().unwrap(),
        "--ttl",
        "1h",
    ]);
    assert!(out.contains("DCPP_CERT_PATH"), "{out}");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(m & 0o077, 0, "{f} is {m:o}");
    }
    let out = rig.dcpp(&["cluster", "admin-cert", "--out", dir.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "an existing directory is not overwritten"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let out = remote_cli()
        .args(["cluster", "status"])
        .env("DCPP_CERT_PATH", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Leader"));
    // A root rotation: new digest, new tokens; the old root's admin certificate keeps working
    // through the grace period while the node moves to the new root.
    let d1 = rig.ok(&["cluster", "ca"]).trim().to_string();
    assert_eq!(d1, parsed.ca_digest);
    let out = rig.ok(&["cluster", "ca", "--rotate"]);
    assert!(out.contains("rotated"), "{out}");
    let d2 = rig.ok(&["cluster", "ca"]).trim().to_string();
    assert_ne!(d1, d2);
    assert!(
        rig.ok(&["cluster", "join-token", "worker", "-q"])
            .contains(&d2)
    );
    let out = rig.dcpp(&["cluster", "ca", "--rotate"]);
    assert!(
        !out.status.success(),
        "a second rotation while one is under way"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("under way"));
    rig.wait_until("the node's certificate from the new root", 10, || {
        rig.log().contains("node certificate renewed")
    });
    let out = remote_cli()
        .args(["cluster", "status"])
        .env("DCPP_CERT_PATH", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "old-root admin within the grace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Revoked by name: the certificate is refused at once, with a message that says so.
    let out = rig.ok(&["cluster", "admin-revoke", "admin"]);
    assert!(out.contains("Revoked"), "{out}");
    let out = remote_cli()
        .args(["cluster", "status"])
        .env("DCPP_CERT_PATH", &dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked"), "{err}");
}

fn resolv_files(rig: &Rig) -> Vec<String> {
    match std::fs::read_dir(rig.data.join("network/resolv")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn apply_down_cycles_leave_no_resolv_files_and_bad_compose_is_refused_up_front() {
    let mut rig = Rig::unstarted("rv");
    rig.start_daemon();

    // Refused at validation, with the position, and nothing stored.
    for (name, text, want) in [
        ("empty.yml", "", "empty.yml:1:1: empty compose file"),
        (
            "replicas.yml",
            &format!(
                "services:\n  web:\n    image: {IMAGE}\n    deploy:\n      replicas: 4294967295\n"
            ),
            "replicas.yml:5:17: services.web.deploy.replicas: 4294967295 replicas is more than the 10000",
        ),
        (
            "netname.yml",
            &format!(
                "services:\n  web:\n    image: {IMAGE}\n    networks: [\"../../x\"]\nnetworks:\n  \"../../x\": {{}}\n"
            ),
            "netname.yml:6:3: networks.../../x: invalid network name \"../../x\"",
        ),
    ] {
        let f = rig.write(name, text);
        let out = rig.dcpp(&["apply", "-f", &f, "-p", "bad"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{name}: {}", stderr(&out));
    }
    assert!(rig.tasks_stacks().is_empty(), "{:?}", rig.tasks_stacks());

    let file = rig.write(
        "compose.yml",
        &format!(
            "name: rv\nservices:\n  a:\n    image: {IMAGE}\n    command: [\"sleep\", \"100000\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: 2\n  b:\n    image: {IMAGE}\n    command: [\"sleep\", \"100000\"]\n    stop_grace_period: 1s\n"
        ),
    );
    let mut while_running = 0;
    for _ in 0..20 {
        rig.ok(&["apply", "-f", &file]);
        while_running = while_running.max(resolv_files(&rig).len());
        rig.ok(&["down", "-p", "rv", "--timeout", "60s"]);
    }
    let left = resolv_files(&rig);
    eprintln!(
        "FIGURES: 20 apply/down cycles: {while_running} resolv files while running, {} left",
        left.len()
    );
    assert_eq!(while_running, 3, "one resolv file per running container");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn cli_commands_end_quietly_on_a_closed_pipe() {
    let rig = Rig::unstarted("pp");
    for args in [
        vec!["image", "inspect", IMAGE],
        vec!["image", "ls"],
        vec!["container", "ls", "-a"],
        vec!["schema"],
        vec!["--help"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&rig.data)
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: quiet, got {err}");
        use std::os::unix::process::ExitStatusExt;
        // As any Unix filter: killed by SIGPIPE (or done before noticing).
        assert!(
            out.status.signal() == Some(libc_sigpipe()) || out.status.code() == Some(0),
            "{args:?}: {:?}",
            out.status
        );
    }
}

/// SIGPIPE's number on Linux (every architecture dcpp runs on).
fn libc_sigpipe() -> i32 {
    13
}

/// A network namespace this test created; deleting it takes its links, sysctls, nft tables and
/// iptables rules along.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let ns = Netns { name: name.into() };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("--net=/run/netns/{}", self.name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup tree.
        let mut c = Command::new("nsenter");
        c.arg(self.path()).arg("--").args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.name,
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn container_of(rig: &Rig, service: &str) -> String {
    rig.tasks()
        .iter()
        .find(|t| t["service"] == service && t["state"] == "running")
        .and_then(|t| t["container_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no running {service}: {:?}", rig.tasks()))
}

/// `wget` from inside a container; the body, or None when it cannot connect.
fn wget_in(rig: &Rig, container: &str, url: &str) -> Option<String> {
    let out = rig.dcpp(&[
        "container",
        "exec",
        container,
        // Not `wget -T`: busybox-static's wget crashes with it.
        "timeout",
        "4",
        "wget",
        "-q",
        "-O-",
        url,
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh_in(rig: &Rig, container: &str, script: &str) -> String {
    rig.ok(&["container", "exec", container, "sh", "-c", script])
}

/// Polls `f` until it returns Some or 15 s passed; the last result.
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = f();
        if r.is_some() || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything a stack's containers must and must not reach, checked from inside them.
fn check_reachability(rig: &Rig, ns: &Netns, port: u16, outside: &str, phase: &str) {
    let web = container_of(rig, "fa_web");
    let client = container_of(rig, "fa_client");
    let other = container_of(rig, "fb_other");
    let web_ip = sh_in(rig, &web, "ip -o -4 addr show eth0")
        .split_whitespace()
        .find_map(|w| w.split_once('/').map(|(a, _)| a.to_string()))
        .expect("web address");
    let other_gw = sh_in(rig, &other, "ip route show default")
        .split_whitespace()
        .nth(2)
        .expect("default route")
        .to_string();

    let same = eventually(|| wget_in(rig, &client, "http://web:8080/"));
    assert!(
        same.as_deref()
            .is_some_and(|b| b.contains("hello from dcpp")),
        "{phase}: same network: {same:?}"
    );
    let local = eventually(|| {
        let out = ns
            .cmd(&[
                "/bin/busybox",
                "timeout",
                "4",
                "/bin/busybox",
                "wget",
                "-q",
                "-O-",
                &format!("http://127.0.0.1:{port}/"),
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(
        local
            .as_deref()
            .is_some_and(|b| b.contains("hello from dcpp")),
        "{phase}: published port from the host: {local:?}"
    );
    // Through a host address from another stack's network: DNAT, then forwarded between the
    // two bridges.
    let published = eventually(|| wget_in(rig, &other, &format!("http://{other_gw}:{port}/")));
    assert!(
        published
            .as_deref()
            .is_some_and(|b| b.contains("hello from dcpp")),
        "{phase}: published port from another network: {published:?}"
    );
    let cross = wget_in(rig, &other, &format!("http://{web_ip}:8080/"));
    assert_eq!(
        cross, None,
        "{phase}: another stack's container by its address"
    );
    let out = eventually(|| wget_in(rig, &client, &format!("http://{outside}/")));
    assert!(
        out.as_deref().is_some_and(|b| b.contains("outside")),
        "{phase}: container to outside (masquerade): {out:?}"
    );
}

#[test]
fn networks_stay_isolated_with_forwarding_on_and_work_behind_a_drop_policy() {
    let uniq = std::process::id() % 100_000;
    let ns = Netns::new(&format!("dcpp-sec-fw-{uniq}"));
    let out_ns = Netns::new(&format!("dcpp-sec-out-{uniq}"));
    // br_netfilter: bridged frames go through the iptables/nft forward hooks, as on a docker
    // host. Built into some kernels; loaded (and unloaded afterwards) otherwise.
    let had_br_nf = Path::new("/proc/sys/net/bridge").exists();
    if !had_br_nf {
        let _ = Command::new("modprobe").arg("br_netfilter").status();
    }
    struct Unload(bool);
    impl Drop for Unload {
        fn drop(&mut self) {
            if self.0 {
                let _ = Command::new("modprobe")
                    .args(["-r", "br_netfilter"])
                    .status();
            }
        }
    }
    let _unload = Unload(!had_br_nf && Path::new("/proc/sys/net/bridge").exists());
    assert!(
        Path::new("/proc/sys/net/bridge").exists(),
        "br_netfilter not available"
    );
    ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    ns.ok(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);

    // "Outside": a host in a second namespace behind a veth, serving a page.
    let (va, vb) = (format!("vsa{uniq}"), format!("vsb{uniq}"));
    let ok = Command::new("ip")
        .args([
            "link", "add", &va, "netns", &ns.name, "type", "veth", "peer",
        ])
        .args(["name", &vb, "netns", &out_ns.name])
        .status()
        .unwrap();
    assert!(ok.success());
    ns.ok(&["ip", "addr", "add", "10.226.250.1/30", "dev", &va]);
    ns.ok(&["ip", "link", "set", &va, "up"]);
    out_ns.ok(&["ip", "addr", "add", "10.226.250.2/30", "dev", &vb]);
    out_ns.ok(&["ip", "link", "set", &vb, "up"]);
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "outside\n").unwrap();
    let _httpd = KillOnDrop(
        out_ns
            .cmd(&[
                "/bin/busybox",
                "httpd",
                "-f",
                "-p",
                "10.226.250.2:8081",
                "-h",
            ])
            .arg(www.path())
            .spawn()
            .unwrap(),
    );
    let outside = "10.226.250.2:8081";

    let mut rig = Rig::unstarted("fw");
    rig.wrapper = vec!["nsenter".into(), ns.path(), "--".into()];
    rig.start_daemon();
    let port = free_port();
    let fa = rig.write(
        "fa.yml",
        &format!(
            r#"name: fa
services:
  web:
    image: {IMAGE}
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    stop_grace_period: 1s
    ports: ["{port}:8080"]
  client:
    image: {IMAGE}
    command: ["sleep", "100000"]
    stop_grace_period: 1s
"#
        ),
    );
    let fb = rig.write(
        "fb.yml",
        &format!(
            "name: fb\nservices:\n  other:\n    image: {IMAGE}\n    command: [\"sleep\", \"100000\"]\n    stop_grace_period: 1s\n"
        ),
    );
    let tag = format!("dcpp:{}:", rig.table);
    let ours = |ns: &Netns| -> usize {
        ns.ok(&["iptables", "-w", "-S", "FORWARD"])
            .lines()
            .filter(|l| l.contains(&tag))
            .count()
    };

    // Forwarding on, no other firewall: isolation is dcpp's own, and nothing is put into
    // iptables.
    rig.ok(&["apply", "-f", &fa]);
    rig.ok(&["apply", "-f", &fb]);
    check_reachability(&rig, &ns, port, outside, "ip_forward=1");
    assert_eq!(ours(&ns), 0, "an unused FORWARD chain is left alone");
    rig.ok(&["down", "-p", "fa", "--timeout", "60s"]);
    rig.ok(&["down", "-p", "fb", "--timeout", "60s"]);

    // A docker host: FORWARD policy DROP (bridged traffic goes through it).
    ns.ok(&["iptables", "-w", "-P", "FORWARD", "DROP"]);
    rig.ok(&["apply", "-f", &fa]);
    rig.ok(&["apply", "-f", &fb]);
    check_reachability(&rig, &ns, port, outside, "FORWARD policy DROP");
    assert_eq!(ours(&ns), 4, "two accept rules per bridge");
    let rules = ns.ok(&["iptables", "-w", "-S", "FORWARD"]);
    eprintln!("FIGURES: iptables FORWARD with dcpp's rules:\n{rules}");
    rig.ok(&["down", "-p", "fa", "--timeout", "60s"]);
    rig.ok(&["down", "-p", "fb", "--timeout", "60s"]);
    rig.wait_until("dcpp's iptables rules to go with its networks", 30, || {
        ours(&ns) == 0
    });
    assert!(
        ns.ok(&["iptables", "-w", "-S", "FORWARD"])
            .contains("-P FORWARD DROP")
    );
}
