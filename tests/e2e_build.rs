//! Building images through the real binary on a real daemon: `dcpp image build` from the
//! imported busybox image (no network), the result run by `dcpp apply`, a rebuild entirely
//! from the cache, and the errors a user meets (a failing RUN, no Dockerfile, no context);
//! compose's `build:` built by `dcpp apply`, rebuilt from the changed step and rolled out.

#[path = "../runtime/tests/common/registry.rs"]
#[allow(dead_code)]
mod registry;
mod rig;
#[path = "rig/slot.rs"]
mod slot;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rig::*;

/// `GET path` on the published port.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn app_context(rig: &Rig, name: &str) -> PathBuf {
    let dir = rig.root.join(name);
    write(
        &dir,
        "Dockerfile",
        &format!(
            r#"FROM {IMAGE}
ARG GREETING=hello
ENV GREETING=$GREETING
WORKDIR /srv
COPY page.html /www/page.html
RUN echo "$GREETING built" > /www/built.txt && echo run-step-output
EXPOSE 8080
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"#
        ),
    );
    write(&dir, "page.html", "page one\n");
    write(&dir, "notes.key", "never copied\n");
    write(&dir, ".dockerignore", "*.key\n");
    dir
}

fn built_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Successfully built "))
        .unwrap_or_else(|| panic!("no image id in: {out}"))
        .to_string()
}

