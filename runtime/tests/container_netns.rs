//! `NetworkMode::Container`: a container joins the network namespace of another running one
//! (docker's `--network container:NAME`), with both executors, on the real kernel.

mod container_util;

use std::process::Command;
use std::time::Duration;

use container_util::World;
use dcpp_runtime::container::{Error, NetworkMode};

/// Interface names (without the `@peer` suffix) of `ip -o link` output, sorted.
fn link_names(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    v.sort();
    v
}

fn host(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

both_runtimes!(joins_a_running_containers_network_namespace, |w| {
    // A serves HTTP on its own loopback only.
    let mut a = w.opts(&[
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo hello-from-a >/tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
    ]);
    a.name = Some("net-a".into());
    a.hostname = Some("alpha".into());
    let ca = w.mgr.create(&a).unwrap();
    w.mgr.start(&ca.state.id).unwrap();
    let pid = w.mgr.inspect("net-a").unwrap().pid.unwrap();
    let netns = format!("/proc/{pid}/ns/net");
    // A veth pair created inside A's namespace (never on the host): B must see it too.
    host(
        "nsenter",
        &[
            &format!("--net={netns}"),
            "ip",
            "link",
            "add",
            "ctv0",
            "type",
            "veth",
            "peer",
            "name",
            "ctv1",
        ],
    );
    let a_links = link_names(&host(
        "nsenter",
        &[&format!("--net={netns}"), "ip", "-o", "link"],
    ));
    assert_eq!(a_links, ["ctv0", "ctv1", "lo"]);
    let a_ns = std::fs::read_link(&netns).unwrap();

    // busybox 1.35's `wget -T` crashes: bound each try with `timeout`; retry until httpd listens.
    let mut b = w.opts(&[
        "sh",
        "-c",
        "readlink /proc/self/ns/net; hostname; ip -o link | sed 's/^/IF /'; \
         for i in $(seq 100); do timeout 2 wget -q -O - http://127.0.0.1:8080/index.html && break; sleep 0.1; done; \
         echo ===; cat /etc/hosts",
    ]);
    b.name = Some("net-b".into());
    b.network = NetworkMode::Container("net-a".into());
    let cb = w.mgr.create(&b).unwrap();
    assert_eq!(
        w.mgr.inspect(&cb.state.id).unwrap().state.network,
        NetworkMode::Container(ca.state.id.clone()),
        "the state records the target's full id"
    );
    w.mgr.start(&cb.state.id).unwrap();
    let exit = w
        .mgr
        .wait(&cb.state.id, Some(Duration::from_secs(60)))
        .unwrap()
        .expect("B exited");
    let out: String = w
        .mgr
        .logs(&cb.state.id)
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect();
    assert_eq!(exit.exit_code, 0, "{out}");
    let (head, hosts) = out.split_once("===\n").expect(&out);
    let mut lines = head.lines();
    assert_eq!(
        lines.next(),
        Some(a_ns.to_string_lossy().as_ref()),
        "B is not in A's network namespace:\n{out}"
    );
    assert_eq!(lines.next(), Some("alpha"), "B has A's hostname:\n{out}");
    let ifs: String = head
        .lines()
        .filter_map(|l| l.strip_prefix("IF "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(link_names(&ifs), a_links, "B sees exactly A's interfaces");
    assert!(
        head.lines().any(|l| l == "hello-from-a"),
        "B reached A's loopback server:\n{out}"
    );
    let a_hosts = std::fs::read_to_string(ca.bundle.join("hosts")).unwrap();
    assert!(a_hosts.contains("alpha"), "{a_hosts}");
    assert_eq!(hosts, a_hosts, "B has A's /etc/hosts");
    w.mgr.remove(&cb.state.id, true).unwrap();
    // A is unaffected by B's departure.
    assert_eq!(
        w.mgr.inspect("net-a").unwrap().status,
        dcpp_runtime::container::Status::Running
    );
});

both_runtimes!(joining_a_missing_or_stopped_container_fails_cleanly, |w| {
    let mut o = w.opts(&["true"]);
    o.network = NetworkMode::Container("ghost".into());
    let e = w.mgr.create(&o).unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("network container:ghost: no such container"),
        "{e}"
    );
    assert!(w.mgr.list().is_empty(), "nothing half-created");

    // A created-but-never-started and an exited container have no network to join.
    let mut t = w.opts(&["true"]);
    t.name = Some("idle".into());
    let idle = w.mgr.create(&t).unwrap();
    o.network = NetworkMode::Container("idle".into());
    let e = w.mgr.create(&o).unwrap_err();
    assert!(e.to_string().contains("it is created, not running"), "{e}");
    w.mgr.start(&idle.state.id).unwrap();
    w.mgr
        .wait(&idle.state.id, Some(Duration::from_secs(30)))
        .unwrap()
        .expect("exited");
    let e = w.mgr.create(&o).unwrap_err();
    assert!(e.to_string().contains("it is exited, not running"), "{e}");
    // A hostname conflicts with the target's, as in docker.
    let mut h = w.opts(&["sleep", "30"]);
    h.name = Some("up".into());
    let up = w.mgr.create(&h).unwrap();
    w.mgr.start(&up.state.id).unwrap();
    o.network = NetworkMode::Container("up".into());
    o.hostname = Some("mine".into());
    let e = w.mgr.create(&o).unwrap_err();
    assert!(e.to_string().contains("conflicting options"), "{e}");
    assert_eq!(w.mgr.list().len(), 2, "only idle and up exist");
});
