//! `GET /metrics` of the daemon in the Prometheus text format (0.0.4).
//!
//! Two kinds of figures. Counters and histograms of what happened (reconcile rounds, agent
//! starts and exits, API requests) live in the structs of the crates that count them
//! ([`LeaderMetrics`], [`AgentMetrics`], [`ApiMetrics`]), registered once on one registry.
//! Figures of what is (tasks by state, raft indexes, each container's cgroup and netns
//! counters, the daemon's own process) are read at scrape time by [`Metrics::render`] and
//! handed to a collector, so nothing polls between scrapes.
//!
//! Served on `--metrics-addr` (plain HTTP, loopback only) and as `GET /metrics` on the API:
//! over the unix socket, and on TCP behind the API's mutual TLS (what a remote Prometheus
//! uses, with a client certificate of the cluster).
//!
//! Names follow the ecosystem: `dcpp_` for the orchestrator's own, cAdvisor's for containers
//! (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`, …), the client
//! libraries' `process_*` for the daemon. Base units (seconds, bytes), `_total` counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dcpp_control::metrics::LeaderMetrics;
use dcpp_control::schema::{LABEL_SERVICE, LABEL_STACK, LABEL_TASK};
use dcpp_node_agent::metrics::AgentMetrics;
use dcpp_raft::Node;
use dcpp_runtime::container::{ContainerManager, StatsCache};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `method`, `route`, `status`.
type RequestLabels = [(&'static str, String); 3];
/// `method`, `route`.
type RouteLabels = [(&'static str, String); 2];

/// Requests answered by the API (both listeners), by route template and status.
#[derive(Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    seconds: Family<RouteLabels, Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            // 100 µs to about 26 s (watch streams answer their head at once).
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
        }
    }
}

impl dcpp_raft::api::RequestObserver for ApiMetrics {
    fn observe(&self, method: &Method, route: &str, status: StatusCode, took: Duration) {
        let (m, r) = (method.as_str().to_string(), route.to_string());
        self.requests
            .get_or_create(&[
                ("method", m.clone()),
                ("route", r.clone()),
                ("status", status.as_u16().to_string()),
            ])
            .inc();
        self.seconds
            .get_or_create(&[("method", m), ("route", r)])
            .observe(took.as_secs_f64());
    }
}

/// The daemon's metrics: the registry and what the scrape reads from.
pub struct Metrics {
    registry: Registry,
    pub leader: Arc<LeaderMetrics>,
    pub agent: Arc<AgentMetrics>,
    pub api: Arc<ApiMetrics>,
    leader_changes: Counter,
    scrape_seconds: Histogram,
    /// What the collector encodes; filled by [`Metrics::render`] just before.
    read: Arc<Mutex<Reading>>,
    /// One scrape at a time (each fills `read` and encodes it).
    scraping: tokio::sync::Mutex<()>,
    node: Node,
    /// The agent's container manager, once the agent runs (`--no-agent`: never).
    containers: OnceLock<Arc<ContainerManager>>,
    /// The records of the running containers, read once rather than at every scrape.
    container_cache: Arc<Mutex<StatsCache>>,
}

impl Metrics {
    pub fn new(node: Node) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let (leader, agent, api) = (
            Arc::new(LeaderMetrics::default()),
            Arc::new(AgentMetrics::default()),
            Arc::new(ApiMetrics::default()),
        );
        let leader_changes = Counter::default();
        let scrape_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 12));
        // 250 µs to about 4 s: a commit is one fsync on a single node, a quorum round trip
        // and fsyncs in a cluster.
        let commit_seconds = Histogram::new(exponential_buckets(0.00025, 2.0, 15));
        {
            let h = commit_seconds.clone();
            node.observe_commits(Arc::new(move |took: Duration| {
                h.observe(took.as_secs_f64())
            }));
        }
        let read = Arc::new(Mutex::new(Reading::default()));
        {
            let dcpp = registry.sub_registry_with_prefix("dcpp");
            leader.register(dcpp);
            agent.register(dcpp);
            dcpp.register(
                "api_requests",
                "API requests answered, by method, route template and status",
                api.requests.clone(),
            );
            dcpp.register(
                "api_request_duration_seconds",
                "Time until the response head of API requests, by method and route template",
                api.seconds.clone(),
            );
            dcpp.register(
                "raft_leader_changes",
                "Times this node saw the raft leader change (a new leader or none)",
                leader_changes.clone(),
            );
            dcpp.register(
                "raft_commit_duration_seconds",
                "Time from proposing a transaction to its being applied, on the leader",
                commit_seconds,
            );
            dcpp.register(
                "metrics_scrape_duration_seconds",
                "Time to read and encode the metrics of one scrape",
                scrape_seconds.clone(),
            );
        }
        registry.register_collector(Box::new(ReadingCollector(read.clone())));
        Arc::new(Metrics {
            registry,
            leader,
            agent,
            api,
            leader_changes,
            scrape_seconds,
            read,
            scraping: tokio::sync::Mutex::new(()),
            node,
            containers: OnceLock::new(),
            container_cache: Arc::default(),
        })
    }

    /// Reads the figures of each container of this manager from now on.
    pub fn watch_containers(&self, ctr: Arc<ContainerManager>) {
        let _ = self.containers.set(ctr);
    }

    /// The agent's container manager, once the agent runs.
    pub fn containers(&self) -> Option<&Arc<ContainerManager>> {
        self.containers.get()
    }

    /// Counts leader changes as this node sees them (until the runtime ends).
    pub fn spawn_leader_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last = me.node.raft().metrics().borrow().current_leader;
            loop {
                // The raft handle is replaced when the node leaves or rejoins: take it again
                // now and then rather than follow one channel forever.
                let mut rx = me.node.raft().metrics();
                let until = tokio::time::sleep(Duration::from_secs(5));
                tokio::pin!(until);
                loop {
                    let leader = rx.borrow_and_update().current_leader;
                    if leader != last {
                        me.leader_changes.inc();
                        last = leader;
                    }
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        _ = &mut until => break,
                    }
                }
            }
        })
    }

    /// One scrape: reads the store, raft, the containers and the process, then encodes all.
    pub async fn render(&self) -> Response {
        let _one = self.scraping.lock().await;
        let started = Instant::now();
        let reading = self.gather().await;
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = reading;
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        self.scrape_seconds.observe(started.elapsed().as_secs_f64());
        ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], out).into_response()
    }

    async fn gather(&self) -> Reading {
        let mut r = Reading {
            node: self.node.id().to_string(),
            ..Default::default()
        };
        let t0 = Instant::now();
        match tasks_by_state(&self.node).await {
            Ok(t) => r.tasks = Some(t),
            Err(e) => tracing::debug!("metrics: reading tasks: {e}"),
        }
        let m = self.node.raft().metrics().borrow().clone();
        let last_log = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let purged = m.purged.map(|l| l.index).unwrap_or(0);
        r.raft = RaftReading {
            term: m.current_term,
            last_log_index: last_log,
            last_applied_index: applied,
            log_entries: last_log.saturating_sub(purged),
            is_leader: self.node.is_leader(),
        };
        let store_took = t0.elapsed();
        let ctr = self.containers.get().cloned();
        let cache = self.container_cache.clone();
        let node = r.node.clone();
        let (containers, process) = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            (
                ctr.map(|c| container_readings(&c, &mut cache, &node))
                    .unwrap_or_default(),
                ProcessReading::read(),
            )
        })
        .await
        .unwrap_or_default();
        tracing::debug!(
            ?store_took,
            containers_took = ?(t0.elapsed() - store_took),
            containers = containers.len(),
            "metrics read"
        );
        r.containers = containers;
        r.process = process;
        r
    }
}

