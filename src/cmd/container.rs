//! `dcpp container …` and `dcpp logs`: docker's low-level container commands on the local runtime.
//!
//! Exit codes: `run` (foreground) exits with the container's code; 125 when dcpp itself failed
//! to create or start the container (as docker does); other commands 0 on success, 1 on error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use dcpp_runtime::container::{
    ContainerInfo, ContainerManager, CreateOptions, ExecRequest, IMAGE_ID_LABEL, ImageInput,
    ManagerOptions, MountRequest, MountSource, NetworkMode, RuntimeKind, ShimCommand, Status,
    Ulimit, logs,
};
use dcpp_runtime::image::{Digest, ImageStore};

use crate::Global;

/// Runtime options shared by the container commands; each daemon instance takes its own.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeOpts {
    /// OCI runtime that runs the bundles: `dcpp` (built-in), `runc`, `crun`, `youki` or a path.
    #[arg(long, global = true, env = "DCPP_RUNTIME", default_value = "dcpp")]
    pub runtime: String,
    /// cgroup under which containers are placed (`<parent>/<id>`).
    #[arg(
        long,
        global = true,
        env = "DCPP_CGROUP_PARENT",
        default_value = "dcpp"
    )]
    pub cgroup_parent: String,
}

#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    #[command(flatten)]
    pub rt: RuntimeOpts,
    #[command(subcommand)]
    pub cmd: ContainerCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ContainerCommand {
    /// Create and start a container (foreground unless -d).
    Run(RunArgs),
    /// Create a container without starting it; prints its id.
    Create(CreateArgs),
    /// Start created containers.
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop containers: stop signal, then SIGKILL after the timeout.
    Stop {
        /// Seconds to wait before SIGKILL (default: the container's stop grace period).
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill running containers first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    Ls {
        /// Include stopped containers.
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show containers' details (JSON).
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
        #[arg(long, value_enum, default_value = "json")]
        format: crate::cmd::apply::JsonOnly,
    },
    /// Print a container's log.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Show resource usage.
    Stats {
        #[arg(required = true)]
        containers: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Follow the log.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Prefix each line with its time stamp.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Debug, clap::Args)]
pub struct TopLogsArgs {
    #[command(flatten)]
    pub rt: RuntimeOpts,
    #[command(flatten)]
    pub logs: LogsArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long = "workdir")]
    workdir: Option<String>,
    /// uid[:gid]
    #[arg(short, long)]
    user: Option<String>,
    /// Accepted for docker compatibility (stdin is always attached).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Refused: dcpp allocates no terminal (an error rather than a silent drop).
    #[arg(short = 't', long)]
    tty: bool,
    container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run in the background and print the id.
    #[arg(short, long)]
    detach: bool,
    #[command(flatten)]
    create: CreateArgs,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[arg(long)]
    name: Option<String>,
    /// KEY=VALUE (or KEY to take it from this environment).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// SRC:DST[:ro] — SRC is a host path (absolute) or a volume name.
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// DST[:size=N]
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Accepted; published ports are handled by networking.
    #[arg(short, long = "publish")]
    publish: Vec<String>,
    /// `none`, `host`, `container:NAME|ID` (join that running container's network namespace),
    /// or a network name (a private namespace; interfaces come from networking).
    #[arg(long, default_value = "default")]
    network: String,
    /// Memory limit (e.g. 32m, 1g).
    #[arg(short, long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(short = 'c', long)]
    cpu_shares: Option<u64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    #[arg(long)]
    shm_size: Option<String>,
    /// name=soft[:hard]
    #[arg(long)]
    ulimit: Vec<String>,
    /// Namespaced kernel parameter, KEY=VALUE (e.g. net.core.somaxconn=1024).
    #[arg(long)]
    sysctl: Vec<String>,
    /// name, uid, name:group or uid:gid
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(long)]
    read_only: bool,
    #[arg(long)]
    cap_add: Vec<String>,
    #[arg(long)]
    cap_drop: Vec<String>,
    #[arg(long)]
    privileged: bool,
    /// Run an init as PID 1 that forwards signals and reaps zombies.
    #[arg(long)]
    init: bool,
    #[arg(long)]
    stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[arg(long)]
    stop_timeout: Option<u64>,
    #[arg(short, long = "label")]
    label: Vec<String>,
    /// Accepted for docker compatibility.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Refused: dcpp allocates no terminal (an error rather than a silent drop).
    #[arg(short = 't', long)]
    tty: bool,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Parses docker's size notation: `1024`, `512k`, `32m`, `1.5g` (binary units).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().with_context(|| {
        format!("invalid size {s:?}: expected a number with an optional k/m/g suffix")
    })?;
    if !(v.is_finite() && v >= 0.0) {
        bail!("invalid size {s:?}");
    }
    Ok((v * mult as f64) as u64)
}

