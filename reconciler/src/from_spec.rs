//! Conversion from the canonical compose model ([`dcpp_spec::Project`]) to [`ServiceSpec`].

use std::collections::BTreeMap;

use dcpp_spec::{DependsOnCondition, DeployMode, Duration, Project, Service, VolumeType};

use crate::error::Error;
use crate::model::{
    Constraint, Dependency, DependencyCondition, FailureAction, FileKind, FileMount, Millis, Mode,
    Placement, Resources, RestartCondition, RestartPolicy, ServiceSpec, SpreadPreference,
    UpdateConfig, UpdateOrder,
};

fn millis(d: Option<Duration>) -> Option<Millis> {
    d.map(|d| d.as_nanos() / 1_000_000)
}

impl ServiceSpec {
    /// Builds the scheduling view of service `name` of `project` (stack = project name).
    ///
    /// Defaults where compose leaves a field out: restart `any` with no delay (an orchestrator
    /// keeps declared services running; `restart: "no"` opts out), swarm's update and rollback
    /// defaults (parallelism 1, pause on failure, monitor 5 s, stop-first), 1 replica.
    pub fn from_compose(project: &Project, name: &str) -> Result<ServiceSpec, Error> {
        let invalid = |reason: String| Error::InvalidService {
            service: name.to_string(),
            reason,
        };
        let svc = project
            .services
            .get(name)
            .ok_or_else(|| invalid("no such service in the project".into()))?;
        let image = svc
            .image_name(&project.name, name)
            .ok_or_else(|| invalid("neither `image:` nor `build:`".into()))?;
        let deploy = svc.deploy.clone().unwrap_or_default();
        let mode = match deploy.mode {
            Some(DeployMode::Global) => Mode::Global,
            _ => {
                // `deploy.replicas`, else a top-level `scale:` (the loader refuses the two
                // with different values).
                let replicas = svc.replicas().unwrap_or(1);
                let replicas = u32::try_from(replicas)
                    .map_err(|_| invalid(format!("replicas {replicas} is too large")))?;
                Mode::Replicated { replicas }
            }
        };
        let restart = match (&deploy.restart_policy, &svc.restart) {
            (Some(p), _) => RestartPolicy {
                condition: match p.condition.as_deref() {
                    None | Some("any") => RestartCondition::Any,
                    Some("on-failure") => RestartCondition::OnFailure,
                    Some("none") => RestartCondition::None,
                    Some(other) => {
                        return Err(invalid(format!(
                            "restart_policy.condition `{other}` (expected none, on-failure or any)"
                        )));
                    }
                },
                delay: millis(p.delay).unwrap_or(0),
                max_attempts: p
                    .max_attempts
                    .filter(|n| *n > 0)
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                window: millis(p.window).filter(|w| *w > 0),
            },
            (None, Some(r)) => RestartPolicy::from_compose(r)?,
            (None, None) => RestartPolicy::default(),
        };
        let update_config = convert_update(deploy.update_config.as_ref()).map_err(invalid)?;
        let rollback_config = convert_update(deploy.rollback_config.as_ref()).map_err(invalid)?;
        let placement = match &deploy.placement {
            None => Placement::default(),
            Some(p) => Placement {
                constraints: p
                    .constraints
                    .iter()
                    .map(|c| Constraint::parse(c))
                    .collect::<Result<_, _>>()?,
                max_replicas_per_node: p
                    .max_replicas_per_node
                    .filter(|n| *n > 0)
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                preferences: p
                    .preferences
                    .iter()
                    .map(|pref| match pref.spread.strip_prefix("node.labels.") {
                        Some(label) if !label.is_empty() => Ok(SpreadPreference {
                            label: label.to_string(),
                        }),
                        _ => Err(invalid(format!(
                            "spread preference `{}` must be node.labels.<key>",
                            pref.spread
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
            },
        };
        let reservations = deploy
            .resources
            .as_ref()
            .and_then(|r| r.reservations.as_ref())
            .map(|r| Resources {
                cpu_millis: r.cpus.map_or(0, |c| (c * 1000.0).round().max(0.0) as u64),
                memory: r.memory.unwrap_or(0),
            })
            .unwrap_or_default();
        let mut depends_on: Vec<Dependency> = svc
            .depends_on
            .iter()
            .filter(|(dep, d)| d.required || project.services.contains_key(*dep))
            .map(|(dep, d)| Dependency {
                service: dep.clone(),
                condition: match d.condition {
                    DependsOnCondition::ServiceStarted => DependencyCondition::ServiceStarted,
                    DependsOnCondition::ServiceHealthy => DependencyCondition::ServiceHealthy,
                    DependsOnCondition::ServiceCompletedSuccessfully => {
                        DependencyCondition::ServiceCompletedSuccessfully
                    }
                },
            })
            .collect();
        let network_peer = network_peer(project, svc).map_err(invalid)?;
        if network_peer.as_deref() == Some(name) {
            return Err(invalid("network_mode refers to the service itself".into()));
        }
        let network_peer = shared_peer(project, name, svc, network_peer).map_err(invalid)?;
        if let Some(peer) = &network_peer
            && !depends_on.iter().any(|d| d.service == *peer)
        {
            // Compose treats `network_mode: service:X` as an implicit `depends_on: [X]`.
            depends_on.push(Dependency {
                service: peer.clone(),
                condition: DependencyCondition::ServiceStarted,
            });
        }
        let volumes = named_volumes(project, svc).map_err(invalid)?;
        let external_volumes = volumes
            .iter()
            .filter(|(key, _)| project.volumes.get(*key).is_some_and(|v| v.external))
            .map(|(_, name)| name.clone())
            .collect();
        let healthcheck = svc
            .healthcheck
            .as_ref()
            .is_some_and(|h| !h.disable && h.test.first().is_some_and(|t| t != "NONE"));
        let files = file_mounts(project, svc).map_err(invalid)?;
        Ok(ServiceSpec {
            stack: project.name.clone(),
            name: name.to_string(),
            image,
            version: container_version(svc, &volumes),
            mode,
            restart,
            update_config,
            rollback_config,
            placement,
            reservations,
            depends_on,
            healthcheck,
            network_peer,
            volumes,
            external_volumes,
            files,
            base_version: 0,
        })
    }
}

/// The secrets and configs a service mounts, with compose's defaults: a secret at
/// `/run/secrets/<target>` (a relative target is under `/run/secrets`), a config at `/<source>`
/// (a relative target under `/`), owned by root, mode 0444.
fn file_mounts(project: &Project, svc: &Service) -> Result<Vec<FileMount>, String> {
    let mut out = Vec::new();
    for (kind, refs, objects) in [
        (FileKind::Secret, &svc.secrets, &project.secrets),
        (FileKind::Config, &svc.configs, &project.configs),
    ] {
        for r in refs {
            let obj = objects
                .get(&r.source)
                .ok_or_else(|| format!("{kind} `{}` is not defined", r.source))?;
            let name = obj.name.clone().unwrap_or_else(|| {
                if obj.external {
                    r.source.clone()
                } else {
                    format!("{}_{}", project.name, r.source)
                }
            });
            let target = match (kind, r.target.as_deref()) {
                (_, Some(t)) if t.starts_with('/') => t.to_string(),
                (FileKind::Secret, t) => format!("/run/secrets/{}", t.unwrap_or(&r.source)),
                (FileKind::Config, t) => format!("/{}", t.unwrap_or(&r.source)),
            };
            if target.ends_with('/') || target.split('/').any(|c| c == "..") {
                return Err(format!("{kind} `{}`: invalid target {target:?}", r.source));
            }
            let id = |what: &str, v: &Option<String>| -> Result<u32, String> {
                v.as_deref().map_or(Ok(0), |s| {
                    s.parse()
                        .map_err(|_| format!("{kind} `{}`: {what} {s:?} is not a number", r.source))
                })
            };
            out.push(FileMount {
                kind,
                source: r.source.clone(),
                name,
                version: 0,
                target,
                uid: id("uid", &r.uid)?,
                gid: id("gid", &r.gid)?,
                mode: r.mode.unwrap_or(0o444),
            });
        }
    }
    Ok(out)
}

fn convert_update(c: Option<&dcpp_spec::UpdateConfig>) -> Result<UpdateConfig, String> {
    let d = UpdateConfig::default();
    let Some(c) = c else { return Ok(d) };
    Ok(UpdateConfig {
        parallelism: c
            .parallelism
            .map_or(d.parallelism, |p| u32::try_from(p).unwrap_or(u32::MAX)),
        delay: millis(c.delay).unwrap_or(d.delay),
        failure_action: match c.failure_action.as_deref() {
            None | Some("pause") => FailureAction::Pause,
            Some("rollback") => FailureAction::Rollback,
            Some("continue") => FailureAction::Continue,
            Some(other) => {
                return Err(format!(
                    "failure_action `{other}` (expected pause, rollback or continue)"
                ));
            }
        },
        monitor: millis(c.monitor).unwrap_or(d.monitor),
        max_failure_ratio: match c.max_failure_ratio {
            None => d.max_failure_ratio,
            Some(r) if (0.0..=1.0).contains(&r) => r,
            Some(r) => return Err(format!("max_failure_ratio {r} is not between 0 and 1")),
        },
        order: match c.order.as_deref() {
            None | Some("stop-first") => UpdateOrder::StopFirst,
            Some("start-first") => UpdateOrder::StartFirst,
            Some(other) => {
                return Err(format!(
                    "order `{other}` (expected stop-first or start-first)"
                ));
            }
        },
    })
}

/// A hash of everything in the service that its containers are made from. Scheduling and
/// rollout settings (replicas, mode, update/rollback/restart policies, placement, service
/// labels, `restart:`, `depends_on`) are left out, so changing them never replaces containers.
fn container_version(svc: &Service, volumes: &BTreeMap<String, String>) -> u64 {
    let mut v = serde_json::to_value(svc).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.remove("restart");
        obj.remove("depends_on");
        if let Some(deploy) = obj.get_mut("deploy").and_then(|d| d.as_object_mut()) {
            for k in [
                "mode",
                "replicas",
                "labels",
                "update_config",
                "rollback_config",
                "restart_policy",
                "placement",
            ] {
                deploy.remove(k);
            }
        }
    }
    // The volumes' actual names are part of what the containers mount, although they come
    // from the top-level `volumes:` section (a changed `name:` means other data).
    if !volumes.is_empty() {
        let names = serde_json::to_value(volumes).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("volume_names".into(), names);
        }
    }
    // FNV-1a over the canonical JSON (maps are BTreeMaps, so the text is stable).
    let text = v.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The service whose network namespace `network_mode: service:NAME` joins, checked against the
/// project; other modes are checked for spelling only (the agent maps them).
fn network_peer(project: &Project, svc: &Service) -> Result<Option<String>, String> {
    let Some(mode) = svc.network_mode.as_deref() else {
        return Ok(None);
    };
    if svc.hostname.is_some() && (mode.starts_with("service:") || mode.starts_with("container:")) {
        // As docker: the container takes the hostname of the one whose namespaces it joins.
        return Err(format!(
            "`hostname` conflicts with network_mode `{mode}` (the container shares its network and hostname)"
        ));
    }
    let shared = mode == "host" || mode.starts_with("service:") || mode.starts_with("container:");
    if let Some(key) = svc.sysctls.keys().find(|k| k.starts_with("net."))
        && shared
    {
        return Err(format!(
            "sysctl `{key}` is not allowed with network_mode `{mode}` (the network namespace is not the container's own)"
        ));
    }
    if let Some(peer) = mode.strip_prefix("service:") {
        if !project.services.contains_key(peer) {
            return Err(format!(
                "network_mode `{mode}`: no service `{peer}` in the project"
            ));
        }
        return Ok(Some(peer.to_string()));
    }
    match mode {
        "host" | "none" | "bridge" | "default" => Ok(None),
        m if m.strip_prefix("container:").is_some_and(|c| !c.is_empty()) => Ok(None),
        other => Err(format!(
            "network_mode `{other}` (expected host, none, bridge, service:NAME or container:NAME)"
        )),
    }
}

/// The one service whose running task the service's tasks join: `network_mode`, `ipc` and
/// `pid: service:NAME` and `volumes_from: [NAME]` all place a task next to a task of NAME and start it after it. Two
/// different peers are refused: a node would need a running task of each, and one peer's
/// replacement would leave the task with the other's namespace only.
fn shared_peer(
    project: &Project,
    name: &str,
    svc: &Service,
    network_peer: Option<String>,
) -> Result<Option<String>, String> {
    let mut peer = network_peer.map(|p| ("network_mode", p));
    for (key, mode) in [("ipc", &svc.ipc), ("pid", &svc.pid)] {
        let Some(other) = mode.as_deref().and_then(|m| m.strip_prefix("service:")) else {
            continue;
        };
        if other == name {
            return Err(format!("{key} refers to the service itself"));
        }
        if !project.services.contains_key(other) {
            return Err(format!(
                "{key} `service:{other}`: no service `{other}` in the project"
            ));
        }
        peer = check_peer(peer, key, other)?;
    }
    for entry in svc
        .volumes_from
        .iter()
        .filter(|e| !e.starts_with("container:"))
    {
        let other = entry.split(':').next().unwrap_or_default();
        if other == name {
            return Err("volumes_from refers to the service itself".into());
        }
        if !project.services.contains_key(other) {
            return Err(format!(
                "volumes_from `{entry}`: no service `{other}` in the project"
            ));
        }
        peer = check_peer(peer, "volumes_from", other)?;
    }
    Ok(peer.map(|(_, p)| p))
}

/// `peer` with `key`'s service `other` added: the same one, or the first.
fn check_peer(
    peer: Option<(&'static str, String)>,
    key: &'static str,
    other: &str,
) -> Result<Option<(&'static str, String)>, String> {
    match &peer {
        Some((k, p)) if p != other => Err(format!(
            "{k} joins service `{p}` and {key} service `{other}`: dcpp places a task next to one peer service only"
        )),
        Some(_) => Ok(peer),
        None => Ok(Some((key, other.to_string()))),
    }
}

/// Resolves the named volumes the service mounts and refuses mount options dcpp cannot honour,
/// so they fail at apply time rather than as a task that never starts.
fn named_volumes(project: &Project, svc: &Service) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for m in &svc.volumes {
        let t = &m.target;
        match m.kind {
            VolumeType::Volume => {
                if m.volume.as_ref().is_some_and(|o| o.subpath.is_some()) {
                    return Err(format!("volume at {t}: `volume.subpath` is not supported"));
                }
                let Some(key) = &m.source else { continue };
                let vol = project
                    .volumes
                    .get(key)
                    .ok_or_else(|| format!("volume at {t}: undefined volume `{key}`"))?;
                if vol.driver.as_deref().is_some_and(|d| d != "local") {
                    return Err(format!(
                        "volume `{key}`: driver `{}` is not supported (only local)",
                        vol.driver.as_deref().unwrap_or_default()
                    ));
                }
                if !vol.driver_opts.is_empty() {
                    return Err(format!("volume `{key}`: `driver_opts` are not supported"));
                }
                let name = match &vol.name {
                    Some(n) => n.clone(),
                    None if vol.external => key.clone(),
                    None => format!("{}_{key}", project.name),
                };
                out.insert(key.clone(), name);
            }
            VolumeType::Bind => {
                if let Some(p) = m.bind.as_ref().and_then(|b| b.propagation.as_deref())
                    && p != "rprivate"
                    && p != "private"
                {
                    return Err(format!(
                        "bind mount at {t}: propagation `{p}` is not supported (only rprivate)"
                    ));
                }
            }
            VolumeType::Tmpfs => {
                if let Some(mode) = m.tmpfs.as_ref().and_then(|o| o.mode)
                    && mode != 0o1777
                {
                    return Err(format!(
                        "tmpfs at {t}: `tmpfs.mode` {mode:o} is not supported (tmpfs mounts get 1777)"
                    ));
                }
            }
            VolumeType::Npipe | VolumeType::Image => {
                return Err(format!(
                    "mount at {t}: type `{}` is not supported",
                    if m.kind == VolumeType::Npipe {
                        "npipe"
                    } else {
                        "image"
                    }
                ));
            }
        }
    }
    Ok(out)
}