/// `(stack, service, state)` → number of task records.
type TaskCounts = BTreeMap<(String, String, String), i64>;

async fn tasks_by_state(node: &Node) -> Result<TaskCounts, dcpp_control::Error> {
    let (tasks, services) = dcpp_control::schema::task_states(node).await?;
    let mut by = BTreeMap::<_, i64>::new();
    for (service, state) in tasks {
        *by.entry((service, state)).or_default() += 1;
    }
    let mut out = TaskCounts::new();
    for ((service, state), n) in by {
        let (stack, name) = match services.get(&service) {
            Some((stack, name)) => (stack.clone(), name.clone()),
            None => (String::new(), service.0),
        };
        let state = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *out.entry((stack, name, state)).or_default() += n;
    }
    Ok(out)
}

/// What a scrape read; encoded by [`ReadingCollector`].
#[derive(Debug, Default)]
struct Reading {
    node: String,
    /// `None`: the store could not be read (no quorum).
    tasks: Option<TaskCounts>,
    raft: RaftReading,
    containers: Vec<ContainerReading>,
    process: ProcessReading,
}

#[derive(Debug, Default)]
struct RaftReading {
    term: u64,
    last_log_index: u64,
    last_applied_index: u64,
    log_entries: u64,
    is_leader: bool,
}

