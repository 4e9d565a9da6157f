//! The daemon's state and operations: the VMs' records (mirrored in the
//! [`Store`] before anything is done about them), the workers, the event
//! log, and what each API operation does. [`Daemon::tick`] follows the
//! workers and carries out [`decide`](crate::decide)'s decisions.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem::api::{
    ApiError, CreateVm, Desired, EventKind, ExitInfo, Health, RestoreVm, SnapshotInfo, SnapshotVm,
    StopVm, VmInfo, VmState, WorkerRef, MAX_CONSOLE_ANSWER,
};

use crate::decide::{decide, Action, Seen};
use crate::events::Events;
use crate::metrics::Counters;
use crate::proto::{self, Answer, Phase, ProtoError, Request, RunId, RunStatus, RunSummary};
use crate::store::{Store, StoreError, VmRecord};
use crate::workers::Worker;

/// How long a stopped app gets by default before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Most VM runs one worker holds.
    pub vms_per_worker: usize,
    /// The workers' jail.
    pub jail: crate::jail::JailOptions,
}

/// What the lock guards.
#[derive(Default)]
struct Inner {
    vms: BTreeMap<String, VmRecord>,
    workers: BTreeMap<u32, Worker>,
    /// When a VM's policy restart is due.
    restart_at: HashMap<String, Instant>,
}

/// The daemon.
pub struct Daemon {
    opts: Options,
    store: Store,
    inner: Mutex<Inner>,
    events: Mutex<Events>,
    /// Per-VM counters for `/metrics`.
    pub counters: Mutex<Counters>,
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

impl Daemon {
    /// Opens the state directory: the database, and the workers and VMs an
    /// earlier daemon left (adopted on the first [`tick`](Self::tick)).
    pub fn open(opts: Options) -> anyhow::Result<Self> {
        std::fs::create_dir_all(opts.state_dir.join("vms"))?;
        std::fs::create_dir_all(opts.state_dir.join("workers"))?;
        opts.jail.prepare_dirs(&opts.state_dir)?;
        let store = Store::open(&opts.state_dir.join("state.redb"))?;
        let mut inner = Inner::default();
        for vm in store.vms()? {
            inner.vms.insert(vm.spec.name.clone(), vm);
        }
        for w in store.workers()? {
            inner
                .workers
                .insert(w.id, Worker::adopt(&opts.state_dir, w, &opts.jail));
        }
        let d = Self {
            opts,
            store,
            inner: Mutex::new(inner),
            events: Mutex::default(),
            counters: Mutex::default(),
        };
        d.adopt();
        Ok(d)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, vm: &str, kind: EventKind, detail: impl Into<String>) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(vm, kind, detail);
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says which runs of an earlier daemon are still there.
    fn adopt(&self) {
        let statuses = self.poll();
        let inner = self.lock();
        for vm in inner.vms.values().filter(|v| v.state.is_active()) {
            let Some(w) = vm.worker else { continue };
            let run = RunId {
                name: vm.spec.name.clone(),
                generation: vm.generation,
            };
            if let Some(Ok(runs)) = statuses.get(&w) {
                if runs.iter().any(|r| r.run == run) {
                    self.event(
                        &vm.spec.name,
                        EventKind::Adopted,
                        format!("run {} in worker {w}", vm.generation),
                    );
                }
            }
        }
    }

    fn console_path(&self, name: &str) -> PathBuf {
        self.opts
            .state_dir
            .join("vms")
            .join(name)
            .join("console.log")
    }

    fn info(&self, inner: &Inner, vm: &VmRecord) -> VmInfo {
        let worker = vm.worker.filter(|_| vm.state.is_active()).and_then(|id| {
            inner.workers.get(&id).map(|w| WorkerRef {
                id,
                pid: w.record.pid,
            })
        });
        VmInfo {
            name: vm.spec.name.clone(),
            state: vm.state,
            desired: vm.desired,
            spec: vm.spec.clone(),
            restarts: vm.restarts,
            generation: vm.generation,
            worker,
            last_exit: vm.last_exit.clone(),
            console_bytes: std::fs::metadata(self.console_path(&vm.spec.name))
                .map(|m| m.len())
                .unwrap_or(0),
        }
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Health {
        let inner = self.lock();
        Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vms: inner.vms.len(),
            workers: inner.workers.len(),
        }
    }

