//! The host as the agent sees it: containers, networks, images and the clock, each behind a
//! narrow trait that names only what the agent does with it, in the agent's own types. The
//! adapters here ([`LocalContainers`], [`LocalNetworks`], [`LocalImages`], [`SystemClock`])
//! forward to the runtime's managers and add no decisions, so the agent's loop can be run
//! against recording fakes in unit tests while the daemon runs it against the kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpp_spec::ipam::IpamSpec;
use futures::future::BoxFuture;

use dcpp_runtime::container::{
    ContainerInfo, ContainerManager, CreateOptions, ExecRequest, ImageInput, Status,
};
use dcpp_runtime::image::registry::{ProgressFn, RegistryClient, RegistryOptions};
use dcpp_runtime::image::{Digest, ImageError, ImageStore, LocalImage};
use dcpp_runtime::network::{
    ContainerNetworks, ContainerPlan, Ipv4Net, Mesh, NetworkConfig, NetworkInfo, NetworkManager,
    Overlay, ResolvSettings,
};

use crate::Error;
use crate::step::ContainerView;

/// Where the agent gets the data of the secrets and configs its tasks mount: never from the
/// replicated store (which holds them sealed), from a manager that opens them for a task
/// placed on this node.
pub trait FileSource: Send + Sync + 'static {
    fn fetch(
        &self,
        req: dcpp_control::files::TaskFiles,
    ) -> BoxFuture<'static, Result<Vec<dcpp_control::files::FileData>, Error>>;
}

/// [`FileSource`] of a daemon: its own store on a manager, a manager on a worker.
pub struct NodeFiles(pub dcpp_raft::Node);

impl FileSource for NodeFiles {
    fn fetch(
        &self,
        req: dcpp_control::files::TaskFiles,
    ) -> BoxFuture<'static, Result<Vec<dcpp_control::files::FileData>, Error>> {
        let node = self.0.clone();
        Box::pin(async move { Ok(dcpp_control::files::fetch_task_files(&node, &req).await?) })
    }
}

/// Why a network could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnsureError {
    /// The network cannot have the addressing the stack asks for (its subnet overlaps another
    /// network or lies outside the pools, or every pool is full): trying again changes nothing
    /// until the stack or the daemon's pools do.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Host(#[from] HostError),
}

/// A host operation failed; the message is the runtime's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

impl HostError {
    fn of(e: impl std::fmt::Display) -> Self {
        HostError(e.to_string())
    }
}

/// How a container's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// 128+N for a signal N.
    pub code: i32,
    pub oom_killed: bool,
    /// What the executor reported after start (e.g. an exec failure).
    pub error: Option<String>,
}

/// One container, as much of it as the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub status: ContainerView,
    pub labels: BTreeMap<String, String>,
    /// Init pid on the host while it runs.
    pub pid: Option<i32>,
    /// Set once it ended; `None` for a stopped container means its monitor died.
    pub exit: Option<Exit>,
    /// Its directory, where its monitor records the exit ([`crate::exits`]).
    pub dir: PathBuf,
    pub stop_grace_secs: u64,
    /// Named volumes it uses.
    pub volumes: Vec<String>,
}

/// How one healthcheck run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// Its output (trimmed) or why it failed.
    pub output: String,
}

/// The container runtime. Calls block; the agent runs them on the blocking pool.
pub trait Containers: Send + Sync + 'static {
    /// Every container, oldest first.
    fn list(&self) -> Vec<Container>;
    /// Creates a container; returns its id.
    fn create(&self, o: &CreateOptions) -> Result<String, HostError>;
    fn start(&self, id: &str) -> Result<(), HostError>;
    /// Stops with the container's own signal and grace period.
    fn stop(&self, id: &str) -> Result<(), HostError>;
    /// Removes, killing it first if it still runs.
    fn remove(&self, id: &str) -> Result<(), HostError>;
    /// The exit code, once it ended.
    fn exit_code(&self, id: &str) -> Result<Option<i32>, HostError>;
    /// Its log lines, oldest first.
    fn logs(&self, id: &str) -> Result<Vec<String>, HostError>;
    /// Runs `args` inside the container for at most `timeout`.
    fn check(&self, id: &str, args: Vec<String>, timeout: Duration) -> CheckOutcome;
    /// Whether the named volume exists.
    fn volume_exists(&self, name: &str) -> bool;
    /// Names of the named volumes.
    fn volumes(&self) -> Vec<String>;
    /// Removes a volume unless one of `users` (container names) still holds it.
    fn remove_volume(&self, name: &str, users: &[String]) -> Result<(), HostError>;
    /// Drops the secrets and configs of a container that ended.
    fn release_files(&self, _id: &str) -> Result<(), HostError> {
        Ok(())
    }
}

