//! `dcpp image build` and the builds `dcpp apply` runs for compose's `build:`: a Dockerfile
//! executed on this node's image store and container runtime (`dcpp_runtime::build`).
//!
//! When a daemon answers (on `-H`/DCPP_HOST or the default socket) the build runs there
//! (`cmd::build_route`): on the store and the network driver of the node that owns them, so
//! `RUN` gets the daemon's build network and `-H tcp://…` builds on that node. Without a
//! daemon it runs in the calling process on the data dir (the store is made for several
//! processes), with loopback-only `RUN` steps.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use dcpp_runtime::build::{BuildNetwork, BuildOptions, Builder};
use dcpp_runtime::container::{ContainerManager, ManagerOptions, RuntimeKind, ShimCommand};
use dcpp_runtime::image::ImageStore;
use dcpp_runtime::image::registry::{RegistryClient, RegistryOptions};

use crate::Global;
use crate::cmd::container::RuntimeOpts;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Name (and tag) of the built image; repeat for several.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile); relative to the current directory.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build argument, KEY=VALUE (KEY alone takes the variable from the environment).
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// Execute every step, using no cached layer.
    #[arg(long)]
    pub no_cache: bool,
    /// Network of the RUN steps: `default` (on a daemon, its `dcpp-build` network with
    /// outbound NAT; built without a daemon, loopback only) or `none`.
    #[arg(long, default_value = "default")]
    pub network: String,
    #[command(flatten)]
    pub rt: RuntimeOpts,
    /// The build context: a directory.
    pub context: PathBuf,
}

/// Parses `--build-arg` values as docker does: `K=V`, or `K` alone for the environment's
/// value (left out when the environment has none, so the Dockerfile's default applies).
pub fn parse_build_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => anyhow::bail!("invalid --build-arg {a:?}: expected KEY=VALUE"),
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

pub fn parse_network(s: &str) -> anyhow::Result<BuildNetwork> {
    match s {
        "default" => Ok(BuildNetwork::Default),
        "none" => Ok(BuildNetwork::None),
        other => anyhow::bail!("invalid --network {other:?}: dcpp builds with default or none"),
    }
}

