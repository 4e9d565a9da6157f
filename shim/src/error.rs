//! Why the shim refuses a request, and the ttrpc status containerd (and
//! so `ctr` or kubelet) sees for it.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};

use crate::bundle::BundleError;
use crate::podnet::PodNetError;
use crate::task::Refusal;
use crate::vmm::{VmmError, DEFAULT_SNAPSHOT_DIR, SNAPSHOT_DIR_ENV};

/// Everything a task request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A request names an exec process.
    #[error("exec is not supported: a Tandem VM runs one app")]
    ExecUnsupported,
    /// No task has this id.
    #[error("task {0} not found")]
    NotFound(String),
    /// `create` with the id of a task that exists.
    #[error("task {0} already exists")]
    AlreadyExists(String),
    /// `create` asked for a terminal.
    #[error("a terminal is not supported by the Tandem shim (drop -t)")]
    Terminal,
    /// `create` asked to restore a checkpoint.
    #[error("checkpoints are not supported by the Tandem shim")]
    Checkpoint,
    /// The bundle cannot be run.
    #[error("tandem: {0}")]
    Bundle(#[from] BundleError),
    /// The `tandem.dev/snapshot` annotation names no snapshot.
    #[error(
        "tandem: no snapshot {name:?} at {} (snapshots are looked up in ${SNAPSHOT_DIR_ENV}, default {DEFAULT_SNAPSHOT_DIR})",
        .dir.display()
    )]
    NoSnapshot {
        /// The annotation's value.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// `start` of a task started before.
    #[error("task {0} was already started")]
    AlreadyStarted(String),
    /// `kill` of a task that has ended.
    #[error("task {0}: process already finished")]
    Finished(String),
    /// `delete` of a running task.
    #[error("task {0} is running: kill it first")]
    Running(String),
    /// `kill` with a number that is no signal.
    #[error("bad signal {0}")]
    BadSignal(u32),
    /// The VMM cannot be started.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// An image with a network device and no pod network for it.
    #[error("tandem: {0} declares a network device, which the Tandem shim gives only to a container in a network namespace of its own (a CRI pod's, or `ctr run --with-ns network:PATH`)")]
    NoNetwork(String),
    /// An image with a network device started from a snapshot in a pod.
    #[error("tandem: {0} declares a network device: the pod network cannot be given to a VM restored from tandem.dev/snapshot yet")]
    SnapshotNetwork(String),
    /// The VM cannot be put on its pod's network.
    #[error("tandem: {0}")]
    PodNet(#[from] PodNetError),
    /// The VM's cgroup cannot be made, limited or read.
    #[error("tandem: {0}")]
    Cgroup(#[from] tandem::cgroup::CgroupError),
    /// `Stats` of a task without a cgroup (its spec names none, or the VM
    /// has not started).
    #[error(
        "task {0} has no cgroup to report statistics of (no linux.cgroupsPath, or not started)"
    )]
    NoCgroup(String),
}

/// The shim's result.
pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    /// Task `id`'s state refused a request.
    pub fn refused(id: &str, why: Refusal) -> Self {
        let id = id.to_string();
        match why {
            Refusal::AlreadyStarted => ShimError::AlreadyStarted(id),
            Refusal::Finished => ShimError::Finished(id),
            Refusal::Running => ShimError::Running(id),
        }
    }

    /// The ttrpc status code containerd gets.
    pub fn code(&self) -> Code {
        match self {
            ShimError::ExecUnsupported | ShimError::Checkpoint => Code::UNIMPLEMENTED,
            ShimError::NotFound(_) | ShimError::Finished(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::Terminal
            | ShimError::Bundle(_)
            | ShimError::NoSnapshot { .. }
            | ShimError::BadSignal(_) => Code::INVALID_ARGUMENT,
            ShimError::AlreadyStarted(_) | ShimError::Running(_) => Code::FAILED_PRECONDITION,
            ShimError::NoNetwork(_) | ShimError::SnapshotNetwork(_) => Code::INVALID_ARGUMENT,
            ShimError::PodNet(PodNetError::Taken { .. }) => Code::FAILED_PRECONDITION,
            ShimError::NoCgroup(_) => Code::NOT_FOUND,
            ShimError::Vmm(_) | ShimError::PodNet(_) | ShimError::Cgroup(_) => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn each_error_reaches_containerd_with_its_code_and_message() {
        let cases = [
            (
                ShimError::ExecUnsupported,
                Code::UNIMPLEMENTED,
                "exec is not supported: a Tandem VM runs one app",
            ),
            (
                ShimError::NotFound("t1".into()),
                Code::NOT_FOUND,
                "task t1 not found",
            ),
            (
                ShimError::AlreadyExists("t1".into()),
                Code::ALREADY_EXISTS,
                "task t1 already exists",
            ),
            (
                ShimError::Terminal,
                Code::INVALID_ARGUMENT,
                "a terminal is not supported by the Tandem shim (drop -t)",
            ),
            (
                ShimError::Checkpoint,
                Code::UNIMPLEMENTED,
                "checkpoints are not supported by the Tandem shim",
            ),
            (
                ShimError::Bundle(BundleError::NoArgs),
                Code::INVALID_ARGUMENT,
                "tandem: the OCI config has no process.args: nothing to boot (set the image's Entrypoint to the app's ELF)",
            ),
            (
                ShimError::NoSnapshot {
                    name: "missing".into(),
                    dir: "/snaps/missing".into(),
                },
                Code::INVALID_ARGUMENT,
                "tandem: no snapshot \"missing\" at /snaps/missing (snapshots are looked up in $TANDEM_SNAPSHOT_DIR, default /var/lib/tandem/snapshots)",
            ),
            (
                ShimError::refused("t1", Refusal::AlreadyStarted),
                Code::FAILED_PRECONDITION,
                "task t1 was already started",
            ),
            (
                ShimError::refused("t1", Refusal::Finished),
                Code::NOT_FOUND,
                "task t1: process already finished",
            ),
            (
                ShimError::refused("t1", Refusal::Running),
                Code::FAILED_PRECONDITION,
                "task t1 is running: kill it first",
            ),
            (
                ShimError::BadSignal(99),
                Code::INVALID_ARGUMENT,
                "bad signal 99",
            ),
            (
                ShimError::Vmm(VmmError::StartTimeout),
                Code::INTERNAL,
                "the VMM did not start within 30 s",
            ),
            (
                ShimError::Vmm(VmmError::NoBinary),
                Code::INTERNAL,
                "cannot find the tandem binary: set $TANDEM_BIN, or put tandem next to the shim or on PATH",
            ),
        ];
        for (err, code, msg) in cases {
            assert_eq!(status(err), (code, msg.to_string()));
        }
    }
}
