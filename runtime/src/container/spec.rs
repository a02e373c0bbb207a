//! Turning [`CreateOptions`] plus the image config into an OCI runtime spec (config.json).
//!
//! The spec is the contract between the manager and both executors: the built-in one reads it
//! back, runc/crun/youki get it as is. Defaults follow docker's (capabilities, masked and
//! read-only paths, seccomp, /dev, shm size).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use super::config::{CreateOptions, MountSource, NamespaceMode, NetworkMode};
use super::user::ResolvedUser;
use super::{Error, seccomp};

/// PATH docker puts in a container whose image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The process a container runs, resolved from the image config and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProcess {
    /// entrypoint + cmd
    pub args: Vec<String>,
    /// merged environment
    pub env: Vec<String>,
    /// working directory
    pub cwd: String,
}

/// Docker's rules: a new entrypoint drops the image cmd; env entries override by key.
pub fn resolve_process(
    opts: &CreateOptions,
    user: &ResolvedUser,
    hostname: &str,
) -> Result<ResolvedProcess, Error> {
    let img = opts.image.config.as_ref();
    let (entrypoint, cmd) = match &opts.entrypoint {
        Some(ep) => (ep.clone(), opts.command.clone().unwrap_or_default()),
        None => (
            img.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
            opts.command
                .clone()
                .or_else(|| img.and_then(|c| c.cmd().clone()))
                .unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::InvalidConfig(
            "no command specified (the image has neither entrypoint nor cmd)".into(),
        ));
    }
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: &str| {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.to_string());
    };
    for e in img.and_then(|c| c.env().clone()).unwrap_or_default() {
        set(&e);
    }
    for e in &opts.env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(Error::InvalidConfig(format!(
                "invalid environment entry {e:?}: expected KEY=VALUE"
            )));
        }
        set(e);
    }
    let has = |env: &Vec<String>, k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }
    let cwd = opts
        .working_dir
        .clone()
        .or_else(|| img.and_then(|c| c.working_dir().clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Error::InvalidConfig(format!(
            "working directory {cwd:?} is not an absolute path"
        )));
    }
    Ok(ResolvedProcess { args, env, cwd })
}

/// Capability names normalised to `CAP_X` form; `ALL` stays `ALL`.
fn norm_cap(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    if up == "ALL" || up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

fn parse_cap(name: &str) -> Result<Capability, Error> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| Error::InvalidConfig(format!("unknown capability {name:?}")))
}

/// Every capability this host can give (for `privileged` and `cap_add: ALL`): those the kernel
/// knows of and the daemon's bounding set holds. A capability outside the bounding set cannot
/// be granted (the container's capset fails), so asking for "all" means all that exist here.
fn all_caps() -> Vec<String> {
    let bounding = caps::read(None, caps::CapSet::Bounding).unwrap_or_else(|_| caps::all());
    caps::all()
        .into_iter()
        .filter(|c| bounding.contains(c))
        .map(|c| c.to_string())
        .collect()
}

/// Refuses, at create, a capability the daemon's bounding set lacks: granting it would fail
/// when the container starts.
fn grantable(cap: &str) -> Result<(), Error> {
    let Ok(c) = cap.parse::<caps::Capability>() else {
        return Ok(());
    };
    match caps::has_cap(None, caps::CapSet::Bounding, c) {
        Ok(false) => Err(Error::InvalidConfig(format!(
            "capability {cap} is not available on this host (the daemon's bounding set lacks it)"
        ))),
        _ => Ok(()),
    }
}

