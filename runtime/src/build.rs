//! Executing a Dockerfile: the plan of [`dcpp_build`] run step by step on this node's image
//! store and container runtime. Every decision about what a step means (scoping, expansion,
//! the config rules, the cache key) is the pure crate's; this module reads the context, runs
//! `RUN` in a container of the runtime, turns the container's upper dir into a layer, and
//! records the result in the store like a pulled image.
//!
//! Nothing half-written reaches the store: layers go in as content-addressed blobs (they are
//! complete or absent), and the image appears in `db.json` only once its config and manifest
//! are written. The whole build holds the store's write guard, so a concurrent prune cannot
//! collect a layer that a build has made but not recorded yet.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dcpp_build::config::{Config, HealthConfig, clean};
use dcpp_build::ignore::{Ignore, path_matches};
use dcpp_build::stages::Base;
use dcpp_build::{Command, Instruction, Kind, Plan, Scope, StageRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::container::{ContainerManager, CreateOptions, ImageInput, NetworkMode};
use crate::image::{
    ContainerConfig, ImageConfig, ImageError, ImageStore, LayerRecord, LocalImage, Platform, RootFs,
};

/// Lines of a failing `RUN`'s output kept in its error.
const FAILED_OUTPUT_LINES: usize = 10;

/// The network a build's `RUN` steps get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BuildNetwork {
    /// docker's default: a network namespace of its own, attached by the manager's network
    /// hook if it has one (else loopback only).
    #[default]
    Default,
    /// Loopback only (`--network none`).
    None,
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub context: PathBuf,
    /// The Dockerfile, relative to the context unless absolute (`Dockerfile` if unset).
    pub dockerfile: Option<PathBuf>,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub network: BuildNetwork,
    /// Labels added to the final image (compose's `build.labels`).
    pub labels: BTreeMap<String, String>,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub image: LocalImage,
    /// Steps that ran a container or copied files.
    pub executed: usize,
    /// Steps that would have run a container or copied files whose result came from the
    /// build cache.
    pub cached: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Dockerfile(#[from] dcpp_build::Error),
    /// A step that cannot be carried out, with its line.
    #[error("Dockerfile:{line}: {message}")]
    Step { line: usize, message: String },
    #[error(
        "Dockerfile:{line}: RUN {command}: returned a non-zero code: {code}{}",
        if output.is_empty() { String::new() } else { format!("\n{output}") }
    )]
    RunFailed {
        line: usize,
        command: String,
        code: i32,
        /// The last lines of its output.
        output: String,
    },
    #[error("build context {}: {message}", path.display())]
    Context { path: PathBuf, message: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("RUN container: {0}")]
    Container(#[from] crate::container::Error),
    /// The network of a `RUN` step could not be set up.
    #[error("RUN network: {0}")]
    Network(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuildError + use<> {
    let path = path.to_path_buf();
    move |source| BuildError::Io { what, path, source }
}

fn step_err(line: usize) -> impl Fn(String) -> BuildError {
    move |message| BuildError::Step { line, message }
}

/// One cached step: the layer it added, if any. The entry of a whole image (keyed by its
/// last step and its labels) holds the time it was first made instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CacheEntry {
    layer: Option<LayerRecord>,
    /// When the image was first built: a rebuild from the cache makes a byte-identical config,
    /// hence the same image id, as docker's rebuild does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
}

/// Where a stage stands.
#[derive(Clone)]
struct State {
    layers: Vec<LayerRecord>,
    config: Config,
    /// The cache chain: the key of the last step (the base image's id at the start).
    key: String,
    history: Vec<serde_json::Value>,
}

impl State {
    fn layer_dirs(&self, store: &ImageStore) -> Vec<PathBuf> {
        let mut seen = BTreeSet::new();
        self.layers
            .iter()
            .rev()
            .filter(|l| seen.insert(l.diff_id.clone()))
            .map(|l| store.layer_dir(&l.diff_id))
            .collect()
    }
}

/// What [`prune_cache`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachePruneReport {
    /// Cache entries removed.
    pub entries: usize,
    /// Bytes of the entries themselves (their layers are the store's prune to free).
    pub bytes_freed: u64,
}

/// Removes the build cache entries of `store` whose layer is no longer in it (an image
/// prune freed it): they can never be hit again. Entries of steps without a layer stay
/// (a few hundred bytes each, they keep a rebuild's image id stable) unless `all`, which
/// empties the cache, as `docker builder prune -a` does. Holds the store's prune lock, so
/// no build is running meanwhile.
pub fn prune_cache(store: &ImageStore, all: bool) -> Result<CachePruneReport, BuildError> {
    let _gc = store.gc_guard()?;
    let dir = store.root().join("build-cache");
    let mut rep = CachePruneReport::default();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(rep),
        Err(e) => return Err(io_err("read", &dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err("read", &dir))?;
        let path = e.path();
        let entry: Option<CacheEntry> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let dead = all
            || match entry {
                // Unreadable: written by no build of this version, never a hit.
                None => true,
                Some(CacheEntry { layer: Some(l), .. }) => {
                    !store.has_blob(&l.digest) || !store.has_layer(&l.diff_id)
                }
                Some(CacheEntry { layer: None, .. }) => false,
            };
        if dead {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    rep.entries += 1;
                    rep.bytes_freed += size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
    }
    Ok(rep)
}

/// Runs builds on a store and a container manager of the same data dir.
pub struct Builder<'a> {
    pub store: &'a ImageStore,
    pub containers: &'a ContainerManager,
    /// Who gives a `RUN` step with the default network its network (the daemon's driver);
    /// without one such a step has loopback only.
    pub run_network: Option<&'a dyn RunNetwork>,
}

/// Plans the network of a `RUN` container before the container manager creates it (its
/// network hook then attaches the container as planned).
pub trait RunNetwork: Sync {
    /// Called before the container named `name` is created with the default network.
    fn plan(&self, name: &str) -> Result<(), BuildError>;
    /// The file bound at `/etc/resolv.conf` of the container named `name` (planned first):
    /// what a stack container without `dns:` gets on that network.
    fn resolv_conf(&self, name: &str) -> Result<PathBuf, BuildError>;
}

