//! `POST /v1/image/build`: a build on the daemon that owns the image store and the network
//! driver. The body is the context as a tar (packed by the CLI after `.dockerignore`), the
//! options a JSON query value; the answer streams one JSON object a line: `{"progress": …}`
//! for each progress line, then `{"done": {…}}` or `{"error": "…"}`.
//!
//! A `RUN` step with the default network joins the daemon's `dcpp-build` network, as docker's
//! classic builder puts it on the default bridge: a bridge of its own from the daemon's
//! address pool with the outbound NAT every non-internal network has, and no stack's network
//! (a build reaches nothing of a stack it was not given). It is created for a build and
//! removed after it once no build uses it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dcpp_control::images::{BuildSpec, BuilderError, ImageBuilder};
use dcpp_runtime::build::{
    BuildError, BuildNetwork, BuildOptions, BuildReport, Builder, RunNetwork,
};
use dcpp_runtime::container::ContainerManager;
use dcpp_runtime::image::ImageStore;
use dcpp_runtime::image::registry::{RegistryClient, RegistryOptions};
use dcpp_runtime::network::{
    ContainerNetworks, ContainerPlan, NetworkConfig, NetworkManager, PlannedNetwork,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The network `RUN` steps with the default network join.
pub const BUILD_NETWORK: &str = "dcpp-build";
/// Largest context accepted.
pub const UPLOAD_LIMIT: u64 = 1 << 30;

/// What a daemon's agent lends its builds: its containers (with the network hook) and
/// networks. Set once the agent runs; a daemon without an agent builds nothing.
pub struct BuildEnv {
    pub data_dir: PathBuf,
    pub containers: Arc<ContainerManager>,
    pub net: Arc<NetworkManager>,
    pub hook: Arc<ContainerNetworks>,
    /// Builds under way: the last one to finish removes the build network.
    pub running: Mutex<usize>,
}

pub type BuildSlot = Arc<OnceLock<BuildEnv>>;

/// The options of a build, as the CLI sends them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildRequest {
    pub tags: Vec<String>,
    /// The Dockerfile's path inside the context.
    pub dockerfile: Option<String>,
    /// The Dockerfile's text, when it lies outside the context.
    pub dockerfile_text: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    /// `default` or `none`.
    pub network: String,
    pub labels: BTreeMap<String, String>,
}

/// One line of the answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildLine {
    Progress(String),
    Done(BuildDone),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildDone {
    pub id: String,
    pub manifest_digest: String,
    pub executed: usize,
    pub cached: usize,
}

pub fn routes(slot: BuildSlot) -> axum::Router<dcpp_raft::Node> {
    axum::Router::new().route(
        "/v1/image/build",
        axum::routing::post(
            move |State(_): State<dcpp_raft::Node>,
                  Query(q): Query<BTreeMap<String, String>>,
                  headers: HeaderMap,
                  body: Body| {
                let slot = slot.clone();
                async move { build(slot, q, headers, body).await }
            },
        ),
    )
}

fn refuse(status: StatusCode, msg: String) -> Response {
    let e = dcpp_raft::api::ApiError::from(&dcpp_raft::Error::InvalidArgument(msg));
    (status, axum::Json(e)).into_response()
}

fn too_large() -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the build context is larger than the daemon accepts ({} MiB); leave more out \
             with .dockerignore",
            UPLOAD_LIMIT >> 20
        ),
    )
}

