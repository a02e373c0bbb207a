//! `dcpp apply`, `dcpp diff`, `dcpp down`, `dcpp ps`, `dcpp stack ls`, `dcpp service …`: the
//! user's side of the desired state. Everything here talks to the daemon through its API; the
//! daemon's leader loop and agents do the work.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dcpp_control::converge::{Outcome, Round};
use dcpp_control::schema::{
    ServiceChange, ServiceDoc, StackDoc, TaskDoc, TaskStatusDoc, diff_services, now_ms, stack_docs,
    stack_services,
};
use dcpp_control::stacks::{Removal, delete_stack, store_stack};
use dcpp_raft::{Client, Kind, Op, Precondition, Txn};
use dcpp_reconciler::{DesiredState, Mode, Observed, ServiceSpec, ServiceStatus, Task, TaskState};

use crate::Global;
use crate::cmd::cluster::{block_on, client};
use crate::cmd::daemon::DEFAULT_SOCKET;

/// Compose files and project name, as in `dcpp config`.
#[derive(Debug, Clone, clap::Args)]
pub struct FileArgs {
    /// Compose file(s), merged in order (default: compose.yaml etc. in the current directory).
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Stack (project) name.
    #[arg(short = 'p', long = "project-name")]
    pub project_name: Option<String>,
    /// Enable services of this compose profile (repeatable; also COMPOSE_PROFILES).
    #[arg(long = "profile")]
    pub profiles: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Print the diff only; store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove stored services that are no longer in the files.
    #[arg(long)]
    pub prune: bool,
    /// Return after storing; don't follow convergence.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Give up following after this long (e.g. 90s, 5m).
    #[arg(long, default_value = "5m", value_parser = crate::cmd::duration::parse)]
    pub timeout: Duration,
    /// How the `RUN` steps of `build:` sections run.
    #[command(flatten)]
    pub rt: crate::cmd::container::RuntimeOpts,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Plan as `apply --prune` would: stored services missing from the files are removed.
    #[arg(long)]
    pub prune: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: crate::cmd::cluster::Format,
    #[command(flatten)]
    pub rt: crate::cmd::container::RuntimeOpts,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Return after storing; don't wait for the containers to go.
    #[arg(short = 'd', long, conflicts_with = "volumes")]
    pub detach: bool,
    /// Also remove the stack's named volumes (not external ones) and its anonymous volumes,
    /// once its containers are gone. Volumes live on each node; this removes those of the
    /// node the CLI runs on (its `--data-dir`).
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(long, default_value = "2m", value_parser = crate::cmd::duration::parse)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Also show finished tasks (history).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only this stack.
    #[arg(short = 'p', long = "project-name")]
    pub project_name: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: crate::cmd::cluster::Format,
}

#[derive(Debug, clap::Subcommand)]
pub enum StackCommand {
    /// List applied stacks with their source and last apply time.
    Ls(crate::cmd::cluster::FormatArgs),
    /// Remove a stack (same as `dcpp down -p NAME`).
    #[command(alias = "remove")]
    Rm {
        name: String,
        /// Return after storing; don't wait for the containers to go.
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long, default_value = "2m", value_parser = crate::cmd::duration::parse)]
        timeout: Duration,
    },
}

/// Only JSON: inspect commands print documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JsonOnly {
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// List services with running/desired replicas, health and restarts.
    Ls(crate::cmd::cluster::FormatArgs),
    /// Tasks of one service (`stack_service`, or a service name unique across stacks).
    Ps {
        service: String,
        /// Also show finished tasks (history).
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: crate::cmd::cluster::Format,
    },
    /// The stored service document as JSON.
    Inspect {
        service: String,
        #[arg(long, value_enum, default_value = "json")]
        format: JsonOnly,
    },
    /// The logs of a service's replicas on this machine (same as `dcpp logs SERVICE`).
    Logs(crate::cmd::container::TopLogsArgs),
    /// Change a service as `docker service update` does: image, environment, replicas, update
    /// settings, or `--force` to replace its containers without a change. A change of image or
    /// environment (or `--force`) is a rolling update per the service's update_config.
    Update {
        service: String,
        #[arg(long)]
        image: Option<String>,
        /// Add or replace an environment variable (KEY=VALUE); repeatable.
        #[arg(long = "env-add", value_name = "KEY=VALUE")]
        env_add: Vec<String>,
        /// Remove an environment variable; repeatable.
        #[arg(long = "env-rm", value_name = "KEY")]
        env_rm: Vec<String>,
        #[arg(long)]
        replicas: Option<u32>,
        /// Containers replaced at a time (0 = all at once).
        #[arg(long = "update-parallelism")]
        update_parallelism: Option<u64>,
        /// Wait between batches (e.g. 10s, 1m30s).
        #[arg(long = "update-delay", value_parser = crate::cmd::duration::parse)]
        update_delay: Option<Duration>,
        #[arg(long = "update-order", value_enum)]
        update_order: Option<UpdateOrderArg>,
        /// What a failed batch does.
        #[arg(long = "update-failure-action", value_enum)]
        update_failure_action: Option<FailureActionArg>,
        /// Replace the containers even when nothing changed (a rolling restart).
        #[arg(long)]
        force: bool,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long, default_value = "5m", value_parser = crate::cmd::duration::parse)]
        timeout: Duration,
    },
    /// Go back to the service's previous spec (a rolling update to it).
    Rollback {
        service: String,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long, default_value = "5m", value_parser = crate::cmd::duration::parse)]
        timeout: Duration,
    },
    /// Set replica counts: `web=5 api=2`.
    Scale {
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long, default_value = "5m", value_parser = crate::cmd::duration::parse)]
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpdateOrderArg {
    StartFirst,
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailureActionArg {
    Pause,
    Rollback,
    Continue,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Print one JSON object per event (same as `--format json`).
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: crate::cmd::cluster::Format,
    /// Replay what happened after this store revision (the first number of each event line),
    /// or from this time on: RFC 3339 (`2026-12-07T20:30:00Z`) or this long ago (`10m`);
    /// default: only what happens from now on.
    #[arg(long, value_name = "REV|TIME|DURATION")]
    pub since: Option<String>,
    /// Stop after this store revision (a number), after this time (RFC 3339: if it is past,
    /// the replay ends with the last change committed at or before it), or after this long
    /// (`30s`, `5m`); exits 0.
    #[arg(long, value_name = "REV|TIME|DURATION")]
    pub until: Option<String>,
    /// `type=stack|service|task|node`, `stack=NAME`, `service=NAME` (`web` or `stack_web`),
    /// `node=ID` (tasks placed there, and the node's record); comma-separated or repeated: the
    /// same key ORs, different keys AND.
    #[arg(long = "filter", value_name = "KEY=VALUE[,KEY=VALUE…]")]
    pub filters: Vec<String>,
    /// Print nothing; wait until the store shows the condition, then exit 0 (non-zero with a
    /// message after --timeout). `service=NAME state=STATE count=N`: exactly N tasks of the
    /// service in that state (`running`, `failed`, …); `stack=`, `node=` narrow it further;
    /// `health=healthy|unhealthy` counts only tasks of that health; without `count`, at least
    /// one. Checked at once and after every change. Exit 3 on timeout.
    #[arg(long, value_name = "CONDITION")]
    pub wait_for: Option<String>,
    /// How long --wait-for waits.
    #[arg(long, default_value = "60s", value_parser = crate::cmd::duration::parse)]
    pub timeout: Duration,
}

/// The events `dcpp events --filter` keeps.
#[derive(Debug, Default)]
struct EventFilter {
    kinds: Vec<Kind>,
    stacks: Vec<String>,
    services: Vec<String>,
    nodes: Vec<String>,
}

/// Whether service id `id` (`stack_name`) is the one a user named (`name` or `stack_name`).
fn names_service(id: &str, name: &str) -> bool {
    id == name || id.split_once('_').is_some_and(|(_, n)| n == name)
}

/// A `--wait-for` condition on the tasks in the store.
#[derive(Debug, Default, PartialEq)]
struct WaitFor {
    service: Option<String>,
    stack: Option<String>,
    node: Option<String>,
    state: Option<String>,
    health: Option<String>,
    count: Option<usize>,
}

impl WaitFor {
    fn parse(s: &str) -> anyhow::Result<WaitFor> {
        let mut w = WaitFor::default();
        for part in s.split([' ', ',']).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("invalid condition {part:?}: expected KEY=VALUE"))?;
            let v = v.to_string();
            match k {
                "service" => w.service = Some(v),
                "stack" => w.stack = Some(v),
                "node" => w.node = Some(v),
                "state" => w.state = Some(v),
                "health" => w.health = Some(v),
                "count" => {
                    w.count = Some(
                        v.parse()
                            .with_context(|| format!("invalid count {v:?}: expected a number"))?,
                    )
                }
                _ => bail!(
                    "invalid condition {part:?}: the keys are service, stack, node, state, \
                     health and count"
                ),
            }
        }
        if w.service.is_none() && w.stack.is_none() {
            bail!("--wait-for needs service=NAME or stack=NAME");
        }
        Ok(w)
    }

    /// How many tasks match, and whether that meets the condition.
    fn check(&self, tasks: &[dcpp_reconciler::Task]) -> (usize, bool) {
        let n = tasks
            .iter()
            .filter(|t| {
                self.service
                    .as_ref()
                    .is_none_or(|s| names_service(&t.service.0, s))
                    && self
                        .stack
                        .as_ref()
                        .is_none_or(|s| t.service.0.split_once('_').is_some_and(|(st, _)| st == s))
                    && self
                        .node
                        .as_ref()
                        .is_none_or(|n| t.node.as_ref().is_some_and(|x| x.0 == *n))
                    && self.state.as_ref().is_none_or(|s| text(&t.state) == *s)
                    && self.health.as_ref().is_none_or(|h| text(&t.health) == *h)
            })
            .count();
        (n, self.count.map_or(n > 0, |c| n == c))
    }
}

