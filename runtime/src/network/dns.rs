//! The resolver containers use: service names, container names and aliases of the networks a
//! container shares with the target, everything else forwarded to the host's resolvers.
//!
//! It listens on UDP port 53 of each bridge's gateway address (as podman's aardvark-dns does)
//! rather than on docker's 127.0.0.11 inside every container: the gateway is reachable from the
//! container without a DNAT rule in each container's namespace, the socket a query arrives on
//! names the network and the source address names the asking container (which gives the scope),
//! and forwarding happens from the host's namespace, so even a loopback host resolver such as
//! systemd-resolved's 127.0.0.53 works. The server is a set of tokio tasks inside the daemon; its
//! records come from a [`DnsTable`] that the [`NetworkManager`](super::NetworkManager) rebuilds
//! after every change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::Error;
use super::state::State;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const TTL_SECS: u32 = 5;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
struct Record {
    container_id: String,
    ip: Ipv4Addr,
    names: BTreeSet<String>,
}

/// Names by network, rebuilt from the persisted state.
#[derive(Debug, Default)]
pub struct DnsTable {
    by_network: BTreeMap<String, Vec<Record>>,
    networks_of: BTreeMap<String, Vec<String>>,
    upstreams_of: BTreeMap<String, Vec<SocketAddr>>,
}

impl DnsTable {
    /// Every endpoint is known by its container name, the first 12 characters of its id, its
    /// service and its aliases on that network.
    pub fn from_state(state: &State) -> Self {
        let mut t = DnsTable::default();
        for e in &state.endpoints {
            let mut names = BTreeSet::new();
            names.insert(e.container_name.to_ascii_lowercase());
            names.insert(
                e.container_id
                    .chars()
                    .take(12)
                    .collect::<String>()
                    .to_ascii_lowercase(),
            );
            // A withdrawn replica (starting, unhealthy or stopping) keeps its own names only.
            if !state.withdrawn.contains(&e.container_id) {
                if let Some(s) = &e.service {
                    names.insert(s.to_ascii_lowercase());
                    names.insert(format!("tasks.{}", s.to_ascii_lowercase()));
                }
                names.extend(e.aliases.iter().map(|a| a.to_ascii_lowercase()));
            }
            t.by_network
                .entry(e.network.clone())
                .or_default()
                .push(Record {
                    container_id: e.container_id.clone(),
                    ip: e.ip,
                    names,
                });
            t.networks_of
                .entry(e.container_id.clone())
                .or_default()
                .push(e.network.clone());
        }
        // Containers on other nodes answer by the same rules; they are never clients here.
        for (network, r) in &state.remote {
            for e in &r.endpoints {
                let mut names = BTreeSet::new();
                names.insert(e.name.to_ascii_lowercase());
                if e.serving {
                    if let Some(s) = &e.service {
                        names.insert(s.to_ascii_lowercase());
                        names.insert(format!("tasks.{}", s.to_ascii_lowercase()));
                    }
                    names.extend(e.aliases.iter().map(|a| a.to_ascii_lowercase()));
                }
                t.by_network
                    .entry(network.clone())
                    .or_default()
                    .push(Record {
                        container_id: String::new(),
                        ip: e.ip,
                        names,
                    });
            }
        }
        t.upstreams_of = state.upstreams.clone();
        t
    }

    /// The nameservers of its own that the client `src` querying on `network` has, if any.
    pub fn upstreams_of(&self, network: &str, src: Ipv4Addr) -> Option<&[SocketAddr]> {
        let client = self.by_network.get(network)?.iter().find(|r| r.ip == src)?;
        self.upstreams_of
            .get(&client.container_id)
            .map(Vec::as_slice)
    }