/// A network the agent may have created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    /// The stack it was created for ([`crate::agent::NETWORK_STACK_LABEL`]).
    pub stack: Option<String>,
    /// Attached containers.
    pub endpoints: usize,
}

/// Local networking. Calls block.
pub trait Networks: Send + Sync + 'static {
    fn list(&self) -> Result<Vec<Network>, HostError>;
    /// Creates a network for `stack` unless one of that name exists, with its own addressing
    /// (compose `ipam`) or a block of the pools. One that exists with other addressing than
    /// `own` asks for is refused.
    fn ensure(&self, name: &str, stack: &str, own: Option<&IpamSpec>) -> Result<(), EnsureError>;
    /// Creates a network for `stack` on the cluster-wide `subnet` (with the gateway, range
    /// and reserved addresses of `own`) with interfaces of `mtu`, unless it exists with that
    /// subnet; one left with another subnet and no containers is made again.
    fn ensure_overlay(
        &self,
        name: &str,
        stack: &str,
        _subnet: &str,
        own: Option<&IpamSpec>,
        _mtu: u32,
    ) -> Result<(), EnsureError> {
        self.ensure(name, stack, own)
    }
    /// Makes network `name` reach exactly these containers on other nodes (see
    /// [`NetworkManager::set_remote`]); returns whether anything changed.
    fn set_remote(&self, _name: &str, _overlay: Option<Overlay>) -> Result<bool, HostError> {
        Ok(false)
    }
    /// Makes this node answer the routing mesh's ports (see [`NetworkManager::set_mesh`]);
    /// returns whether anything changed.
    fn set_mesh(&self, _mesh: Option<Mesh>) -> Result<bool, HostError> {
        Ok(false)
    }
    /// Records what container `name` joins when it starts.
    fn plan(&self, name: &str, plan: ContainerPlan);
    /// Writes the resolv.conf of container `name` on `networks`, with the container's own
    /// search domains and options; returns its path.
    fn resolv_conf(
        &self,
        name: &str,
        networks: &[String],
        own: &ResolvSettings,
    ) -> Result<PathBuf, HostError>;
    /// Puts the container into service (its names resolve, its ports are published) or
    /// withdraws it.
    fn set_serving(&self, id: &str, serving: bool) -> Result<(), HostError>;
    /// Detaches the container from all its networks.
    fn detach(&self, id: &str) -> Result<(), HostError>;
    fn remove(&self, name: &str) -> Result<(), HostError>;
    /// Established connections to a listening port in the network namespace of `pid`.
    fn open_connections(&self, pid: i32) -> usize;
}

/// An image in the local store, as a container is created from it.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its digest.
    pub id: String,
    pub input: ImageInput,
    /// What its config says it was built for: `os/arch[/variant]` (empty parts when it does
    /// not say).
    pub platform: String,
}

impl From<&LocalImage> for Image {
    fn from(img: &LocalImage) -> Self {
        Image {
            id: img.id.to_string(),
            input: ImageInput::from_local(img),
            platform: image_platform(&img.config),
        }
    }
}

fn image_platform(c: &dcpp_runtime::image::ImageConfig) -> String {
    match &c.variant {
        Some(v) => format!("{}/{}/{v}", c.os, c.architecture),
        None => format!("{}/{}", c.os, c.architecture),
    }
}

