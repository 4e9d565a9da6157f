//! CPU exceptions and the image's ABI note.
//!
//! The CPL0 part is as short as the hardware allows (CPL0 code is emulated at
//! about 1 µs an instruction under PVM): each vector's stub pushes its number,
//! the common code counts the entry, saves the registers and the CPU's frame
//! of the first fault in the fault record (for the host's core files),
//! captures vector, error code, RIP, CR2, CS and RSP into argument
//! registers, and `iretq`s to [`tandem_fault_report`] at CPL3 on the
//! dedicated fault stack, where the report is formatted natively. A fault
//! while reporting a fault exits at once through the exit port.
//!
//! While a debugger is attached (`tandem run --gdb`; the host sets
//! `KernelStats::DEBUGGER`), every exception first saves the record and
//! stops in the VMM through the `DebugTrap` port; the VMM then says whether
//! to return to the trapping code (a trap-flag step's #DB, an `int3`
//! breakpoint, which at CPL3 arrives as #GP through the DPL0 gate) or to go
//! on as without a debugger. KVM here neither intercepts #BP or #DB nor
//! honours hardware breakpoints at CPL3, so this is how gdb steps.

use tandem_abi::hypercall::{HypercallPort, EXIT_EXCEPTION};
use tandem_abi::layout::{selector, FAULT_STACK_TOP, KSTATS_ADDR, TRACE_ADDR};
use tandem_abi::note::{EXCEPTION_STUB_STRIDE, NOTE_DESC_SIZE, NT_TANDEM_ABI};
use tandem_abi::trace::{FaultRecord, KernelStats, Phase};
use tandem_abi::ABI_VERSION;

const _: () = assert!(EXCEPTION_STUB_STRIDE == 16);
// The stub stores the general registers at these offsets, in this order.
const _: () = assert!(
    FaultRecord::RAX == 0
        && FaultRecord::RBX == 1
        && FaultRecord::RCX == 2
        && FaultRecord::RDX == 3
        && FaultRecord::RSI == 4
        && FaultRecord::RDI == 5
        && FaultRecord::RBP == 6
        && FaultRecord::R8 == 7
);

/// Stubs for vectors 0..32, 16 bytes apart. Vectors that push an error code
/// (8, 10-14, 17, 21, 29, 30) skip the dummy push.
macro_rules! stub {
    (err $v:literal) => {
        concat!(
            ".balign 16\n",
            "push ",
            $v,
            "\n",
            "jmp tandem_exception_common\n"
        )
    };
    ($v:literal) => {
        concat!(
            ".balign 16\n",
            "push 0\n",
            "push ",
            $v,
            "\n",
            "jmp tandem_exception_common\n"
        )
    };
}

/// Saves the general registers, the CPU's frame (vector and error code
/// pushed by the stub first) and CR2 in the fault record
/// (tandem_abi::trace::FaultRecord); leaves rax changed.
macro_rules! save_record {
    () => {
        concat!(
            "mov [{rec}], rax\n",
            "mov [{rec} + 8], rbx\n",
            "mov [{rec} + 16], rcx\n",
            "mov [{rec} + 24], rdx\n",
            "mov [{rec} + 32], rsi\n",
            "mov [{rec} + 40], rdi\n",
            "mov [{rec} + 48], rbp\n",
            "mov [{rec} + 56], r8\n",
            "mov [{rec} + 64], r9\n",
            "mov [{rec} + 72], r10\n",
            "mov [{rec} + 80], r11\n",
            "mov [{rec} + 88], r12\n",
            "mov [{rec} + 96], r13\n",
            "mov [{rec} + 104], r14\n",
            "mov [{rec} + 112], r15\n",
            "mov rax, [rsp]\n",
            "mov [{rec} + {vector}], rax\n",
            "mov rax, [rsp + 8]\n",
            "mov [{rec} + {error}], rax\n",
            "mov rax, [rsp + 16]\n",
            "mov [{rec} + {rip}], rax\n",
            "mov rax, [rsp + 24]\n",
            "mov [{rec} + {cs}], rax\n",
            "mov rax, [rsp + 32]\n",
            "mov [{rec} + {rflags}], rax\n",
            "mov rax, [rsp + 40]\n",
            "mov [{rec} + {rsp}], rax\n",
            "mov rax, [rsp + 48]\n",
            "mov [{rec} + {ss}], rax\n",
            "mov rax, cr2\n",
            "mov [{rec} + {cr2}], rax\n",
        )
    };
}