/// The serde name of a unit enum value (`running`, `healthy`).
fn text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until `w` holds for the tasks in the store, checking after every change.
async fn wait_for(c: &dcpp_raft::Client, w: &WaitFor, timeout: Duration) -> anyhow::Result<u8> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = 0;
    let run = async {
        loop {
            let since = c.status().await?.revision;
            let tasks: Vec<_> = dcpp_control::schema::tasks(c)
                .await?
                .into_values()
                .map(|(t, _)| t)
                .collect();
            let (n, ok) = w.check(&tasks);
            last = n;
            if ok {
                return Ok::<_, anyhow::Error>(());
            }
            // Any change may change the count: look again after the next one.
            let mut s = Box::pin(c.watch(since, None));
            match s.next().await {
                Some(Ok(_)) | None => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    };
    match tokio::time::timeout_at(deadline, run).await {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            eprintln!(
                "timed out after {timeout:?} waiting for {}: {last} task(s) match{}",
                w.describe(),
                w.count.map(|c| format!(", {c} wanted")).unwrap_or_default()
            );
            Ok(3)
        }
    }
}

impl WaitFor {
    fn describe(&self) -> String {
        let mut p = Vec::new();
        for (k, v) in [
            ("service", &self.service),
            ("stack", &self.stack),
            ("node", &self.node),
            ("state", &self.state),
            ("health", &self.health),
        ] {
            if let Some(v) = v {
                p.push(format!("{k}={v}"));
            }
        }
        if let Some(c) = self.count {
            p.push(format!("count={c}"));
        }
        p.join(" ")
    }
}

/// When `--until` ends the stream.
#[derive(Debug, Clone, Copy)]
enum Until {
    Revision(u64),
    At(tokio::time::Instant),
    /// A time still to come: the stream ends then, and before at a change committed later.
    Time(time::OffsetDateTime, tokio::time::Instant),
}

/// `--since` or `--until` as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    Revision(u64),
    Time(time::OffsetDateTime),
    Duration(Duration),
}

fn parse_point(flag: &str, s: &str) -> anyhow::Result<Point> {
    if let Ok(r) = s.parse::<u64>() {
        return Ok(Point::Revision(r));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(Point::Time(t));
    }
    let d = crate::cmd::duration::parse(s).map_err(|e| {
        anyhow::anyhow!(
            "invalid {flag} {s:?}: a revision, an RFC 3339 time (2026-12-07T20:30:00Z) or a \
             duration ({e})"
        )
    })?;
    Ok(Point::Duration(d))
}

/// The revision `--since` names: events after it are replayed.
async fn resolve_since(c: &Client, p: Option<Point>) -> anyhow::Result<u64> {
    let t = match p {
        None => return Ok(c.status().await?.revision),
        Some(Point::Revision(r)) => return Ok(r),
        Some(Point::Time(t)) => t,
        Some(Point::Duration(d)) => time::OffsetDateTime::now_utc() - d,
    };
    c.revision_before(t)
        .await
        .with_context(|| format!("finding the revision at {}", fmt_time(t)))
}

/// `--until`: a duration counts from now (a live stream that ends); a past time is the
/// revision it was at, and a future one a deadline.
async fn resolve_until(c: &Client, p: Point) -> anyhow::Result<Until> {
    let now = time::OffsetDateTime::now_utc();
    Ok(match p {
        Point::Revision(r) => Until::Revision(r),
        Point::Duration(d) => Until::At(tokio::time::Instant::now() + d),
        Point::Time(t) if t > now => Until::Time(
            t,
            tokio::time::Instant::now() + Duration::try_from(t - now).unwrap_or_default(),
        ),
        // Changes at `t` itself are kept.
        Point::Time(t) => Until::Revision(
            c.revision_before(t + Duration::from_nanos(1))
                .await
                .with_context(|| format!("finding the revision at {}", fmt_time(t)))?,
        ),
    })
}

fn fmt_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

