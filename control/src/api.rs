//! The control plane's own API routes, served by the daemon beside the document store's (on
//! the unix socket, and behind the same authentication on TCP), so that a client other than
//! the CLI — a CI job with `curl`, a dashboard — gets the same answers.
//!
//! - `GET /v1/stacks/{name}/convergence`: the [`converge`](crate::converge) rule's verdict on
//!   every service of the stack as the store is now (one read; the CLI's `apply` repeats it).
//!   Answers `{"stack", "state": "converged"|"pending"|"failed", "reason"?, "services": [..],
//!   "pulls": [..]}`; an unknown stack is `404 not_found`.

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use dcpp_raft::api::HttpError;
use dcpp_raft::{Kind, Node, Store};
use dcpp_reconciler::{Convergence, PullProgress};
use serde::Serialize;

use crate::converge::{ServiceProgress, assess};
use crate::schema::stack_services;

/// The routes to hand to `dcpp_raft::api::serve_unix_with` / `serve_tcp_with`.
pub fn routes() -> axum::Router<Node> {
    axum::Router::new().route("/v1/stacks/{name}/convergence", get(stack_convergence))
}

/// Body of `GET /v1/stacks/{name}/convergence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackConvergence {
    pub stack: String,
    #[serde(flatten)]
    pub verdict: Convergence,
    pub services: Vec<ServiceProgress>,
    pub pulls: Vec<PullProgress>,
}

/// The verdict on one stack; `None` if there is no such stack.
pub async fn stack_verdict<S: Store>(
    s: &S,
    name: &str,
) -> Result<Option<StackConvergence>, crate::Error> {
    match s.get(Kind::Stack, name).await {
        Ok(_) => {}
        Err(dcpp_raft::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let docs: Vec<_> = stack_services(s, name).await?.into_values().collect();
    let round = assess(s, &docs).await?;
    Ok(Some(StackConvergence {
        stack: name.to_string(),
        verdict: round.verdict(),
        services: round.services,
        pulls: round.pulls,
    }))
}

async fn stack_convergence(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> Result<Json<StackConvergence>, HttpError> {
    match stack_verdict(&node, &name).await {
        Ok(Some(v)) => Ok(Json(v)),
        Ok(None) => Err(HttpError(dcpp_raft::Error::NotFound {
            kind: Kind::Stack,
            id: name,
        })),
        Err(crate::Error::Store(e)) => Err(HttpError(e)),
        Err(e) => Err(HttpError(dcpp_raft::Error::Storage(e.to_string()))),
    }
}
