//! Benchmark (ignored by the test run; `bench/network.sh` runs it): time to attach an endpoint
//! (veth pair + address + routes + DNS record) and TCP throughput host → container through a
//! published port (nftables DNAT) versus straight to the container's address.

mod network_util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dcpp_runtime::network::{AttachRequest, NetworkConfig, NetworkManager, PortMapping, Protocol};
use network_util::{DestroyOnDrop, free_port, options};

const ATTACHES: usize = 40;
const BYTES: u64 = 1 << 30;
const ROUNDS: usize = 5;

fn holder() -> Child {
    Command::new("unshare")
        .args(["--net", "/bin/busybox", "sleep", "600"])
        .spawn()
        .unwrap()
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A sink that counts bytes, listening on `port` inside the network namespace of `pid`.
fn sink_in(pid: u32, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    rx.recv().unwrap();
}

/// Gbit/s of pushing `BYTES` to `addr` over one connection.
fn push(addr: SocketAddr) -> f64 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    let buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < BYTES {
        s.write_all(&buf).unwrap();
        sent += buf.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read(&mut [0u8; 1]);
    sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}

/// The address of the host's default-route interface (a local, non-loopback address).
fn host_address() -> Ipv4Addr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // connect() on UDP sends nothing; it only picks the source address for that destination.
    s.connect("192.0.2.254:9")
        .or_else(|_| s.connect("10.255.255.254:9"))
        .unwrap();
    match s.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("no IPv4 host address: {other}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run bench/network.sh"]
fn bench_attach_and_published_port_throughput() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let opts = options(data.path(), "dtbn", "10.234.0.0/16", Some(vec![upstream]));
    let _teardown = DestroyOnDrop(opts.clone());
    let mgr = {
        let _g = rt.enter();
        NetworkManager::open(opts).unwrap()
    };
    mgr.create_network("bench", NetworkConfig::default())
        .unwrap();

    let mut holders = Kill((0..ATTACHES).map(|_| holder()).collect());
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    let mut ips: Vec<Ipv4Addr> = Vec::new();
    for (i, h) in holders.0.iter().enumerate() {
        let req = AttachRequest {
            container_id: format!("{i:064}"),
            container_name: format!("bench-{i}"),
            service: Some("bench".into()),
            network: "bench".into(),
            aliases: vec![],
            ipv4_address: None,
            withdrawn: false,
        };
        let t = Instant::now();
        let a = mgr
            .attach(
                &req,
                std::path::Path::new(&format!("/proc/{}/ns/net", h.id())),
            )
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        ips.push(a.ip);
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "attach ({ATTACHES} endpoints on one bridge): mean {:.2} ms, p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        times.iter().sum::<f64>() / times.len() as f64,
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 95 / 100],
        sorted[sorted.len() - 1]
    );
    let t = Instant::now();
    for i in 1..ATTACHES {
        mgr.detach(&format!("{i:064}"), None).unwrap();
    }
    println!(
        "detach: mean {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3 / (ATTACHES - 1) as f64
    );
    for mut h in holders.0.drain(1..) {
        let _ = h.kill();
        let _ = h.wait();
    }

    let pid = holders.0[0].id();
    sink_in(pid, 5001);
    let port = free_port();
    let map = PortMapping {
        host_ip: None,
        host_port: port,
        container_port: 5001,
        protocol: Protocol::Tcp,
    };
    mgr.publish(&format!("{:064}", 0), Some("bench"), &[map])
        .unwrap();
    let direct: SocketAddr = (ips[0], 5001).into();
    let published: SocketAddr = ("127.0.0.1".parse::<Ipv4Addr>().unwrap(), port).into();
    let host_ip = host_address();
    let via_host: SocketAddr = (host_ip, port).into();
    // Warm-up, then alternate the paths so drift affects all alike.
    push(direct);
    push(published);
    let (mut d, mut p, mut h) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        d.push(push(direct));
        p.push(push(published));
        h.push(push(via_host));
    }
    let (d, p, h) = (median(d), median(p), median(h));
    println!(
        "TCP host -> container, {} MiB, median of {ROUNDS}: direct {d:.2} Gbit/s; published via 127.0.0.1 {p:.2} Gbit/s (ratio {:.3}); published via host address {host_ip} {h:.2} Gbit/s (ratio {:.3})",
        BYTES >> 20,
        p / d,
        h / d
    );
    drop(mgr);
}
