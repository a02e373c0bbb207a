//! The content-addressed image store under `<data_dir>/images`.
//!
//! Layout:
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs, each written to `tmp/`, verified,
//!   fsynced and renamed into place, so a blob file exists only if its content is right.
//! - `layers/<diff-id hex>/`: each layer unpacked once, directly usable as an overlay lower dir,
//!   shared by every image containing that layer. It too appears by rename only when complete.
//! - `db.json`: image records, tags and holders, replaced atomically under `db.lock`.
//! - `gc.lock`: writers of new content hold it shared, garbage collection exclusive, so GC never
//!   deletes a blob that a running pull wrote but has not recorded yet.
//! - `locks/<hex>.lock`: one per blob/layer so concurrent pulls fetch and unpack it once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, HashingReader, HashingWriter};
use super::error::{ImageError, IoContext, Result};
use super::lock::FileLock;
use super::reference::ImageRef;
use super::spec::{
    self, Compression, ContainerConfig, Descriptor, ImageConfig, Manifest, Platform, RootFs,
};
use super::unpack;
use crate::commit::{Backing, GroupCommit};

/// A layer of a stored image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed (possibly compressed).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar; names the unpacked directory.
    pub diff_id: Digest,
}

/// What the store remembers about one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, which is the image id (as in docker).
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_media_type: String,
    /// Bottom-most first, as in the manifest.
    pub layers: Vec<LayerRecord>,
    /// `name@sha256:…` under which the manifest was pulled or pushed.
    #[serde(default)]
    pub repo_digests: BTreeSet<String>,
    /// Unix seconds when the image entered this store.
    pub added: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Db {
    images: BTreeMap<Digest, ImageRecord>,
    /// Normalized `registry/repo:tag` → image id.
    tags: BTreeMap<String, Digest>,
    /// Image id → ids of containers (or other users) that need it.
    holders: BTreeMap<Digest, BTreeSet<String>>,
}

/// An image as seen by its users.
#[derive(Debug, Clone)]
pub struct LocalImage {
    pub id: Digest,
    /// Tags pointing at it, normalized (`docker.io/library/busybox:latest`).
    pub references: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
    /// Sum of the layer blob sizes.
    pub size: u64,
    pub added: u64,
    /// Ids of the containers holding this image.
    pub holders: Vec<String>,
    layers_root: PathBuf,
}

impl LocalImage {
    /// Unpacked layer directories in overlayfs `lowerdir` order (top-most first). A layer that
    /// occurs twice is listed once, at its top-most position, which yields the same tree.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        let mut seen = BTreeSet::new();
        self.config
            .rootfs
            .diff_ids
            .iter()
            .rev()
            .filter(|d| seen.insert((*d).clone()))
            .map(|d| self.layers_root.join(d.hex()))
            .collect()
    }

    /// The first tag, or the short id for untagged images.
    pub fn display_name(&self) -> String {
        self.references
            .first()
            .cloned()
            .unwrap_or_else(|| self.id.short().to_string())
    }
}

/// What `rm` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RemoveReport {
    pub untagged: Vec<String>,
    pub deleted: Vec<Digest>,
}

/// What `prune` (or GC after `rm`) freed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    pub images_deleted: Vec<Digest>,
    pub blobs_deleted: usize,
    pub layers_deleted: usize,
    pub bytes_freed: u64,
}

/// Handle on the store; cheap to clone, safe to use from several threads and processes.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A parsed `db.json`, with the file it was parsed from kept open (see `read_db`).
struct DbSnapshot {
    _file: File,
    id: (u64, u64),
    db: Arc<Db>,
}

/// Snapshots by `db.json` path: the node agent and tests open several stores in one process.
static DB_CACHE: Mutex<BTreeMap<PathBuf, DbSnapshot>> = Mutex::new(BTreeMap::new());
const CACHE_MAX_STORES: usize = 8;

/// The group commit of each `db.json` this process writes (see [`crate::commit`]); one per
/// store, which only tests have more than a few of.
static DB_COMMITS: Mutex<BTreeMap<PathBuf, Arc<GroupCommit<Db, FileLock>>>> =
    Mutex::new(BTreeMap::new());

