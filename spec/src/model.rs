//! The canonical desired-state model.
//!
//! Every short form of the compose format is expanded here (ports, volumes, depends_on,
//! environment, ulimits, …), durations are kept as [`Duration`] (printed the way compose prints
//! them, e.g. `1m30s`), sizes as bytes, relative paths made absolute, and every map is a
//! `BTreeMap`, so the same input always serialises to byte-identical output.
//!
//! Field names, nesting and order follow what `docker compose config` prints (compose-go's
//! struct order), so the serialised model can be fed back through the loader and yields the
//! identical model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_true() -> bool {
    true
}

/// `x-*` keys of a model object (compose-spec allows them on every object): free-form values
/// that compose keeps and prints, and that nothing applies.
pub type Extensions = BTreeMap<String, serde_json::Value>;

/// The flattened `x-*` keys of a model object. Flattening catches every key the struct does not
/// name, so anything else is refused here, as `deny_unknown_fields` would.
mod x_keys {
    use serde::{Deserialize, Deserializer};

    use super::Extensions;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Extensions, D::Error> {
        let map = Extensions::deserialize(d)?;
        match map.keys().find(|k| !k.starts_with("x-")) {
            Some(k) => Err(serde::de::Error::custom(format!(
                "unknown field `{k}` (only `x-*` keys are free-form)"
            ))),
            None => Ok(map),
        }
    }
}

/// A whole project: what `docker compose config` prints, fully normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Project name: `-p`, else top-level `name:`, else `COMPOSE_PROJECT_NAME`, else the
    /// normalised project directory name. Only `[a-z0-9_-]`, starting with a letter or digit.
    pub name: String,
    /// Services by name. Services disabled by profiles are not present.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Networks by their key in the file. `default` is added when a service uses it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    /// Named volumes by their key in the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Volume>,
    /// Secrets by their key in the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileObject>,
    /// Configs by their key in the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, FileObject>,
}