async fn build(
    slot: BuildSlot,
    q: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if slot.get().is_none() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this daemon runs no agent (--no-agent), so it has no runtime to build with".into(),
        );
    }
    let req: BuildRequest = match q.get("options").map(|o| serde_json::from_str(o)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return refuse(StatusCode::BAD_REQUEST, format!("build options: {e}")),
        None => return refuse(StatusCode::BAD_REQUEST, "no build options".into()),
    };
    let network = match req.network.as_str() {
        "default" | "" => BuildNetwork::Default,
        "none" => BuildNetwork::None,
        other => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("invalid --network {other:?}: dcpp builds with default or none"),
            );
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > UPLOAD_LIMIT) {
        return too_large();
    }
    let env = slot.get().expect("checked above");
    let store = match ImageStore::open(&env.data_dir.join("images")) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let work = Scratch(store.scratch_path("build-upload"));
    if let Err(e) = std::fs::create_dir(&work.0) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"));
    }
    let tar = work.0.join("context.tar");
    if let Err(r) = spool(body, &tar).await {
        return r;
    }
    // A context that cannot be unpacked is refused before the answer starts.
    let ctx = work.0.join("context");
    let unpacked = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
            std::fs::create_dir(&ctx).map_err(|e| BuildError::Io {
                what: "create",
                path: ctx.clone(),
                source: e,
            })?;
            dcpp_runtime::build::unpack_context(&tar, &ctx)
        })
        .await
    };
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<BuildLine>(256);
    let slot2 = slot.clone();
    tokio::task::spawn_blocking(move || {
        let env = slot2.get().expect("checked above");
        let send = |l: BuildLine| {
            let _ = tx.blocking_send(l);
        };
        let res = (|| -> Result<BuildDone, BuildError> {
            let dockerfile = match &req.dockerfile_text {
                Some(t) => {
                    let p = work.0.join("Dockerfile");
                    std::fs::write(&p, t).map_err(|e| BuildError::Io {
                        what: "write",
                        path: p.clone(),
                        source: e,
                    })?;
                    Some(p)
                }
                None => req.dockerfile.as_ref().map(PathBuf::from),
            };
            let opts = BuildOptions {
                context: ctx,
                dockerfile,
                tags: req.tags,
                build_args: req.build_args,
                target: req.target,
                no_cache: req.no_cache,
                network,
                labels: req.labels,
            };
            let r = build_with(env, &store, &opts, &mut |l| {
                send(BuildLine::Progress(l.to_string()))
            })?;
            Ok(BuildDone {
                id: r.image.id.to_string(),
                manifest_digest: r.image.manifest_digest.to_string(),
                executed: r.executed,
                cached: r.cached,
            })
        })();
        match res {
            Ok(d) => send(BuildLine::Done(d)),
            Err(e) => send(BuildLine::Error(e.to_string())),
        }
        drop(work);
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let l = rx.recv().await?;
        let mut s = serde_json::to_string(&l).unwrap_or_default();
        s.push('\n');
        Some((Ok::<_, std::io::Error>(s), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// One build with the agent's containers, its `RUN` steps on the build network: the route's
/// and GitOps watch's.
pub fn build_with(
    env: &BuildEnv,
    store: &ImageStore,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildReport, BuildError> {
    *env.running.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let planner = DaemonNetwork(env);
    let b = Builder {
        store,
        containers: &env.containers,
        run_network: Some(&planner),
    };
    let r = b.build(opts, progress);
    release(env);
    r
}

/// The daemon's builder for GitOps watch: the store and the builds of its agent, the very
/// ones `POST /v1/image/build` uses.
pub struct DaemonBuilder(pub BuildSlot);

impl DaemonBuilder {
    fn env(&self) -> Result<(&BuildEnv, ImageStore), BuilderError> {
        let env = self
            .0
            .get()
            .ok_or("this daemon runs no agent (--no-agent), so it has no runtime to build with")?;
        let store = ImageStore::open(&env.data_dir.join("images"))?;
        Ok((env, store))
    }
}

impl ImageBuilder for DaemonBuilder {
    fn present(&self, image: &str) -> Result<Option<String>, BuilderError> {
        let (_, store) = self.env()?;
        // As `dcpp apply`: an image that does not resolve is one to build.
        Ok(store
            .resolve(image)
            .ok()
            .map(|i| i.manifest_digest.to_string()))
    }

    fn build(
        &self,
        spec: &BuildSpec,
        progress: &mut dyn FnMut(&str),
    ) -> Result<String, BuilderError> {
        let (env, store) = self.env()?;
        let opts = crate::cmd::build::build_options(spec);
        let r = build_with(env, &store, &opts, progress)?;
        Ok(r.image.manifest_digest.to_string())
    }

    fn push(&self, image: &str) -> Result<String, BuilderError> {
        let (_, store) = self.env()?;
        let client = RegistryClient::new(store, RegistryOptions::default());
        // Called off the async threads (watch's blocking task), inside the daemon's runtime.
        let d = tokio::runtime::Handle::current().block_on(client.push(image, None, None))?;
        Ok(d.to_string())
    }
}

/// Writes the upload to `path`, refusing it once it passes the limit.
async fn spool(body: Body, path: &std::path::Path) -> Result<(), Response> {
    use tokio::io::AsyncWriteExt;
    let err = |e: std::io::Error| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut f = tokio::fs::File::create(path).await.map_err(err)?;
    let mut n: u64 = 0;
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("upload: {e}")))?;
        n += chunk.len() as u64;
        if n > UPLOAD_LIMIT {
            return Err(too_large());
        }
        f.write_all(&chunk).await.map_err(err)?;
    }
    f.flush().await.map_err(err)
}

/// The last build to finish takes the build network away (the bridge and its subnet are
/// the pool's again).
fn release(env: &BuildEnv) {
    let mut n = env.running.lock().unwrap_or_else(|e| e.into_inner());
    *n = n.saturating_sub(1);
    if *n == 0
        && env.net.inspect(BUILD_NETWORK).is_ok()
        && let Err(e) = env.net.remove_network(BUILD_NETWORK)
    {
        tracing::warn!("removing network {BUILD_NETWORK}: {e}");
    }
}

struct DaemonNetwork<'a>(&'a BuildEnv);

impl RunNetwork for DaemonNetwork<'_> {
    fn plan(&self, name: &str) -> Result<(), BuildError> {
        let env = self.0;
        if env.net.inspect(BUILD_NETWORK).is_err() {
            let mut cfg = NetworkConfig::default();
            cfg.labels.insert("org.dcpp.build".into(), "true".into());
            env.net
                .create_network(BUILD_NETWORK, cfg)
                .map_err(|e| BuildError::Network(format!("network {BUILD_NETWORK}: {e}")))?;
        }
        env.hook.plan(
            name,
            ContainerPlan {
                networks: vec![PlannedNetwork {
                    network: BUILD_NETWORK.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        Ok(())
    }

    fn resolv_conf(&self, name: &str) -> Result<PathBuf, BuildError> {
        // Removed with the container by the network hook, as a stack container's.
        self.0
            .net
            .write_resolv_conf(name, &[BUILD_NETWORK])
            .map_err(|e| BuildError::Network(format!("resolv.conf of {name}: {e}")))
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
