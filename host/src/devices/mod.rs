//! The Tandem VMM's devices: virtio over virtio-mmio (DESIGN.md, "Devices
//! and I/O"). `mmio` is the transport's register file (pure: no memory, no
//! I/O), `net` the virtio-net device that moves frames between its queues
//! and a tap (its snapshot state in `net_state`), `tap` the one host
//! resource it holds (attached, or made when the process may), `netif` the
//! host interfaces around it (up, address, bridge, the capability probe),
//! `spec` what an operator asks for (`--net tap=NAME,...`), `clones` which
//! device each restored clone gets, `manifest` the rule that a VM gets
//! exactly the devices its image declares, `rate_limiter` the token
//! buckets (bytes and operations a second) any device may use, `blk` the
//! virtio-blk device and its disks (`--disk path=FILE,...`).
//!
//! Nothing interrupts the guest: it polls its rings at CPL3, kicks with one
//! notify write per batch, and waits in the Idle hypercall, which a
//! readable tap ends early. Every ring index, descriptor and length is
//! hostile input: a violation ends that VM with a [`DeviceError`].

pub mod blk;
pub mod clones;
pub mod manifest;
pub mod mmio;
pub mod net;
pub mod net_state;
pub mod netif;
pub mod rate_limiter;
pub mod spec;
pub mod tap;

pub use blk::{BlkDevice, BlkError, DiskSpec};
pub use manifest::DeviceMismatch;
pub use net::NetDevice;
pub use net_state::{NetState, NetStateError};
pub use spec::{NetSpec, NetSpecError};

/// How a guest broke the virtio rules: the VM is stopped.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// A queue was made ready with a size that is not a power of two up to
    /// the maximum.
    #[error("virtio-net queue {queue}: size {size} is not a power of two up to {max}")]
    QueueSize {
        /// The queue.
        queue: u16,
        /// The size the driver wrote.
        size: u16,
        /// The largest the device offers.
        max: u16,
    },
    /// A ring (descriptor table, available or used ring) lies outside the
    /// memory the app owns.
    #[error("virtio-net queue {queue}: {what} at {addr:#x} (+{len} bytes) lies outside the app's memory")]
    RingOutside {
        /// The queue.
        queue: u16,
        /// Which ring.
        what: &'static str,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// The available index is further ahead than the queue has entries.
    #[error("virtio-net queue {queue}: available index {avail} is {ahead} entries ahead, past the queue size {size}")]
    AvailIndex {
        /// The queue.
        queue: u16,
        /// The index the driver published.
        avail: u16,
        /// How far ahead of the device it is.
        ahead: u16,
        /// The queue size.
        size: u16,
    },
    /// A chain's head names no descriptor of the table.
    #[error("virtio-net queue {queue}: descriptor index {index} is past the queue size {size}")]
    DescriptorIndex {
        /// The queue.
        queue: u16,
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// A chain goes on past the table (a bad `next`), loops, or is longer
    /// than a frame needs.
    #[error("virtio-net queue {queue}: descriptor chain from {head} is broken (a next index past the table, a loop, or more than {max} descriptors)")]
    Chain {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
        /// The longest chain accepted.
        max: usize,
    },
    /// A buffer lies outside the memory the app owns.
    #[error("virtio-net queue {queue}: buffer at {addr:#x} (+{len} bytes) lies outside the app's memory")]
    BufferOutside {
        /// The queue.
        queue: u16,
        /// The buffer's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A chain is longer (in bytes) than a frame can be.
    #[error(
        "virtio-net queue {queue}: descriptor chain of {len} bytes exceeds the {max}-byte limit"
    )]
    ChainTooLong {
        /// The queue.
        queue: u16,
        /// Total bytes of the chain.
        len: u64,
        /// Most accepted.
        max: u64,
    },
    /// A buffer of the wrong direction (a device-writable one to transmit,
    /// a read-only one to receive into).
    #[error("virtio-net queue {queue}: descriptor chain from {head} has a buffer of the wrong direction")]
    Direction {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
    },
    /// A receive buffer too small for a frame (without mergeable buffers
    /// the spec requires room for the largest).
    #[error(
        "virtio-net queue {queue}: receive buffer of {len} bytes cannot hold a {need}-byte frame"
    )]
    RxTooSmall {
        /// The queue.
        queue: u16,
        /// Bytes the chain offers.
        len: u64,
        /// Bytes the frame needs.
        need: u64,
    },
    /// A transmitted chain shorter than the virtio-net header.
    #[error(
        "virtio-net queue {queue}: transmitted chain of {len} bytes is shorter than the header"
    )]
    TxTooShort {
        /// The queue.
        queue: u16,
        /// Bytes of the chain.
        len: u64,
    },
    /// The guest broke the virtio-blk rules of one of its disks.
    #[error(transparent)]
    Block(#[from] BlkError),
}
