//! The build context as it travels to a daemon: packed after `.dockerignore`, and unpacked
//! only when no entry can reach outside its directory.

use std::path::Path;

use dcpp_runtime::build::{BuildError, pack_context, unpack_context};

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn names(tar: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
    let mut v: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn the_packed_context_leaves_out_what_dockerignore_excludes() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx, "Dockerfile", "FROM scratch\n");
    write(
        &ctx,
        ".dockerignore",
        "*.key\nlogs\ncache\n!cache/keep.txt\nDockerfile\n",
    );
    write(&ctx, "app.txt", "a");
    write(&ctx, "secret.key", "k");
    write(&ctx, "logs/one.log", "l");
    write(&ctx, "cache/drop.txt", "d");
    write(&ctx, "cache/keep.txt", "k");
    std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).unwrap();
    let tar = t.path().join("ctx.tar");
    let mut f = std::fs::File::create(&tar).unwrap();
    pack_context(&ctx, Some("Dockerfile"), &mut f).unwrap();
    assert_eq!(
        names(&tar),
        [
            ".dockerignore",
            "Dockerfile",
            "app.txt",
            "cache/keep.txt",
            "link"
        ]
    );
    // It unpacks as it was, the symlink a symlink (not what it points at).
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    unpack_context(&tar, &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("cache/keep.txt")).unwrap(),
        "k"
    );
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("/etc/passwd")
    );
}

fn hostile(t: &Path, name: &str, kind: tar::EntryType, link: Option<&str>) -> BuildError {
    let tar = t.join(format!("{}.tar", name.replace('/', "_")));
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        b.finish().unwrap();
    }
    let out = t.join(format!("out-{}", name.replace('/', "_")));
    std::fs::create_dir(&out).unwrap();
    let e = unpack_context(&tar, &out).unwrap_err();
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "{name}: unpacked"
    );
    e
}

#[test]
fn an_entry_that_could_reach_outside_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    for (name, kind, link, why) in [
        ("../up", tar::EntryType::Regular, None, "leaves the context"),
        ("/abs", tar::EntryType::Regular, None, "leaves the context"),
        (
            "hl",
            tar::EntryType::Link,
            Some("../../etc/passwd"),
            "hard link",
        ),
        (
            "hl2",
            tar::EntryType::Link,
            Some("/etc/passwd"),
            "hard link",
        ),
        ("a/.wh.b", tar::EntryType::Regular, None, "whiteout"),
        ("dev", tar::EntryType::Char, None, "unsupported entry type"),
    ] {
        let e = hostile(t.path(), name, kind, link).to_string();
        assert!(
            e.contains("refused archive entry") && e.contains(why),
            "{name}: {e}"
        );
    }
}
