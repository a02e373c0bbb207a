//! HTTP surface of a node: Raft peer RPCs and the store API, as axum routers, plus the error
//! envelope shared with the client.
//!
//! Two routers: [`peer_router`] is served on TCP over mutual TLS, and every route but
//! `POST /v1/cluster/join` (whose credential is the join token in the body) needs a client
//! certificate of the cluster; what it may do follows from its role (see [`authorize`]).
//! [`local_router`] is served on the daemon's unix socket (mode 0600, so only root reaches it)
//! and adds the local administration routes (join, leave, admin certificates).
//!
//! The TCP listener is reachable by anyone who reaches the port, so it is served by its own
//! accept loop with the limits of [`ListenerLimits`]: a deadline for the TLS handshake and the
//! request head, a deadline for connections that never present a certificate, caps on open
//! connections, a rate limit on failed authentications per source and request body limits on
//! every route.

mod guard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use self::guard::ListenerLimits;
use self::guard::{Admission, Gate, Refusal};
use crate::node::{AddMember, JoinRequest, Node, RemoveMember, RenewRequest, RotateToken};
use crate::pki::{CertRole, Identity};
use crate::types::{Kind, Op, Precondition, PreconditionFailed, Role, Txn};
use crate::{Error, NodeId, TypeConfig};

/// Who is on the other end of a TCP connection, from its TLS client certificate.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No certificate (a node that is joining).
    Anonymous,
    Cert(Identity),
}

/// What a request may do, decided by [`authorize`] and read by the handlers. Requests on the
/// unix socket carry none: they may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A manager or an admin.
    Full,
    /// A worker: only its own objects, as the node's [`crate::scope::WorkerScope`] says.
    Worker(NodeId),
    /// A node with a certificate that is not (yet) a member: it may only add itself, as a
    /// voter only with a manager certificate (the `bool`).
    Joining(NodeId, bool),
}

/// Marks a request one node forwarded to the leader, so it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-dcpp-forwarded";

/// JSON error body of every failed API call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<PreconditionFailed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<u64>,
}

impl From<&Error> for ApiError {
    fn from(e: &Error) -> ApiError {
        let code = match e {
            Error::PreconditionFailed(_) => "precondition_failed",
            Error::Compacted { .. } => "compacted",
            Error::NotFound { .. } => "not_found",
            Error::Decode { .. } => "decode",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NoLeader(_) => "no_leader",
            Error::Raft(_) => "raft",
            Error::Storage(_) => "storage",
            Error::Transport(_) => "transport",
            Error::Conflict(_) => "conflict",
            Error::Io(_) => "io",
        };
        let (failed, compacted, requested) = match e {
            Error::PreconditionFailed(f) => (Some(f.clone()), None, None),
            Error::Compacted {
                requested,
                compacted,
            } => (None, Some(*compacted), Some(*requested)),
            _ => (None, None, None),
        };
        ApiError {
            code: code.into(),
            message: e.to_string(),
            failed,
            compacted,
            requested,
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self.code.as_str() {
            "precondition_failed" | "conflict" => StatusCode::CONFLICT,
            "compacted" => StatusCode::GONE,
            "not_found" => StatusCode::NOT_FOUND,
            "invalid_argument" => StatusCode::BAD_REQUEST,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "no_leader" => StatusCode::SERVICE_UNAVAILABLE,
            "transport" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Rebuilds the library error on the client side.
    pub fn into_error(self) -> Error {
        match self.code.as_str() {
            "precondition_failed" => match self.failed {
                Some(f) => Error::PreconditionFailed(f),
                None => Error::Conflict(self.message),
            },
            "compacted" => Error::Compacted {
                requested: self.requested.unwrap_or(0),
                compacted: self.compacted.unwrap_or(0),
            },
            "not_found" => {
                // "kind/id not found"
                let what = self.message.trim_end_matches(" not found");
                match what.split_once('/') {
                    Some((k, id)) if k.parse::<Kind>().is_ok() => Error::NotFound {
                        kind: k.parse().unwrap_or(Kind::Stack),
                        id: id.to_string(),
                    },
                    _ => Error::InvalidArgument(self.message),
                }
            }
            "invalid_argument" => Error::InvalidArgument(strip(self.message, "invalid argument: ")),
            "unauthorized" => Error::Unauthorized(strip(self.message, "unauthorized: ")),
            "forbidden" => Error::Forbidden(strip(self.message, "forbidden: ")),
            "no_leader" => Error::NoLeader(strip(self.message, "no leader available: ")),
            "raft" => Error::Raft(strip(self.message, "raft: ")),
            "transport" => Error::Transport(strip(self.message, "transport: ")),
            "conflict" => Error::Conflict(self.message),
            _ => Error::Storage(strip(self.message, "storage: ")),
        }
    }
}

/// Drops the Display prefix the error variant adds again when rebuilt.
fn strip(msg: String, prefix: &str) -> String {
    match msg.strip_prefix(prefix) {
        Some(rest) => rest.to_string(),
        None => msg,
    }
}

/// A failed request as the API answers it: the [`ApiError`] body with its status. Public so
/// that routes an embedder adds ([`serve_unix_with`], [`serve_tcp_with`]) answer alike.
pub struct HttpError(pub Error);

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = ApiError::from(&self.0);
        (body.status(), Json(body)).into_response()
    }
}

/// Turns an API response into the value or the library error.
pub async fn decode_response<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, Error> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| Error::Transport(format!("bad response: {e}")));
    }
    match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(e) => Err(e.into_error()),
        Err(_) if status == StatusCode::UNAUTHORIZED => {
            Err(Error::Unauthorized(format!("HTTP {status}")))
        }
        Err(_) => Err(Error::Transport(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ))),
    }
}

