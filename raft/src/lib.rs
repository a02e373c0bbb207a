//! The replicated, durable, authenticated cluster store (openraft + redb + axum).
