//! Image pulls for the agent. A task whose image is not in the local store waits in
//! `preparing` while the image is pulled in the background: at most one pull per reference at
//! a time however many tasks need it, progress written to the waiting tasks' messages (so
//! `dcpp apply` can show it), and a failure kept for [`RETRY_AFTER`] so that the tasks of a
//! broken reference are rejected at once instead of each starting its own doomed pull.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use dcpp_raft::{Store, Txn};
use dcpp_reconciler::{DesiredState, LayerProgress, NodeId, PullProgress, TaskState};
use dcpp_runtime::image::registry::{Progress, ProgressFn};

use crate::host::{Clock, HostError, Images};
use crate::metrics::AgentMetrics;

/// How often a running pull writes its progress to the waiting tasks.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// A failed pull is not retried for this long; tasks needing the image meanwhile fail with
/// the same reason.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

enum State {
    Pulling,
    Failed {
        error: String,
        at: Instant,
    },
    /// Finished; milliseconds since the epoch (`pull_policy: always` compares task creation).
    Pulled {
        at_ms: u64,
    },
}

/// What a task needing an image that is not local should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Wait: a pull of the image is running (the agent is woken when it ends).
    Wait,
    /// The last pull failed with this one-line reason.
    Failed(String),
}

/// The agent's pulls, keyed by image reference as written in the service.
#[derive(Clone)]
pub struct Pulls<S> {
    state: Arc<Mutex<HashMap<String, State>>>,
    node: S,
    me: NodeId,
    images: Arc<dyn Images>,
    clock: Arc<dyn Clock>,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<AgentMetrics>,
}

/// Bytes and layers moved so far by one pull.
#[derive(Default)]
struct Counter {
    sizes: HashMap<String, u64>,
    total: u64,
    done: u64,
    /// Bytes transferred (`done` also counts layers that were already present).
    moved: u64,
    layers_done: usize,
}

impl Counter {
    fn on(&mut self, p: Progress) {
        match p {
            Progress::Started { layers, .. } => {
                self.total = layers.iter().map(|(_, s)| *s).sum();
                self.sizes = layers
                    .into_iter()
                    .map(|(d, s)| (d.to_string(), s))
                    .collect();
            }
            Progress::Exists { digest } => {
                self.done += self.sizes.get(digest.as_str()).copied().unwrap_or(0);
                self.layers_done += 1;
            }
            Progress::Bytes { bytes, .. } => {
                self.done += bytes;
                self.moved += bytes;
            }
            Progress::Done { .. } => self.layers_done += 1,
        }
    }

    fn progress(&self, reference: &str) -> PullProgress {
        PullProgress {
            image: reference.to_string(),
            layers: (!self.sizes.is_empty()).then_some(LayerProgress {
                bytes_done: self.done,
                bytes_total: self.total,
                layers_done: self.layers_done,
                layers_total: self.sizes.len(),
            }),
        }
    }

    #[cfg(test)]
    fn line(&self, reference: &str) -> String {
        self.progress(reference).to_string()
    }
}

impl<S: Store> Pulls<S> {
    pub fn new(
        node: S,
        me: NodeId,
        images: Arc<dyn Images>,
        clock: Arc<dyn Clock>,
        wake: Arc<tokio::sync::Notify>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Pulls {
            state: Arc::default(),
            node,
            me,
            images,
            clock,
            wake,
            metrics,
        }
    }

    /// Whether a pull of `reference` by this agent finished at or after `ms` (milliseconds
    /// since the epoch).
    pub fn pulled_since(&self, reference: &str, ms: u64) -> bool {
        let m = self.state.lock().unwrap_or_else(|e| e.into_inner());
        matches!(m.get(reference), Some(State::Pulled { at_ms }) if *at_ms >= ms)
    }

