//! The agent's per-task decision, without I/O: given one task record, what was observed of its
//! container and image, it names the one next step. [`crate::agent`] observes, asks, and
//! executes; keeping the rule here lets the tests assert the exact step for every case.

use std::time::{Duration, Instant};

use dcpp_reconciler::{DesiredState, Health, Task, TaskReport, TaskState};

/// What the agent saw of a task's container this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerView {
    Created,
    Running,
    /// Exited or dead: its process is gone.
    Stopped,
}

impl ContainerView {
    /// Whether the container's process may still run (so stopping it does something).
    pub fn is_up(self) -> bool {
        matches!(self, ContainerView::Created | ContainerView::Running)
    }
}

/// Where the task's image stands, looked up only when [`wants_image`] says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageView {
    /// In the local store.
    Present,
    /// Being pulled.
    Pulling,
    /// Not obtainable: `rejected` when the image itself is missing or its pull failed (the task
    /// never could run here), otherwise a local failure.
    Failed { rejected: bool, error: String },
}

/// The one thing to do next for a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing to do this round.
    Nothing,
    /// Write this report; no container work.
    Report(TaskReport),
    /// Show the task as preparing while its image is pulled.
    Pull,
    /// Create the container and start it; report it running (or failed).
    CreateAndStart,
    /// Start the created container.
    Start,
    /// The container runs: healthcheck when due, serve, report running.
    Monitor,
    /// The container's process ended: leave the networks and report how it ended.
    ReportExit,
    /// A live task is to end: withdraw and stop its container when `stop`, leave its networks,
    /// delete it when `remove`, and report it shut down.
    Shutdown { stop: bool, remove: bool },
    /// A finished task's container is to go (its record is kept without it); or a container
    /// of a live task that no agent reported, to be made again.
    Remove,
    /// A finished task's container still runs: withdraw and stop it, without a report.
    Halt,
}

/// Whether [`next_step`] needs the image looked up (which may start a pull).
pub fn wants_image(t: &Task, c: Option<ContainerView>) -> bool {
    t.desired == DesiredState::Running
        && t.is_live()
        && t.state >= TaskState::Assigned
        && t.state < TaskState::Running
        && c.is_none()
}

/// The next step for task `t`. `service` says whether its service document exists; `image`
/// is the image lookup when [`wants_image`] asked for one.
pub fn next_step(
    t: &Task,
    c: Option<ContainerView>,
    service: bool,
    image: Option<&ImageView>,
    adopted: bool,
) -> Step {
    let live = t.is_live();
    match t.desired {
        DesiredState::Running if live => {
            if t.state < TaskState::Assigned {
                return Step::Nothing;
            }
            match c {
                None if t.state >= TaskState::Running => Step::Report(TaskReport {
                    state: Some(TaskState::Failed),
                    error: Some("container disappeared".into()),
                    ..Default::default()
                }),
                None => match (service, image) {
                    (false, _) => failed(format!("service {} is gone", t.service), false),
                    (true, Some(ImageView::Present)) => Step::CreateAndStart,
                    (true, Some(ImageView::Pulling)) if t.state >= TaskState::Preparing => {
                        Step::Nothing
                    }
                    (true, Some(ImageView::Pulling)) => Step::Pull,
                    (true, Some(ImageView::Failed { rejected, error })) => {
                        failed(error.clone(), *rejected)
                    }
                    // The caller skipped the lookup `wants_image` asked for: try next round.
                    (true, None) => Step::Nothing,
                },
                // Found, not made, by this agent process, and never reported: it was being made
                // when the previous agent process died (a kill -9 mid-apply), so whether its
                // networks and published ports were set up is unknown. It is made again. (A
                // container this process made may look unreported for a round: the store is
                // read locally, and a follower applies the report a little later.)
                Some(ContainerView::Running | ContainerView::Created)
                    if adopted && t.container_id.is_none() =>
                {
                    Step::Remove
                }
                Some(ContainerView::Running) => Step::Monitor,
                Some(ContainerView::Created) => Step::Start,
                Some(ContainerView::Stopped) => Step::ReportExit,
            }
        }
        _ if live => match c {
            Some(c) => Step::Shutdown {
                stop: c.is_up(),
                remove: t.desired == DesiredState::Remove,
            },
            None => Step::Report(shutdown_report()),
        },
        _ => match c {
            Some(_) if t.desired == DesiredState::Remove => Step::Remove,
            Some(c) if c.is_up() => Step::Halt,
            _ => Step::Nothing,
        },
    }
}