/// Writes the build context `context` as an (uncompressed) tar to `out`, leaving out what its
/// `.dockerignore` excludes, as docker's client does before it sends a context; the
/// `.dockerignore` itself and `dockerfile` (relative to the context, if inside) always go.
/// Symlinks go as symlinks.
pub fn pack_context(
    context: &Path,
    dockerfile: Option<&str>,
    out: &mut dyn io::Write,
) -> Result<(), BuildError> {
    let ignore = match fs::read_to_string(context.join(".dockerignore")) {
        Ok(t) => Ignore::parse(&t)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(io_err("read", &context.join(".dockerignore"))(e)),
    };
    let keep = |rel: &str| rel == ".dockerignore" || Some(rel) == dockerfile;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        let abs = if dir.is_empty() {
            context.to_path_buf()
        } else {
            context.join(&dir)
        };
        let mut names: Vec<_> = fs::read_dir(&abs)
            .map_err(io_err("read", &abs))?
            .collect::<Result<_, _>>()
            .map_err(io_err("read", &abs))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name();
            let rel = if dir.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{dir}/{}", name.to_string_lossy())
            };
            let ft = e.file_type().map_err(io_err("read", &e.path()))?;
            let excluded = ignore.excludes(&rel) && !keep(&rel);
            if ft.is_dir() {
                if !excluded {
                    b.append_dir(&rel, e.path())
                        .map_err(io_err("archive", &e.path()))?;
                }
                // A `!` pattern may take back something below an excluded directory.
                if !excluded || ignore.has_exclusions() {
                    todo.push(rel);
                }
            } else if !excluded {
                b.append_path_with_name(e.path(), &rel)
                    .map_err(io_err("archive", &e.path()))?;
            }
        }
    }
    b.into_inner()
        .map_err(io_err("archive", context))?
        .flush()
        .map_err(io_err("write", context))
}

/// Unpacks a build context sent as an (uncompressed) tar at `tar` into the empty directory
/// `dir`. A context is plain files under one root, so the entries are checked first and any
/// that could reach elsewhere is refused, naming it: an absolute or `..` path, a path through
/// a symlink of the archive, a hard link to such a path, a device or a whiteout name. The
/// store's hardened unpacker then extracts it (which would re-root such entries anyway).
pub fn unpack_context(tar: &Path, dir: &Path) -> Result<(), BuildError> {
    use std::path::Component;
    let refuse = |name: &str, why: &str| BuildError::Context {
        path: PathBuf::from(name),
        message: format!("refused archive entry: {why}"),
    };
    let plain = |p: &Path| -> bool {
        p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    };
    let mut links: Vec<PathBuf> = Vec::new();
    let f = File::open(tar).map_err(io_err("open", tar))?;
    let mut a = tar::Archive::new(io::BufReader::new(f));
    let entries = a.entries().map_err(io_err("read", tar))?;
    for e in entries {
        let e = e.map_err(io_err("read", tar))?;
        let path = e.path().map_err(io_err("read", tar))?.into_owned();
        let name = path.display().to_string();
        if !plain(&path) {
            return Err(refuse(
                &name,
                "the path leaves the context (absolute or ..)",
            ));
        }
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
        {
            return Err(refuse(&name, "a whiteout name"));
        }
        if links.iter().any(|l| path.starts_with(l) && path != *l) {
            return Err(refuse(
                &name,
                "the path goes through a symlink of the archive",
            ));
        }
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink => links.push(path.clone()),
            tar::EntryType::Link => {
                let to = e
                    .link_name()
                    .map_err(io_err("read", tar))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                if !plain(&to) || links.iter().any(|l| to.starts_with(l)) {
                    return Err(refuse(&name, "a hard link out of the context"));
                }
            }
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
            t => return Err(refuse(&name, &format!("unsupported entry type {t:?}"))),
        }
    }
    let f = File::open(tar).map_err(io_err("open", tar))?;
    crate::image::unpack_archive(io::BufReader::new(f), dir, "build context").map_err(|e| {
        BuildError::Context {
            path: dir.to_path_buf(),
            message: e.to_string(),
        }
    })
}

impl Builder<'_> {
    fn cache_dir(&self) -> PathBuf {
        self.store.root().join("build-cache")
    }

    fn cache_get(&self, key: &str) -> Option<CacheEntry> {
        let hex = key.trim_start_matches("sha256:");
        let bytes = fs::read(self.cache_dir().join(hex)).ok()?;
        let e: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        // A cache entry whose layer was pruned is a miss.
        match &e.layer {
            Some(l) if !self.store.has_blob(&l.digest) || !self.store.has_layer(&l.diff_id) => None,
            _ => Some(e),
        }
    }

    fn cache_put(&self, key: &str, e: &CacheEntry) -> Result<(), BuildError> {
        let dir = self.cache_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let hex = key.trim_start_matches("sha256:");
        let tmp = self.store.scratch_path("cache");
        fs::write(&tmp, serde_json::to_vec(e).expect("entry serializes"))
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, dir.join(hex)).map_err(io_err("rename", &tmp))
    }

    /// Builds `opts`, reporting docker-style progress lines to `progress`.
    pub fn build(
        &self,
        opts: &BuildOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuildReport, BuildError> {
        let Source {
            context,
            dockerfile: _,
            text,
        } = read_source(opts)?;
        let ignore = match fs::read_to_string(context.join(".dockerignore")) {
            Ok(t) => Ignore::parse(&t)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
            Err(e) => return Err(io_err("read", &context.join(".dockerignore"))(e)),
        };
        let df = dcpp_build::parse(&text)?;
        let plan = dcpp_build::plan(&df, &opts.build_args, opts.target.as_deref())?;
        for a in &plan.unused_args {
            progress(&format!(
                "[Warning] One or more build-args [{a}] were not consumed"
            ));
        }
        let _guard = self.store.write_guard()?;
        let total: usize = plan.stages.iter().map(|s| s.instructions.len() + 1).sum();
        let mut run = Run {
            b: self,
            opts,
            plan: &plan,
            context,
            ignore,
            total,
            n: 0,
            executed: 0,
            cached: 0,
            done: BTreeMap::new(),
            progress,
            scratch: Default::default(),
        };
        let mut last = None;
        for stage in &plan.stages {
            let st = run.stage(stage)?;
            run.done.insert(stage.index, st.clone());
            last = Some(st);
        }
        let mut st =
            last.ok_or_else(|| dcpp_build::Error::Plan("no FROM in the Dockerfile".into()))?;
        for (k, v) in &opts.labels {
            st.config.image.labels.insert(k.clone(), v.clone());
        }
        let image = self.commit(&st, opts)?;
        (run.progress)(&format!("Successfully built {}", image.id.short()));
        for t in &opts.tags {
            (run.progress)(&format!("Successfully tagged {t}"));
        }
        Ok(BuildReport {
            image,
            executed: run.executed,
            cached: run.cached,
        })
    }

    fn commit(&self, st: &State, opts: &BuildOptions) -> Result<LocalImage, BuildError> {
        let labels = serde_json::to_string(&st.config.image.labels).expect("labels serialize");
        let key = dcpp_build::cache_key(&st.key, &format!("IMAGE {labels}"), &[], None);
        let cached = (!opts.no_cache)
            .then(|| self.cache_get(&key))
            .flatten()
            .and_then(|e| e.created);
        let created = match cached {
            Some(t) => t,
            None => {
                let t = now_secs();
                self.cache_put(
                    &key,
                    &CacheEntry {
                        layer: None,
                        created: Some(t),
                    },
                )?;
                t
            }
        };
        let platform = Platform::current();
        let cfg = ImageConfig {
            created: Some(crate::image::rfc3339(created)),
            architecture: platform.architecture,
            os: platform.os,
            variant: platform.variant,
            config: to_container_config(&st.config.image),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: st.layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history: st.history.clone(),
        };
        Ok(self
            .store
            .commit_image(&cfg, st.layers.clone(), &opts.tags)?)
    }
}

