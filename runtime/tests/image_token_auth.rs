//! Docker's bearer token auth end to end: the real registry (Debian's docker-registry) with
//! `auth: token:`, and a token server written here (axum) that issues ES256 JWTs signed by a
//! key generated for the test, whose self-signed certificate is the registry's
//! `rootcertbundle`. Anonymous clients get pull-only tokens; `dcpp:secret` (HTTP basic to the
//! token server) gets pull and push.

mod common;

use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::registry::{Registry, RegistryOptions as RegOpts, TokenAuth};
use dcpp_runtime::image::registry::{RegistryClient, RegistryOptions};
use dcpp_runtime::image::{ImageError, ImageStore};
use serde_json::json;

const SERVICE: &str = "dcpp-test-registry";
const ISSUER: &str = "dcpp-test-token-issuer";

/// One token request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
struct TokenRequest {
    /// The authenticated user; `None` for anonymous requests.
    account: Option<String>,
    scopes: Vec<String>,
}

struct Issuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    requests: Mutex<Vec<TokenRequest>>,
}

struct TokenServer {
    realm: String,
    cert_pem: String,
    issuer: Arc<Issuer>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenServer {
    async fn start() -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["dcpp-token-issuer".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signer =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
                .unwrap();
        let issuer = Arc::new(Issuer {
            key: signer,
            cert_der: cert.der().to_vec(),
            requests: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(issuer.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TokenServer {
            realm: format!("http://{addr}/token"),
            cert_pem: cert.pem(),
            issuer,
            task,
        }
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.issuer.requests.lock().unwrap().clone()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `GET /token?service=…&scope=repository:NAME:ACTIONS…`, optionally with HTTP basic auth.
async fn token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let account = match headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        None => None,
        Some(b64) => {
            let creds = STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if creds.as_deref() != Some("dcpp:secret") {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"details": "incorrect username or password"})),
                )
                    .into_response();
            }
            Some("dcpp".to_string())
        }
    };
    let service = query.iter().find(|(k, _)| k == "service").map(|(_, v)| v);
    if service.map(String::as_str) != Some(SERVICE) {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    let scopes: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string))
        .collect();
    issuer.requests.lock().unwrap().push(TokenRequest {
        account: account.clone(),
        scopes: scopes.clone(),
    });
    let mut access = Vec::new();
    for scope in &scopes {
        let parts: Vec<&str> = scope.splitn(3, ':').collect();
        let [kind, name, actions] = parts[..] else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| *a == "pull" || account.is_some())
            .collect();
        access.push(json!({"type": kind, "name": name, "actions": granted}));
    }
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [STANDARD.encode(&issuer.cert_der)],
    });
    let t = now();
    let claims = json!({
        "iss": ISSUER,
        "sub": account.clone().unwrap_or_default(),
        "aud": SERVICE,
        "exp": t + 300,
        "nbf": t - 10,
        "iat": t,
        "jti": format!("{t}-{}", issuer.requests.lock().unwrap().len()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = issuer
        .key
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    axum::Json(json!({"token": jwt, "access_token": jwt, "expires_in": 300})).into_response()
}

fn client(store: &ImageStore, auth_file: Option<std::path::PathBuf>) -> RegistryClient {
    RegistryClient::new(
        store.clone(),
        RegistryOptions {
            auth_file,
            ..Default::default()
        },
    )
}

/// Writes a Docker config with basic credentials for `registry`.
fn docker_config(
    dir: &std::path::Path,
    name: &str,
    registry: &str,
    user_pass: &str,
) -> std::path::PathBuf {
    let p = dir.join(name);
    let auth = STANDARD.encode(user_pass);
    std::fs::write(&p, json!({"auths": {registry: {"auth": auth}}}).to_string()).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_anonymous_pull_credentialed_push_and_refusals() {
    let ts = TokenServer::start().await;
    let reg = Registry::start_with(RegOpts {
        token: Some(TokenAuth {
            realm: ts.realm.clone(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            root_cert_pem: ts.cert_pem.clone(),
        }),
        ..Default::default()
    });
    let tmp = tempfile::Builder::new()
        .prefix("dcpp-token-")
        .tempdir()
        .unwrap();
    let src = ImageStore::open(&tmp.path().join("src")).unwrap();
    let rootfs = common::busybox::rootfs_tempdir();
    let reference = format!("{}/public/bb:1", reg.addr);
    let local = src.import_rootfs(rootfs.path(), &reference).unwrap();
    let good = docker_config(tmp.path(), "good.json", &reg.addr, "dcpp:secret");
    let wrong = docker_config(tmp.path(), "wrong.json", &reg.addr, "dcpp:wrong");

    // Anonymous push: the token server grants pull only, so the registry refuses.
    let err = client(&src, None)
        .push(&reference, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&reference) && msg.contains(&reg.addr) && !msg.contains('\n'),
        "{msg}"
    );

    // Push with credentials from the Docker config: basic auth to the token server.
    let digest = client(&src, Some(good.clone()))
        .push(&reference, None, None)
        .await
        .unwrap();
    assert_eq!(digest, local.manifest_digest);
    let reqs = ts.requests();
    assert!(
        reqs.iter().any(|r| r.account.as_deref() == Some("dcpp")
            && r.scopes
                .contains(&"repository:public/bb:pull,push".to_string())),
        "{reqs:?}"
    );

    // Anonymous pull: a pull-scoped token, no credentials sent.
    let before = ts.requests().len();
    let dst = ImageStore::open(&tmp.path().join("dst")).unwrap();
    let img = client(&dst, None).pull(&reference, None).await.unwrap();
    assert_eq!(img.id, local.id);
    assert!(img.layer_dirs()[0].join("bin/busybox").is_file());
    let anon: Vec<TokenRequest> = ts.requests()[before..].to_vec();
    assert!(!anon.is_empty());
    assert!(
        anon.iter()
            .all(|r| r.account.is_none()
                && r.scopes == vec!["repository:public/bb:pull".to_string()]),
        "{anon:?}"
    );

    // Refused credentials: one line naming the reference and the registry; nothing stored.
    let dst2 = ImageStore::open(&tmp.path().join("dst2")).unwrap();
    let err = client(&dst2, Some(wrong))
        .pull(&reference, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&reference) && msg.contains(&reg.addr) && !msg.contains('\n'),
        "{msg}"
    );
    assert!(dst2.list().unwrap().is_empty());

    // The registry itself checked the tokens: a forged one (unknown key) is refused.
    let forged_header = URL_SAFE_NO_PAD.encode(json!({"typ":"JWT","alg":"ES256"}).to_string());
    let (code, _) = common::registry::http_get_with(
        &reg.addr,
        "/v2/public/bb/tags/list",
        &[("Authorization", &format!("Bearer {forged_header}.e30.AAAA"))],
    )
    .unwrap();
    assert_eq!(code, 401);
}
