//! Named volumes: directories under `<data_dir>/volumes/<name>/_data`, created on first use.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name has characters docker does not allow.
    #[error("invalid volume name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// A container still uses it.
    #[error("volume {name} is in use by container {container}")]
    InUse {
        /// volume
        name: String,
        /// container name
        container: String,
    },
    /// File system error.
    #[error("volume {name}: {source}")]
    Io {
        /// volume
        name: String,
        /// cause
        source: std::io::Error,
    },
}

/// What `volume inspect` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Host directory mounted into containers.
    pub mountpoint: PathBuf,
    /// Creation time.
    pub created_at: String,
}

/// Checks a volume name.
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidName(name.to_string()))
    }
}

/// The volumes of one data dir.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

impl VolumeStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: PathBuf) -> Result<Self, VolumeError> {
        std::fs::create_dir_all(&root).map_err(|source| VolumeError::Io {
            name: String::new(),
            source,
        })?;
        Ok(VolumeStore { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the volume if missing.
    pub fn ensure(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        let io = |source| VolumeError::Io {
            name: name.to_string(),
            source,
        };
        if !dir.join("_data").is_dir() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            // What the container sees at the mount point: 0755 like a docker volume, not the
            // umask's 0700; `dir` (0700) keeps host users out.
            crate::datadir::create_content_root(&dir.join("_data")).map_err(io)?;
            std::fs::write(dir.join("created"), super::util::now_rfc3339()).map_err(io)?;
        }
        self.inspect(name)
    }

    /// Describes a volume.
    pub fn inspect(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        if !dir.join("_data").is_dir() {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        Ok(VolumeInfo {
            name: name.to_string(),
            mountpoint: dir.join("_data"),
            created_at: std::fs::read_to_string(dir.join("created")).unwrap_or_default(),
        })
    }

    /// All volumes, by name.
    pub fn list(&self) -> Vec<VolumeInfo> {
        let mut out: Vec<VolumeInfo> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.inspect(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Removes a volume; `users` are the names of containers that still reference it.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), VolumeError> {
        self.inspect(name)?;
        if let Some(c) = users.first() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                container: c.clone(),
            });
        }
        std::fs::remove_dir_all(self.root.join(name)).map_err(|source| VolumeError::Io {
            name: name.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(d.path().join("volumes")).unwrap();
        assert!(matches!(s.ensure("../x"), Err(VolumeError::InvalidName(_))));
        let v = s.ensure("data").unwrap();
        assert!(v.mountpoint.is_dir());
        assert_eq!(s.list().len(), 1);
        assert!(matches!(
            s.remove("data", &["web".into()]),
            Err(VolumeError::InUse { .. })
        ));
        s.remove("data", &[]).unwrap();
        assert!(matches!(s.inspect("data"), Err(VolumeError::NotFound(_))));
    }
}
