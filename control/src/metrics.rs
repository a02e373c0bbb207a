//! The leader loop's instrumentation. One struct, handed to [`crate::leader::run`], registered
//! by the embedder on its own registry: the crate keeps no global state.

use std::time::Duration;

use dcpp_reconciler::Action;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of one action kind.
pub type KindLabel = [(&'static str, &'static str); 1];

/// Counters and histograms of the reconcile loop.
#[derive(Debug, Clone)]
pub struct LeaderMetrics {
    /// Rounds run as leader (planned, whether or not anything was written).
    pub rounds: Counter,
    /// Rounds that failed (store read or write errors).
    pub round_errors: Counter,
    /// Time spent in the pure planner per round.
    pub plan_seconds: Histogram,
    /// Time of a whole round: read, plan, write.
    pub round_seconds: Histogram,
    /// Actions of plans that were written to the store, by kind.
    pub actions: Family<KindLabel, Counter>,
}

impl Default for LeaderMetrics {
    fn default() -> Self {
        LeaderMetrics {
            rounds: Counter::default(),
            round_errors: Counter::default(),
            // 50 µs to about 1.6 s: a plan over a few services takes well under a millisecond.
            plan_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            round_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            actions: Family::default(),
        }
    }
}

impl LeaderMetrics {
    /// Registers the metrics (names get the registry's prefix, e.g. `dcpp_`).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "reconcile_rounds",
            "Reconcile rounds run by the leader",
            self.rounds.clone(),
        );
        reg.register(
            "reconcile_errors",
            "Reconcile rounds that failed on a store read or write",
            self.round_errors.clone(),
        );
        reg.register(
            "reconcile_plan_duration_seconds",
            "Time the planner took per round",
            self.plan_seconds.clone(),
        );
        reg.register(
            "reconcile_round_duration_seconds",
            "Time of a whole reconcile round (read, plan, write)",
            self.round_seconds.clone(),
        );
        reg.register(
            "reconcile_actions",
            "Planned actions written to the store, by kind",
            self.actions.clone(),
        );
    }

    pub(crate) fn observe_plan(&self, took: Duration) {
        self.plan_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn written(&self, actions: &[Action]) {
        for a in actions {
            self.actions.get_or_create(&[("kind", kind(a))]).inc();
        }
    }
}

/// The metric label of an action (snake case of its variant).
pub fn kind(a: &Action) -> &'static str {
    match a {
        Action::SetServiceStatus { .. } => "set_service_status",
        Action::DeleteServiceStatus { .. } => "delete_service_status",
        Action::Rollback { .. } => "rollback",
        Action::CreateTask { .. } => "create_task",
        Action::RestartTask { .. } => "restart_task",
        Action::PinVolume { .. } => "pin_volume",
        Action::AssignTask { .. } => "assign_task",
        Action::SetPendingReason { .. } => "set_pending_reason",
        Action::ShutdownTask { .. } => "shutdown_task",
        Action::RemoveTask { .. } => "remove_task",
        Action::OrphanTask { .. } => "orphan_task",
        Action::DeleteTask { .. } => "delete_task",
    }
}