/// Percent-encodes an object id for use as one path segment.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type ApiResult<T> = Result<Json<T>, HttpError>;

fn forwarded(h: &HeaderMap) -> bool {
    h.contains_key(FORWARDED_HEADER)
}

fn parse_kind(s: &str) -> Result<Kind, HttpError> {
    s.parse::<Kind>().map_err(HttpError)
}

#[derive(Deserialize)]
struct ReadQuery {
    /// `stale=true` serves from the local copy without the leader round trip.
    #[serde(default)]
    stale: bool,
}

#[derive(Deserialize)]
struct WatchQuery {
    since: Option<u64>,
    kind: Option<String>,
}

fn access(a: Option<Extension<Access>>) -> Access {
    a.map_or(Access::Full, |Extension(a)| a)
}

/// A request on the unix socket of a worker. Its certificate could not forward much of what a
/// local admin asks, and the node holds no copy of the cluster's state: the request is refused
/// with a pointer to a manager.
fn local_on_worker(node: &Node, a: &Option<Extension<Access>>) -> bool {
    a.is_none() && node.member_role(node.id()) == Some(Role::Worker)
}

fn worker_node_refusal(node: &Node) -> Error {
    let managers = node
        .status()
        .map(|s| s.managers.join(", "))
        .unwrap_or_default();
    let at = if managers.is_empty() {
        String::new()
    } else {
        format!(" ({managers})")
    };
    Error::Forbidden(format!(
        "this node is a worker: it holds only its own tasks, not the cluster's state; run the \
         command on a manager{at}, or here with -H tcp://MANAGER:PORT and DCPP_CERT_PATH from \
         `dcpp cluster admin-cert`"
    ))
}

/// Reads on a worker's own socket: there is nothing here to read them from.
fn refuse_local_read(node: &Node, a: &Option<Extension<Access>>) -> Result<(), HttpError> {
    if a.is_none() && node.is_remote_worker() {
        return Err(HttpError(worker_node_refusal(node)));
    }
    Ok(())
}

/// Whether a worker may write every object `t` touches (its preconditions included: they
/// would tell it about objects it may not read).
fn worker_may_write(node: &Node, w: NodeId, t: &Txn) -> bool {
    let Some(scope) = node.config().worker_scope.as_ref() else {
        return false;
    };
    let reader = node.reader();
    let ops = t.ops.iter().map(|o| match o {
        Op::Put { kind, id, .. } | Op::Delete { kind, id } => (*kind, id.as_str()),
    });
    let pre = t.preconditions.iter().map(|p| match p {
        Precondition::ModRevision { kind, id, .. } | Precondition::Absent { kind, id } => {
            (*kind, id.as_str())
        }
    });
    ops.chain(pre)
        .all(|(k, id)| scope.0.may_write(reader, w, k, id))
}

