//! The per-container monitor and the built-in executor.
//!
//! Runs in its own single-threaded process (the `dcpp-shim` binary, or `dcpp __shim`), so every
//! fork, unshare and mount happens outside the multi-threaded caller.
//!
//! `create DIR`: the launcher forks the monitor and waits until the container is created (or
//! failed) and exits 0 or 1 with the error on stderr. The monitor calls setsid and becomes a child
//! subreaper: it is re-parented to init when the launcher exits, so it outlives the manager (a
//! daemon killed with -9 loses nothing). It owns the container's stdout/stderr pipes, writes the
//! JSON-lines log, waits for the container's init process and records its exit in `exit.json`,
//! then cleans up the cgroup and exits. Its state is on disk, so any later process re-adopts.
//!
//! With the built-in executor the monitor forks the container init after `unshare(CLONE_NEWPID)`;
//! the init joins the cgroup, unshares the other namespaces, mounts the rootfs, pivots, and waits
//! on `exec.fifo` until `start` opens it (like runc's create/start split), then drops privileges
//! and execs. Every path it prepares inside the rootfs (mount points, `/dev`, the working
//! directory) is resolved inside it by [`super::rootpath`], image symlinks included. With
//! `init: true` the init stays ours as PID 1 but shows the container `/sbin/dcpp-init -- CMD`,
//! not the shim's command line (which names the host's data dir). With an OCI runtime the monitor
//! runs `<runtime> create` with the pipes as stdio and adopts the container init when the runtime
//! exits.
//!
//! `exec DIR JSON`: joins the container's cgroup and namespaces, forks, execs, returns the status.

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::cgroup::Hierarchy;
use super::logs::LogWriter;
use super::rootpath::{self, Root};
use super::util::{now_rfc3339, process_start_time, write_atomic};
use super::{ExitInfo, MonitorInfo, ShimConfig, seccomp};

type Res<T> = Result<T, String>;

/// Entry point of the shim process. `args` excludes the program name (and `__shim`).
pub fn main(args: Vec<OsString>) -> ! {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Descriptors leaked by the caller (a test harness's pipes, a daemon's sockets) must not be
    // held open for the container's lifetime.
    // (`monitor` is our own re-exec and is handed its descriptors.)
    if args.first().map(String::as_str) != Some("monitor") {
        // SAFETY: close_range on descriptors this fresh process has not opened itself.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    }
    let code = match args.first().map(String::as_str) {
        Some("create") if args.len() == 2 => launch(Path::new(&args[1])),
        Some("exec") if args.len() == 3 => exec_main(Path::new(&args[1]), &args[2]),
        Some("monitor") if args.len() == 6 => monitor_reexeced(&args),
        _ => {
            eprintln!("usage: dcpp-shim create DIR | exec DIR PROCESS_JSON");
            2
        }
    };
    std::process::exit(code)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Res<T> {
    let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&data).map_err(|e| format!("parsing {}: {e}", path.display()))
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn write_all_fd(fd: RawFd, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: `data[off..]` is a valid readable buffer of the given length.
        let n = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        off += n as usize;
    }
}

fn dup_onto(from: RawFd, to: RawFd) -> Res<()> {
    // SAFETY: dup2 only manipulates the descriptor table; both are plain integers.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(format!("dup2: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn devnull_stdio() {
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = dup_onto(f.as_raw_fd(), fd);
        }
    }
}

/// `create DIR`: returns the launcher's exit code.
fn launch(dir: &Path) -> i32 {
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
            eprintln!("fork: {e}");
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
                    msg = "the container monitor died during setup".into();
                }
                eprintln!("{}", msg.trim_start_matches('E'));
                1
            }
        }
    }
}

/// Control messages from the container init to the monitor, one per line.
const MSG_READY: u8 = b'R';
const MSG_STARTED: u8 = b'S';
const MSG_ERROR: u8 = b'E';

fn send(fd: RawFd, kind: u8, text: &str) {
    let mut m = vec![kind];
    m.extend(text.replace('\n', " ").as_bytes());
    m.push(b'\n');
    write_all_fd(fd, &m);
}

