//! How a guest broke the virtio-blk rules: each ends the VM (exit 123),
//! the message naming the queue, the chain and what was wrong.

/// A violation of the virtio-blk protocol by the guest.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BlkError {
    /// A queue was made ready with a size that is not a power of two up to
    /// the maximum.
    #[error("virtio-blk queue {queue}: size {size} is not a power of two up to {max}")]
    QueueSize {
        /// The queue.
        queue: u16,
        /// The size the driver wrote.
        size: u16,
        /// The largest the device offers.
        max: u16,
    },
    /// A ring lies outside the memory the app owns.
    #[error("virtio-blk queue {queue}: {what} at {addr:#x} (+{len} bytes) lies outside the app's memory")]
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
    #[error("virtio-blk queue {queue}: available index {avail} is {ahead} entries ahead, past the queue size {size}")]
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
    #[error("virtio-blk queue {queue}: descriptor index {index} is past the queue size {size}")]
    DescriptorIndex {
        /// The queue.
        queue: u16,
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// A chain goes on past the table, loops, or has too many descriptors.
    #[error("virtio-blk queue {queue}: descriptor chain from {head} is broken (a next index past the table, a loop, or more than {max} descriptors)")]
    Chain {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
        /// The longest chain accepted.
        max: usize,
    },
    /// A buffer lies outside the memory the app owns.
    #[error("virtio-blk queue {queue}: buffer at {addr:#x} (+{len} bytes) lies outside the app's memory")]
    BufferOutside {
        /// The queue.
        queue: u16,
        /// The buffer's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A chain covers more bytes than the largest request.
    #[error(
        "virtio-blk queue {queue}: descriptor chain of {len} bytes exceeds the {max}-byte limit"
    )]
    ChainTooLong {
        /// The queue.
        queue: u16,
        /// Bytes so far.
        len: u64,
        /// Most accepted.
        max: u64,
    },
    /// A readable buffer after a writable one, or data on the wrong side
    /// for the request's type.
    #[error("virtio-blk queue {queue}: request from {head} has its buffers in the wrong layout (readable header and write data first, then read data and the status byte)")]
    Layout {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
    },
    /// Fewer readable bytes than the 16-byte header.
    #[error("virtio-blk queue {queue}: request from {head} has {len} readable bytes, less than its 16-byte header")]
    NoHeader {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
        /// Readable bytes.
        len: u64,
    },
    /// No writable byte for the status.
    #[error("virtio-blk queue {queue}: request from {head} has no writable status byte")]
    NoStatus {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
    },
    /// Data that is not a whole number of sectors.
    #[error(
        "virtio-blk queue {queue}: request from {head} moves {len} bytes, not a multiple of 512"
    )]
    Unaligned {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
        /// Data bytes.
        len: u64,
    },
    /// More data than one request may move.
    #[error("virtio-blk queue {queue}: request from {head} moves {len} bytes, past the {max}-byte limit")]
    TooLarge {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
        /// Data bytes.
        len: u64,
        /// Most accepted.
        max: u64,
    },
    /// Sectors past the end of the disk.
    #[error("virtio-blk queue {queue}: request from {head} reads or writes sectors {sector}..{}, past the disk's {capacity}", .sector.saturating_add(*.count))]
    PastEnd {
        /// The queue.
        queue: u16,
        /// The chain's head.
        head: u16,
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
        /// The disk's sectors.
        capacity: u64,
    },
}
