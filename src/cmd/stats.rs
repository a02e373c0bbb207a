//! `dcpp stats [SERVICE|CONTAINER…]`: a live table of the running containers' usage, like
//! `docker stats` — CPU %, memory (working set) against its limit, network and block I/O,
//! PIDs — refreshed every second; `--no-stream` prints once, `--format json` one JSON object
//! per container and refresh (JSON lines).
//!
//! The daemon reads the figures (the same cgroup and netns counters as `/metrics`):
//! `GET /v1/node/stats` answers for this node's containers, `GET /v1/stats` for every
//! member's (fanned out with the daemon's own certificate), so a service's replicas on every
//! node show. CPU % is the CPU time used between two readings over the time between them
//! (100 % is one CPU busy).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dcpp_control::schema::{LABEL_SERVICE, LABEL_STACK, LABEL_TASK};
use dcpp_runtime::container::{NetIo, Stats};
use serde::{Deserialize, Serialize};

use crate::Global;
use crate::cmd::metrics::Metrics;

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Services (`web` or `stack_web`) or containers (name or id prefix); none: all running.
    pub names: Vec<String>,
    /// Print one reading and exit (after a second, to measure CPU %).
    #[arg(long)]
    pub no_stream: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// One running container's counters as a node read them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerStats {
    pub node: u64,
    pub id: String,
    pub name: String,
    pub stack: Option<String>,
    pub service: Option<String>,
    pub task: Option<String>,
    /// When the counters were read (ms since the epoch).
    pub read_at_ms: u64,
    pub stats: Stats,
    pub net: Option<NetIo>,
    /// The node's memory, the bound of a container without a limit.
    pub host_memory_bytes: u64,
}

/// Body of `GET /v1/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStats {
    pub containers: Vec<ContainerStats>,
    /// Members that did not answer, with why.
    pub unreachable: Unanswered,
}

/// Members that did not answer, each with why.
pub type Unanswered = Vec<(u64, String)>;

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let kb = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
                kb.trim().parse::<u64>().ok()
            })
        })
        .unwrap_or(0)
        * 1024
}

fn local(m: &Metrics, node: u64) -> Vec<ContainerStats> {
    let Some(ctr) = m.containers() else {
        return Vec::new();
    };
    let host = host_memory();
    ctr.stats_running()
        .into_iter()
        .map(|(info, stats, net)| {
            let l = &info.state.labels;
            ContainerStats {
                node,
                id: info.state.id.clone(),
                name: info.state.name.clone(),
                stack: l.get(LABEL_STACK).cloned(),
                service: l.get(LABEL_SERVICE).cloned(),
                task: l.get(LABEL_TASK).cloned(),
                read_at_ms: dcpp_control::schema::now_ms(),
                stats,
                net,
                host_memory_bytes: host,
            }
        })
        .collect()
}

/// `/v1/node/stats` and `/v1/stats`.
pub fn routes(m: Arc<Metrics>) -> axum::Router<dcpp_raft::Node> {
    use axum::extract::State;
    use axum::routing::get;
    let m2 = m.clone();
    axum::Router::new()
        .route(
            "/v1/node/stats",
            get(move |State(node): State<dcpp_raft::Node>| {
                let m = m.clone();
                async move {
                    let me = node.id();
                    axum::Json(
                        tokio::task::spawn_blocking(move || local(&m, me))
                            .await
                            .unwrap_or_default(),
                    )
                }
            }),
        )
        .route(
            "/v1/stats",
            get(move |State(node): State<dcpp_raft::Node>| {
                let m = m2.clone();
                async move { cluster(m, node).await }
            }),
        )
}

async fn cluster(
    m: Arc<Metrics>,
    node: dcpp_raft::Node,
) -> Result<axum::Json<ClusterStats>, dcpp_raft::api::HttpError> {
    let me = node.id();
    let members = node.status()?.members;
    let mut asks = Vec::new();
    for mem in members.iter().filter(|x| x.id != me) {
        let http = node.member_http();
        let url = format!("https://{}/v1/node/stats", mem.address);
        let id = mem.id;
        asks.push(async move {
            let http = http.ok_or((id, "this node has no certificate".to_string()))?;
            let resp = http
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .map_err(|e| (id, e.to_string()))?;
            dcpp_raft::api::decode_response::<Vec<ContainerStats>>(resp)
                .await
                .map_err(|e| (id, e.to_string()))
        });
    }
    let mut out = ClusterStats {
        containers: tokio::task::spawn_blocking(move || local(&m, me))
            .await
            .unwrap_or_default(),
        ..Default::default()
    };
    for r in futures::future::join_all(asks).await {
        match r {
            Ok(c) => out.containers.extend(c),
            Err(e) => out.unreachable.push(e),
        }
    }
    Ok(axum::Json(out))
}

