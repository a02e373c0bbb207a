//! Docker-grade security defaults, checked inside real containers with both executors.

mod container_util;

use container_util::World;

/// Docker's default capability set as a CapEff mask.
const DOCKER_DEFAULT_CAPEFF: &str = "00000000a80425fb";

both_runtimes!(capeff_is_docker_default, |w| {
    let (exit, out) = w.sh("grep -E '^Cap(Eff|Bnd)' /proc/self/status; grep NoNewPrivs /proc/self/status; grep Seccomp: /proc/self/status");
    assert_eq!(exit.exit_code, 0, "{out}");
    assert!(
        out.contains(&format!("CapEff:\t{DOCKER_DEFAULT_CAPEFF}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("CapBnd:\t{DOCKER_DEFAULT_CAPEFF}")),
        "{out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
});

both_runtimes!(cap_add_and_drop, |w| {
    let mut o = w.opts(&["sh", "-c", "grep CapEff /proc/self/status"]);
    o.cap_add = vec!["NET_ADMIN".into()];
    o.cap_drop = vec!["chown".into()];
    let (_, out) = w.run(&o);
    // + CAP_NET_ADMIN (bit 12), - CAP_CHOWN (bit 0)
    let expected = 0xa80425fbu64 | (1 << 12);
    let expected = expected & !1;
    assert_eq!(out.trim(), format!("CapEff:\t{expected:016x}"));
});

both_runtimes!(non_root_user_has_no_effective_caps, |w| {
    let mut o = w.opts(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; grep CapEff /proc/self/status; echo $HOME",
    ]);
    o.user = Some("app".into());
    let (exit, out) = w.run(&o);
    assert_eq!(exit.exit_code, 0, "{out}");
    assert_eq!(
        out,
        "1000\n1000\n1000 10\nCapEff:\t0000000000000000\n/home/app\n"
    );
});

both_runtimes!(unshare_and_mount_are_refused, |w| {
    let (exit, out) = w.sh(
        "unshare -n true && echo UNSHARE-OK; mkdir -p /mnt/x; mount -t tmpfs none /mnt/x && echo MOUNT-OK; \
         echo 1 > /proc/sys/kernel/panic && echo SYSCTL-OK; cat /proc/kcore | head -c 1 | wc -c; echo end",
    );
    assert_eq!(exit.exit_code, 0, "{out}");
    assert!(
        !out.contains("UNSHARE-OK") && !out.contains("MOUNT-OK") && !out.contains("SYSCTL-OK"),
        "{out}"
    );
    // /proc/kcore is masked by /dev/null (or absent from this kernel): reads nothing.
    assert!(out.lines().any(|l| l.trim() == "0"), "{out}");
});

both_runtimes!(read_only_rootfs_refuses_writes, |w| {
    let mut o = w.opts(&[
        "sh",
        "-c",
        "touch /newfile && echo WROTE; echo hi > /dev/shm/ok && cat /dev/shm/ok",
    ]);
    o.read_only = true;
    let (_, out) = w.run(&o);
    assert!(!out.contains("WROTE"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    // /dev/shm stays writable, as in docker.
    assert!(out.contains("hi\n"), "{out}");
});

both_runtimes!(shm_size_and_dev, |w| {
    let mut o = w.opts(&["sh", "-c", "df -k /dev/shm | tail -1; ls /dev | sort | tr '\\n' ' '; echo x > /dev/null && echo null-ok"]);
    o.shm_size = Some(8 * 1024 * 1024);
    let (exit, out) = w.run(&o);
    assert_eq!(exit.exit_code, 0, "{out}");
    assert!(out.contains(" 8192 "), "shm size: {out}");
    for d in [
        "full", "null", "pts", "random", "shm", "tty", "urandom", "zero",
    ] {
        assert!(out.contains(&format!("{d} ")), "/dev/{d} missing: {out}");
    }
    assert!(out.contains("null-ok"));
});

#[test]
fn init_shows_no_host_path() {
    let w = World::new(dcpp_runtime::container::RuntimeKind::Builtin);
    let script = "tr '\\0' '|' < /proc/1/cmdline; echo; tr '\\0' '\\n' < /proc/1/environ; echo; cat /proc/1/comm";
    let mut o = w.opts(&["sh", "-c", script]);
    o.init = true;
    let (exit, out) = w.run(&o);
    assert_eq!(exit.exit_code, 0, "{out}");
    let data_dir = w.tmp.path().to_string_lossy().into_owned();
    assert!(!out.contains(&data_dir), "{out}");
    assert!(
        !out.contains("containers/") && !out.contains("shim"),
        "{out}"
    );
    let mut lines = out.lines();
    let cmdline = lines.next().unwrap_or_default().trim_end_matches('|');
    // docker shows `/sbin/docker-init -- CMD`; the shim's arguments were as long as the data
    // dir's path plus a 64-character id, so the command fits.
    assert_eq!(
        cmdline,
        format!("/sbin/dcpp-init|--|sh|-c|{script}"),
        "{out}"
    );
    // No environment of the daemon's (PID 1's environment area is blank).
    assert!(lines.all(|l| l.is_empty() || l == "dcpp-init"), "{out}");
    assert_eq!(out.lines().last(), Some("dcpp-init"), "{out}");
}

/// Denied devices stay denied through the cgroup2 device program alone: on this hybrid host the
/// test opens the container's v1 devices cgroup to everything once the container runs, so only
/// the program (attached to its cgroup in the unified hierarchy) stands between it and the
/// devices. On a pure v2 host the program is the only confinement anyway.
#[test]
fn denied_devices_through_the_cgroup2_program() {
    use dcpp_runtime::container::{Hierarchy, MountRequest, MountSource, devices};
    let w = World::new(dcpp_runtime::container::RuntimeKind::Builtin);
    let sync = w.tmp.path().join("sync");
    std::fs::create_dir_all(&sync).unwrap();
    let mut o = w.opts(&[
        "sh",
        "-c",
        "i=0; while [ ! -e /sync/go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; \
         mknod /tmp/loop b 7 0 && echo MKNOD-OK; mknod /tmp/kmsg c 1 11 && echo MKNOD2-OK; \
         head -c0 /tmp/loop || echo LOOP-DENIED; (: > /tmp/kmsg) || echo KMSG-DENIED; \
         echo x > /dev/null && echo NULL-OK",
    ]);
    o.mounts = vec![MountRequest {
        source: MountSource::Bind(sync.clone()),
        target: "/sync".into(),
        read_only: true,
    }];
    let c = w.mgr.create(&o).unwrap();
    let hier = Hierarchy::detect().unwrap();
    let unified = hier
        .unified_path(&c.state.cgroup_path)
        .expect("a cgroup2 hierarchy");
    assert_eq!(devices::attached_programs(&unified).unwrap(), 1);
    if let Hierarchy::V1 { mounts, .. } = &hier {
        let v1 = mounts["devices"].join(c.state.cgroup_path.trim_start_matches('/'));
        std::fs::write(v1.join("devices.allow"), "a").unwrap();
        assert_eq!(
            std::fs::read_to_string(v1.join("devices.list")).unwrap(),
            "a *:* rwm\n"
        );
    }
    w.mgr.start(&c.state.id).unwrap();
    std::fs::write(sync.join("go"), "").unwrap();
    let exit = w
        .mgr
        .wait(&c.state.id, Some(std::time::Duration::from_secs(60)))
        .unwrap()
        .unwrap();
    let out: String = w
        .mgr
        .logs(&c.state.id)
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect();
    assert_eq!(exit.exit_code, 0, "{out}");
    for want in [
        "MKNOD-OK",
        "MKNOD2-OK",
        "LOOP-DENIED",
        "KMSG-DENIED",
        "NULL-OK",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert_eq!(out.matches("Operation not permitted").count(), 2, "{out}");
    w.mgr.remove(&c.state.id, true).unwrap();
    assert!(
        !unified.exists(),
        "the unified cgroup is removed with the container"
    );
}
