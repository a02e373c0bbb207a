//! Reading files: discovery, `.env`, per-file parse + interpolation, `include`, `extends`,
//! and the merge of several `-f` files.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use crate::convert;
use crate::error::{Errors, KeyPath, Pos, SpecError, SpecErrors};
use crate::interp;
use crate::merge;
use crate::model::Project;
use crate::yaml::{self, Entry, Kind, Node};

/// File names looked up in the working directory when no `-f` is given, in compose's order.
pub const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Everything the loader needs; the process environment is passed in so loading is a pure
/// function of its inputs (plus the files it reads).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Compose files in merge order; empty means discover one in `working_dir`.
    pub files: Vec<PathBuf>,
    /// `-p`: overrides every other source of the project name.
    pub project_name: Option<String>,
    /// `--profile`: enabled profiles (added to `COMPOSE_PROFILES`). `*` enables all.
    pub profiles: Vec<String>,
    /// `--env-file`: replaces the default `<project dir>/.env`.
    pub env_files: Vec<PathBuf>,
    /// Directory relative paths given here are resolved against (the cwd for the CLI).
    pub working_dir: PathBuf,
    /// `--project-directory`; default: the directory of the first compose file.
    pub project_dir: Option<PathBuf>,
    /// The process environment.
    pub environment: BTreeMap<String, String>,
}

/// A successfully loaded project.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The canonical model.
    pub project: Project,
    /// Non-fatal findings, e.g. unset variables, ignored keys.
    pub warnings: Vec<SpecError>,
    /// The compose files that were read (after discovery), absolute.
    pub files: Vec<PathBuf>,
    /// Top-level `x-*` keys, interpolated and merged across files; printed by `dcpp config`,
    /// applied by nothing.
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// Why the data of a used secret or config cannot be read (`file` missing, `environment`
    /// variable unset), at the key's position. Not errors of the file itself (`dcpp config`
    /// prints the project), but of creating the objects: `apply` refuses the project.
    pub sources: Vec<SpecError>,
    /// The values of the variables named by `environment:` of the used secrets and configs.
    pub source_env: SourceEnv,
}

/// Variable values that may be secret: never printed by `{:?}`.
#[derive(Clone, Default, PartialEq)]
pub struct SourceEnv(pub BTreeMap<String, String>);

impl std::fmt::Debug for SourceEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

pub(crate) struct FileInfo {
    pub display: String,
    /// Relative paths written in this file resolve against this directory.
    pub base_dir: PathBuf,
    /// The directory of the project this file is loaded for (an include's project_directory
    /// for an included file, the extending project's for an extended one): compose fills in
    /// defaults such as a build's missing context after merging, against it.
    pub project_dir: PathBuf,
}

pub(crate) struct Ctx {
    pub files: Vec<FileInfo>,
    pub errors: Errors,
    pub warnings: Errors,
    /// Problems of the data of the secrets and configs the project uses (a missing file, an
    /// unset variable): errors only for who creates them (`apply`), see [`Loaded::sources`].
    pub sources: Errors,
    /// The values of the variables that the `environment:` of a used secret or config names.
    pub source_env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    /// Parsed and interpolated files used as `extends: {file: …}` sources, by absolute path.
    extends_cache: HashMap<PathBuf, Option<Node<'static>>>,
    /// Interpolation variables of the main project (used for `extends` files).
    current_env: BTreeMap<String, String>,
}