    /// Addresses of `name` as seen by the client `src` querying on `network`: the client's scope
    /// is every network it is attached to (only `network` for an unknown client). `None` when
    /// the name is not ours.
    pub fn resolve(&self, network: &str, src: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let client = self.by_network.get(network)?.iter().find(|r| r.ip == src);
        let scope: Vec<&String> = match client.and_then(|c| self.networks_of.get(&c.container_id)) {
            Some(nets) => nets.iter().collect(),
            None => vec![&self.by_network.get_key_value(network)?.0],
        };
        let mut out = Vec::new();
        for net in scope {
            for r in self.by_network.get(net).into_iter().flatten() {
                if r.names.contains(&name) && !out.contains(&r.ip) {
                    out.push(r.ip);
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// A parsed query: enough to answer it or to forward it untouched.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section.
    pub question_end: usize,
}

/// Parses a query; `None` for responses, truncated packets or compressed question names.
pub fn parse_query(p: &[u8]) -> Option<Query> {
    if p.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([p[0], p[1]]);
    let flags = u16::from_be_bytes([p[2], p[3]]);
    let qdcount = u16::from_be_bytes([p[4], p[5]]);
    if flags & 0x8000 != 0 || qdcount == 0 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *p.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        labels.push(std::str::from_utf8(p.get(i..i + len)?).ok()?.to_owned());
        i += len;
    }
    let qtype = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*p.get(i + 2)?, *p.get(i + 3)?]);
    Some(Query {
        id,
        flags,
        name: labels.join("."),
        qtype,
        qclass,
        question_end: i + 4,
    })
}

/// Builds an authoritative answer with `ips` as A records (none for other query types).
pub fn build_answer(q: &Query, packet: &[u8], ips: &[Ipv4Addr], rcode: u8) -> Vec<u8> {
    let answers: &[Ipv4Addr] = if q.qtype == TYPE_A && q.qclass == CLASS_IN {
        ips
    } else {
        &[]
    };
    let mut out = Vec::with_capacity(q.question_end + answers.len() * 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, the query's opcode and RD, AA, RA.
    let flags = 0x8000 | (q.flags & 0x7900) | 0x0400 | 0x0080 | u16::from(rcode & 0x0F);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&packet[12..q.question_end]);
    for ip in answers {
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// Nameservers of a resolv.conf text.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next()).flatten()
        })
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct Shared {
    table: RwLock<DnsTable>,
    upstreams: Vec<SocketAddr>,
    rotation: AtomicUsize,
}

impl Shared {
    /// Where a query of `peer` on `network` that is not for our names goes: the client's own
    /// nameservers, else the host's.
    fn upstreams_for(&self, network: &str, peer: SocketAddr) -> Vec<SocketAddr> {
        let SocketAddr::V4(src) = peer else {
            return self.upstreams.clone();
        };
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .upstreams_of(network, *src.ip())
            .map_or_else(|| self.upstreams.clone(), <[SocketAddr]>::to_vec)
    }
}

/// The running resolver: one listener task per network gateway.
pub struct DnsServer {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    port: u16,
    listeners: Mutex<BTreeMap<Ipv4Addr, [JoinHandle<()>; 2]>>,
}

impl DnsServer {
    /// A server that spawns its tasks on `handle`, listens on `port` of every gateway and
    /// forwards unknown names to `upstreams`.
    pub fn new(handle: tokio::runtime::Handle, port: u16, upstreams: Vec<SocketAddr>) -> Self {
        DnsServer {
            shared: Arc::new(Shared {
                table: RwLock::default(),
                upstreams,
                rotation: AtomicUsize::new(0),
            }),
            handle,
            port,
            listeners: Mutex::default(),
        }
    }

