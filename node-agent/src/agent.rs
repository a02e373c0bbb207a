//! The node agent: makes the local runtime match the tasks assigned to this node and reports
//! what it observes. Level-triggered like the leader loop: each round compares the task records
//! with the containers labelled [`LABEL_TASK`] and acts on the difference, so a daemon restart,
//! a missed event or a container killed by hand are all handled by the same code. Running
//! containers are never restarted to "re-adopt" them: their monitors survive the daemon.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use dcpp_control::nodes::SelfInfo;
use dcpp_raft::{Kind, Node, Txn};
use dcpp_reconciler::{DesiredState, Health, Task, TaskId, TaskReport, TaskState};
use dcpp_runtime::container::{
    ContainerInfo, ContainerManager, ExecRequest, MountRequest, MountSource, NetworkMode, Status,
};
use dcpp_runtime::image::registry::RegistryOptions;
use dcpp_runtime::image::{ImageError, ImageStore, LocalImage};
use dcpp_runtime::network::{
    ContainerNetworks, ContainerPlan, NetworkConfig, NetworkManager, PlannedNetwork, PortMapping,
    Protocol,
};

use crate::Error;
use crate::exits::ExitWatch;
use crate::pull::{Need, Pulls};
use crate::step::{
    ContainerView, HealthState, HealthTiming, ImageView, Step, next_step, shutdown_report,
    wants_image,
};
use dcpp_control::schema::{
    LABEL_IMAGE_ID, LABEL_SERVICE, LABEL_STACK, LABEL_TASK, ServiceDoc, TaskRevs, container_name,
    now_ms,
};

/// How often the node record's heartbeat is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the agent checks that its node record still describes it.
const STALE_CHECK: Duration = Duration::from_secs(1);
/// Round period when nothing wakes the agent (catches containers that died) and exits are
/// not watched, or healthchecks are due.
pub const POLL: Duration = Duration::from_millis(250);
/// Round period while exits are watched ([`crate::exits`]): the safety net for monitors that
/// died without recording an exit.
pub const POLL_WATCHED: Duration = Duration::from_secs(1);
/// Container operations run at the same time (environment `DCPP_AGENT_PARALLEL` overrides it,
/// for tuning on other machines).
pub const PARALLEL: usize = 8;
/// Label on networks the agent created for a stack.
pub const NETWORK_STACK_LABEL: &str = "org.dcpp.stack";

/// The local networking the agent drives.
pub struct Networking {
    pub manager: Arc<NetworkManager>,
    pub hook: Arc<ContainerNetworks>,
}

pub struct Agent {
    node: Node,
    ctr: Arc<ContainerManager>,
    images_dir: PathBuf,
    net: Option<Networking>,
    health: Mutex<HashMap<TaskId, HealthState>>,
    used_net: std::sync::atomic::AtomicBool,
    /// Wakes the loop early (a pull finished, a container exited).
    wake: Arc<tokio::sync::Notify>,
    pulls: Pulls,
    exits: Mutex<Option<ExitWatch>>,
    parallel: usize,
    /// Whether each task container (by id) was last put into service (`true`) or withdrawn,
    /// so a round asks the network manager only on a change.
    serving: Mutex<HashMap<String, bool>>,
    /// What the heartbeat says about this host (the role is read from raft each time).
    me: SelfInfo,
}

/// A pending write to one task record.
struct Report {
    task: Task,
    rev: TaskRevs,
}

impl Agent {
    pub fn new(
        node: Node,
        ctr: Arc<ContainerManager>,
        images_dir: PathBuf,
        net: Option<Networking>,
    ) -> Self {
        let wake = Arc::new(tokio::sync::Notify::new());
        let pulls = Pulls::new(
            node.clone(),
            dcpp_control::nodes::node_id(node.id()),
            images_dir.clone(),
            RegistryOptions::default(),
            wake.clone(),
        );
        Agent {
            ctr,
            images_dir,
            wake,
            pulls,
            exits: Mutex::default(),
            parallel: std::env::var("DCPP_AGENT_PARALLEL")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(PARALLEL),
            used_net: std::sync::atomic::AtomicBool::new(
                net.as_ref()
                    .is_some_and(|n| n.manager.list().is_ok_and(|l| !l.is_empty())),
            ),
            net,
            health: Mutex::default(),
            serving: Mutex::default(),
            me: SelfInfo::local(node.id(), node.advertise(), dcpp_raft::Role::Worker),
            node,
        }
    }