fn manager(global: &Global, rt: &RuntimeOpts) -> anyhow::Result<ContainerManager> {
    Ok(ContainerManager::open(ManagerOptions {
        data_dir: global.data_dir.clone(),
        cgroup_parent: rt.cgroup_parent.clone(),
        runtime: RuntimeKind::parse(&rt.runtime),
        shim: ShimCommand::locate().context("locating the dcpp executable")?,
        network_hook: None,
    })?)
}

fn build_options(global: &Global, a: &CreateArgs) -> anyhow::Result<(CreateOptions, String)> {
    let store = ImageStore::open(&global.data_dir.join("images"))?;
    let img = store
        .resolve(&a.image)
        .with_context(|| format!("image {}", a.image))?;
    let mut o = CreateOptions::new(ImageInput::from_local(&img));
    o.name = a.name.clone();
    if !a.command.is_empty() {
        o.command = Some(a.command.clone());
    }
    if let Some(ep) = &a.entrypoint {
        o.entrypoint = Some(if ep.is_empty() {
            vec![]
        } else {
            vec![ep.clone()]
        });
    }
    for e in &a.env {
        if e.contains('=') {
            o.env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            o.env.push(format!("{e}={v}"));
        }
    }
    for v in &a.volume {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, m] if *m == "ro" || *m == "rw" => (*s, *d, *m == "ro"),
            _ => bail!("invalid volume {v:?}: expected SRC:DST[:ro]"),
        };
        let source = if src.starts_with('/') {
            MountSource::Bind(PathBuf::from(src))
        } else {
            MountSource::Volume(src.to_string())
        };
        o.mounts.push(MountRequest {
            source,
            target: dst.to_string(),
            read_only: ro,
        });
    }
    for t in &a.tmpfs {
        let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
        let size = opts
            .split(',')
            .find_map(|o| o.strip_prefix("size="))
            .map(parse_size)
            .transpose()?;
        o.mounts.push(MountRequest {
            source: MountSource::Tmpfs(size),
            target: dst.to_string(),
            read_only: false,
        });
    }
    if !a.publish.is_empty() {
        tracing::warn!("-p is accepted but published ports need a network driver; ignored here");
    }
    o.network = match a.network.as_str() {
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        n => match n.strip_prefix("container:") {
            Some("") => bail!("invalid network {n:?}: expected container:NAME or container:ID"),
            Some(target) => NetworkMode::Container(target.to_string()),
            None => NetworkMode::Private,
        },
    };
    o.memory = a.memory.as_deref().map(parse_size).transpose()?;
    o.shm_size = a.shm_size.as_deref().map(parse_size).transpose()?;
    o.cpus = a.cpus;
    o.cpu_shares = a.cpu_shares;
    o.pids_limit = a.pids_limit;
    for u in &a.ulimit {
        let (name, vals) = u
            .split_once('=')
            .with_context(|| format!("invalid ulimit {u:?}: expected name=soft[:hard]"))?;
        let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
        let n = |s: &str| {
            s.parse::<u64>()
                .with_context(|| format!("invalid ulimit value {s:?} in {u:?}"))
        };
        o.ulimits.push(Ulimit {
            name: name.to_string(),
            soft: n(soft)?,
            hard: n(hard)?,
        });
    }
    for kv in &a.sysctl {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("invalid sysctl {kv:?}: expected KEY=VALUE"))?;
        o.sysctls.insert(k.to_string(), v.to_string());
    }
    o.user = a.user.clone();
    o.working_dir = a.workdir.clone();
    o.hostname = a.hostname.clone();
    o.read_only = a.read_only;
    o.cap_add = a.cap_add.clone();
    o.cap_drop = a.cap_drop.clone();
    o.privileged = a.privileged;
    o.init = a.init;
    o.stop_signal = a.stop_signal.clone();
    o.stop_grace_period = a.stop_timeout.map(Duration::from_secs);
    o.auto_remove = a.rm;
    let mut labels = BTreeMap::new();
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    labels.insert(IMAGE_ID_LABEL.to_string(), img.id.to_string());
    o.labels = labels;
    Ok((o, img.id.to_string()))
}