struct Run<'a, 'p> {
    b: &'a Builder<'a>,
    opts: &'a BuildOptions,
    plan: &'a Plan,
    context: PathBuf,
    ignore: Ignore,
    total: usize,
    n: usize,
    executed: usize,
    cached: usize,
    done: BTreeMap<usize, State>,
    progress: &'p mut dyn FnMut(&str),
    /// Merged `--from` roots, removed when the build ends.
    scratch: std::cell::RefCell<Vec<ScratchDir>>,
}

impl Run<'_, '_> {
    fn step_line(&mut self, text: &str) {
        self.n += 1;
        let line = format!("Step {}/{} : {text}", self.n, self.total);
        (self.progress)(&line);
    }

    fn stage(&mut self, stage: &StageRef) -> Result<State, BuildError> {
        let store = self.b.store;
        let mut st = match &stage.base {
            Base::Scratch => {
                self.step_line("FROM scratch");
                State {
                    layers: Vec::new(),
                    config: Config::default(),
                    key: "scratch".into(),
                    history: Vec::new(),
                }
            }
            Base::Stage(i) => {
                self.step_line(&format!("FROM stage {i}"));
                self.done.get(i).cloned().ok_or_else(|| BuildError::Step {
                    line: stage.line,
                    message: format!("stage {i} was not built"),
                })?
            }
            Base::Image(r) => {
                self.step_line(&format!("FROM {r}"));
                let img = store.resolve(r).map_err(|e| BuildError::Step {
                    line: stage.line,
                    message: format!(
                        "FROM {r}: {e} (a build uses local images: pull or load it first)"
                    ),
                })?;
                store.ensure_unpacked(&img)?;
                State {
                    layers: img.layers.clone(),
                    config: Config::from_base(from_container_config(&img.config.config)),
                    key: img.id.to_string(),
                    history: img.config.history.clone(),
                }
            }
        };
        (self.progress)(&format!(" ---> {}", short(&st.key)));
        let mut scope = self.plan.scope(&st.config.image.env);
        for i in &stage.instructions {
            self.instruction(&mut st, &mut scope, i)?;
            (self.progress)(&format!(" ---> {}", short(&st.key)));
        }
        Ok(st)
    }

