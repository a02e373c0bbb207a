//! `dcpp logs NAME`: a container's log (unchanged behaviour), or, when NAME is a service
//! (`web` or `stack_web`) with task containers on this machine, the logs of all its replicas
//! merged in time order with compose-style `web.1 | ` prefixes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use dcpp_control::schema::{LABEL_SERVICE, LABEL_SLOT, LABEL_STACK};
use dcpp_runtime::container::{
    ContainerInfo, ContainerManager, ManagerOptions, RuntimeKind, ShimCommand, logs,
};

use crate::Global;
use crate::cmd::container::{TopLogsArgs, run_logs};

pub fn run(global: &Global, args: TopLogsArgs) -> anyhow::Result<u8> {
    let mgr = ContainerManager::open(ManagerOptions {
        data_dir: global.data_dir.clone(),
        cgroup_parent: args.rt.cgroup_parent.clone(),
        runtime: RuntimeKind::parse(&args.rt.runtime),
        shim: ShimCommand::locate().context("locating the dcpp executable")?,
        network_hook: None,
    })?;
    let name = args.logs.container.clone();
    if mgr.resolve(&name).is_ok() {
        return run_logs(global, args);
    }
    if !args.logs.follow
        && let Some(r) = cluster_run(global, &args)
    {
        return r;
    }
    let replicas = service_containers(&mgr, &name);
    if replicas.is_empty() {
        return run_logs(global, args);
    }
    let mut offsets: BTreeMap<String, (String, PathBuf, u64)> = BTreeMap::new();
    let mut merged = Vec::new();
    for c in &replicas {
        let path = mgr.log_path(&c.state.id)?;
        let prefix = prefix_of(c);
        let (entries, offset) = logs::read_snapshot(&path).unwrap_or_default();
        for e in entries {
            merged.push((e.time.clone(), prefix.clone(), e));
        }
        offsets.insert(c.state.id.clone(), (prefix, path, offset));
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = args
        .logs
        .tail
        .map(|t| merged.len().saturating_sub(t))
        .unwrap_or(0);
    let width = offsets.values().map(|(p, _, _)| p.len()).max().unwrap_or(0);
    for (_, p, e) in &merged[skip..] {
        print_line(p, width, e, args.logs.timestamps);
    }
    if !args.logs.follow {
        return Ok(0);
    }
    loop {
        // New replicas (scale up, replacements) join the stream as they appear.
        for c in service_containers(&mgr, &name) {
            if !offsets.contains_key(&c.state.id)
                && let Ok(path) = mgr.log_path(&c.state.id)
            {
                offsets.insert(c.state.id.clone(), (prefix_of(&c), path, 0));
            }
        }
        let width = offsets.values().map(|(p, _, _)| p.len()).max().unwrap_or(0);
        for (prefix, path, off) in offsets.values_mut() {
            if let Ok((entries, next)) = logs::read_from(path, *off) {
                *off = next;
                for e in &entries {
                    print_line(prefix, width, e, args.logs.timestamps);
                }
            }
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn service_containers(mgr: &ContainerManager, name: &str) -> Vec<ContainerInfo> {
    mgr.list()
        .into_iter()
        .filter(|c| {
            let l = &c.state.labels;
            match (l.get(LABEL_STACK), l.get(LABEL_SERVICE)) {
                (Some(st), Some(sv)) => sv == name || format!("{st}_{sv}") == name,
                _ => false,
            }
        })
        .collect()
}

fn prefix_of(c: &ContainerInfo) -> String {
    let l = &c.state.labels;
    format!(
        "{}.{}",
        l.get(LABEL_SERVICE).map(String::as_str).unwrap_or("?"),
        l.get(LABEL_SLOT).map(String::as_str).unwrap_or("?")
    )
}

fn print_line(prefix: &str, width: usize, e: &logs::LogEntry, timestamps: bool) {
    let line = if timestamps {
        format!("{prefix:<width$} | {} {}", e.time, e.log)
    } else {
        format!("{prefix:<width$} | {}", e.log)
    };
    let _ = std::io::stdout().write_all(line.as_bytes());
}

/// One log line of a replica, with the node it came from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// `web.1`
    pub task: String,
    pub node: u64,
    pub time: String,
    pub stream: String,
    pub log: String,
}

/// A member that could not be asked for its lines.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Unreachable {
    pub node: u64,
    pub address: String,
    pub error: String,
}

/// Body of `GET /v1/logs/{service}`: every member's lines, merged in time order.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClusterLogs {
    pub lines: Vec<LogLine>,
    pub unreachable: Vec<Unreachable>,
    /// Members asked (this one included).
    pub members: usize,
}

#[derive(Debug, serde::Deserialize)]
struct TailQuery {
    tail: Option<usize>,
}

/// The daemon's log routes: `/v1/node/logs/{service}` (this node's replicas; a manager's or an
/// admin's certificate may call it, a worker's may not) and `/v1/logs/{service}` (every
/// member's, fanned out by this daemon with its own certificate).
pub fn routes(data_dir: PathBuf) -> axum::Router<dcpp_raft::Node> {
    use axum::routing::get;
    axum::Router::new()
        .route("/v1/node/logs/{service}", get(node_logs))
        .route("/v1/logs/{service}", get(cluster_logs))
        .layer(axum::Extension(std::sync::Arc::new(data_dir)))
}

fn local_lines(data_dir: &std::path::Path, service: &str, node: u64) -> Vec<LogLine> {
    let Ok(mgr) = ContainerManager::open(ManagerOptions {
        data_dir: data_dir.to_path_buf(),
        // Only listed and read: the parent is never touched.
        cgroup_parent: "dcpp".into(),
        runtime: RuntimeKind::parse("dcpp"),
        shim: match ShimCommand::locate() {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        },
        network_hook: None,
    }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in service_containers(&mgr, service) {
        let Ok(path) = mgr.log_path(&c.state.id) else {
            continue;
        };
        let (entries, _) = logs::read_snapshot(&path).unwrap_or_default();
        let task = prefix_of(&c);
        out.extend(entries.into_iter().map(|e| LogLine {
            task: task.clone(),
            node,
            time: e.time,
            stream: e.stream,
            log: e.log,
        }));
    }
    out
}

fn tail(mut lines: Vec<LogLine>, n: Option<usize>) -> Vec<LogLine> {
    lines.sort_by(|a, b| a.time.cmp(&b.time));
    let skip = n.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
    lines.split_off(skip)
}

async fn node_logs(
    axum::extract::State(node): axum::extract::State<dcpp_raft::Node>,
    axum::Extension(dir): axum::Extension<std::sync::Arc<PathBuf>>,
    axum::extract::Path(service): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<TailQuery>,
) -> axum::Json<Vec<LogLine>> {
    let me = node.id();
    let lines = tokio::task::spawn_blocking(move || local_lines(&dir, &service, me))
        .await
        .unwrap_or_default();
    axum::Json(tail(lines, q.tail))
}

async fn cluster_logs(
    axum::extract::State(node): axum::extract::State<dcpp_raft::Node>,
    axum::Extension(dir): axum::Extension<std::sync::Arc<PathBuf>>,
    axum::extract::Path(service): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<TailQuery>,
) -> Result<axum::Json<ClusterLogs>, dcpp_raft::api::HttpError> {
    let me = node.id();
    let members = node.status()?.members;
    let mut out = ClusterLogs {
        members: members.len(),
        ..ClusterLogs::default()
    };
    let path = format!(
        "/v1/node/logs/{}{}",
        dcpp_raft::api::encode_path(&service),
        q.tail.map(|t| format!("?tail={t}")).unwrap_or_default()
    );
    let mut asks = Vec::new();
    for m in members.iter().filter(|m| m.id != me) {
        let http = node.member_http();
        let url = format!("https://{}{path}", m.address);
        let (id, address) = (m.id, m.address.clone());
        asks.push(async move {
            let Some(http) = http else {
                return Err((id, address, "this node has no certificate".to_string()));
            };
            let resp = http
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .map_err(|e| (id, address.clone(), e.to_string()))?;
            dcpp_raft::api::decode_response::<Vec<LogLine>>(resp)
                .await
                .map_err(|e| (id, address, e.to_string()))
        });
    }
    let svc = service.clone();
    let local = tokio::task::spawn_blocking(move || local_lines(&dir, &svc, me));
    let mut lines = local.await.unwrap_or_default();
    for r in futures::future::join_all(asks).await {
        match r {
            Ok(l) => lines.extend(l),
            Err((node, address, error)) => out.unreachable.push(Unreachable {
                node,
                address,
                error,
            }),
        }
    }
    out.lines = tail(lines, q.tail);
    Ok(axum::Json(out))
}

/// `dcpp logs SERVICE` (without `-f`) in a cluster of several members: every node's replicas
/// through the daemon, `web.1@2 | …` (task @ node id); each member that could not be asked is
/// named on stderr and makes the exit code 1. `None`: no daemon, or a one-member cluster (the
/// local files say it all).
fn cluster_run(global: &Global, args: &TopLogsArgs) -> Option<anyhow::Result<u8>> {
    let c = crate::cmd::cluster::client(global).ok()?;
    let path = format!(
        "/v1/logs/{}{}",
        dcpp_raft::api::encode_path(&args.logs.container),
        args.logs
            .tail
            .map(|t| format!("?tail={t}"))
            .unwrap_or_default()
    );
    let got: ClusterLogs =
        crate::cmd::cluster::block_on(async move { Ok(c.get_route(&path).await?) }).ok()?;
    if got.members < 2 {
        return None;
    }
    let label = |l: &LogLine| format!("{}@{}", l.task, l.node);
    let width = got.lines.iter().map(|l| label(l).len()).max().unwrap_or(0);
    for l in &got.lines {
        let e = logs::LogEntry {
            log: l.log.clone(),
            stream: l.stream.clone(),
            time: l.time.clone(),
        };
        print_line(&label(l), width, &e, args.logs.timestamps);
    }
    let _ = std::io::stdout().flush();
    for u in &got.unreachable {
        eprintln!(
            "error: node {} ({}) could not be reached; its replicas' logs are missing: {}",
            u.node, u.address, u.error
        );
    }
    Some(Ok(if got.unreachable.is_empty() { 0 } else { 1 }))
}
