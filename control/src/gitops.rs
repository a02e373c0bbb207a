//! GitOps: `dcpp watch DIR` (and `dcpp daemon --watch DIR`) keeps the stacks in sync with the
//! compose files in one directory.
//!
//! File → stack rule: every `*.yml` / `*.yaml` file directly in DIR (not in subdirectories,
//! not hidden) is one stack, named after the file's stem normalised like a compose project
//! name (`Web-App.yaml` → `web-app`); a top-level `name:` in the file is ignored so that the
//! file name alone decides. Two files with the same stem: the first in byte order wins and the
//! other is reported. Each stack records its file (`source`) and content hash (`dcpp stack ls`).
//!
//! Level-triggered: any change in DIR (debounced) re-reads the whole directory. Only changes
//! wake it: reading the files itself makes inotify report opens, which must not start another
//! round (that was a loop at the debounce rate). A file that does not load is logged once per
//! content and its stack keeps its last good state; a deleted file's stack is removed. Only
//! stacks whose source lies in DIR are ever removed.
//!
//! A service with `build:` is built as `dcpp apply` builds it ([`crate::images`]): on the
//! node watch runs on, by its [`ImageBuilder`], when `pull_policy` is `build` or the image is
//! missing, and the service pinned to the built manifest, so a rebuild that changes nothing
//! leaves the stack alone and one that changes the image rolls it. A build that fails is
//! reported as a file that does not load: the stack keeps its last good state. Only the
//! directory itself is watched: an edit in a context below it is built on the next round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dcpp_raft::{Kind, Store};
use notify_debouncer_full::notify::event::{EventKind, MetadataKind, ModifyKind};
use notify_debouncer_full::{DebounceEventResult, new_debouncer, notify::RecursiveMode};

use crate::Error;
use crate::converge::Outcome;
use crate::images::{BuildStep, Delivery, ImageBuilder, build_step, delivery, image_name};
use crate::schema::{
    ServiceChange, ServiceDoc, StackDoc, diff_services, stack_docs, stack_services,
};
use crate::stacks::{Removal, delete_stack, store_stack};

/// The stack name of a compose file in a watched directory.
pub fn stack_name(file: &Path) -> Option<String> {
    let ext = file.extension()?.to_str()?;
    if ext != "yml" && ext != "yaml" {
        return None;
    }
    let stem = file.file_stem()?.to_str()?;
    if stem.starts_with('.') {
        return None;
    }
    let name = dcpp_spec::normalize_project_name(stem);
    (!name.is_empty()).then_some(name)
}

/// Watches `dir` forever, syncing on start and after every (debounced) change.
pub async fn watch_loop<S: Store>(
    c: S,
    dir: PathBuf,
    builder: Arc<dyn ImageBuilder>,
) -> Result<(), Error> {
    let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(&dir, e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut debouncer = new_debouncer(
        Duration::from_millis(200),
        None,
        move |r: DebounceEventResult| match r {
            Ok(evs) if !evs.iter().any(|e| changes_content(&e.event.kind)) => {}
            r => {
                let _ = tx.send(r.is_ok());
            }
        },
    )
    .map_err(|source| Error::Watch {
        path: dir.clone(),
        source,
    })?;
    // The directory, not the files: editors replace files by renaming over them.
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| Error::Watch {
            path: dir.clone(),
            source,
        })?;
    eprintln!(
        "watching {} (one stack per *.yml/*.yaml file)",
        dir.display()
    );
    let mut reported = Reported::default();
    loop {
        if let Err(e) = sync_dir(&c, &dir, &builder, &mut reported).await {
            reported.once(None, format!("watch: {e}"));
        } else {
            reported.errors.retain(|k, _| k.is_some());
        }
        if rx.recv().await.is_none() {
            return Ok(());
        }
        while rx.try_recv().is_ok() {}
    }
}

/// Whether an event can change what the directory holds (not an open, close or atime update).
fn changes_content(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))
    )
}

