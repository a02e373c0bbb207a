//! Networks sized like docker's, through the real binary on a real daemon: compose `ipam`
//! reaches the containers (subnet, range, gateway, reserved aux addresses), a subnet that
//! overlaps another network or lies outside the pools and an exhausted pool fail the apply
//! with their reason, and one service on a default network runs more replicas than a /24
//! holds.

#[path = "support/dataplane_rig.rs"]
mod rig;
#[path = "rig/slot.rs"]
mod slot;

use rig::{IMAGE, Rig, stderr};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Second octet of the rig's pools (each slot has its own `10.<b>.0.0/16`).
fn octet(rig: &Rig) -> String {
    rig.pool.split('.').nth(1).unwrap().to_owned()
}

fn sleepers(stack: &str, replicas: u32, network: &str) -> String {
    format!(
        r#"name: {stack}
services:
  web:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    deploy:
      replicas: {replicas}
networks:
{network}
"#
    )
}

/// `apply` that must fail: its output (stdout and stderr).
fn apply_fails(rig: &Rig, file: &str) -> String {
    let out = rig.dcpp(&["apply", "-f", file, "--timeout", "60s"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert_ne!(out.status.code(), Some(0), "{said}");
    said
}

#[test]
fn ipam_subnet_range_gateway_and_aux_addresses_reach_the_containers_and_conflicts_fail_the_apply() {
    // Two /23 blocks, and a /24 that is one block of its own.
    let rig = Rig::with_pools("ia", |p| {
        let b = p.split('.').nth(1).unwrap().to_owned();
        format!("10.{b}.0.0/22/23,10.{b}.100.0/24/24")
    });
    let b = octet(&rig);
    let file = rig.write(
        "ip.yml",
        &sleepers(
            "ip",
            2,
            &format!(
                "  default:\n    ipam:\n      driver: default\n      config:\n        - subnet: 10.{b}.100.0/24\n          ip_range: 10.{b}.100.128/28\n          gateway: 10.{b}.100.254\n          aux_addresses: {{printer: 10.{b}.100.128}}\n"
            ),
        ),
    );
    rig.ok(&["apply", "-f", &file]);
    let ids: Vec<String> = rig
        .tasks()
        .iter()
        .filter(|t| t["service"] == "ip_web" && t["state"] == "running")
        .filter_map(|t| t["container_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 2);
    let mut addrs = Vec::new();
    for id in &ids {
        let (ok, text) = rig.exec(id, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(ok, "{text}");
        let addr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        addrs.push(addr);
        let (_, routes) = rig.exec(id, &["ip", "route"]);
        assert!(
            routes.contains(&format!("default via 10.{b}.100.254")),
            "{routes}"
        );
    }
    addrs.sort();
    // From the range, past the reserved aux address, with the subnet's prefix length.
    assert_eq!(
        addrs,
        [format!("10.{b}.100.129/24"), format!("10.{b}.100.130/24")]
    );

    // A subnet overlapping that network's: the apply fails and names both.
    let file = rig.write(
        "ov.yml",
        &sleepers(
            "ov",
            1,
            &format!("  default:\n    ipam:\n      config: [{{subnet: 10.{b}.100.64/26}}]\n"),
        ),
    );
    let said = apply_fails(&rig, &file);
    assert!(
        said.contains(&format!(
            "subnet 10.{b}.100.64/26 of network ov_default overlaps subnet 10.{b}.100.0/24 of network ip_default"
        )),
        "{said}"
    );
    rig.ok(&["down", "-p", "ov"]);

    // One outside the daemon's pools.
    let file = rig.write(
        "out.yml",
        &sleepers(
            "out",
            1,
            &format!("  default:\n    ipam:\n      config: [{{subnet: 10.{b}.200.0/24}}]\n"),
        ),
    );
    let said = apply_fails(&rig, &file);
    assert!(
        said.contains(&format!(
            "subnet 10.{b}.200.0/24 of network out_default lies outside the daemon's address pools"
        )),
        "{said}"
    );
    rig.ok(&["down", "-p", "out"]);

    // Two stacks take the two /23 blocks; the third finds every pool full.
    for s in ["e1", "e2"] {
        let f = rig.write(&format!("{s}.yml"), &sleepers(s, 1, "  default: {}\n"));
        rig.ok(&["apply", "-f", &f]);
    }
    let file = rig.write("e3.yml", &sleepers("e3", 1, "  default: {}\n"));
    let said = apply_fails(&rig, &file);
    assert!(
        said.contains(&format!(
            "address pool 10.{b}.0.0/22/23,10.{b}.100.0/24/24 is exhausted: no free block left for network e3_default"
        )),
        "{said}"
    );
    for s in ["e3", "e2", "e1", "ip"] {
        rig.ok(&["down", "-p", s]);
    }
}

#[test]
fn one_service_runs_more_replicas_than_a_24_holds_on_a_default_network() {
    // The slot's /16 alone: /20 blocks by default.
    let rig = Rig::new("ib");
    let b = octet(&rig);
    let file = rig.write("big.yml", &sleepers("big", 300, "  default: {}\n"));
    let start = std::time::Instant::now();
    let out = rig.dcpp(&["apply", "-f", &file, "--timeout", "150s"]);
    assert!(
        out.status.success(),
        "{}{}\n--- daemon log ---\n{}",
        stdout(&out),
        stderr(&out),
        rig.log()
    );
    eprintln!("300 replicas converged in {:?}", start.elapsed());
    let running = rig
        .tasks()
        .iter()
        .filter(|t| t["service"] == "big_web" && t["state"] == "running")
        .count();
    assert_eq!(running, 300);
    let text = rig.ok(&["network", "inspect", "big_default"]);
    assert!(text.contains(&format!("\"10.{b}.0.0/20\"")), "{text}");
    rig.ok(&["down", "-p", "big"]);
}