impl Backing<Db> for ImageStore {
    type Lock = FileLock;
    type Error = ImageError;
    fn lock(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.root.join("db.lock"))
    }
    fn load(&self) -> Result<Db> {
        Ok(Db::clone(&*self.read_db()?))
    }
    fn write(&self, db: &Db) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(db).expect("db serializes");
        let tmp = self.tmp_path("db");
        let res = (|| {
            let mut file = File::create(&tmp).ctx("create", &tmp)?;
            file.write_all(&bytes).ctx("write", &tmp)?;
            file.sync_all().ctx("fsync", &tmp)?;
            fs::rename(&tmp, self.db_path()).ctx("rename", &tmp)?;
            Ok(file)
        })();
        match res {
            // What we wrote is the current version: readers in this process skip parsing it.
            Ok(file) => db_cache_put(self.db_path(), file, Arc::new(db.clone())),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
    fn batch_failed(&self, msg: &str) -> ImageError {
        ImageError::io("write", self.db_path(), io::Error::other(msg.to_owned()))
    }
}

type ConfigKey = (PathBuf, Digest);
static CONFIG_CACHE: LazyLock<Mutex<HashMap<ConfigKey, Arc<ImageConfig>>>> =
    LazyLock::new(Default::default);
const CACHE_MAX_CONFIGS: usize = 512;

/// A poisoned cache only means a panic elsewhere while it was held; its content is still whole
/// (every update is a single insert).
fn lock_cache<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn db_cache_get(path: &Path, id: (u64, u64)) -> Option<Arc<Db>> {
    lock_cache(&DB_CACHE)
        .get(path)
        .filter(|s| s.id == id)
        .map(|s| s.db.clone())
}

fn db_cache_put(path: PathBuf, file: File, db: Arc<Db>) -> Result<()> {
    let m = file.metadata().ctx("stat", &path)?;
    let mut cache = lock_cache(&DB_CACHE);
    if cache.len() >= CACHE_MAX_STORES && !cache.contains_key(&path) {
        cache.pop_first();
    }
    cache.insert(
        path,
        DbSnapshot {
            _file: file,
            id: (m.dev(), m.ino()),
            db,
        },
    );
    Ok(())
}

/// Holds `gc.lock` shared while new content is written and recorded.
pub(crate) struct WriteGuard {
    _lock: FileLock,
}