    /// Pulls missing images with these registry settings (default: loopback registries over
    /// plain HTTP, credentials from the Docker CLI's config.json).
    pub fn with_registry(mut self, opts: RegistryOptions) -> Self {
        self.pulls = Pulls::new(
            self.node.clone(),
            self.me(),
            self.images_dir.clone(),
            opts,
            self.wake.clone(),
        );
        self
    }

    fn me(&self) -> dcpp_reconciler::NodeId {
        dcpp_control::nodes::node_id(self.node.id())
    }

    /// This node as its record should describe it: a raft voter is a manager.
    fn self_info(&self) -> SelfInfo {
        let voter = self
            .node
            .status()
            .is_ok_and(|st| st.members.iter().any(|m| m.id == self.node.id() && m.voter));
        let mut me = self.me.clone();
        me.role = if voter {
            dcpp_raft::Role::Manager
        } else {
            dcpp_raft::Role::Worker
        };
        me
    }

    /// Writes this node's record with a fresh heartbeat (the leader treats a silent node as
    /// down, and schedules nothing on a node without a record).
    pub async fn heartbeat(&self) -> Result<(), Error> {
        dcpp_control::nodes::heartbeat(&self.node, &self.self_info(), now_ms()).await?;
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ContainerManager) -> T + Send + 'static,
    ) -> T {
        let ctr = self.ctr.clone();
        match tokio::task::spawn_blocking(move || f(&ctr)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// One round: compare, act, report. Returns whether anything was done.
    pub async fn reconcile_once(&self) -> Result<bool, Error> {
        let me = self.me();
        let tasks: BTreeMap<TaskId, (Task, TaskRevs)> =
            dcpp_control::schema::tasks(&self.node).await?;
        let mut services: HashMap<String, ServiceDoc> = HashMap::new();
        for o in self.node.list(Kind::Service, false).await?.objects {
            services.insert(o.id.clone(), o.decode()?);
        }
        let containers: Vec<ContainerInfo> = self.blocking(|c| c.list()).await;
        self.watch_exits(&containers);
        let mut by_task: HashMap<u64, ContainerInfo> = HashMap::new();
        let mut strays = Vec::new();
        for c in containers {
            let Some(tid) = c
                .state
                .labels
                .get(LABEL_TASK)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            match tasks.get(&TaskId(tid)) {
                Some((t, _)) if t.node.as_ref() == Some(&me) => {
                    by_task.insert(tid, c);
                }
                _ => strays.push(c),
            }
        }
        let mut did = !strays.is_empty();
        // Containers of forgotten tasks (history trimmed, stack removed): delete them.
        futures::stream::iter(strays)
            .for_each_concurrent(
                self.parallel,
                |c| async move { self.remove_container(&c).await },
            )
            .await;
        // Tasks are independent: start and stop them concurrently, reporting in batches so
        // progress shows while a large round runs. Stops are all signalled at once and waited
        // out together (as compose stops a service's containers: one grace period in all), and
        // they don't take turns with creates and starts, which `parallel` bounds because they
        // load the machine while a stop mostly waits.
        let (stops, rest): (Vec<_>, Vec<_>) = tasks
            .into_values()
            .filter(|(t, _)| t.node.as_ref() == Some(&me))
            .map(|(t, rev)| {
                let c = by_task.remove(&t.id.0);
                let svc = services.get(&t.service.0).cloned();
                (t, rev, c, svc)
            })
            .partition(|(t, ..)| t.desired != DesiredState::Running);
        let run = |(t, rev, c, svc): (
            Task,
            TaskRevs,
            Option<ContainerInfo>,
            Option<ServiceDoc>,
        )| async move { self.reconcile_task(&t, rev, c.as_ref(), svc.as_ref()).await };
        let all_stops = stops.len().max(1);
        let mut results = futures::stream::select(
            futures::stream::iter(stops)
                .map(run)
                .buffer_unordered(all_stops),
            futures::stream::iter(rest)
                .map(run)
                .buffer_unordered(self.parallel),
        );
        let mut reports = Vec::new();
        let mut last_flush = Instant::now();
        while let Some(r) = results.next().await {
            if let Some(r) = r {
                reports.push(r);
            }
            if !reports.is_empty() && last_flush.elapsed() >= Duration::from_millis(100) {
                did = true;
                self.flush(std::mem::take(&mut reports)).await?;
                last_flush = Instant::now();
            }
        }
        if !reports.is_empty() {
            did = true;
            self.flush(reports).await?;
        }
        self.prune_networks(&services).await;
        Ok(did)
    }

    /// Watches the directories of the live containers for their exit records.
    fn watch_exits(&self, containers: &[ContainerInfo]) {
        let g = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = g.as_ref() else { return };
        let live = containers
            .iter()
            .filter(|c| matches!(c.status, Status::Running | Status::Created))
            .map(|c| c.bundle.as_path());
        if w.set(live) {
            self.wake.notify_one();
        }
    }

    async fn flush(&self, reports: Vec<Report>) -> Result<(), Error> {
        let mut txn = Txn::new();
        for r in reports {
            txn = dcpp_control::schema::task_status_write(txn, r.rev, &r.task)?;
        }
        match self.node.txn(txn).await {
            // The leader changed a task meanwhile; the next round re-reads and reports again.
            Ok(_) | Err(dcpp_raft::Error::PreconditionFailed(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn report(t: &Task, rev: TaskRevs, r: TaskReport) -> Option<Report> {
        let mut task = t.clone();
        let now = now_ms();
        if let Some(s) = r.state
            && !(s == task.state || task.state.can_move_to(s))
        {
            return None;
        }
        let mut obs = dcpp_reconciler::Observed::default();
        obs.tasks.insert(task.id, task.clone());
        dcpp_reconciler::report(&mut obs, task.id, &r, now).ok()?;
        task = obs.tasks.remove(&t.id)?;
        (task != *t).then_some(Report { task, rev })
    }

    async fn reconcile_task(
        &self,
        t: &Task,
        rev: TaskRevs,
        c: Option<&ContainerInfo>,
        svc: Option<&ServiceDoc>,
    ) -> Option<Report> {
        let view = c.map(|c| container_view(c.status));
        let policy = svc.and_then(|d| d.service.pull_policy.as_deref());
        let (image, local) = if wants_image(t, view) {
            match self.image_for(t, policy) {
                Ok(Some(img)) => (Some(ImageView::Present), Some(img)),
                Ok(None) => (Some(ImageView::Pulling), None),
                Err(e) => {
                    let rejected = matches!(e, Error::ImageNotFound(_) | Error::Pull(_));
                    (
                        Some(ImageView::Failed {
                            rejected,
                            error: e.to_string(),
                        }),
                        None,
                    )
                }
            }
        } else {
            (None, None)
        };
        let step = next_step(t, view, svc.is_some(), image.as_ref());
        tracing::trace!(task = %t.id, ?step, "step");
        self.execute(t, rev, c, svc, local, step).await
    }

    /// Carries out one [`Step`] for task `t` and returns the report to write, if any.
    async fn execute(
        &self,
        t: &Task,
        rev: TaskRevs,
        c: Option<&ContainerInfo>,
        svc: Option<&ServiceDoc>,
        img: Option<LocalImage>,
        step: Step,
    ) -> Option<Report> {
        match (step, c, svc, img) {
            (Step::Nothing, ..) => None,
            (Step::Report(r), ..) => {
                if r.state == Some(TaskState::Shutdown) {
                    self.forget_health(t);
                }
                if let Some(e) = &r.error
                    && matches!(r.state, Some(TaskState::Failed | TaskState::Rejected))
                    && c.is_none()
                    && t.state < TaskState::Running
                {
                    tracing::warn!(task = %t.id, "starting {}: {e}", t.name());
                }
                Self::report(t, rev, r)
            }
            (Step::Pull, ..) => {
                let mut rep = Self::report(
                    t,
                    rev,
                    TaskReport {
                        state: Some(TaskState::Preparing),
                        ..Default::default()
                    },
                )?;
                let p = dcpp_reconciler::PullProgress {
                    image: t.image.clone(),
                    layers: None,
                };
                rep.task.message = p.to_string();
                rep.task.pull = Some(p);
                Some(rep)
            }
            (Step::CreateAndStart, _, Some(s), Some(img)) => {
                let r = match self.create_and_start(t, s, img).await {
                    Ok(id) => TaskReport {
                        state: Some(TaskState::Running),
                        container_id: Some(id),
                        ..Default::default()
                    },
                    Err(e) => {
                        tracing::warn!(task = %t.id, "starting {}: {e}", t.name());
                        TaskReport {
                            state: Some(match e {
                                Error::ImageNotFound(_) | Error::Pull(_) => TaskState::Rejected,
                                _ => TaskState::Failed,
                            }),
                            error: Some(e.to_string()),
                            ..Default::default()
                        }
                    }
                };
                Self::report(t, rev, r)
            }
            (Step::Monitor, Some(c), svc, _) => {
                let mut r = TaskReport {
                    state: Some(TaskState::Running),
                    container_id: Some(c.state.id.clone()),
                    ..Default::default()
                };
                if let Some(s) = svc {
                    r.health = self.check_health(t, c, s).await;
                    // In service once running, or once healthy when a healthcheck runs; an
                    // unhealthy replica is withdrawn.
                    let healthy = r.health.unwrap_or(t.health) == Health::Healthy;
                    self.set_serving(c, health_command(s).is_none() || healthy)
                        .await;
                }
                if r.health == Some(Health::Unhealthy) {
                    self.fail_unhealthy(t, c, &mut r).await;
                }
                Self::report(t, rev, r)
            }
            (Step::Start, Some(c), ..) => {
                let id = c.state.id.clone();
                let res = self.blocking(move |m| m.start(&id)).await;
                let r = match res {
                    Ok(_) => TaskReport {
                        state: Some(TaskState::Running),
                        container_id: Some(c.state.id.clone()),
                        ..Default::default()
                    },
                    Err(e) => TaskReport {
                        state: Some(TaskState::Failed),
                        error: Some(e.to_string()),
                        ..Default::default()
                    },
                };
                Self::report(t, rev, r)
            }
            (Step::ReportExit, Some(c), ..) => {
                self.leave_networks(c).await;
                Self::report(t, rev, self.exit_report(c).await)
            }
            (Step::Shutdown { stop, remove }, Some(c), ..) => {
                let mut r = shutdown_report();
                if stop {
                    // Out of DNS and the port map first: no new connection reaches it.
                    self.withdraw(c).await;
                    let id = c.state.id.clone();
                    if let Err(e) = self.blocking(move |m| m.stop(&id, None)).await {
                        tracing::warn!(task = %t.id, "stop: {e}");
                    }
                }
                self.leave_networks(c).await;
                if let Ok(i) = self
                    .blocking({
                        let id = c.state.id.clone();
                        move |m| m.inspect(&id)
                    })
                    .await
                {
                    r.exit_code = i.exit.map(|e| e.exit_code);
                }
                if remove {
                    self.remove_container(c).await;
                }
                self.forget_health(t);
                Self::report(t, rev, r)
            }
            (Step::Remove, Some(c), ..) => {
                self.remove_container(c).await;
                None
            }
            (Step::Halt, Some(c), ..) => {
                self.withdraw(c).await;
                let id = c.state.id.clone();
                let _ = self.blocking(move |m| m.stop(&id, None)).await;
                self.leave_networks(c).await;
                None
            }
            // A step whose inputs this round lacks (cannot happen: `next_step` names container
            // steps only for an observed container, and creates only with service and image).
            (step, ..) => {
                tracing::debug!(task = %t.id, ?step, "step without its inputs");
                None
            }
        }
    }

    fn forget_health(&self, t: &Task) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t.id);
    }

    async fn exit_report(&self, c: &ContainerInfo) -> TaskReport {
        let id = c.state.id.clone();
        let tail: Vec<String> = self
            .blocking(move |m| m.logs(&id))
            .await
            .map(|l| {
                let skip = l.len().saturating_sub(5);
                l.into_iter().skip(skip).map(|e| e.log).collect()
            })
            .unwrap_or_default();
        let (code, oom, err) = match &c.exit {
            Some(e) => (Some(e.exit_code), e.oom_killed, e.error.clone()),
            None => (None, false, Some("container monitor died".into())),
        };
        let mut msg = match (code, oom) {
            (_, true) => "OOM killed".to_string(),
            (Some(0), _) => String::new(),
            (Some(n), _) => format!("exited with code {n}"),
            (None, _) => "container died".to_string(),
        };
        if let Some(e) = err {
            msg = if msg.is_empty() {
                e
            } else {
                format!("{msg}: {e}")
            };
        }
        if !msg.is_empty() && !tail.is_empty() {
            msg.push_str("; last log lines:\n");
            msg.push_str(tail.concat().trim_end());
        }
        TaskReport {
            state: Some(if code == Some(0) && !oom {
                TaskState::Complete
            } else {
                TaskState::Failed
            }),
            exit_code: code,
            error: (!msg.is_empty()).then_some(msg),
            container_id: Some(c.state.id.clone()),
            ..Default::default()
        }
    }

    async fn remove_container(&self, c: &ContainerInfo) {
        if matches!(c.status, Status::Running | Status::Created) {
            self.withdraw(c).await;
        }
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.state.id);
        let id = c.state.id.clone();
        let image = c.state.labels.get(LABEL_IMAGE_ID).cloned();
        let images_dir = self.images_dir.clone();
        let res = self
            .blocking(move |m| {
                m.remove(&id, true)?;
                if let Some(img) = image
                    && let Ok(store) = ImageStore::open(&images_dir)
                    && let Ok(d) = dcpp_runtime::image::Digest::parse(&img)
                {
                    let _ = store.remove_holder(&d, &id);
                }
                Ok::<_, dcpp_runtime::container::Error>(())
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(container = %c.state.name, "remove: {e}");
        }
    }

    /// Puts the container into service or withdraws it (DNS answers for its service name and
    /// aliases, published ports); asks the network manager only when that changes.
    async fn set_serving(&self, c: &ContainerInfo, serving: bool) {
        let Some(net) = &self.net else { return };
        let id = c.state.id.clone();
        if self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            == Some(&serving)
        {
            return;
        }
        let mgr = net.manager.clone();
        let res = {
            let id = id.clone();
            tokio::task::spawn_blocking(move || mgr.set_serving(&id, serving)).await
        };
        match res {
            Ok(Ok(_)) => {
                self.serving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, serving);
            }
            // Not cached: the next round tries again.
            Ok(Err(e)) => tracing::warn!(container = %c.state.name, serving, "{e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Withdraws a container about to be stopped, then lets the connections it already
    /// accepted finish (bounded by [`DRAIN_MAX`] and its stop grace period), so a rolling
    /// update or a scale-down fails no request.
    async fn withdraw(&self, c: &ContainerInfo) {
        if self.net.is_none() {
            return;
        }
        self.set_serving(c, false).await;
        let Some(pid) = c.pid else { return };
        let limit = DRAIN_MAX.min(Duration::from_secs(c.state.stop_grace_secs));
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && accepted_connections(pid) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Detaches a stopped container from its networks: its address is free again and none of
    /// its names resolve any more.
    async fn leave_networks(&self, c: &ContainerInfo) {
        let Some(net) = &self.net else { return };
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.state.id);
        let mgr = net.manager.clone();
        let id = c.state.id.clone();
        match tokio::task::spawn_blocking(move || mgr.detach(&id, None)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(container = %c.state.name, "leaving networks: {e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The task's image from the local store; `None` while it is being pulled. `policy` is
    /// compose's `pull_policy`: `never` only looks locally, `always` pulls once for every task
    /// created before the last finished pull, anything else pulls what is missing.
    fn image_for(&self, t: &Task, policy: Option<&str>) -> Result<Option<LocalImage>, Error> {
        if policy == Some("always") && !self.pulls.pulled_since(&t.image, t.created_at) {
            return match self.pulls.ensure(&t.image) {
                Need::Wait => Ok(None),
                Need::Failed(e) => Err(Error::Pull(e)),
            };
        }
        let store =
            ImageStore::open(&self.images_dir).map_err(|e| Error::Runtime(e.to_string()))?;
        match store.resolve(&t.image) {
            Ok(img) => Ok(Some(img)),
            Err(ImageError::NotFound(_)) if policy == Some("never") => {
                Err(Error::ImageNotFound(format!(
                    "{}: not in this node's image store (pull_policy: never)",
                    t.image
                )))
            }
            Err(ImageError::NotFound(_)) => match self.pulls.ensure(&t.image) {
                Need::Wait => Ok(None),
                Need::Failed(e) => Err(Error::Pull(e)),
            },
            Err(e) => Err(Error::ImageNotFound(format!("{}: {e}", t.image))),
        }
    }

    /// Creates and starts the task's container. All of it is blocking work (state files,
    /// network setup, process spawns, the image store's holder record), so it runs on the
    /// blocking pool rather than on the runtime's few worker threads.
    async fn create_and_start(
        &self,
        t: &Task,
        doc: &ServiceDoc,
        img: LocalImage,
    ) -> Result<String, Error> {
        let ctr = self.ctr.clone();
        let net = self
            .net
            .as_ref()
            .map(|n| (n.manager.clone(), n.hook.clone()));
        let images_dir = self.images_dir.clone();
        let (t, doc) = (t.clone(), doc.clone());
        let (id, used_net) = tokio::task::spawn_blocking(move || {
            start_container(&ctr, net.as_ref(), &images_dir, &t, &doc, &img)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        if used_net {
            self.used_net
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(id)
    }

    /// Removes networks of stacks that no longer have services here.
    async fn prune_networks(&self, services: &HashMap<String, ServiceDoc>) {
        let Some(net) = &self.net else { return };
        let Ok(list) = net.manager.list() else { return };
        for n in list {
            let Some(stack) = n.network.labels.get(NETWORK_STACK_LABEL) else {
                continue;
            };
            if n.endpoints.is_empty()
                && !services.values().any(|s| &s.spec.stack == stack)
                && let Err(e) = net.manager.remove_network(&n.network.name)
            {
                tracing::warn!(network = %n.network.name, "remove: {e}");
            }
        }
    }

    /// Swarm's rule: a task whose container turns unhealthy fails (its container is stopped);
    /// the orchestrator replaces it per the restart policy and counts it against a rollout.
    async fn fail_unhealthy(&self, t: &Task, c: &ContainerInfo, r: &mut TaskReport) {
        let output = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t.id)
            .map(|s| s.output)
            .unwrap_or_default();
        let id = c.state.id.clone();
        if let Err(e) = self.blocking(move |m| m.stop(&id, None)).await {
            tracing::warn!(task = %t.id, "stop unhealthy container: {e}");
        }
        let id = c.state.id.clone();
        if let Ok(i) = self.blocking(move |m| m.inspect(&id)).await {
            r.exit_code = i.exit.map(|e| e.exit_code);
        }
        r.state = Some(TaskState::Failed);
        r.error = Some(format!("unhealthy: last healthcheck {output}"));
    }

    /// Runs the service's healthcheck inside the container when due; returns a changed health.
    async fn check_health(&self, t: &Task, c: &ContainerInfo, doc: &ServiceDoc) -> Option<Health> {
        let args = health_command(doc)?;
        let hc = doc.service.healthcheck.as_ref()?;
        let timing = HealthTiming::of(hc);
        let timeout = timing.timeout;
        let now = Instant::now();
        {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            let st = h
                .entry(t.id)
                .or_insert_with(|| HealthState::new(now, t.health));
            if !st.take_due(now, timing.interval) {
                return None;
            }
        }
        let id = c.state.id.clone();
        let task_id = t.id;
        let ok = self
            .blocking(move |m| {
                let req = ExecRequest {
                    args,
                    env: vec![],
                    cwd: None,
                    user: None,
                };
                // Output goes to an unlinked file, not a pipe: a check that leaves a process
                // behind holding its stdout can never block the agent on reading it.
                let path = std::env::temp_dir().join(format!(
                    "dcpp-health-{}-{}",
                    std::process::id(),
                    task_id
                ));
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path);
                let _ = std::fs::remove_file(&path);
                let (out_file, err_file) = match file.and_then(|f| {
                    let e = f.try_clone()?;
                    Ok((f, e))
                }) {
                    Ok(p) => (Some(p.0), Some(p.1)),
                    Err(_) => (None, None),
                };
                let mut reader = out_file.as_ref().and_then(|f| f.try_clone().ok());
                let mut child = match m.exec(&id, &req, |cmd| {
                    cmd.stdin(std::process::Stdio::null())
                        .stdout(out_file.map_or_else(std::process::Stdio::null, Into::into))
                        .stderr(err_file.map_or_else(std::process::Stdio::null, Into::into));
                }) {
                    Ok(c) => c,
                    Err(e) => return (false, e.to_string()),
                };
                let deadline = Instant::now() + timeout;
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(s)) => break Some(s),
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break None;
                        }
                    }
                };
                let mut buf = Vec::new();
                if let Some(f) = reader.as_mut() {
                    use std::io::{Read, Seek};
                    if f.seek(std::io::SeekFrom::Start(0)).is_ok() {
                        let _ = f.take(4096).read_to_end(&mut buf);
                    }
                }
                let out = String::from_utf8_lossy(&buf);
                let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
                match status {
                    Some(s) if s.success() => (true, out),
                    Some(s) => {
                        let code = s.code().map_or("a signal".into(), |c| format!("code {c}"));
                        (false, format!("exited with {code}: {out}"))
                    }
                    None => (false, format!("timed out after {timeout:?}: {out}")),
                }
            })
            .await;
        let (ok, output) = ok;
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let st = h.get_mut(&t.id)?;
        st.record(ok, output, &timing, t.started_at, now_ms())
    }

    /// Runs rounds until `stop` turns true: on every store change, every [`POLL`], and a
    /// heartbeat every [`HEARTBEAT`].
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let wake = self.wake.clone();
        match ExitWatch::start(wake.clone()) {
            Ok(w) => *self.exits.lock().unwrap_or_else(|e| e.into_inner()) = Some(w),
            Err(e) => tracing::warn!("inotify unavailable ({e}): exits are noticed by polling"),
        }
        let watcher = tokio::spawn(dcpp_control::leader::watch_changes(
            self.node.clone(),
            wake.clone(),
        ));
        let mut last_beat: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            // A new member or a promotion shows in the record at once, not a heartbeat later.
            let stale = last_check.elapsed() >= STALE_CHECK && {
                last_check = Instant::now();
                dcpp_control::nodes::record_stale(&self.node, &self.self_info()).await
            };
            if stale || last_beat.is_none_or(|b| b.elapsed() >= HEARTBEAT) {
                match self.heartbeat().await {
                    Ok(()) => last_beat = Some(Instant::now()),
                    Err(e) => tracing::debug!("heartbeat: {e}"),
                }
            }
            let busy = match self.reconcile_once().await {
                Ok(did) => did,
                Err(e) => {
                    tracing::warn!("agent round: {e}");
                    false
                }
            };
            if busy {
                continue;
            }
            if let Err(e) = crate::volumes::remove_pending(&self.node, &self.ctr).await {
                tracing::warn!("volume removal: {e}");
            }
            let watched = self
                .exits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
            let health_due = !self
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            let poll = if watched && !health_due {
                POLL_WATCHED
            } else {
                POLL
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        watcher.abort();
        self.exits.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether this agent's networking state was ever non-empty (then the daemon tears it down
    /// on a clean exit without containers).
    pub fn used_networking(&self) -> bool {
        self.used_net.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether any task container exists on this node (the daemon tears networking down on
    /// exit only when none does).
    pub fn has_containers(&self) -> bool {
        self.ctr
            .list()
            .iter()
            .any(|c| c.state.labels.contains_key(LABEL_TASK))
    }
}

/// How a container's status enters the decision.
fn container_view(s: Status) -> ContainerView {
    match s {
        Status::Running => ContainerView::Running,
        Status::Created => ContainerView::Created,
        Status::Exited | Status::Dead => ContainerView::Stopped,
    }
}

/// Longest wait for a withdrawn container's open connections before it is stopped.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);

/// The command of the service's healthcheck, when one runs.
fn health_command(doc: &ServiceDoc) -> Option<Vec<String>> {
    let hc = doc.service.healthcheck.as_ref()?;
    if hc.disable {
        return None;
    }
    match hc.test.first().map(String::as_str) {
        Some("CMD") => Some(hc.test[1..].to_vec()),
        Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), hc.test[1..].join(" ")]),
        _ => None,
    }
}

/// Established TCP connections to a listening port in the network namespace of process
/// `pid` (a container's init): the requests a withdrawn server is still answering.
fn accepted_connections(pid: i32) -> usize {
    const LISTEN: &str = "0A";
    const ESTABLISHED: &str = "01";
    let mut listening = std::collections::HashSet::new();
    let mut established = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st)) = (f.get(1), f.get(3)) else {
                continue;
            };
            let Some(port) = local.rsplit(':').next() else {
                continue;
            };
            match *st {
                LISTEN => {
                    listening.insert(port.to_string());
                }
                ESTABLISHED => established.push(port.to_string()),
                _ => {}
            }
        }
    }
    established
        .iter()
        .filter(|p| listening.contains(*p))
        .count()
}

/// The running task container of `service` in `stack` on this node, if any.
fn peer_container(ctr: &ContainerManager, stack: &str, service: &str) -> Option<String> {
    // The list is oldest first; during a start-first update of the peer the oldest is the one
    // about to stop, so join the newest.
    ctr.list()
        .into_iter()
        .rfind(|c| {
            c.status == Status::Running
                && c.state.labels.get(LABEL_STACK).map(String::as_str) == Some(stack)
                && c.state.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service)
        })
        .map(|c| c.state.id)
}

