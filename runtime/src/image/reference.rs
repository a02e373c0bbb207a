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

/// Longest repository path docker accepts.
const NAME_MAX: usize = 255;

impl ImageRef {
    /// Parse like docker's `reference.ParseNormalizedNamed`. Hand-written rather than through
    /// oci-spec's `Reference::from_str`, whose regex takes ~50 ms of CPU to compile on first
    /// use — the whole cost of resolving an image in a fresh `dcpp container run` process.
    pub fn parse(s: &str) -> Result<ImageRef> {
        let bad = |reason: &str| ImageError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                super::digest::Digest::parse(d)?;
                (r, Some(d))
            }
            None => (s, None),
        };
        // A tag is the part after the last ':' that follows the last '/' (a ':' before a
        // '/' separates a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad("invalid tag format"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_domain(first) {
                    return Err(bad("invalid registry host"));
                }
                (first, remainder.to_string())
            }
            _ => ("docker.io", name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io"
        } else {
            registry
        };
        let path = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(bad("invalid reference format"));
        }
        if path.len() > NAME_MAX {
            return Err(bad("repository name must not be more than 255 characters"));
        }
        let (registry, repository) = (registry.to_string(), path);
        let inner = match (tag, digest) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
            (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
        };
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

/// `[a-z0-9]+ (separator [a-z0-9]+)*` with separators `.`, `_`, `__` or any run of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]`: DNS labels (`[A-Za-z0-9]`, inner `-`) joined by dots, an IPv4 address, or an
/// IPv6 address in brackets.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    host.is_empty() && d.starts_with('[')
        || !host.is_empty()
            && host.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !t.is_empty()
        && t.len() <= 128
        && word(t.as_bytes()[0])
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
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

    #[test]
    fn parses_like_docker() {
        let d = format!("sha256:{}", "f".repeat(64));
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("busybox", "docker.io", "library/busybox", Some("latest")),
            ("test.com:tag", "docker.io", "library/test.com", Some("tag")),
            (
                "test.com:5000",
                "docker.io",
                "library/test.com",
                Some("5000"),
            ),
            ("test.com/repo:tag", "test.com", "repo", Some("tag")),
            ("test:5000/repo", "test:5000", "repo", Some("latest")),
            (
                "localhost/a_b/c__d/e--f:1.0-x",
                "localhost",
                "a_b/c__d/e--f",
                Some("1.0-x"),
            ),
            (
                "index.docker.io/nginx",
                "docker.io",
                "library/nginx",
                Some("latest"),
            ),
            (
                "lowercase:Uppercase",
                "docker.io",
                "library/lowercase",
                Some("Uppercase"),
            ),
            (
                "Sub-Dom1.foo.com/bar/baz:t",
                "Sub-Dom1.foo.com",
                "bar/baz",
                Some("t"),
            ),
            ("[::1]:5000/x", "[::1]:5000", "x", Some("latest")),
            (
                "foo/foo_bar.com:8080",
                "docker.io",
                "foo/foo_bar.com",
                Some("8080"),
            ),
        ];
        for (input, reg, repo, tag) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (r.registry(), r.repository(), r.tag()),
                (*reg, *repo, *tag),
                "{input}"
            );
            assert_eq!(r.digest(), None);
        }
        let r = ImageRef::parse(&format!("test:5000/repo@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (None, Some(d.as_str())));
        assert_eq!(r.to_string(), format!("test:5000/repo@{d}"));
        for bad in [
            "",
            ":justtag",
            &format!("@{d}"),
            "a/",
            "/a",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a:",
            "a:-x",
            &format!("a:{}", "t".repeat(129)),
            "ex ample.com/x",
            "-bad.com/x",
            "host:port/x",
            "[::1/x",
            "[zz]:1/x",
            "a@sha256:ffff",
            &"a".repeat(256),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
