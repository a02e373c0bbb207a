//! The node agent: makes the local runtime match the tasks assigned to this node and reports
//! what it observes. Level-triggered like the leader loop: each round compares the task records
//! with the containers labelled [`LABEL_TASK`] and acts on the difference, so a daemon restart,
//! a missed event or a container killed by hand are all handled by the same code. Running
//! containers are never restarted to "re-adopt" them: their monitors survive the daemon.
//! The host is reached only through [`crate::host`]'s traits.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use dcpp_control::mesh::MeshDoc;
use dcpp_control::nodes::SelfInfo;
use dcpp_control::overlay::NetworkDoc;
use dcpp_raft::{Kind, Node, Store, Txn};
use dcpp_reconciler::{DesiredState, Health, Task, TaskId, TaskReport, TaskState};
use dcpp_runtime::container::{ContainerManager, MountRequest, MountSource, NetworkMode};
use dcpp_runtime::image::registry::RegistryOptions;
use dcpp_runtime::network::{
    ContainerNetworks, ContainerPlan, Mesh, MeshForward, NetworkManager, Overlay, PlannedNetwork,
    PortMapping, Protocol, RemoteEndpoint, ResolvSettings, VXLAN_OVERHEAD,
};

use crate::Error;
use crate::contact::{Contact, Standing, Transition};
use crate::exits::ExitWatch;
use crate::host::{
    Clock, Container, Containers, Host, Image, Images, LocalContainers, LocalImages, LocalNetworks,
    Networks, SystemClock,
};
use crate::metrics::{AgentMetrics, ExitReason};
use crate::pull::{Need, Pulls};
use crate::step::{
    ContainerView, HealthState, HealthTiming, ImageView, Step, next_step, shutdown_report,
    wants_image,
};
use dcpp_control::schema::{
    LABEL_IMAGE_ID, LABEL_SERVICE, LABEL_STACK, LABEL_TASK, ServiceDoc, TaskRevs, container_name,
    now_ms,
};

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
/// How long the node may go without a heartbeat reaching the managers before it stops its
/// tasks (see [`crate::contact`]; `dcpp daemon --partition-grace`).
pub const PARTITION_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for one heartbeat (or the record check between them): a request on a
/// connection whose peer vanished gets no answer until TCP gives up, many minutes later, and
/// a write that hangs through a leader change must not make the node miss the three
/// heartbeats after which it is down. Longer than a worker's wait for one manager (1.5 s,
/// `CALL_TIMEOUT` of dcpp-raft), so that the store's client moves on to the next manager
/// within the same heartbeat.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(2500);
/// Heartbeat retry period while no heartbeat got through (since the start, or the cut).
const RETRY_CONTACT: Duration = Duration::from_millis(200);
/// How often the agent looks whether the partition grace has passed.
const CONTACT_TICK: Duration = Duration::from_millis(200);

/// The local networking the agent drives.
pub struct Networking {
    pub manager: Arc<NetworkManager>,
    pub hook: Arc<ContainerNetworks>,
}

/// Whether this node is a raft voter (its record then says manager).
type VoterFn = Box<dyn Fn() -> bool + Send + Sync>;

pub struct Agent<S: Store = Node> {
    node: S,
    /// Asked for every heartbeat: a promotion shows in the node record.
    voter: VoterFn,
    ctr: Arc<dyn Containers>,
    net: Option<Arc<dyn Networks>>,
    images: Arc<dyn Images>,
    clock: Arc<dyn Clock>,
    /// The local image store's directory, when the image side is the real one (so
    /// [`Agent::with_registry`] can rebuild it with other registry settings).
    images_dir: Option<PathBuf>,
    health: Mutex<HashMap<TaskId, HealthState>>,
    used_net: std::sync::atomic::AtomicBool,
    /// Wakes the loop early (a pull finished, a container exited).
    wake: Arc<tokio::sync::Notify>,
    pulls: Pulls<S>,
    exits: Mutex<Option<ExitWatch>>,
    parallel: usize,
    /// Whether each task container (by id) was last put into service (`true`) or withdrawn,
    /// so a round asks the network manager only on a change.
    serving: Mutex<HashMap<String, bool>>,
    /// Containers this agent process made: any other container of a task no agent reported
    /// was left half-made by a previous process (see `next_step`).
    made: Mutex<std::collections::HashSet<String>>,
    /// What the heartbeat says about this host (the role is read from raft each time).
    me: SelfInfo,
    /// Stack networks span nodes ([`dcpp_control::overlay`]).
    overlay: Option<OverlayConf>,
    /// What each network was last told about its containers elsewhere.
    remote: Mutex<HashMap<String, Option<Overlay>>>,
    /// What the routing mesh was last set to (`None`: not yet this process).
    mesh: Mutex<Option<Mesh>>,
    /// Whether heartbeats reach the managers (what the loop may do follows from it).
    contact: Mutex<Contact>,
    /// `true` while cut off: ends a round that hangs on the store at once.
    cut: tokio::sync::watch::Sender<bool>,
    /// The data of the tasks' secrets and configs (none: a task that mounts one fails).
    files: Option<Arc<dyn crate::host::FileSource>>,
    metrics: Arc<AgentMetrics>,
    /// Containers whose exit is counted in `metrics` (a report that fails to be written is
    /// made again next round; the exit happened once).
    exits_counted: Mutex<std::collections::HashSet<String>>,
}

/// How this node takes part in the overlay.
#[derive(Debug, Clone, Copy)]
pub struct OverlayConf {
    /// UDP port of VXLAN, the same on every node.
    pub port: u16,
    /// MTU of the underlay; containers get this less the VXLAN headers.
    pub underlay_mtu: u32,
}

/// A task's address on one overlay network, with the network's subnet and own addressing.
#[derive(Debug, Clone, PartialEq)]
struct OverlayAddr {
    ip: std::net::Ipv4Addr,
    subnet: String,
    ipam: Option<dcpp_spec::ipam::IpamSpec>,
}

/// A task's addresses on its overlay networks, by network name.
type Addresses = BTreeMap<String, OverlayAddr>;

