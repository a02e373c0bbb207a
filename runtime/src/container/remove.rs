//! `remove`: kills a container if forced, detaches its networks and deletes its cgroup, rootfs
//! mount and files; also what a monitor of an auto-removed container runs when it ends.

use std::path::Path;
use std::time::Duration;

use super::{ContainerManager, ContainerState, Error, RuntimeKind, Status};

impl ContainerManager {
    /// Removes a container (`force` kills a running one first). Leaves no mount, cgroup, file
    /// or process behind.
    pub fn remove(&self, reference: &str, force: bool) -> Result<(), Error> {
        let st = self.resolve(reference)?;
        let info = self.info_of(st.clone());
        if matches!(info.status, Status::Running | Status::Created) {
            if !force {
                return Err(Error::State {
                    id: st.id,
                    msg: "cannot remove a running container; stop it first or force".into(),
                });
            }
            let _ = self.kill(&st.id, libc::SIGKILL);
            self.wait(&st.id, Some(Duration::from_secs(10)))?;
        }
        if let Some(hook) = &self.opts.network_hook {
            hook.detach(&st.id, &st.name);
        }
        self.teardown(&st);
        Ok(())
    }

    pub(super) fn teardown(&self, st: &ContainerState) {
        let dir = self.dir(&st.id);
        if let RuntimeKind::Oci(rt) = &RuntimeKind::parse(&st.runtime) {
            let _ = std::process::Command::new(rt)
                .args([
                    "--root",
                    &self.opts.data_dir.join("runtime").to_string_lossy(),
                    "delete",
                    "--force",
                    &st.id,
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        self.hier.remove(&st.cgroup_path);
        remove_container_files(&dir);
        self.release_name(st);
    }
}

/// Label holding the id of the image a container runs, for whoever registered the container as
/// a holder of that image in `<data dir>/images` (the CLI, the node agent).
pub const IMAGE_ID_LABEL: &str = "org.dcpp.image.id";

/// Releases the hold of an auto-removed container on its image (the image store of the same data
/// dir). Who removes a container explicitly releases the hold itself; a container that removes
/// itself when it exits has only its monitor (or the next manager, if the monitor died) to do so.
pub(crate) fn release_image_hold(dir: &Path, st: &ContainerState) {
    let Some(digest) = st
        .labels
        .get(IMAGE_ID_LABEL)
        .and_then(|d| crate::image::Digest::parse(d).ok())
    else {
        return;
    };
    let Some(data_dir) = dir.parent().and_then(Path::parent) else {
        return;
    };
    let images = data_dir.join("images");
    if !images.is_dir() {
        return;
    }
    match crate::image::ImageStore::open(&images) {
        Ok(store) => {
            if let Err(e) = store.remove_holder(&digest, &st.id) {
                tracing::warn!(id = %st.id, "releasing the image: {e}");
            }
        }
        Err(e) => tracing::warn!(id = %st.id, "releasing the image: {e}"),
    }
}

/// Unmounts the rootfs and deletes the container directory.
pub(crate) fn remove_container_files(dir: &Path) {
    let rootfs = dir.join("rootfs");
    // Lazy: a plain umount of an overlay waits for an RCU grace period (~100 ms here); nothing
    // uses the rootfs any more, and the detached tree goes when its last user does.
    match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => tracing::warn!(rootfs = %rootfs.display(), "unmounting the rootfs: {e}"),
    }
    // The secrets tmpfs: unmounted first, or removing the directory would only empty it and
    // leave the mount behind.
    drop_files(dir);
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), "removing container dir: {e}");
    }
}

/// Unmounts a container's files tmpfs (its secrets and configs) and removes the mount point.
pub(crate) fn drop_files(dir: &Path) {
    let files = super::spec::files_dir(dir);
    match nix::mount::umount2(&files, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => tracing::warn!(files = %files.display(), "unmounting the files tmpfs: {e}"),
    }
    match std::fs::remove_dir(&files) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(files = %files.display(), "removing the files tmpfs: {e}"),
    }
}
