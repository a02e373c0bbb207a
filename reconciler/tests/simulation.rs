//! Seeded deterministic simulation: random faults against a simulated cluster with a virtual
//! clock, with invariants checked after every planning step and convergence required after a
//! fault-free settling phase.
//!
//! The cluster, its agents and its containers are simulated here on purpose: the reconciler is
//! a pure function, so this *is* its real environment (the same `plan`/`apply` the leader runs).
//!
//! - `DCPP_SIM_SEED=N` replays one seed (prints its event log on failure).
//! - `DCPP_SIM_SEEDS=N` runs N seeds per test (default 50 per test, 4 tests).
//! - `DCPP_SIM_STEPS=N` chaos steps per seed (default 120).

use std::collections::{BTreeMap, BTreeSet};

use dcpp_reconciler::*;

/// SplitMix64: tiny, seedable, and identical on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len() as u64) as usize])
        }
    }
}

struct Sim {
    rng: Rng,
    now: Time,
    desired: Desired,
    obs: Observed,
    /// Spec versions that cannot run, and how they fail.
    bad: BTreeMap<(ServiceId, u64), Flaw>,
    /// Tasks whose containers died with their node.
    lost: BTreeSet<TaskId>,
    /// Last seen state of every task, for the forward-only check.
    seen: BTreeMap<TaskId, TaskState>,
    next_version: u64,
    /// Services removed by an event, to be re-added later.
    removed: Vec<ServiceSpec>,
    log: Vec<String>,
}

const SERVICES: [&str; 4] = ["api", "web", "db", "worker"];

/// How a bad version fails.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flaw {
    /// The container exits while starting.
    FailsToStart,
    /// It runs but never passes its healthcheck: the agent reports it unhealthy and fails it,
    /// as the real agent does (services with a healthcheck only).
    Unhealthy,
    /// It runs (and turns healthy) and crashes after [`CRASH_AFTER`].
    CrashesLater,
}

