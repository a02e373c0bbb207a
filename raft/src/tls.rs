//! Mutual TLS between members and from remote clients (rustls over aws-lc-rs).
//!
//! A member's [`Tls`] holds its current certificate (swapped in place when it is renewed, so
//! established connections stay up) and the cluster root it trusts. The server asks every
//! client for a certificate but does not require one: the join endpoint must be reachable by a
//! node that has none yet. Which routes a connection without a certificate may use is decided
//! per request (see `api`); a certificate of another CA, an expired one or a plaintext
//! connection never gets past the handshake.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Error;
use crate::pki;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{what}: {e}"))
}

/// A certificate chain (leaf first, then the root so that a joining node can pin it) and key.
pub fn certified_key(chain_pem: &[&str], key_pem: &str) -> Result<Arc<CertifiedKey>, Error> {
    let mut chain = Vec::new();
    for pem in chain_pem {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(c.map_err(|e| tls_err("certificate PEM", e))?);
        }
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls_err("key PEM", e))?;
    Ok(Arc::new(
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| tls_err("key pair", e))?,
    ))
}

fn roots(ca_pems: &[String]) -> Result<Arc<RootCertStore>, Error> {
    let mut r = RootCertStore::empty();
    for pem in ca_pems {
        r.add(pki::pem_to_der(pem).map_err(|e| tls_err("root", e))?)
            .map_err(|e| tls_err("root", e))?;
    }
    Ok(Arc::new(r))
}

/// The certificate this side presents; replaced on renewal without a restart.
#[derive(Debug, Default)]
pub struct Presented(RwLock<Option<Arc<CertifiedKey>>>);

impl Presented {
    pub fn set(&self, k: Option<Arc<CertifiedKey>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = k;
    }
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for Presented {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// Verifies a server against the cluster root and a fixed role name instead of the address
/// dialled: members are reached by IP, and what a client must know is that it talks to a
/// member (or a manager) of its cluster.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a server by the root digest of a join token: the server's chain must contain a
/// certificate with that digest, and the leaf must be a manager certificate it signed. Nothing
/// is sent to a server that fails this.
#[derive(Debug)]
struct PinnedVerifier {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates
            .iter()
            .find(|c| pki::digest(c) == self.digest)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's root does not match the join token's digest".into(),
                )
            })?;
        let mut r = RootCertStore::empty();
        r.add(root.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(r), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        RoleVerifier {
            inner: v,
            name: ServerName::try_from(pki::MANAGER_NAME)
                .map_err(|e| rustls::Error::General(format!("{}: {e}", pki::MANAGER_NAME)))?,
        }
        .verify_server_cert(end_entity, intermediates, dialled, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Which servers a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Any member (raft RPCs reach workers too).
    Node,
    /// A manager (the API, forwarded requests, joins).
    Manager,
}

impl Expect {
    fn name(self) -> &'static str {
        match self {
            Expect::Node => pki::NODE_NAME,
            Expect::Manager => pki::MANAGER_NAME,
        }
    }
}

/// A reqwest client over mutual TLS: trusts `ca_pems`, presents what `presented` holds.
pub fn http_client(
    ca_pems: &[String],
    presented: Arc<Presented>,
    expect: Expect,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, Error> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca_pems)?, provider())
        .build()
        .map_err(|e| tls_err("verifier", e))?;
    let verifier = Arc::new(RoleVerifier {
        inner,
        name: ServerName::try_from(expect.name()).map_err(|e| tls_err("server name", e))?,
    });
    build_client(verifier, Some(presented), timeout, None)
}

/// The client a joining node uses for its first contact: no certificate of its own, the
/// server verified by the root digest of the join token.
pub fn pinned_client(ca_digest: &str) -> Result<reqwest::Client, Error> {
    pinned_client_from(ca_digest, None)
}

/// [`pinned_client`] with a chosen source address.
pub fn pinned_client_from(
    ca_digest: &str,
    local: Option<std::net::IpAddr>,
) -> Result<reqwest::Client, Error> {
    let v = Arc::new(PinnedVerifier {
        digest: ca_digest.to_string(),
        provider: provider(),
    });
    build_client(v, None, Some(Duration::from_secs(10)), local)
}

