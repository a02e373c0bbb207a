//! `dcpp watch DIR`: GitOps from the command line (the loop is `dcpp_control::gitops`; the
//! daemon runs the same loop with `--watch DIR`). `build:` is built as `dcpp apply` builds
//! it: on the daemon that answers, the image looked up (and pushed) from this data dir.

use std::path::PathBuf;
use std::sync::Arc;

use dcpp_control::images::{BuildSpec, BuilderError, ImageBuilder};
use dcpp_runtime::image::ImageStore;
use dcpp_runtime::image::registry::{RegistryClient, RegistryOptions};

use crate::Global;
use crate::cmd::cluster::{block_on, client};
use crate::cmd::container::RuntimeOpts;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub rt: RuntimeOpts,
    /// Directory of compose files (one stack per file).
    pub dir: PathBuf,
}

pub fn run(global: &Global, args: WatchArgs) -> anyhow::Result<u8> {
    let c = client(global)?;
    let builder = Arc::new(CliBuilder {
        global: global.clone(),
        rt: args.rt,
    });
    block_on(async move {
        dcpp_control::gitops::watch_loop(c, args.dir, builder).await?;
        Ok(0)
    })
}

/// `dcpp apply`'s way of building, for watch.
struct CliBuilder {
    global: Global,
    rt: RuntimeOpts,
}

impl CliBuilder {
    fn store(&self) -> Result<ImageStore, BuilderError> {
        Ok(ImageStore::open(&self.global.data_dir.join("images"))?)
    }
}

impl ImageBuilder for CliBuilder {
    fn present(&self, image: &str) -> Result<Option<String>, BuilderError> {
        Ok(self
            .store()?
            .resolve(image)
            .ok()
            .map(|i| i.manifest_digest.to_string()))
    }

    fn build(
        &self,
        spec: &BuildSpec,
        progress: &mut dyn FnMut(&str),
    ) -> Result<String, BuilderError> {
        let opts = crate::cmd::build::build_options(spec);
        let built = crate::cmd::build::build_image(&self.global, &self.rt, &opts, progress)?;
        Ok(built.manifest_digest)
    }

    fn push(&self, image: &str) -> Result<String, BuilderError> {
        let client = RegistryClient::new(self.store()?, RegistryOptions::default());
        let d = tokio::runtime::Handle::current().block_on(client.push(image, None, None))?;
        Ok(d.to_string())
    }
}
