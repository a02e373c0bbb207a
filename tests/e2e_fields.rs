//! Compose keys that used to be accepted with "ignored" and now reach the container, through the
//! real binary on a real daemon, each checked where it takes effect: `extra_hosts` in the
//! container's /etc/hosts; `dns`, `dns_search`, `dns_opt` in its resolv.conf and in where the
//! resolver forwards its names (the stack's names still resolving); `cpu_shares`, `cpuset`,
//! `mem_reservation`, `memswap_limit` and `oom_score_adj` in its cgroup and process;
//! `label_file` in its labels; `ipc`/`pid: service:NAME` in the namespaces it runs in;
//! `devices` in its /dev and devices cgroup; and `volumes_from` in its mounts.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rig::*;

impl Rig {
    /// The container id of the running task of `service` (`<stack>_<name>`), once there is one.
    fn running_container(&self, service: &str) -> String {
        let mut id = None;
        self.wait_until(&format!("{service} running"), 60, || {
            id = self
                .tasks()
                .into_iter()
                .find(|t| t["service"] == service && t["state"] == "running")
                .and_then(|t| t["container_id"].as_str().map(str::to_string));
            id.is_some()
        });
        id.unwrap_or_default()
    }

    /// `dcpp container exec ID args…`, which must succeed: stdout + stderr.
    fn exec_ok(&self, id: &str, args: &[&str]) -> String {
        let mut a = vec!["container", "exec", id];
        a.extend_from_slice(args);
        let out = self.dcpp(&a);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "exec {args:?} in {id} failed: {text}");
        text
    }

    /// Every task, finished ones too.
    fn all_tasks(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "-a", "--format", "json"])).unwrap()
    }

    /// A file of the container's cgroup in the v1 `controller` hierarchy of this host.
    fn cgroup_file(&self, controller: &str, id: &str, file: &str) -> String {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/{controller}/{}/{id}/{file}",
            self.cgroup
        ))
        .unwrap_or_else(|e| panic!("{controller}/{file} of {id}: {e}"))
        .trim()
        .to_string()
    }
}

/// The address of the fake upstream nameserver: the slot's own loopback /16 (see `slot.rs`),
/// so tests running beside each other never share it.
fn upstream_address(rig: &Rig) -> String {
    let host = rig.listen.split(':').next().unwrap_or_default();
    let mut octets: Vec<&str> = host.split('.').collect();
    octets[3] = "53";
    octets.join(".")
}

/// A nameserver on `addr:53` that answers every A query with 127.1.2.3 (and every other
/// query with no records), recording the names it was asked.
fn fake_nameserver(addr: &str) -> Arc<Mutex<Vec<String>>> {
    let sock = UdpSocket::bind((addr, 53)).unwrap_or_else(|e| panic!("binding {addr}:53: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        // Ends with the test process.
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let q = &buf[..n];
            let Some((name, end)) = question(q) else {
                continue;
            };
            let qtype = u16::from_be_bytes([q[end - 4], q[end - 3]]);
            seen.lock().unwrap().push(name);
            let mut r = Vec::with_capacity(end + 16);
            r.extend_from_slice(&q[..2]);
            r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(qtype == 1), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            if qtype == 1 {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 1, 2, 3]);
            }
            let _ = sock.send_to(&r, peer);
        }
    });
    asked
}

/// The queried name and the end of the question section of a DNS query.
fn question(q: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).into_owned());
        at += len;
    }
    (q.len() >= at + 4).then(|| (labels.join("."), at + 4))
}

