//! The contract between the Tandem VMM (`host/`) and the Tandem unikernel (`guest/`).
//!
//! Both sides compile this crate, so every address, structure and message that
//! crosses the VM boundary is defined exactly once:
//!
//! - [`layout`]: where everything lives in guest-physical memory.
//! - [`bootinfo`]: the boot-info block the app starts with (a `repr(C)` header
//!   followed by a `postcard` body).
//! - [`hypercall`]: the I/O ports and the `postcard` request/reply messages.
//! - [`exit`]: the exit codes the guest library and the VMM give a run.
//! - [`trace`]: the boot phases stamped by both sides on one clock.
//! - [`cpu`]: builders for page tables, GDT, TSS and IDT that write into plain
//!   byte buffers, so the VMM and the guest's own trampolines build the same state.
//! - [`le`]: bounds-checked little-endian reads, for every decoder here and in the host.
//! - [`elf`]: a checked ELF64 reader (file header, program headers, notes),
//!   for the VMM's image loader and xtask.
//! - [`note`]: the ELF note through which an image declares its ABI version.
//! - [`acpi`]: how to power off a PC, decoded from its ACPI tables.
//! - [`stats`]: the one quantile definition of every figure Tandem reports.
//! - [`virtio_mmio`]: virtio-mmio devices as a command line describes them.
//!
//! Compatibility rules: [`ABI_VERSION`] is bumped on every material change;
//! `postcard` messages only grow at the end (new enum variants and fields are
//! appended, never reordered); golden-bytes tests pin every encoding.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod acpi;
pub mod bootinfo;
pub mod checksum;
pub mod cpu;
pub mod elf;
pub mod exit;
pub mod hypercall;
pub mod layout;
pub mod le;
pub mod note;
pub mod platform;
pub mod pvh;
pub mod stats;
pub mod trace;
pub mod virtio_mmio;

/// Version of the contract. The guest embeds it in its ELF note and in the
/// boot-info header; the host refuses an image of another version before it
/// boots, and the guest refuses a boot-info block of another version.
///
/// History: 1, the foundation. 2, the live area at
/// [`LIVE_ADDR`](layout::LIVE_ADDR) (mapped by the host's page tables and
/// read by the guest's clock) and the `Snapshot` request and reply: a
/// version-2 guest on a version-1 host would fault on the unmapped live page;
/// and `BootInfo::loader` appended (who booted the guest: Tandem, a PVH
/// loader, or the Multiboot2 boot loader's name). 3, `Device::VirtioMmio`
/// appended to the boot-info devices (a version-2 guest would refuse a block
/// that lists one as an undecodable body), and the page tables map device
/// register windows user read-write and uncached through a fifth page table
/// (`cpu::pt_area::PT_MMIO`), so a CPL3 driver can reach them. 4,
/// `Device::NetConfig` appended (static IPv4 settings for a network device,
/// which a version-3 guest could not decode), and the Tandem VMM offers a
/// virtio-net device at [`VIRTIO_MMIO_BASE`](layout::VIRTIO_MMIO_BASE),
/// mapped by its page tables. Still 4: the device manifest, a second note
/// ([`NT_TANDEM_DEVICES`](note::NT_TANDEM_DEVICES)) in which an image
/// declares the devices it needs. It changes nothing either side reads at
/// boot: a host that predates it skips a note of an unknown type, as it
/// always has, and runs the image as before; a host that reads it treats
/// its absence as "no devices", which is what every older image needs; the
/// guest's view (boot info, layout, hypercalls) is unchanged. A bump would
/// only make new hosts refuse every existing image for no gain.
/// 5, the fault record ([`FaultRecord`](trace::FaultRecord) at
/// [`KernelStats::FAULT_RECORD`](trace::KernelStats::FAULT_RECORD)): the
/// guest's exception entry saves the registers at the first fault there, so
/// the host's core files show the faulting frame (a version-4 guest leaves it
/// empty); and debugger stops: the `DEBUGGER` and `DEBUG_ACTION` words of
/// [`KernelStats`](trace::KernelStats) and the
/// [`DebugTrap`](hypercall::HypercallPort::DebugTrap) port, through which
/// the guest's exception entry stops in the VMM while gdb is attached.
/// 6, the boot-info block of a restored or cloned VM is rewritten by the
/// host (its `generation` the live area's, its devices the restored VM's:
/// a clone's own `NetConfig`), and the MAC in the virtio-net device's
/// configuration space may change across a restore; a guest that sees the
/// live area's generation change reads both again and renews its network
/// stack (open connections reset). A version-5 guest would keep its old
/// address and MAC, so a clone would answer as its parent.
pub const ABI_VERSION: u32 = 6;
