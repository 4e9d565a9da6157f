//! The virtio-blk device: one request queue behind a virtio-mmio
//! [`Transport`], requests served from a [`DiskFile`] on the notify exit
//! that announces them (one exit per batch, no interrupt: the guest polls
//! its used ring).
//!
//! With rate limits ([`BlkDevice::set_rate_limit`]) a request the buckets
//! cannot pay for yet stays in the available ring (the device steps back
//! over it) and the device is *held* until the instant they can
//! ([`BlkDevice::held_until`]): an Idle wait ends then, and the next VM
//! exit serves it ([`BlkDevice::pump`]).
//!
//! The queue is rust-vmm's `virtio-queue`, as for the network device; what
//! it leaves to its user is checked here (rings inside the app's memory,
//! the available index at most a queue ahead, a chain's head and links)
//! and in [`request`](super::request) (the chain's layout, the header,
//! sectors and lengths) before any byte moves.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tandem_abi::layout;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::dirty::DirtyBlocks;
use super::disk::DiskFile;
use super::request::{
    self, Action, Desc, DeviceId, Geometry, Header, Shape, HEADER_LEN, MAX_CHAIN,
    MAX_REQUEST_BYTES, SECTOR_SIZE, SEG_MAX,
};
use super::state::{BlkState, BlkStateError};
use super::BlkError;
use crate::devices::mmio::{low32, Effect, QueueRegs, Transport};
use crate::devices::net_state::QueuePosition;
use crate::devices::rate_limiter::{Admit, RateLimit, RateLimiter, SharedLimit};

/// The request queue.
pub const REQUEST_QUEUE: u16 = 0;
/// Most entries the queue may have.
pub const QUEUE_MAX: u16 = 256;

/// What the device has done (for the run's log and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Read requests served.
    pub reads: u64,
    /// Write requests served.
    pub writes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Bytes read from the disk.
    pub bytes_read: u64,
    /// Bytes written to it.
    pub bytes_written: u64,
    /// Requests answered with an error status (read-only, unsupported, host I/O error).
    pub errors: u64,
    /// Notify writes (kicks).
    pub kicks: u64,
    /// Times a rate limit held a request back.
    pub held: u64,
}

/// A virtio-blk device on a disk image.
#[derive(Debug)]
pub struct BlkDevice {
    transport: Transport,
    queue: Queue,
    disk: DiskFile,
    base: u64,
    /// The app's memory, `[start, end)`: where rings and buffers may be.
    app: (u64, u64),
    scratch: Vec<u8>,
    stats: BlkStats,
    limiter: Option<RateLimiter>,
    /// A limit shared with other VMs' disks (a fleet's I/O budget), asked
    /// after `limiter`.
    shared: Option<Arc<dyn SharedLimit>>,
    /// When the request a rate limit holds back may go.
    held: Option<Instant>,
    /// With backups on ([`BlkDevice::track_for_backup`]): the blocks the
    /// guest wrote since the last point, and the guest memory the device
    /// wrote (read data, status bytes, the used ring), which KVM's dirty
    /// log does not see.
    tracking: Option<Tracking>,
}

/// What a backup point harvests from the device.
#[derive(Debug)]
struct Tracking {
    dirty: DirtyBlocks,
    written: Vec<(u64, u64)>,
    used: bool,
}

impl BlkDevice {
    /// A device with its register window at `base` on `disk`, for a guest
    /// of `mem_size` bytes.
    pub fn new(disk: DiskFile, base: u64, mem_size: u64) -> Self {
        Self {
            transport: Transport::new(
                VIRTIO_ID_BLOCK,
                features(disk.read_only()),
                1,
                QUEUE_MAX,
                config_space(disk.sectors()),
            ),
            queue: new_queue(),
            disk,
            base,
            app: (layout::HEAP_ADDR, mem_size),
            scratch: Vec::new(),
            stats: BlkStats::default(),
            limiter: None,
            shared: None,
            held: None,
            tracking: None,
        }
    }

    /// Keeps account, for backup points, of the blocks the guest writes
    /// and of the guest memory the device writes.
    pub fn track_for_backup(&mut self) {
        let bytes = self.disk.sectors() * SECTOR_SIZE;
        self.tracking.get_or_insert_with(|| Tracking {
            dirty: DirtyBlocks::new(bytes),
            written: Vec::new(),
            used: false,
        });
    }