struct Running {
    init_pid: i32,
    /// Control pipe from the built-in init (closed at exec).
    ctl: Option<OwnedFd>,
}

fn monitor_main(dir: &Path, ready_w: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    devnull_stdio();
    let fail = |msg: String| {
        send(ready_w.as_raw_fd(), MSG_ERROR, &msg);
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
        Err(e) => return fail(format!("signalfd: {e}")),
    };
    let log = match LogWriter::open(
        dir.join("container.log"),
        cfg.log.max_size,
        cfg.log.max_files,
    ) {
        Ok(l) => l,
        Err(e) => return fail(format!("opening the log: {e}")),
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
        return fail(format!("writing monitor.json: {e}"));
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
    super::util::release_clean_file_pages();
    // SAFETY: malloc_trim only releases free heap memory (setup's) to the kernel.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    supervise(dir, &cfg, info, out_r, err_r, ctl)
}

/// Replaces this process by `<self> monitor DIR OUT ERR CTL INIT`; returns only on failure.
fn reexec_monitor(
    dir: &Path,
    out_r: &OwnedFd,
    err_r: &OwnedFd,
    ctl: Option<&OwnedFd>,
    init_pid: i32,
) -> String {
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
    let e = nix::unistd::execve(c"/proc/self/exe", &args, &env).unwrap_err();
    for fd in &keep {
        // SAFETY: restoring FD_CLOEXEC on our own descriptors.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    e.to_string()
}

/// `monitor DIR OUT ERR CTL INIT` after the re-exec.
fn monitor_reexeced(args: &[String]) -> i32 {
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
fn supervise(
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
        if let Ok(st) = read_json::<super::ContainerState>(&dir.join("state.json")) {
            super::release_image_hold(dir, &st);
        }
        super::remove_container_files(dir);
    }
    0
}

/// What the monitor undoes when the container ends: the cgroup (built-in) or the runtime's state.
fn cleanup_after_exit(dir: &Path, cfg: &ShimConfig) {
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

fn start_oci(
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
            .map_err(|e| format!("creating the working directory: {e}"))?;
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
        .map_err(|e| format!("creating {}: {e}", log.display()));
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
    let status = status.map_err(|e| format!("running {rt}: {e}"))?;
    if !status.success() {
        let msg = runtime_error(dir).unwrap_or_else(|| format!("{rt} create failed with {status}"));
        return Err(format!("{rt} create: {msg}"));
    }
    let pid = std::fs::read_to_string(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    let pid: i32 = pid
        .map_err(|e| format!("reading {}: {e}", pid_file.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("{rt} wrote a bad pid file"))?;
    Ok(Running {
        init_pid: pid,
        ctl: None,
    })
}

fn start_builtin(
    dir: &Path,
    cfg: &ShimConfig,
    spec: &Spec,
    out_w: OwnedFd,
    err_w: OwnedFd,
) -> Res<Running> {
    unsupported_namespaces(spec)?;
    let hier = Hierarchy::detect().map_err(|e| e.to_string())?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    hier.create(&cfg.cgroup_path, resources.as_ref(), cfg.privileged)
        .map_err(|e| e.to_string())?;
    let fifo = dir.join("exec.fifo");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("mkfifo: {e}"))?;
    let (ctl_r, ctl_w) = pipe()?;
    // The monitor moves the child into its cgroup while the child builds its mount namespace:
    // the first cgroup.procs write waits for an RCU grace period (~15 ms here), which is as
    // long as the rest of the setup. The child only needs to be inside before it unshares its
    // cgroup namespace (rooted where it stands) and execs; it waits for this pipe then.
    let (joined_r, joined_w) = pipe()?;
    let new_pid_ns = namespaces(spec)
        .iter()
        .any(|(t, p)| *t == LinuxNamespaceType::Pid && p.is_none());
    if new_pid_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))?;
    }
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(ctl_r);
            drop(joined_w);
            let ctl = ctl_w.as_raw_fd();
            // The container gets only its stdio: everything else the monitor holds closes at exec.
            // SAFETY: close_range only flags descriptors close-on-exec.
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                )
            };
            let res = dup_onto(out_w.as_raw_fd(), 1).and_then(|_| dup_onto(err_w.as_raw_fd(), 2));
            if let Ok(f) = std::fs::File::open("/dev/null") {
                let _ = dup_onto(f.as_raw_fd(), 0);
            }
            drop(out_w);
            drop(err_w);
            let err = match res {
                Ok(()) => container_init(dir, cfg, spec, joined_r, ctl),
                Err(e) => e,
            };
            send(ctl, MSG_ERROR, &err);
            // SAFETY: terminating the forked child without running the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ctl_w);
            drop(out_w);
            drop(err_w);
            drop(joined_r);
            let kill_child = || {
                // SAFETY: kill with a plain pid.
                unsafe { libc::kill(child.as_raw(), libc::SIGKILL) };
                let _ = nix::sys::wait::waitpid(child, None);
            };
            if let Err(e) = hier.join(&cfg.cgroup_path, child.as_raw()) {
                kill_child();
                return Err(e.to_string());
            }
            write_all_fd(joined_w.as_raw_fd(), b"J");
            drop(joined_w);
            let mut f = std::fs::File::from(ctl_r);
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while f.read(&mut b).map(|n| n == 1).unwrap_or(false) {
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            if line.first() == Some(&MSG_READY) {
                return Ok(Running {
                    init_pid: child.as_raw(),
                    ctl: Some(OwnedFd::from(f)),
                });
            }
            kill_child();
            if line.first() == Some(&MSG_ERROR) {
                Err(String::from_utf8_lossy(&line[1..]).into_owned())
            } else {
                Err("container init died during setup".into())
            }
        }
    }
}

fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

/// The built-in executor does not make time namespaces: a spec asking for one is refused
/// rather than run without it.
fn unsupported_namespaces(spec: &Spec) -> Res<()> {
    if namespaces(spec)
        .iter()
        .any(|(t, _)| *t == LinuxNamespaceType::Time)
    {
        return Err("time namespaces are not supported by the built-in executor (use --runtime runc or crun)".into());
    }
    Ok(())
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// Runs in the forked container init; returns only on failure.
fn container_init(
    dir: &Path,
    cfg: &ShimConfig,
    spec: &Spec,
    joined: OwnedFd,
    ctl: RawFd,
) -> String {
    match container_init_inner(dir, cfg, spec, joined, ctl) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn container_init_inner(
    dir: &Path,
    cfg: &ShimConfig,
    spec: &Spec,
    joined: OwnedFd,
    ctl: RawFd,
) -> Res<Never> {
    // The monitor inherits the daemon's 077 (its files in the data dir are private); what is
    // created inside the container (mount targets, working dir) gets the usual 022.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let nss = namespaces(spec);
    let mut flags = CloneFlags::empty();
    let mut cgroup_ns = None;
    for (t, path) in &nss {
        // Pid: done by the monitor before the fork. Cgroup: only once we are in our cgroup.
        if *t == LinuxNamespaceType::Pid {
            continue;
        }
        if *t == LinuxNamespaceType::Cgroup {
            cgroup_ns = Some(path.clone());
            continue;
        }
        match path {
            None => flags |= ns_flag(*t),
            Some(p) => {
                let f = std::fs::File::open(p)
                    .map_err(|e| format!("opening namespace {}: {e}", p.display()))?;
                nix::sched::setns(&f, ns_flag(*t))
                    .map_err(|e| format!("joining namespace {}: {e}", p.display()))?;
            }
        }
    }
    nix::sched::unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    let new_net = nss
        .iter()
        .any(|(t, p)| *t == LinuxNamespaceType::Network && p.is_none());
    // Through the host's /proc while it is still reachable: a /proc/sys file acts on the
    // namespaces of the process writing it, which are now the container's.
    if let Some(sysctls) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        let mut keys: Vec<_> = sysctls.iter().collect();
        keys.sort();
        for (key, value) in keys {
            set_sysctl(key, value)?;
        }
    }

    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    let rootfs = dir.join("rootfs");
    if let Some(data) = &cfg.rootfs_overlay {
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| format!("mounting the overlay rootfs: {e}"))?;
    }
    let root = Root::open(&rootfs).map_err(|e| e.to_string())?;
    for m in spec.mounts().iter().flatten() {
        mount_entry(&root, m)?;
    }
    create_devices(&root)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or("config.json has no process")?;
    let cwd = process.cwd().clone();
    // Created inside the rootfs; the chdir below happens after pivot_root, in the new root.
    root.mkdir_all(&cwd)
        .map_err(|e| format!("creating the working directory: {e}"))?;
    drop(root);
    let fifo = nix::fcntl::open(
        &dir.join("exec.fifo"),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening exec.fifo: {e}"))?;
    if let Some(h) = spec.hostname() {
        nix::unistd::sethostname(h).map_err(|e| format!("sethostname: {e}"))?;
    }
    if new_net {
        loopback_up()?;
    }
    let mut b = [0u8; 1];
    if std::fs::File::from(joined).read(&mut b).ok() != Some(1) || b[0] != b'J' {
        return Err("the monitor could not place the container in its cgroup".into());
    }
    match cgroup_ns {
        Some(None) => nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("unshare(CLONE_NEWCGROUP): {e}"))?,
        Some(Some(p)) => {
            let f = std::fs::File::open(&p)
                .map_err(|e| format!("opening namespace {}: {e}", p.display()))?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| format!("joining namespace {}: {e}", p.display()))?;
        }
        None => {}
    }
    nix::unistd::chdir(&rootfs).map_err(|e| format!("chdir rootfs: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if let Some(l) = spec.linux() {
        for p in l.masked_paths().iter().flatten() {
            mask_path(p)?;
        }
        for p in l.readonly_paths().iter().flatten() {
            readonly_path(p)?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("remounting / read-only: {e}"))?;
    }
    for r in process.rlimits().iter().flatten() {
        set_rlimit(r)?;
    }
    nix::unistd::chdir(&cwd)
        .map_err(|e| format!("chdir to working directory {}: {e}", cwd.display()))?;
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let exe = lookup(&args, &env)?;
    if cfg.init {
        // Before `start` lets anything else run in the container.
        let mut shown = vec![INIT_ARGV0, "--"];
        shown.extend(args.iter().map(String::as_str));
        show_as(&shown)?;
    }
    send(ctl, MSG_READY, "");

    // Block until `start` opens the fifo for reading.
    let wr = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", fifo.as_raw_fd()))
        .map_err(|e| format!("waiting for start: {e}"))?;
    (&wr)
        .write_all(b"0")
        .map_err(|e| format!("signalling start: {e}"))?;
    drop(wr);
    drop(fifo);
    send(ctl, MSG_STARTED, "");

    finalize_process(spec)?;
    let c_args: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<Res<_>>()?;
    let c_env: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Res<_>>()?;
    if cfg.init {
        run_init(&exe, &c_args, &c_env, ctl)
    } else {
        let e = nix::unistd::execve(&path_cstr(&exe)?, &c_args, &c_env).unwrap_err();
        Err(format!("exec {:?}: {e}", args[0]))
    }
}