/// Whether `c` is one of `names` (a service by name or `stack_name`, a container by name or
/// id prefix); no names: every container.
fn selected(c: &ContainerStats, names: &[String]) -> bool {
    names.is_empty() || names.iter().any(|n| {
        c.name == *n
            || (n.len() >= 4 && c.id.starts_with(n.as_str()))
            || c.service.as_deref() == Some(n.as_str())
            || matches!((&c.stack, &c.service), (Some(st), Some(sv)) if format!("{st}_{sv}") == *n)
    })
}

/// A row of the output: figures of one reading, CPU % against the reading before.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub node: u64,
    pub id: String,
    pub name: String,
    pub stack: Option<String>,
    pub service: Option<String>,
    pub task: Option<String>,
    pub cpu_percent: f64,
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_working_set_bytes: u64,
    pub memory_limit_bytes: u64,
    pub memory_percent: f64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub pids: u64,
}

/// Rows of `now`, CPU % from `before` (the same container's earlier reading).
pub fn rows(before: &[ContainerStats], now: &[ContainerStats]) -> Vec<Row> {
    let prev: BTreeMap<&str, &ContainerStats> = before.iter().map(|c| (c.id.as_str(), c)).collect();
    now.iter()
        .map(|c| {
            let cpu_percent = prev
                .get(c.id.as_str())
                .filter(|p| c.read_at_ms > p.read_at_ms)
                .map(|p| {
                    let used = c.stats.cpu_usage_ns.saturating_sub(p.stats.cpu_usage_ns) as f64;
                    used / ((c.read_at_ms - p.read_at_ms) as f64 * 1e6) * 100.0
                })
                .unwrap_or(0.0);
            let limit = c.stats.memory_limit_bytes.unwrap_or(c.host_memory_bytes);
            let ws = c.stats.memory_working_set_bytes;
            Row {
                node: c.node,
                id: c.id.clone(),
                name: c.name.clone(),
                stack: c.stack.clone(),
                service: c.service.clone(),
                task: c.task.clone(),
                cpu_percent,
                cpu_usage_ns: c.stats.cpu_usage_ns,
                memory_usage_bytes: c.stats.memory_usage_bytes,
                memory_working_set_bytes: ws,
                memory_limit_bytes: limit,
                memory_percent: if limit > 0 {
                    ws as f64 / limit as f64 * 100.0
                } else {
                    0.0
                },
                net_rx_bytes: c.net.map(|n| n.rx_bytes).unwrap_or(0),
                net_tx_bytes: c.net.map(|n| n.tx_bytes).unwrap_or(0),
                block_read_bytes: c.stats.blkio_read_bytes,
                block_write_bytes: c.stats.blkio_write_bytes,
                pids: c.stats.pids_current,
            }
        })
        .collect()
}

/// Bytes the way `docker stats` prints them (binary units for memory, decimal for I/O).
fn human(n: u64, binary: bool) -> String {
    let (base, units): (f64, &[&str]) = if binary {
        (1024.0, &["B", "KiB", "MiB", "GiB", "TiB"])
    } else {
        (1000.0, &["B", "kB", "MB", "GB", "TB"])
    };
    let mut v = n as f64;
    let mut i = 0;
    while v >= base && i + 1 < units.len() {
        v /= base;
        i += 1;
    }
    if i == 0 {
        format!("{n}{}", units[0])
    } else {
        format!("{v:.2}{}", units[i])
    }
}

