//! A worker's way to the store. A worker is not a raft member and holds no copy of the log:
//! what it reads and writes goes to a manager over mutual TLS with its own certificate, and
//! the managers' [`crate::scope::WorkerScope`] decides what it sees. So a compromised worker
//! machine holds its own tasks and nothing else of the cluster.

use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Future, StreamExt};

use crate::types::{Event, Kind};
use crate::{Client, Error};

/// Longest wait for a manager's answer to one request. A manager cut off by a partition
/// never answers on a connection opened before it (TCP retransmits for many minutes), and a
/// worker must reach another one well before the leader declares it down (three missed
/// heartbeats); every answer a worker gets is small (its scope is its own tasks).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

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
        let at = cur.and_then(|(_, c)| list.iter().position(|m| *m == c));
        *g = list;
        drop(g);
        match at {
            Some(i) => self.current.store(i, Ordering::Relaxed),
            None => {
                self.current.fetch_add(1, Ordering::Relaxed);
                self.moved.send_modify(|g| *g += 1);
            }
        }
    }

    /// The manager in use, with the position it was read at (for [`Remote::move_on_from`]).
    fn current(&self) -> Option<(usize, String)> {
        let g = self.managers.read().unwrap_or_else(|e| e.into_inner());
        if g.is_empty() {
            return None;
        }
        let at = self.current.load(Ordering::Relaxed);
        Some((at, g[at % g.len()].clone()))
    }

    /// Leaves the manager read at position `at` for the next one, unless another caller left
    /// it already. Every request in flight to a manager that is cut off fails at about the
    /// same moment; if each of them moved on, three of them would go round a three-manager
    /// list back to the dead one, and the worker's heartbeats would miss for another timeout
    /// each time, long enough for the leader to declare a healthy worker down.
    fn move_on_from(&self, at: usize) {
        if self
            .current
            .compare_exchange(at, at.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.moved.send_modify(|g| *g += 1);
        }
    }

    /// Runs `f` against the current manager; a transport failure, or no answer within
    /// [`CALL_TIMEOUT`], moves to the next one. `retry` (reads, and writes that never left this
    /// node) tries every manager once.
    pub async fn call<T, Fut>(
        &self,
        http: &reqwest::Client,
        retry: bool,
        f: impl Fn(Client) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        self.call_within(http, retry, Some(CALL_TIMEOUT), f).await
    }

    /// [`Remote::call`] with another bound on each manager's answer (`None`: none, for a
    /// request that may rightly take long, such as a membership change).
    pub async fn call_within<T, Fut>(
        &self,
        http: &reqwest::Client,
        retry: bool,
        limit: Option<Duration>,
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
            let Some((at, addr)) = self.current() else {
                break;
            };
            let attempt = f(Client::over(&addr, http.clone()));
            let answer = match limit {
                Some(l) => tokio::time::timeout(l, attempt).await.unwrap_or_else(|_| {
                    Err(Error::Transport(format!(
                        "manager {addr} did not answer in {l:?}"
                    )))
                }),
                None => attempt.await,
            };
            match answer {
                Err(e @ Error::Transport(_)) => {
                    tracing::debug!(manager = %addr, "{e}; trying the next manager");
                    self.move_on_from(at);
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
        let Some((_, addr)) = self.current() else {
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

    impl Remote {
        fn addr(&self) -> Option<String> {
            self.current().map(|(_, a)| a)
        }
    }

    #[tokio::test]
    async fn requests_failing_together_at_one_manager_move_on_once() {
        let r = Remote::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        let http = reqwest::Client::new();
        let limit = Some(Duration::from_millis(50));
        // Three requests in flight to a manager that never answers, as a worker's heartbeat,
        // status report and watch are when that manager is cut off.
        let hung = |c: Client| {
            let hangs = c.base_url().ends_with("a:1");
            async move {
                if hangs {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Error>(c.base_url().to_string())
            }
        };
        let (x, y, z) = tokio::join!(
            r.call_within(&http, false, limit, hung),
            r.call_within(&http, false, limit, hung),
            r.call_within(&http, false, limit, hung),
        );
        assert!([x, y, z].iter().all(|g| g.is_err()));
        assert_eq!(
            r.addr().as_deref(),
            Some("b:1"),
            "one step on, not three (back to a)"
        );
        let got = r.call_within(&http, true, limit, hung).await.unwrap();
        assert!(got.contains("b:1"), "{got}");
    }

    #[test]
    fn the_current_manager_survives_a_new_list_and_a_failure_moves_on() {
        let r = Remote::new(vec!["a:1".into(), "b:1".into()]);
        assert_eq!(r.addr().as_deref(), Some("a:1"));
        r.move_on_from(0);
        assert_eq!(r.addr().as_deref(), Some("b:1"));
        r.set_managers(vec!["c:1".into(), "b:1".into()]);
        assert_eq!(r.addr().as_deref(), Some("b:1"), "still a manager");
        r.set_managers(vec!["c:1".into(), "d:1".into()]);
        assert!(matches!(r.addr().as_deref(), Some("c:1" | "d:1")));
        r.set_managers(Vec::new());
        assert_eq!(r.managers(), ["c:1", "d:1"], "an empty list is ignored");
    }

    #[tokio::test]
    async fn a_manager_that_does_not_answer_in_time_is_left_for_the_next() {
        let r = Remote::new(vec!["a:1".into(), "b:1".into()]);
        let http = reqwest::Client::new();
        let asked = std::sync::Mutex::new(Vec::new());
        let limit = Some(Duration::from_millis(50));
        let got = r
            .call_within(&http, true, limit, |c| {
                asked.lock().unwrap().push(c.base_url().to_string());
                let hangs = c.base_url().ends_with("a:1");
                async move {
                    if hangs {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Error>(7)
                }
            })
            .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(r.addr().as_deref(), Some("b:1"));
        // A write is not retried elsewhere (the first may have committed it), but the next
        // call goes to the next manager.
        let r = Remote::new(vec!["a:1".into(), "b:1".into()]);
        let got = r
            .call_within(&http, false, limit, |_| {
                std::future::pending::<Result<(), Error>>()
            })
            .await;
        assert!(
            matches!(&got, Err(Error::Transport(m)) if m.contains("did not answer")),
            "{got:?}"
        );
        assert_eq!(r.addr().as_deref(), Some("b:1"));
        assert_eq!(asked.into_inner().unwrap().len(), 2);
    }
}