fn worker_may_read(node: &Node, w: NodeId, o: &crate::Object) -> bool {
    node.config()
        .worker_scope
        .as_ref()
        .is_some_and(|s| s.0.may_read(node.reader(), w, o))
}

async fn txn(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    h: HeaderMap,
    Json(t): Json<Txn>,
) -> Response {
    if local_on_worker(&node, &a) {
        return HttpError(worker_node_refusal(&node)).into_response();
    }
    if let Access::Worker(w) = access(a)
        && !worker_may_write(&node, w, &t)
    {
        return HttpError(Error::Forbidden(
            "a worker may only write its own node record and the status of its own tasks".into(),
        ))
        .into_response();
    }
    // A failed precondition is a 409 carrying the details.
    match node.txn_inner(t, forwarded(&h)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => HttpError(e).into_response(),
    }
}

async fn get_object(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    h: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<crate::Object> {
    refuse_local_read(&node, &a)?;
    let kind = parse_kind(&kind)?;
    let linearizable = !q.stale && !local_on_worker(&node, &a);
    let o = node
        .get_inner(kind, &id, linearizable, forwarded(&h))
        .await?;
    if let Access::Worker(w) = access(a)
        && !worker_may_read(&node, w, &o)
    {
        // As if absent: a worker learns nothing about objects that are not its own.
        return Err(HttpError(Error::NotFound { kind, id }));
    }
    Ok(Json(o))
}

async fn list_objects(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    h: HeaderMap,
    Path(kind): Path<String>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<crate::node::ObjectList> {
    refuse_local_read(&node, &a)?;
    let linearizable = !q.stale && !local_on_worker(&node, &a);
    let mut l = node
        .list_inner(parse_kind(&kind)?, linearizable, forwarded(&h))
        .await?;
    if let Access::Worker(w) = access(a) {
        l.objects.retain(|o| worker_may_read(&node, w, o));
    }
    Ok(Json(l))
}

async fn watch(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    Query(q): Query<WatchQuery>,
) -> Response {
    if let Err(e) = refuse_local_read(&node, &a) {
        return e.into_response();
    }
    let kind = match q.kind.as_deref().map(str::parse::<Kind>).transpose() {
        Ok(k) => k,
        Err(e) => return HttpError(e).into_response(),
    };
    let worker = match access(a) {
        Access::Worker(w) => Some(w),
        _ => None,
    };
    let filter_node = node.clone();
    let since = q.since.unwrap_or_else(|| node.reader().revision());
    // Refuse up front (410) so clients see the compaction as a status, not mid-stream.
    if let Err(e) = node.reader().changes_after(since, 0) {
        return HttpError(e).into_response();
    }
    let stream = node
        .watch(since, kind)
        .filter(move |r| {
            let keep = match (worker, r) {
                (Some(w), Ok(ev)) => worker_may_read(&filter_node, w, &ev.object),
                _ => true,
            };
            futures::future::ready(keep)
        })
        .map(|r| {
            let mut line = match r {
                Ok(ev) => serde_json::to_vec(&WatchLine::Event(ev)),
                Err(e) => serde_json::to_vec(&WatchLine::Error(ApiError::from(&e))),
            }
            .unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(axum::body::Bytes::from(line))
        });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Debug, Deserialize)]
struct RevisionQuery {
    /// RFC 3339.
    before: String,
}

/// What `GET /v1/revision` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct RevisionAt {
    pub revision: u64,
}

/// `GET /v1/revision?before=TIME`: the revision the store was at just before TIME.
async fn revision_before(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    Query(q): Query<RevisionQuery>,
) -> ApiResult<RevisionAt> {
    refuse_local_read(&node, &a)?;
    let t = time::OffsetDateTime::parse(&q.before, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Error::InvalidArgument(format!("before={:?}: not RFC 3339 ({e})", q.before))
        })?;
    Ok(Json(RevisionAt {
        revision: node.revision_before(t).await?,
    }))
}

