//! The virtio-net device: two queues (receive 0, transmit 1) behind a
//! virtio-mmio [`Transport`], frames moved to and from a [`Tap`]. No
//! offloads, no mergeable buffers, no control queue: the 12-byte modern
//! header is zero on receive (but for `num_buffers` = 1) and ignored on
//! transmit.
//!
//! When it works: a transmit kick sends every chain made available; every
//! VM exit (and a receive kick) fills the receive buffers the guest made
//! available with frames queued on the tap; an idle guest is woken by a
//! frame ([`NetDevice::idle`]).
//!
//! With rate limits ([`NetDevice::set_rate_limit`]) each direction has its
//! own [`RateLimiter`]. A frame that must wait stays in the device, never
//! dropped: a transmitted chain is held (not yet used, so the guest's
//! buffer stays taken and its stack slows down), a received frame stays
//! read from the tap (the tap's queue backs up behind it, as on a slow
//! link). Held frames move at the next VM exit after their tokens return
//! or, when the guest waits in Idle, at that instant, which ends the wait.
//!
//! The queues are rust-vmm's `virtio-queue` (reading the rings with
//! vm-memory's checked accessors, with acquire/release ordering on the
//! indices). What it leaves to its user is checked here before any byte
//! moves: the rings and every buffer lie inside the app's memory (the heap:
//! never the page tables or other kernel structures), the available index
//! is at most a queue ahead, a chain's head names a descriptor, its `next`
//! links stay in the table, it is at most [`MAX_CHAIN`] descriptors and
//! [`MAX_CHAIN_BYTES`] long, and each buffer points the right way.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tandem_abi::layout;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{low32, Effect, QueueRegs, Transport};
use super::net_state::{NetState, NetStateError, QueuePosition};
use super::rate_limiter::{Admit, RateLimit, RateLimiter};
use super::tap::Tap;
use super::DeviceError;

/// The receive queue.
pub const RX: u16 = 0;
/// The transmit queue.
pub const TX: u16 = 1;
/// Most entries a queue may have.
pub const QUEUE_MAX: u16 = 256;
/// Bytes of the virtio-net header (modern layout, with `num_buffers`).
pub const HDR_LEN: usize = 12;
/// The largest Ethernet frame without offloads (1500-byte MTU).
pub const MAX_FRAME: usize = 1514;
/// Most descriptors one chain may have.
pub const MAX_CHAIN: usize = 32;
/// Most bytes one chain may cover.
pub const MAX_CHAIN_BYTES: u64 = 64 * 1024;
/// Most bytes of a transmit chain: the header and one frame (no offloads
/// are offered), so an oversized frame ends the VM instead of reaching
/// the tap.
pub const MAX_TX_CHAIN_BYTES: u64 = (HDR_LEN + MAX_FRAME) as u64;
/// The features the device offers (the transport adds `VIRTIO_F_VERSION_1`).
pub const FEATURES: u64 = 1 << VIRTIO_NET_F_MAC;
/// Longest slice of an idle wait between two looks at a stop request.
const IDLE_SLICE: Duration = Duration::from_millis(50);

/// What the device has moved (for the run's log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames sent by the guest.
    pub tx_frames: u64,
    /// Notify writes (kicks).
    pub kicks: u64,
    /// Frames dropped (too large for the guest's buffer, or refused by the tap).
    pub dropped: u64,
    /// Frames a rate limit held back for a while (each counted once).
    pub held: u64,
}

/// One direction's rate limiter and the instant its held frame may move.
#[derive(Debug)]
struct Throttle {
    limiter: RateLimiter,
    wake: Option<Instant>,
}

impl Throttle {
    /// Whether a frame of `len` bytes may move now; if not, when it may is
    /// remembered (and the frame counted as held the first time).
    fn admit(&mut self, len: usize, stats: &mut NetStats) -> bool {
        match self.limiter.admit(len as u64, Instant::now()) {
            Admit::Now => {
                self.wake = None;
                true
            }
            Admit::At(at) => {
                if self.wake.is_none() {
                    stats.held += 1;
                }
                self.wake = Some(at);
                false
            }
        }
    }
}

/// One buffer of a checked chain.
#[derive(Debug, Clone, Copy)]
struct Buf {
    addr: u64,
    len: u32,
}

