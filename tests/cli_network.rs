//! `dcpp network ls|inspect|rm|prune` against a real instance (run as root): networks made
//! through the library are listed, inspected, refused while in use, removed and pruned, and
//! their bridges go with them.

#[path = "rig/slot.rs"]
mod slot;

use std::process::{Command, Output};

use dcpp_runtime::network::{AttachRequest, NetworkConfig, NetworkManager, NetworkOptions};

fn dcpp(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcpp"))
        .arg("--data-dir")
        .arg(data)
        .arg("network")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .unwrap()
        .status
        .success()
}

struct Destroy(NetworkOptions);

impl Drop for Destroy {
    fn drop(&mut self) {
        let _ = NetworkManager::open(self.0.clone()).and_then(|m| m.destroy());
    }
}

#[test]
fn network_ls_inspect_rm_prune() {
    // Declared first, so it is released after `_cleanup` has destroyed what it named.
    let slot = slot::Slot::take("cl");
    let data = tempfile::tempdir().unwrap();
    let mut o = NetworkOptions::new(data.path());
    o.bridge_prefix = slot.prefix.clone();
    o.nft_table = slot.table.clone();
    o.pools = dcpp_runtime::network::parse_pools(&[format!("{}/24", slot.pool)]).unwrap();
    o.masquerade = false;
    o.dns = None;
    let _cleanup = Destroy(o.clone());
    let mgr = NetworkManager::open(o).unwrap();
    let a = mgr
        .create_network("proj_a", NetworkConfig::default())
        .unwrap();
    let b = mgr
        .create_network(
            "proj_b",
            NetworkConfig {
                internal: true,
                ..Default::default()
            },
        )
        .unwrap();
    let c = mgr
        .create_network("proj_c", NetworkConfig::default())
        .unwrap();

    // A process in its own network namespace stands in for a container on proj_a.
    let mut holder = Command::new("unshare")
        .args(["--net", "/bin/busybox", "sleep", "60"])
        .spawn()
        .unwrap();
    let own_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    slot::wait_until(
        "the holder in its own network namespace",
        std::time::Duration::from_secs(10),
        || std::fs::read_link(format!("/proc/{}/ns/net", holder.id())).is_ok_and(|n| n != own_ns),
        String::new,
    );
    let req = AttachRequest {
        container_id: "f".repeat(64),
        container_name: "proj-web-1".into(),
        service: Some("web".into()),
        network: "proj_a".into(),
        ..Default::default()
    };
    mgr.attach(
        &req,
        std::path::Path::new(&format!("/proc/{}/ns/net", holder.id())),
    )
    .unwrap();

    let ls = dcpp(data.path(), &["ls"]);
    assert!(ls.status.success(), "{ls:?}");
    let text = stdout(&ls);
    assert!(text.starts_with("NETWORK ID"), "{text}");
    for n in [&a, &b, &c] {
        assert!(
            text.contains(&n.name)
                && text.contains(&n.bridge)
                && text.contains(&n.subnet.to_string()),
            "{text}"
        );
    }
    assert_eq!(
        stdout(&dcpp(data.path(), &["ls", "-q"])),
        "proj_a\nproj_b\nproj_c\n"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&dcpp(data.path(), &["ls", "--format", "json"]).stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);

    let inspect = dcpp(data.path(), &["inspect", "proj_a", &b.id[..8]]);
    assert!(inspect.status.success(), "{inspect:?}");
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(json[0]["endpoints"][0]["container_name"], "proj-web-1");
    assert_eq!(json[1]["internal"], true);
    let missing = dcpp(data.path(), &["inspect", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("network \"nope\" not found"));

    let rm = dcpp(data.path(), &["rm", "proj_a"]);
    assert_eq!(rm.status.code(), Some(1), "in use");
    assert!(
        String::from_utf8_lossy(&rm.stderr).contains("in use by container(s) proj-web-1"),
        "{rm:?}"
    );
    let rm = dcpp(data.path(), &["rm", "proj_c"]);
    assert!(rm.status.success(), "{rm:?}");
    assert!(!link_exists(&c.bridge));

    let prune = dcpp(data.path(), &["prune"]);
    assert_eq!(stdout(&prune), "proj_b\n", "only the idle network goes");
    assert!(!link_exists(&b.bridge) && link_exists(&a.bridge));

    mgr.detach(&"f".repeat(64), None).unwrap();
    assert_eq!(stdout(&dcpp(data.path(), &["prune"])), "proj_a\n");
    assert!(!link_exists(&a.bridge));
    let _ = holder.kill();
    let _ = holder.wait();
}
