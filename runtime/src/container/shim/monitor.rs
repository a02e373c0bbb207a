//! The monitor: outlives whoever launched the container so a dead manager loses nothing; it owns
//! the output pipes and the exit record, which is why it is a process of its own.

use super::executor::{path_cstr, start_builtin};
use super::*;

/// `create DIR`: returns the launcher's exit code.
pub(crate) fn launch(dir: &Path) -> i32 {
    let (ready_r, ready_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    // SAFETY: the shim is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("{}", ShimError::sys("fork")(e));
            1
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            let code = monitor_main(dir, ready_w);
            std::process::exit(code)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(ready_w);
            // One line: the container process inherits the write end until it execs, so EOF
            // would come only then.
            let mut f = std::fs::File::from(ready_r);
            let mut b = [0u8; 1];
            let mut line = Vec::new();
            while f.read(&mut b).map(|n| n == 1).unwrap_or(false) && b[0] != b'\n' {
                line.push(b[0]);
            }
            let mut msg = String::from_utf8_lossy(&line).into_owned();
            if msg.starts_with("OK") {
                0
            } else {
                let _ = nix::sys::wait::waitpid(child, None);
                if msg.is_empty() {
                    msg = ShimError::MonitorDied.to_string();
                }
                eprintln!("{}", msg.trim_start_matches('E'));
                1
            }
        }
    }
}

/// Control messages from the container init to the monitor, one per line.
pub(crate) const MSG_READY: u8 = b'R';
pub(crate) const MSG_STARTED: u8 = b'S';
pub(crate) const MSG_ERROR: u8 = b'E';

pub(crate) fn send(fd: RawFd, kind: u8, text: &str) {
    let mut m = vec![kind];
    m.extend(text.replace('\n', " ").as_bytes());
    m.push(b'\n');
    write_all_fd(fd, &m);
}

pub(crate) struct Running {
    pub(crate) init_pid: i32,
    /// Control pipe from the built-in init (closed at exec).
    pub(crate) ctl: Option<OwnedFd>,
}

pub(crate) fn monitor_main(dir: &Path, ready_w: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    devnull_stdio();
    let fail = |e: ShimError| {
        send(ready_w.as_raw_fd(), MSG_ERROR, &e.to_string());
        1
    };
    let cfg: ShimConfig = match read_json(&dir.join("shim.json")) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let spec: Spec = match read_json(&dir.join("config.json")) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = mask.thread_block();
    let sigfd = match nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    ) {
        Ok(s) => s,
        Err(e) => return fail(ShimError::sys("signalfd")(e)),
    };
    let log = match LogWriter::open(
        dir.join("container.log"),
        cfg.log.max_size,
        cfg.log.max_files,
    ) {
        Ok(l) => l,
        Err(e) => return fail(ShimError::os("opening the log")(e)),
    };
    let (out_r, out_w) = match pipe() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let (err_r, err_w) = match pipe() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let started = match cfg.runtime.as_deref() {
        None => start_builtin(dir, &cfg, &spec, out_w, err_w),
        Some(rt) => start_oci(dir, &cfg, &spec, rt, out_w, err_w),
    };
    let mut running = match started {
        Ok(r) => r,
        Err(e) => {
            cleanup_after_exit(dir, &cfg);
            return fail(e);
        }
    };
    let info = MonitorInfo {
        monitor_pid: std::process::id() as i32,
        monitor_start_time: process_start_time(std::process::id() as i32).unwrap_or(0),
        init_pid: running.init_pid,
        init_start_time: process_start_time(running.init_pid).unwrap_or(0),
        started_at: None,
    };
    if let Err(e) = write_atomic(
        &dir.join("monitor.json"),
        &serde_json::to_vec(&info).unwrap_or_default(),
    ) {
        // SAFETY: kill with a plain pid.
        unsafe { libc::kill(running.init_pid, libc::SIGKILL) };
        cleanup_after_exit(dir, &cfg);
        return fail(ShimError::os("writing monitor.json")(e));
    }
    write_all_fd(ready_w.as_raw_fd(), b"OK\n");
    drop(ready_w);
    drop(spec);
    drop(log);
    drop(sigfd);
    // The monitor lives as long as the container. Optionally (DCPP_SHIM_REEXEC) it re-executes
    // itself in a supervising mode: pid, children, subreaper flag, blocked SIGCHLD (and a pending
    // one) all survive execve. If the exec fails, it supervises from here.
    let ctl = running.ctl.take();
    // Measured with 100 monitors: a fresh exec maps and relocates the whole binary and ends up
    // larger (3.4 MiB RSS) than staying in the forked process after malloc_trim (2.3 MiB), so
    // the re-exec is opt-in for experiments only.
    if std::env::var_os("DCPP_SHIM_REEXEC").is_some() {
        let err = reexec_monitor(dir, &out_r, &err_r, ctl.as_ref(), running.init_pid);
        tracing::debug!("monitor re-exec failed ({err}); supervising in place");
    }
    // What the monitor keeps for the container's lifetime (measured with 100 `sleep`
    // containers): setup code and libc text touched once are dropped from its page tables
    // (2.3 MiB RSS before), then the heap setup freed goes back to the kernel.
    crate::container::util::release_clean_file_pages();
    // SAFETY: malloc_trim only releases free heap memory (setup's) to the kernel.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    supervise(dir, &cfg, info, out_r, err_r, ctl)
}