fn path_cstr(p: &Path) -> Res<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", p.display()))
}

fn cstr(s: &str) -> Res<CString> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// User, capabilities, no_new_privs and seccomp: the last steps before exec.
fn finalize_process(spec: &Spec) -> Res<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or("config.json has no process")?;
    let caps = process.capabilities().clone();
    let to_set = |c: &Option<oci_spec::runtime::Capabilities>| -> caps::CapsHashSet {
        c.iter()
            .flatten()
            .filter_map(|c| {
                serde_json::to_value(c)
                    .ok()?
                    .as_str()?
                    .parse::<caps::Capability>()
                    .ok()
            })
            .collect()
    };
    if let Some(c) = &caps {
        let bounding = to_set(c.bounding());
        for cap in caps::all() {
            if !bounding.contains(&cap) {
                caps::drop(None, caps::CapSet::Bounding, cap)
                    .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
            }
        }
    }
    let user = process.user();
    // The container's processes get the spec's umask, else 022 as with runc and docker (not the
    // monitor's 077).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        user.umask().unwrap_or(0o022),
    ));
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(|e| format!("setgroups: {e}"))?;
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {}: {e}", user.gid()))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {}: {e}", user.uid()))?;
    if let Some(c) = &caps {
        let map = |e: caps::errors::CapsError| format!("setting capabilities: {e}");
        // Effective first: the kernel refuses a permitted set that no longer covers effective.
        caps::set(None, caps::CapSet::Inheritable, &to_set(c.inheritable())).map_err(map)?;
        caps::set(None, caps::CapSet::Effective, &to_set(c.effective())).map_err(map)?;
        caps::set(None, caps::CapSet::Permitted, &to_set(c.permitted())).map_err(map)?;
        caps::clear(None, caps::CapSet::Ambient).map_err(map)?;
        for a in to_set(c.ambient()) {
            caps::raise(None, caps::CapSet::Ambient, a).map_err(map)?;
        }
    }
    if process.no_new_privileges().unwrap_or(false) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) {
        for prog in seccomp::compile(&profile).map_err(|e| e.to_string())? {
            seccompiler::apply_filter(&prog)
                .map_err(|e| format!("installing seccomp filter: {e}"))?;
        }
    }
    Ok(())
}

