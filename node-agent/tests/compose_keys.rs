//! Nothing in a compose file is silently without effect. The conformance table
//! (`dcpp_spec::conformance`) says, for every key of the canonical model, whether dcpp applies
//! it, warns about it or refuses it, and `spec/tests/conformance.rs` checks the warnings and
//! errors it promises. What the spec crate cannot show is that an applied key reaches the
//! container or the scheduler: this file names, for each key the table calls applied, the test
//! that shows it, and fails for an applied key without one (a key added to the model or moved
//! to applied in the table) and for a test named for a key the table does not apply.

use std::collections::BTreeSet;
use std::path::Path;

use dcpp_control::schema::stack_docs;
use dcpp_reconciler::{ServiceId, Slot, Task, TaskId, TaskState};
use dcpp_spec::conformance::{OBJECTS, Support};

/// Keys that take effect, each with the test (`file::function`, or a corpus case directory)
/// that shows it.
#[rustfmt::skip]
const APPLIED: &[(&str, &str)] = &[
    ("name", "spec/tests/corpus/002-name-field"),
    (
        "services",
        "tests/e2e_apply.rs::apply_runs_a_stack_and_reapply_scale_and_kill_behave",
    ),
    (
        "services.*.build",
        "tests/e2e_build.rs::compose_build_is_built_by_apply_and_rebuilt_from_the_changed_step",
    ),
    (
        "services.*.build.args",
        "tests/e2e_build.rs::compose_build_is_built_by_apply_and_rebuilt_from_the_changed_step",
    ),
    (
        "services.*.build.context",
        "tests/e2e_build.rs::compose_build_is_built_by_apply_and_rebuilt_from_the_changed_step",
    ),
    (
        "services.*.build.dockerfile",
        "tests/e2e_build.rs::compose_build_takes_its_dockerfile_target_and_no_cache",
    ),
    (
        "services.*.build.labels",
        "tests/e2e_build.rs::compose_build_is_built_by_apply_and_rebuilt_from_the_changed_step",
    ),
    (
        "services.*.build.no_cache",
        "tests/e2e_build.rs::compose_build_takes_its_dockerfile_target_and_no_cache",
    ),
    (
        "services.*.build.tags",
        "tests/e2e_build.rs::compose_build_is_built_by_apply_and_rebuilt_from_the_changed_step",
    ),
    (
        "services.*.build.target",
        "tests/e2e_build.rs::compose_build_takes_its_dockerfile_target_and_no_cache",
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
    ("secrets", HERE_SECRETS),
    ("secrets.*.name", "tests/e2e_secrets.rs::secret_cli_creates_lists_and_refuses_to_remove_one_in_use"),
    ("secrets.*.file", HERE_SECRETS),
    ("secrets.*.environment", HERE_SECRETS),
    ("secrets.*.external", "tests/e2e_secrets.rs::secret_cli_creates_lists_and_refuses_to_remove_one_in_use"),
    ("secrets.*.labels", "spec/tests/corpus/235-secrets-configs-applied"),
    ("configs", HERE_SECRETS),
    ("configs.*.name", "spec/tests/corpus/235-secrets-configs-applied"),
    ("configs.*.file", HERE_SECRETS),
    ("configs.*.environment", HERE_SECRETS),
    ("configs.*.content", HERE_SECRETS),
    ("configs.*.external", "spec/tests/corpus/235-secrets-configs-applied"),
    ("configs.*.labels", "spec/tests/corpus/235-secrets-configs-applied"),
    ("services.*.secrets", HERE_SECRETS),
    ("services.*.secrets.[].source", HERE_SECRETS),
    ("services.*.secrets.[].target", HERE_SECRETS),
    ("services.*.secrets.[].uid", HERE_SECRETS),
    ("services.*.secrets.[].gid", HERE_SECRETS),
    ("services.*.secrets.[].mode", HERE_SECRETS),
    ("services.*.configs", HERE_SECRETS),
    ("services.*.configs.[].source", HERE_SECRETS),
    ("services.*.configs.[].target", HERE_SECRETS),
    ("services.*.configs.[].uid", HERE_SECRETS),
    ("services.*.configs.[].gid", HERE_SECRETS),
    ("services.*.configs.[].mode", HERE_SECRETS),
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

/// Keys the table calls applied only for the value dcpp has when the key is absent (a bridge,
/// not external, no restart of dependents, dnsrr); every other value is warned about, which
/// spec/tests/conformance.rs checks. Nothing to show beyond the default behaviour, so each
/// must have such a value rule in the table.
const APPLIED_AS_DEFAULT: &[&str] = &[
    "networks.*.attachable",
    "networks.*.driver",
    "networks.*.enable_ipv6",
    "networks.*.external",
    "networks.*.internal",
    "services.*.depends_on.*.restart",
    "services.*.deploy.endpoint_mode",
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

const HERE_SECRETS: &str = "tests/e2e_secrets.rs::secrets_and_configs_reach_the_container_on_a_read_only_tmpfs_and_nowhere_else";
const HERE_PROCESS: &str =
    "node-agent/tests/compose_keys.rs::process_keys_reach_the_container_options";
const HERE_NAMESPACES: &str =
    "tests/e2e_fields.rs::ipc_and_pid_host_share_the_hosts_namespaces_and_the_default_does_not";
const HERE_CGROUP: &str = "tests/e2e_fields.rs::cgroup_and_process_keys_reach_the_container_and_impossible_values_fail_the_task";
const HERE_NAMES: &str = "tests/e2e_fields.rs::extra_hosts_and_dns_settings_reach_the_container_and_stack_names_still_resolve";
const HERE_IPAM: &str = "tests/e2e_ipam.rs::ipam_subnet_range_gateway_and_aux_addresses_reach_the_containers_and_conflicts_fail_the_apply";
const HERE_SPEC: &str = "node-agent/tests/compose_keys.rs::scheduling_keys_reach_the_service_spec";

/// The rollback config's fields mirror the update config's: the same conversion applies them.
const SAME_AS_UPDATE_CONFIG: &str = "services.*.deploy.rollback_config.";

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// Why a key's named test does not count.
#[derive(Debug, thiserror::Error)]
enum Evidence {
    #[error("{key}: {evidence} does not exist")]
    Missing { key: String, evidence: String },
    #[error("{key}: {file}: {source}")]
    Unreadable {
        key: String,
        file: String,
        source: std::io::Error,
    },
    #[error("{key}: no test {func} in {file}")]
    NoSuchTest {
        key: String,
        func: String,
        file: String,
    },
}

/// `file::function` must name a test function that exists; a bare path must exist.
fn check_evidence(key: &str, evidence: &str) -> Result<(), Evidence> {
    let (file, func) = evidence.split_once("::").unwrap_or((evidence, ""));
    let path = workspace().join(file);
    if func.is_empty() {
        return path
            .exists()
            .then_some(())
            .ok_or_else(|| Evidence::Missing {
                key: key.to_owned(),
                evidence: evidence.to_owned(),
            });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| Evidence::Unreadable {
        key: key.to_owned(),
        file: file.to_owned(),
        source,
    })?;
    text.contains(&format!("fn {func}("))
        .then_some(())
        .ok_or_else(|| Evidence::NoSuchTest {
            key: key.to_owned(),
            func: func.to_owned(),
            file: file.to_owned(),
        })
}

/// What the conformance table says the loader does with a key path of the schema: the first
/// entry of the key, which is about the key itself rather than some of its values.
fn table_support(path: &str) -> Option<Support> {
    let (object, key) = path.rsplit_once('.').unwrap_or(("", path));
    OBJECTS
        .iter()
        .find(|o| o.path == object)
        .and_then(|o| o.get(key))
        .map(|k| k.support)
}

/// Applied keys, and deprecated forms (applied with a warning), need a test that shows them.
fn applied(support: Support) -> bool {
    matches!(support, Support::Applied | Support::Deprecated)
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
fn every_applied_key_has_a_test_that_shows_it() {
    let mut problems = Vec::new();
    let mut named: BTreeSet<&str> = BTreeSet::new();
    for (key, evidence) in APPLIED.iter().chain(REFUSED) {
        if !named.insert(key) {
            problems.push(format!("{key}: listed twice"));
        }
        if let Err(e) = check_evidence(key, evidence) {
            problems.push(e.to_string());
        }
    }
    for key in APPLIED_ELSEWHERE {
        if !named.insert(key) {
            problems.push(format!("{key}: listed twice"));
        }
    }
    for key in APPLIED_AS_DEFAULT {
        if !named.insert(key) {
            problems.push(format!("{key}: listed twice"));
        }
        let (object, name) = key.rsplit_once('.').unwrap_or(("", key));
        let warns_otherwise = OBJECTS.iter().filter(|o| o.path == object).any(|o| {
            o.keys
                .iter()
                .any(|k| k.name == name && !k.when.is_empty() && !applied(k.support))
        });
        if !warns_otherwise {
            problems.push(format!(
                "{key}: the table has no value of it that dcpp warns about or refuses"
            ));
        }
    }
    for key in &named {
        match table_support(key) {
            Some(s) if applied(s) => {}
            Some(s) => problems.push(format!(
                "{key}: the conformance table says {s:?}; a test for it here is stale"
            )),
            None => problems.push(format!("{key}: not a key of the conformance table")),
        }
    }
    // Configs and secrets share one type in the model; secrets have no `content` in compose
    // and the loader refuses one (spec/tests/conformance.rs says the same).
    let shared_type = ["secrets.*.content"];
    for p in dcpp_spec::schema_paths() {
        if named.contains(p.as_str()) || shared_type.contains(&p.as_str()) {
            continue;
        }
        if let Some(field) = p.strip_prefix(SAME_AS_UPDATE_CONFIG)
            && named.contains(format!("services.*.deploy.update_config.{field}").as_str())
        {
            continue;
        }
        match table_support(&p) {
            Some(s) if applied(s) => problems.push(format!(
                "{p}: applied by the conformance table but no test here shows it reaching the \
                 container or the scheduler"
            )),
            Some(_) => {}
            None => problems.push(format!(
                "{p}: a key of the model missing from the conformance table"
            )),
        }
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
        state: TaskState::Assigned,
        ..Task::new(
            TaskId(3),
            ServiceId::new(&doc.spec.stack, &doc.spec.name),
            Slot::Replica(1),
            doc.spec.version,
            doc.spec.image.clone(),
            Default::default(),
            0,
        )
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
  cache:
    image: busybox
    profiles: [debug]
"#,
    )
    .unwrap();
    let (_, docs) = stack_docs(&loaded.project, "test").unwrap();
    let web = docs.iter().find(|d| d.spec.name == "web").unwrap();
    let db = docs.iter().find(|d| d.spec.name == "db").unwrap();
    // `disable: true` turns the healthcheck off; the other one is on.
    assert!(!web.spec.healthcheck);
    assert!(db.spec.healthcheck);
    // An optional dependency on a service the active profiles disable is dropped; a required
    // one stays.
    let deps: Vec<&str> = web
        .spec
        .depends_on
        .iter()
        .map(|d| d.service.as_str())
        .collect();
    assert_eq!(deps, ["db"]);
}