/// Replaces this process by `<self> monitor DIR OUT ERR CTL INIT`; returns only on failure.
pub(crate) fn reexec_monitor(
    dir: &Path,
    out_r: &OwnedFd,
    err_r: &OwnedFd,
    ctl: Option<&OwnedFd>,
    init_pid: i32,
) -> ShimError {
    let mut keep = vec![out_r.as_raw_fd(), err_r.as_raw_fd()];
    keep.extend(ctl.map(|c| c.as_raw_fd()));
    for fd in &keep {
        // SAFETY: clearing FD_CLOEXEC on descriptors we own, so they survive execve.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) };
    }
    let mut args: Vec<CString> = Vec::new();
    let mut orig = std::env::args_os();
    args.push(CString::new(orig.next().unwrap_or_default().as_encoded_bytes()).unwrap_or_default());
    // `dcpp __shim …` keeps its dispatch word.
    if let Some(a) = orig.next().filter(|a| a == "__shim") {
        args.push(CString::new(a.as_encoded_bytes()).unwrap_or_default());
    }
    let dir_c = match path_cstr(dir) {
        Ok(d) => d,
        Err(e) => return e,
    };
    args.push(c"monitor".to_owned());
    args.push(dir_c);
    for v in [
        out_r.as_raw_fd(),
        err_r.as_raw_fd(),
        ctl.map(|c| c.as_raw_fd()).unwrap_or(-1),
        init_pid,
    ] {
        args.push(CString::new(v.to_string()).unwrap_or_default());
    }
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let source = nix::unistd::execve(c"/proc/self/exe", &args, &env).unwrap_err();
    for fd in &keep {
        // SAFETY: restoring FD_CLOEXEC on our own descriptors.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    ShimError::Exec {
        program: PathBuf::from("/proc/self/exe"),
        source,
    }
}