/// A virtio-net device on a tap.
#[derive(Debug)]
pub struct NetDevice {
    transport: Transport,
    queues: [Queue; 2],
    tap: Tap,
    base: u64,
    mac: [u8; 6],
    /// The app's memory, `[start, end)`: where rings and buffers may be.
    app: (u64, u64),
    /// A frame read from the tap and not yet delivered (its length in `frame`).
    pending: Option<usize>,
    frame: Vec<u8>,
    /// A transmitted chain a rate limit holds: its head and its bytes
    /// (header included).
    tx_held: Option<(u16, Vec<u8>)>,
    /// Rate limits of what the guest sends and what it receives.
    tx_limit: Option<Throttle>,
    rx_limit: Option<Throttle>,
    stats: NetStats,
    /// Guest ranges the device wrote since they were last taken, kept only
    /// when asked ([`NetDevice::track_writes`]): KVM's dirty log sees the
    /// guest's writes, not the VMM's, and a backup point needs both.
    written: Option<Written>,
}

/// What [`NetDevice::take_written`] hands over.
#[derive(Debug, Default)]
struct Written {
    /// Receive buffers filled.
    buffers: Vec<(u64, u64)>,
    /// Queues whose used ring changed.
    used: [bool; 2],
}

impl NetDevice {
    /// A device at [`layout::VIRTIO_MMIO_BASE`] on `tap`, with MAC `mac`,
    /// for a guest of `mem_size` bytes.
    pub fn new(tap: Tap, mac: [u8; 6], mem_size: u64) -> Self {
        let mut config = mac.to_vec();
        config.resize(8, 0);
        Self {
            transport: Transport::new(VIRTIO_ID_NET, FEATURES, 2, QUEUE_MAX, config),
            queues: [new_queue(), new_queue()],
            tap,
            base: layout::VIRTIO_MMIO_BASE,
            mac,
            app: (layout::HEAP_ADDR, mem_size),
            pending: None,
            frame: vec![0u8; 64 * 1024],
            tx_held: None,
            tx_limit: None,
            rx_limit: None,
            stats: NetStats::default(),
            written: None,
        }
    }

    /// The device's part of a snapshot (taken between two runs of the
    /// vCPU, when every chain it took is back in the used ring but one a
    /// rate limit holds, which is handed back). A frame read from the tap
    /// and not yet delivered is not part of it: lost, as on a wire.
    pub fn state(&self, ipv4: Option<super::spec::StaticIpv4>) -> NetState {
        let mut positions: Vec<QueuePosition> = self
            .queues
            .iter()
            .map(|q| QueuePosition {
                next_avail: q.next_avail(),
                next_used: q.next_used(),
            })
            .collect();
        // A chain a rate limit holds goes back to the ring (it is still
        // there, not yet used): the restored device takes and sends it again.
        if let (Some(_), Some(tx)) = (&self.tx_held, positions.get_mut(usize::from(TX))) {
            tx.next_avail = tx.next_avail.wrapping_sub(1);
        }
        NetState {
            transport: self.transport.state(),
            positions,
            mac: self.mac,
            ipv4: ipv4.map(Into::into),
        }
    }

    /// A device on `tap` picking up where `state` (checked with
    /// [`NetState::check`]) left off, with MAC `mac` (the guest re-reads
    /// it when it sees its new generation), for a guest of `mem_size`
    /// bytes whose memory `mem` the snapshot restored. Each ready queue is
    /// checked again as when the driver made it ready, and its used index
    /// in guest memory must be the device's.
    pub fn restore(
        tap: Tap,
        state: &NetState,
        mac: [u8; 6],
        mem: &GuestMemoryMmap,
        mem_size: u64,
    ) -> Result<Self, NetStateError> {
        state.check(mem_size)?;
        let mut dev = Self::new(tap, mac, mem_size);
        dev.transport.set_state(&state.transport);
        for (q, pos) in (0u16..).zip(&state.positions) {
            if !dev.transport.queue(q).is_some_and(|r| r.ready) {
                continue;
            }
            dev.ready_queue(mem, q)?;
            let queue = &mut dev.queues[usize::from(q)];
            queue.set_next_avail(pos.next_avail);
            queue.set_next_used(pos.next_used);
            let used = queue
                .used_idx(mem, Ordering::Acquire)
                .map_err(|_| ring_error(q, "used ring", queue.used_ring()))?;
            if used.0 != pos.next_used {
                return Err(NetStateError::UsedIndex {
                    queue: q,
                    memory: used.0,
                    device: pos.next_used,
                });
            }
        }
        Ok(dev)
    }

    /// Keeps account of the guest memory the device writes (for backups).
    pub fn track_writes(&mut self) {
        self.written.get_or_insert_with(Written::default);
    }

