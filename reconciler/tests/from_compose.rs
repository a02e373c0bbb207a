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
        "nobuild": { "build": { "context": "." } },
        "order": { "image": "x", "deploy": { "update_config": { "order": "sideways" } } },
        "place": { "image": "x", "deploy": { "placement": { "constraints": ["node.colour==red"] } } },
    }));
    let e = ServiceSpec::from_compose(&p, "nobuild")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "service `nobuild`: no `image:` (dcpp does not build images)"
    );
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