/// The addresses of task `t` of service `doc` in `nets`, or `None` while the leader has not
/// given it one on each of its networks.
fn addresses_of(
    t: &Task,
    doc: &ServiceDoc,
    nets: &BTreeMap<String, NetworkDoc>,
) -> Option<Addresses> {
    let mut out = Addresses::new();
    for (k, _) in dcpp_control::overlay::service_networks(doc) {
        let name = format!("{}_{k}", doc.spec.stack);
        let n = nets.get(&name)?;
        let ep = n.endpoints.get(&t.id.0)?;
        out.insert(
            name,
            OverlayAddr {
                ip: ep.ip,
                subnet: n.subnet.clone(),
                ipam: n.ipam.clone(),
            },
        );
    }
    Some(out)
}

/// A task of this node in a round: its records, its container, its service and addresses.
type RoundTask = (
    Task,
    TaskRevs,
    Option<Container>,
    Option<ServiceDoc>,
    Option<Addresses>,
);

/// A pending write to one task record.
struct Report {
    task: Task,
    rev: TaskRevs,
}

impl Agent<Node> {
    /// The daemon's agent: the raft node's store, the runtime's managers, the machine's clock.
    pub fn new(
        node: Node,
        ctr: Arc<ContainerManager>,
        images_dir: PathBuf,
        net: Option<Networking>,
    ) -> Self {
        let me = SelfInfo::local(node.id(), node.advertise(), dcpp_raft::Role::Worker);
        let voter = {
            let node = node.clone();
            move || {
                node.status()
                    .is_ok_and(|st| st.members.iter().any(|m| m.id == node.id() && m.voter))
            }
        };
        let host = Host {
            containers: Arc::new(LocalContainers(ctr)),
            networks: net.map(|n| {
                Arc::new(LocalNetworks {
                    manager: n.manager,
                    hook: n.hook,
                }) as Arc<dyn Networks>
            }),
            images: Arc::new(LocalImages::new(&images_dir, RegistryOptions::default())),
            clock: Arc::new(SystemClock),
        };
        let mut agent = Agent::with_host(node, me, voter, host);
        agent.images_dir = Some(images_dir);
        agent
    }
}

impl<S: Store> Agent<S> {
    /// An agent on `node`'s store for the host described by `me`, acting through `host`;
    /// `voter` says whether this node votes in raft.
    pub fn with_host(
        node: S,
        me: SelfInfo,
        voter: impl Fn() -> bool + Send + Sync + 'static,
        host: Host,
    ) -> Self {
        let wake = Arc::new(tokio::sync::Notify::new());
        let started = host.clock.now();
        let metrics = Arc::<AgentMetrics>::default();
        let pulls = Pulls::new(
            node.clone(),
            dcpp_control::nodes::node_id(me.id),
            host.images.clone(),
            host.clock.clone(),
            wake.clone(),
            metrics.clone(),
        );
        Agent {
            voter: Box::new(voter),
            ctr: host.containers,
            images: host.images,
            clock: host.clock,
            images_dir: None,
            wake,
            pulls,
            exits: Mutex::default(),
            parallel: std::env::var("DCPP_AGENT_PARALLEL")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(PARALLEL),
            used_net: std::sync::atomic::AtomicBool::new(
                host.networks
                    .as_ref()
                    .is_some_and(|n| n.list().is_ok_and(|l| !l.is_empty())),
            ),
            net: host.networks,
            health: Mutex::default(),
            serving: Mutex::default(),
            made: Mutex::default(),
            me,
            node,
            overlay: None,
            remote: Mutex::default(),
            mesh: Mutex::default(),
            contact: Mutex::new(Contact::new(started, Some(PARTITION_GRACE))),
            cut: tokio::sync::watch::Sender::new(false),
            files: None,
            metrics,
            exits_counted: Mutex::default(),
        }
    }

    /// Records what the agent does in `metrics` (default: a private, unregistered set).
    pub fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> Self {
        self.metrics = metrics;
        self.pulls = self.new_pulls();
        self
    }

    fn new_pulls(&self) -> Pulls<S> {
        Pulls::new(
            self.node.clone(),
            self.me(),
            self.images.clone(),
            self.clock.clone(),
            self.wake.clone(),
            self.metrics.clone(),
        )
    }

    /// Gets the data of the tasks' secrets and configs from `source`.
    pub fn with_files(mut self, source: Arc<dyn crate::host::FileSource>) -> Self {
        self.files = Some(source);
        self
    }