/// Loads the general registers from the fault record.
macro_rules! load_gprs {
    () => {
        concat!(
            "mov rbx, [{rec} + 8]\n",
            "mov rcx, [{rec} + 16]\n",
            "mov rdx, [{rec} + 24]\n",
            "mov rsi, [{rec} + 32]\n",
            "mov rdi, [{rec} + 40]\n",
            "mov rbp, [{rec} + 48]\n",
            "mov r8, [{rec} + 56]\n",
            "mov r9, [{rec} + 64]\n",
            "mov r10, [{rec} + 72]\n",
            "mov r11, [{rec} + 80]\n",
            "mov r12, [{rec} + 88]\n",
            "mov r13, [{rec} + 96]\n",
            "mov r14, [{rec} + 104]\n",
            "mov r15, [{rec} + 112]\n",
            "mov rax, [{rec}]\n",
        )
    };
}

core::arch::global_asm!(
    ".pushsection .tandem.ktext, \"ax\"",
    ".balign 16",
    ".global tandem_exception_stubs",
    "tandem_exception_stubs:",
    stub!(0), stub!(1), stub!(2), stub!(3), stub!(4), stub!(5), stub!(6), stub!(7),
    stub!(err 8), stub!(9), stub!(err 10), stub!(err 11), stub!(err 12), stub!(err 13),
    stub!(err 14), stub!(15), stub!(16), stub!(err 17), stub!(18), stub!(19), stub!(20),
    stub!(err 21), stub!(22), stub!(23), stub!(24), stub!(25), stub!(26), stub!(27),
    stub!(28), stub!(err 29), stub!(err 30), stub!(31),
    ".balign 16",
    "tandem_exception_common:",
    // Stack: vector, error code, then the CPU's frame (rip, cs, rflags, rsp, ss).
    "lock inc qword ptr [{entries}]",
    "cmp qword ptr [{main_stamp}], 0",
    "jne 1f",
    "lock inc qword ptr [{before_main}]",
    "1:",
    // A #UD at tandem_poweroff_trap is the app stopping the machine where
    // there is no Tandem VMM (see boot::poweroff), not a fault.
    // rax is kept: the fault record below wants it as it was.
    "cmp qword ptr [rsp], 6",
    "jne 5f",
    "push rax",
    "lea rax, [rip + tandem_poweroff_trap]",
    "cmp [rsp + 24], rax",
    "pop rax",
    "je tandem_poweroff",
    "5:",
    "cmp qword ptr [{debugger}], 0",
    "jne 8f",
    "6:",
    "cmp qword ptr [{in_fault}], 0",
    "jne 2f",
    // The first fault: save the registers and the CPU's frame in the fault
    // record (tandem_abi::trace::FaultRecord) before reusing them, so the
    // host's core file shows the faulting frame. IN_FAULT = 1 last: it says
    // the record is whole.
    save_record!(),
    "mov qword ptr [{in_fault}], 1",
    "mov rdi, [rsp]",
    "mov rsi, [rsp + 8]",
    "mov rdx, [rsp + 16]",
    "mov rcx, cr2",
    "mov r8, [rsp + 24]",
    "mov r9, [rsp + 40]",
    "add rsp, 16",
    "lea rax, [rip + {report}]",
    "mov [rsp], rax",
    "mov qword ptr [rsp + 8], {user_cs}",
    "mov qword ptr [rsp + 16], 0x2",
    "mov qword ptr [rsp + 24], {fault_stack}",
    "mov qword ptr [rsp + 32], {user_ss}",
    "iretq",
    "2:",
    "mov dx, {exit_port}",
    "mov eax, {exit_code}",
    "out dx, eax",
    "3:",
    "hlt",
    "jmp 3b",
    // A debugger is attached (only the host sets the flag): record the
    // registers, stop in the VMM, then do what it says.
    "8:",
    save_record!(),
    "mov dx, {debug_port}",
    "out dx, eax",
    "cmp qword ptr [{action}], {resume}",
    "jne 9f",
    // Resume where the trap was, with what the debugger left in the record
    // (cs and ss stay the CPU's).
    "mov rax, [{rec} + {rip}]",
    "mov [rsp + 16], rax",
    "mov rax, [{rec} + {rflags}]",
    "mov [rsp + 32], rax",
    "mov rax, [{rec} + {rsp}]",
    "mov [rsp + 40], rax",
    load_gprs!(),
    "add rsp, 16",
    "iretq",
    // Deliver: on as without a debugger, with the record's registers.
    "9:",
    load_gprs!(),
    "jmp 6b",
    ".popsection",

    // The ABI note: name "Tandem", descriptor = tandem_abi::note::AbiNote.
    ".pushsection .note.tandem, \"a\", @note",
    ".balign 4",
    ".long 7",
    ".long {desc_size}",
    ".long {note_type}",
    ".asciz \"Tandem\"",
    ".balign 4",
    ".long {abi_version}",
    ".long 0",
    ".quad tandem_exception_stubs",
    ".popsection",
    entries = const KSTATS_ADDR + KernelStats::CPL0_ENTRIES,
    in_fault = const KSTATS_ADDR + KernelStats::IN_FAULT,
    rec = const KSTATS_ADDR + KernelStats::FAULT_RECORD,
    debugger = const KSTATS_ADDR + KernelStats::DEBUGGER,
    action = const KSTATS_ADDR + KernelStats::DEBUG_ACTION,
    resume = const KernelStats::RESUME,
    debug_port = const HypercallPort::DebugTrap as u16,
    vector = const FaultRecord::VECTOR,
    error = const FaultRecord::ERROR,
    rip = const FaultRecord::RIP,
    cs = const FaultRecord::CS,
    rflags = const FaultRecord::RFLAGS,
    rsp = const FaultRecord::RSP,
    ss = const FaultRecord::SS,
    cr2 = const FaultRecord::CR2,
    before_main = const KSTATS_ADDR + KernelStats::CPL0_BEFORE_MAIN,
    main_stamp = const TRACE_ADDR + Phase::AppMain.offset(),
    report = sym tandem_fault_report,
    user_cs = const selector::USER_CODE,
    user_ss = const selector::USER_DATA,
    // As if called: rsp + 8 is 16-byte aligned at function entry.
    fault_stack = const FAULT_STACK_TOP - 8,
    exit_port = const HypercallPort::Exit as u16,
    exit_code = const EXIT_EXCEPTION,
    desc_size = const NOTE_DESC_SIZE,
    note_type = const NT_TANDEM_ABI,
    abi_version = const ABI_VERSION,
);

