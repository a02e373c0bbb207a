//! `dcpp`: the thin binary — CLI parsing and daemon wiring. All logic lives in the workspace crates.

mod cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Declarative container orchestrator: compose files as replicated desired state.
#[derive(Debug, Parser)]
#[command(name = "dcpp", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands; each daemon instance takes its own values so several can
/// run side by side on one machine.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Directory holding images, containers, volumes and the raft store.
    #[arg(
        long,
        global = true,
        env = "DCPP_DATA_DIR",
        default_value = "/var/lib/dcpp"
    )]
    pub data_dir: PathBuf,
    /// Daemon address, e.g. unix:///run/dcpp/dcpp.sock.
    #[arg(short = 'H', long = "host", global = true, env = "DCPP_HOST")]
    pub host: Option<String>,
    /// Log filter (tracing env-filter syntax); also read from RUST_LOG.
    #[arg(long, global = true, env = "DCPP_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate compose files and print the canonical model.
    Config(cmd::config::ConfigArgs),
    /// Print the JSON Schema of the canonical model.
    Schema(cmd::config::SchemaArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Run this machine's cluster member (Raft node and API).
    Daemon(Box<cmd::daemon::DaemonArgs>),
    /// Create, join, leave and inspect the cluster.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// List and inspect cluster nodes.
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// List, inspect and remove container networks.
    Network(cmd::network::NetworkArgs),
    /// Run and manage containers on this machine (docker's low-level commands).
    Container(Box<cmd::container::ContainerArgs>),
    /// Print a container's log (as `dcpp container logs`), or a service's replicas merged.
    Logs(cmd::container::TopLogsArgs),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(cmd::volume::VolumeCommand),
    /// Manage secrets (compose `secrets:`), stored sealed and versioned.
    #[command(subcommand, alias = "secrets")]
    Secret(cmd::secret::FileCommand),
    /// Manage configs (compose `configs:`); plural because `dcpp config` prints the model.
    #[command(subcommand)]
    Configs(cmd::secret::FileCommand),
    /// Store a stack from compose files and follow it until it runs.
    Apply(cmd::apply::ApplyArgs),
    /// Print how compose files differ from the stored stack (exit 0 same, 2 different).
    Diff(cmd::apply::DiffArgs),
    /// Remove a stack and wait for its containers to go.
    Down(cmd::apply::DownArgs),
    /// List the tasks of all stacks.
    Ps(cmd::apply::PsArgs),
    /// Applied stacks.
    #[command(subcommand)]
    Stack(cmd::apply::StackCommand),
    /// Services of applied stacks.
    #[command(subcommand)]
    Service(cmd::apply::ServiceCommand),
    /// Live resource usage of running containers (a service's replicas on every node).
    Stats(cmd::stats::StatsArgs),
    /// Stream stack, service, task and node changes.
    Events(cmd::apply::EventsArgs),
    /// Keep one stack per compose file of a directory applied (GitOps).
    Watch(cmd::watch::WatchArgs),
    /// Print the client's and the daemon's versions.
    Version(cmd::version::VersionArgs),
}

fn main() -> std::process::ExitCode {
    // The per-container monitor re-executes this binary: dispatch before anything else starts
    // (no threads, no runtime), since it forks and unshares.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__shim") {
        dcpp_runtime::container::shim::main(std::env::args_os().skip(2).collect());
    }
    let cli = Cli::parse();
    // Like any Unix filter, `dcpp … | head` ends quietly when the reader goes away, instead of
    // panicking in `println!` on EPIPE. Not for the long-running commands: they talk to
    // sockets and must see a closed peer as an error, not die of it.
    if !matches!(cli.command, Command::Daemon(_) | Command::Watch(_)) {
        dcpp_runtime::process::default_sigpipe();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.global.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let host = cli.global.host.clone();
    match cmd::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", cmd::explain(host.as_deref(), &err));
            std::process::ExitCode::from(1)
        }
    }
}
