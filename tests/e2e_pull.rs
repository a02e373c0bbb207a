//! The agent pulls images it does not have, end to end through the real binary as root: a real
//! `docker-registry` on a free loopback port holds a busybox image pushed by `dcpp image push`
//! from another data dir; a daemon on a fresh data dir applies a stack that names it.

#[path = "../runtime/tests/common/busybox.rs"]
mod busybox;
#[path = "../runtime/tests/common/registry.rs"]
#[allow(dead_code)]
mod registry;
#[path = "rig/slot.rs"]
mod slot;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dcpp");

struct Daemon {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    cgroup: String,
    prefix: String,
    table: String,
    child: Option<Child>,
    // Last: released only after `Drop` has cleaned up under its names.
    _slot: crate::slot::Slot,
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        let slot = crate::slot::Slot::take(tag);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dcpp-e2e-{tag}-"))
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        let mut d = Daemon {
            data: root.join("data"),
            socket: root.join("dcpp.sock"),
            cgroup: slot.cgroup.clone(),
            prefix: slot.prefix.clone(),
            table: slot.table.clone(),
            root,
            _tmp: tmp,
            child: None,
            _slot: slot,
        };
        let log = std::fs::File::create(d.root.join("daemon.log")).unwrap();
        let child = Command::new(BIN)
            .args(["--log", "info", "--data-dir"])
            .arg(&d.data)
            .arg("daemon")
            .args(["--listen", &format!("127.0.0.1:{}", registry::free_port())])
            .arg("--socket")
            .arg(&d.socket)
            .args(["--cgroup-parent", &d.cgroup])
            .args(["--bridge-prefix", &d.prefix])
            .args(["--nft-table", &d.table])
            .args(["--network-pool", &d._slot.pool])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.dcpp(&["cluster", "status"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    fn dcpp(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .env("DCPP_CGROUP_PARENT", &self.cgroup)
            .args(args)
            .current_dir(&self.root)
            .output()
            .unwrap()
    }

    fn apply(&self, name: &str, yaml: &str) -> Output {
        let p = self.root.join(name);
        std::fs::write(&p, yaml).unwrap();
        self.dcpp(&["apply", "-f", p.to_str().unwrap(), "--timeout", "60s"])
    }

    /// `GET /metrics` on the daemon's socket, parsed.
    fn scrape(&self) -> prometheus_parse::Scrape {
        use std::io::{Read, Write};
        let mut u = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        u.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        u.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.contains(" 200 "), "{head}");
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
    }

    fn running(&self, service: &str) -> usize {
        let out = self.dcpp(&["ps", "--format", "json"]);
        let tasks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        tasks
            .iter()
            .filter(|t| t["service"] == service && t["state"] == "running")
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for stack in ["pull", "bad", "gone", "never", "always"] {
            let _ = self.dcpp(&["down", "-p", stack, "--timeout", "30s"]);
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
            c.kill().ok();
            c.wait().ok();
        }
        let out = self.dcpp(&["container", "ls", "-a", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.dcpp(&["container", "rm", "-f", id]);
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .stderr(Stdio::null())
            .status();
        if let Ok(out) = Command::new("ip").args(["-o", "link"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = l.split(": ").nth(1) {
                    let name = name.split('@').next().unwrap_or("");
                    if name.starts_with(&self.prefix) {
                        let _ = Command::new("ip").args(["link", "del", name]).status();
                    }
                }
            }
        }
        // Every mounted hierarchy, whatever the host co-mounts (cpu and cpuacct are
        // separate here, `cpu,cpuacct` elsewhere): a fixed list leaked the others.
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(&self.cgroup));
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The sum of the samples of `metric` whose labels include `labels`.
fn metric(sc: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    sc.samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            v => panic!("{metric}: not a number: {v:?}"),
        })
        .sum()
}

fn sleeper(stack: &str, image: &str, replicas: u32) -> String {
    format!(
        "name: {stack}\nservices:\n  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    \
         stop_signal: SIGKILL\n    deploy:\n      replicas: {replicas}\n"
    )
}

#[test]
fn apply_pulls_a_missing_image_once_and_reports_pull_failures() {
    let reg = registry::Registry::start();
    // Push a busybox image from a scratch data dir; the daemon's own store stays empty.
    let src = tempfile::tempdir().unwrap();
    let rootfs = busybox::rootfs_tempdir();
    let image = format!("{}/e2e/busybox:v1", reg.addr);
    let local = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(src.path())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "dcpp {args:?}: {}", text(&out));
    };
    local(&["image", "import", rootfs.path().to_str().unwrap(), &image]);
    local(&["image", "push", &image]);