/// One service in canonical (long) form. Also the shape of a service given without a compose
/// file (`dcpp service create`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Service {
    /// Profiles that enable this service; empty means always enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// How to build the image: `dcpp apply` builds it on the node it runs on, named by
    /// `image:` or `<project>-<service>` (see [`Service::image_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Capabilities added to the default set, in file order, without duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from the default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Number of CPUs the container may use (`cpus:`), e.g. 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// CPUs the container may run on, in the kernel's list format (`0-2,4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// Relative CPU weight against other containers (cgroup v1 shares, 2 to 262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    /// Overrides the image's CMD. `None`: use the image's; `Some([])`: explicitly empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Configs mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileReference>,
    /// Name of the container (`container_name:`), instead of `<stack>_<service>.<slot>.<task>`;
    /// only with one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Services that must be started (or healthy, or completed) before this one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, DependsOn>,
    /// Swarm-style deployment settings: replicas, resources, update/rollback policies, placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// Nameservers for names outside the stack (they replace the host's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// `options` lines of the container's resolv.conf (`ndots:2`, `timeout:1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_opt: Vec<String>,
    /// Search domains of the container's resolv.conf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// Host devices made available in the container, `HOST[:CONTAINER[:PERMISSIONS]]`
    /// (permissions `rwm` when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// NIS domain name of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// Overrides the image's ENTRYPOINT. `None`: use the image's; `Some([])`: explicitly empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables, with `env_file` contents folded in (explicit `environment` wins).
    /// `None` means the variable was named but had no value anywhere (compose prints `null`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, Option<String>>,
    /// Ports exposed to linked services only, e.g. `"3000"` or `"8000-8010/udp"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// Entries added to the container's /etc/hosts, `host=ip`, sorted as compose prints them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Container hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Health check run inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Image reference to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Run an init process (PID 1) that forwards signals and reaps zombies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// IPC namespace: `host` (the host's), `private` or `shareable` (its own, the default),
    /// `service:NAME` or `container:NAME` (that container's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    /// Container labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Files the labels were read from (absolute), `labels` winning over them; kept as
    /// compose prints them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_file: Vec<String>,
    /// Log driver and its options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// Memory limit in bytes (`mem_limit:`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "byte_size")]
    #[schemars(with = "Option<String>")]
    pub mem_limit: Option<u64>,
    /// Memory the container is guaranteed under contention (`mem_reservation:`), in bytes:
    /// v1 `memory.soft_limit_in_bytes`, v2 `memory.low`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "byte_size")]
    #[schemars(with = "Option<String>")]
    pub mem_reservation: Option<u64>,
    /// Memory plus swap the container may use, in bytes; -1 is unlimited swap.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "byte_size")]
    #[schemars(with = "Option<String>")]
    pub memswap_limit: Option<i64>,
    /// `none`, `host`, `bridge`, `service:NAME` or `container:NAME`; excludes `networks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Networks the service joins, with per-network settings (`None` = defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Option<ServiceNetwork>>,
    /// The kernel's OOM-killer preference for the container's processes (-1000 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    /// PID namespace: `host` (the host's), `service:NAME` or `container:NAME` (that
    /// container's); its own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// Maximum number of processes in the container (`pids_limit:`); -1 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// `OS/ARCH[/VARIANT]` the image must be built for (`linux/amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Published and unpublished ports, long syntax, one entry per container port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Run with all capabilities and devices.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// When the node pulls the image: `always`, `never`, `missing`/`if_not_present` (the
    /// default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    /// Mount the root filesystem read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Restart policy outside swarm mode: `no`, `always`, `on-failure[:N]`, `unless-stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// `scale:` as given, printed as compose prints it. When `deploy` is set too,
    /// `deploy.replicas` holds the same number; [`Service::replicas`] reads either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u64>,
    /// Secrets mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileReference>,
    /// Size of /dev/shm in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "byte_size")]
    #[schemars(with = "Option<String>")]
    pub shm_size: Option<u64>,
    /// Time to wait after `stop_signal` before killing the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    /// Signal sent to stop the container (e.g. `SIGTERM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Kernel parameters set in the container's namespaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// tmpfs mounts as `PATH[:OPTIONS]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// Resource limits (`nofile`, `nproc`, …), each with soft and hard values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// User (name or uid, optionally `:group`) the process runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Mounts, long syntax, in file order, one per target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServiceVolume>,
    /// Services (`SERVICE[:ro|rw]`) or containers (`container:NAME[:ro|rw]`) whose volumes
    /// and bind mounts the container mounts too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes_from: Vec<String>,
    /// Working directory of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

impl Service {
    /// The image the service runs: `image:`, or for a service that is only built, compose's
    /// `<project>-<service>`.
    pub fn image_name(&self, project: &str, service: &str) -> Option<String> {
        self.image
            .clone()
            .or_else(|| self.build.as_ref().map(|_| format!("{project}-{service}")))
    }

    /// Desired number of tasks for a replicated service: `deploy.replicas`, else `scale`, else
    /// 1 (the loader refuses the two with different values). Global services return `None`.
    pub fn replicas(&self) -> Option<u64> {
        match &self.deploy {
            Some(d) if d.mode == Some(DeployMode::Global) => None,
            d => Some(
                d.as_ref()
                    .and_then(|d| d.replicas)
                    .or(self.scale)
                    .unwrap_or(1),
            ),
        }
    }