/// The local image store and the registries. Calls other than `pull` block.
pub trait Images: Send + Sync + 'static {
    /// The image `reference` names; `None` when it is not in the store.
    fn resolve(&self, reference: &str) -> Result<Option<Image>, Error>;
    /// Pulls `reference` into the store.
    fn pull(
        &self,
        reference: &str,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<String, HostError>>;
    /// Records that container `holder` uses image `id` (a used image is not pruned).
    fn hold(&self, id: &str, holder: &str) -> Result<(), HostError>;
    fn release(&self, id: &str, holder: &str);
}

/// Time, wall and monotonic.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// The machine's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        dcpp_control::schema::now_ms()
    }
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The runtime's container manager.
pub struct LocalContainers(pub Arc<ContainerManager>);

fn container(c: ContainerInfo) -> Container {
    Container {
        status: match c.status {
            Status::Running => ContainerView::Running,
            Status::Created => ContainerView::Created,
            Status::Exited | Status::Dead => ContainerView::Stopped,
        },
        exit: c.exit.map(|e| Exit {
            code: e.exit_code,
            oom_killed: e.oom_killed,
            error: e.error,
        }),
        id: c.state.id,
        name: c.state.name,
        labels: c.state.labels,
        pid: c.pid,
        dir: c.bundle,
        stop_grace_secs: c.state.stop_grace_secs,
        volumes: c.state.volumes,
    }
}

impl Containers for LocalContainers {
    fn list(&self) -> Vec<Container> {
        self.0.list().into_iter().map(container).collect()
    }
    fn create(&self, o: &CreateOptions) -> Result<String, HostError> {
        Ok(self.0.create(o).map_err(HostError::of)?.state.id)
    }
    fn start(&self, id: &str) -> Result<(), HostError> {
        self.0.start(id).map(drop).map_err(HostError::of)
    }
    fn stop(&self, id: &str) -> Result<(), HostError> {
        self.0.stop(id, None).map(drop).map_err(HostError::of)
    }
    fn remove(&self, id: &str) -> Result<(), HostError> {
        self.0.remove(id, true).map_err(HostError::of)
    }
    fn exit_code(&self, id: &str) -> Result<Option<i32>, HostError> {
        let i = self.0.inspect(id).map_err(HostError::of)?;
        Ok(i.exit.map(|e| e.exit_code))
    }
    fn logs(&self, id: &str) -> Result<Vec<String>, HostError> {
        let l = self.0.logs(id).map_err(HostError::of)?;
        Ok(l.into_iter().map(|e| e.log).collect())
    }
    fn check(&self, id: &str, args: Vec<String>, timeout: Duration) -> CheckOutcome {
        let (ok, output) = exec_check(&self.0, id, args, timeout);
        CheckOutcome { ok, output }
    }
    fn volume_exists(&self, name: &str) -> bool {
        self.0.volumes().inspect(name).is_ok()
    }
    fn release_files(&self, id: &str) -> Result<(), HostError> {
        self.0.release_files(id).map_err(HostError::of)
    }
    fn volumes(&self) -> Vec<String> {
        self.0
            .volumes()
            .list()
            .into_iter()
            .map(|v| v.name)
            .collect()
    }
    fn remove_volume(&self, name: &str, users: &[String]) -> Result<(), HostError> {
        self.0.volumes().remove(name, users).map_err(HostError::of)
    }
}

/// Runs a healthcheck command in container `id`.
fn exec_check(
    m: &ContainerManager,
    id: &str,
    args: Vec<String>,
    timeout: Duration,
) -> (bool, String) {
    let req = ExecRequest {
        args,
        env: vec![],
        cwd: None,
        user: None,
    };
    // Output goes to an unlinked file, not a pipe: a check that leaves a process
    // behind holding its stdout can never block the agent on reading it.
    let path = std::env::temp_dir().join(format!("dcpp-health-{}-{}", std::process::id(), id));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path);
    let _ = std::fs::remove_file(&path);
    let (out_file, err_file) = match file.and_then(|f| {
        let e = f.try_clone()?;
        Ok((f, e))
    }) {
        Ok(p) => (Some(p.0), Some(p.1)),
        Err(_) => (None, None),
    };
    let mut reader = out_file.as_ref().and_then(|f| f.try_clone().ok());
    let mut child = match m.exec(id, &req, |cmd| {
        cmd.stdin(std::process::Stdio::null())
            .stdout(out_file.map_or_else(std::process::Stdio::null, Into::into))
            .stderr(err_file.map_or_else(std::process::Stdio::null, Into::into));
    }) {
        Ok(c) => c,
        Err(e) => return (false, e.to_string()),
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut buf = Vec::new();
    if let Some(f) = reader.as_mut() {
        use std::io::{Read, Seek};
        if f.seek(std::io::SeekFrom::Start(0)).is_ok() {
            let _ = f.take(4096).read_to_end(&mut buf);
        }
    }
    let out = String::from_utf8_lossy(&buf);
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    match status {
        Some(s) if s.success() => (true, out),
        Some(s) => {
            let code = s.code().map_or("a signal".into(), |c| format!("code {c}"));
            (false, format!("exited with {code}: {out}"))
        }
        None => (false, format!("timed out after {timeout:?}: {out}")),
    }
}

