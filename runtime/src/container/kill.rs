//! `kill`: a signal to the container's init, checked against pid reuse.

use super::{ContainerManager, Error, Status, io_err, util};

impl ContainerManager {
    /// Sends a signal to the container's init process.
    pub fn kill(&self, reference: &str, signal: i32) -> Result<(), Error> {
        let st = self.resolve(reference)?;
        let info = self.info_of(st.clone());
        if !matches!(info.status, Status::Running | Status::Created) {
            return Err(Error::State {
                id: st.id,
                msg: format!("container is {}, not running", info.status),
            });
        }
        let mon = self.monitor_info(&st.id).ok_or_else(|| Error::State {
            id: st.id.clone(),
            msg: "no monitor record".into(),
        })?;
        if !util::process_alive(mon.init_pid, mon.init_start_time) {
            return Ok(());
        }
        // SAFETY: kill with a pid verified (with its start time) to be the container init.
        if unsafe { libc::kill(mon.init_pid, signal) } != 0 {
            return Err(io_err("kill")(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Parses `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>()
        && (1..=64).contains(&n)
    {
        return Ok(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| Error::InvalidConfig(format!("invalid signal {s:?}")))
}