    /// Drops every `x-*` key of the service and of the objects inside it: compose's JSON form
    /// leaves them out everywhere below the top level.
    pub(crate) fn clear_extensions(&mut self) {
        self.extensions.clear();
        if let Some(b) = &mut self.build {
            b.extensions.clear();
        }
        self.depends_on
            .values_mut()
            .for_each(|d| d.extensions.clear());
        if let Some(h) = &mut self.healthcheck {
            h.extensions.clear();
        }
        if let Some(d) = &mut self.deploy {
            d.extensions.clear();
            for u in [&mut d.update_config, &mut d.rollback_config]
                .into_iter()
                .flatten()
            {
                u.extensions.clear();
            }
            if let Some(r) = &mut d.resources {
                r.extensions.clear();
                for spec in [&mut r.limits, &mut r.reservations].into_iter().flatten() {
                    spec.extensions.clear();
                }
            }
            if let Some(r) = &mut d.restart_policy {
                r.extensions.clear();
            }
            if let Some(pl) = &mut d.placement {
                pl.extensions.clear();
                pl.preferences.iter_mut().for_each(|p| p.extensions.clear());
            }
        }
        if let Some(l) = &mut self.logging {
            l.extensions.clear();
        }
        self.networks
            .values_mut()
            .flatten()
            .for_each(|n| n.extensions.clear());
        self.ports.iter_mut().for_each(|p| p.extensions.clear());
        for r in self.secrets.iter_mut().chain(&mut self.configs) {
            r.extensions.clear();
        }
        for v in &mut self.volumes {
            v.extensions.clear();
            if let Some(b) = &mut v.bind {
                b.extensions.clear();
            }
            if let Some(o) = &mut v.volume {
                o.extensions.clear();
            }
            if let Some(o) = &mut v.tmpfs {
                o.extensions.clear();
            }
        }
    }
}

/// `build:` section: what `dcpp apply` and `dcpp image build` build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Build {
    /// Absolute path (or URL) of the build context.
    pub context: String,
    /// Dockerfile path relative to the context; `Dockerfile` unless given (or inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Build arguments. One named without a value takes the project's variable and is left
    /// out when that is unset, as compose does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Option<String>>,
    /// Multi-stage build target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Further names of the built image, beside the service's image name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Labels added to the built image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Build every step, using no cached layer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_cache: bool,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Whether a build context names a remote source (a URL, a git remote or a `github.com/…`
/// path), which the loader keeps as written instead of resolving it against the file.
pub fn is_remote_context(context: &str) -> bool {
    context.contains("://") || context.starts_with("git@") || context.starts_with("github.com/")
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct DependsOn {
    /// What "ready" means for the dependency.
    pub condition: DependsOnCondition,
    /// Restart this service when the dependency is updated/restarted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart: bool,
    /// When false, a missing or disabled dependency is ignored instead of being an error.
    #[serde(default = "default_true")]
    pub required: bool,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Condition a dependency must reach before the dependent service starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependsOnCondition {
    /// The dependency's container has been started.
    ServiceStarted,
    /// The dependency reports healthy through its healthcheck.
    ServiceHealthy,
    /// The dependency ran to completion with exit code 0.
    ServiceCompletedSuccessfully,
}

impl DependsOnCondition {
    /// The compose spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceStarted => "service_started",
            Self::ServiceHealthy => "service_healthy",
            Self::ServiceCompletedSuccessfully => "service_completed_successfully",
        }
    }
}

/// Health check. `test` is always the list form: `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", cmd]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Healthcheck {
    /// Command in list form; a string in the file becomes `["CMD-SHELL", string]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Time after which one check counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Time between two checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Consecutive failures before the container is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// Grace period after start during which failures don't count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    /// Time between checks during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Duration>,
    /// Disables any healthcheck (also set when `test` is `["NONE"]`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable: bool,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// `deploy:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Deploy {
    /// `replicated` (default) or `global` (one task per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DeployMode>,
    /// Number of tasks of a replicated service (also set from a service's `scale:`, as compose
    /// does when `deploy` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Labels on the service object (not on containers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How the service is updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    /// How a failed update is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    /// Resource limits and reservations per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// When and how often failed tasks are restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Where tasks may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// `vip` (virtual IP) or `dnsrr` (DNS round robin) service discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<EndpointMode>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Deploy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeployMode {
    /// A fixed number of tasks (`replicas`).
    Replicated,
    /// One task on every eligible node.
    Global,
}