#[derive(Debug)]
struct ContainerReading {
    /// Name, stack, service, task and node: made once, borrowed by each family.
    labels: Vec<(&'static str, String)>,
    stats: dcpp_runtime::container::Stats,
    net: Option<dcpp_runtime::container::NetIo>,
}

fn container_readings(
    ctr: &ContainerManager,
    cache: &mut StatsCache,
    node: &str,
) -> Vec<ContainerReading> {
    ctr.stats_running_cached(cache)
        .into_iter()
        .filter_map(|(info, stats, net)| {
            let l = &info.state.labels;
            let task = l.get(LABEL_TASK)?.clone();
            Some(ContainerReading {
                labels: vec![
                    ("name", info.state.name.clone()),
                    ("stack", l.get(LABEL_STACK).cloned().unwrap_or_default()),
                    ("service", l.get(LABEL_SERVICE).cloned().unwrap_or_default()),
                    ("task", task),
                    ("node", node.to_string()),
                ],
                stats,
                net,
            })
        })
        .collect()
}

/// The daemon's own process, from /proc/self.
#[derive(Debug, Default)]
struct ProcessReading {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    threads: u64,
    start_time_seconds: f64,
}

/// USER_HZ, the unit of /proc's tick counts: 100 on every Linux architecture's ABI.
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessReading {
    fn read() -> ProcessReading {
        let mut p = ProcessReading::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // Fields 14, 15 (utime, stime), 20 (threads), 22 (start), 23 (vsize) of
            // proc(5); `f[0]` is field 3.
            p.cpu_seconds = (n(11) + n(12)) as f64 / TICKS_PER_SECOND;
            p.threads = n(17);
            p.virtual_bytes = n(20);
            p.start_time_seconds = boot_time() as f64 + n(19) as f64 / TICKS_PER_SECOND;
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            p.resident_bytes = status
                .lines()
                .find_map(|l| {
                    let kb = l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
                    kb.trim().parse::<u64>().ok()
                })
                .unwrap_or(0)
                * 1024;
        }
        p.open_fds = open_fds();
        p.max_fds = dcpp_runtime::process::nofile_limit().unwrap_or(0);
        p
    }
}

/// The boot time (seconds since the epoch), from /proc/stat: read once, since it does not
/// change and /proc/stat prints every CPU's and interrupt's counters to give it.
fn boot_time() -> u64 {
    static BOOT: OnceLock<u64> = OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    })
}

/// Open descriptors of the daemon. Linux 6.2 and later give their number as the size of
/// /proc/self/fd, one stat instead of listing them (the metrics hold a few files open per
/// container: a thousand entries at 100 containers); earlier kernels report 0 there.
fn open_fds() -> u64 {
    match std::fs::metadata("/proc/self/fd").map(|m| m.len()) {
        Ok(n) if n > 0 => n,
        _ => std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0),
    }
}

#[derive(Debug)]
struct ReadingCollector(Arc<Mutex<Reading>>);

/// The label set of the daemon's own figures.
const NO_LABELS: [(&str, &str); 0] = [];

