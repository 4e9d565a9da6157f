//! A disk's part of a snapshot ([`BlkState`]): what the driver wrote into
//! the transport's registers, where the device was in its queue, and which
//! file in the snapshot directory holds the disk as it was at that instant
//! (a reflink or a copy, [`copy`](super::copy)). Requests in flight are
//! none: the device serves every request on the exit that announces it,
//! and a request a rate limit held is still in the available ring, taken
//! again after the restore.
//!
//! Read back from a state file it is hostile input: [`BlkState::check`]
//! refuses what the device could not have been in, before any of it
//! reaches a device.

use serde::{Deserialize, Serialize};
use tandem_abi::layout;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

use super::device::{check_queue, features, REQUEST_QUEUE};
use super::BlkError;
use crate::devices::mmio::TransportState;
use crate::devices::net_state::QueuePosition;

/// Every status bit a driver may set.
const STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_NEEDS_RESET
    | VIRTIO_CONFIG_S_FAILED;

/// One disk of a snapshotted VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkState {
    /// The transport's registers.
    pub transport: TransportState,
    /// The device's position in its queue.
    pub position: QueuePosition,
    /// The disk's copy, in the snapshot directory ([`valid_disk_name`]).
    pub file: String,
    /// Its size in sectors.
    pub sectors: u64,
    /// Whether the VM had it read-only.
    pub read_only: bool,
}

/// Why a snapshot's disk state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlkStateError {
    /// A VM with a disk is at most this large.
    #[error("a VM with a disk has at most {max} MiB of memory, the snapshot's has {found} MiB", max = layout::VIRTIO_MMIO_BASE >> 20, found = .0 >> 20)]
    MemorySize(u64),
    /// Not one queue.
    #[error("disk registers for {0} queues, the device has 1")]
    QueueCount(usize),
    /// A status bit no driver sets.
    #[error("disk device status {0:#x} has bits no driver sets")]
    Status(u32),
    /// Features the device never offered.
    #[error("disk driver features {found:#x} are not a subset of the offered {offered:#x} with VERSION_1")]
    Features {
        /// Features in the state.
        found: u64,
        /// Features the device offers.
        offered: u64,
    },
    /// A ready queue the device would have refused.
    #[error(transparent)]
    Queue(#[from] BlkError),
    /// Positions impossible for the queue.
    #[error("disk queue positions avail {next_avail}, used {next_used} are impossible for a queue of {size} entries")]
    Position {
        /// Its next available entry.
        next_avail: u16,
        /// Its next used entry.
        next_used: u16,
        /// Its size (0: not ready).
        size: u16,
    },
    /// The used index in guest memory is not where the device was.
    #[error(
        "disk queue: the used ring's index in guest memory is {memory}, the device's is {device}"
    )]
    UsedIndex {
        /// The index in guest memory.
        memory: u16,
        /// The index in the state.
        device: u16,
    },
    /// A file name this format does not write.
    #[error("disk file name {0:?} is not one a snapshot writes")]
    FileName(String),
    /// The disk file is not the size the state says.
    #[error("the disk has {found} sectors, the snapshot's {expected}")]
    Size {
        /// Sectors of the file.
        found: u64,
        /// Sectors in the state.
        expected: u64,
    },
}

/// Whether `name` is a disk file name a snapshot writes: `disk-`, the
/// disk's index (one digit), `-` and 16 lowercase hex digits, so a state
/// file cannot point outside its directory.
pub fn valid_disk_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("disk-") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 18
        && b[0].is_ascii_digit()
        && b[1] == b'-'
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

impl BlkState {
    /// Checks every value against what the device of a VM of `mem_size`
    /// bytes may have been in.
    pub fn check(&self, mem_size: u64) -> Result<(), BlkStateError> {
        if mem_size > layout::VIRTIO_MMIO_BASE {
            return Err(BlkStateError::MemorySize(mem_size));
        }
        if !valid_disk_name(&self.file) {
            return Err(BlkStateError::FileName(self.file.clone()));
        }
        let t = &self.transport;
        if t.queues.len() != 1 {
            return Err(BlkStateError::QueueCount(t.queues.len()));
        }
        if t.status & !STATUS_BITS != 0 {
            return Err(BlkStateError::Status(t.status));
        }
        let offered = features(self.read_only) | 1 << VIRTIO_F_VERSION_1;
        let needs_version = t.status & VIRTIO_CONFIG_S_FEATURES_OK != 0;
        if t.driver_features & !offered != 0
            || (needs_version && t.driver_features & 1 << VIRTIO_F_VERSION_1 == 0)
        {
            return Err(BlkStateError::Features {
                found: t.driver_features,
                offered,
            });
        }
        let regs = &t.queues[0];
        let pos = self.position;
        if regs.ready {
            check_queue(REQUEST_QUEUE, regs, (layout::HEAP_ADDR, mem_size))?;
        }
        let possible = if regs.ready {
            pos.next_avail.wrapping_sub(pos.next_used) <= regs.size
        } else {
            pos == QueuePosition::default()
        };
        if !possible {
            return Err(BlkStateError::Position {
                next_avail: pos.next_avail,
                next_used: pos.next_used,
                size: if regs.ready { regs.size } else { 0 },
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::mmio::QueueRegs;

    fn sample() -> BlkState {
        BlkState {
            transport: TransportState {
                device_features_sel: 0,
                driver_features_sel: 1,
                driver_features: 1 << 32 | 1 << 9,
                status: 0xf,
                queue_sel: 0,
                queues: vec![QueueRegs {
                    size: 64,
                    ready: true,
                    desc: layout::HEAP_ADDR,
                    avail: layout::HEAP_ADDR + 0x1000,
                    used: layout::HEAP_ADDR + 0x2000,
                }],
            },
            position: QueuePosition {
                next_avail: 7,
                next_used: 7,
            },
            file: "disk-0-0123456789abcdef".into(),
            sectors: 2048,
            read_only: false,
        }
    }

    #[test]
    fn a_live_device_state_passes() {
        assert_eq!(sample().check(64 << 20), Ok(()));
        assert!(valid_disk_name("disk-3-ffffffffffffffff"));
        for bad in [
            "disk-0-../../etc",
            "disk-10-0123456789abcdef",
            "memory-0123456789abcdef",
            "disk-0-0123456789ABCDEF",
        ] {
            assert!(!valid_disk_name(bad), "{bad}");
        }
    }

    #[test]
    fn impossible_states_are_refused_by_name() {
        let mut s = sample();
        s.file = "../disk".into();
        assert!(matches!(s.check(64 << 20), Err(BlkStateError::FileName(_))));
        let mut s = sample();
        s.transport.status |= 0x200;
        assert!(matches!(s.check(64 << 20), Err(BlkStateError::Status(_))));
        let mut s = sample();
        s.transport.driver_features |= 1 << 5; // RO, not offered for a writable disk
        assert!(matches!(
            s.check(64 << 20),
            Err(BlkStateError::Features { .. })
        ));
        let mut s = sample();
        s.transport.queues[0].used = 0x1000;
        assert!(matches!(s.check(64 << 20), Err(BlkStateError::Queue(_))));
        let mut s = sample();
        s.position.next_avail = 200;
        assert!(matches!(
            s.check(64 << 20),
            Err(BlkStateError::Position { .. })
        ));
        let mut s = sample();
        s.transport.queues.clear();
        assert_eq!(s.check(64 << 20), Err(BlkStateError::QueueCount(0)));
        assert!(matches!(
            sample().check(8 << 30),
            Err(BlkStateError::MemorySize(_))
        ));
    }
}
