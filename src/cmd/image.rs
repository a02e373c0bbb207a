//! `dcpp image …`.

use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List images.
    Ls,
}

pub fn run(_global: &Global, _cmd: ImageCommand) -> anyhow::Result<u8> {
    anyhow::bail!("`dcpp image` is not built yet")
}
