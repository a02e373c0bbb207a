//! `dcpp apply`, `dcpp diff`, `dcpp down`, `dcpp ps`, `dcpp stack ls`, `dcpp service …`: the
//! user's side of the desired state. Everything here talks to the daemon through its API; the
//! daemon's leader loop and agents do the work.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dcpp_node_agent::docs::{STATUS_PREFIX, ServiceDoc, StackDoc, diff_services, stack_docs};
use dcpp_raft::{Client, Kind, Op, Precondition, Txn};
use dcpp_reconciler::{DesiredState, Mode, Observed, ServiceSpec, ServiceStatus, Task, TaskState};
use dcpp_runtime::container::volume::VolumeStore;

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
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub files: FileArgs,
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
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
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
    Ls,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// List services with running/desired replicas.
    Ls,
    /// Tasks of one service (`stack_service`, or a service name unique across stacks).
    Ps { service: String },
    /// The stored service document as JSON.
    Inspect { service: String },
    /// Change a service's image (a rolling update per its update_config).
    Update {
        service: String,
        #[arg(long)]
        image: String,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Go back to the service's previous spec (a rolling update to it).
    Rollback {
        service: String,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Set replica counts: `web=5 api=2`.
    Scale {
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(short = 'd', long)]
        detach: bool,
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Print one JSON object per event.
    #[arg(long)]
    pub json: bool,
}

/// `dcpp events`: stack, service and task changes as they happen (until interrupted).
pub fn run_events(global: &Global, args: EventsArgs) -> anyhow::Result<u8> {
    use futures::StreamExt;
    let c = client(global)?;
    block_on(async move {
        let since = c.status().await?.revision;
        let mut s = Box::pin(c.watch(since, None));
        while let Some(ev) = s.next().await {
            let ev = ev?;
            let o = &ev.object;
            if !matches!(
                o.kind,
                Kind::Stack | Kind::Service | Kind::Task | Kind::Node
            ) {
                continue;
            }
            if args.json {
                println!("{}", serde_json::to_string(&ev)?);
                continue;
            }
            let what = match (ev.event_type, o.kind) {
                (dcpp_raft::EventType::Delete, _) => "deleted".to_string(),
                (_, Kind::Task) => match o.decode::<Task>() {
                    Ok(t) => format!(
                        "{} {} desired={:?}{}",
                        t.name(),
                        t.state,
                        t.desired,
                        t.error.map(|e| format!(" error={e:?}")).unwrap_or_default()
                    ),
                    Err(_) => "updated".into(),
                },
                _ => "updated".into(),
            };
            println!("{} {}/{} {what}", ev.revision, o.kind, o.id);
        }
        Ok(0)
    })
}

/// `90s`, `5m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

pub fn load(files: &FileArgs) -> anyhow::Result<Option<dcpp_spec::Project>> {
    let opts = dcpp_spec::LoadOptions {
        files: files.files.clone(),
        project_name: files.project_name.clone(),
        profiles: vec![],
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
            Ok(Some(l.project))
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
pub async fn stored_services(
    c: &Client,
    stack: &str,
) -> anyhow::Result<BTreeMap<String, ServiceDoc>> {
    let mut out = BTreeMap::new();
    for o in c.list(Kind::Service).await?.objects {
        let d: ServiceDoc = o.decode()?;
        if d.spec.stack == stack {
            out.insert(d.spec.name.clone(), d);
        }
    }
    Ok(out)
}

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
    let Some(project) = load(&args.files)? else {
        return Ok(1);
    };
    let (mut stack, services) = stack_docs(&project, &source_of(&args.files))?;
    let global = global.clone();
    block_on(async move {
        let c = if args.dry_run {
            client(&global)?
        } else {
            connect_or_start(&global).await?
        };
        let old = match c.status().await {
            Ok(_) => stored_services(&c, &stack.name).await?,
            Err(_) if args.dry_run => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        let new: BTreeMap<String, ServiceDoc> = services
            .into_iter()
            .map(|d| (d.spec.name.clone(), d))
            .collect();
        let changes = diff_services(&old, &new);
        let effective = changes
            .iter()
            .filter(|ch| {
                args.prune || !matches!(ch, dcpp_node_agent::docs::ServiceChange::Removed { .. })
            })
            .count();
        let stored_stack = c.get_as::<StackDoc>(Kind::Stack, &stack.name).await.ok();
        if changes.is_empty() {
            println!("stack {}: no changes", stack.name);
        } else {
            println!("stack {}:", stack.name);
            for ch in &changes {
                let note = match ch {
                    dcpp_node_agent::docs::ServiceChange::Removed { .. } if !args.prune => {
                        " (kept; --prune removes it)"
                    }
                    _ => "",
                };
                println!("  {ch}{note}");
            }
        }
        if args.dry_run {
            return Ok(0);
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

/// Writes the stack and its changed services in one transaction; writes nothing when neither
/// the services nor the stack's provenance changed.
pub async fn store_stack(
    c: &Client,
    stack: &mut StackDoc,
    old: &BTreeMap<String, ServiceDoc>,
    new: &BTreeMap<String, ServiceDoc>,
    stored: Option<&StackDoc>,
    prune: bool,
    effective: usize,
) -> anyhow::Result<()> {
    let unchanged_stack = stored.is_some_and(|s| s.hash == stack.hash && s.source == stack.source);
    if effective == 0 && unchanged_stack {
        return Ok(());
    }
    if let Some(s) = stored
        && effective == 0
    {
        // Only provenance changed: keep the stack's original apply time.
        stack.applied_at_ms = s.applied_at_ms;
    }
    let mut txn = Txn::new().op(Op::put(Kind::Stack, stack.name.clone(), &*stack)?);
    for (name, d) in new {
        match old.get(name) {
            Some(o) if o == d => {}
            Some(o) => {
                txn = txn
                    .op(Op::put(Kind::Config, previous_key(&d.id().0), o)?)
                    .op(Op::put(Kind::Service, d.id().0, d)?);
            }
            None => txn = txn.op(Op::put(Kind::Service, d.id().0, d)?),
        }
    }
    if prune {
        for (name, d) in old {
            if !new.contains_key(name) {
                txn = txn.op(Op::delete(Kind::Service, d.id().0));
            }
        }
    }
    c.txn(&txn).await?;
    Ok(())
}

/// `Kind::Config` id of the service document an update replaced (what `service rollback`
/// restores).
fn previous_key(service_id: &str) -> String {
    dcpp_node_agent::docs::previous_key(&dcpp_reconciler::ServiceId(service_id.to_string()))
}

/// `Kind::Config` id of the service document an automatic rollback rejected.
fn rejected_key(service_id: &str) -> String {
    dcpp_node_agent::docs::rejected_key(&dcpp_reconciler::ServiceId(service_id.to_string()))
}

/// Deletes a stack and its services in one transaction.
pub async fn delete_stack(c: &Client, name: &str) -> anyhow::Result<usize> {
    let old = stored_services(c, name).await?;
    let mut txn = Txn::new().op(Op::delete(Kind::Stack, name.to_string()));
    for d in old.values() {
        txn = txn.op(Op::delete(Kind::Service, d.id().0));
    }
    c.txn(&txn).await?;
    for d in old.values() {
        let _ = c.delete(Kind::Config, &previous_key(&d.id().0)).await;
        let _ = c.delete(Kind::Config, &rejected_key(&d.id().0)).await;
    }
    Ok(old.len())
}

pub fn run_diff(global: &Global, args: DiffArgs) -> anyhow::Result<u8> {
    let Some(project) = load(&args.files)? else {
        return Ok(1);
    };
    let (stack, services) = stack_docs(&project, "")?;
    let c = client(global)?;
    block_on(async move {
        let old = stored_services(&c, &stack.name).await?;
        let new: BTreeMap<String, ServiceDoc> = services
            .into_iter()
            .map(|d| (d.spec.name.clone(), d))
            .collect();
        let changes = diff_services(&old, &new);
        for ch in &changes {
            println!("{ch}");
        }
        Ok(if changes.is_empty() { 0 } else { 2 })
    })
}

/// The node records and tasks as the leader sees them, for [`progress`] of global services
/// (drained, paused and down nodes don't count).
async fn observed_nodes(c: &Client, tasks: &[Task]) -> anyhow::Result<Observed> {
    let mut obs = Observed::default();
    let now = dcpp_node_agent::docs::now_ms();
    for o in c.list(Kind::Node).await?.objects {
        let n: dcpp_raft::NodeInfo = o.decode()?;
        obs.add_node(dcpp_node_agent::leader::convert_node(&n, now));
    }
    obs.tasks = tasks.iter().map(|t| (t.id, t.clone())).collect();
    Ok(obs)
}

/// Convergence of one service: (running tasks of the current spec, desired replicas).
fn progress(
    d: &ServiceDoc,
    st: Option<&ServiceStatus>,
    tasks: &[Task],
    nodes: &Observed,
) -> (usize, usize) {
    let version = st.map(|s| s.spec.version).unwrap_or(d.spec.version);
    let desired = dcpp_reconciler::desired_slots(&d.id(), &d.spec, nodes).len();
    let running = tasks
        .iter()
        .filter(|t| {
            t.service == d.id()
                && t.desired == DesiredState::Running
                && t.state == TaskState::Running
                && t.spec_version == version
        })
        .count();
    (running, desired)
}

/// After the first service fails, how long the others get to reach a verdict too, so that
/// services failing together (containers that all exit at once) are all reported.
const FAIL_GRACE: Duration = Duration::from_secs(5);

/// Follows until every service has a verdict of [`dcpp_reconciler::verdict`] (the one
/// convergence rule): exit 0 when all converged; 1 with one line per failed service and its
/// reason, or when `timeout` passes with one line per service still pending.
async fn follow(c: &Client, services: &[ServiceDoc], timeout: Duration) -> anyhow::Result<u8> {
    use dcpp_reconciler::{Convergence, ServiceView};
    use futures::{FutureExt, StreamExt};
    let start = Instant::now();
    let mut first_failure: Option<Instant> = None;
    let mut last_line = String::new();
    let mut last_pull: BTreeMap<String, String> = BTreeMap::new();
    // Store changes wake the loop (no fixed polling delay between the last task report and
    // the exit); a bounded wait keeps it going should the watch stream end, and lets the
    // settle window pass.
    let since = c.status().await.map(|s| s.revision).unwrap_or(0);
    let mut changes = Box::pin(c.watch(since, None));
    let mut watching = since > 0;
    loop {
        // Read order matters: an automatic rollback resets the service document and writes
        // the rollout status in one transaction, so a document read first is never newer
        // than the status read after it.
        let mut stored: BTreeMap<String, ServiceSpec> = BTreeMap::new();
        for o in c.list(Kind::Service).await?.objects {
            let d: ServiceDoc = o.decode()?;
            stored.insert(d.id().0, d.spec);
        }
        let mut statuses = BTreeMap::new();
        for o in c.list(Kind::Config).await?.objects {
            if let Some(sid) = o.id.strip_prefix(STATUS_PREFIX) {
                statuses.insert(sid.to_string(), o.decode::<ServiceStatus>()?);
            }
        }
        let tasks: Vec<Task> = c
            .list(Kind::Task)
            .await?
            .objects
            .iter()
            .map(|o| o.decode())
            .collect::<Result<_, _>>()?;
        let nodes = observed_nodes(c, &tasks).await?;
        let now = dcpp_node_agent::docs::now_ms();
        let mut parts = Vec::new();
        let mut failed = Vec::new();
        let mut pending = Vec::new();
        for d in services {
            let sid = d.id();
            let st = statuses.get(&sid.0);
            let (running, desired) = progress(d, st, &tasks, &nodes);
            parts.push(format!("{} {running}/{desired}", d.spec.name));
            let slots = dcpp_reconciler::desired_slots(&sid, &d.spec, &nodes);
            let view = ServiceView {
                applied: &d.spec,
                stored: stored.get(&sid.0),
                status: st,
                tasks: &tasks,
                slots: &slots,
                nodes: &nodes.nodes,
            };
            match dcpp_reconciler::verdict(&view, now) {
                Convergence::Converged => {}
                Convergence::Pending(r) => pending.push((d.spec.name.clone(), r)),
                Convergence::Failed(r) => failed.push((d.spec.name.clone(), r)),
            }
        }
        // One line per image being pulled, whenever its progress changes.
        for t in &tasks {
            if t.state == TaskState::Preparing
                && t.message.starts_with(dcpp_node_agent::pull::PULLING)
                && services.iter().any(|d| d.id() == t.service)
                && last_pull.get(&t.image) != Some(&t.message)
            {
                eprintln!("{}", t.message);
                last_pull.insert(t.image.clone(), t.message.clone());
            }
        }
        let line = parts.join(", ");
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if failed.is_empty() && pending.is_empty() {
            println!("converged in {:.2}s", start.elapsed().as_secs_f64());
            return Ok(0);
        }
        if !failed.is_empty() {
            let since_first = first_failure.get_or_insert_with(Instant::now).elapsed();
            if pending.is_empty() || since_first >= FAIL_GRACE {
                for (name, r) in &failed {
                    eprintln!("service {name}: failed: {r}");
                }
                for (name, r) in &pending {
                    eprintln!("service {name}: not converged: {r}");
                }
                eprintln!("{} of {} service(s) failed", failed.len(), services.len());
                return Ok(1);
            }
        } else {
            first_failure = None;
        }
        if start.elapsed() > timeout {
            eprintln!("timed out after {timeout:?}; pending:");
            for (name, r) in &pending {
                eprintln!("service {name}: {r}");
            }
            return Ok(1);
        }
        if watching {
            match tokio::time::timeout(Duration::from_millis(500), changes.next()).await {
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(_) => watching = false,
            }
            // A burst of writes (an agent reporting many tasks) is read once.
            while let Some(Some(Ok(_))) = changes.next().now_or_never() {}
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
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
        let docs: Vec<ServiceDoc> = stored_services(&c, &name).await?.into_values().collect();
        let n = delete_stack(&c, &name).await?;
        println!("stack {name}: removing {n} service(s)");
        if args.detach {
            return Ok(0);
        }
        let start = Instant::now();
        loop {
            let left = c
                .list(Kind::Task)
                .await?
                .objects
                .iter()
                .filter_map(|o| o.decode::<Task>().ok())
                .filter(|t| t.service.0.starts_with(&format!("{name}_")))
                .count();
            if left == 0 {
                println!("stack {name} removed");
                if args.volumes {
                    return remove_volumes(global, &docs);
                }
                return Ok(0);
            }
            if start.elapsed() > args.timeout {
                eprintln!("timed out: {left} task(s) of {name} still present");
                return Ok(1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// `down --volumes`: removes the stack's volumes from this node's volume store.
fn remove_volumes(global: &Global, docs: &[ServiceDoc]) -> anyhow::Result<u8> {
    let store = VolumeStore::open(global.data_dir.join("volumes"))?;
    let existing: Vec<String> = store.list().into_iter().map(|v| v.name).collect();
    let mut code = 0;
    for v in dcpp_node_agent::options::stack_volumes(docs, &existing) {
        match store.remove(&v, &crate::cmd::volume::users(global, &v)) {
            Ok(()) => println!("volume {v} removed"),
            Err(e) => {
                eprintln!("error: volume {v}: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

async fn all_tasks(c: &Client) -> anyhow::Result<Vec<Task>> {
    let mut v: Vec<Task> = c
        .list(Kind::Task)
        .await?
        .objects
        .iter()
        .map(|o| o.decode())
        .collect::<Result<_, _>>()?;
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

fn print_tasks(tasks: &[&Task]) {
    let mut rows = Vec::new();
    for t in tasks {
        let desired = match t.desired {
            DesiredState::Running => "running",
            DesiredState::Shutdown => "shutdown",
            DesiredState::Remove => "remove",
        };
        let err = t
            .error
            .as_deref()
            .or((!t.message.is_empty()).then_some(t.message.as_str()))
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        rows.push(vec![
            t.name(),
            t.id.to_string(),
            t.image.clone(),
            t.node.as_ref().map(|n| n.0.clone()).unwrap_or("-".into()),
            desired.to_string(),
            t.state.to_string(),
            err.to_string(),
        ]);
    }
    print!(
        "{}",
        table(
            &["NAME", "ID", "IMAGE", "NODE", "DESIRED", "STATE", "ERROR"],
            &rows
        )
    );
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
    let c = client(global)?;
    block_on(async move {
        match cmd {
            StackCommand::Ls => {
                let now = dcpp_node_agent::docs::now_ms();
                let mut rows = Vec::new();
                for o in c.list(Kind::Stack).await?.objects {
                    let s: StackDoc = o.decode()?;
                    let ago = now.saturating_sub(s.applied_at_ms) / 1000;
                    rows.push(vec![
                        s.name,
                        s.services.len().to_string(),
                        s.hash,
                        format!("{ago}s ago"),
                        s.source,
                    ]);
                }
                print!(
                    "{}",
                    table(&["NAME", "SERVICES", "HASH", "APPLIED", "SOURCE"], &rows)
                );
                Ok(0)
            }
        }
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

/// The container version of a compose service, computed the way `ServiceSpec::from_compose`
/// does (a one-service project goes through the same conversion).
fn version_of(svc: &dcpp_spec::Service) -> u64 {
    let p = dcpp_spec::Project {
        name: "x".into(),
        services: BTreeMap::from([("s".to_string(), svc.clone())]),
        networks: Default::default(),
        volumes: Default::default(),
        configs: Default::default(),
        secrets: Default::default(),
    };
    ServiceSpec::from_compose(&p, "s")
        .map(|s| s.version)
        .unwrap_or_default()
}

pub fn run_service(global: &Global, cmd: ServiceCommand) -> anyhow::Result<u8> {
    let c = client(global)?;
    block_on(async move {
        match cmd {
            ServiceCommand::Ls => {
                let tasks = all_tasks(&c).await?;
                let nodes = observed_nodes(&c, &tasks).await?;
                let mut statuses = BTreeMap::new();
                for o in c.list(Kind::Config).await?.objects {
                    if let Some(sid) = o.id.strip_prefix(STATUS_PREFIX) {
                        statuses.insert(sid.to_string(), o.decode::<ServiceStatus>()?);
                    }
                }
                let mut rows = Vec::new();
                for o in c.list(Kind::Service).await?.objects {
                    let d: ServiceDoc = o.decode()?;
                    let (r, n) = progress(&d, statuses.get(&d.id().0), &tasks, &nodes);
                    let mode = match d.spec.mode {
                        Mode::Global => "global",
                        Mode::Replicated { .. } => "replicated",
                    };
                    rows.push(vec![
                        d.id().0,
                        mode.to_string(),
                        format!("{r}/{n}"),
                        d.spec.image.clone(),
                    ]);
                }
                print!("{}", table(&["NAME", "MODE", "REPLICAS", "IMAGE"], &rows));
                Ok(0)
            }
            ServiceCommand::Ps { service } => {
                let (d, _) = find_service(&c, &service).await?;
                let tasks = all_tasks(&c).await?;
                let shown: Vec<&Task> = tasks.iter().filter(|t| t.service == d.id()).collect();
                print_tasks(&shown);
                Ok(0)
            }
            ServiceCommand::Inspect { service } => {
                let (d, _) = find_service(&c, &service).await?;
                let mut v = serde_json::to_value(&d)?;
                let id = d.id().0;
                // History: the rollout status and the document an automatic rollback rejected.
                if let Ok((st, _)) = c
                    .get_as::<ServiceStatus>(Kind::Config, &format!("{STATUS_PREFIX}{id}"))
                    .await
                    && let Some(u) = st.update
                {
                    v["update_status"] = serde_json::to_value(&u)?;
                }
                if let Ok((r, _)) = c
                    .get_as::<ServiceDoc>(Kind::Config, &rejected_key(&id))
                    .await
                {
                    v["rejected"] = serde_json::to_value(&r)?;
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(0)
            }
            ServiceCommand::Update {
                service,
                image,
                detach,
                timeout,
            } => {
                let (mut d, rev) = find_service(&c, &service).await?;
                let before = d.clone();
                d.service.image = Some(image.clone());
                d.spec.image = image;
                d.spec.version = version_of(&d.service);
                let id = d.id().0;
                let txn = Txn::new()
                    .when(Precondition::ModRevision {
                        kind: Kind::Service,
                        id: id.clone(),
                        revision: rev,
                    })
                    .op(Op::put(Kind::Config, previous_key(&id), &before)?)
                    .op(Op::put(Kind::Service, id.clone(), &d)?);
                c.txn(&txn).await?;
                println!("{id}: updating to {}", d.spec.image);
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
                let status: ServiceStatus = c
                    .get_as(Kind::Config, &format!("{STATUS_PREFIX}{id}"))
                    .await
                    .map(|(s, _)| s)
                    .with_context(|| format!("{id} has no rollout status yet"))?;
                let Some(prev) = status.previous else {
                    if let Some(u) = status
                        .update
                        .as_ref()
                        .filter(|u| u.rolled_back_from.is_some())
                    {
                        bail!(
                            "{id} has no previous spec to roll back to: {} (version {} runs)",
                            u.message,
                            status.spec.version
                        );
                    }
                    bail!("{id} has no previous spec to roll back to");
                };
                let old: Option<ServiceDoc> = c
                    .get_as(Kind::Config, &previous_key(&id))
                    .await
                    .ok()
                    .map(|(s, _)| s);
                // The container settings of the previous spec are stored at each update; if
                // they are missing or belong to another version, only the image goes back.
                // Going back to the previous version makes the orchestrator roll back with
                // the rollback_config of the spec it leaves; the spec left becomes the
                // previous one, so a second rollback goes forward again (as in swarm).
                let back = dcpp_node_agent::docs::rolled_back_doc(&d, old.as_ref(), &prev);
                let txn = Txn::new()
                    .when(Precondition::ModRevision {
                        kind: Kind::Service,
                        id: id.clone(),
                        revision: rev,
                    })
                    .op(Op::put(Kind::Config, previous_key(&id), &d)?)
                    .op(Op::put(Kind::Service, id.clone(), &back)?);
                c.txn(&txn).await?;
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
