//! Supervision and lifecycle: the managing process dies and a new one re-adopts; stop with
//! grace period; init; exec; volumes; clear errors with nothing half-created.

mod container_util;

use std::time::{Duration, Instant};

use container_util::World;
use dcpp_runtime::container::{
    Error, ExecRequest, MountRequest, MountSource, RuntimeKind, Status, Ulimit,
};

/// Not a test on its own: the "daemon" that `managing_process_killed_*` runs in a child process
/// and kills with SIGKILL. It creates and starts containers, then waits to be killed.
#[test]
#[ignore]
fn helper_managing_process() {
    let Ok(dir) = std::env::var("DCPP_TEST_HELPER_DIR") else {
        return;
    };
    let parent = std::env::var("DCPP_TEST_HELPER_CGROUP").unwrap();
    let runtime = RuntimeKind::parse(&std::env::var("DCPP_TEST_HELPER_RUNTIME").unwrap());
    let layer = std::path::Path::new(&dir).join("layer");
    let mgr = World::manager(std::path::Path::new(&dir), &parent, runtime);
    let image = dcpp_runtime::container::ImageInput {
        reference: "busybox:test".into(),
        layer_dirs: vec![layer],
        config: None,
    };
    for (name, script) in [
        (
            "ticker",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
        ),
        ("short", "sleep 0.5; exit 3"),
    ] {
        let mut o = dcpp_runtime::container::CreateOptions::new(image.clone());
        o.name = Some(name.into());
        o.command = Some(vec!["sh".into(), "-c".into(), script.into()]);
        let c = mgr.create(&o).unwrap();
        mgr.start(&c.state.id).unwrap();
    }
    println!("READY");
    std::thread::sleep(Duration::from_secs(120));
}

