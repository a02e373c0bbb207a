//! The name index of a data dir: `containers/.names/<name>` holds the id of the container that
//! has the name. `create` claims a name under the data-dir lock by looking at one file instead
//! of reading every container's `state.json` (with a thousand containers that read was most of
//! the time a create held the lock), and `resolve` finds a container by name the same way.
//!
//! `state.json` stays the record: an index entry counts only while the container it names has
//! a `state.json` with that name, so an entry left behind (a monitor that removed its
//! auto-removed container, a manager killed mid-remove) is simply stale. A manager opening the
//! dir rebuilds the index from the containers under the data-dir lock, which also covers dirs
//! written before the index existed.

use std::path::{Path, PathBuf};

use super::{ContainerManager, ContainerState, Error, io_err};

impl ContainerManager {
    fn names_dir(&self) -> PathBuf {
        self.containers_dir.join(".names")
    }

    fn name_entry(&self, name: &str) -> PathBuf {
        // Names are [a-zA-Z0-9][a-zA-Z0-9_.-]*, checked by `create`: a plain file name.
        self.names_dir().join(name)
    }

    /// The container that holds `name`, per the index checked against its `state.json`.
    pub(super) fn by_name(&self, name: &str) -> Option<ContainerState> {
        if !valid_entry_name(name) {
            return None;
        }
        let id = std::fs::read_to_string(self.name_entry(name)).ok()?;
        self.state_of(id.trim()).filter(|st| st.name == name)
    }

    /// Records that `st` holds its name. Call under the data-dir lock, after checking
    /// [`by_name`](Self::by_name).
    pub(super) fn claim_name(&self, st: &ContainerState) -> Result<(), Error> {
        let dir = self.names_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        // The temporary file's leading dot keeps it apart from every name.
        let tmp = dir.join(format!(".{}.tmp", st.name));
        std::fs::write(&tmp, st.id.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, self.name_entry(&st.name)))
            .map_err(io_err("writing the name index"))
    }

    /// Drops `st`'s index entry if it is still its own.
    pub(super) fn release_name(&self, st: &ContainerState) {
        release_entry(&self.name_entry(&st.name), st);
    }

    /// Whether the index exists (a data dir written before it has none).
    pub(super) fn has_names(&self) -> bool {
        self.names_dir().is_dir()
    }

    /// Makes the index say what the containers' `state.json`s say. Call under the data-dir lock.
    pub(super) fn rebuild_names(&self, states: &[ContainerState]) {
        let dir = self.names_dir();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("creating {}: {e}", dir.display());
            return;
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    let _ = std::fs::remove_file(e.path());
                    continue;
                }
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                if !states
                    .iter()
                    .any(|s| s.name == name && s.id == owner.trim())
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for st in states {
            if self.by_name(&st.name).is_none()
                && let Err(e) = self.claim_name(st)
            {
                tracing::warn!(container = %st.name, "indexing the container name: {e}");
            }
        }
    }

    /// The `state.json` of container `id`, if it exists.
    pub(super) fn state_of(&self, id: &str) -> Option<ContainerState> {
        if !is_full_id(id) {
            return None;
        }
        let d = std::fs::read(self.dir(id).join("state.json")).ok()?;
        serde_json::from_slice(&d).ok()
    }
}

/// What a monitor removing its auto-removed container (`dir`) does to the index.
pub(crate) fn release_name_entry(dir: &Path, st: &ContainerState) {
    if let Some(containers) = dir.parent()
        && valid_entry_name(&st.name)
    {
        release_entry(&containers.join(".names").join(&st.name), st);
    }
}

fn release_entry(p: &Path, st: &ContainerState) {
    if std::fs::read_to_string(p).is_ok_and(|id| id.trim() == st.id) {
        let _ = std::fs::remove_file(p);
    }
}

/// 64 hex digits, the shape of a container id.
pub(super) fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn valid_entry_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && Path::new(name).file_name().is_some_and(|f| f == name)
}