/// How long the outcome of one applied change is followed before it is reported as not
/// converged (`dcpp apply`'s default timeout).
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(300);

/// Messages already printed, by file (`None`: the directory as a whole), so a file that stays
/// broken is reported once, not on every round; and the followers of the changes applied, by
/// stack (a newer change of a stack replaces the follower of the older one).
#[derive(Default)]
pub struct Reported {
    errors: BTreeMap<Option<PathBuf>, String>,
    following: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

impl Drop for Reported {
    fn drop(&mut self) {
        for h in self.following.values() {
            h.abort();
        }
    }
}

impl Reported {
    /// Prints `msg` unless it is what was last printed for `file`.
    fn once(&mut self, file: Option<&Path>, msg: String) {
        let key = file.map(Path::to_path_buf);
        if self.errors.get(&key) != Some(&msg) {
            eprintln!("{msg}");
            self.errors.insert(key, msg);
        }
    }

    fn clear(&mut self, file: &Path) {
        self.errors.remove(&Some(file.to_path_buf()));
    }
}

/// Makes the stored stacks match the files of `dir` once; problems not yet in `reported` are
/// printed.
pub async fn sync_dir<S: Store>(
    c: &S,
    dir: &Path,
    builder: &Arc<dyn ImageBuilder>,
    reported: &mut Reported,
) -> Result<(), Error> {
    // A file that went away and comes back broken is news again.
    reported
        .errors
        .retain(|k, _| k.as_ref().is_none_or(|p| p.exists()));
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        let Some(name) = stack_name(&p) else { continue };
        if let Some(first) = files.get(&name) {
            let msg = format!(
                "watch: {} ignored: stack {name} already comes from {}",
                p.display(),
                first.display()
            );
            reported.once(Some(&p), msg);
            continue;
        }
        files.insert(name, p);
    }
    let mut stored: BTreeMap<String, StackDoc> = BTreeMap::new();
    for o in c.list(Kind::Stack).await?.objects {
        let s: StackDoc = o.decode()?;
        stored.insert(s.name.clone(), s);
    }
    for (name, file) in &files {
        let opts = dcpp_spec::LoadOptions {
            files: vec![file.clone()],
            project_name: Some(name.clone()),
            profiles: vec![],
            env_files: vec![],
            working_dir: dir.to_path_buf(),
            project_dir: None,
            environment: std::env::vars().collect(),
        };
        let project = match dcpp_spec::load(&opts) {
            Ok(l) => l.project,
            Err(errs) => {
                let msg = format!(
                    "watch: {} is invalid; stack {name} keeps its last good state:\n{errs}",
                    file.display()
                );
                reported.once(Some(file), msg);
                continue;
            }
        };
        // Their data is stored (sealed, versioned) by `apply`; a stack written here would
        // mount versions that do not exist.
        let kept = |why: &dyn std::fmt::Display| {
            format!(
                "watch: {}: {why}; stack {name} keeps its last good state",
                file.display()
            )
        };
        if !project.secrets.is_empty() || !project.configs.is_empty() {
            let why = "secrets and configs are not applied by watch yet (use `dcpp apply`)";
            reported.once(Some(file), kept(&why));
            continue;
        }
        let project = match build_services(c, builder, project).await? {
            Ok(p) => p,
            Err(e) => {
                reported.once(Some(file), kept(&e));
                continue;
            }
        };
        let (mut stack, services) = match stack_docs(&project, &file.display().to_string()) {
            Ok(x) => x,
            Err(e) => {
                reported.once(Some(file), kept(&e));
                continue;
            }
        };
        reported.clear(file);
        let prev = stored.get(name);
        if prev.is_some_and(|s| s.hash == stack.hash && s.source == stack.source) {
            continue;
        }
        let old = stack_services(c, name).await?;
        let new: BTreeMap<String, ServiceDoc> = services
            .into_iter()
            .map(|d| (d.spec.name.clone(), d))
            .collect();
        let changes: Vec<ServiceChange> = diff_services(&old, &new);
        store_stack(c, &mut stack, &old, &new, prev, true, changes.len()).await?;
        eprintln!(
            "watch: applied {} as stack {name} ({} change(s))",
            file.display(),
            changes.len()
        );
        let applied: Vec<ServiceDoc> = new.into_values().collect();
        let follower = tokio::spawn(report_outcome(c.clone(), name.clone(), applied));
        if let Some(old) = reported.following.insert(name.clone(), follower) {
            old.abort();
        }
    }
    reported.following.retain(|_, h| !h.is_finished());
    for (name, s) in &stored {
        let from_here = Path::new(&s.source).parent() == Some(dir);
        if from_here && !files.contains_key(name) {
            if let Some(h) = reported.following.remove(name) {
                h.abort();
            }
            delete_stack(c, name, &Removal::default()).await?;
            eprintln!("watch: {} is gone: stack {name} removed", s.source);
        }
    }
    Ok(())
}