/// One family of constant samples.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut f = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in samples {
        m.encode(f.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for ReadingCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let node = || vec![("node", r.node.clone())];
        if let Some(tasks) = &r.tasks {
            family(
                &mut enc,
                "dcpp_tasks",
                "Task records in the store, by stack, service and state (cluster-wide: every \
                 manager reports the same figures)",
                MetricType::Gauge,
                tasks.iter().map(|((stack, service, state), n)| {
                    (
                        vec![
                            ("stack", stack.clone()),
                            ("service", service.clone()),
                            ("state", state.clone()),
                        ],
                        ConstGauge::new(*n),
                    )
                }),
            )?;
        }
        let raft = &r.raft;
        for (name, help, v) in [
            ("dcpp_raft_term", "Current raft term", raft.term),
            (
                "dcpp_raft_last_log_index",
                "Index of the last entry of this node's raft log",
                raft.last_log_index,
            ),
            (
                "dcpp_raft_last_applied_index",
                "Index of the last entry applied to this node's store",
                raft.last_applied_index,
            ),
            (
                "dcpp_raft_apply_lag_entries",
                "Log entries not yet applied to this node's store",
                raft.last_log_index.saturating_sub(raft.last_applied_index),
            ),
            (
                "dcpp_raft_log_entries",
                "Entries in this node's raft log (not yet purged by a snapshot)",
                raft.log_entries,
            ),
            (
                "dcpp_raft_is_leader",
                "1 while this node is the raft leader",
                u64::from(raft.is_leader),
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                MetricType::Gauge,
                [(node(), gauge(v))],
            )?;
        }
        fn with_node(c: &ContainerReading) -> &[(&'static str, String)] {
            &c.labels
        }
        let cs = &r.containers;
        family(
            &mut enc,
            "container_cpu_usage_seconds",
            "CPU time consumed by the container's cgroup",
            MetricType::Counter,
            cs.iter().map(|c| {
                (
                    with_node(c),
                    ConstCounter::new(c.stats.cpu_usage_ns as f64 / 1e9),
                )
            }),
        )?;
        for (name, help, get) in [
            (
                "container_memory_usage_bytes",
                "Memory charged to the container's cgroup, page cache included",
                (|s| s.memory_usage_bytes) as fn(&dcpp_runtime::container::Stats) -> u64,
            ),
            (
                "container_memory_working_set_bytes",
                "Memory of the container the kernel cannot reclaim at once (usage less inactive page cache)",
                |s| s.memory_working_set_bytes,
            ),
            (
                "container_threads",
                "Tasks (processes and threads) in the container's pids cgroup",
                |s| s.pids_current,
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                MetricType::Gauge,
                cs.iter().map(|c| (with_node(c), gauge(get(&c.stats)))),
            )?;
        }
        family(
            &mut enc,
            "container_spec_memory_limit_bytes",
            "Memory limit of the container (absent: unlimited)",
            MetricType::Gauge,
            cs.iter()
                .filter_map(|c| Some((with_node(c), gauge(c.stats.memory_limit_bytes?)))),
        )?;
        family(
            &mut enc,
            "container_threads_max",
            "Task limit of the container's pids cgroup (absent: unlimited)",
            MetricType::Gauge,
            cs.iter()
                .filter_map(|c| Some((with_node(c), gauge(c.stats.pids_limit?)))),
        )?;
        for (name, help, get) in [
            (
                "container_network_receive_bytes",
                "Bytes received on the interfaces of the container's network namespace (lo excluded)",
                (|n| n.rx_bytes) as fn(&dcpp_runtime::container::NetIo) -> u64,
            ),
            (
                "container_network_transmit_bytes",
                "Bytes sent on the interfaces of the container's network namespace (lo excluded)",
                |n| n.tx_bytes,
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                cs.iter()
                    .filter_map(|c| Some((with_node(c), ConstCounter::new(get(c.net.as_ref()?))))),
            )?;
        }
        for (name, help, get) in [
            (
                "container_fs_reads_bytes",
                "Bytes the container's cgroup read from block devices",
                (|s| s.blkio_read_bytes) as fn(&dcpp_runtime::container::Stats) -> u64,
            ),
            (
                "container_fs_writes_bytes",
                "Bytes the container's cgroup wrote to block devices",
                |s| s.blkio_write_bytes,
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                cs.iter()
                    .map(|c| (with_node(c), ConstCounter::new(get(&c.stats)))),
            )?;
        }
        let p = &r.process;
        family(
            &mut enc,
            "process_cpu_seconds",
            "User and system CPU time of the daemon",
            MetricType::Counter,
            [(NO_LABELS, ConstCounter::new(p.cpu_seconds))],
        )?;
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory of the daemon",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory of the daemon",
                p.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", p.open_fds),
            (
                "process_max_fds",
                "Limit of open file descriptors",
                p.max_fds,
            ),
            ("process_threads", "Threads of the daemon", p.threads),
        ] {
            family(
                &mut enc,
                name,
                help,
                MetricType::Gauge,
                [(NO_LABELS, gauge(v))],
            )?;
        }
        family(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the daemon since the Unix epoch",
            MetricType::Gauge,
            [(NO_LABELS, ConstGauge::new(p.start_time_seconds))],
        )?;
        Ok(())
    }
}

/// Checks a `--metrics-addr`: plain HTTP is only for this machine; remote scrapers use the
/// API's `GET /metrics`, which takes a client certificate of the cluster.
pub fn check_addr(addr: SocketAddr, api: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "--metrics-addr {addr} is not a loopback address: the metrics listener has no \
             authentication. Scrape https://{api}/metrics instead (the API's listener, which \
             takes a client certificate of this cluster, e.g. an admin certificate from \
             `dcpp cluster admin-cert`), or bind --metrics-addr to 127.0.0.1"
        );
    }
    Ok(())
}

/// The `GET /metrics` route, for any router.
pub fn route<S: Clone + Send + Sync + 'static>(m: Arc<Metrics>) -> axum::Router<S> {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = m.clone();
            async move { m.render().await }
        }),
    )
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(
    m: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, route::<()>(m))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}
