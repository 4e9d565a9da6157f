//! The virtio-blk device and its disks: `request` decides what a request
//! asks (pure, fuzzed), `device` does it against the rings and the disk,
//! `disk` is the image file (checked, locked, flushed with fdatasync),
//! `spec` what an operator asks for (`--disk path=FILE[,ro][,rate=..]`),
//! `state` the device's part of a snapshot, `dirty` the blocks the guest
//! wrote since the last backup point, `copy` the disk's copy for a
//! snapshot or a restore (reflink, else its data), `error` every way a
//! guest can break the rules.

pub mod copy;
pub mod device;
pub mod dirty;
pub mod disk;
pub mod error;
pub mod request;
pub mod spec;
pub mod state;

pub use device::{BlkDevice, BlkStats};
pub use dirty::{DirtyBlocks, BLOCK_SIZE};
pub use disk::{DiskError, DiskFile};
pub use error::BlkError;
pub use spec::{DiskSpec, DiskSpecError};
pub use state::{BlkState, BlkStateError};

/// Most disks one VM may have.
pub const MAX_DISKS: usize = 4;

const _: () = {
    // Each disk is one boot-info entry beside the network device's two,
    // and one register window after the network device's.
    assert!(MAX_DISKS + 2 <= tandem_abi::bootinfo::MAX_DEVICES);
    assert!((MAX_DISKS as u64) < tandem_abi::layout::VIRTIO_MMIO_SLOTS);
};

#[cfg(test)]
mod device_tests;
