//! The device driven as a guest driver would, over real guest memory and
//! a real (temporary) disk file, without KVM: set-up, a write and a read
//! through the rings, a read-only disk's status, and a rate limit holding
//! a request in the ring until its tokens return.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_abi::layout;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::BlkDevice;
use super::disk::DiskFile;
use crate::devices::rate_limiter::{Bucket, RateLimit};

const MEM: u64 = layout::MIN_MEM_SIZE + (8 << 20);
const DESC: u64 = layout::HEAP_ADDR;
const AVAIL: u64 = DESC + 0x1000;
const USED: u64 = DESC + 0x2000;
const HDR: u64 = DESC + 0x3000;
const DATA: u64 = DESC + 0x4000;
const STATUS: u64 = DESC + 0x5000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn disk(name: &str, read_only: bool) -> (DiskFile, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tandem-blkdev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    (DiskFile::open(&path, read_only).unwrap(), path)
}

struct Guest {
    mem: GuestMemoryMmap,
    dev: BlkDevice,
    avail: u16,
}

impl Guest {
    fn new(disk: DiskFile) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(MEM).unwrap())])
            .unwrap();
        let mut g = Self {
            mem,
            dev: BlkDevice::new(disk, layout::virtio_mmio_window(1), MEM),
            avail: 0,
        };
        for (reg, value) in [
            (VIRTIO_MMIO_STATUS, 0),
            (VIRTIO_MMIO_STATUS, 3),
            (VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1),
            (VIRTIO_MMIO_DRIVER_FEATURES, 1),
            (VIRTIO_MMIO_STATUS, 3 | 8),
            (VIRTIO_MMIO_QUEUE_SEL, 0),
            (VIRTIO_MMIO_QUEUE_NUM, 8),
            (VIRTIO_MMIO_QUEUE_DESC_LOW, u32::try_from(DESC).unwrap()),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, u32::try_from(AVAIL).unwrap()),
            (VIRTIO_MMIO_QUEUE_USED_LOW, u32::try_from(USED).unwrap()),
            (VIRTIO_MMIO_QUEUE_READY, 1),
            (VIRTIO_MMIO_STATUS, 0xf),
        ] {
            g.reg(reg, value);
        }
        g
    }

    fn reg(&mut self, reg: u32, value: u32) {
        self.dev
            .write(&self.mem, u64::from(reg), &value.to_le_bytes())
            .unwrap();
    }

    fn put<T: vm_memory::ByteValued>(&self, addr: u64, v: T) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    /// Makes a request (type `kind`, `sector`, 512 bytes of data at DATA)
    /// available in descriptors 0..3 and kicks.
    fn request(&mut self, kind: u32, sector: u64) {
        self.put(HDR, kind);
        self.put(HDR + 8, sector);
        self.put(STATUS, 0xffu8);
        let data_flags = if kind == 0 { WRITE | NEXT } else { NEXT };
        for (i, (addr, len, flags, next)) in [
            (HDR, 16u32, NEXT, 1u16),
            (DATA, 512, data_flags, 2),
            (STATUS, 1, WRITE, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let d = DESC + 16 * i as u64;
            self.put(d, addr);
            self.put(d + 8, len);
            self.put(d + 12, flags);
            self.put(d + 14, next);
        }
        self.put(AVAIL + 4 + 2 * u64::from(self.avail % 8), 0u16);
        self.avail = self.avail.wrapping_add(1);
        self.put(AVAIL + 2, self.avail);
        self.reg(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    }

    fn used(&self) -> (u16, u32, u8) {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let slot = u64::from(idx.wrapping_sub(1) % 8);
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(USED + 4 + 8 * slot + 4))
            .unwrap();
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (idx, len, status)
    }
}

#[test]
fn a_write_and_a_read_go_through_the_rings_to_the_file() {
    let (d, path) = disk("rw.img", false);
    let mut g = Guest::new(d);
    let pattern: Vec<u8> = (0..512u32).map(|i| (i % 251) as u8).collect();
    g.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    g.request(1, 2);
    assert_eq!(g.used(), (1, 1, 0), "the write's used entry and status");
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[1024..1536], &pattern[..]);
    g.mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    g.request(0, 2);
    assert_eq!(g.used(), (2, 513, 0), "the read's used entry and status");
    let mut back = [0u8; 512];
    g.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(&back[..], &pattern[..]);
    let s = g.dev.stats();
    assert_eq!((s.writes, s.reads, s.kicks), (1, 1, 2));
}

#[test]
fn a_read_only_disk_answers_a_write_with_an_error_status() {
    let (d, path) = disk("ro.img", true);
    let mut g = Guest::new(d);
    g.mem.write_slice(&[7u8; 512], GuestAddress(DATA)).unwrap();
    g.request(1, 0);
    assert_eq!(g.used(), (1, 1, 1), "IOERR");
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn a_rate_limit_holds_a_request_in_the_ring_until_its_tokens_return() {
    let (d, _) = disk("rate.img", false);
    let mut g = Guest::new(d);
    g.dev.set_rate_limit(RateLimit {
        bytes: None,
        ops: Some(Bucket::new(4, 1).unwrap()),
    });
    g.request(0, 0);
    assert_eq!(g.used().0, 1);
    assert_eq!(g.dev.held_until(), None);
    // The bucket is empty: the next request stays in the ring.
    g.request(0, 1);
    assert_eq!(g.used().0, 1, "served past the limit");
    let at = g.dev.held_until().expect("held");
    assert!(at > Instant::now() - Duration::from_millis(1));
    // Every exit looks again; once the tokens are back, it is served.
    while Instant::now() < at {
        std::thread::sleep(at - Instant::now());
    }
    g.dev.pump(&g.mem).unwrap();
    assert_eq!(g.used().0, 2);
    assert_eq!(g.dev.held_until(), None);
    assert_eq!(g.dev.stats().held, 1);
}

#[test]
fn with_backups_on_the_device_keeps_account_of_blocks_and_guest_memory_it_wrote() {
    let (d, _) = disk("dirty.img", false);
    let mut g = Guest::new(d);
    // Off: nothing is kept.
    g.request(1, 0);
    assert!(g.dev.take_dirty_blocks().is_empty());
    assert!(g.dev.take_written().is_empty());
    g.dev.track_for_backup();
    // Sectors 9 and 8 + 16 are in 4 KiB blocks 1 and 3.
    g.request(1, 9);
    g.request(1, 24);
    g.request(0, 100);
    assert_eq!(g.dev.take_dirty_blocks(), [1, 3], "the blocks written");
    assert!(g.dev.take_dirty_blocks().is_empty(), "harvested once");
    let written = g.dev.take_written();
    // The read's data and every status byte, and the used ring.
    assert!(written.contains(&(DATA, 512)), "{written:?}");
    assert!(written.contains(&(STATUS, 1)), "{written:?}");
    assert!(written.contains(&(USED, 6 + 8 * 8)), "{written:?}");
    assert!(!written.iter().any(|&(a, _)| a == HDR), "{written:?}");
    assert!(g.dev.take_written().is_empty());
}
