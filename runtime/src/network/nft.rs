//! The nftables table this dcpp instance owns: published ports (DNAT), loopback and outbound
//! masquerade, and isolation between networks.
//!
//! The whole table is rendered from the persisted state and replaced in one `nft -f -`
//! transaction (`table …; delete table …; table … { … }`), so a change for one container adds or
//! removes exactly its rules, atomically, and a restart after a crash converges to the state
//! file.
//!
//! Isolation does not rest on the host's `ip_forward` being off: the `forward` chain drops
//! traffic between this instance's networks (and, for internal networks, everything leaving or
//! entering them) whatever the sysctl says. It does not accept anything for other tables either:
//! in nftables a packet accepted by one base chain is still evaluated by every other base chain
//! of the hook, so on a host where docker runs (an `iptables` `FORWARD` chain with policy DROP,
//! `br_netfilter` making bridged frames traverse it) the containers' traffic would be dropped
//! there. Then, and only then, dcpp inserts its own accept rules into that chain (through
//! `iptables-restore`, which works with both iptables backends), tagged with a comment naming
//! its table, and removes them with its networks ([`sync_iptables_forward`]). Nothing else of
//! other tables is touched.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::Error;
use super::ipam::Ipv4Net;
use super::state::Protocol;

/// One bridge as the ruleset needs it.
#[derive(Debug, Clone)]
pub struct BridgeRule {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub internal: bool,
}

/// One published host port with every backend sharing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub protocol: Protocol,
    /// Container address and port, one per replica.
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// The routing mesh as this node forwards it: ports without a local replica go to other
/// nodes through the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRules {
    /// Interface holding this node's underlay address.
    pub uplink: String,
    /// dcpp turned forwarding on for the uplink: forward nothing through it but the mesh's
    /// connections (and replies to the containers'), as before.
    pub guard: bool,
    pub ports: Vec<MeshRule>,
}

/// One port this node forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRule {
    pub port: u16,
    pub protocol: Protocol,
    /// Nodes' underlay addresses, one entry per serving replica there.
    pub to: Vec<Ipv4Addr>,
}

fn set_of(ips: &[Ipv4Addr]) -> String {
    let mut v: Vec<String> = ips.iter().map(ToString::to_string).collect();
    v.sort();
    v.dedup();
    format!("{{ {} }}", v.join(", "))
}