/// Builds (or finds) the image of every service of `project` with `build:` and pins the
/// service to its manifest. The outer error is the store's; the inner one why this file's
/// builds cannot be had (a refused delivery, a failed build or push).
async fn build_services<S: Store>(
    c: &S,
    builder: &Arc<dyn ImageBuilder>,
    mut project: dcpp_spec::Project,
) -> Result<Result<dcpp_spec::Project, BuildFailed>, Error> {
    let names: Vec<String> = project
        .services
        .iter()
        .filter(|(_, s)| s.build.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    if names.is_empty() {
        return Ok(Ok(project));
    }
    let nodes = c.list(Kind::Node).await?.objects.len();
    for name in names {
        let image = image_name(&project, &name, &project.services[&name]);
        let push = match delivery(&name, &image, nodes) {
            Delivery::Local => false,
            Delivery::Push => true,
            Delivery::Refused(e) => return Ok(Err(BuildFailed(e))),
        };
        let b = builder.clone();
        let p = project.clone();
        let svc = name.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<String, BuildFailed> {
            let fail = |what: &str, e: crate::images::BuilderError| {
                BuildFailed(format!("service {svc}: {what} {image}: {e}"))
            };
            let present = b.present(&image).map_err(|e| fail("looking up", e))?;
            let digest = match build_step(&p, &svc, present.as_deref())
                .map_err(|e| BuildFailed(e.to_string()))?
            {
                Some(BuildStep::Use { digest, .. }) => digest,
                Some(BuildStep::Build(spec)) => {
                    eprintln!("watch: service {svc}: building {image}");
                    b.build(&spec, &mut |l| eprintln!("watch: {image}: {l}"))
                        .map_err(|e| fail("building", e))?
                }
                None => return Err(BuildFailed(format!("service {svc}: no build: section"))),
            };
            let digest = if push {
                eprintln!("watch: service {svc}: pushing {image}");
                b.push(&image).map_err(|e| fail("pushing", e))?
            } else {
                digest
            };
            Ok(format!("{image}@{digest}"))
        })
        .await;
        let pinned = match res {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => {
                return Ok(Err(BuildFailed(format!(
                    "service {name}: the build task: {e}"
                ))));
            }
        };
        if let Some(s) = project.services.get_mut(&name) {
            s.image = Some(pinned);
        }
    }
    Ok(Ok(project))
}

/// Why a file's builds cannot be had, as reported.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BuildFailed(String);

