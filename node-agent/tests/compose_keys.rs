//! Nothing in a compose file is silently without effect: every key of the canonical model (the
//! JSON schema the spec crate generates) is either applied — and named here with the test that
//! shows it reaching the container or the scheduler — refused with an error, or warned about
//! with its file:line:col when a file uses it. A key added to the model fails this test until it
//! is put in one of the tables.

use std::collections::BTreeSet;
use std::path::Path;

use dcpp_control::schema::stack_docs;
use dcpp_reconciler::{Health, ServiceId, Slot, Task, TaskId, TaskState};

/// Keys that take effect, each with the test (`file::function`, or a corpus case directory)
/// that shows it.
#[rustfmt::skip]
const APPLIED: &[(&str, &str)] = &[
    ("name", "spec/tests/corpus/002-name-field"),
    (
        "services",
        "tests/e2e_apply.rs::apply_runs_a_stack_and_reapply_scale_and_kill_behave",
    ),
    ("services.*.cap_add", HERE_PROCESS),
    ("services.*.cap_drop", HERE_PROCESS),
    ("services.*.command", HERE_PROCESS),
    ("services.*.cpus", HERE_PROCESS),
    ("services.*.cpu_shares", HERE_CGROUP),
    ("services.*.cpuset", HERE_CGROUP),
    (
        "services.*.container_name",
        "tests/e2e_fields.rs::container_name_names_the_container_and_is_refused_with_replicas",
    ),
    (
        "services.*.devices",
        "tests/e2e_fields.rs::devices_are_created_and_allowed_and_a_missing_one_fails_the_task",
    ),
    ("services.*.ipc", HERE_NAMESPACES),
    (
        "services.*.volumes_from",
        "tests/e2e_fields.rs::volumes_from_mounts_the_peers_volumes_read_only_with_ro",
    ),
    ("services.*.pid", HERE_NAMESPACES),
    (
        "services.*.platform",
        "tests/e2e_fields.rs::platform_accepts_the_images_own_and_fails_the_task_for_another",
    ),
    ("services.*.dns", HERE_NAMES),
    ("services.*.dns_opt", HERE_NAMES),
    ("services.*.dns_search", HERE_NAMES),
    ("services.*.extra_hosts", HERE_NAMES),
    (
        "services.*.label_file",
        "tests/e2e_fields.rs::label_files_are_read_and_labels_win_over_them",
    ),
    ("services.*.mem_reservation", HERE_CGROUP),
    ("services.*.memswap_limit", HERE_CGROUP),
    ("services.*.oom_score_adj", HERE_CGROUP),
    (
        "services.*.depends_on",
        "reconciler/tests/plan.rs::depends_on_holds_tasks_until_condition_met",
    ),
    (
        "services.*.depends_on.*.condition",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    ("services.*.depends_on.*.required", HERE_SPEC),
    (
        "services.*.deploy",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.mode",
        "reconciler/tests/from_compose.rs::compose_restart_and_defaults",
    ),
    (
        "services.*.deploy.replicas",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.scale",
        "reconciler/tests/from_compose.rs::scale_sets_the_replicas_with_or_without_a_deploy_section",
    ),
    (
        "services.*.deploy.placement",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.placement.constraints",
        "reconciler/tests/plan.rs::unschedulable_task_explains_every_node",
    ),
    (
        "services.*.deploy.placement.max_replicas_per_node",
        "reconciler/tests/plan.rs::max_replicas_per_node_and_spread_preference",
    ),
    (
        "services.*.deploy.placement.preferences",
        "reconciler/tests/plan.rs::max_replicas_per_node_and_spread_preference",
    ),
    (
        "services.*.deploy.placement.preferences.[].spread",
        "reconciler/tests/plan.rs::max_replicas_per_node_and_spread_preference",
    ),
    (
        "services.*.deploy.resources",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.resources.reservations",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.resources.reservations.cpus",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.resources.reservations.memory",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.restart_policy",
        "reconciler/tests/plan.rs::restart_on_failure_respects_exit_code_delay_and_max_attempts",
    ),
    (
        "services.*.deploy.restart_policy.condition",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.restart_policy.delay",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.restart_policy.max_attempts",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.restart_policy.window",
        "reconciler/tests/plan.rs::window_limits_which_restarts_count",
    ),
    (
        "services.*.deploy.rollback_config",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.update_config",
        "reconciler/tests/plan.rs::rolling_update_stop_first_one_at_a_time",
    ),
    (
        "services.*.deploy.update_config.delay",
        "reconciler/tests/plan.rs::update_delay_spaces_slots",
    ),
    (
        "services.*.deploy.update_config.failure_action",
        "reconciler/tests/plan.rs::failed_update_rolls_back_automatically",
    ),
    (
        "services.*.deploy.update_config.max_failure_ratio",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.update_config.monitor",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    (
        "services.*.deploy.update_config.order",
        "reconciler/tests/plan.rs::rolling_update_start_first_overlaps_then_stops_old",
    ),
    (
        "services.*.deploy.update_config.parallelism",
        "reconciler/tests/from_compose.rs::maps_deploy_section",
    ),
    ("services.*.entrypoint", HERE_PROCESS),
    ("services.*.environment", HERE_PROCESS),
    // Containers of a stack network reach each other's ports without it, which is all
    // `expose` promises.
    (
        "services.*.expose",
        "runtime/tests/network_e2e.rs::endpoints_talk_by_ip_and_name_ports_publish_and_host_is_clean_after",
    ),
    (
        "services.*.healthcheck",
        "tests/e2e_apply.rs::healthcheck_runs_in_the_container_and_gates_service_healthy_dependents",
    ),
    ("services.*.healthcheck.disable", HERE_SPEC),
    (
        "services.*.healthcheck.interval",
        "tests/e2e_apply.rs::healthcheck_runs_in_the_container_and_gates_service_healthy_dependents",
    ),
    (
        "services.*.healthcheck.retries",
        "tests/e2e_apply.rs::healthcheck_runs_in_the_container_and_gates_service_healthy_dependents",
    ),
    (
        "services.*.healthcheck.start_period",
        "tests/e2e_apply.rs::healthcheck_runs_in_the_container_and_gates_service_healthy_dependents",
    ),
    (
        "services.*.healthcheck.test",
        "tests/e2e_apply.rs::healthcheck_runs_in_the_container_and_gates_service_healthy_dependents",
    ),
    (
        "services.*.healthcheck.timeout",
        "tests/e2e_apply.rs::healthcheck_runs_in_the_container_and_gates_service_healthy_dependents",
    ),
    ("services.*.hostname", HERE_PROCESS),
    ("services.*.image", HERE_PROCESS),
    ("services.*.init", HERE_PROCESS),
    ("services.*.labels", HERE_PROCESS),
    ("services.*.mem_limit", HERE_PROCESS),
    (
        "services.*.network_mode",
        "node-agent/src/options.rs::network_mode_service_joins_the_peers_running_container",
    ),
    (
        "services.*.networks",
        "runtime/tests/network_e2e.rs::endpoints_talk_by_ip_and_name_ports_publish_and_host_is_clean_after",
    ),
    (
        "services.*.networks.*.aliases",
        "runtime/tests/network_e2e.rs::endpoints_talk_by_ip_and_name_ports_publish_and_host_is_clean_after",
    ),
    ("services.*.pids_limit", HERE_PROCESS),
    ("networks.*.ipam", HERE_IPAM),
    ("networks.*.ipam.driver", HERE_IPAM),
    ("networks.*.ipam.config", HERE_IPAM),
    ("networks.*.ipam.config.[].subnet", HERE_IPAM),
    ("networks.*.ipam.config.[].ip_range", HERE_IPAM),
    ("networks.*.ipam.config.[].gateway", HERE_IPAM),
    ("networks.*.ipam.config.[].aux_addresses", HERE_IPAM),
    (
        "services.*.ports",
        "tests/e2e_apply.rs::apply_runs_a_stack_and_reapply_scale_and_kill_behave",
    ),
    (
        "services.*.ports.[].host_ip",
        "tests/e2e_apply.rs::apply_runs_a_stack_and_reapply_scale_and_kill_behave",
    ),
    (
        "services.*.ports.[].published",
        "tests/e2e_apply.rs::apply_runs_a_stack_and_reapply_scale_and_kill_behave",
    ),
    (
        "services.*.ports.[].target",
        "tests/e2e_apply.rs::apply_runs_a_stack_and_reapply_scale_and_kill_behave",
    ),
    (
        "services.*.ports.[].mode",
        "tests/e2e_overlay.rs::a_published_port_answers_on_every_node_and_the_serving_node_keeps_the_client_address",
    ),
    (
        "services.*.ports.[].protocol",
        "runtime/tests/network_e2e.rs::endpoints_talk_by_ip_and_name_ports_publish_and_host_is_clean_after",
    ),
    ("services.*.privileged", HERE_PROCESS),
    (
        "services.*.profiles",
        "tests/cli_config.rs::config_flags_project_profile_env_file_and_json",
    ),
    (
        "services.*.pull_policy",
        "tests/e2e_pull.rs::apply_pulls_a_missing_image_once_and_reports_pull_failures",
    ),
    ("services.*.read_only", HERE_PROCESS),
    (
        "services.*.restart",
        "reconciler/tests/from_compose.rs::compose_restart_and_defaults",
    ),
    ("services.*.shm_size", HERE_PROCESS),
    ("services.*.stop_grace_period", HERE_PROCESS),
    ("services.*.stop_signal", HERE_PROCESS),
    (
        "services.*.sysctls",
        "node-agent/src/options.rs::whole_mapping_carries_sysctls_ulimits_mounts_and_network",
    ),
    (
        "services.*.tmpfs",
        "node-agent/src/options.rs::tmpfs_options_that_cannot_be_honoured_are_refused",
    ),
    (
        "services.*.ulimits",
        "node-agent/src/options.rs::ulimits_keep_soft_and_hard_and_minus_one_is_unlimited",
    ),
    (
        "services.*.ulimits.*.hard",
        "node-agent/src/options.rs::ulimits_keep_soft_and_hard_and_minus_one_is_unlimited",
    ),
    (
        "services.*.ulimits.*.soft",
        "node-agent/src/options.rs::ulimits_keep_soft_and_hard_and_minus_one_is_unlimited",
    ),
    ("services.*.user", HERE_PROCESS),
    (
        "services.*.volumes",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].bind",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].bind.create_host_path",
        "tests/e2e_compose.rs::compose_volumes_tmpfs_ulimits_sysctls_and_network_mode_service",
    ),
    (
        "services.*.volumes.[].read_only",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].source",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].target",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].type",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].tmpfs",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].tmpfs.size",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    (
        "services.*.volumes.[].volume",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    // dcpp never copies image content into a volume: `nocopy: true` is what it does.
    (
        "services.*.volumes.[].volume.nocopy",
        "node-agent/src/options.rs::volumes_map_to_named_volumes_binds_and_tmpfs",
    ),
    ("services.*.working_dir", HERE_PROCESS),
    (
        "volumes",
        "reconciler/tests/from_compose.rs::named_volumes_resolve_to_their_actual_names",
    ),
    (
        "volumes.*.name",
        "reconciler/tests/from_compose.rs::named_volumes_resolve_to_their_actual_names",
    ),
    (
        "volumes.*.external",
        "reconciler/tests/from_compose.rs::named_volumes_resolve_to_their_actual_names",
    ),
    (
        "networks",
        "runtime/tests/network_e2e.rs::endpoints_talk_by_ip_and_name_ports_publish_and_host_is_clean_after",
    ),
];