fn create(
    global: &Global,
    mgr: &ContainerManager,
    a: &CreateArgs,
    foreground: bool,
) -> anyhow::Result<ContainerInfo> {
    if a.tty {
        anyhow::bail!("{NO_TTY}");
    }
    let (mut o, image_id) = build_options(global, a)?;
    // In the foreground the CLI removes the container itself after printing its output; the
    // monitor removes detached ones.
    if foreground {
        o.auto_remove = false;
    }
    let info = mgr.create(&o)?;
    // Hold the image while the container exists (best effort: the image store may be busy).
    if let Ok(store) = ImageStore::open(&global.data_dir.join("images"))
        && let Ok(id) = Digest::parse(&image_id)
    {
        let _ = store.add_holder(&id, &info.state.id);
    }
    Ok(info)
}

fn release_image(global: &Global, info: &ContainerInfo) {
    if let Some(id) = info
        .state
        .labels
        .get(IMAGE_ID_LABEL)
        .and_then(|d| Digest::parse(d).ok())
        && let Ok(store) = ImageStore::open(&global.data_dir.join("images"))
    {
        let _ = store.remove_holder(&id, &info.state.id);
    }
}

/// Why `-t` is refused.
const NO_TTY: &str = "-t/--tty: dcpp does not allocate terminals; run without -t (output goes to the container's logs and, in the foreground, to this terminal)";

