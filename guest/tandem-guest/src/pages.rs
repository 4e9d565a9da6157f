//! The pages the guest shares with the host, behind typed accessors, and
//! the one instruction that hands them over: everything else in the guest
//! reaches the layout's shared pages through here, so the reasoning that
//! makes the raw accesses sound is written once.
//!
//! Why the raw accesses are sound, for every accessor below: the layout
//! (`tandem_abi::layout`) maps each of these pages at its fixed address for
//! the whole run, with the access the accessor needs (boot info and live
//! area user read-only; trace, console and hypercall buffer user
//! read-write); every offset is checked against the page's size; the guest
//! runs one vCPU with no interrupts, and the host touches these pages only
//! while the vCPU is stopped in an exit, so no access races with another.
//! Accesses are volatile, and no Rust reference into a shared page outlives
//! the accessor that made it.
//!
//! On the PVH and Multiboot2 paths the boot code writes the same pages
//! (boot info, trace) and nobody writes the live area, which the boot code
//! clears.

use tandem_abi::hypercall::HypercallPort;
use tandem_abi::layout::{
    LiveArea, BOOT_INFO_ADDR, BOOT_INFO_MAX, CONSOLE_ADDR, CONSOLE_CAPACITY, CONSOLE_DATA_OFFSET,
    HYPERCALL_ADDR, HYPERCALL_SIZE, LIVE_ADDR, TRACE_ADDR,
};
use tandem_abi::trace::Phase;

/// The boot-info block's bytes (header and body; the decoder checks them).
pub(crate) fn boot_info_block() -> &'static [u8] {
    // SAFETY: see the module doc; the host rewrites the block only while
    // the vCPU is stopped (a restore), so it never changes under a reader.
    unsafe { core::slice::from_raw_parts(BOOT_INFO_ADDR as *const u8, BOOT_INFO_MAX as usize) }
}

/// The trace stamp of `phase` (0 if not reached).
pub(crate) fn trace_stamp(phase: Phase) -> u64 {
    let slot = (TRACE_ADDR + phase.offset()) as *const u64;
    // SAFETY: see the module doc; `phase.offset()` is below Phase::COUNT * 8,
    // inside the trace page.
    unsafe { slot.read_volatile() }
}

/// Records TSC value `tsc` as the stamp of `phase`.
pub(crate) fn set_trace_stamp(phase: Phase, tsc: u64) {
    let slot = (TRACE_ADDR + phase.offset()) as *mut u64;
    // SAFETY: as in `trace_stamp`.
    unsafe { slot.write_volatile(tsc) };
}

/// One 8-aligned `u64` field of the live area (a [`LiveArea`] offset).
pub(crate) fn live_word(offset: u64) -> u64 {
    if !offset.is_multiple_of(8) || offset + 8 > LiveArea::SIZE {
        return 0;
    }
    let at = (LIVE_ADDR + offset) as *const u64;
    // SAFETY: see the module doc; the offset was checked to lie in the record.
    unsafe { at.read_volatile() }
}

/// The console ring: a `u32` fill level, then `CONSOLE_CAPACITY` bytes the
/// host drains (and resets the level) on every exit.
pub(crate) mod console {
    use super::*;

    fn level_slot() -> *mut u32 {
        CONSOLE_ADDR as *mut u32
    }

    /// Bytes waiting for the host. A level past the capacity can only come
    /// from a stray app write: it reads as empty, so the ring starts over.
    pub(crate) fn level() -> u64 {
        // SAFETY: see the module doc.
        let level = u64::from(unsafe { level_slot().read_volatile() });
        if level > CONSOLE_CAPACITY {
            0
        } else {
            level
        }
    }

    /// Whether the ring has no room left.
    pub(crate) fn is_full() -> bool {
        level() == CONSOLE_CAPACITY
    }

    /// Appends as much of `bytes` as fits; returns how many were taken.
    pub(crate) fn append(bytes: &[u8]) -> usize {
        let level = level();
        let n = bytes.len().min((CONSOLE_CAPACITY - level) as usize);
        let dst = (CONSOLE_ADDR + CONSOLE_DATA_OFFSET + level) as *mut u8;
        // SAFETY: see the module doc; `dst..dst + n` lies inside the ring
        // (level + n <= CONSOLE_CAPACITY), and the new level fits a u32.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
            level_slot().write_volatile((level + n as u64) as u32);
        }
        n
    }
}

/// The hypercall buffer: the request record in its first half, the reply in
/// the second.
pub(crate) mod hypercall {
    use super::*;

    /// Bytes of the request half.
    pub(crate) const REQUEST_SIZE: u64 = HYPERCALL_SIZE / 2;
    /// Guest-physical address of the reply half.
    pub(crate) const REPLY_ADDR: u64 = HYPERCALL_ADDR + REQUEST_SIZE;
    /// Bytes of the reply half.
    pub(crate) const REPLY_SIZE: u64 = HYPERCALL_SIZE - REQUEST_SIZE;

    fn with_bytes<R>(addr: u64, len: u64, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: see the module doc; the slice covers one half of the
        // buffer and lives only for this call, never across an exit.
        let bytes = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
        f(bytes)
    }

    /// Runs `f` on the request half.
    pub(crate) fn with_request<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
        with_bytes(HYPERCALL_ADDR, REQUEST_SIZE, f)
    }

    /// Runs `f` on the reply half.
    pub(crate) fn with_reply<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
        with_bytes(REPLY_ADDR, REPLY_SIZE, f)
    }
}

/// The one instruction that leaves the guest for the host: `out` of `value`
/// to a Tandem port. `memory` is the guest memory the call is about (the
/// request record), or null.
///
/// The asm block deliberately has no `nomem`: the exit is how guest and
/// host share memory. The host reads the request (and the console ring)
/// the guest has just stored, and writes replies and input the guest then
/// loads, so the compiler must keep every store before the exit and reload
/// after it. `memory` is an operand so the asm visibly receives the buffer;
/// the console ring and the buffers named inside requests are reached
/// through addresses that have escaped into guest memory, which an asm
/// block without `nomem` may also read and write.
pub(crate) fn exit_to_host(port: HypercallPort, value: u32, memory: *mut u8) {
    // SAFETY: the TSS I/O bitmap opens exactly the hypercall ports; the
    // access is a VM exit the host serves, touching guest memory only as
    // the protocol defines (console drain, replies, input buffers the app
    // may write), which the missing `nomem` tells the compiler.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") port as u16,
            in("eax") value,
            in("rsi") memory,
            options(nostack, preserves_flags),
        )
    };
}
