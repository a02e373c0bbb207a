//! `image load`: OCI image layouts and `docker save` archives (directories or tar files).
//!
//! An archive is hostile input. Every member used as index, manifest, config or layer is opened
//! with `openat2(RESOLVE_BENEATH)` below the archive's root and must be a regular file: a
//! symlink to an absolute path or one that climbs out with `..` is refused by the kernel, not
//! followed (relative links between members, which older `docker save` writes for shared
//! layers, still work). Hardlink members of a tar must name a member of the same archive (the
//! unpacker refuses the rest). A load that fails leaves nothing in the store: blobs and layers
//! it added that no image refers to are removed again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Component, Path};

use serde::Deserialize;

use super::digest::{Digest, HashingReader};
use super::error::{ImageError, IoContext, Result};
use super::lock::FileLock;
use super::reference::ImageRef;
use super::spec::{self, Compression, Descriptor, ImageConfig, Index, Manifest, Platform};
use super::store::{ImageRecord, ImageStore, LayerRecord, LocalImage, decoder, now_secs};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Checks that an archive-relative member name stays in the archive (no `..`, not absolute).
fn check_member_name(rel: &str, what: &str) -> Result<()> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ImageError::invalid(
            what,
            format!("member path {rel:?} leaves the archive"),
        ));
    }
    Ok(())
}

/// Opens member `rel` of the archive unpacked (or lying) at `root`: resolved by the kernel
/// beneath `root` (a symlink to an absolute path or out through `..` fails with EXDEV instead
/// of being followed), and only a regular file is accepted. `Ok(None)` if it does not exist.
fn try_open_member(root: &Path, rel: &str, what: &str) -> Result<Option<File>> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    check_member_name(rel, what)?;
    let dir = File::open(root).ctx("open", root)?;
    let how = OpenHow::new()
        // O_NONBLOCK: a fifo member must not hang the load; it is refused below.
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(dir.as_fd(), rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(nix::errno::Errno::EXDEV) | Err(nix::errno::Errno::ELOOP) => {
            return Err(ImageError::invalid(
                what,
                format!(
                    "member {rel:?} is a link leading outside the archive; members used as \
                     index, manifest, config or layer must be files inside it"
                ),
            ));
        }
        Err(e) => return Err(ImageError::io("open", root.join(rel), e.into())),
    };
    let f = File::from(fd);
    let meta = f.metadata().ctx("stat", root.join(rel))?;
    if !meta.is_file() {
        return Err(ImageError::invalid(
            what,
            format!("member {rel:?} is not a regular file"),
        ));
    }
    Ok(Some(f))
}

/// [`try_open_member`] for a member that must exist.
fn open_member(root: &Path, rel: &str, what: &str) -> Result<File> {
    try_open_member(root, rel, what)?
        .ok_or_else(|| ImageError::invalid(what, format!("member {rel:?} is missing")))
}

fn read_member(root: &Path, rel: &str, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    open_member(root, rel, what)?
        .read_to_end(&mut buf)
        .ctx("read", root.join(rel))?;
    Ok(buf)
}

fn member_digest(f: File, path: &Path) -> Result<Digest> {
    let (d, _, _) = HashingReader::new(BufReader::with_capacity(1 << 20, f))
        .finish()
        .ctx("read", path)?;
    Ok(d)
}

fn sniff_member(f: File, path: &Path) -> Result<Compression> {
    let mut r = BufReader::new(f);
    let head = r.fill_buf().ctx("read", path)?;
    Ok(Compression::sniff(head))
}

/// Names of the blobs and layer dirs in the store, to tell what a load added.
fn content_names(store: &ImageStore) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let list = |d: &Path| -> Result<BTreeSet<String>> {
        Ok(fs::read_dir(d)
            .ctx("list", d)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    };
    Ok((
        list(&store.root().join("blobs/sha256"))?,
        list(&store.root().join("layers"))?,
    ))
}

impl ImageStore {
    /// Load every image of an OCI image layout or `docker save` archive (directory, or tar
    /// file, optionally gzip/zstd compressed). Returns the loaded images.
    /// Nothing of a load that fails stays in the store.
    pub fn load(&self, source: &Path) -> Result<Vec<LocalImage>> {
        let before = content_names(self)?;
        let res = {
            let _w = self.write_guard()?;
            self.load_source(source)
        };
        if res.is_err() {
            self.drop_unreferenced_since(&before);
        }
        res
    }

