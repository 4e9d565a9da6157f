//! The worker process (`tandemd worker`): runs the VMs the daemon hands
//! it, each on a vCPU thread of its own, through the tandem library. It is
//! started in a process group of its own so it outlives the daemon (as
//! systemd's `KillMode=process` lets it), and it answers [`Request`]s on
//! its socket. A run's record stays until the daemon has read how it ended
//! and sends `forget`, so a daemon that was killed learns it after its
//! restart. When its socket file is removed (the state directory is gone)
//! the worker kills its VMs and exits.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::api::{ExitInfo, VmSpec};
use tandem::devices::{DiskSpec, NetSpec};
use tandem::{
    ConsoleSink, ExitStatus, Hypervisor, Image, RunReport, Snapshot, Vm, VmBuilder, VmConfig,
    VmEvent, VmHandle,
};

use crate::proto::{
    read_message, write_message, Answer, Phase, Request, RunId, RunStatus, RunSummary,
};

/// How often console output is appended to its file, ended runs are
/// marked so, and the worker looks whether its socket is still there.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One run the worker holds.
struct Run {
    handle: VmHandle,
    shared: Arc<Mutex<Shared>>,
}

/// What a run's threads update.
struct Shared {
    phase: Phase,
    exit: Option<ExitInfo>,
    summary: Option<RunSummary>,
    console: PathBuf,
    pending: Arc<Mutex<Vec<u8>>>,
    console_bytes: u64,
    forgotten: bool,
    /// How the run ended, set by its vCPU thread (whose seccomp filter
    /// allows no file I/O); the housekeeping thread appends the rest of the
    /// console, then makes it the run's end, in that order.
    finished: Option<(ExitInfo, Option<RunSummary>)>,
}

impl Shared {
    /// Appends what the guest printed since the last flush to its file.
    fn flush(&mut self) {
        let bytes = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        if bytes.is_empty() {
            return;
        }
        self.console_bytes += bytes.len() as u64;
        // On the VMM's I/O thread: a filtered vCPU thread opens no file
        // (tandem::seccomp), and a run's last flush is made on it.
        let console = &self.console;
        let written = tandem::io_thread::call(|| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(console)
                .and_then(|mut f| f.write_all(&bytes))
        })
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            log::warn!("console {}: {e}", self.console.display());
        }
    }
}

type Runs = Arc<Mutex<HashMap<RunId, Run>>>;

/// The worker's main loop: serves its socket until the socket is removed.
pub fn main(
    socket: &Path,
    allowed: &[PathBuf],
    uid_pool: Option<&tandem::jail::UidPool>,
) -> anyhow::Result<()> {
    let hv = Arc::new(Hypervisor::open()?);
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    // The jail, before any thread is started (Landlock binds this thread
    // and those it starts; the uid change is for every thread there is).
    let _jail = crate::jail::apply_in_worker(allowed, uid_pool)?;
    log::info!(
        "worker {} listening on {}",
        std::process::id(),
        socket.display()
    );
    let runs: Runs = Arc::default();
    {
        let runs = runs.clone();
        let socket = socket.to_path_buf();
        std::thread::spawn(move || housekeeping(&runs, &socket));
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let runs = runs.clone();
        let hv = hv.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(conn, &runs, &hv) {
                log::debug!("worker connection: {e}");
            }
        });
    }
    Ok(())
}

/// Flushes consoles; ends the worker when its socket is gone.
fn housekeeping(runs: &Runs, socket: &Path) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        if let Ok(mut runs) = runs.lock() {
            let mut gone = Vec::new();
            for (id, r) in runs.iter() {
                if let Ok(mut s) = r.shared.lock() {
                    s.flush();
                    if let Some((exit, summary)) = s.finished.take() {
                        s.exit = Some(exit);
                        s.summary = summary;
                        s.phase = Phase::Ended;
                    }
                    if s.forgotten && s.phase == Phase::Ended {
                        gone.push(id.clone());
                    }
                }
            }
            for id in gone {
                runs.remove(&id);
            }
        }
        if !socket.exists() {
            log::warn!(
                "worker socket {} is gone: killing this worker's VMs and exiting",
                socket.display()
            );
            if let Ok(runs) = runs.lock() {
                for r in runs.values() {
                    r.handle.kill();
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            std::process::exit(0);
        }
    }
}

