//! End to end on the real kernel (run as root): bridges, veths, IPAM, service-name DNS,
//! isolation, published ports with load spread, a taken port, and a clean host afterwards.

mod network_util;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use dcpp_runtime::network::{
    AttachRequest, Error, NetworkConfig, NetworkManager, PortMapping, Protocol,
};
use network_util::{Endpoint, curl, free_port, host_address, host_snapshot, options, udp_echo_in};

/// A stand-in for the host's resolver on 127.0.0.1: answers every A query with 192.0.2.123.
/// It is real UDP DNS; it only exists so that forwarding can be tested without the internet.
async fn fake_upstream() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let q = &buf[..n];
            let mut end = 12;
            while end < n && q[end] != 0 {
                end += q[end] as usize + 1;
            }
            end += 5;
            if end > n {
                continue;
            }
            let mut r = q[..2].to_vec();
            r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 123]);
            let _ = sock.send_to(&r, peer).await;
        }
    });
    addr
}

/// Number of answers to an A query for `name` sent over TCP to `server:53`.
fn tcp_lookup(server: Ipv4Addr, name: &str) -> u16 {
    use std::io::{Read, Write};
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut c = std::net::TcpStream::connect((server, 53)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    c.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    c.write_all(&q).unwrap();
    let mut len = [0u8; 2];
    c.read_exact(&mut len).unwrap();
    let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut r).unwrap();
    assert_eq!(&r[..2], &[0xab, 0xcd]);
    u16::from_be_bytes([r[6], r[7]])
}