/// Service discovery endpoint mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// A virtual IP load-balances to the tasks.
    Vip,
    /// DNS returns every task's address.
    Dnsrr,
    /// Any other value: compose takes any string here, and dcpp resolves names as for dnsrr.
    #[serde(untagged)]
    Other(String),
}

/// `update_config` / `rollback_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct UpdateConfig {
    /// Tasks updated at once (0 = all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u64>,
    /// Wait between updating two groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// `continue`, `rollback` or `pause` when an update fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    /// How long after each task update to watch for failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Duration>,
    /// Failure rate (0..=1) tolerated during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
    /// `stop-first` (default) or `start-first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Resources {
    /// Hard limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceSpec>,
    /// Guaranteed amounts the scheduler reserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceSpec>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Amounts of CPU, memory and pids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct ResourceSpec {
    /// Number of CPUs (fractional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "byte_size")]
    #[schemars(with = "Option<String>")]
    pub memory: Option<u64>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// `deploy.restart_policy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Wait between restart attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Attempts before giving up (unset = never give up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
    /// Time window used to decide whether a restart succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// `deploy.placement`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Placement {
    /// Constraints such as `node.role==manager` or `node.labels.zone==a`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread preferences, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    /// At most this many tasks of the service on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// One placement preference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct PlacementPreference {
    /// Spread tasks evenly over the values of this node attribute, e.g. `node.labels.zone`.
    pub spread: String,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// One port, long syntax. A short-syntax range becomes several entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Port {
    /// Optional human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ingress` (routing mesh, the default) or `host`.
    #[serde(default = "default_port_mode")]
    pub mode: String,
    /// Host address the port is bound to; all addresses when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Container port.
    pub target: u16,
    /// Host port or host port range (`"8080"`, `"8000-8010"`); unset means an ephemeral port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// `tcp` or `udp` (or `sctp`).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Application protocol hint (`http`, `grpc`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

fn default_port_mode() -> String {
    "ingress".to_owned()
}

fn default_protocol() -> String {
    "tcp".to_owned()
}

/// One mount, long syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct ServiceVolume {
    /// Mount type.
    #[serde(rename = "type")]
    pub kind: VolumeType,
    /// Named volume, absolute host path (bind) or unset (anonymous volume, tmpfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Bind options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    /// Volume options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
    /// tmpfs options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Kind of mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// Named or anonymous volume.
    Volume,
    /// Host path.
    Bind,
    /// In-memory filesystem.
    Tmpfs,
    /// Windows named pipe (accepted for compatibility).
    Npipe,
    /// Image contents mounted read-only.
    Image,
}

/// Options of a bind mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct BindOptions {
    /// SELinux relabel: `z` (shared) or `Z` (private).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<String>,
    /// Mount propagation (`rprivate`, `shared`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// Create the host path if it is missing (true for the short syntax, as compose does).
    #[serde(default, skip_serializing_if = "is_false")]
    pub create_host_path: bool,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Options of a volume mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct VolumeOptions {
    /// Don't copy the image's data into a new volume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nocopy: bool,
    /// Mount only this sub-path of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Options of a tmpfs mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct TmpfsOptions {
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "byte_size")]
    #[schemars(with = "Option<String>")]
    pub size: Option<u64>,
    /// File mode (e.g. 0o1777 = 1023).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// Per-network settings of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct ServiceNetwork {
    /// Extra DNS names of the service on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Static IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Static IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Order in which networks are connected (higher first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// A ulimit; the short form `nproc: 65535` sets soft and hard to the same value. Each is
/// printed in the form it was written in, as compose-go keeps `Single` apart from a
/// `soft`/`hard` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(from = "UlimitForm", into = "UlimitForm")]
pub struct Ulimit {
    /// Soft limit.
    pub soft: i64,
    /// Hard limit.
    pub hard: i64,
    /// Written as one number.
    pub single: bool,
}

/// The two spellings of a ulimit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum UlimitForm {
    /// Soft and hard limit the same.
    Single(i64),
    /// Separate limits.
    Pair {
        /// Soft limit.
        soft: i64,
        /// Hard limit.
        hard: i64,
    },
}

