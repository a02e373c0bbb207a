//! What a caller asks for when creating a container (docker's `run` flags / a compose service).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The image a container runs: its unpacked layers and its OCI image config.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// The reference the user gave (recorded for `ls`/`inspect`).
    pub reference: String,
    /// Unpacked layer directories in overlay lowerdir order: topmost layer first.
    pub layer_dirs: Vec<PathBuf>,
    /// The image's runtime defaults (entrypoint, cmd, env, working dir, user, stop signal).
    pub config: Option<oci_spec::image::Config>,
}

/// A mount requested by the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// Bind mount of a host path.
    Bind(PathBuf),
    /// A named volume under the data dir, created on first use.
    Volume(String),
    /// A fresh tmpfs, optionally limited in size (bytes).
    Tmpfs(Option<u64>),
}

/// A file given to the container by its content (a secret, a config): never written to
/// disk, only to the container's files tmpfs.
#[derive(Clone, PartialEq, Eq)]
pub struct FileRequest {
    /// Absolute path inside the container.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    pub data: Vec<u8>,
}

// By hand: the content of a secret must never reach a log line.
impl std::fmt::Debug for FileRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRequest")
            .field("target", &self.target)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

/// One mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// What is mounted.
    pub source: MountSource,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// How the container is networked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// A new network namespace; a [`NetworkHook`](super::NetworkHook) may attach interfaces
    /// before the process starts, otherwise only `lo` is up.
    #[default]
    Private,
    /// A new network namespace with only `lo` (docker's `--network none`).
    None,
    /// The host's network namespace.
    Host,
    /// The network namespace of another running container, given by id, unique id prefix or
    /// name (docker's `--network container:NAME`, compose's `network_mode: service:NAME`). The
    /// joiner gets no interfaces of its own (no network hook call), and the target's hostname,
    /// `/etc/hosts` and `/etc/resolv.conf` content, as docker does. The manager records the
    /// target's full id in the container's state.
    Container(String),
}

/// Whose IPC or PID namespace the container runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// A new namespace of its own.
    #[default]
    Private,
    /// The host's (docker's `--ipc host`, `--pid host`).
    Host,
    /// The namespace of another running container, given by id, unique id prefix or name
    /// (docker's `--ipc container:NAME`, compose's `pid: service:NAME`). The joiner holds the
    /// namespace from its start on; a PID namespace ends for everyone in it when the target's
    /// init exits, as in docker.
    Container(String),
}

/// A host device made available in the container (docker's `--device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRequest {
    /// The device node on the host; it must exist when the container is created.
    pub host: PathBuf,
    /// Where the node appears in the container (absolute).
    pub container: String,
    /// The access the devices cgroup allows: a combination of `r`, `w` and `m`.
    pub access: String,
}

/// Another container whose mounts a new container gets too (docker's `--volumes-from`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesFrom {
    /// The container, by id, unique id prefix or name; it need not be running.
    pub container: String,
    /// Every mount read-only (`:ro`); otherwise each keeps the target's mode.
    pub read_only: bool,
}

/// A resource limit (`ulimit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Name as docker spells it: nofile, nproc, core, …
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Log file rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Rotate when the current file exceeds this many bytes.
    pub max_size: u64,
    /// Keep this many files in total (current + rotated).
    pub max_files: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_size: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