fn exception_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point error"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        _ => ("#??", "reserved exception"),
    }
}

/// Reports a CPU exception at CPL3 and stops the VM with
/// [`EXIT_EXCEPTION`]. Entered by `iretq` from the CPL0 stubs, never called.
#[unsafe(no_mangle)]
extern "C" fn tandem_fault_report(
    vector: u64,
    error: u64,
    rip: u64,
    cr2: u64,
    cs: u64,
    rsp: u64,
) -> ! {
    let (mnemonic, name) = exception_name(vector);
    let ring = cs & 3;
    crate::console::_print(format_args!(
        "\nCPU exception: {name} ({mnemonic}, vector {vector}) at rip {rip:#x} (ring {ring}), error code {error:#x}"
    ));
    if vector == 14 {
        let what = if error & 1 == 0 {
            "not-present page"
        } else {
            "protection violation"
        };
        let access = if error & 0x10 != 0 {
            "instruction fetch"
        } else if error & 2 != 0 {
            "write"
        } else {
            "read"
        };
        crate::console::_print(format_args!(
            ", faulting address {cr2:#x} ({access}, {what})"
        ));
    }
    crate::console::emergency(format_args!(", stack pointer {rsp:#x}\n"));
    crate::env::exit(EXIT_EXCEPTION)
}
