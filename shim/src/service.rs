//! The containerd task service: one Tandem VM per task, run as a
//! `tandem run` child process that dies with the shim.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, context::Context, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext};

use crate::bundle::{self, Payload, RootMount};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.tandem.v1";
/// Environment variable naming the `tandem` binary.
pub const TANDEM_BIN_ENV: &str = "TANDEM_BIN";
/// Environment variable naming the directory `tandem.dev/snapshot` names
/// a snapshot in.
pub const SNAPSHOT_DIR_ENV: &str = "TANDEM_SNAPSHOT_DIR";
/// The snapshot directory without `$TANDEM_SNAPSHOT_DIR`.
pub const DEFAULT_SNAPSHOT_DIR: &str = "/var/lib/tandem/snapshots";
/// File in the bundle holding the VMM's pid, for `delete` after a dead shim.
const PID_FILE: &str = "tandem.pid";

type TtrpcResult<T> = ttrpc::Result<T>;

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn now() -> MessageField<Timestamp> {
    MessageField::some(Timestamp::now())
}

/// Finds the `tandem` binary: `$TANDEM_BIN`, else next to the shim, else
/// `tandem` on `PATH`.
pub fn tandem_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(TANDEM_BIN_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!(
            "${TANDEM_BIN_ENV} = {} does not exist",
            p.display()
        ));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("tandem");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tandem");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "cannot find the tandem binary: set ${TANDEM_BIN_ENV}, or put tandem next to the shim or on PATH"
    ))
}

/// Where the snapshot named by a `tandem.dev/snapshot` annotation lives.
fn snapshot_path(name: &str) -> PathBuf {
    std::env::var_os(SNAPSHOT_DIR_ENV)
        .map_or_else(|| PathBuf::from(DEFAULT_SNAPSHOT_DIR), PathBuf::from)
        .join(name)
}

/// The shim process: its lifecycle hooks for containerd.
pub struct Shim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: String,
    /// containerd's socket (`-address`).
    address: String,
    /// The ttrpc socket this shim serves (`-socket`), when serving.
    socket: String,
}

/// Removes the shim's ttrpc socket file (containerd-shim 0.11 leaves it).
fn remove_socket(address: &str) {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if path.is_empty() {
        return;
    }
    use std::os::unix::fs::FileTypeExt;
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = fs::remove_file(path);
    }
}

/// Removes a shim socket only if no shim answers on it: the containers of
/// a pod share one shim, which outlives any one of them.
fn remove_stale_socket(address: &str) {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        remove_socket(address);
    }
}

impl containerd_shim::Shim for Shim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim per pod (the containers of a Kubernetes pod share the
        // shim of their sandbox), else one per container.
        let grouping = self.grouping();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// Called by containerd after a shim died: stop a VM it left behind.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = self.bundle_dir();
        let pid = kill_leftover(&bundle);
        // The dead shim's socket (containerd also calls this when one
        // container's connection to a pod's live shim closes).
        remove_stale_socket(&containerd_shim::socket_address(
            &self.address,
            &self.namespace,
            &self.grouping(),
        ));
        log::info!(
            "delete after dead shim: namespace {} id {} bundle {} vmm pid {pid:?}",
            self.namespace,
            self.id,
            bundle.display()
        );
        Ok(DeleteResponse {
            pid: pid.unwrap_or(0),
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: now(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        remove_socket(&self.socket);
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service {
            inner: Arc::new(Inner {
                tasks: Mutex::new(HashMap::new()),
                publisher,
                namespace: self.namespace.clone(),
                exit: self.exit.clone(),
            }),
        }
    }
}

impl Shim {
    /// The bundle: `-bundle`, else the working directory containerd gave.
    fn bundle_dir(&self) -> PathBuf {
        if self.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&self.bundle)
        }
    }

    /// Which shim serves this container: its pod's sandbox id, else its own.
    fn grouping(&self) -> String {
        match bundle::pod(&self.bundle_dir()) {
            Ok(bundle::Pod {
                sandbox_id: Some(id),
                ..
            }) => id,
            _ => self.id.clone(),
        }
    }
}

/// Kills the VMM named in the bundle's pid file if it is still a `tandem`
/// process, and removes the file. Returns the pid it found.
fn kill_leftover(bundle: &Path) -> Option<u32> {
    let file = bundle.join(PID_FILE);
    let text = fs::read_to_string(&file).ok()?;
    let _ = fs::remove_file(&file);
    let pid: i32 = text.trim().parse().ok().filter(|p| *p > 0)?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let is_tandem = exe
        .as_deref()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "tandem");
    if is_tandem {
        // SAFETY: kill(2) with a pid we checked is a tandem process; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    u32::try_from(pid).ok()
}

struct Proc {
    status: Status,
    pid: u32,
    exit_status: u32,
    exited_at: MessageField<Timestamp>,
    /// `start` is booting the VM (status still CREATED, no pid yet).
    starting: bool,
    /// A signal `kill` asked for while starting, sent once the VMM exists.
    pending_signal: Option<i32>,
}