    /// Replaces the records and makes the set of listeners match `gateways` (network name by
    /// gateway address). A gateway that cannot be bound is reported and skipped.
    pub fn sync(&self, state: &State) -> Result<(), Error> {
        *self.shared.table.write().unwrap_or_else(|e| e.into_inner()) = DnsTable::from_state(state);
        let wanted: BTreeMap<Ipv4Addr, String> = state
            .networks
            .values()
            .map(|n| (n.gateway, n.name.clone()))
            .collect();
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|gw, tasks| {
            let keep = wanted.contains_key(gw);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        let mut first_err = None;
        for (gw, net) in wanted {
            if listeners.contains_key(&gw) {
                continue;
            }
            let bound = std::net::UdpSocket::bind((gw, self.port))
                .and_then(|u| Ok((u, std::net::TcpListener::bind((gw, self.port))?)));
            let (sock, tcp) = match bound {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%gw, port = self.port, "DNS listener: {e}");
                    first_err.get_or_insert(Error::Io {
                        what: format!("binding DNS on {gw}:{}", self.port),
                        source: e,
                    });
                    continue;
                }
            };
            let _ = sock.set_nonblocking(true);
            let _ = tcp.set_nonblocking(true);
            let _guard = self.handle.enter();
            let reg = |e| Error::Io {
                what: "registering the DNS socket".into(),
                source: e,
            };
            let sock = UdpSocket::from_std(sock).map_err(reg)?;
            let tcp = tokio::net::TcpListener::from_std(tcp).map_err(reg)?;
            let udp_task =
                self.handle
                    .spawn(serve(Arc::new(sock), net.clone(), self.shared.clone()));
            let tcp_task = self.handle.spawn(serve_tcp(tcp, net, self.shared.clone()));
            listeners.insert(gw, [udp_task, tcp_task]);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stops every listener.
    pub fn shutdown(&self) {
        for (_, tasks) in
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|e| e.into_inner()))
        {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The answer from our own records, if the name is ours. `limit` caps the message size (plain
/// UDP DNS is 512 bytes); answers that do not fit are cut and flagged truncated, so the client
/// retries over TCP.
fn local_answer(
    shared: &Shared,
    network: &str,
    src: SocketAddr,
    q: &Query,
    packet: &[u8],
    limit: usize,
) -> Option<Vec<u8>> {
    let SocketAddr::V4(src) = src else {
        return None;
    };
    let mut ips = shared
        .table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .resolve(network, *src.ip(), &q.name)?;
    // Rotate so that replicas of a service share the load across lookups. Only A queries
    // advance the counter: resolvers send A and AAAA in pairs, and counting both would make
    // every A answer start with the same replica.
    if q.qtype == TYPE_A {
        let k = shared.rotation.fetch_add(1, Ordering::Relaxed) % ips.len();
        ips.rotate_left(k);
    }
    let fit = limit.saturating_sub(q.question_end) / 16;
    let truncated = ips.len() > fit;
    ips.truncate(fit);
    let mut a = build_answer(q, packet, &ips, 0);
    if truncated {
        a[2] |= 0x02;
    }
    Some(a)
}

async fn serve(sock: Arc<UdpSocket>, network: String, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%network, "DNS receive: {e}");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let Some(q) = parse_query(&packet) else {
            continue;
        };
        match local_answer(&shared, &network, peer, &q, &packet, 512) {
            Some(a) => {
                let _ = sock.send_to(&a, peer).await;
            }
            None => {
                let (sock, ups) = (sock.clone(), shared.upstreams_for(&network, peer));
                tokio::spawn(async move {
                    let reply = forward(&ups, &packet).await;
                    let reply = reply.unwrap_or_else(|| build_answer(&q, &packet, &[], 2));
                    let _ = sock.send_to(&reply, peer).await;
                });
            }
        }
    }
}

/// DNS over TCP (RFC 7766): what clients fall back to after a truncated UDP answer.
async fn serve_tcp(listener: tokio::net::TcpListener, network: String, shared: Arc<Shared>) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else {
            continue;
        };
        let (network, shared) = (network.clone(), shared.clone());
        tokio::spawn(async move {
            while let Ok(Ok(packet)) =
                tokio::time::timeout(FORWARD_TIMEOUT, read_framed(&mut conn)).await
            {
                let Some(q) = parse_query(&packet) else {
                    return;
                };
                let reply = match local_answer(&shared, &network, peer, &q, &packet, 65535) {
                    Some(a) => a,
                    None => forward_tcp(&shared.upstreams_for(&network, peer), &packet)
                        .await
                        .unwrap_or_else(|| build_answer(&q, &packet, &[], 2)),
                };
                if write_framed(&mut conn, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn read_framed(conn: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let len = conn.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    conn.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(conn: &mut tokio::net::TcpStream, msg: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("DNS message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    conn.write_all(&out).await
}

async fn forward_tcp(upstreams: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let attempt = async {
            let mut c = tokio::net::TcpStream::connect(up).await?;
            write_framed(&mut c, packet).await?;
            read_framed(&mut c).await
        };
        if let Ok(Ok(reply)) = tokio::time::timeout(FORWARD_TIMEOUT, attempt).await {
            return Some(reply);
        }
    }
    None
}

async fn forward(upstreams: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .ok()?;
        let Ok(s) = UdpSocket::bind(bind).await else {
            continue;
        };
        if s.connect(up).await.is_err() || s.send(packet).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(FORWARD_TIMEOUT, s.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::state::{Endpoint, State};

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p
    }

    fn ep(id: &str, name: &str, svc: &str, net: &str, ip: &str) -> Endpoint {
        Endpoint {
            container_id: id.into(),
            container_name: name.into(),
            service: Some(svc.into()),
            network: net.into(),
            aliases: vec![format!("{svc}-alias")],
            ip: ip.parse().unwrap(),
            mac: String::new(),
            ifname: "eth0".into(),
            host_ifname: String::new(),
            gateway: None,
        }
    }

    #[test]
    fn parse_and_answer_round_trip() {
        let p = query("Web", 1);
        let q = parse_query(&p).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype), (0x1234, "Web", 1));
        let a = build_answer(
            &q,
            &p,
            &["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()],
            0,
        );
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[2] & 0x80, 0x80, "QR set");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 2);
        assert_eq!(&a[a.len() - 4..], &[10, 0, 0, 3]);
        let aaaa = query("web", 28);
        let q = parse_query(&aaaa).unwrap();
        let a = build_answer(&q, &aaaa, &["10.0.0.2".parse().unwrap()], 0);
        assert_eq!(
            u16::from_be_bytes([a[6], a[7]]),
            0,
            "no A records in an AAAA answer"
        );
        assert!(parse_query(&a).is_none(), "responses are not queries");
        assert!(parse_query(&[0; 5]).is_none());
    }

    #[test]
    fn names_resolve_only_within_shared_networks() {
        let state = State {
            endpoints: vec![
                ep("aaaaaaaaaaaaaaaa", "web-1", "web", "front", "10.0.0.2"),
                ep("bbbbbbbbbbbbbbbb", "web-2", "web", "front", "10.0.0.3"),
                ep("cccccccccccccccc", "db-1", "db", "back", "10.0.1.2"),
                ep("dddddddddddddddd", "api-1", "api", "front", "10.0.0.4"),
                ep("dddddddddddddddd", "api-1", "api", "back", "10.0.1.3"),
            ],
            ..State::default()
        };
        let t = DnsTable::from_state(&state);
        let web1: Ipv4Addr = "10.0.0.2".parse().unwrap();
        assert_eq!(t.resolve("front", web1, "web").unwrap().len(), 2);
        assert_eq!(
            t.resolve("front", web1, "WEB-2.").unwrap(),
            vec!["10.0.0.3".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            t.resolve("front", web1, "aaaaaaaaaaaa").unwrap(),
            vec![web1]
        );
        assert!(
            t.resolve("front", web1, "db").is_none(),
            "db shares no network with web"
        );
        // api is on both networks and sees db through the back network, at db's back address.
        let api: Ipv4Addr = "10.0.0.4".parse().unwrap();
        assert_eq!(
            t.resolve("front", api, "db-alias").unwrap(),
            vec!["10.0.1.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(t.resolve("front", web1, "example.org").is_none());
    }

    #[test]
    fn a_client_with_its_own_nameservers_is_forwarded_there_and_others_to_the_host() {
        let own: Vec<SocketAddr> = vec!["127.0.0.53:53".parse().unwrap()];
        let state = State {
            endpoints: vec![
                ep("aaaaaaaaaaaaaaaa", "web-1", "web", "front", "10.0.0.2"),
                ep("bbbbbbbbbbbbbbbb", "db-1", "db", "front", "10.0.0.3"),
            ],
            upstreams: BTreeMap::from([("aaaaaaaaaaaaaaaa".to_string(), own.clone())]),
            ..State::default()
        };
        let t = DnsTable::from_state(&state);
        assert_eq!(
            t.upstreams_of("front", "10.0.0.2".parse().unwrap()),
            Some(own.as_slice())
        );
        assert_eq!(t.upstreams_of("front", "10.0.0.3".parse().unwrap()), None);
        assert_eq!(t.upstreams_of("back", "10.0.0.2".parse().unwrap()), None);
        // Its stack names are still answered locally.
        assert!(
            t.resolve("front", "10.0.0.2".parse().unwrap(), "db")
                .is_some()
        );
    }

    #[test]
    fn big_answers_are_truncated_over_udp_only() {
        let state = State {
            endpoints: (0..40)
                .map(|i| {
                    ep(
                        &format!("{i:016}"),
                        &format!("big-{i}"),
                        "big",
                        "n",
                        &format!("10.0.0.{}", i + 2),
                    )
                })
                .collect(),
            ..State::default()
        };
        let shared = Shared {
            table: RwLock::new(DnsTable::from_state(&state)),
            upstreams: vec![],
            rotation: AtomicUsize::new(0),
        };
        let p = query("big", TYPE_A);
        let q = parse_query(&p).unwrap();
        let host: SocketAddr = "10.0.0.1:5353".parse().unwrap();
        let udp = local_answer(&shared, "n", host, &q, &p, 512).unwrap();
        assert!(udp.len() <= 512);
        assert_eq!(udp[2] & 0x02, 0x02, "TC set");
        assert!(u16::from_be_bytes([udp[6], udp[7]]) < 40);
        let tcp = local_answer(&shared, "n", host, &q, &p, 65535).unwrap();
        assert_eq!(tcp[2] & 0x02, 0, "no TC over TCP");
        assert_eq!(u16::from_be_bytes([tcp[6], tcp[7]]), 40);
        assert!(
            local_answer(
                &shared,
                "n",
                host,
                &parse_query(&query("nope", 1)).unwrap(),
                &query("nope", 1),
                512
            )
            .is_none()
        );
    }

    #[test]
    fn resolv_conf_nameservers() {
        let s = parse_resolv_conf(
            "# x\nnameserver 10.255.255.53\nsearch a\nnameserver ::1\nnameserver bad\n",
        );
        assert_eq!(
            s,
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