#[test]
fn extra_hosts_and_dns_settings_reach_the_container_and_stack_names_still_resolve() {
    let rig = Rig::new("fh");
    let upstream = upstream_address(&rig);
    let asked = fake_nameserver(&upstream);
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: fh
services:
  web:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    extra_hosts:
      - "db.example:127.0.0.5"
      - "pair=127.0.0.6,127.0.0.7"
      - "v6=[::1]"
    dns: {upstream}
    dns_search: [corp.example, lab.example]
    dns_opt: [timeout:2, attempts:3]
  api:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    extra_hosts:
      cache.example: 127.0.0.8
      multi: [127.0.0.9, 127.0.0.10]
"#
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // Implemented keys warn no more.
    assert!(!stderr(&out).contains("ignored"), "{}", stderr(&out));
    let web = rig.running_container("fh_web");
    let api = rig.running_container("fh_api");

    let hosts = rig.exec_ok(&web, &["cat", "/etc/hosts"]);
    for line in [
        "127.0.0.5\tdb.example",
        "127.0.0.6\tpair",
        "127.0.0.7\tpair",
        "::1\tv6",
    ] {
        assert!(hosts.lines().any(|l| l == line), "{line:?} in:\n{hosts}");
    }
    let hosts = rig.exec_ok(&api, &["cat", "/etc/hosts"]);
    for line in [
        "127.0.0.8\tcache.example",
        "127.0.0.9\tmulti",
        "127.0.0.10\tmulti",
    ] {
        assert!(hosts.lines().any(|l| l == line), "{line:?} in:\n{hosts}");
    }

    // dcpp's resolver stays the nameserver (the stack's names need it), with the service's
    // search domains and options; ndots:0 is kept since the service set no ndots of its own.
    let resolv = rig.exec_ok(&web, &["cat", "/etc/resolv.conf"]);
    let lines: Vec<&str> = resolv.lines().collect();
    assert_eq!(lines.len(), 3, "{resolv}");
    assert!(lines[0].starts_with("nameserver 10."), "{resolv}");
    assert_eq!(lines[1], "search corp.example lab.example", "{resolv}");
    assert_eq!(lines[2], "options timeout:2 attempts:3 ndots:0", "{resolv}");
    // A service without dns settings keeps the plain resolver file.
    let plain = rig.exec_ok(&api, &["cat", "/etc/resolv.conf"]);
    assert!(!plain.contains("search"), "{plain}");
    assert!(plain.contains("options ndots:0"), "{plain}");

    // A name outside the stack goes to the service's own nameserver ...
    let answer = rig.exec_ok(&web, &["nslookup", "outside.test"]);
    assert!(answer.contains("127.1.2.3"), "{answer}");
    assert!(
        asked.lock().unwrap().iter().any(|n| n == "outside.test"),
        "{:?}",
        asked.lock().unwrap()
    );
    // ... while the stack's names still resolve to the tasks, not to what it would answer
    // (fully qualified: busybox's nslookup would also ask api.corp.example, which rightly goes
    // to that nameserver).
    let answer = rig.exec_ok(&web, &["nslookup", "api."]);
    assert!(answer.contains("Address: 10."), "{answer}");
    assert!(!answer.contains("127.1.2.3"), "{answer}");
    // The other service's outside names never reach that nameserver.
    let before = asked.lock().unwrap().len();
    let _ = rig.dcpp(&["container", "exec", &api, "nslookup", "elsewhere.test"]);
    assert!(
        !asked.lock().unwrap()[before..]
            .iter()
            .any(|n| n.starts_with("elsewhere")),
        "{:?}",
        asked.lock().unwrap()
    );
}