    /// `GET /v1/vms`.
    pub fn list(&self) -> Vec<VmInfo> {
        let inner = self.lock();
        inner.vms.values().map(|v| self.info(&inner, v)).collect()
    }

    /// `GET /v1/vms/NAME`.
    pub fn get(&self, name: &str) -> Result<VmInfo, ApiError> {
        let inner = self.lock();
        let vm = inner.vms.get(name).ok_or_else(|| ApiError::no_vm(name))?;
        Ok(self.info(&inner, vm))
    }

    /// `POST /v1/vms`.
    pub fn create(&self, req: CreateVm) -> Result<VmInfo, ApiError> {
        let spec = req.check()?;
        self.opts
            .jail
            .check_spec(&spec)
            .map_err(ApiError::bad_request)?;
        if let Some(image) = &spec.image {
            if !Path::new(image).is_file() {
                return Err(ApiError::bad_request(format!(
                    "image {image}: no such file"
                )));
            }
        }
        for dir in spec.snapshot.iter() {
            if !Path::new(dir).is_dir() {
                return Err(ApiError::bad_request(format!(
                    "snapshot {dir}: no such directory"
                )));
            }
        }
        let mut inner = self.lock();
        if inner.vms.contains_key(&spec.name) {
            return Err(ApiError::conflict(format!(
                "a VM named '{}' exists",
                spec.name
            )));
        }
        let name = spec.name.clone();
        let mut vm = VmRecord {
            spec,
            number: 0,
            desired: Desired::Stopped,
            state: VmState::Created,
            generation: 0,
            restarts: 0,
            worker: None,
            last_exit: None,
        };
        self.store.add_vm(&mut vm).map_err(store_err)?;
        let _ = std::fs::create_dir_all(self.opts.state_dir.join("vms").join(&name));
        inner.vms.insert(name.clone(), vm);
        self.event(&name, EventKind::Created, "");
        if req.start {
            self.start_locked(&mut inner, &name, false)?;
        }
        let vm = inner.vms.get(&name).ok_or_else(|| ApiError::no_vm(&name))?;
        Ok(self.info(&inner, vm))
    }

    /// `POST /v1/vms/NAME/start`.
    pub fn start(&self, name: &str) -> Result<VmInfo, ApiError> {
        let mut inner = self.lock();
        let vm = inner.vms.get(name).ok_or_else(|| ApiError::no_vm(name))?;
        if vm.state.is_active() {
            return Err(ApiError::conflict(
                format!("'{name}' is already {:?}", vm.state).to_lowercase(),
            ));
        }
        self.start_locked(&mut inner, name, false)?;
        let vm = inner.vms.get(name).ok_or_else(|| ApiError::no_vm(name))?;
        Ok(self.info(&inner, vm))
    }

    /// A worker with room for one more run (a new one if none has).
    fn place(&self, inner: &mut Inner) -> Result<u32, ApiError> {
        let mut load: BTreeMap<u32, usize> = inner.workers.keys().map(|&k| (k, 0)).collect();
        for vm in inner.vms.values().filter(|v| v.state.is_active()) {
            if let Some(n) = vm.worker.and_then(|w| load.get_mut(&w)) {
                *n += 1;
            }
        }
        if let Some((&id, _)) = load.iter().find(|(_, &n)| n < self.opts.vms_per_worker) {
            return Ok(id);
        }
        let id = inner.workers.keys().next_back().map_or(1, |k| k + 1);
        let w = Worker::spawn(&self.opts.state_dir, id, &self.opts.jail)
            .map_err(|e| ApiError::internal(format!("starting a worker: {e:#}")))?;
        self.store.put_worker(&w.record).map_err(store_err)?;
        inner.workers.insert(id, w);
        Ok(id)
    }

