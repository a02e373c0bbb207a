//! `dcpp image …`: pull, push, ls, inspect, rm, import, load, prune, tag (build: `build.rs`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use dcpp_runtime::image::registry::{Progress, ProgressFn, RegistryClient, RegistryOptions};
use dcpp_runtime::image::{ImageStore, LocalImage, Platform, rfc3339};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry (`busybox`, `host:port/repo:tag`, `repo@sha256:…`).
    Pull {
        reference: String,
        #[command(flatten)]
        reg: RegistryArgs,
        /// Platform to select from a multi-platform index: os/arch[/variant].
        #[arg(long)]
        platform: Option<String>,
    },
    /// Push a local image to a registry, optionally under another name.
    Push {
        reference: String,
        target: Option<String>,
        #[command(flatten)]
        reg: RegistryArgs,
    },
    /// List images.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only print image ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the stored details of images (JSON).
    Inspect {
        #[arg(required = true)]
        references: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Remove images (a tag of a multi-tagged image is only untagged).
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Make a one-layer image from a root filesystem directory or tar.
    Import { source: PathBuf, reference: String },
    /// Load images from an OCI layout or a `docker save` archive.
    Load {
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Remove unused images, free unreferenced layers and the build cache entries of freed
    /// layers.
    Prune {
        /// Remove all images no container uses, not only untagged ones, and the whole build
        /// cache.
        #[arg(short, long)]
        all: bool,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<crate::cmd::build::BuildArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Registry (host:port) to reach over plain HTTP; loopback registries always are.
    #[arg(long = "insecure-registry")]
    insecure: Vec<String>,
    /// Docker credentials file (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Layers transferred at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        let mut o = RegistryOptions {
            insecure_registries: self.insecure.clone(),
            max_concurrent: self.parallel.max(1),
            ..Default::default()
        };
        if let Some(f) = &self.auth_file {
            o.auth_file = Some(f.clone());
        }
        o
    }
}

fn parse_platform(s: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    anyhow::ensure!(
        (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty()),
        "invalid platform {s:?}: expected os/arch[/variant]"
    );
    Ok(Platform {
        os: parts[0].into(),
        architecture: parts[1].into(),
        variant: parts.get(2).map(|v| v.to_string()),
        os_version: None,
    })
}