fn serve(conn: UnixStream, runs: &Runs, hv: &Arc<Hypervisor>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req: Request = read_message(&conn)?;
    let answer = match handle(req, runs, hv) {
        Ok(a) => a,
        Err(error) => Answer::Error { error },
    };
    write_message(&conn, &answer)
}

fn lock(runs: &Runs) -> Result<std::sync::MutexGuard<'_, HashMap<RunId, Run>>, String> {
    runs.lock()
        .map_err(|_| "the worker's run table is poisoned".to_string())
}

fn handle(req: Request, runs: &Runs, hv: &Arc<Hypervisor>) -> Result<Answer, String> {
    match req {
        Request::Start {
            run,
            spec,
            vm_id,
            console,
        } => {
            let mut table = lock(runs)?;
            if table.contains_key(&run) {
                return Ok(Answer::Ok);
            }
            // A run of an older generation of the same VM is ended.
            for (id, r) in table.iter() {
                if id.name == run.name {
                    r.handle.kill();
                }
            }
            let pending = Arc::new(Mutex::new(Vec::new()));
            let shared = Arc::new(Mutex::new(Shared {
                phase: Phase::Booting,
                exit: None,
                summary: None,
                console,
                pending: pending.clone(),
                console_bytes: 0,
                forgotten: false,
                finished: None,
            }));
            let events = shared.clone();
            let handle = VmHandle::with_events(move |e| {
                if let Ok(mut s) = events.lock() {
                    s.phase = match (e, s.phase) {
                        (VmEvent::Ready, _) => Phase::Ready,
                        (VmEvent::Running, Phase::Booting) => Phase::Running,
                        (_, p) => p,
                    };
                }
            });
            let thread = {
                let handle = handle.clone();
                let hv = hv.clone();
                let shared = shared.clone();
                let run = run.clone();
                let name = format!("vm-{}", run.name);
                std::thread::Builder::new().name(name).spawn(move || {
                    let result = boot(&hv, &spec, vm_id, handle, pending);
                    let exit = exit_info(&result);
                    let summary = result.as_ref().ok().map(summary);
                    log::info!("{} (run {}): {}", run.name, run.generation, exit.reason);
                    if let Ok(mut s) = shared.lock() {
                        s.finished = Some((exit, summary));
                    }
                })
            };
            thread.map_err(|e| format!("cannot start a vCPU thread: {e}"))?;
            table.insert(run, Run { handle, shared });
            Ok(Answer::Ok)
        }
        Request::Stop { run, grace_ms } => {
            let table = lock(runs)?;
            let r = table.get(&run).ok_or_else(|| no_run(&run))?;
            r.handle.request_stop();
            let h = r.handle.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(grace_ms));
                h.kill();
            });
            Ok(Answer::Ok)
        }
        Request::Kill { run } => {
            let table = lock(runs)?;
            let r = table.get(&run).ok_or_else(|| no_run(&run))?;
            r.handle.kill();
            Ok(Answer::Ok)
        }
        Request::Forget { run } => {
            let mut table = lock(runs)?;
            let ended = match table.get(&run) {
                None => return Ok(Answer::Ok),
                Some(r) => {
                    let mut s = r.shared.lock().map_err(|_| "poisoned".to_string())?;
                    s.forgotten = true;
                    s.phase == Phase::Ended
                }
            };
            if ended {
                table.remove(&run);
            } else if let Some(r) = table.get(&run) {
                r.handle.kill();
            }
            Ok(Answer::Ok)
        }
        Request::Snapshot { run, dir } => {
            let rx = {
                let table = lock(runs)?;
                let r = table.get(&run).ok_or_else(|| no_run(&run))?;
                r.handle.request_snapshot(dir.clone())
            };
            match rx.recv_timeout(crate::proto::SNAPSHOT_TIMEOUT) {
                Ok(Ok(())) => Ok(Answer::Ok),
                Ok(Err(e)) => Err(format!("snapshot {}: {e}", dir.display())),
                Err(_) => Err(format!(
                    "snapshot {}: the run ended (or was asked again) before it was taken",
                    dir.display()
                )),
            }
        }
        Request::Status => {
            let table = lock(runs)?;
            let mut list = Vec::with_capacity(table.len());
            for (id, r) in table.iter() {
                let s = r.shared.lock().map_err(|_| "poisoned".to_string())?;
                if s.forgotten {
                    continue;
                }
                list.push(RunStatus {
                    run: id.clone(),
                    phase: s.phase,
                    exit: s.exit.clone(),
                    console_bytes: s.console_bytes,
                    summary: s.summary.clone(),
                });
            }
            Ok(Answer::Status {
                pid: std::process::id(),
                runs: list,
            })
        }
    }
}

