//! Recording fakes of [`crate::host`]'s traits: every call lands, in order, in one shared
//! [`Calls`] log, and results are scripted. State is kept just far enough for the agent's
//! next round to see what it did (a created container is listed, a stopped one has ended).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use dcpp_runtime::container::{CreateOptions, ImageInput};
use dcpp_runtime::image::registry::ProgressFn;
use dcpp_runtime::network::{ContainerPlan, ResolvSettings};

use crate::Error;
use crate::host::{
    CheckOutcome, Clock, Container, Containers, Exit, HostError, Image, Images, Network, Networks,
};
use crate::step::ContainerView;

/// One call of the agent into the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    List,
    Create {
        name: String,
        image: String,
    },
    Start(String),
    Stop(String),
    Remove(String),
    ExitCode(String),
    Logs(String),
    Check {
        id: String,
        args: Vec<String>,
    },
    VolumeExists(String),
    Volumes,
    RemoveVolume(String),
    Networks,
    Ensure {
        network: String,
        stack: String,
    },
    Plan {
        container: String,
        networks: Vec<String>,
    },
    ResolvConf {
        container: String,
        networks: Vec<String>,
    },
    SetServing {
        id: String,
        serving: bool,
    },
    Detach(String),
    RemoveNetwork(String),
    OpenConnections(i32),
    Resolve(String),
    Pull(String),
    Hold {
        image: String,
        holder: String,
    },
    Release {
        image: String,
        holder: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calls of all fakes sharing it, in order.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn push(&self, c: Call) {
        lock(&self.0).push(c);
    }
    /// The calls since the last `take`.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *lock(&self.0))
    }
}

/// Exit code a stopped fake container reports (SIGTERM).
pub const STOPPED_CODE: i32 = 143;

/// Containers in memory.
pub struct FakeContainers {
    calls: Calls,
    list: Mutex<Vec<Container>>,
    next: Mutex<u64>,
    logs: Mutex<HashMap<String, Vec<String>>>,
    checks: Mutex<VecDeque<CheckOutcome>>,
    /// Operation name (`"create"`, `"start"`, …) → the error it fails with.
    fail: Mutex<HashMap<&'static str, String>>,
}

impl FakeContainers {
    pub fn new(calls: &Calls) -> Self {
        FakeContainers {
            calls: calls.clone(),
            list: Mutex::default(),
            next: Mutex::new(1),
            logs: Mutex::default(),
            checks: Mutex::default(),
            fail: Mutex::default(),
        }
    }

    /// A container as the agent left it in an earlier life.
    pub fn add(&self, c: Container) {
        lock(&self.list).push(c);
    }

    pub fn get(&self, id: &str) -> Option<Container> {
        lock(&self.list).iter().find(|c| c.id == id).cloned()
    }

    /// The container's process ends with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(c) = lock(&self.list).iter_mut().find(|c| c.id == id) {
            c.status = ContainerView::Stopped;
            c.pid = None;
            c.exit = Some(Exit {
                code,
                oom_killed: false,
                error: None,
            });
        }
    }

    pub fn set_logs(&self, id: &str, lines: &[&str]) {
        lock(&self.logs).insert(id.into(), lines.iter().map(|l| l.to_string()).collect());
    }

    /// Outcomes of the next healthchecks, in order (a check beyond them passes).
    pub fn script_checks(&self, outcomes: impl IntoIterator<Item = (bool, &'static str)>) {
        lock(&self.checks).extend(outcomes.into_iter().map(|(ok, out)| CheckOutcome {
            ok,
            output: out.into(),
        }));
    }

    pub fn fail(&self, op: &'static str, error: &str) {
        lock(&self.fail).insert(op, error.into());
    }

    fn failure(&self, op: &str) -> Result<(), HostError> {
        match lock(&self.fail).get(op) {
            Some(e) => Err(HostError(e.clone())),
            None => Ok(()),
        }
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> T) -> Result<T, HostError> {
        let mut l = lock(&self.list);
        match l.iter_mut().find(|c| c.id == id) {
            Some(c) => Ok(f(c)),
            None => Err(HostError(format!("no such container: {id}"))),
        }
    }
}

/// A container record for [`FakeContainers::add`].
pub fn container(
    id: &str,
    name: &str,
    labels: &[(&str, &str)],
    status: ContainerView,
) -> Container {
    Container {
        id: id.into(),
        name: name.into(),
        status,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        pid: None,
        exit: None,
        dir: PathBuf::from("/nonexistent").join(id),
        stop_grace_secs: 10,
        volumes: vec![],
    }
}

