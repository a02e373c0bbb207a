//! Registry credentials from the Docker CLI's `config.json`: `credHelpers` (per registry),
//! then `credsStore` (all registries), then inline `auths` — the order the Docker CLI uses.
//! Helpers are run as `docker-credential-<name> get` with the server on stdin and answer
//! `{"Username": …, "Secret": …}` on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::error::{ImageError, Result};

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// A credential helper's answer to `get`.
#[derive(Deserialize)]
struct HelperCredentials {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// What a helper is asked for: Docker Hub under its historical server URL, others by host.
fn helper_server(registry: &str) -> &str {
    if HUB.contains(&registry) {
        "https://index.docker.io/v1/"
    } else {
        registry
    }
}

/// Run `docker-credential-<helper> get` for `registry`. `Ok(None)` when the helper has no
/// credentials for it (anonymous access then).
fn run_helper(file: &Path, helper: &str, registry: &str) -> Result<Option<RegistryAuth>> {
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| ImageError::Credentials {
        path: file.to_path_buf(),
        reason: format!("credential helper {program} for {registry}: {reason}"),
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                fail("not found on PATH".into())
            } else {
                fail(e.to_string())
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is judged by its exit status below.
        let _ = stdin.write_all(helper_server(registry).as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // docker-credential-helpers' "not found" answer (exit 1, message on stdout).
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = [stdout.trim(), stderr.trim()]
            .into_iter()
            .find(|m| !m.is_empty())
            .and_then(|m| m.lines().next())
            .unwrap_or("no output")
            .to_string();
        return Err(fail(format!("{}: {msg}", out.status)));
    }
    let creds: HelperCredentials =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("bad answer: {e}")))?;
    if creds.secret.is_empty() {
        return Ok(None);
    }
    // `<token>` marks an identity token; it goes where the password goes in the token
    // request, as for `identitytoken` in `auths`.
    Ok(Some(RegistryAuth::Basic(creds.username, creds.secret)))
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_auth_file() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Strip scheme and path from an `auths` key (`https://index.docker.io/v1/` → `index.docker.io`).
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Credentials for `registry` (as in a reference: `docker.io`, `host:port`) from `file`;
/// anonymous when the file or an entry is missing. A malformed file is an error, so a typo
/// does not silently turn into anonymous access.
pub fn lookup(file: Option<&Path>, registry: &str) -> Result<RegistryAuth> {
    let Some(file) = file else {
        return Ok(RegistryAuth::Anonymous);
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => {
            return Err(ImageError::Credentials {
                path: file.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let cfg: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Credentials {
            path: file.to_path_buf(),
            reason: e.to_string(),
        })?;
    let wanted = |host: &str| host == registry || (HUB.contains(&registry) && HUB.contains(&host));
    let helper = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| wanted(key_host(k)))
        .map(|(_, v)| v)
        .or(cfg.creds_store.as_ref())
        .filter(|h| !h.is_empty());
    if let Some(h) = helper {
        return Ok(run_helper(file, h, registry)?.unwrap_or(RegistryAuth::Anonymous));
    }
    let Some(entry) = cfg
        .auths
        .iter()
        .find(|(k, _)| wanted(key_host(k)))
        .map(|(_, v)| v)
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(t) = &entry.registrytoken {
        return Ok(RegistryAuth::Bearer(t.clone()));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    if let Some(a) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ImageError::Credentials {
                path: file.to_path_buf(),
                reason: format!("auths.{registry}.auth is not base64 of user:password"),
            })?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| ImageError::Credentials {
                path: file.to_path_buf(),
                reason: format!("auths.{registry}.auth is not user:password"),
            })?;
        // An identity token (from `docker login` with an OAuth provider) replaces the password
        // in the token request; the username is then `<token>`.
        if let Some(t) = &entry.identitytoken {
            return Ok(RegistryAuth::Basic(u.to_string(), t.clone()));
        }
        return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        assert!(
            matches!(lookup(Some(&f), "docker.io").unwrap(), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        assert!(
            matches!(lookup(Some(&f), "127.0.0.1:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "a" && p == "b")
        );
        assert!(matches!(
            lookup(Some(&f), "other:1").unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(matches!(
            lookup(Some(&dir.path().join("nope")), "x").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(&f, "{not json").unwrap();
        assert!(lookup(Some(&f), "x").is_err());
    }
}