    /// Starts a pull of `reference` unless one is running or recently failed. Must be called
    /// inside a tokio runtime.
    pub fn ensure(&self, reference: &str) -> Need {
        let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(reference) {
            Some(State::Pulling) => return Need::Wait,
            Some(State::Failed { error, at })
                if self.clock.now().duration_since(*at) < RETRY_AFTER =>
            {
                return Need::Failed(error.clone());
            }
            _ => {}
        }
        m.insert(reference.to_string(), State::Pulling);
        tracing::info!(image = %reference, "pulling");
        let counter = Arc::new(Mutex::new(Counter::default()));
        let c = counter.clone();
        let progress: ProgressFn = Arc::new(move |p| {
            c.lock().unwrap_or_else(|e| e.into_inner()).on(p);
        });
        // Asked for here, in the round, so the pull is in the image side's calls in round
        // order; the transfer itself runs in the background.
        let pull = self.images.pull(reference, progress);
        tokio::spawn(self.clone().run(reference.to_string(), counter, pull));
        Need::Wait
    }

    async fn run(
        self,
        reference: String,
        counter: Arc<Mutex<Counter>>,
        mut pull: BoxFuture<'static, Result<String, HostError>>,
    ) {
        let started = Instant::now();
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                r = &mut pull => break r.map_err(|e| e.to_string()),
                _ = tick.tick() => {
                    let p = counter
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .progress(&reference);
                    if let Err(e) = self.write_progress(&reference, &p).await {
                        tracing::debug!(image = %reference, "pull progress: {e}");
                    }
                }
            }
        };
        let moved = counter.lock().unwrap_or_else(|e| e.into_inner()).moved;
        self.metrics
            .pulled(result.is_ok(), moved, started.elapsed());
        {
            let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok(id) => {
                    tracing::info!(image = %reference, %id, "pulled");
                    m.insert(
                        reference.clone(),
                        State::Pulled {
                            at_ms: self.clock.now_ms(),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(image = %reference, "pull failed: {e}");
                    m.insert(
                        reference.clone(),
                        State::Failed {
                            error: e.clone(),
                            at: self.clock.now(),
                        },
                    );
                }
            }
        }
        self.wake.notify_one();
    }

    /// Writes `p` as the pull progress (and message, for `ps`) of this node's tasks waiting for
    /// `reference`, in one transaction. A task changed meanwhile makes it fail; the next tick
    /// writes again.
    async fn write_progress(&self, reference: &str, p: &PullProgress) -> Result<(), crate::Error> {
        let line = p.to_string();
        let mut txn = Txn::new();
        for (_, (mut t, revs)) in dcpp_control::schema::tasks(&self.node).await? {
            if t.node.as_ref() != Some(&self.me)
                || t.image != reference
                || t.state != TaskState::Preparing
                || t.desired != DesiredState::Running
                || t.pull.as_ref() == Some(p)
            {
                continue;
            }
            t.message = line.clone();
            t.pull = Some(p.clone());
            txn = dcpp_control::schema::task_status_write(txn, revs, &t)?;
        }
        if txn.ops.is_empty() {
            return Ok(());
        }
        match self.node.txn(txn).await {
            Ok(_) | Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_counts_bytes_and_skipped_layers() {
        let d = |c: char| {
            dcpp_runtime::image::Digest::parse(&format!("sha256:{}", c.to_string().repeat(64)))
                .unwrap()
        };
        let mut c = Counter::default();
        assert_eq!(c.line("r"), "pulling r: resolving");
        c.on(Progress::Started {
            reference: "r".into(),
            layers: vec![(d('a'), 2_000_000), (d('b'), 1_000_000)],
        });
        c.on(Progress::Exists { digest: d('b') });
        assert_eq!(c.line("r"), "pulling r: 1.0/3.0 MB, 1/2 layers");
        c.on(Progress::Bytes {
            digest: d('a'),
            bytes: 500_000,
            done: 500_000,
            total: 2_000_000,
        });
        assert_eq!(c.line("r"), "pulling r: 1.5/3.0 MB, 1/2 layers");
        c.on(Progress::Bytes {
            digest: d('a'),
            bytes: 1_500_000,
            done: 2_000_000,
            total: 2_000_000,
        });
        c.on(Progress::Done { digest: d('a') });
        assert_eq!(c.line("r"), "pulling r: 3.0/3.0 MB, 2/2 layers");
    }
}
