//! Image references parsed and normalized the way docker does.

use std::fmt;

use oci_client::Reference;

use super::error::{ImageError, Result};

/// `[registry[:port]/]repo[:tag][@sha256:…]`, normalized: `busybox` is
/// `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let inner: Reference =
            s.parse()
                .map_err(|e: oci_client::ParseError| ImageError::InvalidReference {
                    reference: s.to_string(),
                    reason: e.to_string(),
                })?;
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageError::InvalidReference {
                reference: s.to_string(),
                reason: "repository name must be lowercase".into(),
            });
        }
        if let Some(d) = inner.digest() {
            super::digest::Digest::parse(d)?;
        }
        Ok(ImageRef { inner })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.inner.registry(), self.inner.repository())
    }

    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// `registry/repository:tag` — the key under which a tag is stored; `None` for
    /// digest-only references.
    pub fn tag_key(&self) -> Option<String> {
        self.inner.tag().map(|t| format!("{}:{t}", self.name()))
    }

    /// The registry host as a client must contact it (`docker.io` → `index.docker.io`).
    pub fn endpoint(&self) -> &str {
        self.inner.resolve_registry()
    }

    /// The same repository at `digest`.
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            inner: Reference::with_digest(
                self.inner.registry().to_string(),
                self.inner.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    pub(crate) fn oci(&self) -> &Reference {
        &self.inner
    }

    /// Whether the registry host is a loopback address (plain HTTP is allowed there).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.registry())
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = self.tag() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = self.digest() {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_normalization() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.endpoint(), "index.docker.io");
        let r = ImageRef::parse("user/app:1").unwrap();
        assert_eq!(r.to_string(), "docker.io/user/app:1");
        let d = format!("sha256:{}", "b".repeat(64));
        let r = ImageRef::parse(&format!("127.0.0.1:5000/a/b:t@{d}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(r.is_loopback());
        assert!(ImageRef::parse("localhost/x").unwrap().is_loopback());
        assert!(!ImageRef::parse("example.com:5000/x").unwrap().is_loopback());
        assert!(ImageRef::parse("UPPER/case").is_err());
        assert!(ImageRef::parse("x@sha256:1234").is_err());
    }
}