/// Applied by the resource-limits work of issue 11 (cgroups like `mem_limit`/`cpus`/
/// `pids_limit`); its tests live on that branch.
const APPLIED_ELSEWHERE: &[&str] = &[
    "services.*.deploy.resources.limits",
    "services.*.deploy.resources.limits.cpus",
    "services.*.deploy.resources.limits.memory",
    "services.*.deploy.resources.limits.pids",
];

/// Keys whose unsupported values are refused with an error at apply time (and whose supported
/// values work), with the test of the refusal.
#[rustfmt::skip]
const REFUSED: &[(&str, &str)] = &[
    (
        "services.*.volumes.[].bind.propagation",
        "reconciler/tests/from_compose.rs::mounts_dcpp_cannot_honour_fail_at_apply_time",
    ),
    (
        "services.*.volumes.[].tmpfs.mode",
        "reconciler/tests/from_compose.rs::mounts_dcpp_cannot_honour_fail_at_apply_time",
    ),
    (
        "services.*.volumes.[].volume.subpath",
        "reconciler/tests/from_compose.rs::mounts_dcpp_cannot_honour_fail_at_apply_time",
    ),
    (
        "volumes.*.driver",
        "reconciler/tests/from_compose.rs::mounts_dcpp_cannot_honour_fail_at_apply_time",
    ),
    (
        "volumes.*.driver_opts",
        "reconciler/tests/from_compose.rs::mounts_dcpp_cannot_honour_fail_at_apply_time",
    ),
];