/// Renders the nft script that replaces table `ip <table>`.
pub fn render(
    table: &str,
    bridges: &[BridgeRule],
    ports: &[PortRule],
    mesh: Option<&MeshRules>,
    masquerade: bool,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{"
    );
    // Only traffic to this machine's own addresses is translated; everything else passes.
    s.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump ports\n  }\n",
    );
    s.push_str(
        "  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump ports\n  }\n",
    );
    s.push_str("  chain ports {\n");
    for p in ports {
        if p.backends.is_empty() {
            continue;
        }
        s.push_str("    ");
        if let Some(ip) = p.host_ip {
            let _ = write!(s, "ip daddr {ip} ");
        }
        let _ = write!(s, "{} dport {} dnat ip to ", p.protocol, p.host_port);
        if let [(ip, port)] = p.backends.as_slice() {
            let _ = writeln!(s, "{ip}:{port}");
        } else {
            // Round robin over the replicas; conntrack keeps each connection on its backend.
            let _ = write!(s, "numgen inc mod {} map {{ ", p.backends.len());
            let entries: Vec<String> = p
                .backends
                .iter()
                .enumerate()
                .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                .collect();
            let _ = writeln!(s, "{} }}", entries.join(", "));
        }
    }
    for r in mesh.iter().flat_map(|m| m.ports.iter()) {
        if r.to.is_empty() {
            continue;
        }
        // Loopback clients are left out: their source cannot leave the machine. Connections
        // another node forwarded are forwarded again only while this node's view differs from
        // that node's (under a second); each hop lowers the TTL, so none circles for long.
        let _ = write!(
            s,
            "    ip daddr != 127.0.0.0/8 {} dport {} dnat ip to ",
            r.protocol, r.port
        );
        if let [ip] = r.to.as_slice() {
            let _ = writeln!(s, "{ip}");
        } else {
            let entries: Vec<String> =
                r.to.iter()
                    .enumerate()
                    .map(|(i, ip)| format!("{i} : {ip}"))
                    .collect();
            let _ = writeln!(
                s,
                "numgen inc mod {} map {{ {} }}",
                r.to.len(),
                entries.join(", ")
            );
        }
    }
    s.push_str("  }\n");
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for b in bridges {
        // Connections to a published port on 127.0.0.1 keep their loopback source after DNAT;
        // the container could not answer it, so it is rewritten to the gateway address.
        let _ = writeln!(
            s,
            "    oifname \"{}\" ip saddr 127.0.0.0/8 masquerade",
            b.bridge
        );
        // A container reaching a published port of its own network through a host address: the
        // backend would answer the client directly, bypassing the reverse NAT, so the client
        // is made to appear as the gateway.
        let _ = writeln!(
            s,
            "    oifname \"{0}\" ip saddr {1} ct status dnat masquerade",
            b.bridge, b.subnet
        );
        if masquerade && !b.internal {
            let _ = writeln!(
                s,
                "    ip saddr {} oifname != \"{}\" masquerade",
                b.subnet, b.bridge
            );
        }
    }
    for (m, r) in mesh
        .iter()
        .flat_map(|m| m.ports.iter().map(move |r| (m, r)))
    {
        if r.to.is_empty() {
            continue;
        }
        // The answer must come back through this node to be translated back for the client,
        // so the forwarded connection leaves with this node's address.
        let _ = writeln!(
            s,
            "    oifname \"{}\" ip daddr {} {} dport {} ct status dnat masquerade",
            m.uplink,
            set_of(&r.to),
            r.protocol,
            r.port
        );
    }
    s.push_str("  }\n");
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    let names: BTreeMap<&str, &BridgeRule> =
        bridges.iter().map(|b| (b.bridge.as_str(), b)).collect();
    for b in bridges.iter().filter(|b| b.internal) {
        let _ = writeln!(s, "    iifname \"{0}\" oifname != \"{0}\" drop", b.bridge);
        let _ = writeln!(s, "    oifname \"{0}\" iifname != \"{0}\" drop", b.bridge);
    }
    // A published port is public, also to containers of other networks (through a host
    // address); everything else between two networks is dropped below.
    if bridges.iter().any(|b| !b.internal) || mesh.is_some() {
        s.push_str("    ct status dnat accept\n");
    }
    if let Some(m) = mesh.filter(|m| m.guard) {
        let own: Vec<String> = names.keys().map(|n| format!("\"{n}\"")).collect();
        if own.is_empty() {
            let _ = writeln!(s, "    iifname \"{}\" drop", m.uplink);
        } else {
            let _ = writeln!(
                s,
                "    iifname \"{}\" oifname != {{ {} }} drop",
                m.uplink,
                own.join(", ")
            );
        }
    }
    for b in bridges {
        if b.internal {
            continue;
        }
        let others: Vec<String> = names
            .keys()
            .filter(|n| **n != b.bridge)
            .map(|n| format!("\"{n}\""))
            .collect();
        if !others.is_empty() {
            let _ = writeln!(
                s,
                "    iifname \"{}\" oifname {{ {} }} drop",
                b.bridge,
                others.join(", ")
            );
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// Installs the ruleset of [`render`] and the matching accept rules of
/// [`sync_iptables_forward`].
pub fn install(
    table: &str,
    bridges: &[BridgeRule],
    ports: &[PortRule],
    mesh: Option<&MeshRules>,
    masquerade: bool,
) -> Result<(), Error> {
    apply(&render(table, bridges, ports, mesh, masquerade))?;
    sync_iptables_forward(table, bridges, mesh.map(|m| m.uplink.as_str()))
}

/// Removes the table and every rule this instance put in other tables.
pub fn uninstall(table: &str) -> Result<(), Error> {
    let r = apply(&render_delete(table));
    sync_iptables_forward(table, &[], None).and(r)
}

/// Comment on an accept rule this instance put in the iptables `FORWARD` chain.
fn forward_tag(table: &str, dir: &str, bridge: &str) -> String {
    format!("dcpp:{table}:{dir}:{bridge}")
}

/// The iptables `FORWARD` accept rules of `bridges`: anything from a bridge (where it goes is
/// decided by dcpp's own `forward` chain), and to a bridge only replies and connections to
/// published ports, as docker does. With a mesh uplink, the connections it forwards (both
/// directions: the state matches a translated connection's packets either way).
fn forward_rules(
    table: &str,
    bridges: &[BridgeRule],
    uplink: Option<&str>,
) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(u) = uplink {
        let tag = forward_tag(table, "mesh", u);
        v.push((
            tag.clone(),
            format!(
                "-i {u} -o {u} -m conntrack --ctstate DNAT -m comment --comment {tag} -j ACCEPT"
            ),
        ));
    }
    for b in bridges {
        let tag = forward_tag(table, "in", &b.bridge);
        v.push((
            tag.clone(),
            format!("-i {} -m comment --comment {tag} -j ACCEPT", b.bridge),
        ));
        let tag = forward_tag(table, "out", &b.bridge);
        v.push((
            tag.clone(),
            format!(
                "-o {} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment {tag} -j ACCEPT",
                b.bridge
            ),
        ));
    }
    v
}

/// Keeps this instance's accept rules in the iptables `FORWARD` chain in line with `bridges`:
/// present when that chain can drop anything (policy DROP, or rules of its own), absent
/// otherwise, so a host without such a firewall is not touched. Without the `iptables` tools
/// there is no such chain to pass.
pub fn sync_iptables_forward(
    table: &str,
    bridges: &[BridgeRule],
    uplink: Option<&str>,
) -> Result<(), Error> {
    let listed = match Command::new("iptables")
        .args(["-w", "-t", "filter", "-S", "FORWARD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                what: "running iptables".into(),
                source: e,
            });
        }
    };
    let prefix = format!("dcpp:{table}:");
    let tag_of = |line: &str| -> Option<String> {
        let at = line.find(&prefix)?;
        Some(
            line[at..]
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let ours: Vec<(String, &str)> = listed
        .lines()
        .filter_map(|l| Some((tag_of(l)?, l)))
        .collect();
    let guarded = listed.lines().any(|l| l.trim() == "-P FORWARD DROP")
        || listed
            .lines()
            .any(|l| l.starts_with("-A FORWARD") && tag_of(l).is_none());
    let wanted = if guarded {
        forward_rules(table, bridges, uplink)
    } else {
        Vec::new()
    };
    let mut script = String::from("*filter\n");
    let mut changes = 0;
    for (tag, line) in &ours {
        if !wanted.iter().any(|(t, _)| t == tag)
            && let Some(rest) = line.strip_prefix("-A ")
        {
            let _ = writeln!(script, "-D {rest}");
            changes += 1;
        }
    }
    // Inserted at the top, ahead of docker's jumps and of the DROP policy.
    for (tag, rule) in wanted.iter().rev() {
        if !ours.iter().any(|(t, _)| t == tag) {
            let _ = writeln!(script, "-I FORWARD 1 {rule}");
            changes += 1;
        }
    }
    if changes == 0 {
        return Ok(());
    }
    script.push_str("COMMIT\n");
    run_stdin("iptables-restore", &["-w", "--noflush"], &script)
}

/// The script that removes the table (if present).
pub fn render_delete(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

/// Feeds `script` to `nft -f -` as one transaction.
pub fn apply(script: &str) -> Result<(), Error> {
    run_stdin("nft", &["-f", "-"], script)
}

fn run_stdin(program: &str, args: &[&str], script: &str) -> Result<(), Error> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Io {
            what: format!("running {program} (is Debian's nftables/iptables installed?)"),
            source: e,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| Error::Io {
            what: format!("writing to {program}"),
            source: e,
        })?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Io {
        what: format!("waiting for {program}"),
        source: e,
    })?;
    if !out.status.success() {
        return Err(Error::Nft(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_round_robin_isolation_and_internal() {
        let bridges = vec![
            BridgeRule {
                bridge: "dt0".into(),
                subnet: "10.9.0.0/24".parse().unwrap(),
                internal: false,
            },
            BridgeRule {
                bridge: "dt1".into(),
                subnet: "10.9.1.0/24".parse().unwrap(),
                internal: false,
            },
            BridgeRule {
                bridge: "dt2".into(),
                subnet: "10.9.2.0/24".parse().unwrap(),
                internal: true,
            },
        ];
        let ports = vec![
            PortRule {
                host_ip: None,
                host_port: 8080,
                protocol: Protocol::Tcp,
                backends: vec![
                    ("10.9.0.2".parse().unwrap(), 80),
                    ("10.9.0.3".parse().unwrap(), 80),
                ],
            },
            PortRule {
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 5353,
                protocol: Protocol::Udp,
                backends: vec![("10.9.1.2".parse().unwrap(), 53)],
            },
        ];
        let s = render("dcpp", &bridges, &ports, None, false);
        assert!(s.starts_with("table ip dcpp {}\ndelete table ip dcpp\ntable ip dcpp {"));
        assert!(s.contains("tcp dport 8080 dnat ip to numgen inc mod 2 map { 0 : 10.9.0.2 . 80, 1 : 10.9.0.3 . 80 }"));
        assert!(s.contains("ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.9.1.2:53"));
        assert!(s.contains("iifname \"dt0\" oifname { \"dt1\", \"dt2\" } drop"));
        assert!(s.contains("iifname \"dt2\" oifname != \"dt2\" drop"));
        // Internal networks drop before published ports are let through.
        let internal = s.find("oifname \"dt2\" iifname != \"dt2\" drop").unwrap();
        let dnat = s.find("ct status dnat accept").unwrap();
        let cross = s.find("iifname \"dt0\" oifname").unwrap();
        assert!(internal < dnat && dnat < cross, "{s}");
        let rules = forward_rules("t", &bridges[..1], None);
        assert_eq!(
            rules[0].1,
            "-i dt0 -m comment --comment dcpp:t:in:dt0 -j ACCEPT"
        );
        assert!(
            rules[1]
                .1
                .starts_with("-o dt0 -m conntrack --ctstate RELATED,ESTABLISHED,DNAT")
        );
        assert!(
            !s.contains("ip saddr 10.9.0.0/24 oifname"),
            "masquerade is off"
        );
        assert!(s.contains("oifname \"dt0\" ip saddr 10.9.0.0/24 ct status dnat masquerade"));
        let s = render("dcpp", &bridges, &ports, None, true);
        assert!(s.contains("ip saddr 10.9.0.0/24 oifname != \"dt0\" masquerade"));
        assert!(
            !s.contains("ip saddr 10.9.2.0/24 oifname"),
            "internal networks never go out"
        );
    }

    #[test]
    fn mesh_ports_forward_and_come_back_through_the_uplink() {
        let bridges = vec![BridgeRule {
            bridge: "dt0".into(),
            subnet: "10.9.0.0/24".parse().unwrap(),
            internal: false,
        }];
        let mesh = MeshRules {
            uplink: "eth0".into(),
            guard: true,
            ports: vec![
                MeshRule {
                    port: 8080,
                    protocol: Protocol::Tcp,
                    to: vec!["10.1.0.2".parse().unwrap(), "10.1.0.2".parse().unwrap()],
                },
                MeshRule {
                    port: 53,
                    protocol: Protocol::Udp,
                    to: vec!["10.1.0.1".parse().unwrap()],
                },
                MeshRule {
                    port: 9,
                    protocol: Protocol::Tcp,
                    to: vec![],
                },
            ],
        };
        let s = render("dcpp", &bridges, &[], Some(&mesh), false);
        assert!(s.contains(
            "    ip daddr != 127.0.0.0/8 tcp dport 8080 dnat ip to numgen inc mod 2 map { 0 : 10.1.0.2, 1 : 10.1.0.2 }\n"
        ), "{s}");
        assert!(
            s.contains("    ip daddr != 127.0.0.0/8 udp dport 53 dnat ip to 10.1.0.1\n"),
            "{s}"
        );
        assert!(
            !s.contains("dport 9 "),
            "a port served nowhere is not forwarded: {s}"
        );
        assert!(s.contains(
            "    oifname \"eth0\" ip daddr { 10.1.0.2 } tcp dport 8080 ct status dnat masquerade\n"
        ), "{s}");
        // Forwarding that dcpp turned on carries the mesh and replies to containers only.
        let accept = s.find("ct status dnat accept").unwrap();
        let guard = s
            .find("iifname \"eth0\" oifname != { \"dt0\" } drop")
            .unwrap();
        assert!(accept < guard, "{s}");
        let open = render(
            "dcpp",
            &[],
            &[],
            Some(&MeshRules {
                guard: false,
                ..mesh.clone()
            }),
            false,
        );
        assert!(!open.contains("iifname \"eth0\""), "{open}");
        assert!(open.contains("ct status dnat accept"), "{open}");
        let closed = render("dcpp", &[], &[], Some(&mesh), false);
        assert!(closed.contains("    iifname \"eth0\" drop\n"), "{closed}");
        let rules = forward_rules("t", &[], Some("eth0"));
        assert_eq!(
            rules,
            [(
                "dcpp:t:mesh:eth0".to_string(),
                "-i eth0 -o eth0 -m conntrack --ctstate DNAT -m comment --comment dcpp:t:mesh:eth0 -j ACCEPT".to_string()
            )]
        );
    }
}
