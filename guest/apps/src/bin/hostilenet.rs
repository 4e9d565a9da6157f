//! Drives the virtio-net device by hand and breaks one ring rule, chosen by
//! the first argument; the VMM must end this VM (exit 123) with a message
//! naming the problem, and nothing else.
#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::Layout;

use tandem_guest::abi::bootinfo::Device;
use tandem_guest::prelude::*;

tandem_guest::entry!(main, devices = [net]);

const CASES: &[&str] = &[
    "ring-outside",
    "buffer-outside",
    "huge-length",
    "avail-index",
    "bad-next",
];

/// Queue entries.
const SIZE: u16 = 8;

/// The device's registers (virtio-mmio, modern layout).
struct Regs(u64);

impl Regs {
    fn write(&self, offset: u64, value: u32) {
        // SAFETY: the window is the device's register window, mapped user
        // read-write and uncached by the VMM; a write is a register access.
        unsafe { ((self.0 + offset) as *mut u32).write_volatile(value) }
    }
}

/// Writes `value` at guest-physical `addr` in the ring area.
fn put<T>(addr: u64, value: T) {
    // SAFETY: `addr` lies in the ring area this app allocated (identity
    // mapped heap) and is aligned for T.
    unsafe { (addr as *mut T).write_volatile(value) }
}

fn main(env: &Env) -> u8 {
    let Some(case) = env.args().next().filter(|c| CASES.contains(c)) else {
        println!("usage: hostilenet CASE, one of {CASES:?}");
        return 2;
    };
    let Some(base) = env.boot_info().devices.iter().find_map(|d| match *d {
        Device::VirtioMmio { base, .. } => Some(base),
        _ => None,
    }) else {
        println!("hostilenet: no virtio-mmio device");
        return 3;
    };
    println!("hostilenet: {case}");
    let layout = Layout::from_size_align(0x3000, 0x1000).unwrap();
    // SAFETY: the layout has a non-zero size and a power-of-two alignment.
    let area = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if area.is_null() {
        return 4;
    }
    let (desc, avail, used) = (area as u64, area as u64 + 0x1000, area as u64 + 0x2000);
    let regs = Regs(base);
    regs.write(0x70, 0); // reset
    regs.write(0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    regs.write(0x24, 1);
    regs.write(0x20, 1); // VERSION_1
    regs.write(0x70, 1 | 2 | 8); // FEATURES_OK
    regs.write(0x30, 1); // the transmit queue
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

    // One descriptor: { addr, len, flags, next }.
    let (addr, len, flags, next) = match case {
        "buffer-outside" => (0x1_0000_0000u64, 64u32, 0u16, 0u16),
        "huge-length" => (desc + 0x800, 1 << 30, 0, 0),
        "bad-next" => (desc + 0x800, 64, 1, SIZE + 3), // NEXT, past the table
        _ => (desc + 0x800, 64, 0, 0),
    };
    put(desc, addr);
    put(desc + 8, len);
    put(desc + 12, flags);
    put(desc + 14, next);
    put(avail + 4, 0u16); // ring[0] = descriptor 0
    let idx = if case == "avail-index" { SIZE + 5 } else { 1 };
    put(avail + 2, idx);
    regs.write(0x50, 1); // kick the transmit queue
    println!("hostilenet: the VMM let {case} pass");
    1
}