fn print(rows: &[Row], format: Format, clear: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = String::new();
    match format {
        Format::Json => {
            for r in rows {
                out.push_str(&serde_json::to_string(r)?);
                out.push('\n');
            }
        }
        Format::Table => {
            if clear {
                // Home and clear, as `docker stats` redraws.
                out.push_str("\x1b[2J\x1b[H");
            }
            let mut t = crate::cmd::container::Table::new(&[
                "CONTAINER ID",
                "NAME",
                "NODE",
                "CPU %",
                "MEM USAGE / LIMIT",
                "MEM %",
                "NET I/O",
                "BLOCK I/O",
                "PIDS",
            ]);
            for r in rows {
                t.add_row([
                    r.id.chars().take(12).collect(),
                    r.name.clone(),
                    r.node.to_string(),
                    format!("{:.2}%", r.cpu_percent),
                    format!(
                        "{} / {}",
                        human(r.memory_working_set_bytes, true),
                        human(r.memory_limit_bytes, true)
                    ),
                    format!("{:.2}%", r.memory_percent),
                    format!(
                        "{} / {}",
                        human(r.net_rx_bytes, false),
                        human(r.net_tx_bytes, false)
                    ),
                    format!(
                        "{} / {}",
                        human(r.block_read_bytes, false),
                        human(r.block_write_bytes, false)
                    ),
                    r.pids.to_string(),
                ]);
            }
            out.push_str(&t.render());
        }
    }
    let mut so = std::io::stdout().lock();
    so.write_all(out.as_bytes())?;
    so.flush()?;
    Ok(())
}

pub fn run(global: &Global, args: StatsArgs) -> anyhow::Result<u8> {
    let c = crate::cmd::cluster::client(global)?;
    // The containers of one reading, and the members that did not answer it.
    let read = || -> anyhow::Result<(Vec<ContainerStats>, Unanswered)> {
        let c = c.clone();
        let got: ClusterStats =
            crate::cmd::cluster::block_on(async move { Ok(c.get_route("/v1/stats").await?) })?;
        let mut v: Vec<_> = got
            .containers
            .into_iter()
            .filter(|x| selected(x, &args.names))
            .collect();
        v.sort_by(|a, b| (&a.name, a.node).cmp(&(&b.name, b.node)));
        Ok((v, got.unreachable))
    };
    let unanswered = |gone: &Unanswered| {
        for (node, e) in gone {
            eprintln!("node {node} did not answer: {e}");
        }
    };
    let (mut before, gone) = read()?;
    if !args.names.is_empty() && before.is_empty() {
        // What is missing may run on a node that did not answer.
        unanswered(&gone);
        anyhow::bail!(
            "no running container or service replica named {}",
            args.names.join(", ")
        );
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let (now, gone) = read()?;
        print(&rows(&before, &now), args.format, !args.no_stream)?;
        // After the rows: a refreshed table clears the screen first.
        unanswered(&gone);
        if args.no_stream {
            return Ok(0);
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(id: &str, at: u64, cpu_ns: u64) -> ContainerStats {
        ContainerStats {
            node: 1,
            id: id.into(),
            name: format!("s_web.{id}"),
            stack: Some("s".into()),
            service: Some("web".into()),
            task: Some("7".into()),
            read_at_ms: at,
            stats: Stats {
                cpu_usage_ns: cpu_ns,
                memory_working_set_bytes: 16 << 20,
                memory_limit_bytes: Some(64 << 20),
                ..Default::default()
            },
            net: None,
            host_memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time_and_memory_is_against_the_limit() {
        let r = rows(&[reading("a", 1000, 0)], &[reading("a", 2000, 500_000_000)]);
        assert!(
            (r[0].cpu_percent - 50.0).abs() < 1e-9,
            "{}",
            r[0].cpu_percent
        );
        assert!((r[0].memory_percent - 25.0).abs() < 1e-9);
        // A container without an earlier reading shows 0 %.
        let r = rows(&[], &[reading("b", 2000, 500_000_000)]);
        assert_eq!(r[0].cpu_percent, 0.0);
        assert!(selected(&reading("a", 0, 0), &["web".into()]));
        assert!(selected(&reading("a", 0, 0), &["s_web".into()]));
        assert!(!selected(&reading("a", 0, 0), &["db".into()]));
        assert_eq!(human(3 << 20, true), "3.00MiB");
        assert_eq!(human(1500, false), "1.50kB");
    }
}