    /// The guest ranges written since the last call (with
    /// [`track_writes`](Self::track_writes) on; else none): the receive
    /// buffers filled and the used rings that changed.
    pub fn take_written(&mut self) -> Vec<(u64, u64)> {
        let Some(w) = self.written.as_mut() else {
            return Vec::new();
        };
        let mut out = std::mem::take(&mut w.buffers);
        let used = std::mem::take(&mut w.used);
        for (q, _) in (0u16..).zip(used).filter(|(_, changed)| *changed) {
            if let Some(regs) = self.transport.queue(q) {
                out.push((regs.used, 6 + 8 * u64::from(regs.size)));
            }
        }
        out
    }

    /// Limits each direction to `limit` (buckets full from now); an
    /// unlimited `limit` takes the limits off.
    pub fn set_rate_limit(&mut self, limit: RateLimit) {
        let throttle = || {
            limit.is_limited().then(|| Throttle {
                limiter: RateLimiter::from_limit(limit, Instant::now()),
                wake: None,
            })
        };
        self.tx_limit = throttle();
        self.rx_limit = throttle();
    }

    /// The limit on each direction (unlimited without one).
    pub fn rate_limit(&self) -> RateLimit {
        self.tx_limit
            .as_ref()
            .map(|t| t.limiter.limit())
            .unwrap_or_default()
    }

    /// The earliest instant after `now` a held frame may move, if one is
    /// held by a rate limit (a frame held only for want of receive buffers
    /// waits for the guest, not for a time).
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let tx = self
            .tx_held
            .as_ref()
            .and(self.tx_limit.as_ref())
            .and_then(|t| t.wake)
            .filter(|&w| w > now);
        let rx = self
            .pending
            .and(self.rx_limit.as_ref())
            .and_then(|t| t.wake)
            .filter(|&w| w > now);
        match (tx, rx) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The register window: guest-physical base and size.
    pub fn window(&self) -> (u64, u64) {
        (self.base, layout::VIRTIO_MMIO_SIZE)
    }

    /// The MAC address the guest is given.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// What the device has moved so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The tap it is attached to.
    pub fn tap(&self) -> &Tap {
        &self.tap
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
    ) -> Result<(), DeviceError> {
        match self.transport.write(offset, data) {
            Effect::None | Effect::DriverOk => Ok(()),
            Effect::Reset => {
                self.queues = [new_queue(), new_queue()];
                self.pending = None;
                self.tx_held = None;
                Ok(())
            }
            Effect::QueueReady(q) => self.ready_queue(mem, q),
            Effect::Notify(q) => {
                self.stats.kicks += 1;
                match q {
                    TX => self.transmit(mem).map(|_| ()),
                    _ => self.receive(mem).map(|_| ()),
                }
            }
        }
    }

