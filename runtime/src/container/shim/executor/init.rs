//! The container init before exec: the one place that runs inside the new namespaces, in the
//! order the kernel requires (cgroup, namespaces, rootfs, pivot, wait for start).

use super::*;

/// Runs in the forked container init; returns only on failure.
pub(crate) fn container_init(
    dir: &Path,
    cfg: &ShimConfig,
    spec: &Spec,
    joined: OwnedFd,
    ctl: RawFd,
) -> ShimError {
    match container_init_inner(dir, cfg, spec, joined, ctl) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

pub(crate) enum Never {}

pub(crate) fn container_init_inner(
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
                let f = std::fs::File::open(p).map_err(|source| ShimError::OpenNamespace {
                    path: p.clone(),
                    source,
                })?;
                nix::sched::setns(&f, ns_flag(*t)).map_err(|source| ShimError::JoinNamespace {
                    path: p.clone(),
                    source,
                })?;
            }
        }
    }
    nix::sched::unshare(flags).map_err(ShimError::sys("unshare"))?;
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
    .map_err(ShimError::sys("making / private"))?;
    let rootfs = dir.join("rootfs");
    if let Some(data) = &cfg.rootfs_overlay {
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(ShimError::sys("mounting the overlay rootfs"))?;
    }
    let root = Root::open(&rootfs).map_err(ShimError::OpenRoot)?;
    for m in spec.mounts().iter().flatten() {
        mount_entry(&root, m)?;
    }
    create_devices(&root)?;
    create_spec_devices(&root, spec)?;
    let process = spec.process().as_ref().ok_or(ShimError::NoProcess)?;
    let cwd = process.cwd().clone();
    // Created inside the rootfs; the chdir below happens after pivot_root, in the new root.
    root.mkdir_all(&cwd)
        .map_err(ShimError::root("creating the working directory"))?;
    drop(root);
    let fifo = nix::fcntl::open(
        &dir.join("exec.fifo"),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(ShimError::sys("opening exec.fifo"))?;
    if let Some(h) = spec.hostname() {
        nix::unistd::sethostname(h).map_err(ShimError::sys("sethostname"))?;
    }
    if new_net {
        loopback_up()?;
    }
    let mut b = [0u8; 1];
    if std::fs::File::from(joined).read(&mut b).ok() != Some(1) || b[0] != b'J' {
        return Err(ShimError::CgroupNotJoined);
    }
    match cgroup_ns {
        Some(None) => nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(ShimError::sys("unshare(CLONE_NEWCGROUP)"))?,
        Some(Some(p)) => {
            let f = std::fs::File::open(&p).map_err(|source| ShimError::OpenNamespace {
                path: p.clone(),
                source,
            })?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWCGROUP)
                .map_err(|source| ShimError::JoinNamespace { path: p, source })?;
        }
        None => {}
    }
    nix::unistd::chdir(&rootfs).map_err(ShimError::sys("chdir rootfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(ShimError::sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(ShimError::sys("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(ShimError::sys("chdir /"))?;
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
        .map_err(ShimError::sys("remounting / read-only"))?;
    }
    for r in process.rlimits().iter().flatten() {
        set_rlimit(r)?;
    }
    nix::unistd::chdir(&cwd).map_err(|source| ShimError::WorkingDir {
        path: cwd.clone(),
        source,
    })?;
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
        .map_err(ShimError::os("waiting for start"))?;
    (&wr)
        .write_all(b"0")
        .map_err(ShimError::os("signalling start"))?;
    drop(wr);
    drop(fifo);
    send(ctl, MSG_STARTED, "");

    finalize_process(spec)?;
    let c_args: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<Res<_>>()?;
    let c_env: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Res<_>>()?;
    if cfg.init {
        run_init(&exe, &c_args, &c_env, ctl)
    } else {
        let source = nix::unistd::execve(&path_cstr(&exe)?, &c_args, &c_env).unwrap_err();
        Err(ShimError::Exec {
            program: PathBuf::from(&args[0]),
            source,
        })
    }
}
