//! `create`: validates the request, builds the bundle (spec, rootfs, name-resolution files) and
//! has a monitor set the container up, waiting for `start`. On any failure nothing is left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lock::creating_guard;
use super::{
    ContainerInfo, ContainerManager, ContainerState, CreateOptions, Error, MonitorInfo,
    MountRequest, MountSource, NamespaceMode, NetworkMode, RuntimeKind, ShimConfig, Status, Ulimit,
    VolumesFrom, io_err, parse_signal, spec, user, util, volume,
};

impl ContainerManager {
    /// Creates a container: validates everything first, then builds the bundle, mounts the
    /// rootfs and has a monitor set up namespaces and cgroup with the process waiting for
    /// [`start`](Self::start). On any failure nothing is left behind.
    pub fn create(&self, opts: &CreateOptions) -> Result<ContainerInfo, Error> {
        let expanded;
        let opts = if opts.volumes_from.is_empty() {
            opts
        } else {
            let mut o = opts.clone();
            for from in &opts.volumes_from {
                for m in self.mounts_of(from)? {
                    if !o.mounts.iter().any(|own| own.target == m.target) {
                        o.mounts.push(m);
                    }
                }
            }
            expanded = o;
            &expanded
        };
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
        check_name_resolution(opts)?;
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
                // Docker's rule: the joiner sees the target's files, so its own entries would
                // be silently absent.
                if !opts.extra_hosts.is_empty() {
                    return Err(Error::InvalidConfig(format!(
                        "conflicting options: custom host-to-IP mappings and the network mode container:{target}"
                    )));
                }
                if !(opts.dns.is_empty()
                    && opts.dns_search.is_empty()
                    && opts.dns_options.is_empty())
                {
                    return Err(Error::InvalidConfig(format!(
                        "conflicting options: dns settings and the network mode container:{target}"
                    )));
                }
                Some(self.network_target(target)?)
            }
            _ => None,
        };

        let devices = spec::host_devices(opts)?;
        let ipc_ns = self.namespace_target(&opts.ipc, "ipc")?;
        let pid_ns = self.namespace_target(&opts.pid, "pid")?;

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
                ipc_ns: ipc_ns.as_deref(),
                pid_ns: pid_ns.as_deref(),
                devices: &devices,
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
        if self.by_name(&state.name).is_some() {
            return Err(Error::NameInUse(state.name));
        }
        std::fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let res = self
            .write_state(&state)
            .and_then(|()| self.claim_name(&state))
            .and_then(|()| creating_guard(&dir));
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
                let mut hosts = format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
                );
                for (host, ip) in &opts.extra_hosts {
                    hosts.push_str(&format!("{ip}\t{host}\n"));
                }
                shared("hosts", hosts)?;
                shared(
                    "resolv.conf",
                    resolv_conf(
                        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                        opts,
                    ),
                )?;
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
        Self::write_files(&dir, &opts.files)?;
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

        let t0 = std::time::Instant::now();
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
        let t1 = std::time::Instant::now();
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
        let ms = |a: std::time::Instant, b: std::time::Instant| {
            b.duration_since(a).as_secs_f64() * 1000.0
        };
        tracing::debug!(
            container = %state.name,
            shim_ms = ms(t0, t1),
            network_ms = ms(t1, std::time::Instant::now()),
            "create timings"
        );
        Ok(())
    }

    /// Writes the container's secrets and configs into a tmpfs of its own (`files/`), each with
    /// its owner and mode: their content never reaches the disk. The container sees them through
    /// read-only bind mounts ([`spec::files_source`]).
    fn write_files(dir: &Path, files: &[super::FileRequest]) -> Result<(), Error> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if files.is_empty() {
            return Ok(());
        }
        let fdir = spec::files_dir(dir);
        std::fs::create_dir(&fdir).map_err(io_err(format!("creating {}", fdir.display())))?;
        // Room for the data and a page per file; nothing else is ever written there.
        let size: usize = files.iter().map(|f| f.data.len() + 4096).sum::<usize>() + 4096;
        nix::mount::mount(
            Some("tmpfs"),
            &fdir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(format!("mode=0700,size={size}").as_str()),
        )
        .map_err(|e| Error::Create(format!("mounting the files tmpfs: {e}")))?;
        for (i, f) in files.iter().enumerate() {
            let path = spec::files_source(dir, i);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(format!("creating {}", path.display())))?;
            out.write_all(&f.data)
                .map_err(io_err(format!("writing {}", path.display())))?;
            std::os::unix::fs::fchown(&out, Some(f.uid), Some(f.gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
            out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                f.mode & 0o7777,
            ))
            .map_err(io_err(format!("chmod {}", path.display())))?;
        }
        Ok(())
    }

    /// The network namespace, hostname and name-resolution files of the running container
    /// `target` (for [`NetworkMode::Container`]).
    fn network_target(&self, target: &str) -> Result<JoinedNetwork, Error> {
        let (st, mon) = self.running_target(target, "network")?;
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

    /// The volumes and bind mounts of container `from.container` as requests for another
    /// container, read from its spec: the files dcpp writes for the container itself (hosts,
    /// resolv.conf, hostname) and the kernel file systems are not the user's mounts.
    fn mounts_of(&self, from: &VolumesFrom) -> Result<Vec<MountRequest>, Error> {
        let target = &from.container;
        let st = self.resolve(target).map_err(|e| match e {
            Error::NotFound(_) => Error::InvalidConfig(format!(
                "volumes_from container:{target}: no such container"
            )),
            other => other,
        })?;
        let dir = self.dir(&st.id);
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).map_err(io_err("reading config.json"))?,
        )
        .map_err(|e| Error::Create(format!("{}/config.json: {e}", dir.display())))?;
        let volumes = self.volumes.root();
        let mut out = Vec::new();
        for m in spec.mounts().iter().flatten() {
            let (Some("bind"), Some(src)) = (m.typ().as_deref(), m.source()) else {
                continue;
            };
            if src.starts_with(&dir) {
                continue;
            }
            let source = match src.strip_prefix(volumes) {
                Ok(rest) => match rest.components().next() {
                    Some(std::path::Component::Normal(name)) => {
                        MountSource::Volume(name.to_string_lossy().into_owned())
                    }
                    _ => continue,
                },
                Err(_) => MountSource::Bind(src.clone()),
            };
            let own_ro = m.options().iter().flatten().any(|o| o == "ro");
            out.push(MountRequest {
                source,
                target: m.destination().to_string_lossy().into_owned(),
                read_only: from.read_only || own_ro,
            });
        }
        Ok(out)
    }

    /// The running container `target` whose `what` namespace (`network`, `ipc`, `pid`) a new
    /// container joins, and its monitor's record (the init pid).
    fn running_target(
        &self,
        target: &str,
        what: &str,
    ) -> Result<(ContainerState, MonitorInfo), Error> {
        let bad = |msg: String| Error::InvalidConfig(format!("{what} container:{target}: {msg}"));
        let st = self.resolve(target).map_err(|e| match e {
            Error::NotFound(_) => bad("no such container".into()),
            other => bad(other.to_string()),
        })?;
        let info = self.info_of(st.clone());
        let mon = self.monitor_info(&st.id);
        let (Status::Running, Some(mon)) = (info.status, mon) else {
            return Err(bad(format!(
                "cannot join the {what} namespace of container {} ({}): it is {}, not running",
                st.name,
                &st.id[..12],
                info.status
            )));
        };
        if !util::process_alive(mon.init_pid, mon.init_start_time) {
            return Err(bad(format!("container {} is not running", st.name)));
        }
        Ok((st, mon))
    }

    /// `/proc/<init pid>/ns/<kind>` of the running container named by an ipc or pid mode;
    /// the executor opens it at create, after which the joiner holds the namespace.
    fn namespace_target(&self, mode: &NamespaceMode, kind: &str) -> Result<Option<PathBuf>, Error> {
        let NamespaceMode::Container(target) = mode else {
            return Ok(None);
        };
        let (_, mon) = self.running_target(target, kind)?;
        Ok(Some(PathBuf::from(format!(
            "/proc/{}/ns/{kind}",
            mon.init_pid
        ))))
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

/// The container's resolv.conf from the host's `host` text: `dns`, `dns_search` and
/// `dns_options` replace the host's nameserver, search and options lines (docker's rule);
/// without `dns`, loopback nameservers of the host are dropped outside the host's network
/// namespace, where they are unreachable.
fn resolv_conf(host: &str, opts: &CreateOptions) -> String {
    crate::network::resolv_from_host(
        host,
        &opts.dns,
        &opts.dns_search,
        &opts.dns_options,
        opts.network == NetworkMode::Host,
    )
}

/// Extra hosts and nameservers must be addresses (docker's `--add-host` and `--dns` rules), and
/// none of them may break a line of the generated files.
fn check_name_resolution(opts: &CreateOptions) -> Result<(), Error> {
    let bad = |s: &str| s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '#');
    for (host, ip) in &opts.extra_hosts {
        if bad(host) {
            return Err(Error::InvalidConfig(format!(
                "invalid extra host name {host:?}"
            )));
        }
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::InvalidConfig(format!(
                "invalid IP address {ip:?} for extra host {host}"
            )));
        }
    }
    for ns in &opts.dns {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::InvalidConfig(format!(
                "invalid dns server {ns:?}: must be an IP address"
            )));
        }
    }
    if let Some(s) = opts
        .dns_search
        .iter()
        .chain(&opts.dns_options)
        .find(|s| bad(s))
    {
        return Err(Error::InvalidConfig(format!(
            "invalid dns search domain or option {s:?}"
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::ImageInput;

    fn opts() -> CreateOptions {
        CreateOptions::new(ImageInput {
            reference: "t".into(),
            layer_dirs: Vec::new(),
            config: None,
        })
    }

    const HOST: &str =
        "# host\nnameserver 127.0.0.53\nnameserver 10.0.0.1\nsearch lan\noptions edns0\n";

    #[test]
    fn own_dns_settings_replace_the_hosts_lines() {
        assert_eq!(
            resolv_conf(HOST, &opts()),
            "# host\nnameserver 10.0.0.1\nsearch lan\noptions edns0\n"
        );
        let mut o = opts();
        o.network = NetworkMode::Host;
        assert_eq!(resolv_conf(HOST, &o), HOST);
        let mut o = opts();
        o.dns = vec!["9.9.9.9".into(), "1.1.1.1".into()];
        o.dns_search = vec!["corp.example".into()];
        o.dns_options = vec!["ndots:2".into(), "timeout:1".into()];
        assert_eq!(
            resolv_conf(HOST, &o),
            "# host\nnameserver 9.9.9.9\nnameserver 1.1.1.1\nsearch corp.example\noptions ndots:2 timeout:1\n"
        );
    }

    #[test]
    fn extra_hosts_and_nameservers_must_be_addresses() {
        let mut o = opts();
        o.extra_hosts = vec![
            ("db".into(), "10.0.0.5".into()),
            ("v6".into(), "::1".into()),
        ];
        o.dns = vec!["10.0.0.53".into()];
        check_name_resolution(&o).unwrap();
        for (host, ip, why) in [
            ("db", "host-gateway", "invalid IP address"),
            ("db", "", "invalid IP address"),
            ("two words", "10.0.0.1", "invalid extra host name"),
        ] {
            let mut o = opts();
            o.extra_hosts = vec![(host.into(), ip.into())];
            let e = check_name_resolution(&o).unwrap_err().to_string();
            assert!(e.contains(why), "{host} {ip}: {e}");
        }
        let mut o = opts();
        o.dns = vec!["dns.example".into()];
        let e = check_name_resolution(&o).unwrap_err().to_string();
        assert!(e.contains("must be an IP address"), "{e}");
    }
}
