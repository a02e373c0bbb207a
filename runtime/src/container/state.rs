//! The on-disk records of a container (the files in the table of the module doc) and the
//! [`Status`] derived from them. Each file has one writer; the manager reads them all.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ContainerManager, Error, LogOptions, NetworkMode, io_err, util};

/// What the manager records about a container (state.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// 64 hex characters.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command line.
    pub args: Vec<String>,
    /// Executor used (`dcpp` or an OCI runtime).
    pub runtime: String,
    /// `creating` until the monitor reported the container created.
    pub phase: String,
    /// Creation time.
    pub created_at: String,
    /// Set by the manager after a successful start.
    pub started_at: Option<String>,
    /// Signal `stop` sends first.
    pub stop_signal: i32,
    /// Seconds between the stop signal and SIGKILL.
    pub stop_grace_secs: u64,
    /// Remove when exited.
    pub auto_remove: bool,
    /// cgroup path relative to the hierarchy roots.
    pub cgroup_path: String,
    /// Networking.
    pub network: NetworkMode,
    /// Named volumes in use (to hold them).
    pub volumes: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// What the shim needs besides config.json (shim.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// Container id.
    pub id: String,
    /// OCI runtime binary; `None` for the built-in executor.
    pub runtime: Option<String>,
    /// `--root` of the OCI runtime.
    pub runtime_root: Option<String>,
    /// cgroup path relative to the hierarchy roots.
    pub cgroup_path: String,
    /// Allow all devices.
    pub privileged: bool,
    /// Run the built-in init as PID 1.
    pub init: bool,
    /// Remove the container files when it exits.
    pub auto_remove: bool,
    /// Log rotation.
    pub log: LogOptions,
    /// Overlay mount options when the built-in executor mounts the rootfs itself, inside the
    /// container's mount namespace (never on the host: no host umount, which costs an RCU grace
    /// period, and nothing left mounted if anything dies). OCI runtimes get it mounted on the host.
    #[serde(default)]
    pub rootfs_overlay: Option<String>,
}

/// Written by the monitor once the container is created (monitor.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// The monitor's pid.
    pub monitor_pid: i32,
    /// Its start time (guards against pid reuse).
    pub monitor_start_time: u64,
    /// The container init's pid (host namespace).
    pub init_pid: i32,
    /// Its start time.
    pub init_start_time: u64,
    /// When the process passed `start` (built-in executor).
    pub started_at: Option<String>,
}

/// Written by the monitor when the container ended (exit.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code; 128+N for a signal N; -1 if unknown.
    pub exit_code: i32,
    /// The OOM killer fired in the container's cgroup.
    pub oom_killed: bool,
    /// End time.
    pub finished_at: String,
    /// Error the executor reported after start (e.g. exec failure).
    pub error: Option<String>,
}

/// Lifecycle status, derived from the files above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, process waiting for start.
    Created,
    /// Process running.
    Running,
    /// Process ended; see `exit`.
    Exited,
    /// Monitor gone without recording an exit (killed, or the machine rebooted).
    Dead,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Dead => "dead",
        })
    }
}

/// Everything known about one container (`inspect`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Manager's record.
    #[serde(flatten)]
    pub state: ContainerState,
    /// Current status.
    pub status: Status,
    /// Container init pid on the host while running.
    pub pid: Option<i32>,
    /// Exit record once exited.
    pub exit: Option<ExitInfo>,
    /// Bundle directory.
    pub bundle: PathBuf,
}

impl ContainerManager {
    pub(super) fn states(&self) -> Vec<ContainerState> {
        let Ok(rd) = std::fs::read_dir(&self.containers_dir) else {
            return Vec::new();
        };
        let mut out: Vec<ContainerState> = rd
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
            .filter_map(|d| serde_json::from_slice(&d).ok())
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        out
    }

    pub(super) fn info_of(&self, st: ContainerState) -> ContainerInfo {
        let dir = self.dir(&st.id);
        let exit: Option<ExitInfo> = std::fs::read(dir.join("exit.json"))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        let mon: Option<MonitorInfo> = std::fs::read(dir.join("monitor.json"))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        let (status, pid) = if exit.is_some() {
            (Status::Exited, None)
        } else if let Some(m) = &mon {
            if util::process_alive(m.monitor_pid, m.monitor_start_time) {
                let started = m.started_at.is_some() || st.started_at.is_some();
                (
                    if started {
                        Status::Running
                    } else {
                        Status::Created
                    },
                    Some(m.init_pid),
                )
            } else {
                (Status::Dead, None)
            }
        } else {
            (Status::Dead, None)
        };
        ContainerInfo {
            state: st,
            status,
            pid,
            exit,
            bundle: dir,
        }
    }

    pub(super) fn write_state(&self, st: &ContainerState) -> Result<(), Error> {
        let p = self.dir(&st.id).join("state.json");
        util::write_atomic(&p, &serde_json::to_vec_pretty(st).unwrap_or_default())
            .map_err(io_err("writing state.json"))
    }

    pub(super) fn monitor_info(&self, id: &str) -> Option<MonitorInfo> {
        std::fs::read(self.dir(id).join("monitor.json"))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
    }
}