impl From<UlimitForm> for Ulimit {
    fn from(f: UlimitForm) -> Ulimit {
        match f {
            UlimitForm::Single(v) => Ulimit {
                soft: v,
                hard: v,
                single: true,
            },
            UlimitForm::Pair { soft, hard } => Ulimit {
                soft,
                hard,
                single: false,
            },
        }
    }
}

impl From<Ulimit> for UlimitForm {
    fn from(u: Ulimit) -> UlimitForm {
        if u.single && u.soft == u.hard {
            UlimitForm::Single(u.soft)
        } else {
            UlimitForm::Pair {
                soft: u.soft,
                hard: u.hard,
            }
        }
    }
}

/// File modes as compose prints them: an octal string (`"0440"`). A plain number (the
/// decimal value, as older stored models hold it) is still read.
mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_str(&format!("0{m:o}")),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Num(u32),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<Form>::deserialize(d)? {
            None => Ok(None),
            Some(Form::Num(n)) => Ok(Some(n)),
            Some(Form::Text(t)) => u32::from_str_radix(t.trim_start_matches("0o"), 8)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("invalid file mode {t:?}"))),
        }
    }
}

/// Byte sizes as compose prints them: a decimal string (`"67108864"`). A plain number (as
/// older stored models hold it) is still read.
mod byte_size {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Display>(b: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.collect_str(b),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form<T> {
        Num(T),
        Text(String),
    }

    /// A size as a number or a numeric string (`u64`, or `i64` where -1 means unlimited).
    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + FromStr,
    {
        match Option::<Form<T>>::deserialize(d)? {
            None => Ok(None),
            Some(Form::Num(n)) => Ok(Some(n)),
            Some(Form::Text(t)) => t
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("invalid byte size {t:?}"))),
        }
    }
}

