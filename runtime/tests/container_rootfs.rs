//! Hostile images: symlinks in the image that point at host paths must be resolved inside the
//! container's root filesystem by every path dcpp (or the OCI runtime) prepares there, with both
//! executors. Each test plants symlinks in a top layer above busybox, runs a container and
//! checks that the host targets are byte-for-byte untouched.

mod container_util;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use container_util::World;
use dcpp_runtime::container::{ExecRequest, ImageInput, MountRequest, MountSource};

/// Every entry under `dir` (recursively) with the content of regular files: what must not
/// change.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(p.clone());
                out.insert(p, None);
            } else {
                out.insert(p.clone(), Some(std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out
}

/// A host directory outside the rootfs with one file in it.
fn host_dir(w: &World, name: &str) -> PathBuf {
    let d = w.tmp.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("secret"), format!("HOST-{name}\n")).unwrap();
    d
}

/// `target` as a relative link from anywhere in the rootfs: enough `..` to reach the host's `/`
/// if followed on the host.
fn climbing(target: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(16),
        target.strip_prefix("/").unwrap().display()
    )
}

/// The busybox image with `hostile` as its top layer.
fn image(w: &World, hostile: &Path, working_dir: Option<&str>) -> ImageInput {
    let mut cfg = serde_json::json!({
        "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    });
    if let Some(wd) = working_dir {
        cfg["WorkingDir"] = wd.into();
    }
    ImageInput {
        reference: "hostile:test".into(),
        layer_dirs: vec![hostile.to_path_buf(), w.layer.clone()],
        config: Some(serde_json::from_value(cfg).unwrap()),
    }
}

fn hostile_layer(w: &World) -> PathBuf {
    let l = w.tmp.path().join("hostile");
    std::fs::create_dir_all(&l).unwrap();
    l
}

/// Runs `o` and returns (create error | (exit code, output)).
fn run(
    w: &World,
    o: &dcpp_runtime::container::CreateOptions,
) -> Result<(i32, String), dcpp_runtime::container::Error> {
    let c = w.mgr.create(o)?;
    w.mgr.start(&c.state.id)?;
    let exit = w
        .mgr
        .wait(&c.state.id, Some(Duration::from_secs(60)))
        .unwrap()
        .expect("container exited");
    let out: String = w
        .mgr
        .logs(&c.state.id)
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect();
    w.mgr.remove(&c.state.id, true).unwrap();
    Ok((exit.exit_code, out))
}

both_runtimes!(symlinked_mount_targets_stay_in_rootfs, |w| {
    let (a, b, c) = (
        host_dir(&w, "host-a"),
        host_dir(&w, "host-b"),
        host_dir(&w, "host-c"),
    );
    let before = [snapshot(&a), snapshot(&b), snapshot(&c)];
    let l = hostile_layer(&w);
    symlink(&a, l.join("mnt")).unwrap();
    symlink(climbing(&b), l.join("mnt2")).unwrap();
    symlink(&c, l.join("mnt3")).unwrap();
    let src = w.tmp.path().join("bindsrc");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("from-bind"), "").unwrap();

    let mut o = dcpp_runtime::container::CreateOptions::new(image(&w, &l, None));
    o.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "echo vol > /mnt/x/f && cat /mnt/x/f && touch /mnt2/t/g && ls /mnt2/t /mnt3/b".into(),
    ]);
    o.mounts = vec![
        MountRequest {
            source: MountSource::Volume("rootfsvol".into()),
            target: "/mnt/x".into(),
            read_only: false,
        },
        MountRequest {
            source: MountSource::Tmpfs(None),
            target: "/mnt2/t".into(),
            read_only: false,
        },
        MountRequest {
            source: MountSource::Bind(src.clone()),
            target: "/mnt3/b".into(),
            read_only: false,
        },
    ];
    let res = run(&w, &o);
    assert_eq!(
        [snapshot(&a), snapshot(&b), snapshot(&c)],
        before,
        "host directories changed: {res:?}"
    );
    let (code, out) = res.expect("the container runs, its mounts inside its rootfs");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("vol\n") && out.contains("g\n"), "{out}");
    assert!(out.contains("from-bind"), "{out}");
    // The volume really was mounted at /mnt/x (inside), not somewhere else.
    let vol = w.tmp.path().join("data/volumes/rootfsvol/_data/f");
    assert_eq!(std::fs::read_to_string(vol).unwrap(), "vol\n");
});

both_runtimes!(working_dir_under_symlink_stays_in_rootfs, |w| {
    let a = host_dir(&w, "host-wd");
    let b = host_dir(&w, "host-wd2");
    let before = [snapshot(&a), snapshot(&b)];
    let l = hostile_layer(&w);
    symlink(&a, l.join("work")).unwrap();
    symlink(climbing(&b), l.join("work2")).unwrap();
    for wd in ["/work/app", "/work2/app"] {
        let mut o = dcpp_runtime::container::CreateOptions::new(image(&w, &l, Some(wd)));
        o.command = Some(vec!["sh".into(), "-c".into(), "pwd; touch here".into()]);
        let res = run(&w, &o);
        assert_eq!(
            [snapshot(&a), snapshot(&b)],
            before,
            "host directories changed: {res:?}"
        );
        let (code, out) = res.expect("the container runs");
        // `pwd` prints the physical path: the link's target, resolved inside the rootfs.
        let inside = if wd == "/work/app" { &a } else { &b };
        assert_eq!(
            (code, out.as_str()),
            (0, format!("{}/app\n", inside.display()).as_str())
        );
    }
});

