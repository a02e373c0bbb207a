//! The image config a build writes, by docker's rules for each instruction that changes it,
//! and the cache key of a step.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Command, Error};

/// What an image's config holds that a Dockerfile sets (the OCI config's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    pub user: String,
    pub exposed_ports: BTreeSet<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub volumes: BTreeSet<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
    pub healthcheck: Option<HealthConfig>,
    /// `SHELL`: empty means docker's default, `["/bin/sh", "-c"]`.
    pub shell: Vec<String>,
    pub author: String,
}

/// A healthcheck as the image config records it (durations in nanoseconds, 0 = default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", "…"]`.
    pub test: Vec<String>,
    pub interval_ns: u64,
    pub timeout_ns: u64,
    pub start_period_ns: u64,
    pub start_interval_ns: u64,
    pub retries: u32,
}

/// Where one stage's config stands: the config, and whether this stage set `CMD` (docker
/// clears an inherited `CMD` when a stage sets `ENTRYPOINT` without one).
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub image: ImageConfig,
    cmd_set: bool,
}

impl Config {
    /// A stage starting from `base`'s config.
    pub fn from_base(base: ImageConfig) -> Config {
        Config {
            image: base,
            cmd_set: false,
        }
    }

    /// The shell-form command as the process list it runs as.
    pub fn shell_words(&self, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = if self.image.shell.is_empty() {
                    vec!["/bin/sh".to_string(), "-c".to_string()]
                } else {
                    self.image.shell.clone()
                };
                v.push(s.clone());
                v
            }
        }
    }

    pub fn cmd(&mut self, c: &Command) {
        self.image.cmd = Some(self.shell_words(c));
        self.cmd_set = true;
    }

    pub fn entrypoint(&mut self, c: &Command) {
        self.image.entrypoint = Some(self.shell_words(c));
        if !self.cmd_set {
            self.image.cmd = None;
        }
    }

    /// `WORKDIR`: a relative path continues from the current one.
    pub fn workdir(&mut self, dir: &str) {
        let joined = if dir.starts_with('/') {
            dir.to_string()
        } else {
            let base = if self.image.working_dir.is_empty() {
                "/"
            } else {
                &self.image.working_dir
            };
            format!("{base}/{dir}")
        };
        self.image.working_dir = clean(&joined);
    }

    /// `EXPOSE`: `80`, `80/udp`, `8000-8002/tcp` (a range is every port in it).
    pub fn expose(&mut self, spec: &str) -> Result<(), Error> {
        let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        let proto = proto.to_ascii_lowercase();
        if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
            return Err(Error::Word(format!(
                "EXPOSE {spec}: unknown protocol {proto}"
            )));
        }
        let bad = || Error::Word(format!("EXPOSE {spec}: not a port or a port range"));
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        let (lo, hi) = match ports.split_once('-') {
            Some((a, b)) => (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?),
            None => {
                let p = port(ports).ok_or_else(bad)?;
                (p, p)
            }
        };
        if hi < lo {
            return Err(bad());
        }
        for p in lo..=hi {
            self.image.exposed_ports.insert(format!("{p}/{proto}"));
        }
        Ok(())
    }

    /// `STOPSIGNAL`: a name (`SIGQUIT`, `QUIT`) or a number.
    pub fn stop_signal(&mut self, s: &str) -> Result<(), Error> {
        let known = s.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n)) || {
            let name = s.to_ascii_uppercase();
            let name = name.strip_prefix("SIG").unwrap_or(&name).to_string();
            SIGNALS.contains(&name.as_str())
                || name
                    .strip_prefix("RTMIN+")
                    .or_else(|| name.strip_prefix("RTMAX-"))
                    .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 30))
        };
        if !known {
            return Err(Error::Word(format!("STOPSIGNAL {s}: unknown signal")));
        }
        self.image.stop_signal = s.to_string();
        Ok(())
    }

    /// `HEALTHCHECK`, its durations in Go's syntax (`30s`, `1m30s`, `500ms`).
    pub fn healthcheck(&mut self, h: &crate::Health) -> Result<(), Error> {
        self.image.healthcheck = Some(match h {
            crate::Health::None => HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            },
            crate::Health::Check {
                test,
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
            } => {
                let d = |what: &str, v: &Option<String>| -> Result<u64, Error> {
                    let Some(v) = v else { return Ok(0) };
                    let ns = go_duration(v).ok_or_else(|| {
                        Error::Word(format!(
                            "HEALTHCHECK --{what}={v}: not a duration (30s, 1m30s)"
                        ))
                    })?;
                    if ns < 1_000_000 {
                        return Err(Error::Word(format!(
                            "HEALTHCHECK --{what}={v}: cannot be less than 1ms"
                        )));
                    }
                    Ok(ns)
                };
                HealthConfig {
                    test: match test {
                        Command::Exec(v) => std::iter::once("CMD".to_string())
                            .chain(v.iter().cloned())
                            .collect(),
                        Command::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
                    },
                    interval_ns: d("interval", interval)?,
                    timeout_ns: d("timeout", timeout)?,
                    start_period_ns: d("start-period", start_period)?,
                    start_interval_ns: d("start-interval", start_interval)?,
                    retries: match retries {
                        None => 0,
                        Some(r) => r.parse().map_err(|_| {
                            Error::Word(format!("HEALTHCHECK --retries={r}: not a number ≥ 0"))
                        })?,
                    },
                }
            }
        });
        Ok(())
    }
}

