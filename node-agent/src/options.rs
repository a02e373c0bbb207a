//! How a compose service and one of its tasks become the runtime's [`CreateOptions`]. Pure: the
//! agent does the I/O (image lookup, networks) and hands the results in, so every mapping rule
//! can be tested without a kernel.

use std::path::PathBuf;
use std::time::Duration;

use dcpp_reconciler::Task;
use dcpp_runtime::container::{
    CreateOptions, DeviceRequest, MountRequest, MountSource, NamespaceMode, NetworkMode, Ulimit,
    VolumesFrom,
};
use dcpp_spec::{Service, VolumeType};

use crate::Error;
use crate::host::Image;
use dcpp_control::schema::{
    LABEL_IMAGE_ID, LABEL_SERVICE, LABEL_SLOT, LABEL_STACK, LABEL_TASK, ServiceDoc,
};

/// Finds the running container (its id) of another service of the same stack on this node,
/// for `network_mode`, `ipc` and `pid: service:NAME`.
pub type PeerLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Builds the create options of task `t` of `doc` named `name` from image `img`. Networks
/// attached through the runtime's hook (and the resolv.conf that goes with them) are added by
/// the agent afterwards when the result's `network` is [`NetworkMode::Private`].
pub fn container_options(
    t: &Task,
    doc: &ServiceDoc,
    img: &Image,
    name: &str,
    peer: PeerLookup<'_>,
) -> Result<CreateOptions, Error> {
    let svc = &doc.service;
    let mut o = CreateOptions::new(img.input.clone());
    o.name = Some(name.to_string());
    o.command = svc.command.clone();
    o.entrypoint = svc.entrypoint.clone();
    o.env = svc
        .environment
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    o.working_dir = svc.working_dir.clone();
    o.user = svc.user.clone();
    o.hostname = svc.hostname.clone();
    o.init = svc.init.unwrap_or(false);
    o.stop_signal = svc.stop_signal.clone();
    o.stop_grace_period = svc
        .stop_grace_period
        .map(|d| Duration::from_nanos(d.0))
        .or(Some(Duration::from_secs(10)));
    // `deploy.resources.limits` and the service-level keys are one limit (the loader refuses
    // two different values, as compose does).
    let limits = svc
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    o.memory = svc.mem_limit.or(limits.and_then(|l| l.memory));
    o.cpus = svc.cpus.or(limits.and_then(|l| l.cpus));
    o.pids_limit = svc.pids_limit.or(limits.and_then(|l| l.pids));
    // compose prints 0 for these as unset (omitempty), and docker reads 0 as "not set".
    o.cpu_shares = match svc.cpu_shares {
        None | Some(0) => None,
        Some(n) => Some(u64::try_from(n).map_err(|_| {
            Error::Invalid(format!(
                "invalid cpu_shares {n}: allowed range is 2 to 262144"
            ))
        })?),
    };
    o.cpuset_cpus = svc.cpuset.clone().filter(|c| !c.is_empty());
    o.memory_reservation = svc.mem_reservation.filter(|m| *m != 0);
    o.memory_swap = svc.memswap_limit.filter(|m| *m != 0);
    o.oom_score_adj = svc
        .oom_score_adj
        .map(|a| {
            i32::try_from(a).map_err(|_| {
                Error::Invalid(format!(
                    "invalid oom_score_adj {a}: the range is -1000 to 1000"
                ))
            })
        })
        .transpose()?;
    o.extra_hosts = extra_hosts(&svc.extra_hosts)?;
    o.dns = svc.dns.clone();
    o.dns_search = svc.dns_search.clone();
    o.dns_options = svc.dns_opt.clone();
    o.privileged = svc.privileged;
    o.read_only = svc.read_only;
    o.cap_add = svc.cap_add.clone();
    o.cap_drop = svc.cap_drop.clone();
    o.shm_size = svc.shm_size;
    o.mounts = mounts(t, doc)?;
    o.devices = svc.devices.iter().map(|d| device(d)).collect();
    o.volumes_from = svc
        .volumes_from
        .iter()
        .map(|f| volumes_from(f, peer))
        .collect::<Result<_, _>>()?;
    o.ulimits = ulimits(svc);
    let mut labels = svc.labels.clone();
    labels.insert(LABEL_STACK.into(), doc.spec.stack.clone());
    labels.insert(LABEL_SERVICE.into(), doc.spec.name.clone());
    labels.insert(LABEL_SLOT.into(), t.slot.to_string());
    labels.insert(LABEL_TASK.into(), t.id.0.to_string());
    labels.insert(LABEL_IMAGE_ID.into(), img.id.clone());
    o.labels = labels;
    o.sysctls = svc.sysctls.clone();
    o.network = network_mode(svc.network_mode.as_deref(), peer)?;
    o.ipc = namespace_mode("ipc", svc.ipc.as_deref(), peer)?;
    o.pid = namespace_mode("pid", svc.pid.as_deref(), peer)?;
    if let Some(want) = &svc.platform {
        check_platform(want, &img.platform)?;
    }
    Ok(o)
}