    /// The blocks written since the last call, ascending (none without
    /// [`track_for_backup`](Self::track_for_backup)). Taken with the VM
    /// stopped, between two runs of the vCPU that serves every request, so
    /// they are the writes the guest had completed at that instant.
    pub fn take_dirty_blocks(&mut self) -> Vec<u64> {
        self.tracking
            .as_mut()
            .map(|t| t.dirty.take())
            .unwrap_or_default()
    }

    /// The guest ranges the device wrote since the last call.
    pub fn take_written(&mut self) -> Vec<(u64, u64)> {
        let Some(t) = self.tracking.as_mut() else {
            return Vec::new();
        };
        let mut out = std::mem::take(&mut t.written);
        if std::mem::take(&mut t.used) {
            if let Some(regs) = self.transport.queue(REQUEST_QUEUE) {
                out.push((regs.used, 6 + 8 * u64::from(regs.size)));
            }
        }
        out
    }

    /// Limits the bytes and requests a second it serves (none: unlimited).
    pub fn set_rate_limit(&mut self, limit: RateLimit) {
        self.limiter = limit
            .is_limited()
            .then(|| RateLimiter::from_limit(limit, Instant::now()));
    }

    /// Also draws from `shared` (a fleet's I/O budget; none: only its own
    /// limits).
    pub fn set_shared_limit(&mut self, shared: Option<Arc<dyn SharedLimit>>) {
        self.shared = shared;
    }

    /// Its rate limits.
    pub fn rate_limit(&self) -> RateLimit {
        self.limiter
            .as_ref()
            .map(RateLimiter::limit)
            .unwrap_or_default()
    }

    /// When the request a rate limit holds back may go, if one is held.
    pub fn held_until(&self) -> Option<Instant> {
        self.held
    }

    /// What every VM exit does: serves a held request once it may go.
    pub fn pump(&mut self, mem: &GuestMemoryMmap) -> Result<(), BlkError> {
        match self.held {
            Some(at) if Instant::now() >= at => self.serve(mem),
            _ => Ok(()),
        }
    }

    /// The register window: guest-physical base and size.
    pub fn window(&self) -> (u64, u64) {
        (self.base, layout::VIRTIO_MMIO_SIZE)
    }

