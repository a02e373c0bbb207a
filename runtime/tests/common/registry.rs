//! A real CNCF distribution registry (Debian's `docker-registry`) on a free 127.0.0.1 port,
//! with its own temporary storage; killed and cleaned up on drop.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/docker-registry";

/// Why a started registry did not answer. (No derive: the binary's tests include this file too,
/// and that crate does not depend on thiserror.)
#[derive(Debug)]
enum NotReady {
    /// The process ended.
    Exited(std::process::ExitStatus),
    /// It never answered `/v2/`.
    TimedOut,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "exited with {status}"),
            NotReady::TimedOut => f.write_str("timed out waiting for /v2/"),
        }
    }
}

impl std::error::Error for NotReady {}

pub struct Registry {
    /// `127.0.0.1:<port>`, usable as the registry part of a reference.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// Options for [`Registry::start_with`].
#[derive(Default)]
pub struct RegistryOptions {
    /// Contents of an htpasswd file (bcrypt entries); enables basic auth.
    pub htpasswd: Option<String>,
    /// Bearer token auth against a token server (`auth: token:` in the registry config).
    pub token: Option<TokenAuth>,
}

/// The registry side of docker's token auth.
pub struct TokenAuth {
    /// URL of the token endpoint clients are sent to.
    pub realm: String,
    /// Must match the token's `aud`.
    pub service: String,
    /// Must match the token's `iss`.
    pub issuer: String,
    /// PEM certificate(s) whose keys may sign tokens.
    pub root_cert_pem: String,
}

impl Registry {
    /// Start an anonymous registry.
    pub fn start() -> Registry {
        Self::start_with(RegistryOptions::default())
    }

    pub fn start_with(opts: RegistryOptions) -> Registry {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} missing: install Debian's docker-registry (scripts/setup.sh)"
        );
        let mut last_err = String::new();
        // A port found free can be taken by someone else before the registry binds it: retry.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("dcpp-registry-")
                .tempdir()
                .expect("temp dir");
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let storage = dir.path().join("storage");
            fs::create_dir(&storage).unwrap();
            let mut auth = String::new();
            if let Some(h) = &opts.htpasswd {
                let hp = dir.path().join("htpasswd");
                fs::write(&hp, h).unwrap();
                auth = format!(
                    "auth:\n  htpasswd:\n    realm: dcpp-test\n    path: {}\n",
                    hp.display()
                );
            }
            if let Some(t) = &opts.token {
                let cert = dir.path().join("token-root.pem");
                fs::write(&cert, &t.root_cert_pem).unwrap();
                auth = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                     rootcertbundle: {}\n",
                    t.realm,
                    t.service,
                    t.issuer,
                    cert.display()
                );
            }
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: dcpp-test-secret\n{auth}",
                storage.display()
            );
            let cfg = dir.path().join("config.yml");
            fs::write(&cfg, config).unwrap();
            let log = fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new(BINARY)
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = Registry { addr, child, dir };
            match reg.wait_ready() {
                Ok(()) => return reg,
                Err(e) => last_err = format!("{e}; log: {}", reg.log()),
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn wait_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(NotReady::Exited(status));
            }
            if let Ok((code, _)) = http_get(&self.addr, "/v2/")
                && (code == 200 || code == 401)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(NotReady::TimedOut)
    }

    /// Everything the registry logged so far (access log included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's storage root (filesystem driver layout).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Path of a blob's data file in the registry storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// How many GET requests for `digest`'s blob the registry served.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count()
    }

    /// `docker://127.0.0.1:port/<repo>` for skopeo.
    pub fn docker_url(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Minimal HTTP/1.0 GET (no extra client dependency): status code and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra request headers.
pub fn http_get_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| buf[p + 4..].to_vec())
        .unwrap_or_default();
    Ok((code, body))
}

/// Run `skopeo copy` with TLS verification off for our plain-HTTP loopback registry.
pub fn skopeo_copy(src: &str, dest: &str, extra: &[&str]) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .args(extra)
        .arg(src)
        .arg(dest)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy {src} {dest} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