const CRASH_AFTER: Millis = 3_000;
/// The verdict is asked this long ahead, past the settle window.
const SETTLE_CHECK: Millis = dcpp_reconciler::converge::SETTLE;

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let mut obs = Observed::default();
        let n_nodes = 2 + rng.below(3);
        for i in 0..n_nodes {
            let mut node = Node::new(&format!("n{i}"));
            // Zone `a` always has n0; zone `b` has n1.
            let zone = if i % 2 == 0 { "a" } else { "b" };
            node.labels.insert("zone".into(), zone.into());
            node.resources = Resources {
                cpu_millis: 64_000,
                memory: 1 << 40,
            };
            if i == 0 {
                node.role = NodeRole::Manager;
            }
            obs.add_node(node);
        }
        let mut desired = Desired::default();
        let n_services = 1 + rng.below(4) as usize;
        for (i, name) in SERVICES.iter().take(n_services).enumerate() {
            let mut s = ServiceSpec::new("sim", name, "img:1", rng.below(5) as u32);
            if rng.chance(20) {
                s.mode = Mode::Global;
            }
            let order = if rng.chance(50) {
                UpdateOrder::StartFirst
            } else {
                UpdateOrder::StopFirst
            };
            s.update_config = UpdateConfig {
                parallelism: rng.below(3) as u32,
                delay: rng.below(3) * 1_000,
                failure_action: *rng
                    .pick(&[
                        FailureAction::Pause,
                        FailureAction::Rollback,
                        FailureAction::Continue,
                    ])
                    .unwrap(),
                monitor: rng.below(5) * 1_000,
                max_failure_ratio: if rng.chance(70) { 0.0 } else { 0.5 },
                order,
            };
            s.rollback_config = UpdateConfig {
                parallelism: rng.below(3) as u32,
                order,
                ..s.update_config.clone()
            };
            s.restart = RestartPolicy {
                condition: *rng
                    .pick(&[
                        RestartCondition::Any,
                        RestartCondition::OnFailure,
                        RestartCondition::None,
                    ])
                    .unwrap(),
                delay: rng.below(3) * 500,
                max_attempts: rng.chance(30).then(|| 1 + rng.below(3) as u32),
                window: rng.chance(50).then_some(30_000),
            };
            if rng.chance(30) {
                let zone = if rng.chance(50) { "a" } else { "b" };
                s.placement.constraints =
                    vec![Constraint::parse(&format!("node.labels.zone=={zone}")).unwrap()];
            }
            if rng.chance(30) {
                s.placement.preferences = vec![SpreadPreference {
                    label: "zone".into(),
                }];
            }
            s.reservations = Resources {
                cpu_millis: rng.below(500),
                memory: rng.below(1 << 20),
            };
            s.healthcheck = rng.chance(40);
            if i > 0 && rng.chance(40) {
                s.depends_on = vec![Dependency {
                    service: SERVICES[rng.below(i as u64) as usize].into(),
                    condition: if rng.chance(50) {
                        DependencyCondition::ServiceStarted
                    } else {
                        DependencyCondition::ServiceHealthy
                    },
                }];
            }
            if i > 0 && s.mode != Mode::Global && rng.chance(25) {
                // `network_mode: service:PEER` as from_compose builds it.
                let peer = SERVICES[rng.below(i as u64) as usize];
                s.network_peer = Some(peer.into());
                s.placement.constraints.clear();
                s.depends_on.retain(|d| d.service != peer);
                s.depends_on.push(Dependency {
                    service: peer.into(),
                    condition: DependencyCondition::ServiceStarted,
                });
            }
            desired.insert(s);
        }
        Sim {
            rng,
            now: 0,
            desired,
            obs,
            bad: BTreeMap::new(),
            lost: BTreeSet::new(),
            seen: BTreeMap::new(),
            next_version: 2,
            removed: Vec::new(),
            log: Vec::new(),
        }
    }

    fn node_ids(&self) -> Vec<NodeId> {
        self.obs.nodes.keys().cloned().collect()
    }

    fn service_ids(&self) -> Vec<ServiceId> {
        self.desired.services.keys().cloned().collect()
    }

    fn event(&mut self) {
        let what = self.rng.below(11);
        match what {
            0 | 1 => {
                let running: Vec<TaskId> = self
                    .obs
                    .tasks
                    .values()
                    .filter(|t| t.state == TaskState::Running)
                    .map(|t| t.id)
                    .collect();
                if let Some(&id) = self.rng.pick(&running) {
                    let exit = if self.rng.chance(80) { 137 } else { 0 };
                    self.log
                        .push(format!("{}: task {id} exits {exit}", self.now));
                    self.exit(id, exit);
                }
            }
            2 => {
                let n = self.rng.pick(&self.node_ids()).cloned().unwrap();
                self.log.push(format!("{}: node {n} down", self.now));
                self.obs.nodes.get_mut(&n).unwrap().status = NodeStatus::Down;
                for t in self.obs.tasks.values() {
                    if t.node.as_ref() == Some(&n) && t.is_live() {
                        self.lost.insert(t.id);
                    }
                }
            }
            3 | 4 => {
                let n = self.rng.pick(&self.node_ids()).cloned().unwrap();
                let a = *self
                    .rng
                    .pick(&[
                        Availability::Active,
                        Availability::Active,
                        Availability::Drain,
                        Availability::Pause,
                    ])
                    .unwrap();
                self.log.push(format!("{}: node {n} up, {a:?}", self.now));
                let node = self.obs.nodes.get_mut(&n).unwrap();
                node.status = NodeStatus::Ready;
                node.availability = a;
            }
            5 | 6 => {
                let Some(s) = self.rng.pick(&self.service_ids()).cloned() else {
                    return;
                };
                let replicas = self.rng.below(6) as u32;
                let spec = self.desired.services.get_mut(&s).unwrap();
                if let Mode::Replicated { .. } = spec.mode {
                    self.log
                        .push(format!("{}: scale {s} to {replicas}", self.now));
                    spec.mode = Mode::Replicated { replicas };
                }
            }
            7..=9 => {
                let Some(s) = self.rng.pick(&self.service_ids()).cloned() else {
                    return;
                };
                let bad = self.rng.chance(35);
                let v = self.new_version(&s, bad);
                self.log
                    .push(format!("{}: update {s} to v{v} (bad: {bad})", self.now));
                if let Some(f) = self.bad.get(&(s.clone(), v)) {
                    self.log.push(format!("{}: v{v} flaw {f:?}", self.now));
                }
            }
            _ => {
                // Removing and re-adding a service.
                let Some(s) = self.rng.pick(&self.service_ids()).cloned() else {
                    return;
                };
                let spec = self.desired.services.remove(&s).unwrap();
                self.log
                    .push(format!("{}: remove {s} (re-added later)", self.now));
                self.removed.push(spec);
            }
        }
    }

    fn new_version(&mut self, s: &ServiceId, bad: bool) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        let spec = self.desired.services.get_mut(s).unwrap();
        spec.version = v;
        spec.image = format!("img:{v}");
        if bad {
            let flaws: &[Flaw] = if spec.healthcheck {
                &[Flaw::FailsToStart, Flaw::Unhealthy, Flaw::CrashesLater]
            } else {
                &[Flaw::FailsToStart, Flaw::CrashesLater]
            };
            let flaw = *self.rng.pick(flaws).unwrap();
            self.bad.insert((s.clone(), v), flaw);
        }
        v
    }

    fn exit(&mut self, id: TaskId, exit: i32) {
        let state = if exit == 0 {
            TaskState::Complete
        } else {
            TaskState::Failed
        };
        let r = TaskReport {
            state: Some(state),
            exit_code: Some(exit),
            ..TaskReport::default()
        };
        report(&mut self.obs, id, &r, self.now).unwrap();
    }

    /// The agents on ready nodes: move tasks one state per tick, randomly slow.
    fn agents(&mut self, faults: bool) {
        let ids: Vec<TaskId> = self.obs.tasks.keys().copied().collect();
        for id in ids {
            let t = &self.obs.tasks[&id];
            let Some(node) = t.node.as_ref().and_then(|n| self.obs.nodes.get(n)) else {
                continue;
            };
            if node.status != NodeStatus::Ready || !t.is_live() {
                continue;
            }
            if self.lost.remove(&id) {
                let r = TaskReport {
                    state: Some(TaskState::Failed),
                    error: Some("container lost with its node".into()),
                    ..TaskReport::default()
                };
                report(&mut self.obs, id, &r, self.now).unwrap();
                continue;
            }
            if faults && self.rng.chance(30) {
                continue; // slow agent
            }
            let flaw = self.bad.get(&(t.service.clone(), t.spec_version)).copied();
            let healthcheck = self
                .desired
                .services
                .get(&t.service)
                .is_some_and(|s| s.healthcheck);
            let r = if t.desired != DesiredState::Running {
                TaskReport {
                    state: Some(TaskState::Shutdown),
                    ..TaskReport::default()
                }
            } else {
                match t.state {
                    TaskState::Assigned => TaskReport {
                        state: Some(TaskState::Preparing),
                        ..TaskReport::default()
                    },
                    TaskState::Preparing => TaskReport {
                        state: Some(TaskState::Starting),
                        ..TaskReport::default()
                    },
                    TaskState::Starting if flaw == Some(Flaw::FailsToStart) => TaskReport {
                        state: Some(TaskState::Failed),
                        exit_code: Some(1),
                        error: Some("image fails".into()),
                        ..TaskReport::default()
                    },
                    TaskState::Starting => TaskReport {
                        state: Some(TaskState::Running),
                        container_id: Some(format!("c{}", id.0)),
                        health: Some(if healthcheck {
                            Health::Starting
                        } else {
                            Health::Unknown
                        }),
                        ..TaskReport::default()
                    },
                    TaskState::Running if healthcheck && flaw == Some(Flaw::Unhealthy) => {
                        TaskReport {
                            state: Some(TaskState::Failed),
                            health: Some(Health::Unhealthy),
                            exit_code: Some(137),
                            error: Some("unhealthy: last healthcheck exited with code 1".into()),
                            ..TaskReport::default()
                        }
                    }
                    TaskState::Running
                        if flaw == Some(Flaw::CrashesLater)
                            && t.started_at.is_some_and(|s| self.now >= s + CRASH_AFTER) =>
                    {
                        TaskReport {
                            state: Some(TaskState::Failed),
                            exit_code: Some(1),
                            error: Some("crashed after running a while".into()),
                            ..TaskReport::default()
                        }
                    }
                    TaskState::Running if healthcheck && t.health != Health::Healthy => {
                        TaskReport {
                            health: Some(Health::Healthy),
                            ..TaskReport::default()
                        }
                    }
                    _ => continue,
                }
            };
            report(&mut self.obs, id, &r, self.now).unwrap();
        }
    }

    fn fail(&self, msg: String) -> ! {
        let mut dump = String::new();
        for n in self.obs.nodes.values() {
            dump += &format!(
                "node {} {:?} {:?} {:?}\n",
                n.id, n.status, n.availability, n.labels
            );
        }
        for (sid, st) in &self.obs.services {
            dump += &format!(
                "service {sid} v{} {:?} update {:?}\n",
                st.spec.version,
                st.spec.mode,
                st.update.as_ref().map(|u| (u.state, &u.message))
            );
        }
        for t in self.obs.tasks.values() {
            dump += &format!(
                "{} {} v{} {} desired {:?} on {:?} started {:?} finished {:?} nb {:?}\n",
                t.id,
                t.name(),
                t.spec_version,
                t.state,
                t.desired,
                t.node.as_ref().map(|n| &n.0),
                t.started_at,
                t.finished_at,
                t.not_before
            );
        }
        panic!("{msg}\nevents:\n{}\n{dump}", self.log.join("\n"));
    }

    fn plan_step(&mut self) {
        let p = plan(&self.desired, &self.obs, self.now);
        let before = self.obs.next_task_id;
        apply(&mut self.obs, &p).unwrap_or_else(|e| self.fail(format!("apply failed: {e}")));
        assert!(self.obs.next_task_id >= before);
        // Assignments only go to nodes that may take new tasks of that service.
        for a in &p.actions {
            if let Action::AssignTask { task, node } = a {
                let n = &self.obs.nodes[node];
                let sid = &self.obs.tasks[task].service;
                let Some(spec) = self.desired.services.get(sid) else {
                    self.fail(format!("{}: {task} of removed service assigned", self.now));
                };
                if n.status != NodeStatus::Ready || n.availability != Availability::Active {
                    self.fail(format!(
                        "{}: {task} assigned to unavailable node {node}",
                        self.now
                    ));
                }
                if !spec.placement.constraints.iter().all(|c| c.matches(n)) {
                    self.fail(format!("{}: {task} assigned against constraints", self.now));
                }
            }
        }
        let again = plan(&self.desired, &self.obs, self.now);
        if !again.is_empty() {
            self.fail(format!(
                "{}: second plan not empty: {:?}\nfirst: {:?}",
                self.now, again.actions, p.actions
            ));
        }
        self.check();
    }

    /// A running sidecar (`network_mode: service:PEER`) that is still wanted shares its node
    /// with a running peer task that started no later than it did (the one it joined).
    fn network_peers_ok(&self) -> Result<(), String> {
        for t in self.obs.tasks.values() {
            let Some(peer) = self
                .obs
                .services
                .get(&t.service)
                .and_then(|s| s.spec.network_peer.as_ref())
            else {
                continue;
            };
            if t.state != TaskState::Running || t.desired != DesiredState::Running {
                continue;
            }
            let pid = ServiceId::new("sim", peer);
            let ok = self.obs.tasks.values().any(|p| {
                p.service == pid
                    && p.state == TaskState::Running
                    && p.node == t.node
                    && p.started_at <= t.started_at
            });
            if !ok {
                return Err(format!(
                    "{}: sidecar {} on {:?} has no running peer {peer} there",
                    self.now, t.id, t.node
                ));
            }
        }
        Ok(())
    }

    fn check(&mut self) {
        if let Err(e) = self.network_peers_ok() {
            self.fail(e);
        }
        // Forward-only states.
        for t in self.obs.tasks.values() {
            if let Some(prev) = self.seen.insert(t.id, t.state)
                && prev != t.state
                && !prev.can_move_to(t.state)
            {
                self.fail(format!("task {} went {prev} -> {}", t.id, t.state));
            }
        }
        // A version that never comes up (fails to start, never healthy) never completes an
        // update, and the convergence rule never calls it converged.
        for (sid, st) in &self.obs.services {
            let flaw = self.bad.get(&(sid.clone(), st.spec.version));
            if !matches!(flaw, Some(Flaw::FailsToStart | Flaw::Unhealthy)) {
                continue;
            }
            let Some(spec) = self.desired.services.get(sid) else {
                continue;
            };
            // (With no slot to fill, an update completes vacuously.)
            let wants_tasks = !desired_slots(sid, spec, &self.obs).is_empty();
            if let Some(u) = &st.update
                && u.state == UpdateState::Completed
                && u.completed_at == Some(self.now)
            {
                // Health gates rollouts: an update completes only with every wanted slot's
                // current task up (healthy, when there is a healthcheck), or dead for good
                // (failure_action continue / a tolerated failure ratio).
                for slot in desired_slots(sid, spec, &self.obs) {
                    let head = self
                        .obs
                        .tasks
                        .values()
                        .filter(|t| t.service == *sid && t.slot == slot)
                        .filter(|t| t.desired == DesiredState::Running)
                        .max_by_key(|t| t.id);
                    if let Some(h) = head
                        && h.is_live()
                        && (h.state != TaskState::Running
                            || h.ready_at(st.spec.healthcheck).is_none())
                    {
                        self.fail(format!(
                            "{}: {sid}: update to v{} ({flaw:?}) completed with {} {} ({:?})",
                            self.now, st.spec.version, h.id, h.state, h.health
                        ));
                    }
                }
            }
            if spec.version == st.spec.version
                && wants_tasks
                && self.verdict(sid, SETTLE_CHECK) == Convergence::Converged
            {
                self.fail(format!(
                    "{}: {sid}: v{} ({flaw:?}) judged converged",
                    self.now, st.spec.version
                ));
            }
        }
        // Nothing should run on a drained or down node.
        for t in self.obs.tasks.values() {
            if t.is_live()
                && t.desired == DesiredState::Running
                && let Some(node) = &t.node
            {
                let n = &self.obs.nodes[node];
                if n.status == NodeStatus::Down || n.availability == Availability::Drain {
                    self.fail(format!(
                        "{}: {} still wanted on {node} ({:?}/{:?})",
                        self.now, t.id, n.status, n.availability
                    ));
                }
            }
        }
        // Per slot: surge limits of the update order.
        for (sid, st) in &self.obs.services {
            let Some(spec) = self.desired.services.get(sid) else {
                continue;
            };
            let order = spec.update_config.order;
            // Parallelism 0 means "all at once": no bound beyond two tasks per slot.
            let (pu, pr) = (
                spec.update_config.parallelism,
                spec.rollback_config.parallelism,
            );
            let p = if pu == 0 || pr == 0 { 0 } else { pu.max(pr) };
            let mut per_slot: BTreeMap<&Slot, (usize, usize)> = BTreeMap::new();
            for t in self.obs.tasks.values().filter(|t| t.service == *sid) {
                let wanted = match (&st.spec.mode, &t.slot) {
                    (Mode::Replicated { replicas }, Slot::Replica(n)) => *n <= *replicas,
                    (Mode::Global, Slot::Node(_)) => t.desired != DesiredState::Remove,
                    _ => false,
                };
                if !wanted {
                    continue;
                }
                let e = per_slot.entry(&t.slot).or_default();
                if t.is_live() {
                    e.0 += 1;
                }
                if t.state == TaskState::Running {
                    e.1 += 1;
                }
            }
            let doubled = per_slot
                .values()
                .filter(|(_, running)| *running > 1)
                .count();
            for (slot, (live, running)) in &per_slot {
                let ok = match order {
                    UpdateOrder::StopFirst => *live <= 1,
                    UpdateOrder::StartFirst => *running <= 2,
                };
                if !ok {
                    self.fail(format!(
                        "{}: {sid}.{slot}: {live} live, {running} running ({order:?})",
                        self.now
                    ));
                }
            }
            if order == UpdateOrder::StartFirst && p > 0 && doubled > p as usize {
                self.fail(format!(
                    "{}: {sid}: {doubled} slots overlap, parallelism {p}",
                    self.now
                ));
            }
        }
    }

    fn step(&mut self, faults: bool) {
        self.now += 50 + self.rng.below(1_500);
        if faults && self.rng.chance(35) {
            self.event();
        }
        if faults && !self.removed.is_empty() && self.rng.chance(10) {
            let spec = self.removed.remove(0);
            self.log.push(format!("{}: re-add {}", self.now, spec.id()));
            self.desired.insert(spec);
        }
        self.agents(faults);
        self.plan_step();
    }

    /// Heal the cluster and have the user fix every service with a new good version.
    fn heal(&mut self) {
        for spec in std::mem::take(&mut self.removed) {
            self.desired.insert(spec);
        }
        for n in self.obs.nodes.values_mut() {
            n.status = NodeStatus::Ready;
            n.availability = Availability::Active;
        }
        for s in self.service_ids() {
            self.new_version(&s, false);
        }
        // A sidecar can only run where its peer runs.
        let peers: Vec<ServiceId> = self
            .desired
            .services
            .values()
            .filter_map(|s| s.network_peer.as_ref().map(|p| ServiceId::new("sim", p)))
            .collect();
        for p in peers {
            if let Some(spec) = self.desired.services.get_mut(&p)
                && spec.mode == (Mode::Replicated { replicas: 0 })
            {
                spec.mode = Mode::Replicated { replicas: 1 };
            }
        }
        self.log.push(format!("{}: heal", self.now));
    }

    /// The convergence rule's verdict on the desired spec of `sid`, `after` ms from now.
    fn verdict(&self, sid: &ServiceId, after: Millis) -> Convergence {
        let spec = &self.desired.services[sid];
        let tasks: Vec<Task> = self.obs.tasks.values().cloned().collect();
        let slots = desired_slots(sid, spec, &self.obs);
        verdict(
            &ServiceView {
                applied: spec,
                stored: Some(spec),
                status: self.obs.services.get(sid),
                tasks: &tasks,
                slots: &slots,
                nodes: &self.obs.nodes,
            },
            self.now + after,
        )
    }

    fn converged(&self) -> Result<(), String> {
        for (sid, spec) in &self.desired.services {
            let st = self.obs.services.get(sid).ok_or("no status")?;
            if st.spec.version != spec.version {
                return Err(format!(
                    "{sid}: status version {} != {}",
                    st.spec.version, spec.version
                ));
            }
            if let Some(u) = &st.update
                && u.state != UpdateState::Completed
            {
                return Err(format!("{sid}: update {:?}", u.state));
            }
            let slots: BTreeSet<Slot> = match spec.mode {
                Mode::Replicated { replicas } => (1..=replicas).map(Slot::Replica).collect(),
                Mode::Global => self
                    .obs
                    .nodes
                    .values()
                    .filter(|n| spec.placement.constraints.iter().all(|c| c.matches(n)))
                    .map(|n| Slot::Node(n.id.clone()))
                    .collect(),
            };
            let live: Vec<&Task> = self
                .obs
                .tasks
                .values()
                .filter(|t| t.service == *sid && t.is_live())
                .collect();
            if live.len() != slots.len() {
                return Err(format!(
                    "{sid}: {} live tasks for {} slots",
                    live.len(),
                    slots.len()
                ));
            }
            for t in live {
                if !slots.contains(&t.slot)
                    || t.state != TaskState::Running
                    || t.spec_version != spec.version
                {
                    return Err(format!(
                        "{sid}: task {} {} v{} in slot {}",
                        t.id, t.state, t.spec_version, t.slot
                    ));
                }
            }
        }
        // The convergence rule agrees once the settle window has passed.
        for sid in self.desired.services.keys() {
            let v = self.verdict(sid, SETTLE_CHECK);
            if v != Convergence::Converged {
                return Err(format!("{sid}: verdict {v}"));
            }
        }
        self.network_peers_ok()?;
        if self
            .obs
            .tasks
            .values()
            .any(|t| t.is_live() && !self.desired.services.contains_key(&t.service))
        {
            return Err("tasks of removed services".into());
        }
        Ok(())
    }
}