    /// The disk it serves.
    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }

    /// Its part of a snapshot (the disk's copy is named by the caller).
    pub fn state(&self, file: String) -> BlkState {
        BlkState {
            transport: self.transport.state(),
            position: QueuePosition {
                next_avail: self.queue.next_avail(),
                next_used: self.queue.next_used(),
            },
            file,
            sectors: self.disk.sectors(),
            read_only: self.disk.read_only(),
        }
    }

    /// A device on `disk` with its window at `base`, picking up where
    /// `state` left off, for a guest of `mem_size` bytes whose memory
    /// `mem` the snapshot restored: `state` is checked first, the ready
    /// queue again against guest memory, and its used index there must be
    /// the device's.
    pub fn restore(
        disk: DiskFile,
        state: &BlkState,
        base: u64,
        mem: &GuestMemoryMmap,
        mem_size: u64,
    ) -> Result<Self, BlkStateError> {
        state.check(mem_size)?;
        if disk.sectors() != state.sectors {
            return Err(BlkStateError::Size {
                found: disk.sectors(),
                expected: state.sectors,
            });
        }
        let mut dev = Self::new(disk, base, mem_size);
        dev.transport.set_state(&state.transport);
        if dev.transport.queue(REQUEST_QUEUE).is_some_and(|r| r.ready) {
            dev.ready_queue(mem, REQUEST_QUEUE)?;
            let pos = state.position;
            dev.queue.set_next_avail(pos.next_avail);
            dev.queue.set_next_used(pos.next_used);
            let used = dev
                .queue
                .used_idx(mem, Ordering::Acquire)
                .map_err(|_| ring_error(REQUEST_QUEUE, "used ring", dev.queue.used_ring()))?;
            if used.0 != pos.next_used {
                return Err(BlkStateError::UsedIndex {
                    memory: used.0,
                    device: pos.next_used,
                });
            }
            // A request a rate limit held at the snapshot is still in the
            // ring, and the guest will not kick for it again: the first
            // exit serves what is there.
            dev.held = Some(Instant::now());
        }
        Ok(dev)
    }

    /// What it has done so far.
    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    /// The offset into the window of guest-physical `addr`, if it is in it.
    pub fn offset(&self, addr: u64) -> Option<u64> {
        addr.checked_sub(self.base)
            .filter(|&o| o < layout::VIRTIO_MMIO_SIZE)
    }

    /// A register read at window offset `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }

    /// A register write at window offset `offset`, and what it sets off.
    pub fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BlkError> {
        match self.transport.write(offset, data) {
            Effect::None | Effect::DriverOk => Ok(()),
            Effect::Reset => {
                self.queue = new_queue();
                Ok(())
            }
            Effect::QueueReady(q) => self.ready_queue(mem, q),
            Effect::Notify(_) => {
                self.stats.kicks += 1;
                self.serve(mem)
            }
        }
    }

    /// Checks and takes on the rings the driver set up for queue `q`.
    fn ready_queue(&mut self, mem: &GuestMemoryMmap, q: u16) -> Result<(), BlkError> {
        let Some(regs) = self.transport.queue(q).copied() else {
            return Ok(());
        };
        check_queue(q, &regs, self.app)?;
        let (size, n) = (regs.size, u64::from(regs.size));
        let queue = &mut self.queue;
        queue.set_size(size);
        let split = |a: u64| (Some(low32(a)), Some(low32(a >> 32)));
        let (lo, hi) = split(regs.desc);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(regs.avail);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(regs.used);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(BlkError::RingOutside {
                queue: q,
                what: "rings",
                addr: regs.desc,
                len: 16 * n,
            });
        }
        Ok(())
    }

    /// Serves every request the driver has made available.
    pub fn serve(&mut self, mem: &GuestMemoryMmap) -> Result<(), BlkError> {
        if !self.transport.live() || !self.queue.ready() {
            return Ok(());
        }
        self.held = None;
        for _ in 0..self.available(mem)? {
            let (head, descs) = self.pop_chain(mem)?;
            let (shape, action) = self.decide(mem, head, &descs)?;
            if let Some(at) = self.hold(&action) {
                // It stays available: taken (and checked again) later.
                self.queue.go_to_previous_position();
                self.held = Some(at);
                self.stats.held += 1;
                return Ok(());
            }
            let written = self.carry_out(mem, &descs, shape, action)?;
            if let Some(t) = self.tracking.as_mut() {
                if let Action::Write { sector, len } = action {
                    t.dirty.mark(sector * SECTOR_SIZE, len);
                }
                let into_guest = descs.iter().filter(|d| d.write_only);
                t.written
                    .extend(into_guest.map(|d| (d.addr, u64::from(d.len))));
                t.used = true;
            }
            let q = REQUEST_QUEUE;
            self.queue
                .add_used(mem, head, written)
                .map_err(|_| ring_error(q, "used ring", self.queue.used_ring()))?;
        }
        Ok(())
    }

    /// Until when the limits hold `action` back, if they do; otherwise its
    /// cost is taken from them. The device's own limiter is asked first
    /// without taking, so a refusal of the shared limit costs it nothing.
    fn hold(&mut self, action: &Action) -> Option<Instant> {
        if self.limiter.is_none() && self.shared.is_none() {
            return None;
        }
        let bytes = match *action {
            Action::Read { len, .. } | Action::Write { len, .. } => len,
            _ => 0,
        };
        let now = Instant::now();
        if let Some(limiter) = &mut self.limiter {
            let at = limiter.ready_at(bytes, now);
            if at > now {
                return Some(at);
            }
        }
        if let Some(Admit::At(at)) = self.shared.as_ref().map(|s| s.admit(bytes, now)) {
            return Some(at);
        }
        if let Some(limiter) = &mut self.limiter {
            // Ready at `now` (asked above): this passes and takes.
            let _ = limiter.admit(bytes, now);
        }
        None
    }

    /// How many chains the driver has made available and the device not
    /// yet taken; refuses an index more than a queue ahead.
    fn available(&self, mem: &GuestMemoryMmap) -> Result<u16, BlkError> {
        let q = REQUEST_QUEUE;
        let size = self.queue.size();
        let avail = self
            .queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|_| ring_error(q, "available ring", self.queue.avail_ring()))?;
        let ahead = (avail - Wrapping(self.queue.next_avail())).0;
        if ahead > size {
            return Err(BlkError::AvailIndex {
                queue: q,
                avail: avail.0,
                ahead,
                size,
            });
        }
        Ok(ahead)
    }

    /// Takes the next available chain: its head and descriptors, the links
    /// checked (bounds and layout are [`request::shape`]'s).
    fn pop_chain(&mut self, mem: &GuestMemoryMmap) -> Result<(u16, Vec<Desc>), BlkError> {
        let q = REQUEST_QUEUE;
        let size = self.queue.size();
        let Some(chain) = self.queue.pop_descriptor_chain(mem) else {
            return Err(ring_error(q, "available ring", self.queue.avail_ring()));
        };
        let head = chain.head_index();
        if head >= size {
            return Err(BlkError::DescriptorIndex {
                queue: q,
                index: head,
                size,
            });
        }
        let broken = BlkError::Chain {
            queue: q,
            head,
            max: MAX_CHAIN,
        };
        let mut descs = Vec::new();
        let mut more = true;
        for d in chain {
            if descs.len() == MAX_CHAIN {
                return Err(broken);
            }
            descs.push(Desc {
                addr: d.addr().0,
                len: d.len(),
                write_only: d.is_write_only(),
            });
            more = d.has_next();
        }
        // The iterator stops early, silently, at a `next` past the table or
        // once a loop has used up the queue size.
        if more {
            return Err(broken);
        }
        Ok((head, descs))
    }

    /// What chain `head` asks: its shape checked, its header copied out
    /// once and decided on.
    fn decide(
        &self,
        mem: &GuestMemoryMmap,
        head: u16,
        descs: &[Desc],
    ) -> Result<(Shape, Action), BlkError> {
        let q = REQUEST_QUEUE;
        let shape = request::shape(q, head, descs, self.app)?;
        let readable: Vec<Desc> = descs.iter().copied().filter(|d| !d.write_only).collect();
        let mut header = Header::default();
        if shape.readable >= HEADER_LEN {
            gather(mem, &readable, 0, &mut header)?;
        }
        let geometry = Geometry {
            sectors: self.disk.sectors(),
            read_only: self.disk.read_only(),
        };
        Ok((shape, request::parse(q, head, &header, shape, geometry)?))
    }

    /// Carries out a decided request over its chain; says how many bytes
    /// it wrote into the chain.
    fn carry_out(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &[Desc],
        shape: Shape,
        action: Action,
    ) -> Result<u32, BlkError> {
        let (readable, writable): (Vec<Desc>, Vec<Desc>) =
            descs.iter().partition(|d| !d.write_only);
        let ok = status_byte(VIRTIO_BLK_S_OK);
        let ioerr = status_byte(VIRTIO_BLK_S_IOERR);
        // `parse` bounds every length by MAX_REQUEST_BYTES (1 MiB).
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(0);
        let (status, data_in) = match action {
            Action::Read { sector, len } => {
                self.scratch.resize(to_usize(len), 0);
                match self.disk.read_at(&mut self.scratch, sector * SECTOR_SIZE) {
                    Ok(()) => {
                        scatter(mem, &writable, 0, &self.scratch)?;
                        self.stats.reads += 1;
                        self.stats.bytes_read += len;
                        (ok, len)
                    }
                    Err(e) => {
                        log::warn!("disk {}: read failed: {e}", self.disk.path().display());
                        (ioerr, 0)
                    }
                }
            }
            Action::Write { sector, len } => {
                self.scratch.resize(to_usize(len), 0);
                gather(mem, &readable, HEADER_LEN, &mut self.scratch)?;
                match self.disk.write_at(&self.scratch, sector * SECTOR_SIZE) {
                    Ok(()) => {
                        self.stats.writes += 1;
                        self.stats.bytes_written += len;
                        (ok, 0)
                    }
                    Err(e) => {
                        log::warn!("disk {}: write failed: {e}", self.disk.path().display());
                        (ioerr, 0)
                    }
                }
            }
            Action::Flush => match self.disk.flush() {
                Ok(()) => {
                    self.stats.flushes += 1;
                    (ok, 0)
                }
                Err(e) => {
                    log::warn!("disk {}: flush failed: {e}", self.disk.path().display());
                    (ioerr, 0)
                }
            },
            Action::GetId { len } => {
                let mut id = DeviceId::default();
                let name = b"tandem-disk";
                id[..name.len()].copy_from_slice(name);
                scatter(mem, &writable, 0, &id[..to_usize(len)])?;
                (ok, len)
            }
            Action::Decline { status } => (status, 0),
        };
        if status != ok {
            self.stats.errors += 1;
        }
        // The status byte is the last writable byte.
        scatter(mem, &writable, shape.writable - 1, &[status])?;
        debug_assert!(data_in <= MAX_REQUEST_BYTES);
        Ok(u32::try_from(data_in + 1).unwrap_or(u32::MAX))
    }
}