/// `monitor DIR OUT ERR CTL INIT` after the re-exec.
pub(crate) fn monitor_reexeced(args: &[String]) -> i32 {
    let dir = Path::new(&args[1]);
    let num = |i: usize| args[i].parse::<i32>().unwrap_or(-1);
    let (out, err, ctl, init) = (num(2), num(3), num(4), num(5));
    if out < 0 || err < 0 || init <= 0 {
        return 2;
    }
    let Ok(cfg) = read_json::<ShimConfig>(&dir.join("shim.json")) else {
        return 1;
    };
    let Ok(info) = read_json::<MonitorInfo>(&dir.join("monitor.json")) else {
        return 1;
    };
    // SAFETY: these descriptors were handed over by the pre-exec monitor and are ours alone.
    let (out_r, err_r) = unsafe { (OwnedFd::from_raw_fd(out), OwnedFd::from_raw_fd(err)) };
    // SAFETY: as above.
    let ctl = (ctl >= 0).then(|| unsafe { OwnedFd::from_raw_fd(ctl) });
    for fd in [Some(out), Some(err), (ctl.is_some()).then_some(num(4))]
        .into_iter()
        .flatten()
    {
        // SAFETY: marking our own descriptors close-on-exec again (runc delete is exec'd later).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    supervise(dir, &cfg, info, out_r, err_r, ctl)
}

/// Pumps output into the log, follows control messages, reaps children; records the exit.
pub(crate) fn supervise(
    dir: &Path,
    cfg: &ShimConfig,
    mut info: MonitorInfo,
    out_r: OwnedFd,
    err_r: OwnedFd,
    ctl: Option<OwnedFd>,
) -> i32 {
    let mut running = Running {
        init_pid: info.init_pid,
        ctl,
    };
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = mask.thread_block();
    let Ok(sigfd) = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    ) else {
        return 1;
    };
    let Ok(mut log) = LogWriter::open(
        dir.join("container.log"),
        cfg.log.max_size,
        cfg.log.max_files,
    ) else {
        return 1;
    };
    // The child may have ended before the signalfd existed (its SIGCHLD is then pending and
    // shows up on the signalfd, but check anyway).
    let mut fds: [Option<OwnedFd>; 2] = [Some(out_r), Some(err_r)];
    let mut status: Option<i32> = None;
    let mut error: Option<String> = None;
    let mut ctl_buf = Vec::new();
    let mut drain_deadline: Option<std::time::Instant> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut who = Vec::with_capacity(4);
        for (i, fd) in fds.iter().enumerate() {
            if let Some(fd) = fd {
                pfds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                who.push(i);
            }
        }
        if let Some(c) = &running.ctl {
            pfds.push(libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            who.push(2);
        }
        if status.is_none() {
            pfds.push(libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            who.push(3);
        }
        if status.is_some()
            && (pfds.is_empty() || drain_deadline.is_some_and(|d| std::time::Instant::now() >= d))
        {
            break;
        }
        let timeout = if status.is_some() { 50 } else { -1 };
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            continue;
        }
        for (k, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            match who[k] {
                s @ (0 | 1) => {
                    // SAFETY: reading into our own buffer of the given size.
                    let r = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if r > 0 {
                        log.feed(s, &buf[..r as usize]);
                    } else if r == 0
                        || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        log.flush_partial(s);
                        fds[s] = None;
                    }
                }
                2 => {
                    // SAFETY: reading into our own buffer of the given size.
                    let r = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if r > 0 {
                        ctl_buf.extend_from_slice(&buf[..r as usize]);
                        while let Some(nl) = ctl_buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = ctl_buf.drain(..=nl).collect();
                            match line[0] {
                                MSG_STARTED => {
                                    info.started_at = Some(now_rfc3339());
                                    let _ = write_atomic(
                                        &dir.join("monitor.json"),
                                        &serde_json::to_vec(&info).unwrap_or_default(),
                                    );
                                }
                                MSG_ERROR => {
                                    let msg = String::from_utf8_lossy(&line[1..line.len() - 1])
                                        .into_owned();
                                    log.feed(1, format!("dcpp: {msg}\n").as_bytes());
                                    error = Some(msg);
                                }
                                _ => {}
                            }
                        }
                    } else {
                        running.ctl = None;
                    }
                }
                _ => {
                    while sigfd.read_signal().ok().flatten().is_some() {}
                    loop {
                        let mut st = 0;
                        // SAFETY: waitpid with a valid out pointer.
                        let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                        if pid <= 0 {
                            break;
                        }
                        if pid == running.init_pid {
                            status = Some(if libc::WIFEXITED(st) {
                                libc::WEXITSTATUS(st)
                            } else {
                                128 + libc::WTERMSIG(st)
                            });
                            drain_deadline =
                                Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
                        }
                    }
                }
            }
        }
    }
    let hier = Hierarchy::detect().ok();
    let oom = hier
        .as_ref()
        .map(|h| h.oom_kills(&cfg.cgroup_path) > 0)
        .unwrap_or(false);
    let exit = ExitInfo {
        exit_code: status.unwrap_or(-1),
        oom_killed: oom,
        finished_at: now_rfc3339(),
        error,
    };
    let _ = write_atomic(
        &dir.join("exit.json"),
        &serde_json::to_vec(&exit).unwrap_or_default(),
    );
    cleanup_after_exit(dir, cfg);
    if cfg.auto_remove {
        let st = read_json::<crate::container::ContainerState>(&dir.join("state.json"));
        if let Ok(st) = &st {
            crate::container::release_image_hold(dir, st);
        }
        crate::container::remove_container_files(dir);
        if let Ok(st) = &st {
            crate::container::release_name_entry(dir, st);
        }
    }
    0
}