    fn instruction(
        &mut self,
        st: &mut State,
        scope: &mut Scope<'_>,
        i: &Instruction,
    ) -> Result<(), BuildError> {
        let line = i.line;
        let at = |e: dcpp_build::Error| BuildError::Dockerfile(e.on_line(line));
        let exp = |scope: &Scope<'_>, w: &str| scope.expand(w).map_err(at);
        // What the step does once expanded: the cache key's instruction part.
        let text: String;
        match &i.kind {
            Kind::From { .. } => unreachable!("a stage's instructions follow its FROM"),
            Kind::Arg(_) | Kind::Env(_) => {
                scope.step(i)?;
                text = match &i.kind {
                    Kind::Env(_) => {
                        st.config.image.env = scope.image_env();
                        format!("ENV {}", st.config.image.env.join(" "))
                    }
                    Kind::Arg(a) => format!(
                        "ARG {}",
                        a.iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    _ => unreachable!(),
                };
                self.step_line(&text);
            }
            Kind::Run { command, network } => {
                let argv = st.config.shell_words(command);
                text = format!("RUN {}", display_command(command));
                self.step_line(&text);
                let net = match network.as_deref() {
                    None | Some("default") => self.opts.network,
                    Some("none") => BuildNetwork::None,
                    Some(other) => {
                        return Err(step_err(line)(format!(
                            "RUN --network={other}: dcpp builds with default or none only"
                        )));
                    }
                };
                let env = scope.run_env();
                let key = dcpp_build::cache_key(&st.key, &text, &env, None);
                let layer = self
                    .cached_layer(&key, |b| b.run_container(st, &argv, &env, net, line, &text))?;
                st.key = key;
                push_layer(st, layer, &text);
                return Ok(());
            }
            Kind::Copy(c) | Kind::Add(c) => {
                let add = matches!(i.kind, Kind::Add(_));
                let sources: Vec<String> = if c.json {
                    c.sources
                        .iter()
                        .map(|s| exp(scope, s))
                        .collect::<Result<_, _>>()?
                } else {
                    let mut v = Vec::new();
                    for s in &c.sources {
                        v.extend(scope.split(s).map_err(at)?);
                    }
                    v
                };
                let dest = exp(scope, &c.dest)?;
                let chown = c.chown.as_deref().map(|v| exp(scope, v)).transpose()?;
                let chmod = c.chmod.as_deref().map(|v| exp(scope, v)).transpose()?;
                let from = c.from.as_deref().map(|v| exp(scope, v)).transpose()?;
                let word = if add { "ADD" } else { "COPY" };
                text = format!(
                    "{word}{}{}{} {} {dest}",
                    from.as_ref()
                        .map(|f| format!(" --from={f}"))
                        .unwrap_or_default(),
                    chown
                        .as_ref()
                        .map(|f| format!(" --chown={f}"))
                        .unwrap_or_default(),
                    chmod
                        .as_ref()
                        .map(|f| format!(" --chmod={f}"))
                        .unwrap_or_default(),
                    sources.join(" ")
                );
                self.step_line(&text);
                let req = CopyRequest {
                    add,
                    sources,
                    dest,
                    chown,
                    chmod,
                    from,
                    line,
                };
                let (files, digest) = self.collect(st, &req)?;
                let key = dcpp_build::cache_key(&st.key, &text, &[], Some(&digest));
                let layer = self.cached_layer(&key, |b| {
                    b.executed += 1;
                    Ok(Some(b.copy_layer(st, &req, &files)?))
                })?;
                st.key = key;
                push_layer(st, layer, &text);
                return Ok(());
            }
            Kind::Label(pairs) => {
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    let (k, v) = (exp(scope, k)?, exp(scope, v)?);
                    shown.push(format!("{k}={v}"));
                    st.config.image.labels.insert(k, v);
                }
                text = format!("LABEL {}", shown.join(" "));
                self.step_line(&text);
            }
            Kind::Workdir(w) => {
                let w = exp(scope, w)?;
                st.config.workdir(&w);
                text = format!("WORKDIR {}", st.config.image.working_dir);
                self.step_line(&text);
                // docker creates the directory; a layer only when no layer has it.
                let dir = st.config.image.working_dir.clone();
                let exists = st
                    .layer_dirs(self.b.store)
                    .iter()
                    .any(|l| l.join(dir.trim_start_matches('/')).is_dir());
                if !exists {
                    let key = dcpp_build::cache_key(&st.key, &text, &[], None);
                    let layer = self.cached_layer(&key, |b| {
                        b.executed += 1;
                        Ok(Some(b.dirs_layer(&dir)?))
                    })?;
                    st.key = key;
                    push_layer(st, layer, &text);
                    return Ok(());
                }
            }
            Kind::User(u) => {
                st.config.image.user = exp(scope, u)?;
                text = format!("USER {}", st.config.image.user);
                self.step_line(&text);
            }
            Kind::Expose(ports) => {
                let mut shown = Vec::new();
                for p in ports {
                    for p in scope.split(p).map_err(at)? {
                        st.config.expose(&p).map_err(at)?;
                        shown.push(p);
                    }
                }
                text = format!("EXPOSE {}", shown.join(" "));
                self.step_line(&text);
            }
            Kind::Volume(v) => {
                let mut shown = Vec::new();
                for p in v {
                    let p = exp(scope, p)?;
                    st.config.image.volumes.insert(p.clone());
                    shown.push(p);
                }
                text = format!("VOLUME {}", shown.join(" "));
                self.step_line(&text);
            }
            Kind::Cmd(c) => {
                st.config.cmd(c);
                text = format!("CMD {}", display_command(c));
                self.step_line(&text);
            }
            Kind::Entrypoint(c) => {
                st.config.entrypoint(c);
                text = format!("ENTRYPOINT {}", display_command(c));
                self.step_line(&text);
            }
            Kind::Shell(s) => {
                st.config.image.shell = s.clone();
                text = format!("SHELL {s:?}");
                self.step_line(&text);
            }
            Kind::Stopsignal(s) => {
                let s = exp(scope, s)?;
                st.config.stop_signal(&s).map_err(at)?;
                text = format!("STOPSIGNAL {s}");
                self.step_line(&text);
            }
            Kind::Healthcheck(h) => {
                st.config.healthcheck(h).map_err(at)?;
                text = format!("HEALTHCHECK {:?}", st.config.image.healthcheck);
                self.step_line(&text);
            }
            Kind::Maintainer(m) => {
                st.config.image.author = exp(scope, m)?;
                text = format!("MAINTAINER {}", st.config.image.author);
                self.step_line(&text);
            }
        }
        // A config-only step: no layer, but it moves the cache chain (what follows is built
        // on a different config). It executes nothing; its entry only lets a rebuild report
        // it from the cache as docker's classic builder does (not counted in `cached`, which
        // counts steps that would have run).
        st.key = dcpp_build::cache_key(&st.key, &text, &[], None);
        if !self.opts.no_cache && self.b.cache_get(&st.key).is_some() {
            (self.progress)(" ---> Using cache");
        } else {
            self.b.cache_put(&st.key, &CacheEntry::default())?;
        }
        st.history.push(serde_json::json!({
            "created_by": text,
            "empty_layer": true,
        }));
        Ok(())
    }

    /// The step's layer from the cache, else made by `make` and cached under `key`.
    fn cached_layer(
        &mut self,
        key: &str,
        make: impl FnOnce(&mut Self) -> Result<Option<LayerRecord>, BuildError>,
    ) -> Result<Option<LayerRecord>, BuildError> {
        if let Some(e) = self.lookup(key) {
            return Ok(e.layer);
        }
        let layer = make(self)?;
        self.b.cache_put(
            key,
            &CacheEntry {
                layer: layer.clone(),
                created: None,
            },
        )?;
        Ok(layer)
    }

    fn lookup(&mut self, key: &str) -> Option<CacheEntry> {
        if self.opts.no_cache {
            return None;
        }
        let e = self.b.cache_get(key)?;
        (self.progress)(" ---> Using cache");
        self.cached += 1;
        Some(e)
    }

