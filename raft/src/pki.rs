//! The cluster's certificate authority: its root, the certificates it issues to nodes and
//! admins, the identities read back from them, join tokens that pin the root, and the sealing
//! of the secrets only managers may read.
//!
//! A certificate's subject says who holds it: `CN` is the node id (or an admin's name), `OU`
//! its role, `O` the cluster. Every node certificate carries the DNS name [`NODE_NAME`]; a
//! manager's also [`MANAGER_NAME`], which is the name clients verify when they need a manager
//! (swarm does the same with `swarm-manager`): addresses change, the role is what matters.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// DNS name every node certificate carries (verified by raft peers).
pub const NODE_NAME: &str = "dcpp-node";
/// DNS name only manager certificates carry (verified by clients of the API).
pub const MANAGER_NAME: &str = "dcpp-manager";

/// What a certificate entitles its holder to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRole {
    /// A node that only runs tasks: heartbeats, its own task status, its own tasks.
    Worker,
    /// A raft voter: everything.
    Manager,
    /// A remote administrator (the CLI with `DCPP_CERT_PATH`): the whole API, no raft.
    Admin,
}

impl CertRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Worker => "worker",
            CertRole::Manager => "manager",
            CertRole::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<CertRole> {
        match s {
            "worker" => Some(CertRole::Worker),
            "manager" => Some(CertRole::Manager),
            "admin" => Some(CertRole::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: CertRole,
    /// The node id (decimal) of a node certificate, the name of an admin certificate.
    pub name: String,
    /// Hex of the serial number.
    pub serial: String,
    /// Validity, in seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The issuer's distinguished name (compare with [`subject`] of a root).
    pub issuer: String,
}

impl Identity {
    /// When the certificate was issued (see [`BACKDATE`]).
    pub fn issued_at(&self) -> i64 {
        self.not_before + BACKDATE
    }

    /// The node id of a node certificate.
    pub fn node_id(&self) -> Option<u64> {
        match self.role {
            CertRole::Admin => None,
            _ => self.name.parse().ok(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("not a dcpp certificate: {0}")]
    Foreign(String),
    #[error("invalid join token (want DCPP-1-<64 hex digits>-<secret>)")]
    BadToken,
    #[error("sealed secrets cannot be opened (wrong key or damaged data)")]
    Unseal,
    #[error("random number generator failed")]
    Random,
}

fn random<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| PkiError::Random)?;
    Ok(b)
}

/// A random secret as lowercase hex (join token secrets, admin names).
pub fn random_secret() -> Result<String, PkiError> {
    Ok(hex::encode(random::<16>()?))
}

/// The SHA-256 digest of a certificate's DER, as join tokens carry it.
pub fn digest(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// The DER of the first certificate of a PEM text.
pub fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Foreign(format!("PEM certificate: {e}")))
}

/// The cluster's root: its certificate and signing key. Lives only on managers.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

// Written by hand so that no `{:?}` can ever print the root key.
impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// How far a certificate's start is set back, so that a peer whose clock is slightly behind
/// accepts a certificate issued this instant. The issue time is `not_before + BACKDATE`.
pub const BACKDATE: i64 = 60;

/// How long a certificate is valid, in seconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    pub fn from_now(ttl: std::time::Duration) -> Validity {
        let now = now_secs();
        Validity {
            not_before: now - BACKDATE,
            not_after: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        }
    }
}

impl Ca {
    /// A new root for cluster `cluster_id`, valid for ten years.
    pub fn generate(cluster_id: &str) -> Result<Ca, PkiError> {
        Ok(Ca::generate_after(cluster_id, None)?.0)
    }

    /// A root that replaces `old`, and the same root signed by `old` (PEM): presented next to a
    /// certificate of the new root, it lets a client that trusts only the old root verify it.
    pub fn generate_replacing(cluster_id: &str, old: &Ca) -> Result<(Ca, String), PkiError> {
        let (ca, cross) = Ca::generate_after(cluster_id, Some(old))?;
        Ok((ca, cross.unwrap_or_default()))
    }