/// The report of a task that could not be started.
fn failed(error: String, rejected: bool) -> Step {
    Step::Report(TaskReport {
        state: Some(if rejected {
            TaskState::Rejected
        } else {
            TaskState::Failed
        }),
        error: Some(error),
        ..Default::default()
    })
}

/// The report of a live task that was asked to end.
pub fn shutdown_report() -> TaskReport {
    TaskReport {
        state: Some(TaskState::Shutdown),
        ..Default::default()
    }
}

/// Timing of a service's healthcheck (compose defaults filled in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthTiming {
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u64,
    pub start_period: Duration,
}

impl HealthTiming {
    pub fn of(hc: &dcpp_spec::Healthcheck) -> Self {
        let ms = |d: Option<dcpp_spec::Duration>, def: u64| {
            Duration::from_nanos(d.map(|d| d.0).unwrap_or(def * 1_000_000))
        };
        HealthTiming {
            interval: ms(hc.interval, 30_000),
            timeout: ms(hc.timeout, 30_000),
            retries: hc.retries.unwrap_or(3),
            start_period: ms(hc.start_period, 0),
        }
    }
}

/// Healthcheck bookkeeping of one running task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub next: Instant,
    pub failures: u64,
    pub reported: Health,
    /// Output of the last check (stdout and stderr, trimmed), for the task's error.
    pub output: String,
}

impl HealthState {
    /// A task seen for the first time: its first check is due now.
    pub fn new(now: Instant, reported: Health) -> Self {
        HealthState {
            next: now,
            failures: 0,
            reported,
            output: String::new(),
        }
    }