    /// Checks and takes on the rings the driver set up for queue `q`.
    fn ready_queue(&mut self, mem: &GuestMemoryMmap, q: u16) -> Result<(), DeviceError> {
        let Some(regs) = self.transport.queue(q).copied() else {
            return Ok(());
        };
        let Some(queue) = self.queues.get_mut(usize::from(q)) else {
            return Ok(());
        };
        check_queue(q, &regs, self.app)?;
        let (size, n) = (regs.size, u64::from(regs.size));
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
            return Err(DeviceError::RingOutside {
                queue: q,
                what: "rings",
                addr: regs.desc,
                len: 16 * n,
            });
        }
        Ok(())
    }

    fn usable(&self, q: u16) -> bool {
        self.transport.live() && self.queues[usize::from(q)].ready()
    }

    /// How many chains the driver has made available on queue `q` and the
    /// device not yet taken; refuses an index more than a queue ahead.
    fn available(&self, mem: &GuestMemoryMmap, q: u16) -> Result<u16, DeviceError> {
        let queue = &self.queues[usize::from(q)];
        let size = queue.size();
        let avail = queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|_| ring_error(q, "available ring", queue.avail_ring()))?;
        let ahead = (avail - Wrapping(queue.next_avail())).0;
        if ahead > size {
            return Err(DeviceError::AvailIndex {
                queue: q,
                avail: avail.0,
                ahead,
                size,
            });
        }
        Ok(ahead)
    }

    /// Takes the next available chain of queue `q` and checks it whole:
    /// its head, links, length, bounds and direction (`writable`).
    fn pop_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        q: u16,
        writable: bool,
    ) -> Result<(u16, Vec<Buf>), DeviceError> {
        let app = self.app;
        let queue = &mut self.queues[usize::from(q)];
        let size = queue.size();
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return Err(ring_error(q, "available ring", queue.avail_ring()));
        };
        let head = chain.head_index();
        if head >= size {
            return Err(DeviceError::DescriptorIndex {
                queue: q,
                index: head,
                size,
            });
        }
        let broken = DeviceError::Chain {
            queue: q,
            head,
            max: MAX_CHAIN,
        };
        // Without offloads a frame to send is at most one Ethernet frame
        // and its header; a receive chain may offer bigger buffers.
        let max_bytes = if writable {
            MAX_CHAIN_BYTES
        } else {
            MAX_TX_CHAIN_BYTES
        };
        let mut bufs = Vec::new();
        let mut total = 0u64;
        let mut more = true;
        for d in chain {
            if bufs.len() == MAX_CHAIN {
                return Err(broken);
            }
            let (addr, len) = (d.addr().0, d.len());
            if !in_app(app, addr, u64::from(len)) {
                return Err(DeviceError::BufferOutside {
                    queue: q,
                    addr,
                    len,
                });
            }
            if d.is_write_only() != writable {
                return Err(DeviceError::Direction { queue: q, head });
            }
            total += u64::from(len);
            if total > max_bytes {
                return Err(DeviceError::ChainTooLong {
                    queue: q,
                    len: total,
                    max: max_bytes,
                });
            }
            bufs.push(Buf { addr, len });
            more = d.has_next();
        }
        // The iterator stops early, silently, at a `next` past the table or
        // once a loop has used up the queue size: a chain that still says
        // "next" when it ends is broken.
        if more {
            return Err(broken);
        }
        Ok((head, bufs))
    }

    fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        q: u16,
        head: u16,
        len: u32,
    ) -> Result<(), DeviceError> {
        if let Some(w) = self.written.as_mut() {
            w.used[usize::from(q) % 2] = true;
        }
        let queue = &mut self.queues[usize::from(q)];
        queue
            .add_used(mem, head, len)
            .map_err(|_| ring_error(q, "used ring", queue.used_ring()))
    }

    /// Sends every chain the driver made available for transmission, as
    /// far as the rate limit lets it: the first chain it holds back waits
    /// in the device, and the chains behind it on the ring; says how many
    /// frames went out.
    fn transmit(&mut self, mem: &GuestMemoryMmap) -> Result<u32, DeviceError> {
        if !self.usable(TX) {
            return Ok(0);
        }
        let mut sent = 0;
        loop {
            let (head, packet) = match self.tx_held.take() {
                Some(held) => held,
                None => {
                    if self.available(mem, TX)? == 0 {
                        return Ok(sent);
                    }
                    self.read_tx_chain(mem)?
                }
            };
            let frame_len = packet.len() - HDR_LEN;
            if let Some(t) = self.tx_limit.as_mut() {
                if !t.admit(frame_len, &mut self.stats) {
                    self.tx_held = Some((head, packet));
                    return Ok(sent);
                }
            }
            match self.tap.send(&packet[HDR_LEN..]) {
                Ok(()) => self.stats.tx_frames += 1,
                Err(e) => {
                    log::debug!("tap {}: frame dropped: {e}", self.tap.name());
                    self.stats.dropped += 1;
                }
            }
            self.add_used(mem, TX, head, 0)?;
            sent += 1;
        }
    }

    /// Takes the next transmitted chain and copies out its bytes (header
    /// included, at least [`HDR_LEN`]).
    fn read_tx_chain(&mut self, mem: &GuestMemoryMmap) -> Result<(u16, Vec<u8>), DeviceError> {
        let (head, bufs) = self.pop_chain(mem, TX, false)?;
        let total: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        if total < HDR_LEN as u64 {
            return Err(DeviceError::TxTooShort {
                queue: TX,
                len: total,
            });
        }
        let mut packet = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for b in &bufs {
            let start = packet.len();
            packet.resize(start + b.len as usize, 0);
            mem.read_slice(&mut packet[start..], GuestAddress(b.addr))
                .map_err(|_| DeviceError::BufferOutside {
                    queue: TX,
                    addr: b.addr,
                    len: b.len,
                })?;
        }
        Ok((head, packet))
    }

    /// What every VM exit does: moves a transmitted frame the rate limit
    /// held, if its tokens are back, and fills the receive buffers.
    pub fn pump(&mut self, mem: &GuestMemoryMmap) -> Result<(), DeviceError> {
        if self.tx_held.is_some() {
            self.transmit(mem)?;
        }
        self.receive(mem).map(|_| ())
    }

    /// Fills the receive buffers the driver made available with frames
    /// queued on the tap; says how many it delivered.
    pub fn receive(&mut self, mem: &GuestMemoryMmap) -> Result<u32, DeviceError> {
        if !self.usable(RX) {
            return Ok(0);
        }
        let mut delivered = 0;
        loop {
            let len = match self.pending {
                Some(len) => len,
                None => match self.tap.recv(&mut self.frame) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("tap {}: read failed: {e}", self.tap.name());
                        break;
                    }
                },
            };
            self.pending = Some(len);
            if self.available(mem, RX)? == 0 {
                break;
            }
            if let Some(t) = self.rx_limit.as_mut() {
                if !t.admit(len, &mut self.stats) {
                    break;
                }
            }
            let (head, bufs) = self.pop_chain(mem, RX, true)?;
            let room: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
            let need = (HDR_LEN + MAX_FRAME) as u64;
            if room < need {
                return Err(DeviceError::RxTooSmall {
                    queue: RX,
                    len: room,
                    need,
                });
            }
            self.pending = None;
            if (HDR_LEN + len) as u64 > room {
                // Larger than any frame of a 1500-byte MTU: not ours to deliver.
                self.stats.dropped += 1;
                self.queues[usize::from(RX)].go_to_previous_position();
                continue;
            }
            let mut hdr = [0u8; HDR_LEN];
            hdr[10] = 1; // num_buffers
            let mut packet = Vec::with_capacity(HDR_LEN + len);
            packet.extend_from_slice(&hdr);
            packet.extend_from_slice(&self.frame[..len]);
            let mut rest = &packet[..];
            for b in &bufs {
                let n = rest.len().min(b.len as usize);
                mem.write_slice(&rest[..n], GuestAddress(b.addr))
                    .map_err(|_| DeviceError::BufferOutside {
                        queue: RX,
                        addr: b.addr,
                        len: b.len,
                    })?;
                if let Some(w) = self.written.as_mut() {
                    w.buffers.push((b.addr, n as u64));
                }
                rest = &rest[n..];
                if rest.is_empty() {
                    break;
                }
            }
            // HDR_LEN + len is at most 64 KiB.
            let used = u32::try_from(packet.len()).unwrap_or(u32::MAX);
            self.add_used(mem, RX, head, used)?;
            self.stats.rx_frames += 1;
            delivered += 1;
        }
        Ok(delivered)
    }

    /// The Idle hypercall with a network device: waits up to `limit` for a
    /// frame (delivering it), for a held transmitted frame to go out (its
    /// buffer is the guest's again), or until `stop()` says to. Without
    /// receive buffers to fill a frame cannot wake the guest, so it only
    /// sleeps; a rate limit's held frame wakes it when its tokens return.
    pub fn idle(
        &mut self,
        mem: &GuestMemoryMmap,
        limit: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), DeviceError> {
        let deadline = Instant::now() + limit;
        loop {
            let sent = match self.tx_held {
                Some(_) => self.transmit(mem)?,
                None => 0,
            };
            if self.receive(mem)? > 0 || sent > 0 || stop() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let mut slice = (deadline - now).min(IDLE_SLICE);
            if let Some(wake) = self.next_wake(now) {
                slice = slice.min(wake.saturating_duration_since(now));
            }
            let room = self.usable(RX) && self.available(mem, RX)? > 0;
            if room && self.pending.is_none() {
                // Whole milliseconds, rounded up, so a short wait still waits.
                let ms = i32::try_from(slice.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
                self.tap.wait_readable(ms);
            } else {
                std::thread::sleep(slice);
            }
        }
    }
}