impl EventFilter {
    fn parse(filters: &[String]) -> anyhow::Result<EventFilter> {
        let mut f = EventFilter::default();
        for s in filters.iter().flat_map(|f| f.split(',')) {
            let (k, v) = s
                .split_once('=')
                .with_context(|| format!("invalid filter {s:?}: expected KEY=VALUE"))?;
            match k {
                "type" | "kind" => match v {
                    "stack" => f.kinds.push(Kind::Stack),
                    "service" => f.kinds.push(Kind::Service),
                    // A task's changes are those of both its documents.
                    "task" => f.kinds.extend([Kind::Task, Kind::TaskStatus]),
                    "node" => f.kinds.push(Kind::Node),
                    _ => bail!("invalid filter {s:?}: type is stack, service, task or node"),
                },
                "stack" => f.stacks.push(v.to_string()),
                "service" => f.services.push(v.to_string()),
                "node" => f.nodes.push(v.to_string()),
                _ => bail!("invalid filter {s:?}: the keys are type, stack, service and node"),
            }
        }
        Ok(f)
    }

    /// `task`: the task document of a task event (a status names its task by id only).
    fn keeps(&self, ev: &dcpp_raft::Event, task: Option<&TaskDoc>) -> bool {
        let o = &ev.object;
        if !matches!(
            o.kind,
            Kind::Stack | Kind::Service | Kind::Task | Kind::TaskStatus | Kind::Node
        ) {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&o.kind) {
            return false;
        }
        if !self.services.is_empty() {
            let service_of = match o.kind {
                Kind::Service => Some(o.id.clone()),
                Kind::Task | Kind::TaskStatus => task.map(|t| t.service.0.clone()),
                _ => None,
            };
            if !service_of.is_some_and(|id| self.services.iter().any(|n| names_service(&id, n))) {
                return false;
            }
        }
        if !self.nodes.is_empty() {
            let node_of = match o.kind {
                Kind::Node => Some(o.id.clone()),
                Kind::Task | Kind::TaskStatus => task.and_then(|t| t.node.clone()).map(|n| n.0),
                _ => None,
            };
            if !node_of.is_some_and(|n| self.nodes.contains(&n)) {
                return false;
            }
        }
        if self.stacks.is_empty() {
            return true;
        }
        // A deleted task has no body left to say which stack it belonged to.
        let stack_of = match o.kind {
            Kind::Stack => Some(o.id.clone()),
            Kind::Service => o.decode::<ServiceDoc>().ok().map(|d| d.spec.stack),
            Kind::Task | Kind::TaskStatus => task.and_then(|t| t.stack()).map(str::to_string),
            _ => None,
        };
        stack_of.is_some_and(|s| self.stacks.contains(&s))
    }
}

/// `dcpp events`: stack, service and task changes as they happen (until interrupted).
pub fn run_events(global: &Global, args: EventsArgs) -> anyhow::Result<u8> {
    use futures::StreamExt;
    let filter = EventFilter::parse(&args.filters)?;
    let json = args.json || args.format == crate::cmd::cluster::Format::Json;
    let c = client(global)?;
    if let Some(w) = &args.wait_for {
        let w = WaitFor::parse(w)?;
        return block_on(async move { wait_for(&c, &w, args.timeout).await });
    }
    let since = args
        .since
        .as_deref()
        .map(|s| parse_point("--since", s))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_point("--until", s))
        .transpose()?;
    block_on(async move {
        let since = resolve_since(&c, since).await?;
        let until = match until {
            Some(p) => Some(resolve_until(&c, p).await?),
            None => None,
        };
        if let Some(Until::Revision(r)) = until
            && r <= since
        {
            return Ok(0);
        }
        // Task documents by id, so that a status event can be named and filtered by stack.
        let mut tasks: HashMap<String, TaskDoc> = HashMap::new();
        let mut s = Box::pin(c.watch(since, None));
        loop {
            let next = match &until {
                Some(Until::At(t) | Until::Time(_, t)) => {
                    match tokio::time::timeout_at(*t, s.next()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                }
                _ => s.next().await,
            };
            let Some(ev) = next else { break };
            let ev = ev?;
            match until {
                Some(Until::Revision(r)) if ev.revision > r => break,
                Some(Until::Time(t, _)) if ev.time.is_some_and(|e| e > t) => break,
                _ => {}
            }
            let o = &ev.object;
            if o.kind == Kind::Task
                && ev.event_type == dcpp_raft::EventType::Put
                && let Ok(t) = o.decode::<TaskDoc>()
            {
                tasks.insert(o.id.clone(), t);
            }
            if o.kind == Kind::TaskStatus
                && !tasks.contains_key(&o.id)
                && let Ok(t) = c.get(Kind::Task, &o.id).await
                && let Ok(t) = t.decode::<TaskDoc>()
            {
                tasks.insert(o.id.clone(), t);
            }
            let task = match o.kind {
                Kind::Task | Kind::TaskStatus => tasks.get(&o.id),
                _ => None,
            };
            let keep = filter.keeps(&ev, task);
            let what = match (ev.event_type, o.kind, task) {
                (dcpp_raft::EventType::Delete, ..) => "deleted".to_string(),
                (_, Kind::Task, Some(t)) => format!("{} desired={:?}", t.name(), t.desired),
                (_, Kind::TaskStatus, Some(t)) => match o.decode::<TaskStatusDoc>() {
                    Ok(st) => format!(
                        "{} {}{}",
                        t.name(),
                        st.state,
                        st.error
                            .map(|e| format!(" error={:?}", crate::cmd::show::one_line(&e)))
                            .unwrap_or_default()
                    ),
                    Err(_) => "updated".into(),
                },
                _ => "updated".into(),
            };
            if ev.event_type == dcpp_raft::EventType::Delete && o.kind == Kind::TaskStatus {
                tasks.remove(&o.id);
            }
            let last = matches!(until, Some(Until::Revision(r)) if ev.revision >= r);
            if !keep {
                if last {
                    break;
                }
                continue;
            }
            if json {
                println!("{}", serde_json::to_string(&ev)?);
            } else {
                let at = ev.time.map(fmt_time);
                println!(
                    "{} {} {}/{} {what}",
                    ev.revision,
                    at.as_deref().unwrap_or("-"),
                    o.kind,
                    o.id
                );
            }
            if last {
                break;
            }
        }
        Ok(0)
    })
}

pub fn load(files: &FileArgs) -> anyhow::Result<Option<dcpp_spec::Project>> {
    Ok(load_full(files)?.map(|l| l.project))
}

/// [`load`], refusing a project whose secrets' or configs' data cannot be read (what `apply`
/// and `diff` need, and `dcpp config` does not).
pub fn load_for_apply(files: &FileArgs) -> anyhow::Result<Option<dcpp_spec::Loaded>> {
    let Some(l) = load_full(files)? else {
        return Ok(None);
    };
    if !l.sources.is_empty() {
        for e in &l.sources {
            eprintln!("{e}");
        }
        return Ok(None);
    }
    Ok(Some(l))
}

fn load_full(files: &FileArgs) -> anyhow::Result<Option<dcpp_spec::Loaded>> {
    let opts = dcpp_spec::LoadOptions {
        files: files.files.clone(),
        project_name: files.project_name.clone(),
        profiles: files.profiles.clone(),
        env_files: vec![],
        working_dir: std::env::current_dir()?,
        project_dir: None,
        environment: std::env::vars().collect(),
    };
    match dcpp_spec::load(&opts) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("warning: {w}");
            }
            Ok(Some(l))
        }
        Err(errs) => {
            eprintln!("{errs}");
            Ok(None)
        }
    }
}