/// `platform:` against what the image says it was built for. A request without a variant
/// takes any variant, as docker's matcher does; os and architecture must be equal.
fn check_platform(want: &str, have: &str) -> Result<(), Error> {
    let w: Vec<&str> = want.split('/').collect();
    let h: Vec<&str> = have.split('/').collect();
    let fits = w.len() >= 2
        && h.len() >= 2
        && w[0] == h[0]
        && w[1] == h[1]
        && w.get(2).is_none_or(|v| h.get(2) == Some(v));
    if fits {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "image platform {have} does not match the requested platform {want}"
        )))
    }
}

/// `extra_hosts:` entries (`host=ip`, as the loader keeps them) as (host, address) pairs.
/// Docker's `host-gateway` names the address of its default bridge, which a dcpp node does not
/// have: refused rather than written as a name the resolver would not know.
fn extra_hosts(entries: &[String]) -> Result<Vec<(String, String)>, Error> {
    entries
        .iter()
        .map(|e| {
            let (host, ip) = e
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("extra_hosts entry {e:?}: missing IP")))?;
            if ip == "host-gateway" {
                return Err(Error::Invalid(format!(
                    "extra_hosts {host}: host-gateway is not supported by dcpp; give the address"
                )));
            }
            Ok((host.to_owned(), ip.to_owned()))
        })
        .collect()
}

/// `network_mode:`. `service:NAME` joins the running container of NAME on this node, which the
/// reconciler made sure exists before assigning the task here; if it died since, the task
/// fails with that reason and the reconciler places a new one next to NAME's next task.
fn network_mode(mode: Option<&str>, peer: PeerLookup<'_>) -> Result<NetworkMode, Error> {
    Ok(match mode {
        None | Some("bridge" | "default") => NetworkMode::Private,
        Some("host") => NetworkMode::Host,
        Some("none") => NetworkMode::None,
        Some(m) => {
            if let Some(name) = m.strip_prefix("service:") {
                let id = peer(name).ok_or_else(|| {
                    Error::Invalid(format!(
                        "network_mode {m}: no running container of service {name} on this node"
                    ))
                })?;
                NetworkMode::Container(id)
            } else if let Some(c) = m.strip_prefix("container:").filter(|c| !c.is_empty()) {
                NetworkMode::Container(c.to_string())
            } else {
                return Err(Error::Invalid(format!("unsupported network_mode {m:?}")));
            }
        }
    })
}

/// A `devices:` entry, `HOST[:CONTAINER[:PERMISSIONS]]` (checked by the loader): the same
/// path inside when none is given, all access (`rwm`) when no permissions are, as docker.
fn device(entry: &str) -> DeviceRequest {
    let mut parts = entry.splitn(3, ':');
    let host = parts.next().unwrap_or_default();
    let container = parts.next().filter(|c| !c.is_empty()).unwrap_or(host);
    let access = parts.next().filter(|a| !a.is_empty()).unwrap_or("rwm");
    DeviceRequest {
        host: PathBuf::from(host),
        container: container.to_owned(),
        access: access.to_owned(),
    }
}

