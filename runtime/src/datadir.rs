//! File modes of the data dir: nothing under it is readable, writable or traversable by other
//! users.
//!
//! The data dir holds the cluster's tokens (`raft/raft.redb`), containers' specs with their
//! environment (`containers/<id>/config.json`), logs, and image layers whose files may be
//! setuid-root. Any of them reachable by another local user hands that user root, so:
//!
//! | what | mode |
//! |---|---|
//! | the data dir and every directory dcpp creates under it | `0700` |
//! | every file dcpp creates under it (redb, json, logs, blobs, locks) | `0600` |
//! | `containers/<id>/{hosts,hostname,resolv.conf}`, `network/resolv/*.conf` | `0644`: bind-mounted into containers, read there by non-root users; gated by their `0700` parents |
//! | `containers/<id>/upper` (the root of the container's `/`) and `volumes/<name>/_data` | `0755`: container content, gated by `0700` parents |
//! | contents of image layers, container upper dirs, volumes | the image's or the container's own |
//!
//! No directory needs `0710`: overlayfs checks the lower and upper dirs with the credentials of
//! the mounter (root), bind mounts are resolved by root before the container starts, and a
//! container process never walks a host path (it lives under its pivoted root).
//!
//! Everything is created with these modes from the first write: the daemon and every CLI command
//! that writes into a data dir set the umask to `0o077` ([`restrict_umask`]) before anything else;
//! the few files and dirs that containers must see are widened explicitly where they are
//! created ([`write_shared_file`]). A data dir written by an older dcpp is fixed at daemon start
//! by [`tighten`].

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Umask of the daemon and of CLI commands that write into a data dir: files `0600`, dirs `0700`.
pub const UMASK: u32 = 0o077;

/// Mode of files the data dir shares with containers (bind-mounted `/etc/hosts` and the like).
pub const SHARED_FILE_MODE: u32 = 0o644;

/// Mode of directories that are the root of what a container sees (its upper dir, a volume).
pub const CONTENT_ROOT_MODE: u32 = 0o755;

/// Sets the process umask to [`UMASK`]. Process-wide and inherited by children (monitors, OCI
/// runtimes): the container side resets it for the container's own processes.
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK));
}

/// Writes a file a container reads through a bind mount: mode [`SHARED_FILE_MODE`] whatever the
/// umask (its parent directory keeps other host users out).
pub fn write_shared_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(SHARED_FILE_MODE)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(SHARED_FILE_MODE))?;
    f.write_all(data)
}

/// Creates (if needed) a directory that is the root of container-visible content, with mode
/// [`CONTENT_ROOT_MODE`] whatever the umask.
pub fn create_content_root(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(CONTENT_ROOT_MODE))
}

/// `create_dir_all` for host directories outside the data dir that dcpp creates on a user's
/// behalf (a missing compose bind source): the missing components get 0755 as docker and
/// `mkdir -p` under the usual umask make them, not the daemon's 0700.
pub fn create_host_dir_all(path: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut p = Some(path);
    while let Some(d) = p {
        if std::fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing.push(d);
        p = d.parent();
    }
    std::fs::create_dir_all(path)?;
    for d in missing.iter().rev() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(CONTENT_ROOT_MODE))?;
    }
    Ok(())
}

/// What [`tighten`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// Entries looked at.
    pub checked: usize,
    /// Directories whose group/other bits were cleared.
    pub dirs: usize,
    /// Files whose group/other bits were cleared.
    pub files: usize,
    /// Entries that could not be changed (each logged at warn).
    pub failed: usize,
}

/// What a path under the data dir is, for [`tighten`].
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// dcpp's own: group/other bits cleared, directories walked.
    Own,
    /// Content of a container, image layer or volume (or an OCI runtime's state): its modes are
    /// not dcpp's to change; not walked.
    Content,
    /// A file shared with containers ([`SHARED_FILE_MODE`]): left as is.
    Shared,
}

/// Classifies `rel` (relative to the data dir, as components).
fn classify(rel: &[&str]) -> Kind {
    match rel {
        // Mount point of the overlay (the container's merged `/`), its upper and work dirs.
        ["containers", _, "rootfs" | "upper" | "work"] => Kind::Content,
        ["containers", _, "hosts" | "hostname" | "resolv.conf"] => Kind::Shared,
        // Each layer dir is an unpacked layer: its root and everything in it are the image's.
        ["images", "layers", _] => Kind::Content,
        // Unpacks in progress (layers and `image load` archives).
        ["images", "tmp", _] => Kind::Content,
        ["volumes", _, "_data"] => Kind::Content,
        ["network", "resolv", _] => Kind::Shared,
        // runc/crun keep their state here with their own modes; `runtime/` itself gates it.
        ["runtime", _] => Kind::Content,
        _ => Kind::Own,
    }
}

/// Clears group/other permission bits on the data dir and everything dcpp owns under it, without
/// entering image layers, container filesystems, volumes or OCI runtime state (whose modes are
/// their own) and without following symlinks or crossing mount points. For data dirs written
/// before dcpp created them private; a no-op on a data dir created by this version.
pub fn tighten(data_dir: &Path) -> std::io::Result<Tightened> {
    let meta = std::fs::symlink_metadata(data_dir)?;
    let mut out = Tightened::default();
    fix(data_dir, &meta, &mut out);
    walk(data_dir, meta.dev(), &mut Vec::new(), &mut out);
    Ok(out)
}

fn walk(dir: &Path, dev: u64, rel: &mut Vec<String>, out: &mut Tightened) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "tightening modes: {e}");
            out.failed += 1;
            return;
        }
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        rel.push(entry.file_name().to_string_lossy().into_owned());
        let parts: Vec<&str> = rel.iter().map(String::as_str).collect();
        let kind = classify(&parts);
        // chmod follows symlinks (and a symlink's own mode means nothing); a different device
        // is something mounted here, not dcpp's.
        if kind == Kind::Own && !meta.file_type().is_symlink() && meta.dev() == dev {
            fix(&path, &meta, out);
            if meta.is_dir() {
                walk(&path, dev, rel, out);
            }
        }
        rel.pop();
    }
}

fn fix(path: &Path, meta: &std::fs::Metadata, out: &mut Tightened) {
    out.checked += 1;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077)) {
        Ok(()) if meta.is_dir() => out.dirs += 1,
        Ok(()) => out.files += 1,
        Err(e) => {
            tracing::warn!(path = %path.display(), "tightening the mode: {e}");
            out.failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_and_shared_paths_are_recognised() {
        assert_eq!(classify(&["containers", "abc", "upper"]), Kind::Content);
        assert_eq!(classify(&["containers", "abc", "rootfs"]), Kind::Content);
        assert_eq!(classify(&["containers", "abc", "config.json"]), Kind::Own);
        assert_eq!(classify(&["containers", "abc", "hosts"]), Kind::Shared);
        assert_eq!(classify(&["images", "layers"]), Kind::Own);
        assert_eq!(classify(&["images", "layers", "0123"]), Kind::Content);
        assert_eq!(classify(&["images", "blobs", "sha256", "0123"]), Kind::Own);
        assert_eq!(classify(&["volumes", "v"]), Kind::Own);
        assert_eq!(classify(&["volumes", "v", "_data"]), Kind::Content);
        assert_eq!(classify(&["raft", "raft.redb"]), Kind::Own);
        assert_eq!(classify(&["runtime"]), Kind::Own);
        assert_eq!(classify(&["runtime", "abc"]), Kind::Content);
    }
}