fn managing_process_killed(w: &World) {
    let rt = match &w.runtime {
        RuntimeKind::Builtin => "dcpp".to_string(),
        RuntimeKind::Oci(r) => r.clone(),
    };
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_managing_process",
            "--ignored",
            "--nocapture",
        ])
        .env("DCPP_TEST_HELPER_DIR", w.tmp.path())
        .env("DCPP_TEST_HELPER_CGROUP", &w.cgroup_parent)
        .env("DCPP_TEST_HELPER_RUNTIME", rt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("READY") && Instant::now() < deadline {
        let mut b = [0u8; 256];
        let n = std::io::Read::read(&mut out, &mut b).unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    assert!(seen.contains("READY"), "helper did not get ready: {seen}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Let "short" end while no manager is around.
    std::thread::sleep(Duration::from_millis(1200));

    // A new manager on the same data dir re-adopts both.
    let mgr = World::manager(w.tmp.path(), &w.cgroup_parent, w.runtime.clone());
    let ticker = mgr.inspect("ticker").unwrap();
    assert_eq!(ticker.status, Status::Running);
    let short = mgr.inspect("short").unwrap();
    assert_eq!(short.status, Status::Exited);
    assert_eq!(short.exit.unwrap().exit_code, 3);
    // Logs continue.
    let n1 = mgr.logs("ticker").unwrap().len();
    std::thread::sleep(Duration::from_millis(500));
    let n2 = mgr.logs("ticker").unwrap().len();
    assert!(n2 > n1 && n1 > 0, "log did not grow: {n1} -> {n2}");
    // Still managed: stop works (sh as PID 1 ignores SIGTERM: SIGKILL after the grace period).
    let t = Instant::now();
    let info = mgr
        .stop("ticker", Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(info.status, Status::Exited);
    assert_eq!(info.exit.unwrap().exit_code, 137);
    assert!(t.elapsed() < Duration::from_secs(5));
    let pid = ticker.pid.unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container process still there"
    );
}

both_runtimes!(managing_process_killed_then_readopted, |w| {
    managing_process_killed(&w);
});

#[test]
fn init_forwards_signals_and_stop_is_quick() {
    let w = World::new(RuntimeKind::Builtin);
    let mut o = w.opts(&["sh", "-c", "sleep 0.05 & echo child; exec sleep 30"]);
    o.init = true;
    o.name = Some("withinit".into());
    let c = w.mgr.create(&o).unwrap();
    w.mgr.start(&c.state.id).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let info = w
        .mgr
        .stop("withinit", Some(Duration::from_secs(20)))
        .unwrap();
    // SIGTERM reached sleep through the init (sleep as PID 1 would have ignored it).
    assert_eq!(info.exit.unwrap().exit_code, 128 + 15);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

both_runtimes!(exec_joins_namespaces, |w| {
    let mut o = w.opts(&["sleep", "30"]);
    o.hostname = Some("execbox".into());
    let c = w.mgr.create(&o).unwrap();
    w.mgr.start(&c.state.id).unwrap();
    let req = ExecRequest {
        args: vec![
            "sh".into(),
            "-c".into(),
            "hostname; echo $FOO; ls -d /proc/[0-9]* | wc -l; grep CapEff /proc/self/status".into(),
        ],
        env: vec!["FOO=bar".into()],
        cwd: None,
        user: None,
    };
    let out = w
        .mgr
        .exec(&c.state.id, &req, |cmd| {
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
        })
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "execbox");
    assert_eq!(lines[1], "bar");
    let procs: u32 = lines[2].trim().parse().unwrap();
    assert!(procs <= 5, "{stdout}");
    assert_eq!(lines[3], "CapEff:\t00000000a80425fb");
    w.mgr
        .stop(&c.state.id, Some(Duration::from_millis(100)))
        .unwrap();
});

both_runtimes!(volumes_binds_and_tmpfs, |w| {
    let host = w.tmp.path().join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in.txt"), "from host\n").unwrap();
    let mounts = vec![
        MountRequest {
            source: MountSource::Bind(host.clone()),
            target: "/host".into(),
            read_only: true,
        },
        MountRequest {
            source: MountSource::Volume("data".into()),
            target: "/data".into(),
            read_only: false,
        },
        MountRequest {
            source: MountSource::Tmpfs(Some(1 << 20)),
            target: "/scratch".into(),
            read_only: false,
        },
    ];
    let mut o = w.opts(&["sh", "-c", "cat /host/in.txt; touch /host/x || echo ro-ok; echo kept > /data/f; df -k /scratch | tail -1"]);
    o.mounts = mounts.clone();
    let (exit, out) = w.run(&o);
    assert_eq!(exit.exit_code, 0, "{out}");
    assert!(
        out.contains("from host\n") && out.contains("ro-ok") && out.contains(" 1024 "),
        "{out}"
    );
    // The volume outlives the container.
    let mut o = w.opts(&["cat", "/data/f"]);
    o.mounts = mounts;
    let (_, out) = w.run(&o);
    assert_eq!(out, "kept\n");
    assert_eq!(w.mgr.volumes().list().len(), 1);
});

#[test]
fn errors_are_clear_and_leave_nothing() {
    let w = World::new(RuntimeKind::Builtin);
    let check_empty = |w: &World| {
        assert!(w.mgr.list().is_empty(), "half-created container left");
        assert!(w.our_mounts().is_empty());
        let left: Vec<_> = std::fs::read_dir(w.tmp.path().join("data/containers"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != ".lock" && e.file_name() != ".names")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let names: Vec<_> = std::fs::read_dir(w.tmp.path().join("data/containers/.names"))
            .unwrap()
            .flatten()
            .collect();
        assert!(names.is_empty(), "name index entries left: {names:?}");
    };
    // Missing image.
    let mut o = w.opts(&["true"]);
    o.image.layer_dirs = vec![w.tmp.path().join("no-such-layer")];
    assert!(matches!(w.mgr.create(&o), Err(Error::ImageNotFound(_))));
    check_empty(&w);
    // Unknown user.
    let mut o = w.opts(&["true"]);
    o.user = Some("ghost".into());
    let e = w.mgr.create(&o).unwrap_err();
    assert!(e.to_string().contains("unable to find user ghost"), "{e}");
    check_empty(&w);
    // Command not found.
    let o = w.opts(&["no-such-cmd"]);
    let e = w.mgr.create(&o).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"no-such-cmd\": executable file not found in $PATH"),
        "{e}"
    );
    check_empty(&w);
    // Bad limits.
    let mut o = w.opts(&["true"]);
    o.memory = Some(1000);
    assert!(
        w.mgr
            .create(&o)
            .unwrap_err()
            .to_string()
            .contains("minimum is 6 MiB")
    );
    let mut o = w.opts(&["true"]);
    o.cpus = Some(1000.0);
    assert!(
        w.mgr
            .create(&o)
            .unwrap_err()
            .to_string()
            .contains("range of CPUs")
    );
    // Raising a hard ulimit needs CAP_SYS_RESOURCE, which root lacks here.
    let mut o = w.opts(&["true"]);
    o.ulimits = vec![Ulimit {
        name: "nofile".into(),
        soft: 1 << 30,
        hard: 1 << 30,
    }];
    let e = w.mgr.create(&o).unwrap_err();
    assert!(e.to_string().contains("CAP_SYS_RESOURCE"), "{e}");
    check_empty(&w);
    // Duplicate name.
    let mut o = w.opts(&["true"]);
    o.name = Some("dup".into());
    w.mgr.create(&o).unwrap();
    assert!(matches!(w.mgr.create(&o), Err(Error::NameInUse(_))));
}

#[test]
fn two_managers_side_by_side_do_not_collide() {
    let a = World::new(RuntimeKind::Builtin);
    let b = World::new(RuntimeKind::Builtin);
    let mut o = a.opts(&["sleep", "30"]);
    o.name = Some("same".into());
    let ca = a.mgr.create(&o).unwrap();
    let cb = b.mgr.create(&o).unwrap();
    assert_ne!(ca.state.cgroup_path, cb.state.cgroup_path);
    assert_eq!(a.mgr.list().len(), 1);
    assert_eq!(b.mgr.list().len(), 1);
    a.mgr.remove("same", true).unwrap();
    assert_eq!(b.mgr.inspect("same").unwrap().status, Status::Created);
}

/// Records what the network hook saw.
struct RecordingHook {
    seen: std::sync::Mutex<Vec<(String, u64, Status)>>,
    mgr_dir: std::path::PathBuf,
}

impl dcpp_runtime::container::NetworkHook for RecordingHook {
    fn attach(
        &self,
        id: &str,
        _name: &str,
        netns: &std::path::Path,
    ) -> Result<(), dcpp_runtime::container::HookError> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(netns)?.ino();
        // The process must not have started yet: monitor.json has no start time.
        let mon = std::fs::read_to_string(
            self.mgr_dir
                .join("containers")
                .join(id)
                .join("monitor.json"),
        )
        .unwrap();
        let started = mon.contains("\"started_at\":\"");
        let st = if started {
            Status::Running
        } else {
            Status::Created
        };
        self.seen.lock().unwrap().push((id.to_string(), ino, st));
        Ok(())
    }
    fn detach(&self, _id: &str, _name: &str) {}
}