/// One line of a watch stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchLine {
    Event(crate::Event),
    Error(ApiError),
}

async fn status(State(node): State<Node>) -> ApiResult<crate::ClusterStatus> {
    Ok(Json(node.status()?))
}

/// The leader says this node was demoted: it checks with the leader and, if so, becomes a
/// worker at once (managers only; the node trusts the answer of `whoami`, not this call).
async fn demoted(State(node): State<Node>) -> ApiResult<bool> {
    Ok(Json(node.demoted_hint().await?))
}

/// A member asks what the managers know about it (a worker: its roots and managers; a
/// manager that lost touch: whether it was demoted meanwhile).
async fn whoami(
    State(node): State<Node>,
    caller: Option<Extension<Caller>>,
) -> ApiResult<crate::WhoAmI> {
    if let Some(Extension(Caller::Cert(c))) = caller
        && let Some(id) = c.node_id()
    {
        return Ok(Json(node.whoami(id)?));
    }
    Err(HttpError(Error::Forbidden(
        "only a member asks who it is".into(),
    )))
}

/// What `GET /v1/version` answers: the daemon's build, for `dcpp version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// The daemon's release (the workspace crates share one version).
    pub version: String,
    /// API generation the routes belong to.
    pub api: String,
}

async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api: "v1".to_string(),
    })
}

async fn join(
    State(node): State<Node>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(gate): Extension<Arc<Gate>>,
    req: Request,
) -> Response {
    // Checked before the body is even read: a limited source costs next to nothing.
    if gate.rate_limited(peer.ip()) {
        return too_many();
    }
    let r: JoinRequest = match axum::body::to_bytes(req.into_body(), JOIN_BODY_LIMIT).await {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(r) => r,
            Err(e) => {
                return HttpError(Error::InvalidArgument(format!("join request: {e}")))
                    .into_response();
            }
        },
        Err(e) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, format!("join request: {e}")).into_response();
        }
    };
    match node.grant_join(&r) {
        Ok(g) => Json(g).into_response(),
        Err(e) => {
            if matches!(e, Error::Unauthorized(_)) {
                gate.refused(peer.ip(), Refusal::Join);
            } else {
                tracing::warn!(%peer, "refused join request: {e}");
            }
            HttpError(e).into_response()
        }
    }
}

fn too_many() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(axum::http::header::RETRY_AFTER, "1")],
        Json(ApiError::from(&Error::Unauthorized(
            "too many failed authentications from this address".into(),
        ))),
    )
        .into_response()
}

async fn add_member(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    h: HeaderMap,
    Json(r): Json<AddMember>,
) -> ApiResult<serde_json::Value> {
    // A node with a fresh certificate adds itself, with no more than the role it was given.
    match access(a) {
        Access::Full => {}
        Access::Joining(me, manager) if r.id == me && (manager || r.role == Role::Worker) => {}
        _ => {
            return Err(HttpError(Error::Forbidden(
                "a node may only add itself, with the role of its certificate".into(),
            )));
        }
    }
    node.add_member(r, forwarded(&h)).await?;
    Ok(Json(serde_json::Value::Null))
}

async fn renew(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    caller: Option<Extension<Caller>>,
    Json(r): Json<RenewRequest>,
) -> ApiResult<crate::node::RenewGrant> {
    let member = match (access(a), caller) {
        (Access::Worker(id), _) => Some(id),
        (Access::Full, Some(Extension(Caller::Cert(c)))) => c.node_id(),
        _ => None,
    };
    match member {
        Some(id) => Ok(Json(node.renew_for(id, &r)?)),
        None => Err(HttpError(Error::Forbidden(
            "only a member renews its certificate, and only its own".into(),
        ))),
    }
}

async fn set_role(
    State(node): State<Node>,
    h: HeaderMap,
    Json(r): Json<crate::node::SetRole>,
) -> ApiResult<serde_json::Value> {
    node.set_role(r, forwarded(&h)).await?;
    Ok(Json(serde_json::Value::Null))
}

