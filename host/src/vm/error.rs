//! Why a VM could not be set up or run.

use crate::arch::ArchError;
use crate::backup::BackupError;
use crate::coredump::CoreError;
use crate::devices::tap::TapError;
use crate::devices::DeviceMismatch;
use crate::kvm::KvmError;
use crate::memory::MemoryError;
use crate::snapshot::SnapshotError;

/// Why a VM could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM refused something.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The CPU structures could not be written.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// The configuration is not valid.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest memory refused a write during setup.
    #[error("cannot write guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// A snapshot could not be taken or restored.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A backup point could not be taken.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The run's devices are not the ones its image declares.
    #[error(transparent)]
    Devices(#[from] DeviceMismatch),
    /// The network device's tap could not be attached.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A core file could not be written.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A disk image was refused or could not be opened.
    #[error(transparent)]
    Disk(#[from] crate::devices::blk::DiskError),
    /// A disk could not be copied for a snapshot or a restore.
    #[error(transparent)]
    DiskCopy(#[from] crate::devices::blk::copy::CopyError),
    /// A snapshot's disk state could not be taken on.
    #[error("restoring a disk: {0}")]
    DiskState(#[from] crate::devices::blk::BlkStateError),
}

/// Wraps a failed ioctl, named `what`, as a [`VmError`].
pub(super) fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm(KvmError::Ioctl { what, source })
}
