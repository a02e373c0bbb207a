//! Container cgroups on v1 (legacy or hybrid, each controller possibly mounted on its own) and v2.
//!
//! Own code rather than libcgroups: libcgroups' API takes nix 0.29 `Pid`s (a second nix in our
//! API), assumes nothing about memsw/oom_kill counters we need for OOM reporting, and the whole
//! surface we need is a few files per controller. The resource model is still the OCI
//! `LinuxResources` of the bundle, so the runc backend and this code read the same limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::devices::{self, DeviceFilterError, DeviceRule};

/// v1 controllers a container joins. blkio is not limited, only read for the block I/O
/// figures of [`Stats`]; cpuset needs each new level initialised from its parent before
/// anything can join it (see [`init_cpuset_v1`]).
const V1_CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "pids", "devices", "cpuset", "blkio",
];

/// Errors from cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable cgroup hierarchy was found in /proc/self/mountinfo.
    #[error("no cgroup hierarchy found (is /sys/fs/cgroup mounted?)")]
    NotMounted,
    /// A cgroup file could not be written.
    #[error("cgroup: writing {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The device program could not be set up on cgroup v2, where it is the only device
    /// confinement: the container is not run unconfined.
    #[error("{0} (cgroup v2 has no other device confinement, so the container cannot run)")]
    Devices(#[source] DeviceFilterError),
    /// The host cannot apply a setting the container asks for.
    #[error("cgroup: {0}")]
    Unsupported(String),
    /// A cgroup directory could not be created or removed.
    #[error("cgroup: {op} {path}: {source}")]
    Dir {
        /// mkdir or rmdir.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Which cgroup layout the machine has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hierarchy {
    /// Legacy or hybrid: each v1 controller at its mount point (hybrid is treated as v1 because the
    /// unified tree there carries no memory/cpu/pids controllers).
    V1 {
        /// controller name → mount point
        mounts: BTreeMap<String, PathBuf>,
        /// Hybrid: the cgroup2 mount beside them. Containers get a cgroup there too, for the
        /// device program, which the kernel runs in addition to the v1 devices controller.
        #[serde(default)]
        unified: Option<PathBuf>,
    },
    /// Unified cgroup2 at the given mount point.
    V2 {
        /// mount point of cgroup2
        root: PathBuf,
    },
}

impl Hierarchy {
    /// Detects the layout from /proc/self/mountinfo.
    pub fn detect() -> Result<Self, CgroupError> {
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NotMounted)?;
        let mut mounts = BTreeMap::new();
        let mut v2_root = None;
        for line in info.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split(' ').nth(4).unwrap_or_default();
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or_default();
            let _source = post.next();
            let opts = post.next().unwrap_or_default();
            match fstype {
                "cgroup" => {
                    for opt in opts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            mounts.insert(opt.to_string(), PathBuf::from(mount_point));
                        }
                    }
                }
                "cgroup2" => v2_root = Some(PathBuf::from(mount_point)),
                _ => {}
            }
        }
        if mounts.contains_key("memory") {
            // A read-only cgroup2 mount (a nested, unprivileged setup) is left alone: the v1
            // devices controller confines containers there.
            let unified = v2_root.filter(|p| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok();
                // SAFETY: access(2) with a valid C string.
                c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
            });
            return Ok(Hierarchy::V1 { mounts, unified });
        }
        match v2_root {
            Some(root) => Ok(Hierarchy::V2 { root }),
            None => Err(CgroupError::NotMounted),
        }
    }

    /// The directories of the cgroup `rel` (like `dcpp/<id>`) in this hierarchy.
    pub fn paths(&self, rel: &str) -> Vec<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Hierarchy::V1 { mounts, unified } => mounts
                .values()
                .chain(unified)
                .map(|m| m.join(rel))
                .collect(),
            Hierarchy::V2 { root } => vec![root.join(rel)],
        }
    }

    /// The directory of the cgroup `rel` in the cgroup2 hierarchy, if there is one.
    pub fn unified_path(&self, rel: &str) -> Option<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Hierarchy::V1 { unified, .. } => unified.as_ref().map(|u| u.join(rel)),
            Hierarchy::V2 { root } => Some(root.join(rel)),
        }
    }

    fn controller_path(&self, controller: &str, rel: &str) -> Option<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self {
            Hierarchy::V1 { mounts, .. } => mounts.get(controller).map(|m| m.join(rel)),
            Hierarchy::V2 { root } => Some(root.join(rel)),
        }
    }

    /// Creates the cgroup `rel` and applies `resources`. On error, whatever was created is removed.
    pub fn create(
        &self,
        rel: &str,
        resources: Option<&LinuxResources>,
        privileged: bool,
    ) -> Result<(), CgroupError> {
        let res = self.create_inner(rel, resources, privileged);
        if res.is_err() {
            self.remove(rel);
        }
        res
    }

    fn create_inner(
        &self,
        rel: &str,
        resources: Option<&LinuxResources>,
        privileged: bool,
    ) -> Result<(), CgroupError> {
        if let Hierarchy::V2 { root } = self {
            // Each level above the container must delegate the controllers we limit.
            let mut dir = root.clone();
            for comp in Path::new(rel.trim_start_matches('/')).components() {
                let avail =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                let wants_cpuset = resources
                    .and_then(|r| r.cpu().as_ref())
                    .is_some_and(|c| c.cpus().is_some());
                let enable: Vec<String> = ["cpu", "memory", "pids", "cpuset", "io"]
                    .iter()
                    .filter(|c| **c != "cpuset" || wants_cpuset)
                    .filter(|c| avail.split_whitespace().any(|a| a == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !enable.is_empty() {
                    write(&dir.join("cgroup.subtree_control"), &enable.join(" "))?;
                }
                dir.push(comp);
                mkdir(&dir)?;
            }
        } else {
            for p in self.paths(rel) {
                mkdir(&p)?;
            }
            if let Hierarchy::V1 { mounts, .. } = self
                && let Some(root) = mounts.get("cpuset")
            {
                init_cpuset_v1(root, rel)?;
            }
        }
        let rules = device_rules(resources, privileged);
        if let Some(dir) = self
            .controller_path("devices", rel)
            .filter(|_| matches!(self, Hierarchy::V1 { .. }))
        {
            for r in &rules {
                let file = if r.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write(&dir.join(file), &r.v1_line())?;
            }
        }
        if !devices::allows_everything(&rules)
            && let Some(dir) = self.unified_path(rel)
        {
            match (devices::attach(&dir, &rules), self) {
                (Ok(()), _) => {}
                (Err(e), Hierarchy::V2 { .. }) => return Err(CgroupError::Devices(e)),
                // Hybrid: the v1 devices controller above already confines the container.
                (Err(e), Hierarchy::V1 { .. }) => {
                    tracing::warn!(cgroup = rel, "cgroup2 device program not attached: {e}")
                }
            }
        }
        let Some(r) = resources else { return Ok(()) };
        match self {
            Hierarchy::V1 { .. } => self.apply_v1(rel, r),
            Hierarchy::V2 { root } => apply_v2(&root.join(rel.trim_start_matches('/')), r),
        }
    }

    fn apply_v1(&self, rel: &str, r: &LinuxResources) -> Result<(), CgroupError> {
        if let (Some(mem), Some(dir)) = (r.memory(), self.controller_path("memory", rel)) {
            if let Some(limit) = mem.limit() {
                write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
            }
            // Memory + swap. Without swap accounting the file is absent and swap is not
            // limited: fine for unlimited (-1) or no swap beyond the limit as far as the
            // cgroup can tell, not for an explicit cap above the limit.
            if let Some(swap) = mem.swap() {
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &swap.to_string())?;
                } else if swap != -1 && Some(swap) != mem.limit() {
                    return Err(CgroupError::Unsupported(format!(
                        "a memory+swap limit of {swap} bytes needs swap accounting, which this host's kernel lacks (memory.memsw.limit_in_bytes; boot with swapaccount=1)"
                    )));
                }
            }
            if let Some(low) = mem.reservation() {
                write(&dir.join("memory.soft_limit_in_bytes"), &low.to_string())?;
            }
        }
        if let Some(set) = r.cpu().as_ref().and_then(|c| c.cpus().as_ref()) {
            let dir = self.controller_path("cpuset", rel).ok_or_else(|| {
                CgroupError::Unsupported(format!(
                    "cpuset {set:?}: the cpuset controller is not mounted on this host"
                ))
            })?;
            write(&dir.join("cpuset.cpus"), set)?;
        }
        if let (Some(cpu), Some(dir)) = (r.cpu(), self.controller_path("cpu", rel)) {
            if let Some(shares) = cpu.shares() {
                write(&dir.join("cpu.shares"), &shares.to_string())?;
            }
            if let Some(period) = cpu.period() {
                write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            }
            if let Some(quota) = cpu.quota() {
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let (Some(pids), Some(dir)) = (r.pids(), self.controller_path("pids", rel)) {
            let v = if pids.limit() > 0 {
                pids.limit().to_string()
            } else {
                "max".into()
            };
            write(&dir.join("pids.max"), &v)?;
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup (writes "0", which means "the writer").
    pub fn join_self(&self, rel: &str) -> Result<(), CgroupError> {
        for p in self.paths(rel) {
            write(&p.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    /// Moves process `pid` into the cgroup.
    pub fn join(&self, rel: &str, pid: i32) -> Result<(), CgroupError> {
        for p in self.paths(rel) {
            write(&p.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many times the kernel OOM killer fired inside this cgroup.
    pub fn oom_kills(&self, rel: &str) -> u64 {
        let (file, key) = match self {
            Hierarchy::V1 { .. } => ("memory.oom_control", "oom_kill"),
            Hierarchy::V2 { .. } => ("memory.events", "oom_kill"),
        };
        self.controller_path("memory", rel)
            .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0)
    }

    /// Current usage figures of the cgroup.
    pub fn stats(&self, rel: &str) -> Stats {
        self.stats_with(|ctrl, file| {
            std::fs::read_to_string(self.controller_path(ctrl, rel)?.join(file)).ok()
        })
    }

    /// [`Hierarchy::stats`] of the files `read` gives (by controller and file name).
    fn stats_with(&self, read: impl Fn(&'static str, &'static str) -> Option<String>) -> Stats {
        let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        // The working set as cAdvisor and `docker stats` count it: usage less the page cache
        // the kernel can drop at once.
        let working_set = |usage: u64, key: &str| {
            let inactive = read("memory", "memory.stat")
                .and_then(|s| stat_value(&s, key))
                .unwrap_or(0);
            usage.saturating_sub(inactive)
        };
        match self {
            Hierarchy::V1 { .. } => {
                let usage = num(read("memory", "memory.usage_in_bytes")).unwrap_or(0);
                let (blkio_read_bytes, blkio_write_bytes) =
                    read("blkio", "blkio.throttle.io_service_bytes_recursive")
                        .map(|s| blkio_v1(&s))
                        .unwrap_or_default();
                Stats {
                    cpu_usage_ns: num(read("cpuacct", "cpuacct.usage")).unwrap_or(0),
                    memory_usage_bytes: usage,
                    memory_working_set_bytes: working_set(usage, "total_inactive_file"),
                    memory_limit_bytes: num(read("memory", "memory.limit_in_bytes"))
                        .filter(|l| *l < (1 << 62)),
                    pids_current: num(read("pids", "pids.current")).unwrap_or(0),
                    pids_limit: num(read("pids", "pids.max")),
                    blkio_read_bytes,
                    blkio_write_bytes,
                }
            }
            Hierarchy::V2 { .. } => {
                let usage = num(read("memory", "memory.current")).unwrap_or(0);
                let io = read("io", "io.stat");
                Stats {
                    cpu_usage_ns: read("cpu", "cpu.stat")
                        .and_then(|s| {
                            s.lines().find_map(|l| {
                                l.strip_prefix("usage_usec ")
                                    .and_then(|v| v.trim().parse::<u64>().ok())
                            })
                        })
                        .map(|us| us * 1000)
                        .unwrap_or(0),
                    memory_usage_bytes: usage,
                    memory_working_set_bytes: working_set(usage, "inactive_file"),
                    memory_limit_bytes: num(read("memory", "memory.max")),
                    pids_current: num(read("pids", "pids.current")).unwrap_or(0),
                    pids_limit: num(read("pids", "pids.max")),
                    blkio_read_bytes: io.as_deref().map_or(0, |s| io_stat_v2(s, "rbytes")),
                    blkio_write_bytes: io.as_deref().map_or(0, |s| io_stat_v2(s, "wbytes")),
                }
            }
        }
    }

    /// The cgroup's figures from files held open (see [`StatsFiles`]).
    pub fn stats_of(&self, files: &StatsFiles) -> Stats {
        self.stats_with(|ctrl, file| files.read(self, ctrl, file))
    }

    /// Pids of every process still in the cgroup.
    pub fn pids(&self, rel: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for p in self.paths(rel) {
            if let Ok(s) = std::fs::read_to_string(p.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills whatever is left in the cgroup and removes its directories. Best effort and
    /// idempotent: a cgroup that is already gone is fine.
    pub fn remove(&self, rel: &str) {
        for attempt in 0..200 {
            let pids = self.pids(rel);
            for pid in &pids {
                // SAFETY: kill(2) with a plain pid and signal has no memory-safety preconditions.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            let mut busy = false;
            for p in self.paths(rel) {
                match std::fs::remove_dir(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => busy = true,
                }
            }
            if !busy {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(if attempt < 20 {
                2
            } else {
                20
            }));
        }
        tracing::warn!(
            cgroup = rel,
            "cgroup still busy after 200 attempts; left in place"
        );
    }

    /// Removes the cgroup parent directories (like `dcpp`) if no container cgroup is left in them.
    pub fn remove_parent_if_empty(&self, parent: &str) {
        let mut dirs = self.paths(parent);
        // OCI runtimes create the parent in every hierarchy (named and unified ones too).
        if let Hierarchy::V1 { mounts, .. } = self
            && let Some(base) = mounts.values().next().and_then(|m| m.parent())
            && let Ok(rd) = std::fs::read_dir(base)
        {
            dirs.extend(
                rd.flatten()
                    .map(|e| e.path().join(parent.trim_start_matches('/'))),
            );
        }
        for p in dirs {
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// The device rules of a container: the spec's list (what an OCI runtime would enforce too), or
/// docker's defaults when the spec has none.
fn device_rules(resources: Option<&LinuxResources>, privileged: bool) -> Vec<DeviceRule> {
    match resources.and_then(|r| r.devices().as_ref()) {
        Some(list) if !list.is_empty() => devices::rules_from_spec(list),
        _ if privileged => devices::allow_all(),
        _ => devices::default_rules(),
    }
}

fn apply_v2(dir: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(mem) = r.memory() {
        if let Some(limit) = mem.limit() {
            write(&dir.join("memory.max"), &limit.to_string())?;
        }
        // v2 limits swap alone: memory.swap.max is docker's memory+swap minus memory.
        if let Some(swap) = mem.swap() {
            let extra = match (swap, mem.limit()) {
                (-1, _) => None,
                (s, Some(l)) => Some(s.saturating_sub(l).max(0)),
                (s, None) => Some(s.max(0)),
            };
            let file = dir.join("memory.swap.max");
            match (extra, file.exists()) {
                (_, true) => write(
                    &file,
                    &extra.map_or_else(|| "max".to_owned(), |e| e.to_string()),
                )?,
                // No swap controller: no swap is what the container gets anyway.
                (Some(0) | None, false) => {}
                (Some(e), false) => {
                    return Err(CgroupError::Unsupported(format!(
                        "{e} bytes of swap asked, and this host's cgroup2 has no memory.swap.max"
                    )));
                }
            }
        }
        if let Some(low) = mem.reservation() {
            write(&dir.join("memory.low"), &low.to_string())?;
        }
    }
    if let Some(set) = r.cpu().as_ref().and_then(|c| c.cpus().as_ref()) {
        let file = dir.join("cpuset.cpus");
        if !file.exists() {
            return Err(CgroupError::Unsupported(format!(
                "cpuset {set:?}: the cpuset controller is not delegated to this cgroup"
            )));
        }
        write(&file, set)?;
    }
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares() {
            // The conversion runc and crun use from v1 shares [2, 262144] to v2 weight [1, 10000].
            let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
            write(&dir.join("cpu.weight"), &weight.to_string())?;
        }
        if let Some(quota) = cpu.quota() {
            let period = cpu.period().unwrap_or(100_000);
            let q = if quota > 0 {
                quota.to_string()
            } else {
                "max".into()
            };
            write(&dir.join("cpu.max"), &format!("{q} {period}"))?;
        }
    }
    if let Some(pids) = r.pids() {
        let v = if pids.limit() > 0 {
            pids.limit().to_string()
        } else {
            "max".into()
        };
        write(&dir.join("pids.max"), &v)?;
    }
    Ok(())
}

/// Gives every level of `rel` under the v1 cpuset mount `root` its parent's CPUs and memory
/// nodes where it has none yet: the kernel refuses to attach a process to a cpuset without
/// them (ENOSPC), and a new directory starts empty.
fn init_cpuset_v1(root: &Path, rel: &str) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for comp in Path::new(rel.trim_start_matches('/')).components() {
        let parent = dir.clone();
        dir.push(comp);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if own.trim().is_empty() {
                let from = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                write(&dir.join(file), from.trim())?;
            }
        }
    }
    Ok(())
}

/// `key value` of a `memory.stat` file.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Bytes read and written, summed over devices, of a v1
/// `blkio.throttle.io_service_bytes_recursive` (`MAJ:MIN Read N` lines).
fn blkio_v1(s: &str) -> (u64, u64) {
    let mut out = (0, 0);
    for l in s.lines() {
        let mut f = l.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => out.0 += n,
            "Write" => out.1 += n,
            _ => {}
        }
    }
    out
}

/// A `key=N` field summed over devices of a v2 `io.stat`.
fn io_stat_v2(s: &str, key: &str) -> u64 {
    s.lines()
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// Usage figures of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Total CPU time consumed, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory charged to the container, in bytes.
    pub memory_usage_bytes: u64,
    /// The part of it the kernel cannot reclaim at once (usage less inactive page cache).
    #[serde(default)]
    pub memory_working_set_bytes: u64,
    /// Bytes read from and written to block devices (v1: the blkio controller; v2: `io.stat`).
    #[serde(default)]
    pub blkio_read_bytes: u64,
    #[serde(default)]
    pub blkio_write_bytes: u64,
    /// Memory limit, if one is set.
    pub memory_limit_bytes: Option<u64>,
    /// Number of tasks.
    pub pids_current: u64,
    /// Task limit, if one is set.
    pub pids_limit: Option<u64>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Dir {
        op: "mkdir",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    fn resources(limit: i64, swap: i64, low: i64, shares: u64, cpus: &str) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(swap)
                    .reservation(low)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(shares)
                    .cpus(cpus.to_string())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    /// A v2 cgroup directory with the files the kernel would offer (`with_swap`: the swap
    /// controller is on).
    fn v2_dir(with_swap: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["memory.max", "memory.low", "cpu.weight", "cpuset.cpus"] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        if with_swap {
            std::fs::write(d.path().join("memory.swap.max"), "").unwrap();
        }
        d
    }

    fn read(d: &tempfile::TempDir, f: &str) -> String {
        std::fs::read_to_string(d.path().join(f)).unwrap()
    }

    #[test]
    fn block_io_and_the_working_set_are_summed_from_the_kernel_files() {
        let v1 = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n\
                  8:16 Read 1\n8:16 Write 2\nTotal 12291\n";
        assert_eq!(blkio_v1(v1), (4097, 8194));
        let v2 = "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=5 wbytes=7\n";
        assert_eq!(
            (io_stat_v2(v2, "rbytes"), io_stat_v2(v2, "wbytes")),
            (105, 207)
        );
        let stat = "cache 10\ninactive_file 300\ntotal_inactive_file 700\n";
        assert_eq!(stat_value(stat, "total_inactive_file"), Some(700));
        assert_eq!(stat_value(stat, "inactive_file"), Some(300));
        assert_eq!(stat_value(stat, "active_file"), None);
    }

    #[test]
    fn v2_takes_swap_beyond_the_limit_the_low_mark_the_weight_and_the_cpuset() {
        let d = v2_dir(true);
        apply_v2(
            d.path(),
            &resources(64 << 20, 96 << 20, 32 << 20, 512, "0-1"),
        )
        .unwrap();
        assert_eq!(read(&d, "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read(&d, "memory.swap.max"), (32u64 << 20).to_string());
        assert_eq!(read(&d, "memory.low"), (32u64 << 20).to_string());
        // runc's conversion: 1 + (512 - 2) * 9999 / 262142.
        assert_eq!(read(&d, "cpu.weight"), "20");
        assert_eq!(read(&d, "cpuset.cpus"), "0-1");
        apply_v2(d.path(), &resources(64 << 20, -1, 0, 1024, "0")).unwrap();
        assert_eq!(read(&d, "memory.swap.max"), "max");
    }

    #[test]
    fn v2_without_a_swap_controller_refuses_swap_it_cannot_limit() {
        let d = v2_dir(false);
        // No swap beyond the limit, or unlimited swap: what the container gets anyway.
        apply_v2(d.path(), &resources(64 << 20, 64 << 20, 0, 1024, "0")).unwrap();
        apply_v2(d.path(), &resources(64 << 20, -1, 0, 1024, "0")).unwrap();
        let e = apply_v2(d.path(), &resources(64 << 20, 96 << 20, 0, 1024, "0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no memory.swap.max"), "{e}");
        // A cgroup without the cpuset controller cannot pin CPUs.
        std::fs::remove_file(d.path().join("cpuset.cpus")).unwrap();
        let e = apply_v2(d.path(), &resources(64 << 20, 64 << 20, 0, 1024, "0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cpuset \"0\": the cpuset controller is not delegated"),
            "{e}"
        );
    }

    #[test]
    fn v1_writes_memsw_soft_limit_shares_and_cpuset_and_initialises_new_cpuset_levels() {
        let root = tempfile::tempdir().unwrap();
        let mount = |c: &str| root.path().join(c);
        let h = Hierarchy::V1 {
            mounts: ["memory", "cpu", "cpuset"]
                .iter()
                .map(|c| (c.to_string(), mount(c)))
                .collect(),
            unified: None,
        };
        for c in ["memory", "cpu", "cpuset"] {
            std::fs::create_dir_all(mount(c).join("p/c")).unwrap();
        }
        std::fs::write(mount("memory").join("p/c/memory.memsw.limit_in_bytes"), "").unwrap();
        // The kernel's new cpuset directories start with empty cpus and mems.
        std::fs::write(mount("cpuset").join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(mount("cpuset").join("cpuset.mems"), "0\n").unwrap();
        for f in [
            "p/cpuset.cpus",
            "p/cpuset.mems",
            "p/c/cpuset.cpus",
            "p/c/cpuset.mems",
        ] {
            std::fs::write(mount("cpuset").join(f), "\n").unwrap();
        }
        init_cpuset_v1(&mount("cpuset"), "/p/c").unwrap();
        let read = |f: &str| std::fs::read_to_string(root.path().join(f)).unwrap();
        assert_eq!(read("cpuset/p/cpuset.cpus"), "0-3");
        assert_eq!(read("cpuset/p/c/cpuset.mems"), "0");
        h.apply_v1("/p/c", &resources(64 << 20, 96 << 20, 32 << 20, 512, "1"))
            .unwrap();
        assert_eq!(
            read("memory/p/c/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read("memory/p/c/memory.memsw.limit_in_bytes"),
            (96u64 << 20).to_string()
        );
        assert_eq!(
            read("memory/p/c/memory.soft_limit_in_bytes"),
            (32u64 << 20).to_string()
        );
        assert_eq!(read("cpu/p/c/cpu.shares"), "512");
        assert_eq!(read("cpuset/p/c/cpuset.cpus"), "1");
        // Without swap accounting a cap above the limit cannot be honoured.
        std::fs::remove_file(mount("memory").join("p/c/memory.memsw.limit_in_bytes")).unwrap();
        let e = h
            .apply_v1("/p/c", &resources(64 << 20, 96 << 20, 0, 512, "1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs swap accounting"), "{e}");
        h.apply_v1("/p/c", &resources(64 << 20, -1, 0, 512, "1"))
            .unwrap();
    }
}

/// The files [`Hierarchy::stats`] reads of one cgroup, opened on first use and held open. A
/// cgroup file read again from offset 0 shows the current figures; what this saves is the
/// path walk, open and close of each read, most of the cost when a metrics scrape reads the
/// figures of a hundred containers. A file that cannot be held open is read by its path.
/// The limits are read once: they are written when the container is created and not after
/// (a changed limit is a new task, so a new container).
#[derive(Debug)]
pub struct StatsFiles {
    rel: String,
    open: std::sync::Mutex<BTreeMap<(&'static str, &'static str), Held>>,
}

#[derive(Debug)]
enum Held {
    Open(std::fs::File),
    /// A limit, as it was read.
    Fixed(String),
    /// Could not be opened: read by its path each time.
    Unopened,
}

/// The limit files among those [`Hierarchy::stats`] reads (v1 and v2).
const LIMITS: [&str; 3] = ["memory.limit_in_bytes", "memory.max", "pids.max"];

impl StatsFiles {
    pub fn new(rel: &str) -> StatsFiles {
        StatsFiles {
            rel: rel.to_string(),
            open: Default::default(),
        }
    }

    fn read(&self, hier: &Hierarchy, ctrl: &'static str, file: &'static str) -> Option<String> {
        let path = || Some(hier.controller_path(ctrl, &self.rel)?.join(file));
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry((ctrl, file)).or_insert_with(|| {
            match path().and_then(|p| std::fs::File::open(p).ok()) {
                Some(f) => Held::Open(f),
                None => Held::Unopened,
            }
        });
        match held {
            Held::Fixed(s) => Some(s.clone()),
            Held::Open(f) => {
                let s = read_record(f).ok()?;
                if LIMITS.contains(&file) {
                    *held = Held::Fixed(s.clone());
                }
                Some(s)
            }
            Held::Unopened => std::fs::read_to_string(path()?).ok(),
        }
    }
}

/// The content of an open file the kernel prints as one record (a cgroup file, whose
/// `seq_show` prints it whole; `/proc/PID/stat`), from offset 0. Such a file's content is
/// made whole at the read from offset 0 and handed out from there, so a read that does not
/// fill the buffer has all of it: one read instead of [`read_from_start`]'s two (the second
/// to see the end), which at a scrape of every container's files is a third of its reads.
/// Not for files of several records (`/proc/PID/net/dev`): those may stop short of the end.
pub fn read_record(f: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        let k = f.read_at(&mut buf[n..], n as u64)?;
        n += k;
        if k == 0 || n < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The whole content of an open file, read from offset 0 (the file's own offset untouched).
pub fn read_from_start(f: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        if n == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
