//! `start`: lets a created container's process run (opens `exec.fifo` for the built-in executor,
//! runs `<runtime> start` for an OCI runtime).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    ContainerInfo, ContainerManager, Error, RuntimeKind, ShimConfig, Status, io_err, shim, util,
};

impl ContainerManager {
    /// Starts a created container's process.
    pub fn start(&self, reference: &str) -> Result<ContainerInfo, Error> {
        let mut st = self.resolve(reference)?;
        let info = self.info_of(st.clone());
        if info.status != Status::Created {
            return Err(Error::State {
                id: st.id,
                msg: format!("cannot start a container that is {}", info.status),
            });
        }
        let dir = self.dir(&st.id);
        match &RuntimeKind::parse(&st.runtime) {
            RuntimeKind::Builtin => self.open_exec_fifo(&dir, &st.id)?,
            RuntimeKind::Oci(rt) => {
                let cfg: ShimConfig = serde_json::from_slice(
                    &std::fs::read(dir.join("shim.json")).map_err(io_err("reading shim.json"))?,
                )
                .map_err(|e| Error::Create(format!("shim.json: {e}")))?;
                let out = std::process::Command::new(rt)
                    .args(shim::runtime_global_args(&dir, &cfg))
                    .args(["start", &st.id])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(io_err(format!("running {rt}")))?;
                // A container that exits at once can be reaped (and its runtime state deleted by
                // the monitor) before `start` has cleaned up its exec fifo: that is a success.
                let raced = !out.status.success()
                    && (String::from_utf8_lossy(&out.stderr).contains("exec.fifo")
                        || shim::runtime_error(&dir).is_some_and(|m| m.contains("exec.fifo")))
                    && self.wait(&st.id, Some(Duration::from_secs(2)))?.is_some();
                if !out.status.success() && !raced {
                    let msg = shim::runtime_error(&dir)
                        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
                    return Err(Error::State {
                        id: st.id,
                        msg: format!("{rt} start: {msg}"),
                    });
                }
            }
        }
        st.started_at = Some(util::now_rfc3339());
        self.write_state(&st)?;
        Ok(self.info_of(st))
    }

    fn open_exec_fifo(&self, dir: &Path, id: &str) -> Result<(), Error> {
        let fifo = dir.join("exec.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::InvalidConfig("bad path".into()))?;
        // SAFETY: open(2) with a valid C string; the descriptor is owned right below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::State {
                id: id.into(),
                msg: format!("opening exec.fifo: {}", std::io::Error::last_os_error()),
            });
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut b = [0u8; 1];
            // SAFETY: reading one byte into a local buffer.
            let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            if n == 1 {
                let _ = std::fs::remove_file(&fifo);
                return Ok(());
            }
            let mon = self.monitor_info(id);
            if mon.is_none_or(|m| !util::process_alive(m.init_pid, m.init_start_time))
                || Instant::now() > deadline
            {
                return Err(Error::State {
                    id: id.into(),
                    msg: "the container init did not take the start signal".into(),
                });
            }
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 20) };
            if p.revents & libc::POLLHUP != 0 && n == 0 {
                // No writer yet (or it left); wait a little instead of spinning.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