const HERE_PROCESS: &str =
    "node-agent/tests/compose_keys.rs::process_keys_reach_the_container_options";
const HERE_NAMESPACES: &str =
    "tests/e2e_fields.rs::ipc_and_pid_host_share_the_hosts_namespaces_and_the_default_does_not";
const HERE_CGROUP: &str = "tests/e2e_fields.rs::cgroup_and_process_keys_reach_the_container_and_impossible_values_fail_the_task";
const HERE_NAMES: &str = "tests/e2e_fields.rs::extra_hosts_and_dns_settings_reach_the_container_and_stack_names_still_resolve";
const HERE_IPAM: &str = "tests/e2e_ipam.rs::ipam_subnet_range_gateway_and_aux_addresses_reach_the_containers_and_conflicts_fail_the_apply";
const HERE_SPEC: &str = "node-agent/tests/compose_keys.rs::scheduling_keys_reach_the_service_spec";

/// Keys accepted and not acted on: (schema path, whether the warning covers every key below
/// it, a compose file using it, the path the warning must name).
#[rustfmt::skip]
const WARNED: &[(&str, bool, &str, &str)] = &[
    (
        "configs",
        true,
        "configs:\n  c:\n    file: ./c.txt\n",
        "configs",
    ),
    (
        "secrets",
        true,
        "secrets:\n  s:\n    file: ./s.txt\n",
        "secrets",
    ),
    (
        "services.*.configs",
        true,
        "configs:\n  c:\n    file: ./c.txt\nservices:\n  web:\n    image: busybox\n    configs: [c]\n",
        "services.web.configs",
    ),
    (
        "services.*.secrets",
        true,
        "secrets:\n  s:\n    file: ./s.txt\nservices:\n  web:\n    image: busybox\n    secrets: [s]\n",
        "services.web.secrets",
    ),
    (
        "services.*.build",
        true,
        "services:\n  web:\n    image: busybox\n    build: .\n",
        "services.web.build",
    ),
    (
        "services.*.domainname",
        false,
        "services:\n  web:\n    image: busybox\n    domainname: example.org\n",
        "services.web.domainname",
    ),
    (
        "services.*.logging",
        true,
        "services:\n  web:\n    image: busybox\n    logging: {driver: syslog}\n",
        "services.web.logging",
    ),
    (
        "services.*.healthcheck.start_interval",
        false,
        "services:\n  web:\n    image: busybox\n    healthcheck: {test: [CMD, 'true'], start_interval: 1s}\n",
        "services.web.healthcheck.start_interval",
    ),
    (
        "services.*.depends_on.*.restart",
        false,
        "services:\n  db:\n    image: busybox\n  web:\n    image: busybox\n    depends_on: {db: {condition: service_started, restart: true}}\n",
        "services.web.depends_on.db.restart",
    ),
    (
        "services.*.deploy.endpoint_mode",
        false,
        "services:\n  web:\n    image: busybox\n    deploy: {endpoint_mode: vip}\n",
        "services.web.deploy.endpoint_mode",
    ),
    (
        "services.*.deploy.labels",
        false,
        "services:\n  web:\n    image: busybox\n    deploy: {labels: {a: b}}\n",
        "services.web.deploy.labels",
    ),
    (
        "services.*.deploy.resources.reservations.pids",
        false,
        "services:\n  web:\n    image: busybox\n    deploy: {resources: {reservations: {pids: 10}}}\n",
        "services.web.deploy.resources.reservations.pids",
    ),
    (
        "services.*.networks.*.ipv4_address",
        false,
        "services:\n  web:\n    image: busybox\n    networks: {n: {ipv4_address: 10.9.0.5}}\nnetworks:\n  n: {}\n",
        "services.web.networks.n.ipv4_address",
    ),
    (
        "services.*.networks.*.ipv6_address",
        false,
        "services:\n  web:\n    image: busybox\n    networks: {n: {ipv6_address: 'fd00::5'}}\nnetworks:\n  n: {}\n",
        "services.web.networks.n.ipv6_address",
    ),
    (
        "services.*.networks.*.priority",
        false,
        "services:\n  web:\n    image: busybox\n    networks: {n: {priority: 5}}\nnetworks:\n  n: {}\n",
        "services.web.networks.n.priority",
    ),
    (
        "services.*.ports.[].name",
        false,
        "services:\n  web:\n    image: busybox\n    ports: [{target: 80, name: web}]\n",
        "services.web.ports[0].name",
    ),
    (
        "services.*.ports.[].app_protocol",
        false,
        "services:\n  web:\n    image: busybox\n    ports: [{target: 80, app_protocol: http}]\n",
        "services.web.ports[0].app_protocol",
    ),
    (
        "services.*.volumes.[].bind.selinux",
        false,
        "services:\n  web:\n    image: busybox\n    volumes: [{type: bind, source: /tmp, target: /x, bind: {selinux: z}}]\n",
        "services.web.volumes[0].bind.selinux",
    ),
    (
        "networks.*.name",
        false,
        "networks:\n  n: {name: other}\n",
        "networks.n.name",
    ),
    (
        "networks.*.driver",
        false,
        "networks:\n  n: {driver: overlay}\n",
        "networks.n.driver",
    ),
    (
        "networks.*.driver_opts",
        false,
        "networks:\n  n: {driver_opts: {a: b}}\n",
        "networks.n.driver_opts",
    ),
    (
        "networks.*.external",
        false,
        "networks:\n  n: {external: true}\n",
        "networks.n.external",
    ),
    (
        "networks.*.internal",
        false,
        "networks:\n  n: {internal: true}\n",
        "networks.n.internal",
    ),
    (
        "networks.*.attachable",
        false,
        "networks:\n  n: {attachable: true}\n",
        "networks.n.attachable",
    ),
    (
        "networks.*.enable_ipv6",
        false,
        "networks:\n  n: {enable_ipv6: true}\n",
        "networks.n.enable_ipv6",
    ),
    (
        "networks.*.labels",
        false,
        "networks:\n  n: {labels: {a: b}}\n",
        "networks.n.labels",
    ),
    (
        "volumes.*.labels",
        false,
        "volumes:\n  v: {labels: {a: b}}\n",
        "volumes.v.labels",
    ),
];

