//! `ServiceSpec::from_compose`: compose/swarm fields onto the scheduling model.

use dcpp_reconciler::*;
use serde_json::json;

fn project(services: serde_json::Value) -> dcpp_spec::Project {
    serde_json::from_value(json!({ "name": "shop", "services": services })).unwrap()
}

#[test]
fn maps_deploy_section() {
    let p = project(json!({
        "db": { "image": "postgres:16", "healthcheck": { "test": ["CMD", "pg_isready"] } },
        "web": {
            "image": "nginx:1",
            "depends_on": { "db": { "condition": "service_healthy" } },
            "deploy": {
                "replicas": 3,
                "restart_policy": { "condition": "on-failure", "delay": "2s", "max_attempts": 4, "window": "1m" },
                "update_config": { "parallelism": 2, "delay": "10s", "failure_action": "rollback",
                                    "monitor": "30s", "max_failure_ratio": 0.25, "order": "start-first" },
                "rollback_config": { "parallelism": 0, "order": "stop-first" },
                "placement": { "constraints": ["node.role==worker", "node.labels.zone!=eu"],
                               "preferences": [{ "spread": "node.labels.rack" }],
                               "max_replicas_per_node": 2 },
                "resources": { "reservations": { "cpus": 0.5, "memory": 67108864 } }
            }
        }
    }));
    let s = ServiceSpec::from_compose(&p, "web").unwrap();
    assert_eq!(s.id(), ServiceId("shop_web".into()));
    assert_eq!(s.image, "nginx:1");
    assert_eq!(s.mode, Mode::Replicated { replicas: 3 });
    assert_eq!(
        s.restart,
        RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay: 2_000,
            max_attempts: Some(4),
            window: Some(60_000)
        }
    );
    assert_eq!(
        s.update_config,
        UpdateConfig {
            parallelism: 2,
            delay: 10_000,
            failure_action: FailureAction::Rollback,
            monitor: 30_000,
            max_failure_ratio: 0.25,
            order: UpdateOrder::StartFirst
        }
    );
    assert_eq!(s.rollback_config.parallelism, 0);
    assert_eq!(
        s.placement
            .constraints
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        ["node.role==worker", "node.labels.zone!=eu"]
    );
    assert_eq!(s.placement.preferences[0].label, "rack");
    assert_eq!(s.placement.max_replicas_per_node, Some(2));
    assert_eq!(
        s.reservations,
        Resources {
            cpu_millis: 500,
            memory: 64 << 20
        }
    );
    assert_eq!(
        s.depends_on,
        [Dependency {
            service: "db".into(),
            condition: DependencyCondition::ServiceHealthy
        }]
    );
    assert!(!s.healthcheck);
    assert!(ServiceSpec::from_compose(&p, "db").unwrap().healthcheck);
}

#[test]
fn compose_restart_and_defaults() {
    let p = project(json!({
        "a": { "image": "x", "restart": "no" },
        "b": { "image": "x", "restart": "on-failure:3" },
        "c": { "image": "x", "deploy": { "mode": "global" } },
        "d": { "image": "x", "restart": "sometimes" },
    }));
    let a = ServiceSpec::from_compose(&p, "a").unwrap();
    assert_eq!(a.restart.condition, RestartCondition::None);
    assert_eq!(a.mode, Mode::Replicated { replicas: 1 });
    assert_eq!(a.update_config, UpdateConfig::default());
    let b = ServiceSpec::from_compose(&p, "b").unwrap();
    assert_eq!(
        (b.restart.condition, b.restart.max_attempts),
        (RestartCondition::OnFailure, Some(3))
    );
    assert_eq!(
        ServiceSpec::from_compose(&p, "c").unwrap().mode,
        Mode::Global
    );
    assert_eq!(
        ServiceSpec::from_compose(&p, "d").unwrap_err(),
        Error::InvalidRestartPolicy("sometimes".into())
    );
}

