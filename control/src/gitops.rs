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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dcpp_raft::{Kind, Store};
use notify_debouncer_full::notify::event::{EventKind, MetadataKind, ModifyKind};
use notify_debouncer_full::{DebounceEventResult, new_debouncer, notify::RecursiveMode};

use crate::Error;
use crate::converge::Outcome;
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
pub async fn watch_loop<S: Store>(c: S, dir: PathBuf) -> Result<(), Error> {
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
        if let Err(e) = sync_dir(&c, &dir, &mut reported).await {
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
pub async fn sync_dir<S: Store>(c: &S, dir: &Path, reported: &mut Reported) -> Result<(), Error> {
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
        if !project.secrets.is_empty() || !project.configs.is_empty() {
            let msg = format!(
                "watch: {}: secrets and configs are not applied by watch yet (use `dcpp apply`); stack {name} keeps its last good state",
                file.display()
            );
            reported.once(Some(file), msg);
            continue;
        }
        // `dcpp apply` builds on the node it runs on; watch runs in a daemon and builds
        // nothing yet, so a `build:` it would leave unbuilt is refused, not run stale.
        if let Some(svc) = project.services.iter().find(|(_, s)| s.build.is_some()) {
            let msg = format!(
                "watch: {}: service {} has `build:`, which watch does not build yet (use `dcpp apply`, or build and push the image and drop `build:`); stack {name} keeps its last good state",
                file.display(),
                svc.0
            );
            reported.once(Some(file), msg);
            continue;
        }
        let (mut stack, services) = match stack_docs(&project, &file.display().to_string()) {
            Ok(x) => x,
            Err(e) => {
                let msg = format!(
                    "watch: {}: {e}; stack {name} keeps its last good state",
                    file.display()
                );
                reported.once(Some(file), msg);
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

    #[tokio::test]
    async fn a_file_with_build_is_refused_not_run_unbuilt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("app.yml"),
            "services:\n  web:\n    build: .\n",
        )
        .unwrap();
        let c = dcpp_raft::MemStore::new();
        let mut reported = Reported::default();
        sync_dir(&c, dir.path(), &mut reported).await.unwrap();
        assert!(c.list(Kind::Stack).await.unwrap().objects.is_empty());
        let msg = &reported.errors[&Some(dir.path().join("app.yml"))];
        assert!(
            msg.contains("service web has `build:`, which watch does not build yet"),
            "{msg}"
        );
    }
}