fn image_names(rig: &Rig) -> Vec<String> {
    let v = rig.json(&["image", "ls", "--format", "json"]);
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["references"].as_array().unwrap().clone())
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn image_build_runs_caches_and_reports_errors() {
    let rig = Rig::new("ib");
    let ctx = app_context(&rig, "app");
    let ctx_s = ctx.to_str().unwrap();

    let (code, out, err, _) = rig.run(&[
        "image",
        "build",
        "-t",
        "app:1",
        "-t",
        "app:latest",
        "--build-arg",
        "GREETING=hi",
        ctx_s,
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    for want in [
        &format!("Step 1/8 : FROM {IMAGE}") as &str,
        "Step 5/8 : COPY page.html /www/page.html",
        "Step 6/8 : RUN echo \"$GREETING built\" > /www/built.txt && echo run-step-output",
        "run-step-output",
        "Successfully tagged app:1",
        "Successfully tagged app:latest",
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "no line {want:?} in:\n{out}"
        );
    }
    let id = built_id(&out);
    let names = image_names(&rig);
    assert!(names.iter().any(|n| n.ends_with("app:1")), "{names:?}");

    // The built image runs as a service: the copied page, the RUN's file with the build arg.
    let port = free_port();
    let file = rig.write(
        "compose.yml",
        &format!(
            "name: ib\nservices:\n  web:\n    image: app:1\n    stop_grace_period: 1s\n    ports: [\"127.0.0.1:{port}:8080\"]\n"
        ),
    );
    let out = rig.ok(&["apply", "-f", &file]);
    assert!(out.contains("converged"), "{out}");
    let page = get(port, "/page.html").unwrap_or_default();
    assert!(page.contains("page one"), "{page}");
    let built = get(port, "/built.txt").unwrap_or_default();
    assert!(built.contains("hi built"), "{built}");

    // Nothing changed: every step after FROM from the cache, the RUN not executed, same id.
    let (code, out, err, _) = rig.run(&[
        "image",
        "build",
        "-t",
        "app:1",
        "--build-arg",
        "GREETING=hi",
        ctx_s,
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(
        out.lines().filter(|l| *l == " ---> Using cache").count(),
        7,
        "{out}"
    );
    assert!(
        !out.lines().any(|l| l == "run-step-output"),
        "the RUN ran again:\n{out}"
    );
    assert_eq!(built_id(&out), id);
    // Another build arg is another RUN (ARG, ENV and what follows them).
    let (code, out, _, _) = rig.run(&["image", "build", "-t", "app:2", ctx_s]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.lines().any(|l| l == "run-step-output"), "{out}");
    assert_ne!(built_id(&out), id);

    // A failing RUN: the line, its exit code, its last output; no image, no container left.
    let containers = rig.containers();
    let bad = rig.root.join("bad");
    write(
        &bad,
        "Dockerfile",
        &format!("FROM {IMAGE}\nRUN echo first-words && echo last-words && exit 3\n"),
    );
    let (code, out, err, _) = rig.run(&["image", "build", "-t", "bad:1", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("Dockerfile:2: RUN echo first-words && echo last-words && exit 3: returned a non-zero code: 3"),
        "{err}"
    );
    assert!(err.contains("last-words"), "{err}");
    assert!(!image_names(&rig).iter().any(|n| n.contains("bad")));
    assert_eq!(rig.containers(), containers, "a build container was left");

    // No Dockerfile in the context; no context at all.
    let empty = rig.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err, _) = rig.run(&["image", "build", "-t", "x:1", empty.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("empty/Dockerfile") && err.contains("cannot read the Dockerfile"),
        "{err}"
    );
    let (code, _, err, _) = rig.run(&["image", "build", "-t", "x:1", "/nonexistent/ctx"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unable to prepare context"), "{err}");
    assert!(err.contains("/nonexistent/ctx"), "{err}");

    rig.ok(&["down", "-p", "ib"]);

    // Prune knows the build cache: app:2's own layers go with it, and so do their entries;
    // app:1 still rebuilds entirely from the cache, app:2 runs its RUN again.
    rig.ok(&["image", "rm", "app:2"]);
    let out = rig.ok(&["image", "prune"]);
    let removed: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("Build cache: removed "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no build cache line in: {out}"));
    assert!(removed >= 1, "{out}");
    let again = rig.ok(&["image", "prune"]);
    assert!(
        again.contains("Build cache: removed 0 entries, 0B"),
        "{again}"
    );
    let out = rig.ok(&[
        "image",
        "build",
        "-t",
        "app:1",
        "--build-arg",
        "GREETING=hi",
        ctx_s,
    ]);
    assert_eq!(
        out.lines().filter(|l| *l == " ---> Using cache").count(),
        7,
        "{out}"
    );
    let out = rig.ok(&["image", "build", "-t", "app:2", ctx_s]);
    assert!(out.lines().any(|l| l == "run-step-output"), "{out}");
    // --all empties the cache: nothing of it is left to hit.
    rig.ok(&["image", "rm", "app:2"]);
    let out = rig.ok(&["image", "prune", "--all"]);
    assert!(out.contains("Build cache: removed "), "{out}");
    let left = std::fs::read_dir(rig.data.join("images/build-cache"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "{out}");
}

fn web_container(rig: &Rig, service: &str) -> Option<String> {
    rig.tasks()
        .into_iter()
        .find(|t| t["service"] == service && t["state"] == "running")
        .and_then(|t| t["container_id"].as_str().map(str::to_string))
}

/// The line that follows `step` in a build's output.
fn after<'a>(out: &'a str, step: &str) -> &'a str {
    let mut it = out.lines().skip_while(|l| !l.starts_with(step));
    assert!(it.next().is_some(), "no {step:?} in:\n{out}");
    it.next().unwrap_or("")
}

#[test]
fn compose_build_is_built_by_apply_and_rebuilt_from_the_changed_step() {
    let rig = Rig::new("cb");
    let port = free_port();
    let site = rig.root.join("site");
    write(
        &site,
        "Dockerfile",
        &format!(
            r#"FROM {IMAGE}
ARG GREETING=hello
COPY index.html /www/index.html
RUN echo "$GREETING" > /www/greeting.txt && echo run-greeting
COPY page.html /www/page.html
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"#
        ),
    );
    write(&site, "index.html", "index\n");
    write(&site, "page.html", "page v1\n");
    let file = rig.write(
        "compose.yml",
        &format!(
            r#"name: cb
services:
  web:
    build:
      context: ./site
      args: {{GREETING: hey}}
      labels: {{org.example.built: "yes"}}
      tags: ["cb-web:extra"]
    pull_policy: build
    stop_grace_period: 1s
    ports: ["127.0.0.1:{port}:8080"]
"#
        ),
    );

    // A dry run says what it would build and builds nothing.
    let out = rig.ok(&["apply", "--dry-run", "-f", &file]);
    assert!(
        out.contains("service web: would build cb-web from"),
        "{out}"
    );
    assert!(!image_names(&rig).iter().any(|n| n.contains("cb-web")));

    // Built as `<project>-<service>` (plus build.tags), with the labels, and run.
    let out = rig.ok(&["apply", "-f", &file]);
    for want in [
        "service web: building cb-web",
        "Step 1/6 : FROM dcpp.local/busybox:e2e",
        "Successfully tagged cb-web",
        "Successfully tagged cb-web:extra",
        "+ service web",
    ] {
        assert!(
            out.lines().any(|l| l.contains(want)),
            "no {want:?} in:\n{out}"
        );
    }
    assert!(out.lines().any(|l| l == "run-greeting"), "{out}");
    assert!(out.contains("converged"), "{out}");
    let inspect = rig.json(&["image", "inspect", "cb-web:extra"]);
    assert_eq!(
        inspect[0]["config"]["config"]["Labels"]["org.example.built"], "yes",
        "{inspect}"
    );
    assert!(
        get(port, "/page.html")
            .unwrap_or_default()
            .contains("page v1")
    );
    assert!(
        get(port, "/greeting.txt")
            .unwrap_or_default()
            .contains("hey")
    );
    let first = web_container(&rig, "cb_web").expect("a running web task");

    // Applied again unchanged: rebuilt from the cache only, the service left alone.
    let out = rig.ok(&["apply", "-f", &file]);
    assert_eq!(
        out.lines().filter(|l| *l == " ---> Using cache").count(),
        5,
        "{out}"
    );
    assert!(!out.lines().any(|l| l == "run-greeting"), "{out}");
    assert!(out.contains("no changes"), "{out}");
    assert_eq!(web_container(&rig, "cb_web").as_deref(), Some(&*first));

    // A copied file changes: the steps before its COPY come from the cache, the COPY runs,
    // and the service rolls to the new image.
    write(&site, "page.html", "page v2\n");
    let out = rig.ok(&["apply", "-f", &file]);
    for step in ["Step 2/6", "Step 3/6", "Step 4/6"] {
        assert_eq!(after(&out, step), " ---> Using cache", "{step}:\n{out}");
    }
    assert_ne!(after(&out, "Step 5/6"), " ---> Using cache", "{out}");
    assert!(!out.lines().any(|l| l == "run-greeting"), "{out}");
    assert!(out.contains("~ service web: image"), "{out}");
    rig.wait_until("the new page served", 30, || {
        get(port, "/page.html").is_some_and(|b| b.contains("page v2"))
    });
    let second = web_container(&rig, "cb_web").expect("a running web task");
    assert_ne!(second, first, "the service was not rolled");

    rig.ok(&["down", "-p", "cb"]);
}

/// compose's `dockerfile`, `target` and `no_cache`: the named file's target stage is built
/// (a later stage that fails is never reached) and nothing comes from the cache, although a
/// build of the same steps has just filled it.
#[test]
fn compose_build_takes_its_dockerfile_target_and_no_cache() {
    let rig = Rig::new("cx");
    let ctx = rig.root.join("ctx");
    write(
        &ctx,
        "app.Dockerfile",
        &format!(
            r#"FROM {IMAGE} AS final
RUN echo target-stage-ran > /ran.txt && echo target-stage-ran
CMD ["sleep", "3600"]
FROM {IMAGE} AS broken
RUN echo never-built && exit 7
"#
        ),
    );
    let ctx_s = ctx.to_str().unwrap();
    let df = ctx.join("app.Dockerfile");
    let out = rig.ok(&[
        "image",
        "build",
        "-t",
        "cx-warm",
        "-f",
        df.to_str().unwrap(),
        "--target",
        "final",
        ctx_s,
    ]);
    assert!(out.lines().any(|l| l == "target-stage-ran"), "{out}");
    let file = rig.write(
        "compose.yml",
        r#"name: cx
services:
  app:
    build:
      context: ./ctx
      dockerfile: app.Dockerfile
      target: final
      no_cache: true
    stop_signal: SIGKILL
    stop_grace_period: 1s
"#,
    );
    let out = rig.ok(&["apply", "-f", &file]);
    assert!(out.contains("service app: building cx-app"), "{out}");
    assert!(out.lines().any(|l| l == "target-stage-ran"), "{out}");
    assert!(!out.contains("Using cache"), "no_cache ignored:\n{out}");
    assert!(!out.contains("never-built"), "target ignored:\n{out}");
    let c = web_container(&rig, "cx_app").expect("a running app task");
    let ran = rig.ok(&["container", "exec", &c, "cat", "/ran.txt"]);
    assert_eq!(ran.trim(), "target-stage-ran");
    rig.ok(&["down", "-p", "cx"]);
}

/// Copies `src` into `dst`, recursively.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// `examples/build` as shipped (its port moved to a free one): built by apply, served by
/// healthy replicas, rebuilt and rolled when its page changes.
#[test]
fn the_build_example_builds_and_serves() {
    let rig = Rig::new("bx");
    rig.import_variant("dcpp.local/busybox:latest", |_| {});
    let dir = rig.root.join("example");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/build"),
        &dir,
    );
    let port = free_port();
    let file = dir.join("compose.yml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("127.0.0.1:18081:8080"), "{text}");
    std::fs::write(&file, text.replace("18081", &port.to_string())).unwrap();
    let f = file.to_str().unwrap();

    let out = rig.ok(&["apply", "-f", f]);
    assert!(out.contains("service web: building build-web"), "{out}");
    assert!(out.contains("converged"), "{out}");
    assert_eq!(rig.running("build_web"), 2);
    let body = get(port, "/").unwrap_or_default();
    assert!(
        body.contains("built by dcpp from examples/build/site"),
        "{body}"
    );
    let body = get(port, "/greeting.txt").unwrap_or_default();
    assert!(body.contains("hello from a dcpp build"), "{body}");

    std::fs::write(dir.join("site/index.html"), "<p>changed</p>\n").unwrap();
    let out = rig.ok(&["apply", "-f", f]);
    assert!(out.contains("~ service web: image"), "{out}");
    rig.wait_until("the changed page served", 60, || {
        get(port, "/").is_some_and(|b| b.contains("changed"))
    });
    rig.ok(&["down", "-p", "build"]);
}

/// On a cluster the built image goes through the registry `image:` names: apply on node a
/// builds and pushes it, node b's agent pulls it by the pinned digest. Without a registry in
/// `image:` apply refuses before building anything.
#[test]
fn on_a_cluster_a_built_image_is_pushed_to_its_registry_and_pulled() {
    use rig::cluster::{Cluster, Join};
    let reg = registry::Registry::start();
    let cl = Cluster::form("bk", &[Join::Worker]);
    let a = &cl.nodes[0];
    let site = a.root.join("site");
    write(
        &site,
        "Dockerfile",
        &format!("FROM {IMAGE}\nCOPY page.html /www/page.html\nCMD [\"sleep\", \"1000\"]\n"),
    );
    write(&site, "page.html", "clustered\n");

    let bare = a.write(
        "bare.yml",
        "name: bk\nservices:\n  web:\n    build: ./site\n    deploy: {mode: global}\n",
    );
    let out = a.dcpp(&["apply", "-f", &bare]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the cluster has 2 nodes") && err.contains("name a registry in `image:`"),
        "{err}"
    );
    assert!(!stdout(&out).contains("Step 1/"), "built before refusing");

    let image = format!("{}/bk/web:1", reg.addr);
    let file = a.write(
        "compose.yml",
        &format!(
            "name: bk\nservices:\n  web:\n    image: {image}\n    build: ./site\n    stop_grace_period: 1s\n    deploy: {{mode: global}}\n"
        ),
    );
    let out = cl.ok(0, &["apply", "-f", &file]);
    assert!(
        out.contains(&format!("service web: pushing {image}")),
        "{out}"
    );
    assert!(out.contains("converged"), "{out}");
    cl.wait_until("a web task running on each node", 60, || {
        let tasks = a.tasks();
        cl.nodes.iter().all(|n| {
            let id = n.id.to_string();
            tasks.iter().any(|t| {
                t["service"] == "bk_web" && t["state"] == "running" && t["node"] == id.as_str()
            })
        })
    });
    // Node b got it from the registry, the file COPYed in included.
    let b = &cl.nodes[1];
    let names = image_names(b);
    assert!(names.iter().any(|n| n.contains("bk/web")), "{names:?}");
    let cid = b
        .containers()
        .into_iter()
        .next()
        .expect("node b's container");
    let out = b.ok(&["container", "exec", &cid, "cat", "/www/page.html"]);
    assert_eq!(out, "clustered\n");
    cl.ok(0, &["down", "-p", "bk"]);
}

/// `POST` `body` (a file) to the daemon's build route; (HTTP status, body).
fn post_build(rig: &Rig, options: &str, body: &Path) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&rig.socket)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!(
            "http://localhost/v1/image/build?options={}",
            options
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn a_context_that_reaches_outside_is_refused_by_the_build_route() {
    let rig = Rig::new("ih");
    let outside = rig.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let opts = r#"{"tags":["evil:1"],"network":"default"}"#;
    let raw = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
        // Headers written by hand: the tar crate's own setters refuse these names.
        let mut h = tar::Header::new_old();
        {
            let b = h.as_old_mut();
            b.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                b.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        (h, data.to_vec())
    };
    let df = format!("FROM {IMAGE}\n");
    let outside_s = outside.to_str().unwrap().to_string();
    type Entry = (tar::Header, Vec<u8>);
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "..",
            vec![raw(
                "../../../../../../../../../tmp/dcpp-escape-dotdot",
                tar::EntryType::Regular,
                None,
                b"x",
            )],
        ),
        (
            "absolute",
            vec![raw(
                &format!("{outside_s}/abs"),
                tar::EntryType::Regular,
                None,
                b"x",
            )],
        ),
        (
            "symlink",
            vec![
                raw("link", tar::EntryType::Symlink, Some(&outside_s), b""),
                raw("link/through", tar::EntryType::Regular, None, b"x"),
            ],
        ),
    ];
    for (what, entries) in cases {
        let path = rig.root.join(format!("{what}.tar"));
        {
            let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_path("Dockerfile").unwrap();
            h.set_size(df.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, df.as_bytes()).unwrap();
            for (h, data) in entries {
                b.append(&h, data.as_slice()).unwrap();
            }
            b.finish().unwrap();
        }
        let (code, body) = post_build(&rig, opts, &path);
        assert_eq!(code, 400, "{what}: {body}");
        assert!(body.contains("refused archive entry"), "{what}: {body}");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{what}: written outside"
        );
        assert!(!Path::new("/tmp/dcpp-escape-dotdot").exists(), "{what}");
        assert!(!image_names(&rig).iter().any(|n| n.contains("evil")));
    }
    // Options it cannot honour are refused, not ignored.
    let path = rig.root.join("ok.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_path("Dockerfile").unwrap();
        h.set_size(df.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, df.as_bytes()).unwrap();
        b.finish().unwrap();
    }
    let (code, body) = post_build(&rig, r#"{"tags":["x:1"],"network":"host"}"#, &path);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("default or none"), "{body}");
    // A context over the limit is refused by its declared size, before it is read.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(&rig.socket)
        .args(["-H", "Content-Length: 2000000000", "--data-binary"])
        .arg(format!("@{}", path.display()))
        .arg("http://localhost/v1/image/build?options=%7B%7D")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n413"), "{text}");
    assert!(
        text.contains("larger than the daemon accepts (1024 MiB)"),
        "{text}"
    );
    // The same tar with sane options builds.
    let (code, body) = post_build(&rig, r#"{"tags":["fine:1"],"network":"default"}"#, &path);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.lines().last().unwrap_or_default().contains("\"done\""),
        "{body}"
    );
    assert!(image_names(&rig).iter().any(|n| n.ends_with("fine:1")));
}

#[test]
fn a_run_step_built_by_the_daemon_reaches_another_host_unless_its_network_is_none() {
    let u = rig::netns::Underlay::new("inu", 2);
    let mut rig = Rig::unstarted("in");
    rig.wrapper = u.wrapper(0);
    rig.listen = format!("{}:7377", u.addrs[0]);
    // A host that runs containers routes for them (docker turns this on too); the
    // namespace is this test's own.
    let (ok, out) = u.run(0, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    assert!(ok, "{out}");
    rig.start_daemon();
    let www = rig.root.join("www");
    write(&www, "hello.txt", "hello from the other host\n");
    let server = KillOnDrop(
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", u.hosts[1]))
            .args(["/bin/busybox", "httpd", "-f", "-p"])
            .arg(format!("{}:8099", u.addrs[1]))
            .arg("-h")
            .arg(&www)
            .spawn()
            .unwrap(),
    );
    let ctx = rig.root.join("net");
    write(
        &ctx,
        "Dockerfile",
        &format!(
            "FROM {IMAGE}\nRUN timeout 5 wget -qO- http://{}:8099/hello.txt\n",
            u.addrs[1]
        ),
    );
    let ctx_s = ctx.to_str().unwrap();
    slot::wait_until(
        "the other host's server",
        Duration::from_secs(10),
        || {
            u.run(
                1,
                &[
                    "sh",
                    "-c",
                    &format!("timeout 3 wget -qO- http://{}:8099/hello.txt", u.addrs[1]),
                ],
            )
            .0
        },
        String::new,
    );
    let (code, out, err, _) = rig.run(&["image", "build", "--no-cache", "-t", "net:1", ctx_s]);
    assert_eq!(code, Some(0), "{out}\n{err}\n{}", rig.log());
    assert!(
        out.lines().any(|l| l == "hello from the other host"),
        "{out}"
    );
    let (code, out, err, _) = rig.run(&[
        "image",
        "build",
        "--no-cache",
        "--network",
        "none",
        "-t",
        "net:2",
        ctx_s,
    ]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("returned a non-zero code"), "{err}");
    // The build network is gone with the builds that used it.
    let nets = rig.ok(&["network", "ls"]);
    assert!(!nets.contains("dcpp-build"), "{nets}");
    drop(server);
}

/// The daemon's progress lines of its watch's builds of `image`, one entry a build.
fn watch_builds(log: &str, image: &str) -> Vec<Vec<String>> {
    let prefix = format!("watch: {image}: ");
    let mut builds: Vec<Vec<String>> = Vec::new();
    for l in log.lines() {
        if l.starts_with("watch: service ") && l.ends_with(&format!(": building {image}")) {
            builds.push(Vec::new());
        } else if let (Some(rest), Some(b)) = (l.strip_prefix(&prefix), builds.last_mut()) {
            b.push(rest.to_string());
        }
    }
    builds
}

#[test]
fn a_watched_build_stack_is_built_rebuilt_from_the_changed_step_and_kept_on_failure() {
    let mut rig = Rig::unstarted("wb");
    let port = free_port();
    let dir = rig.root.join("stacks");
    let dockerfile = |run: &str| {
        format!(
            "FROM {IMAGE}\nCOPY index.html /www/index.html\n{run}\nCOPY page.html /www/page.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
        )
    };
    write(
        &dir,
        "Dockerfile",
        &dockerfile("RUN echo built > /www/b.txt && echo run-built"),
    );
    write(&dir, "index.html", "index\n");
    write(&dir, "page.html", "page v1\n");
    write(
        &dir,
        "site.yml",
        &format!(
            "services:\n  web:\n    build: .\n    pull_policy: build\n    stop_grace_period: 1s\n    ports: [\"127.0.0.1:{port}:8080\"]\n"
        ),
    );
    rig.extra = vec!["--watch".into(), dir.display().to_string()];
    rig.start_daemon();

    // Built by the daemon on start as `<stack>-<service>`, the service running it.
    rig.wait_until("the built page served", 120, || {
        get(port, "/page.html").is_some_and(|b| b.contains("page v1"))
    });
    assert!(get(port, "/b.txt").unwrap_or_default().contains("built"));
    let log = rig.log();
    let builds = watch_builds(&log, "site-web");
    assert!(!builds.is_empty(), "{log}");
    assert!(builds[0].iter().any(|l| l == "run-built"), "{log}");
    assert!(
        builds[0]
            .iter()
            .any(|l| l == "Successfully tagged site-web"),
        "{log}"
    );
    let ps = rig.ok(&["ps", "--format", "json"]);
    assert!(ps.contains("\"site-web@sha256:"), "{ps}");
    let first = web_container(&rig, "site_web").expect("a running web task");

    // A copied file changes: rebuilt from its COPY on, the RUN before it from the cache, and
    // the service rolled to the new image.
    let seen = builds.len();
    write(&dir, "page.html", "page v2\n");
    rig.wait_until("the new page served", 120, || {
        get(port, "/page.html").is_some_and(|b| b.contains("page v2"))
    });
    let log = rig.log();
    let builds = watch_builds(&log, "site-web");
    let rebuilt = builds
        .get(seen)
        .unwrap_or_else(|| panic!("no rebuild in:\n{log}"));
    let text = rebuilt.join("\n");
    for step in ["Step 2/5", "Step 3/5"] {
        assert_eq!(after(&text, step), " ---> Using cache", "{step}:\n{text}");
    }
    assert_ne!(after(&text, "Step 4/5"), " ---> Using cache", "{text}");
    assert!(!rebuilt.iter().any(|l| l == "run-built"), "{text}");
    rig.wait_until("the old task replaced", 60, || {
        web_container(&rig, "site_web").is_some_and(|c| c != first)
    });
    let second = web_container(&rig, "site_web").expect("a running web task");

    // A failing RUN: reported with its Dockerfile line, the running version kept.
    write(
        &dir,
        "Dockerfile",
        &dockerfile("RUN echo about to fail && exit 7"),
    );
    rig.wait_until("the failure reported", 120, || {
        rig.log().contains("keeps its last good state")
    });
    let log = rig.log();
    let report = log
        .lines()
        .find(|l| l.contains("site.yml: service web: building site-web: Dockerfile:3: RUN"))
        .unwrap_or_else(|| panic!("no build failure in:\n{log}"));
    assert!(report.contains("returned a non-zero code: 7"), "{report}");
    assert!(log.contains("about to fail"), "{log}");
    assert_eq!(web_container(&rig, "site_web").as_deref(), Some(&*second));
    assert!(
        get(port, "/page.html")
            .unwrap_or_default()
            .contains("page v2")
    );

    // Its file removed: the stack goes.
    std::fs::remove_file(dir.join("site.yml")).unwrap();
    rig.wait_until("the stack removed", 60, || {
        web_container(&rig, "site_web").is_none()
    });
}

#[test]
fn a_run_step_gets_the_resolv_conf_of_a_stack_container() {
    let rig = Rig::new("rv");
    let ctx = rig.root.join("dns");
    write(
        &ctx,
        "Dockerfile",
        &format!("FROM {IMAGE}\nRUN sed 's/^/resolv: /' /etc/resolv.conf\n"),
    );
    let (code, out, err, _) = rig.run(&[
        "image",
        "build",
        "--no-cache",
        "-t",
        "dns:1",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}\n{}", rig.log());
    let resolv: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("resolv: "))
        .collect();
    // The daemon's resolver on the build network's gateway (it forwards to the host's
    // upstreams from the host's namespace), with docker's ndots for single-label names.
    let pool = rig.pool.trim_end_matches("0.0/16");
    assert_eq!(resolv.len(), 2, "{out}");
    let ns = resolv[0].strip_prefix("nameserver ").unwrap_or_default();
    assert!(ns.starts_with(pool) && ns.ends_with(".1"), "{out}");
    assert_eq!(resolv[1], "options ndots:0", "{out}");
    // The file is not part of the layer the step made.
    let (code, out, err, _) = rig.run(&[
        "container",
        "run",
        "--rm",
        "dns:1",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!out.contains(ns), "{out}");
}