pub fn run(global: &Global, cmd: ImageCommand) -> anyhow::Result<u8> {
    let store = ImageStore::open(&global.data_dir.join("images"))?;
    match cmd {
        ImageCommand::Pull {
            reference,
            reg,
            platform,
        } => {
            let mut opts = reg.options();
            if let Some(p) = platform {
                opts.platform = parse_platform(&p)?;
            }
            let client = RegistryClient::new(store, opts);
            let (progress, done) = reporter("pull");
            let img = runtime()?.block_on(client.pull(&reference, Some(progress)));
            done();
            let img = img?;
            println!("{}: pulled {}", reference, img.id);
        }
        ImageCommand::Push {
            reference,
            target,
            reg,
        } => {
            let client = RegistryClient::new(store, reg.options());
            let (progress, done) = reporter("push");
            let d = runtime()?.block_on(client.push(&reference, target.as_deref(), Some(progress)));
            done();
            println!("{}: pushed {}", target.as_deref().unwrap_or(&reference), d?);
        }
        ImageCommand::Ls { format, quiet } => {
            let images = store.list()?;
            if quiet {
                for i in &images {
                    println!("{}", i.id.short());
                }
            } else if format == Format::Json {
                let v: Vec<_> = images.iter().map(summary).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&images);
            }
        }
        ImageCommand::Inspect { references, format } => {
            let mut out = Vec::new();
            for r in &references {
                out.push(store.resolve(r)?);
            }
            if format == Format::Table {
                print_table(&out);
            } else {
                let v: Vec<_> = out.iter().map(|i| details(&store, i)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        ImageCommand::Rm { references } => {
            let mut failed = false;
            for r in &references {
                match store.remove(r) {
                    Ok(rep) => {
                        for t in rep.untagged {
                            println!("Untagged: {t}");
                        }
                        for d in rep.deleted {
                            println!("Deleted: {d}");
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            return Ok(u8::from(failed));
        }
        ImageCommand::Import { source, reference } => {
            let img = store
                .import_rootfs(&source, &reference)
                .with_context(|| format!("import {}", source.display()))?;
            println!("{}", img.id);
        }
        ImageCommand::Load { input } => {
            for img in store.load(&input)? {
                println!("Loaded image: {}", img.display_name());
            }
        }
        ImageCommand::Prune { all } => {
            let rep = store.prune(all)?;
            for d in &rep.images_deleted {
                println!("Deleted: {d}");
            }
            println!(
                "Freed {} layer(s), {} blob(s), {}",
                rep.layers_deleted,
                rep.blobs_deleted,
                human(rep.bytes_freed)
            );
            // After the images: the entries whose layers that prune freed are dead now.
            let cache = dcpp_runtime::build::prune_cache(&store, all)?;
            println!(
                "Build cache: removed {} entr{}, {}",
                cache.entries,
                if cache.entries == 1 { "y" } else { "ies" },
                human(cache.bytes_freed)
            );
        }
        ImageCommand::Tag { source, target } => {
            store.tag(&source, &target)?;
        }
        ImageCommand::Build(a) => return crate::cmd::build::run(global, *a),
    }
    Ok(0)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn summary(i: &LocalImage) -> serde_json::Value {
    serde_json::json!({
        "id": i.id,
        "references": i.references,
        "repo_digests": i.repo_digests,
        "size": i.size,
        "created": i.config.created,
        "added": rfc3339(i.added),
        "containers": i.holders.len(),
    })
}

fn details(store: &ImageStore, i: &LocalImage) -> serde_json::Value {
    let manifest: serde_json::Value = store
        .read_blob(&i.manifest_digest)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": i.id,
        "references": i.references,
        "repo_digests": i.repo_digests,
        "manifest_digest": i.manifest_digest,
        "size": i.size,
        "added": rfc3339(i.added),
        "holders": i.holders,
        "config": i.config,
        "layers": i.layers,
        "layer_dirs": i.layer_dirs(),
        "manifest": manifest,
    })
}

fn print_table(images: &[LocalImage]) {
    println!(
        "{:<50} {:<14} {:<22} {:>10}",
        "REFERENCE", "IMAGE ID", "CREATED", "SIZE"
    );
    for i in images {
        let created = i.config.created.clone().unwrap_or_default();
        let names = if i.references.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.references.clone()
        };
        for n in names {
            println!(
                "{:<50} {:<14} {:<22} {:>10}",
                n,
                i.id.short(),
                created.get(..19).unwrap_or(&created),
                human(i.size)
            );
        }
    }
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Progress on a terminal as one bar per layer; otherwise one plain line per finished layer.
/// Returns the callback and a function that clears the bars.
fn reporter(verb: &'static str) -> (ProgressFn, Box<dyn FnOnce()>) {
    if std::io::stdout().is_terminal() {
        let mp = MultiProgress::new();
        let bars: Arc<Mutex<HashMap<String, ProgressBar>>> = Arc::default();
        let style = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .expect("static template")
        .progress_chars("=> ");
        let mp2 = mp.clone();
        let b2 = bars.clone();
        let f: ProgressFn = Arc::new(move |p| {
            let mut bars = b2.lock().unwrap_or_else(|e| e.into_inner());
            match p {
                Progress::Started { layers, .. } => {
                    for (d, size) in layers {
                        let pb = mp2.add(ProgressBar::new(size));
                        pb.set_style(style.clone());
                        pb.set_prefix(d.short().to_string());
                        bars.insert(d.to_string(), pb);
                    }
                }
                Progress::Exists { digest } => {
                    if let Some(pb) = bars.get(digest.as_str()) {
                        pb.finish_with_message("exists");
                    }
                }
                Progress::Bytes { digest, bytes, .. } => {
                    if let Some(pb) = bars.get(digest.as_str()) {
                        pb.inc(bytes);
                    }
                }
                Progress::Done { digest } => {
                    if let Some(pb) = bars.get(digest.as_str()) {
                        pb.finish_with_message("done");
                    }
                }
            }
        });
        (f, Box::new(move || drop(mp)))
    } else {
        let f: ProgressFn = Arc::new(move |p| match p {
            Progress::Started { reference, layers } => {
                println!("{verb} {reference}: {} layer(s)", layers.len());
            }
            Progress::Exists { digest } => println!("{}: already exists", digest.short()),
            Progress::Done { digest } => println!("{}: done", digest.short()),
            Progress::Bytes { .. } => {}
        });
        (f, Box::new(|| {}))
    }
}
