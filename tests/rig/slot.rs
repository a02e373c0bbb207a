//! Host names and address pools for one test daemon, unique across every test process that
//! runs at the same time (nextest runs each test as its own process, in parallel).
//!
//! A slot is held through an exclusive lock on `/tmp/dcpp-test-slots/<n>` for as long as the
//! [`Slot`] lives; the kernel drops the lock when the process dies, so a crashed test never
//! blocks the slot. Everything derived from `n` starts with the slot's own prefix, which no
//! other slot's names start with, so prefix-based cleanup can only hit this slot's leftovers.
//!
//! The daemon's TCP address is `127.(128+n).0.1:7377`: all of 127/8 is local on Linux, so
//! each slot has an address of its own without configuring one, and a port below the
//! ephemeral range that `free_port()` picks from, so no test's published port can take it.
//!
//! Pools are `10.(128+n).0.0/16`: outside the runtime crate's test pools (10.199, 10.231-235,
//! 10.9), the daemon's default (10.208.0.0/12) and every other slot, so tests that compare host
//! state by /16 only ever see their own addresses.
#![allow(dead_code)]

use std::fs::{File, TryLockError};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DIR: &str = "/tmp/dcpp-test-slots";
const SLOTS: u8 = 32;

pub struct Slot {
    pub n: u8,
    /// Bridge prefix (at most 6 characters, as the daemon requires).
    pub prefix: String,
    pub table: String,
    pub cgroup: String,
    pub pool: String,
    /// TCP address for the daemon's `--listen` (peers and remote clients).
    pub listen: String,
    _lock: File,
}

impl Slot {
    /// Takes the first free slot, waiting (up to ten minutes) while all are held. `tag`: up to
    /// 3 lowercase letters naming the test, kept in the names to make leftovers readable.
    pub fn take(tag: &str) -> Slot {
        assert!(
            tag.len() <= 3 && tag.bytes().all(|b| b.is_ascii_lowercase()),
            "slot tag {tag:?}: up to 3 lowercase letters"
        );
        std::fs::create_dir_all(DIR).expect("slot lock directory");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            for n in 0..SLOTS {
                let file = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(format!("{DIR}/{n}"))
                    .expect("slot lock file");
                match file.try_lock() {
                    Ok(()) => {
                        let slot = Slot {
                            n,
                            prefix: format!("x{n:02}{tag}"),
                            table: format!("dcpp_t{n:02}_{tag}"),
                            cgroup: format!("dcpp-t{n:02}-{tag}"),
                            pool: format!("10.{}.0.0/16", 128 + u16::from(n)),
                            listen: format!("127.{}.0.1:7377", 128 + u16::from(n)),
                            _lock: file,
                        };
                        slot.scrub_stale();
                        return slot;
                    }
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(e)) => panic!("locking slot {n}: {e}"),
                }
            }
            assert!(Instant::now() < deadline, "no free test slot in 10 minutes");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Second octet of the pool, for tests that address inside it.
    pub fn octet(&self) -> u16 {
        128 + u16::from(self.n)
    }

    /// Removes what an earlier holder killed before its cleanup (SIGKILL, abort) left under
    /// this slot's names, whatever its tag: links, nft tables and empty cgroup directories.
    fn scrub_stale(&self) {
        let links = format!("x{:02}", self.n);
        if let Ok(out) = Command::new("ip").args(["-o", "link"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = l.split(": ").nth(1) {
                    let name = name.split('@').next().unwrap_or("");
                    if name.starts_with(&links) {
                        let _ = Command::new("ip").args(["link", "del", name]).status();
                    }
                }
            }
        }
        let tables = format!("dcpp_t{:02}_", self.n);
        if let Ok(out) = Command::new("nft").args(["list", "tables"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let ["table", "ip", name] = l.split_whitespace().collect::<Vec<_>>()[..]
                    && name.starts_with(&tables)
                {
                    let _ = Command::new("nft")
                        .args(["delete", "table", "ip", name])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let cgroups = format!("dcpp-t{:02}-", self.n);
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for d in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
                if d.file_name().to_string_lossy().starts_with(&cgroups) {
                    let _ = std::fs::remove_dir(d.path());
                }
            }
        }
    }
}

/// Polls `f` every 100 ms until it holds; panics with `what` and `context()` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