/// Blocking part of [`Agent::create_and_start`]: returns the container id and whether the
/// container joined stack networks.
fn start_container(
    ctr: &ContainerManager,
    net: Option<&(Arc<NetworkManager>, Arc<ContainerNetworks>)>,
    images_dir: &std::path::Path,
    t: &Task,
    doc: &ServiceDoc,
    img: &LocalImage,
) -> Result<(String, bool), Error> {
    let t0 = Instant::now();
    let name = container_name(t);
    let stack = doc.spec.stack.as_str();
    let peer = |service: &str| peer_container(ctr, stack, service);
    let mut o = crate::options::container_options(t, doc, img, &name, &peer)?;
    // Compose creates a missing bind source; an external volume must exist already.
    for p in crate::options::host_paths_to_create(&doc.service) {
        if !p.exists() {
            dcpp_runtime::datadir::create_host_dir_all(&p).map_err(|e| {
                Error::Runtime(format!("creating bind source {}: {e}", p.display()))
            })?;
        }
    }
    for v in &doc.spec.external_volumes {
        ctr.volumes().inspect(v).map_err(|_| {
            Error::Invalid(format!(
                "external volume {v} not found (create it with `dcpp volume create {v}`)"
            ))
        })?;
    }
    let mut used_net = false;
    if o.network == NetworkMode::Private
        && let Some((manager, hook)) = net
    {
        used_net = true;
        let nets = plan_networks(manager, hook, doc, &name)?;
        let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
        let resolv = manager
            .write_resolv_conf(&name, &refs)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        o.mounts.push(MountRequest {
            source: MountSource::Bind(resolv),
            target: "/etc/resolv.conf".into(),
            read_only: true,
        });
    }
    let t1 = Instant::now();
    let c = ctr.create(&o).map_err(|e| Error::Runtime(e.to_string()))?;
    let t2 = Instant::now();
    if let Err(e) = ctr.start(&c.state.id) {
        let _ = ctr.remove(&c.state.id, true);
        return Err(Error::Runtime(e.to_string()));
    }
    let t3 = Instant::now();
    if used_net
        && health_command(doc).is_none()
        && let Some((manager, _)) = net
        && let Err(e) = manager.set_serving(&c.state.id, true)
    {
        // The agent's next round retries.
        tracing::warn!(container = %name, "putting into service: {e}");
    }
    if let Err(e) =
        ImageStore::open(images_dir).and_then(|store| store.add_holder(&img.id, &c.state.id))
    {
        tracing::warn!(container = %name, "recording image use: {e}");
    }
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1000.0;
    tracing::info!(task = %t.id, container = %name, "started");
    tracing::debug!(
        container = %name,
        prepare_ms = ms(t0, t1),
        create_ms = ms(t1, t2),
        start_ms = ms(t2, t3),
        holder_ms = ms(t3, Instant::now()),
        "container timings"
    );
    Ok((c.state.id, used_net))
}

