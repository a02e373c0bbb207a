//! Preparing the rootfs: every mount, device and masked path, each resolved inside the root so
//! an image cannot point the host at its own files.

use super::*;

pub(crate) fn loopback_up() -> Res<()> {
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(ShimError::last_os("socket"));
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(ShimError::last_os("reading lo flags"));
    }
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(ShimError::last_os("bringing lo up"));
    }
    Ok(())
}

/// Refuses mount destinations with `..`: docker and runc do too, and a mount must cover the
/// name the user wrote, not one a `..` walked to.
pub(crate) fn check_destination(dest: &Path) -> Res<()> {
    if dest
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ShimError::MountDestination {
            dest: dest.to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn parse_mount_options(opts: &[String]) -> (MsFlags, MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "suid" | "dev" | "exec" | "defaults" => {}
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" => propagation |= MsFlags::MS_PRIVATE,
            "rprivate" => propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => propagation |= MsFlags::MS_SLAVE,
            "rslave" => propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" => propagation |= MsFlags::MS_SHARED,
            "rshared" => propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data)
}

pub(crate) fn mount_entry(root: &Root, m: &oci_spec::runtime::Mount) -> Res<()> {
    check_destination(m.destination())?;
    let typ = m.typ().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let is_bind = typ == "bind" || flags.contains(MsFlags::MS_BIND);
    let source = m.source().clone().unwrap_or_default();
    let source_is_file = is_bind
        && std::fs::metadata(&source)
            .map(|md| !md.is_dir())
            .unwrap_or(false);
    // Resolved inside the rootfs, and mounted onto the descriptor: an image symlink on the way
    // (`/mnt` -> a host directory) can neither take the mount nor the mkdirs out of it.
    let kind = if source_is_file {
        rootpath::Kind::File
    } else {
        rootpath::Kind::Directory
    };
    let target = root
        .mount_point(m.destination(), kind)
        .map_err(ShimError::root("creating mount point"))?;
    let dest = rootpath::fd_path(&target);
    let err = |source: nix::Error| ShimError::Mount {
        typ: typ.clone(),
        dest: m.destination().clone(),
        source,
    };
    // `target` is the covered mount point; a remount or propagation change acts on the new
    // mount, which a fresh resolution (crossing into it) names.
    let mounted = || {
        root.resolve(m.destination())
            .map_err(|source| ShimError::ResolveMount {
                typ: typ.clone(),
                source,
            })
    };
    if is_bind {
        mount(
            Some(&source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | (flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(err)?;
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            let new = mounted()?;
            mount(
                None::<&str>,
                &rootpath::fd_path(&new),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            )
            .map_err(err)?;
        }
    } else {
        let data = data.join(",");
        mount(
            Some(&source),
            &dest,
            Some(typ.as_str()),
            flags,
            if data.is_empty() {
                None
            } else {
                Some(data.as_str())
            },
        )
        .map_err(err)?;
    }
    if !propagation.is_empty() {
        let new = mounted()?;
        mount(
            None::<&str>,
            &rootpath::fd_path(&new),
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

pub(crate) fn create_devices(root: &Root) -> Res<()> {
    let dev = root
        .mkdir_all(Path::new("/dev"))
        .map_err(ShimError::root("creating /dev"))?;
    let at = |name: &str| -> Res<CString> { cstr(name) };
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let c = at(name)?;
        // SAFETY: unlinkat/mknodat/fchmodat on a directory descriptor with a valid C string;
        // none follows a symlink in the last component (fchmodat is given the new node).
        let rc = unsafe {
            libc::unlinkat(dev.as_raw_fd(), c.as_ptr(), 0);
            libc::mknodat(
                dev.as_raw_fd(),
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if rc != 0 {
            return Err(dev_error("mknod", name));
        }
        // mknod honours the umask; the nodes must be world-usable.
        // SAFETY: as above; the node was just created by us and is not a symlink.
        if unsafe { libc::fchmodat(dev.as_raw_fd(), c.as_ptr(), 0o666, 0) } != 0 {
            return Err(dev_error("chmod", name));
        }
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let (l, t) = (at(link)?, at(target)?);
        // SAFETY: unlinkat/symlinkat on a directory descriptor with valid C strings.
        let rc = unsafe {
            libc::unlinkat(dev.as_raw_fd(), l.as_ptr(), 0);
            libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), l.as_ptr())
        };
        if rc != 0 {
            return Err(dev_error("symlink", link));
        }
    }
    Ok(())
}

/// The spec's own device nodes (`devices:` of a service), made after the default set so one
/// may take a default name; the numbers and mode are the host node's.
pub(crate) fn create_spec_devices(root: &Root, spec: &Spec) -> Res<()> {
    let nodes = spec.linux().as_ref().and_then(|l| l.devices().clone());
    for d in nodes.iter().flatten() {
        let (parent, name) = root
            .parent_of(d.path())
            .map_err(ShimError::root("creating a device's directory"))?;
        let c = cstr(&name.to_string_lossy())?;
        let kind = if d.typ() == oci_spec::runtime::LinuxDeviceType::B {
            libc::S_IFBLK
        } else {
            libc::S_IFCHR
        };
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        let dev = libc::makedev(
            u32::try_from(d.major()).unwrap_or_default(),
            u32::try_from(d.minor()).unwrap_or_default(),
        );
        // SAFETY: unlinkat/mknodat/fchmodat on a directory descriptor with a valid C string;
        // none follows a symlink in the last component (fchmodat is given the new node).
        let rc = unsafe {
            libc::unlinkat(parent.as_raw_fd(), c.as_ptr(), 0);
            libc::mknodat(parent.as_raw_fd(), c.as_ptr(), kind | mode, dev)
        };
        // SAFETY: as above; mknod honours the umask, so the mode is set again.
        if rc != 0 || unsafe { libc::fchmodat(parent.as_raw_fd(), c.as_ptr(), mode, 0) } != 0 {
            return Err(ShimError::SpecDevice {
                path: d.path().clone(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn dev_error(op: &'static str, name: &'static str) -> ShimError {
    ShimError::Device {
        op,
        name,
        source: std::io::Error::last_os_error(),
    }
}

pub(crate) fn mask_path(p: &str) -> Res<()> {
    let md = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.map_err(|source| ShimError::Mask {
        path: p.to_owned(),
        source,
    })
}

pub(crate) fn readonly_path(p: &str) -> Res<()> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|_| {
        mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
    })
    .map_err(|source| ShimError::ReadonlyPath {
        path: p.to_owned(),
        source,
    })
}
