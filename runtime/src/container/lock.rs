//! The two locks of a data dir: the data-dir lock (held while a create claims its name, and while
//! a manager opening the dir removes leftovers) and the per-container creation lock (held until
//! `create` returns, so a manager opening meanwhile does not take the container for a leftover).

use std::os::fd::AsRawFd;
use std::path::Path;

use super::{Error, io_err};

/// Held by the process creating the container in `dir` until `create` returns.
pub(super) fn creating_guard(dir: &Path) -> Result<std::fs::File, Error> {
    exclusive_lock(&dir.join(".creating"), "the container dir")
}

/// Opens (creating it) and flocks `path` exclusively, waiting for other holders; the lock goes
/// with the returned file.
pub(super) fn exclusive_lock(path: &Path, what: &str) -> Result<std::fs::File, Error> {
    let f =
        std::fs::File::create(path).map_err(io_err(format!("opening the lock file of {what}")))?;
    // SAFETY: flock on a descriptor we own; released when the file is dropped.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err(format!("locking {what}"))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

/// Whether another process (or thread) is creating the container in `dir` right now.
pub(super) fn creation_in_progress(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(".creating")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; a lock we get is released when `f` drops.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_being_created_is_not_taken_for_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!creation_in_progress(dir.path()), "no lock file yet");
        let guard = creating_guard(dir.path()).unwrap();
        assert!(creation_in_progress(dir.path()));
        drop(guard);
        assert!(
            !creation_in_progress(dir.path()),
            "lock released with the guard"
        );
    }
}
