//! Builds OCI image layouts on disk (for `skopeo copy oci:…` into a registry, or `image load`):
//! layers from directories or hand-made tar entries, gzip/zstd/none, single images and
//! multi-platform indexes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Uncompressed tar of a directory's contents (symlinks kept as symlinks).
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// One hand-made tar entry; names are written raw so tests can build hostile archives.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str),
}

/// An uncompressed tar of raw entries (no path sanitizing: `../x` and `/x` stay as written).
pub fn tar_entries(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match e {
            Entry::Dir(n) => (n, b"", tar::EntryType::Directory, None),
            Entry::File(n, d) => (n, d, tar::EntryType::Regular, None),
            Entry::Symlink(n, t) => (n, b"", tar::EntryType::Symlink, Some(t)),
            Entry::Hardlink(n, t) => (n, b"", tar::EntryType::Link, Some(t)),
            Entry::CharDev(n) => (n, b"", tar::EntryType::Char, None),
        };
        {
            let old = h.as_old_mut();
            old.name.fill(0);
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                old.linkname.fill(0);
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

pub fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

/// An OCI image layout directory under construction.
pub struct Layout {
    pub dir: PathBuf,
    entries: Vec<Value>,
}

/// What [`Layout::add_image`] made.
#[derive(Clone, Debug)]
pub struct Built {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub descriptor: Value,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
        }
    }

    pub fn add_blob(&self, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        fs::write(
            self.dir
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
            bytes,
        )
        .unwrap();
        d
    }

    /// Add an image from uncompressed layer tars (bottom first); returns its descriptor.
    /// `config` is the runtime config (`{"Cmd": [...]}`) and `platform` `(arch, variant)`.
    pub fn add_image(
        &self,
        layers: &[(Vec<u8>, Comp)],
        config: Value,
        platform: (&str, Option<&str>),
    ) -> Built {
        let mut diff_ids = Vec::new();
        let mut descs = Vec::new();
        let mut layer_digests = Vec::new();
        for (tar, c) in layers {
            diff_ids.push(sha256(tar));
            let (blob, mt) = compress(tar, *c);
            let d = self.add_blob(&blob);
            layer_digests.push(d.clone());
            descs.push(json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        }
        let mut cfg = json!({
            "architecture": platform.0,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = platform.1 {
            cfg["variant"] = json!(v);
        }
        let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
        let cfg_digest = self.add_blob(&cfg_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": cfg_digest, "size": cfg_bytes.len()},
            "layers": descs,
        });
        let mbytes = serde_json::to_vec(&manifest).unwrap();
        let md = self.add_blob(&mbytes);
        let mut plat = json!({"architecture": platform.0, "os": "linux"});
        if let Some(v) = platform.1 {
            plat["variant"] = json!(v);
        }
        Built {
            manifest_digest: md.clone(),
            config_digest: cfg_digest,
            layer_digests,
            descriptor: json!({"mediaType": MANIFEST, "digest": md, "size": mbytes.len(), "platform": plat}),
        }
    }

    /// Add an image index blob over `manifests`; returns its descriptor.
    pub fn add_index(&self, manifests: &[&Built]) -> (String, Value) {
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": manifests.iter().map(|b| b.descriptor.clone()).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&idx).unwrap();
        let d = self.add_blob(&bytes);
        (
            d.clone(),
            json!({"mediaType": INDEX, "digest": d, "size": bytes.len()}),
        )
    }

    /// Name `descriptor` as `tag` in the layout's index.json.
    pub fn tag(&mut self, descriptor: &Value, tag: &str) {
        let mut d = descriptor.clone();
        d.as_object_mut().unwrap().remove("platform");
        if !d["annotations"].is_object() {
            d["annotations"] = json!({});
        }
        d["annotations"]["org.opencontainers.image.ref.name"] = json!(tag);
        self.entries.push(d);
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": self.entries});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}
