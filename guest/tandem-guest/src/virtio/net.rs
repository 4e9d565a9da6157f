//! A virtio-net device (device type 1): one receive and one transmit
//! queue, no offloads, polled, as a [`smoltcp`] device.

use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tandem_abi::bootinfo::Device;

use super::dma::DmaRegion;
use super::mmio::{DeviceError, Transport};
use super::queue::{Virtqueue, DESC_F_WRITE};

const DEVICE_ID_NET: u32 = 1;
/// The device has a MAC address in its config.
const F_MAC: u64 = 1 << 5;
/// Legacy: headers and frames may share a descriptor.
const F_ANY_LAYOUT: u64 = 1 << 27;
/// The modern layout.
const F_VERSION_1: u64 = 1 << 32;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Entries per queue asked for.
const QUEUE_SIZE: u16 = 128;
/// Bytes per buffer: header and a whole Ethernet frame (no offloads, no
/// merged buffers), rounded up.
const BUF_SIZE: usize = 2048;
/// An Ethernet frame without FCS: 14 bytes of header and a 1500-byte MTU.
pub const MAX_FRAME: usize = 1514;
/// `virtio_net_hdr` with `num_buffers`, as the modern layout always has it.
const HDR_MODERN: usize = 12;
/// The legacy header without merged buffers.
const HDR_LEGACY: usize = 10;

/// One queue and the buffers its descriptors point at (descriptor `i`,
/// buffer `i`).
struct Ring {
    queue: Virtqueue,
    buffers: DmaRegion,
}

impl Ring {
    fn new(transport: &Transport, index: u16) -> Result<Self, DeviceError> {
        let queue = transport.setup_queue(index, QUEUE_SIZE)?;
        let buffers =
            DmaRegion::new(usize::from(queue.size()) * BUF_SIZE).ok_or(DeviceError::OutOfMemory)?;
        Ok(Self { queue, buffers })
    }

    fn post(&mut self, id: u16, len: usize, flags: u16) {
        let addr = self.buffers.phys(usize::from(id) * BUF_SIZE);
        // len is at most BUF_SIZE.
        self.queue.push(id, addr, len as u32, flags);
    }
}

/// The receive side: the ring, every buffer posted to the device.
struct RxSide {
    ring: Ring,
    hdr_len: usize,
}

/// The transmit side: the ring, the buffers the driver holds, and the
/// first rule the device broke here (handled by [`VirtioNet`]).
struct TxSide {
    ring: Ring,
    free: Vec<u16>,
    hdr_len: usize,
    error: Option<DeviceError>,
}