    /// The secrets and configs task `t` of `doc` mounts, with their data.
    async fn task_files(
        &self,
        t: &Task,
        doc: &ServiceDoc,
    ) -> Result<Vec<dcpp_runtime::container::FileRequest>, Error> {
        if doc.spec.files.is_empty() {
            return Ok(Vec::new());
        }
        let Some(src) = &self.files else {
            return Err(Error::Invalid(
                "this agent cannot fetch secrets and configs".into(),
            ));
        };
        let req = dcpp_control::files::TaskFiles {
            task: dcpp_control::schema::task_key(t.id),
            files: doc
                .spec
                .files
                .iter()
                .map(|f| dcpp_control::files::FileWanted {
                    kind: f.kind,
                    name: f.name.clone(),
                    version: f.version,
                })
                .collect(),
        };
        let data = src.fetch(req).await?;
        doc.spec
            .files
            .iter()
            .map(|f| {
                let d = data
                    .iter()
                    .find(|d| d.kind == f.kind && d.name == f.name && d.version == f.version)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{} {} version {} was not delivered",
                            f.kind, f.name, f.version
                        ))
                    })?;
                Ok(dcpp_runtime::container::FileRequest {
                    target: f.target.clone(),
                    uid: f.uid,
                    gid: f.gid,
                    mode: f.mode,
                    data: d.data.0.clone(),
                })
            })
            .collect()
    }

    /// Stops this node's tasks after `grace` without a heartbeat reaching the managers, until
    /// one does again (`None` or zero: never; default [`PARTITION_GRACE`]).
    pub fn with_partition_grace(self, grace: Option<Duration>) -> Self {
        *self.contact() = Contact::new(self.clock.now(), grace);
        self
    }

    fn contact(&self) -> std::sync::MutexGuard<'_, Contact> {
        self.contact.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins stack networks to the cluster's overlay: subnets and addresses come from the
    /// leader's network documents, and each network reaches its containers on other nodes
    /// over VXLAN from this node's advertise address.
    pub fn with_overlay(mut self, conf: OverlayConf) -> Self {
        self.overlay = Some(conf);
        self
    }

    /// Pulls missing images with these registry settings (default: loopback registries over
    /// plain HTTP, credentials from the Docker CLI's config.json). Only the local image store
    /// has registry settings; another image side is kept as it is.
    /// Refreshes the node record every `interval` (the record says so, and the leader declares
    /// the node down after three missed ones; see `dcpp_control::nodes::timeout_ms`).
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.me.heartbeat_ms = interval.as_millis().max(1) as u64;
        self
    }

    pub fn with_registry(mut self, opts: RegistryOptions) -> Self {
        let Some(dir) = &self.images_dir else {
            return self;
        };
        self.images = Arc::new(LocalImages::new(dir, opts));
        self.pulls = self.new_pulls();
        self
    }

    fn me(&self) -> dcpp_reconciler::NodeId {
        dcpp_control::nodes::node_id(self.me.id)
    }

    /// This node as its record should describe it: a raft voter is a manager.
    fn self_info(&self) -> SelfInfo {
        let mut me = self.me.clone();
        me.role = if (self.voter)() {
            dcpp_raft::Role::Manager
        } else {
            dcpp_raft::Role::Worker
        };
        me
    }

    /// Writes this node's record with a fresh heartbeat (the leader treats a silent node as
    /// down, and schedules nothing on a node without a record). Returns the revision it was
    /// committed at (`None`: a concurrent edit of the record won).
    pub async fn heartbeat(&self) -> Result<Option<u64>, Error> {
        Ok(
            dcpp_control::nodes::heartbeat(&self.node, &self.self_info(), self.clock.now_ms())
                .await?,
        )
    }

    /// A heartbeat committed at `revision` got through.
    fn reached(&self, revision: u64) {
        let (before, t, after) = {
            let mut c = self.contact();
            let before = c.standing();
            let t = c.reached(self.clock.now(), revision);
            (before, t, c.standing())
        };
        if let Some(Transition::Rejoined { cut_for }) = t {
            tracing::warn!(
                "reached the managers again after {:.1}s cut off: converging to the store",
                cut_for.as_secs_f64()
            );
            self.cut.send_replace(false);
        }
        if before != after {
            self.wake.notify_one();
        }
    }

    /// Cuts the node off when the partition grace has passed without a heartbeat getting
    /// through.
    fn check_contact(&self) -> Option<Transition> {
        let t = self.contact().tick(self.clock.now());
        if let Some(Transition::CutOff { silent }) = t {
            tracing::warn!(
                "no heartbeat reached the managers for {:.1}s (partition grace): stopping this \
                 node's tasks until one does; the leader has given their slots to other nodes",
                silent.as_secs_f64()
            );
            self.cut.send_replace(true);
            self.wake.notify_one();
        }
        t
    }

    /// What the loop does in one turn, by [`Standing`]: a round on the store once a read shows
    /// contact, nothing before it, and while cut off it keeps no task container. Returns
    /// whether anything was done.
    pub async fn turn(&self) -> Result<bool, Error> {
        let standing = self.contact().standing();
        match standing {
            Standing::InTouch => self.reconcile_once().await,
            Standing::Unconfirmed => Ok(false),
            Standing::CatchingUp { .. } => {
                let revision = self.node.list(Kind::Node).await?.revision;
                if self.contact().read(revision) {
                    self.reconcile_once().await
                } else {
                    tracing::debug!(revision, "store read here predates the managers' answer");
                    Ok(false)
                }
            }
            Standing::CutOff => Ok(self.stand_down().await),
        }
    }

    /// Cut off from the managers: withdraws, stops (each with its stop grace, all at once) and
    /// removes every task container. Nothing is reported: the store cannot be written, and the
    /// leader has orphaned these tasks already. Returns whether there was anything to stop.
    async fn stand_down(&self) -> bool {
        let ours: Vec<Container> = self
            .blocking(|c| c.list())
            .await
            .into_iter()
            .filter(|c| c.labels.contains_key(LABEL_TASK))
            .collect();
        if ours.is_empty() {
            return false;
        }
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        futures::stream::iter(ours)
            .for_each_concurrent(None, |mut c| async move {
                if c.status.is_up() {
                    // Out of DNS and the port map first, as for any stop.
                    self.withdraw(&c).await;
                    let id = c.id.clone();
                    if let Err(e) = self.blocking(move |m| m.stop(&id)).await {
                        tracing::warn!(container = %c.name, "stop: {e}");
                    }
                    tracing::warn!(container = %c.name, "stopped: cut off from the managers");
                    // Withdrawn already: removal must not withdraw it again.
                    c.status = ContainerView::Stopped;
                }
                self.leave_networks(&c).await;
                self.remove_container(&c).await;
            })
            .await;
        true
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Containers) -> T + Send + 'static,
    ) -> T {
        let ctr = self.ctr.clone();
        // The blocking pool does not inherit the caller's span: what the runtime logs belongs
        // to the agent step that called it.
        let span = tracing::Span::current();
        match tokio::task::spawn_blocking(move || span.in_scope(|| f(&*ctr))).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Runs a blocking network call on the blocking pool; `None` without networking.
    async fn net_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Networks) -> T + Send + 'static,
    ) -> Option<T> {
        let net = self.net.clone()?;
        let span = tracing::Span::current();
        match tokio::task::spawn_blocking(move || span.in_scope(|| f(&*net))).await {
            Ok(v) => Some(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// One round: compare, act, report. Returns whether anything was done.
    #[tracing::instrument(name = "agent_round", level = "debug", skip_all)]
    pub async fn reconcile_once(&self) -> Result<bool, Error> {
        let me = self.me();
        let tasks: BTreeMap<TaskId, (Task, TaskRevs)> =
            dcpp_control::schema::tasks(&self.node).await?;
        let mut services: HashMap<String, ServiceDoc> = HashMap::new();
        for o in self.node.list(Kind::Service).await?.objects {
            services.insert(o.id.clone(), o.decode()?);
        }
        let nets: BTreeMap<String, NetworkDoc> = match self.overlay {
            Some(_) => dcpp_control::overlay::list(&self.node).await?,
            None => BTreeMap::new(),
        };
        let containers: Vec<Container> = self.blocking(|c| c.list()).await;
        self.watch_exits(&containers);
        let mut by_task: HashMap<u64, Container> = HashMap::new();
        let mut strays = Vec::new();
        for c in containers {
            let Some(tid) = c.labels.get(LABEL_TASK).and_then(|s| s.parse::<u64>().ok()) else {
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
        let overlay = self.overlay.is_some();
        let (stops, rest): (Vec<_>, Vec<_>) = tasks
            .into_values()
            .filter(|(t, _)| t.node.as_ref() == Some(&me))
            .map(|(t, rev)| {
                let c = by_task.remove(&t.id.0);
                let svc = services.get(&t.service.0).cloned();
                let addrs = svc.as_ref().and_then(|d| addresses_of(&t, d, &nets));
                (t, rev, c, svc, addrs)
            })
            // A container on the overlay waits for its addresses (the leader's next write).
            .filter(|(t, _, c, svc, addrs)| {
                !(overlay
                    && c.is_none()
                    && svc.is_some()
                    && addrs.is_none()
                    && t.desired == DesiredState::Running)
            })
            .partition(|(t, ..)| t.desired != DesiredState::Running);
        if let Some(conf) = self.overlay {
            self.prepare_networks(&rest, &nets, conf).await;
        }
        let run = |(t, rev, c, svc, addrs): RoundTask| async move {
            self.reconcile_task(&t, rev, c.as_ref(), svc.as_ref(), addrs)
                .await
        };
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
        let mut last_flush = self.clock.now();
        while let Some(r) = results.next().await {
            if let Some(r) = r {
                reports.push(r);
            }
            if !reports.is_empty()
                && self.clock.now().duration_since(last_flush) >= Duration::from_millis(100)
            {
                did = true;
                self.flush(std::mem::take(&mut reports)).await?;
                last_flush = self.clock.now();
            }
        }
        if !reports.is_empty() {
            did = true;
            self.flush(reports).await?;
        }
        self.prune_networks(&services).await;
        if self.overlay.is_some() {
            self.sync_overlay(&nets).await;
            self.sync_mesh().await;
        }
        Ok(did)
    }

    /// Makes the stack networks of the containers this round creates and programs their
    /// containers elsewhere first, so a container starts with its peers on other nodes
    /// already resolving and reachable (a `depends_on` dependency that is healthy elsewhere
    /// answers the dependent's first request).
    async fn prepare_networks(
        &self,
        rest: &[RoundTask],
        nets: &BTreeMap<String, NetworkDoc>,
        conf: OverlayConf,
    ) {
        let mut want: BTreeMap<String, (String, OverlayAddr)> = BTreeMap::new();
        for (_, _, c, svc, addrs) in rest {
            if let (None, Some(d), Some(a)) = (c, svc, addrs) {
                for (name, addr) in a {
                    want.insert(name.clone(), (d.spec.stack.clone(), addr.clone()));
                }
            }
        }
        if want.is_empty() {
            return;
        }
        let mtu = conf.underlay_mtu - VXLAN_OVERHEAD;
        self.net_blocking(move |net| {
            for (name, (stack, a)) in want {
                if let Err(e) = net.ensure_overlay(&name, &stack, &a.subnet, a.ipam.as_ref(), mtu) {
                    tracing::warn!(network = %name, "{e}");
                }
            }
        })
        .await;
        self.sync_overlay(nets).await;
    }

    /// Tells each local stack network which of its containers run elsewhere, when that
    /// changed: their forwarding, neighbour and DNS entries follow the leader's documents, so
    /// after a partition heals they are exactly those of the tasks that hold addresses.
    async fn sync_overlay(&self, nets: &BTreeMap<String, NetworkDoc>) {
        let (Some(conf), Some(net)) = (self.overlay, &self.net) else {
            return;
        };
        let Some(local) = dcpp_control::overlay::underlay_of(&self.me.address) else {
            return;
        };
        let Ok(list) = net.list() else { return };
        let me = self.me.id;
        let mut changes = Vec::new();
        {
            let last = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            for n in list.iter().filter(|n| n.stack.is_some()) {
                let want = nets.get(&n.name).map(|d| Overlay {
                    vni: d.vni,
                    local,
                    port: conf.port,
                    endpoints: d
                        .endpoints
                        .values()
                        .filter(|e| e.node != me)
                        .filter_map(|e| {
                            Some(RemoteEndpoint {
                                ip: e.ip,
                                underlay: e.underlay?,
                                name: e.name.clone(),
                                service: Some(e.service.clone()),
                                aliases: e.aliases.clone(),
                                serving: e.serving,
                            })
                        })
                        .collect(),
                });
                if last.get(&n.name) != Some(&want) {
                    changes.push((n.name.clone(), want));
                }
            }
        }
        for (name, want) in changes {
            let (n, w) = (name.clone(), want.clone());
            match self.net_blocking(move |net| net.set_remote(&n, w)).await {
                Some(Ok(_)) => {
                    self.remote
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, want);
                }
                Some(Err(e)) => tracing::warn!(network = %name, "overlay: {e}"),
                None => {}
            }
        }
    }

    /// Brings this node's routing mesh rules to the leader's mesh document, when it changed.
    async fn sync_mesh(&self) {
        let Some(local) = dcpp_control::overlay::underlay_of(&self.me.address) else {
            return;
        };
        let doc = match dcpp_control::mesh::get(&self.node).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("routing mesh: {e}");
                return;
            }
        };
        let want = mesh_plan(&doc, self.me.id, local);
        if self.mesh.lock().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&want) {
            return;
        }
        let w = want.clone();
        match self.net_blocking(move |net| net.set_mesh(Some(w))).await {
            Some(Ok(_)) => *self.mesh.lock().unwrap_or_else(|e| e.into_inner()) = Some(want),
            Some(Err(e)) => tracing::warn!("routing mesh: {e}"),
            None => {}
        }
    }

    /// Watches the directories of the live containers for their exit records.
    fn watch_exits(&self, containers: &[Container]) {
        let g = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = g.as_ref() else { return };
        let live = containers
            .iter()
            .filter(|c| c.status.is_up())
            .map(|c| c.dir.as_path());
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

    #[tracing::instrument(name = "agent_step", level = "debug", skip_all, fields(task = %t.id))]
    async fn reconcile_task(
        &self,
        t: &Task,
        rev: TaskRevs,
        c: Option<&Container>,
        svc: Option<&ServiceDoc>,
        addrs: Option<Addresses>,
    ) -> Option<Report> {
        let view = c.map(|c| c.status);
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
        let adopted = c.is_some_and(|c| {
            !self
                .made
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&c.id)
        });
        let step = next_step(t, view, svc.is_some(), image.as_ref(), adopted);
        tracing::trace!(task = %t.id, ?step, "step");
        self.execute(t, rev, c, svc, (local, addrs), step).await
    }

    /// Carries out one [`Step`] for task `t` and returns the report to write, if any.
    async fn execute(
        &self,
        t: &Task,
        rev: TaskRevs,
        c: Option<&Container>,
        svc: Option<&ServiceDoc>,
        (img, addrs): (Option<Image>, Option<Addresses>),
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
                let started = std::time::Instant::now();
                let res = self.create_and_start(t, s, img, addrs).await;
                match &res {
                    Ok(_) => {
                        self.metrics
                            .create_start_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.metrics.starts.inc();
                        if t.restart_count > 0 {
                            self.metrics.restarts.inc();
                        }
                    }
                    Err(_) => {
                        self.metrics.start_failures.inc();
                    }
                }
                let r = match res {
                    Ok(id) => TaskReport {
                        state: Some(TaskState::Running),
                        container_id: Some(id),
                        ..Default::default()
                    },
                    Err(e) => {
                        tracing::warn!(task = %t.id, "starting {}: {e}", t.name());
                        TaskReport {
                            state: Some(match e {
                                Error::ImageNotFound(_)
                                | Error::Pull(_)
                                | Error::NetworkRefused(_) => TaskState::Rejected,
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
                    container_id: Some(c.id.clone()),
                    ..Default::default()
                };
                if let Some(s) = svc {
                    r.health = self.check_health(t, c, s).await;
                    // In service once running, or once healthy when a healthcheck runs; an
                    // unhealthy replica is withdrawn.
                    let healthy = r.health.unwrap_or(t.health) == Health::Healthy;
                    self.set_serving(c, s.health_command().is_none() || healthy)
                        .await;
                }
                if r.health == Some(Health::Unhealthy) {
                    self.fail_unhealthy(t, c, &mut r).await;
                }
                Self::report(t, rev, r)
            }
            (Step::Start, Some(c), ..) => {
                let id = c.id.clone();
                let res = self.blocking(move |m| m.start(&id)).await;
                let r = match res {
                    Ok(_) => {
                        self.metrics.starts.inc();
                        TaskReport {
                            state: Some(TaskState::Running),
                            container_id: Some(c.id.clone()),
                            ..Default::default()
                        }
                    }
                    Err(e) => {
                        self.metrics.start_failures.inc();
                        TaskReport {
                            state: Some(TaskState::Failed),
                            error: Some(e.to_string()),
                            ..Default::default()
                        }
                    }
                };
                Self::report(t, rev, r)
            }
            (Step::ReportExit, Some(c), ..) => {
                if self
                    .exits_counted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(c.id.clone())
                {
                    let e = c.exit.as_ref();
                    self.metrics.exited(ExitReason::of(
                        e.map(|e| e.code),
                        e.is_some_and(|e| e.oom_killed),
                    ));
                }
                self.leave_networks(c).await;
                let id = c.id.clone();
                if let Err(e) = self.blocking(move |m| m.release_files(&id)).await {
                    tracing::warn!(container = %c.name, "dropping its secrets: {e}");
                }
                Self::report(t, rev, self.exit_report(c).await)
            }
            (Step::Shutdown { stop, remove }, Some(c), ..) => {
                let mut r = shutdown_report();
                let t0 = Instant::now();
                let mut t1 = t0;
                if stop {
                    // Out of DNS and the port map first: no new connection reaches it.
                    self.withdraw(c).await;
                    t1 = Instant::now();
                    let id = c.id.clone();
                    if let Err(e) = self.blocking(move |m| m.stop(&id)).await {
                        tracing::warn!(task = %t.id, "stop: {e}");
                    }
                }
                let t2 = Instant::now();
                self.leave_networks(c).await;
                let t3 = Instant::now();
                if let Ok(code) = self
                    .blocking({
                        let id = c.id.clone();
                        move |m| m.exit_code(&id)
                    })
                    .await
                {
                    r.exit_code = code;
                }
                if remove {
                    self.remove_container(c).await;
                }
                // Log-only timings: the machine's clock, not the agent's.
                let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1000.0;
                tracing::debug!(
                    container = %c.name,
                    withdraw_ms = ms(t0, t1),
                    stop_ms = ms(t1, t2),
                    leave_ms = ms(t2, t3),
                    remove_ms = ms(t3, Instant::now()),
                    "shutdown timings"
                );
                self.forget_health(t);
                Self::report(t, rev, r)
            }
            (Step::Remove, Some(c), ..) => {
                self.remove_container(c).await;
                None
            }
            (Step::Halt, Some(c), ..) => {
                self.withdraw(c).await;
                let id = c.id.clone();
                let _ = self.blocking(move |m| m.stop(&id)).await;
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

    async fn exit_report(&self, c: &Container) -> TaskReport {
        let id = c.id.clone();
        let tail: Vec<String> = self
            .blocking(move |m| m.logs(&id))
            .await
            .map(|l| {
                let skip = l.len().saturating_sub(5);
                l.into_iter().skip(skip).collect()
            })
            .unwrap_or_default();
        let (code, oom, err) = match &c.exit {
            Some(e) => (Some(e.code), e.oom_killed, e.error.clone()),
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
            container_id: Some(c.id.clone()),
            ..Default::default()
        }
    }

    async fn remove_container(&self, c: &Container) {
        if c.status.is_up() {
            self.withdraw(c).await;
        }
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        self.exits_counted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        let id = c.id.clone();
        let image = c.labels.get(LABEL_IMAGE_ID).cloned();
        let images = self.images.clone();
        let res = self
            .blocking(move |m| {
                m.remove(&id)?;
                if let Some(img) = image {
                    images.release(&img, &id);
                }
                Ok::<_, crate::host::HostError>(())
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(container = %c.name, "remove: {e}");
        }
    }

    /// Puts the container into service or withdraws it (DNS answers for its service name and
    /// aliases, published ports); asks the network manager only when that changes.
    async fn set_serving(&self, c: &Container, serving: bool) {
        if self.net.is_none() {
            return;
        }
        let id = c.id.clone();
        if self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            == Some(&serving)
        {
            return;
        }
        let res = {
            let id = id.clone();
            self.net_blocking(move |n| n.set_serving(&id, serving))
                .await
        };
        match res {
            Some(Ok(())) => {
                self.serving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, serving);
            }
            // Not cached: the next round tries again.
            Some(Err(e)) => tracing::warn!(container = %c.name, serving, "{e}"),
            None => {}
        }
    }

    /// Withdraws a container about to be stopped, then lets the connections it already
    /// accepted finish (bounded by [`DRAIN_MAX`] and its stop grace period), so a rolling
    /// update or a scale-down fails no request.
    async fn withdraw(&self, c: &Container) {
        let Some(net) = &self.net else { return };
        self.set_serving(c, false).await;
        let Some(pid) = c.pid else { return };
        let limit = DRAIN_MAX.min(Duration::from_secs(c.stop_grace_secs));
        let deadline = self.clock.now() + limit;
        // Other nodes resolve its names from the leader's network documents: it stops only
        // after they say it no longer serves, and the other nodes had a moment to drop it.
        // A node cut off from the managers has no one to wait for.
        let task = c.labels.get(LABEL_TASK).and_then(|s| s.parse::<u64>().ok());
        let cut = *self.cut.borrow();
        if let (Some(_), Some(task), false) = (self.overlay, task, cut) {
            let mut seen_remote = false;
            loop {
                let left = deadline.saturating_duration_since(self.clock.now());
                let Ok((serving, remote)) =
                    tokio::time::timeout(left, self.serving_elsewhere(task)).await
                else {
                    break;
                };
                seen_remote |= remote;
                if !serving || self.clock.now() >= deadline {
                    break;
                }
                self.clock.sleep(Duration::from_millis(20)).await;
            }
            if seen_remote {
                self.clock.sleep(REMOTE_SETTLE).await;
            }
        }
        while self.clock.now() < deadline && net.open_connections(pid) > 0 {
            self.clock.sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the network documents still list `task` as serving, and whether any of its
    /// networks has containers on other nodes (a failed read counts as neither).
    async fn serving_elsewhere(&self, task: u64) -> (bool, bool) {
        let Ok(nets) = dcpp_control::overlay::list(&self.node).await else {
            return (false, false);
        };
        let mut out = (false, false);
        for n in nets.values() {
            let Some(e) = n.endpoints.get(&task) else {
                continue;
            };
            if n.endpoints.values().any(|o| o.node != self.me.id) {
                out.1 = true;
                out.0 |= e.serving;
            }
        }
        out
    }

    /// Detaches a stopped container from its networks: its address is free again and none of
    /// its names resolve any more.
    async fn leave_networks(&self, c: &Container) {
        if self.net.is_none() {
            return;
        }
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        let id = c.id.clone();
        if let Some(Err(e)) = self.net_blocking(move |n| n.detach(&id)).await {
            tracing::warn!(container = %c.name, "leaving networks: {e}");
        }
    }

    /// The task's image from the local store; `None` while it is being pulled. `policy` is
    /// compose's `pull_policy`: `never` only looks locally, `always` pulls once for every task
    /// created before the last finished pull, anything else pulls what is missing.
    fn image_for(&self, t: &Task, policy: Option<&str>) -> Result<Option<Image>, Error> {
        if policy == Some("always") && !self.pulls.pulled_since(&t.image, t.created_at) {
            return match self.pulls.ensure(&t.image) {
                Need::Wait => Ok(None),
                Need::Failed(e) => Err(Error::Pull(e)),
            };
        }
        match self.images.resolve(&t.image)? {
            Some(img) => Ok(Some(img)),
            None if policy == Some("never") => Err(Error::ImageNotFound(format!(
                "{}: not in this node's image store (pull_policy: never)",
                t.image
            ))),
            None => match self.pulls.ensure(&t.image) {
                Need::Wait => Ok(None),
                Need::Failed(e) => Err(Error::Pull(e)),
            },
        }
    }

    /// Creates and starts the task's container. All of it is blocking work (state files,
    /// network setup, process spawns, the image store's holder record), so it runs on the
    /// blocking pool rather than on the runtime's few worker threads.
    async fn create_and_start(
        &self,
        t: &Task,
        doc: &ServiceDoc,
        img: Image,
        addrs: Option<Addresses>,
    ) -> Result<String, Error> {
        let ctr = self.ctr.clone();
        let net = self.net.clone();
        let images = self.images.clone();
        let files = self.task_files(t, doc).await?;
        let (t, doc) = (t.clone(), doc.clone());
        let overlay = self
            .overlay
            .map(|o| (addrs.unwrap_or_default(), o.underlay_mtu - VXLAN_OVERHEAD));
        let span = tracing::Span::current();
        let (id, used_net) = tokio::task::spawn_blocking(move || {
            let _step = span.enter();
            start_container(
                &*ctr,
                net.as_deref(),
                &*images,
                &t,
                &doc,
                &img,
                Fetched {
                    overlay: overlay.as_ref(),
                    files,
                },
            )
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        if used_net {
            self.used_net
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        Ok(id)
    }

    /// Removes networks of stacks that no longer have services here.
    async fn prune_networks(&self, services: &HashMap<String, ServiceDoc>) {
        let Some(net) = &self.net else { return };
        let Ok(list) = net.list() else { return };
        for n in list {
            let Some(stack) = &n.stack else {
                continue;
            };
            if n.endpoints == 0 && !services.values().any(|s| &s.spec.stack == stack) {
                // A network made again under this name starts with nothing programmed.
                self.remote
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&n.name);
                if let Err(e) = net.remove(&n.name) {
                    tracing::warn!(network = %n.name, "remove: {e}");
                }
            }
        }
    }

    /// Swarm's rule: a task whose container turns unhealthy fails (its container is stopped);
    /// the orchestrator replaces it per the restart policy and counts it against a rollout.
    async fn fail_unhealthy(&self, t: &Task, c: &Container, r: &mut TaskReport) {
        let output = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t.id)
            .map(|s| s.output)
            .unwrap_or_default();
        self.metrics.unhealthy_stops.inc();
        // Its end is this stop, not an exit of its own.
        self.exits_counted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c.id.clone());
        let id = c.id.clone();
        if let Err(e) = self.blocking(move |m| m.stop(&id)).await {
            tracing::warn!(task = %t.id, "stop unhealthy container: {e}");
        }
        let id = c.id.clone();
        if let Ok(code) = self.blocking(move |m| m.exit_code(&id)).await {
            r.exit_code = code;
        }
        r.state = Some(TaskState::Failed);
        r.error = Some(format!("unhealthy: last healthcheck {output}"));
    }

    /// Runs the service's healthcheck inside the container when due; returns a changed health.
    async fn check_health(&self, t: &Task, c: &Container, doc: &ServiceDoc) -> Option<Health> {
        let args = doc.health_command()?;
        let hc = doc.service.healthcheck.as_ref()?;
        let timing = HealthTiming::of(hc);
        let timeout = timing.timeout;
        let now = self.clock.now();
        {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            let st = h
                .entry(t.id)
                .or_insert_with(|| HealthState::new(now, t.health));
            if !st.take_due(now, timing.interval) {
                return None;
            }
        }
        let id = c.id.clone();
        let out = self.blocking(move |m| m.check(&id, args, timeout)).await;
        self.metrics.healthchecks.inc();
        if !out.ok {
            self.metrics.healthcheck_failures.inc();
            tracing::debug!(task = %t.id, output = %out.output, "healthcheck failed");
        }
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let st = h.get_mut(&t.id)?;
        st.record(
            out.ok,
            out.output,
            &timing,
            t.started_at,
            self.clock.now_ms(),
        )
    }

    /// Runs rounds until `stop` turns true: on every store change, every [`POLL`], and a
    /// heartbeat every interval of its node record (see [`Agent::with_heartbeat`]).
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
        let beats = tokio::spawn(self.clone().beat());
        let ticks = tokio::spawn(self.clone().watch_contact());
        let mut cut = self.cut.subscribe();
        let mut was_busy = false;
        loop {
            let turn = if *cut.borrow_and_update() {
                self.turn().await
            } else {
                // A round may wait long on managers that went out of reach: once cut off,
                // it is abandoned (what it left half done, the stand-down removes).
                tokio::select! {
                    biased;
                    _ = cut.wait_for(|c| *c) => Ok(true),
                    r = self.turn() => r,
                }
            };
            let busy = match turn {
                Ok(did) => did,
                Err(e) => {
                    tracing::warn!("agent round: {e}");
                    false
                }
            };
            if busy {
                was_busy = true;
                continue;
            }
            if std::mem::take(&mut was_busy) {
                // The busy rounds are over: what they allocated and freed (a thousand
                // containers' worth) goes back to the kernel rather than staying in the heap.
                let _ = tokio::task::spawn_blocking(dcpp_runtime::process::release_free_heap).await;
            }
            if self.contact().standing() == Standing::InTouch
                && let Err(e) =
                    crate::volumes::remove_pending(&self.node, self.me.id, &*self.ctr).await
            {
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
                _ = self.clock.sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        watcher.abort();
        beats.abort();
        ticks.abort();
        self.exits.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Keeps the node record fresh, apart from the rounds: a round that takes long (fifty
    /// containers to create on a slow disk) must not make a live node look dead. Each
    /// heartbeat that gets through is the node's contact with the managers.
    async fn beat(self: Arc<Self>) {
        let interval = Duration::from_millis(self.me.heartbeat_ms.max(1));
        let mut last_beat: Option<Instant> = None;
        loop {
            let due = last_beat.is_none_or(|b| self.clock.now().duration_since(b) >= interval);
            let wrote = self.beat_once(due).await;
            if wrote {
                last_beat = Some(self.clock.now());
            }
            // A heartbeat that did not get through is tried again soon; so is every one while
            // out of touch (starting, or cut off), when the loop acts on nothing.
            let next = match self.contact().standing() {
                Standing::InTouch if wrote || !due => STALE_CHECK.min(interval),
                _ => RETRY_CONTACT.min(interval),
            };
            self.clock.sleep(next).await;
        }
    }

    /// Heartbeats when `due` or when the record is stale; returns whether one was written.
    async fn beat_once(&self, due: bool) -> bool {
        let attempt = async {
            // A new member or a promotion shows in the record at once, not a heartbeat later.
            if due || dcpp_control::nodes::record_stale(&self.node, &self.self_info()).await {
                Some(self.heartbeat().await)
            } else {
                None
            }
        };
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, attempt).await {
            Ok(Some(Ok(Some(revision)))) => {
                self.reached(revision);
                true
            }
            // The record was edited meanwhile: written again at the next interval.
            Ok(Some(Ok(None))) => true,
            Ok(Some(Err(e))) => {
                tracing::debug!("heartbeat: {e}");
                false
            }
            Ok(None) => false,
            Err(_) => {
                tracing::debug!("heartbeat: no answer in {HEARTBEAT_TIMEOUT:?}");
                false
            }
        }
    }

    /// Looks every [`CONTACT_TICK`] whether the partition grace has passed: apart from the
    /// heartbeats, which may hang on managers out of reach.
    async fn watch_contact(self: Arc<Self>) {
        loop {
            self.check_contact();
            self.clock.sleep(CONTACT_TICK).await;
        }
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
            .any(|c| c.labels.contains_key(LABEL_TASK))
    }
}

/// What node `me` (underlay address `local`) does for the routing mesh `doc`: where each
/// port's connections go while no replica here serves it (nowhere, for a port served only
/// here).
pub fn mesh_plan(doc: &MeshDoc, me: u64, local: std::net::Ipv4Addr) -> Mesh {
    let ports: Vec<MeshForward> = dcpp_control::mesh::forwards(doc, me)
        .into_iter()
        .filter_map(|(port, protocol, to)| {
            Some(MeshForward {
                port,
                protocol: protocol.parse().ok()?,
                to,
            })
        })
        .collect();
    Mesh { local, ports }
}

/// How long other nodes get to drop a withdrawn container's names after the leader's documents
/// stop listing it (their agents react to the change within a round; an idle one in
/// milliseconds).
pub const REMOTE_SETTLE: Duration = Duration::from_millis(300);

/// Longest wait for a withdrawn container's open connections before it is stopped.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);

/// The running task container of `service` in `stack` on this node, if any.
fn peer_container(ctr: &dyn Containers, stack: &str, service: &str) -> Option<String> {
    // The list is oldest first; during a start-first update of the peer the oldest is the one
    // about to stop, so join the newest.
    ctr.list()
        .into_iter()
        .rfind(|c| {
            c.status == ContainerView::Running
                && c.labels.get(LABEL_STACK).map(String::as_str) == Some(stack)
                && c.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service)
        })
        .map(|c| c.id)
}

/// What [`start_container`] got from the store beforehand: the task's overlay addresses (and
/// MTU) and the data of its secrets and configs.
struct Fetched<'a> {
    overlay: Option<&'a (Addresses, u32)>,
    files: Vec<dcpp_runtime::container::FileRequest>,
}

/// Blocking part of [`Agent::create_and_start`]: returns the container id and whether the
/// container joined stack networks.
fn start_container(
    ctr: &dyn Containers,
    net: Option<&dyn Networks>,
    images: &dyn Images,
    t: &Task,
    doc: &ServiceDoc,
    img: &Image,
    fetched: Fetched<'_>,
) -> Result<(String, bool), Error> {
    let Fetched { overlay, files } = fetched;
    let t0 = Instant::now();
    let name = doc
        .service
        .container_name
        .clone()
        .unwrap_or_else(|| container_name(t));
    let stack = doc.spec.stack.as_str();
    let peer = |service: &str| peer_container(ctr, stack, service);
    let mut o = crate::options::container_options(t, doc, img, &name, &peer)?;
    o.files = files;
    // Compose creates a missing bind source; an external volume must exist already.
    for p in crate::options::host_paths_to_create(&doc.service) {
        if !p.exists() {
            dcpp_runtime::datadir::create_host_dir_all(&p).map_err(|e| {
                Error::Runtime(format!("creating bind source {}: {e}", p.display()))
            })?;
        }
    }
    for v in &doc.spec.external_volumes {
        if !ctr.volume_exists(v) {
            return Err(Error::Invalid(format!(
                "external volume {v} not found (create it with `dcpp volume create {v}`)"
            )));
        }
    }
    let mut used_net = false;
    if o.network == NetworkMode::Private
        && let Some(net) = net
    {
        used_net = true;
        let own = resolv_settings(&o)?;
        let nets = plan_networks(net, doc, &name, &own.nameservers, overlay)?;
        let resolv = net
            .resolv_conf(&name, &nets, &own)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        o.mounts.push(MountRequest {
            source: MountSource::Bind(resolv),
            target: "/etc/resolv.conf".into(),
            read_only: true,
        });
    }
    let t1 = Instant::now();
    let id = ctr.create(&o).map_err(|e| Error::Runtime(e.to_string()))?;
    let t2 = Instant::now();
    if let Err(e) = ctr.start(&id) {
        let _ = ctr.remove(&id);
        return Err(Error::Runtime(e.to_string()));
    }
    let t3 = Instant::now();
    if used_net
        && doc.health_command().is_none()
        && let Some(net) = net
        && let Err(e) = net.set_serving(&id, true)
    {
        // The agent's next round retries.
        tracing::warn!(container = %name, "putting into service: {e}");
    }
    if let Err(e) = images.hold(&img.id, &id) {
        tracing::warn!(container = %name, "recording image use: {e}");
    }
    // Log-only timings: the machine's clock, not the agent's.
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
    Ok((id, used_net))
}

/// The container's own `dns`, `dns_search` and `dns_opt` for the resolv.conf of its stack
/// networks.
fn resolv_settings(o: &dcpp_runtime::container::CreateOptions) -> Result<ResolvSettings, Error> {
    let nameservers = o
        .dns
        .iter()
        .map(|d| {
            d.parse().map_err(|_| {
                Error::Invalid(format!("invalid dns server {d:?}: must be an IP address"))
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(ResolvSettings {
        nameservers,
        search: o.dns_search.clone(),
        options: o.dns_options.clone(),
    })
}

/// Creates the stack's networks on first use and records the container's plan with the hook;
/// `dns` are the container's own nameservers, where the resolver forwards its other names.
fn plan_networks(
    net: &dyn Networks,
    doc: &ServiceDoc,
    name: &str,
    dns: &[std::net::IpAddr],
    overlay: Option<&(Addresses, u32)>,
) -> Result<Vec<String>, Error> {
    let svc = &doc.service;
    let stack = &doc.spec.stack;
    let existing: Vec<String> = net
        .list()
        .map_err(|e| Error::Runtime(e.to_string()))?
        .into_iter()
        .map(|n| n.name)
        .collect();
    let mut planned = Vec::new();
    let mut names = Vec::new();
    for (k, aliases) in dcpp_control::overlay::service_networks(doc) {
        let full = format!("{stack}_{k}");
        let addr = overlay.and_then(|(a, _)| a.get(&full));
        match (overlay, addr) {
            (Some((_, mtu)), Some(a)) => net
                .ensure_overlay(&full, stack, &a.subnet, a.ipam.as_ref(), *mtu)
                .map_err(Error::from)?,
            (Some(_), None) => {
                return Err(Error::Runtime(format!(
                    "network {full} has no address for this task yet"
                )));
            }
            // A network with own addressing is checked against it each time.
            (None, _) if !existing.contains(&full) || doc.ipam.contains_key(&k) => net
                .ensure(&full, stack, doc.ipam.get(&k))
                .map_err(Error::from)?,
            (None, _) => {}
        }
        planned.push(PlannedNetwork {
            network: full.clone(),
            aliases,
            ipv4_address: addr.map(|a| a.ip),
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
    net.plan(
        name,
        ContainerPlan {
            service: Some(doc.spec.name.clone()),
            networks: planned,
            ports,
            // In service once running (and healthy): see `Agent::set_serving`.
            withdrawn: true,
            dns: dns.to_vec(),
        },
    );
    Ok(names)
}

#[cfg(test)]
mod tests;