impl Containers for FakeContainers {
    fn list(&self) -> Vec<Container> {
        self.calls.push(Call::List);
        lock(&self.list).clone()
    }
    fn create(&self, o: &CreateOptions) -> Result<String, HostError> {
        let name = o.name.clone().unwrap_or_default();
        self.calls.push(Call::Create {
            name: name.clone(),
            image: o.image.reference.clone(),
        });
        self.failure("create")?;
        let id = {
            let mut n = lock(&self.next);
            *n += 1;
            format!("c{}", *n - 1)
        };
        let labels: Vec<(&str, &str)> = o
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.add(container(&id, &name, &labels, ContainerView::Created));
        Ok(id)
    }
    fn start(&self, id: &str) -> Result<(), HostError> {
        self.calls.push(Call::Start(id.into()));
        self.failure("start")?;
        self.with(id, |c| c.status = ContainerView::Running)
    }
    fn stop(&self, id: &str) -> Result<(), HostError> {
        self.calls.push(Call::Stop(id.into()));
        self.failure("stop")?;
        self.with(id, |c| {
            if c.status.is_up() {
                c.status = ContainerView::Stopped;
                c.pid = None;
                c.exit = Some(Exit {
                    code: STOPPED_CODE,
                    oom_killed: false,
                    error: None,
                });
            }
        })
    }
    fn remove(&self, id: &str) -> Result<(), HostError> {
        self.calls.push(Call::Remove(id.into()));
        self.failure("remove")?;
        lock(&self.list).retain(|c| c.id != id);
        Ok(())
    }
    fn exit_code(&self, id: &str) -> Result<Option<i32>, HostError> {
        self.calls.push(Call::ExitCode(id.into()));
        self.with(id, |c| c.exit.as_ref().map(|e| e.code))
    }
    fn logs(&self, id: &str) -> Result<Vec<String>, HostError> {
        self.calls.push(Call::Logs(id.into()));
        Ok(lock(&self.logs).get(id).cloned().unwrap_or_default())
    }
    fn check(&self, id: &str, args: Vec<String>, _timeout: Duration) -> CheckOutcome {
        self.calls.push(Call::Check {
            id: id.into(),
            args,
        });
        lock(&self.checks).pop_front().unwrap_or(CheckOutcome {
            ok: true,
            output: String::new(),
        })
    }
    fn volume_exists(&self, name: &str) -> bool {
        self.calls.push(Call::VolumeExists(name.into()));
        false
    }
    fn volumes(&self) -> Vec<String> {
        self.calls.push(Call::Volumes);
        vec![]
    }
    fn remove_volume(&self, name: &str, _users: &[String]) -> Result<(), HostError> {
        self.calls.push(Call::RemoveVolume(name.into()));
        Ok(())
    }
}

/// Networks in memory; attachments are not modelled (every network has no endpoint).
pub struct FakeNetworks {
    calls: Calls,
    list: Mutex<Vec<Network>>,
}

impl FakeNetworks {
    pub fn new(calls: &Calls) -> Self {
        FakeNetworks {
            calls: calls.clone(),
            list: Mutex::default(),
        }
    }
    pub fn names(&self) -> Vec<String> {
        lock(&self.list).iter().map(|n| n.name.clone()).collect()
    }
}

impl Networks for FakeNetworks {
    fn list(&self) -> Result<Vec<Network>, HostError> {
        self.calls.push(Call::Networks);
        Ok(lock(&self.list).clone())
    }
    fn ensure(
        &self,
        name: &str,
        stack: &str,
        _own: Option<&dcpp_spec::ipam::IpamSpec>,
    ) -> Result<(), crate::host::EnsureError> {
        self.calls.push(Call::Ensure {
            network: name.into(),
            stack: stack.into(),
        });
        let mut l = lock(&self.list);
        if !l.iter().any(|n| n.name == name) {
            l.push(Network {
                name: name.into(),
                stack: Some(stack.into()),
                endpoints: 0,
            });
        }
        Ok(())
    }
    fn plan(&self, name: &str, plan: ContainerPlan) {
        self.calls.push(Call::Plan {
            container: name.into(),
            networks: plan.networks.into_iter().map(|n| n.network).collect(),
        });
    }
    fn resolv_conf(
        &self,
        name: &str,
        networks: &[String],
        _own: &ResolvSettings,
    ) -> Result<PathBuf, HostError> {
        self.calls.push(Call::ResolvConf {
            container: name.into(),
            networks: networks.to_vec(),
        });
        Ok(PathBuf::from("/nonexistent").join(name).join("resolv.conf"))
    }
    fn set_serving(&self, id: &str, serving: bool) -> Result<(), HostError> {
        self.calls.push(Call::SetServing {
            id: id.into(),
            serving,
        });
        Ok(())
    }
    fn detach(&self, id: &str) -> Result<(), HostError> {
        self.calls.push(Call::Detach(id.into()));
        Ok(())
    }
    fn remove(&self, name: &str) -> Result<(), HostError> {
        self.calls.push(Call::RemoveNetwork(name.into()));
        lock(&self.list).retain(|n| n.name != name);
        Ok(())
    }
    fn open_connections(&self, pid: i32) -> usize {
        self.calls.push(Call::OpenConnections(pid));
        0
    }
}

/// An image store in memory; a pull succeeds (and the image is then present) unless scripted
/// to fail.
pub struct FakeImages {
    calls: Calls,
    present: Mutex<HashMap<String, Image>>,
    pull_errors: Mutex<HashMap<String, String>>,
}

