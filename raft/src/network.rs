//! openraft RPCs over HTTPS with mutual TLS: JSON bodies, the node's certificate on every call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{NodeId, TypeConfig};

/// Header naming the sending node on peer RPCs (for logs).
pub const FROM_HEADER: &str = "x-dcpp-from";

/// Compares a presented credential `a` with the secret `b` in time that depends only on the
/// length of `a`: no early exit on the first difference nor on a length mismatch (which would
/// tell a guesser the secret's length).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        let y = if b.is_empty() { 0 } else { b[i % b.len()] };
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Fault injection for tests: an isolated node neither sends nor accepts Raft RPCs, which is how
/// tests cut a node off without touching the host firewall. Never set in production.
#[derive(Debug, Default)]
pub struct Faults {
    isolated: AtomicBool,
}

impl Faults {
    pub fn set_isolated(&self, on: bool) {
        self.isolated.store(on, Ordering::SeqCst);
    }
    pub fn isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }
}

/// Creates per-peer connections for openraft.
#[derive(Clone)]
pub struct Transport {
    pub(crate) id: NodeId,
    pub(crate) tls: Arc<crate::tls::NodeTls>,
    pub(crate) faults: Arc<Faults>,
}

impl RaftNetworkFactory<TypeConfig> for Transport {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConn {
        PeerConn {
            t: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// A connection to one peer.
pub struct PeerConn {
    t: Transport,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerConn {
    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.t.faults.isolated() {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(
                "isolated by fault injection".into(),
            ))));
        }
        let Some(tls) = self.t.tls.active() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(
                "this node has no certificate yet".into(),
            ))));
        };
        let url = format!("https://{}/raft/{path}", self.addr);
        let rb = tls
            .peers
            .post(&url)
            .timeout(timeout)
            .header(FROM_HEADER, self.t.id.to_string())
            .json(req);
        let resp = rb.send().await.map_err(|e| {
            if e.is_timeout() {
                RPCError::Timeout(Timeout {
                    action,
                    id: self.t.id,
                    target: self.target,
                    timeout,
                })
            } else if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(RPCError::Network(NetworkError::new(&Msg(format!(
                "{url}: HTTP {status}: {body}"
            )))));
        }
        let res: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, "append", &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            RPCTypes::InstallSnapshot,
            "snapshot",
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, "vote", &rpc, option.hard_ttl())
            .await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A restarted peer should be picked up quickly; the default is a flat 500 ms.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_equality_whatever_the_lengths() {
        assert!(ct_eq(b"secret", b"secret"));
        for (a, b) in [
            (&b"secreT"[..], &b"secret"[..]),
            (b"secre", b"secret"),
            (b"secrets", b"secret"),
            (b"secretsecret", b"secret"),
            (b"", b"secret"),
            (b"secret", b""),
        ] {
            assert!(!ct_eq(a, b), "{a:?} {b:?}");
        }
        assert!(ct_eq(b"", b""));
    }
}
