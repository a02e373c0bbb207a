//! Several [`Rig`] daemons side by side on this host, joined into one cluster with
//! `dcpp cluster join --token …` as a user would. Each node is a full rig: its own slot, so its
//! own data dir and image store, socket, listen address, cgroup parent, bridge prefix, nft
//! table and address pool.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::Underlay;
use super::{Rig, stderr, stdout};

/// How a node after the first joins.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Join {
    Manager,
    Worker,
}

pub struct Cluster {
    pub nodes: Vec<Rig>,
    /// Node names, by index: `a`, `b`, `c`, …
    pub names: Vec<String>,
    /// The test hosts' network, when each node runs in a namespace of its own
    /// ([`Cluster::form_in_netns`]); dropped after the nodes.
    pub underlay: Option<Underlay>,
}

impl Cluster {
    /// Node `a` creates the cluster; the others join it as `joins` says (one entry per further
    /// node). `tag`: two lowercase letters; node `x` takes a slot tagged `{tag}x`. Returns once
    /// every node lists every node.
    pub fn form(tag: &str, joins: &[Join]) -> Cluster {
        Cluster::form_with(tag, joins, &[])
    }

    /// [`Cluster::form`] with extra `dcpp daemon` flags on every node.
    pub fn form_with(tag: &str, joins: &[Join], extra: &[&str]) -> Cluster {
        Cluster::form_on(tag, joins, extra, None)
    }

    /// [`Cluster::form_with`] with each node in a network namespace of its own on an
    /// underlay of the test's, as separate machines would be: stack networks span them.
    pub fn form_in_netns(tag: &str, joins: &[Join], extra: &[&str]) -> Cluster {
        let u = Underlay::new(&format!("{tag}u"), joins.len() + 1);
        Cluster::form_on(tag, joins, extra, Some(u))
    }

    fn form_on(tag: &str, joins: &[Join], extra: &[&str], underlay: Option<Underlay>) -> Cluster {
        let names: Vec<String> = (0..=joins.len())
            .map(|i| char::from(b'a' + i as u8).to_string())
            .collect();
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut r = Rig::unstarted(&format!("{tag}{n}"));
                r.extra = extra.iter().map(|s| s.to_string()).collect();
                if let Some(u) = &underlay {
                    r.wrapper = u.wrapper(i);
                    r.listen = format!("{}:7377", u.addrs[i]);
                }
                r.start_daemon();
                r
            })
            .collect();
        let cl = Cluster {
            nodes,
            names,
            underlay,
        };
        let init = cl.ok(0, &["cluster", "init"]);
        let addr = init
            .lines()
            .filter_map(|l| l.trim().strip_prefix("dcpp cluster join --token "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .next()
            .unwrap_or_else(|| panic!("no join command in:\n{init}"))
            .to_string();
        let token = |role: &str| {
            let t = cl
                .ok(0, &["cluster", "join-token", role, "-q"])
                .trim()
                .to_string();
            assert!(
                init.contains(&t),
                "the {role} token of join-token is the one init printed"
            );
            t
        };
        let (manager, worker) = (token("manager"), token("worker"));
        assert_eq!(addr, cl.nodes[0].listen, "{init}");
        for (i, j) in joins.iter().enumerate() {
            let (token, role) = match j {
                Join::Manager => (&manager, "as a manager"),
                Join::Worker => (&worker, "as a worker"),
            };
            let out = cl.ok(i + 1, &["cluster", "join", "--token", token, &addr]);
            assert!(out.contains(role), "{out}");
        }
        // Every manager knows all of them, each with a fresh heartbeat from its agent (a
        // worker holds no cluster state to list).
        let n = cl.nodes.len();
        let managers: Vec<&Rig> = cl
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || matches!(joins[i - 1], Join::Manager))
            .map(|(_, r)| r)
            .collect();
        cl.wait_until("every node listed by every manager", 30, || {
            managers.iter().all(|r| {
                let out = r.dcpp(&["node", "ls", "--format", "json"]);
                out.status.success()
                    && serde_json::from_slice::<Vec<Value>>(&out.stdout).is_ok_and(|v| v.len() == n)
            })
        });
        cl
    }

    /// Runs a command on node `i` that must succeed; returns stdout.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.nodes[i].dcpp(args);
        assert!(
            out.status.success(),
            "dcpp {args:?} on {} failed: {}\n{}\n{}",
            self.names[i],
            stderr(&out),
            stdout(&out),
            self.logs()
        );
        stdout(&out)
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .zip(&self.names)
            .map(|(n, name)| format!("--- daemon {name} ({}) log ---\n{}", n.id, n.log()))
            .collect()
    }

    /// A node whose daemon runs (to ask while another one is down).
    pub fn live(&self) -> usize {
        self.nodes
            .iter()
            .position(Rig::running_daemon)
            .expect("a node whose daemon runs")
    }

    /// Polls `f` every 200 ms until it holds; returns how long that took.
    pub fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            let ps = self
                .nodes
                .iter()
                .find(|n| n.running_daemon())
                .map(|n| stdout(&n.dcpp(&["ps", "-a"])));
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}\n{}\n{}",
                ps.unwrap_or_default(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        start.elapsed()
    }
}

impl Drop for Cluster {
    /// Every daemon dies first, so that no node's cleanup waits on a cluster that is half
    /// gone; each rig then removes what its node left.
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }
}
