//! Resolving `user` (`name`, `uid`, `name:group`, `uid:gid`) against the image's /etc/passwd and
//! /etc/group, as docker does.

use std::path::{Path, PathBuf};

use super::rootpath::{Root, RootPathError};

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Numeric uid.
    pub uid: u32,
    /// Numeric primary gid.
    pub gid: u32,
    /// Supplementary groups (those listing the user by name in /etc/group).
    pub additional_gids: Vec<u32>,
    /// Home directory (for HOME), `/` when unknown.
    pub home: String,
}

/// Errors resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is not in the image's /etc/passwd.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// The group is not in the image's /etc/group.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
}

/// Largest passwd or group file read from an image.
const MAX_FILE: u64 = 16 << 20;

/// Reads `rel` (like `etc/passwd`) from the image layers, topmost first; a whiteout hides it.
/// Each layer is read as a root of its own ([`Root`]): an image symlink (`/etc` → a host
/// directory, `/etc/passwd` → `/dev/zero`) resolves inside the layer, never on the host, and
/// only a regular file of bounded size is read.
pub fn read_in_layers(layers: &[PathBuf], rel: &str) -> Option<String> {
    let rel = Path::new(rel);
    let name = rel.file_name()?.to_string_lossy();
    let whiteout = rel.parent()?.join(format!(".wh.{name}"));
    for layer in layers {
        let Ok(root) = Root::open(layer) else {
            continue;
        };
        match root.read_file(rel, MAX_FILE) {
            Ok(bytes) => return Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(RootPathError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                tracing::warn!(layer = %layer.display(), "ignoring the image's /{}: {e}", rel.display());
                return None;
            }
        }
        if root.resolve(&whiteout).is_ok() {
            return None;
        }
    }
    None
}

/// Resolves `spec` with the given passwd and group file contents (either may be empty).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == user_part);
    let (uid, mut gid, name, home) = if let Some(f) = by_name {
        (
            f[2].parse()
                .map_err(|_| UserError::UnknownUser(user_part.into()))?,
            f[3].parse().unwrap_or(0),
            Some(f[0].to_string()),
            f.get(5).map(|s| s.to_string()),
        )
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let f = entries
            .iter()
            .find(|f| f[2].parse::<u32>().ok() == Some(uid));
        (
            uid,
            f.and_then(|f| f[3].parse().ok()).unwrap_or(0),
            f.map(|f| f[0].to_string()),
            f.and_then(|f| f.get(5).map(|s| s.to_string())),
        )
    } else {
        return Err(UserError::UnknownUser(user_part.into()));
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    if let Some(g) = group_part {
        gid = if let Some(f) = groups.iter().find(|f| f[0] == g) {
            f[2].parse()
                .map_err(|_| UserError::UnknownGroup(g.into()))?
        } else if let Ok(n) = g.parse::<u32>() {
            n
        } else {
            return Err(UserError::UnknownGroup(g.into()));
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = &name {
        for f in &groups {
            if f.get(3).is_some_and(|m| m.split(',').any(|m| m == name))
                && let Ok(g) = f[2].parse::<u32>()
                && g != gid
                && !additional_gids.contains(&g)
            {
                additional_gids.push(g);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: home.unwrap_or_else(|| "/".into()),
    })
}

/// Resolves `spec` against the passwd and group files found in `layers` (topmost first).
pub fn resolve_in_layers(spec: &str, layers: &[PathBuf]) -> Result<ResolvedUser, UserError> {
    let read = |rel| read_in_layers(layers, rel).unwrap_or_default();
    resolve(spec, &read("etc/passwd"), &read("etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_symlinks_do_not_read_host_files() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("passwd"), "hostonly:x:7:7::/host:/bin/sh\n").unwrap();
        let (top, base) = (t.path().join("top"), t.path().join("base"));
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(
            base.join("etc/passwd"),
            "app:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(base.join("etc/group"), "app:x:1000:\n").unwrap();
        // A link to a host file and one to an endless device: neither is read.
        std::os::unix::fs::symlink(host.join("passwd"), top.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", top.join("etc/group")).unwrap();
        let layers = [top.clone(), base.clone()];
        assert_eq!(
            read_in_layers(&layers, "etc/passwd").as_deref(),
            Some("app:x:1000:1000::/home/app:/bin/sh\n")
        );
        assert_eq!(
            read_in_layers(&layers, "etc/group").as_deref(),
            Some("app:x:1000:\n")
        );
        assert!(matches!(
            resolve_in_layers("hostonly", &layers),
            Err(UserError::UnknownUser(_))
        ));
        // A whiteout hides the lower layer's file.
        std::fs::remove_file(top.join("etc/passwd")).unwrap();
        std::fs::write(top.join("etc/.wh.passwd"), "").unwrap();
        assert_eq!(read_in_layers(&layers, "etc/passwd"), None);
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\nwww:x:33:33::/var/www:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nwww:x:33:\naudio:x:29:www,nobody\n";

    #[test]
    fn names_numbers_and_groups() {
        let u = resolve("www", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone(), u.home.as_str()),
            (33, 33, vec![29], "/var/www")
        );
        let u = resolve("1000:1000", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/"));
        let u = resolve("nobody:audio", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 29));
        let u = resolve("0", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(
            matches!(resolve("ghost", PASSWD, GROUP), Err(UserError::UnknownUser(u)) if u == "ghost")
        );
        assert!(matches!(
            resolve("www:ghosts", PASSWD, GROUP),
            Err(UserError::UnknownGroup(_))
        ));
        assert!(matches!(
            resolve("ghost", "", ""),
            Err(UserError::UnknownUser(_))
        ));
    }
}