both_runtimes!(etc_symlinked_to_a_host_dir_stays_in_rootfs, |w| {
    let a = host_dir(&w, "host-etc");
    let before = snapshot(&a);
    let l = hostile_layer(&w);
    symlink(&a, l.join("etc")).unwrap();
    let mut o = dcpp_runtime::container::CreateOptions::new(image(&w, &l, None));
    o.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "cat /etc/hosts /etc/hostname; ls /etc".into(),
    ]);
    o.hostname = Some("boxname".into());
    let res = run(&w, &o);
    assert_eq!(snapshot(&a), before, "host directory changed: {res:?}");
    let (code, out) = res.expect("the container runs");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("localhost") && out.contains("boxname\n"),
        "{out}"
    );
    assert!(!out.contains("secret"), "{out}");
});

both_runtimes!(etc_files_symlinked_to_host_files_are_not_written, |w| {
    let a = host_dir(&w, "host-files");
    for f in ["hosts", "resolv.conf", "hostname"] {
        std::fs::write(a.join(f), format!("HOST-{f}\n")).unwrap();
    }
    let before = snapshot(&a);
    let l = hostile_layer(&w);
    std::fs::create_dir_all(l.join("etc")).unwrap();
    symlink(a.join("hosts"), l.join("etc/hosts")).unwrap();
    symlink(climbing(&a.join("resolv.conf")), l.join("etc/resolv.conf")).unwrap();
    symlink(a.join("hostname"), l.join("etc/hostname")).unwrap();
    let mut o = dcpp_runtime::container::CreateOptions::new(image(&w, &l, None));
    o.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "cat /etc/hosts /etc/resolv.conf /etc/hostname".into(),
    ]);
    o.hostname = Some("boxname".into());
    let res = run(&w, &o);
    assert_eq!(snapshot(&a), before, "host files changed: {res:?}");
    let (code, out) = res.expect("the container runs");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("localhost") && out.contains("boxname\n"),
        "{out}"
    );
    assert!(!out.contains("HOST-"), "{out}");
});

both_runtimes!(exec_cwd_under_symlink_stays_in_rootfs, |w| {
    let a = host_dir(&w, "host-exec");
    std::fs::create_dir_all(a.join("sub")).unwrap();
    let before = snapshot(&a);
    let l = hostile_layer(&w);
    symlink(&a, l.join("mnt")).unwrap();
    let mut o = dcpp_runtime::container::CreateOptions::new(image(&w, &l, None));
    o.command = Some(vec!["sleep".into(), "30".into()]);
    let c = w.mgr.create(&o).unwrap();
    w.mgr.start(&c.state.id).unwrap();
    for cwd in ["/mnt", "/mnt/sub", "/mnt/new"] {
        let req = ExecRequest {
            args: vec!["sh".into(), "-c".into(), "pwd; ls -a; touch f".into()],
            env: vec![],
            cwd: Some(cwd.into()),
            user: None,
        };
        let out = w
            .mgr
            .exec(&c.state.id, &req, |cmd| {
                cmd.stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
            })
            .unwrap()
            .wait_with_output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The link dangles inside the rootfs: the exec fails (clearly) or runs elsewhere than
        // the host directory, which it must never list nor write to.
        assert!(!text.contains("secret"), "{cwd}: {text}");
        assert_eq!(
            snapshot(&a),
            before,
            "{cwd}: host directory changed: {text}"
        );
        if !out.status.success() {
            assert!(
                text.contains(cwd) || text.to_lowercase().contains("no such file"),
                "{cwd}: unclear error: {text}"
            );
        }
    }
    w.mgr
        .stop(&c.state.id, Some(Duration::from_millis(100)))
        .unwrap();
});

both_runtimes!(system_mount_points_symlinked_to_host_dirs, |w| {
    let dirs: Vec<PathBuf> = ["host-dev", "host-proc", "host-shm"]
        .iter()
        .map(|n| host_dir(&w, n))
        .collect();
    let before: Vec<_> = dirs.iter().map(|d| snapshot(d)).collect();
    let l = hostile_layer(&w);
    symlink(&dirs[0], l.join("dev")).unwrap();
    symlink(climbing(&dirs[1]), l.join("proc")).unwrap();
    let mut o = dcpp_runtime::container::CreateOptions::new(image(&w, &l, None));
    o.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "echo x > /dev/null && echo NULL-OK; ls /dev/shm /dev/pts >/dev/null && echo DEV-OK; \
         grep -c . /proc/self/status >/dev/null && echo PROC-OK"
            .into(),
    ]);
    let res = run(&w, &o);
    let after: Vec<_> = dirs.iter().map(|d| snapshot(d)).collect();
    assert_eq!(after, before, "host directories changed: {res:?}");
    match res {
        Ok((code, out)) => {
            assert_eq!(code, 0, "{out}");
            assert_eq!(out, "NULL-OK\nDEV-OK\nPROC-OK\n");
        }
        // runc refuses a proc mount on a symlink, and says so.
        Err(e) => assert!(
            w.runtime != dcpp_runtime::container::RuntimeKind::Builtin
                && e.to_string().contains("\"/proc\""),
            "{e}"
        ),
    }
});