struct Task {
    id: String,
    bundle: String,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    /// What to boot; `None` for a pod's placeholder, which boots nothing.
    payload: Option<Payload>,
    proc: Mutex<Proc>,
    exited: Condvar,
}

impl Task {
    fn lock(&self) -> MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    publisher: RemotePublisher,
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// The task service containerd talks to over ttrpc.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn task(&self, id: &str, exec_id: &str) -> TtrpcResult<Arc<Task>> {
        if !exec_id.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "exec is not supported: a Tandem VM runs one app",
            ));
        }
        self.tasks()
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("task {id} not found")))
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) =
            self.inner
                .publisher
                .publish(Context::default(), topic, &self.inner.namespace, event)
        {
            log::warn!("cannot publish {topic}: {e}");
        }
    }

    /// Boots the VM from a thread that lives as long as the VM does: the
    /// child's `PR_SET_PDEATHSIG` fires when the thread that forked it ends.
    fn spawn_vm(&self, task: Arc<Task>) -> TtrpcResult<u32> {
        if task.payload.is_none() {
            // A pod's placeholder: "runs" as the shim itself.
            let pid = std::process::id();
            let mut p = task.lock();
            p.status = Status::RUNNING;
            p.pid = pid;
            p.starting = false;
            return Ok(pid);
        }
        let (tx, rx) = mpsc::channel();
        let service = self.clone();
        std::thread::spawn(move || {
            let mut child = match vm_command(&task).and_then(|mut c| {
                c.spawn()
                    .map_err(|e| format!("cannot start the tandem VMM: {e}"))
            }) {
                Ok(c) => c,
                Err(e) => {
                    task.lock().starting = false;
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let pid = child.id();
            let _ = fs::write(Path::new(&task.bundle).join(PID_FILE), pid.to_string());
            {
                let mut p = task.lock();
                p.status = Status::RUNNING;
                p.pid = pid;
                p.starting = false;
                if let (Some(sig), Ok(raw)) = (p.pending_signal.take(), i32::try_from(pid)) {
                    // SAFETY: kill(2) on the child just spawned, not yet reaped.
                    unsafe { libc::kill(raw, sig) };
                }
            }
            let _ = tx.send(Ok(pid));
            let code = match child.wait() {
                Ok(st) => match (st.code(), st.signal()) {
                    (Some(c), _) => c as u32,
                    (None, Some(sig)) => 128 + sig as u32,
                    (None, None) => 255,
                },
                Err(e) => {
                    log::error!("waiting for the VMM failed: {e}");
                    255
                }
            };
            let _ = fs::remove_file(Path::new(&task.bundle).join(PID_FILE));
            let exited_at = now();
            {
                let mut p = task.lock();
                p.status = Status::STOPPED;
                p.exit_status = code;
                p.exited_at = exited_at.clone();
            }
            task.exited.notify_all();
            service.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: task.id.clone(),
                    id: task.id.clone(),
                    pid,
                    exit_status: code,
                    exited_at,
                    ..Default::default()
                }),
            );
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(pid)) => Ok(pid),
            Ok(Err(e)) => Err(status(Code::INTERNAL, e)),
            Err(_) => Err(status(Code::INTERNAL, "the VMM did not start within 30 s")),
        }
    }
}

/// Opens a container I/O FIFO (or file) for writing. `O_RDWR` on a FIFO
/// does not wait for the reader (ctr opens it when it attaches).
fn open_output(path: &str) -> Result<Stdio, String> {
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    Ok(Stdio::from(file))
}

/// Opens the container's stdin FIFO for the VMM to read, without waiting
/// for a writer (`O_NONBLOCK`, cleared once open). The VMM polls it: a FIFO
/// no writer has opened yet is not at its end, so the guest waits for the
/// client to attach, and reads end of input once every writer has closed.
fn open_input(task: &Task) -> Result<Stdio, String> {
    use std::os::fd::AsRawFd;
    let path = &task.stdin;
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open stdin {path}: {e}"))?;
    let fd = reader.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take no pointers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(Stdio::from(reader))
}

fn vm_command(task: &Task) -> Result<Command, String> {
    let payload = task
        .payload
        .as_ref()
        .ok_or("a pod placeholder boots no VM")?;
    let tandem = tandem_binary()?;
    let mut cmd = Command::new(tandem);
    if let Some(name) = &payload.snapshot {
        // The frozen VM carries its own memory and command line.
        cmd.arg("restore")
            .arg("--quiet")
            .arg("--")
            .arg(snapshot_path(name));
    } else {
        cmd.arg("run").arg("--quiet");
        if let Some(mem) = &payload.memory {
            cmd.arg(format!("--mem={mem}"));
        }
        cmd.arg(format!("--cmdline={}", payload.cmdline))
            .arg("--")
            .arg(&payload.elf);
    }
    cmd.current_dir(&task.bundle)
        .stdin(open_input(task)?)
        .stdout(open_output(&task.stdout)?)
        .stderr(open_output(&task.stderr)?);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The shim may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    Ok(cmd)
}