    fn load_source(&self, source: &Path) -> Result<Vec<LocalImage>> {
        let meta = fs::metadata(source).ctx("stat", source)?;
        if meta.is_dir() {
            return self.load_dir(source, &source.display().to_string());
        }
        let tmp = self.tmp_path("load");
        fs::create_dir(&tmp).ctx("create", &tmp)?;
        let res = (|| {
            let f = File::open(source).ctx("open", source)?;
            let mut br = BufReader::with_capacity(1 << 20, f);
            let c = Compression::sniff(br.fill_buf().ctx("read", source)?);
            let d = decoder(br, c).ctx("read", source)?;
            super::unpack::unpack(d, &tmp, &source.display().to_string())?;
            self.load_dir(&tmp, &source.display().to_string())
        })();
        let _ = fs::remove_dir_all(&tmp);
        res
    }

    /// Removes blobs and layer dirs that are not in `before` and that no image refers to: what a
    /// failed load wrote. Waits for running writers (gc.lock exclusive), so content another
    /// pull wrote but has not recorded yet is not taken for ours.
    fn drop_unreferenced_since(&self, before: &(BTreeSet<String>, BTreeSet<String>)) {
        let res = (|| {
            let _gc = FileLock::exclusive(&self.root().join("gc.lock"))?;
            let (blobs, layers) = self.referenced_content()?;
            let (now_blobs, now_layers) = content_names(self)?;
            for b in now_blobs.difference(&before.0) {
                if !blobs.contains(b) {
                    let p = self.root().join("blobs/sha256").join(b);
                    fs::remove_file(&p).ctx("remove blob", &p)?;
                }
            }
            for l in now_layers.difference(&before.1) {
                if !layers.contains(l) {
                    let p = self.root().join("layers").join(l);
                    fs::remove_dir_all(&p).ctx("remove layer", &p)?;
                }
            }
            Ok::<(), ImageError>(())
        })();
        if let Err(e) = res {
            tracing::warn!("removing what a failed image load stored: {e}");
        }
    }

    fn load_dir(&self, dir: &Path, name: &str) -> Result<Vec<LocalImage>> {
        let what = format!("archive {name}");
        if let Some(f) = try_open_member(dir, "manifest.json", &what)? {
            drop(f);
            self.load_docker_save(dir, name)
        } else if let Some(f) = try_open_member(dir, "index.json", &what)? {
            drop(f);
            self.load_oci_layout(dir, name)
        } else {
            Err(ImageError::invalid(
                format!("archive {name}"),
                "neither an OCI layout (index.json) nor a docker save archive (manifest.json)",
            ))
        }
    }

    fn layout_blob(&self, dir: &Path, d: &Digest, name: &str) -> Result<Vec<u8>> {
        let bytes = read_member(
            dir,
            &format!("blobs/sha256/{}", d.hex()),
            &format!("archive {name}"),
        )?;
        self.put_blob(&bytes, Some(d))?;
        Ok(bytes)
    }