/// The runtime's network manager and its container hook.
pub struct LocalNetworks {
    pub manager: Arc<NetworkManager>,
    pub hook: Arc<ContainerNetworks>,
}

fn network(n: NetworkInfo) -> Network {
    Network {
        stack: n
            .network
            .labels
            .get(crate::agent::NETWORK_STACK_LABEL)
            .cloned(),
        name: n.network.name,
        endpoints: n.endpoints.len(),
    }
}

impl Networks for LocalNetworks {
    fn list(&self) -> Result<Vec<Network>, HostError> {
        let l = self.manager.list().map_err(HostError::of)?;
        Ok(l.into_iter().map(network).collect())
    }
    fn ensure(&self, name: &str, stack: &str, own: Option<&IpamSpec>) -> Result<(), EnsureError> {
        if let Ok(info) = self.manager.inspect(name) {
            let n = &info.network;
            return match own {
                Some(o) if n.subnet != o.subnet || n.gateway != o.gateway() => {
                    Err(EnsureError::Refused(format!(
                        "network {name} has subnet {} (gateway {}) here; the stack asks for {} (gateway {}): remove the stack (`dcpp down`) to change a network's addressing",
                        n.subnet,
                        n.gateway,
                        o.subnet,
                        o.gateway()
                    )))
                }
                _ => Ok(()),
            };
        }
        let mut cfg = NetworkConfig {
            own: own.cloned(),
            ..Default::default()
        };
        cfg.labels
            .insert(crate::agent::NETWORK_STACK_LABEL.into(), stack.to_string());
        match self.manager.create_network(name, cfg) {
            Ok(_) => Ok(()),
            Err(dcpp_runtime::network::Error::Ipam(e)) => Err(EnsureError::Refused(e.to_string())),
            Err(e) => Err(HostError::of(e).into()),
        }
    }
    fn ensure_overlay(
        &self,
        name: &str,
        stack: &str,
        subnet: &str,
        own: Option<&IpamSpec>,
        mtu: u32,
    ) -> Result<(), EnsureError> {
        let want: Ipv4Net = subnet
            .parse()
            .map_err(|e: dcpp_runtime::network::ParseNetError| HostError(e.0))?;
        if let Ok(info) = self.manager.inspect(name) {
            if info.network.subnet == want
                && own.is_none_or(|o| o.gateway() == info.network.gateway)
            {
                return Ok(());
            }
            if !info.endpoints.is_empty() {
                return Err(HostError(format!(
                    "network {name} has subnet {} here, but {want} in the cluster, and still has containers",
                    info.network.subnet
                ))
                .into());
            }
            self.manager.remove_network(name).map_err(HostError::of)?;
        }
        let mut cfg = NetworkConfig {
            subnet: Some(want),
            own: own.cloned(),
            mtu: Some(mtu),
            ..Default::default()
        };
        cfg.labels
            .insert(crate::agent::NETWORK_STACK_LABEL.into(), stack.to_string());
        match self.manager.create_network(name, cfg) {
            Ok(_) => Ok(()),
            Err(e) => Err(HostError::of(e).into()),
        }
    }
    fn set_remote(&self, name: &str, overlay: Option<Overlay>) -> Result<bool, HostError> {
        self.manager
            .set_remote(name, overlay)
            .map_err(HostError::of)
    }
    fn set_mesh(&self, mesh: Option<Mesh>) -> Result<bool, HostError> {
        self.manager.set_mesh(mesh).map_err(HostError::of)
    }
    fn plan(&self, name: &str, plan: ContainerPlan) {
        self.hook.plan(name, plan);
    }
    fn resolv_conf(
        &self,
        name: &str,
        networks: &[String],
        own: &ResolvSettings,
    ) -> Result<PathBuf, HostError> {
        let refs: Vec<&str> = networks.iter().map(String::as_str).collect();
        self.manager
            .write_resolv_conf_with(name, &refs, own)
            .map_err(HostError::of)
    }
    fn set_serving(&self, id: &str, serving: bool) -> Result<(), HostError> {
        self.manager
            .set_serving(id, serving)
            .map(drop)
            .map_err(HostError::of)
    }
    fn detach(&self, id: &str) -> Result<(), HostError> {
        self.manager.detach(id, None).map_err(HostError::of)
    }
    fn remove(&self, name: &str) -> Result<(), HostError> {
        self.manager.remove_network(name).map_err(HostError::of)
    }
    fn open_connections(&self, pid: i32) -> usize {
        accepted_connections(pid)
    }
}