/// Creates the stack's networks on first use and records the container's plan with the hook.
fn plan_networks(
    manager: &NetworkManager,
    hook: &ContainerNetworks,
    doc: &ServiceDoc,
    name: &str,
) -> Result<Vec<String>, Error> {
    let svc = &doc.service;
    let stack = &doc.spec.stack;
    let keys: Vec<String> = if svc.networks.is_empty() {
        vec!["default".into()]
    } else {
        svc.networks.keys().cloned().collect()
    };
    let existing: Vec<String> = manager
        .list()
        .map_err(|e| Error::Runtime(e.to_string()))?
        .into_iter()
        .map(|n| n.network.name)
        .collect();
    let mut planned = Vec::new();
    let mut names = Vec::new();
    for k in &keys {
        let full = format!("{stack}_{k}");
        if !existing.contains(&full) {
            let mut cfg = NetworkConfig::default();
            cfg.labels
                .insert(NETWORK_STACK_LABEL.into(), stack.to_string());
            match manager.create_network(&full, cfg) {
                Ok(_) => {}
                Err(e) if e.to_string().contains("exists") => {}
                Err(e) => return Err(Error::Runtime(e.to_string())),
            }
        }
        let aliases = svc
            .networks
            .get(k)
            .and_then(|n| n.as_ref())
            .map(|n| n.aliases.clone())
            .unwrap_or_default();
        planned.push(PlannedNetwork {
            network: full.clone(),
            aliases,
            ..Default::default()
        });
        names.push(full);
    }
    let mut ports = Vec::new();
    for p in &svc.ports {
        let host_ip = match p.host_ip.as_deref() {
            None | Some("") | Some("0.0.0.0") => None,
            Some(ip) => Some(
                ip.parse()
                    .map_err(|_| Error::Invalid(format!("invalid host_ip {ip}")))?,
            ),
        };
        let proto = if p.protocol == "udp" {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        ports.extend(
            PortMapping::expand(host_ip, p.published.as_deref(), (p.target, p.target), proto)
                .map_err(|e| Error::Invalid(e.to_string()))?,
        );
    }
    hook.plan(
        name,
        ContainerPlan {
            service: Some(doc.spec.name.clone()),
            networks: planned,
            ports,
            // In service once running (and healthy): see `Agent::set_serving`.
            withdrawn: true,
        },
    );
    Ok(names)
}
