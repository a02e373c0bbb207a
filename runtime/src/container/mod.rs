//! Containers: OCI bundles, namespaces, overlay rootfs, cgroups, security, supervision, logs.
//!
//! [`ContainerManager`] is the library API the CLI, the daemon and the node agent call. Each
//! container lives in `<data_dir>/containers/<id>/`, which is also its OCI bundle:
//!
//! | file | written by | content |
//! |---|---|---|
//! | `config.json` | manager | the OCI runtime spec both executors run |
//! | `rootfs/` | manager | overlay mount of the image layers + `upper/`, `work/` |
//! | `state.json` | manager | name, image, options, lifecycle times |
//! | `shim.json` | manager | what the monitor needs beyond the spec |
//! | `monitor.json` | monitor | pids (+ start times) of monitor and container init, start time |
//! | `exit.json` | monitor | exit code, OOM kill, finish time |
//! | `container.log*` | monitor | JSON-lines log, rotated by size |
//! | `files/` | manager | a tmpfs holding the container's secrets and configs (`files/<n>`, bind-mounted read-only at their targets); unmounted once the container ended (stopped or exited) and when it is removed |
//!
//! Each file has one writer, so a manager that dies at any point leaves a consistent picture: a
//! new manager re-adopts by reading them ([`ContainerManager::open`]), and exit codes of
//! containers that ended meanwhile are in `exit.json`, written by their monitor. Why a monitor
//! process per container rather than pidfds held by the daemon: the daemon may die, and someone
//! must keep draining stdout/stderr and reap the init; the monitor is a single-threaded process
//! of ~1.9 MiB RSS (0.5 MiB PSS) per container, measured with 100 of them, see `shim`.
//!
//! Methods are blocking (they spawn processes and poll files); async callers use
//! `tokio::task::spawn_blocking`.
//!
//! ## Where each part lives
//!
//! The manager's verbs are one file each, every one an `impl ContainerManager` block, in the
//! manner of youki's `container_<verb>.rs`:
//!
//! - `mod.rs`: [`ContainerManager`] and its [`ManagerOptions`]; opening a data dir re-adopts
//!   what a previous manager left, or cleans it up.
//! - `state.rs`: the on-disk records above ([`ContainerState`], [`ShimConfig`],
//!   [`MonitorInfo`], [`ExitInfo`]) and the [`Status`] derived from them.
//! - `create.rs`: `create`: validation, spec, rootfs, name-resolution files, the monitor's
//!   launch, the network hook.
//! - `start.rs`: `start`: opens `exec.fifo` (built-in executor) or runs `<runtime> start`.
//! - `kill.rs`: `kill`, and [`parse_signal`].
//! - `wait.rs`: `wait` for the exit record.
//! - `stop.rs`: `stop`: stop signal, grace period, SIGKILL.
//! - `remove.rs`: `remove`: kill if forced, detach networks, delete the cgroup, the rootfs
//!   mount and the files.
//! - `exec.rs`: `exec` in a running container, through the shim or `<runtime> exec`.
//! - `inspect.rs`: `resolve`, `inspect`, `list`, `stats`, `logs`.
//! - `lock.rs`: the data-dir lock and the per-container creation lock.
//! - `names.rs`: the name index (`containers/.names/<name>` → id) that `create` claims names
//!   in and `resolve` looks names up in, checked against `state.json`.
//! - `error.rs`: [`Error`].
//!
//! What the verbs use: `config.rs` ([`CreateOptions`]) is the request, `spec.rs` turns it into
//! the OCI spec (with `user.rs`, `seccomp.rs`, `devices.rs`, `volume.rs`), and [`shim`] is the
//! per-container monitor and the built-in executor, a process of its own; `cgroup.rs`,
//! `rootpath.rs` (paths resolved inside a rootfs) and `logs.rs` serve both sides.

