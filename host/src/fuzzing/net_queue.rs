//! The `virtio_net_queue` target: the virtio-net device driven through its
//! virtio-mmio registers as a driver would (reset, features, both queues,
//! ready, `DRIVER_OK`), then by a script of steps the input gives (guest
//! memory writes, notifies, frames arriving on its tap, VM exits, Idle,
//! any register write), over a small guest memory, with one end of a
//! datagram socket pair for its tap.
//!
//! Every step must end in `Ok` or a [`DeviceError`] (the VM would end
//! with exit 123), never a panic; and after every step each guest byte
//! that changed lies in the app's memory and in what the device says it
//! wrote ([`NetDevice::take_written`], what a backup point copies).
//!
//! Input: a header of 14 bytes per queue (receive, then transmit): its
//! size (u16), then its descriptor table, available and used ring (each an
//! i32 offset from the app's memory start), little-endian. Then steps, an
//! opcode byte (taken modulo 6) and its operands:
//! `0 at:u16 n:u8 bytes[n]` writes guest memory at app offset `at`;
//! `1 q:u8` writes `q` to `QueueNotify`; `2 len:u16` sends a frame of `len`
//! bytes to the device's tap; `3` is a VM exit (`pump`); `4 reg:u8
//! value:u32` writes `value` to the register at `4 * reg`; `5` is an Idle
//! hypercall that ends at once.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tandem_abi::layout;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::mmio::low32;
use crate::devices::net::{NetDevice, NetStats, HDR_LEN, MAX_CHAIN_BYTES, RX, TX};
use crate::devices::tap::Tap;
use crate::devices::DeviceError;

/// Bytes of the app's memory (from [`layout::HEAP_ADDR`]): room for both
/// queues at their largest and a few frame buffers.
const APP: u64 = 64 * 1024;
/// Guest memory below and above the app's, which the device must never write.
const GUARD: u64 = 4096;
/// Bytes of the queue header.
const HEADER: usize = 28;
/// Most steps one input runs.
const MAX_STEPS: usize = 256;

/// How one input's run ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// `Ok`, or the error that ends the VM.
    pub result: Result<(), DeviceError>,
    /// What the device moved.
    pub stats: NetStats,
    /// The frames the device sent on its tap.
    pub sent: Vec<Vec<u8>>,
}

/// The fuzz body.
pub fn virtio_net_queue(data: &[u8]) {
    let out = run(data);
    for frame in &out.sent {
        assert!(frame.len() as u64 <= MAX_CHAIN_BYTES - HDR_LEN as u64);
    }
    assert!(out.stats.tx_frames >= out.sent.len() as u64);
    if let Err(e) = out.result {
        // What the VM's exit reports.
        assert!(!e.to_string().is_empty());
    }
}

/// A device and its surroundings.
struct Bench {
    mem: GuestMemoryMmap,
    dev: NetDevice,
    /// The host's side of the link.
    peer: UnixDatagram,
    /// Guest memory as the last step left it.
    shadow: Vec<u8>,
    sent: Vec<Vec<u8>>,
    /// Where frames from the peer land.
    scratch: Vec<u8>,
}

const BASE: u64 = layout::HEAP_ADDR - GUARD;