impl ImageStore {
    /// Open (creating if needed) the store at `root`, normally `<data_dir>/images`.
    pub fn open(root: &Path) -> Result<ImageStore> {
        for sub in ["blobs/sha256", "layers", "tmp", "locks"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).ctx("create store directory", &p)?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    pub(crate) fn write_guard(&self) -> Result<WriteGuard> {
        Ok(WriteGuard {
            _lock: FileLock::shared(&self.root.join("gc.lock"))?,
        })
    }

    /// Holds `gc.lock` exclusively, as a prune does: no build or pull writes meanwhile.
    pub(crate) fn gc_guard(&self) -> Result<WriteGuard> {
        Ok(WriteGuard {
            _lock: FileLock::exclusive(&self.root.join("gc.lock"))?,
        })
    }

    /// Lock for fetching/unpacking the content named `d`; blocks while another puller has it.
    pub(crate) fn content_lock(&self, kind: &str, d: &Digest) -> Result<FileLock> {
        FileLock::exclusive(
            &self
                .root
                .join("locks")
                .join(format!("{kind}-{}.lock", d.hex())),
        )
    }

    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::NotFound(format!("blob {d}"))
            } else {
                ImageError::io("read blob", p, e)
            }
        })
    }

    /// Store a small blob from memory, verifying it against `expected` if given.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let actual = Digest::of(bytes);
        if let Some(exp) = expected
            && *exp != actual
        {
            return Err(ImageError::DigestMismatch {
                what: "blob".into(),
                expected: exp.to_string(),
                actual: actual.to_string(),
            });
        }
        if self.has_blob(&actual) {
            return Ok(actual);
        }
        let tmp = self.tmp_path("blob");
        let res = (|| {
            let mut f = File::create(&tmp).ctx("create", &tmp)?;
            f.write_all(bytes).ctx("write", &tmp)?;
            f.sync_all().ctx("fsync", &tmp)?;
            fs::rename(&tmp, self.blob_path(&actual)).ctx("rename", &tmp)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map(|()| actual)
    }

    /// Store a layer blob read from `reader` and unpack it, in one pass. `digest` is the blob
    /// digest to verify; `diff_id`, if known (from the image config), is verified too.
    /// On any mismatch or error nothing of it remains in the store. With `unpack` false (and
    /// a known diff id) only the blob is stored; [`ensure_unpacked`](Self::ensure_unpacked)
    /// unpacks it later.
    /// Returns the diff id. Callers hold the `blob` content lock.
    pub(crate) fn ingest_layer<R: Read>(
        &self,
        reader: R,
        digest: &Digest,
        compression: Compression,
        diff_id: Option<&Digest>,
        name: &str,
        unpack: bool,
    ) -> Result<Digest> {
        let need_blob = !self.has_blob(digest);
        let need_layer = diff_id.is_none_or(|d| unpack && !self.has_layer(d));
        let tmp_blob = self.tmp_path("blob");
        let tmp_dir = self.tmp_path("layer");
        let result = (|| {
            let sink: Box<dyn Write> = if need_blob {
                Box::new(io::BufWriter::with_capacity(
                    1 << 20,
                    File::create(&tmp_blob).ctx("create", &tmp_blob)?,
                ))
            } else {
                Box::new(io::sink())
            };
            let mut tee = TeeReader {
                inner: reader,
                out: HashingWriter::new(sink),
            };
            let mut actual_diff = None;
            if need_layer {
                mark_top_directory(&self.root.join("tmp"));
                fs::create_dir(&tmp_dir).ctx("create", &tmp_dir)?;
                let decoded = decoder(&mut tee, compression)
                    .map_err(|e| ImageError::invalid(format!("layer {name}"), e))?;
                let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, decoded));
                unpack::unpack(&mut hashing, &tmp_dir, name)?;
                let (d, _, _) = hashing
                    .finish()
                    .map_err(|e| ImageError::invalid(format!("layer {name}"), e))?;
                actual_diff = Some(d);
            }
            io::copy(&mut tee, &mut io::sink())
                .map_err(|e| ImageError::invalid(format!("layer {name}"), e))?;
            let (actual, _, sink) = tee.out.finish();
            drop(sink);
            if actual != *digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("layer {name}"),
                    expected: digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            if let (Some(exp), Some(act)) = (diff_id, &actual_diff)
                && exp != act
            {
                return Err(ImageError::DigestMismatch {
                    what: format!("uncompressed layer {name} (diff id)"),
                    expected: exp.to_string(),
                    actual: act.to_string(),
                });
            }
            let diff = match (actual_diff, diff_id) {
                (Some(d), _) => d,
                (None, Some(d)) => d.clone(),
                (None, None) => unreachable!("need_layer is true without a diff id"),
            };
            if need_blob {
                File::open(&tmp_blob)
                    .and_then(|f| f.sync_all())
                    .ctx("fsync", &tmp_blob)?;
                fs::rename(&tmp_blob, self.blob_path(digest)).ctx("rename", &tmp_blob)?;
            }
            if need_layer {
                self.commit_layer_dir(&tmp_dir, &diff)?;
            }
            Ok(diff)
        })();
        let _ = fs::remove_file(&tmp_blob);
        if tmp_dir.exists() {
            let _ = fs::remove_dir_all(&tmp_dir);
        }
        result
    }

    /// Move an unpacked directory into `layers/`, unless another writer got there first.
    fn commit_layer_dir(&self, tmp_dir: &Path, diff: &Digest) -> Result<()> {
        let _l = self.content_lock("layer", diff)?;
        let dest = self.layer_dir(diff);
        if dest.exists() {
            return Ok(());
        }
        // No fsync of the unpacked files (like containerd and docker): the verified blob they
        // came from is durable, and syncfs here would flush every other writer's dirty data on
        // the filesystem, which dominated pull time in the benchmark.
        fs::rename(tmp_dir, &dest).ctx("rename layer", tmp_dir)
    }

    /// Unpack a blob already in the store (e.g. after `load`) if its layer dir is missing.
    pub(crate) fn ensure_layer(&self, layer: &LayerRecord) -> Result<()> {
        if self.has_layer(&layer.diff_id) {
            return Ok(());
        }
        let _l = self.content_lock("blob", &layer.digest)?;
        if self.has_layer(&layer.diff_id) {
            return Ok(());
        }
        let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
            ImageError::UnsupportedMediaType {
                media_type: layer.media_type.clone(),
                context: format!("layer {}", layer.digest),
            }
        })?;
        let p = self.blob_path(&layer.digest);
        let f = File::open(&p).ctx("open blob", &p)?;
        self.ingest_layer(
            BufReader::with_capacity(1 << 20, f),
            &layer.digest,
            compression,
            Some(&layer.diff_id),
            layer.digest.as_str(),
            true,
        )?;
        Ok(())
    }

    /// Unpack every layer of `image` whose directory is missing (an image pulled with
    /// `PullOptions::unpack` off). Cheap when all are there: one stat per layer.
    pub fn ensure_unpacked(&self, image: &LocalImage) -> Result<()> {
        let _w = self.write_guard()?;
        for l in &image.layers {
            self.ensure_layer(l)?;
        }
        Ok(())
    }

    // ---- metadata ----

    fn db_path(&self) -> PathBuf {
        self.root.join("db.json")
    }

    /// The current metadata. Parsed once per version of `db.json` per process: a cached
    /// snapshot is reused while `db.json` is still the very file it was read from. Writers
    /// replace the file by rename and never modify it in place, and the snapshot keeps that
    /// file open, so its inode number cannot be reused by a newer version — equal (dev, inode)
    /// means equal content, also when another process wrote in between.
    fn read_db(&self) -> Result<Arc<Db>> {
        let p = self.db_path();
        let cur = match fs::metadata(&p) {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(ImageError::io("stat", p, e)),
        };
        if let Some(db) = db_cache_get(&p, cur) {
            return Ok(db);
        }
        let mut file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(ImageError::io("read", p, e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ctx("read", &p)?;
        let db: Db = serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptStore {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let db = Arc::new(db);
        db_cache_put(p, file, db.clone())?;
        Ok(db)
    }

    /// Read-modify-write the metadata under the exclusive db lock, replacing it atomically. A
    /// failing `f` changes nothing. Concurrent calls of this process (a container's holder
    /// record each, when a thousand start) share one write of the db.
    fn with_db<T>(&self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        let commit = {
            let mut all = lock_cache(&DB_COMMITS);
            all.entry(self.db_path())
                .or_insert_with(|| Arc::new(GroupCommit::new()))
                .clone()
        };
        commit
            .update(self, |db: &mut Db| {
                let before = db.clone();
                let out = f(db);
                if out.is_err() {
                    *db = before;
                }
                out
            })
            .and_then(|out| out)
    }

    /// Record an image whose blobs and layers are all in the store, and point `tags` at it.
    pub(crate) fn record_image(
        &self,
        mut record: ImageRecord,
        tags: &[String],
        repo_digest: Option<String>,
    ) -> Result<LocalImage> {
        let id = record.id.clone();
        self.with_db(|db| {
            if let Some(old) = db.images.get(&id) {
                record.repo_digests.extend(old.repo_digests.iter().cloned());
                record.added = old.added;
            }
            record.repo_digests.extend(repo_digest);
            db.images.insert(id.clone(), record);
            for t in tags {
                db.tags.insert(t.clone(), id.clone());
            }
            Ok(())
        })?;
        self.get(&id)
    }

    /// The parsed config blob of an image. Blobs are immutable (named by their digest), so a
    /// parsed config is kept per store for the life of the process.
    fn config(&self, id: &Digest) -> Result<Arc<ImageConfig>> {
        let key = (self.root.clone(), id.clone());
        if let Some(c) = lock_cache(&CONFIG_CACHE).get(&key) {
            return Ok(c.clone());
        }
        let bytes = self.read_blob(id)?;
        let config: ImageConfig = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::invalid(format!("config of image {id}"), e))?;
        let config = Arc::new(config);
        let mut cache = lock_cache(&CONFIG_CACHE);
        if cache.len() >= CACHE_MAX_CONFIGS {
            cache.clear();
        }
        cache.insert(key, config.clone());
        Ok(config)
    }

    fn to_local(&self, db: &Db, rec: &ImageRecord) -> Result<LocalImage> {
        let config = ImageConfig::clone(&*self.config(&rec.id)?);
        Ok(LocalImage {
            id: rec.id.clone(),
            references: db
                .tags
                .iter()
                .filter(|(_, v)| **v == rec.id)
                .map(|(k, _)| k.clone())
                .collect(),
            repo_digests: rec.repo_digests.iter().cloned().collect(),
            manifest_digest: rec.manifest_digest.clone(),
            config,
            size: rec.layers.iter().map(|l| l.size).sum(),
            layers: rec.layers.clone(),
            added: rec.added,
            holders: db
                .holders
                .get(&rec.id)
                .map(|h| h.iter().cloned().collect())
                .unwrap_or_default(),
            layers_root: self.root.join("layers"),
        })
    }

    fn get(&self, id: &Digest) -> Result<LocalImage> {
        let db = self.read_db()?;
        let rec = db
            .images
            .get(id)
            .ok_or_else(|| ImageError::NotFound(id.to_string()))?;
        self.to_local(&db, rec)
    }

    /// The stored record (manifest digest, layer blobs) of an image, for push.
    pub fn record(&self, id: &Digest) -> Result<ImageRecord> {
        self.read_db()?
            .images
            .get(id)
            .cloned()
            .ok_or_else(|| ImageError::NotFound(id.to_string()))
    }

    /// All images, newest first.
    pub fn list(&self) -> Result<Vec<LocalImage>> {
        let db = self.read_db()?;
        let mut out = db
            .images
            .values()
            .map(|r| self.to_local(&db, r))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| b.added.cmp(&a.added).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Find an image by tag (normalized like docker: `busybox` is
    /// `docker.io/library/busybox:latest`), by `name@digest`, by full id or by id prefix.
    pub fn resolve(&self, reference: &str) -> Result<LocalImage> {
        let db = self.read_db()?;
        let id = resolve_id(&db, reference)?;
        self.to_local(&db, &db.images[&id])
    }

    /// Tag an existing image with another name.
    pub fn tag(&self, source: &str, target: &str) -> Result<LocalImage> {
        let r = ImageRef::parse(target)?;
        let tag = r.tag_key().ok_or_else(|| ImageError::InvalidReference {
            reference: target.into(),
            reason: "a tag target cannot contain a digest".into(),
        })?;
        let id = self.with_db(|db| {
            let id = resolve_id(db, source)?;
            db.tags.insert(tag, id.clone());
            Ok(id)
        })?;
        self.get(&id)
    }

    /// Note that `holder` (a container id) uses the image, so it is not removed.
    pub fn add_holder(&self, image_id: &Digest, holder: &str) -> Result<()> {
        self.with_db(|db| {
            if !db.images.contains_key(image_id) {
                return Err(ImageError::NotFound(image_id.to_string()));
            }
            db.holders
                .entry(image_id.clone())
                .or_default()
                .insert(holder.to_string());
            Ok(())
        })
    }

    /// Drop a holder; unknown holders and images are ignored (idempotent).
    pub fn remove_holder(&self, image_id: &Digest, holder: &str) -> Result<()> {
        self.with_db(|db| {
            if let Some(h) = db.holders.get_mut(image_id) {
                h.remove(holder);
                if h.is_empty() {
                    db.holders.remove(image_id);
                }
            }
            Ok(())
        })
    }

    /// Remove a tag, or an image by id. A tag whose image has other tags is only untagged;
    /// an image still held by a container is refused. Unreferenced blobs/layers are then freed
    /// if no pull is running (otherwise the next `prune` frees them).
    pub fn remove(&self, reference: &str) -> Result<RemoveReport> {
        let report = self.with_db(|db| {
            let id = resolve_id(db, reference)?;
            let mut report = RemoveReport::default();
            let by_tag = ImageRef::parse(reference)
                .ok()
                .and_then(|r| r.tag_key())
                .filter(|k| db.tags.get(k) == Some(&id));
            let tags_of: Vec<String> = db
                .tags
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect();
            if let Some(tag) = by_tag
                && tags_of.len() > 1
            {
                db.tags.remove(&tag);
                report.untagged.push(tag);
                return Ok(report);
            }
            if let Some(h) = db.holders.get(&id).filter(|h| !h.is_empty()) {
                return Err(ImageError::InUse {
                    image: reference.to_string(),
                    holders: h.len(),
                    first: h.iter().next().cloned().unwrap_or_default(),
                });
            }
            for t in tags_of {
                db.tags.remove(&t);
                report.untagged.push(t);
            }
            db.images.remove(&id);
            report.deleted.push(id);
            Ok(report)
        })?;
        if let Ok(Some(_l)) = self.try_gc_lock() {
            self.collect_garbage()?;
        }
        Ok(report)
    }

    fn try_gc_lock(&self) -> Result<Option<nix::fcntl::Flock<File>>> {
        let p = self.root.join("gc.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx("open lock", &p)?;
        Ok(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok())
    }

    /// Remove untagged images (all unused images with `all`) that no container holds, then
    /// every blob and layer no image refers to, and stale temporary files.
    /// Waits for running pulls to finish.
    pub fn prune(&self, all: bool) -> Result<PruneReport> {
        let _gc = FileLock::exclusive(&self.root.join("gc.lock"))?;
        let deleted = self.with_db(|db| {
            let tagged: BTreeSet<Digest> = db.tags.values().cloned().collect();
            let victims: Vec<Digest> = db
                .images
                .keys()
                .filter(|id| all || !tagged.contains(*id))
                .filter(|id| db.holders.get(*id).is_none_or(|h| h.is_empty()))
                .cloned()
                .collect();
            for id in &victims {
                db.images.remove(id);
                db.tags.retain(|_, v| v != id);
            }
            Ok(victims)
        })?;
        let mut report = self.collect_garbage()?;
        report.images_deleted = deleted;
        // Nothing writes into tmp/ while we hold gc.lock exclusively.
        let tmp = self.root.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        Ok(report)
    }

    /// Delete blobs and layer dirs no image record refers to. Caller holds gc.lock exclusively.
    fn collect_garbage(&self) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let (blobs, layers) = self.referenced_content()?;
        let bdir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&bdir).ctx("list", &bdir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&name) {
                report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).ctx("remove blob", e.path())?;
                report.blobs_deleted += 1;
            }
        }
        let ldir = self.root.join("layers");
        for e in fs::read_dir(&ldir).ctx("list", &ldir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !layers.contains(&name) {
                fs::remove_dir_all(e.path()).ctx("remove layer", e.path())?;
                report.layers_deleted += 1;
            }
        }
        Ok(report)
    }

    /// Hex names of the blobs and layer dirs some image record refers to.
    pub(crate) fn referenced_content(&self) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let _db = FileLock::exclusive(&self.root.join("db.lock"))?;
        let db = self.read_db()?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for rec in db.images.values() {
            blobs.insert(rec.id.hex().to_string());
            blobs.insert(rec.manifest_digest.hex().to_string());
            for l in &rec.layers {
                blobs.insert(l.digest.hex().to_string());
                layers.insert(l.diff_id.hex().to_string());
            }
        }
        Ok((blobs, layers))
    }

    // ---- import ----

    /// Make a one-layer image from a root filesystem (a directory, or a tar/tar.gz/tar.zst
    /// file) and tag it `reference`.
    pub fn import_rootfs(&self, source: &Path, reference: &str) -> Result<LocalImage> {
        self.import_rootfs_with_config(source, reference, ContainerConfig::default())
    }

    /// Like [`import_rootfs`](Self::import_rootfs), with a runtime config (cmd, env, …).
    pub fn import_rootfs_with_config(
        &self,
        source: &Path,
        reference: &str,
        config: ContainerConfig,
    ) -> Result<LocalImage> {
        let r = ImageRef::parse(reference)?;
        let tag = r.tag_key().ok_or_else(|| ImageError::InvalidReference {
            reference: reference.into(),
            reason: "import needs NAME[:TAG], not a digest".into(),
        })?;
        let _w = self.write_guard()?;
        let meta = fs::metadata(source).ctx("stat", source)?;
        let tmp = self.tmp_path("import");
        let res = (|| {
            let file = File::create(&tmp).ctx("create", &tmp)?;
            let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
            if meta.is_dir() {
                let mut b = tar::Builder::new(&mut w);
                b.follow_symlinks(false);
                b.append_dir_all(".", source)
                    .ctx("archive root filesystem", source)?;
                b.finish().ctx("archive root filesystem", source)?;
            } else {
                let f = File::open(source).ctx("open", source)?;
                let mut br = BufReader::with_capacity(1 << 20, f);
                let head = {
                    use io::BufRead;
                    br.fill_buf().ctx("read", source)?.to_vec()
                };
                let mut d = decoder(br, Compression::sniff(&head)).ctx("read", source)?;
                io::copy(&mut d, &mut w).ctx("read", source)?;
            }
            let (digest, size, buf) = w.finish();
            let file = buf
                .into_inner()
                .map_err(|e| ImageError::io("write", &tmp, e.into_error()))?;
            file.sync_all().ctx("fsync", &tmp)?;
            drop(file);
            if !self.has_blob(&digest) {
                fs::rename(&tmp, self.blob_path(&digest)).ctx("rename", &tmp)?;
            }
            Ok((digest, size))
        })();
        let _ = fs::remove_file(&tmp);
        let (digest, size) = res?;
        let layer = LayerRecord {
            digest: digest.clone(),
            media_type: spec::OCI_LAYER_TAR.into(),
            size,
            diff_id: digest.clone(),
        };
        self.ensure_layer(&layer)?;
        let platform = Platform::current();
        let cfg = ImageConfig {
            created: Some(rfc3339_now()),
            architecture: platform.architecture,
            os: platform.os,
            variant: platform.variant,
            config,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![digest.clone()],
            },
            history: vec![serde_json::json!({
                "created": rfc3339_now(),
                "created_by": format!("dcpp image import {}", source.display()),
            })],
        };
        let cfg_bytes = serde_json::to_vec(&cfg).expect("config serializes");
        let id = self.put_blob(&cfg_bytes, None)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(spec::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: spec::OCI_CONFIG.into(),
                digest: id.clone(),
                size: cfg_bytes.len() as u64,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers: vec![Descriptor {
                media_type: spec::OCI_LAYER_TAR.into(),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
            }],
            annotations: BTreeMap::new(),
        };
        let man_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let manifest_digest = self.put_blob(&man_bytes, None)?;
        self.record_image(
            ImageRecord {
                id,
                manifest_digest,
                manifest_media_type: spec::OCI_MANIFEST.into(),
                config_media_type: spec::OCI_CONFIG.into(),
                layers: vec![layer],
                repo_digests: BTreeSet::new(),
                added: now_secs(),
            },
            &[tag],
            None,
        )
    }
}

