//! `dcpp version`: this binary's version and the daemon's (exit 1 when no daemon answers,
//! after printing the client's).

use serde::Serialize;

use crate::Global;
use crate::cmd::cluster::{Format, block_on, client};

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Serialize)]
struct Versions {
    client: String,
    daemon: Option<dcpp_raft::api::VersionInfo>,
    /// Why the daemon's version is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(global: &Global, args: VersionArgs) -> anyhow::Result<u8> {
    let c = client(global)?;
    let daemon = block_on(async move { Ok(c.version().await) })?;
    let (daemon, error) = match daemon {
        Ok(v) => (Some(v), None),
        Err(e) => (
            None,
            Some(crate::cmd::explain(global.host.as_deref(), &e.into())),
        ),
    };
    let v = Versions {
        client: env!("CARGO_PKG_VERSION").to_string(),
        daemon,
        error,
    };
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("Client: dcpp {}", v.client);
        match &v.daemon {
            Some(d) => println!("Daemon: dcpp {} (API {})", d.version, d.api),
            None => println!("Daemon: -"),
        }
    }
    if let Some(e) = &v.error {
        eprintln!("error: {e}");
        return Ok(1);
    }
    Ok(0)
}