/// A `volumes_from:` entry (checked by the loader): `SERVICE[:ro|rw]` takes the mounts of the
/// running container of SERVICE on this node, found as for `network_mode: service:`.
fn volumes_from(entry: &str, peer: PeerLookup<'_>) -> Result<VolumesFrom, Error> {
    let (container, rest) = match entry.strip_prefix("container:") {
        Some(rest) => (None, rest),
        None => (Some(()), entry),
    };
    let (name, mode) = rest.split_once(':').unwrap_or((rest, "rw"));
    let container = match container {
        None => name.to_owned(),
        Some(()) => peer(name).ok_or_else(|| {
            Error::Invalid(format!(
                "volumes_from {entry}: no running container of service {name} on this node"
            ))
        })?,
    };
    Ok(VolumesFrom {
        container,
        read_only: mode == "ro",
    })
}

/// `ipc:` or `pid:` (`key`). `service:NAME` joins the namespace of the running container of
/// NAME on this node, found as for `network_mode: service:NAME`.
fn namespace_mode(
    key: &str,
    mode: Option<&str>,
    peer: PeerLookup<'_>,
) -> Result<NamespaceMode, Error> {
    Ok(match mode {
        None => NamespaceMode::Private,
        Some("private" | "shareable") if key == "ipc" => NamespaceMode::Private,
        Some("host") => NamespaceMode::Host,
        Some(m) => {
            if let Some(name) = m.strip_prefix("service:") {
                let id = peer(name).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{key} {m}: no running container of service {name} on this node"
                    ))
                })?;
                NamespaceMode::Container(id)
            } else if let Some(c) = m.strip_prefix("container:").filter(|c| !c.is_empty()) {
                NamespaceMode::Container(c.to_string())
            } else {
                // The loader lets through only these; another value is a document not from it.
                return Err(Error::Invalid(format!("{key} {m:?} is not supported")));
            }
        }
    })
}

/// The mounts of `volumes:` and `tmpfs:`, in that order; two mounts on one target are refused
/// (docker's "duplicate mount point").
fn mounts(t: &Task, doc: &ServiceDoc) -> Result<Vec<MountRequest>, Error> {
    let svc = &doc.service;
    let mut out: Vec<MountRequest> = Vec::new();
    for v in &svc.volumes {
        let source = match v.kind {
            VolumeType::Volume => match &v.source {
                // Named volumes were resolved against the top-level `volumes:` at apply time;
                // a service document stored before that falls back to compose's naming rule.
                Some(key) => MountSource::Volume(
                    doc.spec
                        .volumes
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| format!("{}_{key}", doc.spec.stack)),
                ),
                None => MountSource::Volume(anonymous_volume(t, &v.target)),
            },
            VolumeType::Bind => {
                let src = v.source.as_deref().ok_or_else(|| {
                    Error::Invalid(format!("bind mount at {} has no source", v.target))
                })?;
                MountSource::Bind(PathBuf::from(src))
            }
            VolumeType::Tmpfs => MountSource::Tmpfs(v.tmpfs.as_ref().and_then(|o| o.size)),
            VolumeType::Npipe | VolumeType::Image => {
                return Err(Error::Invalid(format!(
                    "mount at {}: type {:?} is not supported",
                    v.target, v.kind
                )));
            }
        };
        push_mount(
            &mut out,
            MountRequest {
                source,
                target: v.target.clone(),
                read_only: v.read_only,
            },
        )?;
    }
    for entry in &svc.tmpfs {
        push_mount(&mut out, tmpfs_entry(entry)?)?;
    }
    Ok(out)
}

fn push_mount(out: &mut Vec<MountRequest>, m: MountRequest) -> Result<(), Error> {
    if out.iter().any(|x| x.target == m.target) {
        return Err(Error::Invalid(format!(
            "duplicate mount point {}",
            m.target
        )));
    }
    out.push(m);
    Ok(())
}

