//! Builds, from inside the guest, the machine the Tandem VMM builds from
//! outside: same layout, same builders, same entry into the app.

use tandem_abi::bootinfo::{
    BootInfo, CpuInfo, Device, HostStamps, MemKind, MemRegion, ENTROPY_SIZE, MAX_CMDLINE,
    MAX_DEVICES,
};
use tandem_abi::cpu::{self, MmioWindow, SegmentMap};
use tandem_abi::layout::{self, selector};
use tandem_abi::platform::PLATFORM_PORTS;
use tandem_abi::trace::Phase;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use x86_64::instructions::tables::{lgdt, lidt, load_tss};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::gdt::SegmentSelector;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use super::firmware::Firmware;
use super::{load, FACTS};

/// Why the machine could not be built.
pub enum MachineError {
    /// No usable RAM from the heap start.
    NoHeap,
    /// The fixed layout below 4 MiB is not usable RAM.
    LayoutNotRam(u64),
    /// A builder refused (memory size, segments).
    Build(cpu::BuildError),
    /// The boot-info block does not fit.
    BootInfo(tandem_abi::bootinfo::BootInfoError),
}

impl core::fmt::Display for MachineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoHeap => write!(
                f,
                "no usable RAM from {:#x} for the heap (at least {} MiB of memory are needed)",
                layout::HEAP_ADDR,
                layout::MIN_MEM_SIZE >> 20
            ),
            Self::LayoutNotRam(a) => write!(
                f,
                "the Tandem layout needs RAM at {a:#x}, which the memory map does not offer"
            ),
            Self::Build(e) => write!(f, "{e}"),
            Self::BootInfo(e) => write!(f, "{e}"),
        }
    }
}

unsafe extern "C" {
    static __tandem_text_start: u8;
    static __tandem_text_end: u8;
    static __tandem_rodata_start: u8;
    static __tandem_rodata_end: u8;
    static __tandem_data_start: u8;
    static __tandem_data_end: u8;
    static __tandem_ktext_start: u8;
    static __tandem_ktext_end: u8;
    static tandem_exception_stubs: u8;
    fn _start() -> !;
    fn tandem_enter_user(cr4: u64, entry: u64) -> !;
}

/// The image's loadable segments, as the VMM reads them from the ELF.
fn segments() -> [SegmentMap; 4] {
    let a = |s: &u8| s as *const u8 as u64;
    // SAFETY: only the addresses of linker-defined symbols are taken.
    unsafe {
        [
            SegmentMap {
                start: a(&__tandem_text_start),
                end: a(&__tandem_text_end),
                write: false,
                exec: true,
                user: true,
            },
            SegmentMap {
                start: a(&__tandem_rodata_start),
                end: a(&__tandem_rodata_end),
                write: false,
                exec: false,
                user: true,
            },
            SegmentMap {
                start: a(&__tandem_data_start),
                end: a(&__tandem_data_end),
                write: true,
                exec: false,
                user: true,
            },
            SegmentMap {
                start: a(&__tandem_ktext_start),
                end: a(&__tandem_ktext_end),
                write: false,
                exec: true,
                user: false,
            },
        ]
    }
}

/// `len` bytes of guest memory at layout address `addr`, to write.
fn area(addr: u64, len: u64) -> &'static mut [u8] {
    // SAFETY: `addr..addr+len` is a region of the fixed Tandem layout below
    // 4 MiB, identity-mapped by the boot page tables and checked to be RAM;
    // the boot code is the only thing running, and each area is written
    // through one slice at a time.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

fn covered(fw: &Firmware, start: u64, end: u64) -> bool {
    fw.memory.iter().any(|r| {
        r.kind == MemKind::Usable && r.start <= start && r.start.saturating_add(r.len) >= end
    })
}

fn entropy(tsc: u64) -> [u8; ENTROPY_SIZE] {
    // A seed from the TSC mixed with splitmix64: PVH and GRUB pass no
    // entropy, and an app that needs real randomness asks its platform.
    let mut out = [0u8; ENTROPY_SIZE];
    let mut x = tsc ^ crate::tsc::rdtsc().rotate_left(17);
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes()[..chunk.len()]);
    }
    out
}