const SIGNALS: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE",
    "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN",
    "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
];

/// A Go duration (`1h2m3.5s`, `300ms`, `2us`) in nanoseconds.
pub fn go_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total < u64::MAX as f64).then_some(total as u64)
}

/// A path with `.`, `..` and repeated slashes resolved, as Go's `path.Clean` (absolute).
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The cache key of one step: the layer it starts from, what the instruction does once
/// expanded (for `RUN` its environment, which holds the arguments in scope), and for
/// `COPY`/`ADD` the digest of the files it copies. Equal keys, equal results.
pub fn cache_key(parent: &str, step: &str, env: &[String], files: Option<&str>) -> String {
    let mut h = Sha256::new();
    // Lengths first, so that no two different inputs concatenate to the same bytes.
    for part in [parent, step]
        .into_iter()
        .chain(env.iter().map(String::as_str))
        .chain(files)
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update([u8::from(files.is_some())]);
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;

    #[test]
    fn cmd_and_entrypoint_follow_docker_s_rules() {
        let base = ImageConfig {
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let mut c = Config::from_base(base.clone());
        c.entrypoint(&Command::Exec(vec!["/init".into()]));
        assert_eq!(
            c.image.cmd, None,
            "an inherited CMD goes with a new ENTRYPOINT"
        );
        let mut c = Config::from_base(base);
        c.cmd(&Command::Shell("echo hi".into()));
        c.entrypoint(&Command::Exec(vec!["/init".into()]));
        assert_eq!(
            c.image.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]),
            "this stage's CMD stays"
        );
        c.image.shell = vec!["/bin/bash".into(), "-ec".into()];
        c.cmd(&Command::Shell("x".into()));
        assert_eq!(
            c.image.cmd,
            Some(vec!["/bin/bash".into(), "-ec".into(), "x".into()])
        );
    }

    #[test]
    fn workdir_expose_and_stopsignal() {
        let mut c = Config::default();
        c.workdir("app");
        assert_eq!(c.image.working_dir, "/app");
        c.workdir("../srv//./x/");
        assert_eq!(c.image.working_dir, "/srv/x");
        c.workdir("/abs");
        assert_eq!(c.image.working_dir, "/abs");
        c.expose("80").unwrap();
        c.expose("53/UDP").unwrap();
        c.expose("8000-8002/tcp").unwrap();
        assert_eq!(
            c.image.exposed_ports.iter().collect::<Vec<_>>(),
            ["53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"]
        );
        for bad in ["0", "70000", "80/icmp", "9-1", "x"] {
            assert!(c.expose(bad).is_err(), "{bad}");
        }
        for ok in ["SIGQUIT", "quit", "9", "SIGRTMIN+3"] {
            c.stop_signal(ok).unwrap();
        }
        assert!(c.stop_signal("SIGNOPE").is_err());
        assert!(c.stop_signal("65").is_err());
    }

    #[test]
    fn healthcheck_forms_and_durations() {
        let mut c = Config::default();
        c.healthcheck(&Health::Check {
            test: Command::Shell("wget -q localhost".into()),
            interval: Some("1m30s".into()),
            timeout: Some("500ms".into()),
            start_period: None,
            start_interval: None,
            retries: Some("3".into()),
        })
        .unwrap();
        let h = c.image.healthcheck.clone().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "wget -q localhost"]);
        assert_eq!(
            (h.interval_ns, h.timeout_ns, h.retries),
            (90_000_000_000, 500_000_000, 3)
        );
        c.healthcheck(&Health::None).unwrap();
        assert_eq!(c.image.healthcheck.unwrap().test, ["NONE"]);
        let bad = |interval: &str| Health::Check {
            test: Command::Exec(vec!["true".into()]),
            interval: Some(interval.into()),
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        };
        let mut c = Config::default();
        assert!(c.healthcheck(&bad("10")).is_err(), "a unit is needed");
        assert!(c.healthcheck(&bad("10us")).is_err(), "below 1ms");
        assert_eq!(go_duration("1h2m3.5s"), Some(3_723_500_000_000));
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn cache_keys_change_with_every_input_and_only_then() {
        let k = cache_key("sha256:p", "RUN make", &["A=1".into()], None);
        assert_eq!(k, cache_key("sha256:p", "RUN make", &["A=1".into()], None));
        assert!(k.starts_with("sha256:") && k.len() == 71);
        for other in [
            cache_key("sha256:q", "RUN make", &["A=1".into()], None),
            cache_key("sha256:p", "RUN make all", &["A=1".into()], None),
            cache_key("sha256:p", "RUN make", &["A=2".into()], None),
            cache_key("sha256:p", "RUN make", &[], None),
            cache_key("sha256:p", "RUN make", &["A=1".into()], Some("")),
            cache_key("sha256:p", "RUN make", &["A".into(), "=1".into()], None),
        ] {
            assert_ne!(k, other);
        }
    }
}
