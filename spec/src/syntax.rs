//! Parsers for compose's short syntaxes: ports, volumes, shell words, modes.

use crate::model::{BindOptions, Extensions, Port, ServiceVolume, VolumeOptions, VolumeType};

/// A short syntax that does not parse; the messages name the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SyntaxError {
    #[error("unterminated single quote in {0:?}")]
    UnterminatedSingleQuote(String),
    #[error("unterminated double quote in {0:?}")]
    UnterminatedDoubleQuote(String),
    #[error("invalid port {0:?}")]
    Port(String),
    #[error("invalid port {spec:?}: unknown protocol {protocol:?}")]
    PortProtocol { spec: String, protocol: String },
    #[error("invalid port {spec:?}: invalid IP address {ip:?}")]
    PortAddress { spec: String, ip: String },
    #[error("invalid port {0:?}: host and container port ranges have different sizes")]
    PortRanges(String),
    #[error("invalid volume {0:?}: too many colons")]
    VolumeColons(String),
    #[error("invalid volume {0:?}: empty section")]
    VolumeEmpty(String),
    #[error("invalid volume {spec:?}: unknown mode {mode:?}")]
    VolumeMode { spec: String, mode: String },
}

pub(crate) const PROPAGATIONS: &[&str] = &[
    "shared", "rshared", "slave", "rslave", "private", "rprivate",
];

/// Splits a command string with POSIX shell quoting rules (no expansion), as compose does.
pub(crate) fn shell_split(s: &str) -> Result<Vec<String>, SyntaxError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(SyntaxError::UnterminatedSingleQuote(s.to_owned())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(SyntaxError::UnterminatedDoubleQuote(s.to_owned())),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(SyntaxError::UnterminatedDoubleQuote(s.to_owned())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => cur.push('\\'),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A port number 1..=65535.
pub(crate) fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p > 0)
}

fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(a)?, port_number(b)?);
            (a <= b).then_some((a, b))
        }
        None => port_number(s).map(|p| (p, p)),
    }
}

/// `"8080"` or `"8000-8010"`.
pub(crate) fn valid_published(s: &str) -> bool {
    port_range(s).is_some()
}

/// `expose` entries: `"80"`, `"8000-8010"`, optionally `/tcp|udp|sctp`.
pub(crate) fn valid_expose(s: &str) -> bool {
    let (p, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    port_range(p).is_some() && matches!(proto, "tcp" | "udp" | "sctp")
}

/// Short port syntax: `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTOCOL]`, IPv6 host
/// addresses in brackets. A range pairs host and container ports one to one; a host range with
/// a single container port stays one entry whose `published` is the range.
pub(crate) fn parse_port(spec: &str) -> Result<Vec<Port>, SyntaxError> {
    let invalid = || SyntaxError::Port(spec.to_owned());
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p)) => {
            let p = p.to_ascii_lowercase();
            if !matches!(p.as_str(), "tcp" | "udp" | "sctp") {
                return Err(SyntaxError::PortProtocol {
                    spec: spec.to_owned(),
                    protocol: p,
                });
            }
            (r, p)
        }
        None => (spec, "tcp".to_owned()),
    };
    let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r.split_once(']').ok_or_else(invalid)?;
        let after = after.strip_prefix(':').ok_or_else(invalid)?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(SyntaxError::PortAddress {
                spec: spec.to_owned(),
                ip: ip.to_owned(),
            });
        }
        (Some(ip.to_owned()), after)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (None, rest),
            3 => {
                let ip = parts[0];
                if ip.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err(SyntaxError::PortAddress {
                        spec: spec.to_owned(),
                        ip: ip.to_owned(),
                    });
                }
                (Some(ip.to_owned()), &rest[ip.len() + 1..])
            }
            _ => return Err(invalid()),
        }
    };
    let (host, container) = match rest.rsplit_once(':') {
        Some((h, c)) => (h, c),
        None => ("", rest),
    };
    if host_ip.is_some() && rest.split(':').count() != 2 {
        return Err(invalid());
    }
    let (c0, c1) = port_range(container).ok_or_else(invalid)?;
    let mk = |target: u16, published: Option<String>| Port {
        name: None,
        mode: "ingress".to_owned(),
        host_ip: host_ip.clone(),
        target,
        published,
        protocol: protocol.clone(),
        app_protocol: None,
        extensions: Extensions::new(),
    };
    if host.is_empty() {
        return Ok((c0..=c1).map(|t| mk(t, None)).collect());
    }
    let (h0, h1) = port_range(host).ok_or_else(invalid)?;
    let (clen, hlen) = (c1 - c0, h1 - h0);
    if clen == hlen {
        Ok((0..=clen)
            .map(|i| mk(c0 + i, Some((h0 + i).to_string())))
            .collect())
    } else if clen == 0 {
        Ok(vec![mk(c0, Some(host.to_owned()))])
    } else {
        Err(SyntaxError::PortRanges(spec.to_owned()))
    }
}

