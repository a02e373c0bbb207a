//! Issue 12, file modes, end to end through the real binary as root: a second local user, made
//! for the test and removed after it (even on failure), can read nothing under a daemon's data
//! dir — not the Raft store holding the cluster's tokens, not a container's spec, state or log,
//! not the image layers (so not a setuid-root binary in one of them) — while a stack whose
//! services run as a non-root user keeps working (published port, service DNS). A data dir an
//! older dcpp left loose is tightened when the daemon starts, without touching the modes inside
//! image layers.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rig::{IMAGE, Rig, free_port, http_get, stderr};

const SUID: &str = "bin/suid-busybox";

/// A local user that exists for the test only.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn create(tag: &str) -> User {
        let name = format!("dcpp{tag}{}", std::process::id() % 100_000);
        let _ = Command::new("userdel")
            .arg(&name)
            .stderr(Stdio::null())
            .status();
        // useradd fails while another process holds /etc/passwd's lock: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("useradd")
                .args(["-M", "-N", "-s", "/bin/sh", &name])
                .output()
                .expect("useradd");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        assert_ne!(uid, 0);
        User { name, uid, gid }
    }

    /// Runs `args` as this user, with no supplementary groups and no capabilities. Through a
    /// shell: setpriv itself execs with root's capabilities still in effect (they go at that
    /// exec), so the path walk of the command must be the shell's.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .args(["--", "/bin/sh", "-c", "exec \"$0\" \"$@\""])
            .args(args)
            .output()
            .unwrap()
    }

    /// `args` fails for this user with EACCES.
    fn assert_denied(&self, args: &[&str]) {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "{} could run {args:?}: status {}, {} bytes of output, stderr {err:?}",
            self.name,
            out.status,
            out.stdout.len()
        );
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("userdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The rig's busybox root with a setuid-root copy of busybox, a non-root user and explicit
/// modes (whatever the umask): 0755 directories, 0644 files.
fn secfiles_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "www"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join(SUID)).unwrap();
    std::fs::set_permissions(root.join(SUID), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    for f in ["etc/passwd", "etc/group", "www/index.html"] {
        std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// A rig whose daemon logs at debug level (tokens must not show even there), not started yet.
fn rig(tag: &str) -> Rig {
    let mut rig = Rig::unstarted_with(tag, secfiles_rootfs);
    // Others may walk up to the data dir: only its own modes stand in their way.
    std::fs::set_permissions(&rig.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    rig.log_level = "debug".into();
    rig
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Where a path under the data dir stands: dcpp's own (no group/other bit allowed), or content
/// of an image layer, a container's filesystem or a volume, a file shared with containers, or an
/// OCI runtime's state — all behind a dcpp directory that is 0700.
fn is_content(rel: &[String]) -> bool {
    let r: Vec<&str> = rel.iter().map(String::as_str).collect();
    matches!(
        r.as_slice(),
        ["containers", _, "rootfs" | "upper" | "work", ..]
            | ["containers", _, "hosts" | "hostname" | "resolv.conf"]
            | ["images", "layers", _, ..]
            | ["volumes", _, "_data", ..]
            | ["network", "resolv", _]
            | ["runtime", _, ..]
    )
}

/// Every dcpp-owned path under `data` whose mode grants group or others anything.
fn loose_paths(data: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &mut Vec<String>, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            rel.push(e.file_name().to_string_lossy().into_owned());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if !is_content(rel) && !m.file_type().is_symlink() {
                if m.mode() & 0o077 != 0 {
                    out.push(format!("{:o} {}", m.mode() & 0o7777, rel.join("/")));
                }
                if m.is_dir() {
                    walk(&e.path(), rel, out);
                }
            }
            rel.pop();
        }
    }
    let mut out = Vec::new();
    let m = std::fs::metadata(data).unwrap();
    if m.mode() & 0o077 != 0 {
        out.push(format!("{:o} <data dir>", m.mode() & 0o7777));
    }
    walk(data, &mut Vec::new(), &mut out);
    out
}

/// The setuid copy of busybox in the image's unpacked layer.
fn setuid_in_layer(data: &Path) -> PathBuf {
    let layers = data.join("images/layers");
    let p = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path().join(SUID))
        .find(|p| p.exists())
        .expect("the unpacked layer has the setuid binary");
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755, "setuid bit kept in the layer");
    assert_eq!(m.uid(), 0);
    p
}

fn compose(port: u16) -> String {
    format!(
        r#"name: sfs
services:
  web:
    image: {IMAGE}
    user: "1000:1000"
    environment:
      API_KEY: the-secret-in-config-json
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    volumes:
      - ./made-by-dcpp/sub:/made
    stop_grace_period: 1s
    ports:
      - "127.0.0.1:{port}:8080"
  client:
    image: {IMAGE}
    user: "1000:1000"
    stop_grace_period: 1s
    command:
      - sh
      - -c
      - 'while true; do echo "uid$(id -u) $(wget -q -O- http://web:8080/)"; sleep 0.3; done'
"#
    )
}

