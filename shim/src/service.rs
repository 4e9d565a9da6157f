//! The containerd task service: one Tandem VM per task. Each ttrpc call is
//! a thin wrapper over a method returning [`ShimError`], turned into a
//! ttrpc status only here; what a call may do is decided by
//! [`TaskState`], and the VMM is run by [`vmm`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::api;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, context::Context};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext};

use crate::bundle::{self, Payload, Pod, RootMount};
use crate::error::{Result, ShimError};
use crate::podnet::{self, Holders, Netns};
use crate::resources::{self, CgroupPlan};
use crate::stdio::TaskIo;
use crate::task::{Kill, Kind, Start, TaskState};
use crate::vmm::{self, Signal, VmmError};
use crate::{metrics, vmcgroup};
use tandem::cgroup::Cgroup;

type TtrpcResult<T> = ttrpc::Result<T>;
/// How the service finds the `tandem` binary (a stand-in in tests).
type FindTandem = fn() -> std::result::Result<PathBuf, VmmError>;

/// Where the service sends task events.
pub trait Events: Send + Sync {
    /// Publishes `event` on `topic`.
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// containerd's event service, for one namespace.
pub struct ContainerdEvents {
    /// The connection to containerd.
    pub publisher: RemotePublisher,
    /// The namespace of the shim's tasks.
    pub namespace: String,
}

impl Events for ContainerdEvents {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
        {
            log::warn!("cannot publish {topic}: {e}");
        }
    }
}

struct Task {
    id: String,
    bundle: String,
    io: TaskIo,
    /// What to boot; `None` for a pod's placeholder, which boots nothing.
    payload: Option<Payload>,
    /// The pod network namespace the task's VM joins ([`podnet::plan::task_netns`]);
    /// a placeholder keeps its pod's for the pod's app containers.
    netns: Option<PathBuf>,
    /// The cgroup the VM runs in, from the spec; `None` without a
    /// `linux.cgroupsPath` (and for a placeholder).
    cgroup_plan: Option<CgroupPlan>,
    /// The group, once made at `start`; removed at `delete`.
    cgroup: Mutex<Option<Cgroup>>,
    state: Mutex<TaskState>,
    exited: Condvar,
    /// Held from `start` until its start event is out, and taken to publish
    /// an exit event: containerd must hear of a start before its exit, even
    /// of an app that exits at once (the runc shim orders them alike).
    /// Taken before `state`, never while holding it.
    event_order: Mutex<()>,
}