async fn revoke_admin(
    State(node): State<Node>,
    h: HeaderMap,
    Json(r): Json<crate::RevokeAdmin>,
) -> ApiResult<serde_json::Value> {
    node.revoke_admin(r, forwarded(&h)).await?;
    Ok(Json(serde_json::Value::Null))
}

async fn rotate_ca(State(node): State<Node>, h: HeaderMap) -> ApiResult<crate::JoinTokens> {
    Ok(Json(node.rotate_ca(forwarded(&h)).await?))
}

async fn rotate(
    State(node): State<Node>,
    h: HeaderMap,
    Json(r): Json<RotateToken>,
) -> ApiResult<crate::JoinTokens> {
    Ok(Json(node.rotate_join_token(r, forwarded(&h)).await?))
}

async fn remove_member(
    State(node): State<Node>,
    a: Option<Extension<Access>>,
    h: HeaderMap,
    Json(r): Json<RemoveMember>,
) -> ApiResult<serde_json::Value> {
    match access(a) {
        Access::Full => {}
        // `cluster leave` on a worker.
        Access::Worker(me) if r.id == me => {}
        _ => {
            return Err(HttpError(Error::Forbidden(
                "a worker may only remove itself from the cluster".into(),
            )));
        }
    }
    node.remove_member(r, forwarded(&h)).await?;
    Ok(Json(serde_json::Value::Null))
}

fn isolated(node: &Node) -> Option<Response> {
    node.faults().isolated().then(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "isolated by fault injection",
        )
            .into_response()
    })
}

async fn raft_append(
    State(node): State<Node>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = isolated(&node) {
        return r;
    }
    Json(node.raft().append_entries(req).await).into_response()
}

async fn raft_vote(
    State(node): State<Node>,
    Json(req): Json<VoteRequest<crate::NodeId>>,
) -> Response {
    if let Some(r) = isolated(&node) {
        return r;
    }
    Json(node.raft().vote(req).await).into_response()
}

async fn raft_snapshot(
    State(node): State<Node>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = isolated(&node) {
        return r;
    }
    Json(node.raft().install_snapshot(req).await).into_response()
}

/// The request's [`Access`], from the connection's certificate and the current membership.
/// A node certificate counts for no more than its holder's membership: a manager certificate
/// of a node that was demoted acts as a worker's, one of a removed node as a joining node's
/// (which may only add itself, and only with a valid certificate of this cluster).
fn access_of(node: &Node, id: &Identity) -> Access {
    if id.role == CertRole::Admin {
        return Access::Full;
    }
    let Some(n) = id.node_id() else {
        return Access::Joining(0, false);
    };
    match (id.role, node.member_role(n)) {
        (CertRole::Manager, Some(Role::Manager)) => Access::Full,
        (_, Some(_)) => Access::Worker(n),
        (role, None) => Access::Joining(n, role == CertRole::Manager),
    }
}

/// Whether a connection's certificate is refused outright: a removed node's, a revoked admin's.
fn revoked(node: &Node, id: &Identity, a: Access, path: &str) -> bool {
    // A member is never revoked (removal ends membership first); only check the others, raft
    // RPCs, which do not depend on membership, and admins, who are never members.
    (matches!(a, Access::Joining(..)) || path.starts_with("/raft/") || id.role == CertRole::Admin)
        && node.is_revoked(id)
}

