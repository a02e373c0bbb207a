//! Cluster trust over real TCP and TLS: the handshake refuses what is not of the cluster, and
//! every route answers by the role of the certificate that calls it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use dcpp_raft::pki::{self, Validity};
use dcpp_raft::scope::{ScopeRef, WorkerScope};
use dcpp_raft::store::StoreReader;
use dcpp_raft::tls::{self, Expect, Presented};
use dcpp_raft::{CertRole, Kind, NodeConfig, NodeId, Object, Role};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// A worker may read and write only its own node record (the application's rule is richer;
/// this one is enough to see the scope applied).
struct OwnRecord;

impl WorkerScope for OwnRecord {
    fn may_read(&self, _: &StoreReader, w: NodeId, o: &Object) -> bool {
        o.kind == Kind::Node && o.id == w.to_string()
    }
    fn may_write(&self, _: &StoreReader, w: NodeId, kind: Kind, id: &str) -> bool {
        kind == Kind::Node && id == w.to_string()
    }
}

fn scoped(cfg: &mut NodeConfig) {
    cfg.worker_scope = Some(ScopeRef(Arc::new(OwnRecord)));
}

fn client_of(c: &dcpp_raft::AdminCert) -> reqwest::Client {
    tls::client_from_pems(&c.ca_pem, &c.cert_pem, &c.key_pem, Some(T)).expect("client")
}

/// What a request got: the HTTP status, or that the connection failed (handshake refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    Status(u16),
    Refused,
}

async fn call(http: &reqwest::Client, method: &str, url: &str, body: &serde_json::Value) -> Got {
    let rb = match method {
        "GET" => http.get(url),
        _ => http.post(url).json(body),
    };
    match rb.send().await {
        Ok(r) => Got::Status(r.status().as_u16()),
        Err(_) => Got::Refused,
    }
}

/// Every route of the TCP listener, with a body that gets past decoding where one is needed.
fn routes(worker: NodeId) -> Vec<(&'static str, String, serde_json::Value)> {
    let put_stack = json!({"ops": [{"op": "put", "kind": "stack", "id": "s", "value": 1}]});
    vec![
        ("POST", "/raft/vote".into(), json!({})),
        ("POST", "/raft/append".into(), json!({})),
        ("POST", "/raft/snapshot".into(), json!({})),
        ("POST", "/v1/txn".into(), put_stack),
        ("GET", "/v1/objects/stack".into(), json!(null)),
        ("GET", "/v1/objects/stack/s".into(), json!(null)),
        ("GET", "/v1/watch?since=0&kind=stack".into(), json!(null)),
        ("GET", "/v1/cluster/status".into(), json!(null)),
        ("GET", "/v1/version".into(), json!(null)),
        ("GET", "/v1/cluster/tokens".into(), json!(null)),
        (
            "POST",
            "/v1/cluster/add".into(),
            json!({"id": 77, "address": "127.0.0.1:1", "role": "manager", "hostname": "x"}),
        ),
        ("POST", "/v1/cluster/remove".into(), json!({"id": 77})),
        (
            "POST",
            "/v1/cluster/rotate".into(),
            json!({"role": "worker"}),
        ),
        (
            "POST",
            "/v1/cluster/role".into(),
            json!({"id": worker, "role": "manager"}),
        ),
        ("POST", "/v1/cluster/renew".into(), json!({"csr": "00"})),
        ("GET", "/v1/cluster/whoami".into(), json!(null)),
        ("POST", "/v1/cluster/demoted".into(), json!(null)),
        (
            "POST",
            "/v1/cluster/admin/revoke".into(),
            json!({"name": "nobody"}),
        ),
    ]
}

