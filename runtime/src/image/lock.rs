//! Advisory file locks (flock), so several dcpp processes can share one store.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::error::{ImageError, Result};

/// A held flock; released on drop.
pub(crate) struct FileLock {
    _lock: Flock<File>,
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io("open lock", path, e))
}

impl FileLock {
    /// Block until the exclusive lock is ours.
    pub(crate) fn exclusive(path: &Path) -> Result<FileLock> {
        Self::take(path, FlockArg::LockExclusive)
    }

    /// Block until a shared lock is ours.
    pub(crate) fn shared(path: &Path) -> Result<FileLock> {
        Self::take(path, FlockArg::LockShared)
    }

    fn take(path: &Path, arg: FlockArg) -> Result<FileLock> {
        let f = open(path)?;
        Flock::lock(f, arg)
            .map(|l| FileLock { _lock: l })
            .map_err(|(_, e)| ImageError::io("lock", path, e.into()))
    }
}