impl ImageStore {
    /// Store an uncompressed layer tar written by a builder at `tar` (moved into the store,
    /// or deleted if the store has it already) and unpack it. Callers hold a
    /// [`write_guard`](Self::write_guard) until the image using it is recorded.
    pub(crate) fn put_layer_tar(&self, tar: &Path) -> Result<LayerRecord> {
        let res = (|| {
            let f = File::open(tar).ctx("open", tar)?;
            let mut r = HashingReader::new(BufReader::with_capacity(1 << 20, f));
            io::copy(&mut r, &mut io::sink()).ctx("read", tar)?;
            let (digest, size, _) = r.finish().ctx("read", tar)?;
            {
                let _l = self.content_lock("blob", &digest)?;
                if !self.has_blob(&digest) {
                    File::open(tar)
                        .and_then(|f| f.sync_all())
                        .ctx("fsync", tar)?;
                    fs::rename(tar, self.blob_path(&digest)).ctx("rename", tar)?;
                }
            }
            let layer = LayerRecord {
                digest: digest.clone(),
                media_type: spec::OCI_LAYER_TAR.into(),
                size,
                diff_id: digest,
            };
            self.ensure_layer(&layer)?;
            Ok(layer)
        })();
        let _ = fs::remove_file(tar);
        res
    }