impl Bench {
    fn new() -> Option<Self> {
        let size = usize::try_from(APP + 2 * GUARD).ok()?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), size)]).ok()?;
        let (ours, peer) = UnixDatagram::pair().ok()?;
        peer.set_nonblocking(true).ok()?;
        let tap = Tap::from_socket(ours, "fuzz0").ok()?;
        let mut dev = NetDevice::new(tap, [2, 0, 0, 0, 0, 1], layout::HEAP_ADDR + APP);
        dev.track_writes();
        Some(Self {
            mem,
            dev,
            peer,
            shadow: vec![0; size],
            sent: Vec::new(),
            scratch: vec![0; 128 * 1024],
        })
    }

    /// Runs one device call, then checks what it wrote and collects what
    /// it sent.
    fn call(
        &mut self,
        f: impl FnOnce(&mut NetDevice, &GuestMemoryMmap) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let result = f(&mut self.dev, &self.mem);
        let written = self.dev.take_written();
        let mut now = vec![0u8; self.shadow.len()];
        assert!(self.mem.read_slice(&mut now, GuestAddress(BASE)).is_ok());
        if now != self.shadow {
            let changed = (0u64..)
                .zip(now.iter().zip(&self.shadow))
                .filter(|(_, (a, b))| a != b);
            for (i, _) in changed {
                let addr = BASE + i;
                assert!(
                    (layout::HEAP_ADDR..layout::HEAP_ADDR + APP).contains(&addr),
                    "the device wrote {addr:#x}, outside the app's memory"
                );
                assert!(
                    written
                        .iter()
                        .any(|&(at, len)| (at..at.saturating_add(len)).contains(&addr)),
                    "the device wrote {addr:#x} and did not say so ({written:x?})"
                );
            }
        }
        self.shadow = now;
        while let Ok(n) = self.peer.recv(&mut self.scratch) {
            self.sent.push(self.scratch[..n].to_vec());
        }
        result
    }

    /// A register write, as the vCPU loop makes it.
    fn reg(&mut self, reg: u32, value: u32) -> Result<(), DeviceError> {
        self.call(|dev, mem| dev.write(mem, u64::from(reg), &value.to_le_bytes()))
    }

    fn read_reg(&self, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    /// The driver's side of bringing the device up, with queue registers
    /// from the input's header.
    fn set_up(&mut self, header: &[u8]) -> Result<(), DeviceError> {
        let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let addr_at = |at: usize| {
            let off =
                i32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
            layout::HEAP_ADDR.wrapping_add_signed(i64::from(off))
        };
        let status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        self.reg(VIRTIO_MMIO_STATUS, 0)?;
        self.reg(VIRTIO_MMIO_STATUS, status)?;
        let mut features = [0u32; 2];
        for (sel, f) in (0u32..).zip(&mut features) {
            self.reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel)?;
            *f = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
            self.reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel)?;
            self.reg(VIRTIO_MMIO_DRIVER_FEATURES, *f)?;
        }
        let status = status | VIRTIO_CONFIG_S_FEATURES_OK;
        self.reg(VIRTIO_MMIO_STATUS, status)?;
        assert_ne!(
            self.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "the device refused the features it offers"
        );
        for (q, at) in [(RX, 0), (TX, 14)] {
            let split = |a: u64| (low32(a), low32(a >> 32));
            self.reg(VIRTIO_MMIO_QUEUE_SEL, u32::from(q))?;
            self.reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(u16_at(at)))?;
            for (lo, hi, addr) in [
                (
                    VIRTIO_MMIO_QUEUE_DESC_LOW,
                    VIRTIO_MMIO_QUEUE_DESC_HIGH,
                    addr_at(at + 2),
                ),
                (
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                    addr_at(at + 6),
                ),
                (
                    VIRTIO_MMIO_QUEUE_USED_LOW,
                    VIRTIO_MMIO_QUEUE_USED_HIGH,
                    addr_at(at + 10),
                ),
            ] {
                let (l, h) = split(addr);
                self.reg(lo, l)?;
                self.reg(hi, h)?;
            }
            self.reg(VIRTIO_MMIO_QUEUE_READY, 1)?;
        }
        self.reg(VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK)
    }

    /// Runs the steps in `script`.
    fn steps(&mut self, script: &[u8]) -> Result<(), DeviceError> {
        let mut rest = script;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
            rest = tail;
            Some(head)
        };
        for _ in 0..MAX_STEPS {
            let Some(&[op]) = take(1) else {
                return Ok(());
            };
            match op % 6 {
                0 => {
                    let Some(&[a, b, n]) = take(3) else {
                        return Ok(());
                    };
                    let Some(bytes) = take(usize::from(n)) else {
                        return Ok(());
                    };
                    let at = layout::HEAP_ADDR + u64::from(u16::from_le_bytes([a, b]));
                    // The guest writes its own memory: not the device's doing.
                    let _ = self.mem.write_slice(bytes, GuestAddress(at));
                    assert!(self
                        .mem
                        .read_slice(&mut self.shadow, GuestAddress(BASE))
                        .is_ok());
                }
                1 => {
                    let Some(&[q]) = take(1) else {
                        return Ok(());
                    };
                    self.reg(VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(q))?;
                }
                2 => {
                    let Some(&[a, b]) = take(2) else {
                        return Ok(());
                    };
                    let frame: Vec<u8> = (0..u16::from_le_bytes([a, b]))
                        .map(|i| i.to_le_bytes()[0])
                        .collect();
                    // A full queue drops it, as a tap's does.
                    let _ = self.peer.send(&frame);
                }
                3 => self.call(|dev, mem| dev.pump(mem))?,
                4 => {
                    let Some(&[reg, a, b, c, d]) = take(5) else {
                        return Ok(());
                    };
                    self.reg(u32::from(reg) * 4, u32::from_le_bytes([a, b, c, d]))?;
                }
                _ => self.call(|dev, mem| dev.idle(mem, Duration::ZERO, &|| true))?,
            }
        }
        Ok(())
    }
}

