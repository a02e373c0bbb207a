//! What a test reads of a stack network that spans test hosts ([`super::netns`]): the task
//! containers a node's own runtime runs, what a name resolves to inside a container, and the
//! forwarding and neighbour entries of each host's VXLAN devices.

use std::collections::BTreeSet;

use serde_json::Value;

use super::cluster::Cluster;
use super::{Rig, stderr, stdout};

/// A task container as its node's runtime lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ctr {
    pub id: String,
    pub name: String,
    pub service: String,
    pub task: u64,
    pub slot: String,
}

/// The running task containers of node `n`'s runtime (of every service when `service` is
/// `None`).
pub fn running(n: &Rig, service: Option<&str>) -> Vec<Ctr> {
    let out = n.dcpp(&["container", "ls", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .filter(|c| c["status"] == "running")
        .filter_map(|c| {
            let l = &c["labels"];
            Some(Ctr {
                id: c["id"].as_str()?.to_string(),
                name: c["name"].as_str().unwrap_or_default().to_string(),
                service: l["org.dcpp.service"].as_str()?.to_string(),
                task: l["org.dcpp.task"].as_str()?.parse().ok()?,
                slot: l["org.dcpp.slot"].as_str().unwrap_or_default().to_string(),
            })
        })
        .filter(|c| service.is_none_or(|s| c.service == s))
        .collect()
}

/// Runs `cmd` in container `id` on node `n`. (busybox's `wget -T` crashes: bound it with
/// `timeout` instead.)
pub fn exec(n: &Rig, id: &str, cmd: &[&str]) -> (bool, String) {
    let mut a = vec!["container", "exec", id];
    a.extend_from_slice(cmd);
    let out = n.dcpp(&a);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// Addresses `name` resolves to from inside container `id` on node `n`.
pub fn resolve(n: &Rig, id: &str, name: &str) -> BTreeSet<String> {
    let (_, out) = exec(n, id, &["nslookup", name]);
    // busybox nslookup: the server's lines first, then "Name: …" / "Address: …" pairs.
    out.split_once(&format!("Name:\t{name}"))
        .or_else(|| out.split_once("Name:"))
        .map(|(_, rest)| {
            rest.lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .filter_map(|a| a.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The IPv4 address of container `id` on node `n` (its `eth0`).
pub fn address(n: &Rig, id: &str) -> String {
    let (_, ifc) = exec(n, id, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    ifc.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_else(|| panic!("no address on eth0: {ifc}"))
        .to_string()
}

/// The MAC the overlay gives the container at `ip` (it follows the address).
pub fn mac(ip: &str) -> String {
    let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Host `i`'s VXLAN devices (of its node's prefix) with their permanent entries: `None` when
/// it has none, else the FDB entries (`MAC UNDERLAY`) and the neighbour entries (`IP`).
pub fn overlay_entries(cl: &Cluster, i: usize) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let u = cl.underlay.as_ref().expect("hosts in namespaces");
    let prefix = &cl.nodes[i].prefix;
    let (_, links) = u.run(i, &["ip", "-o", "link", "show", "type", "vxlan"]);
    let devs: Vec<String> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|d| d.split('@').next().unwrap_or(d).to_string())
        .filter(|d| d.starts_with(prefix.as_str()))
        .collect();
    if devs.is_empty() {
        return None;
    }
    let mut fdb = BTreeSet::new();
    let mut neigh = BTreeSet::new();
    for dev in &devs {
        let (_, f) = u.run(i, &["bridge", "fdb", "show", "dev", dev]);
        for e in f.lines().filter(|e| e.contains(" dst ")) {
            // "02:42:0a:…  dst 10.x.250.2 self permanent"
            let mac = e.split_whitespace().next().unwrap_or_default();
            let dst = e
                .split(" dst ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next());
            fdb.insert(format!("{mac} {}", dst.unwrap_or_default()));
        }
        let (_, n) = u.run(i, &["ip", "neigh", "show", "dev", dev]);
        for e in n.lines().filter(|e| e.contains("PERMANENT")) {
            neigh.insert(e.split_whitespace().next().unwrap_or_default().to_string());
        }
    }
    Some((fdb, neigh))
}