fn source_of(files: &FileArgs) -> String {
    files
        .files
        .iter()
        .map(|f| {
            std::fs::canonicalize(f)
                .unwrap_or_else(|_| f.clone())
                .display()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The stored services of `stack` by service name.
/// The client, starting a local daemon first when none answers on the default socket.
async fn connect_or_start(global: &Global) -> anyhow::Result<Client> {
    let c = client(global)?;
    if c.status().await.is_ok() || global.host.is_some() {
        return Ok(c);
    }
    std::fs::create_dir_all(&global.data_dir)
        .with_context(|| format!("create {}", global.data_dir.display()))?;
    let log_path = global.data_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("daemon")
        .arg("--data-dir")
        .arg(&global.data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: the daemon outlives this command and its terminal.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let child = cmd.spawn().context("start a local daemon")?;
    eprintln!(
        "started a local dcpp daemon (pid {}, data dir {}, socket {DEFAULT_SOCKET}, log {})",
        child.id(),
        global.data_dir.display(),
        log_path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if c.status().await.is_ok() {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!(
                "the local daemon did not come up; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn run_apply(global: &Global, args: ApplyArgs) -> anyhow::Result<u8> {
    let Some(mut loaded) = load_for_apply(&args.files)? else {
        return Ok(1);
    };
    if loaded.project.services.values().any(|s| s.build.is_some()) {
        use crate::cmd::build::{ComposeBuild, Delivery, compose_builds, delivery};
        // Without a daemon yet, apply starts one: a cluster of this node alone.
        let nodes = block_on(async {
            let c = client(global)?;
            Ok(c.list(Kind::Node).await.map_or(1, |l| l.objects.len()))
        })?;
        let p = &loaded.project;
        let mut push = false;
        for (name, s) in p.services.iter().filter(|(_, s)| s.build.is_some()) {
            let image = s.image_name(&p.name, name).unwrap_or_default();
            match delivery(name, &image, nodes) {
                Delivery::Local => {}
                Delivery::Push => push = true,
                Delivery::Refused(e) => anyhow::bail!(e),
            }
        }
        let mode = if args.dry_run {
            ComposeBuild::Preview
        } else {
            ComposeBuild::Build
        };
        compose_builds(global, &args.rt, &mut loaded.project, mode, push)?;
    }
    let (mut stack, services) = stack_docs(&loaded.project, &source_of(&args.files))?;
    let global = global.clone();
    block_on(async move {
        let c = if args.dry_run {
            client(&global)?
        } else {
            connect_or_start(&global).await?
        };
        let (old, services) = match c.status().await {
            Ok(_) => (
                stack_services(&c, &stack.name).await?,
                crate::cmd::secret::store_project_files(Some(&c), &loaded, services, args.dry_run)
                    .await?,
            ),
            Err(_) if args.dry_run => (BTreeMap::new(), services),
            Err(e) => return Err(e.into()),
        };
        let new: BTreeMap<String, ServiceDoc> = services
            .into_iter()
            .map(|d| (d.spec.name.clone(), d))
            .collect();
        let changes = diff_services(&old, &new);
        let effective = changes
            .iter()
            .filter(|ch| args.prune || !matches!(ch, ServiceChange::Removed { .. }))
            .count();
        let stored_stack = c.get_as::<StackDoc>(Kind::Stack, &stack.name).await.ok();
        if changes.is_empty() {
            println!("stack {}: no changes", stack.name);
        } else {
            println!("stack {}:", stack.name);
            for ch in &changes {
                let note = match ch {
                    ServiceChange::Removed { .. } if !args.prune => " (kept; --prune removes it)",
                    _ => "",
                };
                println!("  {ch}{note}");
            }
        }
        if args.dry_run {
            // Without a daemon there is no state to plan on: the document diff is all.
            if c.status().await.is_ok() {
                let p = dcpp_control::preview::preview(&c, &stack.name, &new, args.prune).await?;
                for a in &p.actions {
                    println!("  {a}");
                }
            }
            return Ok(0);
        }
        // In a cluster the stored network documents are every node's networks: an own subnet
        // that overlaps one is refused before anything is written (on one node the agent
        // checks against its own networks and pools, and rejects the task).
        let conflicts = dcpp_control::overlay::conflicts(
            &dcpp_control::overlay::list(&c).await?,
            &new.values().cloned().collect::<Vec<_>>(),
        );
        if !conflicts.is_empty() {
            for e in &conflicts {
                eprintln!("error: {e}");
            }
            return Ok(1);
        }
        store_stack(
            &c,
            &mut stack,
            &old,
            &new,
            stored_stack.as_ref().map(|s| &s.0),
            args.prune,
            effective,
        )
        .await?;
        if args.detach {
            return Ok(0);
        }
        let watch: Vec<ServiceDoc> = new.into_values().collect();
        follow(&c, &watch, args.timeout).await
    })
}

pub fn run_diff(global: &Global, args: DiffArgs) -> anyhow::Result<u8> {
    let Some(mut loaded) = load_for_apply(&args.files)? else {
        return Ok(1);
    };
    crate::cmd::build::compose_builds(
        global,
        &args.rt,
        &mut loaded.project,
        crate::cmd::build::ComposeBuild::Preview,
        false,
    )?;
    let (stack, services) = stack_docs(&loaded.project, "")?;
    let c = client(global)?;
    block_on(async move {
        let services =
            crate::cmd::secret::store_project_files(Some(&c), &loaded, services, true).await?;
        let new: BTreeMap<String, ServiceDoc> = services
            .into_iter()
            .map(|d| (d.spec.name.clone(), d))
            .collect();
        let p = dcpp_control::preview::preview(&c, &stack.name, &new, args.prune).await?;
        if args.format == crate::cmd::cluster::Format::Json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            for ch in &p.changes {
                let kept = matches!(ch, ServiceChange::Removed { .. }) && !args.prune;
                let note = if kept {
                    " (kept; --prune removes it)"
                } else {
                    ""
                };
                println!("{ch}{note}");
            }
            for a in &p.actions {
                println!("{a}");
            }
        }
        Ok(if p.changes.is_empty() { 0 } else { 2 })
    })
}

/// The node records and tasks as the leader sees them, for the replica counts of global
/// services (drained, paused and down nodes don't count).
async fn observed_nodes(c: &Client, tasks: &[Task]) -> anyhow::Result<Observed> {
    let mut obs = Observed::default();
    let now = now_ms();
    for n in dcpp_control::nodes::list(c).await? {
        obs.add_node(dcpp_control::nodes::to_reconciler(&n, now));
    }
    obs.tasks = tasks.iter().map(|t| (t.id, t.clone())).collect();
    Ok(obs)
}

/// Follows the applied services to a verdict ([`dcpp_control::converge`]), printing progress
/// to stderr: exit 0 when all converged; 1 with one line per failed service and its reason, or
/// when `timeout` passes with one line per service still pending.
async fn follow(c: &Client, services: &[ServiceDoc], timeout: Duration) -> anyhow::Result<u8> {
    let mut last_line = String::new();
    let mut last_pull: BTreeMap<String, String> = BTreeMap::new();
    let render = |r: &Round| {
        // One line per image being pulled, whenever its progress changes.
        for p in &r.pulls {
            let line = p.to_string();
            if last_pull.get(&p.image) != Some(&line) {
                eprintln!("{line}");
                last_pull.insert(p.image.clone(), line);
            }
        }
        let line = r.summary();
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
    };
    match dcpp_control::converge::follow(c, services, timeout, render).await? {
        Outcome::Converged(took) => {
            println!("converged in {:.2}s", took.as_secs_f64());
            Ok(0)
        }
        Outcome::Failed(r) => {
            let failed: Vec<_> = r.failed().collect();
            for (name, why) in &failed {
                eprintln!("service {name}: failed: {why}");
            }
            for (name, why) in r.pending() {
                eprintln!("service {name}: not converged: {why}");
            }
            eprintln!("{} of {} service(s) failed", failed.len(), services.len());
            Ok(1)
        }
        Outcome::TimedOut(r) => {
            eprintln!("timed out after {timeout:?}; pending:");
            for (name, why) in r.pending() {
                eprintln!("service {name}: {why}");
            }
            Ok(1)
        }
    }
}

pub fn run_down(global: &Global, args: DownArgs) -> anyhow::Result<u8> {
    let name = match &args.files.project_name {
        Some(n) => n.clone(),
        None => match load(&args.files)? {
            Some(p) => p.name,
            None => return Ok(1),
        },
    };
    let c = client(global)?;
    block_on(async move {
        let docs = stack_services(&c, &name).await?;
        let stored = match c.get(Kind::Stack, &name).await {
            Ok(_) => true,
            Err(dcpp_raft::Error::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        if !stored && docs.is_empty() {
            eprintln!("error: no stack {name:?} (see `dcpp stack ls`)");
            return Ok(1);
        }
        let removal = Removal {
            volumes: args.volumes,
            report: !args.detach,
        };
        let n = delete_stack(&c, &name, &removal).await?.len();
        println!("stack {name}: removing {n} service(s)");
        if args.detach {
            return Ok(0);
        }
        let start = Instant::now();
        let prefix = format!("{name}_");
        loop {
            let left = c
                .list(Kind::Task)
                .await?
                .objects
                .iter()
                .filter_map(|o| o.decode::<TaskDoc>().ok())
                .filter(|t| t.service.0.starts_with(&prefix))
                .count();
            // Then the networks (bridges, DNS names, published ports) the agent of this
            // machine removes once the stack's last container is gone.
            let nets = if left == 0 {
                stack_networks(global, &name)?
            } else {
                Vec::new()
            };
            if left == 0 && nets.is_empty() {
                println!("stack {name} removed");
                if args.volumes {
                    let left = args.timeout.saturating_sub(start.elapsed());
                    return wait_volumes(&c, &name, left).await;
                }
                return Ok(0);
            }
            if start.elapsed() > args.timeout {
                if left > 0 {
                    eprintln!("timed out: {left} task(s) of {name} still present");
                } else {
                    eprintln!(
                        "timed out: network(s) of {name} still present: {}",
                        nets.join(", ")
                    );
                }
                return Ok(1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Names of the networks stack `name` has on this machine (the node of `--data-dir`); none
/// when no daemon ever set up networking there.
fn stack_networks(global: &Global, name: &str) -> anyhow::Result<Vec<String>> {
    use dcpp_runtime::network::{NetworkManager, NetworkOptions};
    let Some(opts) = NetworkOptions::saved(&global.data_dir)? else {
        return Ok(Vec::new());
    };
    Ok(NetworkManager::open(opts)?
        .list()?
        .into_iter()
        .filter(|n| {
            n.network
                .labels
                .get(dcpp_node_agent::agent::NETWORK_STACK_LABEL)
                .is_some_and(|s| s == name)
        })
        .map(|n| n.network.name)
        .collect())
}

/// `down --volumes`: waits for every node's agent to report the removal of the stack's
/// volumes there, prints what each removed, and deletes the reports.
async fn wait_volumes(c: &Client, stack: &str, timeout: Duration) -> anyhow::Result<u8> {
    let start = Instant::now();
    loop {
        let all = dcpp_control::stacks::volume_removals(c, stack).await?;
        let waiting: Vec<u64> = all
            .values()
            .filter(|r| r.removed.is_none())
            .map(|r| r.node)
            .collect();
        if waiting.is_empty() || start.elapsed() > timeout {
            let mut code = 0;
            let several = all.len() > 1;
            for r in all.values() {
                let on = if several {
                    format!(" on node {}", r.node)
                } else {
                    String::new()
                };
                for v in r.removed.iter().flatten() {
                    println!("volume {v} removed{on}");
                }
                for e in &r.errors {
                    eprintln!("error: {e}{on}");
                    code = 1;
                }
            }
            dcpp_control::stacks::forget_volume_removals(c, stack, all.keys().copied()).await?;
            if !waiting.is_empty() {
                let ids: Vec<String> = waiting.iter().map(u64::to_string).collect();
                eprintln!(
                    "timed out: volumes of {stack} not removed on node(s) {} (not running an agent?)",
                    ids.join(", ")
                );
                code = 1;
            }
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_tasks(c: &Client) -> anyhow::Result<Vec<Task>> {
    let mut v: Vec<Task> = dcpp_control::schema::tasks(c)
        .await?
        .into_values()
        .map(|(t, _)| t)
        .collect();
    v.sort_by(|a, b| (&a.service, &a.slot, a.id).cmp(&(&b.service, &b.slot, b.id)));
    Ok(v)
}

/// Lays out a table: each column as wide as its widest cell (header included), two spaces
/// apart, the last column unpadded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i] - c.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// The task table of `ps` and `service ps`: state with health or restart countdown, restart
/// count, and the age of the last state change; errors on one line.
fn task_rows(tasks: &[&Task], now: u64) -> String {
    use crate::cmd::show;
    let mut rows = Vec::new();
    for t in tasks {
        let desired = match t.desired {
            DesiredState::Running => "running",
            DesiredState::Shutdown => "shutdown",
            DesiredState::Remove => "remove",
        };
        rows.push(vec![
            t.name(),
            t.id.to_string(),
            t.image.clone(),
            t.node.as_ref().map(|n| n.0.clone()).unwrap_or("-".into()),
            desired.to_string(),
            show::task_state(t, now),
            t.restart_count.to_string(),
            show::ago(t.updated_at, now),
            show::task_message(t),
        ]);
    }
    table(
        &[
            "NAME", "ID", "IMAGE", "NODE", "DESIRED", "STATE", "RESTARTS", "SINCE", "ERROR",
        ],
        &rows,
    )
}

fn print_tasks(tasks: &[&Task]) {
    print!("{}", task_rows(tasks, now_ms()));
}

pub fn run_ps(global: &Global, args: PsArgs) -> anyhow::Result<u8> {
    let c = client(global)?;
    block_on(async move {
        let tasks = all_tasks(&c).await?;
        let shown: Vec<&Task> = tasks
            .iter()
            .filter(|t| args.all || t.is_live())
            .filter(|t| {
                args.project_name
                    .as_ref()
                    .is_none_or(|p| t.service.0.starts_with(&format!("{p}_")))
            })
            .collect();
        if args.format == crate::cmd::cluster::Format::Json {
            println!("{}", serde_json::to_string_pretty(&shown)?);
        } else {
            print_tasks(&shown);
        }
        Ok(0)
    })
}

pub fn run_stack(global: &Global, cmd: StackCommand) -> anyhow::Result<u8> {
    let f = match cmd {
        StackCommand::Ls(f) => f,
        StackCommand::Rm {
            name,
            detach,
            timeout,
        } => {
            let args = DownArgs {
                files: FileArgs {
                    files: vec![],
                    project_name: Some(name),
                    profiles: vec![],
                },
                detach,
                volumes: false,
                timeout,
            };
            return run_down(global, args);
        }
    };
    let c = client(global)?;
    block_on(async move {
        let now = now_ms();
        let stacks: Vec<StackDoc> = c
            .list(Kind::Stack)
            .await?
            .objects
            .iter()
            .map(|o| o.decode())
            .collect::<Result<_, _>>()?;
        if f.format == crate::cmd::cluster::Format::Json {
            println!("{}", serde_json::to_string_pretty(&stacks)?);
            return Ok(0);
        }
        let mut rows = Vec::new();
        for s in stacks {
            rows.push(vec![
                s.name,
                s.services.len().to_string(),
                s.hash,
                crate::cmd::show::ago(s.applied_at_ms, now),
                s.source,
            ]);
        }
        print!(
            "{}",
            table(&["NAME", "SERVICES", "HASH", "APPLIED", "SOURCE"], &rows)
        );
        Ok(0)
    })
}

async fn find_service(c: &Client, name: &str) -> anyhow::Result<(ServiceDoc, u64)> {
    let mut found = Vec::new();
    for o in c.list(Kind::Service).await?.objects {
        let d: ServiceDoc = o.decode()?;
        if d.id().0 == name || d.spec.name == name {
            found.push((d, o.mod_revision));
        }
    }
    match found.len() {
        0 => bail!("no service {name:?}"),
        1 => Ok(found.remove(0)),
        _ => bail!("service name {name:?} is ambiguous: use STACK_SERVICE"),
    }
}

/// The spec of a stored service whose compose model was edited, converted the way `apply`
/// does: a project with this service, the named volumes it resolved at apply time and a stub
/// of its `network_mode: service:` peer, so the version matches what `apply` would compute.
fn respec(d: &ServiceDoc) -> anyhow::Result<ServiceSpec> {
    let mut services = BTreeMap::from([(d.spec.name.clone(), d.service.clone())]);
    if let Some(peer) = &d.spec.network_peer {
        services.insert(peer.clone(), dcpp_spec::Service::default());
    }
    let volumes = d
        .spec
        .volumes
        .iter()
        .map(|(key, name)| {
            let v = dcpp_spec::Volume {
                name: Some(name.clone()),
                external: d.spec.external_volumes.contains(name),
                ..Default::default()
            };
            (key.clone(), v)
        })
        .collect();
    // The secrets and configs by the names and versions they were stored under.
    let objects = |kind: dcpp_reconciler::FileKind| {
        d.spec
            .files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| {
                let o = dcpp_spec::FileObject {
                    name: Some(f.name.clone()),
                    ..Default::default()
                };
                (f.source.clone(), o)
            })
            .collect()
    };
    let p = dcpp_spec::Project {
        name: d.spec.stack.clone(),
        services,
        networks: Default::default(),
        volumes,
        configs: objects(dcpp_reconciler::FileKind::Config),
        secrets: objects(dcpp_reconciler::FileKind::Secret),
    };
    let spec = ServiceSpec::from_compose(&p, &d.spec.name)?;
    Ok(spec.with_file_versions(|kind, name| {
        d.spec
            .files
            .iter()
            .find(|f| f.kind == kind && f.name == name)
            .map_or(0, |f| f.version)
    }))
}

/// What `service update` was asked to change.
struct UpdateFlags {
    image: Option<String>,
    env_add: Vec<String>,
    env_rm: Vec<String>,
    replicas: Option<u32>,
    parallelism: Option<u64>,
    delay: Option<Duration>,
    order: Option<UpdateOrderArg>,
    failure_action: Option<FailureActionArg>,
    force: bool,
}

/// Label whose value `service update --force` bumps: a changed label is a new container
/// version, so every replica is replaced by a rolling update (swarm's ForceUpdate counter).
const FORCE_LABEL: &str = "org.dcpp.force-update";

/// Applies `service update` flags to a stored service document, as `docker service update`
/// changes the service's spec; the result's spec is recomputed from its compose model.
fn update_doc(d: &mut ServiceDoc, f: &UpdateFlags) -> anyhow::Result<()> {
    let svc = &mut d.service;
    if let Some(i) = &f.image {
        svc.image = Some(i.clone());
    }
    for kv in &f.env_add {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env-add {kv:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--env-add {kv:?}: empty variable name");
        }
        svc.environment.insert(k.to_string(), Some(v.to_string()));
    }
    for k in &f.env_rm {
        let k = k.split_once('=').map_or(k.as_str(), |(k, _)| k);
        svc.environment.remove(k);
    }
    if let Some(n) = f.replicas {
        if d.spec.mode == Mode::Global {
            bail!("service {} is global: --replicas does not apply", d.id());
        }
        svc.deploy.get_or_insert_with(Default::default).replicas = Some(u64::from(n));
        // A `scale:` of the file would otherwise say another number than deploy.replicas.
        if svc.scale.is_some() {
            svc.scale = Some(u64::from(n));
        }
    }
    if f.parallelism.is_some()
        || f.delay.is_some()
        || f.order.is_some()
        || f.failure_action.is_some()
    {
        let uc = svc
            .deploy
            .get_or_insert_with(Default::default)
            .update_config
            .get_or_insert_with(Default::default);
        if let Some(p) = f.parallelism {
            uc.parallelism = Some(p);
        }
        if let Some(dl) = f.delay {
            let nanos = u64::try_from(dl.as_nanos()).context("--update-delay is too long")?;
            uc.delay = Some(dcpp_spec::Duration(nanos));
        }
        if let Some(o) = f.order {
            uc.order = Some(
                match o {
                    UpdateOrderArg::StartFirst => "start-first",
                    UpdateOrderArg::StopFirst => "stop-first",
                }
                .into(),
            );
        }
        if let Some(a) = f.failure_action {
            uc.failure_action = Some(
                match a {
                    FailureActionArg::Pause => "pause",
                    FailureActionArg::Rollback => "rollback",
                    FailureActionArg::Continue => "continue",
                }
                .into(),
            );
        }
    }
    if f.force {
        let n = svc
            .labels
            .get(FORCE_LABEL)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        svc.labels.insert(FORCE_LABEL.into(), (n + 1).to_string());
    }
    let fresh = respec(d)?;
    d.spec.image = fresh.image;
    // Only what containers are made of makes a new version: the version hash sees an empty
    // `deploy:` that replicas or update settings created as a change.
    let containers_change =
        f.image.is_some() || !f.env_add.is_empty() || !f.env_rm.is_empty() || f.force;
    if containers_change {
        d.spec.version = fresh.version;
    }
    d.spec.update_config = fresh.update_config;
    if d.spec.mode != Mode::Global {
        d.spec.mode = fresh.mode;
    }
    Ok(())
}

/// One row of `service ls`.
#[derive(Debug, serde::Serialize)]
struct ServiceRow {
    name: String,
    stack: String,
    mode: &'static str,
    /// Running tasks of the current spec.
    running: usize,
    desired: usize,
    image: String,
    /// Live tasks by health (only services with a healthcheck have any).
    healthy: usize,
    unhealthy: usize,
    starting: usize,
    /// Restarts of the service's slots, summed over the live tasks.
    restarts: u64,
    /// The rollout's state (`updating`, `completed`, `rolled_back`, …) and message.
    update: Option<String>,
    update_message: Option<String>,
    /// Milliseconds since the epoch of the rollout's start.
    updated_at: Option<u64>,
}

fn service_row(
    d: &ServiceDoc,
    st: Option<&ServiceStatus>,
    tasks: &[Task],
    nodes: &Observed,
) -> ServiceRow {
    let (running, desired) = dcpp_control::converge::progress(d, st, tasks, nodes);
    let live: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.service == d.id() && t.is_live() && t.desired == DesiredState::Running)
        .collect();
    let count = |h: dcpp_reconciler::Health| {
        live.iter()
            .filter(|t| t.state == TaskState::Running && t.health == h)
            .count()
    };
    let update = st.and_then(|s| s.update.as_ref());
    ServiceRow {
        name: d.id().0,
        stack: d.spec.stack.clone(),
        mode: match d.spec.mode {
            Mode::Global => "global",
            Mode::Replicated { .. } => "replicated",
        },
        running,
        desired,
        image: d.spec.image.clone(),
        healthy: count(dcpp_reconciler::Health::Healthy),
        unhealthy: count(dcpp_reconciler::Health::Unhealthy),
        starting: count(dcpp_reconciler::Health::Starting),
        restarts: live.iter().map(|t| u64::from(t.restart_count)).sum(),
        update: update.map(|u| {
            serde_json::to_value(u.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{:?}", u.state))
        }),
        update_message: update.map(|u| crate::cmd::show::one_line(&u.message)),
        updated_at: update.map(|u| u.started_at),
    }
}

/// The table of `service ls`: replicas with health (`3/3 (2 healthy, 1 starting)`), restarts
/// and the rollout with its age.
fn service_table(rows: &[ServiceRow], now: u64) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut health = Vec::new();
            for (n, what) in [
                (r.healthy, "healthy"),
                (r.unhealthy, "unhealthy"),
                (r.starting, "starting"),
            ] {
                if n > 0 {
                    health.push(format!("{n} {what}"));
                }
            }
            let mut replicas = format!("{}/{}", r.running, r.desired);
            if !health.is_empty() {
                replicas.push_str(&format!(" ({})", health.join(", ")));
            }
            let update = match (&r.update, r.updated_at) {
                (Some(u), Some(at)) => {
                    let mut s = format!("{u} {}", crate::cmd::show::ago(at, now));
                    if let Some(m) = r.update_message.as_deref().filter(|m| !m.is_empty()) {
                        s.push_str(&format!(": {m}"));
                    }
                    s
                }
                _ => "-".into(),
            };
            vec![
                r.name.clone(),
                r.mode.to_string(),
                replicas,
                r.restarts.to_string(),
                r.image.clone(),
                update,
            ]
        })
        .collect();
    table(
        &["NAME", "MODE", "REPLICAS", "RESTARTS", "IMAGE", "UPDATE"],
        &cells,
    )
}

pub fn run_service(global: &Global, cmd: ServiceCommand) -> anyhow::Result<u8> {
    // Outside the runtime below: it asks the daemon (in a cluster) with a runtime of its own.
    let cmd = match cmd {
        ServiceCommand::Logs(args) => return crate::cmd::logs::run(global, args),
        other => other,
    };
    let c = client(global)?;
    block_on(async move {
        match cmd {
            ServiceCommand::Logs(_) => unreachable!("handled above"),
            ServiceCommand::Ls(f) => {
                let tasks = all_tasks(&c).await?;
                let nodes = observed_nodes(&c, &tasks).await?;
                let statuses = dcpp_control::schema::statuses(&c).await?;
                let mut rows = Vec::new();
                for (d, _) in dcpp_control::schema::services(&c).await?.into_values() {
                    rows.push(service_row(&d, statuses.get(&d.id()), &tasks, &nodes));
                }
                if f.format == crate::cmd::cluster::Format::Json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", service_table(&rows, now_ms()));
                }
                Ok(0)
            }
            ServiceCommand::Ps {
                service,
                all,
                format,
            } => {
                let (d, _) = find_service(&c, &service).await?;
                let tasks = all_tasks(&c).await?;
                let shown: Vec<&Task> = tasks
                    .iter()
                    .filter(|t| t.service == d.id() && (all || t.is_live()))
                    .collect();
                if format == crate::cmd::cluster::Format::Json {
                    println!("{}", serde_json::to_string_pretty(&shown)?);
                } else {
                    print_tasks(&shown);
                }
                Ok(0)
            }
            ServiceCommand::Inspect { service, format: _ } => {
                let (d, _) = find_service(&c, &service).await?;
                let mut v = serde_json::to_value(&d)?;
                // History: the rollout status and the document an automatic rollback rejected.
                if let Some(st) = dcpp_control::schema::status(&c, &d.id()).await?
                    && let Some(u) = st.update
                {
                    v["update_status"] = serde_json::to_value(&u)?;
                }
                if let Some(r) = dcpp_control::schema::history(&c, &d.id()).await?.rejected {
                    v["rejected"] = serde_json::to_value(&r)?;
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(0)
            }
            ServiceCommand::Update {
                service,
                image,
                env_add,
                env_rm,
                replicas,
                update_parallelism,
                update_delay,
                update_order,
                update_failure_action,
                force,
                detach,
                timeout,
            } => {
                let (mut d, rev) = find_service(&c, &service).await?;
                let before = d.clone();
                let flags = UpdateFlags {
                    image,
                    env_add,
                    env_rm,
                    replicas,
                    parallelism: update_parallelism,
                    delay: update_delay,
                    order: update_order,
                    failure_action: update_failure_action,
                    force,
                };
                update_doc(&mut d, &flags)?;
                let id = d.id().0;
                if d == before {
                    println!("{id}: no changes");
                    return Ok(0);
                }
                dcpp_control::stacks::update_service(&c, &before, rev, &d).await?;
                if d.spec.version == before.spec.version {
                    println!("{id}: updated (no container changes)");
                } else {
                    println!(
                        "{id}: updating to {} (version {:x})",
                        d.spec.image, d.spec.version
                    );
                }
                if detach {
                    return Ok(0);
                }
                follow(&c, &[d], timeout).await
            }
            ServiceCommand::Rollback {
                service,
                detach,
                timeout,
            } => {
                let (d, rev) = find_service(&c, &service).await?;
                let id = d.id().0;
                // The container settings of the previous spec are stored at each update; if
                // they are missing or belong to another version, only the image goes back.
                // Going back to the previous version makes the orchestrator roll back with
                // the rollback_config of the spec it leaves; the spec left becomes the
                // previous one, so a second rollback goes forward again (as in swarm).
                let back = match dcpp_control::stacks::rollback_service(&c, &d, rev).await {
                    Ok(b) => b,
                    Err(dcpp_control::Error::NoRollback(why)) => bail!("{why}"),
                    Err(e) => return Err(e.into()),
                };
                println!("{id}: rolling back to {}", back.spec.image);
                if detach {
                    return Ok(0);
                }
                follow(&c, &[back], timeout).await
            }
            ServiceCommand::Scale {
                pairs,
                detach,
                timeout,
            } => {
                let mut txn = Txn::new();
                let mut docs = Vec::new();
                for p in &pairs {
                    let (name, n) = p
                        .split_once('=')
                        .with_context(|| format!("expected SERVICE=REPLICAS, got {p:?}"))?;
                    let n: u32 = n
                        .parse()
                        .with_context(|| format!("invalid replica count in {p:?}"))?;
                    let (mut d, rev) = find_service(&c, name).await?;
                    if d.spec.mode == Mode::Global {
                        bail!("service {name} is global: it cannot be scaled");
                    }
                    d.spec.mode = Mode::Replicated { replicas: n };
                    d.service
                        .deploy
                        .get_or_insert_with(Default::default)
                        .replicas = Some(u64::from(n));
                    let id = d.id().0;
                    txn = txn
                        .when(Precondition::ModRevision {
                            kind: Kind::Service,
                            id: id.clone(),
                            revision: rev,
                        })
                        .op(Op::put(Kind::Service, id, &d)?);
                    println!("{} scaled to {n}", d.id());
                    docs.push(d);
                }
                c.txn(&txn).await?;
                if detach {
                    return Ok(0);
                }
                follow(&c, &docs, timeout).await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_conditions_parse_and_refuse_unknown_keys() {
        let w = WaitFor::parse("service=web state=running count=3").unwrap();
        assert_eq!(w.service.as_deref(), Some("web"));
        assert_eq!(w.state.as_deref(), Some("running"));
        assert_eq!(w.count, Some(3));
        assert_eq!(w.describe(), "service=web state=running count=3");
        assert!(WaitFor::parse("service=web,health=healthy").is_ok());
        let e = WaitFor::parse("service=web colour=red")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour=red"), "{e}");
        assert!(WaitFor::parse("state=running").is_err());
        assert!(WaitFor::parse("service=web count=three").is_err());
        assert!(names_service("st_web", "web") && names_service("st_web", "st_web"));
        assert!(!names_service("st_web", "st"));
    }

    fn doc(yaml: &str) -> ServiceDoc {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("compose.yml");
        std::fs::write(&f, yaml).unwrap();
        let files = FileArgs {
            files: vec![f],
            project_name: Some("st".into()),
            profiles: vec![],
        };
        let p = load(&files).unwrap().unwrap();
        let (_, mut docs) = stack_docs(&p, "").unwrap();
        docs.remove(0)
    }

    fn flags() -> UpdateFlags {
        UpdateFlags {
            image: None,
            env_add: vec![],
            env_rm: vec![],
            replicas: None,
            parallelism: None,
            delay: None,
            order: None,
            failure_action: None,
            force: false,
        }
    }

    #[test]
    fn service_update_flags_change_the_spec_as_apply_would() {
        let base = "services:\n  web:\n    image: busybox\n    environment: {A: \"1\", B: \"2\"}\n    volumes: [data:/data]\nvolumes:\n  data: {}\n";
        let d0 = doc(base);
        // The recomputed version of an unchanged document is the one apply stored.
        let mut d = d0.clone();
        update_doc(&mut d, &flags()).unwrap();
        assert_eq!(d, d0);
        // Environment: the same version as a file with that environment.
        let mut d = d0.clone();
        update_doc(
            &mut d,
            &UpdateFlags {
                env_add: vec!["C=3".into(), "A=9".into()],
                env_rm: vec!["B".into()],
                ..flags()
            },
        )
        .unwrap();
        let want = doc(&base.replace("{A: \"1\", B: \"2\"}", "{A: \"9\", C: \"3\"}"));
        assert_eq!(d.spec.version, want.spec.version);
        assert_eq!(d.service.environment, want.service.environment);
        // Replicas and update settings change no container.
        let mut d = d0.clone();
        update_doc(
            &mut d,
            &UpdateFlags {
                replicas: Some(4),
                parallelism: Some(2),
                delay: Some(Duration::from_secs(90)),
                order: Some(UpdateOrderArg::StartFirst),
                failure_action: Some(FailureActionArg::Rollback),
                ..flags()
            },
        )
        .unwrap();
        assert_eq!(d.spec.version, d0.spec.version);
        assert_eq!(d.spec.mode, Mode::Replicated { replicas: 4 });
        assert_eq!(d.spec.update_config.parallelism, 2);
        assert_eq!(d.spec.update_config.delay, 90_000);
        assert_eq!(
            d.spec.update_config.order,
            dcpp_reconciler::UpdateOrder::StartFirst
        );
        assert_eq!(
            d.spec.update_config.failure_action,
            dcpp_reconciler::FailureAction::Rollback
        );
        // --force: a new version each time, nothing else changed.
        let mut d = d0.clone();
        update_doc(
            &mut d,
            &UpdateFlags {
                force: true,
                ..flags()
            },
        )
        .unwrap();
        let v1 = d.spec.version;
        assert_ne!(v1, d0.spec.version);
        update_doc(
            &mut d,
            &UpdateFlags {
                force: true,
                ..flags()
            },
        )
        .unwrap();
        assert_ne!(d.spec.version, v1);
        assert_eq!(d.spec.image, "busybox");
        // Bad input is an error, not a silent no-op.
        let mut d = d0.clone();
        let e = update_doc(
            &mut d,
            &UpdateFlags {
                env_add: vec!["NOVALUE".into()],
                ..flags()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn table_columns_fit_the_widest_cell() {
        let rows = vec![
            vec![
                "web.1".into(),
                "127.0.0.1:5000/a/very/long/image:tag".into(),
                "x".into(),
            ],
            vec!["web.22".into(), "busybox".into(), "".into()],
        ];
        let out = table(&["NAME", "IMAGE", "ERROR"], &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME    IMAGE                                 ERROR"
        );
        assert_eq!(lines[1], "web.1   127.0.0.1:5000/a/very/long/image:tag  x");
        assert_eq!(lines[2], "web.22  busybox");
        // Every row's third column starts at the same offset.
        assert_eq!(lines[0].find("ERROR"), lines[1].find('x'));
    }
}