/// What the init process calls itself inside the container (docker's is `/sbin/docker-init`).
const INIT_ARGV0: &str = "/sbin/dcpp-init";

/// Makes `/proc/self/cmdline` show `argv` (truncated to the space the kernel gave the
/// original arguments), `/proc/self/environ` show nothing and `comm` show the base name of
/// `argv[0]`, instead of the shim's own command line (`dcpp-shim create <data dir>/containers/
/// <id>`) and the daemon's environment: a process in the container must not tell it where the
/// host keeps it. The kernel reads both from this process's memory (the areas it set up at exec,
/// on the stack), so they are overwritten in place: moving them with `PR_SET_MM` would need
/// CAP_SYS_RESOURCE, which a root without it (as in some sandboxes) lacks. After this, libc's
/// `environ` holds empty strings: callers pass environments explicitly from here on.
fn show_as(argv: &[&str]) -> Res<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| format!("reading /proc/self/stat: {e}"))?;
    // Fields 48-51 (arg_start, arg_end, env_start, env_end), counted after the command name.
    let bounds: Vec<usize> = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .unwrap_or_default()
        .split_whitespace()
        .skip(45)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [arg_start, arg_end, env_start, env_end] = bounds[..] else {
        return Err("/proc/self/stat has no argument area bounds".into());
    };
    if arg_end <= arg_start || env_end < env_start {
        return Err("/proc/self/stat has inconsistent argument area bounds".into());
    }
    let mut area = vec![0u8; arg_end - arg_start];
    let mut at = 0;
    for a in argv {
        // Keep at least the final NUL: the kernel reads a non-NUL last byte as setproctitle.
        let room = area.len() - 1 - at;
        let n = a.len().min(room);
        area[at..at + n].copy_from_slice(&a.as_bytes()[..n]);
        at += n;
        if at + 1 >= area.len() {
            break;
        }
        at += 1;
    }
    // SAFETY: both ranges are this process's own argument and environment strings as the kernel
    // reports them: writable stack memory set up at exec, of exactly these lengths. Nothing
    // holds references to them as Rust strings (std copied the arguments it needed); libc's
    // pointers into the environment keep pointing at valid, now empty, C strings.
    unsafe {
        std::ptr::copy_nonoverlapping(area.as_ptr(), arg_start as *mut u8, area.len());
        std::ptr::write_bytes(env_start as *mut u8, 0, env_end - env_start);
    }
    let name = Path::new(argv.first().copied().unwrap_or("init"))
        .file_name()
        .map(|n| n.as_encoded_bytes().to_vec())
        .unwrap_or_default();
    if let Ok(name) = CString::new(name) {
        // SAFETY: PR_SET_NAME copies at most 16 bytes from a valid C string.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
    Ok(())
}

