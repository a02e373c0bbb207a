//! Pure decisions: (desired, observed, now) → [`Plan`]. No I/O, no clock reads, no randomness.
//!
//! The leader runs [`plan`] on every relevant store change and on a periodic resync, then
//! executes the plan's [`Action`]s (for tests and the simulator, [`apply`] executes them on an
//! in-memory [`Observed`]). Running [`plan`] again after applying its result, with no new events,
//! yields an empty plan.

pub mod apply;
pub mod error;
mod from_spec;
pub mod model;
pub mod plan;
pub mod scheduler;

pub use apply::{TaskReport, apply, report};
pub use error::Error;
pub use model::*;
pub use plan::{Action, Pending, PendingReason, Plan, plan};
pub use scheduler::Rejection;