    /// Whether a check is due at `now`; if so the next one is booked an interval later.
    pub fn take_due(&mut self, now: Instant, interval: Duration) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + interval;
        true
    }

    /// Records one check's outcome; returns the health to report when it changed. A failure
    /// counts toward unhealthy only after `start_period` since the task started (`now_ms`
    /// and `started_at` are wall-clock milliseconds).
    pub fn record(
        &mut self,
        ok: bool,
        output: String,
        timing: &HealthTiming,
        started_at: Option<u64>,
        now_ms: u64,
    ) -> Option<Health> {
        self.output = output;
        let in_grace = started_at
            .is_some_and(|s| now_ms.saturating_sub(s) < timing.start_period.as_millis() as u64);
        let health = if ok {
            self.failures = 0;
            Health::Healthy
        } else {
            self.failures += 1;
            if self.failures >= timing.retries && !in_grace {
                Health::Unhealthy
            } else if self.reported == Health::Unknown {
                Health::Starting
            } else {
                self.reported
            }
        };
        (health != self.reported).then(|| {
            self.reported = health;
            health
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcpp_reconciler::{NodeId, Resources, ServiceId, Slot, TaskId};

    fn task(desired: DesiredState, state: TaskState) -> Task {
        Task {
            node: Some(NodeId("n1".into())),
            desired,
            state,
            ..Task::new(
                TaskId(7),
                ServiceId::new("s", "web"),
                Slot::Replica(1),
                1,
                "alpine:3".into(),
                Resources::default(),
                0,
            )
        }
    }

    const RUN: DesiredState = DesiredState::Running;

    #[test]
    fn not_yet_assigned_waits() {
        for s in [TaskState::New, TaskState::Pending] {
            let t = task(RUN, s);
            assert!(!wants_image(&t, None));
            assert_eq!(next_step(&t, None, true, None, false), Step::Nothing);
        }
    }

    #[test]
    fn new_task_without_image_pulls_once() {
        let t = task(RUN, TaskState::Assigned);
        assert!(wants_image(&t, None));
        assert_eq!(
            next_step(&t, None, true, Some(&ImageView::Pulling), false),
            Step::Pull
        );
        // Already shown as preparing: the pull writes its own progress.
        let t = task(RUN, TaskState::Preparing);
        assert_eq!(
            next_step(&t, None, true, Some(&ImageView::Pulling), false),
            Step::Nothing
        );
    }

    #[test]
    fn image_present_no_container_creates_and_starts() {
        for s in [
            TaskState::Assigned,
            TaskState::Preparing,
            TaskState::Starting,
        ] {
            let t = task(RUN, s);
            assert_eq!(
                next_step(&t, None, true, Some(&ImageView::Present), false),
                Step::CreateAndStart
            );
        }
    }

    #[test]
    fn unobtainable_image_rejects_or_fails() {
        let t = task(RUN, TaskState::Assigned);
        let img = ImageView::Failed {
            rejected: true,
            error: "image pull failed: x".into(),
        };
        assert_eq!(
            next_step(&t, None, true, Some(&img), false),
            Step::Report(TaskReport {
                state: Some(TaskState::Rejected),
                error: Some("image pull failed: x".into()),
                ..Default::default()
            })
        );
        let img = ImageView::Failed {
            rejected: false,
            error: "runtime: disk".into(),
        };
        assert_eq!(
            next_step(&t, None, true, Some(&img), false),
            Step::Report(TaskReport {
                state: Some(TaskState::Failed),
                error: Some("runtime: disk".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn missing_service_fails_the_task() {
        let t = task(RUN, TaskState::Assigned);
        assert_eq!(
            next_step(&t, None, false, Some(&ImageView::Present), false),
            Step::Report(TaskReport {
                state: Some(TaskState::Failed),
                error: Some("service s_web is gone".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn running_task_whose_container_vanished_fails() {
        let t = task(RUN, TaskState::Running);
        assert!(!wants_image(&t, None));
        assert_eq!(
            next_step(&t, None, true, None, false),
            Step::Report(TaskReport {
                state: Some(TaskState::Failed),
                error: Some("container disappeared".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn container_states_map_to_start_monitor_and_exit_report() {
        let mut t = task(RUN, TaskState::Starting);
        t.container_id = Some("c1".into());
        assert!(!wants_image(&t, Some(ContainerView::Created)));
        assert_eq!(
            next_step(&t, Some(ContainerView::Created), true, None, false),
            Step::Start
        );
        let mut t = task(RUN, TaskState::Running);
        t.container_id = Some("c1".into());
        assert_eq!(
            next_step(&t, Some(ContainerView::Running), true, None, false),
            Step::Monitor
        );
        // An exited container is reported (complete or failed); the leader's restart policy
        // makes the replacement task, the agent never restarts a container in place.
        assert_eq!(
            next_step(&t, Some(ContainerView::Stopped), true, None, false),
            Step::ReportExit
        );
    }

    #[test]
    fn a_container_no_agent_reported_is_made_again() {
        // The previous agent process died between creating the container and reporting it.
        for (state, c) in [
            (TaskState::Assigned, ContainerView::Running),
            (TaskState::Preparing, ContainerView::Created),
        ] {
            let t = task(RUN, state);
            assert_eq!(next_step(&t, Some(c), true, None, true), Step::Remove);
            // The same container made by this agent process, its report not yet read back
            // (a follower's local read lags the commit): kept.
            let want = if c == ContainerView::Running {
                Step::Monitor
            } else {
                Step::Start
            };
            assert_eq!(next_step(&t, Some(c), true, None, false), want);
        }
        // Once reported, a container found again is the task's own (a daemon restart).
        let mut t = task(RUN, TaskState::Running);
        t.container_id = Some("c1".into());
        assert_eq!(
            next_step(&t, Some(ContainerView::Running), true, None, true),
            Step::Monitor
        );
    }

    #[test]
    fn shutdown_stops_then_remove_deletes() {
        let t = task(DesiredState::Shutdown, TaskState::Running);
        assert_eq!(
            next_step(&t, Some(ContainerView::Running), true, None, false),
            Step::Shutdown {
                stop: true,
                remove: false
            }
        );
        assert_eq!(
            next_step(&t, Some(ContainerView::Stopped), true, None, false),
            Step::Shutdown {
                stop: false,
                remove: false
            }
        );
        let t = task(DesiredState::Remove, TaskState::Running);
        assert_eq!(
            next_step(&t, Some(ContainerView::Created), true, None, false),
            Step::Shutdown {
                stop: true,
                remove: true
            }
        );
        assert_eq!(
            next_step(&t, None, true, None, false),
            Step::Report(shutdown_report())
        );
        // Once shut down, a later round deletes what is left.
        let t = task(DesiredState::Remove, TaskState::Shutdown);
        assert_eq!(
            next_step(&t, Some(ContainerView::Stopped), true, None, false),
            Step::Remove
        );
    }

    #[test]
    fn finished_tasks_keep_history_but_never_run() {
        let t = task(DesiredState::Shutdown, TaskState::Failed);
        assert_eq!(
            next_step(&t, Some(ContainerView::Running), true, None, false),
            Step::Halt
        );
        assert_eq!(
            next_step(&t, Some(ContainerView::Stopped), true, None, false),
            Step::Nothing
        );
        assert_eq!(next_step(&t, None, true, None, false), Step::Nothing);
        // Desired running but already terminal: the leader replaces it, nothing to do here.
        let t = task(RUN, TaskState::Complete);
        assert_eq!(
            next_step(&t, Some(ContainerView::Stopped), true, None, false),
            Step::Nothing
        );
    }

    fn timing(retries: u64, start_period_ms: u64) -> HealthTiming {
        HealthTiming {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_millis(start_period_ms),
        }
    }

    #[test]
    fn health_check_is_due_once_per_interval() {
        let t0 = Instant::now();
        let mut h = HealthState::new(t0, Health::Unknown);
        let iv = Duration::from_secs(10);
        assert!(h.take_due(t0, iv));
        assert!(!h.take_due(t0 + Duration::from_secs(9), iv));
        assert!(h.take_due(t0 + iv, iv));
        assert_eq!(h.next, t0 + iv + iv);
    }

    #[test]
    fn consecutive_failures_reach_unhealthy_at_retries() {
        let mut h = HealthState::new(Instant::now(), Health::Unknown);
        let tm = timing(3, 0);
        assert_eq!(
            h.record(false, "a".into(), &tm, Some(0), 100),
            Some(Health::Starting)
        );
        assert_eq!(h.record(false, "b".into(), &tm, Some(0), 200), None);
        assert_eq!(
            h.record(false, "c".into(), &tm, Some(0), 300),
            Some(Health::Unhealthy)
        );
        assert_eq!(h.output, "c");
        assert_eq!(h.failures, 3);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut h = HealthState::new(Instant::now(), Health::Unknown);
        let tm = timing(2, 0);
        assert_eq!(
            h.record(false, String::new(), &tm, Some(0), 1),
            Some(Health::Starting)
        );
        assert_eq!(
            h.record(true, String::new(), &tm, Some(0), 2),
            Some(Health::Healthy)
        );
        assert_eq!(h.failures, 0);
        // Healthy, then one failure below the threshold: still healthy, nothing to report.
        assert_eq!(h.record(false, String::new(), &tm, Some(0), 3), None);
        assert_eq!(
            h.record(false, String::new(), &tm, Some(0), 4),
            Some(Health::Unhealthy)
        );
    }

    #[test]
    fn start_period_holds_off_unhealthy() {
        let mut h = HealthState::new(Instant::now(), Health::Unknown);
        let tm = timing(1, 5_000);
        assert_eq!(
            h.record(false, String::new(), &tm, Some(1_000), 2_000),
            Some(Health::Starting)
        );
        assert_eq!(
            h.record(false, String::new(), &tm, Some(1_000), 5_999),
            None
        );
        assert_eq!(
            h.record(false, String::new(), &tm, Some(1_000), 6_000),
            Some(Health::Unhealthy)
        );
    }
}