/// Lexically normalises `p` (absolute against `base`, `.`/`..` removed) without touching the
/// filesystem, so paths stay stable whether or not they exist.
pub(crate) fn absolutize(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Ctx {
    fn new(opts: &LoadOptions) -> Ctx {
        Ctx {
            files: Vec::new(),
            errors: Errors::default(),
            warnings: Errors::default(),
            sources: Errors::default(),
            source_env: BTreeMap::new(),
            working_dir: opts.working_dir.clone(),
            extends_cache: HashMap::new(),
            current_env: BTreeMap::new(),
        }
    }

    /// Registers a file; the display name is relative to the working directory when inside it.
    pub(crate) fn add_file(&mut self, path: &Path, base_dir: PathBuf, project_dir: PathBuf) -> u32 {
        let display = path
            .strip_prefix(&self.working_dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.display().to_string());
        self.files.push(FileInfo {
            display,
            base_dir,
            project_dir,
        });
        (self.files.len() - 1) as u32
    }

    pub(crate) fn base_dir(&self, pos: Pos) -> &Path {
        &self.files[pos.file as usize].base_dir
    }

    pub(crate) fn project_dir(&self, pos: Pos) -> &Path {
        &self.files[pos.file as usize].project_dir
    }

    /// A position not tied to a file (the loader's pseudo file 0).
    pub(crate) fn nowhere() -> Pos {
        Pos::default()
    }

    fn finish(self) -> (Vec<SpecError>, Vec<SpecError>, Vec<SpecError>) {
        let conv = |items: Vec<(Pos, String, String)>, files: &[FileInfo]| {
            let mut items = items;
            items.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            items.dedup();
            items
                .into_iter()
                .map(|(pos, path, message)| SpecError {
                    file: files
                        .get(pos.file as usize)
                        .map(|f| f.display.clone())
                        .unwrap_or_default(),
                    line: pos.line,
                    column: pos.col,
                    path,
                    message,
                })
                .collect::<Vec<_>>()
        };
        (
            conv(self.errors.items, &self.files),
            conv(self.warnings.items, &self.files),
            conv(self.sources.items, &self.files),
        )
    }

    /// Parses the contents of `path` (read by the caller), registers it, and checks that its
    /// root is a mapping. The tree borrows from `bytes`.
    fn read_yaml<'t>(
        &mut self,
        path: &Path,
        base_dir: PathBuf,
        project_dir: PathBuf,
        from: Pos,
        what: &str,
        bytes: Result<&'t [u8], &std::io::Error>,
    ) -> Option<Node<'t>> {
        let text = match bytes {
            Ok(b) => b,
            Err(e) => {
                self.errors.push(
                    from,
                    "",
                    format!("cannot read {what} {}: {e}", path.display()),
                );
                return None;
            }
        };
        let id = self.add_file(path, base_dir, project_dir);
        let Ok(text) = std::str::from_utf8(text) else {
            self.errors.push(
                Pos {
                    file: id,
                    line: 1,
                    col: 1,
                },
                "",
                "file is not valid UTF-8",
            );
            return None;
        };
        let node = yaml::parse(text, id, &mut self.errors)?;
        match node.kind {
            Kind::Map(_) => Some(node),
            // Nothing (or only comments): almost always the wrong file or a truncated one, and
            // applying it would silently mean "no services".
            Kind::Null => {
                self.errors.push(
                    Pos {
                        file: id,
                        line: 1,
                        col: 1,
                    },
                    "",
                    format!("empty {what}"),
                );
                None
            }
            _ => {
                self.errors.push(
                    node.pos,
                    "",
                    format!("top-level must be a mapping, found {}", node.type_name()),
                );
                None
            }
        }
    }

    /// Interpolates every scalar value (not keys) in place. The key path is only rendered
    /// when something is reported.
    fn interpolate(
        &mut self,
        node: &mut Node<'_>,
        env: &BTreeMap<String, String>,
        path: &KeyPath<'_>,
    ) {
        let pos = node.pos;
        match &mut node.kind {
            Kind::Null => {}
            Kind::Scalar { value, plain } => {
                if !value.contains('$') {
                    return;
                }
                // An interpolated value is a string to compose (a number or boolean only where
                // its schema casts it), whatever text the variable held.
                *plain = false;
                let lookup = |k: &str| env.get(k).cloned();
                match interp::interpolate(value, &lookup) {
                    Ok(r) => {
                        for var in r.unset {
                            self.warnings.push(
                                pos,
                                path.to_string(),
                                format!(
                                    "The {var:?} variable is not set. Defaulting to a blank string."
                                ),
                            );
                        }
                        *value = Cow::Owned(r.value);
                    }
                    Err(e) => self.errors.push(pos, path.to_string(), e.to_string()),
                }
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.interpolate(item, env, &path.at(i));
                }
            }
            Kind::Map(entries) => {
                for e in entries.iter_mut() {
                    self.interpolate(&mut e.value, env, &path.key(&e.key));
                }
            }
        }
    }

    /// The variables used for interpolation: env files (or `<dir>/.env`), overlaid by `base`
    /// (the process environment, or the including project's variables for an `include`),
    /// which wins as in compose. Inside the env files, `base` also wins over variables the
    /// files define, and a later file sees the variables of the earlier ones.
    fn project_env(
        &mut self,
        dir: &Path,
        env_files: &[PathBuf],
        from: Pos,
        base: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let explicit = !env_files.is_empty();
        let files: Vec<PathBuf> = if explicit {
            env_files.to_vec()
        } else {
            vec![dir.join(".env")]
        };
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.errors.push(
                        from,
                        "",
                        format!("cannot read env file {}: {e}", f.display()),
                    );
                    continue;
                }
            };
            let earlier = &env;
            let lookup = |k: &str| base.get(k).or_else(|| earlier.get(k)).cloned();
            match crate::dotenv::parse(&text, &lookup) {
                Ok(vars) => env.extend(vars),
                Err(e) => {
                    let id = self.add_file(&f, dir.to_path_buf(), dir.to_path_buf());
                    self.errors.push(
                        Pos {
                            file: id,
                            line: e.line(),
                            col: 1,
                        },
                        "",
                        e.to_string(),
                    );
                }
            }
        }
        for (k, v) in base {
            env.insert(k.clone(), v.clone());
        }
        env
    }

    /// Loads one compose file of a project: parse, interpolate, `include`, `extends`.
    fn load_file(
        &mut self,
        path: &Path,
        base_dir: &Path,
        env: &BTreeMap<String, String>,
        stack: &mut Vec<PathBuf>,
        from: Pos,
    ) -> Option<Node<'static>> {
        if self.in_cycle(path, stack, from) {
            return None;
        }
        let bytes = std::fs::read(path);
        let node = self
            .read_yaml(
                path,
                base_dir.to_path_buf(),
                base_dir.to_path_buf(),
                from,
                "compose file",
                bytes.as_deref(),
            )?
            .into_owned();
        Some(self.process_file(node, path, env, stack))
    }

    fn in_cycle(&mut self, path: &Path, stack: &[PathBuf], from: Pos) -> bool {
        if stack.iter().any(|p| p == path) {
            self.errors.push(
                from,
                "include",
                format!("include cycle through {}", path.display()),
            );
            return true;
        }
        false
    }

    /// Interpolation, `include` and `extends` of one parsed compose file.
    fn process_file<'t>(
        &mut self,
        mut node: Node<'t>,
        path: &Path,
        env: &BTreeMap<String, String>,
        stack: &mut Vec<PathBuf>,
    ) -> Node<'t> {
        self.interpolate(&mut node, env, &KeyPath::Root);
        resolve_bare_environment(&mut node, env);
        stack.push(path.to_path_buf());
        self.apply_include(&mut node, env, stack);
        stack.pop();
        self.apply_extends(&mut node, path);
        node
    }

    fn apply_include(
        &mut self,
        node: &mut Node<'_>,
        parent_env: &BTreeMap<String, String>,
        stack: &mut Vec<PathBuf>,
    ) {
        let Some(entries) = node.as_map_mut() else {
            return;
        };
        let Some(idx) = entries.iter().position(|e| e.key == "include") else {
            return;
        };
        let inc = entries.remove(idx).value;
        let items = match inc.kind {
            Kind::Seq(items) => items,
            Kind::Null => return,
            _ => {
                self.errors.push(inc.pos, "include", "must be a list");
                return;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("include[{i}]");
            let here = self.base_dir(item.pos).to_path_buf();
            let (paths, env_files, project_dir) = match &item.kind {
                Kind::Scalar { value, .. } => {
                    (vec![(value.to_string(), item.pos)], Vec::new(), None)
                }
                Kind::Map(m) => {
                    let mut paths = Vec::new();
                    let mut env_files = Vec::new();
                    let mut project_dir = None;
                    for e in m {
                        match (&*e.key, &e.value.kind) {
                            ("path", Kind::Scalar { value, .. }) => {
                                paths.push((value.to_string(), e.value.pos))
                            }
                            ("path", Kind::Seq(s)) | ("env_file", Kind::Seq(s)) => {
                                for v in s {
                                    match v.scalar() {
                                        Some(x) if e.key == "path" => {
                                            paths.push((x.to_owned(), v.pos))
                                        }
                                        Some(x) => env_files.push(absolutize(&here, Path::new(x))),
                                        None => self.errors.push(
                                            v.pos,
                                            format!("{path}.{}", e.key),
                                            "must be a string",
                                        ),
                                    }
                                }
                            }
                            ("env_file", Kind::Scalar { value, .. }) => {
                                env_files.push(absolutize(&here, Path::new(&**value)))
                            }
                            ("project_directory", Kind::Scalar { value, .. }) => {
                                project_dir = Some(absolutize(&here, Path::new(&**value)))
                            }
                            (k, _) if k.starts_with("x-") => {}
                            ("path" | "env_file" | "project_directory", _) => self.errors.push(
                                e.value.pos,
                                format!("{path}.{}", e.key),
                                "must be a string or a list of strings",
                            ),
                            (k, _) => {
                                self.errors
                                    .push(e.key_pos, format!("{path}.{k}"), "unknown key")
                            }
                        }
                    }
                    (paths, env_files, project_dir)
                }
                _ => {
                    self.errors
                        .push(item.pos, path, "must be a path or a mapping");
                    continue;
                }
            };
            if paths.is_empty() {
                self.errors.push(item.pos, path, "`path` is required");
                continue;
            }
            let first = absolutize(&here, Path::new(&paths[0].0));
            let dir = project_dir.unwrap_or_else(|| {
                first
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| here.clone())
            });
            let env = self.project_env(&dir, &env_files, item.pos, parent_env);
            let mut merged: Option<Node<'_>> = None;
            for (p, ppos) in paths {
                let abs = absolutize(&here, Path::new(&p));
                if let Some(n) = self.load_file(&abs, &dir, &env, stack, ppos) {
                    merged = Some(match merged {
                        None => n,
                        Some(base) => merge::merge_files(base, n),
                    });
                }
            }
            let Some(included) = merged else { continue };
            self.add_included(node, included);
        }
    }

    /// Adds an included project's resources. A name already defined (locally, or by an
    /// earlier include) is merged with the existing definition taking precedence, as compose
    /// does: including a file twice is harmless and a local service overrides an included one.
    fn add_included<'t>(&mut self, node: &mut Node<'t>, included: Node<'t>) {
        let Kind::Map(inc_entries) = included.kind else {
            return;
        };
        let Some(entries) = node.as_map_mut() else {
            return;
        };
        for ie in inc_entries {
            if !matches!(
                &*ie.key,
                "services" | "networks" | "volumes" | "configs" | "secrets"
            ) {
                continue;
            }
            let Kind::Map(items) = ie.value.kind else {
                continue;
            };
            let section = match entries.iter().position(|e| e.key == ie.key) {
                Some(i) => &mut entries[i].value,
                None => {
                    entries.push(Entry {
                        key: ie.key.clone(),
                        key_pos: ie.key_pos,
                        value: Node::map(ie.value.pos, Vec::new()),
                    });
                    &mut entries.last_mut().expect("just pushed").value
                }
            };
            if matches!(section.kind, Kind::Null) {
                section.kind = Kind::Map(Vec::new());
            }
            let Some(sec) = section.as_map_mut() else {
                continue;
            };
            for item in items {
                match sec.iter_mut().find(|e| e.key == item.key) {
                    Some(existing) => {
                        let local = std::mem::replace(
                            &mut existing.value,
                            Node::new(item.key_pos, Kind::Null),
                        );
                        existing.value = if ie.key == "services" {
                            merge::merge_service(item.value, local)
                        } else {
                            merge::merge_resource(item.value, local)
                        };
                    }
                    None => sec.push(item),
                }
            }
        }
    }

    /// Resolves `extends` for every service of one file.
    fn apply_extends(&mut self, node: &mut Node<'_>, path: &Path) {
        let has_extends = node
            .get("services")
            .and_then(Node::as_map)
            .is_some_and(|m| m.iter().any(|e| e.value.get("extends").is_some()));
        if !has_extends {
            return;
        }
        let Some(services) = node.get("services").cloned() else {
            return;
        };
        let names: Vec<String> = services
            .as_map()
            .into_iter()
            .flatten()
            .filter(|e| e.value.get("extends").is_some())
            .map(|e| e.key.to_string())
            .collect();
        for name in names {
            let mut chain = Vec::new();
            if let Some(resolved) = self.resolve_service(&services, path, &name, &mut chain)
                && let Some(slot) = node.get_mut("services").and_then(|s| s.get_mut(&name))
            {
                *slot = resolved;
            }
        }
    }

    /// Returns service `name` of `services` (from file `path`) with its `extends` chain applied.
    fn resolve_service<'t>(
        &mut self,
        services: &Node<'t>,
        path: &Path,
        name: &str,
        chain: &mut Vec<(PathBuf, String)>,
    ) -> Option<Node<'t>> {
        let svc = services.get(name)?.clone();
        let Some(ext) = svc.get("extends").cloned() else {
            return Some(svc);
        };
        let key = (path.to_path_buf(), name.to_owned());
        let p = format!("services.{name}.extends");
        if chain.contains(&key) {
            self.errors.push(
                ext.pos,
                p,
                format!("circular extends through service {name:?}"),
            );
            return None;
        }
        let (base_name, file) = match &ext.kind {
            Kind::Scalar { value, .. } => (value.to_string(), None),
            Kind::Map(m) => {
                let mut service = None;
                let mut file = None;
                for e in m {
                    match (&*e.key, e.value.scalar()) {
                        ("service", Some(v)) => service = Some(v.to_owned()),
                        ("file", Some(v)) => file = Some((v.to_owned(), e.value.pos)),
                        ("service" | "file", None) => self.errors.push(
                            e.value.pos,
                            format!("{p}.{}", e.key),
                            "must be a string",
                        ),
                        (k, _) => self
                            .errors
                            .push(e.key_pos, format!("{p}.{k}"), "unknown key"),
                    }
                }
                let Some(service) = service else {
                    self.errors.push(ext.pos, p, "`service` is required");
                    return None;
                };
                (service, file)
            }
            _ => {
                self.errors
                    .push(ext.pos, p, "must be a service name or a mapping");
                return None;
            }
        };
        chain.push(key);
        let base = match file {
            None => {
                if services.get(&base_name).is_none() {
                    self.errors.push(
                        ext.pos,
                        p,
                        format!(
                            "cannot extend service {base_name:?}: no such service in this file"
                        ),
                    );
                    None
                } else {
                    self.resolve_service(services, path, &base_name, chain)
                }
            }
            Some((f, fpos)) => {
                // Relative to the directory paths of this file resolve against (the project
                // directory, an include's project_directory, or an extended file's own
                // directory), as compose's resource loader does.
                let here = self.base_dir(fpos).to_path_buf();
                let abs = absolutize(&here, Path::new(&f));
                let other = self.extends_file(&abs, fpos);
                match other.as_ref().and_then(|o| o.get("services")) {
                    Some(other_services) if other_services.get(&base_name).is_some() => {
                        let other_services = other_services.clone();
                        self.resolve_service(&other_services, &abs, &base_name, chain)
                    }
                    Some(_) | None => {
                        if other.is_some() {
                            self.errors.push(
                                ext.pos,
                                p,
                                format!("cannot extend service {base_name:?}: not found in {f}"),
                            );
                        }
                        None
                    }
                }
            }
        };
        chain.pop();
        let base = base?;
        let mut local = svc;
        if let Some(m) = local.as_map_mut() {
            m.retain(|e| e.key != "extends");
        }
        Some(merge::merge_service(base, local))
    }

    /// Loads a file named by `extends.file` once; paths in it resolve against its own directory.
    fn extends_file(&mut self, abs: &Path, from: Pos) -> Option<Node<'static>> {
        if let Some(cached) = self.extends_cache.get(abs) {
            return cached.clone();
        }
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        let project_dir = self.project_dir(from).to_path_buf();
        let env = self.current_env.clone();
        let bytes = std::fs::read(abs);
        let node = self
            .read_yaml(
                abs,
                dir,
                project_dir,
                from,
                "extended file",
                bytes.as_deref(),
            )
            .map(|n| {
                let mut n = n.into_owned();
                self.interpolate(&mut n, &env, &KeyPath::Root);
                n
            });
        self.extends_cache.insert(abs.to_path_buf(), node.clone());
        node
    }
}