/// Short volume syntax: `[SOURCE:]TARGET[:MODE]`. A source starting with `.`, `/` or `~` is a
/// bind mount (relative paths are made absolute by the caller); otherwise a named volume.
/// A short volume's sections, split at its colons as compose-go's ParseVolume splits them: the
/// colon of a Windows drive (`C:\`, or `d:` ending the entry) belongs to its path. compose-go
/// also reads `a:/x` as a drive; dcpp runs Linux containers and reads it as volume `a` at `/x`.
fn volume_parts(spec: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in spec.char_indices() {
        if c != ':' {
            continue;
        }
        let section = &spec[start..i];
        let mut chars = section.chars();
        let letter = matches!((chars.next(), chars.next()), (Some(l), None) if l.is_alphabetic());
        let rest = &spec[i + 1..];
        let drive = letter && (rest.is_empty() || rest.starts_with('\\'));
        if !drive {
            parts.push(section);
            start = i + 1;
        }
    }
    parts.push(&spec[start..]);
    parts
}

/// A Windows path as compose-go tells one apart: a drive (`C:`, `d:\x`, `c:/x`) or a named
/// pipe (`\\.\pipe\x`).
pub(crate) fn windows_path(s: &str) -> bool {
    let mut chars = s.chars();
    s.starts_with(r"\\")
        || matches!((chars.next(), chars.next()), (Some(l), Some(':')) if l.is_ascii_alphabetic())
}

pub(crate) fn parse_volume(spec: &str) -> Result<ServiceVolume, SyntaxError> {
    let parts = volume_parts(spec);
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => return Err(SyntaxError::VolumeColons(spec.to_owned())),
    };
    if target.is_empty() || source.is_some_and(str::is_empty) {
        return Err(SyntaxError::VolumeEmpty(spec.to_owned()));
    }
    let is_path =
        |s: &str| s.starts_with('.') || s.starts_with('/') || s.starts_with('~') || windows_path(s);
    let kind = match source {
        Some(s) if is_path(s) => VolumeType::Bind,
        _ => VolumeType::Volume,
    };
    let mut v = ServiceVolume {
        kind,
        source: source.map(str::to_owned),
        target: target.to_owned(),
        read_only: false,
        bind: None,
        volume: None,
        tmpfs: None,
        extensions: Extensions::new(),
    };
    let mut bind = BindOptions {
        create_host_path: kind == VolumeType::Bind,
        ..BindOptions::default()
    };
    let mut vol = VolumeOptions::default();
    for m in mode.into_iter().flat_map(|m| m.split(',')) {
        match m {
            "ro" => v.read_only = true,
            "rw" => v.read_only = false,
            "z" | "Z" if kind == VolumeType::Bind => bind.selinux = Some(m.to_owned()),
            "nocopy" if kind == VolumeType::Volume => vol.nocopy = true,
            p if PROPAGATIONS.contains(&p) && kind == VolumeType::Bind => {
                bind.propagation = Some(p.to_owned())
            }
            "consistent" | "cached" | "delegated" => {}
            other => {
                return Err(SyntaxError::VolumeMode {
                    spec: spec.to_owned(),
                    mode: other.to_owned(),
                });
            }
        }
    }
    if kind == VolumeType::Bind {
        v.bind = Some(bind);
    } else if vol != VolumeOptions::default() {
        v.volume = Some(vol);
    }
    Ok(v)
}

/// `no`, `always`, `on-failure`, `on-failure:N`, `unless-stopped`.
pub(crate) fn valid_restart(s: &str) -> bool {
    match s {
        "no" | "always" | "on-failure" | "unless-stopped" => true,
        _ => s
            .strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
    }
}

/// `<attribute>==<value>` or `<attribute>!=<value>`.
pub(crate) fn valid_constraint(s: &str) -> bool {
    let Some((a, b)) = s.split_once("==").or_else(|| s.split_once("!=")) else {
        return false;
    };
    !a.trim().is_empty() && !b.trim().is_empty()
}

/// File modes: YAML-1.1-style octal with a leading `0` (`0440`), `0o440`, or decimal.
pub(crate) fn parse_mode(s: &str) -> Option<u32> {
    let m = if let Some(o) = s.strip_prefix("0o") {
        u32::from_str_radix(o, 8).ok()?
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse::<u32>().ok()?
    };
    (m <= 0o7777).then_some(m)
}