/// Checks the registers of a queue the driver made ready (or a snapshot
/// says it had): a power-of-two size up to [`QUEUE_MAX`], each ring
/// aligned and inside the app's memory `app`.
pub(super) fn check_queue(q: u16, regs: &QueueRegs, app: (u64, u64)) -> Result<(), BlkError> {
    let size = regs.size;
    if size == 0 || size > QUEUE_MAX || !size.is_power_of_two() {
        return Err(BlkError::QueueSize {
            queue: q,
            size,
            max: QUEUE_MAX,
        });
    }
    let n = u64::from(size);
    let rings = [
        ("descriptor table", regs.desc, 16 * n, 16),
        ("available ring", regs.avail, 6 + 2 * n, 2),
        ("used ring", regs.used, 6 + 8 * n, 4),
    ];
    for (what, addr, len, align) in rings {
        if !request::in_app(app, addr, len) || addr % align != 0 {
            return Err(BlkError::RingOutside {
                queue: q,
                what,
                addr,
                len,
            });
        }
    }
    Ok(())
}

/// The features the device offers for a disk (`read_only` adds `RO`).
pub(super) fn features(read_only: bool) -> u64 {
    let mut f = 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_SIZE_MAX;
    if read_only {
        f |= 1 << VIRTIO_BLK_F_RO;
    }
    f
}