#[test]
fn cgroup_and_process_keys_reach_the_container_and_impossible_values_fail_the_task() {
    let rig = Rig::new("fc");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: fc
services:
  tuned:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    cpu_shares: 512
    cpuset: "0"
    mem_limit: 64m
    mem_reservation: 32m
    memswap_limit: 96m
    oom_score_adj: 500
"#
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!stderr(&out).contains("ignored"), "{}", stderr(&out));
    let id = rig.running_container("fc_tuned");

    assert_eq!(rig.cgroup_file("cpu", &id, "cpu.shares"), "512");
    assert_eq!(rig.cgroup_file("cpuset", &id, "cpuset.cpus"), "0");
    assert_eq!(
        rig.cgroup_file("memory", &id, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        rig.cgroup_file("memory", &id, "memory.soft_limit_in_bytes"),
        (32u64 << 20).to_string()
    );
    assert_eq!(
        rig.cgroup_file("memory", &id, "memory.memsw.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    // Inside: the process runs on CPU 0 only, with the OOM score asked for; so does a process
    // started later with exec.
    let status = rig.exec_ok(&id, &["cat", "/proc/1/status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Cpus_allowed_list:") && l.ends_with("\t0")),
        "{status}"
    );
    assert_eq!(
        rig.exec_ok(&id, &["cat", "/proc/1/oom_score_adj"]).trim(),
        "500"
    );
    assert_eq!(
        rig.exec_ok(&id, &["cat", "/proc/self/oom_score_adj"])
            .trim(),
        "500"
    );

    // A CPU the machine does not have is an error of the task, not a silently wider cpuset.
    let ncpu = std::thread::available_parallelism().unwrap().get();
    let bad = rig.write(
        "bad.yml",
        &format!(
            "name: fb\nservices:\n  pinned:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    cpuset: \"{ncpu}\"\n"
        ),
    );
    let _ = rig.dcpp(&["apply", "-f", &bad, "--timeout", "10s"]);
    rig.wait_until("the pinned task to fail with the reason", 60, || {
        rig.all_tasks().iter().any(|t| {
            t["service"] == "fb_pinned"
                && t["state"] == "failed"
                && t["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&format!("CPU {ncpu} is not available")))
        })
    });
}

#[test]
fn label_files_are_read_and_labels_win_over_them() {
    let rig = Rig::new("fl");
    rig.write(
        "base.labels",
        "# team labels\ncom.example.team=payments\ncom.example.tier=backend\n",
    );
    rig.write(
        "more.labels",
        "com.example.tier=frontend\ncom.example.owner=payments-oncall\n",
    );
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: fl
services:
  web:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    label_file: [./base.labels, ./more.labels]
    labels:
      com.example.team: checkout
"#
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!stderr(&out).contains("ignored"), "{}", stderr(&out));
    let id = rig.running_container("fl_web");
    let info = rig.json(&["container", "inspect", &id]);
    let labels = &info[0]["labels"];
    assert_eq!(labels["com.example.team"], "checkout", "{info}");
    assert_eq!(labels["com.example.tier"], "frontend", "{info}");
    assert_eq!(labels["com.example.owner"], "payments-oncall", "{info}");
}

#[test]
fn container_name_names_the_container_and_is_refused_with_replicas() {
    let rig = Rig::new("fn");
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: fn\nservices:\n  web:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    stop_signal: SIGKILL\n    container_name: fn-web\n"
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!stderr(&out).contains("ignored"), "{}", stderr(&out));
    let id = rig.running_container("fn_web");
    let info = rig.json(&["container", "inspect", "fn-web"]);
    assert_eq!(info[0]["id"], id.as_str(), "{info}");
    assert_eq!(info[0]["name"], "fn-web", "{info}");

    // Two replicas cannot share one name: refused at load, at the key's position.
    let bad = rig.write(
        "two.yml",
        &format!(
            "name: fn2\nservices:\n  web:\n    image: {IMAGE}\n    container_name: fn-two\n    scale: 2\n"
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &bad]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(
            "two.yml:5:21: services.web.container_name: can't set container_name and 2 replicas"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ipc_and_pid_host_share_the_hosts_namespaces_and_the_default_does_not() {
    let rig = Rig::new("fi");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: fi
services:
  hostns:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    ipc: host
    pid: host
  own:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    ipc: shareable
"#
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!stderr(&out).contains("ignored"), "{}", stderr(&out));
    let ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let hostns = rig.running_container("fi_hostns");
    let own = rig.running_container("fi_own");
    for kind in ["ipc", "pid"] {
        let link = format!("/proc/self/ns/{kind}");
        assert_eq!(
            rig.exec_ok(&hostns, &["readlink", &link]).trim(),
            ns(kind),
            "{kind} of the host-namespace container"
        );
        assert_ne!(
            rig.exec_ok(&own, &["readlink", &link]).trim(),
            ns(kind),
            "{kind} of the own-namespace container"
        );
    }
    // In the host's PID namespace the container's process is not PID 1.
    assert_ne!(rig.exec_ok(&hostns, &["sh", "-c", "echo $$"]).trim(), "1");
}

#[test]
fn ipc_and_pid_service_join_the_peers_namespaces() {
    let rig = Rig::new("fj");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: fj
services:
  first:
    image: {IMAGE}
    command: ["sleep", "3601"]
    stop_signal: SIGKILL
  second:
    image: {IMAGE}
    command: ["sleep", "3602"]
    stop_signal: SIGKILL
    ipc: service:first
    pid: service:first
  alone:
    image: {IMAGE}
    command: ["sleep", "3603"]
    stop_signal: SIGKILL
"#
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let first = rig.running_container("fj_first");
    let second = rig.running_container("fj_second");
    let alone = rig.running_container("fj_alone");
    let ns = |id: &str, kind: &str| {
        rig.exec_ok(id, &["readlink", &format!("/proc/self/ns/{kind}")])
            .trim()
            .to_string()
    };
    for kind in ["ipc", "pid"] {
        assert_eq!(ns(&second, kind), ns(&first, kind), "{kind} of second");
        assert_ne!(ns(&alone, kind), ns(&first, kind), "{kind} of alone");
    }
    // The joiner sees the peer's processes, the peer sees the joiner's, and the peer's init
    // stays PID 1; a container of its own sees neither.
    let ps = rig.exec_ok(&second, &["ps", "-o", "pid,args"]);
    assert!(
        ps.contains("sleep 3601") && ps.contains("sleep 3602"),
        "{ps}"
    );
    let init = ps.lines().find(|l| l.trim_start().starts_with("1 "));
    assert!(init.is_some_and(|l| l.contains("sleep 3601")), "{ps}");
    let ps = rig.exec_ok(&first, &["ps", "-o", "pid,args"]);
    assert!(ps.contains("sleep 3602"), "{ps}");
    let ps = rig.exec_ok(&alone, &["ps", "-o", "pid,args"]);
    assert!(
        !ps.contains("sleep 3601") && !ps.contains("sleep 3602"),
        "{ps}"
    );
}

#[test]
fn devices_are_created_and_allowed_and_a_missing_one_fails_the_task() {
    let rig = Rig::new("fd");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: fd
services:
  dev:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    devices:
      - /dev/zero:/dev/myzero
      - /dev/fuse:/dev/extra/fuse:rw
"#
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let id = rig.running_container("fd_dev");
    assert_eq!(
        rig.exec_ok(&id, &["sh", "-c", "head -c 4 /dev/myzero | wc -c"])
            .trim(),
        "4"
    );
    // /dev/fuse (10:229) is not among the default devices: only its listing lets it be opened.
    assert_eq!(
        rig.exec_ok(&id, &["sh", "-c", "exec 3<>/dev/extra/fuse && echo opened"])
            .trim(),
        "opened"
    );
    // A device not listed is neither there nor usable through a node made inside.
    let out = rig.dcpp(&["container", "exec", &id, "test", "-e", "/dev/kmsg"]);
    assert!(!out.status.success(), "/dev/kmsg exists in the container");
    let out = rig.dcpp(&[
        "container",
        "exec",
        &id,
        "sh",
        "-c",
        "mknod /tmp/kmsg c 1 11 && head -c 1 /tmp/kmsg",
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("not permitted"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    let bad = rig.write(
        "bad.yml",
        &format!(
            "name: fe\nservices:\n  nodev:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    devices: [/dev/dcpp-no-such-device]\n"
        ),
    );
    let _ = rig.dcpp(&["apply", "-f", &bad, "--timeout", "10s"]);
    rig.wait_until("the nodev task to fail with the reason", 60, || {
        rig.all_tasks().iter().any(|t| {
            t["service"] == "fe_nodev"
                && t["state"] == "failed"
                && t["error"].as_str().is_some_and(|e| {
                    e.contains("/dev/dcpp-no-such-device")
                        && e.contains("no such device on the host")
                })
        })
    });
}

#[test]
fn volumes_from_mounts_the_peers_volumes_read_only_with_ro() {
    let rig = Rig::new("fv");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: fv
services:
  db:
    image: {IMAGE}
    command: ["sh", "-c", "echo from-db > /data/note && exec sleep 3600"]
    stop_signal: SIGKILL
    volumes: ["store:/data"]
  reader:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    volumes_from: ["db"]
  viewer:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    volumes_from: ["db:ro"]
volumes:
  store: {{}}
"#
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let reader = rig.running_container("fv_reader");
    let viewer = rig.running_container("fv_viewer");
    let mut note = String::new();
    rig.wait_until("the db's note through volumes_from", 30, || {
        let out = rig.dcpp(&["container", "exec", &reader, "cat", "/data/note"]);
        note = stdout(&out);
        note.trim() == "from-db"
    });
    assert_eq!(
        rig.exec_ok(&viewer, &["cat", "/data/note"]).trim(),
        "from-db"
    );
    rig.exec_ok(&reader, &["sh", "-c", "echo from-reader > /data/back"]);
    let out = rig.dcpp(&[
        "container",
        "exec",
        &viewer,
        "sh",
        "-c",
        "echo x > /data/viewer",
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("Read-only"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        rig.exec_ok(&viewer, &["cat", "/data/back"]).trim(),
        "from-reader"
    );
}

#[test]
fn platform_accepts_the_images_own_and_fails_the_task_for_another() {
    let rig = Rig::new("fp");
    let here = match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("no platform name for {other}"),
    };
    let other = if here == "linux/amd64" {
        "linux/s390x"
    } else {
        "linux/amd64"
    };
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: fp\nservices:\n  fits:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    stop_signal: SIGKILL\n    platform: {here}\n  elsewhere:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    platform: {other}\n"
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file, "--timeout", "10s"]);
    assert!(!stderr(&out).contains("ignored"), "{}", stderr(&out));
    rig.running_container("fp_fits");
    rig.wait_until("the elsewhere task to fail with the reason", 60, || {
        rig.all_tasks().iter().any(|t| {
            t["service"] == "fp_elsewhere"
                && t["state"] == "failed"
                && t["error"].as_str().is_some_and(|e| {
                    e.contains(&format!("does not match the requested platform {other}"))
                })
        })
    });
    assert_eq!(rig.running("fp_elsewhere"), 0);
}

#[test]
fn fields_dcpp_cannot_honour_are_refused_with_their_position() {
    let rig = Rig::new("fr");
    for (key, value, message) in [
        ("tty", "true", "dcpp allocates no terminal"),
        ("stdin_open", "true", "keeps no stdin open"),
        (
            "mac_address",
            "02:42:ac:11:00:02",
            "addresses generated by the kernel",
        ),
    ] {
        let file = rig.write(
            "compose.yml",
            &format!(
                "name: fr\nservices:\n  other:\n    image: {IMAGE}\n  web:\n    image: {IMAGE}\n    {key}: {value}\n"
            ),
        );
        let out = rig.dcpp(&["apply", "-f", &file]);
        assert!(!out.status.success(), "{key}: {}", stdout(&out));
        let col = key.len() + 7;
        let want = format!("compose.yml:7:{col}: services.web.{key}: ");
        assert!(
            stderr(&out).contains(&want) && stderr(&out).contains(message),
            "{key}: {}",
            stderr(&out)
        );
    }
    assert!(rig.tasks().is_empty(), "{:?}", rig.tasks());
}