    /// A scratch path under the store's `tmp/` (same filesystem as the blobs, so a rename
    /// commits it).
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        self.tmp_path(what)
    }

    /// Record an image made of `layers` (already in the store) with `config` (whose rootfs
    /// must list their diff ids), tagged `tags`. Config and manifest blobs are written first:
    /// the image appears in `db.json` only once all of it is there.
    pub(crate) fn commit_image(
        &self,
        config: &ImageConfig,
        layers: Vec<LayerRecord>,
        tags: &[String],
    ) -> Result<LocalImage> {
        let mut keys = Vec::new();
        for t in tags {
            let r = ImageRef::parse(t)?;
            keys.push(r.tag_key().ok_or_else(|| ImageError::InvalidReference {
                reference: t.clone(),
                reason: "a build is tagged NAME[:TAG], not a digest".into(),
            })?);
        }
        let cfg_bytes = serde_json::to_vec(config).expect("config serializes");
        let id = self.put_blob(&cfg_bytes, None)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(spec::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: spec::OCI_CONFIG.into(),
                digest: id.clone(),
                size: cfg_bytes.len() as u64,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    platform: None,
                    annotations: BTreeMap::new(),
                })
                .collect(),
            annotations: BTreeMap::new(),
        };
        let man_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let manifest_digest = self.put_blob(&man_bytes, None)?;
        self.record_image(
            ImageRecord {
                id,
                manifest_digest,
                manifest_media_type: spec::OCI_MANIFEST.into(),
                config_media_type: spec::OCI_CONFIG.into(),
                layers,
                repo_digests: BTreeSet::new(),
                added: now_secs(),
            },
            &keys,
            None,
        )
    }
}

