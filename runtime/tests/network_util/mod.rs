//! Helpers for the network tests: stand-in containers (a busybox process in its own network and
//! mount namespace, with its own /etc/resolv.conf), unique instance names, and snapshots of the
//! host's links, addresses and nft ruleset.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcpp_runtime::network::{DnsOptions, NetworkOptions};

pub const BUSYBOX: &str = "/bin/busybox";

/// Options for a test instance: unique prefix, table and pool, masquerade off, DNS on port 53
/// of its own gateways with `upstreams` (never the internet).
pub fn options(
    data_dir: &Path,
    tag: &str,
    pool: &str,
    dns: Option<Vec<std::net::SocketAddr>>,
) -> NetworkOptions {
    let mut o = NetworkOptions::new(data_dir);
    o.bridge_prefix = tag.to_owned();
    o.nft_table = format!("dcpp_test_{tag}");
    // /24 blocks, as these tests' addresses expect.
    o.pools = dcpp_runtime::network::parse_pools(&[format!("{pool}/24")]).unwrap();
    o.masquerade = false;
    o.dns = dns.map(|u| DnsOptions {
        port: 53,
        upstreams: Some(u),
    });
    o
}

/// A stand-in container: `busybox httpd` serving `body` at `/`, as PID 1 of nothing but in its
/// own network namespace (only `lo`) and a private mount namespace whose /etc/resolv.conf is a
/// file the test controls.
pub struct Endpoint {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Endpoint {
    pub fn spawn(body: &str) -> Endpoint {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} missing: install busybox-static"
        );
        let dir = tempfile::Builder::new()
            .prefix("dcpp-net-ep-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("www")).unwrap();
        std::fs::write(dir.path().join("www/index.html"), body).unwrap();
        std::fs::write(dir.path().join("resolv.conf"), "").unwrap();
        let script = format!(
            "mount --bind {d}/resolv.conf /etc/resolv.conf && exec {BUSYBOX} httpd -f -p 80 -h {d}/www",
            d = dir.path().display()
        );
        let child = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--propagation",
                "private",
                BUSYBOX,
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let ep = Endpoint { child, dir };
        // The namespace exists once unshare has exec'd; wait until httpd listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ep
                .exec(&["sh", "-c", "netstat -ltn | grep -q ':80 '"])
                .status
                .success()
            {
                return ep;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("stand-in container did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    pub fn set_resolv_conf(&self, text: &str) {
        std::fs::write(self.dir.path().join("resolv.conf"), text).unwrap();
    }

    /// Runs a busybox applet inside the endpoint's namespaces.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "-m", BUSYBOX])
            .args(args)
            .output()
            .expect("nsenter")
    }

    /// `wget -q -O - url` inside, killed after 3 s; `Ok(body)` or what it said. (Debian's
    /// busybox 1.35 wget crashes with `-T`, hence the `timeout` applet.)
    pub fn wget(&self, url: &str) -> Result<String, Failed> {
        let out = self.exec(&["timeout", "3", BUSYBOX, "wget", "-q", "-O", "-", url]);
        Failed::check(out)
    }

    pub fn ipv4_of(&self, ifname: &str) -> Option<Ipv4Addr> {
        let out = self.exec(&["ip", "-4", "-o", "addr", "show", "dev", ifname]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse().ok())
    }

    pub fn default_route(&self) -> String {
        // busybox `ip route show default` does not filter, so filter here.
        let out = self.exec(&["ip", "route"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("default"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `ip -o link`, `ip -o addr` and `nft list ruleset` that mention this instance
/// (its interface prefix, its table, its pool's first two octets), so parallel tests of other
/// instances do not disturb the comparison.
pub fn host_snapshot(prefix: &str, table: &str, pool_hint: &str) -> Vec<String> {
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect(args[0]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut out = Vec::new();
    for l in run(&["ip", "-o", "link"]).lines() {
        let name = l
            .split(':')
            .nth(1)
            .unwrap_or("")
            .trim()
            .split('@')
            .next()
            .unwrap_or("");
        if name.starts_with(prefix) {
            out.push(format!("link {name}"));
        }
    }
    for l in run(&["ip", "-o", "addr"]).lines() {
        if l.contains(pool_hint)
            || l.split_whitespace()
                .nth(1)
                .is_some_and(|n| n.starts_with(prefix))
        {
            out.push(format!("addr {l}"));
        }
    }
    for l in run(&["nft", "list", "tables"]).lines() {
        if l.contains(table) {
            out.push(format!("nft {l}"));
        }
    }
    out
}

/// A TCP port free right now on all addresses.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `curl -s http://127.0.0.1:port/` from the host.
pub fn curl(url: &str) -> Result<String, Failed> {
    let out = Command::new("curl")
        .args(["-s", "-m", "3", url])
        .output()
        .expect("curl");
    Failed::check(out)
}

/// A client command (`wget`, `curl`) that did not fetch the page.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {stderr}")]
pub struct Failed {
    /// how it ended
    pub status: std::process::ExitStatus,
    /// what it said
    pub stderr: String,
}

impl Failed {
    /// The command's stdout if it succeeded.
    fn check(out: std::process::Output) -> Result<String, Failed> {
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Failed {
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

/// Removes everything of the instance described by its options when dropped, even after a
/// failed assertion (it works from the state file, like a restarted daemon would).
pub struct DestroyOnDrop(pub NetworkOptions);

impl Drop for DestroyOnDrop {
    fn drop(&mut self) {
        let mut o = self.0.clone();
        o.dns = None;
        if let Err(e) = dcpp_runtime::network::NetworkManager::open(o).and_then(|m| m.destroy()) {
            eprintln!("teardown: {e}");
        }
    }
}

/// The host's own non-loopback IPv4 address (the source it would use towards a documentation
/// address; a UDP connect sends nothing).
pub fn host_address() -> Ipv4Addr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.254:9").unwrap();
    match s.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("no IPv4 host address: {other}"),
    }
}

/// A UDP echo server on `port` inside the network namespace of `pid` (a thread that entered the
/// namespace; the socket stays there).
pub fn udp_echo_in(pid: u32, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], peer);
        }
    });
    rx.recv().unwrap();
}
