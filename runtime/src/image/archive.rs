//! `image load`: OCI image layouts and `docker save` archives (directories or tar files).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::digest::{Digest, HashingReader};
use super::error::{ImageError, IoContext, Result};
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

/// Join an archive-relative path below `root`, refusing anything that climbs out.
fn inside(root: &Path, rel: &str, what: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ImageError::invalid(
            what,
            format!("path {rel:?} leaves the archive"),
        ));
    }
    Ok(root.join(p))
}

fn file_digest(path: &Path) -> Result<Digest> {
    let f = File::open(path).ctx("open", path)?;
    let (d, _, _) = HashingReader::new(BufReader::with_capacity(1 << 20, f))
        .finish()
        .ctx("read", path)?;
    Ok(d)
}

fn sniff_file(path: &Path) -> Result<Compression> {
    let f = File::open(path).ctx("open", path)?;
    let mut r = BufReader::new(f);
    let head = r.fill_buf().ctx("read", path)?;
    Ok(Compression::sniff(head))
}

impl ImageStore {
    /// Load every image of an OCI image layout or `docker save` archive (directory, or tar
    /// file, optionally gzip/zstd compressed). Returns the loaded images.
    pub fn load(&self, source: &Path) -> Result<Vec<LocalImage>> {
        let _w = self.write_guard()?;
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

    fn load_dir(&self, dir: &Path, name: &str) -> Result<Vec<LocalImage>> {
        if dir.join("manifest.json").is_file() {
            self.load_docker_save(dir, name)
        } else if dir.join("index.json").is_file() {
            self.load_oci_layout(dir, name)
        } else {
            Err(ImageError::invalid(
                format!("archive {name}"),
                "neither an OCI layout (index.json) nor a docker save archive (manifest.json)",
            ))
        }
    }

    fn layout_blob(&self, dir: &Path, d: &Digest, name: &str) -> Result<Vec<u8>> {
        let p = dir.join("blobs/sha256").join(d.hex());
        let bytes = fs::read(&p).map_err(|e| {
            ImageError::invalid(format!("archive {name}"), format!("blob {d}: {e}"))
        })?;
        self.put_blob(&bytes, Some(d))?;
        Ok(bytes)
    }

    fn load_oci_layout(&self, dir: &Path, name: &str) -> Result<Vec<LocalImage>> {
        let idx_bytes = fs::read(dir.join("index.json")).ctx("read", dir.join("index.json"))?;
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
                Ok(dir.join("blobs/sha256").join(d.digest.hex()))
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

    fn load_layers(
        &self,
        _dir: &Path,
        descs: &[Descriptor],
        config: &ImageConfig,
        name: &str,
        path_of: impl Fn(&Descriptor) -> Result<PathBuf>,
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
            let path = path_of(d)?;
            if !(self.has_blob(&d.digest) && self.has_layer(diff)) {
                let _l = self.content_lock("blob", &d.digest)?;
                if !(self.has_blob(&d.digest) && self.has_layer(diff)) {
                    let f = File::open(&path).ctx("open", &path)?;
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
        let mpath = dir.join("manifest.json");
        let entries: Vec<DockerSaveEntry> =
            serde_json::from_slice(&fs::read(&mpath).ctx("read", &mpath)?)
                .map_err(|e| ImageError::invalid(format!("manifest.json of {name}"), e))?;
        let mut out = Vec::new();
        for e in entries {
            let what = format!("archive {name}");
            let cfg_path = inside(dir, &e.config, &what)?;
            let cfg_bytes = fs::read(&cfg_path).ctx("read", &cfg_path)?;
            let id = self.put_blob(&cfg_bytes, None)?;
            let config: ImageConfig = serde_json::from_slice(&cfg_bytes)
                .map_err(|err| ImageError::invalid(format!("config in {name}"), err))?;
            let mut descs = Vec::new();
            let mut paths = BTreeMap::new();
            for l in &e.layers {
                let p = inside(dir, l, &what)?;
                let digest = file_digest(&p)?;
                let media_type = match sniff_file(&p)? {
                    Compression::None => spec::DOCKER_LAYER_TAR,
                    Compression::Gzip => spec::DOCKER_LAYER_GZIP,
                    Compression::Zstd => spec::DOCKER_LAYER_ZSTD,
                };
                let size = fs::metadata(&p).ctx("stat", &p)?.len();
                paths.insert(digest.clone(), p);
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