    fn load_oci_layout(&self, dir: &Path, name: &str) -> Result<Vec<LocalImage>> {
        let idx_bytes = read_member(dir, "index.json", &format!("archive {name}"))?;
        let index: Index = serde_json::from_slice(&idx_bytes)
            .map_err(|e| ImageError::invalid(format!("index.json of {name}"), e))?;
        let mut out = Vec::new();
        for entry in &index.manifests {
            let tag = entry
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| entry.annotations.get("org.opencontainers.image.ref.name"))
                .filter(|n| n.contains('/') || n.contains(':'))
                .and_then(|n| ImageRef::parse(n).ok())
                .and_then(|r| r.tag_key());
            let mut desc = entry.clone();
            if spec::is_index(&desc.media_type) {
                let b = self.layout_blob(dir, &desc.digest, name)?;
                let inner: Index = serde_json::from_slice(&b)
                    .map_err(|e| ImageError::invalid(format!("index in {name}"), e))?;
                let platform = Platform::current();
                desc = inner.select(&platform).cloned().ok_or_else(|| {
                    ImageError::NoMatchingPlatform {
                        reference: name.to_string(),
                        platform: platform.to_string(),
                        available: inner
                            .manifests
                            .iter()
                            .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?;
            }
            let mbytes = self.layout_blob(dir, &desc.digest, name)?;
            let manifest: Manifest = serde_json::from_slice(&mbytes)
                .map_err(|e| ImageError::invalid(format!("manifest in {name}"), e))?;
            let cfg_bytes = self.layout_blob(dir, &manifest.config.digest, name)?;
            let config: ImageConfig = serde_json::from_slice(&cfg_bytes)
                .map_err(|e| ImageError::invalid(format!("config in {name}"), e))?;
            let layers = self.load_layers(dir, &manifest.layers, &config, name, |d| {
                Ok(format!("blobs/sha256/{}", d.digest.hex()))
            })?;
            let media_type = spec::sniff_manifest_media_type(&mbytes)
                .unwrap_or_else(|| spec::OCI_MANIFEST.to_string());
            out.push(self.record_image(
                ImageRecord {
                    id: manifest.config.digest.clone(),
                    manifest_digest: desc.digest.clone(),
                    manifest_media_type: media_type,
                    config_media_type: manifest.config.media_type.clone(),
                    layers,
                    repo_digests: BTreeSet::new(),
                    added: now_secs(),
                },
                &tag.into_iter().collect::<Vec<_>>(),
                None,
            )?);
        }
        Ok(out)
    }

    /// `member_of` names the archive member holding a layer's blob.
    fn load_layers(
        &self,
        dir: &Path,
        descs: &[Descriptor],
        config: &ImageConfig,
        name: &str,
        member_of: impl Fn(&Descriptor) -> Result<String>,
    ) -> Result<Vec<LayerRecord>> {
        if descs.len() != config.rootfs.diff_ids.len() {
            return Err(ImageError::invalid(
                format!("image in {name}"),
                "layer count differs from the config's diff ids",
            ));
        }
        let mut out = Vec::new();
        for (d, diff) in descs.iter().zip(&config.rootfs.diff_ids) {
            let compression = Compression::from_media_type(&d.media_type).ok_or_else(|| {
                ImageError::UnsupportedMediaType {
                    media_type: d.media_type.clone(),
                    context: format!("layer {} in {name}", d.digest),
                }
            })?;
            let member = member_of(d)?;
            // Opened (and so checked) even if the store has the layer: a hostile archive is
            // refused whatever the store holds.
            let f = open_member(dir, &member, &format!("archive {name}"))?;
            if !(self.has_blob(&d.digest) && self.has_layer(diff)) {
                let _l = self.content_lock("blob", &d.digest)?;
                if !(self.has_blob(&d.digest) && self.has_layer(diff)) {
                    self.ingest_layer(
                        BufReader::with_capacity(1 << 20, f),
                        &d.digest,
                        compression,
                        Some(diff),
                        &format!("{} in {name}", d.digest),
                        true,
                    )?;
                }
            }
            out.push(LayerRecord {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: d.size,
                diff_id: diff.clone(),
            });
        }
        Ok(out)
    }

    fn load_docker_save(&self, dir: &Path, name: &str) -> Result<Vec<LocalImage>> {
        let what = format!("archive {name}");
        let entries: Vec<DockerSaveEntry> =
            serde_json::from_slice(&read_member(dir, "manifest.json", &what)?)
                .map_err(|e| ImageError::invalid(format!("manifest.json of {name}"), e))?;
        let mut out = Vec::new();
        for e in entries {
            let cfg_bytes = read_member(dir, &e.config, &what)?;
            let config: ImageConfig = serde_json::from_slice(&cfg_bytes)
                .map_err(|err| ImageError::invalid(format!("config in {name}"), err))?;
            let id = self.put_blob(&cfg_bytes, None)?;
            let mut descs = Vec::new();
            let mut paths = BTreeMap::new();
            for l in &e.layers {
                let p = dir.join(l);
                let f = open_member(dir, l, &what)?;
                let size = f.metadata().ctx("stat", &p)?.len();
                let digest = member_digest(f, &p)?;
                let media_type = match sniff_member(open_member(dir, l, &what)?, &p)? {
                    Compression::None => spec::DOCKER_LAYER_TAR,
                    Compression::Gzip => spec::DOCKER_LAYER_GZIP,
                    Compression::Zstd => spec::DOCKER_LAYER_ZSTD,
                };
                paths.insert(digest.clone(), l.clone());
                descs.push(Descriptor {
                    media_type: media_type.into(),
                    digest,
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                });
            }
            let layers =
                self.load_layers(dir, &descs, &config, name, |d| Ok(paths[&d.digest].clone()))?;
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(spec::DOCKER_MANIFEST.into()),
                config: Descriptor {
                    media_type: spec::DOCKER_CONFIG.into(),
                    digest: id.clone(),
                    size: cfg_bytes.len() as u64,
                    platform: None,
                    annotations: BTreeMap::new(),
                },
                layers: descs,
                annotations: BTreeMap::new(),
            };
            let mbytes = serde_json::to_vec(&manifest).expect("manifest serializes");
            let manifest_digest = self.put_blob(&mbytes, None)?;
            let tags: Vec<String> = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    ImageRef::parse(t)?
                        .tag_key()
                        .ok_or_else(|| ImageError::InvalidReference {
                            reference: t.clone(),
                            reason: "RepoTags entry without a tag".into(),
                        })
                })
                .collect::<Result<_>>()?;
            out.push(self.record_image(
                ImageRecord {
                    id,
                    manifest_digest,
                    manifest_media_type: spec::DOCKER_MANIFEST.into(),
                    config_media_type: spec::DOCKER_CONFIG.into(),
                    layers,
                    repo_digests: BTreeSet::new(),
                    added: now_secs(),
                },
                &tags,
                None,
            )?);
        }
        Ok(out)
    }
}
