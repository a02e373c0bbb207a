//! `stop`: the stop signal, then SIGKILL once the grace period is over.

use std::time::Duration;

use super::{ContainerInfo, ContainerManager, Error, Status};

impl ContainerManager {
    /// Stops a container: its stop signal, then SIGKILL after the grace period (or `grace`).
    pub fn stop(&self, reference: &str, grace: Option<Duration>) -> Result<ContainerInfo, Error> {
        let st = self.resolve(reference)?;
        let info = self.info_of(st.clone());
        if matches!(info.status, Status::Running | Status::Created) {
            let _ = self.kill(&st.id, st.stop_signal);
            let grace = grace.unwrap_or(Duration::from_secs(st.stop_grace_secs));
            if self.wait(&st.id, Some(grace))?.is_none() {
                let _ = self.kill(&st.id, libc::SIGKILL);
                self.wait(&st.id, Some(Duration::from_secs(10)))?;
            }
        }
        let info = self.info_of(st);
        self.release_files_of(&info);
        Ok(info)
    }

    /// Drops the secrets and configs of a container that no longer runs (its files tmpfs): a
    /// stopped container kept as history holds no secret. Such a container cannot be started
    /// again with them; the orchestrator replaces it.
    pub fn release_files(&self, reference: &str) -> Result<(), Error> {
        let st = self.resolve(reference)?;
        let info = self.info_of(st);
        self.release_files_of(&info);
        Ok(())
    }

    fn release_files_of(&self, info: &ContainerInfo) {
        if !matches!(info.status, Status::Running | Status::Created) {
            super::remove::drop_files(&self.dir(&info.state.id));
        }
    }
}
