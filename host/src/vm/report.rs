//! What a run tells its caller: how it ended, its counts, and what it wrote.

use std::path::PathBuf;
use std::time::Duration;

use crate::backup::BackupRecord;
use crate::devices::DeviceError;
use crate::hypercall::HypercallError;
use crate::snapshot::WriteStats;
use crate::trace::BootTrace;

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// The guest exited with this code.
    Exited(u8),
    /// The guest broke the hypercall protocol.
    ProtocolViolation(HypercallError),
    /// The guest broke the virtio rules of one of its devices (a bad ring
    /// index, descriptor or length): exit code `PROTOCOL` too.
    DeviceViolation(DeviceError),
    /// The guest crashed (triple fault, halt, unexpected exit).
    Crashed(String),
    /// The run exceeded its timeout.
    TimedOut(Duration),
    /// The VM was stopped after writing a snapshot (`exit_after_snapshot`).
    Snapshotted(PathBuf),
    /// A chunk of the snapshot's memory file did not match its digest when
    /// the guest first touched it (`--verify lazy`): the message names the
    /// chunk. The guest never saw its bytes.
    CorruptMemory(String),
    /// The VM was stopped from outside ([`VmHandle::kill`](crate::control::VmHandle::kill)).
    Stopped,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "guest exited with code {code}"),
            Self::ProtocolViolation(e) => write!(f, "guest broke the hypercall protocol: {e}"),
            Self::DeviceViolation(e) => write!(f, "guest broke the virtio protocol: {e}"),
            Self::Crashed(why) => write!(f, "guest crashed: {why}"),
            Self::TimedOut(d) => write!(f, "guest timed out after {d:?}"),
            Self::Snapshotted(dir) => {
                write!(f, "VM stopped after its snapshot to {}", dir.display())
            }
            Self::CorruptMemory(why) => write!(f, "snapshot memory refused: {why}"),
            Self::Stopped => write!(f, "VM stopped on request"),
        }
    }
}

/// Counts that do not depend on the machine's speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// VM exits during the run.
    pub exits: u64,
    /// VM exits before the app's `main`.
    pub exits_before_main: u64,
    /// Guest CPL0 entries (exceptions) during the run.
    pub cpl0_entries: u64,
    /// Guest CPL0 entries before the app's `main`.
    pub cpl0_entries_before_main: u64,
    /// Console bytes the guest wrote.
    pub console_bytes: u64,
    /// Console bytes the guest wrote that were dropped (over the console's
    /// rate or past its limit), in this run.
    pub console_dropped: u64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub status: ExitStatus,
    /// Its boot trace.
    pub trace: BootTrace,
    /// Its counts.
    pub stats: RunStats,
    /// Snapshots taken during the run.
    pub snapshots: Vec<SnapshotRecord>,
    /// Backup points taken during the run.
    pub backups: Vec<BackupRecord>,
}

/// What asked for a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotTrigger {
    /// The app called `ready()` (`snapshot_at_ready`).
    Ready,
    /// The app asked (`Request::Snapshot`).
    Guest,
    /// The process got `SIGUSR1`.
    Signal,
    /// Asked through the VM's handle ([`VmHandle::request_snapshot`](crate::VmHandle::request_snapshot)).
    Request,
}

/// One snapshot taken (or attempted) during a run.
#[derive(Debug, Clone)]
pub struct SnapshotRecord {
    /// What asked for it.
    pub trigger: SnapshotTrigger,
    /// Where it went.
    pub dir: PathBuf,
    /// What it cost, or why it failed.
    pub result: Result<WriteStats, String>,
}
