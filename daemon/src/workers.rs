//! The daemon's side of its worker processes: starting one (`tandemd
//! worker`, in a process group of its own so it outlives the daemon),
//! telling whether one is still there, and ending one that is lost.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::jail::JailOptions;
use crate::proto::{self, Answer, Request};
use crate::store::WorkerRecord;

/// How long a new worker gets to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A worker the daemon knows.
#[derive(Debug)]
pub struct Worker {
    /// Its record.
    pub record: WorkerRecord,
    /// Its socket.
    pub socket: PathBuf,
    /// The process, when this daemon started it (to reap it).
    pub child: Option<Child>,
    /// Its cgroup (with `--cgroup-parent`).
    pub cgroup: Option<tandem::cgroup::Cgroup>,
    /// The `memory.max` last written to it.
    pub memory_max: Option<u64>,
}

/// The socket of worker `id`.
pub fn socket_of(state_dir: &Path, id: u32) -> PathBuf {
    state_dir.join("workers").join(format!("{id}.sock"))
}

impl Worker {
    /// Starts worker `id` in its jail and waits until it answers.
    pub fn spawn(state_dir: &Path, id: u32, jail: &JailOptions) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let socket = socket_of(state_dir, id);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&socket);
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .arg0("tandemd")
            .arg("worker")
            .arg("--socket")
            .arg(&socket)
            .args(jail.worker_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own process group: a signal to the daemon's group (a
            // terminal's Ctrl-C, systemd's KillMode=process) spares it.
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        let mut w = Worker {
            record: WorkerRecord { id, pid },
            socket,
            child: Some(child),
            cgroup: None,
            memory_max: None,
        };
        // Into its cgroup at once, before it holds any VM's memory.
        match jail.enter_cgroup(id, pid) {
            Ok(group) => {
                w.memory_max = group.as_ref().map(|_| jail.overhead);
                w.cgroup = group;
            }
            Err(e) => {
                w.end();
                anyhow::bail!("worker {id}: {e}");
            }
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match proto::call(&w.socket, &Request::Status) {
                Ok(Answer::Status { .. }) => break,
                Ok(_) | Err(_) if Instant::now() < deadline && w.alive() => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => {
                    w.end();
                    anyhow::bail!("worker {id} did not start: {other:?}");
                }
            }
        }
        log::info!("worker {id} started (pid {pid})");
        Ok(w)
    }

    /// A worker of an earlier daemon, from its record.
    pub fn adopt(state_dir: &Path, record: WorkerRecord, jail: &JailOptions) -> Self {
        Worker {
            socket: socket_of(state_dir, record.id),
            cgroup: jail.open_cgroup(record.id),
            record,
            child: None,
            memory_max: None,
        }
    }

    /// Gives its cgroup `memory.max` = `bytes` (when it has one and the
    /// value changed). A lower limit the kernel cannot reach yet is tried
    /// again at the next call.
    pub fn limit_memory(&mut self, bytes: u64) {
        let Some(group) = &self.cgroup else { return };
        if self.memory_max == Some(bytes) {
            return;
        }
        let limits = tandem::cgroup::Limits {
            memory_max: Some(bytes),
            ..tandem::cgroup::Limits::default()
        };
        match group.set_limits(&limits) {
            Ok(()) => self.memory_max = Some(bytes),
            Err(e) => log::warn!("worker {}: memory.max {bytes}: {e}", self.record.id),
        }
    }

    /// Whether its process is still there (reaping it if it is this
    /// daemon's child).
    pub fn alive(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            return matches!(c.try_wait(), Ok(None));
        }
        is_worker_process(self.record.pid)
    }

    /// Ends the process for good (a worker that stopped answering must not
    /// run its VMs on beside their restarts).
    pub fn end(&mut self) {
        if self.alive() {
            if let Ok(pid) = i32::try_from(self.record.pid) {
                // SAFETY: kill has no memory effects; the pid is checked
                // to be a tandemd worker (or is this daemon's child).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(group) = self.cgroup.take() {
            if let Err(e) = group.remove() {
                log::warn!("worker {} cgroup {}: {e}", self.record.id, group.path());
            }
        }
    }
}

/// Whether `pid` is a live `tandemd worker` process (not a zombie, not a
/// process that took a dead worker's pid).
fn is_worker_process(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    let mut args = cmdline.split(|&b| b == 0);
    let is_tandemd = args.next().is_some_and(|a| a.ends_with(b"tandemd"));
    !zombie && is_tandemd && args.next() == Some(b"worker")
}
