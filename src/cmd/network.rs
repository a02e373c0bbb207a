//! `dcpp network ls|inspect|rm|prune`: the networks of the dcpp instance using `--data-dir`.
//!
//! The instance's interface prefix, address pool and nft table are read from its state (the
//! daemon saves them), so these commands touch exactly that instance's bridges and rules; the
//! flags below only matter for a data dir no daemon has used yet, and the daemon flattens the
//! same [`InstanceArgs`] to choose them. Exit codes: 0 success, 1 error.

use std::io::Write;

use anyhow::Context;
use dcpp_runtime::network::{DEFAULT_POOLS, NetworkInfo, NetworkManager, NetworkOptions};

use crate::Global;

/// Networks of the local dcpp instance.
#[derive(Debug, clap::Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    pub command: NetworkCommand,
    #[command(flatten)]
    pub instance: InstanceArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// List networks.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only print network names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show networks with their containers and published ports (JSON).
    Inspect {
        /// Names or id prefixes.
        #[arg(required = true)]
        networks: Vec<String>,
        #[arg(long, value_enum, default_value = "json")]
        format: crate::cmd::apply::JsonOnly,
    },
    /// Remove networks; a network with containers is refused.
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every network without containers.
    Prune,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// What makes one dcpp instance's networking distinct on a shared machine.
#[derive(Debug, Clone, clap::Args)]
pub struct InstanceArgs {
    /// Prefix of bridge and veth names (1-6 of a-z0-9).
    #[arg(
        long,
        global = true,
        env = "DCPP_BRIDGE_PREFIX",
        default_value = "dcpp"
    )]
    pub bridge_prefix: String,
    /// Address pools networks take their subnets from, as the daemon's --network-pool
    /// (`CIDR/SIZE`, comma-separated).
    #[arg(long, global = true, env = "DCPP_ADDRESS_POOL", default_value = DEFAULT_POOLS)]
    pub address_pool: String,
    /// nftables table (family ip) owned by this instance.
    #[arg(long, global = true, env = "DCPP_NFT_TABLE", default_value = "dcpp")]
    pub nft_table: String,
    /// Masquerade outbound traffic of non-internal networks.
    #[arg(long, global = true, env = "DCPP_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
}

impl InstanceArgs {
    /// Options for a manager under `global.data_dir` (DNS on port 53).
    pub fn options(&self, global: &Global) -> anyhow::Result<NetworkOptions> {
        let mut o = NetworkOptions::new(&global.data_dir);
        o.bridge_prefix = self.bridge_prefix.clone();
        o.pools =
            dcpp_runtime::network::parse_pools(&[&self.address_pool]).context("--address-pool")?;
        o.nft_table = self.nft_table.clone();
        o.masquerade = self.masquerade;
        Ok(o)
    }
}

pub fn run(global: &Global, args: NetworkArgs) -> anyhow::Result<u8> {
    let opts = match NetworkOptions::saved(&global.data_dir)? {
        Some(o) => o,
        None => NetworkOptions {
            dns: None,
            ..args.instance.options(global)?
        },
    };
    let mgr = NetworkManager::open(opts)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        NetworkCommand::Ls { format, quiet } => {
            let nets = mgr.list()?;
            if quiet {
                for n in &nets {
                    writeln!(out, "{}", n.network.name)?;
                }
            } else if format == Format::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&nets)?)?;
            } else {
                write_table(&mut out, &nets)?;
            }
        }
        NetworkCommand::Inspect {
            networks,
            format: _,
        } => {
            let mut found = Vec::new();
            let mut failed = false;
            for n in &networks {
                match mgr.inspect(n) {
                    Ok(i) => found.push(i),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?;
            if failed {
                return Ok(1);
            }
        }
        NetworkCommand::Rm { networks } => {
            let mut failed = false;
            for n in &networks {
                match mgr.remove_network(n) {
                    Ok(()) => writeln!(out, "{n}")?,
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(1);
            }
        }
        NetworkCommand::Prune => {
            for n in mgr.prune()? {
                writeln!(out, "{n}")?;
            }
        }
    }
    Ok(0)
}

fn write_table(out: &mut impl Write, nets: &[NetworkInfo]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12}  {:<24}  {:<8}  {:<18}  {:<8}  {:>10}",
        "NETWORK ID", "NAME", "BRIDGE", "SUBNET", "INTERNAL", "CONTAINERS"
    )?;
    for n in nets {
        let r = &n.network;
        writeln!(
            out,
            "{:<12}  {:<24}  {:<8}  {:<18}  {:<8}  {:>10}",
            r.id,
            r.name,
            r.bridge,
            r.subnet.to_string(),
            if r.internal { "yes" } else { "no" },
            n.endpoints.len()
        )?;
    }
    Ok(())
}