/// An anonymous volume (`- /data`) belongs to the slot, so that, as with compose, a re-created
/// container of the slot finds the data of its predecessor; `dcpp volume rm` removes it.
fn anonymous_volume(t: &Task, target: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in target.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let slot: String = t
        .slot
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{}.{slot}.anon-{h:08x}", t.service)
}

/// One service-level `tmpfs:` entry, `PATH[:OPTIONS]`. Options the runtime cannot honour are
/// refused rather than silently dropped (`noexec` asked and not given would be a surprise).
fn tmpfs_entry(entry: &str) -> Result<MountRequest, Error> {
    let (target, opts) = entry.split_once(':').unwrap_or((entry, ""));
    let bad = |why: String| Error::Invalid(format!("tmpfs {entry:?}: {why}"));
    if !target.starts_with('/') || target == "/" {
        return Err(bad("the path must be absolute and not /".into()));
    }
    let mut m = MountRequest {
        source: MountSource::Tmpfs(None),
        target: target.to_string(),
        read_only: false,
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            None => match o {
                "ro" => m.read_only = true,
                "rw" => m.read_only = false,
                // Always applied by the runtime.
                "nosuid" | "nodev" => {}
                other => return Err(bad(format!("option {other:?} is not supported"))),
            },
            Some(("size", v)) => {
                let size = parse_size(v).ok_or_else(|| bad(format!("invalid size {v:?}")))?;
                m.source = MountSource::Tmpfs(Some(size));
            }
            // The runtime's tmpfs mode is the kernel default, 1777.
            Some(("mode", "1777" | "01777")) => {}
            Some((k, _)) => return Err(bad(format!("option {k:?} is not supported"))),
        }
    }
    Ok(m)
}

/// `64m`, `1g`, `65536k`, `1048576`: bytes, with binary k/m/g suffixes (docker's RAMInBytes).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// `ulimits:`; a negative value (compose's -1) means unlimited.
fn ulimits(svc: &Service) -> Vec<Ulimit> {
    let v = |n: i64| u64::try_from(n).unwrap_or(u64::MAX);
    svc.ulimits
        .iter()
        .map(|(name, u)| Ulimit {
            name: name.clone(),
            soft: v(u.soft),
            hard: v(u.hard),
        })
        .collect()
}

/// Host paths of bind mounts that compose creates when missing (`bind.create_host_path`, set
/// for the short syntax). The mapping is pure, so the agent creates them before `create`.
pub fn host_paths_to_create(svc: &Service) -> Vec<PathBuf> {
    svc.volumes
        .iter()
        .filter(|v| v.kind == VolumeType::Bind)
        .filter(|v| v.bind.as_ref().is_some_and(|b| b.create_host_path))
        .filter_map(|v| v.source.as_deref().map(PathBuf::from))
        .collect()
}