/// Follows one applied change with the convergence rule `dcpp apply` uses and prints how it
/// ended: a GitOps user has no terminal waiting on the change, so this line (in the daemon's
/// or `dcpp watch`'s log) is where a crash loop or a missing image shows.
async fn report_outcome<S: Store>(c: S, stack: String, applied: Vec<ServiceDoc>) {
    match crate::converge::follow(&c, &applied, FOLLOW_TIMEOUT, |_| {}).await {
        Ok(Outcome::Converged(took)) => {
            eprintln!(
                "watch: stack {stack} converged in {:.1}s",
                took.as_secs_f64()
            );
        }
        Ok(Outcome::Failed(round)) => {
            for (name, reason) in round.failed() {
                eprintln!("watch: stack {stack} failed: {name}: {reason}");
            }
        }
        Ok(Outcome::TimedOut(round)) => eprintln!(
            "watch: stack {stack} not converged after {}s: {}",
            FOLLOW_TIMEOUT.as_secs(),
            round.summary()
        ),
        Err(e) => tracing::warn!(%stack, "following the applied change: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_map_to_stack_names() {
        assert_eq!(stack_name(Path::new("/d/web.yml")).as_deref(), Some("web"));
        assert_eq!(
            stack_name(Path::new("/d/My App.yaml")).as_deref(),
            Some("myapp")
        );
        assert_eq!(stack_name(Path::new("/d/.hidden.yml")), None);
        assert_eq!(stack_name(Path::new("/d/notes.txt")), None);
    }

    /// A node's store and builder: `present` answers from what was built; each build makes
    /// the next digest unless `fail` says why it fails.
    #[derive(Default)]
    struct Fake {
        images: std::sync::Mutex<BTreeMap<String, String>>,
        builds: std::sync::Mutex<Vec<crate::images::BuildSpec>>,
        fail: std::sync::Mutex<Option<String>>,
        same: std::sync::atomic::AtomicBool,
    }

    impl ImageBuilder for Fake {
        fn present(&self, image: &str) -> Result<Option<String>, crate::images::BuilderError> {
            Ok(self.images.lock().unwrap().get(image).cloned())
        }
        fn build(
            &self,
            spec: &crate::images::BuildSpec,
            _: &mut dyn FnMut(&str),
        ) -> Result<String, crate::images::BuilderError> {
            if let Some(e) = self.fail.lock().unwrap().clone() {
                return Err(e.into());
            }
            let mut builds = self.builds.lock().unwrap();
            builds.push(spec.clone());
            let n = if self.same.load(std::sync::atomic::Ordering::SeqCst) {
                1
            } else {
                builds.len()
            };
            let d = format!("sha256:{n}");
            self.images
                .lock()
                .unwrap()
                .insert(spec.image.clone(), d.clone());
            Ok(d)
        }
        fn push(&self, image: &str) -> Result<String, crate::images::BuilderError> {
            Err(format!("no registry for {image}").into())
        }
    }

    async fn web_image(c: &dcpp_raft::MemStore, stack: &str) -> Option<String> {
        stack_services(c, stack).await.unwrap()["web"]
            .service
            .image
            .clone()
    }

    async fn stack_hash(c: &dcpp_raft::MemStore) -> Vec<String> {
        c.list(Kind::Stack)
            .await
            .unwrap()
            .objects
            .iter()
            .map(|o| o.decode::<StackDoc>().unwrap().hash)
            .collect()
    }

    #[tokio::test]
    async fn a_missing_image_is_built_once_and_the_service_pinned_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.yml");
        std::fs::write(&file, "services:\n  web:\n    build: .\n").unwrap();
        let c = dcpp_raft::MemStore::new();
        let fake = Arc::new(Fake::default());
        let b: Arc<dyn ImageBuilder> = fake.clone();
        let mut reported = Reported::default();
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        assert!(reported.errors.is_empty(), "{:?}", reported.errors);
        assert_eq!(
            web_image(&c, "app").await.as_deref(),
            Some("app-web@sha256:1")
        );
        let builds = fake.builds.lock().unwrap().clone();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].tags, ["app-web"]);
        assert_eq!(
            builds[0].context,
            std::fs::canonicalize(dir.path()).unwrap()
        );
        // Present now: not built again, the stack left as it is.
        let before = stack_hash(&c).await;
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        assert_eq!(fake.builds.lock().unwrap().len(), 1);
        assert_eq!(stack_hash(&c).await, before);
    }

    #[tokio::test]
    async fn pull_policy_build_rebuilds_and_only_a_changed_image_changes_the_stack() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("app.yml"),
            "services:\n  web:\n    image: shop:1\n    build: .\n    pull_policy: build\n",
        )
        .unwrap();
        let c = dcpp_raft::MemStore::new();
        let fake = Arc::new(Fake::default());
        fake.same.store(true, std::sync::atomic::Ordering::SeqCst);
        let b: Arc<dyn ImageBuilder> = fake.clone();
        let mut reported = Reported::default();
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        assert_eq!(
            web_image(&c, "app").await.as_deref(),
            Some("shop:1@sha256:1")
        );
        let before = stack_hash(&c).await;
        // Rebuilt to the same manifest (all from the cache): the stack stays.
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        assert_eq!(fake.builds.lock().unwrap().len(), 2);
        assert_eq!(stack_hash(&c).await, before);
        // Rebuilt to another: the service follows it.
        fake.same.store(false, std::sync::atomic::Ordering::SeqCst);
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        assert_eq!(
            web_image(&c, "app").await.as_deref(),
            Some("shop:1@sha256:3")
        );
        assert_ne!(stack_hash(&c).await, before);
    }

    #[tokio::test]
    async fn a_failed_build_is_reported_and_the_last_good_state_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.yml");
        std::fs::write(
            &file,
            "services:\n  web:\n    build: .\n    pull_policy: build\n",
        )
        .unwrap();
        let c = dcpp_raft::MemStore::new();
        let fake = Arc::new(Fake::default());
        let b: Arc<dyn ImageBuilder> = fake.clone();
        let mut reported = Reported::default();
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        let before = stack_hash(&c).await;
        *fake.fail.lock().unwrap() =
            Some("Dockerfile:3: RUN false: returned a non-zero code: 1".into());
        std::fs::write(
            &file,
            "services:\n  web:\n    build: .\n    pull_policy: build\n    stop_grace_period: 1s\n",
        )
        .unwrap();
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        let msg = &reported.errors[&Some(file.clone())];
        assert!(
            msg.contains("service web: building app-web: Dockerfile:3: RUN false: returned a non-zero code: 1")
                && msg.ends_with("stack app keeps its last good state"),
            "{msg}"
        );
        assert_eq!(stack_hash(&c).await, before);
        assert_eq!(
            web_image(&c, "app").await.as_deref(),
            Some("app-web@sha256:1")
        );
    }

    #[tokio::test]
    async fn on_a_cluster_a_build_without_a_registry_is_refused_and_one_with_it_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.yml");
        std::fs::write(&file, "services:\n  web:\n    build: .\n").unwrap();
        let c = dcpp_raft::MemStore::new();
        for id in ["1", "2"] {
            c.apply(
                dcpp_raft::Txn::new().op(dcpp_raft::Op::put(
                    Kind::Node,
                    id,
                    &serde_json::json!({}),
                )
                .unwrap()),
            )
            .unwrap();
        }
        let fake = Arc::new(Fake::default());
        let b: Arc<dyn ImageBuilder> = fake.clone();
        let mut reported = Reported::default();
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        let msg = &reported.errors[&Some(file.clone())];
        assert!(
            msg.contains("the cluster has 2 nodes") && msg.contains("name a registry in `image:`"),
            "{msg}"
        );
        assert!(fake.builds.lock().unwrap().is_empty());
        assert!(c.list(Kind::Stack).await.unwrap().objects.is_empty());
        std::fs::write(
            &file,
            "services:\n  web:\n    image: 127.0.0.1:5000/web\n    build: .\n",
        )
        .unwrap();
        sync_dir(&c, dir.path(), &b, &mut reported).await.unwrap();
        let msg = &reported.errors[&Some(file.clone())];
        assert!(
            msg.contains(
                "service web: pushing 127.0.0.1:5000/web: no registry for 127.0.0.1:5000/web"
            ),
            "{msg}"
        );
        assert_eq!(fake.builds.lock().unwrap().len(), 1);
        assert!(c.list(Kind::Stack).await.unwrap().objects.is_empty());
    }
}
