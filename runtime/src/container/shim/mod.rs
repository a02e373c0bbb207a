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
//!
//! Three programs, each in its own home (the shape of youki's `process/` and `rootfs/`):
//!
//! - `monitor.rs` (`create`): the launcher, the monitor's setup and its supervision loop (log,
//!   control messages, reaping, `exit.json`), and the OCI runtime path.
//! - `executor/mod.rs` (in the monitor): the built-in executor's fork: cgroup, `exec.fifo`, the
//!   pid namespace, the control pipe.
//! - `executor/init.rs` (container init): namespaces, rootfs, pivot_root, waiting for `start`,
//!   exec.
//! - `executor/rootfs.rs` (container init): mounts, `/dev`, masked and read-only paths,
//!   loopback.
//! - `executor/process.rs` (container init and `exec`): identity, capabilities, seccomp,
//!   limits, sysctls, the argv the container sees, the `init: true` PID 1, `$PATH` lookup.
//! - `exec.rs` (`exec`): joining a running container to run one command.
//! - `error.rs`: [`ShimError`].
//!
//! Errors are [`ShimError`]s while they stay in one process; they cross process boundaries (init
//! to monitor, monitor to launcher, launcher to manager) as their message, which is what the
//! user reads in `dcpp` output and in `exit.json`.

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

type Res<T> = Result<T, ShimError>;

mod error;
mod exec;
mod executor;
mod monitor;

pub use error::ShimError;
pub use exec::ExecRequest;
use exec::exec_main;
use monitor::{launch, monitor_reexeced};
pub(crate) use monitor::{runtime_error, runtime_global_args};

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
    let data = std::fs::read(path).map_err(|source| ShimError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|source| ShimError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ShimError::sys("pipe"))
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
        return Err(ShimError::last_os("dup2"));
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
