//! Paths inside a container's root filesystem, resolved inside it.
//!
//! The image controls every name under the rootfs: `/mnt` may be a symlink to `/root/.ssh` or to
//! `../../../..`. Joining a container path onto the rootfs's host path and handing the result to
//! the host's path walk (`create_dir_all`, `mount`) follows such links on the host. A [`Root`]
//! instead walks component by component from a descriptor of the rootfs with `O_NOFOLLOW`,
//! expanding each symlink itself: an absolute target restarts at the rootfs, `..` never climbs
//! above it (as if the process were chrooted there, like runc's securejoin and libpathrs).
//! Missing directories are created with `mkdirat` under the descriptor of their resolved parent,
//! and the caller gets a descriptor of the result, so it mounts onto `/proc/self/fd/N`
//! ([`fd_path`]) rather than on a path that could be swapped in between.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (the kernel's limit is 40 too).
const MAX_SYMLINKS: usize = 40;

/// Errors resolving a path inside a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootPathError {
    /// The root itself could not be opened.
    #[error("opening the root filesystem {root}: {source}")]
    OpenRoot {
        /// host path of the root
        root: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// A component could not be opened, created or read.
    #[error("{path} (inside the container's root filesystem): {source}")]
    Io {
        /// the path inside the root
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// A component that must be a directory is not one.
    #[error("{path} (inside the container's root filesystem): {component:?} is not a directory")]
    NotDirectory {
        /// the path inside the root
        path: PathBuf,
        /// the offending component
        component: OsString,
    },
    /// More than [`MAX_SYMLINKS`] symlinks.
    #[error("{path} (inside the container's root filesystem): too many levels of symbolic links")]
    Loop {
        /// the path inside the root
        path: PathBuf,
    },
    /// The path has no last component to create (`/`, or ends in `..`).
    #[error("{path} (inside the container's root filesystem): not a path to a file or directory")]
    NoName {
        /// the path inside the root
        path: PathBuf,
    },
}

/// What [`Root::mount_point`] creates when the path is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory (mounts of directories and file systems).
    Directory,
    /// An empty regular file (bind mounts of files).
    File,
}

/// An open root filesystem.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

/// The magic link that names `fd` in this process: mounting on it mounts on the very inode the
/// descriptor holds, whatever happened to its name since.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `openat(dir, name, O_PATH|O_NOFOLLOW)`: the entry itself, never what a symlink points at.
fn open_nofollow(dir: RawFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: openat with a valid C string; the returned descriptor is owned below.
    let fd = check(unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn file_type(fd: RawFd) -> std::io::Result<libc::mode_t> {
    // SAFETY: stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills a valid stat buffer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_mode & libc::S_IFMT)
}

/// The target of the symlink `fd` (opened with `O_PATH|O_NOFOLLOW`).
fn read_link(fd: RawFd) -> std::io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat writes at most `buf.len()` bytes into `buf`; an empty path names `fd`.
    let n = unsafe {
        libc::readlinkat(
            fd,
            c"".as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsStr::from_bytes(&buf).to_os_string())
}

fn mkdir_at(dir: RawFd, name: &OsStr) -> std::io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: mkdirat with a valid C string.
    match check(unsafe { libc::mkdirat(dir, c.as_ptr(), 0o755) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
        // The daemon runs with umask 077 (its data dir is private), but a directory made inside
        // a container's root is the container's: non-root users in it must traverse it, as
        // runc's and docker's 0755 mkdirs allow. Set the mode on the directory itself, through a
        // descriptor opened without following links.
        Ok(_) => {
            // SAFETY: openat with a valid C string; the descriptor is owned right after.
            let fd = check(unsafe {
                libc::openat(
                    dir,
                    c.as_ptr(),
                    libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            })?;
            // SAFETY: `fd` was just returned by openat and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fchmod on a descriptor we own.
            check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o755) }).map(|_| ())
        }
    }
}

/// Components of a path inside the root, `/` and `.` dropped, `..` kept.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

