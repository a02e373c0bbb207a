//! The control plane's own API routes, served by the daemon beside the document store's (on
//! the unix socket, and behind the same authentication on TCP), so that a client other than
//! the CLI — a CI job with `curl`, a dashboard — gets the same answers.
//!
//! - `GET /v1/stacks/{name}/convergence`: the [`converge`](crate::converge) rule's verdict on
//!   every service of the stack as the store is now (one read; the CLI's `apply` repeats it).
//!   Answers `{"stack", "state": "converged"|"pending"|"failed", "reason"?, "services": [..],
//!   "pulls": [..]}`; an unknown stack is `404 not_found`.
//! - `POST /v1/files/{secret|config}/{name}` ([`crate::files::PutFile`]): stores a new version
//!   when the data differs (sealed on the manager that answers); `DELETE` of the same path
//!   removes it unless a service mounts it. Not open to worker certificates.
//! - `POST /v1/worker/task-files` ([`crate::files::TaskFiles`]): the data of the secrets and
//!   configs of one task, for the node it is placed on only.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json};
use dcpp_raft::api::{Access, HttpError};
use dcpp_raft::{Kind, Node, Store};
use dcpp_reconciler::FileKind;
use dcpp_reconciler::{Convergence, PullProgress};
use serde::Serialize;

use crate::converge::{ServiceProgress, assess};
use crate::schema::stack_services;

/// The routes to hand to `dcpp_raft::api::serve_unix_with` / `serve_tcp_with`.
pub fn routes() -> axum::Router<Node> {
    axum::Router::new()
        .route("/v1/stacks/{name}/convergence", get(stack_convergence))
        .route(
            "/v1/files/{kind}/{name}",
            post(put_file).delete(delete_file),
        )
        .route(crate::files::TASK_FILES_PATH, post(task_files))
}

fn http(e: crate::Error) -> HttpError {
    match e {
        crate::Error::Store(e) => HttpError(e),
        e => HttpError(dcpp_raft::Error::Storage(e.to_string())),
    }
}

fn file_kind(k: &str) -> Result<FileKind, HttpError> {
    match k {
        "secret" => Ok(FileKind::Secret),
        "config" => Ok(FileKind::Config),
        _ => Err(HttpError(dcpp_raft::Error::InvalidArgument(format!(
            "unknown kind {k:?} (secret or config)"
        )))),
    }
}

/// Requests on the unix socket carry no [`Access`]: they may do everything.
fn access(a: Option<Extension<Access>>) -> Access {
    a.map_or(Access::Full, |Extension(a)| a)
}

fn full_only(a: Access) -> Result<(), HttpError> {
    match a {
        Access::Full => Ok(()),
        _ => Err(HttpError(dcpp_raft::Error::Forbidden(
            "only managers and admins may write secrets and configs".into(),
        ))),
    }
}

async fn put_file(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    Path((kind, name)): Path<(String, String)>,
    Json(body): Json<crate::files::PutFile>,
) -> Result<Json<crate::files::PutOutcome>, HttpError> {
    full_only(access(a))?;
    let kind = file_kind(&kind)?;
    Ok(Json(
        crate::files::put(&node, kind, &name, body)
            .await
            .map_err(http)?,
    ))
}

async fn delete_file(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, HttpError> {
    full_only(access(a))?;
    let kind = file_kind(&kind)?;
    crate::files::remove(&node, kind, &name)
        .await
        .map_err(http)?;
    Ok(Json(serde_json::Value::Null))
}

async fn task_files(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    Json(body): Json<crate::files::TaskFiles>,
) -> Result<Json<Vec<crate::files::FileData>>, HttpError> {
    Ok(Json(
        crate::files::task_files(&node, access(a), &body)
            .await
            .map_err(http)?,
    ))
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