/// What the monitor undoes when the container ends: the cgroup (built-in) or the runtime's state.
pub(crate) fn cleanup_after_exit(dir: &Path, cfg: &ShimConfig) {
    match cfg.runtime.as_deref() {
        None => {
            if let Ok(h) = Hierarchy::detect() {
                h.remove(&cfg.cgroup_path);
            }
        }
        Some(rt) => {
            let _ = std::process::Command::new(rt)
                .args(runtime_global_args(dir, cfg))
                .args(["delete", "--force", &cfg.id])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if let Ok(h) = Hierarchy::detect() {
                h.remove(&cfg.cgroup_path);
            }
        }
    }
    let _ = std::fs::remove_file(dir.join("exec.fifo"));
}

/// `--root` and `--log` options given to every OCI runtime invocation.
pub(crate) fn runtime_global_args(dir: &Path, cfg: &ShimConfig) -> Vec<String> {
    vec![
        "--root".into(),
        cfg.runtime_root.clone().unwrap_or_default(),
        "--log".into(),
        dir.join("runtime.log").to_string_lossy().into_owned(),
        "--log-format".into(),
        "json".into(),
    ]
}

/// The last error the OCI runtime logged (its stderr is the container's).
pub(crate) fn runtime_error(dir: &Path) -> Option<String> {
    let log = std::fs::read_to_string(dir.join("runtime.log")).ok()?;
    log.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("level")?.as_str()? == "error")
            .then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

pub(crate) fn start_oci(
    dir: &Path,
    cfg: &ShimConfig,
    spec: &Spec,
    rt: &str,
    out_w: OwnedFd,
    err_w: OwnedFd,
) -> Res<Running> {
    // The working directory is created here, inside the rootfs, as the built-in executor does:
    // runc 1.1 refuses one under an image symlink that dangles inside the root ("mkdir: file
    // exists"), which docker's images (WorkingDir under a symlinked /opt, …) must not hit.
    if let Some(p) = spec.process() {
        Root::open(&dir.join("rootfs"))
            .and_then(|root| root.mkdir_all(p.cwd()))
            .map_err(ShimError::root("creating the working directory"))?;
    }
    let pid_file = dir.join("init.pid");
    // The runtime creates mount points and the working dir inside the rootfs with the umask it
    // inherits: 022 as under docker, not the monitor's 077 (a non-root container user could not
    // traverse them). Its files in the data dir stay private: the pid file is removed once read,
    // the log is created below first, and its state dir sits under the 0700 `runtime/`.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let log = dir.join("runtime.log");
    let precreated = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log)
        .map_err(|source| ShimError::Write {
            what: "creating",
            path: log.clone(),
            source,
        });
    let status = std::process::Command::new(rt)
        .args(runtime_global_args(dir, cfg))
        .args(["create", "--bundle"])
        .arg(dir)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&cfg.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(out_w))
        .stderr(std::process::Stdio::from(err_w))
        .status();
    nix::sys::stat::umask(old_umask);
    precreated?;
    let status = status.map_err(|source| ShimError::RunRuntime {
        runtime: rt.to_owned(),
        source,
    })?;
    if !status.success() {
        let message =
            runtime_error(dir).unwrap_or_else(|| format!("{rt} create failed with {status}"));
        return Err(ShimError::RuntimeCreate {
            runtime: rt.to_owned(),
            message,
        });
    }
    let pid = std::fs::read_to_string(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    let pid: i32 = pid
        .map_err(|source| ShimError::Read {
            path: pid_file.clone(),
            source,
        })?
        .trim()
        .parse()
        .map_err(|_| ShimError::BadPidFile {
            runtime: rt.to_owned(),
        })?;
    Ok(Running {
        init_pid: pid,
        ctl: None,
    })
}