    /// Starts a new run of `name` (recorded first).
    fn start_locked(&self, inner: &mut Inner, name: &str, by_policy: bool) -> Result<(), ApiError> {
        let worker = self.place(inner)?;
        let vm = inner
            .vms
            .get_mut(name)
            .ok_or_else(|| ApiError::no_vm(name))?;
        vm.desired = Desired::Running;
        vm.generation += 1;
        if by_policy {
            vm.restarts += 1;
        }
        vm.worker = Some(worker);
        vm.state = VmState::Starting;
        self.store.put_vm(vm).map_err(store_err)?;
        let vm = vm.clone();
        inner.restart_at.remove(name);
        self.counters().started(name, vm.spec.snapshot.is_some());
        self.event(
            name,
            if by_policy {
                EventKind::Restarted
            } else {
                EventKind::Starting
            },
            format!("run {} in worker {worker}", vm.generation),
        );
        self.limit_workers(inner);
        self.send_start(inner, &vm)
    }

    /// Gives each worker's cgroup the memory of its active VMs plus the
    /// overhead (raised before a run is handed over, lowered once runs end).
    fn limit_workers(&self, inner: &mut Inner) {
        if self.opts.jail.cgroup_parent.is_none() {
            return;
        }
        let mut sums: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for vm in inner.vms.values().filter(|v| v.state.is_active()) {
            if let Some(w) = vm.worker {
                sums.entry(w).or_default().push(vm.spec.memory);
            }
        }
        for (id, w) in inner.workers.iter_mut() {
            let vms = sums.remove(id).unwrap_or_default();
            w.limit_memory(crate::jail::memory_max(vms, self.opts.jail.overhead));
        }
    }

    fn send_start(&self, inner: &mut Inner, vm: &VmRecord) -> Result<(), ApiError> {
        let Some(w) = vm.worker.and_then(|w| inner.workers.get(&w)) else {
            return Err(ApiError::internal("the VM's worker is gone"));
        };
        // A pool uid writes the console through the workers' group.
        let vm_dir = self.opts.state_dir.join("vms").join(&vm.spec.name);
        let _ = std::fs::create_dir_all(&vm_dir);
        self.opts
            .jail
            .share_dir(&vm_dir, true)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let req = Request::Start {
            run: RunId {
                name: vm.spec.name.clone(),
                generation: vm.generation,
            },
            spec: Box::new(vm.spec.clone()),
            vm_id: (vm.number << 32) | (vm.generation & 0xffff_ffff),
            console: self.console_path(&vm.spec.name),
        };
        proto::call(&w.socket, &req)
            .map(|_| ())
            .map_err(|e| ApiError::internal(format!("handing the run to its worker: {e}")))
    }

