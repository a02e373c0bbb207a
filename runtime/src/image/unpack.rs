//! Safe unpacking of layer tarballs into directories usable as overlayfs lower dirs.
//!
//! Every entry is resolved inside the layer root: absolute paths are re-rooted, `..` in entry
//! names is rejected, and symlinks met while walking parent directories are followed *inside*
//! the root (a link to `/etc` means `<root>/etc`), so nothing is ever written outside it.
//! Whiteouts become overlayfs whiteouts (0:0 char devices, `trusted.overlay.opaque=y`).

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::error::{ImageError, IoContext, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: u32 = 40;
const COPY_BUF: usize = 256 << 10;

/// Unpack the (uncompressed) tar stream `reader` into the empty directory `root`.
/// `layer` names the layer in error messages.
pub(crate) fn unpack<R: Read>(reader: R, root: &Path, layer: &str) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    // Entries come grouped by directory, so the parent resolved for the previous entry is
    // usually the one needed next. A resolved chain of real directories only changes when one
    // of them is removed; an entry can only remove a directory below its own parent, which
    // replaced the cached chain first, but the cache is dropped on any removal all the same.
    let mut parent_cache: Option<(Vec<OsString>, PathBuf)> = None;
    let mut buf = vec![0u8; COPY_BUF];
    let entries = archive
        .entries()
        .map_err(|e| ImageError::invalid(format!("layer {layer}"), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::invalid(format!("layer {layer}"), e))?;
        let raw = entry
            .path()
            .map_err(|e| ImageError::invalid(format!("layer {layer}"), e))?
            .into_owned();
        let unsafe_entry = |reason: &str| ImageError::UnsafeLayer {
            layer: layer.to_string(),
            entry: raw.display().to_string(),
            reason: reason.to_string(),
        };
        let parts = normalize(&raw).ok_or_else(|| unsafe_entry("path escapes the layer root"))?;
        let Some((name, parents)) = parts.split_last() else {
            continue; // the root itself ("./")
        };
        let kind = entry.header().entry_type();
        let name_str = name.to_string_lossy();

        let parent = |cache: &mut Option<(Vec<OsString>, PathBuf)>| -> Result<PathBuf> {
            if let Some((key, dir)) = cache.as_ref()
                && key.as_slice() == parents
            {
                return Ok(dir.clone());
            }
            let dir = resolve(root, parents, true, &unsafe_entry)?;
            *cache = Some((parents.to_vec(), dir.clone()));
            Ok(dir)
        };

        if name_str == WHITEOUT_OPAQUE {
            let dir = parent(&mut parent_cache)?;
            set_xattr(&dir, "trusted.overlay.opaque", b"y").ctx("mark opaque", &dir)?;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_entry("invalid whiteout name"));
            }
            let dir = parent(&mut parent_cache)?;
            let target = dir.join(hidden);
            remove_existing(&target, &mut parent_cache)?;
            nix::sys::stat::mknod(
                &target,
                SFlag::S_IFCHR,
                Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| ImageError::io("create whiteout", &target, e.into()))?;
            continue;
        }

        let dir = parent(&mut parent_cache)?;
        let path = dir.join(name);
        match kind {
            EntryType::Directory => match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                        remove_existing(&path, &mut parent_cache)?;
                        fs::create_dir(&path).ctx("create directory", &path)?;
                    }
                }
                Err(e) => return Err(ImageError::io("create directory", &path, e)),
            },
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // Creating first and handling EEXIST saves two stats per file in the
                // common case (a new file); O_NOFOLLOW|O_EXCL never writes through a link.
                let mut f = match create_file(&path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        remove_existing(&path, &mut parent_cache)?;
                        create_file(&path)
                    }
                    other => other,
                }
                .ctx("create file", &path)?;
                copy_entry(&mut entry, &mut f, &mut buf).ctx("write file", &path)?;
                apply_file_metadata(&mut entry, &f, &path)?;
                continue;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImageError::invalid(format!("layer {layer}"), e))?
                    .ok_or_else(|| unsafe_entry("symlink without target"))?
                    .into_owned();
                remove_existing(&path, &mut parent_cache)?;
                // The target is stored verbatim: it is only ever resolved inside the
                // container's root, never by us.
                std::os::unix::fs::symlink(&target, &path).ctx("create symlink", &path)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImageError::invalid(format!("layer {layer}"), e))?
                    .ok_or_else(|| unsafe_entry("hardlink without target"))?
                    .into_owned();
                let tparts = normalize(&target)
                    .ok_or_else(|| unsafe_entry("hardlink target escapes the layer root"))?;
                let Some((tname, tparents)) = tparts.split_last() else {
                    return Err(unsafe_entry("hardlink to the layer root"));
                };
                let tdir = resolve(root, tparents, false, &unsafe_entry)?;
                let tpath = tdir.join(tname);
                let tmeta = fs::symlink_metadata(&tpath)
                    .map_err(|_| unsafe_entry("hardlink target does not exist in this layer"))?;
                if tmeta.is_dir() {
                    return Err(unsafe_entry("hardlink to a directory"));
                }
                remove_existing(&path, &mut parent_cache)?;
                // link(2) does not follow a symlink target, so this cannot reach outside.
                fs::hard_link(&tpath, &path).ctx("create hardlink", &path)?;
                continue; // a hardlink shares the target's metadata
            }
            EntryType::Fifo => {
                remove_existing(&path, &mut parent_cache)?;
                nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                    .map_err(|e| ImageError::io("create fifo", &path, e.into()))?;
            }
            EntryType::Char | EntryType::Block => {
                tracing::debug!(layer, entry = %raw.display(), "skipping device node");
                continue;
            }
            // Metadata-only entries (pax globals etc.) are consumed by the tar reader.
            other => {
                tracing::debug!(layer, entry = %raw.display(), ?other, "skipping entry type");
                continue;
            }
        }
        apply_metadata(&mut entry, &path, kind, &mut dir_times)?;
    }
    // Directory times last: creating children changed them.
    for (dir, mtime) in dir_times.iter().rev() {
        let ts = TimeSpec::new(*mtime, 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            dir,
            &ts,
            &ts,
            UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

/// Ownership, mode, xattrs and mtime of a regular file, through its open descriptor (no path
/// lookups).
fn apply_file_metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    f: &fs::File,
    path: &Path,
) -> Result<()> {
    use std::os::fd::AsFd;
    let header = entry.header();
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let mtime = header.mtime().unwrap_or(0) as i64;
    if let Err(e) = std::os::unix::fs::fchown(f, Some(uid), Some(gid)) {
        tracing::debug!(path = %path.display(), error = %e, "cannot set ownership");
    }
    // After chown, which clears setuid/setgid bits.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .ctx("set mode", path)?;
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                && let Err(e) = set_xattr(path, name, ext.value_bytes())
            {
                tracing::debug!(path = %path.display(), xattr = name, error = %e, "xattr not kept");
            }
        }
    }
    let ts = TimeSpec::new(mtime, 0);
    let _ = nix::sys::stat::futimens(f.as_fd(), &ts, &ts);
    Ok(())
}