    /// Runs `argv` in a container on the stage's layers; its upper dir becomes the layer.
    fn run_container(
        &mut self,
        st: &State,
        argv: &[String],
        env: &[String],
        net: BuildNetwork,
        line: usize,
        text: &str,
    ) -> Result<Option<LayerRecord>, BuildError> {
        let layer_dirs = st.layer_dirs(self.b.store);
        if layer_dirs.is_empty() {
            return Err(step_err(line)(format!(
                "{text}: the stage has no files to run anything in (FROM scratch)"
            )));
        }
        let mut o = CreateOptions::new(ImageInput {
            reference: "dcpp-build".into(),
            layer_dirs,
            config: None,
        });
        o.entrypoint = Some(Vec::new());
        o.command = Some(argv.to_vec());
        o.env = env.to_vec();
        if !st.config.image.working_dir.is_empty() {
            o.working_dir = Some(st.config.image.working_dir.clone());
        }
        if !st.config.image.user.is_empty() {
            o.user = Some(st.config.image.user.clone());
        }
        o.network = match net {
            BuildNetwork::Default => NetworkMode::Private,
            BuildNetwork::None => NetworkMode::None,
        };
        if let (Some(rn), BuildNetwork::Default) = (self.b.run_network, net) {
            // The plan is found by the container's name, so the name must be known here.
            let name = run_container_name();
            rn.plan(&name)?;
            o.mounts.push(crate::container::MountRequest {
                source: crate::container::MountSource::Bind(rn.resolv_conf(&name)?),
                target: "/etc/resolv.conf".into(),
                read_only: true,
            });
            o.name = Some(name);
        }
        o.labels
            .insert("org.dcpp.build.step".into(), format!("line {line}"));
        self.executed += 1;
        let mgr = self.b.containers;
        let c = mgr.create(&o)?;
        let id = c.state.id.clone();
        let result = (|| {
            mgr.start(&id)?;
            let exit = mgr
                .wait(&id, Some(Duration::from_secs(3600)))?
                .ok_or_else(|| step_err(line)(format!("{text}: did not finish within an hour")))?;
            let out: String = mgr
                .logs(&id)
                .map(|v| v.into_iter().map(|e| e.log).collect())
                .unwrap_or_default();
            for l in out.lines() {
                (self.progress)(l);
            }
            if exit.exit_code != 0 {
                let lines: Vec<&str> = out.lines().collect();
                let tail = lines[lines.len().saturating_sub(FAILED_OUTPUT_LINES)..].join("\n");
                return Err(BuildError::RunFailed {
                    line,
                    command: text.trim_start_matches("RUN ").to_string(),
                    code: exit.exit_code,
                    output: match exit.error {
                        Some(e) if tail.is_empty() => e,
                        _ => tail,
                    },
                });
            }
            self.layer_from(|w, _| {
                diff_tar(&c.bundle.join("upper"), w).map_err(io_err("archive", &c.bundle))
            })
            .map(Some)
        })();
        if let Err(e) = mgr.remove(&id, true) {
            tracing::warn!(%id, error = %e, "removing a build container");
        }
        result
    }

    /// A layer holding `dir` and its parents (what `WORKDIR` creates).
    fn dirs_layer(&self, dir: &str) -> Result<LayerRecord, BuildError> {
        self.layer_from(|w, tar| {
            let mut b = tar::Builder::new(w);
            let mut path = String::new();
            for part in dir.split('/').filter(|p| !p.is_empty()) {
                path.push_str(part);
                path.push('/');
                append_dir(&mut b, &path, 0, 0, 0o755).map_err(io_err("archive", tar))?;
            }
            b.finish().map_err(io_err("write", tar))
        })
    }

    /// A layer from the tar `write` puts in a scratch file of the store's (its path given
    /// for messages); the scratch file goes whatever happens.
    fn layer_from(
        &self,
        write: impl FnOnce(&mut io::BufWriter<File>, &Path) -> Result<(), BuildError>,
    ) -> Result<LayerRecord, BuildError> {
        let tar = self.b.store.scratch_path("build-layer");
        let res = (|| {
            let f = File::create(&tar).map_err(io_err("create", &tar))?;
            let mut w = io::BufWriter::with_capacity(1 << 20, f);
            write(&mut w, &tar)?;
            w.flush().map_err(io_err("write", &tar))?;
            Ok(self.b.store.put_layer_tar(&tar)?)
        })();
        let _ = fs::remove_file(&tar);
        res
    }
}

/// A build's context dir and Dockerfile, found and read.
pub struct Source {
    /// The context, canonical.
    pub context: PathBuf,
    /// The Dockerfile's path.
    pub dockerfile: PathBuf,
    /// Its text.
    pub text: String,
}

/// Finds and reads what `opts` names: the first errors a user can meet, the same whether the
/// build runs here or the context is about to be sent to a daemon.
pub fn read_source(opts: &BuildOptions) -> Result<Source, BuildError> {
    let context = fs::canonicalize(&opts.context).map_err(|e| BuildError::Context {
        path: opts.context.clone(),
        message: format!("unable to prepare context: {e}"),
    })?;
    if !context.is_dir() {
        return Err(BuildError::Context {
            path: opts.context.clone(),
            message: "not a directory".into(),
        });
    }
    let dockerfile = match &opts.dockerfile {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => context.join(p),
        None => context.join("Dockerfile"),
    };
    let text = fs::read_to_string(&dockerfile).map_err(|e| BuildError::Context {
        path: dockerfile.clone(),
        message: format!("cannot read the Dockerfile: {e}"),
    })?;
    Ok(Source {
        context,
        dockerfile,
        text,
    })
}

fn push_layer(st: &mut State, layer: Option<LayerRecord>, text: &str) {
    match layer {
        Some(l) => {
            st.layers.push(l);
            st.history.push(serde_json::json!({ "created_by": text }));
        }
        None => st
            .history
            .push(serde_json::json!({ "created_by": text, "empty_layer": true })),
    }
}

/// A `COPY`/`ADD` once expanded.
struct CopyRequest {
    add: bool,
    sources: Vec<String>,
    dest: String,
    chown: Option<String>,
    chmod: Option<String>,
    from: Option<String>,
    line: usize,
}

/// One file the step copies: where it is read, where it goes in the image (relative).
struct Entry {
    src: PathBuf,
    dest: String,
    /// For `ADD` of a local tar: unpacked into `dest` instead of copied.
    unpack: bool,
}