/// The effective capability set: docker's defaults, then `cap_add`, then `cap_drop`.
pub fn capability_set(opts: &CreateOptions) -> Result<Vec<String>, Error> {
    let mut set: Vec<String> = if opts.privileged {
        all_caps()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    for c in &opts.cap_add {
        let c = norm_cap(c);
        if c == "ALL" {
            set = all_caps();
        } else {
            parse_cap(&c)?;
            grantable(&c)?;
            if !set.contains(&c) {
                set.push(c);
            }
        }
    }
    for c in &opts.cap_drop {
        let c = norm_cap(c);
        if c == "ALL" {
            set.clear();
        } else {
            parse_cap(&c)?;
            set.retain(|s| *s != c);
        }
    }
    set.sort();
    Ok(set)
}

fn rlimit_type(name: &str) -> Result<PosixRlimitType, Error> {
    Ok(match name {
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        "as" => PosixRlimitType::RlimitAs,
        other => return Err(Error::InvalidConfig(format!("unknown ulimit {other:?}"))),
    })
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("mount fields are all set")
}

/// Inputs of [`build`] that the manager computes.
pub struct SpecInputs<'a> {
    /// Container id.
    pub id: &'a str,
    /// Hostname.
    pub hostname: &'a str,
    /// Resolved user.
    pub user: &'a ResolvedUser,
    /// Resolved process.
    pub process: &'a ResolvedProcess,
    /// The container's directory (holds hosts, hostname, resolv.conf).
    pub container_dir: &'a Path,
    /// Directory holding the named volumes.
    pub volumes_dir: &'a Path,
    /// Cgroup path relative to the hierarchy roots.
    pub cgroup_path: &'a str,
    /// The network namespace to join, for [`NetworkMode::Container`].
    pub netns: Option<&'a Path>,
    /// The IPC namespace to join, for [`NamespaceMode::Container`] in `ipc`.
    pub ipc_ns: Option<&'a Path>,
    /// The PID namespace to join, for [`NamespaceMode::Container`] in `pid`.
    pub pid_ns: Option<&'a Path>,
    /// The requested host devices, as found on the host ([`host_devices`]).
    pub devices: &'a [HostDevice],
}

/// A requested host device as the host has it: created in the container under `path` with the
/// host node's type, numbers and mode, and allowed with `access` by the devices cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub path: String,
    pub block: bool,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub access: String,
}

/// Looks the requested devices up on the host: each must be a character or block device.
pub fn host_devices(opts: &CreateOptions) -> Result<Vec<HostDevice>, Error> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    opts.devices
        .iter()
        .map(|d| {
            let bad =
                |why: String| Error::InvalidConfig(format!("device {}: {why}", d.host.display()));
            if !d.container.starts_with('/') || d.container.contains('\0') {
                return Err(bad(format!(
                    "container path {:?} must be absolute",
                    d.container
                )));
            }
            if d.access.is_empty() || !d.access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(bad(format!(
                    "invalid permissions {:?}: a combination of r, w and m",
                    d.access
                )));
            }
            let md = std::fs::metadata(&d.host).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => bad("no such device on the host".into()),
                _ => bad(e.to_string()),
            })?;
            let ft = md.file_type();
            if !(ft.is_char_device() || ft.is_block_device()) {
                return Err(bad("not a device node".into()));
            }
            let rdev = md.rdev();
            Ok(HostDevice {
                path: d.container.clone(),
                block: ft.is_block_device(),
                major: libc::major(rdev),
                minor: libc::minor(rdev),
                mode: md.mode() & 0o7777,
                access: d.access.clone(),
            })
        })
        .collect()
}

/// IPC-namespace parameters docker lets a container set (the rest of `kernel.*` is global).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Docker's rules for `--sysctl`: only parameters the container's own namespaces hold, so setting
/// one never changes the host. `net.*` belongs to the network namespace, which a container with
/// the host's (or another container's) network does not own.
pub fn validate_sysctls(opts: &CreateOptions) -> Result<(), Error> {
    for (key, value) in &opts.sysctls {
        let bad = |why: String| Error::InvalidConfig(format!("sysctl {key:?}: {why}"));
        if key.is_empty()
            || key
                .split('.')
                .any(|c| c.is_empty() || c.contains(['/', '\0']))
        {
            return Err(bad(
                "invalid name: expected dot-separated components such as net.core.somaxconn".into(),
            ));
        }
        if value.is_empty() || value.contains(['\0', '\n']) {
            return Err(bad(format!("invalid value {value:?}")));
        }
        if key.starts_with("net.") {
            match &opts.network {
                NetworkMode::Host => {
                    return Err(bad(
                        "not allowed with the host's network namespace (it would change the host)"
                            .into(),
                    ));
                }
                NetworkMode::Container(target) => {
                    return Err(bad(format!(
                        "not allowed with network container:{target} (the namespace belongs to {target})"
                    )));
                }
                NetworkMode::Private | NetworkMode::None => {}
            }
        } else if !(IPC_SYSCTLS.contains(&key.as_str()) || key.starts_with("fs.mqueue.")) {
            return Err(bad(
                "not allowed: only namespaced parameters can be set (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, net.*)"
                    .into(),
            ));
        } else if opts.ipc == NamespaceMode::Host {
            return Err(bad(
                "not allowed with the host's IPC namespace (it would change the host)".into(),
            ));
        } else if let NamespaceMode::Container(target) = &opts.ipc {
            return Err(bad(format!(
                "not allowed with ipc container:{target} (the namespace belongs to {target})"
            )));
        }
    }
    Ok(())
}