/// Logging driver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Logging {
    /// Driver name (`json-file`, `local`, `none`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// A service's reference to a config or secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct FileReference {
    /// Key of the config/secret in the top-level section.
    pub source: String,
    /// Path in the container (absolute for configs; secrets default to /run/secrets/<source>).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Owner uid, as a string (compose spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Owner gid, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// File mode (the permission bits, e.g. 0o440), written as compose does: `"0440"`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "octal_mode")]
    #[schemars(with = "Option<String>")]
    pub mode: Option<u32>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Network {
    /// Actual network name: `<project>_<key>` unless set explicitly or external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Driver (`bridge` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Address management.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    /// Created outside the project; never created or removed by dcpp.
    #[serde(default, skip_serializing_if = "is_false")]
    pub external: bool,
    /// No route to the outside world.
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal: bool,
    /// Standalone containers may attach.
    #[serde(default, skip_serializing_if = "is_false")]
    pub attachable: bool,
    /// Labels on the network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// IPv6 enabled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_ipv6: bool,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

impl Network {
    /// Drops the `x-*` keys of the network and of its IPAM settings, as compose's JSON does.
    pub(crate) fn clear_extensions(&mut self) {
        self.extensions.clear();
        if let Some(ipam) = &mut self.ipam {
            ipam.extensions.clear();
            ipam.config.iter_mut().for_each(|p| p.extensions.clear());
        }
    }
}

/// IP address management of a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Ipam {
    /// IPAM driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Address pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// One IPAM address pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct IpamPool {
    /// CIDR subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Gateway address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Range to allocate container IPs from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// Reserved addresses by hostname.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// A top-level named volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct Volume {
    /// Actual volume name: `<project>_<key>` unless set explicitly or external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Volume driver (`local` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Created outside the project.
    #[serde(default, skip_serializing_if = "is_false")]
    pub external: bool,
    /// Labels on the volume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// A top-level config or secret: exactly one source (file, environment, content) or external.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("patternProperties" = {"^x-": {}}, "additionalProperties" = false))]
pub struct FileObject {
    /// Actual object name: `<project>_<key>` unless set explicitly or external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absolute path of the file holding the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Name of an environment variable holding the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Inline data (configs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Created outside the project.
    #[serde(default, skip_serializing_if = "is_false")]
    pub external: bool,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `x-*` keys, printed after the others as compose prints them; never applied.
    #[serde(flatten, deserialize_with = "x_keys::deserialize")]
    #[schemars(skip)]
    pub extensions: Extensions,
}

/// A non-negative time span with nanosecond precision, printed like Go's `time.Duration`
/// (what compose prints): `1m30s`, `500ms`, `1h0m0s`, `0s`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub u64);

impl Duration {
    /// From nanoseconds.
    pub const fn from_nanos(n: u64) -> Self {
        Duration(n)
    }

    /// Whole nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// As a std duration.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0)
    }

    /// Parses compose/Go duration syntax: a sequence of `<decimal><unit>` with units
    /// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; `0` alone is allowed.
    pub fn parse(s: &str) -> Option<Duration> {
        crate::units::parse_duration(s).map(Duration)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::units::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?}")))
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Go-style duration, e.g. \"1m30s\", \"500ms\"",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$|^0$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_objects_keep_x_keys_and_refuse_other_unknown_keys() {
        let s: Service =
            serde_json::from_str(r#"{"image":"nginx","x-owner":"team"}"#).expect("x- key");
        assert_eq!(s.extensions["x-owner"], "team");
        let e = serde_json::from_str::<Service>(r#"{"image":"nginx","imagee":"x"}"#)
            .expect_err("unknown key");
        assert!(e.to_string().contains("imagee"), "{e}");
        assert!(serde_json::from_str::<Volume>(r#"{"drive":"local"}"#).is_err());
        assert!(serde_json::from_str::<Network>(r#"{"x-vlan":1}"#).is_ok());
        let h: Healthcheck =
            serde_json::from_str(r#"{"test":["NONE"],"x-probe":"fast"}"#).expect("nested x- key");
        assert_eq!(h.extensions["x-probe"], "fast");
        let e = serde_json::from_str::<Port>(r#"{"target":80,"publishd":"8080"}"#)
            .expect_err("unknown nested key");
        assert!(e.to_string().contains("publishd"), "{e}");
    }

    #[test]
    fn schema_allows_x_keys_only() {
        let v = crate::schema();
        for def in [
            "Service",
            "Network",
            "Volume",
            "FileObject",
            "Healthcheck",
            "Deploy",
            "Port",
            "ServiceVolume",
            "IpamPool",
        ] {
            let d = &v["$defs"][def];
            assert!(d["patternProperties"]["^x-"].is_object(), "{def}: {d}");
            assert_eq!(d["additionalProperties"], false, "{def}");
            assert!(d["properties"].get("extensions").is_none(), "{def}");
        }
    }

    #[test]
    fn byte_sizes_print_as_strings_and_read_both_forms() {
        let r: ResourceSpec = serde_json::from_str(r#"{"memory":"1024"}"#).expect("string");
        assert_eq!(r.memory, Some(1024));
        let r: ResourceSpec = serde_json::from_str(r#"{"memory":2048}"#).expect("number");
        assert_eq!(r.memory, Some(2048));
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"memory":"2048"}"#
        );
        assert!(serde_json::from_str::<ResourceSpec>(r#"{"memory":"2k"}"#).is_err());
    }

    #[test]
    fn replicas_come_from_deploy_or_scale() {
        let mut s = Service {
            scale: Some(3),
            ..Service::default()
        };
        assert_eq!(s.replicas(), Some(3));
        s.deploy = Some(Deploy {
            replicas: Some(3),
            ..Deploy::default()
        });
        assert_eq!(s.replicas(), Some(3));
        s.deploy = Some(Deploy {
            mode: Some(DeployMode::Global),
            ..Deploy::default()
        });
        assert_eq!(s.replicas(), None);
        assert_eq!(Service::default().replicas(), Some(1));
    }
}
