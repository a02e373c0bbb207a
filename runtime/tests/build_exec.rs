//! Dockerfiles executed on the runtime: a multi-stage build from a local busybox image with
//! every instruction, the result run and checked; the layer cache's hits and misses; hostile
//! contexts and a failing `RUN`.

mod container_util;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use container_util::World;
use dcpp_runtime::build::{BuildError, BuildOptions, BuildReport, Builder};
use dcpp_runtime::container::{CreateOptions, ImageInput, RuntimeKind};
use dcpp_runtime::image::{ContainerConfig, ImageStore};

struct Fixture {
    w: World,
    store: ImageStore,
    ctx: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let w = World::new(RuntimeKind::Builtin);
    let store = ImageStore::open(&w.tmp.path().join("data/images")).unwrap();
    store
        .import_rootfs_with_config(
            &w.layer,
            "busybox:test",
            ContainerConfig {
                env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
                cmd: vec!["sh".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let ctx = tempfile::Builder::new()
        .prefix("dcpp-build-ctx-")
        .tempdir()
        .unwrap();
    Fixture { w, store, ctx }
}

impl Fixture {
    fn write(&self, rel: &str, text: &str) {
        let p = self.ctx.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn build_with(&self, o: BuildOptions) -> (Result<BuildReport, BuildError>, Vec<String>) {
        let mut lines = Vec::new();
        let b = Builder {
            store: &self.store,
            containers: &self.w.mgr,
            run_network: None,
        };
        let r = b.build(&o, &mut |l: &str| lines.push(l.to_string()));
        (r, lines)
    }

    fn build(&self) -> (BuildReport, Vec<String>) {
        let (r, lines) = self.build_with(self.opts());
        match r {
            Ok(r) => (r, lines),
            Err(e) => panic!("build failed: {e}\n{}", lines.join("\n")),
        }
    }

    fn opts(&self) -> BuildOptions {
        BuildOptions {
            context: self.ctx.path().to_path_buf(),
            tags: vec!["built:1".into()],
            ..Default::default()
        }
    }

    /// Runs `cmd` (or the image's own entrypoint and cmd) in the built image.
    fn run(&self, cmd: Option<&[&str]>) -> (i32, String) {
        let img = self.store.resolve("built:1").unwrap();
        let mut o = CreateOptions::new(ImageInput::from_local(&img));
        if let Some(c) = cmd {
            o.entrypoint = Some(Vec::new());
            o.command = Some(c.iter().map(|s| s.to_string()).collect());
        }
        let (exit, out) = self.w.run(&o);
        (exit.exit_code, out)
    }
}

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox:test
FROM ${BASE} AS builder
ARG GREETING=hello
ENV APPDIR=/opt/app
WORKDIR $APPDIR
COPY src/ ./src/
COPY *.txt /opt/app/
RUN echo "$GREETING from $APPDIR" > built.txt \
 && rm src/remove-me

FROM busybox:test
LABEL org.example.kind=test
MAINTAINER someone
COPY --from=builder --chown=app:app --chmod=640 /opt/app/built.txt /srv/built.txt
COPY --from=builder /opt/app/src /srv/src
ADD files.tar /srv/unpacked/
RUN rm /bin/vi && mkdir -p /etc/opaque && echo new > /etc/opaque/f
ENV MODE=prod
USER app
WORKDIR /srv
EXPOSE 8080/tcp 53/udp
VOLUME /data
SHELL ["/bin/sh", "-c"]
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --retries=2 CMD test -f /srv/built.txt
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["id -u; pwd; echo $MODE; cat /srv/built.txt"]
"#;

fn files_tar(path: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, "inner/x.txt", &b"tar"[..]).unwrap();
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

fn setup_context(f: &Fixture) {
    f.write("Dockerfile", DOCKERFILE);
    f.write("src/a.txt", "a\n");
    f.write("src/remove-me", "gone\n");
    f.write("src/secret.key", "must not be copied\n");
    f.write("notes.txt", "notes\n");
    f.write(".dockerignore", "**/*.key\n");
    files_tar(&f.ctx.path().join("files.tar"));
}

#[test]
fn a_multi_stage_build_runs_with_every_instruction_and_caches_exactly() {
    let f = fixture();
    setup_context(&f);
    let (r, lines) = f.build();
    assert_eq!(r.cached, 0, "{lines:#?}");
    // Layers: WORKDIR /opt/app, 2 COPY, RUN (builder); 2 COPY, ADD, RUN (WORKDIR /srv exists
    // by then: no layer).
    assert_eq!(r.executed, 8, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "Step 1/24 : FROM busybox:test"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Successfully tagged built:1"))
    );

    let c = &r.image.config.config;
    assert_eq!(c.user, "app");
    assert_eq!(c.working_dir, "/srv");
    assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(c.cmd, ["id -u; pwd; echo $MODE; cat /srv/built.txt"]);
    assert_eq!(c.stop_signal, "SIGQUIT");
    assert_eq!(c.labels["org.example.kind"], "test");
    assert!(c.env.contains(&"MODE=prod".to_string()));
    assert!(
        !c.env.iter().any(|e| e.starts_with("GREETING=")),
        "an ARG does not stay in the image"
    );
    assert_eq!(
        c.exposed_ports.keys().collect::<Vec<_>>(),
        ["53/udp", "8080/tcp"]
    );
    assert!(c.volumes.contains_key("/data"));
    let h = c.healthcheck.as_ref().unwrap();
    assert_eq!(
        h["Test"],
        serde_json::json!(["CMD-SHELL", "test -f /srv/built.txt"])
    );
    assert_eq!(h["Interval"], 5_000_000_000u64);
    assert_eq!(h["Retries"], 2);

    // The image's own entrypoint and cmd, as its user, in its workdir.
    let (code, out) = f.run(None);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "1000\n/srv\nprod\nhello from /opt/app\n");
    let (code, out) = f.run(Some(&[
        "sh",
        "-c",
        "stat -c '%u:%g %a' /srv/built.txt; ls /srv/src; cat /srv/unpacked/inner/x.txt; echo; \
         test -e /bin/vi && echo vi-still-there; cat /etc/opaque/f",
    ]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out, "1000:1000 640\na.txt\ntar\nnew\n",
        ".dockerignore, rm in RUN and --chown/--chmod"
    );

    // Nothing changed: nothing executes, every layer step is a cache hit, every step after a
    // FROM says so, and the image is the same one, also when the rebuild runs in a later
    // second than the first build (the config's creation time comes from the cache).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (r2, lines) = f.build();
    assert_eq!((r2.executed, r2.cached), (0, 8), "{lines:#?}");
    assert_eq!(r2.image.id, r.image.id);
    assert_eq!(
        lines.iter().filter(|l| *l == " ---> Using cache").count(),
        22,
        "{lines:#?}"
    );

    // One copied file of the second stage's ADD changes: only the ADD and what follows run.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    b.append_data(&mut h, "inner/x.txt", &b"tar2"[..]).unwrap();
    fs::write(f.ctx.path().join("files.tar"), b.into_inner().unwrap()).unwrap();
    let (r3, lines) = f.build();
    assert_eq!((r3.executed, r3.cached), (2, 6), "{lines:#?}");
    assert_ne!(r3.image.id, r.image.id);

    // An ignored file changing touches nothing.
    f.write("src/secret.key", "changed\n");
    let (r4, _) = f.build();
    assert_eq!((r4.executed, r4.cached), (0, 8));

    // A copied file of the first stage changes: from that COPY on (COPY src, COPY *.txt,
    // RUN; then COPY src, ADD, RUN of the second stage), except the copy of built.txt into
    // the second stage, whose file is the same; WORKDIR is before the change.
    f.write("src/a.txt", "a2\n");
    let (r5, lines) = f.build();
    assert_eq!((r5.executed, r5.cached), (6, 2), "{lines:#?}");

    // --no-cache runs every step.
    let (r6, _) = f.build_with(BuildOptions {
        no_cache: true,
        ..f.opts()
    });
    let r6 = r6.unwrap();
    assert_eq!((r6.executed, r6.cached), (8, 0));
    // The target stage only.
    let (r7, _) = f.build_with(BuildOptions {
        target: Some("builder".into()),
        ..f.opts()
    });
    assert_eq!(r7.unwrap().image.config.config.working_dir, "/opt/app");
}

#[test]
fn a_failing_run_names_its_line_exit_code_and_last_output_and_records_nothing() {
    let f = fixture();
    f.write(
        "Dockerfile",
        "FROM busybox:test\nRUN true\nRUN for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i; done; exit 3\n",
    );
    let before = f.store.list().unwrap().len();
    let (r, _) = f.build_with(f.opts());
    let e = r.unwrap_err().to_string();
    assert!(e.starts_with("Dockerfile:3: RUN for i in"), "{e}");
    assert!(e.contains("returned a non-zero code: 3\nline3\n"), "{e}");
    assert!(e.ends_with("line12"), "{e}");
    assert!(!e.contains("line2\n"), "only the last lines: {e}");
    assert_eq!(f.store.list().unwrap().len(), before, "no image recorded");
    assert!(f.store.resolve("built:1").is_err());
    assert_eq!(f.w.mgr.list().len(), 0, "the build container is gone");
}

#[test]
fn hostile_contexts_are_refused_naming_the_line() {
    let f = fixture();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("host-secret"), "secret").unwrap();
    symlink(
        outside.path().join("host-secret"),
        f.ctx.path().join("link"),
    )
    .unwrap();
    let cases = [
        (
            "COPY link /x\n",
            "Dockerfile:2: COPY link: forbidden path outside the build context",
        ),
        (
            "COPY ../etc/passwd /x\n",
            "Dockerfile:2: COPY ../etc/passwd: forbidden path outside the build context",
        ),
        (
            "COPY a/../../x /x\n",
            "Dockerfile:2: COPY a/../../x: forbidden path outside the build context",
        ),
        (
            "ADD http://example.com/x /x\n",
            "Dockerfile:2: ADD http://example.com/x",
        ),
    ];
    for (line, want) in cases {
        f.write("Dockerfile", &format!("FROM busybox:test\n{line}"));
        let (r, _) = f.build_with(f.opts());
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with(want), "{line}: {e}");
    }
    // A tar that climbs out of its destination: the hardened unpacker refuses it.
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        let name = b"../../../../escaped";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        b.finish().unwrap();
    }
    fs::write(f.ctx.path().join("evil.tar"), raw).unwrap();
    f.write("Dockerfile", "FROM busybox:test\nADD evil.tar /srv/\n");
    let (r, _) = f.build_with(f.opts());
    let e = r.unwrap_err().to_string();
    assert!(e.starts_with("Dockerfile:2: ADD "), "{e}");
    assert!(!f.store.root().join("escaped").exists());
    assert!(!f.ctx.path().parent().unwrap().join("escaped").exists());
}