/// Everything that defines a new container.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Unique name; generated when absent.
    pub name: Option<String>,
    /// The image to run.
    pub image: ImageInput,
    /// Replaces the image entrypoint (and then drops the image cmd, as docker does).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image cmd.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` entries added to (and overriding) the image env.
    pub env: Vec<String>,
    /// Working directory; the image's, else `/`.
    pub working_dir: Option<String>,
    /// `name`, `uid`, `name:group` or `uid:gid`; the image's, else root.
    pub user: Option<String>,
    /// Hostname; the first 12 characters of the id when absent.
    pub hostname: Option<String>,
    /// Run a minimal init as PID 1 that reaps zombies and forwards signals.
    pub init: bool,
    /// Signal `stop` sends first (name like `SIGTERM` or number); the image's, else SIGTERM.
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL (default 10 s).
    pub stop_grace_period: Option<Duration>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit as a number of CPUs (quota/period).
    pub cpus: Option<f64>,
    /// Relative CPU weight (v1 shares; v2 `cpu.weight` converted as runc does).
    pub cpu_shares: Option<u64>,
    /// CPUs the container may run on, in the kernel's list format (`0-2,4`).
    pub cpuset_cpus: Option<String>,
    /// Soft memory limit in bytes (v1 `memory.soft_limit_in_bytes`, v2 `memory.low`).
    pub memory_reservation: Option<u64>,
    /// Memory plus swap in bytes (docker's `--memory-swap`); -1 is unlimited swap. Unset with
    /// a memory limit: no swap beyond it.
    pub memory_swap: Option<i64>,
    /// `/proc/<pid>/oom_score_adj` of the container's processes (-1000 to 1000).
    pub oom_score_adj: Option<i32>,
    /// Maximum number of tasks.
    pub pids_limit: Option<i64>,
    /// Size of /dev/shm in bytes (default 64 MiB).
    pub shm_size: Option<u64>,
    /// Resource limits.
    pub ulimits: Vec<Ulimit>,
    /// Namespaced kernel parameters set inside the container (`net.core.somaxconn` → `1024`),
    /// docker's `--sysctl`: only `kernel.msgmax`, `kernel.msgmnb`, `kernel.msgmni`, `kernel.sem`,
    /// `kernel.shmall`, `kernel.shmmax`, `kernel.shmmni`, `kernel.shm_rmid_forced`, `fs.mqueue.*`
    /// and `net.*` (the latter not with the host's or another container's network namespace).
    pub sysctls: BTreeMap<String, String>,
    /// Capabilities added to docker's default set (`ALL` or names with or without `CAP_`).
    pub cap_add: Vec<String>,
    /// Capabilities removed from the set.
    pub cap_drop: Vec<String>,
    /// All capabilities, no seccomp, no masked paths, writable /sys, all devices allowed.
    pub privileged: bool,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Bind mounts, volumes, tmpfs.
    pub mounts: Vec<MountRequest>,
    /// Host devices created in the container's /dev and allowed by its devices cgroup.
    pub devices: Vec<DeviceRequest>,
    /// Files (secrets, configs) written to a tmpfs of the container's own and bind-mounted
    /// read-only at their targets; removed with the container.
    pub files: Vec<FileRequest>,
    /// Containers whose volumes and bind mounts are mounted here too, at the same targets;
    /// a target this container mounts itself keeps its own mount.
    pub volumes_from: Vec<VolumesFrom>,
    /// Networking.
    pub network: NetworkMode,
    /// The IPC namespace: a new one, the host's or another container's (docker's `--ipc`).
    pub ipc: NamespaceMode,
    /// The PID namespace: a new one, the host's or another container's (docker's `--pid`).
    pub pid: NamespaceMode,
    /// `(host, address)` lines appended to the container's /etc/hosts (docker's `--add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// Nameservers of the generated /etc/resolv.conf, replacing the host's (docker's `--dns`).
    pub dns: Vec<String>,
    /// Search domains of the generated /etc/resolv.conf (`--dns-search`).
    pub dns_search: Vec<String>,
    /// `options` of the generated /etc/resolv.conf (`--dns-option`).
    pub dns_options: Vec<String>,
    /// Free-form labels, kept in the state.
    pub labels: BTreeMap<String, String>,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// Log rotation.
    pub log: LogOptions,
}

impl CreateOptions {
    /// Options for running `image` with every other setting at its default.
    pub fn new(image: ImageInput) -> Self {
        CreateOptions {
            name: None,
            image,
            entrypoint: None,
            command: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            hostname: None,
            init: false,
            stop_signal: None,
            stop_grace_period: None,
            memory: None,
            cpus: None,
            cpu_shares: None,
            cpuset_cpus: None,
            memory_reservation: None,
            memory_swap: None,
            oom_score_adj: None,
            pids_limit: None,
            shm_size: None,
            ulimits: Vec::new(),
            sysctls: BTreeMap::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            privileged: false,
            read_only: false,
            mounts: Vec::new(),
            devices: Vec::new(),
            files: Vec::new(),
            volumes_from: Vec::new(),
            network: NetworkMode::Private,
            ipc: NamespaceMode::Private,
            pid: NamespaceMode::Private,
            extra_hosts: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            dns_options: Vec::new(),
            labels: BTreeMap::new(),
            auto_remove: false,
            log: LogOptions::default(),
        }
    }
}

impl ImageInput {
    /// The image of the local store: its layers in lowerdir order and its runtime config.
    pub fn from_local(img: &crate::image::LocalImage) -> Self {
        let config = serde_json::to_value(&img.config.config)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok());
        ImageInput {
            reference: img.display_name(),
            layer_dirs: img.layer_dirs(),
            config,
        }
    }
}