/// The digest the fake gives the image `reference`.
pub fn image_id(reference: &str) -> String {
    let h: String = reference
        .bytes()
        .map(|b| format!("{:x}", b % 16))
        .chain(std::iter::repeat("0".to_string()))
        .take(64)
        .collect();
    format!("sha256:{h}")
}

fn image(reference: &str) -> Image {
    Image {
        id: image_id(reference),
        input: ImageInput {
            reference: reference.into(),
            layer_dirs: vec![],
            config: None,
        },
        platform: "linux/amd64".into(),
    }
}

impl FakeImages {
    pub fn new(calls: &Calls) -> Self {
        FakeImages {
            calls: calls.clone(),
            present: Mutex::default(),
            pull_errors: Mutex::default(),
        }
    }
    pub fn add(&self, reference: &str) {
        lock(&self.present).insert(reference.into(), image(reference));
    }
    pub fn fail_pull(&self, reference: &str, error: &str) {
        lock(&self.pull_errors).insert(reference.into(), error.into());
    }
}

impl Images for Arc<FakeImages> {
    fn resolve(&self, reference: &str) -> Result<Option<Image>, Error> {
        self.calls.push(Call::Resolve(reference.into()));
        Ok(lock(&self.present).get(reference).cloned())
    }
    fn pull(
        &self,
        reference: &str,
        _progress: ProgressFn,
    ) -> BoxFuture<'static, Result<String, HostError>> {
        self.calls.push(Call::Pull(reference.into()));
        let (me, reference) = (self.clone(), reference.to_string());
        Box::pin(async move {
            if let Some(e) = lock(&me.pull_errors).get(&reference) {
                return Err(HostError(e.clone()));
            }
            me.add(&reference);
            Ok(image_id(&reference))
        })
    }
    fn hold(&self, id: &str, holder: &str) -> Result<(), HostError> {
        self.calls.push(Call::Hold {
            image: id.into(),
            holder: holder.into(),
        });
        Ok(())
    }
    fn release(&self, id: &str, holder: &str) {
        self.calls.push(Call::Release {
            image: id.into(),
            holder: holder.into(),
        });
    }
}

/// A clock that moves only when told to (or when the agent sleeps on it).
pub struct FakeClock {
    start: Instant,
    start_ms: u64,
    elapsed: Mutex<Duration>,
}

impl FakeClock {
    pub fn new(start_ms: u64) -> Self {
        FakeClock {
            start: Instant::now(),
            start_ms,
            elapsed: Mutex::default(),
        }
    }
    pub fn advance(&self, d: Duration) {
        *lock(&self.elapsed) += d;
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + lock(&self.elapsed).as_millis() as u64
    }
    fn now(&self) -> Instant {
        self.start + *lock(&self.elapsed)
    }
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.advance(d);
        Box::pin(std::future::ready(()))
    }
}

/// The store as a node on one side of a partition sees it: its writes (heartbeats, reports)
/// reach the managers or fail, and its reads come from the managers' current state or from a
/// copy that stopped changing (a manager cut off from the others, or one catching up after).
#[derive(Clone)]
pub struct CutStore {
    pub live: dcpp_raft::MemStore,
    /// Reads come from here while set.
    stale: Arc<Mutex<Option<dcpp_raft::MemStore>>>,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl CutStore {
    pub fn new(live: dcpp_raft::MemStore) -> Self {
        CutStore {
            live,
            stale: Arc::default(),
            cut: Arc::default(),
        }
    }
    /// Writes fail (no leader on this side) or go through again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
    /// Reads come from `copy` (`None`: from the managers' state again).
    pub fn read_from(&self, copy: Option<dcpp_raft::MemStore>) {
        *lock(&self.stale) = copy;
    }
    fn reads(&self) -> dcpp_raft::MemStore {
        lock(&self.stale)
            .clone()
            .unwrap_or_else(|| self.live.clone())
    }
}

impl dcpp_raft::Store for CutStore {
    async fn txn(&self, txn: dcpp_raft::Txn) -> Result<dcpp_raft::TxnResponse, dcpp_raft::Error> {
        if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(dcpp_raft::Error::NoLeader(
                "no leader elected in time".into(),
            ));
        }
        self.live.txn(txn).await
    }
    async fn get(
        &self,
        kind: dcpp_raft::Kind,
        id: &str,
    ) -> Result<dcpp_raft::Object, dcpp_raft::Error> {
        self.reads().get(kind, id).await
    }
    async fn list(&self, kind: dcpp_raft::Kind) -> Result<dcpp_raft::ObjectList, dcpp_raft::Error> {
        self.reads().list(kind).await
    }
    fn watch(
        &self,
        since: u64,
        kind: Option<dcpp_raft::Kind>,
    ) -> futures::stream::BoxStream<'static, Result<dcpp_raft::Event, dcpp_raft::Error>> {
        self.reads().watch(since, kind)
    }
}
