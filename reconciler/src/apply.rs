//! Executing a plan on an in-memory [`Observed`] (tests, simulator, and the reference semantics
//! of every [`Action`] for the leader's store writes), and recording agent reports.

use crate::error::Error;
use crate::model::{
    DesiredState, Health, Observed, ServiceStatus, TaskId, TaskState, Time, UpdateState,
    UpdateStatus,
};
use crate::plan::{Action, Plan};

/// Applies every action of `plan`, in order. On error the actions before the failing one stay
/// applied; the caller re-plans against the current state.
pub fn apply(observed: &mut Observed, plan: &Plan) -> Result<(), Error> {
    for action in &plan.actions {
        apply_action(observed, action, plan.now)?;
    }
    Ok(())
}

fn task_mut(observed: &mut Observed, id: TaskId) -> Result<&mut crate::model::Task, Error> {
    observed
        .tasks
        .get_mut(&id)
        .ok_or_else(|| Error::Stale(format!("task {id} does not exist")))
}

/// Stops a task; a task that never reached a node has no container, so it is done at once.
fn stop(
    observed: &mut Observed,
    id: TaskId,
    desired: DesiredState,
    now: Time,
) -> Result<(), Error> {
    let task = task_mut(observed, id)?;
    task.desired = desired;
    if task.node.is_none() && task.is_live() {
        task.transition(TaskState::Shutdown, now)?;
    }
    Ok(())
}

pub(crate) fn apply_action(
    observed: &mut Observed,
    action: &Action,
    now: Time,
) -> Result<(), Error> {
    match action {
        Action::SetServiceStatus { service, status } => {
            observed
                .services
                .insert(service.clone(), (**status).clone());
        }
        Action::DeleteServiceStatus { service } => {
            observed.services.remove(service);
        }
        Action::Rollback { service, reason } => {
            let st = observed
                .services
                .get_mut(service)
                .ok_or_else(|| Error::Stale(format!("service {service} has no status")))?;
            let to = st
                .previous
                .clone()
                .ok_or_else(|| Error::Stale(format!("service {service} has no previous spec")))?;
            let from = std::mem::replace(&mut st.spec, to);
            // The rejected spec is no rollback target: `previous` is cleared, and the version
            // stays rejected until the desired spec is reset to the one that runs.
            *st = ServiceStatus {
                spec: st.spec.clone(),
                previous: None,
                rejected: Some(from.version),
                update: Some(UpdateStatus {
                    state: UpdateState::RollingBack,
                    started_at: now,
                    completed_at: None,
                    message: reason.clone(),
                    rolled_back_from: Some(from.version),
                    rollback_config: Some(from.rollback_config.clone()),
                    failure: Some(reason.clone()),
                }),
            };
        }
        Action::CreateTask { task } => {
            if observed.tasks.contains_key(&task.id) || task.id.0 < observed.next_task_id {
                return Err(Error::Stale(format!("task id {} already used", task.id)));
            }
            observed.next_task_id = task.id.0 + 1;
            observed.tasks.insert(task.id, task.clone());
        }
        Action::RestartTask { old, task } => {
            let prev = task_mut(observed, *old)?;
            if prev.is_live() {
                return Err(Error::Stale(format!("task {old} is still live")));
            }
            prev.desired = DesiredState::Shutdown;
            apply_action(observed, &Action::CreateTask { task: task.clone() }, now)?;
        }
        Action::PinVolume { volume, node } => {
            if let Some(home) = observed.volumes.get(volume)
                && home != node
            {
                return Err(Error::Stale(format!(
                    "volume {volume} already lives on node {home}"
                )));
            }
            observed.volumes.insert(volume.clone(), node.clone());
        }
        Action::AssignTask { task, node } => {
            let t = task_mut(observed, *task)?;
            if t.state > TaskState::Pending || t.desired != DesiredState::Running {
                return Err(Error::Stale(format!("task {task} is not pending")));
            }
            t.transition(TaskState::Assigned, now)?;
            t.node = Some(node.clone());
            t.message.clear();
        }
        Action::SetPendingReason { task, reason } => {
            let t = task_mut(observed, *task)?;
            t.transition(TaskState::Pending, now)?;
            t.message = reason.clone();
        }
        Action::ShutdownTask { task, .. } => stop(observed, *task, DesiredState::Shutdown, now)?,
        Action::RemoveTask { task, .. } => stop(observed, *task, DesiredState::Remove, now)?,
        Action::OrphanTask { task, reason } => {
            // The desired state stays: the slot's restart logic replaces the task (and marks
            // it `Shutdown` then), so a returning node's agent stops its container.
            let t = task_mut(observed, *task)?;
            t.transition(TaskState::Orphaned, now)?;
            t.error = Some(reason.clone());
        }
        Action::DeleteTask { task } => {
            let t = task_mut(observed, *task)?;
            if t.is_live() {
                return Err(Error::Stale(format!("task {task} is still live")));
            }
            observed.tasks.remove(task);
        }
    }
    Ok(())
}

/// What an agent reports about one task.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskReport {
    pub state: Option<TaskState>,
    pub container_id: Option<String>,
    pub exit_code: Option<i32>,
    pub health: Option<Health>,
    pub error: Option<String>,
}

/// Records an agent's report. A report that would move the state backward is refused and
/// changes nothing.
pub fn report(
    observed: &mut Observed,
    task: TaskId,
    r: &TaskReport,
    now: Time,
) -> Result<(), Error> {
    let t = task_mut(observed, task)?;
    if let Some(state) = r.state {
        t.transition(state, now)?;
    }
    if let Some(c) = &r.container_id {
        t.container_id = Some(c.clone());
    }
    if r.exit_code.is_some() {
        t.exit_code = r.exit_code;
    }
    if let Some(h) = r.health {
        t.health = h;
        if h == Health::Healthy && t.healthy_at.is_none() {
            t.healthy_at = Some(now);
        }
    }
    if r.error.is_some() {
        t.error = r.error.clone();
    }
    Ok(())
}
