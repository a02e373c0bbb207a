//! `exec`: a separate short-lived program that joins a running container, so it shares nothing
//! with the monitor but the on-disk state it reads.

use super::executor::{Never, cstr, finalize_process, lookup, path_cstr, show_as};
use super::*;

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

pub(crate) fn exec_main(dir: &Path, req_json: &str) -> i32 {
    match exec_inner(dir, req_json) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            126
        }
    }
}

pub(crate) fn exec_inner(dir: &Path, req_json: &str) -> Res<i32> {
    let req: ExecRequest = serde_json::from_str(req_json).map_err(ShimError::ExecRequest)?;
    let cfg: ShimConfig = read_json(&dir.join("shim.json"))?;
    let mut spec: Spec = read_json(&dir.join("config.json"))?;
    let mon: MonitorInfo = read_json(&dir.join("monitor.json"))?;
    if !crate::container::util::process_alive(mon.init_pid, mon.init_start_time) {
        return Err(ShimError::NotRunning);
    }
    let hier = Hierarchy::detect()?;
    hier.join_self(&cfg.cgroup_path)?;
    let pid = mon.init_pid;
    let mut ns_files = Vec::new();
    for (kind, flag) in [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{kind}"))
            .map_err(|source| ShimError::OpenNamespaceOf { kind, source })?;
        ns_files.push((f, flag, kind));
    }
    for (f, flag, kind) in &ns_files {
        nix::sched::setns(f, *flag)
            .map_err(|source| ShimError::JoinNamespaceOf { kind, source })?;
    }
    drop(ns_files);
    let process = spec.process_mut().as_mut().ok_or(ShimError::NoProcess)?;
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
    match unsafe { nix::unistd::fork() }.map_err(ShimError::sys("fork"))? {
        nix::unistd::ForkResult::Child => {
            let err = (|| -> Res<Never> {
                // Until the exec below, this process is visible in the container as
                // `dcpp-shim exec <data dir>/…` with the daemon's environment.
                let shown: Vec<&str> = req.args.iter().map(String::as_str).collect();
                show_as(&shown)?;
                nix::unistd::chdir(&cwd).map_err(|source| ShimError::Chdir {
                    path: cwd.clone(),
                    source,
                })?;
                let exe = lookup(&req.args, &env)?;
                finalize_process(&spec)?;
                let a: Vec<CString> = req.args.iter().map(|s| cstr(s)).collect::<Res<_>>()?;
                let e: Vec<CString> = env.iter().map(|s| cstr(s)).collect::<Res<_>>()?;
                let source = nix::unistd::execve(&path_cstr(&exe)?, &a, &e).unwrap_err();
                Err(ShimError::Exec {
                    program: PathBuf::from(&req.args[0]),
                    source,
                })
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
                Err(e) => return Err(ShimError::sys("waitpid")(e)),
            }
        },
    }
}