fn apply_metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    kind: EntryType,
    dir_times: &mut Vec<(PathBuf, i64)>,
) -> Result<()> {
    let header = entry.header();
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let mtime = header.mtime().unwrap_or(0) as i64;
    // Ownership first: chown clears setuid/setgid bits that chmod sets.
    if let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        tracing::debug!(path = %path.display(), error = %e, "cannot set ownership");
    }
    if kind != EntryType::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("set mode", path)?;
    }
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                && let Err(e) = set_xattr(path, name, ext.value_bytes())
            {
                tracing::debug!(path = %path.display(), xattr = name, error = %e, "xattr not kept");
            }
        }
    }
    if kind == EntryType::Directory {
        dir_times.push((path.to_path_buf(), mtime));
    } else {
        let ts = TimeSpec::new(mtime, 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &ts,
            &ts,
            UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

/// Split an entry path into normal components; absolute paths are re-rooted. `None` if it
/// contains `..` (it would climb out of wherever it lands).
fn normalize(p: &Path) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Resolve `parts` (directories) under `root`, following symlinks but never leaving `root`:
/// an absolute link target restarts at `root`, and `..` stops at `root`. Missing directories
/// are created when `create` is set.
fn resolve(
    root: &Path,
    parts: &[OsString],
    create: bool,
    unsafe_entry: &dyn Fn(&str) -> ImageError,
) -> Result<PathBuf> {
    let mut stack: Vec<OsString> = Vec::new();
    let mut queue: VecDeque<OsString> = parts.iter().cloned().collect();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c == OsStr::new(".") || c.is_empty() {
            continue;
        }
        if c == OsStr::new("..") {
            stack.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(&stack);
        cand.push(&c);
        match fs::symlink_metadata(&cand) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(unsafe_entry("too many levels of symbolic links"));
                }
                let target = fs::read_link(&cand).ctx("read symlink", &cand)?;
                if target.is_absolute() {
                    stack.clear();
                }
                let mut more: Vec<OsString> = Vec::new();
                for tc in target.components() {
                    match tc {
                        Component::Normal(s) => more.push(s.to_os_string()),
                        Component::ParentDir => more.push("..".into()),
                        _ => {}
                    }
                }
                for m in more.into_iter().rev() {
                    queue.push_front(m);
                }
            }
            Ok(m) if m.is_dir() => stack.push(c),
            Ok(_) => return Err(unsafe_entry("a parent path component is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                // A parent the tar has no entry for: 0755 as docker and tar make it, not the
                // umask's 0700 (the store's own dirs keep host users out).
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&cand)
                    .ctx("create directory", &cand)?;
                fs::set_permissions(&cand, fs::Permissions::from_mode(0o755))
                    .ctx("set mode", &cand)?;
                stack.push(c);
            }
            Err(_) => {
                return Err(unsafe_entry(
                    "parent directory does not exist in this layer",
                ));
            }
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&stack);
    Ok(out)
}

/// Remove whatever is at `path` (without following a symlink there). Removing a directory
/// forgets the cached parent, which may have been inside it.
fn remove_existing<T>(path: &Path, parent_cache: &mut Option<T>) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            *parent_cache = None;
            fs::remove_dir_all(path).ctx("remove", path)
        }
        Ok(_) => fs::remove_file(path).ctx("remove", path),
        Err(_) => Ok(()),
    }
}

fn create_file(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(path)
}

/// `io::copy` moves 8 KiB per write(2); layer files are often megabytes.
fn copy_entry(r: &mut impl Read, w: &mut fs::File, buf: &mut [u8]) -> io::Result<()> {
    use io::Write;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
    }
}

/// lsetxattr(2): sets an attribute on the entry itself, never on a symlink's target.
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call, and
    // `value` is a valid slice whose pointer/length pair is passed unchanged.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// lgetxattr(2), for tests and inspection.
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = CString::new(name).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings; `buf` is writable for `buf.len()` bytes.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_reroots_and_rejects_parent() {
        assert_eq!(
            normalize(Path::new("/etc/./passwd")).unwrap(),
            vec![OsString::from("etc"), OsString::from("passwd")]
        );
        assert!(normalize(Path::new("a/../../b")).is_none());
    }
}
