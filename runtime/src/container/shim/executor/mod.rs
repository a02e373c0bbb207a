//! The built-in executor: what the monitor forks instead of calling an OCI runtime, kept apart so
//! the namespace plan can be read (and unit-tested) without the fork and mount code around it.

use super::*;

mod init;
mod process;
mod rootfs;

pub(crate) use super::monitor::{MSG_ERROR, MSG_READY, MSG_STARTED, Running, send};
pub(crate) use init::*;
pub(crate) use process::*;
use rootfs::*;
pub(crate) fn start_builtin(
    dir: &Path,
    cfg: &ShimConfig,
    spec: &Spec,
    out_w: OwnedFd,
    err_w: OwnedFd,
) -> Res<Running> {
    unsupported_namespaces(spec)?;
    let hier = Hierarchy::detect()?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    hier.create(&cfg.cgroup_path, resources.as_ref(), cfg.privileged)?;
    let fifo = dir.join("exec.fifo");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(ShimError::sys("mkfifo"))?;
    let (ctl_r, ctl_w) = pipe()?;
    // The monitor moves the child into its cgroup while the child builds its mount namespace:
    // the first cgroup.procs write waits for an RCU grace period (~15 ms here), which is as
    // long as the rest of the setup. The child only needs to be inside before it unshares its
    // cgroup namespace (rooted where it stands) and execs; it waits for this pipe then.
    let (joined_r, joined_w) = pipe()?;
    // A PID namespace, new or joined, holds only the children of the process that entered it
    // (unshare and setns change `pid_for_children`): so the monitor enters it and the forked
    // init is the first process inside (or a new one in a joined namespace).
    match namespaces(spec)
        .into_iter()
        .find(|(t, _)| *t == LinuxNamespaceType::Pid)
    {
        Some((_, None)) => nix::sched::unshare(CloneFlags::CLONE_NEWPID)
            .map_err(ShimError::sys("unshare(CLONE_NEWPID)"))?,
        Some((_, Some(p))) => {
            let f = std::fs::File::open(&p).map_err(|source| ShimError::OpenNamespace {
                path: p.clone(),
                source,
            })?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWPID)
                .map_err(|source| ShimError::JoinNamespace { path: p, source })?;
        }
        None => {}
    }
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(ShimError::sys("fork"))? {
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
            send(ctl, MSG_ERROR, &err.to_string());
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
                return Err(e.into());
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
                Err(ShimError::Init(
                    String::from_utf8_lossy(&line[1..]).into_owned(),
                ))
            } else {
                Err(ShimError::InitDied)
            }
        }
    }
}

pub(crate) fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
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
pub(crate) fn unsupported_namespaces(spec: &Spec) -> Res<()> {
    if namespaces(spec)
        .iter()
        .any(|(t, _)| *t == LinuxNamespaceType::Time)
    {
        return Err(ShimError::TimeNamespace);
    }
    Ok(())
}

pub(crate) fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
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
        let e = unsupported_namespaces(&time).unwrap_err().to_string();
        assert!(e.contains("time namespaces are not supported"), "{e}");
    }
}
