//! One module per command group; each turns parsed arguments into calls on the library crates.

pub mod agent;
pub mod apply;
pub mod cluster;
pub mod config;
pub mod container;
pub mod daemon;
pub mod image;
pub mod logs;
pub mod network;
pub mod node;
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
        Command::Daemon(args) => daemon::run(&cli.global, args),
        Command::Cluster(args) => cluster::run(&cli.global, args),
        Command::Node(args) => node::run(&cli.global, args),
        Command::Network(args) => network::run(&cli.global, args),
        Command::Container(args) => container::run(&cli.global, *args),
        Command::Logs(args) => logs::run(&cli.global, args),
        Command::Volume(args) => volume::run(&cli.global, args),
        Command::Apply(args) => apply::run_apply(&cli.global, args),
        Command::Diff(args) => apply::run_diff(&cli.global, args),
        Command::Down(args) => apply::run_down(&cli.global, args),
        Command::Ps(args) => apply::run_ps(&cli.global, args),
        Command::Stack(args) => apply::run_stack(&cli.global, args),
        Command::Service(args) => apply::run_service(&cli.global, args),
        Command::Watch(args) => watch::run(&cli.global, args),
        Command::Events(args) => apply::run_events(&cli.global, args),
    }
}