#[test]
fn bad_fields_are_clear_errors() {
    let p = project(json!({
        "built": { "build": { "context": "." } },
        "built_named": { "image": "app:2", "build": { "context": "." } },
        "neither": {},
        "order": { "image": "x", "deploy": { "update_config": { "order": "sideways" } } },
        "place": { "image": "x", "deploy": { "placement": { "constraints": ["node.colour==red"] } } },
    }));
    // A built service runs the image compose names it: `image:`, else `<project>-<service>`.
    assert_eq!(
        ServiceSpec::from_compose(&p, "built").unwrap().image,
        "shop-built"
    );
    assert_eq!(
        ServiceSpec::from_compose(&p, "built_named").unwrap().image,
        "app:2"
    );
    let e = ServiceSpec::from_compose(&p, "neither")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "service `neither`: neither `image:` nor `build:`");
    let e = ServiceSpec::from_compose(&p, "order")
        .unwrap_err()
        .to_string();
    assert!(e.contains("order `sideways`"), "{e}");
    let e = ServiceSpec::from_compose(&p, "place")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid placement constraint `node.colour==red`"),
        "{e}"
    );
    assert!(ServiceSpec::from_compose(&p, "missing").is_err());
}

#[test]
fn version_changes_only_with_container_fields() {
    let base = json!({ "image": "nginx:1", "environment": { "A": "1" },
                       "deploy": { "replicas": 2, "update_config": { "parallelism": 1 } } });
    let v = |svc: serde_json::Value| {
        ServiceSpec::from_compose(&project(json!({ "web": svc })), "web")
            .unwrap()
            .version
    };
    let v0 = v(base.clone());
    assert_eq!(v0, v(base.clone()), "stable");
    let mut scaled = base.clone();
    scaled["deploy"]["replicas"] = json!(5);
    scaled["deploy"]["update_config"]["parallelism"] = json!(3);
    scaled["restart"] = json!("always");
    assert_eq!(v0, v(scaled), "scaling and policies keep the containers");
    let mut env = base.clone();
    env["environment"]["A"] = json!("2");
    assert_ne!(v0, v(env));
    let mut image = base;
    image["image"] = json!("nginx:2");
    assert_ne!(v0, v(image));
}

#[test]
fn network_mode_service_is_an_implicit_started_dependency() {
    let p = project(json!({
        "web": { "image": "busybox" },
        "db": { "image": "busybox" },
        "side": { "image": "busybox", "network_mode": "service:web" },
        "healthy": {
            "image": "busybox",
            "network_mode": "service:web",
            "depends_on": { "web": { "condition": "service_healthy" }, "db": { "condition": "service_started" } }
        },
        "other": { "image": "busybox", "network_mode": "container:abc" }
    }));
    let s = ServiceSpec::from_compose(&p, "side").unwrap();
    assert_eq!(s.network_peer.as_deref(), Some("web"));
    assert_eq!(
        s.depends_on,
        vec![Dependency {
            service: "web".into(),
            condition: DependencyCondition::ServiceStarted
        }]
    );
    // An explicit dependency on the peer keeps its (stronger) condition.
    let s = ServiceSpec::from_compose(&p, "healthy").unwrap();
    assert_eq!(s.network_peer.as_deref(), Some("web"));
    assert_eq!(s.depends_on.len(), 2);
    assert!(s.depends_on.contains(&Dependency {
        service: "web".into(),
        condition: DependencyCondition::ServiceHealthy
    }));
    let s = ServiceSpec::from_compose(&p, "other").unwrap();
    assert_eq!(s.network_peer, None);
    assert!(s.depends_on.is_empty());
}