fn run_seed(seed: u64, steps: usize) {
    let mut sim = Sim::new(seed);
    sim.log.push(format!("seed {seed}"));
    for _ in 0..steps {
        sim.step(true);
    }
    sim.heal();
    // Settle: at most 10 virtual minutes without faults.
    let deadline = sim.now + 600_000;
    loop {
        // `step` already asserted that a second plan is empty, so converged means settled.
        sim.step(false);
        if sim.converged().is_ok() {
            return;
        }
        if sim.now > deadline {
            let why = sim.converged().err().unwrap_or_default();
            sim.fail(format!("seed {seed}: no convergence after healing: {why}"));
        }
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

fn run_range(part: u64) {
    let steps = env("DCPP_SIM_STEPS").unwrap_or(120) as usize;
    if let Some(seed) = env("DCPP_SIM_SEED") {
        if part == 0 {
            run_seed(seed, steps);
        }
        return;
    }
    let n = env("DCPP_SIM_SEEDS").unwrap_or(50);
    for i in 0..n {
        run_seed(part * 1_000_000 + i, steps);
    }
}

#[test]
fn simulation_part_0() {
    run_range(0);
}

#[test]
fn simulation_part_1() {
    run_range(1);
}

#[test]
fn simulation_part_2() {
    run_range(2);
}

#[test]
fn simulation_part_3() {
    run_range(3);
}