pub fn run(global: &Global, args: ContainerArgs) -> anyhow::Result<u8> {
    let mgr = manager(global, &args.rt)?;
    match args.cmd {
        ContainerCommand::Run(a) => {
            let info = match create(global, &mgr, &a.create, !a.detach) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(125);
                }
            };
            let id = info.state.id.clone();
            if let Err(e) = mgr.start(&id) {
                eprintln!("error: {e:#}");
                let _ = mgr.remove(&id, true);
                release_image(global, &info);
                return Ok(125);
            }
            if a.detach {
                println!("{id}");
                return Ok(0);
            }
            follow_logs(&mgr, &id, None, false, true)?;
            let exit = mgr.wait(&id, None)?;
            if a.create.rm {
                let _ = mgr.remove(&id, true);
                release_image(global, &info);
            }
            let code = exit.map(|e| e.exit_code).unwrap_or(-1);
            Ok(u8::try_from(code).unwrap_or(255))
        }
        ContainerCommand::Create(a) => {
            let info = create(global, &mgr, &a, false)?;
            println!("{}", info.state.id);
            Ok(0)
        }
        ContainerCommand::Start { containers } => {
            for c in containers {
                mgr.start(&c)?;
                println!("{c}");
            }
            Ok(0)
        }
        ContainerCommand::Stop { time, containers } => {
            for c in containers {
                mgr.stop(&c, time.map(Duration::from_secs))?;
                println!("{c}");
            }
            Ok(0)
        }
        ContainerCommand::Kill { signal, containers } => {
            let sig = dcpp_runtime::container::parse_signal(&signal)?;
            for c in containers {
                mgr.kill(&c, sig)?;
                println!("{c}");
            }
            Ok(0)
        }
        ContainerCommand::Rm { force, containers } => {
            let mut code = 0;
            for c in containers {
                match mgr
                    .inspect(&c)
                    .and_then(|info| mgr.remove(&c, force).map(|_| info))
                {
                    Ok(info) => {
                        release_image(global, &info);
                        println!("{c}");
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        ContainerCommand::Ls { all, quiet, format } => {
            let list: Vec<ContainerInfo> = mgr
                .list()
                .into_iter()
                .filter(|c| all || matches!(c.status, Status::Running))
                .collect();
            if quiet {
                for c in &list {
                    println!("{}", &c.state.id[..12]);
                }
            } else if matches!(format, Format::Json) {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let mut t = Table::new(&[
                    "CONTAINER ID",
                    "IMAGE",
                    "COMMAND",
                    "CREATED",
                    "STATUS",
                    "NAMES",
                ]);
                for c in &list {
                    let status = match (&c.status, &c.exit) {
                        (Status::Exited, Some(e)) => format!(
                            "exited ({}){}",
                            e.exit_code,
                            if e.oom_killed { " oom" } else { "" }
                        ),
                        (s, _) => s.to_string(),
                    };
                    let mut cmd = c.state.args.join(" ");
                    if cmd.len() > 30 {
                        cmd.truncate(27);
                        cmd.push_str("...");
                    }
                    t.add_row([
                        c.state.id[..12].to_string(),
                        c.state.image.clone(),
                        format!("{cmd:?}"),
                        c.state.created_at.chars().take(19).collect(),
                        status,
                        c.state.name.clone(),
                    ]);
                }
                t.print();
            }
            Ok(0)
        }
        ContainerCommand::Inspect {
            containers,
            format: _,
        } => {
            let mut out = Vec::new();
            for c in containers {
                out.push(mgr.inspect(&c)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        ContainerCommand::Logs(l) => logs_cmd(&mgr, l),
        ContainerCommand::Exec(e) => {
            if e.tty {
                eprintln!("error: {NO_TTY}");
                return Ok(126);
            }
            let user = match &e.user {
                None => None,
                Some(u) => {
                    let (a, b) = u.split_once(':').unwrap_or((u, u));
                    Some((
                        a.parse().context("exec --user takes uid[:gid]")?,
                        b.parse().context("exec --user takes uid[:gid]")?,
                    ))
                }
            };
            let req = ExecRequest {
                args: e.command.clone(),
                env: e.env.clone(),
                cwd: e.workdir.clone(),
                user,
            };
            let status = mgr.exec(&e.container, &req, |_| {})?.wait()?;
            Ok(status.code().map(|c| c as u8).unwrap_or(255))
        }
        ContainerCommand::Stats { containers, format } => {
            let mut rows = Vec::new();
            for c in &containers {
                let info = mgr.inspect(c)?;
                rows.push((
                    info.state.name.clone(),
                    info.state.id[..12].to_string(),
                    mgr.stats(c)?,
                ));
            }
            if matches!(format, Format::Json) {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(n, id, s)| serde_json::json!({"name": n, "id": id, "stats": s}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut t = Table::new(&[
                    "CONTAINER ID",
                    "NAME",
                    "CPU TIME",
                    "MEM USAGE / LIMIT",
                    "PIDS",
                ]);
                for (n, id, s) in rows {
                    let lim = s
                        .memory_limit_bytes
                        .map(|l| format!("{:.1}MiB", l as f64 / 1048576.0))
                        .unwrap_or("-".into());
                    t.add_row([
                        id,
                        n,
                        format!("{:.3}s", s.cpu_usage_ns as f64 / 1e9),
                        format!("{:.1}MiB / {lim}", s.memory_usage_bytes as f64 / 1048576.0),
                        s.pids_current.to_string(),
                    ]);
                }
                t.print();
            }
            Ok(0)
        }
    }
}

/// `dcpp logs NAME` (same as `dcpp container logs`).
pub fn run_logs(global: &Global, args: TopLogsArgs) -> anyhow::Result<u8> {
    let mgr = manager(global, &args.rt)?;
    logs_cmd(&mgr, args.logs)
}

fn logs_cmd(mgr: &ContainerManager, l: LogsArgs) -> anyhow::Result<u8> {
    mgr.inspect(&l.container)?;
    follow_logs(mgr, &l.container, l.tail, l.timestamps, l.follow)?;
    Ok(0)
}

fn print_entry(e: &logs::LogEntry, timestamps: bool) {
    let line = if timestamps {
        format!("{} {}", e.time, e.log)
    } else {
        e.log.clone()
    };
    if e.stream == "stderr" {
        let _ = std::io::stderr().write_all(line.as_bytes());
    } else {
        let _ = std::io::stdout().write_all(line.as_bytes());
    }
}

/// Prints the log (the last `tail` entries); with `follow`, keeps printing until the container
/// has exited and its log is drained.
fn follow_logs(
    mgr: &ContainerManager,
    id: &str,
    tail: Option<usize>,
    timestamps: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let path = mgr.log_path(id)?;
    let (all, mut offset) = logs::read_snapshot(&path)?;
    let skip = tail.map(|t| all.len().saturating_sub(t)).unwrap_or(0);
    for e in &all[skip..] {
        print_entry(e, timestamps);
    }
    if !follow {
        return Ok(());
    }
    loop {
        let done = match mgr.inspect(id) {
            Ok(i) => !matches!(i.status, Status::Running | Status::Created),
            Err(_) => true,
        };
        let (entries, next) = logs::read_from(&path, offset)?;
        offset = next;
        for e in &entries {
            print_entry(e, timestamps);
        }
        let _ = std::io::stdout().flush();
        if done && entries.is_empty() {
            return Ok(());
        }
        // Wakes as soon as the monitor exits (pidfd), else polls the file for new lines.
        if !done {
            let _ = mgr.wait(id, Some(Duration::from_millis(50)));
        }
    }
}

/// A plain left-aligned table like docker's.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub(crate) fn add_row<const N: usize>(&mut self, row: [String; N]) {
        self.rows.push(row.to_vec());
    }

    fn print(&self) {
        print!("{}", self.render());
    }

    pub(crate) fn render(&self) -> String {
        let cols = self.rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("   ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("32m").unwrap(), 32 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("512KB").unwrap(), 512 << 10);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1m").is_err());
    }
}