#[test]
fn another_local_user_can_read_nothing_under_the_data_dir() {
    let user = User::create("sf");
    let mut rig = rig("fa");
    // A socket dir the daemon has to create: it is made 0700.
    rig.socket = rig.root.join("run/dcpp.sock");
    rig.start_daemon();
    assert_eq!(
        std::fs::metadata(rig.root.join("run")).unwrap().mode() & 0o7777,
        0o700
    );
    let port = free_port();
    std::fs::write(rig.root.join("compose.yml"), compose(port)).unwrap();
    rig.ok(&["apply", "-f", "compose.yml"]);
    let running = |svc: &str| {
        rig.tasks()
            .into_iter()
            .find(|t| t["service"] == svc && t["state"] == "running")
    };
    rig.wait_until("both services running", 60, || {
        running("sfs_web").is_some() && running("sfs_client").is_some()
    });

    // Services running as uid 1000 work: the published port answers, and the client finds the
    // web service by name (reading /etc/resolv.conf as uid 1000) and fetches its page.
    rig.wait_until("the published port", 30, || {
        http_get(port).is_some_and(|b| b.contains("hello from dcpp"))
    });
    let client = running("sfs_client").unwrap()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    rig.wait_until("the client reaching web by name as uid 1000", 30, || {
        rig.ok(&["logs", &client])
            .contains("uid1000 hello from dcpp")
    });

    // A missing bind source dcpp creates on the host is 0755 (like docker's), not 0700, and
    // the service's uid 1000 can list it.
    for d in ["made-by-dcpp", "made-by-dcpp/sub"] {
        assert_eq!(
            std::fs::metadata(rig.root.join(d)).unwrap().mode() & 0o7777,
            0o755,
            "{d}"
        );
    }
    let web = running("sfs_web").unwrap()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ls = rig.dcpp(&["container", "exec", &web, "ls", "/made"]);
    assert!(ls.status.success(), "{}", stderr(&ls));

    // The second user reaches the test dir (so only the data dir's modes stand in the way)...
    let ls = user.run(&["ls", rig.root.to_str().unwrap()]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    // ...but nothing in the data dir.
    let web_dir = std::fs::read_dir(rig.data.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&web))
        .expect("the web container's dir");
    let config = web_dir.join("config.json");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("the-secret-in-config-json")
    );
    for f in [
        rig.data.join("raft/raft.redb"),
        config,
        web_dir.join("state.json"),
        web_dir.join("container.log"),
        rig.data.join("images/db.json"),
    ] {
        assert!(f.is_file(), "{} exists", f.display());
        user.assert_denied(&["cat", f.to_str().unwrap()]);
    }
    for d in ["", "images/layers", "containers", "raft"] {
        user.assert_denied(&["ls", rig.data.join(d).to_str().unwrap()]);
    }

    // A setuid-root binary in an image layer cannot be reached, let alone run, by the user;
    // the container from that image runs.
    let suid = setuid_in_layer(&rig.data);
    user.assert_denied(&[suid.to_str().unwrap(), "id", "-u"]);
    assert!(running("sfs_web").is_some());

    // Modes: nothing dcpp owns under the data dir grants group or others anything.
    assert_eq!(loose_paths(&rig.data), Vec::<String>::new());
    assert_eq!(
        std::fs::metadata(rig.data.join("raft/raft.redb"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&rig.socket).unwrap().mode() & 0o777,
        0o600
    );

    // Tokens never reach the log, not even at debug level.
    let tokens: serde_json::Value =
        serde_json::from_str(&rig.ok(&["cluster", "init", "--format", "json"])).unwrap();
    let log = rig.log();
    for k in ["manager", "worker"] {
        let t = tokens[k].as_str().unwrap();
        assert!(t.len() > 16, "{tokens}");
        assert!(!log.contains(t), "the {k} token is in the daemon log");
    }
    rig.ok(&["down", "-p", "sfs"]);
}

#[test]
fn a_loose_data_dir_is_tightened_at_daemon_start() {
    let mut rig = rig("ti");
    rig.start_daemon();
    rig.stop_daemon();

    // What an older dcpp (umask 022) left: dirs 0755, files 0644; inside the image layer,
    // the image's own modes, which must survive as they are.
    fn loosen(dir: &Path, rel: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            rel.push(e.file_name().to_string_lossy().into_owned());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if !is_content(rel) && !m.file_type().is_symlink() {
                let mode = if m.is_dir() { 0o755 } else { 0o644 };
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).unwrap();
                if m.is_dir() {
                    loosen(&e.path(), rel);
                }
            }
            rel.pop();
        }
    }
    std::fs::set_permissions(&rig.data, std::fs::Permissions::from_mode(0o755)).unwrap();
    loosen(&rig.data, &mut Vec::new());
    let layer = setuid_in_layer(&rig.data)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::set_permissions(layer.join("www"), std::fs::Permissions::from_mode(0o775)).unwrap();
    std::fs::set_permissions(
        layer.join("www/index.html"),
        std::fs::Permissions::from_mode(0o664),
    )
    .unwrap();
    let loose = loose_paths(&rig.data);
    assert!(loose.len() > 10, "{loose:?}");
    assert!(loose.iter().any(|p| p.ends_with("raft/raft.redb")));

    rig.start_daemon();
    assert_eq!(loose_paths(&rig.data), Vec::<String>::new());
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&rig.data), 0o700);
    assert_eq!(mode(&rig.data.join("raft")), 0o700);
    assert_eq!(mode(&rig.data.join("raft/raft.redb")), 0o600);
    assert_eq!(mode(&rig.data.join("images/layers")), 0o700);
    // The image's modes are the image's.
    assert_eq!(mode(&layer.join("www")), 0o775);
    assert_eq!(mode(&layer.join("www/index.html")), 0o664);
    assert_eq!(mode(&layer.join(SUID)), 0o4755);
    assert_eq!(mode(&layer.join("tmp")), 0o1777);
    let log = rig.log();
    let line = log
        .lines()
        .find(|l| l.contains("removed group/other access"))
        .unwrap_or_else(|| panic!("no summary line in the log:\n{}", tail(&log)));
    assert!(line.contains(&rig.data.display().to_string()), "{line}");
}