/// Runs one input.
pub(crate) fn run(data: &[u8]) -> Outcome {
    let Some(mut bench) = Bench::new() else {
        panic!("cannot make the fuzz target's guest memory or socket pair");
    };
    let mut header = [0u8; HEADER];
    for (h, b) in header.iter_mut().zip(data) {
        *h = *b;
    }
    let script = data.get(HEADER..).unwrap_or(&[]);
    let result = bench.set_up(&header).and_then(|()| bench.steps(script));
    Outcome {
        result,
        stats: bench.dev.stats(),
        sent: bench.sent,
    }
}

/// App offsets of the seeds' rings (receive, then transmit: descriptor
/// table, available ring, used ring) and buffers.
const SEED_RINGS: [[u16; 3]; 2] = [[0x0000, 0x1000, 0x2000], [0x3000, 0x4000, 0x5000]];
const SEED_TX_BUF: u16 = 0x8000;
const SEED_RX_BUF: u16 = 0x9000;
/// The seeds' queue size.
const SEED_SIZE: u16 = 8;
/// `VIRTQ_DESC_F_NEXT` and `VIRTQ_DESC_F_WRITE`.
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// An input, built step by step.
struct Script(Vec<u8>);

impl Script {
    /// The header: queue sizes, the transmit descriptor table at app
    /// offset `tx_desc`, every other ring where [`SEED_RINGS`] puts it.
    fn new(sizes: [u16; 2], tx_desc: i32) -> Self {
        let mut b = Vec::new();
        for (q, (size, rings)) in sizes.iter().zip(SEED_RINGS).enumerate() {
            b.extend(size.to_le_bytes());
            for (i, r) in rings.into_iter().enumerate() {
                let off = if q == 1 && i == 0 {
                    tx_desc
                } else {
                    i32::from(r)
                };
                b.extend(off.to_le_bytes());
            }
        }
        Self(b)
    }

    fn seed() -> Self {
        Self::new([SEED_SIZE; 2], i32::from(SEED_RINGS[1][0]))
    }

    fn write(mut self, at: u16, bytes: &[u8]) -> Self {
        for (i, chunk) in (0u16..).zip(bytes.chunks(255)) {
            self.0.push(0);
            self.0.extend((at + 255 * i).to_le_bytes());
            self.0.push(u8::try_from(chunk.len()).unwrap_or(0));
            self.0.extend(chunk);
        }
        self
    }