/// Builds the OCI runtime spec.
pub fn build(opts: &CreateOptions, inp: &SpecInputs<'_>) -> Result<Spec, Error> {
    validate_sysctls(opts)?;
    let shm = opts.shm_size.unwrap_or(64 * 1024 * 1024);
    let shm_opt = format!("size={shm}");
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &[
                "nosuid",
                "noexec",
                "nodev",
                if opts.privileged { "rw" } else { "ro" },
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_opt],
        ),
    ];
    for f in ["hosts", "hostname", "resolv.conf"] {
        let src = inp.container_dir.join(f);
        mounts.push(mount(
            &format!("/etc/{f}"),
            "bind",
            &src.to_string_lossy(),
            &["rbind", "rprivate"],
        ));
    }
    for m in &opts.mounts {
        if !m.target.starts_with('/') || m.target == "/" {
            return Err(Error::InvalidConfig(format!(
                "mount target {:?} must be an absolute path other than /",
                m.target
            )));
        }
        let ro = if m.read_only { "ro" } else { "rw" };
        match &m.source {
            MountSource::Bind(src) => {
                if !src.is_absolute() {
                    return Err(Error::InvalidConfig(format!(
                        "bind source {} must be an absolute path",
                        src.display()
                    )));
                }
                if !src.exists() {
                    return Err(Error::InvalidConfig(format!(
                        "bind source path does not exist: {}",
                        src.display()
                    )));
                }
                mounts.push(mount(
                    &m.target,
                    "bind",
                    &src.to_string_lossy(),
                    &["rbind", "rprivate", ro],
                ));
            }
            MountSource::Volume(name) => {
                let src = inp.volumes_dir.join(name).join("_data");
                mounts.push(mount(
                    &m.target,
                    "bind",
                    &src.to_string_lossy(),
                    &["rbind", "rprivate", ro],
                ));
            }
            MountSource::Tmpfs(size) => {
                let mut o = vec!["nosuid", "nodev", ro];
                let s;
                if let Some(size) = size {
                    s = format!("size={size}");
                    o.push(&s);
                }
                mounts.push(mount(&m.target, "tmpfs", "tmpfs", &o));
            }
        }
    }

    for (i, f) in opts.files.iter().enumerate() {
        check_file_target(&f.target)?;
        let src = files_source(inp.container_dir, i);
        mounts.push(mount(
            &f.target,
            "bind",
            &src.to_string_lossy(),
            &["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"],
        ));
    }

    let caps = capability_set(opts)?;
    let cap_set: Capabilities = caps
        .iter()
        .map(|c| parse_cap(c))
        .collect::<Result<HashSet<_>, _>>()?;
    // A non-root user gets the bounding set only, as docker does: nothing effective.
    let granted = if inp.user.uid == 0 {
        cap_set.clone()
    } else {
        Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(cap_set)
        .effective(granted.clone())
        .permitted(granted)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(spec_err)?;

    let mut rlimits = Vec::new();
    for u in &opts.ulimits {
        if u.soft > u.hard {
            return Err(Error::InvalidConfig(format!(
                "ulimit {}: soft limit {} exceeds hard limit {}",
                u.name, u.soft, u.hard
            )));
        }
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(rlimit_type(&u.name)?)
                .soft(u.soft)
                .hard(u.hard)
                .build()
                .map_err(spec_err)?,
        );
    }

    let user = UserBuilder::default()
        .uid(inp.user.uid)
        .gid(inp.user.gid)
        .additional_gids(inp.user.additional_gids.clone())
        .build()
        .map_err(spec_err)?;
    let mut process = ProcessBuilder::default();
    if let Some(adj) = opts.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            return Err(Error::InvalidConfig(format!(
                "invalid oom_score_adj {adj}: the range is -1000 to 1000"
            )));
        }
        process = process.oom_score_adj(adj);
    }
    let process = process
        .terminal(false)
        .user(user)
        .args(inp.process.args.clone())
        .env(inp.process.env.clone())
        .cwd(&inp.process.cwd)
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(!opts.privileged)
        .build()
        .map_err(spec_err)?;

    let mut namespaces = vec![];
    for t in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ] {
        let (mode, joined, what) = match t {
            LinuxNamespaceType::Ipc => (&opts.ipc, inp.ipc_ns, "ipc"),
            LinuxNamespaceType::Pid => (&opts.pid, inp.pid_ns, "pid"),
            _ => (&NamespaceMode::Private, None, ""),
        };
        let mut b = LinuxNamespaceBuilder::default().typ(t);
        match (mode, joined) {
            // The host's namespace is shared by not making a new one.
            (NamespaceMode::Host, _) => continue,
            (NamespaceMode::Private, _) => {}
            (NamespaceMode::Container(_), Some(path)) => b = b.path(path),
            (NamespaceMode::Container(target), None) => {
                return Err(Error::InvalidConfig(format!(
                    "{what} container:{target}: the target's {what} namespace is unknown"
                )));
            }
        }
        namespaces.push(b.build().map_err(spec_err)?);
    }
    match (&opts.network, inp.netns) {
        (NetworkMode::Host, _) => {}
        (NetworkMode::Container(_), Some(path)) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()
                .map_err(spec_err)?,
        ),
        (NetworkMode::Container(target), None) => {
            return Err(Error::InvalidConfig(format!(
                "network container:{target}: the target's network namespace is unknown"
            )));
        }
        (NetworkMode::Private | NetworkMode::None, _) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()
                .map_err(spec_err)?,
        ),
    }

    let mut resources = LinuxResourcesBuilder::default();
    // One list for every executor: runc and crun read it from the spec, the built-in executor
    // turns it into v1 controller rules and the cgroup2 device program.
    let rules = if opts.privileged {
        super::devices::allow_all()
    } else {
        super::devices::default_rules()
    };
    let mut devices = Vec::new();
    for r in rules {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(r.allow)
            .access(r.access_string());
        if let Some(k) = r.kind {
            b = b.typ(if k == 'b' {
                LinuxDeviceType::B
            } else {
                LinuxDeviceType::C
            });
        }
        if let Some(m) = r.major {
            b = b.major(i64::from(m));
        }
        if let Some(m) = r.minor {
            b = b.minor(i64::from(m));
        }
        devices.push(b.build().map_err(spec_err)?);
    }
    let mut nodes = Vec::new();
    for d in inp.devices {
        let typ = if d.block {
            LinuxDeviceType::B
        } else {
            LinuxDeviceType::C
        };
        devices.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .access(d.access.clone())
                .build()
                .map_err(spec_err)?,
        );
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(&d.path)
                .typ(typ)
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .file_mode(d.mode)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(spec_err)?,
        );
    }
    resources = resources.devices(devices);
    let mut memory = LinuxMemoryBuilder::default();
    let mut has_memory = false;
    if let Some(mem) = opts.memory {
        // Docker's minimum; below it the runtime itself cannot start.
        if mem < 6 * 1024 * 1024 {
            return Err(Error::InvalidConfig(format!(
                "memory limit {mem} bytes is too low: the minimum is 6 MiB"
            )));
        }
        let mem = i64::try_from(mem)
            .map_err(|_| Error::InvalidConfig("memory limit too large".into()))?;
        // memory + swap: unset means no swap beyond the limit (the hog must be OOM-killed,
        // not swapped out); -1 is unlimited swap.
        let swap = match opts.memory_swap {
            None => mem,
            Some(-1) => -1,
            Some(s) if s >= mem => s,
            Some(s) => {
                return Err(Error::InvalidConfig(format!(
                    "memory+swap limit {s} must be -1 or at least the memory limit {mem}"
                )));
            }
        };
        memory = memory.limit(mem).swap(swap);
        has_memory = true;
    } else if opts.memory_swap.is_some() {
        return Err(Error::InvalidConfig(
            "a memory+swap limit (memswap_limit) needs a memory limit (mem_limit) too".into(),
        ));
    }
    if let Some(r) = opts.memory_reservation {
        let r = i64::try_from(r)
            .map_err(|_| Error::InvalidConfig("memory reservation too large".into()))?;
        if let Some(mem) = opts.memory
            && r as u64 > mem
        {
            return Err(Error::InvalidConfig(format!(
                "memory reservation {r} must not exceed the memory limit {mem}"
            )));
        }
        memory = memory.reservation(r);
        has_memory = true;
    }
    if has_memory {
        resources = resources.memory(memory.build().map_err(spec_err)?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut has_cpu = false;
    if let Some(cpus) = opts.cpus {
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        if !(cpus >= 0.01 && cpus <= ncpu && cpus.is_finite()) {
            return Err(Error::InvalidConfig(format!(
                "invalid cpus {cpus}: the range of CPUs is from 0.01 to {ncpu}"
            )));
        }
        let period = 100_000u64;
        cpu = cpu
            .period(period)
            .quota((cpus * period as f64).round() as i64);
        has_cpu = true;
    }
    if let Some(shares) = opts.cpu_shares {
        if !(2..=262_144).contains(&shares) {
            return Err(Error::InvalidConfig(format!(
                "invalid cpu shares {shares}: allowed range is 2 to 262144"
            )));
        }
        cpu = cpu.shares(shares);
        has_cpu = true;
    }
    if let Some(set) = &opts.cpuset_cpus {
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
        check_cpuset(set, online.trim())?;
        cpu = cpu.cpus(set.clone());
        has_cpu = true;
    }
    if has_cpu {
        resources = resources.cpu(cpu.build().map_err(spec_err)?);
    }
    if let Some(p) = opts.pids_limit {
        if p == 0 || p < -1 {
            return Err(Error::InvalidConfig(format!(
                "invalid pids limit {p}: must be positive, or -1 for unlimited"
            )));
        }
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .map_err(spec_err)?,
        );
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(spec_err)?)
        .cgroups_path(inp.cgroup_path)
        .rootfs_propagation("rprivate");
    if !nodes.is_empty() {
        linux = linux.devices(nodes);
    }
    if !opts.sysctls.is_empty() {
        linux = linux.sysctl(
            opts.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    if !opts.privileged {
        linux = linux
            .masked_paths(
                MASKED_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .readonly_paths(
                READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .seccomp(seccomp::default_profile());
    }
    let mut annotations = HashMap::new();
    annotations.insert("org.dcpp.container.id".to_string(), inp.id.to_string());
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(opts.read_only)
                .build()
                .map_err(spec_err)?,
        )
        .mounts(mounts)
        .process(process)
        .hostname(inp.hostname)
        .annotations(annotations)
        .linux(linux.build().map_err(spec_err)?)
        .build()
        .map_err(spec_err)
}

fn spec_err(e: oci_spec::OciSpecError) -> Error {
    Error::InvalidConfig(format!("building the OCI spec: {e}"))
}

/// The CPUs of a list like `0-2,4`.
fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        if a > b || b - a > 4096 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// A cpuset must be a valid list of CPUs this machine has online (docker refuses the others
/// too, rather than the kernel's bare EINVAL at the cgroup write).
fn check_cpuset(set: &str, online: &str) -> Result<(), Error> {
    let cpus = parse_cpu_list(set).ok_or_else(|| {
        Error::InvalidConfig(format!("invalid cpuset {set:?}: use a list like 0-2,4"))
    })?;
    if let Some(have) = parse_cpu_list(online)
        && let Some(c) = cpus.iter().find(|c| !have.contains(c))
    {
        return Err(Error::InvalidConfig(format!(
            "cpuset {set:?}: CPU {c} is not available on this machine (online: {online})"
        )));
    }
    Ok(())
}

/// The directory of a container's files tmpfs.
pub(crate) fn files_dir(container_dir: &Path) -> std::path::PathBuf {
    container_dir.join("files")
}

/// Where file `i` of [`CreateOptions::files`] is kept on the host (inside [`files_dir`]).
pub(crate) fn files_source(container_dir: &Path, i: usize) -> std::path::PathBuf {
    files_dir(container_dir).join(i.to_string())
}

fn check_file_target(t: &str) -> Result<(), Error> {
    if !t.starts_with('/') || t.ends_with('/') || t.split('/').any(|c| c == "..") {
        return Err(Error::InvalidConfig(format!(
            "file target {t:?} must be an absolute file path without `..`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::config::ImageInput;
    use super::*;

    #[test]
    fn privileged_gets_every_capability_the_bounding_set_holds_and_no_other() {
        let bounding = caps::read(None, caps::CapSet::Bounding).unwrap();
        let mut o = opts(None, None);
        o.privileged = true;
        let set = capability_set(&o).unwrap();
        let want: std::collections::BTreeSet<String> =
            bounding.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            set.iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            want
        );
        // Asking by name for one the host cannot give is refused at create.
        if let Some(missing) = caps::all().into_iter().find(|c| !bounding.contains(c)) {
            let mut o = opts(None, None);
            o.cap_add = vec![missing.to_string()];
            let e = capability_set(&o).unwrap_err().to_string();
            assert!(e.contains("not available on this host"), "{e}");
        }
    }

    fn opts(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> CreateOptions {
        let cfg: oci_spec::image::Config = serde_json::from_value(serde_json::json!({
            "Entrypoint": ["/bin/ep"], "Cmd": ["img-cmd"], "Env": ["PATH=/bin", "A=1", "B=2"], "WorkingDir": "/srv"
        }))
        .unwrap();
        let mut o = CreateOptions::new(ImageInput {
            reference: "x".into(),
            layer_dirs: vec![],
            config: Some(cfg),
        });
        o.entrypoint = ep.map(|v| v.iter().map(|s| s.to_string()).collect());
        o.command = cmd.map(|v| v.iter().map(|s| s.to_string()).collect());
        o
    }

    fn root() -> ResolvedUser {
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        }
    }

    #[test]
    fn entrypoint_and_cmd_like_docker() {
        let p = resolve_process(&opts(None, None), &root(), "h").unwrap();
        assert_eq!(p.args, ["/bin/ep", "img-cmd"]);
        let p = resolve_process(&opts(None, Some(&["x"])), &root(), "h").unwrap();
        assert_eq!(p.args, ["/bin/ep", "x"]);
        // A new entrypoint drops the image cmd.
        let p = resolve_process(&opts(Some(&["/bin/sh"]), None), &root(), "h").unwrap();
        assert_eq!(p.args, ["/bin/sh"]);
        assert_eq!(p.cwd, "/srv");
    }

    #[test]
    fn env_overrides_by_key() {
        let mut o = opts(None, None);
        o.env = vec!["B=3".into(), "C=4".into()];
        let p = resolve_process(&o, &root(), "box").unwrap();
        assert_eq!(
            p.env,
            [
                "PATH=/bin",
                "A=1",
                "B=3",
                "C=4",
                "HOSTNAME=box",
                "HOME=/root"
            ]
        );
        o.env = vec!["NOEQUALS".into()];
        assert!(resolve_process(&o, &root(), "h").is_err());
    }

    #[test]
    fn caps_add_drop() {
        let mut o = opts(None, None);
        assert_eq!(capability_set(&o).unwrap().len(), DEFAULT_CAPS.len());
        o.cap_add = vec!["net_admin".into()];
        o.cap_drop = vec!["CAP_CHOWN".into(), "mknod".into()];
        let s = capability_set(&o).unwrap();
        assert!(s.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!s.contains(&"CAP_CHOWN".to_string()) && !s.contains(&"CAP_MKNOD".to_string()));
        o.cap_add = vec!["FLY".into()];
        assert!(
            matches!(capability_set(&o), Err(Error::InvalidConfig(m)) if m.contains("CAP_FLY"))
        );
    }

    #[test]
    fn host_ipc_and_pid_leave_out_those_namespaces_and_joined_ones_carry_their_path() {
        let user = root();
        let dir = std::path::Path::new("/nonexistent");
        let peer_ipc = std::path::Path::new("/proc/42/ns/ipc");
        let peer_pid = std::path::Path::new("/proc/42/ns/pid");
        let build_with = |o: &CreateOptions, joined: bool| {
            let process = resolve_process(o, &user, "h").unwrap();
            let inp = SpecInputs {
                id: "0123456789ab",
                hostname: "h",
                user: &user,
                process: &process,
                container_dir: dir,
                volumes_dir: dir,
                cgroup_path: "/dcpp/0123456789ab",
                netns: None,
                ipc_ns: joined.then_some(peer_ipc),
                pid_ns: joined.then_some(peer_pid),
                devices: &[],
            };
            build(o, &inp).map(|spec| {
                spec.linux()
                    .as_ref()
                    .and_then(|l| l.namespaces().clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| (n.typ(), n.path().clone()))
                    .collect::<Vec<_>>()
            })
        };
        let kinds = |ns: &[(LinuxNamespaceType, Option<std::path::PathBuf>)]| {
            ns.iter().map(|(t, _)| *t).collect::<Vec<_>>()
        };
        let mut o = opts(None, None);
        let own = build_with(&o, false).unwrap();
        assert!(own.contains(&(LinuxNamespaceType::Ipc, None)), "{own:?}");
        assert!(own.contains(&(LinuxNamespaceType::Pid, None)), "{own:?}");
        o.ipc = NamespaceMode::Host;
        o.pid = NamespaceMode::Host;
        let shared = kinds(&build_with(&o, false).unwrap());
        assert!(!shared.contains(&LinuxNamespaceType::Ipc), "{shared:?}");
        assert!(!shared.contains(&LinuxNamespaceType::Pid), "{shared:?}");
        assert!(shared.contains(&LinuxNamespaceType::Mount), "{shared:?}");
        o.sysctls.insert("kernel.shmmax".into(), "1024".into());
        let e = validate_sysctls(&o).unwrap_err().to_string();
        assert!(e.contains("host's IPC namespace"), "{e}");

        o.sysctls.clear();
        o.ipc = NamespaceMode::Container("db".into());
        o.pid = NamespaceMode::Container("db".into());
        let joined = build_with(&o, true).unwrap();
        assert!(
            joined.contains(&(LinuxNamespaceType::Ipc, Some(peer_ipc.to_path_buf()))),
            "{joined:?}"
        );
        assert!(
            joined.contains(&(LinuxNamespaceType::Pid, Some(peer_pid.to_path_buf()))),
            "{joined:?}"
        );
        let e = build_with(&o, false).unwrap_err().to_string();
        assert!(e.contains("namespace is unknown"), "{e}");
        o.sysctls.insert("kernel.shmmax".into(), "1024".into());
        let e = validate_sysctls(&o).unwrap_err().to_string();
        assert!(e.contains("ipc container:db"), "{e}");
    }

    #[test]
    fn host_devices_take_the_hosts_numbers_and_refuse_what_is_not_a_device() {
        let mut o = opts(None, None);
        let req = |host: &str, access: &str| crate::container::DeviceRequest {
            host: host.into(),
            container: "/dev/mynull".into(),
            access: access.into(),
        };
        o.devices = vec![req("/dev/null", "rw")];
        let d = host_devices(&o).unwrap();
        assert_eq!(
            (d[0].block, d[0].major, d[0].minor, d[0].access.as_str()),
            (false, 1, 3, "rw")
        );
        assert_eq!(d[0].path, "/dev/mynull");
        for (host, access, why) in [
            ("/nonexistent/dev", "rwm", "no such device on the host"),
            ("/etc/hostname", "rwm", "not a device node"),
            ("/dev/null", "x", "invalid permissions"),
        ] {
            o.devices = vec![req(host, access)];
            let e = host_devices(&o).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(host), "{host}: {e}");
        }
    }

    #[test]
    fn cpusets_are_checked_against_the_online_cpus() {
        assert_eq!(parse_cpu_list("0-2,4"), Some(vec![0, 1, 2, 4]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        for bad in ["", "a", "2-1", "0-", "1,,2"] {
            assert!(parse_cpu_list(bad).is_none(), "{bad:?}");
        }
        check_cpuset("0-1", "0-3").unwrap();
        let e = check_cpuset("0,7", "0-3").unwrap_err().to_string();
        assert!(e.contains("CPU 7 is not available"), "{e}");
        let e = check_cpuset("x", "0-3").unwrap_err().to_string();
        assert!(e.contains("invalid cpuset"), "{e}");
    }
}
