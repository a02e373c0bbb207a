//! Test hosts: each node's daemon in a network namespace of its own, the namespaces joined by
//! an underlay bridge this test owns, with addresses that exist only inside those namespaces
//! (the bridge itself has none, so nothing of the test's traffic can leave the machine).
//! Daemons start under `nsenter --net=…`, which keeps the host's mounts and cgroup
//! hierarchies (`ip netns exec` would remount /sys).

use std::process::{Command, Stdio};

use crate::slot::Slot;

pub struct Underlay {
    /// `/run/netns/<name>` of each host, by index.
    pub hosts: Vec<String>,
    /// Underlay address of each host.
    pub addrs: Vec<String>,
    /// The slot's link prefix (`x<NN>`), which the slot's scrub cleans up after a crash.
    prefix: String,
    bridge: String,
    // Last: released after the links under its names are gone.
    _slot: Slot,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Underlay {
    /// `n` hosts on a fresh underlay `10.<slot>.250.0/24`, host `i` at `.(i+1)`.
    pub fn new(tag: &str, n: usize) -> Underlay {
        let slot = Slot::take(tag);
        let prefix = format!("x{:02}", slot.n);
        let bridge = format!("{prefix}ub");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let mut u = Underlay {
            hosts: Vec::new(),
            addrs: Vec::new(),
            prefix,
            bridge,
            _slot: slot,
        };
        for i in 0..n {
            let name = format!("dcpp-{}-{i}", u.prefix);
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", &name]);
            u.hosts.push(name.clone());
            let outside = u.outside(i);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "uplink", "netns", &name,
            ]);
            ip(&["link", "set", &outside, "master", &u.bridge, "up"]);
            let addr = format!("10.{}.250.{}", u._slot.octet(), i + 1);
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "uplink",
            ]);
            ip(&["-n", &name, "link", "set", "uplink", "up"]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
            u.addrs.push(addr);
        }
        u
    }

    /// Host `i`'s end of its underlay link, on the bridge.
    fn outside(&self, i: usize) -> String {
        format!("{}u{i}", self.prefix)
    }

    /// `nsenter` into host `i`'s network namespace, for a daemon or a client.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", self.hosts[i]),
        ]
    }

    /// Runs `cmd` in host `i`'s network namespace; returns (success, stdout + stderr).
    pub fn run(&self, i: usize, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hosts[i]))
            .args(cmd)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Cuts host `i` off the underlay (its link goes down) or joins it back.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.outside(i),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        // A namespace's links (bridges, VXLAN devices, veths) and nft tables go with it.
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", h]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