impl Task {
    fn new(
        id: String,
        bundle: String,
        io: TaskIo,
        payload: Option<Payload>,
        netns: Option<PathBuf>,
        cgroup_plan: Option<CgroupPlan>,
    ) -> Self {
        let kind = if payload.is_some() {
            Kind::Vm
        } else {
            Kind::Placeholder
        };
        Task {
            id,
            bundle,
            io,
            payload,
            netns,
            cgroup_plan,
            cgroup: Mutex::new(None),
            state: Mutex::new(TaskState::new(kind)),
            exited: Condvar::new(),
            event_order: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TaskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event_order(&self) -> MutexGuard<'_, ()> {
        self.event_order.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn exit_event(&self, state: &TaskState) -> TaskExit {
        let (exit_status, exited_at) = exit_fields(state);
        TaskExit {
            container_id: self.id.clone(),
            id: self.id.clone(),
            pid: state.pid(),
            exit_status,
            exited_at,
            ..Default::default()
        }
    }
}

/// A task's exit status and time as containerd's messages carry them.
fn exit_fields(state: &TaskState) -> (u32, MessageField<Timestamp>) {
    state.exit().map_or((0, MessageField::none()), |e| {
        (e.status, MessageField::some(e.at.clone()))
    })
}

struct Inner {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    events: Box<dyn Events>,
    exit: Arc<ExitSignal>,
    find_tandem: FindTandem,
    /// Which task's VM has each pod network.
    holders: Holders,
}

/// The task service containerd talks to over ttrpc.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

/// Refuses what the shim cannot do before anything is read.
fn check_create(req: &api::CreateTaskRequest) -> Result<()> {
    if req.terminal {
        return Err(ShimError::Terminal);
    }
    if !req.checkpoint.is_empty() {
        return Err(ShimError::Checkpoint);
    }
    Ok(())
}

fn root_mounts(rootfs: &[Mount]) -> Vec<RootMount> {
    rootfs
        .iter()
        .map(|m| RootMount {
            kind: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// What a bundle boots: `None` for a pod's placeholder.
fn load_payload(
    id: &str,
    pod: &Pod,
    bundle: &Path,
    rootfs: &[RootMount],
) -> Result<Option<Payload>> {
    if pod.is_sandbox {
        log::info!("create {id}: pod placeholder, no VM");
        return Ok(None);
    }
    let payload = bundle::load(bundle, rootfs)?;
    if let Some(name) = &payload.snapshot {
        let dir = vmm::snapshot_dir().join(name);
        if !dir.join("state").is_file() {
            return Err(ShimError::NoSnapshot {
                name: name.clone(),
                dir,
            });
        }
    }
    log::info!(
        "create {id}: {} ({}) cmdline {:?}",
        payload.name,
        payload.elf.display(),
        payload.cmdline
    );
    Ok(Some(payload))
}

/// Refuses a VM that declares a network device but has no pod network to
/// put it on (the VMM would refuse it at start), and one that would have to
/// restore a snapshot onto the pod network (not done yet).
fn check_network(payload: &Payload, netns: Option<&Path>) -> Result<()> {
    match (payload.net, netns, &payload.snapshot) {
        (true, None, _) => Err(ShimError::NoNetwork(payload.name.clone())),
        (true, Some(_), Some(_)) => Err(ShimError::SnapshotNetwork(payload.name.clone())),
        _ => Ok(()),
    }
}

fn signal(raw: u32) -> Result<Signal> {
    Signal::new(raw).ok_or(ShimError::BadSignal(raw))
}

impl Service {
    /// The service, publishing to `events`, signalling `exit` when asked to
    /// shut down with no task left.
    pub fn new(events: Box<dyn Events>, exit: Arc<ExitSignal>) -> Self {
        Self::with_tandem(events, exit, vmm::tandem_binary)
    }

    fn with_tandem(
        events: Box<dyn Events>,
        exit: Arc<ExitSignal>,
        find_tandem: FindTandem,
    ) -> Self {
        Service {
            inner: Arc::new(Inner {
                tasks: Mutex::new(HashMap::new()),
                events,
                exit,
                find_tandem,
                holders: Holders::default(),
            }),
        }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn task(&self, id: &str, exec_id: &str) -> Result<Arc<Task>> {
        if !exec_id.is_empty() {
            return Err(ShimError::ExecUnsupported);
        }
        self.tasks()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.into()))
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.inner.events.publish(topic, event);
    }

    fn create_task(&self, req: &api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        check_create(req)?;
        if self.tasks().contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(req.id.clone()));
        }
        let bundle = Path::new(&req.bundle);
        let pod = bundle::pod(bundle)?;
        let mut payload = load_payload(&req.id, &pod, bundle, &root_mounts(&req.rootfs))?;
        // The VM's cgroup and its memory: only a VM has them.
        let mut cgroup_plan = None;
        if let Some(p) = &mut payload {
            let (plan, memory) = resources::read(bundle)?;
            if memory.is_some() {
                p.memory = memory;
            }
            cgroup_plan = plan;
        }
        let netns = match self.task_netns(&pod) {
            Ok(n) => n,
            // Only a VM that declares a network device needs the namespace
            // (and a placeholder keeps it for such VMs, which then fail).
            Err(e) if !payload.as_ref().is_some_and(|p| p.net) => {
                log::warn!("create {}: {e}; no pod network", req.id);
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = &payload {
            check_network(p, netns.as_deref())?;
        }
        if let Some(spec) = &pod.netns {
            let joins = netns
                .as_deref()
                .map_or_else(|| "none".to_string(), |p| p.display().to_string());
            log::info!(
                "create {}: the spec names network namespace {}; the VM joins {joins}",
                req.id,
                spec.display()
            );
        }
        let io = TaskIo {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        self.insert(Task::new(
            req.id.clone(),
            req.bundle.clone(),
            io,
            payload,
            netns,
            cgroup_plan,
        ));
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                checkpoint: req.checkpoint.clone(),
                pid: 0,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: 0,
            ..Default::default()
        })
    }

    /// The network namespace a new task's VM joins: the one its spec
    /// names, or, for an app container naming the shim's own (the pod
    /// placeholder's pid is the shim's), its sandbox's.
    fn task_netns(&self, pod: &Pod) -> Result<Option<PathBuf>> {
        let Some(spec) = pod.netns.as_deref() else {
            return Ok(None);
        };
        let names_shim = Netns::is_own(spec).map_err(|source| podnet::PodNetError::Open {
            path: spec.into(),
            source,
        })?;
        let sandbox = pod
            .sandbox_id
            .as_ref()
            .and_then(|id| self.tasks().get(id).and_then(|t| t.netns.clone()));
        Ok(podnet::plan::task_netns(
            Some(spec),
            pod.is_sandbox,
            names_shim,
            sandbox.as_deref(),
        ))
    }

    fn insert(&self, task: Task) {
        self.tasks().insert(task.id.clone(), Arc::new(task));
    }

    fn start_task(&self, req: &api::StartRequest) -> Result<api::StartResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        let _order = task.event_order();
        let start = task
            .lock()
            .start(std::process::id())
            .map_err(|why| ShimError::refused(&req.id, why))?;
        let pid = match start {
            Start::Spawn => self.spawn_vm(&task)?,
            Start::Running(pid) => pid,
        };
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Boots the VM; on failure the task may be started again (or has
    /// ended, if killed meanwhile).
    fn spawn_vm(&self, task: &Arc<Task>) -> Result<u32> {
        let result = self.launch(task);
        if let Err(e) = &result {
            // After a timeout the VMM may still come up and report itself.
            let timeout = matches!(e, ShimError::Vmm(VmmError::StartTimeout));
            if !timeout && task.lock().start_failed(Timestamp::now()) {
                task.exited.notify_all();
            }
        }
        result
    }

    fn launch(&self, task: &Arc<Task>) -> Result<u32> {
        let payload = task.payload.as_ref().ok_or(VmmError::Placeholder)?;
        let tandem = (self.inner.find_tandem)()?;
        let bundle = PathBuf::from(&task.bundle);
        // Held by the VMM's supervisor until the VM has ended; a failed
        // start drops it, which undoes the wiring.
        let net = match (&task.netns, payload.net) {
            (Some(ns), true) => Some(podnet::attach(ns, &task.id, &self.inner.holders)?),
            _ => None,
        };
        let net_arg = net.as_ref().map(podnet::Attached::arg);
        let args = vmm::vm_args(payload, &vmm::snapshot_dir(), net_arg);
        let mut cmd = vmm::command(
            &tandem,
            &args,
            &bundle,
            task.io.open().map_err(VmmError::from)?,
        );
        if let Some(net) = &net {
            net.netns().enter_with_sysfs(&mut cmd);
        }
        if let Some(plan) = &task.cgroup_plan {
            let (group, procs) = vmcgroup::prepare(plan)?;
            vmm::join_cgroup(&mut cmd, procs);
            *task.cgroup.lock().unwrap_or_else(|e| e.into_inner()) = Some(group);
        }
        let on_start = {
            let (task, bundle) = (task.clone(), bundle.clone());
            move |pid| {
                vmm::write_pid_file(&bundle, pid);
                let mut state = task.lock();
                if let Some(sig) = state.started(pid) {
                    // Not reaped yet: the supervisor waits after this returns.
                    vmm::send_signal(pid, sig);
                }
            }
        };
        let on_exit = {
            let (task, service) = (task.clone(), self.clone());
            move |_pid, status| {
                // The tap is gone before containerd hears of the exit (and
                // tears the pod's network down).
                drop(net);
                vmm::remove_pid_file(&bundle);
                let exit = {
                    let mut state = task.lock();
                    state.exited(status, Timestamp::now());
                    task.exit_event(&state)
                };
                task.exited.notify_all();
                let _order = task.event_order();
                service.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(exit));
            }
        };
        Ok(vmm::spawn_supervised(cmd, on_start, on_exit)?)
    }

    fn state_of(&self, req: &api::StateRequest) -> Result<api::StateResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        let state = task.lock();
        let (exit_status, exited_at) = exit_fields(&state);
        Ok(api::StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.clone(),
            pid: state.pid(),
            status: EnumOrUnknown::new(state.status()),
            stdin: task.io.stdin.clone(),
            stdout: task.io.stdout.clone(),
            stderr: task.io.stderr.clone(),
            // `create` refuses a terminal.
            terminal: false,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn pids_of(&self, req: &api::PidsRequest) -> Result<api::PidsResponse> {
        let pid = self.task(&req.id, "")?.lock().pid();
        let mut resp = api::PidsResponse::default();
        if pid != 0 {
            resp.processes
                .push(containerd_shim::protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                });
        }
        Ok(resp)
    }

    fn kill_task(&self, req: &api::KillRequest) -> Result<api::Empty> {
        let task = self.task(&req.id, &req.exec_id)?;
        let sig = signal(req.signal)?;
        let mut state = task.lock();
        match state
            .kill(sig, Timestamp::now())
            .map_err(|why| ShimError::refused(&req.id, why))?
        {
            // Under the lock: the VMM's supervisor reaps it only after
            // taking the lock to record its exit.
            Kill::Signal(pid, sig) => vmm::send_signal(pid, sig),
            Kill::Deferred => {}
            Kill::Ended { publish } => {
                let exit = task.exit_event(&state);
                drop(state);
                task.exited.notify_all();
                if publish {
                    let _order = task.event_order();
                    self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(exit));
                }
            }
        }
        Ok(api::Empty::default())
    }

    fn wait_task(&self, req: &api::WaitRequest) -> Result<api::WaitResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        let mut state = task.lock();
        while state.exit().is_none() {
            state = task.exited.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let (exit_status, exited_at) = exit_fields(&state);
        Ok(api::WaitResponse {
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn delete_task(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        let (pid, (exit_status, exited_at)) = {
            let state = task.lock();
            state
                .check_delete()
                .map_err(|why| ShimError::refused(&req.id, why))?;
            (state.pid(), exit_fields(&state))
        };
        self.tasks().remove(&req.id);
        vmm::remove_pid_file(Path::new(&task.bundle));
        if let Some(group) = task.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take() {
            vmcgroup::remove(&group);
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status,
                exited_at: exited_at.clone(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    /// The VM's cgroup statistics as containerd's metrics message.
    fn stats_of(&self, req: &api::StatsRequest) -> Result<api::StatsResponse> {
        let task = self.task(&req.id, "")?;
        let group = task
            .cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| ShimError::NoCgroup(req.id.clone()))?;
        let stats = group.stats()?;
        let pids_limit = task.cgroup_plan.as_ref().and_then(|p| p.limits.pids_max);
        Ok(api::StatsResponse {
            stats: MessageField::some(metrics::to_any(&stats, pids_limit, group.version())),
            ..Default::default()
        })
    }

    /// New limits for a running task's cgroup (CRI's
    /// UpdateContainerResources). The guest's memory stays what it was at
    /// boot; only the group's limits change.
    fn update_task(&self, req: &api::UpdateTaskRequest) -> Result<api::Empty> {
        let task = self.task(&req.id, "")?;
        let group = task
            .cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| ShimError::NoCgroup(req.id.clone()))?;
        let Some(any) = req.resources.as_ref() else {
            return Ok(api::Empty::default());
        };
        let limits = resources::update_limits(&any.type_url, &any.value)?;
        group.set_limits(&limits)?;
        log::info!("update {}: {limits:?}", req.id);
        Ok(api::Empty::default())
    }

    fn shutdown_if_idle(&self) {
        if self.tasks().is_empty() {
            self.inner.exit.signal();
        }
    }
}

impl containerd_shim::Task for Service {
    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map_or(0, |t| t.lock().pid());
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        Ok(self.create_task(&req)?)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        Ok(self.start_task(&req)?)
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.state_of(&req)?)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        Ok(self.pids_of(&req)?)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        Ok(self.kill_task(&req)?)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        Ok(self.wait_task(&req)?)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.delete_task(&req)?)
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Ok(self.stats_of(&req)?)
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        Ok(self.update_task(&req)?)
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The guest reads end of input once the client has closed its end
        // of the stdin FIFO; nothing to do here.
        self.task(&req.id, &req.exec_id)?;
        log::debug!("close_io {} stdin {}", req.id, req.stdin);
        Ok(api::Empty::default())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.shutdown_if_idle();
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fake_tandem, tmp_dir, within};
    use containerd_shim::api::Status;
    use std::time::{Duration, Instant};

    /// An event published: its topic, and the exit status of an exit event.
    type Published = (String, Option<u32>);

    /// The events published.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<Published>>>);

    impl Events for Recorder {
        fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
            let exit = <dyn MessageDyn>::downcast_ref::<TaskExit>(&*event).map(|e| e.exit_status);
            self.0.lock().unwrap().push((topic.into(), exit));
        }
    }

    impl Recorder {
        fn topics(&self) -> Vec<Published> {
            self.0.lock().unwrap().clone()
        }

        /// Waits for the exit event (published after `wait` returns).
        fn exit_status(&self) -> Option<u32> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let exit = self
                    .topics()
                    .into_iter()
                    .find(|(t, _)| t == topics::TASK_EXIT_EVENT_TOPIC);
                if let Some((_, status)) = exit {
                    return status;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        }
    }

    fn fake() -> std::result::Result<PathBuf, VmmError> {
        Ok(fake_tandem().to_path_buf())
    }

    fn service_with(find_tandem: FindTandem) -> (Service, Recorder) {
        fake_tandem();
        let events = Recorder::default();
        let service = Service::with_tandem(
            Box::new(events.clone()),
            Arc::new(ExitSignal::default()),
            find_tandem,
        );
        (service, events)
    }

    /// A VM task whose fake VMM does what `cmdline` says (see
    /// `fake_tandem`), its stdout in `<bundle>/stdout`.
    fn vm_task(service: &Service, id: &str, cmdline: &str) -> PathBuf {
        let bundle = tmp_dir(&format!("service-{id}"));
        let stdout = bundle.join("stdout");
        std::fs::write(&stdout, b"").unwrap();
        let payload = Payload {
            elf: bundle.join("rootfs/app"),
            name: "/app".into(),
            cmdline: cmdline.into(),
            memory: None,
            snapshot: None,
            net: false,
        };
        let io = TaskIo {
            stdout: stdout.to_str().unwrap().into(),
            ..TaskIo::default()
        };
        let bundle_str = bundle.to_str().unwrap().to_string();
        service.insert(Task::new(
            id.into(),
            bundle_str,
            io,
            Some(payload),
            None,
            None,
        ));
        bundle
    }

    fn start(s: &Service, id: &str) -> Result<u32> {
        s.start_task(&api::StartRequest {
            id: id.into(),
            ..Default::default()
        })
        .map(|r| r.pid)
    }

    fn kill(s: &Service, id: &str, signal: u32) -> Result<api::Empty> {
        s.kill_task(&api::KillRequest {
            id: id.into(),
            signal,
            ..Default::default()
        })
    }

    fn wait(s: &Service, id: &str) -> u32 {
        let (s, id) = (s.clone(), id.to_string());
        within("wait", move || {
            s.wait_task(&api::WaitRequest {
                id,
                ..Default::default()
            })
            .unwrap()
            .exit_status
        })
    }

    fn state(s: &Service, id: &str) -> api::StateResponse {
        s.state_of(&api::StateRequest {
            id: id.into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn delete(s: &Service, id: &str) -> Result<api::DeleteResponse> {
        s.delete_task(&api::DeleteRequest {
            id: id.into(),
            ..Default::default()
        })
    }

    #[test]
    fn vm_runs_to_its_exit_code_on_the_task_streams() {
        let (s, events) = service_with(fake);
        let bundle = vm_task(&s, "exit3", "exit=3");
        assert_eq!(
            state(&s, "exit3").status,
            EnumOrUnknown::new(Status::CREATED)
        );
        let pid = start(&s, "exit3").unwrap();
        assert_ne!(pid, 0);
        assert_eq!(wait(&s, "exit3"), 3);
        let st = state(&s, "exit3");
        assert_eq!(
            (st.status, st.pid, st.exit_status),
            (EnumOrUnknown::new(Status::STOPPED), pid, 3)
        );
        assert!(st.exited_at.is_some());
        assert_eq!(events.exit_status(), Some(3));
        let out = std::fs::read_to_string(bundle.join("stdout")).unwrap();
        assert_eq!(
            out.trim(),
            format!(
                "run --quiet --cmdline=exit=3 -- {}",
                bundle.join("rootfs/app").display()
            )
        );
        let resp = delete(&s, "exit3").unwrap();
        assert_eq!((resp.pid, resp.exit_status), (pid, 3));
        assert!(!bundle.join("tandem.pid").exists());
        assert!(matches!(state_err(&s, "exit3"), ShimError::NotFound(_)));
        let topics: Vec<String> = events.topics().into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            topics,
            [
                topics::TASK_START_EVENT_TOPIC,
                topics::TASK_EXIT_EVENT_TOPIC,
                topics::TASK_DELETE_EVENT_TOPIC,
            ],
            "an app that exits at once is still heard to start first"
        );
    }

    fn state_err(s: &Service, id: &str) -> ShimError {
        s.state_of(&api::StateRequest {
            id: id.into(),
            ..Default::default()
        })
        .unwrap_err()
    }

    #[test]
    fn running_vm_is_listed_refuses_delete_and_start_and_ends_at_kill() {
        let (s, events) = service_with(fake);
        let bundle = vm_task(&s, "svc", "sleep");
        let pid = start(&s, "svc").unwrap();
        assert_eq!(state(&s, "svc").status, EnumOrUnknown::new(Status::RUNNING));
        let pids = s
            .pids_of(&api::PidsRequest {
                id: "svc".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            pids.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [pid]
        );
        assert_eq!(
            std::fs::read_to_string(bundle.join("tandem.pid")).unwrap(),
            pid.to_string()
        );
        assert!(matches!(
            start(&s, "svc"),
            Err(ShimError::AlreadyStarted(_))
        ));
        assert!(matches!(delete(&s, "svc"), Err(ShimError::Running(_))));
        assert!(matches!(kill(&s, "svc", 0), Err(ShimError::BadSignal(0))));
        kill(&s, "svc", 15).unwrap();
        assert_eq!(wait(&s, "svc"), 143);
        assert_eq!(events.exit_status(), Some(143));
        assert!(matches!(kill(&s, "svc", 15), Err(ShimError::Finished(_))));
        delete(&s, "svc").unwrap();
    }

    /// Holds the fake `find_tandem` of
    /// `kill_while_booting_reaches_the_vmm_once_it_exists` until released.
    struct Latch(Mutex<bool>, Condvar);

    impl Latch {
        const fn new() -> Self {
            Latch(Mutex::new(false), Condvar::new())
        }

        fn set(&self) {
            *self.0.lock().unwrap() = true;
            self.1.notify_all();
        }

        fn wait(&self) {
            let mut set = self.0.lock().unwrap();
            while !*set {
                set = self.1.wait(set).unwrap();
            }
        }
    }

    static BOOTING: Latch = Latch::new();
    static RELEASE: Latch = Latch::new();

    fn slow_fake() -> std::result::Result<PathBuf, VmmError> {
        BOOTING.set();
        RELEASE.wait();
        fake()
    }

    #[test]
    fn kill_while_booting_reaches_the_vmm_once_it_exists() {
        let (s, events) = service_with(slow_fake);
        vm_task(&s, "slow", "sleep");
        let starter = {
            let s = s.clone();
            std::thread::spawn(move || start(&s, "slow"))
        };
        BOOTING.wait();
        kill(&s, "slow", 9).unwrap();
        assert_eq!(
            state(&s, "slow").status,
            EnumOrUnknown::new(Status::CREATED)
        );
        RELEASE.set();
        let pid = starter.join().unwrap().unwrap();
        assert_ne!(pid, 0);
        assert_eq!(wait(&s, "slow"), 137);
        assert_eq!(events.exit_status(), Some(137));
    }

    fn no_tandem() -> std::result::Result<PathBuf, VmmError> {
        Err(VmmError::NoBinary)
    }

    #[test]
    fn failed_start_leaves_the_task_created_and_killable() {
        let (s, events) = service_with(no_tandem);
        vm_task(&s, "nobin", "exit=0");
        let err = start(&s, "nobin").unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::INTERNAL);
        assert!(
            err.to_string().starts_with("cannot find the tandem binary"),
            "{err}"
        );
        assert_eq!(
            state(&s, "nobin").status,
            EnumOrUnknown::new(Status::CREATED)
        );
        assert!(matches!(
            start(&s, "nobin"),
            Err(ShimError::Vmm(VmmError::NoBinary))
        ));
        kill(&s, "nobin", 15).unwrap();
        assert_eq!(wait(&s, "nobin"), 143);
        delete(&s, "nobin").unwrap();
        assert!(events
            .topics()
            .iter()
            .all(|(t, _)| t == topics::TASK_DELETE_EVENT_TOPIC));
    }

    #[test]
    fn pod_placeholder_is_created_runs_as_the_shim_and_ends_at_a_signal() {
        let (s, events) = service_with(no_tandem);
        let bundle = tmp_dir("service-pod");
        std::fs::write(
            bundle.join("config.json"),
            br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod-1","io.kubernetes.cri.container-type":"sandbox"}}"#,
        )
        .unwrap();
        let req = api::CreateTaskRequest {
            id: "pod-1".into(),
            bundle: bundle.to_str().unwrap().into(),
            ..Default::default()
        };
        s.create_task(&req).unwrap();
        assert!(matches!(
            s.create_task(&req),
            Err(ShimError::AlreadyExists(_))
        ));
        assert_eq!(start(&s, "pod-1").unwrap(), std::process::id());
        assert!(matches!(delete(&s, "pod-1"), Err(ShimError::Running(_))));
        kill(&s, "pod-1", 15).unwrap();
        assert_eq!(wait(&s, "pod-1"), 143);
        assert_eq!(events.exit_status(), Some(143));
        delete(&s, "pod-1").unwrap();
        assert!(s.tasks().is_empty());
    }

    #[test]
    fn a_networked_image_needs_a_namespace_and_no_snapshot() {
        let p = Payload {
            elf: "/b/rootfs/httpd".into(),
            name: "/httpd".into(),
            cmdline: String::new(),
            memory: None,
            snapshot: None,
            net: true,
        };
        let ns = Path::new("/var/run/netns/cni-1");
        assert!(check_network(&p, Some(ns)).is_ok());
        let e = check_network(&p, None).unwrap_err();
        assert!(matches!(e, ShimError::NoNetwork(_)), "{e}");
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(
            e.to_string()
                .starts_with("tandem: /httpd declares a network device"),
            "{e}"
        );
        let snap = Payload {
            snapshot: Some("web-ready".into()),
            ..p.clone()
        };
        assert!(matches!(
            check_network(&snap, Some(ns)),
            Err(ShimError::SnapshotNetwork(_))
        ));
        // No device declared: runs with or without a namespace.
        let plain = Payload { net: false, ..p };
        assert!(check_network(&plain, None).is_ok());
        assert!(check_network(&plain, Some(ns)).is_ok());
    }

    #[test]
    fn create_refuses_what_the_shim_cannot_run() {
        let (s, _) = service_with(no_tandem);
        let dir = tmp_dir("service-create");
        let req = |f: fn(&mut api::CreateTaskRequest)| {
            let mut r = api::CreateTaskRequest {
                id: "c".into(),
                bundle: dir.to_str().unwrap().into(),
                ..Default::default()
            };
            f(&mut r);
            r
        };
        assert!(matches!(
            s.create_task(&req(|r| r.terminal = true)),
            Err(ShimError::Terminal)
        ));
        assert!(matches!(
            s.create_task(&req(|r| r.checkpoint = "/cp".into())),
            Err(ShimError::Checkpoint)
        ));
        let err = s.create_task(&req(|_| {})).unwrap_err();
        assert!(err.to_string().starts_with("tandem: cannot read "), "{err}");
        assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(s.tasks().is_empty());
    }

    #[test]
    fn requests_name_a_task_and_no_exec() {
        let (s, _) = service_with(no_tandem);
        vm_task(&s, "t", "exit=0");
        assert!(matches!(state_err(&s, "other"), ShimError::NotFound(_)));
        let exec = s.start_task(&api::StartRequest {
            id: "t".into(),
            exec_id: "e1".into(),
            ..Default::default()
        });
        assert!(matches!(exec, Err(ShimError::ExecUnsupported)));
    }

    #[test]
    fn mounts_are_passed_to_the_bundle_reader() {
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/a:/b".into()],
            ..Default::default()
        };
        let r = root_mounts(&[m]);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].kind.as_str(), r[0].source.as_str()),
            ("overlay", "overlay")
        );
        assert_eq!(r[0].options, ["lowerdir=/a:/b"]);
    }
}
