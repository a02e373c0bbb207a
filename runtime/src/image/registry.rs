//! Registry client: pull and push through `oci-client` (HTTP, auth challenges, token cache),
//! with manifest/index handling, platform selection and blob verification of our own.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use tokio::sync::mpsc;

use super::auth;
use super::digest::Digest;
use super::error::{ImageError, Result};
use super::reference::ImageRef;
use super::spec::{self, Compression, ImageConfig, Index, Manifest, Platform};
use super::store::{ImageRecord, ImageStore, LayerRecord, LocalImage, now_secs};

const ACCEPT: &[&str] = &[
    spec::OCI_MANIFEST,
    spec::DOCKER_MANIFEST,
    spec::OCI_INDEX,
    spec::DOCKER_LIST,
];

/// Progress of a pull or push, per layer blob (the config blob is not reported).
///
/// Order per pull/push: one `Started`, then for each layer either one `Exists` or any number
/// of `Bytes` followed by one `Done`; layers interleave (they move in parallel). A failed
/// pull/push just stops sending (the error is the call's result).
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The manifest is known; these layer blobs (digest, compressed size) will be
    /// transferred or skipped, bottom layer first.
    Started {
        reference: String,
        layers: Vec<(Digest, u64)>,
    },
    /// A blob is already present (locally for pull, remotely for push); nothing moves.
    Exists { digest: Digest },
    /// Bytes of `digest` moved: `bytes` in this step, `done` so far, of `total` (the size in
    /// the manifest).
    Bytes {
        digest: Digest,
        bytes: u64,
        done: u64,
        total: u64,
    },
    /// A blob finished: for pull, verified, stored and (unless `unpack` is off) unpacked.
    Done { digest: Digest },
}

/// Callback receiving [`Progress`] events. Called on the tokio worker that moves the bytes,
/// so it must not block: keep it cheap or use [`progress_channel`].
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A [`ProgressFn`] that forwards every event into an unbounded tokio channel, for async
/// consumers (`while let Some(p) = rx.recv().await`). The channel closes when the pull or
/// push future (which owns the callback) is dropped or finished.
pub fn progress_channel() -> (ProgressFn, mpsc::UnboundedReceiver<Progress>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(move |p| {
            let _ = tx.send(p);
        }),
        rx,
    )
}

/// How [`RegistryClient::pull_with`] pulls.
#[derive(Clone)]
pub struct PullOptions {
    /// Unpack each layer while it downloads (default). Off: only verify and store the
    /// blobs (like `skopeo copy … oci:`); `ImageStore::ensure_unpacked` unpacks later.
    pub unpack: bool,
    /// Receives [`Progress`] events.
    pub progress: Option<ProgressFn>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            unpack: true,
            progress: None,
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("unpack", &self.unpack)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`host:port`) to talk to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Docker-style credentials file; `None` means anonymous everywhere.
    pub auth_file: Option<PathBuf>,
    /// Layers fetched or pushed at the same time.
    pub max_concurrent: usize,
    /// Platform to select from indexes.
    pub platform: Platform,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            auth_file: auth::default_auth_file(),
            max_concurrent: 4,
            platform: Platform::current(),
        }
    }
}

/// Pulls images into, and pushes them from, an [`ImageStore`].
pub struct RegistryClient {
    store: ImageStore,
    opts: RegistryOptions,
}

struct Session {
    client: Client,
    auth: RegistryAuth,
    r: ImageRef,
}

impl Session {
    fn err(&self, e: OciDistributionError) -> ImageError {
        map_error(&self.r, e)
    }
}

fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Classify an oci-client error for the one-line messages the CLI shows.
fn map_error(r: &ImageRef, e: OciDistributionError) -> ImageError {
    let reference = r.to_string();
    let registry = r.registry().to_string();
    let detail = one_line(&e);
    match &e {
        OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
            let mut src: Option<&dyn std::error::Error> = Some(re);
            let mut innermost = re.to_string();
            while let Some(s) = src {
                innermost = s.to_string();
                src = s.source();
            }
            ImageError::Unreachable {
                reference,
                registry,
                detail: one_line(innermost),
            }
        }
        OciDistributionError::RequestError(re)
            if re
                .status()
                .is_some_and(|c| c.as_u16() == 401 || c.as_u16() == 403) =>
        {
            ImageError::AuthRefused {
                reference,
                registry,
                detail,
            }
        }
        OciDistributionError::RequestError(re)
            if re.status().is_some_and(|c| c.as_u16() == 404) =>
        {
            ImageError::RemoteNotFound {
                reference,
                registry,
                detail,
            }
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => ImageError::AuthRefused {
            reference,
            registry,
            detail,
        },
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::RemoteNotFound {
            reference,
            registry,
            detail,
        },
        OciDistributionError::ServerError { code, .. } if *code == 404 => {
            ImageError::RemoteNotFound {
                reference,
                registry,
                detail,
            }
        }
        OciDistributionError::ServerError { code, .. } if *code == 401 || *code == 403 => {
            ImageError::AuthRefused {
                reference,
                registry,
                detail,
            }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|x| format!("{:?}", x.code).to_ascii_uppercase())
                .collect();
            let detail = one_line(
                envelope
                    .errors
                    .iter()
                    .map(|x| x.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            if codes
                .iter()
                .any(|c| c.contains("UNKNOWN") && !c.contains("UNSUPPORTED"))
            {
                ImageError::RemoteNotFound {
                    reference,
                    registry,
                    detail,
                }
            } else if codes
                .iter()
                .any(|c| c.contains("UNAUTHORIZED") || c.contains("DENIED"))
            {
                ImageError::AuthRefused {
                    reference,
                    registry,
                    detail,
                }
            } else {
                ImageError::Registry {
                    reference,
                    registry,
                    detail,
                }
            }
        }
        OciDistributionError::DigestError(_) => ImageError::DigestMismatch {
            what: format!("{reference} from {registry}"),
            expected: String::new(),
            actual: detail,
        },
        _ => ImageError::Registry {
            reference,
            registry,
            detail,
        },
    }
}

/// Reads the chunks a download task sends, for the blocking unpacker.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn oci_desc(d: &spec::Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        ..Default::default()
    }
}

impl RegistryClient {
    pub fn new(store: ImageStore, opts: RegistryOptions) -> RegistryClient {
        RegistryClient { store, opts }
    }