/// A file mode given as a string: octal digits, with or without a `0` or `0o` prefix.
pub(crate) fn parse_octal_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// `a.b.c.d/n` or an IPv6 CIDR.
pub(crate) fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits <= 32,
        Ok(std::net::IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

/// A `devices:` entry, `HOST[:CONTAINER[:PERMISSIONS]]`: absolute paths, permissions a
/// non-empty set of `r`, `w`, `m`.
pub fn check_device(entry: &str) -> Result<(), &'static str> {
    let mut parts = entry.split(':');
    let host = parts.next().unwrap_or_default();
    let container = parts.next();
    let perms = parts.next();
    if parts.next().is_some() {
        return Err("use HOST[:CONTAINER[:PERMISSIONS]]");
    }
    if !host.starts_with('/') || container.is_some_and(|c| !c.starts_with('/')) {
        return Err("device paths must be absolute");
    }
    if let Some(p) = perms
        && (p.is_empty() || !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')))
    {
        return Err("permissions are a combination of r, w and m");
    }
    Ok(())
}

/// The container path of a `devices:` entry, which compose merges and de-duplicates by: the
/// host path when the entry names no other.
pub fn device_target(entry: &str) -> &str {
    let mut parts = entry.split(':');
    let host = parts.next().unwrap_or_default();
    parts.next().unwrap_or(host)
}

/// A `volumes_from:` entry: `SERVICE[:MODE]` or `container:NAME[:MODE]`, MODE `ro` or `rw`.
pub fn check_volumes_from(entry: &str) -> Result<(), &'static str> {
    let rest = entry.strip_prefix("container:").unwrap_or(entry);
    let (name, mode) = match rest.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (rest, None),
    };
    if name.is_empty() {
        return Err("use SERVICE[:ro|rw] or container:NAME[:ro|rw]");
    }
    if mode.is_some_and(|m| m != "ro" && m != "rw") {
        return Err("the mode is ro or rw");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_split(r#"sh -c "echo \"hi there\"" 'a b' c\ d"#).unwrap(),
            vec!["sh", "-c", "echo \"hi there\"", "a b", "c d"]
        );
        assert_eq!(shell_split("  ").unwrap(), Vec::<String>::new());
        assert_eq!(shell_split("''").unwrap(), vec![""]);
        assert!(shell_split("echo 'oops").is_err());
    }

    fn short(p: &Port) -> String {
        format!(
            "{}|{}|{}|{}",
            p.host_ip.clone().unwrap_or_default(),
            p.published.clone().unwrap_or_default(),
            p.target,
            p.protocol
        )
    }

    #[test]
    fn ports() {
        let cases: &[(&str, &[&str])] = &[
            ("80", &["||80|tcp"]),
            ("8080:80", &["|8080|80|tcp"]),
            ("127.0.0.1:8080:80/udp", &["127.0.0.1|8080|80|udp"]),
            ("127.0.0.1::80", &["127.0.0.1||80|tcp"]),
            ("[::1]:8080:80", &["::1|8080|80|tcp"]),
            ("8000-8001:90-91", &["|8000|90|tcp", "|8001|91|tcp"]),
            ("8000-8010:80", &["|8000-8010|80|tcp"]),
            ("90-91", &["||90|tcp", "||91|tcp"]),
        ];
        for (spec, want) in cases {
            let got: Vec<String> = parse_port(spec).unwrap().iter().map(short).collect();
            assert_eq!(&got, want, "{spec}");
        }
        for bad in [
            "80:xx",
            "",
            "0",
            "70000",
            "1:2:3:4",
            "80/foo",
            "8000-8002:90-91",
            "x.y:80:80",
            "9-8",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let v = parse_volume("./data:/data:ro,z").unwrap();
        assert_eq!(v.kind, VolumeType::Bind);
        assert!(v.read_only);
        assert_eq!(v.bind.unwrap().selinux.as_deref(), Some("z"));
        let v = parse_volume("db:/var/lib/db:nocopy").unwrap();
        assert_eq!(v.kind, VolumeType::Volume);
        assert!(v.volume.unwrap().nocopy);
        let v = parse_volume("/anon").unwrap();
        assert_eq!((v.kind, v.source), (VolumeType::Volume, None));
        assert!(parse_volume("a:b:c:d").is_err());
        assert!(parse_volume("a:/b:bogus").is_err());
        assert!(parse_volume(":/b").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0440"), Some(0o440));
        assert_eq!(parse_mode("0o755"), Some(0o755));
        assert_eq!(parse_mode("288"), Some(288));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_octal_mode("440"), Some(0o440));
        assert_eq!(parse_octal_mode("0440"), Some(0o440));
        assert_eq!(parse_octal_mode("0o755"), Some(0o755));
        assert_eq!(parse_octal_mode("288"), None);
        assert_eq!(parse_octal_mode("+44"), None);
    }
}
