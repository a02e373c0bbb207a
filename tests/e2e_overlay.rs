//! One network across nodes, end to end through the real binary: each node's daemon runs in a
//! network namespace of its own (a test host), the hosts joined by an underlay bridge the test
//! owns. Stack networks span the nodes over VXLAN: cluster-wide subnets and addresses from the
//! leader, forwarding and neighbour entries programmed from the store (no flooding, no
//! learning), and names that resolve on every node to the replicas anywhere.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::collections::BTreeSet;

use rig::cluster::{Cluster, Join};
use rig::*;
use serde_json::Value;

/// The running task containers of `service` as `node`'s runtime lists them: (id, name).
fn local_containers(n: &Rig, service: &str) -> Vec<(String, String)> {
    let out = n.dcpp(&["container", "ls", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .filter(|c| {
            c["status"] == "running" && c["labels"]["org.dcpp.service"].as_str() == Some(service)
        })
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Runs `cmd` in container `id` on node `n`. (busybox's `wget -T` crashes: bound it with
/// `timeout` instead.)
fn exec(n: &Rig, id: &str, cmd: &[&str]) -> (bool, String) {
    let mut a = vec!["container", "exec", id];
    a.extend_from_slice(cmd);
    let out = n.dcpp(&a);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// Addresses `name` resolves to from inside container `id` on node `n`.
fn resolve(n: &Rig, id: &str, name: &str) -> BTreeSet<String> {
    let (_, out) = exec(n, id, &["nslookup", name]);
    // busybox nslookup: the server's lines first, then "Name: …" / "Address: …" pairs.
    out.split_once(&format!("Name:\t{name}"))
        .or_else(|| out.split_once("Name:"))
        .map(|(_, rest)| {
            rest.lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .filter_map(|a| a.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn compose(web_replicas: u32, web_node: u64, client_node: u64) -> String {
    format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    deploy:
      replicas: {web_replicas}
      placement:
        constraints: ["node.id=={web_node}"]
  client:
    image: {IMAGE}
    command: ["sleep", "3600"]
    deploy:
      placement:
        constraints: ["node.id=={client_node}"]
"#
    )
}

/// FDB and neighbour entries of the VXLAN devices in host `i`: (kind, line) of each
/// permanent entry a test can compare with the store.
fn overlay_entries(cl: &Cluster, i: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let u = cl.underlay.as_ref().unwrap();
    let prefix = &cl.nodes[i].prefix;
    let (_, links) = u.run(i, &["ip", "-o", "link", "show", "type", "vxlan"]);
    let mut fdb = BTreeSet::new();
    let mut neigh = BTreeSet::new();
    for l in links.lines() {
        let Some(dev) = l
            .split(": ")
            .nth(1)
            .map(|d| d.split('@').next().unwrap_or(d))
        else {
            continue;
        };
        if !dev.starts_with(prefix.as_str()) {
            continue;
        }
        let (_, f) = u.run(i, &["bridge", "fdb", "show", "dev", dev]);
        for e in f.lines().filter(|e| e.contains(" dst ")) {
            // "02:42:0a:…  dst 10.x.250.2 self permanent"
            let mut w = e.split_whitespace();
            let mac = w.next().unwrap_or_default().to_string();
            let dst = e
                .split(" dst ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next());
            fdb.insert(format!("{mac} {}", dst.unwrap_or_default()));
        }
        let (_, n) = u.run(i, &["ip", "neigh", "show", "dev", dev]);
        for e in n.lines().filter(|e| e.contains("PERMANENT")) {
            neigh.insert(e.split_whitespace().next().unwrap_or_default().to_string());
        }
    }
    (fdb, neigh)
}

#[test]
fn a_service_on_one_node_answers_by_name_on_another_and_entries_follow_the_replicas() {
    let cl = Cluster::form_in_netns("ov", &[Join::Worker], &["--overlay", "on"]);
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let file = a.write("compose.yml", &compose(1, a.id, b.id));
    let out = cl.ok(0, &["apply", "-f", &file, "-p", "ov", "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");
    let web = local_containers(a, "web");
    let client = local_containers(b, "client");
    assert_eq!((web.len(), client.len()), (1, 1), "{}", cl.logs());
    let client_id = &client[0].0;

    // The client on node b reaches web on node a by its service name.
    let mut fetched = String::new();
    cl.wait_until("web answers the client on the other node", 20, || {
        let (ok, out) = exec(
            b,
            client_id,
            &["timeout", "3", "wget", "-qO-", "http://web/"],
        );
        fetched = out;
        ok
    });
    assert_eq!(fetched, "hello from dcpp\n");
    let web_ips = resolve(b, client_id, "web");
    assert_eq!(web_ips.len(), 1, "{web_ips:?}");
    assert_eq!(resolve(b, client_id, "tasks.web"), web_ips);
    let web_ip = web_ips.iter().next().unwrap().clone();
    // Cluster-wide addresses: the client's differs from web's, in the same subnet.
    let (_, ifc) = exec(b, client_id, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(ifc.contains("mtu") || !ifc.is_empty(), "{ifc}");
    let client_ip = ifc
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_default()
        .to_string();
    assert_ne!(client_ip, web_ip);
    assert_eq!(
        client_ip.rsplit_once('.').map(|x| x.0),
        web_ip.rsplit_once('.').map(|x| x.0),
        "one subnet across the nodes"
    );
    let (_, mtu) = exec(b, client_id, &["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1450", "room for the VXLAN headers");

    // Node b's VXLAN device holds exactly web's entry (its MAC follows its address), node a's
    // exactly the client's.
    let mac = |ip: &str| {
        let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
        format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    };
    let u = cl.underlay.as_ref().unwrap();
    let (fdb_b, neigh_b) = overlay_entries(&cl, 1);
    assert_eq!(
        fdb_b,
        BTreeSet::from([format!("{} {}", mac(&web_ip), u.addrs[0])])
    );
    assert_eq!(neigh_b, BTreeSet::from([web_ip.clone()]));
    let (fdb_a, neigh_a) = overlay_entries(&cl, 0);
    assert_eq!(
        fdb_a,
        BTreeSet::from([format!("{} {}", mac(&client_ip), u.addrs[1])])
    );
    assert_eq!(neigh_a, BTreeSet::from([client_ip.clone()]));

    // Three replicas on node a: the name resolves to all of them from node b.
    cl.ok(0, &["service", "scale", "ov_web=3"]);
    cl.wait_until("three web replicas", 30, || {
        resolve(b, client_id, "web").len() == 3
    });
    for _ in 0..6 {
        let (ok, out) = exec(
            b,
            client_id,
            &["timeout", "3", "wget", "-qO-", "http://web/"],
        );
        assert!(ok, "{out}");
    }
    // Scaled back down: the entries of the stopped replicas go, on both nodes.
    cl.ok(0, &["service", "scale", "ov_web=1"]);
    cl.wait_until("one web replica left in DNS", 30, || {
        resolve(b, client_id, "web").len() == 1
    });
    cl.wait_until("the overlay entries follow", 30, || {
        overlay_entries(&cl, 1).1.len() == 1
    });

    // The stack goes: no VXLAN device is left on any host.
    cl.ok(0, &["down", "-p", "ov"]);
    for i in 0..2 {
        cl.wait_until("no VXLAN device left", 30, || {
            let (_, links) = u.run(i, &["ip", "-o", "link", "show", "type", "vxlan"]);
            links.trim().is_empty()
        });
    }
}

/// Web on the third host only, its port published through the routing mesh, and a CGI that
/// prints the address the replica sees its client at.
fn mesh_compose(web_node: u64, mode: &str) -> String {
    format!(
        r#"services:
  web:
    image: {IMAGE}
    command:
      - sh
      - -c
      - |
        mkdir -p /www/cgi-bin
        printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $$REMOTE_ADDR\n' > /www/cgi-bin/ip
        chmod +x /www/cgi-bin/ip
        exec httpd -f -p 80 -h /www
    ports:
      - target: 80
        published: "18080"
        mode: {mode}
    deploy:
      placement:
        constraints: ["node.id=={web_node}"]
"#
    )
}

/// The interface holding host `i`'s underlay address, and whether it forwards.
fn uplink_forwarding(u: &rig::netns::Underlay, i: usize) -> (String, String) {
    let (_, a) = u.run(i, &["ip", "-o", "-4", "addr", "show"]);
    let dev = a
        .lines()
        .find(|l| l.contains(&format!("inet {}/", u.addrs[i])))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    let (_, f) = u.run(
        i,
        &["cat", &format!("/proc/sys/net/ipv4/conf/{dev}/forwarding")],
    );
    (dev, f.trim().to_string())
}

#[test]
fn a_published_port_answers_on_every_node_and_the_serving_node_keeps_the_client_address() {
    let cl = Cluster::form_in_netns("om", &[Join::Worker, Join::Worker], &["--overlay", "on"]);
    let u = cl.underlay.as_ref().unwrap();
    let web_node = cl.nodes[2].id;
    let before: Vec<(String, String)> = (0..3).map(|i| uplink_forwarding(u, i)).collect();
    let file = cl.nodes[0].write("compose.yml", &mesh_compose(web_node, "ingress"));
    let out = cl.ok(0, &["apply", "-f", &file, "-p", "om", "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(local_containers(&cl.nodes[2], "web").len(), 1);
    // A client on host `from` fetches `path` from host `to`'s published port.
    let fetch = |from: usize, to: usize, path: &str| {
        let url = format!("http://{}:18080{path}", u.addrs[to]);
        u.run(from, &["timeout", "3", "busybox", "wget", "-qO-", &url])
    };
    // Hosts 0 and 1 run no replica: they answer through the mesh.
    for (from, to) in [(0, 1), (1, 0), (0, 2)] {
        cl.wait_until("the published port answers on every host", 20, || {
            fetch(from, to, "/").0
        });
        let (ok, body) = fetch(from, to, "/");
        assert!(ok && body == "hello from dcpp\n", "{from}→{to}: {body}");
    }
    // The serving host keeps the client's address; a forwarding host shows its own (the one
    // hop where it cannot be kept). httpd prints an IPv4 client as `[::ffff:a.b.c.d]`.
    let seen = |from: usize, to: usize| {
        let (_, out) = fetch(from, to, "/cgi-bin/ip");
        out.trim()
            .trim_start_matches("[::ffff:")
            .trim_end_matches(']')
            .to_string()
    };
    assert_eq!(seen(0, 2), u.addrs[0]);
    assert_eq!(seen(0, 1), u.addrs[1]);
    assert_eq!(seen(1, 0), u.addrs[0]);
    // Twenty fetches through a forwarding host in a row: none fails.
    for n in 0..20 {
        let (ok, body) = fetch(0, 1, "/");
        assert!(ok, "fetch {n} through the mesh: {body}");
    }
    // Forwarding was turned on only where the mesh needs it.
    let (dev1, fwd1) = uplink_forwarding(u, 1);
    assert_eq!(fwd1, "1", "host 1's uplink {dev1} forwards the mesh");

    // `mode: host`: the port answers only where the replica runs.
    let file = cl.nodes[0].write("compose.yml", &mesh_compose(web_node, "host"));
    cl.ok(0, &["apply", "-f", &file, "-p", "om", "--timeout", "60s"]);
    cl.wait_until("host mode leaves the other hosts", 20, || {
        !fetch(0, 1, "/").0
    });
    assert!(!fetch(1, 0, "/").0, "host 0 no longer answers");
    cl.wait_until("the serving host still answers", 20, || fetch(0, 2, "/").0);
    for i in 0..2 {
        let (_, rules) = u.run(i, &["nft", "list", "table", "ip", &cl.nodes[i].table]);
        assert!(!rules.contains("dport 18080"), "host {i}: {rules}");
    }

    // Back to the mesh, then the stack goes: no rule, no held port, forwarding as it was.
    let file = cl.nodes[0].write("compose.yml", &mesh_compose(web_node, "ingress"));
    cl.ok(0, &["apply", "-f", &file, "-p", "om", "--timeout", "60s"]);
    cl.wait_until("the mesh answers again", 20, || fetch(0, 1, "/").0);
    cl.ok(0, &["down", "-p", "om"]);
    for (i, was) in before.iter().enumerate() {
        cl.wait_until("the mesh is gone", 30, || {
            let (_, rules) = u.run(i, &["nft", "list", "table", "ip", &cl.nodes[i].table]);
            !rules.contains("dport 18080") && uplink_forwarding(u, i) == *was
        });
        let (_, ss) = u.run(i, &["ss", "-Htln", "sport", "= :18080"]);
        assert!(ss.trim().is_empty(), "host {i} still holds the port: {ss}");
    }
}

fn churn_compose(generation: u32, replicas: u32) -> String {
    format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    stop_grace_period: 1s
    environment:
      GENERATION: "{generation}"
    ports:
      - "18081:80"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]
      interval: 300ms
      timeout: 2s
      retries: 1
    deploy:
      replicas: {replicas}
      placement:
        constraints: ["node.role==worker"]
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
    command: ["sh", "-c", "while true; do if timeout 3 wget -q -O /dev/null http://web/; then echo ok; else echo FAIL; fi; sleep 0.1; done"]
    deploy:
      placement:
        constraints: ["node.role==manager"]
"#
    )
}

#[test]
fn updates_and_scaling_on_the_workers_fail_no_request_by_name_or_through_the_mesh() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cl = Cluster::form_in_netns("oc", &[Join::Worker, Join::Worker], &["--overlay", "on"]);
    let u = cl.underlay.as_ref().unwrap();
    let apply = |generation: u32, replicas: u32| {
        let file = cl.nodes[0].write("compose.yml", &churn_compose(generation, replicas));
        let out = cl.ok(0, &["apply", "-f", &file, "-p", "oc", "--timeout", "90s"]);
        assert!(out.contains("converged"), "{out}");
    };
    apply(1, 2);
    let client = local_containers(&cl.nodes[0], "client");
    assert_eq!(client.len(), 1);
    cl.wait_until("the client reaches web by name", 20, || {
        cl.ok(0, &["logs", &client[0].0])
            .lines()
            .any(|l| l.trim() == "ok")
    });
    // The manager runs no replica: every request to its port and to the worker's goes through
    // the mesh or straight to a replica there.
    let fetch = |from: usize, to: usize| {
        let url = format!("http://{}:18081/", u.addrs[to]);
        u.run(from, &["timeout", "3", "busybox", "wget", "-qO-", &url])
    };
    cl.wait_until("the mesh answers on the manager", 20, || fetch(1, 0).0);
    let stop = Arc::new(AtomicBool::new(false));
    let hosts: Vec<String> = u.hosts.clone();
    let addrs: Vec<String> = u.addrs.clone();
    let looper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut total, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                // From worker 2's host to the manager's port, and from the manager's to
                // worker 1's.
                for (from, to) in [(2, 0), (0, 1)] {
                    let url = format!("http://{}:18081/", addrs[to]);
                    let out = std::process::Command::new("nsenter")
                        .arg(format!("--net=/run/netns/{}", hosts[from]))
                        .args(["timeout", "3", "busybox", "wget", "-qO-", &url])
                        .output()
                        .unwrap();
                    total += 1;
                    if !out.status.success() {
                        failed.push(format!("{from}→{to}: {:?}", out.status));
                    }
                }
            }
            (total, failed)
        })
    };
    for generation in 2..=4 {
        apply(generation, 2);
    }
    cl.ok(0, &["service", "scale", "oc_web=4"]);
    cl.wait_until("four replicas serve", 30, || {
        resolve(&cl.nodes[0], &client[0].0, "web").len() == 4
    });
    apply(5, 4);
    cl.ok(0, &["service", "scale", "oc_web=2"]);
    cl.wait_until("two replicas serve", 30, || {
        resolve(&cl.nodes[0], &client[0].0, "web").len() == 2
    });
    apply(6, 2);
    stop.store(true, Ordering::Relaxed);
    let (total, failed) = looper.join().unwrap();
    // The client on the manager waited for web on the workers to be healthy (`depends_on`
    // across nodes): its very first request by name succeeded.
    let logs = cl.ok(0, &["logs", &client[0].0]);
    assert_eq!(logs.lines().next().map(str::trim), Some("ok"), "{logs}");
    let by_name_ok = logs.lines().filter(|l| l.trim() == "ok").count();
    let by_name_failed = logs.lines().filter(|l| l.trim() == "FAIL").count();
    eprintln!(
        "FIGURES: mesh requests {total}, failed {}; by-name requests {}, failed {by_name_failed}",
        failed.len(),
        by_name_ok + by_name_failed
    );
    assert!(total > 100, "the mesh client ran the whole time ({total})");
    assert!(
        by_name_ok > 100,
        "the by-name client ran the whole time ({by_name_ok})"
    );
    assert!(failed.is_empty(), "mesh requests failed: {failed:?}");
    assert_eq!(by_name_failed, 0, "requests by name failed:\n{logs}");
}

/// A TCP sink/echo server and its clients, run with the host's python3 inside a test host's or
/// a container's network namespace (the containers' busybox has no tool that measures).
const NETPERF_PY: &str = r#"
import socket, statistics, sys, time
mode = sys.argv[1]
if mode == "serve":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = c.recv(1)
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            if kind == b"e":
                c.sendall(b)
        if kind == b"s":
            c.sendall(b"k")
        c.close()
host, port = sys.argv[2], int(sys.argv[3])
c = socket.create_connection((host, port), timeout=10)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if mode == "push":
    total = int(sys.argv[4])
    buf = b"\0" * (1 << 20)
    c.sendall(b"s")
    t = time.perf_counter()
    sent = 0
    while sent < total:
        c.sendall(buf)
        sent += len(buf)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    print(sent * 8 / (time.perf_counter() - t) / 1e9)
else:
    c.sendall(b"e")
    rtts = []
    for _ in range(int(sys.argv[4])):
        t = time.perf_counter()
        c.sendall(b"x")
        c.recv(1)
        rtts.append((time.perf_counter() - t) * 1e6)
    print(statistics.median(rtts))
"#;

/// The pid of container `id` on node `n`.
fn container_pid(n: &Rig, id: &str) -> u32 {
    let out = n.dcpp(&["container", "inspect", id]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    v["pid"]
        .as_u64()
        .or_else(|| v["state"]["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid in {v}")) as u32
}

#[test]
#[ignore = "benchmark: run bench/overlay.sh"]
fn bench_overlay_against_the_underlay() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let cl = Cluster::form_in_netns("ob", &[Join::Worker], &["--overlay", "on"]);
    let u = cl.underlay.as_ref().unwrap();
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let file = a.write("compose.yml", &compose(1, a.id, b.id));
    cl.ok(0, &["apply", "-f", &file, "-p", "ob", "--timeout", "60s"]);
    let web = local_containers(a, "web");
    let client = local_containers(b, "client");
    let script = a.write("netperf.py", NETPERF_PY);
    let web_ip = resolve(b, &client[0].0, "web").into_iter().next().unwrap();
    let ns_of = |pid: u32| format!("--net=/proc/{pid}/ns/net");
    let (web_ns, client_ns) = (
        ns_of(container_pid(a, &web[0].0)),
        ns_of(container_pid(b, &client[0].0)),
    );
    let host_ns = |i: usize| format!("--net=/run/netns/{}", u.hosts[i]);
    let py = |ns: &str, args: &[&str]| -> f64 {
        let out = Command::new("nsenter")
            .arg(ns)
            .args(["python3", &script])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().parse().unwrap()
    };
    let serve = |ns: &str| {
        let mut c = Command::new("nsenter")
            .arg(ns)
            .args(["python3", &script, "serve", "5201"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        c
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bytes = (1u64 << 30).to_string();
    let mut figures = Vec::new();
    for (what, server_ns, client_ns, to) in [
        (
            "underlay (node to node)",
            host_ns(0),
            host_ns(1),
            u.addrs[0].clone(),
        ),
        (
            "overlay (container to container)",
            web_ns.clone(),
            client_ns.clone(),
            web_ip.clone(),
        ),
    ] {
        let mut server = serve(&server_ns);
        let gbit: Vec<f64> = (0..5)
            .map(|_| py(&client_ns, &["push", &to, "5201", &bytes]))
            .collect();
        let rtt: Vec<f64> = (0..5)
            .map(|_| py(&client_ns, &["rtt", &to, "5201", "2000"]))
            .collect();
        let _ = server.kill();
        let _ = server.wait();
        figures.push((what, median(gbit), median(rtt)));
    }
    for (what, gbit, rtt) in &figures {
        eprintln!("FIGURES: {what}: TCP {gbit:.2} Gbit/s, round trip {rtt:.0} µs (medians of 5)");
    }
    eprintln!(
        "FIGURES: overlay/underlay throughput {:.2}",
        figures[1].1 / figures[0].1
    );

    // A new replica on node a: from its container running there to its name answering on b.
    let mut lag = Vec::new();
    for _ in 0..5 {
        let before: BTreeSet<String> = local_containers(a, "web")
            .into_iter()
            .map(|c| c.0)
            .collect();
        cl.ok(0, &["service", "scale", "ob_web=2"]);
        let new = loop {
            if let Some(c) = local_containers(a, "web")
                .into_iter()
                .find(|c| !before.contains(&c.0))
            {
                break c;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let running = Instant::now();
        let (_, ifc) = exec(a, &new.0, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        let ip = ifc
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .unwrap()
            .to_string();
        let url = format!("http://{ip}/");
        loop {
            let (ok, _) = exec(b, &client[0].0, &["timeout", "1", "wget", "-qO-", &url]);
            if ok && resolve(b, &client[0].0, "web").contains(&ip) {
                break;
            }
        }
        lag.push(running.elapsed().as_secs_f64() * 1000.0);
        cl.ok(0, &["service", "scale", "ob_web=1"]);
        cl.wait_until("one replica", 30, || {
            resolve(b, &client[0].0, "web").len() == 1
        });
    }
    lag.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURES: new replica running on a -> reachable by name from b: median {:.0} ms, max {:.0} ms (5 runs; includes the polling execs)",
        lag[lag.len() / 2],
        lag[lag.len() - 1]
    );
}

#[test]
fn two_stacks_on_the_same_nodes_stay_isolated() {
    let cl = Cluster::form_in_netns("oi", &[Join::Worker], &["--overlay", "on"]);
    let (a, b) = (&cl.nodes[0], &cl.nodes[1]);
    let file = a.write("compose.yml", &compose(1, a.id, b.id));
    for stack in ["oi1", "oi2"] {
        let out = cl.ok(0, &["apply", "-f", &file, "-p", stack, "--timeout", "60s"]);
        assert!(out.contains("converged"), "{out}");
    }
    let stack_of = |c: &(String, String)| c.1.split('_').next().unwrap_or_default().to_string();
    let clients = local_containers(b, "client");
    let webs = local_containers(a, "web");
    assert_eq!((clients.len(), webs.len()), (2, 2));
    let address = |n: &Rig, id: &str| {
        let (_, ifc) = exec(n, id, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        ifc.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .unwrap_or_default()
            .to_string()
    };
    let web_ip: std::collections::BTreeMap<String, String> = webs
        .iter()
        .map(|w| (stack_of(w), address(a, &w.0)))
        .collect();
    assert_ne!(
        web_ip["oi1"].rsplit_once('.').map(|x| x.0),
        web_ip["oi2"].rsplit_once('.').map(|x| x.0),
        "a subnet per stack network: {web_ip:?}"
    );
    for c in &clients {
        let (mine, other) = if stack_of(c) == "oi1" {
            ("oi1", "oi2")
        } else {
            ("oi2", "oi1")
        };
        cl.wait_until("each client reaches its own stack's web", 20, || {
            exec(b, &c.0, &["timeout", "3", "wget", "-qO-", "http://web/"]).0
        });
        // The name is the stack's own; the other stack's web is not reachable at all.
        assert_eq!(
            resolve(b, &c.0, "web"),
            BTreeSet::from([web_ip[mine].clone()])
        );
        let url = format!("http://{}/", web_ip[other]);
        let (ok, out) = exec(b, &c.0, &["timeout", "3", "wget", "-qO-", &url]);
        assert!(!ok, "{mine}'s client reached {other}'s web: {out}");
    }
    for stack in ["oi1", "oi2"] {
        cl.ok(0, &["down", "-p", stack]);
    }
}
