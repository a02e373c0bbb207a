//! Secrets and configs through the real binary on a real daemon: what the container sees
//! (content, owner, mode, a read-only tmpfs mount), where the data is not (anywhere on the data
//! dir's disk, the daemon's log, `service inspect`, `dcpp config`, `events`), the CLI
//! (`dcpp secret …`, `dcpp configs …`), and rotation.

mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use rig::cluster::{Cluster, Join};
use rig::*;

impl Rig {
    /// The container ids of the running tasks of `service` (`<stack>_<name>`).
    fn running_containers(&self, service: &str) -> Vec<String> {
        self.tasks()
            .into_iter()
            .filter(|t| t["service"] == service && t["state"] == "running")
            .filter_map(|t| t["container_id"].as_str().map(str::to_string))
            .collect()
    }

    fn running_container(&self, service: &str) -> String {
        let mut id = None;
        self.wait_until(&format!("{service} running"), 60, || {
            id = self.running_containers(service).into_iter().next();
            id.is_some()
        });
        id.unwrap_or_default()
    }

    fn exec_ok(&self, id: &str, args: &[&str]) -> String {
        let mut a = vec!["container", "exec", id];
        a.extend_from_slice(args);
        let out = self.dcpp(&a);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "exec {args:?} in {id} failed: {text}");
        stdout(&out)
    }

    /// `dcpp apply` with extra environment variables; must succeed.
    fn apply_env(&self, file: &str, env: &[(&str, &str)]) -> String {
        let mut c = self.cmd();
        c.args(["apply", "-f", file, "--timeout", "60s"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "apply {file}: {text}");
        text
    }
}

fn random_token(what: &str) -> String {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    format!("{what}-{}", hex::encode(b))
}

/// Every regular file under `dir` on `dir`'s own file system (a tmpfs mounted inside is
/// memory, not disk, and is not entered), with its content.
fn files_on_disk(dir: &Path, dev: Option<u64>, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if dev.is_some_and(|d| md.dev() != d) {
            continue;
        }
        if md.is_dir() {
            files_on_disk(&p, dev, out);
        } else if md.is_file()
            && let Ok(b) = std::fs::read(&p)
        {
            out.push((p, b));
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Where on the data dir's disk (and in the daemon's log) `secret` appears, raw or hex-encoded.
fn leaks(rig: &Rig, secret: &str) -> Vec<String> {
    leaks_in(rig, secret, true)
}

/// [`leaks`]; with `!disk_only`, in the tmpfs mounts under the data dir too.
fn leaks_in(rig: &Rig, secret: &str, disk_only: bool) -> Vec<String> {
    let dev = std::fs::metadata(&rig.data).unwrap().dev();
    let mut files = Vec::new();
    files_on_disk(
        &rig.data,
        if disk_only { Some(dev) } else { None },
        &mut files,
    );
    assert!(
        files
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("raft")
                || p.extension().is_some_and(|e| e == "redb")),
        "no store files found under {}: {:?}",
        rig.data.display(),
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    files.push((rig.root.join("daemon.log"), rig.log().into_bytes()));
    let hexed = hex::encode(secret);
    files
        .into_iter()
        .filter(|(_, b)| contains(b, secret.as_bytes()) || contains(b, hexed.as_bytes()))
        .map(|(p, _)| p.display().to_string())
        .collect()
}

/// The `/proc/mounts` line of `target` inside the container.
fn mount_line(rig: &Rig, id: &str, target: &str) -> String {
    rig.exec_ok(id, &["cat", "/proc/mounts"])
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(target))
        .unwrap_or_else(|| panic!("no mount at {target}"))
        .to_string()
}

