//! The daemon's protocol with its workers: one JSON request per
//! connection to the worker's socket (`workers/N.sock` in the state
//! directory), one JSON answer, each a line. Both ends are this binary, but
//! a worker still checks what it is sent (bounded lines, typed fields).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem::api::{ExitInfo, VmSpec};

/// Longest line either side reads.
pub const MAX_LINE: u64 = 16 << 20;
/// How long the daemon waits for a worker's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a snapshot may take (its memory written and fsynced).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the daemon asks a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Start a run of a VM (boot its image, or restore its snapshot).
    Start {
        /// The VM's run: its name and generation.
        run: RunId,
        /// What it runs.
        spec: Box<VmSpec>,
        /// The VM id handed to the guest.
        vm_id: u64,
        /// Where its console is appended.
        console: PathBuf,
    },
    /// Ask the app to stop; kill it after `grace_ms`.
    Stop {
        /// The run.
        run: RunId,
        /// Milliseconds before the kill.
        grace_ms: u64,
    },
    /// End the run at once.
    Kill {
        /// The run.
        run: RunId,
    },
    /// Drop an ended run's record (a running one is killed first).
    Forget {
        /// The run.
        run: RunId,
    },
    /// Every run the worker holds.
    Status,
    /// Snapshot the run into `dir` (it runs on).
    Snapshot {
        /// The run.
        run: RunId,
        /// The snapshot directory.
        dir: PathBuf,
    },
}

/// A VM's run: the daemon counts a VM's runs (its generation), so an answer
/// about an old run is never taken for the current one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunId {
    /// The VM's name.
    pub name: String,
    /// Its run number.
    pub generation: u64,
}

/// Where a run is, in its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Building the VM.
    Booting,
    /// The vCPU runs.
    Running,
    /// The app called `ready()`.
    Ready,
    /// The run ended (see `exit`).
    Ended,
}

/// One run, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// Which run.
    pub run: RunId,
    /// Where it is.
    pub phase: Phase,
    /// How it ended (when `phase` is `ended`).
    pub exit: Option<ExitInfo>,
    /// Console bytes written so far.
    pub console_bytes: u64,
    /// What the ended run's report says (for `/metrics`).
    #[serde(default)]
    pub summary: Option<RunSummary>,
}

/// The numbers of an ended run's report the daemon's metrics keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunSummary {
    /// `tandem::metrics::runs::outcome` of its status.
    pub outcome: String,
    /// Boot phases reached, seconds from the start of its VMM work.
    pub phases: Vec<(String, f64)>,
    /// KVM exits.
    pub exits: u64,
    /// KVM exits before the app's main.
    pub exits_before_main: u64,
    /// Console bytes passed on.
    pub console_bytes: u64,
    /// Console bytes dropped (rate, limit).
    pub console_dropped: u64,
}

/// A worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// Done.
    Ok,
    /// The worker's runs.
    Status {
        /// Its process id.
        pid: u32,
        /// Its runs.
        runs: Vec<RunStatus>,
    },
    /// Refused or failed, and why.
    Error {
        /// Why.
        error: String,
    },
}

/// Why an exchange with a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The worker's socket refuses connections or is gone: the worker is.
    #[error("worker socket {}: {source}", path.display())]
    Gone {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange broke or timed out.
    #[error("worker socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line that does not decode.
    #[error("bad message: {0}")]
    Decode(#[from] serde_json::Error),
    /// The worker refused.
    #[error("the worker refused: {0}")]
    Refused(String),
}

/// Reads one line (at most [`MAX_LINE`]) and decodes it.
pub fn read_message<T: for<'de> Deserialize<'de>>(r: impl Read) -> Result<T, std::io::Error> {
    let mut line = Vec::new();
    BufReader::new(r.take(MAX_LINE)).read_until(b'\n', &mut line)?;
    serde_json::from_slice(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Encodes and writes one line.
pub fn write_message(mut w: impl Write, m: &impl Serialize) -> Result<(), std::io::Error> {
    let mut line = serde_json::to_vec(m)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Sends `req` to the worker at `socket` and reads its answer.
pub fn call(socket: &Path, req: &Request) -> Result<Answer, ProtoError> {
    call_within(socket, req, ANSWER_TIMEOUT)
}

/// [`call`], waiting up to `timeout` for the answer.
pub fn call_within(socket: &Path, req: &Request, timeout: Duration) -> Result<Answer, ProtoError> {
    let io = |source| ProtoError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let s = UnixStream::connect(socket).map_err(|source| match source.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => ProtoError::Gone {
            path: socket.to_path_buf(),
            source,
        },
        _ => io(source),
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    write_message(&s, req).map_err(io)?;
    let answer: Answer = read_message(&s).map_err(io)?;
    match answer {
        Answer::Error { error } => Err(ProtoError::Refused(error)),
        a => Ok(a),
    }
}