/// The virtio-mmio devices the command line describes (QEMU microvm
/// appends one `virtio_mmio.device=` per transport in use), and the
/// command line without them, as the app should see it. A parameter that
/// does not decode is skipped, with a message.
fn devices(
    cmdline: &str,
) -> (
    heapless::Vec<Device, MAX_DEVICES>,
    heapless::String<MAX_CMDLINE>,
) {
    let mut found = heapless::Vec::new();
    for spec in tandem_abi::virtio_mmio::devices(cmdline) {
        let device = match spec {
            Ok(s) => Device::VirtioMmio {
                base: s.base,
                size: s.size,
                irq: s.irq,
            },
            Err(e) => {
                crate::platform::uart_print(format_args!(
                    "tandem: ignoring a virtio_mmio.device parameter: {e}\n"
                ));
                continue;
            }
        };
        if found.push(device).is_err() {
            crate::platform::uart_print(format_args!(
                "tandem: more than {MAX_DEVICES} devices; ignoring the rest\n"
            ));
            break;
        }
    }
    let mut app_cmdline = heapless::String::new();
    // The stripped line is never longer than the original, which fit.
    tandem_abi::virtio_mmio::strip_devices(cmdline, &mut app_cmdline);
    (found, app_cmdline)
}

/// The register windows of `devices`, for the page tables.
fn windows(devices: &[Device]) -> heapless::Vec<MmioWindow, MAX_DEVICES> {
    devices
        .iter()
        .filter_map(|d| match *d {
            Device::VirtioMmio { base, size, .. } => Some(MmioWindow {
                start: base,
                len: size,
            }),
            Device::Block { .. } | Device::NetConfig { .. } => None,
        })
        .collect()
}

/// Writes page tables, GDT, TSS, IDT, trace and boot-info block.
pub fn prepare(fw: &Firmware, tsc_khz: u64, entry_tsc: u64) -> Result<(), MachineError> {
    for (start, end) in [
        (layout::GDT_ADDR, layout::FAULT_STACK_TOP),
        (layout::STACK_ADDR, layout::HEAP_ADDR),
    ] {
        if !covered(fw, start, end) {
            return Err(MachineError::LayoutNotRam(start));
        }
    }
    let heap_region = fw
        .memory
        .iter()
        .find(|r| {
            r.kind == MemKind::Usable
                && r.start <= layout::HEAP_ADDR
                && r.start.saturating_add(r.len) > layout::HEAP_ADDR
        })
        .ok_or(MachineError::NoHeap)?;
    let end = heap_region
        .start
        .saturating_add(heap_region.len)
        .min(layout::MAX_MEM_SIZE);
    let mem_size = end & !(layout::LARGE_PAGE_SIZE - 1);
    if mem_size < layout::MIN_MEM_SIZE {
        return Err(MachineError::NoHeap);
    }

    let (devices, cmdline) = devices(&fw.cmdline);
    cpu::build_page_tables(
        area(layout::PAGE_TABLES_ADDR, layout::PAGE_TABLES_SIZE),
        mem_size,
        &segments(),
        &windows(&devices),
    )
    .map_err(MachineError::Build)?;
    area(layout::GDT_ADDR, layout::PAGE_SIZE).fill(0);
    let gdt = cpu::gdt_bytes(layout::TSS_ADDR, cpu::TSS_LIMIT);
    area(layout::GDT_ADDR, gdt.len() as u64).copy_from_slice(&gdt);
    cpu::build_tss_with_ports(
        area(layout::TSS_ADDR, layout::TSS_AREA_SIZE),
        PLATFORM_PORTS,
    )
    .map_err(MachineError::Build)?;
    // SAFETY: only the address of the stub table is taken.
    let stubs = unsafe { &tandem_exception_stubs as *const u8 as u64 };
    cpu::build_idt(area(layout::IDT_ADDR, layout::PAGE_SIZE), stubs)
        .map_err(MachineError::Build)?;

    // Memory from a loader or firmware is not zero: clear what the guest
    // reads before writing it.
    area(layout::KSTATS_ADDR, layout::PAGE_SIZE).fill(0);
    area(layout::LIVE_ADDR, layout::LIVE_SIZE).fill(0);
    area(
        layout::TRACE_ADDR,
        layout::CONSOLE_ADDR + layout::CONSOLE_DATA_OFFSET - layout::TRACE_ADDR,
    )
    .fill(0);
    area(layout::TRACE_ADDR + Phase::FirstInstruction.offset(), 8)
        .copy_from_slice(&entry_tsc.to_le_bytes());

    let info = BootInfo {
        boot_path: fw.path,
        memory: fw.memory.clone(),
        heap: MemRegion {
            start: layout::HEAP_ADDR,
            len: mem_size - layout::HEAP_ADDR,
            kind: MemKind::Usable,
        },
        cmdline,
        cpu: CpuInfo {
            count: 1,
            tsc_khz,
            features_ecx: load(&FACTS.leaf1_ecx),
            features_edx: load(&FACTS.leaf1_edx),
        },
        host: HostStamps::default(),
        vm_id: 0,
        generation: 0,
        devices,
        entropy: entropy(entry_tsc),
        loader: fw.loader.clone(),
    };
    info.encode(area(layout::BOOT_INFO_ADDR, layout::BOOT_INFO_MAX))
        .map_err(MachineError::BootInfo)?;
    Ok(())
}

