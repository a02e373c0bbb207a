//! Helpers of the container integration tests: a busybox image, a manager with its own data dir
//! and cgroup parent, and a teardown that checks nothing was left behind.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dcpp_runtime::container::{
    ContainerManager, CreateOptions, ExitInfo, Hierarchy, ImageInput, ManagerOptions, RuntimeKind,
    ShimCommand,
};

/// Builds a one-layer busybox image in `root`.
pub fn busybox_layer(root: &Path) {
    for d in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/app",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static must be installed");
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nwheel:x:10:app\nnogroup:x:65534:\n",
    )
    .unwrap();
}

/// A test's private world: temp dir, busybox image, manager.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub mgr: ContainerManager,
    pub layer: PathBuf,
    pub cgroup_parent: String,
    pub runtime: RuntimeKind,
}

pub fn shim() -> ShimCommand {
    ShimCommand {
        program: PathBuf::from(env!("CARGO_BIN_EXE_dcpp-shim")),
        args: vec![],
    }
}

impl World {
    pub fn new(runtime: RuntimeKind) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("dcpp-ct-")
            .tempdir()
            .unwrap();
        let layer = tmp.path().join("layer");
        busybox_layer(&layer);
        let cgroup_parent = format!(
            "dcpp-test-{}",
            tmp.path().file_name().unwrap().to_string_lossy()
        );
        let mgr = Self::manager(tmp.path(), &cgroup_parent, runtime.clone());
        World {
            tmp,
            mgr,
            layer,
            cgroup_parent,
            runtime,
        }
    }

    pub fn manager(dir: &Path, cgroup_parent: &str, runtime: RuntimeKind) -> ContainerManager {
        ContainerManager::open(ManagerOptions {
            data_dir: dir.join("data"),
            cgroup_parent: cgroup_parent.to_string(),
            runtime,
            shim: shim(),
            network_hook: None,
        })
        .expect("open manager")
    }

    pub fn image(&self) -> ImageInput {
        let config: oci_spec::image::Config = serde_json::from_value(serde_json::json!({
            "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        }))
        .unwrap();
        ImageInput {
            reference: "busybox:test".into(),
            layer_dirs: vec![self.layer.clone()],
            config: Some(config),
        }
    }

    pub fn opts(&self, cmd: &[&str]) -> CreateOptions {
        let mut o = CreateOptions::new(self.image());
        o.command = Some(cmd.iter().map(|s| s.to_string()).collect());
        o
    }

    /// Creates, starts and waits for a container; returns its exit record and stdout+stderr.
    pub fn run(&self, o: &CreateOptions) -> (ExitInfo, String) {
        let c = self.mgr.create(o).expect("create");
        self.mgr.start(&c.state.id).expect("start");
        let exit = self
            .mgr
            .wait(&c.state.id, Some(Duration::from_secs(60)))
            .unwrap()
            .expect("container exited");
        let out: String = self
            .mgr
            .logs(&c.state.id)
            .unwrap()
            .into_iter()
            .map(|e| e.log)
            .collect();
        self.mgr.remove(&c.state.id, true).unwrap();
        (exit, out)
    }

    pub fn sh(&self, script: &str) -> (ExitInfo, String) {
        self.run(&self.opts(&["sh", "-c", script]))
    }

    /// Mount points under this test's directory.
    pub fn our_mounts(&self) -> Vec<String> {
        let me = self.tmp.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&me))
            .map(str::to_string)
            .collect()
    }

    /// cgroup directories of this test's parent that still exist.
    pub fn our_cgroups(&self) -> Vec<PathBuf> {
        let mut roots = Vec::new();
        match Hierarchy::detect().unwrap() {
            Hierarchy::V1 { .. } => {
                for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
                    roots.push(e.path());
                }
            }
            Hierarchy::V2 { root } => roots.push(root),
        }
        roots
            .into_iter()
            .map(|r| r.join(&self.cgroup_parent))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in self.mgr.list() {
            let _ = self.mgr.remove(&c.state.id, true);
        }
        self.mgr.remove_cgroup_parent();
        if !std::thread::panicking() {
            assert_eq!(
                self.our_mounts(),
                Vec::<String>::new(),
                "mounts left behind"
            );
            assert_eq!(
                self.our_cgroups(),
                Vec::<PathBuf>::new(),
                "cgroups left behind"
            );
        }
    }
}

/// Runs the test body against the built-in executor and against runc.
#[macro_export]
macro_rules! both_runtimes {
    ($name:ident, |$w:ident| $body:block) => {
        mod $name {
            use super::*;
            #[test]
            fn dcpp() {
                let $w = World::new(dcpp_runtime::container::RuntimeKind::Builtin);
                $body
            }
            #[test]
            fn runc() {
                let $w = World::new(dcpp_runtime::container::RuntimeKind::Oci("runc".into()));
                $body
            }
        }
    };
}