/// Whether `access` may call `path` at all (the handlers narrow what a worker sees further).
/// Raft RPCs take any manager certificate that is not revoked, whatever this node's view of
/// the membership: a node that is joining knows no members until the leader's first append,
/// and raft itself refuses RPCs of a stale term.
fn allowed(access: Access, path: &str, is_manager_cert: bool) -> bool {
    if path.starts_with("/raft/") {
        return is_manager_cert;
    }
    // What a node serves about itself to the managers (its containers' logs): a worker holds
    // no membership to tell a manager's certificate by, so, as for raft RPCs, any manager
    // certificate that is not revoked may call it.
    if path.starts_with("/v1/node/") {
        return is_manager_cert || access == Access::Full;
    }
    match access {
        Access::Full => true,
        Access::Worker(_) => {
            matches!(
                path,
                "/v1/txn"
                    | "/v1/watch"
                    | "/v1/version"
                    | "/v1/cluster/renew"
                    | "/v1/cluster/whoami"
                    | "/v1/cluster/remove"
            ) || path.starts_with("/v1/objects/")
                // The embedder's routes for workers; their handlers narrow what a worker
                // gets by the [`Access`] they are given.
                || path.starts_with("/v1/worker/")
        }
        Access::Joining(..) => matches!(path, "/v1/cluster/add" | "/v1/version"),
    }
}

async fn authorize(State(node): State<Node>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let gate = req.extensions().get::<Arc<Gate>>().cloned();
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    let Caller::Cert(id) = caller else {
        match (&gate, peer) {
            // Counted and summarised periodically: one line per refusal would let anyone with
            // the port fill the disk and drown the log.
            (Some(gate), Some(ip)) => gate.refused(ip, Refusal::Missing),
            _ => tracing::warn!(path = %req.uri().path(), "request without a certificate refused"),
        }
        return (
            StatusCode::UNAUTHORIZED,
            Json(ApiError::from(&Error::Unauthorized(
                "a client certificate of this cluster is required".into(),
            ))),
        )
            .into_response();
    };
    let a = access_of(&node, &id);
    if revoked(&node, &id, a, req.uri().path()) {
        if let (Some(gate), Some(ip)) = (&gate, peer) {
            gate.refused(ip, Refusal::Invalid);
        }
        return (
            StatusCode::UNAUTHORIZED,
            Json(ApiError::from(&Error::Unauthorized(
                if id.role == CertRole::Admin {
                    format!("the admin certificate {:?} was revoked", id.name)
                } else {
                    format!(
                        "the certificate of node {} was revoked when it was removed",
                        id.name
                    )
                },
            ))),
        )
            .into_response();
    }
    let is_manager_cert = id.role == CertRole::Manager;
    if !allowed(a, req.uri().path(), is_manager_cert) {
        tracing::debug!(path = %req.uri().path(), role = %id.role, name = %id.name, "request refused by role");
        return HttpError(Error::Forbidden(format!(
            "{} certificate {} may not call {}",
            id.role,
            id.name,
            req.uri().path()
        )))
        .into_response();
    }
    req.extensions_mut().insert(a);
    next.run(req).await
}

/// Told of every answered request on a router of this module (for metrics): the method, the
/// route's template (`/v1/objects/{kind}`, so the label set stays bounded; `unmatched` for a
/// path no route has), the status and the time until the response head.
pub trait RequestObserver: Send + Sync + 'static {
    fn observe(
        &self,
        method: &axum::http::Method,
        route: &str,
        status: StatusCode,
        took: std::time::Duration,
    );
}

/// The embedder's part of a router: its own routes and who observes requests.
#[derive(Clone, Default)]
pub struct Embedding {
    /// Routes served beside the API's, behind the same authentication.
    pub routes: Router<Node>,
    pub observer: Option<Arc<dyn RequestObserver>>,
}

impl From<Router<Node>> for Embedding {
    fn from(routes: Router<Node>) -> Self {
        Embedding {
            routes,
            observer: None,
        }
    }
}

/// One span per request (`--log debug` shows each with its time), and the observer's call.
async fn observe(
    State(observer): State<Option<Arc<dyn RequestObserver>>>,
    req: Request,
    next: Next,
) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    let method = req.method().clone();
    let span = tracing::debug_span!(
        "api",
        %method,
        route = route.as_deref().unwrap_or("unmatched"),
    );
    let started = std::time::Instant::now();
    let res = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    span.in_scope(|| tracing::debug!(status = res.status().as_u16(), ?took, "answered"));
    if let Some(o) = &observer {
        o.observe(
            &method,
            route.as_deref().unwrap_or("unmatched"),
            res.status(),
            took,
        );
    }
    res
}