    async fn session(&self, r: &ImageRef) -> Result<Session> {
        let registry = r.registry().to_string();
        let plain = r.is_loopback() || self.opts.insecure_registries.contains(&registry);
        let protocol = if plain {
            ClientProtocol::HttpsExcept(vec![registry.clone(), r.endpoint().to_string()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            max_concurrent_download: self.opts.max_concurrent,
            max_concurrent_upload: self.opts.max_concurrent,
            use_monolithic_push: true,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            user_agent: concat!("dcpp/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        });
        // A credential helper is a process: keep it off the async workers.
        let file = self.opts.auth_file.clone();
        let reg = registry.clone();
        let auth = blocking(move || auth::lookup(file.as_deref(), &reg)).await?;
        Ok(Session {
            client,
            auth,
            r: r.clone(),
        })
    }

    /// Fetch a manifest (or index) and check it against the digest we asked for, if any.
    async fn fetch_manifest(&self, s: &Session, r: &ImageRef) -> Result<(Bytes, Digest, String)> {
        let (bytes, _) = s
            .client
            .pull_manifest_raw(r.oci(), &s.auth, ACCEPT)
            .await
            .map_err(|e| s.err(e))?;
        let actual = Digest::of(&bytes);
        if let Some(want) = r.digest()
            && want != actual.as_str()
        {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {r} from {}", r.registry()),
                expected: want.to_string(),
                actual: actual.to_string(),
            });
        }
        let mt = spec::sniff_manifest_media_type(&bytes).ok_or_else(|| {
            ImageError::invalid(format!("manifest of {r}"), "not an image manifest or index")
        })?;
        Ok((bytes, actual, mt))
    }

    /// Pull `reference` (tag or digest), selecting our platform from an index, and return the
    /// stored image. Blobs already in the store are not fetched again; concurrent pulls of
    /// the same content (in this or another process) fetch it once.
    pub async fn pull(&self, reference: &str, progress: Option<ProgressFn>) -> Result<LocalImage> {
        self.pull_with(
            reference,
            PullOptions {
                progress,
                ..Default::default()
            },
        )
        .await
    }

    /// [`pull`](Self::pull) with options (unpacking, progress).
    pub async fn pull_with(&self, reference: &str, opts: PullOptions) -> Result<LocalImage> {
        let PullOptions { unpack, progress } = opts;
        let r = ImageRef::parse(reference)?;
        let s = Arc::new(self.session(&r).await?);
        let store = self.store.clone();
        let _guard = blocking(move || store.write_guard()).await?;

        let (mut bytes, mut digest, mut mt) = self.fetch_manifest(&s, &r).await?;
        let mut index_digest = None;
        if spec::is_index(&mt) {
            let idx: Index = serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::invalid(format!("index of {r}"), e))?;
            let chosen =
                idx.select(&self.opts.platform)
                    .ok_or_else(|| ImageError::NoMatchingPlatform {
                        reference: r.to_string(),
                        platform: self.opts.platform.to_string(),
                        available: idx
                            .manifests
                            .iter()
                            .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
            index_digest = Some(digest.clone());
            let pr = r.with_digest(chosen.digest.as_str());
            (bytes, digest, mt) = self.fetch_manifest(&s, &pr).await?;
            if spec::is_index(&mt) {
                return Err(ImageError::invalid(
                    format!("index of {r}"),
                    "nested indexes are not supported",
                ));
            }
        }
        if mt != spec::OCI_MANIFEST && mt != spec::DOCKER_MANIFEST {
            return Err(ImageError::UnsupportedMediaType {
                media_type: mt,
                context: format!("manifest of {r}"),
            });
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::invalid(format!("manifest of {r}"), e))?;
        for l in &manifest.layers {
            if Compression::from_media_type(&l.media_type).is_none() {
                return Err(ImageError::UnsupportedMediaType {
                    media_type: l.media_type.clone(),
                    context: format!("layer {} of {r}", l.digest),
                });
            }
        }
        if let Some(p) = &progress {
            p(Progress::Started {
                reference: r.to_string(),
                layers: manifest
                    .layers
                    .iter()
                    .map(|l| (l.digest.clone(), l.size))
                    .collect(),
            });
        }

        // Config: small, fetched into memory and verified before anything else.
        let cfg_digest = manifest.config.digest.clone();
        let cfg_bytes = if self.store.has_blob(&cfg_digest) {
            self.store.read_blob(&cfg_digest)?
        } else {
            let mut buf = Vec::new();
            s.client
                .pull_blob(r.oci(), &oci_desc(&manifest.config), &mut buf)
                .await
                .map_err(|e| s.err(e))?;
            let store = self.store.clone();
            let d = cfg_digest.clone();
            let b = buf.clone();
            blocking(move || store.put_blob(&b, Some(&d))).await?;
            buf
        };
        let config: ImageConfig = serde_json::from_slice(&cfg_bytes)
            .map_err(|e| ImageError::invalid(format!("config of {r}"), e))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::invalid(
                format!("image {r}"),
                format!(
                    "manifest has {} layers but config lists {} diff ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }

        let jobs = manifest
            .layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .map(|(desc, diff)| {
                let s = s.clone();
                let store = self.store.clone();
                let progress = progress.clone();
                async move { fetch_layer(s, store, desc, diff, unpack, progress).await }
            });
        let layers: Vec<LayerRecord> = stream::iter(jobs)
            .buffered(self.opts.max_concurrent.max(1))
            .try_collect()
            .await?;

        let store = self.store.clone();
        let d = digest.clone();
        blocking(move || store.put_blob(&bytes, Some(&d))).await?;
        let name = r.name();
        let record = ImageRecord {
            id: cfg_digest,
            manifest_digest: digest.clone(),
            manifest_media_type: mt,
            config_media_type: manifest.config.media_type.clone(),
            layers,
            repo_digests: index_digest.iter().map(|d| format!("{name}@{d}")).collect(),
            added: now_secs(),
        };
        let tags: Vec<String> = r.tag_key().into_iter().collect();
        let store = self.store.clone();
        let repo_digest = format!("{name}@{digest}");
        blocking(move || store.record_image(record, &tags, Some(repo_digest))).await
    }

    /// Push a local image to `target` (default: the reference it was found by, which must
    /// name a registry repository). Blobs the registry already has are skipped.
    /// Returns the manifest digest.
    pub async fn push(
        &self,
        local: &str,
        target: Option<&str>,
        progress: Option<ProgressFn>,
    ) -> Result<Digest> {
        let image = {
            let store = self.store.clone();
            let l = local.to_string();
            blocking(move || store.resolve(&l)).await?
        };
        let target = target.unwrap_or(local);
        let r = ImageRef::parse(target)?;
        if r.tag().is_none() {
            return Err(ImageError::InvalidReference {
                reference: target.to_string(),
                reason: "push needs a tag to push to".into(),
            });
        }
        let record = self.store.record(&image.id)?;
        let s = Arc::new(self.session(&r).await?);
        s.client
            .store_auth_if_needed(r.oci().resolve_registry(), &s.auth)
            .await;
        if let Some(p) = &progress {
            p(Progress::Started {
                reference: r.to_string(),
                layers: record
                    .layers
                    .iter()
                    .map(|l| (l.digest.clone(), l.size))
                    .collect(),
            });
        }
        let mut blobs: Vec<(Digest, bool)> = record
            .layers
            .iter()
            .map(|l| (l.digest.clone(), true))
            .collect();
        blobs.push((record.id.clone(), false));
        let jobs = blobs.into_iter().map(|(d, report)| {
            let s = s.clone();
            let store = self.store.clone();
            let progress = if report { progress.clone() } else { None };
            async move { push_blob(&s, &store, &d, progress).await }
        });
        stream::iter(jobs)
            .buffer_unordered(self.opts.max_concurrent.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        let manifest = self.store.read_blob(&record.manifest_digest)?;
        let ct = record
            .manifest_media_type
            .parse()
            .map_err(|_| ImageError::invalid("manifest media type", &record.manifest_media_type))?;
        s.client
            .push_manifest_raw(r.oci(), manifest, ct)
            .await
            .map_err(|e| s.err(e))?;
        let mut rec = record.clone();
        rec.repo_digests.clear();
        let store = self.store.clone();
        let rd = format!("{}@{}", r.name(), record.manifest_digest);
        blocking(move || store.record_image(rec, &[], Some(rd)).map(|_| ())).await?;
        Ok(record.manifest_digest)
    }
}

async fn push_blob(
    s: &Session,
    store: &ImageStore,
    d: &Digest,
    progress: Option<ProgressFn>,
) -> Result<()> {
    let exists = s
        .client
        .blob_exists(s.r.oci(), d.as_str())
        .await
        .map_err(|e| s.err(e))?;
    if exists {
        if let Some(p) = &progress {
            p(Progress::Exists { digest: d.clone() });
        }
        return Ok(());
    }
    let path = store.blob_path(d);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ImageError::io("open blob", &path, e))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ImageError::io("stat blob", &path, e))?
        .len();
    let digest = d.clone();
    let p2 = progress.clone();
    let mut done = 0;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |c| {
        if let (Ok(b), Some(p)) = (&c, &p2) {
            done += b.len() as u64;
            p(Progress::Bytes {
                digest: digest.clone(),
                bytes: b.len() as u64,
                done,
                total: size,
            });
        }
        c.map_err(OciDistributionError::IoError)
    });
    s.client
        .push_blob_stream(s.r.oci(), body, d.as_str(), Some(size))
        .await
        .map_err(|e| s.err(e))?;
    if let Some(p) = &progress {
        p(Progress::Done { digest: d.clone() });
    }
    Ok(())
}

/// Download one layer blob and unpack it while it streams, unless the store has both.
async fn fetch_layer(
    s: Arc<Session>,
    store: ImageStore,
    desc: spec::Descriptor,
    diff_id: Digest,
    unpack: bool,
    progress: Option<ProgressFn>,
) -> Result<LayerRecord> {
    let record = LayerRecord {
        digest: desc.digest.clone(),
        media_type: desc.media_type.clone(),
        size: desc.size,
        diff_id: diff_id.clone(),
    };
    let present =
        |store: &ImageStore| store.has_blob(&desc.digest) && (!unpack || store.has_layer(&diff_id));
    if present(&store) {
        if let Some(p) = &progress {
            p(Progress::Exists {
                digest: desc.digest.clone(),
            });
        }
        return Ok(record);
    }
    // Whoever holds this lock is fetching the same blob; wait for it and reuse its work.
    let lock = {
        let store = store.clone();
        let d = desc.digest.clone();
        blocking(move || store.content_lock("blob", &d)).await?
    };
    if present(&store) {
        drop(lock);
        if let Some(p) = &progress {
            p(Progress::Exists {
                digest: desc.digest.clone(),
            });
        }
        return Ok(record);
    }
    let compression = Compression::from_media_type(&desc.media_type).expect("checked by pull");
    let mut body = s
        .client
        .pull_blob_stream(s.r.oci(), &oci_desc(&desc))
        .await
        .map_err(|e| s.err(e))?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(64);
    let unpacker = {
        let store = store.clone();
        let d = desc.digest.clone();
        let diff = diff_id.clone();
        let name = format!("{}@{}", s.r.name(), desc.digest);
        tokio::task::spawn_blocking(move || {
            let res = store.ingest_layer(
                ChannelReader {
                    rx,
                    cur: Bytes::new(),
                },
                &d,
                compression,
                Some(&diff),
                &name,
                unpack,
            );
            drop(lock);
            res
        })
    };
    let mut net_err = None;
    let mut done = 0;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => {
                let n = b.len() as u64;
                if tx.send(Ok(b)).await.is_err() {
                    break; // the unpacker failed; its error is reported below
                }
                done += n;
                if let Some(p) = &progress {
                    p(Progress::Bytes {
                        digest: desc.digest.clone(),
                        bytes: n,
                        done,
                        total: desc.size,
                    });
                }
            }
            Err(e) => {
                let msg = one_line(&e);
                let _ = tx.send(Err(io::Error::other(msg.clone()))).await;
                net_err = Some(msg);
                break;
            }
        }
    }
    drop(tx);
    let res = unpacker
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    if let Some(msg) = net_err {
        // oci-client's own verification reports a mismatch as a stream error.
        if msg.to_ascii_lowercase().contains("digest") {
            return Err(ImageError::DigestMismatch {
                what: format!("layer {} of {} from {}", desc.digest, s.r, s.r.registry()),
                expected: desc.digest.to_string(),
                actual: msg,
            });
        }
        return Err(ImageError::Registry {
            reference: s.r.to_string(),
            registry: s.r.registry().to_string(),
            detail: format!("downloading layer {}: {msg}", desc.digest),
        });
    }
    res?;
    if let Some(p) = &progress {
        p(Progress::Done {
            digest: desc.digest.clone(),
        });
    }
    Ok(record)
}
