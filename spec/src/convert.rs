//! Node tree → canonical model, collecting every validation error with its position.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::conformance::{self as cf, Object, Support};
use crate::error::{KeyPath, Pos};
use crate::loader::{Ctx, LoadOptions, absolutize};
use crate::merge::list_to_map_ref;
use crate::model::*;
use crate::syntax;
use crate::units;
use crate::yaml::{Entry, Kind, MergeTag, Node};

/// compose keeps `x-*` keys on nearly every object, and so does the model; the few objects it
/// has no place for say so rather than dropping the key unseen.
const DROPPED_EXTENSION: &str = "extension dropped: dcpp keeps `x-*` keys on every object except `external`, env_file entries and ulimits";

/// References collected while converting services, validated once everything is known.
#[derive(Default)]
struct Refs {
    depends: Vec<(String, String, Pos, String)>,
    networks: Vec<(String, String, Pos, String)>,
    volumes: Vec<(String, String, Pos, String)>,
    secrets: Vec<(String, String, Pos, String)>,
    configs: Vec<(String, String, Pos, String)>,
    network_mode: Vec<(String, String, Pos, String)>,
    service_pos: BTreeMap<String, Pos>,
    /// Per (section, key) of a secret or config: why its data cannot be read, at its position,
    /// and the variable its `environment:` names.
    sources: BTreeMap<(String, String), ObjectSource>,
}

#[derive(Default)]
struct ObjectSource {
    problem: Option<(Pos, String, String)>,
    variable: Option<String>,
}

pub(crate) struct Cv<'a> {
    ctx: &'a mut Ctx,
    env: &'a BTreeMap<String, String>,
    refs: Refs,
}