impl Run<'_, '_> {
    /// The files `req` copies, and their digest (paths, modes, owners and contents).
    fn collect(&self, st: &State, req: &CopyRequest) -> Result<(Vec<Entry>, String), BuildError> {
        let line = req.line;
        let err = step_err(line);
        let word = if req.add { "ADD" } else { "COPY" };
        // Where the sources are read: the context, or the root of a stage or image.
        let (root, from_context): (PathBuf, bool) = match &req.from {
            None => (self.context.clone(), true),
            Some(f) => (self.source_root(f, line)?, false),
        };
        let dest_abs = if req.dest.starts_with('/') {
            req.dest.clone()
        } else {
            let wd = if st.config.image.working_dir.is_empty() {
                "/"
            } else {
                &st.config.image.working_dir
            };
            format!("{wd}/{}", req.dest)
        };
        let dest_is_dir = req.dest.ends_with('/')
            || req.dest == "."
            || req.sources.len() > 1
            || st
                .layer_dirs(self.b.store)
                .iter()
                .any(|l| l.join(clean(&dest_abs).trim_start_matches('/')).is_dir());
        let dest_base = clean(&dest_abs).trim_start_matches('/').to_string();
        let mut entries = Vec::new();
        for s in &req.sources {
            if s.contains("://") {
                return Err(err(format!(
                    "{word} {s}: remote sources are not supported (there is no internet)"
                )));
            }
            // `..` may not climb out of the root, however the path is spelled.
            let joined = clean(&format!("/{s}"));
            let climbs = {
                let mut depth: i64 = 0;
                s.split('/').any(|c| {
                    match c {
                        "" | "." => {}
                        ".." => depth -= 1,
                        _ => depth += 1,
                    }
                    depth < 0
                })
            };
            if climbs {
                return Err(err(format!(
                    "{word} {s}: forbidden path outside the build context"
                )));
            }
            let rel = joined.trim_start_matches('/').to_string();
            let matched: Vec<String> = if rel.contains(['*', '?', '[']) {
                let mut all = Vec::new();
                walk_rel(&root, "", &mut all).map_err(io_err("read", &root))?;
                let mut m: Vec<String> = all
                    .into_iter()
                    .filter(|p| path_matches(&rel, p))
                    .filter(|p| !from_context || !self.ignore.excludes(p))
                    .collect();
                m.sort();
                if m.is_empty() {
                    return Err(err(format!("{word} {s}: no source files were specified")));
                }
                m
            } else {
                if from_context && !rel.is_empty() && self.ignore.excludes(&rel) {
                    return Err(err(format!(
                        "{word} {s}: not found (excluded by .dockerignore)"
                    )));
                }
                vec![rel]
            };
            for rel in matched {
                let full = root.join(&rel);
                // The source itself may be a symlink: followed, but only within the root.
                let real = fs::canonicalize(&full)
                    .map_err(|e| err(format!("{word} {s}: not found in the build context: {e}")))?;
                let root_real = fs::canonicalize(&root).map_err(io_err("resolve", &root))?;
                if !real.starts_with(&root_real) {
                    return Err(err(format!(
                        "{word} {s}: forbidden path outside the build context (it resolves to {})",
                        real.display()
                    )));
                }
                let meta = fs::metadata(&real).map_err(io_err("stat", &real))?;
                let name = Path::new(&rel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if meta.is_dir() {
                    let mut below = Vec::new();
                    walk_rel(&real, "", &mut below).map_err(io_err("read", &real))?;
                    below.sort();
                    for b in below {
                        let ctx_rel = if rel.is_empty() {
                            b.clone()
                        } else {
                            format!("{rel}/{b}")
                        };
                        if from_context && self.ignore.excludes(&ctx_rel) {
                            continue;
                        }
                        entries.push(Entry {
                            src: real.join(&b),
                            dest: join_rel(&dest_base, &b),
                            unpack: false,
                        });
                    }
                } else {
                    let unpack = req.add && is_tar(&real);
                    let dest = if unpack || dest_is_dir {
                        if unpack {
                            dest_base.clone()
                        } else {
                            join_rel(&dest_base, &name)
                        }
                    } else {
                        dest_base.clone()
                    };
                    entries.push(Entry {
                        src: real,
                        dest,
                        unpack,
                    });
                }
            }
        }
        let mut h = Sha256::new();
        for e in &entries {
            let m = fs::symlink_metadata(&e.src).map_err(io_err("stat", &e.src))?;
            let head = format!(
                "{}\0{}\0{:o}\0{}\0{}\0{}\0",
                e.dest,
                e.unpack,
                m.mode(),
                m.uid(),
                m.gid(),
                m.len()
            );
            h.update((head.len() as u64).to_le_bytes());
            h.update(head.as_bytes());
            if m.file_type().is_symlink() {
                let t = fs::read_link(&e.src).map_err(io_err("readlink", &e.src))?;
                h.update(t.as_os_str().as_encoded_bytes());
            } else if m.is_file() {
                let mut f = File::open(&e.src).map_err(io_err("open", &e.src))?;
                let mut fh = Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = io::Read::read(&mut f, &mut buf).map_err(io_err("read", &e.src))?;
                    if n == 0 {
                        break;
                    }
                    fh.update(&buf[..n]);
                }
                h.update(fh.finalize());
            }
        }
        Ok((entries, format!("sha256:{}", hex::encode(h.finalize()))))
    }

    /// The root filesystem `--from=VALUE` names, as one directory: the top layer of a stage
    /// or image when it has one layer, else its layers merged into a scratch directory.
    fn source_root(&self, from: &str, line: usize) -> Result<PathBuf, BuildError> {
        let layers: Vec<PathBuf> = match self.plan.stage_for(from) {
            Some(s) => self
                .done
                .get(&s.index)
                .ok_or_else(|| step_err(line)(format!("--from={from}: stage not built yet")))?
                .layer_dirs(self.b.store),
            None => {
                let img = self.b.store.resolve(from).map_err(|e| {
                    step_err(line)(format!("--from={from}: {e} (use a local image or a stage)"))
                })?;
                self.b.store.ensure_unpacked(&img)?;
                img.layer_dirs()
            }
        };
        if layers.len() == 1 {
            return Ok(layers[0].clone());
        }
        let dir = ScratchDir(self.b.store.scratch_path("build-from"));
        merged_root(&layers, dir.path()).map_err(io_err("merge layers", Path::new(from)))?;
        let p = dir.path().to_path_buf();
        self.scratch.borrow_mut().push(dir);
        Ok(p)
    }