/// The configuration space: capacity in sectors, `size_max`, `seg_max`.
fn config_space(sectors: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&sectors.to_le_bytes());
    let size_max = u32::try_from(MAX_REQUEST_BYTES / u64::from(SEG_MAX)).unwrap_or(u32::MAX);
    c.extend_from_slice(&size_max.to_le_bytes());
    c.extend_from_slice(&SEG_MAX.to_le_bytes());
    c
}

fn status_byte(s: u32) -> u8 {
    u8::try_from(s).unwrap_or(u8::MAX)
}

/// Copies `out.len()` bytes starting `skip` bytes into the buffers `descs`
/// (already checked to lie in the app's memory).
fn gather(
    mem: &GuestMemoryMmap,
    descs: &[Desc],
    skip: u64,
    out: &mut [u8],
) -> Result<(), BlkError> {
    walk(descs, skip, out.len(), |d, at, range| {
        mem.read_slice(&mut out[range], GuestAddress(at))
            .map_err(|_| outside(d))
    })
}

/// Copies `data` into the buffers `descs`, starting `skip` bytes in.
fn scatter(mem: &GuestMemoryMmap, descs: &[Desc], skip: u64, data: &[u8]) -> Result<(), BlkError> {
    walk(descs, skip, data.len(), |d, at, range| {
        mem.write_slice(&data[range], GuestAddress(at))
            .map_err(|_| outside(d))
    })
}

/// Calls `f(desc, address, range)` for each piece of the byte range
/// `[skip, skip + len)` of the buffers' concatenation; `range` is the
/// piece's place in the caller's slice.
fn walk(
    descs: &[Desc],
    skip: u64,
    len: usize,
    mut f: impl FnMut(&Desc, u64, std::ops::Range<usize>) -> Result<(), BlkError>,
) -> Result<(), BlkError> {
    let mut skip = skip;
    let mut done = 0usize;
    for d in descs {
        if done == len {
            break;
        }
        let dlen = u64::from(d.len);
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        // Both at most a descriptor's u32 length.
        let room = usize::try_from(dlen - skip).unwrap_or(0);
        let n = room.min(len - done);
        f(d, d.addr + skip, done..done + n)?;
        done += n;
        skip = 0;
    }
    Ok(())
}

fn outside(d: &Desc) -> BlkError {
    BlkError::BufferOutside {
        queue: REQUEST_QUEUE,
        addr: d.addr,
        len: d.len,
    }
}

fn new_queue() -> Queue {
    // QUEUE_MAX is a power of two: `new` cannot refuse it.
    Queue::new(QUEUE_MAX).unwrap_or_else(|_| unreachable!("QUEUE_MAX is a valid queue size"))
}

fn ring_error(queue: u16, what: &'static str, addr: u64) -> BlkError {
    BlkError::RingOutside {
        queue,
        what,
        addr,
        len: 0,
    }
}
