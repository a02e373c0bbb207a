//! Turning the spec's process into an exec: limits, sysctls, identity and the argv shown to the
//! container, kept together because they must all happen after the rootfs and before exec.

use super::*;

pub(crate) fn path_cstr(p: &Path) -> Res<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| ShimError::NulInPath { path: p.to_owned() })
}

pub(crate) fn cstr(s: &str) -> Res<CString> {
    CString::new(s).map_err(|_| ShimError::NulInString {
        value: s.to_owned(),
    })
}

/// User, capabilities, no_new_privs and seccomp: the last steps before exec.
pub(crate) fn finalize_process(spec: &Spec) -> Res<()> {
    let process = spec.process().as_ref().ok_or(ShimError::NoProcess)?;
    // While still root with every capability: lowering the score needs CAP_SYS_RESOURCE.
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(ShimError::os("setting oom_score_adj"))?;
    }
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
                    .map_err(|source| ShimError::DropBounding { cap, source })?;
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
    nix::unistd::setgroups(&gids).map_err(ShimError::sys("setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|source| ShimError::SetGid {
        gid: user.gid(),
        source,
    })?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|source| ShimError::SetUid {
        uid: user.uid(),
        source,
    })?;
    if let Some(c) = &caps {
        let map = ShimError::Capabilities;
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
            return Err(ShimError::last_os("no_new_privs"));
        }
    }
    if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) {
        for prog in seccomp::compile(&profile)? {
            seccompiler::apply_filter(&prog).map_err(ShimError::InstallSeccomp)?;
        }
    }
    Ok(())
}

/// What the init process calls itself inside the container (docker's is `/sbin/docker-init`).
pub(crate) const INIT_ARGV0: &str = "/sbin/dcpp-init";

/// Makes `/proc/self/cmdline` show `argv` (truncated to the space the kernel gave the
/// original arguments), `/proc/self/environ` show nothing and `comm` show the base name of
/// `argv[0]`, instead of the shim's own command line (`dcpp-shim create <data dir>/containers/
/// <id>`) and the daemon's environment: a process in the container must not tell it where the
/// host keeps it. The kernel reads both from this process's memory (the areas it set up at exec,
/// on the stack), so they are overwritten in place: moving them with `PR_SET_MM` would need
/// CAP_SYS_RESOURCE, which a root without it (as in some sandboxes) lacks. After this, libc's
/// `environ` holds empty strings: callers pass environments explicitly from here on.
pub(crate) fn show_as(argv: &[&str]) -> Res<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(ShimError::os("reading /proc/self/stat"))?;
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
        return Err(ShimError::ArgArea("no"));
    };
    if arg_end <= arg_start || env_end < env_start {
        return Err(ShimError::ArgArea("inconsistent"));
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
pub(crate) fn run_init(exe: &Path, args: &[CString], env: &[CString], ctl: RawFd) -> Res<Never> {
    let mut all = nix::sys::signal::SigSet::all();
    all.remove(nix::sys::signal::Signal::SIGKILL);
    all.remove(nix::sys::signal::Signal::SIGSTOP);
    let old = all
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)
        .map_err(ShimError::sys("sigprocmask"))?;
    // SAFETY: single-threaded process; the child only restores its mask and execs.
    let child = match unsafe { nix::unistd::fork() }.map_err(ShimError::sys("fork"))? {
        nix::unistd::ForkResult::Child => {
            let _ = old.thread_set_mask();
            let e = match path_cstr(exe) {
                Ok(p) => ShimError::Exec {
                    program: exe.to_owned(),
                    source: nix::unistd::execve(&p, args, env).unwrap_err(),
                }
                .to_string(),
                Err(e) => format!("exec {exe:?}: {e}"),
            };
            send(ctl, MSG_ERROR, &e);
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

pub(crate) fn set_rlimit(r: &oci_spec::runtime::PosixRlimit) -> Res<()> {
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
        return Err(ShimError::Rlimit {
            name,
            soft: r.soft(),
            hard: r.hard(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

pub(crate) fn set_sysctl(key: &str, value: &str) -> Res<()> {
    if key.split('.').any(|c| c.is_empty() || c == "..") || key.contains('/') {
        return Err(ShimError::SysctlName {
            key: key.to_owned(),
        });
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ShimError::SysctlUnknown {
                key: key.to_owned(),
            },
            _ => ShimError::SysctlOpen {
                key: key.to_owned(),
                path: path.clone(),
                source,
            },
        })?;
    f.write_all(value.as_bytes())
        .map_err(|source| ShimError::SysctlWrite {
            key: key.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Finds the executable like execvp would, with the container's PATH, inside the new root.
pub(crate) fn lookup(args: &[String], env: &[String]) -> Res<PathBuf> {
    let name = args.first().ok_or(ShimError::NoCommand)?;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        return if is_exec(Path::new(name)) {
            Ok(PathBuf::from(name))
        } else if Path::new(name).exists() {
            Err(ShimError::PermissionDenied { name: name.clone() })
        } else {
            Err(ShimError::NoSuchProgram { name: name.clone() })
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
    Err(ShimError::NotInPath { name: name.clone() })
}