fn build_client(
    verifier: Arc<dyn ServerCertVerifier>,
    presented: Option<Arc<Presented>>,
    timeout: Option<Duration>,
    local: Option<std::net::IpAddr>,
) -> Result<reqwest::Client, Error> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match presented {
        Some(p) => b.with_client_cert_resolver(p),
        None => b.with_no_client_auth(),
    };
    // The servers speak HTTP/1.1 only.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut rb = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(t) = timeout {
        rb = rb.timeout(t);
    }
    if local.is_some() {
        rb = rb.local_address(local);
    }
    rb.build().map_err(|e| Error::Transport(e.to_string()))
}

/// The server side: present `presented`, ask for (not require) a client certificate of
/// `ca_pems`'s roots.
pub fn server_config(
    ca_pems: &[String],
    presented: Arc<Presented>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let clients = WebPkiClientVerifier::builder_with_provider(roots(ca_pems)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_err("client verifier", e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(presented);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client credentials read from a directory as docker's `DOCKER_CERT_PATH`: `ca.pem`,
/// `cert.pem`, `key.pem`.
pub fn client_from_dir(
    dir: &std::path::Path,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, Error> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", dir.join(f).display())))
    };
    client_from_pems(
        &read("ca.pem")?,
        &read("cert.pem")?,
        &read("key.pem")?,
        timeout,
    )
}

/// A client of managers that trusts root `ca` and presents `cert`/`key`.
pub fn client_from_pems(
    ca: &str,
    cert: &str,
    key: &str,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, Error> {
    let p = Arc::new(Presented::default());
    p.set(Some(certified_key(&[cert], key)?));
    http_client(&[ca.to_string()], p, Expect::Manager, timeout)
}

/// What a member keeps locally (outside the replicated state) to talk to its peers before it
/// has applied anything: its cluster, the roots, its certificate and key.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct LocalTls {
    pub cluster_id: String,
    pub ca_certs: Vec<String>,
    pub cert_pem: String,
    pub key_pem: String,
    /// Presented between the certificate and the root (the cross-signed new root while the
    /// cluster's root rotates).
    #[serde(default)]
    pub chain: Vec<String>,
}

/// The TLS side of a member in use now.
pub(crate) struct Active {
    pub cluster_id: String,
    pub ca_certs: Vec<String>,
    pub identity: pki::Identity,
    pub server: Arc<rustls::ServerConfig>,
    /// Client of raft peers (any member).
    pub peers: reqwest::Client,
    /// Client of managers (forwarded requests, renewals).
    pub managers: reqwest::Client,
}

/// A member's credentials; none before it bootstraps or joins a cluster.
#[derive(Default)]
pub(crate) struct NodeTls {
    presented: Arc<Presented>,
    active: RwLock<Option<Arc<Active>>>,
}

impl NodeTls {
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts using `l`. A renewed certificate of the same roots only replaces the presented
    /// one: open connections and pooled clients stay as they are.
    pub fn install(&self, l: &LocalTls) -> Result<(), Error> {
        let root = l
            .ca_certs
            .first()
            .ok_or_else(|| Error::InvalidArgument("no root certificate".into()))?;
        let mut chain: Vec<&str> = vec![&l.cert_pem];
        chain.extend(l.chain.iter().map(String::as_str));
        chain.push(root);
        let key = certified_key(&chain, &l.key_pem)?;
        let identity = pki::identity(&pki::pem_to_der(&l.cert_pem)?)?;
        let mut g = self.active.write().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = g.as_ref()
            && a.ca_certs == l.ca_certs
            && a.cluster_id == l.cluster_id
        {
            // Same roots: only what is presented changes.
            self.presented.set(Some(key));
            *g = Some(Arc::new(Active {
                identity,
                cluster_id: a.cluster_id.clone(),
                ca_certs: a.ca_certs.clone(),
                server: a.server.clone(),
                peers: a.peers.clone(),
                managers: a.managers.clone(),
            }));
            return Ok(());
        }
        self.presented.set(Some(key));
        *g = Some(Arc::new(Active {
            cluster_id: l.cluster_id.clone(),
            ca_certs: l.ca_certs.clone(),
            identity,
            server: server_config(&l.ca_certs, self.presented.clone())?,
            peers: http_client(&l.ca_certs, self.presented.clone(), Expect::Node, None)?,
            managers: http_client(&l.ca_certs, self.presented.clone(), Expect::Manager, None)?,
        }));
        Ok(())
    }

    pub fn clear(&self) {
        self.presented.set(None);
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