    /// A request about a VM's current run to its worker (nothing when it
    /// has none).
    fn tell(
        &self,
        inner: &Inner,
        vm: &VmRecord,
        req: impl FnOnce(RunId) -> Request,
    ) -> Result<(), ApiError> {
        if !vm.state.is_active() {
            return Ok(());
        }
        let Some(w) = vm.worker.and_then(|w| inner.workers.get(&w)) else {
            return Ok(());
        };
        let run = RunId {
            name: vm.spec.name.clone(),
            generation: vm.generation,
        };
        match proto::call(&w.socket, &req(run)) {
            Ok(_) | Err(ProtoError::Refused(_)) => Ok(()),
            // A lost worker is found by the next tick.
            Err(ProtoError::Gone { .. }) => Ok(()),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }

    /// `POST /v1/vms/NAME/stop` and `/kill`.
    pub fn stop(&self, name: &str, how: Option<StopVm>) -> Result<VmInfo, ApiError> {
        let grace = match how.as_ref().and_then(|h| h.grace.as_deref()) {
            Some(g) => tandem::units::parse_duration(g)
                .map_err(|e| ApiError::bad_request(format!("grace: {e}")))?,
            None => DEFAULT_GRACE,
        };
        let kill = how.is_none();
        let mut inner = self.lock();
        let vm = inner
            .vms
            .get_mut(name)
            .ok_or_else(|| ApiError::no_vm(name))?;
        vm.desired = Desired::Stopped;
        if vm.state.is_active() {
            vm.state = VmState::Stopping;
        }
        self.store.put_vm(vm).map_err(store_err)?;
        inner.restart_at.remove(name);
        let vm = inner.vms.get(name).ok_or_else(|| ApiError::no_vm(name))?;
        self.event(
            name,
            EventKind::Stopping,
            if kill { "kill" } else { "stop" },
        );
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        if kill {
            self.tell(&inner, vm, |run| Request::Kill { run })?;
        } else {
            self.tell(&inner, vm, |run| Request::Stop { run, grace_ms })?;
        }
        Ok(self.info(&inner, vm))
    }

    /// `DELETE /v1/vms/NAME`.
    pub fn delete(&self, name: &str) -> Result<VmInfo, ApiError> {
        let mut inner = self.lock();
        let vm = inner
            .vms
            .get(name)
            .ok_or_else(|| ApiError::no_vm(name))?
            .clone();
        self.tell(&inner, &vm, |run| Request::Forget { run })?;
        self.store.delete_vm(name).map_err(store_err)?;
        let info = self.info(&inner, &vm);
        inner.vms.remove(name);
        inner.restart_at.remove(name);
        let _ = std::fs::remove_dir_all(self.opts.state_dir.join("vms").join(name));
        self.event(name, EventKind::Deleted, "");
        Ok(info)
    }

    /// `POST /v1/vms/NAME/restore`.
    pub fn restore(&self, name: &str, req: RestoreVm) -> Result<VmInfo, ApiError> {
        if !req.snapshot.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "snapshot '{}': must be an absolute path",
                req.snapshot
            )));
        }
        if !Path::new(&req.snapshot).is_dir() {
            return Err(ApiError::bad_request(format!(
                "snapshot {}: no such directory",
                req.snapshot
            )));
        }
        self.opts
            .jail
            .check_path("snapshot", Path::new(&req.snapshot))
            .map_err(ApiError::bad_request)?;
        let mut inner = self.lock();
        let vm = inner
            .vms
            .get(name)
            .ok_or_else(|| ApiError::no_vm(name))?
            .clone();
        self.tell(&inner, &vm, |run| Request::Forget { run })?;
        if let Some(v) = inner.vms.get_mut(name) {
            v.spec.snapshot = Some(req.snapshot.clone());
            v.spec.image = None;
            v.state = VmState::Exited;
        }
        self.start_locked(&mut inner, name, false)?;
        let vm = inner.vms.get(name).ok_or_else(|| ApiError::no_vm(name))?;
        Ok(self.info(&inner, vm))
    }

    /// `GET /v1/vms/NAME/console`: the end of the console file.
    pub fn console(&self, name: &str) -> Result<Vec<u8>, ApiError> {
        if !self.lock().vms.contains_key(name) {
            return Err(ApiError::no_vm(name));
        }
        let path = self.console_path(name);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = len.saturating_sub(MAX_CONSOLE_ANSWER);
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(from))
            .and_then(|_| f.take(MAX_CONSOLE_ANSWER).read_to_end(&mut out))
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
        Ok(out)
    }

    /// `GET /v1/events`, `GET /v1/vms/NAME/events`.
    pub fn events(
        &self,
        vm: Option<&str>,
        since: u64,
    ) -> Result<Vec<tandem::api::Event>, ApiError> {
        if let Some(n) = vm {
            if !self.lock().vms.contains_key(n) {
                return Err(ApiError::no_vm(n));
            }
        }
        Ok(self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(since, vm))
    }

    /// `POST /v1/vms/NAME/snapshot`: the running VM's snapshot into
    /// `dir` (it runs on). The lock is not held while the worker writes.
    pub fn snapshot(&self, name: &str, req: SnapshotVm) -> Result<SnapshotInfo, ApiError> {
        if !req.dir.starts_with('/') || req.dir.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "dir '{}': must be an absolute path",
                req.dir
            )));
        }
        let (socket, run) = {
            let inner = self.lock();
            let vm = inner.vms.get(name).ok_or_else(|| ApiError::no_vm(name))?;
            if !matches!(vm.state, VmState::Running | VmState::Ready) {
                return Err(ApiError::conflict(format!(
                    "'{name}' is not running (a snapshot is of a running VM)"
                )));
            }
            let w = vm
                .worker
                .and_then(|w| inner.workers.get(&w))
                .ok_or_else(|| ApiError::conflict(format!("'{name}' has no worker")))?;
            let run = RunId {
                name: name.to_string(),
                generation: vm.generation,
            };
            (w.socket.clone(), run)
        };
        let dir = PathBuf::from(&req.dir);
        let t = Instant::now();
        match proto::call_within(
            &socket,
            &Request::Snapshot { run, dir },
            proto::SNAPSHOT_TIMEOUT,
        ) {
            Ok(_) => {
                self.counters().snapshot(name, true);
                self.event(
                    name,
                    EventKind::Snapshot,
                    format!("{} in {:.1} ms", req.dir, t.elapsed().as_secs_f64() * 1e3),
                );
                Ok(SnapshotInfo {
                    name: name.to_string(),
                    dir: req.dir,
                })
            }
            Err(ProtoError::Refused(why)) => {
                self.counters().snapshot(name, false);
                Err(ApiError::conflict(why))
            }
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }

    /// Asks every worker how its runs are: by worker, its runs, or the
    /// reason it is lost.
    fn poll(&self) -> BTreeMap<u32, Result<Vec<RunStatus>, String>> {
        let sockets: Vec<(u32, PathBuf, u32)> = self
            .lock()
            .workers
            .values()
            .map(|w| (w.record.id, w.socket.clone(), w.record.pid))
            .collect();
        let mut out = BTreeMap::new();
        for (id, socket, pid) in sockets {
            match proto::call(&socket, &Request::Status) {
                Ok(Answer::Status { runs, .. }) => {
                    out.insert(id, Ok(runs));
                }
                Ok(_) => {}
                Err(ProtoError::Gone { source, .. }) => {
                    out.insert(
                        id,
                        Err(format!("worker {id} (pid {pid}) is gone: {source}")),
                    );
                }
                Err(e) => {
                    // Busy or slow: asked again on the next tick, unless
                    // its process has ended.
                    let mut inner = self.lock();
                    if let Some(w) = inner.workers.get_mut(&id) {
                        if !w.alive() {
                            out.insert(id, Err(format!("worker {id} (pid {pid}) ended")));
                        } else {
                            log::warn!("worker {id}: {e}");
                        }
                    }
                }
            }
        }
        out
    }

    /// Follows the workers once: records what their runs did, decides per
    /// policy, restarts what is due.
    pub fn tick(&self) {
        let statuses = self.poll();
        let mut inner = self.lock();
        // Lost workers: their runs are lost.
        let lost: Vec<(u32, String)> = statuses
            .iter()
            .filter_map(|(id, s)| s.as_ref().err().map(|e| (*id, e.clone())))
            .collect();
        for (id, why) in &lost {
            log::warn!("{why}");
            if let Some(mut w) = inner.workers.remove(id) {
                w.end();
            }
            if let Err(e) = self.store.delete_worker(*id) {
                log::error!("{e}");
            }
        }
        let names: Vec<String> = inner.vms.keys().cloned().collect();
        let mut forget: Vec<(u32, RunId)> = Vec::new();
        // What the runs did is recorded in one commit for the tick, before
        // anything (a restart) is done about it.
        let mut changed: Vec<String> = Vec::new();
        for name in names {
            let Some(vm) = inner.vms.get(&name).cloned() else {
                continue;
            };
            if !vm.state.is_active() {
                continue;
            }
            let run = RunId {
                name: name.clone(),
                generation: vm.generation,
            };
            let seen = match vm.worker {
                None => Seen::Lost("its run has no worker".into()),
                Some(w) => match (statuses.get(&w), lost.iter().find(|(id, _)| *id == w)) {
                    (_, Some((_, why))) => Seen::Lost(why.clone()),
                    (Some(Ok(runs)), None) => match runs.iter().find(|r| r.run == run) {
                        Some(r) if r.phase == Phase::Ended => {
                            Seen::Ended(r.exit.clone().unwrap_or(ExitInfo {
                                code: None,
                                failed: true,
                                reason: "ended without a report".into(),
                            }))
                        }
                        Some(r) => Seen::Phase(r.phase),
                        None if vm.desired == Desired::Running => {
                            // Recorded, never handed over (the daemon was
                            // killed in between): hand it over now.
                            if let Err(e) = self.send_start(&mut inner, &vm) {
                                log::warn!("{name}: {e}");
                            }
                            continue;
                        }
                        None => Seen::Lost("its run is gone from its worker".into()),
                    },
                    // Not asked this tick (a worker just made) or slow.
                    _ => continue,
                },
            };
            let summary = match (vm.worker.and_then(|w| statuses.get(&w)), &seen) {
                (Some(Ok(runs)), Seen::Ended(_)) => runs
                    .iter()
                    .find(|r| r.run == run)
                    .and_then(|r| r.summary.clone()),
                _ => None,
            };
            let action = decide(vm.state, vm.desired, vm.spec.restart, vm.restarts, seen);
            let ended = !matches!(action, Action::None | Action::State(_));
            if self.carry_out(&mut inner, &name, action, summary) {
                changed.push(name.clone());
            }
            if ended {
                if let Some(w) = vm.worker {
                    forget.push((w, run));
                }
            }
        }
        if !changed.is_empty() {
            let records = changed.iter().filter_map(|n| inner.vms.get(n));
            if let Err(e) = self.store.put_vms(records) {
                log::error!("{e}");
            }
        }
        // Runs no record claims (deleted VMs, older generations).
        for (w, runs) in statuses
            .iter()
            .filter_map(|(w, s)| s.as_ref().ok().map(|r| (w, r)))
        {
            for r in runs {
                let current = inner.vms.get(&r.run.name).is_some_and(|v| {
                    v.generation == r.run.generation && v.worker == Some(*w) && v.state.is_active()
                });
                if !current {
                    forget.push((*w, r.run.clone()));
                }
            }
        }
        for (w, run) in forget {
            if let Some(w) = inner.workers.get(&w) {
                let _ = proto::call(&w.socket, &Request::Forget { run });
            }
        }
        // Restarts that are due.
        let now = Instant::now();
        let due: Vec<String> = inner
            .restart_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            inner.restart_at.remove(&name);
            let ok = inner
                .vms
                .get(&name)
                .is_some_and(|v| v.desired == Desired::Running && !v.state.is_active());
            if ok {
                if let Err(e) = self.start_locked(&mut inner, &name, true) {
                    log::error!("{name}: restart failed: {e}");
                    inner
                        .restart_at
                        .insert(name, now + crate::decide::MAX_BACKOFF);
                }
            }
        }
        self.limit_workers(&mut inner);
    }

    /// Carries out `action` on `name`'s record in memory; `true` when the
    /// record changed (the caller commits it).
    fn carry_out(
        &self,
        inner: &mut Inner,
        name: &str,
        action: Action,
        summary: Option<RunSummary>,
    ) -> bool {
        let Some(vm) = inner.vms.get_mut(name) else {
            return false;
        };
        let (state, exit, restart) = match action {
            Action::None => return false,
            Action::State(s) => {
                vm.state = s;
                let kind = match s {
                    VmState::Running => Some(EventKind::Running),
                    VmState::Ready => Some(EventKind::Ready),
                    _ => None,
                };
                if let Some(k) = kind {
                    self.event(name, k, format!("run {}", vm.generation));
                }
                return true;
            }
            Action::Rest(s, e) => (s, e, None),
            Action::Restart(s, e, after) => (s, e, Some(after)),
        };
        vm.state = state;
        vm.last_exit = Some(exit.clone());
        vm.worker = None;
        self.counters().ended(name, &exit, summary.as_ref());
        let kind = if state == VmState::Failed {
            EventKind::Failed
        } else {
            EventKind::Exited
        };
        let then = match restart {
            Some(d) => format!("; restarted in {d:?}"),
            None => String::new(),
        };
        self.event(name, kind, format!("{}{then}", exit.reason));
        if let Some(d) = restart {
            inner
                .restart_at
                .insert(name.to_string(), Instant::now() + d);
        }
        true
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.opts.state_dir
    }
}

impl Daemon {
    /// `GET /metrics`: the Prometheus page.
    pub fn metrics_page(&self) -> String {
        let (states, workers) = {
            let inner = self.lock();
            let mut n: BTreeMap<&'static str, usize> = BTreeMap::new();
            for vm in inner.vms.values() {
                *n.entry(state_name(vm.state)).or_default() += 1;
            }
            (n.into_iter().collect::<Vec<_>>(), inner.workers.len())
        };
        self.counters().render(&states, workers)
    }
}

/// A state's name, as the API spells it.
fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Created => "created",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Ready => "ready",
        VmState::Stopping => "stopping",
        VmState::Exited => "exited",
        VmState::Failed => "failed",
    }
}

impl Daemon {
    /// The state database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records an event about something other than a VM (a fleet).
    pub fn note(&self, who: &str, kind: EventKind, detail: String) {
        self.event(who, kind, detail);
    }
}
