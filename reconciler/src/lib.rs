//! Pure decisions: (desired, observed, now) → [`Plan`]. No I/O, no clock reads, no randomness,
//! no async runtime.
//!
//! # How the leader uses it
//!
//! 1. Read [`Desired`] (services from the applied stacks, e.g. built with
//!    [`ServiceSpec::from_compose`]) and [`Observed`] (nodes, tasks, per-service rollout status,
//!    the task id counter) from the store; take `now` from the clock.
//! 2. `let p = plan(&desired, &observed, now)`. `p.actions` are store writes; their exact
//!    semantics are those of [`apply`] (which tests and the simulator use on an in-memory
//!    [`Observed`]). A [`Error::Stale`] from applying means the state moved: plan again.
//! 3. Agents report task progress with [`report`], which refuses backward state transitions.
//! 4. Plan again on every relevant change (level-triggered), after `p.requeue_after` if set
//!    (restart delays, update delays, monitor windows), and on a periodic resync.
//!
//! Planning again after applying a plan, with no new events, yields an empty plan; `--dry-run`
//! and `diff` call the same function, so they cannot take a different path.
//!
//! # Model in brief
//!
//! Tasks have stable slots (`web.3`, or the node for global services) and a forward-only
//! [`TaskState`]. The orchestrator keeps one task per slot (two during a start-first update),
//! replaces dead tasks per [`RestartPolicy`] (delay + crash-loop backoff, `max_attempts` within
//! `window`), moves tasks off drained nodes, replaces tasks of lost nodes at once, and rolls
//! out a new [`ServiceSpec::version`] per [`UpdateConfig`] (parallelism, delay, order, monitor,
//! failure ratio → pause / rollback / continue). The scheduler is a filter pipeline whose
//! per-node [`Rejection`]s explain every pending task ([`Plan::pending`]).

pub mod apply;
pub mod converge;
pub mod error;
mod from_spec;
pub mod model;
pub mod plan;
pub mod scheduler;

pub use apply::{TaskReport, apply, report};
pub use converge::{Convergence, ServiceView, verdict};
pub use error::Error;
pub use model::*;
pub use plan::{Action, Pending, PendingReason, Plan, desired_slots, plan};
pub use scheduler::Rejection;