    /// Writes the layer of a `COPY`/`ADD`.
    fn copy_layer(
        &self,
        st: &State,
        req: &CopyRequest,
        entries: &[Entry],
    ) -> Result<LayerRecord, BuildError> {
        let line = req.line;
        let (uid, gid) = match &req.chown {
            None => (0, 0),
            Some(c) => owner(c, &st.layer_dirs(self.b.store)).map_err(step_err(line))?,
        };
        let chmod = match &req.chmod {
            None => None,
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| step_err(line)(format!("--chmod={m}: not an octal mode")))?,
            ),
        };
        let chown = req.chown.is_some();
        self.layer_from(|w, tar| {
            let mut b = tar::Builder::new(w);
            let mut made: BTreeSet<String> = BTreeSet::new();
            let lower = st.layer_dirs(self.b.store);
            for e in entries {
                if e.unpack {
                    let unpacked = self.unpack_local_tar(&e.src, line)?;
                    let mut below = Vec::new();
                    walk_rel(unpacked.path(), "", &mut below)
                        .map_err(io_err("read", unpacked.path()))?;
                    below.sort();
                    parents(&mut b, &mut made, &lower, &format!("{}/x", e.dest))
                        .map_err(io_err("archive", tar))?;
                    if !e.dest.is_empty() && made.insert(format!("{}/", e.dest)) {
                        append_dir(&mut b, &format!("{}/", e.dest), uid, gid, 0o755)
                            .map_err(io_err("archive", tar))?;
                    }
                    for rel in below {
                        let src = unpacked.path().join(&rel);
                        let m = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
                        // An archive's whiteouts delete nothing in the image.
                        if m.file_type().is_char_device() && m.rdev() == 0 {
                            continue;
                        }
                        let (u, g) = if chown {
                            (uid, gid)
                        } else {
                            (m.uid(), m.gid())
                        };
                        append_entry(&mut b, &src, &join_rel(&e.dest, &rel), u, g, chmod)
                            .map_err(io_err("archive", &src))?;
                    }
                    continue;
                }
                parents(&mut b, &mut made, &lower, &e.dest).map_err(io_err("archive", tar))?;
                append_entry(&mut b, &e.src, &e.dest, uid, gid, chmod)
                    .map_err(io_err("archive", &e.src))?;
                if fs::symlink_metadata(&e.src).is_ok_and(|m| m.is_dir()) {
                    made.insert(format!("{}/", e.dest));
                }
            }
            b.finish().map_err(io_err("write", tar))
        })
    }

    /// Extracts a tar from the context with the store's hardened unpacker (no entry can land
    /// outside the scratch directory, whatever its names or links say).
    fn unpack_local_tar(&self, src: &Path, line: usize) -> Result<ScratchDir, BuildError> {
        let dir = ScratchDir(self.b.store.scratch_path("build-add"));
        fs::create_dir(dir.path()).map_err(io_err("create", dir.path()))?;
        let f = File::open(src).map_err(io_err("open", src))?;
        let mut br = io::BufReader::new(f);
        let head = {
            use io::BufRead;
            br.fill_buf().map_err(io_err("read", src))?.to_vec()
        };
        let d = crate::image::decoder(br, crate::image::Compression::sniff(&head))
            .map_err(io_err("read", src))?;
        crate::image::unpack_archive(d, dir.path(), &src.display().to_string())
            .map_err(|e| step_err(line)(format!("ADD {}: {e}", src.display())))?;
        Ok(dir)
    }
}

/// A name no other container has: the process, a per-process count and the time.
fn run_container_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "dcpp-build-{}-{}-{t:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The layers (top-most first) merged into `dir` (the `--from` of a multi-layer stage);
/// whiteouts of upper layers hide what is below them.
fn merged_root(layers: &[PathBuf], dir: &Path) -> io::Result<()> {
    fs::create_dir(dir)?;
    // Bottom-most first, each layer applied over the result.
    for l in layers.iter().rev() {
        let mut rels = Vec::new();
        walk_rel(l, "", &mut rels)?;
        rels.sort();
        for rel in rels {
            let src = l.join(&rel);
            let dst = dir.join(&rel);
            let m = fs::symlink_metadata(&src)?;
            if m.file_type().is_char_device() && m.rdev() == 0 {
                let _ = fs::remove_dir_all(&dst);
                let _ = fs::remove_file(&dst);
                continue;
            }
            if m.is_dir() {
                if crate::image::get_xattr(&src, "trusted.overlay.opaque")?.as_deref() == Some(b"y")
                {
                    let _ = fs::remove_dir_all(&dst);
                }
                if !fs::symlink_metadata(&dst).is_ok_and(|d| d.is_dir()) {
                    let _ = fs::remove_file(&dst);
                    fs::create_dir(&dst)?;
                }
                fs::set_permissions(&dst, m.permissions())?;
            } else {
                if let Ok(d) = fs::symlink_metadata(&dst) {
                    if d.is_dir() {
                        fs::remove_dir_all(&dst)?;
                    } else {
                        fs::remove_file(&dst)?;
                    }
                }
                if m.file_type().is_symlink() {
                    std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
                } else if m.is_file() {
                    fs::copy(&src, &dst)?;
                }
            }
            let _ = std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()));
        }
    }
    Ok(())
}

/// Directory entries for the parents of `dest` that no lower layer has (once per layer).
fn parents<W: Write>(
    b: &mut tar::Builder<W>,
    made: &mut BTreeSet<String>,
    lower: &[PathBuf],
    dest: &str,
) -> io::Result<()> {
    let mut p = String::new();
    let parts: Vec<&str> = dest.split('/').filter(|s| !s.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        p.push_str(part);
        p.push('/');
        if made.insert(p.clone()) && !lower.iter().any(|l| l.join(&p).is_dir()) {
            append_dir(b, &p, 0, 0, 0o755)?;
        }
    }
    Ok(())
}

fn join_rel(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ => format!("{base}/{rel}"),
    }
}

/// Every path under `dir`, relative, directories before what they hold (symlinks not
/// followed).
fn walk_rel(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    for e in fs::read_dir(dir.join(prefix))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = join_rel(prefix, &name);
        let is_dir = e.file_type()?.is_dir();
        out.push(rel.clone());
        if is_dir {
            walk_rel(dir, &rel, out)?;
        }
    }
    Ok(())
}

fn is_tar(p: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = File::open(p) else {
        return false;
    };
    let n = io::Read::read(&mut f, &mut head).unwrap_or(0);
    match crate::image::Compression::sniff(&head[..n]) {
        crate::image::Compression::None => n >= 262 && &head[257..262] == b"ustar",
        _ => true,
    }
}