/// Checks the registers of queue `q` as the driver made it ready: a size
/// that is a power of two up to [`QUEUE_MAX`], and rings inside the app's
/// memory `app`, aligned as the spec asks.
pub(super) fn check_queue(q: u16, regs: &QueueRegs, app: (u64, u64)) -> Result<(), DeviceError> {
    let size = regs.size;
    if size == 0 || size > QUEUE_MAX || !size.is_power_of_two() {
        return Err(DeviceError::QueueSize {
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
        if !in_app(app, addr, len) || addr % align != 0 {
            return Err(DeviceError::RingOutside {
                queue: q,
                what,
                addr,
                len,
            });
        }
    }
    Ok(())
}

fn new_queue() -> Queue {
    // QUEUE_MAX is a power of two: `new` cannot refuse it.
    Queue::new(QUEUE_MAX).unwrap_or_else(|_| unreachable!("QUEUE_MAX is a valid queue size"))
}

fn ring_error(queue: u16, what: &'static str, addr: u64) -> DeviceError {
    DeviceError::RingOutside {
        queue,
        what,
        addr,
        len: 0,
    }
}

/// Whether `[addr, addr + len)` lies in `[app.0, app.1)`.
fn in_app(app: (u64, u64), addr: u64, len: u64) -> bool {
    addr >= app.0 && addr.checked_add(len).is_some_and(|end| end <= app.1)
}
