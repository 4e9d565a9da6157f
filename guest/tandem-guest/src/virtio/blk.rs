//! A virtio-blk device (device type 2): one request queue, polled. Each
//! request is a chain of three descriptors (header, data, status) over
//! bounce buffers on the heap; a batch of up to [`SLOTS`] requests is made
//! available, the device is notified once, and the driver polls the used
//! ring (sleeping in the host between looks when the answer is not there
//! yet, as the network stack does).

use tandem_abi::bootinfo::Device;

use super::dma::DmaRegion;
use super::mmio::{DeviceError, Transport};
use super::queue::{Virtqueue, DESC_F_WRITE};

const DEVICE_ID_BLOCK: u32 = 2;
/// The device refuses writes.
const F_RO: u64 = 1 << 5;
/// The device has a flush command.
const F_FLUSH: u64 = 1 << 9;
/// The modern layout.
const F_VERSION_1: u64 = 1 << 32;

const REQUEST_QUEUE: u16 = 0;
/// Entries asked for: three descriptors per request.
const QUEUE_SIZE: u16 = 64;
/// Bytes of a sector.
pub const SECTOR_SIZE: usize = 512;
/// Most bytes one request moves (one bounce buffer).
pub const CHUNK: usize = 64 * 1024;
/// Requests in flight at most (one batch).
pub const SLOTS: usize = 16;
/// Bytes per request slot for its header (16) and status (1).
const META: usize = 32;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;

/// What a request's status byte said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok,
    /// The device failed it (a read-only disk, an I/O error on the host).
    IoError,
    /// The device does not do it.
    Unsupported,
    /// A status the spec does not define.
    Other(u8),
}

/// One request of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// Read `len` bytes at `sector` into slot memory.
    Read { sector: u64, len: usize },
    /// Write the slot's first `len` bytes at `sector`.
    Write { sector: u64, len: usize },
    /// Make completed writes durable.
    Flush,
}

/// A virtio-blk device, driven by polling.
pub struct VirtioBlk {
    transport: Transport,
    queue: Virtqueue,
    meta: DmaRegion,
    data: DmaRegion,
    slots: usize,
    capacity: u64,
    read_only: bool,
    flush: bool,
    broken: Option<DeviceError>,
}