/// The volumes `down --volumes` removes for a stack, among the `existing` volume names: the
/// named volumes its services declare (not the external ones) and the anonymous volumes of its
/// slots (see [`anonymous_volume`]). Sorted, without duplicates.
pub fn stack_volumes(services: &[ServiceDoc], existing: &[String]) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for d in services {
        out.extend(
            d.spec
                .volumes
                .values()
                .filter(|n| !d.spec.external_volumes.contains(*n))
                .filter(|n| existing.contains(n))
                .cloned(),
        );
        let anon = format!("{}.", d.id());
        out.extend(
            existing
                .iter()
                .filter(|n| n.starts_with(&anon) && n.contains(".anon-"))
                .cloned(),
        );
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_needs_os_and_arch_and_a_variant_only_when_asked() {
        assert!(check_platform("linux/amd64", "linux/amd64").is_ok());
        assert!(check_platform("linux/arm64", "linux/arm64/v8").is_ok());
        assert!(check_platform("linux/arm64/v8", "linux/arm64/v8").is_ok());
        assert!(check_platform("linux/arm/v7", "linux/arm/v6").is_err());
        assert!(check_platform("linux/arm/v7", "linux/arm").is_err());
        let e = check_platform("linux/arm64", "linux/amd64").unwrap_err();
        assert!(
            e.to_string().contains(
                "image platform linux/amd64 does not match the requested platform linux/arm64"
            ),
            "{e}"
        );
        assert!(check_platform("windows/amd64", "linux/amd64").is_err());
    }
    use dcpp_control::schema::stack_docs;
    use dcpp_reconciler::{ServiceId, Slot, TaskId, TaskState};

    /// Loads `yaml` through the real compose loader and returns the documents of `service`.
    fn doc(yaml: &str, service: &str) -> ServiceDoc {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("compose.yml");
        std::fs::write(&f, yaml).unwrap();
        let loaded = dcpp_spec::load(&dcpp_spec::LoadOptions {
            files: vec![f],
            working_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        let (_, docs) = stack_docs(&loaded.project, "test").unwrap();
        docs.into_iter().find(|d| d.spec.name == service).unwrap()
    }

    fn task(doc: &ServiceDoc, slot: u32) -> Task {
        Task {
            state: TaskState::Assigned,
            ..Task::new(
                TaskId(7),
                ServiceId::new(&doc.spec.stack, &doc.spec.name),
                Slot::Replica(slot),
                doc.spec.version,
                doc.spec.image.clone(),
                Default::default(),
                0,
            )
        }
    }

    fn mount(source: MountSource, target: &str, read_only: bool) -> MountRequest {
        MountRequest {
            source,
            target: target.into(),
            read_only,
        }
    }

    #[test]
    fn volumes_map_to_named_volumes_binds_and_tmpfs() {
        let d = doc(
            r#"
name: shop
services:
  db:
    image: busybox
    volumes:
      - data:/var/lib/db
      - shared:/shared:ro
      - /srv/conf:/etc/conf:ro
      - /cache
      - type: tmpfs
        target: /scratch
        tmpfs: { size: 1048576 }
      - type: volume
        source: named
        target: /named
        volume: { nocopy: true }
    tmpfs:
      - /run
      - /tmp:size=64m,mode=1777,ro
volumes:
  data: {}
  shared: { external: true }
  named: { name: custom-name }
"#,
            "db",
        );
        assert_eq!(
            mounts(&task(&d, 2), &d).unwrap(),
            vec![
                mount(
                    MountSource::Volume("shop_data".into()),
                    "/var/lib/db",
                    false
                ),
                mount(MountSource::Volume("shared".into()), "/shared", true),
                mount(MountSource::Bind("/srv/conf".into()), "/etc/conf", true),
                mount(
                    MountSource::Volume(anonymous_volume(&task(&d, 2), "/cache")),
                    "/cache",
                    false
                ),
                mount(MountSource::Tmpfs(Some(1 << 20)), "/scratch", false),
                mount(MountSource::Volume("custom-name".into()), "/named", false),
                mount(MountSource::Tmpfs(None), "/run", false),
                mount(MountSource::Tmpfs(Some(64 << 20)), "/tmp", true),
            ]
        );
        // Anonymous volumes belong to the slot: stable for it, distinct from other slots.
        let a2 = anonymous_volume(&task(&d, 2), "/cache");
        assert_eq!(a2, anonymous_volume(&task(&d, 2), "/cache"));
        assert_ne!(a2, anonymous_volume(&task(&d, 3), "/cache"));
        assert!(a2.starts_with("shop_db.2.anon-"), "{a2}");
        dcpp_runtime::container::volume::validate_name(&a2).unwrap();
        assert_eq!(
            host_paths_to_create(&d.service),
            vec![PathBuf::from("/srv/conf")]
        );
    }

    #[test]
    fn down_volumes_takes_the_stacks_own_volumes_only() {
        let yaml = "name: shop\nservices:\n  db:\n    image: busybox\n    volumes: [\"data:/d\", \"ext:/e\", /anon]\nvolumes:\n  data: {}\n  ext: { external: true }\n";
        let d = doc(yaml, "db");
        let anon = anonymous_volume(&task(&d, 1), "/anon");
        let existing: Vec<String> = vec![
            "shop_data".into(),
            "ext".into(),
            anon.clone(),
            "shop_dbx.1.anon-00000000".into(),
            "other_data".into(),
        ];
        assert_eq!(
            stack_volumes(std::slice::from_ref(&d), &existing),
            vec!["shop_data".to_string(), anon]
        );
    }

    #[test]
    fn tmpfs_options_that_cannot_be_honoured_are_refused() {
        for (entry, why) in [
            ("/x:noexec", "\"noexec\" is not supported"),
            ("/x:uid=1000", "\"uid\" is not supported"),
            ("/x:size=lots", "invalid size"),
            ("relative", "must be absolute"),
        ] {
            let e = tmpfs_entry(entry).unwrap_err().to_string();
            assert!(e.contains(why), "{entry}: {e}");
        }
        assert_eq!(parse_size("65536k"), Some(64 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("m"), None);
    }

    #[test]
    fn two_mounts_on_one_target_are_refused() {
        // The loader refuses this file already; the agent still checks the documents it is
        // given (a store written by an older version, another writer), so build one by hand.
        let mut d = doc(
            "services:\n  a:\n    image: busybox\n    volumes: [\"v:/data\"]\nvolumes:\n  v: {}\n",
            "a",
        );
        d.service.tmpfs.push("/data".into());
        let e = mounts(&task(&d, 1), &d).unwrap_err().to_string();
        assert!(e.contains("duplicate mount point /data"), "{e}");
    }

    #[test]
    fn network_mode_service_joins_the_peers_running_container() {
        let peer = |name: &str| (name == "web").then(|| "c0ffee".to_string());
        let none = |_: &str| None;
        assert_eq!(
            network_mode(Some("service:web"), &peer).unwrap(),
            NetworkMode::Container("c0ffee".into())
        );
        let e = network_mode(Some("service:web"), &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no running container of service web"), "{e}");
        assert_eq!(
            network_mode(Some("container:db1"), &none).unwrap(),
            NetworkMode::Container("db1".into())
        );
        for (m, want) in [
            (None, NetworkMode::Private),
            (Some("bridge"), NetworkMode::Private),
            (Some("host"), NetworkMode::Host),
            (Some("none"), NetworkMode::None),
        ] {
            assert_eq!(network_mode(m, &none).unwrap(), want);
        }
        assert!(network_mode(Some("overlay"), &none).is_err());
    }

    #[test]
    fn volumes_from_takes_the_peers_container_and_the_mode() {
        let peer = |name: &str| (name == "db").then(|| "c0ffee".to_string());
        let v = volumes_from("db:ro", &peer).unwrap();
        assert_eq!((v.container.as_str(), v.read_only), ("c0ffee", true));
        let v = volumes_from("db", &peer).unwrap();
        assert_eq!((v.container.as_str(), v.read_only), ("c0ffee", false));
        let v = volumes_from("container:legacy:rw", &peer).unwrap();
        assert_eq!((v.container.as_str(), v.read_only), ("legacy", false));
        let e = volumes_from("web", &peer).unwrap_err().to_string();
        assert!(e.contains("no running container of service web"), "{e}");
    }

    #[test]
    fn devices_default_to_the_same_path_and_all_access() {
        let d = device("/dev/fuse");
        assert_eq!(
            (d.host, d.container.as_str(), d.access.as_str()),
            (PathBuf::from("/dev/fuse"), "/dev/fuse", "rwm")
        );
        let d = device("/dev/zero:/dev/myzero:r");
        assert_eq!(
            (d.host, d.container.as_str(), d.access.as_str()),
            (PathBuf::from("/dev/zero"), "/dev/myzero", "r")
        );
    }

    #[test]
    fn ipc_and_pid_service_join_the_peers_running_container() {
        let peer = |name: &str| (name == "web").then(|| "c0ffee".to_string());
        let none = |_: &str| None;
        for key in ["ipc", "pid"] {
            assert_eq!(
                namespace_mode(key, Some("service:web"), &peer).unwrap(),
                NamespaceMode::Container("c0ffee".into())
            );
            let e = namespace_mode(key, Some("service:web"), &none)
                .unwrap_err()
                .to_string();
            assert!(e.contains("no running container of service web"), "{e}");
            assert_eq!(
                namespace_mode(key, Some("container:db1"), &none).unwrap(),
                NamespaceMode::Container("db1".into())
            );
            assert_eq!(
                namespace_mode(key, Some("host"), &none).unwrap(),
                NamespaceMode::Host
            );
            assert_eq!(
                namespace_mode(key, None, &none).unwrap(),
                NamespaceMode::Private
            );
            assert!(namespace_mode(key, Some("container:"), &none).is_err());
        }
        assert_eq!(
            namespace_mode("ipc", Some("shareable"), &none).unwrap(),
            NamespaceMode::Private
        );
        assert!(namespace_mode("pid", Some("shareable"), &none).is_err());
    }

    #[test]
    fn whole_mapping_carries_sysctls_ulimits_mounts_and_network() {
        let d = doc(
            "name: st\nservices:\n  web:\n    image: busybox\n  side:\n    image: busybox\n    network_mode: service:web\n    sysctls:\n      kernel.shmmni: 8192\n    ulimits:\n      nofile: 4096\n    tmpfs: [/scratch]\n",
            "side",
        );
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        let store = dcpp_runtime::image::ImageStore::open(&dir.path().join("images")).unwrap();
        let img = store.import_rootfs(&rootfs, "dcpp.local/t:1").unwrap();
        let peer = |name: &str| (name == "web").then(|| "c0ffee".to_string());
        let o =
            container_options(&task(&d, 1), &d, &Image::from(&img), "st_side.1.7", &peer).unwrap();
        assert_eq!(o.network, NetworkMode::Container("c0ffee".into()));
        assert_eq!(
            o.sysctls,
            std::collections::BTreeMap::from([("kernel.shmmni".into(), "8192".into())])
        );
        assert_eq!(o.ulimits.len(), 1);
        assert_eq!(o.ulimits[0].hard, 4096);
        assert_eq!(
            o.mounts,
            vec![mount(MountSource::Tmpfs(None), "/scratch", false)]
        );
        assert_eq!(o.labels[LABEL_SLOT], "1");
    }

    #[test]
    fn deploy_resource_limits_reach_the_cgroup_options_like_the_service_keys() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        let store = dcpp_runtime::image::ImageStore::open(&dir.path().join("images")).unwrap();
        let img = store.import_rootfs(&rootfs, "dcpp.local/t:1").unwrap();
        let none = |_: &str| None;
        let limits = |yaml: &str| {
            let d = doc(yaml, "a");
            let o =
                container_options(&task(&d, 1), &d, &Image::from(&img), "a.1.7", &none).unwrap();
            (o.memory, o.cpus, o.pids_limit)
        };
        assert_eq!(
            limits(
                "services:\n  a:\n    image: busybox\n    deploy:\n      resources:\n        limits: { memory: 64M, cpus: '0.5', pids: 64 }\n"
            ),
            (Some(64 << 20), Some(0.5), Some(64))
        );
        assert_eq!(
            limits(
                "services:\n  a:\n    image: busybox\n    mem_limit: 32M\n    pids_limit: 10\n    deploy:\n      resources:\n        limits: { memory: 32M, cpus: '1.5' }\n"
            ),
            (Some(32 << 20), Some(1.5), Some(10))
        );
        assert_eq!(
            limits("services:\n  a:\n    image: busybox\n"),
            (None, None, None)
        );
    }

    #[test]
    fn ulimits_keep_soft_and_hard_and_minus_one_is_unlimited() {
        let d = doc(
            "services:\n  a:\n    image: busybox\n    ulimits:\n      nproc: 512\n      nofile: { soft: 1024, hard: 2048 }\n      core: -1\n",
            "a",
        );
        let u = |name: &str, soft, hard| Ulimit {
            name: name.into(),
            soft,
            hard,
        };
        assert_eq!(
            ulimits(&d.service),
            vec![
                u("core", u64::MAX, u64::MAX),
                u("nofile", 1024, 2048),
                u("nproc", 512, 512),
            ]
        );
    }
}