fn no_run(run: &RunId) -> String {
    format!(
        "this worker holds no run {} of '{}'",
        run.generation, run.name
    )
}

/// Boots (or restores) one run and runs it to its end, on this thread.
fn boot(
    hv: &Hypervisor,
    spec: &VmSpec,
    vm_id: u64,
    handle: VmHandle,
    console: Arc<Mutex<Vec<u8>>>,
) -> Result<RunReport, String> {
    let start = tandem::trace::rdtsc();
    let net = spec
        .net
        .as_deref()
        .map(str::parse::<NetSpec>)
        .transpose()
        .map_err(|e| format!("net: {e}"))?;
    let disks = spec
        .disks
        .iter()
        .map(|d| {
            d.parse::<DiskSpec>()
                .map_err(|e| format!("disk '{d}': {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = VmConfig {
        mem_size: spec.memory,
        cmdline: spec.cmdline.clone(),
        console: ConsoleSink::Capture(console),
        vm_id,
        handle: Some(handle),
        snapshot_at_ready: spec.checkpoint.as_ref().map(PathBuf::from),
        net,
        disks,
        ..VmConfig::default()
    };
    let vm = match (&spec.snapshot, &spec.image) {
        (Some(dir), _) => {
            let snap =
                Snapshot::load(Path::new(dir)).map_err(|e| format!("snapshot {dir}: {e}"))?;
            Vm::restore_at(hv, &snap, config, start).map_err(|e| e.to_string())?
        }
        (None, Some(image)) => {
            let image =
                Image::from_file(Path::new(image)).map_err(|e| format!("image {image}: {e}"))?;
            VmBuilder::new(hv, &image)
                .config(config)
                .started_at(start)
                .build()
                .map_err(|e| e.to_string())?
        }
        (None, None) => return Err("neither an image nor a snapshot".into()),
    };
    // This thread only runs this VM from here on (see tandem::seccomp).
    tandem::seccomp::lock_down().map_err(|e| e.to_string())?;
    vm.run().map_err(|e| e.to_string())
}

/// How the API tells a run's end.
fn exit_info(result: &Result<RunReport, String>) -> ExitInfo {
    match result {
        Ok(r) => ExitInfo {
            code: Some(r.status.code()),
            failed: !matches!(
                r.status,
                ExitStatus::Exited(0) | ExitStatus::Stopped | ExitStatus::Snapshotted(_)
            ),
            reason: r.status.to_string(),
        },
        Err(e) => ExitInfo {
            code: None,
            failed: true,
            reason: e.clone(),
        },
    }
}

/// The numbers of a report `/metrics` keeps.
fn summary(r: &RunReport) -> RunSummary {
    RunSummary {
        outcome: tandem::metrics::runs::outcome(&r.status).to_string(),
        phases: r
            .trace
            .reached()
            .into_iter()
            .filter(|(p, _)| *p != tandem_abi::trace::Phase::VmmStart)
            .map(|(p, us)| (p.name().to_string(), us / 1e6))
            .collect(),
        exits: r.stats.exits,
        exits_before_main: r.stats.exits_before_main,
        console_bytes: r.stats.console_bytes,
        console_dropped: r.stats.console_dropped,
    }
}