/// Loads the layout's descriptor tables and control registers, then enters
/// the app at CPL3 through the kernel segment.
pub fn enter_app() -> ! {
    // SAFETY: runs at CPL0 (from the boot #UD gate); the GDT, TSS and IDT
    // were written at their layout addresses and are complete; the boot
    // page tables still map everything writable, so `ltr` can set the TSS
    // busy bit; the control
    // register values are the ones the Tandem VMM sets, minus SMEP, which is
    // set by `tandem_enter_user` from supervisor-only code.
    unsafe {
        lgdt(&DescriptorTablePointer {
            limit: (cpu::GDT_ENTRIES * 8 - 1) as u16,
            base: VirtAddr::new(layout::GDT_ADDR),
        });
        CS::set_reg(SegmentSelector(selector::KERNEL_CODE));
        let data = SegmentSelector(selector::KERNEL_DATA);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        load_tss(SegmentSelector(selector::TSS));
        lidt(&DescriptorTablePointer {
            limit: (cpu::IDT_SIZE - 1) as u16,
            base: VirtAddr::new(layout::IDT_ADDR),
        });
        Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE));
        Cr0::update(|f| {
            f.insert(
                Cr0Flags::WRITE_PROTECT | Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::NUMERIC_ERROR,
            );
            f.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
        });
        Cr4::update(|f| f.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE));
    }
    let smep = load(&FACTS.max_leaf) >= 7 && load(&FACTS.leaf7_ebx) & (1 << 7) != 0;
    let cr4 = Cr4::read_raw() | if smep { 1 << 20 } else { 0 };
    // SAFETY: everything `tandem_enter_user` relies on is in place: final
    // page tables at PAGE_TABLES_ADDR mapping the kernel segment and RSP0
    // stack supervisor-only, GDT/TSS/IDT loaded, boot-info block written.
    unsafe { tandem_enter_user(cr4, _start as *const () as u64) }
}

core::arch::global_asm!(
    // In the kernel segment: still mapped (supervisor) once CR3 points at the
    // final tables, where everything else of the image is user memory that
    // SMEP forbids CPL0 to execute.
    ".pushsection .tandem.ktext, \"ax\"",
    ".global tandem_enter_user",
    "tandem_enter_user:",
    "    mov rsp, {rsp0}",
    "    mov rax, {cr3}",
    "    mov cr3, rax",
    "    mov cr4, rdi",
    "    push {user_ss}",
    "    push {stack_top}",
    "    push 0x2",
    "    push {user_cs}",
    "    push rsi",
    "    mov edi, {boot_info}",
    "    xor esi, esi",
    "    xor edx, edx",
    "    xor ecx, ecx",
    "    mov eax, {user_ss}",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    xor eax, eax",
    "    iretq",
    ".popsection",
    rsp0 = const layout::RSP0_TOP,
    cr3 = const layout::PAGE_TABLES_ADDR,
    user_ss = const selector::USER_DATA,
    user_cs = const selector::USER_CODE,
    stack_top = const layout::STACK_TOP,
    boot_info = const layout::BOOT_INFO_ADDR,
);
