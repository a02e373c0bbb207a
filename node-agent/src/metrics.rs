//! The node agent's instrumentation: what it did to containers on this node. One struct, set
//! with [`crate::Agent::with_metrics`] and registered by the embedder; the crate keeps no
//! global state.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of one exit reason.
pub type ReasonLabel = [(&'static str, &'static str); 1];

/// Why a task container ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The kernel's OOM killer fired in its cgroup.
    Oom,
    /// It died from a signal (exit code 128+N) other than through the agent's own stop.
    Killed,
    /// It exited with a code other than 0.
    Nonzero,
    /// It exited with code 0.
    Completed,
    /// Its monitor died without recording an exit.
    Unknown,
}

impl ExitReason {
    /// The reason of an exit with `code` (`None`: not recorded); OOM wins over the signal
    /// the OOM killer sends.
    pub fn of(code: Option<i32>, oom: bool) -> ExitReason {
        match (code, oom) {
            (_, true) => ExitReason::Oom,
            (None, _) => ExitReason::Unknown,
            (Some(0), _) => ExitReason::Completed,
            (Some(c), _) if c > 128 => ExitReason::Killed,
            (Some(_), _) => ExitReason::Nonzero,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ExitReason::Oom => "oom",
            ExitReason::Killed => "killed",
            ExitReason::Nonzero => "nonzero",
            ExitReason::Completed => "completed",
            ExitReason::Unknown => "unknown",
        }
    }
}

/// Counters and histograms of one agent.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// Task containers started (created and started, or an existing one started).
    pub starts: Counter,
    /// Attempts to create and start a task container that failed.
    pub start_failures: Counter,
    /// Starts of a task that replaces an earlier one of its slot (a restart).
    pub restarts: Counter,
    /// Task containers that ended on their own, by reason (stops the agent made are not exits).
    pub exits: Family<ReasonLabel, Counter>,
    /// Healthcheck runs, and those that failed.
    pub healthchecks: Counter,
    pub healthcheck_failures: Counter,
    /// Containers stopped because they turned unhealthy.
    pub unhealthy_stops: Counter,
    /// Time to create and start one task container (image present).
    pub create_start_seconds: Histogram,
    /// Image pulls by result (`ok`, `failed`), bytes transferred, time per pull.
    pub pulls: Family<ResultLabel, Counter>,
    pub pull_bytes: Counter,
    pub pull_seconds: Histogram,
}

/// Label set of a pull's result.
pub type ResultLabel = [(&'static str, &'static str); 1];

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            starts: Counter::default(),
            start_failures: Counter::default(),
            restarts: Counter::default(),
            exits: Family::default(),
            healthchecks: Counter::default(),
            healthcheck_failures: Counter::default(),
            unhealthy_stops: Counter::default(),
            // 5 ms to about 40 s.
            create_start_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            pulls: Family::default(),
            pull_bytes: Counter::default(),
            // 50 ms to about 27 min.
            pull_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
        }
    }
}

impl AgentMetrics {
    /// Registers the metrics (names get the registry's prefix, e.g. `dcpp_`).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "agent_container_starts",
            "Task containers this node started",
            self.starts.clone(),
        );
        reg.register(
            "agent_container_start_failures",
            "Task containers this node failed to create or start",
            self.start_failures.clone(),
        );
        reg.register(
            "agent_task_restarts",
            "Task containers started in place of an earlier task of the same slot",
            self.restarts.clone(),
        );
        reg.register(
            "agent_container_exits",
            "Task containers that ended on their own, by reason (oom, killed, nonzero, completed, unknown)",
            self.exits.clone(),
        );
        reg.register(
            "agent_healthchecks",
            "Healthcheck runs",
            self.healthchecks.clone(),
        );
        reg.register(
            "agent_healthcheck_failures",
            "Healthcheck runs that failed",
            self.healthcheck_failures.clone(),
        );
        reg.register(
            "agent_unhealthy_stops",
            "Task containers stopped because they turned unhealthy",
            self.unhealthy_stops.clone(),
        );
        reg.register(
            "agent_image_pulls",
            "Image pulls by result (ok, failed)",
            self.pulls.clone(),
        );
        reg.register(
            "agent_image_pull_bytes",
            "Bytes transferred by image pulls (layers already present not counted)",
            self.pull_bytes.clone(),
        );
        reg.register(
            "agent_image_pull_duration_seconds",
            "Time of an image pull",
            self.pull_seconds.clone(),
        );
        reg.register(
            "agent_container_create_start_duration_seconds",
            "Time to create and start a task container",
            self.create_start_seconds.clone(),
        );
    }

    pub(crate) fn pulled(&self, ok: bool, bytes: u64, took: std::time::Duration) {
        self.pulls
            .get_or_create(&[("result", if ok { "ok" } else { "failed" })])
            .inc();
        self.pull_bytes.inc_by(bytes);
        self.pull_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn exited(&self, reason: ExitReason) {
        self.exits
            .get_or_create(&[("reason", reason.label())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_follow_the_code_and_the_oom_flag() {
        assert_eq!(ExitReason::of(Some(137), true), ExitReason::Oom);
        assert_eq!(ExitReason::of(Some(137), false), ExitReason::Killed);
        assert_eq!(ExitReason::of(Some(143), false), ExitReason::Killed);
        assert_eq!(ExitReason::of(Some(1), false), ExitReason::Nonzero);
        assert_eq!(ExitReason::of(Some(0), false), ExitReason::Completed);
        assert_eq!(ExitReason::of(None, false), ExitReason::Unknown);
    }
}
