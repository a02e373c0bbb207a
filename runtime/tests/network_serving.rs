//! Serving and withdrawn replicas on the real kernel (run as root): a replica attached withdrawn
//! is neither in its service's DNS answers nor in the published port's DNAT map until it is put
//! into service; withdrawing takes it out of both at once; detaching forgets it. The bridge
//! keeps its own MAC whatever its ports, and a container's MAC follows its address.

mod network_util;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use dcpp_runtime::network::{AttachRequest, NetworkConfig, NetworkManager, PortMapping, Protocol};
use network_util::{DestroyOnDrop, Endpoint, curl, free_port, host_snapshot, options};

fn req(id: &str, name: &str, service: &str, withdrawn: bool) -> AttachRequest {
    AttachRequest {
        container_id: format!("{id:0>64}"),
        container_name: name.into(),
        service: Some(service.into()),
        network: "front".into(),
        aliases: vec![format!("{service}-alias")],
        ipv4_address: None,
        withdrawn,
    }
}

/// Addresses `name` resolves to from inside `client`.
fn lookup(client: &Endpoint, name: &str, server: Ipv4Addr) -> BTreeSet<Ipv4Addr> {
    let out = client.exec(&["nslookup", name, &server.to_string()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// Backends of the published port's DNAT rule.
fn backends(table: &str) -> usize {
    let out = Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(rule) = text.lines().find(|l| l.contains("dnat")) else {
        return 0;
    };
    rule.split("mod ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

fn mac(ifname: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_replicas_are_out_of_dns_and_the_port_map_until_served() {
    let (tag, pool, hint) = ("dtsv", "10.199.0.0/16", "10.199.");
    let data = tempfile::tempdir().unwrap();
    let opts = options(data.path(), tag, pool, Some(vec![]));
    let table = opts.nft_table.clone();
    let before = host_snapshot(tag, &table, hint);
    let guard = DestroyOnDrop(opts.clone());
    let result = tokio::task::spawn_blocking(move || scenario(opts)).await;
    drop(guard);
    let after = host_snapshot(tag, &table, hint);
    result.unwrap();
    assert_eq!(before, after, "links, addresses or nft table left behind");
}

fn scenario(opts: dcpp_runtime::network::NetworkOptions) {
    let table = opts.nft_table.clone();
    let mgr = {
        let _g = tokio::runtime::Handle::current().enter();
        NetworkManager::open(opts).unwrap()
    };
    let net = mgr
        .create_network("front", NetworkConfig::default())
        .unwrap();
    let bridge_mac = mac(&net.bridge);
    let [a, b, c, d] = net.gateway.octets();
    assert_eq!(
        bridge_mac,
        format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
        "the bridge has its own address"
    );

    let web1 = Endpoint::spawn("web1");
    let web2 = Endpoint::spawn("web2");
    let client = Endpoint::spawn("client");
    let port = free_port();
    let publish = [PortMapping {
        host_ip: Some(Ipv4Addr::LOCALHOST),
        host_port: port,
        container_port: 80,
        protocol: Protocol::Tcp,
    }];
    let id = |s: &str| format!("{s:0>64}");
    let a1 = mgr
        .attach(&req("w1", "proj-web-1", "web", false), &web1.netns())
        .unwrap();
    mgr.publish(&id("w1"), Some("web"), &publish).unwrap();
    // The second replica starts withdrawn, as the agent attaches every task container.
    let a2 = mgr
        .attach(&req("w2", "proj-web-2", "web", true), &web2.netns())
        .unwrap();
    mgr.publish(&id("w2"), Some("web"), &publish).unwrap();
    mgr.attach(
        &req("c1", "proj-client-1", "client", false),
        &client.netns(),
    )
    .unwrap();
    assert_eq!(mac(&net.bridge), bridge_mac, "ports do not change it");
    let [a, b, c, d] = a2.ip.octets();
    let link =
        String::from_utf8_lossy(&web2.exec(&["ip", "link", "show", "eth0"]).stdout).into_owned();
    let inside = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert_eq!(inside, format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}"));

    let gw = net.gateway;
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(lookup(&client, "web", gw), BTreeSet::from([a1.ip]));
    assert_eq!(lookup(&client, "web-alias", gw), BTreeSet::from([a1.ip]));
    // Its own name still resolves: only the service's names are withheld.
    assert_eq!(lookup(&client, "proj-web-2", gw), BTreeSet::from([a2.ip]));
    assert_eq!(backends(&table), 1);
    for _ in 0..6 {
        assert_eq!(curl(&url).unwrap(), "web1");
    }
    assert_eq!(mgr.is_serving(&id("w2")).unwrap(), Some(false));

    // Into service: both answer.
    assert!(mgr.set_serving(&id("w2"), true).unwrap());
    assert!(!mgr.set_serving(&id("w2"), true).unwrap(), "no change");
    assert_eq!(lookup(&client, "web", gw), BTreeSet::from([a1.ip, a2.ip]));
    assert_eq!(backends(&table), 2);
    let seen: BTreeSet<String> = (0..6).map(|_| curl(&url).unwrap()).collect();
    assert_eq!(seen, BTreeSet::from(["web1".into(), "web2".into()]));

    // Withdrawn (about to stop): out of both at once, while it still runs.
    assert!(mgr.set_serving(&id("w1"), false).unwrap());
    assert_eq!(lookup(&client, "web", gw), BTreeSet::from([a2.ip]));
    assert_eq!(backends(&table), 1);
    for _ in 0..6 {
        assert_eq!(curl(&url).unwrap(), "web2");
    }

    // Detached: forgotten, its address free again.
    mgr.detach(&id("w1"), None).unwrap();
    assert_eq!(mgr.is_serving(&id("w1")).unwrap(), None);
    assert!(!mgr.set_serving(&id("w1"), true).unwrap(), "not attached");
    assert_eq!(lookup(&client, "proj-web-1", gw), BTreeSet::new());
    assert_eq!(
        mac(&net.bridge),
        bridge_mac,
        "a port leaving does not change it"
    );
    mgr.destroy().unwrap();
}
