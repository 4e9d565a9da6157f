//! Drives the virtio-blk device by hand and breaks one request rule,
//! chosen by the first argument; the VMM must end this VM (exit 123) with
//! a message naming the problem, and nothing else.
#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::Layout;

use tandem_guest::abi::bootinfo::Device;
use tandem_guest::prelude::*;

tandem_guest::entry!(main, devices = [block]);

const CASES: &[&str] = &[
    "ring-outside",
    "buffer-outside",
    "past-end",
    "huge-length",
    "unaligned",
    "bad-layout",
    "no-status",
    "avail-index",
    "bad-next",
];

/// Queue entries.
const SIZE: u16 = 8;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// The device's registers (virtio-mmio, modern layout).
struct Regs(u64);

impl Regs {
    fn write(&self, offset: u64, value: u32) {
        // SAFETY: the window is the device's register window, mapped user
        // read-write and uncached by the VMM; a write is a register access.
        unsafe { ((self.0 + offset) as *mut u32).write_volatile(value) }
    }
    fn read(&self, offset: u64) -> u32 {
        // SAFETY: as in `write`; a read only asks the device.
        unsafe { ((self.0 + offset) as *const u32).read_volatile() }
    }
}

/// Writes `value` at guest-physical `addr` in the area this app allocated.
fn put<T>(addr: u64, value: T) {
    // SAFETY: `addr` lies in the area this app allocated (identity mapped
    // heap) and is aligned for T.
    unsafe { (addr as *mut T).write_volatile(value) }
}

fn main(env: &Env) -> u8 {
    let Some(case) = env.args().next().filter(|c| CASES.contains(c)) else {
        println!("usage: hostileblk CASE, one of {CASES:?}");
        return 2;
    };
    let Some(regs) = env.boot_info().devices.iter().find_map(|d| match *d {
        Device::VirtioMmio { base, .. } if Regs(base).read(8) == 2 => Some(Regs(base)),
        _ => None,
    }) else {
        println!("hostileblk: no virtio-blk device");
        return 3;
    };
    println!("hostileblk: {case}");
    let layout = Layout::from_size_align(0x6000, 0x1000).unwrap();
    // SAFETY: the layout has a non-zero size and a power-of-two alignment.
    let area = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if area.is_null() {
        return 4;
    }
    let (desc, avail, used) = (area as u64, area as u64 + 0x1000, area as u64 + 0x2000);
    let (hdr, data, status) = (
        area as u64 + 0x3000,
        area as u64 + 0x4000,
        area as u64 + 0x5000,
    );
    // The capacity, from the config space (low 32 bits are enough here).
    let capacity = u64::from(regs.read(0x100));
    regs.write(0x70, 0); // reset
    regs.write(0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    regs.write(0x24, 1);
    regs.write(0x20, 1); // VERSION_1
    regs.write(0x70, 1 | 2 | 8); // FEATURES_OK
    regs.write(0x30, 0); // the request queue
    regs.write(0x38, u32::from(SIZE));
    let table = if case == "ring-outside" { 0x1000 } else { desc };
    regs.write(0x80, table as u32);
    regs.write(0x84, (table >> 32) as u32);
    regs.write(0x90, avail as u32);
    regs.write(0x94, (avail >> 32) as u32);
    regs.write(0xa0, used as u32);
    regs.write(0xa4, (used >> 32) as u32);
    regs.write(0x44, 1); // QueueReady
    regs.write(0x70, 1 | 2 | 8 | 4); // DRIVER_OK

    // A read request (type 0) of one sector at `sector`, unless the case
    // says otherwise: header, data, status.
    let sector = if case == "past-end" { capacity } else { 0 };
    put(hdr, 0u32);
    put(hdr + 8, sector);
    let header = match case {
        "buffer-outside" => (0x1_0000_0000u64, 16u32, NEXT, 1u16),
        "bad-next" => (hdr, 16, NEXT, SIZE + 3),
        _ => (hdr, 16, NEXT, 1),
    };
    let body = match case {
        "huge-length" => (data, 4 << 20, WRITE | NEXT, 2),
        "unaligned" => (data, 100, WRITE | NEXT, 2),
        // Device-writable data, then a readable buffer after it.
        "bad-layout" => (data, 512, WRITE | NEXT, 2),
        _ => (data, 512, WRITE | NEXT, 2),
    };
    let last = match case {
        "bad-layout" => (status, 16, 0, 0),
        // A write request whose chain has no writable byte.
        "no-status" => (status, 512, 0, 0),
        _ => (status, 1, WRITE, 0),
    };
    if case == "no-status" {
        put(hdr, 1u32);
    }
    let body = if case == "no-status" {
        (data, 512, NEXT, 2)
    } else {
        body
    };
    for (i, (addr, len, flags, next)) in [header, body, last].into_iter().enumerate() {
        let d = desc + 16 * i as u64;
        put(d, addr);
        put(d + 8, len);
        put(d + 12, flags);
        put(d + 14, next);
    }
    put(avail + 4, 0u16); // ring[0] = descriptor 0
    let idx = if case == "avail-index" { SIZE + 5 } else { 1 };
    put(avail + 2, idx);
    regs.write(0x50, 0); // kick the request queue
    println!("hostileblk: the VMM let {case} pass");
    1
}
