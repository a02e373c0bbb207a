//! The Rust client of the store API, used by the CLI, agents and tests. Talks to a daemon over
//! its unix socket or to a manager over TCP with mutual TLS (an admin certificate).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::api::{LocalJoin, WatchLine, decode_response, encode_path};
use crate::node::ObjectList;
use crate::types::{
    ClusterStatus, Event, JoinTokens, Kind, Object, Op, Precondition, Role, Txn, TxnResponse,
};

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///path`, `tcp://host:port`, `http://host:port` or a bare `host:port`.
    pub fn parse(s: &str) -> Result<Endpoint, Error> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "empty socket path in {s:?}"
                )));
            }
            return Ok(Endpoint::Unix(p.into()));
        }
        let hp = s
            .strip_prefix("tcp://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s)
            .trim_end_matches('/');
        if hp.is_empty() || !hp.contains(':') {
            return Err(Error::InvalidArgument(format!(
                "invalid daemon address {s:?} (want unix:///path or tcp://host:port)"
            )));
        }
        Ok(Endpoint::Tcp(hp.into()))
    }
}

/// A client of one daemon / cluster member. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of `endpoint`. A TCP endpoint needs `cert_dir`, a directory with `ca.pem`,
    /// `cert.pem` and `key.pem` (as `dcpp cluster admin-cert` writes it).
    pub fn new(endpoint: &Endpoint, cert_dir: Option<&std::path::Path>) -> Result<Client, Error> {
        match endpoint {
            Endpoint::Unix(p) => Ok(Client {
                http: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .unix_socket(p.as_path())
                    .build()
                    .map_err(|e| Error::Transport(e.to_string()))?,
                base: "http://localhost".to_string(),
            }),
            Endpoint::Tcp(a) => {
                let dir = cert_dir.ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "tcp://{a} needs a client certificate: set DCPP_CERT_PATH to a directory \
                         made by `dcpp cluster admin-cert`"
                    ))
                })?;
                Ok(Client::over(a, crate::tls::client_from_dir(dir, None)?))
            }
        }
    }

    /// A client of the manager at `addr` (host:port) through an HTTPS client made by
    /// [`crate::tls`].
    pub fn over(addr: &str, http: reqwest::Client) -> Client {
        Client {
            http,
            base: format!("https://{addr}"),
        }
    }

    /// The URL requests go to (`https://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(m, format!("{}{path}", self.base))
    }

    async fn call<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, Error> {
        let resp = rb
            .send()
            .await
            .map_err(|e| Error::Transport(format!("{}: {e}", self.base)))?;
        decode_response(resp).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.call(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(self.req(reqwest::Method::GET, path)).await
    }

    /// `GET path` of a route an embedder added (e.g. the control plane's), decoded as JSON.
    pub async fn get_route<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.get_json(path).await
    }

    /// `POST path` of a route an embedder added, with a JSON body, decoded as JSON.
    pub async fn post_route<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.post(path, body).await
    }

    /// `POST path` of a route an embedder added, with a raw body of `len` bytes; a success
    /// is handed back as it comes (an answer streamed line by line), a failure decoded into
    /// its error.
    pub async fn post_raw_route(
        &self,
        path: &str,
        body: reqwest::Body,
        len: u64,
    ) -> Result<reqwest::Response, Error> {
        let resp = self
            .req(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::Transport(format!("{}: {e}", self.base)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        match decode_response::<serde_json::Value>(resp).await {
            Err(e) => Err(e),
            Ok(_) => Err(Error::Transport(
                "a failed request decoded as a success".into(),
            )),
        }
    }

    /// `DELETE path` of a route an embedder added, decoded as JSON.
    pub async fn delete_route<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(self.req(reqwest::Method::DELETE, path)).await
    }

    /// Commits a transaction (returns when applied); a failed precondition is
    /// [`Error::PreconditionFailed`].
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, Error> {
        self.post("/v1/txn", txn).await
    }

    /// The revision the store was at just before `t`: watch from it for the changes at `t`
    /// or later.
    pub async fn revision_before(&self, t: time::OffsetDateTime) -> Result<u64, Error> {
        let t = t
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let r: crate::api::RevisionAt = self
            .get_json(&format!("/v1/revision?before={}", encode_path(&t)))
            .await?;
        Ok(r.revision)
    }

    /// Linearizable read of one object.
    pub async fn get(&self, kind: Kind, id: &str) -> Result<Object, Error> {
        self.get_json(&format!("/v1/objects/{kind}/{}", encode_path(id)))
            .await
    }

    /// Read from the contacted node's local copy (may lag the leader).
    pub async fn get_stale(&self, kind: Kind, id: &str) -> Result<Object, Error> {
        self.get_json(&format!(
            "/v1/objects/{kind}/{}?stale=true",
            encode_path(id)
        ))
        .await
    }

    /// Typed linearizable read: the value and its `mod_revision` (for compare-and-set).
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<(T, u64), Error> {
        let o = self.get(kind, id).await?;
        Ok((o.decode()?, o.mod_revision))
    }

    /// Unconditional typed put.
    pub async fn put<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
    ) -> Result<TxnResponse, Error> {
        self.txn(&Txn::new().op(Op::put(kind, id, value)?)).await
    }

    /// Typed put that succeeds only if the object is still at `mod_revision`.
    pub async fn put_if<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
        mod_revision: u64,
    ) -> Result<TxnResponse, Error> {
        let t = Txn::new()
            .when(Precondition::ModRevision {
                kind,
                id: id.into(),
                revision: mod_revision,
            })
            .op(Op::put(kind, id, value)?);
        self.txn(&t).await
    }

    /// Typed create that fails if the object exists.
    pub async fn create<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        value: &T,
    ) -> Result<TxnResponse, Error> {
        let t = Txn::new()
            .when(Precondition::Absent {
                kind,
                id: id.into(),
            })
            .op(Op::put(kind, id, value)?);
        self.txn(&t).await
    }

    /// Read-modify-write with compare-and-set, retried on conflicts: `f` gets the current value
    /// (`None` if absent) and returns the new one. Returns the committed value and response.
    pub async fn update<T, F>(
        &self,
        kind: Kind,
        id: &str,
        mut f: F,
    ) -> Result<(T, TxnResponse), Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<T, Error>,
    {
        for _ in 0..64 {
            let (cur, rev) = match self.get(kind, id).await {
                Ok(o) => (Some(o.decode::<T>()?), Some(o.mod_revision)),
                Err(Error::NotFound { .. }) => (None, None),
                Err(e) => return Err(e),
            };
            let next = f(cur)?;
            let res = match rev {
                Some(r) => self.put_if(kind, id, &next, r).await,
                None => self.create(kind, id, &next).await,
            };
            match res {
                Ok(r) => return Ok((next, r)),
                Err(Error::PreconditionFailed(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!("{kind}/{id}: too much contention")))
    }

    pub async fn delete(&self, kind: Kind, id: &str) -> Result<TxnResponse, Error> {
        self.txn(&Txn::new().op(Op::delete(kind, id))).await
    }

    /// Linearizable list of one kind, with the revision to start a watch from.
    pub async fn list(&self, kind: Kind) -> Result<ObjectList, Error> {
        self.get_json(&format!("/v1/objects/{kind}")).await
    }

    pub async fn status(&self) -> Result<ClusterStatus, Error> {
        self.get_json("/v1/cluster/status").await
    }

    /// Renews the calling member's certificate.
    pub(crate) async fn renew(&self, r: &crate::RenewRequest) -> Result<crate::RenewGrant, Error> {
        self.post("/v1/cluster/renew", r).await
    }

    /// What the managers know about the calling member (see [`crate::WhoAmI`]).
    pub async fn whoami(&self) -> Result<crate::WhoAmI, Error> {
        self.get_json("/v1/cluster/whoami").await
    }

    /// The daemon's version.
    pub async fn version(&self) -> Result<crate::api::VersionInfo, Error> {
        self.get_json("/v1/version").await
    }

    /// Join tokens (managers and admins only).
    pub async fn join_tokens(&self) -> Result<JoinTokens, Error> {
        self.get_json("/v1/cluster/tokens").await
    }

    /// Replaces the join token of `role`; the old one stops working.
    pub async fn rotate_join_token(&self, role: Role) -> Result<JoinTokens, Error> {
        self.post("/v1/cluster/rotate", &crate::node::RotateToken { role })
            .await
    }

    /// Promotes (`Role::Manager`) or demotes (`Role::Worker`) member `id`.
    pub async fn set_role(&self, id: crate::NodeId, role: Role) -> Result<(), Error> {
        let _: serde_json::Value = self
            .post("/v1/cluster/role", &crate::node::SetRole { id, role })
            .await?;
        Ok(())
    }

    /// Rotates the cluster's root; returns the join tokens of the new root.
    pub async fn rotate_ca(&self) -> Result<JoinTokens, Error> {
        self.post("/v1/cluster/ca/rotate", &serde_json::Value::Null)
            .await
    }

    /// Refuses every admin certificate named `name` issued until now.
    pub async fn revoke_admin(&self, name: &str) -> Result<(), Error> {
        let _: serde_json::Value = self
            .post(
                "/v1/cluster/admin/revoke",
                &crate::RevokeAdmin { name: name.into() },
            )
            .await?;
        Ok(())
    }

    /// A new admin certificate valid for `ttl` (unix socket only).
    pub async fn admin_cert(&self, name: &str, ttl: Duration) -> Result<crate::AdminCert, Error> {
        self.post(
            "/v1/local/admin-cert",
            &crate::api::AdminCertRequest {
                name: name.into(),
                ttl_secs: ttl.as_secs(),
            },
        )
        .await
    }

    /// Asks the daemon to join the cluster at `address` (unix socket only).
    pub async fn join(&self, address: &str, token: &str) -> Result<Role, Error> {
        self.post(
            "/v1/local/join",
            &LocalJoin {
                address: address.into(),
                token: token.into(),
            },
        )
        .await
    }

    /// Removes member `id` from the cluster (its Raft membership and its node record), as
    /// the leader does for a node that leaves. For a node that is gone for good; a node that
    /// can still run should `leave` instead.
    pub async fn remove_node(&self, id: crate::NodeId) -> Result<(), Error> {
        let _: serde_json::Value = self
            .post("/v1/cluster/remove", &crate::RemoveMember { id })
            .await?;
        Ok(())
    }

    /// Asks the daemon to leave its cluster (unix socket only).
    pub async fn leave(&self) -> Result<(), Error> {
        let _: serde_json::Value = self.post("/v1/local/leave", &()).await?;
        Ok(())
    }

    /// Watches every change after `since`, reconnecting transparently after connection loss
    /// and resuming from the last delivered revision, so the stream has no gaps. It ends after
    /// yielding [`Error::Compacted`] (re-list, then watch from the list's revision).
    pub fn watch(
        &self,
        since: u64,
        kind: Option<Kind>,
    ) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;
        struct St {
            c: Client,
            /// Revision of the last delivered event and how many of its events were delivered:
            /// a revision can hold several events and the connection may drop between them.
            cur_rev: u64,
            cur_count: usize,
            skip: usize,
            kind: Option<Kind>,
            body: Option<Body>,
            buf: Vec<u8>,
            out: VecDeque<Result<Event, Error>>,
            done: bool,
            failures: u32,
        }
        let st = St {
            c: self.clone(),
            cur_rev: since,
            cur_count: 0,
            skip: 0,
            kind,
            body: None,
            buf: Vec::new(),
            out: VecDeque::new(),
            done: false,
            failures: 0,
        };
        futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(item) = st.out.pop_front() {
                    return Some((item, st));
                }
                if st.done {
                    return None;
                }
                let Some(body) = st.body.as_mut() else {
                    if st.failures > 0 {
                        let ms = (100u64 << st.failures.min(5)).min(2000);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let since = if st.cur_count > 0 {
                        st.cur_rev - 1
                    } else {
                        st.cur_rev
                    };
                    st.skip = st.cur_count;
                    let mut path = format!("/v1/watch?since={since}");
                    if let Some(k) = st.kind {
                        path.push_str(&format!("&kind={k}"));
                    }
                    match st.c.req(reqwest::Method::GET, &path).send().await {
                        Ok(r) if r.status().is_success() => {
                            st.failures = 0;
                            st.buf.clear();
                            st.body = Some(Box::pin(r.bytes_stream()));
                        }
                        Ok(r) => match decode_response::<serde_json::Value>(r).await {
                            Err(
                                e @ (Error::Compacted { .. }
                                | Error::Unauthorized(_)
                                | Error::InvalidArgument(_)),
                            ) => {
                                st.done = true;
                                st.out.push_back(Err(e));
                            }
                            _ => st.failures += 1,
                        },
                        Err(_) => st.failures += 1,
                    }
                    continue;
                };
                match body.next().await {
                    Some(Ok(chunk)) => {
                        st.buf.extend_from_slice(&chunk);
                        while let Some(pos) = st.buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = st.buf.drain(..=pos).collect();
                            match serde_json::from_slice::<WatchLine>(&line) {
                                // Deliver only events after the resume point.
                                Ok(WatchLine::Event(e)) => {
                                    if e.revision > st.cur_rev {
                                        st.cur_rev = e.revision;
                                        st.cur_count = 1;
                                        st.skip = 0;
                                        st.out.push_back(Ok(e));
                                    } else if e.revision == st.cur_rev {
                                        if st.skip > 0 {
                                            st.skip -= 1;
                                        } else {
                                            st.cur_count += 1;
                                            st.out.push_back(Ok(e));
                                        }
                                    }
                                }
                                Ok(WatchLine::Error(e)) => {
                                    st.done = true;
                                    st.out.push_back(Err(e.into_error()));
                                }
                                Err(e) => {
                                    st.done = true;
                                    st.out.push_back(Err(Error::Transport(format!(
                                        "bad watch line: {e}"
                                    ))));
                                }
                            }
                        }
                    }
                    // Connection lost or closed: reconnect from the last delivered revision.
                    Some(Err(_)) | None => {
                        st.body = None;
                        st.failures += 1;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            Endpoint::parse("unix:///run/dcpp/dcpp.sock").unwrap(),
            Endpoint::Unix("/run/dcpp/dcpp.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.1:2377").unwrap(),
            Endpoint::Tcp("10.0.0.1:2377".into())
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:1").unwrap(),
            Endpoint::Tcp("127.0.0.1:1".into())
        );
        assert!(matches!(
            Endpoint::parse("unix://"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Endpoint::parse("nonsense"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn api_errors_round_trip() {
        let cases = [
            Error::Compacted {
                requested: 3,
                compacted: 9,
            },
            Error::NotFound {
                kind: Kind::Task,
                id: "web.1".into(),
            },
            Error::PreconditionFailed(crate::PreconditionFailed {
                index: 0,
                kind: Kind::Node,
                id: "n".into(),
                actual_mod_revision: Some(4),
            }),
            Error::NoLeader("x".into()),
        ];
        for e in cases {
            let back = crate::api::ApiError::from(&e).into_error();
            assert_eq!(back.to_string(), e.to_string());
        }
    }
}