#[test]
fn ipc_and_pid_service_place_the_task_next_to_the_peer_and_two_peers_are_refused() {
    let p = project(json!({
        "web": { "image": "busybox" },
        "db": { "image": "busybox" },
        "ipc": { "image": "busybox", "ipc": "service:web" },
        "pid": { "image": "busybox", "pid": "service:web", "network_mode": "service:web" },
        "two": { "image": "busybox", "pid": "service:web", "ipc": "service:db" },
        "own": { "image": "busybox", "pid": "container:abc", "ipc": "host" }
    }));
    for name in ["ipc", "pid"] {
        let s = ServiceSpec::from_compose(&p, name).unwrap();
        assert_eq!(s.network_peer.as_deref(), Some("web"), "{name}");
        assert_eq!(
            s.depends_on,
            vec![Dependency {
                service: "web".into(),
                condition: DependencyCondition::ServiceStarted
            }],
            "{name}"
        );
    }
    let e = ServiceSpec::from_compose(&p, "two")
        .unwrap_err()
        .to_string();
    assert!(e.contains("one peer service only"), "{e}");
    let s = ServiceSpec::from_compose(&p, "own").unwrap();
    assert_eq!(s.network_peer, None);
}

#[test]
fn network_mode_errors_are_clear() {
    for (mode, why) in [
        ("service:nope", "no service `nope`"),
        ("service:a", "refers to the service itself"),
        ("weird", "network_mode `weird`"),
        ("container:", "network_mode `container:`"),
    ] {
        let p = project(json!({ "a": { "image": "busybox", "network_mode": mode } }));
        let e = ServiceSpec::from_compose(&p, "a").unwrap_err().to_string();
        assert!(e.contains(why), "{mode}: {e}");
    }
    let p = project(json!({
        "web": { "image": "busybox" },
        "a": { "image": "busybox", "network_mode": "service:web", "hostname": "x" }
    }));
    let e = ServiceSpec::from_compose(&p, "a").unwrap_err().to_string();
    assert!(e.contains("`hostname` conflicts"), "{e}");
    for mode in ["host", "service:web", "container:x"] {
        let p = project(json!({
            "web": { "image": "busybox" },
            "a": { "image": "busybox", "network_mode": mode, "sysctls": { "net.core.somaxconn": "1024" } }
        }));
        let e = ServiceSpec::from_compose(&p, "a").unwrap_err().to_string();
        assert!(
            e.contains("sysctl `net.core.somaxconn` is not allowed"),
            "{e}"
        );
    }
    let p = project(json!({
        "a": { "image": "busybox", "network_mode": "none", "sysctls": { "net.core.somaxconn": "1024" } }
    }));
    ServiceSpec::from_compose(&p, "a").unwrap();
}

#[test]
fn named_volumes_resolve_to_their_actual_names() {
    let vol = |source: &str, target: &str| json!({ "type": "volume", "source": source, "target": target });
    let mut p = project(json!({
        "db": { "image": "busybox", "volumes": [
            vol("data", "/data"), vol("ext", "/ext"), vol("named", "/named"),
            { "type": "volume", "target": "/anon" },
            { "type": "bind", "source": "/srv", "target": "/srv" }
        ] }
    }));
    p.volumes = serde_json::from_value(json!({
        "data": {},
        "ext": { "external": true },
        "named": { "name": "really" }
    }))
    .unwrap();
    let s = ServiceSpec::from_compose(&p, "db").unwrap();
    let names: Vec<(&str, &str)> = s
        .volumes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("data", "shop_data"), ("ext", "ext"), ("named", "really")]
    );
    assert_eq!(
        s.external_volumes.iter().collect::<Vec<_>>(),
        vec![&"ext".to_string()]
    );
    // Renaming a volume changes what the containers mount: a new container version.
    let before = s.version;
    p.volumes.get_mut("named").unwrap().name = Some("other".into());
    assert_ne!(ServiceSpec::from_compose(&p, "db").unwrap().version, before);
}