/// Gives the bare `- KEY` items of list-form service `environment` their value from the
/// variables of the file they are written in, as compose does per file: an included file's
/// `env_file` thus reaches its services, and not the including project's.
fn resolve_bare_environment(node: &mut Node<'_>, env: &BTreeMap<String, String>) {
    let Some(services) = node.get_mut("services").and_then(Node::as_map_mut) else {
        return;
    };
    for svc in services {
        let Some(Kind::Seq(items)) = svc.value.get_mut("environment").map(|e| &mut e.kind) else {
            continue;
        };
        for item in items {
            if let Kind::Scalar { value, .. } = &mut item.kind
                && !value.contains('=')
                && let Some(v) = env.get(&**value)
            {
                *value = Cow::Owned(format!("{value}={v}"));
            }
        }
    }
}

/// Finds the compose file to use when none is given, plus its `*.override.{yaml,yml}` sibling,
/// which compose merges automatically.
fn discover(dir: &Path) -> Option<Vec<PathBuf>> {
    let main = DEFAULT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())?;
    let stem = if main
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("docker-"))
    {
        "docker-compose"
    } else {
        "compose"
    };
    let mut files = vec![main];
    if let Some(o) = ["yaml", "yml"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.override.{ext}")))
        .find(|p| p.is_file())
    {
        files.push(o);
    }
    Some(files)
}