/// `init: true`: PID 1 stays ours, forks the command, forwards signals to it and reaps zombies.
fn run_init(exe: &Path, args: &[CString], env: &[CString], ctl: RawFd) -> Res<Never> {
    let mut all = nix::sys::signal::SigSet::all();
    all.remove(nix::sys::signal::Signal::SIGKILL);
    all.remove(nix::sys::signal::Signal::SIGSTOP);
    let old = all
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)
        .map_err(|e| format!("sigprocmask: {e}"))?;
    // SAFETY: single-threaded process; the child only restores its mask and execs.
    let child = match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            let _ = old.thread_set_mask();
            let e = match path_cstr(exe) {
                Ok(p) => nix::unistd::execve(&p, args, env).unwrap_err().to_string(),
                Err(e) => e,
            };
            send(ctl, MSG_ERROR, &format!("exec {:?}: {e}", exe));
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(127) }
        }
        nix::unistd::ForkResult::Parent { child } => child.as_raw(),
    };
    // SAFETY: closing our copy of the control pipe; nothing else uses this descriptor here.
    unsafe { libc::close(ctl) };
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig == nix::sys::signal::Signal::SIGCHLD {
            loop {
                let mut st = 0;
                // SAFETY: waitpid with a valid out pointer.
                let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    let code = if libc::WIFEXITED(st) {
                        libc::WEXITSTATUS(st)
                    } else {
                        128 + libc::WTERMSIG(st)
                    };
                    // SAFETY: terminating PID 1 of the container with the command's status.
                    unsafe { libc::_exit(code) }
                }
            }
        } else {
            // SAFETY: kill with a plain pid and signal number.
            unsafe { libc::kill(child, sig as i32) };
        }
    }
}

fn set_rlimit(r: &oci_spec::runtime::PosixRlimit) -> Res<()> {
    use oci_spec::runtime::PosixRlimitType as T;
    let (res, name) = match r.typ() {
        T::RlimitCpu => (libc::RLIMIT_CPU, "cpu"),
        T::RlimitFsize => (libc::RLIMIT_FSIZE, "fsize"),
        T::RlimitData => (libc::RLIMIT_DATA, "data"),
        T::RlimitStack => (libc::RLIMIT_STACK, "stack"),
        T::RlimitCore => (libc::RLIMIT_CORE, "core"),
        T::RlimitRss => (libc::RLIMIT_RSS, "rss"),
        T::RlimitNproc => (libc::RLIMIT_NPROC, "nproc"),
        T::RlimitNofile => (libc::RLIMIT_NOFILE, "nofile"),
        T::RlimitMemlock => (libc::RLIMIT_MEMLOCK, "memlock"),
        T::RlimitAs => (libc::RLIMIT_AS, "as"),
        T::RlimitLocks => (libc::RLIMIT_LOCKS, "locks"),
        T::RlimitSigpending => (libc::RLIMIT_SIGPENDING, "sigpending"),
        T::RlimitMsgqueue => (libc::RLIMIT_MSGQUEUE, "msgqueue"),
        T::RlimitNice => (libc::RLIMIT_NICE, "nice"),
        T::RlimitRtprio => (libc::RLIMIT_RTPRIO, "rtprio"),
        T::RlimitRttime => (libc::RLIMIT_RTTIME, "rttime"),
    };
    let lim = libc::rlimit {
        rlim_cur: r.soft(),
        rlim_max: r.hard(),
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(res, &lim) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "setting ulimit {name}={}:{}: {e} (raising a hard limit needs CAP_SYS_RESOURCE)",
            r.soft(),
            r.hard()
        ));
    }
    Ok(())
}

fn set_sysctl(key: &str, value: &str) -> Res<()> {
    if key.split('.').any(|c| c.is_empty() || c == "..") || key.contains('/') {
        return Err(format!("invalid sysctl name {key:?}"));
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("sysctl {key}: no such kernel parameter in the container's namespaces")
            }
            _ => format!("sysctl {key}: opening {path}: {e}"),
        })?;
    f.write_all(value.as_bytes())
        .map_err(|e| format!("sysctl {key}={value}: {e}"))
}

/// Finds the executable like execvp would, with the container's PATH, inside the new root.
fn lookup(args: &[String], env: &[String]) -> Res<PathBuf> {
    let name = args.first().ok_or("no command specified")?;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        return if is_exec(Path::new(name)) {
            Ok(PathBuf::from(name))
        } else if Path::new(name).exists() {
            Err(format!("exec: {name:?}: permission denied"))
        } else {
            Err(format!("exec: {name:?}: no such file or directory"))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for d in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(d).join(name);
        if is_exec(&p) {
            return Ok(p);
        }
    }
    Err(format!(
        "exec: {name:?}: executable file not found in $PATH"
    ))
}

