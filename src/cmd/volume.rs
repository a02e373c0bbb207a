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
    /// Remove volumes not used by any container, and the cluster's record of where they live.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// For a volume that lives on another node (one that is down or gone): forget where it
        /// lives. Its data stays on that node; the next task that mounts it starts a new, empty
        /// volume wherever it is placed.
        #[arg(long)]
        force: bool,
    },
}

/// What the cluster says about where `name` lives, and this daemon's node id; `None` when no
/// daemon answers (a plain local runtime) or it holds no cluster state (a worker).
fn home_of(global: &Global, name: &str) -> Option<(Option<String>, u64)> {
    let c = crate::cmd::cluster::client(global).ok()?;
    let name = name.to_string();
    crate::cmd::cluster::block_on(async move {
        let me = c.status().await?.node_id;
        let home = match c.get(dcpp_raft::Kind::VolumeHome, &name).await {
            Ok(o) => Some(o.decode::<dcpp_control::schema::VolumeHome>()?.node.0),
            Err(dcpp_raft::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok((home, me))
    })
    .ok()
}

fn forget_home(global: &Global, name: &str) -> anyhow::Result<()> {
    let c = crate::cmd::cluster::client(global)?;
    let name = name.to_string();
    crate::cmd::cluster::block_on(async move {
        c.delete(dcpp_raft::Kind::VolumeHome, &name).await?;
        Ok(())
    })
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
        VolumeCommand::Rm { names, force } => {
            let mut code = 0;
            for n in names {
                let cluster = home_of(global, &n);
                let home = cluster.as_ref().and_then(|(h, _)| h.clone());
                if let (Some(home), Some((_, me))) = (&home, &cluster)
                    && *home != me.to_string()
                {
                    if !force {
                        eprintln!(
                            "error: volume {n} lives on node {home}: remove it there, or forget                              it with --force (its data stays on node {home}; the next task that                              mounts it starts a new, empty volume)"
                        );
                        code = 1;
                        continue;
                    }
                    forget_home(global, &n)?;
                    println!("{n}: forgotten (its data stays on node {home})");
                    continue;
                }
                match store.remove(&n, &users(global, &n)) {
                    Ok(()) => {
                        if home.is_some() {
                            forget_home(global, &n)?;
                        }
                        println!("{n}");
                    }
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
