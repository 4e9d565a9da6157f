//! The Tandem PV entry: the VMM enters `_start` at CPL3, 64-bit, with the
//! boot-info address in `rdi`, the stack at `STACK_TOP` and the hypercall
//! ports open in the TSS I/O bitmap. Nothing here runs at CPL0.

use tandem_abi::bootinfo::BootInfo;
use tandem_abi::hypercall::EXIT_BAD_BOOT_INFO;
use tandem_abi::layout::BOOT_INFO_ADDR;
use tandem_abi::trace::Phase;

use crate::env::{self, Env};
use crate::{console, heap, pages, platform, trace, tsc};

unsafe extern "Rust" {
    /// Defined by the app with [`entry!`](crate::entry).
    fn __tandem_app_main(env: &Env) -> u8;
}

/// The image's entry point (ELF `e_entry`).
///
/// # Safety
/// Only the VMM may enter it, once, in the state the boot contract describes.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.tandem_entry")]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        // The first guest instruction: stamp the TSC before anything else.
        "rdtsc",
        "shl rdx, 32",
        "or rax, rdx",
        "mov rsi, rax",
        "xor ebp, ebp",
        "and rsp, -16",
        "call {start}",
        "ud2",
        start = sym rust_start,
    )
}

extern "C" fn rust_start(boot_info_addr: u64, first_tsc: u64) -> ! {
    // On the PVH and Multiboot2 paths the trampoline stamped its own first
    // instruction; keep that one.
    if trace::get(Phase::FirstInstruction) == 0 {
        trace::stamp_at(Phase::FirstInstruction, first_tsc);
    }
    if boot_info_addr != BOOT_INFO_ADDR {
        console::emergency(format_args!(
            "tandem: boot-info address {boot_info_addr:#x} is not {BOOT_INFO_ADDR:#x}\n"
        ));
        env::exit(EXIT_BAD_BOOT_INFO);
    }
    let info = match BootInfo::decode(pages::boot_info_block()) {
        Ok(info) => info,
        Err(e) => {
            console::emergency(format_args!("tandem: refusing boot-info block: {e}\n"));
            env::exit(EXIT_BAD_BOOT_INFO);
        }
    };
    platform::select(info.boot_path);
    let env = env::init(info);
    tsc::set_khz(env.boot_info().cpu.tsc_khz);
    platform::console_start(first_tsc);
    trace::stamp(Phase::EarlyInit);
    heap::init(&env.boot_info().heap);
    trace::stamp(Phase::HeapReady);
    trace::stamp(Phase::AppMain);
    // SAFETY: the app defines this symbol through `entry!`, with this signature.
    let code = unsafe { __tandem_app_main(env) };
    env::exit(code)
}
