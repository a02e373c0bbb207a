//! HTTP surface of a node: Raft peer RPCs and the store API, as axum routers, plus the error
//! envelope shared with the client.
//!
//! Two routers: [`peer_router`] is served on TCP and requires the cluster bearer token on every
//! route except `POST /v1/cluster/join` (whose credential is the join token in the body);
//! [`local_router`] is served on the daemon's unix socket (mode 0600, so only root reaches it)
//! and adds the local administration routes (join, leave, tokens).
//!
//! The TCP listener is reachable by anyone who reaches the port, so it is served by its own
//! accept loop with the limits of [`ListenerLimits`]: a header-read timeout, a deadline for
//! connections that never present the token, caps on open connections, a rate limit on failed
//! authentications per source and request body limits on every route.

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
use crate::node::{AddMember, JoinRequest, Node, RemoveMember};
use crate::types::{Kind, PreconditionFailed, Txn};
use crate::{Error, TypeConfig};

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

async fn txn(State(node): State<Node>, h: HeaderMap, Json(t): Json<Txn>) -> Response {
    // A failed precondition is a 409 carrying the details.
    match node.txn_inner(t, forwarded(&h)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => HttpError(e).into_response(),
    }
}

async fn get_object(
    State(node): State<Node>,
    h: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<crate::Object> {
    Ok(Json(
        node.get_inner(parse_kind(&kind)?, &id, !q.stale, forwarded(&h))
            .await?,
    ))
}

async fn list_objects(
    State(node): State<Node>,
    h: HeaderMap,
    Path(kind): Path<String>,
    Query(q): Query<ReadQuery>,
) -> ApiResult<crate::node::ObjectList> {
    Ok(Json(
        node.list_inner(parse_kind(&kind)?, !q.stale, forwarded(&h))
            .await?,
    ))
}

async fn watch(State(node): State<Node>, Query(q): Query<WatchQuery>) -> Response {
    let kind = match q.kind.as_deref().map(str::parse::<Kind>).transpose() {
        Ok(k) => k,
        Err(e) => return HttpError(e).into_response(),
    };
    let since = q.since.unwrap_or_else(|| node.reader().revision());
    // Refuse up front (410) so clients see the compaction as a status, not mid-stream.
    if let Err(e) = node.reader().changes_after(since, 0) {
        return HttpError(e).into_response();
    }
    let stream = node.watch(since, kind).map(|r| {
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
    h: HeaderMap,
    Json(r): Json<AddMember>,
) -> ApiResult<serde_json::Value> {
    node.add_member(r, forwarded(&h)).await?;
    Ok(Json(serde_json::Value::Null))
}

async fn remove_member(
    State(node): State<Node>,
    h: HeaderMap,
    Json(r): Json<RemoveMember>,
) -> ApiResult<serde_json::Value> {
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

async fn require_token(State(node): State<Node>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let gate = req.extensions().get::<Arc<Gate>>().cloned();
    if let (Some(gate), Some(ip)) = (&gate, peer)
        && gate.rate_limited(ip)
    {
        return too_many();
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if node.auth().verify(header) {
        if let Some(conn) = req.extensions().get::<Arc<Admission>>() {
            conn.authenticated();
        }
        return next.run(req).await;
    }
    let why = if header.is_some() {
        Refusal::Invalid
    } else {
        Refusal::Missing
    };
    match (&gate, peer) {
        // Counted and summarised periodically: one line per refusal would let anyone with the
        // port fill the disk and drown the log.
        (Some(gate), Some(ip)) => gate.refused(ip, why),
        _ => tracing::warn!(
            path = %req.uri().path(),
            reason = ?why,
            "unauthenticated request refused"
        ),
    }
    (
        StatusCode::UNAUTHORIZED,
        Json(ApiError::from(&Error::Unauthorized(
            "missing or invalid cluster token".into(),
        ))),
    )
        .into_response()
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
        .route("/v1/cluster/status", get(status))
        .route("/v1/version", get(version))
        .route("/v1/cluster/add", post(add_member))
        .route("/v1/cluster/remove", post(remove_member))
}

/// The TCP router: Raft RPCs and the API behind the cluster token, plus the join endpoint.
/// Served by [`serve_tcp`], which provides the connection's address and admission.
fn peer_router(node: Node, gate: Arc<Gate>, extra: Router<Node>) -> Router {
    let raft = Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
        .layer(DefaultBodyLimit::max(RAFT_BODY_LIMIT));
    let protected = api_routes()
        .merge(extra)
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .merge(raft)
        .route_layer(middleware::from_fn_with_state(node.clone(), require_token));
    protected
        .route("/v1/cluster/join", post(join))
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

/// The unix-socket router: the API plus local administration, no token (socket is mode 0600).
pub fn local_router(node: Node) -> Router {
    local_router_with(node, Router::new())
}

/// [`local_router`] plus the embedder's own routes (`extra`, served like the API's).
pub fn local_router_with(node: Node, extra: Router<Node>) -> Router {
    api_routes()
        .merge(extra)
        .route("/v1/local/join", post(local_join))
        .route("/v1/local/leave", post(local_leave))
        .route("/v1/cluster/tokens", get(tokens))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
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
    extra: Router<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gate = Arc::new(Gate::new(limits));
    let router = peer_router(node, gate.clone(), extra);
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

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    admission: Arc<Admission>,
    router: Router,
    gate: Arc<Gate>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    use tower::ServiceExt;
    let limits = gate.limits().clone();
    let conn_admission = admission.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(conn_admission.clone());
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
    extra: Router<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, local_router_with(node, extra))
        .with_graceful_shutdown(shutdown)
        .await
}