fn refused_by_role(g: Got) -> bool {
    matches!(g, Got::Status(401 | 403))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_by_the_certificate_that_calls_it() {
    let mut c = Cluster::start_with(2, scoped).await;
    let tokens = c.node(0).join_tokens().unwrap();
    let w = c.add_fresh(&tokens.worker).await;
    let wid = c.node(w).id();
    let leader = c.leader(T).await;
    let mgr_id = c.node(1 - leader).id();
    let n0 = c.node(leader);
    let long = Validity::from_now(Duration::from_secs(3600));
    let manager = client_of(
        &n0.issue_cert(CertRole::Manager, &mgr_id.to_string(), long)
            .unwrap(),
    );
    let worker = client_of(
        &n0.issue_cert(CertRole::Worker, &wid.to_string(), long)
            .unwrap(),
    );
    let admin = c.admin_http();
    let now = Validity::from_now(Duration::ZERO).not_before + pki::BACKDATE;
    let expired = client_of(
        &n0.issue_cert(
            CertRole::Admin,
            "old",
            Validity {
                not_before: now - 7200,
                not_after: now - 3600,
            },
        )
        .unwrap(),
    );
    let other = Cluster::start(1).await;
    let foreign = other.admin_http();
    let ca = c.admin.as_ref().unwrap().ca_pem.clone();
    let none = tls::http_client(
        &[ca],
        Arc::new(Presented::default()),
        Expect::Manager,
        Some(T),
    )
    .unwrap();
    let plain = reqwest::Client::builder().timeout(T).build().unwrap();
    let base = format!("https://{}", c.addrs[leader]);
    for (method, path, body) in routes(wid) {
        let url = format!("{base}{path}");
        let raft = path.starts_with("/raft/");
        // Handshake refusals: another cluster's certificate, an expired one, plaintext.
        assert_eq!(
            call(&foreign, method, &url, &body).await,
            Got::Refused,
            "foreign {path}"
        );
        assert_eq!(
            call(&expired, method, &url, &body).await,
            Got::Refused,
            "expired {path}"
        );
        let p = call(&plain, method, &url.replace("https://", "http://"), &body).await;
        assert!(
            !matches!(p, Got::Status(200..=299)),
            "plaintext {path}: {p:?}"
        );
        // No certificate: nothing but the join endpoint.
        assert_eq!(
            call(&none, method, &url, &body).await,
            Got::Status(401),
            "none {path}"
        );
        // A manager passes authorization everywhere (its bodies may still be refused later).
        let m = call(&manager, method, &url, &body).await;
        assert!(!refused_by_role(m), "manager {path}: {m:?}");
        // An admin: the whole API, no raft (and no renewal: it is not a member).
        let a = call(&admin, method, &url, &body).await;
        let admin_refused = raft || path == "/v1/cluster/renew" || path == "/v1/cluster/whoami";
        assert_eq!(refused_by_role(a), admin_refused, "admin {path}: {a:?}");
        // A worker: reads (filtered), writes of its own objects, renewal, version.
        let wk = call(&worker, method, &url, &body).await;
        // (It may also call remove, but only for itself: the body here names another node.)
        let worker_may = matches!(
            path.as_str(),
            "/v1/objects/stack"
                | "/v1/objects/stack/s"
                | "/v1/version"
                | "/v1/cluster/renew"
                | "/v1/cluster/whoami"
        ) || path.starts_with("/v1/watch");
        assert_eq!(!refused_by_role(wk), worker_may, "worker {path}: {wk:?}");
    }
    // What the worker may do, it may do only on its own objects.
    let mine = json!({"ops": [{"op": "put", "kind": "node", "id": wid.to_string(), "value": 1}]});
    let theirs =
        json!({"ops": [{"op": "put", "kind": "node", "id": mgr_id.to_string(), "value": 1}]});
    let txn = format!("{base}/v1/txn");
    assert_eq!(call(&worker, "POST", &txn, &mine).await, Got::Status(200));
    assert_eq!(call(&worker, "POST", &txn, &theirs).await, Got::Status(403));
    assert_eq!(
        call(&manager, "POST", &txn, &theirs).await,
        Got::Status(200)
    );
    let list: serde_json::Value = worker
        .get(format!("{base}/v1/objects/node"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [wid.to_string().as_str()],
        "a worker lists only its own record"
    );
    let hidden = worker
        .get(format!("{base}/v1/objects/node/{mgr_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        hidden.status(),
        404,
        "another node's record is as if absent"
    );
    // The worker's own member process holds no log: it writes through a manager with its
    // certificate, allowed for its record, refused for another's.
    let wn = c.node(w);
    let own = dcpp_raft::Txn::new()
        .op(dcpp_raft::Op::put(Kind::Node, wid.to_string(), &json!(2)).unwrap());
    c.on(w, async move { wn.txn(own).await })
        .await
        .expect("own record");
    let wn = c.node(w);
    let stack = dcpp_raft::Txn::new().op(dcpp_raft::Op::put(Kind::Stack, "x", &json!(1)).unwrap());
    let r = c.on(w, async move { wn.txn(stack).await }).await;
    assert!(matches!(r, Err(dcpp_raft::Error::Forbidden(_))), "{r:?}");
}

/// The probe that worked before certificates: a worker join token, the join endpoint, and
/// whatever it hands out used to create a service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_join_token_gets_no_power_over_the_cluster() {
    let c = Cluster::start_with(1, scoped).await;
    let tokens = c.node(0).join_tokens().unwrap();
    let parsed: pki::JoinToken = tokens.worker.parse().unwrap();
    let base = format!("https://{}", c.addrs[0]);
    let (key, csr) = pki::key_and_request().unwrap();
    let http = tls::pinned_client(&parsed.ca_digest).unwrap();
    let grant: serde_json::Value = http
        .post(format!("{base}/v1/cluster/join"))
        .json(&json!({"token": tokens.worker, "node_id": 4242, "csr": hex::encode(csr)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(grant["role"], "worker");
    assert!(
        grant.get("seal_key").is_none(),
        "a worker gets no key to the root"
    );
    let cert = grant["cert_pem"].as_str().unwrap();
    let id = pki::identity(&pki::pem_to_der(cert).unwrap()).unwrap();
    assert_eq!((id.role, id.node_id()), (CertRole::Worker, Some(4242)));
    let ca = grant["ca_certs"][0].as_str().unwrap();
    let thief = tls::client_from_pems(ca, cert, &key, Some(T)).unwrap();
    let service = json!({"ops": [{"op": "put", "kind": "service", "id": "evil", "value": {"privileged": true}}]});
    let r = thief
        .post(format!("{base}/v1/txn"))
        .json(&service)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "creating a service with a worker's certificate"
    );
    let add = json!({"id": 4242, "address": "127.0.0.1:9", "role": "manager", "hostname": "x"});
    let r = thief
        .post(format!("{base}/v1/cluster/add"))
        .json(&add)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "adding itself as a manager with a worker's certificate"
    );
    let r = thief
        .post(format!("{base}/raft/vote"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(c.node(0).get(Kind::Service, "evil", false).await.is_err());
    // A token naming another root is refused by the joiner before it sends anything; one with
    // the right root and a wrong secret by the cluster.
    let wrong_root = pki::JoinToken {
        ca_digest: "00".repeat(32),
        secret: parsed.secret.clone(),
    };
    let r = tls::pinned_client(&wrong_root.ca_digest)
        .unwrap()
        .post(format!("{base}/v1/cluster/join"))
        .json(&json!({"token": wrong_root.to_string(), "node_id": 1, "csr": "00"}))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a server without the pinned root is not talked to"
    );
    let bad = pki::JoinToken {
        ca_digest: parsed.ca_digest.clone(),
        secret: "0".repeat(32),
    };
    let r = http
        .post(format!("{base}/v1/cluster/join"))
        .json(&json!({"token": bad.to_string(), "node_id": 1, "csr": "00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_no_longer_joins_and_joined_nodes_keep_working() {
    let mut c = Cluster::start_with(2, scoped).await;
    let old = c.node(0).join_tokens().unwrap();
    let w = c.add_fresh(&old.worker).await;
    let n1 = c.node(1);
    let rotated = c
        .on(1, async move {
            n1.rotate_join_token(dcpp_raft::RotateToken { role: Role::Worker }, false)
                .await
        })
        .await
        .unwrap();
    assert_ne!(rotated.worker, old.worker);
    assert_eq!(
        rotated.manager, old.manager,
        "only the worker token changed"
    );
    assert_eq!(c.node(0).join_tokens().unwrap().worker, rotated.worker);
    let fresh = c.spawn_fresh().await;
    let (n, addr, tok) = (c.node(fresh), c.addrs[0].clone(), old.worker.clone());
    let r = c.on(fresh, async move { n.join(&addr, &tok).await }).await;
    assert!(matches!(r, Err(dcpp_raft::Error::Unauthorized(_))), "{r:?}");
    c.join(fresh, &rotated.worker).await;
    // The worker that joined with the old token still writes its record.
    let wn = c.node(w);
    let id = wn.id().to_string();
    let own = dcpp_raft::Txn::new().op(dcpp_raft::Op::put(Kind::Node, id, &json!(1)).unwrap());
    c.on(w, async move { wn.txn(own).await })
        .await
        .expect("joined worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_everywhere_and_may_join_again() {
    let mut c = Cluster::start_with(3, scoped).await;
    let tokens = c.node(0).join_tokens().unwrap();
    let w = c.add_fresh(&tokens.worker).await;
    let wid = c.node(w).id();
    let long = Validity::from_now(Duration::from_secs(3600));
    let before = client_of(
        &c.node(0)
            .issue_cert(CertRole::Worker, &wid.to_string(), long)
            .unwrap(),
    );
    let stolen_mgr = client_of(
        &c.node(0)
            .issue_cert(CertRole::Manager, &wid.to_string(), long)
            .unwrap(),
    );
    let own = json!({"ops": [{"op": "put", "kind": "node", "id": wid.to_string(), "value": 1}]});
    let url = |i: usize, p: &str| format!("https://{}{p}", c.addrs[i]);
    assert_eq!(
        call(&before, "POST", &url(0, "/v1/txn"), &own).await,
        Got::Status(200)
    );
    let n0 = c.node(0);
    c.on(0, async move {
        n0.remove_member(dcpp_raft::RemoveMember { id: wid }, false)
            .await
    })
    .await
    .unwrap();
    // Each manager applies the revocation with the membership change: wait for all three.
    let deadline = Instant::now() + T;
    for i in 0..3 {
        while c.node(i).member_role(wid).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (path, body) in [
            ("/v1/txn", &own),
            (
                "/v1/cluster/add",
                &json!({"id": wid, "address": "127.0.0.1:9", "role": "worker", "hostname": "x"}),
            ),
        ] {
            let g = call(&before, "POST", &url(i, path), body).await;
            assert_eq!(
                g,
                Got::Status(401),
                "removed node's certificate on member {i} {path}"
            );
        }
        let g = call(&stolen_mgr, "POST", &url(i, "/raft/vote"), &json!({})).await;
        assert_eq!(
            g,
            Got::Status(401),
            "removed node's manager certificate on raft, member {i}"
        );
    }
    // A certificate issued after the removal (a new join with a valid token) is accepted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = Validity::from_now(Duration::from_secs(3600));
    let after = client_of(
        &c.node(0)
            .issue_cert(CertRole::Worker, &wid.to_string(), later)
            .unwrap(),
    );
    let add = json!({"id": wid, "address": "127.0.0.1:9", "role": "manager", "hostname": "x"});
    let g = call(&after, "POST", &url(0, "/v1/cluster/add"), &add).await;
    assert_eq!(
        g,
        Got::Status(403),
        "not as a manager with a worker certificate"
    );
}

fn short_certs(cfg: &mut NodeConfig) {
    scoped(cfg);
    cfg.cert_ttl = Duration::from_secs(12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_before_they_expire_without_a_failed_request() {
    let mut c = Cluster::start_with(3, short_certs).await;
    let tokens = c.node(0).join_tokens().unwrap();
    let w = c.add_fresh(&tokens.worker).await;
    let first: Vec<pki::Identity> = (0..4).map(|i| c.node(i).identity().unwrap()).collect();
    assert!(first.iter().all(|id| id.not_after - id.issued_at() == 12));
    // Writes through a follower (forwarded to the leader) and the worker, for longer than a
    // certificate lives.
    let leader = c.leader(T).await;
    let f = (0..3).find(|i| *i != leader).unwrap();
    let cl = c.client(f);
    let wn = c.node(w);
    let wid = wn.id().to_string();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(15) {
        cl.put(Kind::Config, &format!("k{}", n % 10), &json!(n))
            .await
            .unwrap_or_else(|e| panic!("write {n} after {:?}: {e}", start.elapsed()));
        let (wn2, id) = (wn.clone(), wid.clone());
        let t = dcpp_raft::Txn::new().op(dcpp_raft::Op::put(Kind::Node, id, &json!(n)).unwrap());
        c.on(w, async move { wn2.txn(t).await })
            .await
            .unwrap_or_else(|e| panic!("worker write {n} after {:?}: {e}", start.elapsed()));
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, old) in first.iter().enumerate() {
        let now = c.node(i).identity().unwrap();
        assert_ne!(now.serial, old.serial, "node {i} renewed");
        assert_eq!(now.role, old.role);
        assert!(now.not_after > old.not_after);
    }
    assert!(n > 100, "{n} writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_demote_reissue_the_certificate() {
    let mut c = Cluster::start_with(2, scoped).await;
    let tokens = c.node(0).join_tokens().unwrap();
    let w = c.add_fresh(&tokens.worker).await;
    let wid = c.node(w).id();
    assert_eq!(c.node(w).identity().unwrap().role, CertRole::Worker);
    let wait_role = |role: CertRole| {
        let n = c.node(w);
        async move {
            let deadline = Instant::now() + T;
            while n.identity().unwrap().role != role {
                assert!(Instant::now() < deadline, "no {role} certificate in time");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    c.client(0)
        .put(Kind::Stack, "before", &json!(1))
        .await
        .unwrap();
    assert!(c.node(w).is_remote_worker());
    assert!(
        c.node(w).reader().list(Kind::Stack).unwrap().0.is_empty(),
        "a worker receives none of the log"
    );
    c.client(0).set_role(wid, Role::Manager).await.unwrap();
    wait_role(CertRole::Manager).await;
    assert_eq!(c.node(0).member_role(wid), Some(Role::Manager));
    assert!(!c.node(w).is_remote_worker());
    // Promoted, it has the whole state (it caught up as a learner before it voted).
    assert_eq!(c.node(w).reader().list(Kind::Stack).unwrap().0.len(), 1);
    // As a manager it can show the join tokens (it received the seal key with its renewal).
    assert_eq!(c.node(w).join_tokens().unwrap().worker, tokens.worker);
    c.client(0).set_role(wid, Role::Worker).await.unwrap();
    wait_role(CertRole::Worker).await;
    assert_eq!(c.node(0).member_role(wid), Some(Role::Worker));
    assert!(
        c.node(w).join_tokens().is_err(),
        "a demoted node can no longer open the root"
    );
    // Demoted, it is out of raft and its copy of the log is gone.
    assert!(c.node(w).is_remote_worker());
    assert!(c.node(w).reader().list(Kind::Stack).unwrap().0.is_empty());
    let st = c.node(0).status().unwrap();
    assert_eq!(
        st.members.iter().find(|m| m.id == wid).map(|m| m.voter),
        Some(false)
    );
    assert_eq!(
        c.node(0)
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&wid),
        None,
        "not a raft learner either"
    );
}

fn short_grace(cfg: &mut NodeConfig) {
    scoped(cfg);
    cfg.ca_rotation_grace = Duration::from_secs(6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_without_a_failed_request() {
    let mut c = Cluster::start_with(3, short_grace).await;
    let tokens = c.node(0).join_tokens().unwrap();
    let w = c.add_fresh(&tokens.worker).await;
    let old_admin = c.admin_http();
    let old_issuer = c.node(0).identity().unwrap().issuer;
    let leader = c.leader(T).await;
    let f = (0..3).find(|i| *i != leader).unwrap();
    let n = c.node(f);
    let rotated = c
        .on(f, async move { n.rotate_ca(false).await })
        .await
        .unwrap();
    assert_ne!(
        rotated.ca_digest, tokens.ca_digest,
        "tokens name the new root"
    );
    // Within the grace an admin of the old root still verifies the members, whose new
    // certificates come with the new root signed by the old one.
    let deadline = Instant::now() + T;
    while c.node(leader).identity().unwrap().issuer == old_issuer {
        assert!(
            Instant::now() < deadline,
            "the leader did not renew from the new root"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("https://{}/v1/objects/config", c.addrs[leader]);
    assert_eq!(
        call(&old_admin, "GET", &url, &json!(null)).await,
        Got::Status(200),
        "an old-root admin during the grace"
    );
    // Writes through a follower (forwarded to the leader) and the worker, past the grace.
    let wid = c.node(w).id().to_string();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(9) {
        for (i, kind, id) in [
            (f, Kind::Config, "k".to_string()),
            (w, Kind::Node, wid.clone()),
        ] {
            let node = c.node(i);
            let t = dcpp_raft::Txn::new().op(dcpp_raft::Op::put(kind, id, &json!(n)).unwrap());
            c.on(i, async move { node.txn(t).await })
                .await
                .unwrap_or_else(|e| {
                    panic!("write {n} on node {i} after {:?}: {e}", start.elapsed())
                });
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..4 {
        let id = c.node(i).identity().unwrap();
        assert_ne!(id.issuer, old_issuer, "node {i} moved to the new root");
    }
    // The grace is over: the old root is trusted nowhere.
    // (A new connection: one opened within the grace stays up, as after expiry.)
    let old_admin = c.admin_http();
    let deadline = Instant::now() + T;
    while call(&old_admin, "GET", &url, &json!(null)).await != Got::Refused {
        assert!(
            Instant::now() < deadline,
            "an old-root admin certificate still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let long = Validity::from_now(Duration::from_secs(3600));
    let admin = client_of(
        &c.node(leader)
            .issue_cert(CertRole::Admin, "new", long)
            .unwrap(),
    );
    assert_eq!(
        call(&admin, "GET", &url, &json!(null)).await,
        Got::Status(200)
    );
    // A token of the old root joins nowhere; one of the new root does.
    let fresh = c.spawn_fresh().await;
    let (node, addr, tok) = (c.node(fresh), c.addrs[0].clone(), tokens.worker.clone());
    let r = c
        .on(fresh, async move { node.join(&addr, &tok).await })
        .await;
    assert!(r.is_err(), "old-root token: {r:?}");
    c.join(fresh, &rotated.worker).await;
    assert!(n > 50, "{n} rounds of writes");
}

/// A worker holds none of the log: it reads and writes through the managers, sees only what
/// the scope gives it, and rides out the loss of the manager it talks to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holds_no_log_and_goes_through_the_managers() {
    let mut c = Cluster::start_with(3, scoped).await;
    let tokens = c.node(0).join_tokens().unwrap();
    let w = c.add_fresh(&tokens.worker).await;
    let wn = c.node(w);
    let wid = wn.id();
    for k in 0..5 {
        c.client(0)
            .put(Kind::Stack, &format!("s{k}"), &json!(k))
            .await
            .unwrap();
    }
    let st = wn.status().unwrap();
    assert_eq!(st.state, "Worker");
    assert_eq!(st.managers.len(), 3, "{st:?}");
    assert!(wn.reader().list(Kind::Stack).unwrap().0.is_empty());
    assert!(
        wn.raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_none(),
        "no raft membership on a worker"
    );
    let leader_view = c.node(0).status().unwrap();
    assert!(
        leader_view.members.iter().any(|m| m.id == wid && !m.voter),
        "{leader_view:?}"
    );
    let own =
        dcpp_raft::Txn::new()
            .op(dcpp_raft::Op::put(Kind::Node, wid.to_string(), &json!("up")).unwrap());
    let n = wn.clone();
    c.on(w, async move { n.txn(own).await })
        .await
        .expect("own record");
    let n = wn.clone();
    let listed = c
        .on(w, async move { n.list(Kind::Stack, true).await })
        .await
        .unwrap();
    assert!(listed.objects.is_empty(), "the scope hides the stacks");
    // Every manager in turn goes away; the worker keeps reading its record through the others.
    for victim in 0..3 {
        c.kill(victim);
        let n = wn.clone();
        let got = c
            .on(w, async move {
                let deadline = Instant::now() + T;
                loop {
                    match n.get(Kind::Node, &wid.to_string(), true).await {
                        Ok(o) => return Ok(o),
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
            .await
            .expect("read through another manager");
        assert_eq!(got.value, json!("up"));
        c.restart(victim).await;
    }
}

/// An admin certificate revoked by name is refused by every member at once, open connections
/// included; other admins keep working, and one issued later under the name works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_admin_certificate_is_refused_everywhere() {
    let c = Cluster::start_with(3, scoped).await;
    let hour = || Validity::from_now(Duration::from_secs(3600));
    let ops = client_of(
        &c.node(0)
            .issue_cert(CertRole::Admin, "ops", hour())
            .unwrap(),
    );
    let get = |http: reqwest::Client, i: usize| {
        let url = format!("https://{}/v1/objects/stack", c.addrs[i]);
        async move { call(&http, "GET", &url, &json!(null)).await }
    };
    for i in 0..3 {
        assert_eq!(get(ops.clone(), i).await, Got::Status(200));
    }
    let empty = c.client(1).revoke_admin("").await;
    assert!(
        matches!(empty, Err(dcpp_raft::Error::InvalidArgument(_))),
        "{empty:?}"
    );
    c.client(1).revoke_admin("ops").await.unwrap();
    let deadline = Instant::now() + T;
    for i in 0..3 {
        while get(ops.clone(), i).await != Got::Status(401) {
            assert!(
                Instant::now() < deadline,
                "node {i} still takes the revoked admin"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            get(c.admin_http(), i).await,
            Got::Status(200),
            "another admin"
        );
    }
    // Revocation is by issue time, in whole seconds: a certificate from the next second on
    // is a new one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = client_of(
        &c.node(2)
            .issue_cert(CertRole::Admin, "ops", hour())
            .unwrap(),
    );
    assert_eq!(get(again, 0).await, Got::Status(200));
}
