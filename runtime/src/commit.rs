//! Group commit of a state file that threads of one process update concurrently and other
//! processes update beside them (the network state, the image db).
//!
//! Each update is a read-modify-write under an inter-process `flock`, made durable (fsync,
//! rename) before it returns. Done one at a time, every update re-reads, re-writes and fsyncs
//! the whole file: with a thousand containers starting at once that is a thousand fsyncs of a
//! file that grows with them, one after the other. Here the first updater of a batch takes the
//! lock and loads the state; updates arriving while it writes are applied to the same
//! in-memory state and go out together in the next write; the lock is released when no update
//! is pending, so other processes wait at most one batch. An update still returns only once a
//! write that includes it is durable.

use std::sync::{Condvar, Mutex, MutexGuard};

/// The file behind a [`GroupCommit`].
pub(crate) trait Backing<S> {
    /// The inter-process lock, held while a batch is open.
    type Lock;
    /// The caller's error type.
    type Error;
    /// Takes the inter-process lock (waiting for other holders).
    fn lock(&self) -> Result<Self::Lock, Self::Error>;
    /// Reads the current state (under the lock).
    fn load(&self) -> Result<S, Self::Error>;
    /// Replaces the file durably with `state` (under the lock).
    fn write(&self, state: &S) -> Result<(), Self::Error>;
    /// The error of an update whose batch another thread failed to write.
    fn batch_failed(&self, msg: &str) -> Self::Error;
}

/// See the module doc.
pub(crate) struct GroupCommit<S, L> {
    batch: Mutex<Batch<S, L>>,
    written: Condvar,
}

struct Batch<S, L> {
    /// The lock and the state under it while updates are pending or being written.
    open: Option<(L, S)>,
    /// Updates applied to `open` so far, numbered from 1.
    applied: u64,
    /// Updates up to this number are on disk.
    durable: u64,
    /// Updates up to this number were in a write that failed, with its message.
    failed: (u64, String),
    /// A thread is writing (without the mutex).
    writing: bool,
}

impl<S: Clone, L> GroupCommit<S, L> {
    pub(crate) fn new() -> Self {
        GroupCommit {
            batch: Mutex::new(Batch {
                open: None,
                applied: 0,
                durable: 0,
                failed: (0, String::new()),
                writing: false,
            }),
            written: Condvar::new(),
        }
    }

    fn guard(&self) -> MutexGuard<'_, Batch<S, L>> {
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the current state and returns once that is on disk. `f` runs with this
    /// process's other updates excluded and the inter-process lock held; what it changes is
    /// written whatever it returns.
    pub(crate) fn update<B, T>(
        &self,
        backing: &B,
        f: impl FnOnce(&mut S) -> T,
    ) -> Result<T, B::Error>
    where
        B: Backing<S, Lock = L>,
        B::Error: std::fmt::Display,
    {
        let mut b = self.guard();
        if b.open.is_none() {
            // Waiting for the lock with the mutex held: this process's other updaters would
            // only queue behind this one anyway.
            let lock = backing.lock()?;
            let state = backing.load()?;
            b.open = Some((lock, state));
        }
        let Some((_, state)) = b.open.as_mut() else {
            unreachable!("the batch was opened above")
        };
        let out = f(state);
        b.applied += 1;
        let mine = b.applied;
        loop {
            if b.durable >= mine {
                return Ok(out);
            }
            if b.failed.0 >= mine {
                return Err(backing.batch_failed(&b.failed.1));
            }
            if b.writing {
                b = self.written.wait(b).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            b.writing = true;
            let upto = b.applied;
            let Some((_, state)) = b.open.as_ref() else {
                unreachable!("a batch with pending updates is open")
            };
            // A copy, so updates go on meanwhile; cloning is cheap next to encoding and fsync.
            let snapshot = state.clone();
            drop(b);
            let res = backing.write(&snapshot);
            b = self.guard();
            b.writing = false;
            if res.is_ok() {
                b.durable = upto;
            }
            if b.applied == upto {
                // Nothing pending: other processes may go. After a failed write, the next
                // batch starts again from what is on disk.
                b.open = None;
            }
            self.written.notify_all();
            if let Err(e) = res {
                b.failed = (upto, e.to_string());
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    /// A file that takes a while to write, records how often it was written and can fail.
    #[derive(Default)]
    struct Slow {
        disk: Mutex<Vec<u32>>,
        writes: AtomicUsize,
        loads: AtomicUsize,
        fail_next: AtomicBool,
        locked: AtomicBool,
    }

    #[derive(Debug)]
    struct Failed(String);

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    struct Held<'a>(&'a AtomicBool);

    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }

    impl<'a> Backing<Vec<u32>> for &'a Slow {
        type Lock = Held<'a>;
        type Error = Failed;
        fn lock(&self) -> Result<Held<'a>, Failed> {
            assert!(
                !self.locked.swap(true, Ordering::SeqCst),
                "lock taken twice"
            );
            Ok(Held(&self.locked))
        }
        fn load(&self) -> Result<Vec<u32>, Failed> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(self.disk.lock().unwrap().clone())
        }
        fn write(&self, state: &Vec<u32>) -> Result<(), Failed> {
            assert!(
                self.locked.load(Ordering::SeqCst),
                "written without the lock"
            );
            std::thread::sleep(Duration::from_millis(5));
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return Err(Failed("disk full".into()));
            }
            *self.disk.lock().unwrap() = state.clone();
            Ok(())
        }
        fn batch_failed(&self, msg: &str) -> Failed {
            Failed(format!("batch: {msg}"))
        }
    }

    #[test]
    fn concurrent_updates_share_writes_and_return_once_on_disk() {
        let commit: Arc<GroupCommit<Vec<u32>, Held<'static>>> = Arc::new(GroupCommit::new());
        // 'static for the threads: the backing lives as long as the test.
        let backing: &'static Slow = Box::leak(Box::new(Slow::default()));
        let threads: Vec<_> = (0..64u32)
            .map(|i| {
                let commit = commit.clone();
                std::thread::spawn(move || {
                    commit.update(&backing, |v| v.push(i)).unwrap();
                    assert!(
                        backing.disk.lock().unwrap().contains(&i),
                        "update {i} returned before it was written"
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut on_disk = backing.disk.lock().unwrap().clone();
        on_disk.sort();
        assert_eq!(on_disk, (0..64).collect::<Vec<_>>());
        let writes = backing.writes.load(Ordering::SeqCst);
        assert!(writes < 64, "{writes} writes for 64 concurrent updates");
        assert!(
            !backing.locked.load(Ordering::SeqCst),
            "lock released after the last batch"
        );
    }

    #[test]
    fn a_failed_write_fails_its_updates_and_the_next_batch_starts_from_disk() {
        let backing: &'static Slow = Box::leak(Box::new(Slow::default()));
        let commit: GroupCommit<Vec<u32>, Held<'static>> = GroupCommit::new();
        commit.update(&backing, |v| v.push(1)).unwrap();
        backing.fail_next.store(true, Ordering::SeqCst);
        let e = commit.update(&backing, |v| v.push(2)).unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert!(!backing.locked.load(Ordering::SeqCst));
        let loads = backing.loads.load(Ordering::SeqCst);
        commit.update(&backing, |v| v.push(3)).unwrap();
        assert_eq!(backing.loads.load(Ordering::SeqCst), loads + 1, "reloaded");
        assert_eq!(*backing.disk.lock().unwrap(), vec![1, 3]);
    }
}