    fn generate_after(
        cluster_id: &str,
        old: Option<&Ca>,
    ) -> Result<(Ca, Option<String>), PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A generation tag: a rotated root must be told apart from the one it replaces.
        let generation = hex::encode(random::<4>()?);
        dn.push(
            DnType::CommonName,
            format!("dcpp cluster {cluster_id} root CA {generation}"),
        );
        dn.push(DnType::OrganizationName, format!("dcpp-{cluster_id}"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(SerialNumber::from_slice(&random::<16>()?));
        let v = Validity::from_now(std::time::Duration::from_secs(10 * 365 * 86400));
        p.not_before = at(v.not_before);
        p.not_after = at(v.not_after);
        let cert = p.self_signed(&key)?;
        let cross = match old {
            Some(old) => {
                p.serial_number = Some(SerialNumber::from_slice(&random::<16>()?));
                Some(p.signed_by(&key, &old.issuer()?)?.pem())
            }
            None => None,
        };
        Ok((
            Ca {
                cert_pem: cert.pem(),
                key,
            },
            cross,
        ))
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key: KeyPair::from_pem(key_pem)?,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root key as PEM (to be sealed, never written in the clear).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The digest join tokens carry.
    pub fn digest(&self) -> Result<String, PkiError> {
        Ok(digest(&pem_to_der(&self.cert_pem)?))
    }

    fn params(
        &self,
        role: CertRole,
        name: &str,
        cluster_id: &str,
        v: Validity,
    ) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, format!("dcpp-{cluster_id}"));
        p.distinguished_name = dn;
        let mut names = Vec::new();
        if role != CertRole::Admin {
            names.push(SanType::DnsName(NODE_NAME.try_into()?));
        }
        if role == CertRole::Manager {
            names.push(SanType::DnsName(MANAGER_NAME.try_into()?));
        }
        p.subject_alt_names = names;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = if role == CertRole::Admin {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(SerialNumber::from_slice(&random::<16>()?));
        p.not_before = at(v.not_before);
        p.not_after = at(v.not_after);
        Ok(p)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// Signs the key of a certificate request (whose signature proves the requester holds the
    /// key). Only the key is taken from the request: the subject is what the CA decides.
    pub fn sign_request(
        &self,
        csr_der: &[u8],
        role: CertRole,
        name: &str,
        cluster_id: &str,
        v: Validity,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))?;
        let p = self.params(role, name, cluster_id, v)?;
        Ok(p.signed_by(&csr.public_key, &self.issuer()?)?.pem())
    }

