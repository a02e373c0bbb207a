//! cgroup limits on the real kernel with both executors: OOM kill, pids limit, cpu quota, stats.

mod container_util;

use std::time::Duration;

use container_util::World;

both_runtimes!(memory_hog_is_oom_killed_and_reported, |w| {
    let mut o = w.opts(&["sh", "-c", "echo start; exec tail /dev/zero"]);
    o.memory = Some(32 * 1024 * 1024);
    let (exit, out) = w.run(&o);
    assert!(exit.oom_killed, "OOM not reported: {exit:?} {out}");
    assert_eq!(exit.exit_code, 137, "{out}");
});

both_runtimes!(fork_bomb_stops_at_pids_limit, |w| {
    let mut o = w.opts(&[
        "sh",
        "-c",
        // The bomb runs in a subshell: ash gives up when fork fails, the outer shell goes on.
        "(n=0; while [ $n -lt 60 ]; do sleep 30 & n=$((n+1)); done); echo forked; exec sleep 30",
    ]);
    o.pids_limit = Some(20);
    let c = w.mgr.create(&o).unwrap();
    w.mgr.start(&c.state.id).unwrap();
    let mut seen = 0;
    for _ in 0..100 {
        let s = w.mgr.stats(&c.state.id).unwrap();
        seen = s.pids_current;
        let log: String = w
            .mgr
            .logs(&c.state.id)
            .unwrap()
            .into_iter()
            .map(|e| e.log)
            .collect();
        if log.contains("forked") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = w.mgr.stats(&c.state.id).unwrap();
    assert_eq!(s.pids_limit, Some(20));
    assert!(
        s.pids_current <= 20 && s.pids_current >= 15,
        "pids {} (seen {seen})",
        s.pids_current
    );
    let log: String = w
        .mgr
        .logs(&c.state.id)
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect();
    assert!(
        log.contains("can't fork") || log.contains("Resource temporarily unavailable"),
        "{log}"
    );
    let info = w
        .mgr
        .stop(&c.state.id, Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(info.exit.unwrap().exit_code, 137);
});

both_runtimes!(cpu_quota_and_stats, |w| {
    let mut o = w.opts(&["sleep", "30"]);
    o.cpus = Some(0.5);
    o.cpu_shares = Some(512);
    o.memory = Some(64 * 1024 * 1024);
    let c = w.mgr.create(&o).unwrap();
    w.mgr.start(&c.state.id).unwrap();
    let cg = |ctrl: &str, file: &str| {
        let h = w.mgr.hierarchy().clone();
        let base = match h {
            dcpp_runtime::container::Hierarchy::V1 { mounts, .. } => mounts[ctrl].clone(),
            dcpp_runtime::container::Hierarchy::V2 { root } => root,
        };
        std::fs::read_to_string(
            base.join(c.state.cgroup_path.trim_start_matches('/'))
                .join(file),
        )
        .unwrap()
    };
    if matches!(
        w.mgr.hierarchy(),
        dcpp_runtime::container::Hierarchy::V1 { .. }
    ) {
        assert_eq!(cg("cpu", "cpu.cfs_quota_us").trim(), "50000");
        assert_eq!(cg("cpu", "cpu.cfs_period_us").trim(), "100000");
        assert_eq!(cg("cpu", "cpu.shares").trim(), "512");
    } else {
        assert_eq!(cg("cpu", "cpu.max").trim(), "50000 100000");
    }
    let s = w.mgr.stats(&c.state.id).unwrap();
    assert_eq!(s.memory_limit_bytes, Some(64 * 1024 * 1024));
    assert!(s.memory_usage_bytes > 0 && s.pids_current >= 1, "{s:?}");
    w.mgr
        .stop(&c.state.id, Some(Duration::from_millis(200)))
        .unwrap();
});
