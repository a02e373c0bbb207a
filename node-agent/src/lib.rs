//! The per-node loop that turns assigned tasks into local containers and reports their state.