/// Established TCP connections to a listening port in the network namespace of process
/// `pid` (a container's init): the requests a withdrawn server is still answering.
fn accepted_connections(pid: i32) -> usize {
    const LISTEN: &str = "0A";
    const ESTABLISHED: &str = "01";
    let mut listening = std::collections::HashSet::new();
    let mut established = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st)) = (f.get(1), f.get(3)) else {
                continue;
            };
            let Some(port) = local.rsplit(':').next() else {
                continue;
            };
            match *st {
                LISTEN => {
                    listening.insert(port.to_string());
                }
                ESTABLISHED => established.push(port.to_string()),
                _ => {}
            }
        }
    }
    established
        .iter()
        .filter(|p| listening.contains(*p))
        .count()
}

/// The image store under one directory, pulling with these registry settings.
pub struct LocalImages {
    pub dir: PathBuf,
    pub registry: RegistryOptions,
}

impl LocalImages {
    pub fn new(dir: &Path, registry: RegistryOptions) -> Self {
        LocalImages {
            dir: dir.to_path_buf(),
            registry,
        }
    }
}

impl Images for LocalImages {
    fn resolve(&self, reference: &str) -> Result<Option<Image>, Error> {
        let store = ImageStore::open(&self.dir).map_err(|e| Error::Runtime(e.to_string()))?;
        match store.resolve(reference) {
            Ok(img) => Ok(Some(Image::from(&img))),
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(e) => Err(Error::ImageNotFound(format!("{reference}: {e}"))),
        }
    }
    fn pull(
        &self,
        reference: &str,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<String, HostError>> {
        let (dir, opts, reference) = (
            self.dir.clone(),
            self.registry.clone(),
            reference.to_string(),
        );
        Box::pin(async move {
            let store = ImageStore::open(&dir).map_err(HostError::of)?;
            let client = RegistryClient::new(store, opts);
            let img = client
                .pull(&reference, Some(progress))
                .await
                .map_err(HostError::of)?;
            Ok(img.id.to_string())
        })
    }
    fn hold(&self, id: &str, holder: &str) -> Result<(), HostError> {
        let d = Digest::parse(id).map_err(HostError::of)?;
        ImageStore::open(&self.dir)
            .and_then(|store| store.add_holder(&d, holder))
            .map_err(HostError::of)
    }
    fn release(&self, id: &str, holder: &str) {
        if let Ok(store) = ImageStore::open(&self.dir)
            && let Ok(d) = Digest::parse(id)
        {
            let _ = store.remove_holder(&d, holder);
        }
    }
}

/// Everything the agent acts on besides the store.
pub struct Host {
    pub containers: Arc<dyn Containers>,
    /// `None`: containers get host networking only.
    pub networks: Option<Arc<dyn Networks>>,
    pub images: Arc<dyn Images>,
    pub clock: Arc<dyn Clock>,
}