    /// A fresh key and its certificate (the bootstrap node's own, admin certificates).
    pub fn issue(
        &self,
        role: CertRole,
        name: &str,
        cluster_id: &str,
        v: Validity,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let p = self.params(role, name, cluster_id, v)?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A fresh key (PEM) and a certificate request for it (DER).
pub fn key_and_request() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Reads who a certificate names. Only the subject is read here; whether the certificate is
/// genuine is the TLS verifier's business.
pub fn identity(der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Foreign(format!("parse: {e}")))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let name = first(&mut subject.iter_common_name())
        .ok_or_else(|| PkiError::Foreign("no common name".into()))?;
    let role = first(&mut subject.iter_organizational_unit())
        .and_then(|r| CertRole::parse(&r))
        .ok_or_else(|| PkiError::Foreign("no dcpp role".into()))?;
    Ok(Identity {
        role,
        name,
        serial: hex::encode(cert.tbs_certificate.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer: cert.issuer().to_string(),
    })
}

/// A certificate's subject as [`Identity::issuer`] names it.
pub fn subject(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Foreign(format!("parse: {e}")))?;
    Ok(cert.subject().to_string())
}

/// A join token: the digest of the root the joiner must find, and the secret it proves its
/// admission with.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

// Written by hand so that a `{:?}` in a log line can never print the secret.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DCPP-1-{}-{}", self.ca_digest, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<JoinToken, PkiError> {
        let rest = s.trim().strip_prefix("DCPP-1-").ok_or(PkiError::BadToken)?;
        let (digest, secret) = rest.split_once('-').ok_or(PkiError::BadToken)?;
        let hexy = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        if digest.len() != 64 || !hexy(digest) || secret.len() < 16 || !hexy(secret) {
            return Err(PkiError::BadToken);
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

/// The key that seals what only managers may read (the root key, the join secrets). It is kept
/// in its own file, apart from the store that holds the sealed data.
pub struct SealKey([u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    pub fn generate() -> Result<SealKey, PkiError> {
        Ok(SealKey(random::<32>()?))
    }

    pub fn from_hex(s: &str) -> Result<SealKey, PkiError> {
        let b = hex::decode(s.trim()).map_err(|_| PkiError::Unseal)?;
        Ok(SealKey(b.try_into().map_err(|_| PkiError::Unseal)?))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn key(&self) -> Result<LessSafeKey, PkiError> {
        Ok(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0).map_err(|_| PkiError::Unseal)?,
        ))
    }

    /// AES-256-GCM with a random nonce; hex of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, plain: &[u8]) -> Result<String, PkiError> {
        self.seal_for(b"dcpp-sealed-v1", plain)
    }

    /// [`SealKey::seal`] bound to `context` (authenticated, not encrypted): what was sealed
    /// for one context does not open for another, so a sealed value cannot be moved to
    /// another object in the store.
    pub fn seal_for(&self, context: &[u8], plain: &[u8]) -> Result<String, PkiError> {
        let nonce = random::<NONCE_LEN>()?;
        let mut buf = plain.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| PkiError::Unseal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(hex::encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, PkiError> {
        self.open_for(b"dcpp-sealed-v1", sealed)
    }

    /// Opens what [`SealKey::seal_for`] sealed for the same `context`.
    pub fn open_for(&self, context: &[u8], sealed: &str) -> Result<Vec<u8>, PkiError> {
        let raw = hex::decode(sealed).map_err(|_| PkiError::Unseal)?;
        if raw.len() < NONCE_LEN {
            return Err(PkiError::Unseal);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| PkiError::Unseal)?;
        let mut buf = ct.to_vec();
        let plain = self
            .key()?
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| PkiError::Unseal)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_role_and_node_and_expire_as_asked() {
        let ca = Ca::generate("c1").unwrap();
        let v = Validity {
            not_before: 1_000_000,
            not_after: 2_000_000,
        };
        let (key, csr) = key_and_request().unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let pem = ca
            .sign_request(&csr, CertRole::Worker, "42", "c1", v)
            .unwrap();
        let id = identity(&pem_to_der(&pem).unwrap()).unwrap();
        assert_eq!(id.role, CertRole::Worker);
        assert_eq!(id.node_id(), Some(42));
        assert_eq!((id.not_before, id.not_after), (1_000_000, 2_000_000));
        let (admin, _) = ca.issue(CertRole::Admin, "ops", "c1", v).unwrap();
        let a = identity(&pem_to_der(&admin).unwrap()).unwrap();
        assert_eq!(
            (a.role, a.name.as_str(), a.node_id()),
            (CertRole::Admin, "ops", None)
        );
        assert_ne!(a.serial, id.serial);
        // A request whose signature does not match its key is refused.
        let mut bad = csr.clone();
        let n = bad.len();
        bad[n - 3] ^= 0xff;
        assert!(
            ca.sign_request(&bad, CertRole::Manager, "1", "c1", v)
                .is_err()
        );
        // The root itself carries no dcpp role.
        assert!(identity(&pem_to_der(ca.cert_pem()).unwrap()).is_err());
    }

    #[test]
    fn a_ca_survives_its_pem_round_trip() {
        let ca = Ca::generate("c1").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.digest().unwrap(), ca.digest().unwrap());
        let v = Validity::from_now(std::time::Duration::from_secs(60));
        again.issue(CertRole::Manager, "1", "c1", v).unwrap();
    }

    #[test]
    fn join_tokens_parse_only_in_their_one_form() {
        let t = JoinToken {
            ca_digest: "ab".repeat(32),
            secret: "0123456789abcdef0123456789abcdef".into(),
        };
        let s = t.to_string();
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "DCPP-1-",
            "DCPP-2-abab-0123456789abcdef",
            &format!("DCPP-1-{}-short", "ab".repeat(32)),
            &format!("DCPP-1-{}-0123456789abcdef", "zz".repeat(32)),
            "DCPP-1-M-0123456789abcdef0123456789abcdef",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sealed_data_opens_only_with_its_key() {
        let k = SealKey::generate().unwrap();
        let s = k.seal(b"root key").unwrap();
        assert!(!s.contains(&hex::encode(b"root key")));
        assert_eq!(k.open(&s).unwrap(), b"root key");
        assert_eq!(
            SealKey::from_hex(&k.to_hex()).unwrap().open(&s).unwrap(),
            b"root key"
        );
        let other = SealKey::generate().unwrap();
        assert!(other.open(&s).is_err());
        let mut damaged = s.clone().into_bytes();
        let last = damaged.len() - 1;
        damaged[last] = if damaged[last] == b'0' { b'1' } else { b'0' };
        assert!(k.open(std::str::from_utf8(&damaged).unwrap()).is_err());
        assert!(k.open("zz").is_err() && k.open("").is_err());
    }

    #[test]
    fn data_sealed_for_one_context_opens_for_no_other() {
        let k = SealKey::generate().unwrap();
        let s = k.seal_for(b"secret/db/1", b"pw").unwrap();
        assert_eq!(k.open_for(b"secret/db/1", &s).unwrap(), b"pw");
        assert!(k.open_for(b"secret/db/2", &s).is_err());
        assert!(k.open_for(b"secret/other/1", &s).is_err());
        assert!(k.open(&s).is_err(), "a secret is no cluster credential");
    }
}