#[test]
fn secrets_and_configs_reach_the_container_on_a_read_only_tmpfs_and_nowhere_else() {
    let rig = Rig::new("sc");
    let db_pass = random_token("dbpass");
    let api_key = random_token("apikey");
    let app_conf = random_token("appconf");
    let env_conf = random_token("envconf");
    // Outside the data dir: the user's own file.
    let db_file = rig.write("db_pass.txt", &db_pass);
    rig.write("app.conf", &app_conf);
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: sc
services:
  app:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    secrets:
      - db_pass
      - source: api_key
        target: api
        uid: "1000"
        gid: "1001"
        mode: 0400
    configs:
      - app_conf
      - source: motd
        target: /etc/motd
        mode: 0440
      - source: env_conf
        target: conf/env.txt
secrets:
  db_pass:
    file: {db_file}
  api_key:
    environment: SC_API_KEY
configs:
  app_conf:
    file: ./app.conf
  motd:
    content: hello from a config
  env_conf:
    environment: SC_ENV_CONF
"#
        ),
    );
    let out = rig.apply_env(
        &file,
        &[("SC_API_KEY", &api_key), ("SC_ENV_CONF", &env_conf)],
    );
    for s in [&db_pass, &api_key] {
        assert!(!out.contains(s.as_str()), "apply printed a secret: {out}");
    }
    let id = rig.running_container("sc_app");

    // Content, owner and mode, compose's defaults where the file says nothing.
    assert_eq!(rig.exec_ok(&id, &["cat", "/run/secrets/db_pass"]), db_pass);
    assert_eq!(rig.exec_ok(&id, &["cat", "/run/secrets/api"]), api_key);
    assert_eq!(rig.exec_ok(&id, &["cat", "/app_conf"]), app_conf);
    assert_eq!(
        rig.exec_ok(&id, &["cat", "/etc/motd"]),
        "hello from a config"
    );
    assert_eq!(rig.exec_ok(&id, &["cat", "/conf/env.txt"]), env_conf);
    let stat = |p: &str| {
        rig.exec_ok(&id, &["stat", "-c", "%a %u %g", p])
            .trim()
            .to_string()
    };
    assert_eq!(stat("/run/secrets/db_pass"), "444 0 0");
    assert_eq!(stat("/run/secrets/api"), "400 1000 1001");
    assert_eq!(stat("/etc/motd"), "440 0 0");
    assert_eq!(stat("/app_conf"), "444 0 0");

    // A read-only tmpfs, not a file of the image or the disk.
    for target in ["/run/secrets/db_pass", "/run/secrets/api", "/etc/motd"] {
        let line = mount_line(&rig, &id, target);
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[2], "tmpfs", "{line}");
        assert!(f[3].split(',').any(|o| o == "ro"), "{line}");
    }
    let out = rig.dcpp(&[
        "container",
        "exec",
        &id,
        "sh",
        "-c",
        "echo x > /run/secrets/db_pass",
    ]);
    assert!(!out.status.success(), "the secret was writable");
    assert_eq!(rig.exec_ok(&id, &["cat", "/run/secrets/db_pass"]), db_pass);

    // Nowhere on the data dir's disk (raft log and snapshots, container dirs, logs), nor in
    // what the CLI prints.
    for s in [&db_pass, &api_key, &env_conf, &app_conf] {
        let found = leaks(&rig, s);
        assert!(found.is_empty(), "{s} found in {found:?}");
    }
    let inspect = rig.ok(&["service", "inspect", "sc_app"]);
    let config = {
        let mut c = rig.cmd();
        c.args(["config", "-f", &file])
            .env("SC_API_KEY", &api_key)
            .env("SC_ENV_CONF", &env_conf);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let events = {
        let out = std::process::Command::new("timeout")
            .args(["3", BIN])
            .args(rig.cmd().get_args())
            .args(["events", "--since", "0", "--json"])
            .output()
            .unwrap();
        stdout(&out)
    };
    assert!(events.contains("\"secret\""), "no secret events: {events}");
    let logs = {
        let out = rig.dcpp(&["logs", "sc_app"]);
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let secret_ls = rig.ok(&["secret", "ls"]);
    let secret_inspect = rig.ok(&["secret", "inspect", "sc_db_pass"]);
    for (what, text) in [
        ("service inspect", &inspect),
        ("config", &config),
        ("events", &events),
        ("logs", &logs),
        ("secret ls", &secret_ls),
        ("secret inspect", &secret_inspect),
    ] {
        for s in [&db_pass, &api_key] {
            assert!(
                !text.contains(s.as_str()) && !text.contains(&hex::encode(s)),
                "{what} shows {s}: {text}"
            );
        }
    }
    assert!(
        secret_ls.contains("sc_db_pass") && secret_ls.contains("sc_api_key"),
        "{secret_ls}"
    );
    assert!(secret_inspect.contains("\"sc_app\""), "{secret_inspect}");
    let configs_ls = rig.ok(&["configs", "ls"]);
    assert!(
        ["sc_app_conf", "sc_motd", "sc_env_conf"]
            .iter()
            .all(|c| configs_ls.contains(c)),
        "{configs_ls}"
    );

    // Gone with the container: no mount of it is left.
    let dir = rig.data.join("containers").join(&id);
    assert!(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!("{}/files", dir.display())),
        "no files tmpfs for {}",
        dir.display()
    );
    let out = rig.dcpp(&["down", "-f", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    rig.wait_until("the container removed", 30, || !dir.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("{}/files", dir.display())),
        "the files tmpfs was left: {mounts}"
    );
}

#[test]
fn a_missing_secret_file_or_variable_is_an_apply_error_at_its_position() {
    let rig = Rig::new("sm");
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: sm\nservices:\n  app:\n    image: {IMAGE}\n    secrets: [gone, unset]\n    configs: [cfg]\nsecrets:\n  gone:\n    file: ./no-such-file\n  unset:\n    environment: SM_NOT_SET\nconfigs:\n  cfg:\n    file: ./no-such-config\n"
        ),
    );
    let out = rig.dcpp(&["apply", "-f", &file, "--timeout", "10s"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{}{err}", stdout(&out));
    assert!(
        err.contains("compose.yml:9:11: secrets.gone.file: reading "),
        "{err}"
    );
    assert!(
        err.contains("compose.yml:11:18: secrets.unset.environment: environment variable SM_NOT_SET is not set"),
        "{err}"
    );
    assert!(
        err.contains("compose.yml:14:11: configs.cfg.file: reading "),
        "{err}"
    );
    // Nothing was stored; `dcpp config` still prints the file.
    assert!(rig.tasks().is_empty());
    assert!(!rig.ok(&["secret", "ls"]).contains("sm_"));
    let out = rig.dcpp(&["config", "-f", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn secret_cli_creates_lists_and_refuses_to_remove_one_in_use() {
    let rig = Rig::new("sl");
    let token = random_token("token");
    let src = rig.write("token.txt", &token);
    let out = rig.ok(&[
        "secret",
        "create",
        "shared_token",
        "-f",
        &src,
        "-l",
        "team=ops",
    ]);
    assert!(out.contains("version 1"), "{out}");
    let out = rig.dcpp(&["secret", "create", "shared_token", "-f", &src]);
    assert!(
        !out.status.success() && stderr(&out).contains("exists already"),
        "{}",
        stderr(&out)
    );
    rig.ok(&["configs", "create", "spare", "-f", &src]);
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: sl\nservices:\n  a:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    stop_signal: SIGKILL\n    secrets: [tok]\n  b:\n    image: {IMAGE}\n    command: [sleep, '3600']\n    stop_signal: SIGKILL\n    secrets: [{{source: tok, target: /run/secrets/other}}]\nsecrets:\n  tok:\n    external: true\n    name: shared_token\n"
        ),
    );
    rig.apply_env(&file, &[]);
    let a = rig.running_container("sl_a");
    let b = rig.running_container("sl_b");
    assert_eq!(rig.exec_ok(&a, &["cat", "/run/secrets/tok"]), token);
    assert_eq!(rig.exec_ok(&b, &["cat", "/run/secrets/other"]), token);

    let out = rig.dcpp(&["secret", "rm", "shared_token"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "rm of a used secret succeeded");
    assert!(err.contains("in use by services sl_a, sl_b"), "{err}");
    let ls = rig.json(&["secret", "ls", "--format", "json"]);
    let row = &ls.as_array().unwrap()[0];
    assert_eq!(row["name"], "shared_token");
    assert_eq!(row["version"], 1);
    assert_eq!(row["labels"]["team"], "ops");
    assert_eq!(row["services"], serde_json::json!(["sl_a", "sl_b"]));
    // An unused one goes.
    rig.ok(&["configs", "rm", "spare"]);
    assert!(!rig.ok(&["configs", "ls"]).contains("spare"));
    let out = rig.dcpp(&["down", "-f", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    rig.ok(&["secret", "rm", "shared_token"]);
    assert!(!rig.ok(&["secret", "ls"]).contains("shared_token"));
}

#[test]
fn a_new_version_rolls_exactly_its_users_and_a_failing_one_rolls_back() {
    let rig = Rig::new("sr");
    let v1 = random_token("v1");
    let src = rig.write("pass.txt", &v1);
    // `user` checks the secret (it must not be "bad"), `other` mounts nothing, `cfg_user`
    // mounts only a config.
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: sr
services:
  user:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    secrets: [pass]
    deploy:
      replicas: 10
      update_config: {{parallelism: 5, delay: 0s, monitor: 2s, failure_action: rollback, order: start-first}}
    healthcheck:
      test: ["CMD-SHELL", "! grep -q bad /run/secrets/pass"]
      interval: 200ms
      retries: 1
      start_period: 0s
  other:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
  cfg_user:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    configs: [note]
secrets:
  pass:
    file: {src}
configs:
  note:
    content: unchanged
"#
        ),
    );
    rig.apply_env(&file, &[]);
    rig.wait_until("10 user replicas", 90, || {
        rig.running_containers("sr_user").len() == 10
    });
    let other = rig.running_container("sr_other");
    let cfg_user = rig.running_container("sr_cfg_user");
    let before = rig.running_containers("sr_user");

    // `secret update`: a new version, every user replica replaced, nothing else touched.
    let v2 = random_token("v2");
    let src2 = rig.write("pass2.txt", &v2);
    let t0 = Instant::now();
    let out = rig.ok(&["secret", "update", "sr_pass", "-f", &src2]);
    assert!(out.contains("version 2"), "{out}");
    let all_new = || {
        let now = rig.running_containers("sr_user");
        now.len() == 10
            && now.iter().all(|c| !before.contains(c))
            && now.iter().all(|c| {
                let out = rig.dcpp(&["container", "exec", c, "cat", "/run/secrets/pass"]);
                stdout(&out) == v2
            })
    };
    rig.wait_until("all 10 users on version 2", 120, all_new);
    let rolled = t0.elapsed();
    eprintln!("secret update to 10 replicas on the new version: {rolled:?}");
    assert_eq!(rig.running_containers("sr_other"), vec![other.clone()]);
    assert_eq!(
        rig.running_containers("sr_cfg_user"),
        vec![cfg_user.clone()]
    );

    // The compose file's source now holding the same data, re-applying it changes nothing; a
    // changed file is version 3, which fails the healthcheck: the update rolls back to 2.
    std::fs::write(&src, &v2).unwrap();
    let out = rig.apply_env(&file, &[]);
    assert!(out.contains("no changes"), "{out}");
    std::fs::write(&src, "bad").unwrap();
    let out = {
        let mut c = rig.cmd();
        c.args(["apply", "-f", &file, "--timeout", "90s"]);
        c.output().unwrap()
    };
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("secret sr_pass: version 3"), "{text}");
    assert!(
        text.contains("rolled back") && text.contains("unhealthy"),
        "{text}"
    );
    rig.wait_until("the service rolled back", 120, || {
        let st = rig.json(&["service", "inspect", "sr_user"]);
        st["spec"]["files"][0]["version"] == 2
            && rig.running_containers("sr_user").len() == 10
            && rig.running_containers("sr_user").iter().all(|c| {
                let out = rig.dcpp(&["container", "exec", c, "cat", "/run/secrets/pass"]);
                stdout(&out) == v2
            })
    });
    assert_eq!(rig.running_containers("sr_other"), vec![other]);
    assert_eq!(rig.running_containers("sr_cfg_user"), vec![cfg_user]);
}

/// The running task containers of `service` (`<stack>_<name>`) in `n`'s own runtime.
fn local_containers(n: &Rig, service: &str) -> Vec<String> {
    let out = n.dcpp(&["container", "ls", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .filter(|c| {
            c["status"] == "running" && c["labels"]["org.dcpp.service"].as_str() == Some(service)
        })
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn only_the_node_running_a_task_that_mounts_a_secret_receives_it() {
    let cl = Cluster::form_in_netns("sn", &[Join::Worker, Join::Worker], &[]);
    let token = random_token("only-b");
    let src = cl.nodes[0].write("token.txt", &token);
    let compose = |on: u64, plain_on: u64| {
        format!(
            r#"name: sn
services:
  user:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    secrets: [tok]
    deploy:
      placement:
        constraints: ["node.id=={on}"]
  plain:
    image: {IMAGE}
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      placement:
        constraints: ["node.id=={plain_on}"]
secrets:
  tok:
    file: {src}
"#
        )
    };
    let (b, c) = (cl.nodes[1].id, cl.nodes[2].id);
    let file = cl.nodes[0].write("compose.yml", &compose(b, c));
    let out = cl.ok(0, &["apply", "-f", &file, "--timeout", "60s"]);
    assert!(out.contains("converged"), "{out}");
    // Worker b got it from a manager, for its own task.
    let on_b = local_containers(&cl.nodes[1], "user");
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    let out = cl.ok(
        1,
        &["container", "exec", &on_b[0], "cat", "/run/secrets/tok"],
    );
    assert_eq!(out, token);
    // Worker c runs a task of the stack, none that mounts it: not a byte of it, anywhere
    // under its data dir (tmpfs mounts included) or in its log. Nor on any disk.
    assert_eq!(local_containers(&cl.nodes[2], "plain").len(), 1);
    let found = leaks_in(&cl.nodes[2], &token, false);
    assert!(found.is_empty(), "node c holds the secret: {found:?}");
    for (i, n) in cl.nodes.iter().enumerate() {
        let found = leaks(n, &token);
        assert!(
            found.is_empty(),
            "node {i}'s disk holds the secret: {found:?}"
        );
    }

    // The task moves to c: c receives it, b's copy goes with b's container.
    let file = cl.nodes[0].write("compose.yml", &compose(c, b));
    cl.ok(0, &["apply", "-f", &file, "--timeout", "60s"]);
    cl.wait_until("the user task on c, gone from b", 60, || {
        local_containers(&cl.nodes[2], "user").len() == 1
            && local_containers(&cl.nodes[1], "user").is_empty()
    });
    let on_c = local_containers(&cl.nodes[2], "user");
    let out = cl.ok(
        2,
        &["container", "exec", &on_c[0], "cat", "/run/secrets/tok"],
    );
    assert_eq!(out, token);
    cl.wait_until("b's copy removed with its container", 30, || {
        leaks_in(&cl.nodes[1], &token, false).is_empty()
    });
}
