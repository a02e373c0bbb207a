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

mod cgroup;
pub mod config;
pub mod devices;
pub mod logs;
pub mod rootpath;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod user;
pub(crate) mod util;
pub mod volume;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use cgroup::{Hierarchy, Stats};
pub use config::{
    CreateOptions, ImageInput, LogOptions, MountRequest, MountSource, NetworkMode, Ulimit,
};
pub use shim::ExecRequest;

/// Errors of the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid (bad limit, unknown capability, …); nothing was created.
    #[error("{0}")]
    InvalidConfig(String),
    /// The image reference could not be resolved.
    #[error("image {0}: not found")]
    ImageNotFound(String),
    /// The user could not be resolved from the image.
    #[error(transparent)]
    User(#[from] user::UserError),
    /// No container has this id, id prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An id prefix matches several containers.
    #[error("container reference {0:?} is ambiguous")]
    Ambiguous(String),
    /// A container with this name exists already.
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
    /// The operation does not fit the container's state.
    #[error("container {id}: {msg}")]
    State {
        /// container id
        id: String,
        /// what is wrong
        msg: String,
    },
    /// Creating or starting the container failed; whatever was created has been removed.
    #[error("creating container: {0}")]
    Create(String),
    /// The network hook failed.
    #[error("network: {0}")]
    Network(#[source] HookError),
    /// Volume errors.
    #[error(transparent)]
    Volume(#[from] volume::VolumeError),
    /// cgroup errors.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// I/O on the data dir.
    #[error("{context}: {source}")]
    Io {
        /// what was being done
        context: String,
        /// the cause
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

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
        for st in mgr.states() {
            let dir = mgr.containers_dir.join(&st.id);
            if st.phase == "creating"
                && !dir.join("monitor.json").exists()
                && !creation_in_progress(&dir)
            {
                tracing::info!(id = %st.id, "removing half-created container");
                mgr.teardown(&st);
            } else if st.auto_remove && dir.join("exit.json").exists() {
                release_image_hold(&dir, &st);
                mgr.teardown(&st);
            }
        }
        mgr.remove_dirs_without_state();
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

    fn states(&self) -> Vec<ContainerState> {
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

    fn dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

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

    fn info_of(&self, st: ContainerState) -> ContainerInfo {
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

    /// Inspects one container.
    pub fn inspect(&self, reference: &str) -> Result<ContainerInfo, Error> {
        Ok(self.info_of(self.resolve(reference)?))
    }

    /// All containers, oldest first.
    pub fn list(&self) -> Vec<ContainerInfo> {
        self.states().into_iter().map(|s| self.info_of(s)).collect()
    }

    /// Creates a container: validates everything first, then builds the bundle, mounts the
    /// rootfs and has a monitor set up namespaces and cgroup with the process waiting for
    /// [`start`](Self::start). On any failure nothing is left behind.
    pub fn create(&self, opts: &CreateOptions) -> Result<ContainerInfo, Error> {
        if opts.image.layer_dirs.is_empty() {
            return Err(Error::ImageNotFound(opts.image.reference.clone()));
        }
        for l in &opts.image.layer_dirs {
            if !l.is_dir() {
                return Err(Error::ImageNotFound(format!(
                    "{} (layer {} missing)",
                    opts.image.reference,
                    l.display()
                )));
            }
        }
        if opts.init && self.opts.runtime != RuntimeKind::Builtin {
            return Err(Error::InvalidConfig(
                "init: true is only supported by the built-in executor".into(),
            ));
        }
        let user_spec = opts
            .user
            .clone()
            .or_else(|| opts.image.config.as_ref().and_then(|c| c.user().clone()))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0".into());
        let user = user::resolve_in_layers(&user_spec, &opts.image.layer_dirs)?;
        check_ulimits(&opts.ulimits)?;
        let stop_signal = parse_signal(
            opts.stop_signal
                .as_deref()
                .or(opts
                    .image
                    .config
                    .as_ref()
                    .and_then(|c| c.stop_signal().as_deref()))
                .unwrap_or("SIGTERM"),
        )?;
        for m in &opts.mounts {
            if let MountSource::Volume(name) = &m.source {
                volume::validate_name(name)?;
            }
        }

        let joined = match &opts.network {
            NetworkMode::Container(target) => {
                if opts.hostname.is_some() {
                    return Err(Error::InvalidConfig(format!(
                        "conflicting options: a hostname and the network mode container:{target} (the container gets the hostname of {target})"
                    )));
                }
                Some(self.network_target(target)?)
            }
            _ => None,
        };

        let id = util::random_hex(32).map_err(io_err("reading /dev/urandom"))?;
        let name = match &opts.name {
            Some(n) => {
                if n.is_empty()
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    || n.starts_with(['.', '-'])
                {
                    return Err(Error::InvalidConfig(format!(
                        "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n.clone()
            }
            None => format!("c-{}", &id[..12]),
        };
        let hostname = match &joined {
            Some(j) => j.hostname.clone(),
            None => opts
                .hostname
                .clone()
                .unwrap_or_else(|| id[..12].to_string()),
        };
        let process = spec::resolve_process(opts, &user, &hostname)?;
        let cgroup_path = format!("/{}/{}", self.opts.cgroup_parent.trim_matches('/'), id);
        let dir = self.dir(&id);
        let spec = spec::build(
            opts,
            &spec::SpecInputs {
                id: &id,
                hostname: &hostname,
                user: &user,
                process: &process,
                container_dir: &dir,
                volumes_dir: self.volumes.root(),
                cgroup_path: &cgroup_path,
                netns: joined.as_ref().map(|j| j.netns.as_path()),
            },
        )?;
        let state = ContainerState {
            id: id.clone(),
            name,
            image: opts.image.reference.clone(),
            args: process.args.clone(),
            runtime: match &self.opts.runtime {
                RuntimeKind::Builtin => "dcpp".into(),
                RuntimeKind::Oci(r) => r.clone(),
            },
            phase: "creating".into(),
            created_at: util::now_rfc3339(),
            started_at: None,
            stop_signal,
            stop_grace_secs: opts
                .stop_grace_period
                .unwrap_or(Duration::from_secs(10))
                .as_secs(),
            auto_remove: opts.auto_remove,
            cgroup_path: cgroup_path.clone(),
            network: match &joined {
                Some(j) => NetworkMode::Container(j.id.clone()),
                None => opts.network.clone(),
            },
            volumes: opts
                .mounts
                .iter()
                .filter_map(|m| match &m.source {
                    MountSource::Volume(v) => Some(v.clone()),
                    _ => None,
                })
                .collect(),
            labels: opts.labels.clone(),
        };
        // The data-dir lock only guards the name (the spec above is built without it): once
        // state.json is written, other creates see the name and may go on while this one builds
        // its rootfs and spawns its monitor (tens of ms each). The container's own lock keeps a
        // manager opening meanwhile from taking it for a half-created leftover.
        let _lock = self.lock()?;
        if self.states().iter().any(|s| s.name == state.name) {
            return Err(Error::NameInUse(state.name));
        }
        std::fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let res = self.write_state(&state).and_then(|()| creating_guard(&dir));
        drop(_lock);
        let res = res
            .and_then(|_guard| self.create_in_dir(opts, &state, &spec, &hostname, joined.as_ref()));
        match res {
            Ok(()) => Ok(self.info_of(state)),
            Err(e) => {
                self.teardown(&state);
                Err(e)
            }
        }
    }

    fn create_in_dir(
        &self,
        opts: &CreateOptions,
        state: &ContainerState,
        spec: &oci_spec::runtime::Spec,
        hostname: &str,
        joined: Option<&JoinedNetwork>,
    ) -> Result<(), Error> {
        let dir = self.dir(&state.id);
        for v in &state.volumes {
            self.volumes.ensure(v)?;
        }
        let w = |name: &str, data: String| {
            std::fs::write(dir.join(name), data).map_err(io_err(format!("writing {name}")))
        };
        // Bind-mounted into the container, where non-root users read them.
        let shared = |name: &str, data: String| {
            crate::datadir::write_shared_file(&dir.join(name), data.as_bytes())
                .map_err(io_err(format!("writing {name}")))
        };
        shared("hostname", format!("{hostname}\n"))?;
        match joined {
            Some(j) => {
                shared("hosts", j.hosts.clone())?;
                shared("resolv.conf", j.resolv_conf.clone())?;
            }
            None => {
                shared(
                    "hosts",
                    format!(
                        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
                    ),
                )?;
                shared("resolv.conf", resolv_conf(&opts.network))?;
            }
        }
        let mut cfg = ShimConfig {
            id: state.id.clone(),
            runtime: match &self.opts.runtime {
                RuntimeKind::Builtin => None,
                RuntimeKind::Oci(r) => Some(r.clone()),
            },
            runtime_root: Some(
                self.opts
                    .data_dir
                    .join("runtime")
                    .to_string_lossy()
                    .into_owned(),
            ),
            cgroup_path: state.cgroup_path.clone(),
            privileged: opts.privileged,
            init: opts.init,
            auto_remove: opts.auto_remove,
            log: opts.log,
            rootfs_overlay: None,
        };
        let overlay = self.prepare_rootfs(&dir, &opts.image.layer_dirs)?;
        if self.opts.runtime == RuntimeKind::Builtin {
            cfg.rootfs_overlay = Some(overlay);
        } else {
            nix::mount::mount(
                Some("overlay"),
                &dir.join("rootfs"),
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(overlay.as_str()),
            )
            .map_err(|e| Error::Create(format!("mounting the overlay rootfs: {e}")))?;
        }
        w(
            "shim.json",
            serde_json::to_string_pretty(&cfg).unwrap_or_default(),
        )?;
        w(
            "config.json",
            serde_json::to_string_pretty(spec).unwrap_or_default(),
        )?;

        let out = std::process::Command::new(&self.opts.shim.program)
            .args(&self.opts.shim.args)
            .arg("create")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(io_err(format!(
                "running the shim {}",
                self.opts.shim.program.display()
            )))?;
        if !out.status.success() {
            return Err(Error::Create(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let mut st = state.clone();
        st.phase = "created".into();
        self.write_state(&st)?;
        if let (Some(hook), NetworkMode::Private) = (&self.opts.network_hook, &opts.network) {
            let mon = self
                .monitor_info(&st.id)
                .ok_or_else(|| Error::Create("monitor.json missing".into()))?;
            hook.attach(
                &st.id,
                &st.name,
                Path::new(&format!("/proc/{}/ns/net", mon.init_pid)),
            )
            .map_err(Error::Network)?;
        }
        Ok(())
    }

    /// The network namespace, hostname and name-resolution files of the running container
    /// `target` (for [`NetworkMode::Container`]).
    fn network_target(&self, target: &str) -> Result<JoinedNetwork, Error> {
        let bad = |msg: String| Error::InvalidConfig(format!("network container:{target}: {msg}"));
        let st = self.resolve(target).map_err(|e| match e {
            Error::NotFound(_) => bad("no such container".into()),
            other => bad(other.to_string()),
        })?;
        let info = self.info_of(st.clone());
        let mon = self.monitor_info(&st.id);
        let (Status::Running, Some(mon)) = (info.status, mon) else {
            return Err(bad(format!(
                "cannot join the network of container {} ({}): it is {}, not running",
                st.name,
                &st.id[..12],
                info.status
            )));
        };
        if !util::process_alive(mon.init_pid, mon.init_start_time) {
            return Err(bad(format!("container {} is not running", st.name)));
        }
        let dir = self.dir(&st.id);
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).map_err(io_err("reading config.json"))?,
        )
        .map_err(|e| Error::Create(format!("{}/config.json: {e}", dir.display())))?;
        // What the target sees: the last bind mount on each file wins (a network driver may
        // have mounted its own resolv.conf over the generated one).
        let seen = |file: &str| -> Result<String, Error> {
            let dest = format!("/etc/{file}");
            let src = spec
                .mounts()
                .iter()
                .flatten()
                .rev()
                .find(|m| m.destination() == Path::new(&dest))
                .and_then(|m| m.source().clone())
                .unwrap_or_else(|| dir.join(file));
            std::fs::read_to_string(&src).map_err(io_err(format!(
                "reading {} of container {}",
                src.display(),
                st.name
            )))
        };
        Ok(JoinedNetwork {
            netns: PathBuf::from(format!("/proc/{}/ns/net", mon.init_pid)),
            hostname: spec
                .hostname()
                .clone()
                .unwrap_or_else(|| st.id[..12].to_string()),
            hosts: seen("hosts")?,
            resolv_conf: seen("resolv.conf")?,
            id: st.id,
        })
    }

    /// Creates rootfs/, upper/, work/ and returns the overlay mount options.
    fn prepare_rootfs(&self, dir: &Path, layers: &[PathBuf]) -> Result<String, Error> {
        let (rootfs, upper, work) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
        for d in [&rootfs, &work] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        // The upper dir's root is the container's `/`: 0755 as in any image, not the umask's
        // 0700 (a non-root process in the container could not traverse `/`).
        crate::datadir::create_content_root(&upper)
            .map_err(io_err(format!("creating {}", upper.display())))?;
        let lower: Vec<String> = layers
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        // `volatile`: no sync of the upper filesystem, above all not the syncfs overlayfs does
        // when its last reference goes (inside the exiting container init, which measured
        // ~100 ms on an idle ext4 and more while anything else writes). A container's upper
        // layer is never mounted a second time and is thrown away with the container, so
        // losing it to a machine crash costs nothing (podman does the same for --rm).
        let data = format!(
            "lowerdir={},upperdir={},workdir={},volatile",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        if data.len() >= 4000 {
            return Err(Error::InvalidConfig(format!(
                "the image has too many layers for one overlay mount ({} bytes of options)",
                data.len()
            )));
        }
        Ok(data)
    }

    fn write_state(&self, st: &ContainerState) -> Result<(), Error> {
        let p = self.dir(&st.id).join("state.json");
        util::write_atomic(&p, &serde_json::to_vec_pretty(st).unwrap_or_default())
            .map_err(io_err("writing state.json"))
    }

    fn monitor_info(&self, id: &str) -> Option<MonitorInfo> {
        std::fs::read(self.dir(id).join("monitor.json"))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
    }

    fn lock(&self) -> Result<std::fs::File, Error> {
        exclusive_lock(&self.containers_dir.join(".lock"), "the data dir")
    }

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
        Ok(self.info_of(st))
    }

    /// Removes a container (`force` kills a running one first). Leaves no mount, cgroup, file
    /// or process behind.
    pub fn remove(&self, reference: &str, force: bool) -> Result<(), Error> {
        let st = self.resolve(reference)?;
        let info = self.info_of(st.clone());
        if matches!(info.status, Status::Running | Status::Created) {
            if !force {
                return Err(Error::State {
                    id: st.id,
                    msg: "cannot remove a running container; stop it first or force".into(),
                });
            }
            let _ = self.kill(&st.id, libc::SIGKILL);
            self.wait(&st.id, Some(Duration::from_secs(10)))?;
        }
        if let Some(hook) = &self.opts.network_hook {
            hook.detach(&st.id, &st.name);
        }
        self.teardown(&st);
        Ok(())
    }

    fn teardown(&self, st: &ContainerState) {
        let dir = self.dir(&st.id);
        if let RuntimeKind::Oci(rt) = &RuntimeKind::parse(&st.runtime) {
            let _ = std::process::Command::new(rt)
                .args([
                    "--root",
                    &self.opts.data_dir.join("runtime").to_string_lossy(),
                    "delete",
                    "--force",
                    &st.id,
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        self.hier.remove(&st.cgroup_path);
        remove_container_files(&dir);
    }

    /// Runs a command in a running container (joining its namespaces and cgroup). The child's
    /// stdio is what `stdio` configures; the returned child's status is the command's.
    pub fn exec(
        &self,
        reference: &str,
        req: &ExecRequest,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Result<std::process::Child, Error> {
        let st = self.resolve(reference)?;
        let info = self.info_of(st.clone());
        if info.status != Status::Running {
            return Err(Error::State {
                id: st.id,
                msg: format!("container is {}, not running", info.status),
            });
        }
        let dir = self.dir(&st.id);
        let mut cmd = match &RuntimeKind::parse(&st.runtime) {
            RuntimeKind::Builtin => {
                let mut c = std::process::Command::new(&self.opts.shim.program);
                c.args(&self.opts.shim.args)
                    .arg("exec")
                    .arg(&dir)
                    .arg(serde_json::to_string(req).unwrap_or_default());
                c
            }
            RuntimeKind::Oci(rt) => {
                let spec: oci_spec::runtime::Spec = serde_json::from_slice(
                    &std::fs::read(dir.join("config.json"))
                        .map_err(io_err("reading config.json"))?,
                )
                .map_err(|e| Error::Create(format!("config.json: {e}")))?;
                let mut p = spec.process().clone().unwrap_or_default();
                p.set_args(Some(req.args.clone()));
                let mut env = p.env().clone().unwrap_or_default();
                env.extend(req.env.iter().cloned());
                p.set_env(Some(env));
                if let Some(cwd) = &req.cwd {
                    p.set_cwd(PathBuf::from(cwd));
                }
                if let Some((uid, gid)) = req.user {
                    let mut u = p.user().clone();
                    u.set_uid(uid);
                    u.set_gid(gid);
                    p.set_user(u);
                }
                let pf = dir.join(format!(
                    "exec-{}.json",
                    util::random_hex(6).map_err(io_err("random"))?
                ));
                std::fs::write(&pf, serde_json::to_vec(&p).unwrap_or_default())
                    .map_err(io_err("writing the exec process file"))?;
                let mut c = std::process::Command::new(rt);
                c.args([
                    "--root",
                    &self.opts.data_dir.join("runtime").to_string_lossy(),
                    "exec",
                    "--process",
                ])
                .arg(&pf)
                .arg(&st.id);
                // `runc exec` hands its umask (our 077, which keeps the data dir private) to the
                // process; the container's processes get the usual 022, as its init does.
                // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                        libc::umask(0o022);
                        Ok(())
                    });
                }
                c
            }
        };
        configure(&mut cmd);
        cmd.spawn().map_err(io_err("spawning exec"))
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

    /// Removes the cgroup parent directories if no container cgroup is left under them (call at
    /// shutdown of a manager whose parent is its own).
    pub fn remove_cgroup_parent(&self) {
        self.hier.remove_parent_if_empty(&self.opts.cgroup_parent);
    }
}

/// Label holding the id of the image a container runs, for whoever registered the container as
/// a holder of that image in `<data dir>/images` (the CLI, the node agent).
pub const IMAGE_ID_LABEL: &str = "org.dcpp.image.id";

/// Releases the hold of an auto-removed container on its image (the image store of the same data
/// dir). Who removes a container explicitly releases the hold itself; a container that removes
/// itself when it exits has only its monitor (or the next manager, if the monitor died) to do so.
pub(crate) fn release_image_hold(dir: &Path, st: &ContainerState) {
    let Some(digest) = st
        .labels
        .get(IMAGE_ID_LABEL)
        .and_then(|d| crate::image::Digest::parse(d).ok())
    else {
        return;
    };
    let Some(data_dir) = dir.parent().and_then(Path::parent) else {
        return;
    };
    let images = data_dir.join("images");
    if !images.is_dir() {
        return;
    }
    match crate::image::ImageStore::open(&images) {
        Ok(store) => {
            if let Err(e) = store.remove_holder(&digest, &st.id) {
                tracing::warn!(id = %st.id, "releasing the image: {e}");
            }
        }
        Err(e) => tracing::warn!(id = %st.id, "releasing the image: {e}"),
    }
}

/// Unmounts the rootfs and deletes the container directory.
pub(crate) fn remove_container_files(dir: &Path) {
    let rootfs = dir.join("rootfs");
    // Lazy: a plain umount of an overlay waits for an RCU grace period (~100 ms here); nothing
    // uses the rootfs any more, and the detached tree goes when its last user does.
    match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => tracing::warn!(rootfs = %rootfs.display(), "unmounting the rootfs: {e}"),
    }
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), "removing container dir: {e}");
    }
}

/// The running container whose network namespace a new container joins.
struct JoinedNetwork {
    /// Full id of the target.
    id: String,
    /// `/proc/<init pid>/ns/net` of the target (valid while it runs; the executor opens it at
    /// create, after which the joiner holds the namespace itself).
    netns: PathBuf,
    hostname: String,
    hosts: String,
    resolv_conf: String,
}

fn resolv_conf(net: &NetworkMode) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if *net == NetworkMode::Host {
        return host;
    }
    // Loopback resolvers of the host are unreachable from a new network namespace.
    host.lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            !(f.next() == Some("nameserver")
                && f.next()
                    .is_some_and(|a| a.starts_with("127.") || a == "::1"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
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

/// Refuses ulimits that need CAP_SYS_RESOURCE when we lack it (before anything is created).
fn check_ulimits(ulimits: &[Ulimit]) -> Result<(), Error> {
    let has_sys_resource = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    for u in ulimits {
        let res = match u.name.as_str() {
            "nofile" => libc::RLIMIT_NOFILE,
            "nproc" => libc::RLIMIT_NPROC,
            "core" => libc::RLIMIT_CORE,
            "stack" => libc::RLIMIT_STACK,
            "memlock" => libc::RLIMIT_MEMLOCK,
            "fsize" => libc::RLIMIT_FSIZE,
            "cpu" => libc::RLIMIT_CPU,
            "data" => libc::RLIMIT_DATA,
            "as" => libc::RLIMIT_AS,
            "locks" => libc::RLIMIT_LOCKS,
            "sigpending" => libc::RLIMIT_SIGPENDING,
            "msgqueue" => libc::RLIMIT_MSGQUEUE,
            "nice" => libc::RLIMIT_NICE,
            "rtprio" => libc::RLIMIT_RTPRIO,
            "rttime" => libc::RLIMIT_RTTIME,
            "rss" => libc::RLIMIT_RSS,
            other => return Err(Error::InvalidConfig(format!("unknown ulimit {other:?}"))),
        };
        if u.soft > u.hard {
            return Err(Error::InvalidConfig(format!(
                "ulimit {}: soft limit {} exceeds hard limit {}",
                u.name, u.soft, u.hard
            )));
        }
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a valid rlimit struct.
        unsafe { libc::getrlimit(res, &mut cur) };
        if u.hard > cur.rlim_max && !has_sys_resource {
            return Err(Error::InvalidConfig(format!(
                "ulimit {}: hard limit {} is above the current hard limit {} and raising it needs CAP_SYS_RESOURCE, which this process lacks",
                u.name, u.hard, cur.rlim_max
            )));
        }
    }
    Ok(())
}

/// Held by the process creating the container in `dir` until `create` returns.
fn creating_guard(dir: &Path) -> Result<std::fs::File, Error> {
    exclusive_lock(&dir.join(".creating"), "the container dir")
}

/// Opens (creating it) and flocks `path` exclusively, waiting for other holders; the lock goes
/// with the returned file.
fn exclusive_lock(path: &Path, what: &str) -> Result<std::fs::File, Error> {
    let f =
        std::fs::File::create(path).map_err(io_err(format!("opening the lock file of {what}")))?;
    // SAFETY: flock on a descriptor we own; released when the file is dropped.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err(format!("locking {what}"))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

/// Whether another process (or thread) is creating the container in `dir` right now.
fn creation_in_progress(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(".creating")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; a lock we get is released when `f` drops.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_being_created_is_not_taken_for_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!creation_in_progress(dir.path()), "no lock file yet");
        let guard = creating_guard(dir.path()).unwrap();
        assert!(creation_in_progress(dir.path()));
        drop(guard);
        assert!(
            !creation_in_progress(dir.path()),
            "lock released with the guard"
        );
    }
}
