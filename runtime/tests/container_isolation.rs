//! Isolation of a container, checked on the real kernel with both executors (dcpp's own and runc).

mod container_util;

use container_util::World;

both_runtimes!(pid1_and_hostname, |w| {
    let mut o = w.opts(&["sh", "-c", "echo pid=$$; hostname; cat /etc/hostname"]);
    o.hostname = Some("box1".into());
    let (exit, out) = w.run(&o);
    assert_eq!(exit.exit_code, 0, "{out}");
    assert_eq!(out, "pid=1\nbox1\nbox1\n");
});

both_runtimes!(no_host_processes_or_interfaces, |w| {
    let (exit, out) = w.sh("ls /proc | grep -E '^[0-9]+$' | wc -l; ls /sys/class/net; ip -o link | wc -l; ip -o addr show lo | grep -c 127.0.0.1");
    assert_eq!(exit.exit_code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    // sh, ls, grep, wc: a handful, never the host's hundreds.
    let procs: u32 = lines[0].trim().parse().unwrap();
    assert!(procs <= 5, "saw {procs} processes:\n{out}");
    assert_eq!(lines[1], "lo", "{out}");
    assert_eq!(lines[2].trim(), "1", "{out}");
    assert_eq!(lines[3].trim(), "1", "lo must be up with 127.0.0.1: {out}");
});

both_runtimes!(exit_code_and_env, |w| {
    let mut o = w.opts(&["sh", "-c", "echo $FOO $HOME $(pwd); exit 7"]);
    o.env = vec!["FOO=bar".into()];
    o.working_dir = Some("/tmp".into());
    let (exit, out) = w.run(&o);
    assert_eq!(exit.exit_code, 7);
    assert_eq!(out, "bar /root /tmp\n");
});
