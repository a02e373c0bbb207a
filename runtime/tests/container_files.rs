//! The container side of a private data dir (issue 12), as root on the real kernel: under the
//! daemon's umask (077) the bundle's files are root-only, yet a non-root user inside the
//! container still traverses `/`, its working dir and mount points and reads `/etc/hosts`; and a
//! container dir left holding only `state.tmp` by a manager killed mid-create is removed when
//! the next manager opens.

mod container_util;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use container_util::World;
use dcpp_runtime::container::{MountRequest, MountSource, RuntimeKind, Status};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// The umask is process-wide: the tests that set it take turns, and the busybox layer (test
/// input standing for an image, whose dirs are 0755) is built under the usual 022.
static UMASK_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_non_root_user_in_the_container_works_under_the_private_umask_dcpp() {
    non_root_user_under_the_private_umask(RuntimeKind::Builtin);
}

#[test]
fn a_non_root_user_in_the_container_works_under_the_private_umask_runc() {
    non_root_user_under_the_private_umask(RuntimeKind::Oci("runc".into()));
}

fn non_root_user_under_the_private_umask(runtime: RuntimeKind) {
    let _turn = UMASK_TURN.lock().unwrap_or_else(|e| e.into_inner());
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let w = World::new(runtime);
    // What the daemon and the CLI do first thing.
    dcpp_runtime::datadir::restrict_umask();
    let mut o = w.opts(&[
        "sh",
        "-c",
        "id -u; umask; ls / >/dev/null && cat /etc/passwd /etc/hosts /etc/resolv.conf \
         /etc/hostname >/dev/null && pwd && ls /mnt/deep/vol >/dev/null && echo x > /tmp/f \
         && stat -c %a /tmp/f /mnt /mnt/deep /srv/a/b && echo all-read",
    ]);
    o.user = Some("1000:1000".into());
    o.working_dir = Some("/srv/a/b".into());
    o.mounts.push(MountRequest {
        source: MountSource::Volume("files-vol".into()),
        target: "/mnt/deep/vol".into(),
        read_only: false,
    });
    let c = w.mgr.create(&o).expect("create");
    let dir = w.tmp.path().join("data/containers").join(&c.state.id);
    w.mgr.start(&c.state.id).expect("start");
    let exit = w
        .mgr
        .wait(&c.state.id, Some(Duration::from_secs(60)))
        .unwrap()
        .expect("exited");
    let out: String = w
        .mgr
        .logs(&c.state.id)
        .unwrap()
        .into_iter()
        .map(|e| e.log)
        .collect();
    assert_eq!(exit.exit_code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    // uid 1000, the usual umask 022 for the container's processes, files it creates 0644,
    // directories the runtime created on its way to mount points and the working dir 0755.
    assert_eq!(
        lines,
        [
            "1000", "0022", "/srv/a/b", "644", "755", "755", "755", "all-read"
        ],
        "{out}"
    );
    // Meanwhile the bundle's own files are root's alone.
    for f in ["config.json", "state.json", "container.log"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&w.tmp.path().join("data/volumes/files-vol")), 0o700);
    assert_eq!(
        mode(&w.tmp.path().join("data/volumes/files-vol/_data")),
        0o755
    );
    w.mgr.remove(&c.state.id, true).unwrap();
}

#[test]
fn a_container_dir_holding_only_state_tmp_is_removed_when_a_manager_opens() {
    let _turn = UMASK_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::new(RuntimeKind::Builtin);
    let live = w.mgr.create(&w.opts(&["sleep", "60"])).expect("create");
    w.mgr.start(&live.state.id).expect("start");
    let containers = w.tmp.path().join("data/containers");
    // What a manager killed between creating the dir and renaming state.tmp leaves.
    let orphan = containers.join("ab".repeat(32));
    std::fs::create_dir(&orphan).unwrap();
    std::fs::write(orphan.join("state.tmp"), b"{\"id\":").unwrap();
    // Not a container dir: not ours to judge.
    let other = containers.join("notes");
    std::fs::create_dir(&other).unwrap();

    let mgr = World::manager(w.tmp.path(), &w.cgroup_parent, w.runtime.clone());
    assert!(!orphan.exists(), "the half-created dir survived");
    assert!(
        other.exists(),
        "a dir that is not a container's was removed"
    );
    assert!(containers.join(".lock").exists());
    let info = mgr
        .inspect(&live.state.id)
        .expect("the live container is still known");
    assert_eq!(info.status, Status::Running);
    assert!(containers.join(&live.state.id).join("state.json").exists());
    std::fs::remove_dir(&other).unwrap();
}
