//! Compose files → the canonical desired-state model.
//!
//! No I/O beyond reading the compose files (and the `.env`/`env_file`s they name).

pub mod model;
mod units;

pub use model::*;