fn req(ep_id: &str, name: &str, service: &str, network: &str) -> AttachRequest {
    AttachRequest {
        container_id: format!("{ep_id:0>64}"),
        container_name: name.into(),
        service: Some(service.into()),
        network: network.into(),
        aliases: vec![format!("{name}-alias")],
        ipv4_address: None,
        withdrawn: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_talk_by_ip_and_name_ports_publish_and_host_is_clean_after() {
    let (tag, pool, hint) = ("dtea", "10.231.0.0/16", "10.231.");
    let data = tempfile::tempdir().unwrap();
    let upstream = fake_upstream().await;
    let opts = options(data.path(), tag, pool, Some(vec![upstream]));
    let table = opts.nft_table.clone();
    let before = host_snapshot(tag, &table, hint);

    let result = tokio::task::spawn_blocking(move || scenario(opts)).await;

    let after = host_snapshot(tag, &table, hint);
    result.unwrap();
    assert_eq!(before, after, "links, addresses or nft table left behind");
}

fn scenario(opts: dcpp_runtime::network::NetworkOptions) {
    let _rt = tokio::runtime::Handle::current();
    let mgr = {
        let _g = _rt.enter();
        NetworkManager::open(opts).unwrap()
    };
    let guard = Teardown(&mgr);
    let front = mgr
        .create_network("front", NetworkConfig::default())
        .unwrap();
    let back = mgr
        .create_network("back", NetworkConfig::default())
        .unwrap();
    assert_ne!(front.subnet, back.subnet);
    assert_eq!(
        mgr.create_network("front", NetworkConfig::default())
            .unwrap(),
        front,
        "create is idempotent"
    );

    let web1 = Endpoint::spawn("web1");
    let web2 = Endpoint::spawn("web2");
    let client = Endpoint::spawn("client");
    let other = Endpoint::spawn("other");
    let a1 = mgr
        .attach(&req("a1", "proj-web-1", "web", "front"), &web1.netns())
        .unwrap();
    let a2 = mgr
        .attach(&req("a2", "proj-web-2", "web", "front"), &web2.netns())
        .unwrap();
    let fixed: Ipv4Addr = front.subnet.nth(77).unwrap();
    let mut creq = req("c1", "proj-client-1", "client", "front");
    creq.ipv4_address = Some(fixed);
    let ac = mgr.attach(&creq, &client.netns()).unwrap();
    let ao = mgr
        .attach(&req("o1", "proj-other-1", "other", "back"), &other.netns())
        .unwrap();

    // Kernel state matches what attach reported.
    assert_eq!(ac.ip, fixed, "ipv4_address honoured");
    assert_eq!(web1.ipv4_of("eth0"), Some(a1.ip));
    assert_eq!(client.ipv4_of("eth0"), Some(fixed));
    assert!(
        front.subnet.contains(a1.ip) && front.subnet.contains(a2.ip) && back.subnet.contains(ao.ip)
    );
    assert_ne!(a1.ip, a2.ip);
    assert!(
        web1.default_route().contains(&front.gateway.to_string()),
        "{}",
        web1.default_route()
    );
    let mut dup = req("z2", "dup2", "x", "front");
    dup.ipv4_address = Some(fixed);
    assert!(matches!(
        mgr.attach(&dup, &other.netns()),
        Err(Error::Exhausted(_))
    ));

    // Same network: by IP, by service name (both replicas over lookups), container name, alias.
    let dns = format!("nameserver {}\n", front.gateway);
    client.set_resolv_conf(&dns);
    assert_eq!(client.wget(&format!("http://{}/", a1.ip)).unwrap(), "web1");
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        seen.insert(client.wget("http://web/").expect("wget by service name"));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["web1".to_owned(), "web2".to_owned()]),
        "DNS rotates over replicas"
    );
    assert_eq!(client.wget("http://proj-web-2/").unwrap(), "web2");
    assert_eq!(client.wget("http://proj-web-1-alias/").unwrap(), "web1");
    let ns = client.exec(&["nslookup", "web", &front.gateway.to_string()]);
    let text = String::from_utf8_lossy(&ns.stdout);
    assert!(
        text.contains(&a1.ip.to_string()) && text.contains(&a2.ip.to_string()),
        "{text}"
    );
    // Other names go to the host's resolver (here the fake upstream).
    let ns = client.exec(&["nslookup", "elsewhere.example", &front.gateway.to_string()]);
    assert!(
        String::from_utf8_lossy(&ns.stdout).contains("192.0.2.123"),
        "{:?}",
        ns
    );

    // DNS over TCP (what clients use after a truncated UDP answer) knows the same names.
    let answers = tcp_lookup(front.gateway, "web");
    assert_eq!(answers, 2, "both replicas over TCP");

    // Another network: neither the address nor the names are reachable.
    other.set_resolv_conf(&format!("nameserver {}\n", back.gateway));
    assert!(
        other.wget(&format!("http://{}/", a1.ip)).is_err(),
        "isolation between networks"
    );
    let ns = other.exec(&["nslookup", "proj-web-1", &back.gateway.to_string()]);
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains(&a1.ip.to_string()),
        "names stay in their network"
    );

    // Published port: both replicas behind one host port, from 127.0.0.1 and the host address.
    let port = free_port();
    let map = PortMapping {
        host_ip: None,
        host_port: port,
        container_port: 80,
        protocol: Protocol::Tcp,
    };
    mgr.publish(
        &format!("{:0>64}", "a1"),
        Some("web"),
        std::slice::from_ref(&map),
    )
    .unwrap();
    mgr.publish(
        &format!("{:0>64}", "a2"),
        Some("web"),
        std::slice::from_ref(&map),
    )
    .unwrap();
    let again = mgr
        .publish(
            &format!("{:0>64}", "a2"),
            Some("web"),
            std::slice::from_ref(&map),
        )
        .unwrap();
    assert_eq!(again.len(), 1, "publishing twice is a no-op");
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.insert(curl(&format!("http://127.0.0.1:{port}/")).unwrap());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["web1".to_owned(), "web2".to_owned()]),
        "load spread over replicas"
    );

    // The host's own address works too, from the host and from a container of the network.
    let host_ip = host_address();
    assert!(
        ["web1", "web2"].contains(&curl(&format!("http://{host_ip}:{port}/")).unwrap().as_str())
    );
    let body = client
        .wget(&format!("http://{host_ip}:{port}/"))
        .expect("container -> published port");
    assert!(["web1", "web2"].contains(&body.as_str()), "{body}");

    // UDP, on 127.0.0.1 only.
    udp_echo_in(web1.pid(), 5353);
    let uport = free_port();
    let udp = PortMapping {
        host_ip: Some(Ipv4Addr::LOCALHOST),
        host_port: uport,
        container_port: 5353,
        protocol: Protocol::Udp,
    };
    mgr.publish(&format!("{:0>64}", "a1"), Some("web"), &[udp])
        .unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    sock.send_to(b"ping", ("127.0.0.1", uport)).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("UDP echo through the published port");
    assert_eq!(&buf[..n], b"ping");

    // Another service on that port, and a port some other program holds: clear errors.
    let err = mgr
        .publish(
            &format!("{:0>64}", "c1"),
            Some("client"),
            std::slice::from_ref(&map),
        )
        .unwrap_err();
    assert!(matches!(err, Error::PortInUse { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("host port {port}/tcp is already in use")),
        "{err}"
    );
    let squatter = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let err = mgr
        .publish(
            &format!("{:0>64}", "c1"),
            Some("client"),
            &[PortMapping {
                host_port: taken,
                ..map.clone()
            }],
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("another program on this machine"),
        "{err}"
    );

    // Unpublishing one replica leaves the other serving.
    mgr.unpublish(&format!("{:0>64}", "a1")).unwrap();
    for _ in 0..4 {
        assert_eq!(curl(&format!("http://127.0.0.1:{port}/")).unwrap(), "web2");
    }

    // Networks with containers cannot be removed; list/inspect show them.
    assert!(matches!(
        mgr.remove_network("front"),
        Err(Error::InUse { .. })
    ));
    let info = mgr.inspect("front").unwrap();
    assert_eq!(info.endpoints.len(), 3);
    assert_eq!(
        info.ports.len(),
        1,
        "only web2's port is left (unpublish took all of web1's)"
    );

    for id in ["a1", "a2", "c1", "o1"] {
        mgr.detach(&format!("{id:0>64}"), None).unwrap();
    }
    assert_eq!(
        mgr.prune().unwrap(),
        vec!["back".to_owned(), "front".to_owned()]
    );
    drop(guard);
}

/// Removes everything of the instance even when an assertion failed half-way.
struct Teardown<'a>(&'a NetworkManager);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        self.0.destroy().unwrap();
    }
}