    /// Descriptor `i` of queue `q`'s table.
    fn desc(self, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> Self {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend(len.to_le_bytes());
        d.extend(flags.to_le_bytes());
        d.extend(next.to_le_bytes());
        let table = SEED_RINGS[usize::from(q)][0];
        self.write(table + 16 * i, &d)
    }

    /// Queue `q`'s available ring: index `idx`, then `heads`.
    fn avail(self, q: u16, idx: u16, heads: &[u16]) -> Self {
        let mut r = 0u16.to_le_bytes().to_vec();
        r.extend(idx.to_le_bytes());
        for h in heads {
            r.extend(h.to_le_bytes());
        }
        self.write(SEED_RINGS[usize::from(q)][1], &r)
    }

    fn notify(mut self, q: u16) -> Self {
        self.0.extend([1, u8::try_from(q).unwrap_or(0)]);
        self
    }

    fn frame(mut self, len: u16) -> Self {
        self.0.push(2);
        self.0.extend(len.to_le_bytes());
        self
    }

    fn pump(mut self) -> Self {
        self.0.push(3);
        self
    }

    fn idle(mut self) -> Self {
        self.0.push(5);
        self
    }
}

/// Guest address of app offset `at`.
fn app(at: u16) -> u64 {
    layout::HEAP_ADDR + u64::from(at)
}

/// A 60-byte Ethernet frame behind a zero virtio-net header.
fn tx_packet() -> Vec<u8> {
    let mut p = vec![0u8; HDR_LEN];
    p.extend((0..60u8).map(|i| i ^ 0x5A));
    p
}

/// Valid exchanges first (one frame out, in one and in two descriptors;
/// one frame in, by a VM exit and by Idle), then hostile rings: a buffer
/// outside memory, a loop in the `next` links, a `next` past the table, a
/// head past the queue size, an available index past it, a ring below the
/// app's memory, a queue size that is no power of two, a frame to send
/// longer than an Ethernet frame.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    let packet = tx_packet();
    let len = u32::try_from(packet.len()).unwrap_or(0);
    let tx = |s: Script| s.write(SEED_TX_BUF, &packet);
    let hdr = u32::try_from(HDR_LEN).unwrap_or(0);
    let rx = Script::seed()
        .desc(RX, 0, app(SEED_RX_BUF), 2048, WRITE, 0)
        .avail(RX, 1, &[0])
        .frame(60);
    let hostile_tx = |f: fn(Script) -> Script| f(tx(Script::seed())).notify(TX).0;
    vec![
        tx(Script::seed())
            .desc(TX, 0, app(SEED_TX_BUF), len, 0, 0)
            .avail(TX, 1, &[0])
            .notify(TX)
            .0,
        tx(Script::seed())
            .desc(TX, 3, app(SEED_TX_BUF), hdr, NEXT, 5)
            .desc(TX, 5, app(SEED_TX_BUF) + u64::from(hdr), len - hdr, 0, 0)
            .avail(TX, 1, &[3])
            .notify(TX)
            .0,
        rx.pump().0,
        Script::seed()
            .desc(RX, 0, app(SEED_RX_BUF), 2048, WRITE, 0)
            .avail(RX, 1, &[0])
            .frame(60)
            .idle()
            .0,
        hostile_tx(|s| {
            s.desc(TX, 0, app(0) + APP + (1 << 20), 72, 0, 0)
                .avail(TX, 1, &[0])
        }),
        hostile_tx(|s| {
            s.desc(TX, 0, app(SEED_TX_BUF), 36, NEXT, 1)
                .desc(TX, 1, app(SEED_TX_BUF) + 36, 36, NEXT, 0)
                .avail(TX, 1, &[0])
        }),
        hostile_tx(|s| {
            s.desc(TX, 0, app(SEED_TX_BUF), 36, NEXT, 50)
                .avail(TX, 1, &[0])
        }),
        hostile_tx(|s| s.avail(TX, 1, &[200])),
        hostile_tx(|s| s.avail(TX, 100, &[0])),
        Script::new([SEED_SIZE; 2], -0x1000).0,
        Script::new([100, SEED_SIZE], 0x3000).0,
        hostile_tx(|s| {
            s.desc(TX, 0, app(SEED_TX_BUF), 2000, 0, 0)
                .avail(TX, 1, &[0])
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Address;

    #[test]
    fn valid_exchanges_move_their_frames() {
        let seeds = seeds();
        for seed in &seeds[..2] {
            let out = run(seed);
            assert_eq!(out.result, Ok(()));
            assert_eq!(out.sent, vec![tx_packet()[HDR_LEN..].to_vec()]);
            assert_eq!(out.stats.tx_frames, 1);
        }
        for seed in &seeds[2..4] {
            let out = run(seed);
            assert_eq!(out.result, Ok(()));
            assert_eq!(out.stats.rx_frames, 1, "{:?}", out.stats);
        }
    }

    #[test]
    fn a_received_frame_lands_in_the_buffer_with_its_header() {
        let mut bench = Bench::new().unwrap();
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&seeds()[2][..HEADER]);
        bench.set_up(&header).unwrap();
        bench.steps(&seeds()[2][HEADER..]).unwrap();
        let mut buf = vec![0u8; HDR_LEN + 60];
        bench
            .mem
            .read_slice(&mut buf, GuestAddress(app(SEED_RX_BUF)))
            .unwrap();
        let mut want = vec![0u8; HDR_LEN];
        want[10] = 1;
        want.extend((0..60u8).collect::<Vec<_>>());
        assert_eq!(buf, want);
        // The used ring: index 1, head 0, 72 bytes.
        let used = GuestAddress(app(SEED_RINGS[0][2]));
        assert_eq!(bench.mem.read_obj::<u16>(used.unchecked_add(2)).unwrap(), 1);
        assert_eq!(bench.mem.read_obj::<u32>(used.unchecked_add(4)).unwrap(), 0);
        assert_eq!(
            bench.mem.read_obj::<u32>(used.unchecked_add(8)).unwrap(),
            72
        );
    }

    #[test]
    fn hostile_rings_end_the_vm_with_a_device_error() {
        let outcomes: Vec<_> = seeds()[4..].iter().map(|s| run(s).result).collect();
        let matched = [
            matches!(
                outcomes[0],
                Err(DeviceError::BufferOutside { queue: TX, .. })
            ),
            matches!(
                outcomes[1],
                Err(DeviceError::Chain {
                    queue: TX,
                    head: 0,
                    ..
                })
            ),
            matches!(
                outcomes[2],
                Err(DeviceError::Chain {
                    queue: TX,
                    head: 0,
                    ..
                })
            ),
            matches!(
                outcomes[3],
                Err(DeviceError::DescriptorIndex {
                    queue: TX,
                    index: 200,
                    size: 8
                })
            ),
            matches!(
                outcomes[4],
                Err(DeviceError::AvailIndex {
                    queue: TX,
                    avail: 100,
                    ..
                })
            ),
            matches!(
                outcomes[5],
                Err(DeviceError::RingOutside {
                    queue: TX,
                    what: "descriptor table",
                    ..
                })
            ),
            matches!(
                outcomes[6],
                Err(DeviceError::QueueSize {
                    queue: RX,
                    size: 100,
                    ..
                })
            ),
            matches!(
                outcomes[7],
                Err(DeviceError::ChainTooLong {
                    queue: TX,
                    len: 2000,
                    max: 1526
                })
            ),
        ];
        for (i, ok) in matched.iter().enumerate() {
            assert!(ok, "hostile seed {}: {:?}", i + 4, outcomes[i]);
        }
        assert_eq!(outcomes.len(), matched.len());
    }
}