impl TxSide {
    /// Takes back the transmit buffers the device is done with.
    fn reclaim(&mut self) {
        while self.error.is_none() {
            match self.ring.queue.pop_used(BUF_SIZE as u32) {
                Ok(Some((id, _))) => self.free.push(id),
                Ok(None) => return,
                Err(e) => self.error = Some(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.reclaim();
        if self.error.is_some() {
            return;
        }
        let Some(id) = self.free.pop() else {
            return; // dropped: the peer retransmits
        };
        let at = usize::from(id) * BUF_SIZE;
        let hdr = [0u8; HDR_MODERN];
        if self.ring.buffers.copy_in(at, &hdr[..self.hdr_len])
            && self.ring.buffers.copy_in(at + self.hdr_len, frame)
        {
            self.ring.post(id, self.hdr_len + frame.len(), 0);
        } else {
            self.free.push(id);
        }
    }
}

/// A virtio-net device, driven by polling.
pub struct VirtioNet {
    transport: Transport,
    rx: RxSide,
    tx: TxSide,
    mac: [u8; 6],
    /// Whether the MAC comes from the device's configuration space.
    device_mac: bool,
    broken: Option<DeviceError>,
}

impl VirtioNet {
    /// The first virtio-net device among `devices` that starts; `Ok(None)`
    /// when there is none, the first refusal when none starts.
    /// `fallback_mac` is used when the device names no MAC.
    pub fn find(devices: &[Device], fallback_mac: [u8; 6]) -> Result<Option<Self>, DeviceError> {
        let mut refused = None;
        for device in devices {
            // A window that is no (good) device does not hide the next one.
            let started = Transport::probe(device, DEVICE_ID_NET)
                .and_then(|t| t.map(|t| Self::start(t, fallback_mac)).transpose());
            match started {
                Ok(Some(net)) => return Ok(Some(net)),
                Ok(None) => {}
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        refused.map_or(Ok(None), Err)
    }

    fn start(transport: Transport, fallback_mac: [u8; 6]) -> Result<Self, DeviceError> {
        let offered = transport.device_features();
        let mut accept = offered & F_MAC;
        if transport.is_legacy() {
            accept |= offered & F_ANY_LAYOUT;
        } else if offered & F_VERSION_1 == 0 {
            transport.fail();
            return Err(DeviceError::MissingFeature(32));
        } else {
            accept |= F_VERSION_1;
        }
        transport.accept_features(accept)?;
        let hdr_len = if transport.is_legacy() {
            HDR_LEGACY
        } else {
            HDR_MODERN
        };
        let mut rx = Ring::new(&transport, RX_QUEUE)?;
        let tx = Ring::new(&transport, TX_QUEUE)?;
        let mut mac = fallback_mac;
        if accept & F_MAC != 0 {
            transport.config_bytes(0, &mut mac);
        }
        for id in 0..rx.queue.size() {
            rx.post(id, BUF_SIZE, DESC_F_WRITE);
        }
        let free = (0..tx.queue.size()).rev().collect();
        transport.driver_ok();
        let mut net = Self {
            transport,
            rx: RxSide { ring: rx, hdr_len },
            tx: TxSide {
                ring: tx,
                free,
                hdr_len,
                error: None,
            },
            mac,
            device_mac: accept & F_MAC != 0,
            broken: None,
        };
        net.flush();
        net.transport.check_status()?;
        Ok(net)
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Reads the MAC address from the device again (a restored or cloned
    /// VM's may have changed) and returns it. A multicast address read
    /// back is not taken: the old one stays.
    pub fn reread_mac(&mut self) -> [u8; 6] {
        if self.device_mac && self.broken.is_none() {
            let mut mac = [0u8; 6];
            self.transport.config_bytes(0, &mut mac);
            if mac[0] & 1 == 0 && mac != [0; 6] {
                self.mac = mac;
            }
        }
        self.mac
    }

    /// The transport version (1 legacy, 2 modern).
    /// The register window's guest-physical address (which names the
    /// device in the boot-info block).
    pub fn base(&self) -> u64 {
        self.transport.base()
    }

    pub fn transport_version(&self) -> u32 {
        self.transport.version()
    }

    /// Whether every transmit buffer is with the device (after taking back
    /// those it is done with): nothing more can be sent until it returns
    /// one, which a device with a rate limit does when its tokens are back.
    pub fn tx_starved(&mut self) -> bool {
        self.tx.reclaim();
        self.broken.is_none() && self.tx.free.is_empty()
    }

    /// Why the device was given up, if it was.
    pub fn broken(&self) -> Option<DeviceError> {
        self.broken
    }

    /// Notifies the device of the buffers made available since the last
    /// flush: at most one register write (VM exit) per queue per batch.
    pub fn flush(&mut self) {
        if let Some(e) = self.tx.error {
            self.give_up(e);
        }
        if self.broken.is_some() {
            return;
        }
        if self.rx.ring.queue.take_kick() {
            self.transport.notify(RX_QUEUE);
        }
        if self.tx.ring.queue.take_kick() {
            self.transport.notify(TX_QUEUE);
        }
    }

    /// Gives the device up: it is reset, so it touches no buffer again.
    fn give_up(&mut self, e: DeviceError) {
        if self.broken.is_none() {
            crate::println!("tandem: virtio-net device dropped: {e}");
            self.transport.reset();
            self.broken = Some(e);
        }
    }

    /// The next received frame's buffer and length (header excluded).
    fn next_rx(&mut self) -> Option<(u16, usize)> {
        if self.broken.is_some() {
            return None;
        }
        let hdr_len = self.rx.hdr_len;
        loop {
            match self.rx.ring.queue.pop_used(BUF_SIZE as u32) {
                Ok(Some((id, len))) => {
                    let len = len as usize;
                    if len > hdr_len {
                        return Some((id, (len - hdr_len).min(MAX_FRAME)));
                    }
                    // Too short to hold a frame: back to the device.
                    self.rx.ring.post(id, BUF_SIZE, DESC_F_WRITE);
                }
                Ok(None) => return None,
                Err(e) => {
                    self.give_up(e);
                    return None;
                }
            }
        }
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        // Before the queues and buffers go back to the heap.
        self.transport.reset();
    }
}

/// A received frame, handed back to the device once read.
pub struct RxToken<'a> {
    rx: &'a mut RxSide,
    id: u16,
    len: usize,
}

/// Room to send one frame.
pub struct TxToken<'a> {
    tx: &'a mut TxSide,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let mut frame = [0u8; MAX_FRAME];
        let at = usize::from(self.id) * BUF_SIZE + self.rx.hdr_len;
        let frame = &mut frame[..self.len];
        if !self.rx.ring.buffers.copy_out(at, frame) {
            frame.fill(0);
        }
        // The buffer goes back before the frame is handled: it was copied.
        self.rx.ring.post(self.id, BUF_SIZE, DESC_F_WRITE);
        f(frame)
    }
}

impl Drop for RxToken<'_> {
    fn drop(&mut self) {
        // Not consumed: the buffer goes back unread (`push` ignores a
        // descriptor already in flight, so a consumed one is not posted twice).
        self.rx.ring.post(self.id, BUF_SIZE, DESC_F_WRITE);
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if len > MAX_FRAME {
            // Never asked for (the MTU says so); built and dropped.
            return f(&mut vec![0u8; len]);
        }
        let mut frame = [0u8; MAX_FRAME];
        let r = f(&mut frame[..len]);
        self.tx.send(&frame[..len]);
        r
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let (id, len) = self.next_rx()?;
        Some((
            RxToken {
                rx: &mut self.rx,
                id,
                len,
            },
            TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        if self.broken.is_some() {
            return None;
        }
        self.tx.reclaim();
        if self.tx.free.is_empty() {
            // Let the device see what is queued, and try again later.
            self.flush();
            return None;
        }
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}
