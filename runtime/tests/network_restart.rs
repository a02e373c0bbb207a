//! Restart and crash paths on the real kernel (run as root): addresses survive a restart without
//! duplicates, stale links of this instance are removed and nobody else's, endpoints of dead
//! containers are forgotten; plus multi-network containers and internal networks.

mod network_util;

use std::net::Ipv4Addr;
use std::process::Command;

use dcpp_runtime::network::{AttachRequest, NetworkConfig, NetworkManager, PortMapping, Protocol};
use network_util::{DestroyOnDrop, Endpoint, host_snapshot, options};

fn req(id: &str, network: &str) -> AttachRequest {
    AttachRequest {
        container_id: format!("{id:0>64}"),
        container_name: format!("c-{id}"),
        service: Some(id.to_owned()),
        network: network.into(),
        aliases: vec![],
        ipv4_address: None,
        withdrawn: false,
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft_table(table: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .unwrap()
        .status
        .success()
}

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in &self.0 {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

#[test]
fn restart_keeps_addresses_and_removes_only_own_stale_links() {
    let (tag, pool, hint) = ("dtrs", "10.232.0.0/16", "10.232.");
    let data = tempfile::tempdir().unwrap();
    let opts = options(data.path(), tag, pool, None);
    let before = host_snapshot(tag, &opts.nft_table, hint);
    let _bystander = Cleanup(vec!["dtrsx0".into(), "dtrsvdeadbeef".into()]);
    {
        let _teardown = DestroyOnDrop(opts.clone());
        let mgr = NetworkManager::open(opts.clone()).unwrap();
        let net = mgr.create_network("n", NetworkConfig::default()).unwrap();
        let internal = mgr
            .create_network(
                "i",
                NetworkConfig {
                    internal: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let a = Endpoint::spawn("a");
        let b = Endpoint::spawn("b");
        let a_n = mgr.attach(&req("a", "n"), &a.netns()).unwrap();
        let a_i = mgr.attach(&req("a", "i"), &a.netns()).unwrap();
        let b_i = mgr.attach(&req("b", "i"), &b.netns()).unwrap();

        // One interface per network; the default route only through the first, non-internal one.
        assert_eq!((a_n.ifname.as_str(), a_i.ifname.as_str()), ("eth0", "eth1"));
        assert!(a_n.default_route && !a_i.default_route && !b_i.default_route);
        assert_eq!(a.ipv4_of("eth1"), Some(a_i.ip));
        assert!(a.default_route().contains(&net.gateway.to_string()));
        assert_eq!(b.default_route(), "", "internal: no route out");
        assert_eq!(
            b.wget(&format!("http://{}/", a_i.ip)).unwrap(),
            "a",
            "internal peers still talk"
        );
        assert!(
            b.wget(&format!("http://{}/", a_n.ip)).is_err(),
            "but reach nothing beyond"
        );

        // Simulated crash leftovers: a veth pair named like ours, and a link that only shares the
        // prefix (another instance or a human made it).
        ip(&[
            "link",
            "add",
            "dtrsvdeadbeef",
            "type",
            "veth",
            "peer",
            "name",
            "dtrspdeadbeef",
        ]);
        ip(&["link", "add", "dtrsx0", "type", "bridge"]);
        drop(mgr);

        let mgr = NetworkManager::open(opts.clone()).unwrap();
        let report = mgr.cleanup_stale().unwrap();
        assert!(
            report.removed_links.contains(&"dtrsvdeadbeef".to_owned()),
            "{report:?}"
        );
        assert!(report.removed_endpoints.is_empty(), "{report:?}");
        assert!(!link_exists("dtrsvdeadbeef") && !link_exists("dtrspdeadbeef"));
        assert!(
            link_exists("dtrsx0"),
            "another instance's link is not ours to remove"
        );

        // The restarted instance knows every address it gave out.
        let c = Endpoint::spawn("c");
        let c_n = mgr.attach(&req("c", "n"), &c.netns()).unwrap();
        let c_i = mgr.attach(&req("c", "i"), &c.netns()).unwrap();
        assert_ne!(c_n.ip, a_n.ip);
        let taken: [Ipv4Addr; 2] = [a_i.ip, b_i.ip];
        assert!(!taken.contains(&c_i.ip), "{c_i:?} duplicates {taken:?}");
        assert!(internal.subnet.contains(c_i.ip));

        // A container that died while the daemon was down: its veths went with its namespace,
        // and its published port must go from the nft table.
        let port = network_util::free_port();
        let map = PortMapping {
            host_ip: None,
            host_port: port,
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        mgr.publish(&format!("{:0>64}", "a"), Some("a"), &[map])
            .unwrap();
        assert!(nft_table(&opts.nft_table).contains(&format!("dport {port} ")));
        let a_veths: Vec<String> = mgr
            .endpoints_of(&format!("{:0>64}", "a"))
            .unwrap()
            .into_iter()
            .map(|e| e.host_ifname)
            .collect();
        drop(a);
        // The kernel dismantles a namespace asynchronously after its last process exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a_veths.iter().any(|l| link_exists(l)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let report = mgr.cleanup_stale().unwrap();
        let mut gone = report.removed_endpoints.clone();
        gone.sort();
        assert_eq!(gone, vec!["c-a@i".to_owned(), "c-a@n".to_owned()]);
        assert_eq!(mgr.inspect("n").unwrap().endpoints.len(), 1);
        assert!(
            !nft_table(&opts.nft_table).contains(&format!("dport {port} ")),
            "stale port rule removed"
        );

        // Explicit subnets: honoured, and an overlap is refused with a clear error.
        let fixed = mgr
            .create_network(
                "fixed",
                NetworkConfig {
                    subnet: Some("10.232.200.0/24".parse().unwrap()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(fixed.gateway, "10.232.200.1".parse::<Ipv4Addr>().unwrap());
        let err = mgr
            .create_network(
                "clash",
                NetworkConfig {
                    subnet: Some("10.232.200.128/25".parse().unwrap()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("overlaps 10.232.200.0/24"),
            "{err}"
        );
        mgr.remove_network("fixed").unwrap();

        // A bridge that vanished (reboot) is recreated with its address.
        mgr.detach(&format!("{:0>64}", "b"), None).unwrap();
        mgr.detach(&format!("{:0>64}", "c"), None).unwrap();
        ip(&["link", "del", &net.bridge]);
        let report = mgr.cleanup_stale().unwrap();
        assert_eq!(report.recreated_bridges, vec![net.bridge.clone()]);
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", &net.bridge])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/", net.gateway)));
        mgr.destroy().unwrap();
    }
    ip(&["link", "del", "dtrsx0"]);
    assert_eq!(
        before,
        host_snapshot(tag, &opts.nft_table, hint),
        "left behind"
    );
}
