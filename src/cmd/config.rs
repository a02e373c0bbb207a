//! `dcpp config` and `dcpp schema`.

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {}

#[derive(Debug, clap::Args)]
pub struct SchemaArgs {}

pub fn run_config(_global: &Global, _args: ConfigArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`dcpp config` is not built yet")
}

pub fn run_schema(_global: &Global, _args: SchemaArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`dcpp schema` is not built yet")
}