#[test]
fn mounts_dcpp_cannot_honour_fail_at_apply_time() {
    for (mount, why) in [
        (
            json!({ "type": "volume", "source": "v", "target": "/x", "volume": { "subpath": "a" } }),
            "subpath",
        ),
        (
            json!({ "type": "bind", "source": "/s", "target": "/x", "bind": { "propagation": "shared" } }),
            "propagation `shared`",
        ),
        (
            json!({ "type": "tmpfs", "target": "/x", "tmpfs": { "mode": 448 } }),
            "tmpfs.mode",
        ),
        (
            json!({ "type": "npipe", "source": "p", "target": "/x" }),
            "npipe",
        ),
        (
            json!({ "type": "volume", "source": "nfs", "target": "/x" }),
            "driver `nfs`",
        ),
    ] {
        let mut p = project(json!({ "a": { "image": "busybox", "volumes": [mount] } }));
        p.volumes = serde_json::from_value(json!({ "v": {}, "nfs": { "driver": "nfs" } })).unwrap();
        let e = ServiceSpec::from_compose(&p, "a").unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}

#[test]
fn scale_sets_the_replicas_with_or_without_a_deploy_section() {
    let p = project(json!({
        "a": { "image": "x", "scale": 3 },
        "b": { "image": "x", "scale": 2, "deploy": { "replicas": 2 } },
        "c": { "image": "x" },
        "d": { "image": "x", "deploy": { "replicas": 4 } },
    }));
    let replicas = |name: &str| ServiceSpec::from_compose(&p, name).unwrap().mode;
    assert_eq!(replicas("a"), Mode::Replicated { replicas: 3 });
    assert_eq!(replicas("b"), Mode::Replicated { replicas: 2 });
    assert_eq!(replicas("c"), Mode::Replicated { replicas: 1 });
    assert_eq!(replicas("d"), Mode::Replicated { replicas: 4 });
}

#[test]
fn secrets_and_configs_mount_with_compose_defaults_and_their_versions_make_the_spec_version() {
    let mut p = project(json!({
        "a": {
            "image": "x",
            "secrets": [
                { "source": "db", "target": "/run/secrets/db" },
                { "source": "key", "target": "api", "uid": "1000", "gid": "1001", "mode": "0400" }
            ],
            "configs": [
                { "source": "app" },
                { "source": "motd", "target": "etc/motd", "mode": "0440" }
            ]
        }
    }));
    p.secrets = serde_json::from_value(json!({
        "db": { "file": "/db" }, "key": { "external": true }
    }))
    .unwrap();
    p.configs = serde_json::from_value(json!({
        "app": { "name": "app-v1", "content": "x" }, "motd": { "content": "hi" }
    }))
    .unwrap();
    let s = ServiceSpec::from_compose(&p, "a").unwrap();
    let got: Vec<(FileKind, &str, &str, u32, u32, u32)> = s
        .files
        .iter()
        .map(|f| {
            (
                f.kind,
                f.name.as_str(),
                f.target.as_str(),
                f.uid,
                f.gid,
                f.mode,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (FileKind::Secret, "shop_db", "/run/secrets/db", 0, 0, 0o444),
            (
                FileKind::Secret,
                "key",
                "/run/secrets/api",
                1000,
                1001,
                0o400
            ),
            (FileKind::Config, "app-v1", "/app", 0, 0, 0o444),
            (FileKind::Config, "shop_motd", "/etc/motd", 0, 0, 0o440),
        ]
    );
    assert!(s.files.iter().all(|f| f.version == 0));

    // The same versions give the same spec version, however often they are set; another
    // version of one file gives another.
    let v1 = s.clone().with_file_versions(|_, _| 1);
    assert_eq!(v1.clone().with_file_versions(|_, _| 1), v1);
    assert_eq!(v1.clone().with_file_version(FileKind::Secret, "key", 1), v1);
    let v2 = v1.clone().with_file_version(FileKind::Secret, "key", 2);
    assert_ne!(v2.version, v1.version);
    assert_eq!(v2.files[1].version, 2);
    assert_eq!(v2.files[0].version, 1);
    assert_eq!(v2.clone().with_file_version(FileKind::Secret, "key", 1), v1);

    let mut bad = p.clone();
    bad.services.get_mut("a").unwrap().secrets[0].uid = Some("root".into());
    let e = ServiceSpec::from_compose(&bad, "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("uid \"root\" is not a number"), "{e}");
    let mut bad = p;
    bad.services.get_mut("a").unwrap().configs[0].target = Some("/etc/../x".into());
    let e = ServiceSpec::from_compose(&bad, "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid target"), "{e}");
}