fn loopback_up() -> Res<()> {
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(format!(
            "reading lo flags: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(format!(
            "bringing lo up: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Refuses mount destinations with `..`: docker and runc do too, and a mount must cover the
/// name the user wrote, not one a `..` walked to.
fn check_destination(dest: &Path) -> Res<()> {
    if dest
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "mount destination {} contains '..'",
            dest.display()
        ));
    }
    Ok(())
}

fn parse_mount_options(opts: &[String]) -> (MsFlags, MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "suid" | "dev" | "exec" | "defaults" => {}
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" => propagation |= MsFlags::MS_PRIVATE,
            "rprivate" => propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => propagation |= MsFlags::MS_SLAVE,
            "rslave" => propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" => propagation |= MsFlags::MS_SHARED,
            "rshared" => propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data)
}

fn mount_entry(root: &Root, m: &oci_spec::runtime::Mount) -> Res<()> {
    check_destination(m.destination())?;
    let typ = m.typ().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let is_bind = typ == "bind" || flags.contains(MsFlags::MS_BIND);
    let source = m.source().clone().unwrap_or_default();
    let source_is_file = is_bind
        && std::fs::metadata(&source)
            .map(|md| !md.is_dir())
            .unwrap_or(false);
    // Resolved inside the rootfs, and mounted onto the descriptor: an image symlink on the way
    // (`/mnt` -> a host directory) can neither take the mount nor the mkdirs out of it.
    let kind = if source_is_file {
        rootpath::Kind::File
    } else {
        rootpath::Kind::Directory
    };
    let target = root
        .mount_point(m.destination(), kind)
        .map_err(|e| format!("creating mount point: {e}"))?;
    let dest = rootpath::fd_path(&target);
    let err = |e: nix::Error| format!("mounting {} on {}: {e}", typ, m.destination().display());
    // `target` is the covered mount point; a remount or propagation change acts on the new
    // mount, which a fresh resolution (crossing into it) names.
    let mounted = || {
        root.resolve(m.destination())
            .map_err(|e| format!("mounting {typ}: {e}"))
    };
    if is_bind {
        mount(
            Some(&source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | (flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(err)?;
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            let new = mounted()?;
            mount(
                None::<&str>,
                &rootpath::fd_path(&new),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            )
            .map_err(err)?;
        }
    } else {
        let data = data.join(",");
        mount(
            Some(&source),
            &dest,
            Some(typ.as_str()),
            flags,
            if data.is_empty() {
                None
            } else {
                Some(data.as_str())
            },
        )
        .map_err(err)?;
    }
    if !propagation.is_empty() {
        let new = mounted()?;
        mount(
            None::<&str>,
            &rootpath::fd_path(&new),
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

fn create_devices(root: &Root) -> Res<()> {
    let dev = root
        .mkdir_all(Path::new("/dev"))
        .map_err(|e| format!("creating /dev: {e}"))?;
    let at = |name: &str| -> Res<CString> { cstr(name) };
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let c = at(name)?;
        // SAFETY: unlinkat/mknodat/fchmodat on a directory descriptor with a valid C string;
        // none follows a symlink in the last component (fchmodat is given the new node).
        let rc = unsafe {
            libc::unlinkat(dev.as_raw_fd(), c.as_ptr(), 0);
            libc::mknodat(
                dev.as_raw_fd(),
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mknod /dev/{name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // mknod honours the umask; the nodes must be world-usable.
        // SAFETY: as above; the node was just created by us and is not a symlink.
        if unsafe { libc::fchmodat(dev.as_raw_fd(), c.as_ptr(), 0o666, 0) } != 0 {
            return Err(format!(
                "chmod /dev/{name}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let (l, t) = (at(link)?, at(target)?);
        // SAFETY: unlinkat/symlinkat on a directory descriptor with valid C strings.
        let rc = unsafe {
            libc::unlinkat(dev.as_raw_fd(), l.as_ptr(), 0);
            libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), l.as_ptr())
        };
        if rc != 0 {
            return Err(format!(
                "symlink /dev/{link}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn mask_path(p: &str) -> Res<()> {
    let md = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.map_err(|e| format!("masking {p}: {e}"))
}

fn readonly_path(p: &str) -> Res<()> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|_| {
        mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
    })
    .map_err(|e| format!("making {p} read-only: {e}"))
}

/// What `exec` runs; the rest comes from the container's config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Command and arguments.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory (the container's when absent).
    pub cwd: Option<String>,
    /// Numeric `uid:gid` (the container's user when absent).
    pub user: Option<(u32, u32)>,
}

fn exec_main(dir: &Path, req_json: &str) -> i32 {
    match exec_inner(dir, req_json) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            126
        }
    }
}

fn exec_inner(dir: &Path, req_json: &str) -> Res<i32> {
    let req: ExecRequest =
        serde_json::from_str(req_json).map_err(|e| format!("bad exec request: {e}"))?;
    let cfg: ShimConfig = read_json(&dir.join("shim.json"))?;
    let mut spec: Spec = read_json(&dir.join("config.json"))?;
    let mon: MonitorInfo = read_json(&dir.join("monitor.json"))?;
    if !super::util::process_alive(mon.init_pid, mon.init_start_time) {
        return Err("container is not running".into());
    }
    let hier = Hierarchy::detect().map_err(|e| e.to_string())?;
    hier.join_self(&cfg.cgroup_path)
        .map_err(|e| e.to_string())?;
    let pid = mon.init_pid;
    let mut ns_files = Vec::new();
    for (name, flag) in [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{name}"))
            .map_err(|e| format!("opening {name} namespace: {e}"))?;
        ns_files.push((f, flag, name));
    }
    for (f, flag, name) in &ns_files {
        nix::sched::setns(f, *flag).map_err(|e| format!("joining {name} namespace: {e}"))?;
    }
    drop(ns_files);
    let process = spec
        .process_mut()
        .as_mut()
        .ok_or("config.json has no process")?;
    let mut env = process.env().clone().unwrap_or_default();
    for e in &req.env {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let cwd = req
        .cwd
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| process.cwd().clone());
    if let Some((uid, gid)) = req.user {
        let mut u = process.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        process.set_user(u);
    }
    // SAFETY: the shim is single-threaded; the child execs or exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            let err = (|| -> Res<Never> {
                // Until the exec below, this process is visible in the container as
                // `dcpp-shim exec <data dir>/…` with the daemon's environment.
                let shown: Vec<&str> = req.args.iter().map(String::as_str).collect();
                show_as(&shown)?;
                nix::unistd::chdir(&cwd).map_err(|e| format!("chdir {}: {e}", cwd.display()))?;
                let exe = lookup(&req.args, &env)?;
                finalize_process(&spec)?;
                let a: Vec<CString> = req.args.iter().map(|s| cstr(s)).collect::<Res<_>>()?;
                let e: Vec<CString> = env.iter().map(|s| cstr(s)).collect::<Res<_>>()?;
                let err = nix::unistd::execve(&path_cstr(&exe)?, &a, &e).unwrap_err();
                Err(format!("exec {:?}: {err}", req.args[0]))
            })();
            match err {
                Err(e) => eprintln!("{e}"),
                Ok(never) => match never {},
            }
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(126) }
        }
        nix::unistd::ForkResult::Parent { child } => loop {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    #[test]
    fn a_time_namespace_is_refused_not_dropped() {
        let spec = |types: &[LinuxNamespaceType]| {
            let ns = types
                .iter()
                .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
                .collect::<Vec<_>>();
            SpecBuilder::default()
                .linux(LinuxBuilder::default().namespaces(ns).build().unwrap())
                .build()
                .unwrap()
        };
        let ok = spec(&[LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]);
        assert!(unsupported_namespaces(&ok).is_ok());
        let time = spec(&[LinuxNamespaceType::Pid, LinuxNamespaceType::Time]);
        let e = unsupported_namespaces(&time).unwrap_err();
        assert!(e.contains("time namespaces are not supported"), "{e}");
    }
}