/// Loads, merges, validates and normalises compose files into the canonical model.
pub fn load(opts: &LoadOptions) -> Result<Loaded, SpecErrors> {
    let mut ctx = Ctx::new(opts);
    // File 0 is a pseudo file for problems without a location.
    ctx.files.push(FileInfo {
        display: String::new(),
        base_dir: opts.working_dir.clone(),
        project_dir: opts.working_dir.clone(),
    });
    let files: Vec<PathBuf> = if opts.files.is_empty() {
        match discover(&opts.working_dir) {
            Some(f) => f,
            None => {
                ctx.errors.push(
                    Ctx::nowhere(),
                    "",
                    format!(
                        "no compose file found in {} (looked for {})",
                        opts.working_dir.display(),
                        DEFAULT_FILES.join(", ")
                    ),
                );
                let (errors, warnings, _) = ctx.finish();
                return Err(SpecErrors { errors, warnings });
            }
        }
    } else {
        opts.files
            .iter()
            .map(|f| absolutize(&opts.working_dir, f))
            .collect()
    };
    let project_dir = match &opts.project_dir {
        Some(d) => absolutize(&opts.working_dir, d),
        None => files[0]
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| opts.working_dir.clone()),
    };
    let env_files: Vec<PathBuf> = opts
        .env_files
        .iter()
        .map(|f| absolutize(&opts.working_dir, f))
        .collect();
    let process_env = opts.environment.clone();
    let mut env = ctx.project_env(&project_dir, &env_files, Ctx::nowhere(), &process_env);
    // Read and parse up front so that the trees can borrow their text from here, and so that
    // the project name (from `name:`) is known before interpolation.
    let texts: Vec<std::io::Result<Vec<u8>>> = files.iter().map(std::fs::read).collect();
    let mut parsed = Vec::with_capacity(files.len());
    for (f, text) in files.iter().zip(&texts) {
        let n = ctx.read_yaml(
            f,
            project_dir.clone(),
            project_dir.clone(),
            Ctx::nowhere(),
            "compose file",
            text.as_deref(),
        );
        parsed.push(n);
    }
    // Compose makes the project name available to interpolation as COMPOSE_PROJECT_NAME
    // (overriding the environment's value).
    if let Some(name) = convert::early_project_name(opts, &parsed, &env, &project_dir) {
        env.insert("COMPOSE_PROJECT_NAME".to_owned(), name);
    }
    ctx.current_env = env.clone();
    let mut merged: Option<Node<'_>> = None;
    let mut stack = Vec::new();
    let mut all_parsed = true;
    for (f, n) in files.iter().zip(parsed) {
        let Some(n) = n else {
            all_parsed = false;
            continue;
        };
        let n = ctx.process_file(n, f, &env, &mut stack);
        merged = Some(match merged {
            None => n,
            Some(base) => merge::merge_files(base, n),
        });
    }
    let mut extensions = BTreeMap::new();
    let project = match merged {
        // Validation still runs after interpolation errors so that all problems show at once.
        Some(root) if all_parsed => {
            extensions = crate::extensions::top_level(&root);
            convert::project(&mut ctx, root, opts, &project_dir, &env)
        }
        _ => None,
    };
    let source_env = SourceEnv(std::mem::take(&mut ctx.source_env));
    let (errors, warnings, sources) = ctx.finish();
    match project {
        Some(project) if errors.is_empty() => Ok(Loaded {
            project,
            warnings,
            files,
            extensions,
            sources,
            source_env,
        }),
        _ => Err(SpecErrors { errors, warnings }),
    }
}
