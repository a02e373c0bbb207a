//! One module per command group; each turns parsed arguments into calls on the library crates.

pub mod config;
pub mod image;

use crate::{Cli, Command};

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Config(args) => config::run_config(&cli.global, args),
        Command::Schema(args) => config::run_schema(&cli.global, args),
        Command::Image(args) => image::run(&cli.global, args),
    }
}
