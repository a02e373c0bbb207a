//! `dcpp watch DIR`: GitOps from the command line (the loop is `dcpp_control::gitops`; the
//! daemon runs the same loop with `--watch DIR`).

use std::path::PathBuf;

use crate::Global;
use crate::cmd::cluster::{block_on, client};

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Directory of compose files (one stack per file).
    pub dir: PathBuf,
}

pub fn run(global: &Global, args: WatchArgs) -> anyhow::Result<u8> {
    let c = client(global)?;
    block_on(async move {
        dcpp_control::gitops::watch_loop(c, args.dir).await?;
        Ok(0)
    })
}