/// Body limits. Raft bodies carry log entries and snapshot chunks as JSON (a byte is up to
/// four characters); API bodies carry whole stacks; a join request is a token and an address.
const RAFT_BODY_LIMIT: usize = 64 << 20;
const API_BODY_LIMIT: usize = 16 << 20;
const JOIN_BODY_LIMIT: usize = 64 << 10;

fn api_routes() -> Router<Node> {
    Router::new()
        .route("/v1/txn", post(txn))
        .route("/v1/objects/{kind}", get(list_objects))
        .route("/v1/objects/{kind}/{id}", get(get_object))
        .route("/v1/watch", get(watch))
        .route("/v1/revision", get(revision_before))
        .route("/v1/cluster/status", get(status))
        .route("/v1/version", get(version))
        .route("/v1/cluster/add", post(add_member))
        .route("/v1/cluster/remove", post(remove_member))
        .route("/v1/cluster/renew", post(renew))
        .route("/v1/cluster/whoami", get(whoami))
        .route("/v1/cluster/demoted", post(demoted))
        .route("/v1/cluster/rotate", post(rotate))
        .route("/v1/cluster/role", post(set_role))
        .route("/v1/cluster/ca/rotate", post(rotate_ca))
        .route("/v1/cluster/admin/revoke", post(revoke_admin))
        .route("/v1/cluster/tokens", get(tokens))
}

/// The TCP router: Raft RPCs and the API behind [`authorize`], plus the join endpoint.
/// Served by [`serve_tcp`], which provides the connection's address and admission.
fn peer_router(node: Node, gate: Arc<Gate>, extra: Embedding) -> Router {
    let raft = Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    let protected = api_routes()
        .merge(extra.routes)
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .merge(raft)
        .route_layer(middleware::from_fn_with_state(node.clone(), authorize));
    protected
        .route("/v1/cluster/join", post(join))
        .layer(middleware::from_fn_with_state(extra.observer, observe))
        .layer(Extension(gate))
        .with_state(node)
}

#[derive(Clone, Serialize, Deserialize)]
pub struct LocalJoin {
    pub address: String,
    pub token: String,
}

// Written by hand so that a `{:?}` in a log line can never print a join token.
impl std::fmt::Debug for LocalJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJoin")
            .field("address", &self.address)
            .field("token", &"<redacted>")
            .finish()
    }
}

async fn local_join(State(node): State<Node>, Json(r): Json<LocalJoin>) -> ApiResult<crate::Role> {
    Ok(Json(node.join(&r.address, &r.token).await?))
}

async fn local_leave(State(node): State<Node>) -> ApiResult<serde_json::Value> {
    node.leave().await?;
    Ok(Json(serde_json::Value::Null))
}

async fn tokens(State(node): State<Node>) -> ApiResult<crate::JoinTokens> {
    Ok(Json(node.join_tokens()?))
}

/// Asks for an admin certificate (local socket only: whoever has it administers the cluster).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminCertRequest {
    pub name: String,
    pub ttl_secs: u64,
}

async fn admin_cert(
    State(node): State<Node>,
    Json(r): Json<AdminCertRequest>,
) -> ApiResult<crate::AdminCert> {
    if r.name.is_empty() || r.name.len() > 64 || r.name.chars().any(|c| c.is_control()) {
        return Err(HttpError(Error::InvalidArgument(format!(
            "invalid admin name {:?}",
            r.name
        ))));
    }
    let v = crate::pki::Validity::from_now(std::time::Duration::from_secs(r.ttl_secs.max(60)));
    let c = node.issue_cert(CertRole::Admin, &r.name, v)?;
    tracing::info!(name = %r.name, ttl_secs = r.ttl_secs, "admin certificate issued");
    Ok(Json(c))
}

/// The unix-socket router: the API plus local administration, no token (socket is mode 0600).
pub fn local_router(node: Node) -> Router {
    local_router_with(node, Embedding::default())
}

/// [`local_router`] plus the embedder's own routes (`extra`, served like the API's).
pub fn local_router_with(node: Node, extra: impl Into<Embedding>) -> Router {
    let extra = extra.into();
    api_routes()
        .merge(extra.routes)
        .route("/v1/local/join", post(local_join))
        .route("/v1/local/leave", post(local_leave))
        .route("/v1/local/admin-cert", post(admin_cert))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(extra.observer, observe))
        .with_state(node)
}