mod cgroup;
pub mod config;
mod create;
pub mod devices;
mod error;
mod exec;
mod inspect;
mod kill;
mod lock;
pub mod logs;
mod names;
mod remove;
pub mod rootpath;
pub mod seccomp;
pub mod shim;
pub mod spec;
mod start;
mod state;
mod stop;
pub mod user;
pub(crate) mod util;
pub mod volume;
mod wait;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use error::io_err;
use lock::{creation_in_progress, exclusive_lock};

pub use cgroup::{Hierarchy, Stats};
pub use config::{
    CreateOptions, DeviceRequest, FileRequest, ImageInput, LogOptions, MountRequest, MountSource,
    NamespaceMode, NetworkMode, Ulimit, VolumesFrom,
};
pub use error::Error;
pub use inspect::{NetIo, StatsCache, net_io};
pub use kill::parse_signal;
pub(crate) use names::release_name_entry;
pub use remove::IMAGE_ID_LABEL;
pub(crate) use remove::{release_image_hold, remove_container_files};
pub use shim::ExecRequest;
pub use state::{ContainerInfo, ContainerState, ExitInfo, MonitorInfo, ShimConfig, Status};

/// Which executor runs the bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeKind {
    /// dcpp's own executor (in the shim process).
    Builtin,
    /// An installed OCI runtime binary (`runc`, `crun`, `youki`, or a path).
    Oci(String),
}

impl RuntimeKind {
    /// Parses `dcpp`/`builtin` or an OCI runtime name.
    pub fn parse(s: &str) -> Self {
        match s {
            "" | "dcpp" | "builtin" => RuntimeKind::Builtin,
            other => RuntimeKind::Oci(other.to_string()),
        }
    }
}

/// How to start the shim: a program and leading arguments (`dcpp __shim` or `dcpp-shim`).
#[derive(Debug, Clone)]
pub struct ShimCommand {
    /// Executable.
    pub program: PathBuf,
    /// Arguments before the shim's own.
    pub args: Vec<OsString>,
}

impl ShimCommand {
    /// The running executable re-executed as `<exe> __shim` (what the `dcpp` binary uses).
    /// What the `dcpp` binary uses: `$DCPP_SHIM` if set (`self` forces `dcpp __shim`), else a
    /// `dcpp-shim` installed next to the executable (a smaller monitor: fewer pages to map and
    /// relocate), else the executable itself as `<exe> __shim`.
    pub fn locate() -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        match std::env::var_os("DCPP_SHIM") {
            Some(s) if s == "self" => return Self::current_exe(),
            Some(s) if !s.is_empty() => {
                return Ok(ShimCommand {
                    program: PathBuf::from(s),
                    args: vec![],
                });
            }
            _ => {}
        }
        let beside = exe.with_file_name("dcpp-shim");
        if beside.is_file() {
            return Ok(ShimCommand {
                program: beside,
                args: vec![],
            });
        }
        Self::current_exe()
    }

    /// The running executable re-executed as `<exe> __shim`.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(ShimCommand {
            program: std::env::current_exe()?,
            args: vec!["__shim".into()],
        })
    }
}

/// Why a [`NetworkHook`] could not attach a container: the driver's own error, whatever its type.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Attaches network interfaces to a container before its process starts.
pub trait NetworkHook: Send + Sync {
    /// Called after the namespaces exist and before `start`; `netns` is the container's network
    /// namespace (a /proc path valid while the container lives).
    fn attach(&self, id: &str, name: &str, netns: &Path) -> Result<(), HookError>;
    /// Called when the container is removed.
    fn detach(&self, id: &str, name: &str);
}

/// Constructor options of a [`ContainerManager`]. Two managers with different data dirs and
/// cgroup parents never see or touch each other's containers.
#[derive(Clone)]
pub struct ManagerOptions {
    /// Root of containers/, volumes/, runtime state.
    pub data_dir: PathBuf,
    /// cgroup under which containers are placed (`<parent>/<id>` in every hierarchy).
    pub cgroup_parent: String,
    /// Executor.
    pub runtime: RuntimeKind,
    /// How to run the shim.
    pub shim: ShimCommand,
    /// Optional network driver.
    pub network_hook: Option<Arc<dyn NetworkHook>>,
}