fn append_dir<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    uid: u32,
    gid: u32,
    mode: u32,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_size(0);
    h.set_mtime(0);
    b.append_data(&mut h, path, io::empty())
}

/// One file, directory or symlink at `dest` in the layer.
fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    dest: &str,
    uid: u32,
    gid: u32,
    chmod: Option<u32>,
) -> io::Result<()> {
    let m = fs::symlink_metadata(src)?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    if let Some(c) = chmod {
        h.set_mode(c);
    } else {
        h.set_mode(m.permissions().mode() & 0o7777);
    }
    let ft = m.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src)?;
        h.set_size(0);
        b.append_link(&mut h, dest, target)
    } else if ft.is_dir() {
        h.set_size(0);
        b.append_data(&mut h, format!("{dest}/"), io::empty())
    } else if ft.is_file() {
        let f = File::open(src)?;
        b.append_data(&mut h, dest, f)
    } else {
        // Devices, sockets and fifos of a context are not copied (docker refuses most too).
        Ok(())
    }
}

/// `--chown=user[:group]` as numbers, names read from the stage's /etc/passwd and /etc/group.
fn owner(spec: &str, layers: &[PathBuf]) -> Result<(u32, u32), String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = crate::container::user::read_in_layers(layers, "etc/passwd").unwrap_or_default();
    let group = crate::container::user::read_in_layers(layers, "etc/group").unwrap_or_default();
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => lookup(&passwd, u, 2).ok_or(format!("--chown={spec}: unknown user {u}"))?,
    };
    let gid = match g {
        None => match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(&passwd, u, 3).ok_or(format!("--chown={spec}: unknown user {u}"))?,
        },
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(&group, g, 2).ok_or(format!("--chown={spec}: unknown group {g}"))?,
        },
    };
    Ok((uid, gid))
}

fn lookup(file: &str, name: &str, field: usize) -> Option<u32> {
    file.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(field)?.parse().ok())
}

/// The container's upper dir as an OCI layer: overlayfs whiteouts (0:0 character devices)
/// become `.wh.NAME`, opaque directories get `.wh..wh..opq`. The mount points the runtime
/// made for its own files (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`) are left out
/// when they are empty, as docker leaves them out.
fn diff_tar<W: Write>(upper: &Path, w: W) -> io::Result<()> {
    let mut b = tar::Builder::new(w);
    let mut rels = Vec::new();
    walk_rel(upper, "", &mut rels)?;
    rels.sort();
    for rel in rels {
        let p = upper.join(&rel);
        let m = fs::symlink_metadata(&p)?;
        if ["etc/hosts", "etc/resolv.conf", "etc/hostname"].contains(&rel.as_str())
            && m.is_file()
            && m.len() == 0
        {
            continue;
        }
        if m.file_type().is_char_device() && m.rdev() == 0 {
            let (dir, name) = match rel.rsplit_once('/') {
                Some((d, n)) => (format!("{d}/"), n.to_string()),
                None => (String::new(), rel.clone()),
            };
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(0);
            b.append_data(&mut h, format!("{dir}.wh.{name}"), io::empty())?;
            continue;
        }
        append_entry(&mut b, &p, &rel, m.uid(), m.gid(), None)?;
        if m.is_dir()
            && crate::image::get_xattr(&p, "trusted.overlay.opaque")?.as_deref() == Some(b"y")
        {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(0);
            b.append_data(&mut h, format!("{rel}/.wh..wh..opq"), io::empty())?;
        }
    }
    b.into_inner()?.flush()
}

fn display_command(c: &Command) -> String {
    match c {
        Command::Shell(s) => s.clone(),
        Command::Exec(v) => serde_json::to_string(v).unwrap_or_default(),
    }
}

fn short(key: &str) -> String {
    key.trim_start_matches("sha256:").chars().take(12).collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The runtime's config of a base image, as the build's rules read it.
fn from_container_config(c: &ContainerConfig) -> dcpp_build::ImageConfig {
    dcpp_build::ImageConfig {
        user: c.user.clone(),
        exposed_ports: c.exposed_ports.keys().cloned().collect(),
        env: c.env.clone(),
        entrypoint: (!c.entrypoint.is_empty()).then(|| c.entrypoint.clone()),
        cmd: (!c.cmd.is_empty()).then(|| c.cmd.clone()),
        volumes: c.volumes.keys().cloned().collect(),
        working_dir: c.working_dir.clone(),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        healthcheck: c.healthcheck.as_ref().map(|h| HealthConfig {
            test: serde_json::from_value(h["Test"].clone()).unwrap_or_default(),
            interval_ns: h["Interval"].as_u64().unwrap_or(0),
            timeout_ns: h["Timeout"].as_u64().unwrap_or(0),
            start_period_ns: h["StartPeriod"].as_u64().unwrap_or(0),
            start_interval_ns: h["StartInterval"].as_u64().unwrap_or(0),
            retries: h["Retries"].as_u64().unwrap_or(0) as u32,
        }),
        shell: c.shell.clone(),
        author: String::new(),
    }
}

/// The build's config as the image config records it (docker's field names).
fn to_container_config(c: &dcpp_build::ImageConfig) -> ContainerConfig {
    let empty = || serde_json::json!({});
    ContainerConfig {
        user: c.user.clone(),
        exposed_ports: c
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), empty()))
            .collect(),
        env: c.env.clone(),
        entrypoint: c.entrypoint.clone().unwrap_or_default(),
        cmd: c.cmd.clone().unwrap_or_default(),
        volumes: c.volumes.iter().map(|p| (p.clone(), empty())).collect(),
        working_dir: c.working_dir.clone(),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        healthcheck: c.healthcheck.as_ref().map(|h| {
            let mut o = serde_json::json!({ "Test": h.test });
            for (k, v) in [
                ("Interval", h.interval_ns),
                ("Timeout", h.timeout_ns),
                ("StartPeriod", h.start_period_ns),
                ("StartInterval", h.start_interval_ns),
                ("Retries", u64::from(h.retries)),
            ] {
                if v != 0 {
                    o[k] = v.into();
                }
            }
            o
        }),
        shell: c.shell.clone(),
    }
}