    let d = Daemon::start("pl");
    let out = d.apply("pull.yml", &sleeper("pull", &image, 3));
    let all = text(&out);
    assert!(
        out.status.success(),
        "{all}\n--- daemon log ---\n{}",
        d.log()
    );
    assert!(all.contains(&format!("pulling {image}")), "{all}");
    assert_eq!(d.running("pull_app"), 3);
    // Three tasks needed it at once; the manifest was fetched by one pull.
    let manifest_gets = reg
        .log()
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains("/v2/e2e/busybox/manifests/v1"))
        .count();
    assert_eq!(manifest_gets, 1, "{}", reg.log());
    // One pull, timed, with the bytes of its layers (a gzipped busybox: hundreds of kB).
    let sc = d.scrape();
    let ok = [("result", "ok")];
    assert_eq!(metric(&sc, "dcpp_agent_image_pulls_total", &ok), 1.0);
    assert_eq!(
        metric(&sc, "dcpp_agent_image_pull_duration_seconds_count", &[]),
        1.0
    );
    let pulled = metric(&sc, "dcpp_agent_image_pull_bytes_total", &[]);
    assert!(pulled > 1e5, "{pulled} bytes");
    let images = d.dcpp(&["image", "ls"]);
    assert!(text(&images).contains("e2e/busybox"), "{}", text(&images));

    // An unknown tag: the apply fails naming the reference and the registry.
    let missing = format!("{}/e2e/busybox:nope", reg.addr);
    let out = d.apply("bad.yml", &sleeper("bad", &missing, 1));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("image pull failed"), "{all}");
    assert!(all.contains(&missing), "{all}");
    assert!(
        all.contains(&format!("not found in registry {}", reg.addr)),
        "{all}"
    );

    // A registry nobody listens on: unreachable, again one line naming it.
    let port = registry::free_port();
    let gone = format!("127.0.0.1:{port}/e2e/busybox:v1");
    let out = d.apply("gone.yml", &sleeper("gone", &gone, 1));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("registry 127.0.0.1:{port} unreachable")),
        "{all}"
    );
    let failed = metric(
        &d.scrape(),
        "dcpp_agent_image_pulls_total",
        &[("result", "failed")],
    );
    assert!(failed >= 2.0, "{failed} failed pulls");
    // The pulled stack kept running throughout.
    assert_eq!(d.running("pull_app"), 3);

    // pull_policy: never — an image the node lacks fails without asking any registry.
    let before = reg.log().lines().count();
    let never = format!("{}/e2e/busybox:v2", reg.addr);
    let yaml =
        sleeper("never", &never, 1).replace("    command:", "    pull_policy: never\n    command:");
    let out = d.apply("never.yml", &yaml);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("pull_policy: never"), "{all}");
    assert_eq!(reg.log().lines().count(), before, "{}", reg.log());

    // pull_policy: always — the image is local already, yet the node asks the registry again.
    let yaml = sleeper("always", &image, 1)
        .replace("    command:", "    pull_policy: always\n    command:");
    let out = d.apply("always.yml", &yaml);
    let all = text(&out);
    assert!(
        out.status.success(),
        "{all}\n--- daemon log ---\n{}",
        d.log()
    );
    assert_eq!(d.running("always_app"), 1);
    // A second pull, which transferred none of the layers it already had.
    let sc = d.scrape();
    assert_eq!(metric(&sc, "dcpp_agent_image_pulls_total", &ok), 2.0);
    assert_eq!(
        metric(&sc, "dcpp_agent_image_pull_bytes_total", &[]),
        pulled
    );
    let manifest_gets = reg
        .log()
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains("/v2/e2e/busybox/manifests/v1"))
        .count();
    assert_eq!(manifest_gets, 2, "{}", reg.log());
}