/// Creates, runs, supervises (through monitors) and removes containers under one data dir.
pub struct ContainerManager {
    opts: ManagerOptions,
    hier: Hierarchy,
    containers_dir: PathBuf,
    volumes: volume::VolumeStore,
}

impl ContainerManager {
    /// Opens (creating if needed) the data dir and re-adopts its containers: monitors still
    /// running keep their containers; containers whose monitor recorded an exit are exited; those
    /// half-created by a manager that died are cleaned up.
    pub fn open(opts: ManagerOptions) -> Result<Self, Error> {
        let containers_dir = opts.data_dir.join("containers");
        std::fs::create_dir_all(&containers_dir)
            .map_err(io_err(format!("creating {}", containers_dir.display())))?;
        let volumes = volume::VolumeStore::open(opts.data_dir.join("volumes"))?;
        let hier = Hierarchy::detect()?;
        if opts.cgroup_parent.is_empty() || opts.cgroup_parent.contains("..") {
            return Err(Error::InvalidConfig(format!(
                "invalid cgroup parent {:?}",
                opts.cgroup_parent
            )));
        }
        let mgr = ContainerManager {
            opts,
            hier,
            containers_dir,
            volumes,
        };
        let half_created = |st: &ContainerState| {
            let dir = mgr.containers_dir.join(&st.id);
            st.phase == "creating"
                && !dir.join("monitor.json").exists()
                && !creation_in_progress(&dir)
        };
        for st in mgr.states() {
            let dir = mgr.containers_dir.join(&st.id);
            if half_created(&st) {
                // A create holds the data-dir lock from writing state.json until it has taken
                // its creation lock: only under it is a missing creation lock a dead creator's
                // (without it, a `dcpp ps` beside a busy daemon removed containers being made).
                let Ok(_lock) = mgr.lock() else { continue };
                if mgr.state_of(&st.id).is_some_and(|now| half_created(&now)) {
                    tracing::info!(id = %st.id, "removing half-created container");
                    mgr.teardown(&st);
                }
            } else if st.auto_remove && dir.join("exit.json").exists() {
                release_image_hold(&dir, &st);
                mgr.teardown(&st);
            }
        }
        mgr.remove_dirs_without_state();
        // Once, for a data dir from before the name index; afterwards creates and removes keep
        // it, and an entry left stale is recognised as such where it is read.
        if !mgr.has_names()
            && let Ok(_lock) = mgr.lock()
            && !mgr.has_names()
        {
            mgr.rebuild_names(&mgr.states());
        }
        Ok(mgr)
    }

    /// Removes container dirs that never got their `state.json` (a manager killed between
    /// creating the dir and renaming `state.tmp` into place): nothing lists them, so nothing
    /// else would ever remove them. `create` makes the dir and its state.json under the
    /// data-dir lock, so once we hold it, a dir without state.json is nobody's.
    fn remove_dirs_without_state(&self) {
        let Ok(rd) = std::fs::read_dir(&self.containers_dir) else {
            return;
        };
        let orphan = |p: &Path| p.is_dir() && !p.join("state.json").exists();
        let candidates: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .map(|e| e.path())
            .filter(|p| orphan(p))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let Ok(_lock) = self.lock() else {
            return;
        };
        for dir in candidates {
            if orphan(&dir) && !creation_in_progress(&dir) {
                tracing::info!(dir = %dir.display(), "removing a container dir without state.json (interrupted create)");
                remove_container_files(&dir);
            }
        }
    }

    /// The volume store of this data dir.
    pub fn volumes(&self) -> &volume::VolumeStore {
        &self.volumes
    }

    /// The detected cgroup layout.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hier
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    fn lock(&self) -> Result<std::fs::File, Error> {
        exclusive_lock(&self.containers_dir.join(".lock"), "the data dir")
    }

    /// Removes the cgroup parent directories if no container cgroup is left under them (call at
    /// shutdown of a manager whose parent is its own).
    pub fn remove_cgroup_parent(&self) {
        self.hier.remove_parent_if_empty(&self.opts.cgroup_parent);
    }
}
