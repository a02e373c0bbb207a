//! `sysctls`: namespaced kernel parameters set inside the container, never on the host; the
//! others refused at create with nothing left behind. Both executors, real kernel.

mod container_util;

use container_util::World;
use dcpp_runtime::container::{Error, NetworkMode};

const PARAMS: &[(&str, &str)] = &[
    ("net.core.somaxconn", "1234"),
    ("net.ipv4.ip_forward", "1"),
    ("kernel.msgmax", "12345"),
    ("fs.mqueue.msg_max", "17"),
];

fn proc_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

fn host_values() -> Vec<String> {
    PARAMS
        .iter()
        .map(|(k, _)| std::fs::read_to_string(proc_path(k)).unwrap())
        .collect()
}

fn assert_nothing_left(w: &World) {
    assert!(w.mgr.list().is_empty(), "half-created container left");
    let left: Vec<_> = std::fs::read_dir(w.tmp.path().join("data/containers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".lock" && e.file_name() != ".names")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(w.our_mounts().is_empty());
}

/// `v`, or another value when the host already has it: a value equal to the host's would not
/// show where it was set (hosts running docker have `ip_forward` on, others off).
fn unlike(v: &str, host: &str) -> String {
    match (host.trim() == v, v.parse::<u64>()) {
        (false, _) => v.to_string(),
        (true, Ok(1)) => "0".into(),
        (true, Ok(n)) => (n + 1).to_string(),
        (true, Err(_)) => panic!("no value unlike the host's {host:?}"),
    }
}

both_runtimes!(namespaced_sysctls_apply_inside_only, |w| {
    let before = host_values();
    let params: Vec<(&str, String)> = PARAMS
        .iter()
        .zip(&before)
        .map(|((k, v), host)| (*k, unlike(v, host)))
        .collect();
    let script: String = params
        .iter()
        .map(|(k, _)| format!("cat {}; ", proc_path(k)))
        .collect();
    let mut o = w.opts(&["sh", "-c", &script]);
    o.sysctls = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (exit, out) = w.run(&o);
    assert_eq!(exit.exit_code, 0, "{out}");
    let want: String = params.iter().map(|(_, v)| format!("{v}\n")).collect();
    assert_eq!(out, want);
    assert_eq!(host_values(), before, "the host's values changed");
});

both_runtimes!(sysctls_outside_the_containers_namespaces_are_refused, |w| {
    let cases: &[(&str, &str, NetworkMode, &str)] = &[
        ("vm.swappiness", "10", NetworkMode::Private, "not allowed"),
        ("kernel.hostname", "x", NetworkMode::Private, "not allowed"),
        (
            "net.core.somaxconn",
            "1234",
            NetworkMode::Host,
            "host's network namespace",
        ),
        (
            "net.core.somaxconn",
            "1234",
            NetworkMode::Container("other".into()),
            "network container:other",
        ),
        ("net..core", "1", NetworkMode::Private, "invalid name"),
        (
            "net.core/../../x",
            "1",
            NetworkMode::Private,
            "invalid name",
        ),
        (
            "net.core.somaxconn",
            "",
            NetworkMode::Private,
            "invalid value",
        ),
    ];
    for (k, v, net, msg) in cases {
        let mut o = w.opts(&["true"]);
        o.network = net.clone();
        o.sysctls.insert(k.to_string(), v.to_string());
        let e = w.mgr.create(&o).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{k}: {e:?}");
        assert!(e.to_string().contains(msg), "{k}: {e}");
        assert_nothing_left(&w);
    }
    // The IPC ones stay allowed with the host's network: the IPC namespace is still private.
    let mut o = w.opts(&["cat", "/proc/sys/kernel/shmmni"]);
    o.network = NetworkMode::Host;
    o.sysctls.insert("kernel.shmmni".into(), "1000".into());
    let (exit, out) = w.run(&o);
    assert_eq!((exit.exit_code, out.as_str()), (0, "1000\n"));
    // A namespaced-looking name the kernel does not have fails at create, cleanly.
    let mut o = w.opts(&["true"]);
    o.sysctls
        .insert("net.core.no_such_param".into(), "1".into());
    let e = w.mgr.create(&o).unwrap_err();
    assert!(e.to_string().contains("no_such_param"), "{e}");
    assert_nothing_left(&w);
});