impl Root {
    /// Opens the root filesystem at `path` (a host path dcpp chose, not one the image controls).
    pub fn open(path: &Path) -> Result<Root, RootPathError> {
        let err = |source| RootPathError::OpenRoot {
            root: path.to_path_buf(),
            source,
        };
        let c = cstr(path.as_os_str()).map_err(err)?;
        // SAFETY: open with a valid C string; the descriptor is owned below.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(err)?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Root { fd })
    }

    /// The root's descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    fn dup_root(&self, path: &Path) -> Result<OwnedFd, RootPathError> {
        self.fd.try_clone().map_err(|source| RootPathError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Resolves `path` inside the root, creating missing directories (0755) when `create`.
    /// Returns an `O_PATH` descriptor of what it names.
    fn walk(&self, path: &Path, create: bool) -> Result<OwnedFd, RootPathError> {
        let io = |source| RootPathError::Io {
            path: path.to_path_buf(),
            source,
        };
        // The directories walked so far; `..` pops one but never the root.
        let mut stack: Vec<OwnedFd> = vec![self.dup_root(path)?];
        let mut todo: VecDeque<OsString> = components(path).collect();
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let dir = stack.last().expect("the root is never popped").as_raw_fd();
            let fd = match open_nofollow(dir, &name) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    mkdir_at(dir, &name).map_err(io)?;
                    open_nofollow(dir, &name).map_err(io)?
                }
                r => r.map_err(io)?,
            };
            match file_type(fd.as_raw_fd()).map_err(io)? {
                libc::S_IFDIR => stack.push(fd),
                libc::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(RootPathError::Loop {
                            path: path.to_path_buf(),
                        });
                    }
                    let target = PathBuf::from(read_link(fd.as_raw_fd()).map_err(io)?);
                    if target.is_absolute() {
                        stack.truncate(1);
                    }
                    for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                        todo.push_front(c);
                    }
                }
                _ if todo.is_empty() => return Ok(fd),
                _ => {
                    return Err(RootPathError::NotDirectory {
                        path: path.to_path_buf(),
                        component: name,
                    });
                }
            }
        }
        Ok(stack.pop().expect("the root is never popped"))
    }

    /// The existing file or directory at `path`, symlinks followed inside the root.
    pub fn resolve(&self, path: &Path) -> Result<OwnedFd, RootPathError> {
        self.walk(path, false)
    }

    /// The content of the regular file at `path` (symlinks followed inside the root), at most
    /// `limit` bytes: a device, FIFO or huge file planted by the image cannot stall or exhaust
    /// the reader.
    pub fn read_file(&self, path: &Path, limit: u64) -> Result<Vec<u8>, RootPathError> {
        let io = |source| RootPathError::Io {
            path: path.to_path_buf(),
            source,
        };
        let fd = self.resolve(path)?;
        if file_type(fd.as_raw_fd()).map_err(io)? != libc::S_IFREG {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let f = std::fs::File::open(fd_path(&fd)).map_err(io)?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, limit + 1), &mut buf).map_err(io)?;
        if buf.len() as u64 > limit {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {limit} bytes"),
            )));
        }
        Ok(buf)
    }

    /// The directory at `path`, created with its missing parents inside the root.
    pub fn mkdir_all(&self, path: &Path) -> Result<OwnedFd, RootPathError> {
        let fd = self.walk(path, true)?;
        if file_type(fd.as_raw_fd()).map_err(|source| RootPathError::Io {
            path: path.to_path_buf(),
            source,
        })? != libc::S_IFDIR
        {
            return Err(RootPathError::NotDirectory {
                path: path.to_path_buf(),
                component: path.file_name().unwrap_or_default().to_os_string(),
            });
        }
        Ok(fd)
    }

    /// The parent directory of `path` (created inside the root) and the last component.
    pub fn parent_of(&self, path: &Path) -> Result<(OwnedFd, OsString), RootPathError> {
        let mut comps: Vec<OsString> = components(path).collect();
        let name = match comps.pop() {
            Some(n) if n != ".." => n,
            _ => {
                return Err(RootPathError::NoName {
                    path: path.to_path_buf(),
                });
            }
        };
        let parent: PathBuf = comps.iter().collect();
        Ok((self.mkdir_all(&parent)?, name))
    }

    /// A mount point at `path`: parents are resolved and created inside the root; the last
    /// component, if it is a symlink, is replaced rather than followed (a file system mounted on
    /// `/etc/resolv.conf` covers that name, wherever the image pointed it); if missing it is
    /// created as `kind`. Returns a descriptor to mount onto through [`fd_path`].
    pub fn mount_point(&self, path: &Path, kind: Kind) -> Result<OwnedFd, RootPathError> {
        let io = |source| RootPathError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (parent, name) = self.parent_of(path)?;
        let dir = parent.as_raw_fd();
        let c = cstr(&name).map_err(io)?;
        match open_nofollow(dir, &name) {
            Ok(fd) if file_type(fd.as_raw_fd()).map_err(io)? == libc::S_IFLNK => {
                drop(fd);
                // SAFETY: unlinkat with a valid C string; removes the symlink entry only.
                check(unsafe { libc::unlinkat(dir, c.as_ptr(), 0) }).map_err(io)?;
            }
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(io(e)),
        }
        match kind {
            Kind::Directory => mkdir_at(dir, &name).map_err(io)?,
            Kind::File => {
                // SAFETY: openat with a valid C string; O_EXCL|O_NOFOLLOW never follows a link.
                let fd = check(unsafe {
                    libc::openat(
                        dir,
                        c.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_WRONLY
                            | libc::O_CLOEXEC,
                        0o644 as libc::c_uint,
                    )
                })
                .map_err(io)?;
                // SAFETY: closing the descriptor openat just returned.
                unsafe { libc::close(fd) };
            }
        }
        open_nofollow(dir, &name).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "s").unwrap();
        (t, root, host)
    }

    fn listing(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn absolute_and_relative_symlinks_stay_inside() {
        let (_t, root, host) = setup();
        symlink(&host, root.join("abs")).unwrap();
        symlink("../../../../../../..", root.join("up")).unwrap();
        let r = Root::open(&root).unwrap();
        r.mkdir_all(Path::new("/abs/x/y")).unwrap();
        assert!(
            root.join(host.strip_prefix("/").unwrap())
                .join("x/y")
                .is_dir()
        );
        r.mkdir_all(Path::new("/up/z")).unwrap();
        assert!(root.join("z").is_dir());
        r.mkdir_all(Path::new("/../../w")).unwrap();
        assert!(root.join("w").is_dir());
        assert_eq!(listing(&host), vec!["secret"]);
        assert!(!host.parent().unwrap().join("z").exists());
    }

    #[test]
    fn mount_point_replaces_a_final_symlink_and_reports_loops() {
        let (_t, root, host) = setup();
        symlink(host.join("secret"), root.join("etc/hosts")).unwrap();
        let r = Root::open(&root).unwrap();
        let fd = r.mount_point(Path::new("/etc/hosts"), Kind::File).unwrap();
        assert_eq!(file_type(fd.as_raw_fd()).unwrap(), libc::S_IFREG);
        assert!(
            !std::fs::symlink_metadata(root.join("etc/hosts"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(host.join("secret")).unwrap(), "s");
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert!(matches!(
            r.mkdir_all(Path::new("/a/x")),
            Err(RootPathError::Loop { .. })
        ));
        std::fs::write(root.join("file"), "").unwrap();
        assert!(matches!(
            r.mkdir_all(Path::new("/file/x")),
            Err(RootPathError::NotDirectory { .. })
        ));
        assert!(matches!(
            r.mount_point(Path::new("/"), Kind::Directory),
            Err(RootPathError::NoName { .. })
        ));
    }

    #[test]
    fn resolve_does_not_create() {
        let (_t, root, _host) = setup();
        let r = Root::open(&root).unwrap();
        assert!(matches!(
            r.resolve(Path::new("/nope/x")),
            Err(RootPathError::Io { .. })
        ));
        assert!(!root.join("nope").exists());
        r.resolve(Path::new("/etc/../etc")).unwrap();
    }
}