/// The rollback config's fields mirror the update config's: the same conversion applies them.
const SAME_AS_UPDATE_CONFIG: &str = "services.*.deploy.rollback_config.";

/// Every key path of the schema, with `*` for user-chosen keys and `[]` for list items.
fn schema_paths() -> BTreeSet<String> {
    fn walk(
        defs: &serde_json::Value,
        node: &serde_json::Value,
        path: &str,
        seen: &BTreeSet<String>,
        out: &mut BTreeSet<String>,
    ) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
            let name = r.rsplit('/').next().unwrap_or_default().to_string();
            if !seen.contains(&name) {
                let mut seen = seen.clone();
                seen.insert(name.clone());
                walk(defs, &defs[&name], path, &seen, out);
            }
            return;
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            for alt in node.get(k).and_then(|a| a.as_array()).into_iter().flatten() {
                walk(defs, alt, path, seen, out);
            }
        }
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                let p = join(k);
                out.insert(p.clone());
                walk(defs, v, &p, seen, out);
            }
        }
        if let Some(ap) = node.get("additionalProperties").filter(|a| a.is_object()) {
            walk(defs, ap, &join("*"), seen, out);
        }
        if let Some(items) = node.get("items").filter(|a| a.is_object()) {
            walk(defs, items, &join("[]"), seen, out);
        }
    }
    let schema = dcpp_spec::schema();
    let mut out = BTreeSet::new();
    walk(&schema["$defs"], &schema, "", &BTreeSet::new(), &mut out);
    out
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// `file::function` must name a test function that exists; a bare path must exist.
fn check_evidence(key: &str, evidence: &str) -> Result<(), String> {
    let (file, func) = evidence.split_once("::").unwrap_or((evidence, ""));
    let path = workspace().join(file);
    if func.is_empty() {
        return path
            .exists()
            .then_some(())
            .ok_or_else(|| format!("{key}: {evidence} does not exist"));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{key}: {file}: {e}"))?;
    text.contains(&format!("fn {func}("))
        .then_some(())
        .ok_or_else(|| format!("{key}: no test {func} in {file}"))
}

fn load(yaml: &str) -> Result<dcpp_spec::Loaded, dcpp_spec::SpecErrors> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.txt"), "c").unwrap();
    std::fs::write(dir.path().join("s.txt"), "s").unwrap();
    let f = dir.path().join("compose.yml");
    let text = if yaml.contains("services:") {
        yaml.to_string()
    } else {
        format!("services:\n  web:\n    image: busybox\n{yaml}")
    };
    std::fs::write(&f, text).unwrap();
    dcpp_spec::load(&dcpp_spec::LoadOptions {
        files: vec![f],
        project_name: Some("st".into()),
        working_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
}

#[test]
fn every_model_key_is_applied_refused_or_warned() {
    let mut problems = Vec::new();
    let mut classified: BTreeSet<&str> = BTreeSet::new();
    for (key, evidence) in APPLIED.iter().chain(REFUSED) {
        if !classified.insert(key) {
            problems.push(format!("{key}: listed twice"));
        }
        if let Err(e) = check_evidence(key, evidence) {
            problems.push(e);
        }
    }
    for key in APPLIED_ELSEWHERE {
        if !classified.insert(key) {
            problems.push(format!("{key}: listed twice"));
        }
    }
    for (key, _, yaml, want) in WARNED {
        if *want == "-" {
            // Listed only to make sure it stays unwarned: the next check covers it.
            continue;
        }
        if !classified.insert(key) {
            problems.push(format!("{key}: listed twice"));
        }
        let warnings = match load(yaml) {
            Ok(l) => l.warnings,
            Err(e) => {
                problems.push(format!("{key}: the example does not load: {e}"));
                continue;
            }
        };
        let hit = warnings.iter().find(|w| w.path == *want);
        match hit {
            Some(w) if w.message.starts_with("accepted but not applied by dcpp: ") => {
                if w.line == 0 || w.column == 0 || !w.file.ends_with("compose.yml") {
                    problems.push(format!("{key}: warning without file:line:col: {w}"));
                }
            }
            _ => problems.push(format!(
                "{key}: no \"accepted but not applied\" warning at {want}; got {:?}",
                warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>()
            )),
        }
    }
    let covered_by = |p: &str| {
        WARNED
            .iter()
            .any(|(k, subtree, _, w)| *subtree && *w != "-" && p.starts_with(&format!("{k}.")))
    };
    for p in schema_paths() {
        if classified.contains(p.as_str()) || covered_by(&p) {
            continue;
        }
        if let Some(field) = p.strip_prefix(SAME_AS_UPDATE_CONFIG)
            && classified.contains(format!("services.*.deploy.update_config.{field}").as_str())
        {
            continue;
        }
        problems.push(format!(
            "{p}: neither applied (with a test), refused nor warned — classify it here"
        ));
    }
    // A warning for an applied key would be a false alarm.
    let everything = "services:\n  web:\n    image: busybox\n    command: [sleep, '1']\n    environment: {A: '1'}\n    deploy:\n      replicas: 2\n      resources: {limits: {cpus: '0.5', memory: 64M, pids: 64}, reservations: {cpus: '0.1', memory: 8M}}\n      rollback_config: {delay: 1s}\n      update_config: {parallelism: 2, order: start-first}\n    ports: ['127.0.0.1:8080:80']\n    healthcheck: {test: [CMD, 'true'], interval: 1s}\n    volumes: [data:/data]\nvolumes:\n  data: {}\n";
    match load(everything) {
        Ok(l) if l.warnings.is_empty() => {}
        Ok(l) => problems.push(format!(
            "applied keys warned about: {:?}",
            l.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>()
        )),
        Err(e) => problems.push(format!("applied keys do not load: {e}")),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn task(doc: &dcpp_control::schema::ServiceDoc) -> Task {
    Task {
        id: TaskId(3),
        service: ServiceId::new(&doc.spec.stack, &doc.spec.name),
        slot: Slot::Replica(1),
        spec_version: doc.spec.version,
        image: doc.spec.image.clone(),
        reservations: Default::default(),
        node: None,
        desired: dcpp_reconciler::DesiredState::Running,
        state: TaskState::Assigned,
        container_id: None,
        health: Health::Unknown,
        exit_code: None,
        created_at: 0,
        updated_at: 0,
        started_at: None,
        healthy_at: None,
        pull: None,
        finished_at: None,
        not_before: None,
        message: String::new(),
        error: None,
        restart_count: 0,
        restarts: Vec::new(),
        fast_failures: 0,
    }
}

#[test]
fn process_keys_reach_the_container_options() {
    let loaded = load(
        r#"services:
  web:
    image: dcpp.local/keys:1
    command: [httpd, -f]
    entrypoint: [/bin/sh, -c]
    environment: {A: "1", UNSET: null}
    working_dir: /srv
    user: "1000:1000"
    hostname: web-host
    init: true
    stop_signal: SIGINT
    stop_grace_period: 1m30s
    mem_limit: 64m
    cpus: 0.5
    pids_limit: 64
    privileged: true
    read_only: true
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    shm_size: 16m
    labels: {team: web}
    cpu_shares: 512
    cpuset: 0-1
    mem_reservation: 32m
    memswap_limit: -1
    oom_score_adj: -500
    extra_hosts: ["db:10.0.0.5", "db=10.0.0.6"]
    dns: [10.0.0.53]
    dns_search: corp.example
    dns_opt: [ndots:2]
"#,
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let (_, docs) = stack_docs(&loaded.project, "test").unwrap();
    let d = &docs[0];
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let store = dcpp_runtime::image::ImageStore::open(&dir.path().join("images")).unwrap();
    let img = store.import_rootfs(&rootfs, "dcpp.local/keys:1").unwrap();
    let o = dcpp_node_agent::options::container_options(
        &task(d),
        d,
        &dcpp_node_agent::host::Image::from(&img),
        "st_web.1.3",
        &|_| None,
    )
    .unwrap();
    assert_eq!(o.command, Some(vec!["httpd".into(), "-f".into()]));
    assert_eq!(o.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
    assert_eq!(o.env, vec!["A=1".to_string()]);
    assert_eq!(o.working_dir.as_deref(), Some("/srv"));
    assert_eq!(o.user.as_deref(), Some("1000:1000"));
    assert_eq!(o.hostname.as_deref(), Some("web-host"));
    assert!(o.init);
    assert_eq!(o.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(
        o.stop_grace_period,
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(o.memory, Some(64 << 20));
    assert_eq!(o.cpus, Some(0.5));
    assert_eq!(o.pids_limit, Some(64));
    assert!(o.privileged);
    assert!(o.read_only);
    assert_eq!(o.cap_add, vec!["NET_ADMIN".to_string()]);
    assert_eq!(o.cap_drop, vec!["ALL".to_string()]);
    assert_eq!(o.shm_size, Some(16 << 20));
    assert_eq!(o.labels["team"], "web");
    assert_eq!(o.cpu_shares, Some(512));
    assert_eq!(o.cpuset_cpus.as_deref(), Some("0-1"));
    assert_eq!(o.memory_reservation, Some(32 << 20));
    assert_eq!(o.memory_swap, Some(-1));
    assert_eq!(o.oom_score_adj, Some(-500));
    assert_eq!(
        o.extra_hosts,
        vec![
            ("db".to_string(), "10.0.0.5".to_string()),
            ("db".to_string(), "10.0.0.6".to_string())
        ]
    );
    assert_eq!(o.dns, vec!["10.0.0.53".to_string()]);
    assert_eq!(o.dns_search, vec!["corp.example".to_string()]);
    assert_eq!(o.dns_options, vec!["ndots:2".to_string()]);
    assert_eq!(d.spec.image, "dcpp.local/keys:1");
}

#[test]
fn scheduling_keys_reach_the_service_spec() {
    let loaded = load(
        r#"services:
  web:
    image: busybox
    healthcheck: {test: [CMD, "true"], disable: true}
    depends_on:
      cache: {condition: service_started, required: false}
      db: {condition: service_healthy}
  db:
    image: busybox
    healthcheck: {test: [CMD, "true"]}
"#,
    )
    .unwrap();
    let (_, docs) = stack_docs(&loaded.project, "test").unwrap();
    let web = docs.iter().find(|d| d.spec.name == "web").unwrap();
    let db = docs.iter().find(|d| d.spec.name == "db").unwrap();
    // `disable: true` turns the healthcheck off; the other one is on.
    assert!(!web.spec.healthcheck);
    assert!(db.spec.healthcheck);
    // An optional dependency on a service the project lacks is dropped; a required one stays.
    let deps: Vec<&str> = web
        .spec
        .depends_on
        .iter()
        .map(|d| d.service.as_str())
        .collect();
    assert_eq!(deps, ["db"]);
}