/// Runs one build on the data dir of `global`, each progress line handed to `progress`.
pub fn build_here(
    global: &Global,
    rt: &RuntimeOpts,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Built> {
    let store = ImageStore::open(&global.data_dir.join("images"))?;
    let containers = ContainerManager::open(ManagerOptions {
        data_dir: global.data_dir.clone(),
        cgroup_parent: rt.cgroup_parent.clone(),
        runtime: RuntimeKind::parse(&rt.runtime),
        shim: ShimCommand::locate().context("locating the dcpp executable")?,
        network_hook: None,
    })?;
    let b = Builder {
        store: &store,
        containers: &containers,
        run_network: None,
    };
    let r = b.build(opts, progress)?;
    Ok(Built {
        id: r.image.id.to_string(),
        manifest_digest: r.image.manifest_digest.to_string(),
    })
}

/// The image a build made.
#[derive(Debug, Clone)]
pub struct Built {
    pub id: String,
    pub manifest_digest: String,
}

/// Builds on the daemon when one answers (on `-H`/DCPP_HOST, or the default socket), so that
/// the build uses the store and the networks of the node that owns them; without a daemon
/// on the default socket, here. A daemon named by `-H`/DCPP_HOST that does not answer is an
/// error, not a reason to build elsewhere.
pub fn build_image(
    global: &Global,
    rt: &RuntimeOpts,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Built> {
    let c = crate::cmd::cluster::client(global)?;
    let answers = {
        let c = c.clone();
        crate::cmd::cluster::block_on(async move { Ok(c.status().await?) })
    };
    match answers {
        Ok(_) => build_on_daemon(&c, opts, progress),
        Err(_) if global.host.is_none() => build_here(global, rt, opts, progress),
        Err(e) => Err(e),
    }
}

/// Sends the context (after `.dockerignore`) and the options to the daemon's build route
/// and relays its progress lines.
fn build_on_daemon(
    c: &dcpp_raft::Client,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Built> {
    use crate::cmd::build_route::{BuildLine, BuildRequest};
    // The errors a local build gives for a missing context or Dockerfile, before any upload.
    let dcpp_runtime::build::Source {
        context,
        dockerfile: df_path,
        text,
    } = dcpp_runtime::build::read_source(opts)?;
    let inside = df_path
        .strip_prefix(&context)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let req = BuildRequest {
        tags: opts.tags.clone(),
        dockerfile: inside.clone(),
        dockerfile_text: inside.is_none().then_some(text),
        build_args: opts.build_args.clone(),
        target: opts.target.clone(),
        no_cache: opts.no_cache,
        network: match opts.network {
            BuildNetwork::Default => "default".into(),
            BuildNetwork::None => "none".into(),
        },
        labels: opts.labels.clone(),
    };
    let tar = std::env::temp_dir().join(format!(
        "dcpp-context-{}-{}.tar",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Remove(tar.clone());
    {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tar)
            .with_context(|| format!("create {}", tar.display()))?;
        let mut w = std::io::BufWriter::new(f);
        dcpp_runtime::build::pack_context(&context, inside.as_deref(), &mut w)?;
        w.flush()?;
    }
    let len = std::fs::metadata(&tar)?.len();
    let path = format!(
        "/v1/image/build?options={}",
        dcpp_raft::api::encode_path(&serde_json::to_string(&req)?)
    );
    let c = c.clone();
    let (tx, rx) = std::sync::mpsc::channel::<BuildLine>();
    let task = std::thread::spawn(move || {
        crate::cmd::cluster::block_on(async move {
            let f = tokio::fs::File::open(&tar).await?;
            let mut resp = c.post_raw_route(&path, f.into(), len).await?;
            let mut buf: Vec<u8> = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| anyhow::anyhow!("reading the build's progress: {e}"))?
            {
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let l: BuildLine = serde_json::from_slice(&line)
                        .context("a malformed line from the daemon's build")?;
                    if tx.send(l).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    });
    let mut result = None;
    for l in rx {
        match l {
            BuildLine::Progress(p) => progress(&p),
            BuildLine::Done(d) => {
                tracing::debug!(image = %d.id, executed = d.executed, cached = d.cached, "built");
                result = Some(Ok(Built {
                    id: d.id,
                    manifest_digest: d.manifest_digest,
                }))
            }
            BuildLine::Error(e) => result = Some(Err(anyhow::anyhow!(e))),
        }
    }
    task.join()
        .map_err(|_| anyhow::anyhow!("the build's connection thread failed"))??;
    result.unwrap_or_else(|| anyhow::bail!("the daemon's build ended without a result"))
}

pub fn run(global: &Global, a: BuildArgs) -> anyhow::Result<u8> {
    if !a.context.is_dir() {
        anyhow::bail!(
            "unable to prepare context: path {:?} not found or not a directory",
            a.context.display().to_string()
        );
    }
    // docker reads `-f` relative to the current directory, not to the context.
    let dockerfile = match a.file {
        Some(f) if f.is_relative() => Some(std::env::current_dir()?.join(f)),
        other => other,
    };
    let opts = BuildOptions {
        context: a.context.clone(),
        dockerfile,
        tags: a.tags.clone(),
        build_args: parse_build_args(&a.build_args)?,
        target: a.target.clone(),
        no_cache: a.no_cache,
        network: parse_network(&a.network)?,
        labels: BTreeMap::new(),
    };
    let mut out = std::io::stdout().lock();
    let rep = build_image(global, &a.rt, &opts, &mut |l| {
        let _ = writeln!(out, "{l}");
        let _ = out.flush();
    })?;
    tracing::debug!(image = %rep.id, "built");
    Ok(0)
}

/// What `dcpp apply` does with the services that have a `build:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeBuild {
    /// Build what needs building (`pull_policy: build`, or the image is missing).
    Build,
    /// `--dry-run` and `diff`: build nothing, say what would be built.
    Preview,
}

use dcpp_control::images::{BuildSpec, BuildStep, build_step, image_name};
pub use dcpp_control::images::{Delivery, delivery};

/// The runtime's options for a compose build (`RUN` on the default network, as compose's).
pub fn build_options(spec: &BuildSpec) -> BuildOptions {
    BuildOptions {
        context: spec.context.clone(),
        dockerfile: spec.dockerfile.clone(),
        tags: spec.tags.clone(),
        build_args: spec.build_args.clone(),
        target: spec.target.clone(),
        no_cache: spec.no_cache,
        network: BuildNetwork::Default,
        labels: spec.labels.clone(),
    }
}

/// Builds (or, for `Preview`, reports) every service of `project` with a `build:` section
/// on this node, as compose does: the image is named by `image:` or `<project>-<service>`,
/// built when `pull_policy` is `build` or when it is missing here, and tagged with
/// `build.tags` too. The service's image is then pinned to the built manifest
/// (`name@sha256:…`, as `docker stack deploy` pins a tag), so a rebuild that changes the
/// image rolls the service and one that changes nothing leaves it alone.
pub fn compose_builds(
    global: &Global,
    rt: &RuntimeOpts,
    project: &mut dcpp_spec::Project,
    mode: ComposeBuild,
    push: bool,
) -> anyhow::Result<()> {
    let names: Vec<String> = project
        .services
        .iter()
        .filter(|(_, s)| s.build.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let store = ImageStore::open(&global.data_dir.join("images"))?;
    for name in names {
        let svc = &project.services[&name];
        let Some(build) = svc.build.clone() else {
            continue;
        };
        let image = image_name(project, &name, svc);
        let always = svc.pull_policy.as_deref() == Some("build");
        let present = store.resolve(&image).ok();
        let pinned = match (mode, present) {
            (ComposeBuild::Preview, present) => {
                match &present {
                    Some(_) if !always => {}
                    _ => println!("service {name}: would build {image} from {}", build.context),
                }
                present.map(|i| format!("{image}@{}", i.manifest_digest))
            }
            (ComposeBuild::Build, present) => {
                let digest = present.map(|i| i.manifest_digest.to_string());
                match build_step(project, &name, digest.as_deref())? {
                    Some(BuildStep::Use { digest, .. }) => Some(format!("{image}@{digest}")),
                    Some(BuildStep::Build(spec)) => {
                        println!("service {name}: building {image}");
                        let opts = build_options(&spec);
                        let mut out = std::io::stdout().lock();
                        let rep = build_image(global, rt, &opts, &mut |l| {
                            let _ = writeln!(out, "{l}");
                            let _ = out.flush();
                        })
                        .with_context(|| format!("service {name}: building {image}"))?;
                        Some(format!("{image}@{}", rep.manifest_digest))
                    }
                    None => None,
                }
            }
        };
        let pinned = match pinned {
            Some(_) if push && mode == ComposeBuild::Build => {
                println!("service {name}: pushing {image}");
                let client = RegistryClient::new(store.clone(), RegistryOptions::default());
                let d = crate::cmd::cluster::block_on(async {
                    Ok(client.push(&image, None, None).await?)
                })
                .with_context(|| format!("service {name}: pushing {image}"))?;
                Some(format!("{image}@{d}"))
            }
            other => other,
        };
        if let Some(p) = pinned
            && let Some(s) = project.services.get_mut(&name)
        {
            s.image = Some(p);
        }
    }
    Ok(())
}