impl VirtioBlk {
    /// The `index`-th virtio-blk device among `devices` (counting only
    /// block devices that answer); `Ok(None)` when there are fewer.
    pub fn find(devices: &[Device], index: usize) -> Result<Option<Self>, DeviceError> {
        let mut seen = 0;
        let mut refused = None;
        for device in devices {
            // A window that is no (good) device does not hide the next one.
            let t = match Transport::probe(device, DEVICE_ID_BLOCK) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    refused.get_or_insert(e);
                    continue;
                }
            };
            if seen == index {
                return Self::start(t).map(Some);
            }
            // Not the one asked for: leave it alone.
            t.reset();
            seen += 1;
        }
        refused.map_or(Ok(None), Err)
    }

    fn start(transport: Transport) -> Result<Self, DeviceError> {
        let offered = transport.device_features();
        let mut accept = offered & (F_RO | F_FLUSH);
        if !transport.is_legacy() {
            if offered & F_VERSION_1 == 0 {
                transport.fail();
                return Err(DeviceError::MissingFeature(32));
            }
            accept |= F_VERSION_1;
        }
        transport.accept_features(accept)?;
        let queue = transport.setup_queue(REQUEST_QUEUE, QUEUE_SIZE)?;
        let slots = (usize::from(queue.size()) / 3).min(SLOTS);
        if slots == 0 {
            transport.fail();
            return Err(DeviceError::BadQueue(REQUEST_QUEUE));
        }
        let meta = DmaRegion::new(slots * META).ok_or(DeviceError::OutOfMemory)?;
        let data = DmaRegion::new(slots * CHUNK).ok_or(DeviceError::OutOfMemory)?;
        let mut cap = [0u8; 8];
        transport.config_bytes(0, &mut cap);
        transport.driver_ok();
        transport.check_status()?;
        Ok(Self {
            transport,
            queue,
            meta,
            data,
            slots,
            capacity: u64::from_le_bytes(cap),
            read_only: accept & F_RO != 0,
            flush: accept & F_FLUSH != 0,
            broken: None,
        })
    }

    /// Sectors on the disk.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device says it refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether it has a flush command (without one, writes are durable
    /// when done, or the device offers no guarantee to ask for).
    pub fn has_flush(&self) -> bool {
        self.flush
    }

    /// Requests one batch may hold.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Copies `bytes` into slot `slot`'s buffer.
    pub(crate) fn fill(&self, slot: usize, bytes: &[u8]) -> bool {
        slot < self.slots && bytes.len() <= CHUNK && self.data.copy_in(slot * CHUNK, bytes)
    }

    /// Copies slot `slot`'s buffer out into `out`.
    pub(crate) fn drain(&self, slot: usize, out: &mut [u8]) -> bool {
        slot < self.slots && out.len() <= CHUNK && self.data.copy_out(slot * CHUNK, out)
    }

    /// Runs `ops` (at most [`slots`](Self::slots), request `i` in slot `i`)
    /// as one batch: one notify, then polling until every one is done.
    /// Fills `status[i]` for each.
    pub(crate) fn run(&mut self, ops: &[Op], status: &mut [Status]) -> Result<(), DeviceError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let n = ops.len().min(self.slots).min(status.len());
        for (slot, op) in ops[..n].iter().enumerate() {
            let (kind, sector, len, write) = match *op {
                Op::Read { sector, len } => (T_IN, sector, len, true),
                Op::Write { sector, len } => (T_OUT, sector, len, false),
                Op::Flush => (T_FLUSH, 0, 0, false),
            };
            let m = slot * META;
            let mut hdr = [0u8; 16];
            hdr[..4].copy_from_slice(&kind.to_le_bytes());
            hdr[8..].copy_from_slice(&sector.to_le_bytes());
            self.meta.copy_in(m, &hdr);
            // A status the device never writes reads as this.
            self.meta.copy_in(m + 16, &[0xff]);
            let header = (self.meta.phys(m), 16, 0);
            let state = (self.meta.phys(m + 16), 1, DESC_F_WRITE);
            let head = (slot * 3) as u16;
            if len == 0 {
                self.queue.push_chain(head, &[header, state]);
            } else {
                let flags = if write { DESC_F_WRITE } else { 0 };
                // len is at most CHUNK.
                let data = (self.data.phys(slot * CHUNK), len.min(CHUNK) as u32, flags);
                self.queue.push_chain(head, &[header, data, state]);
            }
        }
        if self.queue.take_kick() {
            self.transport.notify(REQUEST_QUEUE);
        }
        let mut left = n;
        let mut naps = 0u32;
        while left > 0 {
            match self.queue.pop_used(CHUNK as u32 + 1) {
                Ok(Some((id, _))) => {
                    let slot = usize::from(id) / 3;
                    let mut b = [0u8; 1];
                    self.meta.copy_out(slot * META + 16, &mut b);
                    if let Some(s) = status.get_mut(slot) {
                        *s = match b[0] {
                            0 => Status::Ok,
                            1 => Status::IoError,
                            2 => Status::Unsupported,
                            x => Status::Other(x),
                        };
                    }
                    left -= 1;
                    naps = 0;
                }
                Ok(None) => {
                    if let Err(e) = self.transport.check_status() {
                        return Err(self.give_up(e));
                    }
                    // The Tandem VMM answers on the notify exit; another
                    // VMM (or a rate limit) may take longer: sleep in the
                    // host, a little longer each time.
                    naps = naps.saturating_add(1);
                    let wait = core::time::Duration::from_micros(u64::from(naps.min(1000)) * 10);
                    crate::idle::idle(wait);
                }
                Err(e) => return Err(self.give_up(e)),
            }
        }
        Ok(())
    }

    fn give_up(&mut self, e: DeviceError) -> DeviceError {
        if self.broken.is_none() {
            crate::println!("tandem: virtio-blk device dropped: {e}");
            self.transport.reset();
            self.broken = Some(e);
        }
        e
    }
}

impl Drop for VirtioBlk {
    fn drop(&mut self) {
        // Before the queue and buffers go back to the heap.
        self.transport.reset();
    }
}
