//! `dcpp volume …`: named volumes of the local runtime.

use dcpp_runtime::container::volume::VolumeStore;

use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume.
    Create { name: String },
    /// List volumes.
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: crate::cmd::cluster::Format,
    },
    /// Show volumes (JSON).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, value_enum, default_value = "json")]
        format: crate::cmd::apply::JsonOnly,
    },
    /// Remove volumes not used by any container.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Names of the containers (of this data dir) whose state references `volume`.
pub(crate) fn users(global: &Global, volume: &str) -> Vec<String> {
    let dir = global.data_dir.join("containers");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|d| serde_json::from_slice::<dcpp_runtime::container::ContainerState>(&d).ok())
        .filter(|s| s.volumes.iter().any(|v| v == volume))
        .map(|s| s.name)
        .collect()
}

pub fn run(global: &Global, cmd: VolumeCommand) -> anyhow::Result<u8> {
    let store = VolumeStore::open(global.data_dir.join("volumes"))?;
    match cmd {
        VolumeCommand::Create { name } => {
            store.ensure(&name)?;
            println!("{name}");
        }
        VolumeCommand::Ls { quiet, format } => {
            if format == crate::cmd::cluster::Format::Json && !quiet {
                println!("{}", serde_json::to_string_pretty(&store.list())?);
                return Ok(0);
            }
            if !quiet {
                println!("VOLUME NAME");
            }
            for v in store.list() {
                println!("{}", v.name);
            }
        }
        VolumeCommand::Inspect { names, format: _ } => {
            let mut out = Vec::new();
            for n in names {
                out.push(store.inspect(&n)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { names } => {
            let mut code = 0;
            for n in names {
                match store.remove(&n, &users(global, &n)) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
    }
    Ok(0)
}
