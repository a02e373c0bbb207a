//! One module per command group; each turns parsed arguments into calls on the library crates.

pub mod agent;
pub mod apply;
pub mod build;
pub mod build_route;
pub mod cluster;
pub mod config;
pub mod container;
pub mod daemon;
pub mod duration;
pub mod image;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod node;
pub mod secret;
pub mod show;
pub mod stats;
pub mod version;
pub mod volume;
pub mod watch;

use crate::{Cli, Command};

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    // Whatever a command writes into a data dir (tokens, specs, logs, layers) is root's alone
    // from its first byte; the two commands below only print.
    if !matches!(cli.command, Command::Config(_) | Command::Schema(_)) {
        dcpp_runtime::datadir::restrict_umask();
    }
    match cli.command {
        Command::Config(args) => config::run_config(&cli.global, args),
        Command::Schema(args) => config::run_schema(&cli.global, args),
        Command::Image(args) => image::run(&cli.global, args),
        Command::Daemon(args) => daemon::run(&cli.global, *args),
        Command::Cluster(args) => cluster::run(&cli.global, args),
        Command::Node(args) => node::run(&cli.global, args),
        Command::Network(args) => network::run(&cli.global, args),
        Command::Container(args) => container::run(&cli.global, *args),
        Command::Logs(args) => logs::run(&cli.global, args),
        Command::Volume(args) => volume::run(&cli.global, args),
        Command::Secret(args) => secret::run(&cli.global, dcpp_reconciler::FileKind::Secret, args),
        Command::Configs(args) => secret::run(&cli.global, dcpp_reconciler::FileKind::Config, args),
        Command::Apply(args) => apply::run_apply(&cli.global, args),
        Command::Diff(args) => apply::run_diff(&cli.global, args),
        Command::Down(args) => apply::run_down(&cli.global, args),
        Command::Ps(args) => apply::run_ps(&cli.global, args),
        Command::Stack(args) => apply::run_stack(&cli.global, args),
        Command::Service(args) => apply::run_service(&cli.global, args),
        Command::Watch(args) => watch::run(&cli.global, args),
        Command::Stats(args) => stats::run(&cli.global, args),
        Command::Events(args) => apply::run_events(&cli.global, args),
        Command::Version(args) => version::run(&cli.global, args),
    }
}

/// The message an error is shown with. A request that found no daemon becomes one line that
/// names the address, where it came from (`-H`, `DCPP_HOST` or the default) and how to start a
/// daemon, instead of the HTTP client's transport error.
pub fn explain(host: Option<&str>, err: &anyhow::Error) -> String {
    // A control-plane error wraps the store's transparently (its source is the store error's
    // source), so both are looked for.
    let transport = err.chain().any(|e| {
        matches!(e.downcast_ref(), Some(dcpp_raft::Error::Transport(_)))
            || matches!(
                e.downcast_ref(),
                Some(dcpp_control::Error::Store(dcpp_raft::Error::Transport(_)))
            )
    });
    if !transport {
        return format!("{err:#}");
    }
    let addr = host
        .map(str::to_string)
        .unwrap_or_else(|| format!("unix://{}", daemon::DEFAULT_SOCKET));
    let Ok(ep) = dcpp_raft::Endpoint::parse(&addr) else {
        return format!("{err:#}");
    };
    let answers = match &ep {
        dcpp_raft::Endpoint::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
        dcpp_raft::Endpoint::Tcp(a) => {
            use std::net::ToSocketAddrs;
            a.to_socket_addrs().ok().into_iter().flatten().any(|sa| {
                std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(2)).is_ok()
            })
        }
    };
    if answers {
        return format!("{err:#}");
    }
    let from = match host {
        Some(h) if std::env::var("DCPP_HOST").is_ok_and(|e| e == h) => "from DCPP_HOST",
        Some(_) => "from -H/--host",
        None => "the default; set DCPP_HOST or -H to use another",
    };
    let start = match &ep {
        dcpp_raft::Endpoint::Unix(p) if host.is_none() => format!(
            "start one with `dcpp daemon` (it listens on {})",
            p.display()
        ),
        dcpp_raft::Endpoint::Unix(p) => {
            format!("start one with `dcpp daemon --socket {}`", p.display())
        }
        dcpp_raft::Endpoint::Tcp(a) => {
            format!("start one there with `dcpp daemon --listen {a}`, or check the address")
        }
    };
    format!("no dcpp daemon answers at {addr} ({from}); {start}")
}