/// Serves the peer router on a bound TCP listener until `shutdown` resolves, with the default
/// [`ListenerLimits`].
pub async fn serve_tcp(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tcp_with(
        node,
        listener,
        ListenerLimits::default(),
        Router::new(),
        shutdown,
    )
    .await
}

/// Serves the peer router on a bound TCP listener until `shutdown` resolves. Connections
/// beyond the caps of `limits` are accepted and closed at once (left in the backlog they would
/// only make legitimate peers wait). `extra`: the embedder's own routes, behind the same
/// authentication as the API.
pub async fn serve_tcp_with(
    node: Node,
    listener: tokio::net::TcpListener,
    limits: ListenerLimits,
    extra: impl Into<Embedding>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gate = Arc::new(Gate::new(limits));
    let router = peer_router(node.clone(), gate.clone(), extra.into());
    let summaries = tokio::spawn(gate.clone().log_summaries());
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE/ENFILE/ECONNABORTED: retrying at once would spin on the same error.
                    tracing::debug!("accept on the TCP listener: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admission) = gate.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            node.clone(),
            stream,
            peer,
            Arc::new(admission),
            router.clone(),
            gate.clone(),
            closing_rx.clone(),
        ));
    }
    summaries.abort();
    if let Some(line) = gate.take_summary() {
        tracing::warn!("TCP listener: {line}");
    }
    let _ = closing_tx.send(true);
    Ok(())
}

/// The TLS handshake of one connection and who the client is. A node without credentials
/// (before bootstrap or between leaving and rejoining) has nothing to present and serves none.
async fn handshake(
    node: &Node,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    gate: &Gate,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Caller,
)> {
    let cfg = node.tls().active()?.server.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let timeout = gate.limits().header_read_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let caller = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                None => Caller::Anonymous,
                Some(der) => match crate::pki::identity(der) {
                    Ok(id) => Caller::Cert(id),
                    // Signed by our root but not naming a role: nothing this cluster issued.
                    Err(e) => {
                        tracing::debug!(%peer, "certificate without a dcpp identity: {e}");
                        gate.refused(peer.ip(), Refusal::Invalid);
                        return None;
                    }
                },
            };
            Some((tls, caller))
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake: {e}");
            gate.refused(peer.ip(), Refusal::Invalid);
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn serve_connection(
    node: Node,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    admission: Arc<Admission>,
    router: Router,
    gate: Arc<Gate>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    use tower::ServiceExt;
    let limits = gate.limits().clone();
    let Some((stream, caller)) = handshake(&node, stream, peer, &gate).await else {
        return;
    };
    if matches!(caller, Caller::Cert(_)) {
        admission.authenticated();
    }
    let conn_admission = admission.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(conn_admission.clone());
            req.extensions_mut().insert(caller.clone());
            router.clone().oneshot(req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let deadline = tokio::time::sleep(limits.unauthenticated_timeout);
    let mut deadline = std::pin::pin!(deadline);
    let mut deadline_armed = true;
    let mut closing_seen = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "TCP connection: {e}");
                }
                break;
            }
            _ = &mut deadline, if deadline_armed => {
                if !admission.is_authenticated() {
                    tracing::debug!(%peer, "closing a connection that never authenticated");
                    break;
                }
                deadline_armed = false;
            }
            r = closing.wait_for(|c| *c), if !closing_seen => {
                closing_seen = true;
                if r.is_err() {
                    break;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Serves [`local_router`] on a bound unix socket until `shutdown` resolves.
pub async fn serve_unix(
    node: Node,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_unix_with(node, listener, Router::new(), shutdown).await
}

/// [`serve_unix`] with the embedder's own routes.
pub async fn serve_unix_with(
    node: Node,
    listener: tokio::net::UnixListener,
    extra: impl Into<Embedding>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, local_router_with(node, extra))
        .with_graceful_shutdown(shutdown)
        .await
}