#[test]
fn network_hook_sees_the_netns_before_start() {
    let w = World::new(RuntimeKind::Builtin);
    let hook = std::sync::Arc::new(RecordingHook {
        seen: Default::default(),
        mgr_dir: w.tmp.path().join("data"),
    });
    let mgr =
        dcpp_runtime::container::ContainerManager::open(dcpp_runtime::container::ManagerOptions {
            data_dir: w.tmp.path().join("data"),
            cgroup_parent: w.cgroup_parent.clone(),
            runtime: RuntimeKind::Builtin,
            shim: container_util::shim(),
            network_hook: Some(hook.clone()),
        })
        .unwrap();
    let c = mgr
        .create(&w.opts(&["sh", "-c", "stat -L -c %i /proc/self/ns/net"]))
        .unwrap();
    mgr.start(&c.state.id).unwrap();
    mgr.wait(&c.state.id, Some(Duration::from_secs(20)))
        .unwrap()
        .unwrap();
    let out: String = mgr
        .logs(&c.state.id)
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect();
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].2, Status::Created);
    assert_eq!(out.trim(), seen[0].1.to_string(), "hook got another netns");
    mgr.remove(&c.state.id, false).unwrap();
}

#[test]
fn killed_monitor_is_reported_dead_and_rm_cleans_up() {
    let w = World::new(RuntimeKind::Builtin);
    let c = w.mgr.create(&w.opts(&["sleep", "30"])).unwrap();
    w.mgr.start(&c.state.id).unwrap();
    let mon: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle.join("monitor.json")).unwrap()).unwrap();
    let monitor = mon["monitor_pid"].as_i64().unwrap() as i32;
    let init = mon["init_pid"].as_i64().unwrap() as i32;
    // A monitor killed from outside (OOM killer, admin): the container outlives it.
    std::process::Command::new("kill")
        .args(["-9", &monitor.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.mgr.inspect(&c.state.id).unwrap().status != Status::Dead && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(w.mgr.inspect(&c.state.id).unwrap().status, Status::Dead);
    w.mgr.remove(&c.state.id, false).unwrap();
    // The orphaned container process went with its cgroup.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{init}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{init}/stat"))
            .unwrap_or_default()
            .contains(") Z")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "container process survived: {stat}"
    );
}

#[test]
fn names_are_claimed_released_and_indexed_for_an_old_data_dir() {
    let w = World::new(RuntimeKind::Builtin);
    let names = w.tmp.path().join("data/containers/.names");
    let mut o = w.opts(&["true"]);
    o.name = Some("web".into());
    let first = w.mgr.create(&o).unwrap();
    assert_eq!(
        std::fs::read_to_string(names.join("web")).unwrap(),
        first.state.id
    );
    assert_eq!(w.mgr.resolve("web").unwrap().id, first.state.id);
    // Removing the container frees its name.
    w.mgr.remove("web", true).unwrap();
    assert!(!names.join("web").exists());
    assert!(matches!(w.mgr.resolve("web"), Err(Error::NotFound(_))));
    let second = w.mgr.create(&o).unwrap();
    assert_ne!(second.state.id, first.state.id);
    // An entry whose container is gone (its monitor removed it) does not hold the name.
    std::fs::write(names.join("ghost"), "f".repeat(64)).unwrap();
    o.name = Some("ghost".into());
    w.mgr.create(&o).unwrap();
    // A data dir from before the index: a manager opening it indexes what is there.
    std::fs::remove_dir_all(&names).unwrap();
    let again = World::manager(w.tmp.path(), &w.cgroup_parent, RuntimeKind::Builtin);
    assert_eq!(again.resolve("web").unwrap().id, second.state.id);
    o.name = Some("web".into());
    assert!(matches!(again.create(&o), Err(Error::NameInUse(_))));
    assert!(matches!(w.mgr.create(&o), Err(Error::NameInUse(_))));
}
