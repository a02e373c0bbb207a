//! `wait`: until the monitor has recorded the exit (or is gone), with a timeout.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{ContainerManager, Error, ExitInfo, util};

impl ContainerManager {
    /// Waits until the container's monitor has finished (exit recorded), up to `timeout`.
    /// Returns the exit record, or `None` on timeout.
    pub fn wait(
        &self,
        reference: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitInfo>, Error> {
        let st = self.resolve(reference)?;
        let dir = self.dir(&st.id);
        let deadline = timeout.map(|t| Instant::now() + t);
        let mon = self.monitor_info(&st.id);
        let pidfd = mon.as_ref().and_then(|m| {
            // SAFETY: pidfd_open syscall with a pid and no flags.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, m.monitor_pid, 0) } as i32;
            // SAFETY: fd is a fresh descriptor we own when non-negative.
            (fd >= 0 && util::process_alive(m.monitor_pid, m.monitor_start_time))
                .then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        });
        loop {
            let exit: Option<ExitInfo> = std::fs::read(dir.join("exit.json"))
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
            if exit.is_some() {
                return Ok(exit);
            }
            let monitor_gone = match &pidfd {
                Some(fd) => {
                    let mut p = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: polling one valid pollfd.
                    (unsafe { libc::poll(&mut p, 1, 0) }) > 0
                }
                None => true,
            };
            if monitor_gone {
                // The monitor writes exit.json before exiting; with auto-remove the dir is gone.
                return Ok(std::fs::read(dir.join("exit.json"))
                    .ok()
                    .and_then(|d| serde_json::from_slice(&d).ok()));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            if let Some(fd) = &pidfd {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = deadline
                    .map(|d| {
                        d.saturating_duration_since(Instant::now())
                            .as_millis()
                            .min(1000) as i32
                    })
                    .unwrap_or(1000);
                // SAFETY: polling one valid pollfd.
                unsafe { libc::poll(&mut p, 1, ms.max(1)) };
            }
        }
    }
}
