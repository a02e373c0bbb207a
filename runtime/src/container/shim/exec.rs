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
    let req: ExecRequest =
        serde_json::from_str(req_json).map_err(|e| format!("bad exec request: {e}"))?;
    let cfg: ShimConfig = read_json(&dir.join("shim.json"))?;
    let mut spec: Spec = read_json(&dir.join("config.json"))?;
    let mon: MonitorInfo = read_json(&dir.join("monitor.json"))?;
    if !crate::container::util::process_alive(mon.init_pid, mon.init_start_time) {
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
