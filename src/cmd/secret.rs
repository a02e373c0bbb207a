//! `dcpp secret …` and `dcpp configs …` (plural, since `dcpp config` is compose's verb that
//! prints the model), and what `apply` does with a project's secrets and configs: it stores
//! their data (a new version only when it changed) and mounts the stored version.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use dcpp_control::files::{FileDoc, Plain, PutFile, PutOutcome, kind_of};
use dcpp_control::schema::ServiceDoc;
use dcpp_raft::Client;
use dcpp_reconciler::FileKind;

use crate::Global;
use crate::cmd::cluster::{Format, block_on, client};

#[derive(Debug, clap::Subcommand)]
pub enum FileCommand {
    /// List them with their current version and the services that mount them.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show one (its versions and users; never the data).
    Inspect(InspectArgs),
    /// Create one from a file (`-` for stdin).
    Create(CreateArgs),
    /// Store a new version from a file; the services that mount it roll to it.
    Update(CreateArgs),
    /// Remove one; refused while a service mounts it.
    #[command(alias = "remove")]
    Rm(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// The file holding the data (`-`: stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Labels as KEY=VALUE (repeatable).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
}

/// What `inspect` and `ls --format json` print of one.
#[derive(Debug, serde::Serialize)]
struct Shown {
    kind: FileKind,
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<String>,
    created_ms: u64,
    version: u64,
    size: u64,
    updated_ms: u64,
    /// Versions still kept (the current one, and those a service or its history mounts).
    versions: Vec<u64>,
    services: Vec<String>,
}

async fn shown(c: &Client, d: FileDoc) -> anyhow::Result<Shown> {
    let services = dcpp_control::files::users(c, d.kind, &d.name).await?;
    let cur = d.current();
    Ok(Shown {
        kind: d.kind,
        version: cur.map_or(0, |v| v.version),
        size: cur.map_or(0, |v| v.size),
        updated_ms: cur.map_or(d.created_ms, |v| v.created_ms),
        versions: d.versions.iter().map(|v| v.version).collect(),
        name: d.name,
        labels: d.labels,
        stack: d.stack,
        created_ms: d.created_ms,
        services,
    })
}

fn read_data(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("reading stdin")?;
        return Ok(b);
    }
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

fn path(kind: FileKind, name: &str) -> String {
    format!("/v1/files/{kind}/{}", dcpp_raft::api::encode_path(name))
}

pub fn run(global: &Global, kind: FileKind, cmd: FileCommand) -> anyhow::Result<u8> {
    let c = client(global)?;
    block_on(async move {
        match cmd {
            FileCommand::Ls(a) => {
                let mut rows = Vec::new();
                for o in c.list(kind_of(kind)).await?.objects {
                    rows.push(shown(&c, o.decode()?).await?);
                }
                if a.format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                    return Ok(0);
                }
                println!("{:<32} {:>7} {:>8}  SERVICES", "NAME", "VERSION", "SIZE");
                for r in rows {
                    println!(
                        "{:<32} {:>7} {:>8}  {}",
                        r.name,
                        r.version,
                        r.size,
                        r.services.join(",")
                    );
                }
                Ok(0)
            }
            FileCommand::Inspect(a) => {
                let d: FileDoc = c.get(kind_of(kind), &a.name).await?.decode()?;
                println!("{}", serde_json::to_string_pretty(&shown(&c, d).await?)?);
                Ok(0)
            }
            FileCommand::Create(a) => put_cli(&c, kind, a, true).await,
            FileCommand::Update(a) => put_cli(&c, kind, a, false).await,
            FileCommand::Rm(a) => {
                c.delete_route::<serde_json::Value>(&path(kind, &a.name))
                    .await?;
                println!("{}", a.name);
                Ok(0)
            }
        }
    })
}

async fn put_cli(c: &Client, kind: FileKind, a: CreateArgs, create: bool) -> anyhow::Result<u8> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let put = PutFile {
        data: Plain(read_data(&a.file)?),
        labels,
        create,
        update: !create,
        roll: !create,
        ..PutFile::default()
    };
    let out: PutOutcome = c.post_route(&path(kind, &a.name), &put).await?;
    if out.changed {
        println!("{} version {}", a.name, out.version);
    } else {
        println!("{} version {} (unchanged)", a.name, out.version);
    }
    for s in &out.rolled {
        println!("{s}: updating to {} version {}", a.name, out.version);
    }
    Ok(0)
}

/// Stores the data of the secrets and configs the project's services mount (each a new version
/// only if it changed; none with `dry_run`, which only asks which version it would be) and sets
/// the stored version in each service's spec. Without a daemon (`dry_run` only) the versions
/// stay unknown (0).
pub async fn store_project_files(
    c: Option<&Client>,
    loaded: &dcpp_spec::Loaded,
    services: Vec<ServiceDoc>,
    dry_run: bool,
) -> anyhow::Result<Vec<ServiceDoc>> {
    let p = &loaded.project;
    let mut versions: BTreeMap<(FileKind, String), u64> = BTreeMap::new();
    for (kind, objects) in [
        (FileKind::Secret, &p.secrets),
        (FileKind::Config, &p.configs),
    ] {
        for (key, o) in objects {
            let name = o
                .name
                .clone()
                .unwrap_or_else(|| format!("{}_{key}", p.name));
            let Some(c) = c else { continue };
            let version = if o.external {
                match c.get(kind_of(kind), &name).await {
                    Ok(obj) => obj.decode::<FileDoc>()?.current().map_or(0, |v| v.version),
                    Err(dcpp_raft::Error::NotFound { .. }) => bail!(
                        "external {kind} {name} not found (create it with `dcpp {} create {name} -f FILE`)",
                        dcpp_control::files::cli_noun(kind)
                    ),
                    Err(e) => return Err(e.into()),
                }
            } else {
                let data = if let Some(content) = &o.content {
                    content.clone().into_bytes()
                } else if let Some(f) = &o.file {
                    std::fs::read(f).with_context(|| format!("{kind} {key}: reading {f}"))?
                } else if let Some(var) = &o.environment {
                    loaded
                        .source_env
                        .0
                        .get(var)
                        .with_context(|| {
                            format!("{kind} {key}: environment variable {var} is not set")
                        })?
                        .clone()
                        .into_bytes()
                } else {
                    bail!("{kind} {key}: no `file`, `environment` or `content`");
                };
                let put = PutFile {
                    data: Plain(data),
                    labels: o.labels.clone(),
                    stack: Some(p.name.clone()),
                    dry_run,
                    ..PutFile::default()
                };
                let out: PutOutcome = c.post_route(&path(kind, &name), &put).await?;
                if out.changed && !dry_run {
                    println!("{kind} {name}: version {}", out.version);
                }
                out.version
            };
            versions.insert((kind, name), version);
        }
    }
    Ok(services
        .into_iter()
        .map(|mut d| {
            d.spec = d
                .spec
                .with_file_versions(|k, n| versions.get(&(k, n.to_string())).copied().unwrap_or(0));
            d
        })
        .collect())
}