impl containerd_shim::Task for Service {
    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map_or(0, |t| t.lock().pid);
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
        if req.terminal {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "a terminal is not supported by the Tandem shim (drop -t)",
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "checkpoints are not supported by the Tandem shim",
            ));
        }
        if self.tasks().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("task {} already exists", req.id),
            ));
        }
        let mounts: Vec<RootMount> = req
            .rootfs
            .iter()
            .map(|m| RootMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let bad = |e: bundle::BundleError| status(Code::INVALID_ARGUMENT, format!("tandem: {e}"));
        let pod = bundle::pod(Path::new(&req.bundle)).map_err(bad)?;
        let payload = if pod.is_sandbox {
            log::info!("create {}: pod placeholder, no VM", req.id);
            None
        } else {
            let payload = bundle::load(Path::new(&req.bundle), &mounts).map_err(bad)?;
            if let Some(name) = &payload.snapshot {
                let dir = snapshot_path(name);
                if !dir.join("state").is_file() {
                    return Err(status(
                        Code::INVALID_ARGUMENT,
                        format!(
                            "tandem: no snapshot {name:?} at {} (snapshots are looked up in ${SNAPSHOT_DIR_ENV}, default {DEFAULT_SNAPSHOT_DIR})",
                            dir.display()
                        ),
                    ));
                }
            }
            log::info!(
                "create {}: {} ({}) cmdline {:?}",
                req.id,
                payload.name,
                payload.elf.display(),
                payload.cmdline
            );
            Some(payload)
        };
        let task = Arc::new(Task {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            payload,
            proc: Mutex::new(Proc {
                status: Status::CREATED,
                pid: 0,
                exit_status: 0,
                exited_at: MessageField::none(),
                starting: false,
                pending_signal: None,
            }),
            exited: Condvar::new(),
        });
        self.tasks().insert(req.id.clone(), task);
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

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        {
            let mut p = task.lock();
            if p.status != Status::CREATED || p.starting {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("task {} was already started", req.id),
                ));
            }
            p.starting = true;
        }
        let pid = self.spawn_vm(task)?;
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

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        let p = task.lock();
        Ok(api::StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.clone(),
            pid: p.pid,
            status: EnumOrUnknown::new(p.status),
            stdin: task.stdin.clone(),
            stdout: task.stdout.clone(),
            stderr: task.stderr.clone(),
            terminal: task.terminal,
            exit_status: p.exit_status,
            exited_at: p.exited_at.clone(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let task = self.task(&req.id, "")?;
        let pid = task.lock().pid;
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

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id, &req.exec_id)?;
        let sig = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, format!("bad signal {}", req.signal)))?;
        let mut p = task.lock();
        match p.status {
            Status::RUNNING if task.payload.is_none() => {
                // A pod placeholder ends at the first signal.
                p.status = Status::STOPPED;
                p.exit_status = 128 + sig as u32;
                p.exited_at = now();
                let exit = TaskExit {
                    container_id: task.id.clone(),
                    id: task.id.clone(),
                    pid: p.pid,
                    exit_status: p.exit_status,
                    exited_at: p.exited_at.clone(),
                    ..Default::default()
                };
                drop(p);
                task.exited.notify_all();
                self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(exit));
            }
            Status::RUNNING => {
                let pid = i32::try_from(p.pid).unwrap_or(0);
                if pid > 0 {
                    // SAFETY: kill(2) on our own child, which is not reaped
                    // while the status is RUNNING (the waiter sets STOPPED
                    // under this lock after reaping); no memory involved.
                    unsafe { libc::kill(pid, sig) };
                }
            }
            Status::CREATED if p.starting => {
                // Booting: the signal goes to the VMM as soon as it exists.
                p.pending_signal = Some(sig);
            }
            Status::CREATED => {
                // Never booted: it ends as if the signal had killed it.
                p.status = Status::STOPPED;
                p.exit_status = 128 + sig as u32;
                p.exited_at = now();
                drop(p);
                task.exited.notify_all();
            }
            _ => {
                return Err(status(
                    Code::NOT_FOUND,
                    format!("task {}: process already finished", req.id),
                ))
            }
        }
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        let mut p = task.lock();
        while p.status != Status::STOPPED {
            p = task.exited.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        Ok(api::WaitResponse {
            exit_status: p.exit_status,
            exited_at: p.exited_at.clone(),
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let task = self.task(&req.id, &req.exec_id)?;
        let (pid, exit_status, exited_at) = {
            let p = task.lock();
            if p.status == Status::RUNNING {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is running: kill it first", req.id),
                ));
            }
            (p.pid, p.exit_status, p.exited_at.clone())
        };
        self.tasks().remove(&req.id);
        let _ = fs::remove_file(Path::new(&task.bundle).join(PID_FILE));
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

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The guest reads end of input once the client has closed its end
        // of the stdin FIFO; nothing to do here.
        self.task(&req.id, &req.exec_id)?;
        log::debug!("close_io {} stdin {}", req.id, req.stdin);
        Ok(api::Empty::default())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.tasks().is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
