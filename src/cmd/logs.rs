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
    if let Some(r) = cluster_run(global, &args) {
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
        if print_line(p, width, e, args.logs.timestamps).is_err() {
            return Ok(0);
        }
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
                    // The reader went away (`| head`): nothing left to follow for.
                    if print_line(prefix, width, e, args.logs.timestamps).is_err() {
                        return Ok(0);
                    }
                }
            }
        }
        if std::io::stdout().flush().is_err() {
            return Ok(0);
        }
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

fn print_line(
    prefix: &str,
    width: usize,
    e: &logs::LogEntry,
    timestamps: bool,
) -> std::io::Result<()> {
    let line = if timestamps {
        format!("{prefix:<width$} | {} {}", e.time, e.log)
    } else {
        format!("{prefix:<width$} | {}", e.log)
    };
    std::io::stdout().write_all(line.as_bytes())
}

/// One log line of a replica, with the node it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
    /// Only lines stamped at or after this time (RFC 3339, as the log files hold them).
    since: Option<String>,
}

impl TailQuery {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(t) = self.tail {
            q.push(format!("tail={t}"));
        }
        if let Some(s) = &self.since {
            q.push(format!("since={}", dcpp_raft::api::encode_path(s)));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
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

fn local_lines(
    data_dir: &std::path::Path,
    service: &str,
    node: u64,
    since: Option<&str>,
) -> Vec<LogLine> {
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
        let entries = entries
            .into_iter()
            .filter(|e| since.is_none_or(|s| e.time.as_str() >= s));
        out.extend(entries.map(|e| LogLine {
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
    let since = q.since.clone();
    let lines =
        tokio::task::spawn_blocking(move || local_lines(&dir, &service, me, since.as_deref()))
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
        q.query()
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
    let since = q.since.clone();
    let local = tokio::task::spawn_blocking(move || local_lines(&dir, &svc, me, since.as_deref()));
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

/// `dcpp logs [-f] SERVICE` in a cluster of several members: every node's replicas through
/// the daemon, `web.1@2 | …` (task @ node id). Without `-f`, each member that could not be
/// asked is named on stderr and makes the exit code 1. With `-f` the daemon is asked again
/// every [`FOLLOW_POLL`] for the lines since the last one shown, so replicas that start
/// anywhere join the stream; a member is named on stderr when it stops answering and when it
/// answers again. `None`: no daemon, or a one-member cluster (the local files say it all).
fn cluster_run(global: &Global, args: &TopLogsArgs) -> Option<anyhow::Result<u8>> {
    let c = crate::cmd::cluster::client(global).ok()?;
    let service = dcpp_raft::api::encode_path(&args.logs.container);
    let first = TailQuery {
        tail: args.logs.tail,
        since: None,
    };
    let ask = |q: &TailQuery| -> anyhow::Result<ClusterLogs> {
        let path = format!("/v1/logs/{service}{}", q.query());
        let c = c.clone();
        crate::cmd::cluster::block_on(async move { Ok(c.get_route(&path).await?) })
    };
    let got = ask(&first).ok()?;
    if got.members < 2 {
        return None;
    }
    let label = |l: &LogLine| format!("{}@{}", l.task, l.node);
    let mut width = 0;
    let mut show = |lines: &[LogLine]| -> std::io::Result<()> {
        width = lines.iter().map(|l| label(l).len()).fold(width, usize::max);
        for l in lines {
            let e = logs::LogEntry {
                log: l.log.clone(),
                stream: l.stream.clone(),
                time: l.time.clone(),
            };
            print_line(&label(l), width, &e, args.logs.timestamps)?;
        }
        std::io::stdout().flush()
    };
    if show(&got.lines).is_err() {
        return Some(Ok(0));
    }
    let say = |u: &Unreachable| {
        eprintln!(
            "error: node {} ({}) could not be reached; its replicas' logs are missing: {}",
            u.node, u.address, u.error
        );
    };
    if !args.logs.follow {
        got.unreachable.iter().for_each(say);
        return Some(Ok(if got.unreachable.is_empty() { 0 } else { 1 }));
    }
    got.unreachable.iter().for_each(say);
    let mut cursor = Cursor::default();
    cursor.advance(&got.lines);
    let mut down: std::collections::BTreeSet<u64> =
        got.unreachable.iter().map(|u| u.node).collect();
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let q = TailQuery {
            tail: None,
            since: cursor.since.clone(),
        };
        let Ok(got) = ask(&q) else {
            continue;
        };
        let now: std::collections::BTreeSet<u64> = got.unreachable.iter().map(|u| u.node).collect();
        for u in got.unreachable.iter().filter(|u| !down.contains(&u.node)) {
            say(u);
        }
        for n in down.difference(&now) {
            eprintln!("node {n} answers again; its replicas' lines follow");
        }
        down = now;
        let fresh = cursor.fresh(got.lines);
        if show(&fresh).is_err() {
            return Some(Ok(0));
        }
        cursor.advance(&fresh);
    }
}

/// How often `logs -f` asks the daemon for the lines of every node.
const FOLLOW_POLL: Duration = Duration::from_millis(300);

/// Where `logs -f` is in the merged stream: the time of the last line shown and the lines
/// shown with exactly that time (asked again, since the query includes it).
#[derive(Debug, Default)]
struct Cursor {
    since: Option<String>,
    at_since: std::collections::HashSet<LogLine>,
}

impl Cursor {
    /// `lines` (in time order) without those already shown.
    fn fresh(&self, lines: Vec<LogLine>) -> Vec<LogLine> {
        lines
            .into_iter()
            .filter(|l| {
                self.since.as_deref().is_none_or(|s| l.time.as_str() > s)
                    || (Some(l.time.as_str()) == self.since.as_deref()
                        && !self.at_since.contains(l))
            })
            .collect()
    }

    fn advance(&mut self, shown: &[LogLine]) {
        let Some(last) = shown.iter().map(|l| l.time.as_str()).max() else {
            return;
        };
        if self.since.as_deref() != Some(last) {
            self.at_since.clear();
            self.since = Some(last.to_string());
        }
        self.at_since
            .extend(shown.iter().filter(|l| l.time == last).cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(task: &str, time: &str, log: &str) -> LogLine {
        LogLine {
            task: task.into(),
            node: 1,
            time: time.into(),
            stream: "stdout".into(),
            log: log.into(),
        }
    }

    #[test]
    fn the_follow_cursor_shows_each_line_once_also_lines_sharing_a_time() {
        let mut c = Cursor::default();
        let first = vec![line("web.1", "t1", "a\n"), line("web.2", "t2", "b\n")];
        assert_eq!(c.fresh(first.clone()), first);
        c.advance(&first);
        assert_eq!(c.since.as_deref(), Some("t2"));
        // Asked again from t2: its line again, and one more stamped t2 by another replica.
        let again = vec![
            line("web.2", "t2", "b\n"),
            line("web.1", "t2", "c\n"),
            line("web.1", "t3", "d\n"),
        ];
        let fresh = c.fresh(again);
        assert_eq!(
            fresh,
            [line("web.1", "t2", "c\n"), line("web.1", "t3", "d\n")]
        );
        c.advance(&fresh);
        assert_eq!(c.since.as_deref(), Some("t3"));
        assert_eq!(c.fresh(vec![line("web.1", "t3", "d\n")]), []);
        c.advance(&[]);
        assert_eq!(
            c.since.as_deref(),
            Some("t3"),
            "nothing shown keeps the cursor"
        );
    }
}