impl Cv<'_> {
    fn err(&mut self, pos: Pos, path: &dyn std::fmt::Display, msg: impl Into<String>) {
        self.ctx.errors.push(pos, path.to_string(), msg);
    }

    fn warn(&mut self, pos: Pos, path: &dyn std::fmt::Display, msg: impl Into<String>) {
        self.ctx.warnings.push(pos, path.to_string(), msg);
    }

    fn base_dir(&self, pos: Pos) -> PathBuf {
        self.ctx.base_dir(pos).to_path_buf()
    }

    /// An accepted key whose setting dcpp does not act on (yet): a warning at its position,
    /// so nothing in a file is silently without effect.
    fn unapplied(&mut self, pos: Pos, path: &dyn std::fmt::Display, why: &str) {
        self.warn(
            pos,
            path,
            format!("accepted but not applied by dcpp: {why}"),
        );
    }

    /// What the conformance table says of `key` for the value found (`detail` names it when
    /// the entry holds for some values only): a warning, or an error for a refusal.
    fn note(
        &mut self,
        pos: Pos,
        path: &dyn std::fmt::Display,
        key: &cf::Key,
        detail: Option<&str>,
    ) {
        let why = match detail {
            Some(d) => format!("{d}: {}", key.why),
            None => key.why.to_owned(),
        };
        match key.support {
            Support::Refused => self.err(pos, path, format!("not supported: {why}")),
            Support::Unapplied => self.unapplied(pos, path, &why),
            Support::Ignored | Support::Deprecated => self.warn(pos, path, why),
            Support::Applied => {}
        }
    }

    /// The entries of a mapping (`null` counts as empty) whose keys `object` lists; other keys
    /// are errors, `!reset` values are skipped, `x-*` keys are dropped with a warning.
    fn fields<'n, 'y>(
        &mut self,
        n: &'n Node<'y>,
        path: &'n KeyPath<'n>,
        object: &Object,
    ) -> Vec<(&'n str, &'n Node<'y>, KeyPath<'n>)> {
        self.scan(n, path, object, None)
    }

    /// [`Cv::fields`] for an object that keeps its `x-*` keys in `ext`, as compose keeps
    /// them on services, networks, volumes, configs and secrets.
    fn fields_keeping<'n, 'y>(
        &mut self,
        n: &'n Node<'y>,
        path: &'n KeyPath<'n>,
        object: &Object,
        ext: &mut Extensions,
    ) -> Vec<(&'n str, &'n Node<'y>, KeyPath<'n>)> {
        self.scan(n, path, object, Some(ext))
    }

    /// Reads a mapping by the conformance table: a key's first entry, when it holds whatever
    /// the value, is acted on here (warned about, left out, refused); entries that hold for
    /// some values only are the caller's to check.
    fn scan<'n, 'y>(
        &mut self,
        n: &'n Node<'y>,
        path: &'n KeyPath<'n>,
        object: &Object,
        mut ext: Option<&mut Extensions>,
    ) -> Vec<(&'n str, &'n Node<'y>, KeyPath<'n>)> {
        let entries: &[Entry<'y>] = match &n.kind {
            Kind::Map(m) => m,
            Kind::Null => &[],
            _ => {
                self.err(
                    n.pos,
                    path,
                    format!("must be a mapping, found {}", n.type_name()),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for e in entries {
            let p = path.key(&e.key);
            if e.value.tag == Some(MergeTag::Reset) {
                continue;
            }
            if e.key.starts_with("x-") {
                match ext.as_deref_mut() {
                    Some(m) => {
                        m.insert(e.key.to_string(), crate::extensions::value(&e.value));
                    }
                    None => self.warn(e.key_pos, &p, DROPPED_EXTENSION),
                }
                continue;
            }
            let Some(key) = object.get(&e.key) else {
                self.err(e.key_pos, &p, "unknown key");
                continue;
            };
            let always = key.when.is_empty() && !key.why.is_empty();
            match key.support {
                // A refusal points at the value, as the errors of a value do.
                Support::Refused if always => {
                    self.note(e.value.pos, &p, key, None);
                    continue;
                }
                Support::Ignored if always => {
                    self.note(e.key_pos, &p, key, None);
                    continue;
                }
                Support::Unapplied | Support::Deprecated if always => {
                    self.note(e.key_pos, &p, key, None)
                }
                _ => {}
            }
            out.push((&*e.key, &e.value, p));
        }
        out
    }

    /// Entries of a user-keyed mapping (service names, labels, …); `x-*` kept out only when asked.
    fn entries<'n, 'y>(&mut self, n: &'n Node<'y>, path: &KeyPath<'_>) -> &'n [Entry<'y>] {
        match &n.kind {
            Kind::Map(m) => m,
            Kind::Null => &[],
            _ => {
                self.err(
                    n.pos,
                    path,
                    format!("must be a mapping, found {}", n.type_name()),
                );
                &[]
            }
        }
    }

    fn string(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<String> {
        match &n.kind {
            Kind::Scalar { value, .. } => Some(value.to_string()),
            _ => {
                self.err(
                    n.pos,
                    path,
                    format!("must be a string, found {}", n.type_name()),
                );
                None
            }
        }
    }

    fn opt_string(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<String> {
        match n.kind {
            Kind::Null => None,
            _ => self.string(n, path),
        }
    }

    fn boolean(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<bool> {
        // The spellings compose's boolean cast accepts (`init: yes`), in any case.
        match n.scalar().map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "yes" | "y" | "on") => Some(true),
            Some("false" | "no" | "n" | "off") => Some(false),
            _ => {
                let shown = n
                    .scalar()
                    .map_or(n.type_name().to_owned(), |s| format!("{s:?}"));
                self.err(n.pos, path, format!("must be a boolean, found {shown}"));
                None
            }
        }
    }

    fn uint(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<u64> {
        match n.scalar().map(|s| s.parse::<u64>()) {
            Some(Ok(v)) => Some(v),
            _ => {
                let shown = n
                    .scalar()
                    .map_or(n.type_name().to_owned(), |s| format!("{s:?}"));
                self.err(
                    n.pos,
                    path,
                    format!("must be a non-negative integer, found {shown}"),
                );
                None
            }
        }
    }

    fn int(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<i64> {
        match n.scalar().map(|s| s.parse::<i64>()) {
            Some(Ok(v)) => Some(v),
            _ => {
                let shown = n
                    .scalar()
                    .map_or(n.type_name().to_owned(), |s| format!("{s:?}"));
                self.err(n.pos, path, format!("must be an integer, found {shown}"));
                None
            }
        }
    }

    fn float(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<f64> {
        match n.scalar().map(|s| s.parse::<f64>()) {
            Some(Ok(v)) if v.is_finite() && v >= 0.0 => Some(v),
            _ => {
                let shown = n
                    .scalar()
                    .map_or(n.type_name().to_owned(), |s| format!("{s:?}"));
                self.err(
                    n.pos,
                    path,
                    format!("must be a non-negative number, found {shown}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<Duration> {
        let s = self.string(n, path)?;
        match Duration::parse(&s) {
            Some(d) => Some(d),
            None => {
                self.err(n.pos, path, format!("invalid duration {s:?}"));
                None
            }
        }
    }

    fn size(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Option<u64> {
        let s = self.string(n, path)?;
        match units::parse_size(&s) {
            Some(v) => Some(v),
            None => {
                self.err(n.pos, path, format!("invalid size {s:?}"));
                None
            }
        }
    }

    fn str_list(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Vec<String> {
        match &n.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| self.string(it, &path.at(i)))
                .collect(),
            Kind::Null => Vec::new(),
            _ => {
                self.err(
                    n.pos,
                    path,
                    format!("must be a list, found {}", n.type_name()),
                );
                Vec::new()
            }
        }
    }

    fn str_or_list(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Vec<String> {
        match &n.kind {
            Kind::Scalar { value, .. } => vec![value.to_string()],
            _ => self.str_list(n, path),
        }
    }

    fn unique(list: Vec<String>) -> Vec<String> {
        let mut seen = BTreeSet::new();
        list.into_iter()
            .filter(|s| seen.insert(s.clone()))
            .collect()
    }

    /// A `KEY: value` map or a `KEY=value` list. `None` values mark keys without a value.
    fn kv(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> Vec<(String, Option<String>, Pos)> {
        let converted = list_to_map_ref(n, true);
        let node = converted.as_ref().unwrap_or(n);
        let mut out: Vec<(String, Option<String>, Pos)> = Vec::new();
        for e in self.entries(node, path) {
            let p = path.key(&e.key);
            if e.key.is_empty() {
                self.err(
                    e.value.pos,
                    path,
                    format!("entries must be strings, found {}", e.value.type_name()),
                );
                continue;
            }
            let v = match &e.value.kind {
                Kind::Null => None,
                Kind::Scalar { value, .. } => Some(value.to_string()),
                _ => {
                    self.err(
                        e.value.pos,
                        &p,
                        format!(
                            "must be a string, number or boolean, found {}",
                            e.value.type_name()
                        ),
                    );
                    continue;
                }
            };
            out.retain(|(k, _, _)| k != &e.key);
            out.push((e.key.to_string(), v, e.key_pos));
        }
        out
    }

    fn labels(&mut self, n: &Node<'_>, path: &KeyPath<'_>) -> BTreeMap<String, String> {
        self.kv(n, path)
            .into_iter()
            .map(|(k, v, _)| (k, v.unwrap_or_default()))
            .collect()
    }

    /// Makes a host path absolute against the directory of the file it was written in.
    fn host_path(&self, s: &str, pos: Pos) -> String {
        // An absolute Windows path is kept as written, as compose-go keeps it on any host.
        if syntax::windows_path(s) {
            return s.to_owned();
        }
        if let Some(rest) = s.strip_prefix('~')
            && (rest.is_empty() || rest.starts_with('/'))
            && let Some(home) = self.env.get("HOME")
        {
            return absolutize(Path::new(home), Path::new(rest.trim_start_matches('/')))
                .display()
                .to_string();
        }
        absolutize(&self.base_dir(pos), Path::new(s))
            .display()
            .to_string()
    }
}

/// Replicas of one service at most. Far above what one cluster of this design runs, and low
/// enough that a typo (or `4294967295`) cannot make the scheduler try to create billions of
/// tasks.
pub const MAX_REPLICAS: u64 = 10_000;

fn too_many_replicas(n: i64) -> String {
    format!("{n} replicas is more than the {MAX_REPLICAS} a service may have")
}

/// A network name: it becomes a file name in the data dir, part of nft rules and of link
/// names, so it is held to docker's rule (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`) and a length the
/// runtime takes.
pub(crate) fn valid_network_name(s: &str) -> bool {
    s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_project_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Compose's normalisation of a directory name into a project name.
pub fn normalize_project_name(s: &str) -> String {
    let lower = s.to_lowercase();
    let kept: String = lower
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_owned()
}

pub(crate) fn project(
    ctx: &mut Ctx,
    root: Node<'_>,
    opts: &LoadOptions,
    project_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Option<Project> {
    let mut cv = Cv {
        ctx,
        env,
        refs: Refs::default(),
    };
    // The top-level extensions are taken from the merged files by the loader.
    let top = cv.fields_keeping(&root, &KeyPath::Root, &cf::TOP, &mut Extensions::new());
    let mut name_field = None;
    let mut sections: BTreeMap<&str, &Node<'_>> = BTreeMap::new();
    for (k, v, p) in &top {
        match *k {
            "name" => {
                // A plain number or boolean is not a string for compose's schema.
                if let Kind::Scalar { value, plain: true } = &v.kind
                    && (value.parse::<f64>().is_ok()
                        || matches!(&**value, "true" | "false" | "True" | "False"))
                {
                    cv.err(v.pos, p, format!("must be a string, found {value}"));
                } else {
                    name_field = cv.string(v, p).map(|n| (n, v.pos));
                }
            }
            _ => {
                sections.insert(k, v);
            }
        }
    }

    let name = project_name(&mut cv, opts, name_field, project_dir);

    let mut networks = BTreeMap::new();
    if let Some(n) = sections.get("networks") {
        for e in cv.entries(n, &KeyPath::Text("networks")) {
            let path = KeyPath::Text("networks").key(&e.key);
            if !valid_network_name(&e.key) {
                cv.err(e.key_pos, &path, invalid_network_name(&e.key));
            }
            if let Some(net) = network(&mut cv, &e.value, &path) {
                networks.insert(e.key.to_string(), net);
            }
        }
    }
    let mut volumes = BTreeMap::new();
    if let Some(n) = sections.get("volumes") {
        for e in cv.entries(n, &KeyPath::Text("volumes")) {
            if let Some(v) = volume(&mut cv, &e.value, &KeyPath::Text("volumes").key(&e.key)) {
                volumes.insert(e.key.to_string(), v);
            }
        }
    }
    let mut configs = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (section, out) in [("configs", &mut configs), ("secrets", &mut secrets)] {
        if let Some(n) = sections.get(section) {
            for e in cv.entries(n, &KeyPath::Text(section)) {
                if let Some(v) = file_object(
                    &mut cv,
                    &e.value,
                    &KeyPath::Text(section).key(&e.key),
                    section,
                ) {
                    out.insert(e.key.to_string(), v);
                }
            }
        }
    }

    let mut services = BTreeMap::new();
    // (service, container_name, its position) in file order, checked once profiles are applied.
    let mut container_names: Vec<(String, String, Pos)> = Vec::new();
    if let Some(n) = sections.get("services") {
        let sp = KeyPath::Text("services");
        for e in cv.entries(n, &sp) {
            // Only top-level `x-` keys are extensions: a service may be called `x-foo`.
            let p = sp.key(&e.key);
            if !valid_service_name(&e.key) {
                cv.err(
                    e.key_pos,
                    &p,
                    "invalid service name: use only [a-zA-Z0-9._-]",
                );
                continue;
            }
            cv.refs.service_pos.insert(e.key.to_string(), e.key_pos);
            if let Some(mut s) = service(&mut cv, &e.key, &e.value, &p) {
                implicit_depends_on(&mut cv, &e.key, &e.value, &p, &mut s);
                if let Some(c) = &s.container_name {
                    let pos = e.value.get("container_name").map_or(e.key_pos, |v| v.pos);
                    container_names.push((e.key.to_string(), c.clone(), pos));
                }
                services.insert(e.key.to_string(), s);
            }
        }
    }

    apply_profiles(&mut cv, &mut services, opts);
    // Two containers of one name cannot both exist on a node, and compose refuses it too.
    let mut named: Vec<(&str, &str)> = Vec::new();
    for (svc, c, pos) in &container_names {
        if !services.contains_key(svc) {
            continue;
        }
        match named.iter().find(|(n, _)| n == c) {
            Some((_, first)) => cv.err(
                *pos,
                &format!("services.{svc}.container_name"),
                format!("container name {c:?} is already in use by service {first}"),
            ),
            None => named.push((c, svc)),
        }
    }
    // `check_refs` consumes the references; the object sources are read after it.
    let sources = std::mem::take(&mut cv.refs.sources);
    check_refs(
        &mut cv,
        &mut services,
        &networks,
        &volumes,
        &configs,
        &secrets,
    );

    let name = name?;
    // Services without networks join the project's default network, as compose does.
    let mut uses_default = false;
    for s in services.values_mut() {
        if s.network_mode.is_none() && s.networks.is_empty() {
            s.networks.insert("default".to_owned(), None);
        }
        uses_default |= s.networks.contains_key("default");
    }
    if uses_default {
        networks.entry("default".to_owned()).or_default();
    }
    for (k, n) in networks.iter_mut() {
        if n.name.is_none() {
            n.name = Some(if n.external {
                k.clone()
            } else {
                format!("{name}_{k}")
            });
        }
    }
    for (k, v) in volumes.iter_mut() {
        if v.name.is_none() {
            v.name = Some(if v.external {
                k.clone()
            } else {
                format!("{name}_{k}")
            });
        }
    }
    for (k, v) in configs.iter_mut().chain(secrets.iter_mut()) {
        if v.name.is_none() {
            v.name = Some(if v.external {
                k.clone()
            } else {
                format!("{name}_{k}")
            });
        }
    }
    // Resources no enabled service uses are left out, as `docker compose config` leaves them
    // out: nothing would create or mount them.
    let used_networks: BTreeSet<&String> =
        services.values().flat_map(|s| s.networks.keys()).collect();
    let used_volumes: BTreeSet<&String> = services
        .values()
        .flat_map(|s| &s.volumes)
        .filter(|v| v.kind == VolumeType::Volume)
        .filter_map(|v| v.source.as_ref())
        .collect();
    let used_secrets: BTreeSet<&String> = services
        .values()
        .flat_map(|s| &s.secrets)
        .map(|r| &r.source)
        .collect();
    let used_configs: BTreeSet<&String> = services
        .values()
        .flat_map(|s| &s.configs)
        .map(|r| &r.source)
        .collect();
    networks.retain(|k, _| used_networks.contains(k));
    volumes.retain(|k, _| used_volumes.contains(k));
    secrets.retain(|k, _| used_secrets.contains(k));
    configs.retain(|k, _| used_configs.contains(k));
    for ((section, key), src) in sources {
        let used = if section == "secrets" {
            secrets.contains_key(&key)
        } else {
            configs.contains_key(&key)
        };
        if !used {
            continue;
        }
        if let Some((pos, path, msg)) = src.problem {
            cv.ctx.sources.push(pos, path, msg);
        }
        if let Some(var) = src.variable
            && let Some(val) = cv.env.get(&var)
        {
            cv.ctx.source_env.insert(var, val.clone());
        }
    }
    Some(Project {
        name,
        services,
        networks,
        volumes,
        configs,
        secrets,
    })
}

/// A device in the long syntax (`source`, `target`, `permissions`), as compose-go's
/// DeviceMapping reads it, written as the short form the model keeps.
fn device_long(cv: &mut Cv<'_>, n: &Node<'_>, p: &KeyPath<'_>) -> Option<String> {
    let (mut source, mut target, mut permissions) = (None, None, None);
    for (k, v, fp) in cv.fields(n, p, &cf::DEVICE) {
        let value = cv.string(v, &fp);
        match k {
            "source" => source = value,
            "target" => target = value,
            _ => permissions = value,
        }
    }
    let Some(source) = source else {
        cv.err(n.pos, p, "a device needs a `source`");
        return None;
    };
    let target = target.unwrap_or_else(|| source.clone());
    Some(match permissions {
        Some(perm) => format!("{source}:{target}:{perm}"),
        None if target == source => source,
        None => format!("{source}:{target}"),
    })
}

/// One entry per key, as compose's unicity rule keeps lists after a merge: an entry whose key
/// was seen replaces the earlier one in its place.
fn unique_by<T>(list: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(list.len());
    let mut keys: Vec<String> = Vec::with_capacity(list.len());
    for item in list {
        let k = key(&item);
        match keys.iter().position(|x| *x == k) {
            Some(i) => out[i] = item,
            None => {
                keys.push(k);
                out.push(item);
            }
        }
    }
    out
}

/// The dependencies compose adds on its own: a service named by `links`, `volumes_from` or a
/// `service:` namespace (`network_mode`, `ipc`, `pid`, `uts`, `cgroup`) is started first. An
/// explicit `depends_on` entry for it wins.
fn implicit_depends_on(
    cv: &mut Cv<'_>,
    svc: &str,
    node: &Node<'_>,
    path: &KeyPath<'_>,
    s: &mut Service,
) {
    let mut add = |cv: &mut Cv<'_>, dep: &str, restart: bool, at: Option<(Pos, String)>| {
        if dep.is_empty() || s.depends_on.contains_key(dep) {
            return;
        }
        s.depends_on.insert(
            dep.to_owned(),
            DependsOn {
                condition: DependsOnCondition::ServiceStarted,
                restart,
                required: true,
                extensions: Extensions::new(),
            },
        );
        // network_mode has its own reference check; the others must name a service.
        if let Some((pos, p)) = at {
            cv.refs
                .depends
                .push((svc.to_owned(), dep.to_owned(), pos, p));
        }
    };
    for key in ["network_mode", "ipc", "pid", "uts", "cgroup"] {
        if let Some(v) = node.get(key)
            && let Some(dep) = v.scalar().and_then(|m| m.strip_prefix("service:"))
        {
            let at = (key != "network_mode").then(|| (v.pos, path.key(key).to_string()));
            add(cv, dep, true, at);
        }
    }
    for (key, restart) in [("links", true), ("volumes_from", false)] {
        let Some(Kind::Seq(items)) = node.get(key).map(|v| &v.kind) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let Some(text) = item.scalar() else { continue };
            if key == "volumes_from" && text.starts_with("container:") {
                continue;
            }
            let dep = text.split(':').next().unwrap_or_default();
            add(
                cv,
                dep,
                restart,
                Some((item.pos, path.key(key).at(i).to_string())),
            );
        }
    }
}

/// Docker's rule for container names.
fn valid_container_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// The project name as compose decides it before interpolation (so that
/// `COMPOSE_PROJECT_NAME` can be interpolated): `-p`, else `COMPOSE_PROJECT_NAME`, else the
/// last non-empty top-level `name:` (interpolated, then normalised), else the directory name.
/// Validation and its errors happen in [`project`].
pub(crate) fn early_project_name(
    opts: &LoadOptions,
    files: &[Option<Node<'_>>],
    env: &BTreeMap<String, String>,
    project_dir: &Path,
) -> Option<String> {
    if let Some(p) = &opts.project_name {
        return Some(p.clone());
    }
    if let Some(n) = env.get("COMPOSE_PROJECT_NAME").filter(|v| !v.is_empty()) {
        return Some(n.clone());
    }
    let raw = files
        .iter()
        .flatten()
        .filter_map(|f| f.get("name").and_then(Node::scalar))
        .rfind(|n| !n.is_empty());
    if let Some(raw) = raw {
        let lookup = |k: &str| env.get(k).cloned();
        let value =
            crate::interp::interpolate(raw, &lookup).map_or_else(|_| raw.to_owned(), |r| r.value);
        let n = normalize_project_name(&value);
        if !n.is_empty() {
            return Some(n);
        }
    }
    let n = normalize_project_name(&project_dir.file_name()?.to_string_lossy());
    (!n.is_empty()).then_some(n)
}

fn project_name(
    cv: &mut Cv<'_>,
    opts: &LoadOptions,
    name_field: Option<(String, Pos)>,
    project_dir: &Path,
) -> Option<String> {
    // `-p` and COMPOSE_PROJECT_NAME are taken as given and must be valid; `name:` is
    // normalised (compose lower-cases `myProject`), and falls through when nothing is left.
    let explicit = if let Some(p) = &opts.project_name {
        Some((p.clone(), "project name (-p)"))
    } else {
        cv.env
            .get("COMPOSE_PROJECT_NAME")
            .filter(|v| !v.is_empty())
            .map(|v| (v.clone(), "COMPOSE_PROJECT_NAME"))
    };
    if let Some((n, what)) = explicit {
        if valid_project_name(&n) {
            return Some(n);
        }
        cv.err(
            Ctx::nowhere(),
            &"",
            format!(
                "invalid {what} {n:?}: must consist only of lowercase alphanumeric characters, hyphens, and underscores as well as start with a letter or number"
            ),
        );
        return None;
    }
    if let Some((n, _)) = name_field {
        let n = normalize_project_name(&n);
        if !n.is_empty() {
            return Some(n);
        }
    }
    let dir_name = project_dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = normalize_project_name(&dir_name);
    if n.is_empty() {
        cv.err(
            Ctx::nowhere(),
            &KeyPath::Root,
            format!(
                "cannot derive a project name from directory {:?}; use -p or a top-level `name:`",
                dir_name
            ),
        );
        return None;
    }
    Some(n)
}

fn network(cv: &mut Cv<'_>, n: &Node<'_>, path: &KeyPath<'_>) -> Option<Network> {
    let mut net = Network::default();
    for (k, v, p) in cv.fields_keeping(n, path, &cf::NETWORK, &mut net.extensions) {
        match k {
            "name" => {
                net.name = cv.opt_string(v, &p);
                if let Some(n) = &net.name
                    && !valid_network_name(n)
                {
                    cv.err(v.pos, &p, invalid_network_name(n));
                }
            }
            "driver" => {
                net.driver = cv.opt_string(v, &p);
                if let Some(d) = net.driver.as_deref().filter(|d| *d != "bridge") {
                    let detail = format!("driver {d:?}");
                    cv.note(v.pos, &p, &cf::NETWORK_DRIVER, Some(&detail));
                }
            }
            "driver_opts" => net.driver_opts = cv.labels(v, &p),
            "labels" => net.labels = cv.labels(v, &p),
            "external" | "internal" | "attachable" | "enable_ipv6" => {
                let on = if k == "external" {
                    external(cv, v, &p, &mut net.name, &cf::NETWORK_EXTERNAL_NAME)?
                } else {
                    cv.boolean(v, &p)?
                };
                match k {
                    "external" => net.external = on,
                    "internal" => net.internal = on,
                    "attachable" => net.attachable = on,
                    _ => net.enable_ipv6 = on,
                }
                let flag = match k {
                    "external" => &cf::NETWORK_EXTERNAL,
                    "internal" => &cf::NETWORK_INTERNAL,
                    "attachable" => &cf::NETWORK_ATTACHABLE,
                    _ => &cf::NETWORK_IPV6,
                };
                if on {
                    cv.note(v.pos, &p, flag, None);
                }
            }
            "ipam" => {
                let mut ipam = Ipam::default();
                for (k, v, p) in cv.fields_keeping(v, &p, &cf::IPAM, &mut ipam.extensions) {
                    match k {
                        "driver" => {
                            ipam.driver = cv.opt_string(v, &p);
                            if let Some(d) = ipam.driver.as_deref().filter(|d| *d != "default") {
                                let detail = format!("ipam driver {d:?}");
                                cv.note(v.pos, &p, &cf::IPAM_DRIVER, Some(&detail));
                            }
                        }
                        _ => {
                            let items = match &v.kind {
                                Kind::Seq(items) => items.as_slice(),
                                _ => {
                                    cv.err(v.pos, &p, "must be a list");
                                    &[]
                                }
                            };
                            for (i, item) in items.iter().enumerate() {
                                let ip = p.at(i);
                                let mut pool = IpamPool::default();
                                for (k, v, p) in cv.fields_keeping(
                                    item,
                                    &ip,
                                    &cf::IPAM_POOL,
                                    &mut pool.extensions,
                                ) {
                                    match k {
                                        "subnet" => {
                                            pool.subnet = cv.opt_string(v, &p);
                                            if let Some(s) = &pool.subnet
                                                && !syntax::valid_cidr(s)
                                            {
                                                cv.err(v.pos, &p, format!("invalid subnet {s:?}"));
                                            } else if let Some(s) = &pool.subnet
                                                && s.contains(':')
                                            {
                                                let detail = format!("subnet {s:?}");
                                                cv.note(v.pos, &p, &cf::IPAM_IPV6, Some(&detail));
                                            }
                                        }
                                        "ip_range" => pool.ip_range = cv.opt_string(v, &p),
                                        "gateway" => pool.gateway = cv.opt_string(v, &p),
                                        _ => pool.aux_addresses = cv.labels(v, &p),
                                    }
                                }
                                if let Err(e) = crate::ipam::spec_of(&pool) {
                                    cv.err(item.pos, &ip, e.to_string());
                                }
                                ipam.config.push(pool);
                            }
                            if items.len() > 1 {
                                let detail = format!("{} config entries", items.len());
                                cv.note(v.pos, &p, &cf::IPAM_CONFIGS, Some(&detail));
                            }
                        }
                    }
                }
                net.ipam = Some(ipam);
            }
            _ => {}
        }
    }
    legacy_external_name(cv, n, path);
    // The legacy `external: {name: x}` form names the network too.
    if let Some(name) = &net.name
        && !valid_network_name(name)
        && n.get("name").is_none()
    {
        cv.err(n.pos, path, invalid_network_name(name));
    }
    Some(net)
}

fn invalid_network_name(n: &str) -> String {
    format!(
        "invalid network name {n:?}: must start with a letter or digit and contain only letters, digits, '_', '.' and '-' (at most 128)"
    )
}

/// `external: true|false` or the legacy `external: {name: x}`.
fn external(
    cv: &mut Cv<'_>,
    v: &Node<'_>,
    p: &KeyPath<'_>,
    name: &mut Option<String>,
    object: &Object,
) -> Option<bool> {
    if let Kind::Map(_) = v.kind {
        for (_, v, p) in cv.fields(v, p, object) {
            if let Some(n) = cv.string(v, &p) {
                *name = Some(n);
            }
        }
        return Some(true);
    }
    cv.boolean(v, p)
}

fn volume(cv: &mut Cv<'_>, n: &Node<'_>, path: &KeyPath<'_>) -> Option<Volume> {
    let mut vol = Volume::default();
    for (k, v, p) in cv.fields_keeping(n, path, &cf::VOLUME, &mut vol.extensions) {
        match k {
            "name" => vol.name = cv.opt_string(v, &p),
            "driver" => vol.driver = cv.opt_string(v, &p),
            "driver_opts" => vol.driver_opts = cv.labels(v, &p),
            "labels" => vol.labels = cv.labels(v, &p),
            _ => vol.external = external(cv, v, &p, &mut vol.name, &cf::VOLUME_EXTERNAL_NAME)?,
        }
    }
    // A local volume with `o: bind` is a bind mount of `device`, so compose resolves that path
    // like any other host path.
    if vol.driver.as_deref() == Some("local")
        && vol.driver_opts.get("o").map(String::as_str) == Some("bind")
        && let Some(pos) = n
            .get("driver_opts")
            .and_then(|o| o.get("device"))
            .map(|d| d.pos)
        && let Some(device) = vol.driver_opts.get_mut("device")
    {
        *device = cv.host_path(device, pos);
    }
    external_conflicts(cv, n, path, vol.external);
    legacy_external_name(cv, n, path);
    Some(vol)
}

/// An external volume is created elsewhere: settings for creating it cannot be honoured and
/// are refused, as compose refuses them (compose checks volumes only; on a network they are
/// accepted, and warned about where dcpp does not apply them).
fn external_conflicts(cv: &mut Cv<'_>, n: &Node<'_>, path: &KeyPath<'_>, external: bool) {
    if !external {
        return;
    }
    let Some(entries) = n.as_map() else { return };
    for e in entries {
        if !matches!(&*e.key, "name" | "external") && !e.key.starts_with("x-") {
            cv.err(
                e.key_pos,
                &path.key(&e.key),
                format!(
                    "conflicting parameters \"external\" and {:?} specified",
                    &*e.key
                ),
            );
        }
    }
}

/// The legacy `external: {name: x}` of any resource: deprecated, and refused next to a
/// different `name` (which one would be meant is unclear), as compose does.
fn legacy_external_name(cv: &mut Cv<'_>, n: &Node<'_>, path: &KeyPath<'_>) {
    let Some(ext) = n.get("external") else { return };
    let Some(ext_name) = ext.get("name") else {
        return;
    };
    // The deprecation itself is warned about as the conformance table says.
    if let (Some(name), Some(legacy)) = (n.get("name").and_then(Node::scalar), ext_name.scalar())
        && name != legacy
    {
        cv.err(
            ext_name.pos,
            path,
            format!("name {name:?} and external.name {legacy:?} conflict; only use name"),
        );
    }
}

fn file_object(
    cv: &mut Cv<'_>,
    n: &Node<'_>,
    path: &KeyPath<'_>,
    section: &str,
) -> Option<FileObject> {
    let mut o = FileObject::default();
    let (object, external_object) = if section == "configs" {
        (&cf::CONFIG, &cf::CONFIG_EXTERNAL_NAME)
    } else {
        (&cf::SECRET, &cf::SECRET_EXTERNAL_NAME)
    };
    let (mut file_at, mut env_at) = (None, None);
    for (k, v, p) in cv.fields_keeping(n, path, object, &mut o.extensions) {
        match k {
            "name" => o.name = cv.opt_string(v, &p),
            "file" => {
                file_at = Some((v.pos, p.to_string()));
                o.file = cv.string(v, &p).map(|f| cv.host_path(&f, v.pos));
            }
            "environment" => {
                env_at = Some((v.pos, p.to_string()));
                o.environment = cv.string(v, &p);
            }
            "content" => o.content = cv.string(v, &p),
            "labels" => o.labels = cv.labels(v, &p),
            _ => o.external = external(cv, v, &p, &mut o.name, external_object)?,
        }
    }
    legacy_external_name(cv, n, path);
    if !o.external {
        let mut src = ObjectSource::default();
        if let (Some(f), Some((pos, p)), None, None) =
            (&o.file, file_at, &o.content, &o.environment)
        {
            let why = match std::fs::metadata(f) {
                Ok(m) if m.is_file() => None,
                Ok(_) => Some(format!("{f} is not a file")),
                Err(e) => Some(format!("reading {f}: {e}")),
            };
            src.problem = why.map(|w| (pos, p, w));
        }
        if let (Some(var), Some((pos, p)), None) = (&o.environment, env_at, &o.content) {
            if !cv.env.contains_key(var) {
                src.problem = Some((pos, p, format!("environment variable {var} is not set")));
            }
            src.variable = Some(var.clone());
        }
        let key = path.to_string();
        let key = key
            .split_once('.')
            .map_or(key.clone(), |(_, k)| k.to_owned());
        cv.refs.sources.insert((section.to_owned(), key), src);
    }
    // compose checks only that a secret it must create has its data somewhere; `external`
    // wins over a `file` given beside it, and configs are not checked at all.
    if section == "secrets" && !o.external && o.file.is_none() && o.environment.is_none() {
        cv.err(n.pos, path, "must declare either `file` or `environment`");
        return None;
    }
    Some(o)
}

fn service(cv: &mut Cv<'_>, name: &str, n: &Node<'_>, path: &KeyPath<'_>) -> Option<Service> {
    let mut s = Service::default();
    let mut env_files: Vec<(String, bool, Pos, String)> = Vec::new();
    let mut explicit_env: Vec<(String, Option<String>, Pos)> = Vec::new();
    let mut label_files: Vec<(String, Pos, String)> = Vec::new();
    let mut scale: Option<(u64, Pos)> = None;
    let mut ok = true;
    for (k, v, p) in cv.fields_keeping(n, path, &cf::SERVICE, &mut s.extensions) {
        match k {
            "build" => s.build = build(cv, v, &p),
            "cap_add" => s.cap_add = Cv::unique(cv.str_list(v, &p)),
            "cap_drop" => s.cap_drop = Cv::unique(cv.str_list(v, &p)),
            "command" => s.command = command(cv, v, &p),
            "entrypoint" => s.entrypoint = command(cv, v, &p),
            "configs" => s.configs = file_refs(cv, name, v, &p, false, &cf::SERVICE_CONFIG),
            "secrets" => s.secrets = file_refs(cv, name, v, &p, true, &cf::SERVICE_SECRET),
            "cpus" => s.cpus = cv.float(v, &p),
            "cpuset" => s.cpuset = cv.opt_string(v, &p),
            "cpu_shares" => s.cpu_shares = cv.int(v, &p),
            // An empty entry (`dns: ${UNSET}`) is no server, as compose-go omits it.
            "dns" => {
                s.dns = cv.str_or_list(v, &p);
                s.dns.retain(|d| !d.is_empty());
            }
            "dns_opt" => s.dns_opt = cv.str_list(v, &p),
            "dns_search" => s.dns_search = cv.str_or_list(v, &p),
            "extra_hosts" => s.extra_hosts = extra_hosts(cv, v, &p),
            "label_file" => label_files = label_file_list(cv, v, &p),
            "mem_reservation" => s.mem_reservation = cv.size(v, &p),
            "memswap_limit" => s.memswap_limit = signed_size(cv, v, &p),
            "oom_score_adj" => match cv.int(v, &p) {
                Some(x) if (-1000..=1000).contains(&x) => s.oom_score_adj = Some(x),
                Some(x) => cv.err(
                    v.pos,
                    &p,
                    format!("must be between -1000 and 1000, found {x}"),
                ),
                None => {}
            },
            "depends_on" => s.depends_on = depends_on(cv, name, v, &p),
            "deploy" => s.deploy = deploy(cv, v, &p),
            "domainname" => s.domainname = cv.opt_string(v, &p),
            "hostname" => s.hostname = cv.opt_string(v, &p),
            "image" => s.image = cv.opt_string(v, &p),
            "user" => s.user = cv.opt_string(v, &p),
            "working_dir" => s.working_dir = cv.opt_string(v, &p),
            "stop_signal" => s.stop_signal = cv.opt_string(v, &p),
            "network_mode" => {
                s.network_mode = cv.opt_string(v, &p);
                if let Some(m) = &s.network_mode {
                    if let Some(target) = m.strip_prefix("service:") {
                        cv.refs.network_mode.push((
                            name.to_owned(),
                            target.to_owned(),
                            v.pos,
                            p.to_string(),
                        ));
                    } else if !matches!(m.as_str(), "none" | "host" | "bridge")
                        && !m.starts_with("container:")
                    {
                        cv.err(v.pos, &p, format!("invalid network_mode {m:?}: use none, host, bridge, service:NAME or container:NAME"));
                    }
                }
            }
            "environment" => {
                explicit_env = cv.kv(v, &p);
                // compose-go refuses `- DEBUG = true` in the list form, where the space would
                // otherwise become part of the name.
                if let Kind::Seq(_) = &v.kind {
                    for (key, _, pos) in &explicit_env {
                        if key.ends_with(char::is_whitespace) {
                            cv.err(
                                *pos,
                                &p,
                                format!(
                                    "environment variable {key} is declared with a trailing space"
                                ),
                            );
                        }
                    }
                }
            }
            "env_file" => env_files = env_file_list(cv, v, &p),
            "expose" => {
                s.expose = Cv::unique(cv.str_list(v, &p));
                if let Kind::Seq(items) = &v.kind {
                    for (i, (e, item)) in s.expose.iter().zip(items).enumerate() {
                        if !syntax::valid_expose(e) {
                            cv.err(item.pos, &p.at(i), format!("invalid expose {e:?}"));
                        }
                    }
                }
            }
            "healthcheck" => s.healthcheck = healthcheck(cv, v, &p),
            "init" => s.init = cv.boolean(v, &p),
            "pull_policy" => {
                s.pull_policy = cv.opt_string(v, &p);
                match s.pull_policy.as_deref() {
                    None | Some("always" | "never" | "missing" | "if_not_present") => {}
                    // Built by `dcpp apply` on every apply; a build section is required.
                    Some("build") if n.get("build").is_none() => cv.err(
                        v.pos,
                        &p,
                        "pull_policy build needs a `build:` section to build the image from",
                    ),
                    Some("build") => {}
                    Some(x) if x == "daily" || x == "weekly" || x.starts_with("every_") => {
                        let detail = format!("pull_policy {x:?}");
                        cv.note(v.pos, &p, &cf::PULL_PERIODIC, Some(&detail));
                    }
                    Some(x) => cv.err(
                        v.pos,
                        &p,
                        format!("invalid pull_policy {x:?}: use always, never, missing, if_not_present or build"),
                    ),
                }
            }
            "labels" => s.labels = cv.labels(v, &p),
            "logging" => s.logging = logging(cv, v, &p),
            "mem_limit" => s.mem_limit = cv.size(v, &p),
            "shm_size" => s.shm_size = cv.size(v, &p),
            "networks" => s.networks = service_networks(cv, name, v, &p),
            "pids_limit" => s.pids_limit = cv.int(v, &p),
            "ports" => s.ports = ports(cv, v, &p),
            "privileged" => s.privileged = cv.boolean(v, &p).unwrap_or_default(),
            // No terminal is allocated: `tty: true` would leave a program that needs one
            // (a shell kept alive by its terminal, a progress bar) silently different.
            "tty" if cv.boolean(v, &p) == Some(true) => cv.note(v.pos, &p, &cf::TTY, None),
            "tty" => {}
            // dcpp hands the container /dev/null as stdin and attaches nothing to it.
            "stdin_open" if cv.boolean(v, &p) == Some(true) => {
                cv.note(v.pos, &p, &cf::STDIN_OPEN, None)
            }
            "stdin_open" => {}
            "container_name" => {
                s.container_name = cv.opt_string(v, &p);
                if let Some(c) = &s.container_name
                    && !valid_container_name(c)
                {
                    cv.err(
                        v.pos,
                        &p,
                        format!("invalid container name {c:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"),
                    );
                }
            }
            "ipc" | "pid" => {
                let mode = cv.opt_string(v, &p);
                match mode.as_deref() {
                    None | Some("host") => {}
                    Some("private" | "shareable") if k == "ipc" => {}
                    // The service is checked with the implicit depends_on it adds.
                    Some(m)
                        if m.strip_prefix("service:").is_some_and(|n| !n.is_empty())
                            || m.strip_prefix("container:").is_some_and(|n| !n.is_empty()) => {}
                    Some(m) if k == "ipc" => cv.err(
                        v.pos,
                        &p,
                        format!("invalid ipc {m:?}: use host, private, shareable, service:NAME or container:NAME"),
                    ),
                    Some(m) => cv.err(
                        v.pos,
                        &p,
                        format!("invalid pid {m:?}: use host, service:NAME or container:NAME"),
                    ),
                }
                if k == "ipc" {
                    s.ipc = mode;
                } else {
                    s.pid = mode;
                }
            }
            "platform" => {
                s.platform = cv.opt_string(v, &p);
                if let Some(pl) = &s.platform {
                    let parts: Vec<&str> = pl.split('/').collect();
                    if !(2..=3).contains(&parts.len()) || parts.iter().any(|x| x.is_empty()) {
                        cv.err(
                            v.pos,
                            &p,
                            format!("invalid platform {pl:?}: use OS/ARCH or OS/ARCH/VARIANT (linux/amd64)"),
                        );
                    }
                }
            }
            "devices" => {
                let items = match &v.kind {
                    Kind::Seq(items) => items.as_slice(),
                    Kind::Null => &[],
                    _ => {
                        cv.err(
                            v.pos,
                            &p,
                            format!("must be a list, found {}", v.type_name()),
                        );
                        &[]
                    }
                };
                let mut devices = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let ip = p.at(i);
                    let device = match &item.kind {
                        Kind::Map(_) => device_long(cv, item, &ip),
                        _ => cv.string(item, &ip),
                    };
                    let Some(d) = device else { continue };
                    match syntax::check_device(&d) {
                        Ok(()) => devices.push(d),
                        Err(why) => cv.err(item.pos, &ip, format!("invalid device {d:?}: {why}")),
                    }
                }
                s.devices = unique_by(devices, |d| syntax::device_target(d).to_owned());
            }
            // A service is checked with the implicit depends_on it adds.
            "volumes_from" => {
                s.volumes_from = cv.str_list(v, &p);
                if let Kind::Seq(items) = &v.kind {
                    for (i, (f, item)) in s.volumes_from.iter().zip(items).enumerate() {
                        if let Err(why) = syntax::check_volumes_from(f) {
                            cv.err(
                                item.pos,
                                &p.at(i),
                                format!("invalid volumes_from {f:?}: {why}"),
                            );
                        }
                    }
                }
            }
            "read_only" => s.read_only = cv.boolean(v, &p).unwrap_or_default(),
            "profiles" => s.profiles = Cv::unique(cv.str_list(v, &p)),
            "restart" => {
                s.restart = cv.opt_string(v, &p);
                if let Some(r) = &s.restart
                    && !syntax::valid_restart(r)
                {
                    cv.err(v.pos, &p, format!("invalid restart policy {r:?}: use no, always, on-failure[:N] or unless-stopped"));
                }
            }
            "scale" => match cv.int(v, &p) {
                Some(x) if x > MAX_REPLICAS as i64 => cv.err(v.pos, &p, too_many_replicas(x)),
                Some(x) if x >= 0 => scale = Some((x as u64, v.pos)),
                Some(x) => cv.err(
                    v.pos,
                    &p,
                    format!("must be a non-negative integer, found {x}"),
                ),
                None => {}
            },
            "stop_grace_period" => s.stop_grace_period = cv.duration(v, &p),
            "sysctls" => s.sysctls = cv.labels(v, &p),
            "tmpfs" => s.tmpfs = Cv::unique(cv.str_or_list(v, &p)),
            "ulimits" => s.ulimits = ulimits(cv, v, &p),
            "volumes" => s.volumes = service_volumes(cv, name, v, &p),
            _ => {}
        }
    }
    // env_file first, then `environment` wins; a bare/null key comes from the environment.
    for (file, required, pos, p) in env_files {
        let abs = absolutize(&cv.base_dir(pos), Path::new(&file));
        match std::fs::read_to_string(&abs) {
            Ok(text) => {
                let env = cv.env;
                let lookup = |k: &str| env.get(k).cloned();
                match crate::dotenv::parse(&text, &lookup) {
                    Ok(vars) => {
                        for (k, v) in vars {
                            s.environment.insert(k, Some(v));
                        }
                    }
                    Err(e) => {
                        cv.err(pos, &p, format!("{}:{}: {e}", abs.display(), e.line()));
                        ok = false;
                    }
                }
            }
            Err(_) if !required => {}
            Err(e) => {
                cv.err(
                    pos,
                    &p,
                    format!("env file {} not found: {e}", abs.display()),
                );
                ok = false;
            }
        }
    }
    for (k, v, _) in explicit_env {
        let v = v.or_else(|| cv.env.get(&k).cloned());
        s.environment.insert(k, v);
    }
    // Label files in order, a later one winning, `labels` over them all (compose's
    // WithServicesLabelsResolved); a variable in a label file takes a label read before it.
    if !label_files.is_empty() {
        let mut from_files: BTreeMap<String, String> = BTreeMap::new();
        for (file, pos, p) in label_files {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let lookup = |k: &str| from_files.get(k).cloned();
                    match crate::dotenv::parse(&text, &lookup) {
                        Ok(vars) => from_files.extend(vars),
                        Err(e) => {
                            cv.err(pos, &p, format!("{file}:{}: {e}", e.line()));
                            ok = false;
                        }
                    }
                }
                Err(e) => {
                    cv.err(pos, &p, format!("label file {file} not found: {e}"));
                    ok = false;
                }
            }
            s.label_file.push(file);
        }
        from_files.append(&mut s.labels);
        s.labels = from_files;
    }
    // `scale` stays as given; a `deploy` section takes the same number, as compose-go's
    // consistency check does (it adds no `deploy` of its own).
    if let Some((n, pos)) = scale {
        s.scale = Some(n);
        if let Some(d) = s.deploy.as_mut() {
            match d.replicas {
                Some(r) if r != n => cv.err(
                    pos,
                    &path.key("scale"),
                    format!(
                        "can't set distinct values on 'scale' ({n}) and 'deploy.replicas' ({r})"
                    ),
                ),
                _ => d.replicas = Some(n),
            }
        }
    }
    // Compose (compose-go's validation) refuses a service-level limit and its
    // `deploy.resources.limits` twin with different values; equal values, or either alone,
    // are one limit applied to the container's cgroup.
    if let Some(l) = s
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
    {
        let conflicts = [
            (
                "cpus",
                "cpus",
                s.cpus.zip(l.cpus).is_some_and(|(a, b)| a != b),
            ),
            (
                "mem_limit",
                "memory",
                s.mem_limit.zip(l.memory).is_some_and(|(a, b)| a != b),
            ),
            (
                "pids_limit",
                "pids",
                s.pids_limit.zip(l.pids).is_some_and(|(a, b)| a != b),
            ),
        ];
        for (key, twin, distinct) in conflicts {
            if distinct {
                let pos = n.get(key).map_or(n.pos, |v| v.pos);
                cv.err(
                    pos,
                    &path.key(key),
                    format!(
                        "can't set distinct values on '{key}' and 'deploy.resources.limits.{twin}'"
                    ),
                );
            }
        }
    }
    // Names are unique per node, so a second replica could not be created (compose's rule).
    if s.container_name.is_some()
        && let Some(r) = s.replicas()
        && r > 1
    {
        let pos = n.get("container_name").map_or(n.pos, |v| v.pos);
        cv.err(
            pos,
            &path.key("container_name"),
            format!("can't set container_name and {r} replicas: a container name must be unique"),
        );
    }
    // A start-first update runs the new container beside the old one, under the same name.
    if s.container_name.is_some()
        && let Some(d) = &s.deploy
    {
        for (key, cfg) in [
            ("update_config", &d.update_config),
            ("rollback_config", &d.rollback_config),
        ] {
            if cfg.as_ref().and_then(|c| c.order.as_deref()) == Some("start-first") {
                let pos = n.get("container_name").map_or(n.pos, |v| v.pos);
                cv.err(
                    pos,
                    &path.key("container_name"),
                    format!("can't set container_name with deploy.{key}.order start-first: the new container would need the old one's name"),
                );
            }
        }
    }
    // A failed `extends` was already reported; a wrongly typed image/build too.
    if n.get("image").is_none() && n.get("build").is_none() && n.get("extends").is_none() {
        cv.err(
            n.pos,
            path,
            "has neither an image nor a build context specified",
        );
    }
    if s.network_mode.is_some() && n.get("networks").is_some() {
        cv.err(
            n.pos,
            &path.key("network_mode"),
            "network_mode and networks cannot be combined",
        );
    }
    // Two mounts on one target (two `tmpfs` entries, or one and a volume) are refused, as in
    // compose; the volumes among themselves are checked where they are merged.
    if !mount_targets_unique(cv, n, path, &s) {
        ok = false;
    }
    ok.then_some(s)
}

/// Whether every `tmpfs` entry has its own target, not shared with another entry or a volume;
/// each clash is reported at the later mount, naming the earlier one as compose does.
fn mount_targets_unique(cv: &mut Cv<'_>, n: &Node<'_>, path: &KeyPath<'_>, s: &Service) -> bool {
    let Some(tmpfs) = n.get("tmpfs") else {
        return true;
    };
    let items = match &tmpfs.kind {
        Kind::Seq(items) => items.as_slice(),
        _ => std::slice::from_ref(tmpfs),
    };
    let tp = path.key("tmpfs");
    let mut mounts: Vec<(&str, String)> = Vec::new();
    let mut unique = true;
    let mut written: Vec<&str> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(t) = item.scalar() else { continue };
        // The same entry again (an override file repeating it) is one mount, as compose's
        // unicity keeps it once.
        if written.contains(&t) {
            continue;
        }
        written.push(t);
        let target = t.split_once(':').map_or(t, |(p, _)| p);
        let at = tp.at(i);
        if let Some((_, first)) = mounts.iter().find(|(m, _)| *m == target) {
            cv.err(
                item.pos,
                &at,
                format!("target {target} already mounted as {first}"),
            );
            unique = false;
        } else {
            mounts.push((target, at.to_string()));
        }
    }
    let vp = path.key("volumes");
    let volume_items = n.get("volumes").and_then(|v| match &v.kind {
        Kind::Seq(items) => Some(items),
        _ => None,
    });
    for (i, v) in s.volumes.iter().enumerate() {
        if let Some((_, first)) = mounts.iter().find(|(m, _)| *m == v.target) {
            let pos = volume_items
                .filter(|items| items.len() == s.volumes.len())
                .and_then(|items| items.get(i))
                .map_or(n.pos, |item| item.pos);
            cv.err(
                pos,
                &vp.at(i),
                format!("target {} already mounted as {first}", v.target),
            );
            unique = false;
        }
    }
    unique
}

fn build(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Option<Build> {
    if let Kind::Scalar { value, .. } = &v.kind {
        return Some(Build {
            context: build_context(cv, value, v.pos),
            dockerfile: Some("Dockerfile".to_owned()),
            ..Build::default()
        });
    }
    // A missing context is compose's default `.` of the project, not of the file that
    // declares the build (TestLoadExtendsMultipleFiles).
    let mut b = Build {
        context: absolutize(cv.ctx.project_dir(v.pos), Path::new("."))
            .display()
            .to_string(),
        ..Build::default()
    };
    for (k, v, p) in cv.fields_keeping(v, p, &cf::BUILD, &mut b.extensions) {
        match k {
            "context" => {
                if let Some(c) = cv.string(v, &p) {
                    b.context = build_context(cv, &c, v.pos);
                }
            }
            "dockerfile" => b.dockerfile = cv.opt_string(v, &p),
            "target" => b.target = cv.opt_string(v, &p),
            "tags" => b.tags = Cv::unique(cv.str_list(v, &p)),
            "labels" => b.labels = cv.labels(v, &p),
            "no_cache" => b.no_cache = cv.boolean(v, &p).unwrap_or(false),
            _ => {
                // An argument without a value takes the project's variable; one that is unset
                // there is dropped, as compose does (the Dockerfile's default then applies).
                b.args = cv
                    .kv(v, &p)
                    .into_iter()
                    .filter_map(|(k, val, _)| {
                        let val = val.or_else(|| cv.env.get(&k).cloned())?;
                        Some((k, Some(val)))
                    })
                    .collect()
            }
        }
    }
    if b.dockerfile.is_none() && v.get("dockerfile_inline").is_none() {
        b.dockerfile = Some("Dockerfile".to_owned());
    }
    Some(b)
}

/// A URL or git context is kept as is; a path becomes absolute.
fn build_context(cv: &Cv<'_>, c: &str, pos: Pos) -> String {
    if crate::model::is_remote_context(c) {
        c.to_owned()
    } else {
        cv.host_path(c, pos)
    }
}

fn command(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Option<Vec<String>> {
    match &v.kind {
        Kind::Null => None,
        Kind::Scalar { value, .. } => match syntax::shell_split(value) {
            Ok(words) => Some(words),
            Err(e) => {
                cv.err(v.pos, p, e.to_string());
                None
            }
        },
        _ => Some(cv.str_list(v, p)),
    }
}

/// `extra_hosts:` as compose-go's HostsList reads it: a list of `host=ip` or `host:ip` (the
/// first `=`, else the first `:`; several addresses comma-separated), or a map of a host to an
/// address or a list of them. Kept as compose prints it: `host=ip` entries, sorted, brackets
/// around an address removed.
fn extra_hosts(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Vec<String> {
    let mut pairs: Vec<(String, String, Pos, String)> = Vec::new();
    match &v.kind {
        Kind::Null => {}
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let ip_path = p.at(i);
                let Some(entry) = cv.string(item, &ip_path) else {
                    continue;
                };
                let Some((host, ips)) = entry.split_once('=').or_else(|| entry.split_once(':'))
                else {
                    cv.err(
                        item.pos,
                        &ip_path,
                        format!("invalid additional host, missing IP: {entry}"),
                    );
                    continue;
                };
                for ip in ips.split(',') {
                    pairs.push((
                        host.to_owned(),
                        ip.to_owned(),
                        item.pos,
                        ip_path.to_string(),
                    ));
                }
            }
        }
        Kind::Map(entries) => {
            for e in entries {
                let kp = p.key(&e.key);
                match &e.value.kind {
                    Kind::Null => {
                        pairs.push((e.key.to_string(), String::new(), e.key_pos, kp.to_string()))
                    }
                    Kind::Scalar { value, .. } => pairs.push((
                        e.key.to_string(),
                        value.to_string(),
                        e.key_pos,
                        kp.to_string(),
                    )),
                    Kind::Seq(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(ip) = cv.string(item, &kp.at(i)) {
                                pairs.push((e.key.to_string(), ip, item.pos, kp.to_string()));
                            }
                        }
                    }
                    _ => cv.err(
                        e.value.pos,
                        &kp,
                        "unexpected value type for extra_hosts entry",
                    ),
                }
            }
        }
        _ => cv.err(
            v.pos,
            p,
            format!("must be a list or a mapping, found {}", v.type_name()),
        ),
    }
    let mut out = Vec::new();
    for (host, ip, pos, at) in pairs {
        if host.is_empty() || host.contains([':', '=']) {
            cv.err(pos, &at, format!("bad host name '{host}'"));
            continue;
        }
        let ip = match ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
            Some(inner) if !inner.is_empty() => inner.to_owned(),
            _ => ip,
        };
        out.push(format!("{host}={ip}"));
    }
    out.sort();
    out
}

/// `memswap_limit:`: a size, or -1 for unlimited swap (compose's UnitBytes takes any integer).
fn signed_size(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Option<i64> {
    if let Some(n) = v.scalar().and_then(|s| s.parse::<i64>().ok()) {
        return Some(n);
    }
    cv.size(v, p).and_then(|b| i64::try_from(b).ok())
}

/// `label_file:`, one path or a list, each made absolute against its file's directory.
fn label_file_list(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Vec<(String, Pos, String)> {
    let items: Vec<(&Node<'_>, String)> = match &v.kind {
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, it)| (it, p.at(i).to_string()))
            .collect(),
        Kind::Null => Vec::new(),
        _ => vec![(v, p.to_string())],
    };
    let mut out = Vec::new();
    for (item, at) in items {
        match item.scalar() {
            Some(f) => out.push((cv.host_path(f, item.pos), item.pos, at)),
            None => cv.err(
                item.pos,
                &at,
                format!("must be a path, found {}", item.type_name()),
            ),
        }
    }
    out
}

fn env_file_list(
    cv: &mut Cv<'_>,
    v: &Node<'_>,
    p: &KeyPath<'_>,
) -> Vec<(String, bool, Pos, String)> {
    let items: Vec<&Node<'_>> = match &v.kind {
        Kind::Seq(items) => items.iter().collect(),
        Kind::Null => Vec::new(),
        _ => vec![v],
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let ip = if matches!(v.kind, Kind::Seq(_)) {
            p.at(i).to_string()
        } else {
            p.to_string()
        };
        match &item.kind {
            Kind::Scalar { value, .. } => out.push((value.to_string(), true, item.pos, ip)),
            Kind::Map(_) => {
                let mut path = None;
                let mut required = true;
                for (k, v, fp) in cv.fields(item, &KeyPath::Text(&ip), &cf::ENV_FILE) {
                    match k {
                        "path" => path = cv.string(v, &fp),
                        "required" => required = cv.boolean(v, &fp).unwrap_or(true),
                        _ => {
                            if let Some(f) = cv.string(v, &fp)
                                && f != "raw"
                                && f != "dotenv"
                            {
                                cv.err(v.pos, &fp, format!("unknown env_file format {f:?}"));
                            }
                        }
                    }
                }
                match path {
                    Some(pth) => out.push((pth, required, item.pos, ip)),
                    None => cv.err(item.pos, &ip, "`path` is required"),
                }
            }
            _ => cv.err(item.pos, &ip, "must be a path or a mapping"),
        }
    }
    out
}

fn file_refs(
    cv: &mut Cv<'_>,
    svc: &str,
    v: &Node<'_>,
    p: &KeyPath<'_>,
    secret: bool,
    object: &Object,
) -> Vec<FileReference> {
    let items = match &v.kind {
        Kind::Seq(items) => items.as_slice(),
        Kind::Null => &[],
        _ => {
            cv.err(v.pos, p, format!("must be a list, found {}", v.type_name()));
            &[]
        }
    };
    let mut out: Vec<FileReference> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = p.at(i);
        let r = match &item.kind {
            Kind::Scalar { value, .. } => FileReference {
                source: value.to_string(),
                target: None,
                uid: None,
                gid: None,
                mode: None,
                extensions: Extensions::new(),
            },
            Kind::Map(_) => {
                let mut r = FileReference {
                    source: String::new(),
                    target: None,
                    uid: None,
                    gid: None,
                    mode: None,
                    extensions: Extensions::new(),
                };
                for (k, v, fp) in cv.fields_keeping(item, &ip, object, &mut r.extensions) {
                    match k {
                        "source" => r.source = cv.string(v, &fp).unwrap_or_default(),
                        "target" => r.target = cv.opt_string(v, &fp),
                        "uid" => r.uid = cv.opt_string(v, &fp),
                        "gid" => r.gid = cv.opt_string(v, &fp),
                        _ => {
                            let s = cv.string(v, &fp).unwrap_or_default();
                            // A YAML number follows YAML's integer rules; a string (quoted or
                            // interpolated) is always octal, as compose reads a file mode.
                            let mode = match v.kind {
                                Kind::Scalar { plain: true, .. } => syntax::parse_mode(&s),
                                _ => syntax::parse_octal_mode(&s),
                            };
                            match mode {
                                Some(m) => r.mode = Some(m),
                                None => cv.err(v.pos, &fp, format!("invalid file mode {s:?}")),
                            }
                        }
                    }
                }
                if r.source.is_empty() {
                    cv.err(item.pos, &ip, "`source` is required");
                    continue;
                }
                r
            }
            _ => {
                cv.err(item.pos, &ip, "must be a name or a mapping");
                continue;
            }
        };
        let refs = if secret {
            &mut cv.refs.secrets
        } else {
            &mut cv.refs.configs
        };
        refs.push((svc.to_owned(), r.source.clone(), item.pos, ip.to_string()));
        // Same target declared twice: the later one wins in the earlier one's place. Without a
        // target the key is the default mount path, as in compose (`s1` and
        // `{source: s2, target: /run/secrets/s1}` are one mount).
        let key = |r: &FileReference| {
            r.target.clone().unwrap_or_else(|| {
                if secret {
                    format!("/run/secrets/{}", r.source)
                } else {
                    format!("/{}", r.source)
                }
            })
        };
        let k = key(&r);
        if let Some(existing) = out.iter_mut().find(|x| key(x) == k) {
            *existing = r;
        } else {
            out.push(r);
        }
    }
    if secret {
        // Compose prints a secret's default mount path (a config's default stays implicit).
        for r in &mut out {
            if r.target.is_none() {
                r.target = Some(format!("/run/secrets/{}", r.source));
            }
        }
    }
    out
}

fn depends_on(
    cv: &mut Cv<'_>,
    svc: &str,
    v: &Node<'_>,
    p: &KeyPath<'_>,
) -> BTreeMap<String, DependsOn> {
    let converted = list_to_map_ref(v, false);
    let node = converted.as_ref().unwrap_or(v);
    let mut out = BTreeMap::new();
    for e in cv.entries(node, p) {
        let ep = p.key(&e.key);
        if e.key.is_empty() {
            cv.err(e.value.pos, p, "entries must be service names");
            continue;
        }
        let mut d = DependsOn {
            condition: DependsOnCondition::ServiceStarted,
            restart: false,
            required: true,
            extensions: Extensions::new(),
        };
        for (k, v, fp) in cv.fields_keeping(&e.value, &ep, &cf::DEPENDS_ON, &mut d.extensions) {
            match k {
                "condition" => match cv.string(v, &fp).as_deref() {
                    Some("service_started") => d.condition = DependsOnCondition::ServiceStarted,
                    Some("service_healthy") => d.condition = DependsOnCondition::ServiceHealthy,
                    Some("service_completed_successfully") => {
                        d.condition = DependsOnCondition::ServiceCompletedSuccessfully
                    }
                    Some(other) => cv.err(
                        v.pos,
                        &fp,
                        format!("invalid condition {other:?}: use service_started, service_healthy or service_completed_successfully"),
                    ),
                    None => {}
                },
                "required" => d.required = cv.boolean(v, &fp).unwrap_or(true),
                _ => {
                    d.restart = cv.boolean(v, &fp).unwrap_or_default();
                    if d.restart {
                        cv.note(v.pos, &fp, &cf::DEPENDS_RESTART, None);
                    }
                }
            }
        }
        cv.refs
            .depends
            .push((svc.to_owned(), e.key.to_string(), e.key_pos, ep.to_string()));
        out.insert(e.key.to_string(), d);
    }
    out
}

fn healthcheck(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Option<Healthcheck> {
    let mut h = Healthcheck::default();
    for (k, v, fp) in cv.fields_keeping(v, p, &cf::HEALTHCHECK, &mut h.extensions) {
        match k {
            "test" => match &v.kind {
                Kind::Scalar { value, .. } => {
                    h.test = vec!["CMD-SHELL".to_owned(), value.to_string()];
                }
                _ => {
                    h.test = cv.str_list(v, &fp);
                    match h.test.first().map(String::as_str) {
                        None | Some("NONE" | "CMD" | "CMD-SHELL") => {}
                        Some(other) => cv.err(
                            v.pos,
                            &fp,
                            format!(
                                "first element must be NONE, CMD or CMD-SHELL, found {other:?}"
                            ),
                        ),
                    }
                }
            },
            "interval" => h.interval = cv.duration(v, &fp),
            "timeout" => h.timeout = cv.duration(v, &fp),
            "start_period" => h.start_period = cv.duration(v, &fp),
            "start_interval" => h.start_interval = cv.duration(v, &fp),
            "retries" => h.retries = cv.uint(v, &fp),
            _ => h.disable = cv.boolean(v, &fp).unwrap_or_default(),
        }
    }
    if h.test.first().map(String::as_str) == Some("NONE") {
        h.disable = true;
    }
    Some(h)
}

fn logging(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Option<Logging> {
    let mut l = Logging::default();
    for (k, v, fp) in cv.fields_keeping(v, p, &cf::LOGGING, &mut l.extensions) {
        match k {
            "driver" => l.driver = cv.opt_string(v, &fp),
            _ => l.options = cv.labels(v, &fp),
        }
    }
    Some(l)
}

fn service_networks(
    cv: &mut Cv<'_>,
    svc: &str,
    v: &Node<'_>,
    p: &KeyPath<'_>,
) -> BTreeMap<String, Option<ServiceNetwork>> {
    let converted = list_to_map_ref(v, false);
    let node = converted.as_ref().unwrap_or(v);
    let mut out = BTreeMap::new();
    for e in cv.entries(node, p) {
        let ep = p.key(&e.key);
        if e.key.is_empty() {
            cv.err(e.value.pos, p, "entries must be network names");
            continue;
        }
        cv.refs
            .networks
            .push((svc.to_owned(), e.key.to_string(), e.key_pos, ep.to_string()));
        if matches!(e.value.kind, Kind::Null) {
            out.insert(e.key.to_string(), None);
            continue;
        }
        let mut sn = ServiceNetwork::default();
        for (k, v, fp) in cv.fields_keeping(&e.value, &ep, &cf::SERVICE_NETWORK, &mut sn.extensions)
        {
            match k {
                "aliases" => sn.aliases = Cv::unique(cv.str_list(v, &fp)),
                "ipv4_address" => {
                    sn.ipv4_address = cv.opt_string(v, &fp);
                    if let Some(a) = &sn.ipv4_address
                        && a.parse::<std::net::Ipv4Addr>().is_err()
                    {
                        cv.err(v.pos, &fp, format!("invalid IPv4 address {a:?}"));
                    }
                }
                "ipv6_address" => {
                    sn.ipv6_address = cv.opt_string(v, &fp);
                    if let Some(a) = &sn.ipv6_address
                        && a.parse::<std::net::Ipv6Addr>().is_err()
                    {
                        cv.err(v.pos, &fp, format!("invalid IPv6 address {a:?}"));
                    }
                }
                _ => sn.priority = cv.int(v, &fp),
            }
        }
        out.insert(e.key.to_string(), Some(sn));
    }
    out
}

fn ulimits(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> BTreeMap<String, Ulimit> {
    let mut out = BTreeMap::new();
    for e in cv.entries(v, p) {
        let ep = p.key(&e.key);
        let u = match &e.value.kind {
            Kind::Scalar { .. } => cv.int(&e.value, &ep).map(|x| Ulimit {
                soft: x,
                hard: x,
                single: true,
            }),
            Kind::Map(_) => {
                let (mut soft, mut hard) = (None, None);
                for (k, v, fp) in cv.fields(&e.value, &ep, &cf::ULIMIT) {
                    if k == "soft" {
                        soft = cv.int(v, &fp);
                    } else {
                        hard = cv.int(v, &fp);
                    }
                }
                match (soft, hard) {
                    (Some(soft), Some(hard)) if soft <= hard => Some(Ulimit {
                        soft,
                        hard,
                        single: false,
                    }),
                    (Some(soft), Some(hard)) => {
                        cv.err(
                            e.value.pos,
                            &ep,
                            format!("soft limit {soft} exceeds hard limit {hard}"),
                        );
                        None
                    }
                    _ => {
                        cv.err(e.value.pos, &ep, "needs both `soft` and `hard`");
                        None
                    }
                }
            }
            _ => {
                cv.err(
                    e.value.pos,
                    &ep,
                    "must be an integer or a mapping with soft and hard",
                );
                None
            }
        };
        if let Some(u) = u {
            out.insert(e.key.to_string(), u);
        }
    }
    out
}

fn ports(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Vec<Port> {
    let items = match &v.kind {
        Kind::Seq(items) => items.as_slice(),
        Kind::Null => &[],
        _ => {
            cv.err(v.pos, p, format!("must be a list, found {}", v.type_name()));
            &[]
        }
    };
    let mut out: Vec<Port> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = p.at(i);
        let parsed = match &item.kind {
            Kind::Scalar { value, .. } => match syntax::parse_port(value) {
                Ok(ps) => ps,
                Err(e) => {
                    cv.err(item.pos, &ip, e.to_string());
                    continue;
                }
            },
            Kind::Map(_) => {
                let mut port = Port {
                    name: None,
                    mode: "ingress".to_owned(),
                    host_ip: None,
                    target: 0,
                    published: None,
                    protocol: "tcp".to_owned(),
                    app_protocol: None,
                    extensions: Extensions::new(),
                };
                let mut has_target = false;
                for (k, v, fp) in cv.fields_keeping(item, &ip, &cf::PORT, &mut port.extensions) {
                    match k {
                        "name" => port.name = cv.opt_string(v, &fp),
                        "app_protocol" => port.app_protocol = cv.opt_string(v, &fp),
                        "mode" => {
                            if let Some(m) = cv.string(v, &fp) {
                                if m != "host" && m != "ingress" {
                                    cv.err(
                                        v.pos,
                                        &fp,
                                        format!("invalid port mode {m:?}: use host or ingress"),
                                    );
                                }
                                port.mode = m;
                            }
                        }
                        "host_ip" => {
                            port.host_ip = cv.opt_string(v, &fp);
                            if let Some(h) = &port.host_ip
                                && h.parse::<std::net::IpAddr>().is_err()
                            {
                                cv.err(v.pos, &fp, format!("invalid host_ip {h:?}"));
                            }
                        }
                        "target" => {
                            let s = cv.string(v, &fp).unwrap_or_default();
                            match syntax::port_number(&s) {
                                Some(t) => {
                                    port.target = t;
                                    has_target = true;
                                }
                                None => cv.err(v.pos, &fp, format!("invalid port {s:?}")),
                            }
                        }
                        "published" => {
                            if let Some(s) = cv.opt_string(v, &fp) {
                                if syntax::valid_published(&s) {
                                    port.published = Some(s);
                                } else {
                                    cv.err(v.pos, &fp, format!("invalid published port {s:?}"));
                                }
                            }
                        }
                        _ => {
                            if let Some(pr) = cv.string(v, &fp) {
                                let pr = pr.to_ascii_lowercase();
                                if !matches!(pr.as_str(), "tcp" | "udp" | "sctp") {
                                    cv.err(
                                        v.pos,
                                        &fp,
                                        format!("invalid protocol {pr:?}: use tcp, udp or sctp"),
                                    );
                                }
                                port.protocol = pr;
                            }
                        }
                    }
                }
                if !has_target {
                    if item.get("target").is_none() {
                        cv.err(item.pos, &ip, "`target` is required");
                    }
                    continue;
                }
                vec![port]
            }
            _ => {
                cv.err(
                    item.pos,
                    &ip,
                    format!(
                        "must be a string, number or mapping, found {}",
                        item.type_name()
                    ),
                );
                continue;
            }
        };
        // A port given again (by an override file, or twice) replaces the first in its place,
        // as compose de-duplicates ports by host address, published port, target and protocol.
        let key = |p: &Port| {
            (
                p.host_ip.clone(),
                p.published.clone(),
                p.target,
                p.protocol.clone(),
            )
        };
        for port in parsed {
            match out.iter().position(|o| key(o) == key(&port)) {
                Some(i) => out[i] = port,
                None => out.push(port),
            }
        }
    }
    out
}

fn service_volumes(
    cv: &mut Cv<'_>,
    svc: &str,
    v: &Node<'_>,
    p: &KeyPath<'_>,
) -> Vec<ServiceVolume> {
    let items = match &v.kind {
        Kind::Seq(items) => items.as_slice(),
        Kind::Null => &[],
        _ => {
            cv.err(v.pos, p, format!("must be a list, found {}", v.type_name()));
            &[]
        }
    };
    let mut out: Vec<ServiceVolume> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = p.at(i);
        let mut vol = match &item.kind {
            Kind::Scalar { value, .. } => match syntax::parse_volume(value) {
                Ok(v) => v,
                Err(e) => {
                    cv.err(item.pos, &ip, e.to_string());
                    continue;
                }
            },
            Kind::Map(_) => match long_volume(cv, item, &ip) {
                Some(v) => v,
                None => continue,
            },
            _ => {
                cv.err(
                    item.pos,
                    &ip,
                    format!("must be a string or mapping, found {}", item.type_name()),
                );
                continue;
            }
        };
        let windows = syntax::windows_path(&vol.target)
            || vol.source.as_deref().is_some_and(syntax::windows_path);
        if !vol.target.starts_with('/') && !syntax::windows_path(&vol.target) {
            cv.err(
                item.pos,
                &ip,
                format!(
                    "invalid volume target {:?}: must be an absolute path",
                    vol.target
                ),
            );
            continue;
        }
        // Compose cleans the target (`/etc/pihole/` is `/etc/pihole`), which also makes two
        // spellings of one target the same mount.
        if windows {
            // compose-go reads these on any host; a Linux node has nothing to mount them on.
            cv.warn(
                item.pos,
                &ip,
                "a Windows path: dcpp runs Linux containers, where this mount cannot be made",
            );
        }
        if vol.target.len() > 1
            && vol.target.starts_with('/')
            && (vol.target.ends_with('/') || vol.target.contains("/.") || vol.target.contains("//"))
        {
            vol.target = absolutize(Path::new("/"), Path::new(&vol.target))
                .display()
                .to_string();
        }
        match vol.kind {
            VolumeType::Bind => {
                if let Some(src) = &vol.source {
                    vol.source = Some(cv.host_path(src, item.pos));
                } else {
                    cv.err(item.pos, &ip, "a bind mount needs a `source`");
                    continue;
                }
            }
            VolumeType::Volume => {
                if let Some(src) = &vol.source {
                    cv.refs
                        .volumes
                        .push((svc.to_owned(), src.clone(), item.pos, ip.to_string()));
                }
            }
            _ => {}
        }
        // One mount per target: a later definition (e.g. from an override file) replaces it.
        if let Some(existing) = out.iter_mut().find(|x| x.target == vol.target) {
            *existing = vol;
        } else {
            out.push(vol);
        }
    }
    out
}

fn long_volume(cv: &mut Cv<'_>, item: &Node<'_>, ip: &KeyPath<'_>) -> Option<ServiceVolume> {
    let mut vol = ServiceVolume {
        kind: VolumeType::Volume,
        source: None,
        target: String::new(),
        read_only: false,
        bind: None,
        volume: None,
        tmpfs: None,
        extensions: Extensions::new(),
    };
    if item.get("type").is_none() {
        cv.err(
            item.pos,
            ip,
            "`type` is required (volume, bind, tmpfs, npipe or image)",
        );
        return None;
    }
    if item.get("target").is_none() {
        cv.err(item.pos, ip, "`target` is required");
        return None;
    }
    for (k, v, fp) in cv.fields_keeping(item, ip, &cf::SERVICE_VOLUME, &mut vol.extensions) {
        match k {
            "type" => {
                vol.kind = match cv.string(v, &fp)?.as_str() {
                    "volume" => VolumeType::Volume,
                    "bind" => VolumeType::Bind,
                    "tmpfs" => VolumeType::Tmpfs,
                    "npipe" => VolumeType::Npipe,
                    "image" => VolumeType::Image,
                    other => {
                        cv.err(v.pos, &fp, format!("invalid volume type {other:?}"));
                        return None;
                    }
                }
            }
            "source" => vol.source = cv.opt_string(v, &fp),
            "target" => vol.target = cv.string(v, &fp)?,
            "read_only" => vol.read_only = cv.boolean(v, &fp).unwrap_or_default(),
            "consistency" => {}
            "bind" => {
                let mut b = BindOptions::default();
                for (k, v, fp) in cv.fields_keeping(v, &fp, &cf::BIND, &mut b.extensions) {
                    match k {
                        "propagation" => {
                            b.propagation = cv.opt_string(v, &fp);
                            if let Some(pr) = &b.propagation
                                && !syntax::PROPAGATIONS.contains(&pr.as_str())
                            {
                                cv.err(v.pos, &fp, format!("invalid propagation {pr:?}"));
                            }
                        }
                        "create_host_path" => {
                            b.create_host_path = cv.boolean(v, &fp).unwrap_or_default()
                        }
                        _ => {
                            b.selinux = cv.opt_string(v, &fp);
                            if let Some(s) = &b.selinux
                                && s != "z"
                                && s != "Z"
                            {
                                cv.err(
                                    v.pos,
                                    &fp,
                                    format!("invalid selinux label {s:?}: use z or Z"),
                                );
                            } else {
                                cv.note(v.pos, &fp, &cf::SELINUX, None);
                            }
                        }
                    }
                }
                vol.bind = Some(b);
            }
            "volume" => {
                let mut o = VolumeOptions::default();
                for (k, v, fp) in cv.fields_keeping(v, &fp, &cf::VOLUME_OPTIONS, &mut o.extensions)
                {
                    match k {
                        "nocopy" => o.nocopy = cv.boolean(v, &fp).unwrap_or_default(),
                        _ => o.subpath = cv.opt_string(v, &fp),
                    }
                }
                vol.volume = Some(o);
            }
            _ => {
                let mut o = TmpfsOptions::default();
                for (k, v, fp) in cv.fields_keeping(v, &fp, &cf::TMPFS_OPTIONS, &mut o.extensions) {
                    match k {
                        // A plain fractional number is not a size for compose's schema
                        // (and `0.0001` would silently become 0 bytes: no limit).
                        "size" => match &v.kind {
                            Kind::Scalar { value, plain: true }
                                if value.contains('.') && value.parse::<f64>().is_ok() =>
                            {
                                cv.err(
                                    v.pos,
                                    &fp,
                                    format!("must be an integer or a size string, found {value}"),
                                );
                            }
                            _ => o.size = cv.size(v, &fp),
                        },
                        _ => {
                            let s = cv.string(v, &fp).unwrap_or_default();
                            match syntax::parse_mode(&s) {
                                Some(m) => o.mode = Some(m),
                                None => cv.err(v.pos, &fp, format!("invalid file mode {s:?}")),
                            }
                        }
                    }
                }
                vol.tmpfs = Some(o);
            }
        }
    }
    // Empty option blocks carry no information; dropping them keeps the output canonical.
    if vol.bind == Some(BindOptions::default()) {
        vol.bind = None;
    }
    if vol.volume == Some(VolumeOptions::default()) {
        vol.volume = None;
    }
    if vol.tmpfs == Some(TmpfsOptions::default()) {
        vol.tmpfs = None;
    }
    Some(vol)
}

fn deploy(cv: &mut Cv<'_>, v: &Node<'_>, p: &KeyPath<'_>) -> Option<Deploy> {
    let mut d = Deploy::default();
    for (k, v, fp) in cv.fields_keeping(v, p, &cf::DEPLOY, &mut d.extensions) {
        match k {
            "mode" => match cv.string(v, &fp).as_deref() {
                Some("replicated") => d.mode = Some(DeployMode::Replicated),
                Some("global") => d.mode = Some(DeployMode::Global),
                Some(job @ ("replicated-job" | "global-job")) => {
                    let detail = format!("deploy mode {job:?}");
                    cv.note(v.pos, &fp, &cf::DEPLOY_JOB, Some(&detail));
                }
                Some(other) => cv.err(
                    v.pos,
                    &fp,
                    format!("invalid deploy mode {other:?}: use replicated or global"),
                ),
                None => {}
            },
            "replicas" => match v.scalar().map(str::parse::<i64>) {
                Some(Ok(r)) if r > MAX_REPLICAS as i64 => cv.err(v.pos, &fp, too_many_replicas(r)),
                Some(Ok(r)) if r >= 0 => d.replicas = Some(r as u64),
                _ => {
                    let shown = v
                        .scalar()
                        .map_or(v.type_name().to_owned(), |s| format!("{s:?}"));
                    cv.err(
                        v.pos,
                        &fp,
                        format!("replicas must be a non-negative integer, found {shown}"),
                    );
                }
            },
            "labels" => d.labels = cv.labels(v, &fp),
            "update_config" => d.update_config = update_config(cv, v, &fp, &cf::UPDATE_CONFIG),
            "rollback_config" => {
                d.rollback_config = update_config(cv, v, &fp, &cf::ROLLBACK_CONFIG)
            }
            "resources" => {
                let mut r = Resources::default();
                for (k, v, fp) in cv.fields_keeping(v, &fp, &cf::RESOURCES, &mut r.extensions) {
                    let spec = resource_spec(cv, v, &fp, k == "reservations");
                    if k == "limits" {
                        r.limits = spec;
                    } else {
                        r.reservations = spec;
                    }
                }
                d.resources = Some(r);
            }
            "restart_policy" => {
                let mut r = RestartPolicy::default();
                for (k, v, fp) in cv.fields_keeping(v, &fp, &cf::RESTART_POLICY, &mut r.extensions)
                {
                    match k {
                        "condition" => {
                            r.condition = cv.opt_string(v, &fp);
                            // Compose takes any string; the reconciler knows these three
                            // and refuses the rest when applied.
                            if let Some(c) = &r.condition
                                && !matches!(c.as_str(), "none" | "on-failure" | "any")
                            {
                                cv.warn(
                                    v.pos,
                                    &fp,
                                    format!("condition {c:?} is not none, on-failure or any: `dcpp apply` refuses the service"),
                                );
                            }
                        }
                        "delay" => r.delay = cv.duration(v, &fp),
                        "window" => r.window = cv.duration(v, &fp),
                        _ => r.max_attempts = cv.uint(v, &fp),
                    }
                }
                d.restart_policy = Some(r);
            }
            "placement" => {
                let mut pl = Placement::default();
                for (k, v, fp) in cv.fields_keeping(v, &fp, &cf::PLACEMENT, &mut pl.extensions) {
                    match k {
                        "constraints" => {
                            pl.constraints = cv.str_list(v, &fp);
                            if let Kind::Seq(items) = &v.kind {
                                for (i, (c, item)) in pl.constraints.iter().zip(items).enumerate() {
                                    // Compose takes any string; the scheduler understands
                                    // only these two forms and refuses the rest when applied.
                                    if !syntax::valid_constraint(c) {
                                        cv.warn(item.pos, &fp.at(i), format!("constraint {c:?} is not <attribute>==<value> or <attribute>!=<value>: `dcpp apply` refuses the service"));
                                    }
                                }
                            }
                        }
                        "preferences" => {
                            let items = match &v.kind {
                                Kind::Seq(items) => items.as_slice(),
                                _ => {
                                    cv.err(v.pos, &fp, "must be a list");
                                    &[]
                                }
                            };
                            for (i, item) in items.iter().enumerate() {
                                let ip = fp.at(i);
                                let mut extensions = Extensions::new();
                                let mut spread = None;
                                for (_, v, sp) in
                                    cv.fields_keeping(item, &ip, &cf::PREFERENCE, &mut extensions)
                                {
                                    spread = cv.string(v, &sp);
                                }
                                if let Some(spread) = spread {
                                    pl.preferences
                                        .push(PlacementPreference { spread, extensions });
                                }
                            }
                        }
                        _ => pl.max_replicas_per_node = cv.uint(v, &fp),
                    }
                }
                d.placement = Some(pl);
            }
            _ => match cv.string(v, &fp).as_deref() {
                Some("vip") => {
                    d.endpoint_mode = Some(EndpointMode::Vip);
                    cv.note(v.pos, &fp, &cf::ENDPOINT_VIP, Some("no virtual IP"));
                }
                Some("dnsrr") => d.endpoint_mode = Some(EndpointMode::Dnsrr),
                // Compose takes any string; nothing in dcpp reads the value.
                Some(other) => {
                    d.endpoint_mode = Some(EndpointMode::Other(other.to_owned()));
                    cv.note(v.pos, &fp, &cf::ENDPOINT_VIP, Some("not vip or dnsrr"));
                }
                None => {}
            },
        }
    }
    if d.mode == Some(DeployMode::Global) && d.replicas.is_some_and(|r| r != 1) {
        // Compose accepts the pair; a global service runs one task per node whatever the count.
        cv.warn(
            v.pos,
            p,
            "replicas has no effect on a global service: it runs one task per eligible node",
        );
    }
    Some(d)
}

fn resource_spec(
    cv: &mut Cv<'_>,
    v: &Node<'_>,
    p: &KeyPath<'_>,
    reservations: bool,
) -> Option<ResourceSpec> {
    let object = if reservations {
        &cf::RESERVATIONS
    } else {
        &cf::LIMITS
    };
    let mut r = ResourceSpec::default();
    for (k, v, fp) in cv.fields_keeping(v, p, object, &mut r.extensions) {
        match k {
            "cpus" => r.cpus = cv.float(v, &fp),
            "memory" => r.memory = cv.size(v, &fp),
            _ => r.pids = cv.int(v, &fp),
        }
    }
    Some(r)
}

fn update_config(
    cv: &mut Cv<'_>,
    v: &Node<'_>,
    p: &KeyPath<'_>,
    object: &Object,
) -> Option<UpdateConfig> {
    let mut u = UpdateConfig::default();
    for (k, v, fp) in cv.fields_keeping(v, p, object, &mut u.extensions) {
        match k {
            "parallelism" => u.parallelism = cv.uint(v, &fp),
            "delay" => u.delay = cv.duration(v, &fp),
            "monitor" => u.monitor = cv.duration(v, &fp),
            "max_failure_ratio" => {
                u.max_failure_ratio = cv.float(v, &fp);
                // Compose takes any number; a ratio is only meaningful within 0..=1, and the
                // update policy refuses anything else when applied.
                if let Some(r) = u.max_failure_ratio.filter(|r| !(0.0..=1.0).contains(r)) {
                    cv.warn(
                        v.pos,
                        &fp,
                        format!("{r} is not between 0 and 1: `dcpp apply` refuses the service"),
                    );
                }
            }
            "failure_action" => {
                u.failure_action = cv.opt_string(v, &fp);
                // Compose takes any string; the update policy knows these three and
                // refuses the rest when applied.
                if let Some(a) = &u.failure_action
                    && !matches!(a.as_str(), "continue" | "rollback" | "pause")
                {
                    cv.warn(
                        v.pos,
                        &fp,
                        format!("failure_action {a:?} is not continue, rollback or pause: `dcpp apply` refuses the service"),
                    );
                }
            }
            _ => {
                u.order = cv.opt_string(v, &fp);
                if let Some(o) = &u.order
                    && o != "stop-first"
                    && o != "start-first"
                {
                    cv.err(
                        v.pos,
                        &fp,
                        format!("invalid order {o:?}: use stop-first or start-first"),
                    );
                }
            }
        }
    }
    Some(u)
}

/// Removes services whose profiles are not enabled.
fn apply_profiles(cv: &mut Cv<'_>, services: &mut BTreeMap<String, Service>, opts: &LoadOptions) {
    let mut enabled: BTreeSet<String> = opts.profiles.iter().cloned().collect();
    if let Some(p) = cv.env.get("COMPOSE_PROFILES") {
        enabled.extend(
            p.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    let all = enabled.contains("*");
    services.retain(|_, s| {
        s.profiles.is_empty() || all || s.profiles.iter().any(|p| enabled.contains(p))
    });
}

fn check_refs(
    cv: &mut Cv<'_>,
    services: &mut BTreeMap<String, Service>,
    networks: &BTreeMap<String, Network>,
    volumes: &BTreeMap<String, Volume>,
    configs: &BTreeMap<String, FileObject>,
    secrets: &BTreeMap<String, FileObject>,
) {
    let refs = std::mem::take(&mut cv.refs);
    let defined = |name: &str| refs.service_pos.contains_key(name);
    for (svc, dep, pos, path) in &refs.depends {
        let Some(s) = services.get_mut(svc) else {
            continue;
        };
        let required = s.depends_on.get(dep).is_some_and(|d| d.required);
        let problem = if !defined(dep) {
            Some(format!("depends on undefined service {dep:?}"))
        } else if !services_contains(dep, &refs, services) {
            Some(format!(
                "depends on service {dep:?} which is not enabled by the active profiles"
            ))
        } else {
            None
        };
        if let Some(msg) = problem {
            let s = services.get_mut(svc).expect("checked above");
            // compose-go's consistency check lets `required: false` skip a service its profiles
            // disable, never one that is not defined at all.
            if required || !defined(dep) {
                cv.err(*pos, path, msg);
            } else {
                s.depends_on.remove(dep);
                cv.warn(
                    *pos,
                    path,
                    format!("{msg}; ignored because required: false"),
                );
            }
        }
    }
    for (svc, target, pos, path) in &refs.network_mode {
        if services.contains_key(svc) && !services.contains_key(target) {
            cv.err(
                *pos,
                path,
                format!("network_mode refers to undefined service {target:?}"),
            );
        }
    }
    for (svc, net, pos, path) in &refs.networks {
        if services.contains_key(svc) && net != "default" && !networks.contains_key(net) {
            cv.err(
                *pos,
                path,
                format!("service {svc:?} refers to undefined network {net:?}"),
            );
        }
    }
    for (svc, vol, pos, path) in &refs.volumes {
        if services.contains_key(svc) && !volumes.contains_key(vol) {
            cv.err(
                *pos,
                path,
                format!("service {svc:?} refers to undefined volume {vol:?}"),
            );
        }
    }
    for (kind, list, defs) in [
        ("secret", &refs.secrets, secrets),
        ("config", &refs.configs, configs),
    ] {
        for (svc, name, pos, path) in list {
            if services.contains_key(svc) && !defs.contains_key(name) {
                cv.err(
                    *pos,
                    path,
                    format!("service {svc:?} refers to undefined {kind} {name:?}"),
                );
            }
        }
    }
    // Dependency cycles, reported once per cycle at the first edge that closes it.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut stack: Vec<&str> = Vec::new();
    let names: Vec<&String> = services.keys().collect();
    fn visit<'a>(
        n: &'a str,
        services: &'a BTreeMap<String, Service>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<Vec<&'a str>>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        if let Some(s) = services.get(n) {
            for dep in s.depends_on.keys() {
                match state.get(dep.as_str()) {
                    Some(1) => {
                        let start = stack.iter().position(|x| *x == dep).unwrap_or(0);
                        let mut c: Vec<&str> = stack[start..].to_vec();
                        c.push(dep);
                        cycles.push(c);
                    }
                    Some(_) => {}
                    None if services.contains_key(dep) => {
                        visit(dep, services, state, stack, cycles)
                    }
                    None => {}
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    let mut cycles = Vec::new();
    for n in names {
        if !state.contains_key(n.as_str()) {
            visit(n, services, &mut state, &mut stack, &mut cycles);
        }
    }
    for c in cycles {
        let (from, to) = (c[c.len() - 2], c[c.len() - 1]);
        let at = refs
            .depends
            .iter()
            .find(|(s, d, _, _)| s == from && d == to)
            .map(|(_, _, pos, path)| (*pos, path.clone()))
            .unwrap_or((Ctx::nowhere(), String::new()));
        cv.err(at.0, &at.1, format!("dependency cycle: {}", c.join(" -> ")));
    }
}

fn services_contains(name: &str, _refs: &Refs, services: &BTreeMap<String, Service>) -> bool {
    services.contains_key(name)
}