fn resolve_id(db: &Db, reference: &str) -> Result<Digest> {
    let not_found = || ImageError::NotFound(reference.to_string());
    let s = reference.trim();
    if let Some(hex) = s.strip_prefix("sha256:") {
        return by_prefix(db, hex, reference);
    }
    if let Ok(r) = ImageRef::parse(s) {
        if let Some(d) = r.digest() {
            let name = r.name();
            let want = format!("{name}@{d}");
            if let Some(rec) = db
                .images
                .values()
                .find(|rec| rec.repo_digests.contains(&want))
                .or_else(|| {
                    db.images
                        .values()
                        .find(|rec| rec.manifest_digest.as_str() == d)
                })
            {
                return Ok(rec.id.clone());
            }
            return Err(not_found());
        }
        if let Some(id) = r.tag_key().and_then(|k| db.tags.get(&k)) {
            return Ok(id.clone());
        }
    }
    if s.len() >= 4 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return by_prefix(db, s, reference);
    }
    Err(not_found())
}

fn by_prefix(db: &Db, hex: &str, reference: &str) -> Result<Digest> {
    let hex = hex.to_ascii_lowercase();
    let mut it = db.images.keys().filter(|id| id.hex().starts_with(&hex));
    match (it.next(), it.next()) {
        (Some(id), None) if !hex.is_empty() => Ok(id.clone()),
        (Some(_), Some(_)) => Err(ImageError::Ambiguous(reference.to_string())),
        _ => Err(ImageError::NotFound(reference.to_string())),
    }
}

