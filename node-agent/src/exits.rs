//! Event-driven exit detection. A container's monitor records its end by renaming `exit.json`
//! into the container's directory; an inotify watch per running container's directory
//! (`IN_MOVED_TO` for that rename, `IN_DELETE_SELF` for a container removed by hand) wakes the
//! agent at once instead of at its next poll. The poll stays as the safety net (a monitor
//! killed outright records nothing).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// The file a container's monitor writes when the container ended.
const EXIT_FILE: &str = "exit.json";
/// How often the reader thread checks whether it should stop.
const STOP_CHECK_MS: u16 = 500;

/// Watches container directories and wakes a [`tokio::sync::Notify`] on exits and removals.
pub struct ExitWatch {
    ino: Arc<Inotify>,
    watched: Mutex<HashMap<PathBuf, WatchDescriptor>>,
    stop: Arc<AtomicBool>,
}

impl ExitWatch {
    /// Starts the reader: a plain thread blocked in `poll(2)` on the inotify descriptor
    /// (tokio's safe fd registration is deprecated, and the unsafe one is kept to `runtime/`).
    pub fn start(wake: Arc<tokio::sync::Notify>) -> std::io::Result<ExitWatch> {
        let ino = Arc::new(Inotify::init(
            InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC,
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let ino = ino.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("dcpp-exits".into())
                .spawn(move || read_loop(&ino, &wake, &stop))?;
        }
        Ok(ExitWatch {
            ino,
            watched: Mutex::default(),
            stop,
        })
    }

    /// Makes the watched set exactly `dirs`. Returns whether one of the newly watched
    /// directories already holds an exit record (it ended before the watch was in place).
    pub fn set<'a>(&self, dirs: impl IntoIterator<Item = &'a Path>) -> bool {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let mut keep = HashMap::new();
        let mut ended = false;
        for d in dirs {
            if let Some(wd) = w.remove(d) {
                keep.insert(d.to_path_buf(), wd);
                continue;
            }
            let flags = AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_ONLYDIR;
            match self.ino.add_watch(d, flags) {
                Ok(wd) => {
                    keep.insert(d.to_path_buf(), wd);
                    ended |= d.join(EXIT_FILE).exists();
                }
                // Removed meanwhile: the round that follows sees it gone.
                Err(Errno::ENOENT) => ended = true,
                // Out of watches (fs.inotify.max_user_watches) or similar: this container's
                // exit is noticed by the poll; retried next round.
                Err(e) => tracing::debug!(dir = %d.display(), "inotify watch: {e}"),
            }
        }
        for (_, wd) in w.drain() {
            // Fails harmlessly when the kernel already dropped it (directory deleted).
            let _ = self.ino.rm_watch(wd);
        }
        *w = keep;
        ended
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_loop(ino: &Inotify, wake: &tokio::sync::Notify, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(STOP_CHECK_MS)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("inotify poll: {e}; exits are noticed by polling only");
                return;
            }
        }
        match ino.read_events() {
            Ok(events) => {
                let relevant = events.iter().any(|e| {
                    e.mask.contains(AddWatchFlags::IN_DELETE_SELF)
                        || (e.mask.contains(AddWatchFlags::IN_MOVED_TO)
                            && e.name.as_deref().is_some_and(|n| n == EXIT_FILE))
                        || e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                });
                if relevant {
                    wake.notify_one();
                }
            }
            Err(Errno::EAGAIN) => {}
            Err(e) => {
                tracing::warn!("inotify read: {e}; exits are noticed by polling only");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_on_exit_record_and_removal_only() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let wake = Arc::new(tokio::sync::Notify::new());
        let w = ExitWatch::start(wake.clone()).unwrap();
        assert!(!w.set([a.as_path(), b.as_path()]));
        let woke = || tokio::time::timeout(Duration::from_secs(2), wake.notified());

        // Log writes and other files: no wake-up.
        std::fs::write(a.join("container.log"), "x").unwrap();
        std::fs::write(a.join("exit.tmp"), "{}").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), wake.notified())
                .await
                .is_err()
        );
        // The monitor's atomic write of the exit record.
        std::fs::rename(a.join("exit.tmp"), a.join(EXIT_FILE)).unwrap();
        woke().await.expect("woken by exit.json");
        // A directory removed by hand.
        std::fs::remove_dir_all(&b).unwrap();
        woke().await.expect("woken by removal");
        // A directory that already holds an exit record when it is first watched.
        let c = tmp.path().join("c");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join(EXIT_FILE), "{}").unwrap();
        assert!(w.set([c.as_path()]));
        assert!(!w.set([c.as_path()]));
    }
}
