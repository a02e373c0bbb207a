//! A worker's way to the store. A worker is not a raft member and holds no copy of the log:
//! what it reads and writes goes to a manager over mutual TLS with its own certificate, and
//! the managers' [`crate::scope::WorkerScope`] decides what it sees. So a compromised worker
//! machine holds its own tasks and nothing else of the cluster.

use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::stream::BoxStream;
use futures::{Future, StreamExt};

use crate::types::{Event, Kind};
use crate::{Client, Error};

/// The managers a worker talks to, and which one it uses now.
pub(crate) struct Remote {
    managers: RwLock<Vec<String>>,
    current: AtomicUsize,
    /// Bumped when the manager in use changes, so that open watches end and reopen there.
    moved: tokio::sync::watch::Sender<u64>,
}

impl Remote {
    pub fn new(managers: Vec<String>) -> Remote {
        Remote {
            managers: RwLock::new(managers),
            current: AtomicUsize::new(0),
            moved: tokio::sync::watch::channel(0).0,
        }
    }

    pub fn managers(&self) -> Vec<String> {
        self.managers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the list (as a manager reported it); keeps using the current manager if it is
    /// still one. An empty list is ignored: a worker must always know somewhere to go.
    pub fn set_managers(&self, mut list: Vec<String>) {
        if list.is_empty() {
            return;
        }
        list.sort();
        list.dedup();
        let cur = self.current();
        let mut g = self.managers.write().unwrap_or_else(|e| e.into_inner());
        if *g == list {
            return;
        }
        let at = cur.and_then(|c| list.iter().position(|m| *m == c));
        *g = list;
        drop(g);
        match at {
            Some(i) => self.current.store(i, Ordering::Relaxed),
            None => self.move_on(),
        }
    }

    fn current(&self) -> Option<String> {
        let g = self.managers.read().unwrap_or_else(|e| e.into_inner());
        if g.is_empty() {
            return None;
        }
        Some(g[self.current.load(Ordering::Relaxed) % g.len()].clone())
    }

    fn move_on(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
        self.moved.send_modify(|g| *g += 1);
    }

    /// Runs `f` against the current manager; a transport failure moves to the next one.
    /// `retry` (reads, and writes that never left this node) tries every manager once.
    pub async fn call<T, Fut>(
        &self,
        http: &reqwest::Client,
        retry: bool,
        f: impl Fn(Client) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        let tries = if retry {
            self.managers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len()
                .max(1)
        } else {
            1
        };
        let mut last = Error::NoLeader("this worker knows no manager".into());
        for _ in 0..tries {
            let Some(addr) = self.current() else { break };
            match f(Client::over(&addr, http.clone())).await {
                Err(e @ Error::Transport(_)) => {
                    tracing::debug!(manager = %addr, "{e}; trying the next manager");
                    self.move_on();
                    last = e;
                }
                r => return r,
            }
        }
        Err(last)
    }

    /// A watch at the current manager that ends (with a transport error, so the watcher
    /// re-lists) when another manager takes over.
    pub fn watch(
        &self,
        http: &reqwest::Client,
        since: u64,
        kind: Option<Kind>,
    ) -> BoxStream<'static, Result<Event, Error>> {
        let Some(addr) = self.current() else {
            return futures::stream::iter([Err(Error::NoLeader(
                "this worker knows no manager".into(),
            ))])
            .boxed();
        };
        let mut moved = self.moved.subscribe();
        moved.borrow_and_update();
        let ended = async move {
            let _ = moved.changed().await;
        };
        Client::over(&addr, http.clone())
            .watch(since, kind)
            .take_until(ended)
            .chain(futures::stream::once(async move {
                Err(Error::Transport(format!(
                    "watch at {addr} ended: another manager took over"
                )))
            }))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_manager_survives_a_new_list_and_a_failure_moves_on() {
        let r = Remote::new(vec!["a:1".into(), "b:1".into()]);
        assert_eq!(r.current().as_deref(), Some("a:1"));
        r.move_on();
        assert_eq!(r.current().as_deref(), Some("b:1"));
        r.set_managers(vec!["c:1".into(), "b:1".into()]);
        assert_eq!(r.current().as_deref(), Some("b:1"), "still a manager");
        r.set_managers(vec!["c:1".into(), "d:1".into()]);
        assert!(matches!(r.current().as_deref(), Some("c:1" | "d:1")));
        r.set_managers(Vec::new());
        assert_eq!(r.managers(), ["c:1", "d:1"], "an empty list is ignored");
    }
}