/// Set the ext4 "top of directory hierarchy" flag (`chattr +T`) on `dir`, once.
///
/// ext4 puts a new directory in its parent's block group and a new file in its directory's,
/// and looks for a free inode there one by one; without a journal (as on this project's CI
/// disks) it skips every inode freed in the last minute or so, re-scanning them for each new
/// file. Unpacking a layer soon after many files were deleted nearby (a prune, a previous
/// store) then cost ~1 ms per file: 4.9 s instead of 1.5 s for the pull benchmark. Layers
/// are independent trees, which is what the flag declares: the Orlov allocator then places
/// each new layer directory under `dir` in a block group of its own. Filesystems without the
/// flag reject or ignore it; nothing depends on it.
fn mark_top_directory(dir: &Path) {
    use std::os::fd::AsRawFd;
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(f) = File::open(dir) else { return };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which points at a live
    // c_int (the kernel reads/writes an int despite the ioctl's declared `long`).
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0
        || flags & FS_TOPDIR_FL != 0
    {
        return;
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: as above; FS_IOC_SETFLAGS only reads the int.
    let _ = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
}

/// A decompressing reader for a layer stream.
pub(crate) fn decoder<'a, R: Read + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Copies what is read through it to `out` (the blob file, hashed).
struct TeeReader<R, W: Write> {
    inner: R,
    out: HashingWriter<W>,
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix time (UTC).
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d, h, min, s) =
        crate::container::util::civil_utc(i64::try_from(secs).unwrap_or(i64::MAX));
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
}

fn rfc3339_now() -> String {
    rfc3339(now_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
