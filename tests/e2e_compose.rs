//! Compose mount, limit and namespace keys end to end through the real binary, as root on the
//! real kernel: named volumes that outlive container re-creation and `dcpp down`, read-only
//! binds, tmpfs mounts, ulimits, sysctls and `network_mode: service:NAME`, each checked from
//! inside the containers (`dcpp container exec`, `dcpp logs`). The daemon rig is the shared one
//! of `rig/mod.rs`: own data dir, socket, port, and a slot for names and pool.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::collections::BTreeSet;

use rig::*;

impl Rig {
    /// The container id of the running task of `service` (`<stack>_<name>`).
    fn container_of(&self, service: &str) -> String {
        self.tasks()
            .into_iter()
            .find(|t| t["service"] == service && t["state"] == "running")
            .and_then(|t| t["container_id"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no running task of {service}: {:?}", self.tasks()))
    }

    /// `dcpp container exec ID args…`: (success, stdout + stderr).
    fn exec(&self, id: &str, args: &[&str]) -> (bool, String) {
        let mut a = vec!["container", "exec", id];
        a.extend_from_slice(args);
        let out = self.dcpp(&a);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn exec_ok(&self, id: &str, args: &[&str]) -> String {
        let (ok, text) = self.exec(id, args);
        assert!(ok, "exec {args:?} in {id} failed: {text}");
        text
    }
}

/// `generation` changes the store service's environment, which re-creates its container.
fn stack(generation: u32) -> String {
    format!(
        r#"name: cmp
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "echo limits $$(ulimit -n) $$(ulimit -Hn); exec httpd -f -p 8080 -h /www"]
    stop_grace_period: 1s
    tmpfs:
      - /scratch:size=8m
    ulimits:
      nofile:
        soft: 1024
        hard: 2048
    sysctls:
      net.core.somaxconn: 1234
      kernel.shmmni: 1111
  side:
    image: {IMAGE}
    network_mode: service:web
    stop_grace_period: 1s
    command: ["sh", "-c", "until wget -q -O- http://127.0.0.1:8080/; do sleep 0.2; done; echo side-done; exec sleep 3600"]
  store:
    image: {IMAGE}
    stop_grace_period: 1s
    environment:
      GENERATION: "{generation}"
    volumes:
      - data:/data
      - ./host:/host:ro
      - type: tmpfs
        target: /cache
        tmpfs:
          size: 1048576
    command: ["sh", "-c", "test -f /data/first || echo \"born in generation $$GENERATION\" > /data/first; exec sleep 3600"]
volumes:
  data: {{}}
"#
    )
}

#[test]
fn compose_volumes_tmpfs_ulimits_sysctls_and_network_mode_service() {
    let rig = Rig::new("cv");
    std::fs::create_dir(rig.root.join("host")).unwrap();
    std::fs::write(rig.root.join("host/hello"), "from the host\n").unwrap();
    let file = rig.write("compose.yml", &stack(1));
    let out = rig.ok(&["apply", "-f", &file, "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");

    // (b) tmpfs mounts, service-level with its size and long syntax.
    let web = rig.container_of("cmp_web");
    let mounts = rig.exec_ok(&web, &["cat", "/proc/mounts"]);
    let scratch = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/scratch"))
        .unwrap_or_else(|| panic!("no /scratch mount: {mounts}"));
    assert!(
        scratch.starts_with("tmpfs /scratch tmpfs") && scratch.contains("size=8192k"),
        "{scratch}"
    );
    let store = rig.container_of("cmp_store");
    let mounts = rig.exec_ok(&store, &["cat", "/proc/mounts"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs /cache tmpfs") && l.contains("size=1024k")),
        "{mounts}"
    );

    // (c) ulimits: soft and hard as written.
    rig.wait_until("web printed its limits", 20, || {
        rig.ok(&["logs", "web"]).contains("limits 1024 2048")
    });
    let limits = rig.exec_ok(&web, &["cat", "/proc/1/limits"]);
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    assert_eq!(
        nofile.split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "1024", "2048", "files"]
    );

    // (d) sysctls of the container's own network and IPC namespaces.
    let v = rig.exec_ok(&web, &["cat", "/proc/sys/net/core/somaxconn"]);
    assert_eq!(v.trim(), "1234");
    let v = rig.exec_ok(&web, &["cat", "/proc/sys/kernel/shmmni"]);
    assert_eq!(v.trim(), "1111");
    // …and only there: the host keeps its own value.
    let host = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    assert_ne!(host.trim(), "1234");

    // (e) the sidecar shares web's network namespace: web answers on its 127.0.0.1.
    rig.wait_until("sidecar fetched from web", 20, || {
        rig.ok(&["logs", "side"]).contains("hello from dcpp")
    });
    let side = rig.container_of("cmp_side");
    let web_if = rig.exec_ok(&web, &["cat", "/proc/net/dev"]);
    let side_if = rig.exec_ok(&side, &["cat", "/proc/net/dev"]);
    let names = |t: &str| -> BTreeSet<String> {
        t.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
            .collect()
    };
    assert_eq!(names(&web_if), names(&side_if));
    assert!(names(&web_if).len() >= 2, "{web_if}");

    // (a) named volume and read-only bind.
    let born = rig.exec_ok(&store, &["cat", "/data/first"]);
    assert_eq!(born.trim(), "born in generation 1");
    assert_eq!(
        rig.exec_ok(&store, &["cat", "/host/hello"]).trim(),
        "from the host"
    );
    let (ok, text) = rig.exec(&store, &["sh", "-c", "echo x > /host/new"]);
    assert!(!ok && text.contains("Read-only"), "{text}");
    assert!(!rig.root.join("host/new").exists());
    // The volume carries the compose project prefix.
    let vols = rig.ok(&["volume", "ls", "-q"]);
    assert!(vols.lines().any(|l| l == "cmp_data"), "{vols}");

    // An update re-creates the store container; the volume's data stays.
    let file = rig.write("compose.yml", &stack(2));
    let out = rig.ok(&["apply", "-f", &file, "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");
    let store2 = rig.container_of("cmp_store");
    assert_ne!(store2, store);
    assert_eq!(
        rig.exec_ok(&store2, &["sh", "-c", "echo $GENERATION; cat /data/first"])
            .lines()
            .collect::<Vec<_>>(),
        ["2", "born in generation 1"]
    );

    // Part 2 end to end: web's container dies; the sidecar, left in a dead namespace, is
    // replaced and joins the new web.
    let web_task = |rig: &Rig| rig.container_of("cmp_web");
    rig.ok(&["container", "kill", &web]);
    rig.wait_until("web replaced and sidecar re-created", 30, || {
        let tasks = rig.tasks();
        let run = |svc: &str| {
            tasks
                .iter()
                .find(|t| t["service"] == svc && t["state"] == "running")
                .and_then(|t| t["container_id"].as_str().map(str::to_string))
        };
        run("cmp_web").is_some_and(|w| w != web) && run("cmp_side").is_some_and(|s| s != side)
    });
    let side2 = rig.container_of("cmp_side");
    rig.wait_until("new sidecar fetched from the new web", 20, || {
        rig.ok(&["logs", &side2]).contains("hello from dcpp")
    });
    let web2 = web_task(&rig);
    assert_eq!(
        names(&rig.exec_ok(&web2, &["cat", "/proc/net/dev"])),
        names(&rig.exec_ok(&side2, &["cat", "/proc/net/dev"]))
    );

    // `down` without a volume flag keeps named volumes (compose's default; `down -v` drops
    // them): applying again finds the data.
    rig.ok(&["down", "-p", "cmp", "--timeout", "30s"]);
    rig.wait_until("containers removed", 30, || rig.containers().is_empty());
    assert!(
        rig.ok(&["volume", "ls", "-q"])
            .lines()
            .any(|l| l == "cmp_data")
    );
    let out = rig.ok(&["apply", "-f", &file, "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");
    let store3 = rig.container_of("cmp_store");
    assert_eq!(
        rig.exec_ok(&store3, &["cat", "/data/first"]).trim(),
        "born in generation 1"
    );
    // `down -v` removes the stack's volumes once its containers are gone.
    let out = rig.ok(&["down", "-v", "-p", "cmp", "--timeout", "30s"]);
    assert!(out.contains("volume cmp_data removed"), "{out}");
    assert!(rig.containers().is_empty());
    assert!(
        !rig.ok(&["volume", "ls", "-q"])
            .lines()
            .any(|l| l.starts_with("cmp_")),
        "stack volumes left after down -v"
    );

    // A ulimit above what this process may grant fails the task with the runtime's reason;
    // the daemon keeps going.
    let bad = rig.write(
        "bad.yml",
        &format!(
            "name: lim\nservices:\n  app:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    ulimits:\n      nofile: 1048576\n"
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &bad, "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ulimit nofile") && err.contains("CAP_SYS_RESOURCE"),
        "{err}"
    );
    rig.ok(&["cluster", "status"]);
    rig.ok(&["down", "-p", "lim", "--timeout", "30s"]);
}

/// examples/sidecar runs as documented in its header.
#[test]
fn sidecar_example_runs() {
    let rig = Rig::new("cs");
    let rootfs = rig.root.join("rootfs");
    rig.ok(&[
        "image",
        "import",
        rootfs.to_str().unwrap(),
        "dcpp.local/busybox:latest",
    ]);
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sidecar/compose.yml");
    let out = rig.ok(&["apply", "-f", file, "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");
    rig.wait_until("probe output", 30, || {
        rig.ok(&["logs", "probe"])
            .contains("probe: hello from dcpp")
    });
    rig.wait_until("web output", 10, || {
        rig.ok(&["logs", "web"]).contains("start 1, nofile 4096")
    });
    rig.ok(&["down", "-p", "sidecar", "--timeout", "30s"]);
    rig.wait_until("containers removed", 30, || rig.containers().is_empty());
    rig.ok(&["volume", "rm", "sidecar_counter"]);
}
