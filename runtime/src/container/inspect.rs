//! The read-only verbs: finding a container by reference, `inspect`, `list`, `stats`, `logs`.

use std::path::PathBuf;

use super::{ContainerInfo, ContainerManager, ContainerState, Error, Stats, io_err, logs};

impl ContainerManager {
    /// Finds a container by full id, unique id prefix or name.
    pub fn resolve(&self, reference: &str) -> Result<ContainerState, Error> {
        let all = self.states();
        if let Some(s) = all
            .iter()
            .find(|s| s.id == reference || s.name == reference)
        {
            return Ok(s.clone());
        }
        let m: Vec<_> = all
            .iter()
            .filter(|s| !reference.is_empty() && s.id.starts_with(reference))
            .collect();
        match m.len() {
            0 => Err(Error::NotFound(reference.to_string())),
            1 => Ok(m[0].clone()),
            _ => Err(Error::Ambiguous(reference.to_string())),
        }
    }

    /// Inspects one container.
    pub fn inspect(&self, reference: &str) -> Result<ContainerInfo, Error> {
        Ok(self.info_of(self.resolve(reference)?))
    }

    /// All containers, oldest first.
    pub fn list(&self) -> Vec<ContainerInfo> {
        self.states().into_iter().map(|s| self.info_of(s)).collect()
    }

    /// Current resource usage of a running container.
    pub fn stats(&self, reference: &str) -> Result<Stats, Error> {
        let st = self.resolve(reference)?;
        Ok(self.hier.stats(&st.cgroup_path))
    }

    /// Path of the container's current log file.
    pub fn log_path(&self, reference: &str) -> Result<PathBuf, Error> {
        let st = self.resolve(reference)?;
        Ok(self.dir(&st.id).join("container.log"))
    }

    /// All log entries of a container, oldest first.
    pub fn logs(&self, reference: &str) -> Result<Vec<logs::LogEntry>, Error> {
        logs::read_all(&self.log_path(reference)?).map_err(io_err("reading the log"))
    }
}
