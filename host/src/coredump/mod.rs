//! Core files of crashed guests, which gdb opens with the image's symbols
//! (`gdb IMAGE CORE`): the vCPU's registers in an `NT_PRSTATUS` note and
//! guest RAM as `PT_LOAD` segments at its guest-virtual addresses (the
//! guest's page tables map guest-physical = guest-virtual).
//!
//! Which registers: at a CPU exception the guest's CPL0 stub saved the
//! registers and frame of the faulting code in the fault record
//! ([`FaultRecord`]) before it went on to report at CPL3, so the core shows
//! the faulting function, not the report; otherwise (a panic's exit
//! hypercall, a triple fault, a snapshot) the vCPU's registers as they are.
//!
//! Only RAM the guest's page tables map is written (the fixed low regions,
//! then the image and the heap to the end of memory), and only the pages
//! that may hold data: pages the host never backed and zero pages stay
//! holes, so a core of a 1 GiB guest that touched 10 MiB takes 10 MiB of
//! disk. [`elf`] decides the file's layout; this module gathers what goes
//! in and writes it.

mod elf;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_regs, kvm_sregs};
use tandem_abi::elf::{PF_R, PF_W, PF_X};
use tandem_abi::layout::{self, Access, PAGE_SIZE};
use tandem_abi::trace::{FaultRecord, KernelStats};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use elf::{CoreNotes, Registers, Segment, FPREGS_SIZE};

use crate::memory::GuestRam;
use crate::snapshot::files::{candidate_pages, is_zero};
use crate::snapshot::Snapshot;

/// Why a core file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The file could not be written.
    #[error("cannot write core file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Guest memory could not be read.
    #[error("cannot read guest memory for the core file: {0}")]
    Memory(String),
    /// The vCPU's state could not be read.
    #[error("cannot read the vCPU's registers for the core file: {0}")]
    Registers(String),
}

/// What writing a core file did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Pages of guest memory written (the rest are holes).
    pub pages_written: u64,
    /// The file's size (holes included).
    pub file_size: u64,
}

// Linux's signal numbers, for what gdb prints ("terminated with signal").
const SIGILL: u32 = 4;
const SIGTRAP: u32 = 5;
const SIGABRT: u32 = 6;
const SIGBUS: u32 = 7;
const SIGFPE: u32 = 8;
const SIGSEGV: u32 = 11;
const SIGSTOP: u32 = 19;

/// Why the guest stopped, as a core file says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A CPU exception (vector).
    Exception(u64),
    /// The guest panicked.
    Panic,
    /// It crashed otherwise (triple fault, halt, unexpected exit).
    Crash,
    /// It did not stop: a snapshot of a running guest.
    Snapshot,
}

impl Stop {
    /// The signal a Linux process would have got.
    pub fn signal(self) -> u32 {
        match self {
            Stop::Exception(0 | 16 | 19) => SIGFPE,
            Stop::Exception(1 | 3) => SIGTRAP,
            Stop::Exception(6) => SIGILL,
            Stop::Exception(17) => SIGBUS,
            Stop::Exception(_) | Stop::Crash => SIGSEGV,
            Stop::Panic => SIGABRT,
            Stop::Snapshot => SIGSTOP,
        }
    }
}

/// The registers KVM reports, in a core file's order.
pub fn registers(regs: &kvm_regs, sregs: &kvm_sregs) -> Registers {
    Registers {
        r15: regs.r15,
        r14: regs.r14,
        r13: regs.r13,
        r12: regs.r12,
        rbp: regs.rbp,
        rbx: regs.rbx,
        r11: regs.r11,
        r10: regs.r10,
        r9: regs.r9,
        r8: regs.r8,
        rax: regs.rax,
        rcx: regs.rcx,
        rdx: regs.rdx,
        rsi: regs.rsi,
        rdi: regs.rdi,
        orig_rax: u64::MAX,
        rip: regs.rip,
        cs: u64::from(sregs.cs.selector),
        rflags: regs.rflags,
        rsp: regs.rsp,
        ss: u64::from(sregs.ss.selector),
        fs_base: sregs.fs.base,
        gs_base: sregs.gs.base,
        ds: u64::from(sregs.ds.selector),
        es: u64::from(sregs.es.selector),
        fs: u64::from(sregs.fs.selector),
        gs: u64::from(sregs.gs.selector),
    }
}

/// `regs` with the general registers and frame of the fault the guest
/// recorded (segment bases and data selectors stay: the stub changes none).
pub fn at_fault(regs: Registers, rec: &FaultRecord) -> Registers {
    let g = |i: usize| rec.gprs[i];
    let r = |n: usize| rec.gprs[FaultRecord::R8 + n - 8];
    Registers {
        rax: g(FaultRecord::RAX),
        rbx: g(FaultRecord::RBX),
        rcx: g(FaultRecord::RCX),
        rdx: g(FaultRecord::RDX),
        rsi: g(FaultRecord::RSI),
        rdi: g(FaultRecord::RDI),
        rbp: g(FaultRecord::RBP),
        r8: r(8),
        r9: r(9),
        r10: r(10),
        r11: r(11),
        r12: r(12),
        r13: r(13),
        r14: r(14),
        r15: r(15),
        rip: rec.rip,
        cs: rec.cs,
        rflags: rec.rflags,
        rsp: rec.rsp,
        ss: rec.ss,
        ..regs
    }
}

/// The fault record, if the guest took a fault and finished writing it
/// (`IN_FAULT` is 1 only once the record is whole).
pub fn fault_record(mem: &GuestMemoryMmap) -> Option<FaultRecord> {
    let flag: u64 = mem
        .read_obj(GuestAddress(layout::KSTATS_ADDR + KernelStats::IN_FAULT))
        .ok()?;
    if flag != 1 {
        return None;
    }
    let mut b = [0u8; FaultRecord::SIZE];
    mem.read_slice(
        &mut b,
        GuestAddress(layout::KSTATS_ADDR + KernelStats::FAULT_RECORD),
    )
    .ok()?;
    FaultRecord::from_bytes(&b)
}

/// The command line a core file shows (gdb: "Core was generated by ..."):
/// the program's name and the guest's command line.
pub fn psargs(program: &str, cmdline: &str) -> String {
    format!("{program} {cmdline}").trim().to_owned()
}

/// The first 512 bytes of an XSAVE area: the FXSAVE image gdb reads as
/// `NT_FPREGSET`.
pub fn fpregs(xsave: &[u8]) -> Option<[u8; FPREGS_SIZE]> {
    xsave.get(..FPREGS_SIZE)?.try_into().ok()
}

fn flags(access: Access) -> u32 {
    match access {
        Access::None => 0,
        Access::KernelRead | Access::UserRead => PF_R,
        Access::KernelReadWrite | Access::UserReadWrite => PF_R | PF_W,
        Access::KernelReadExecute | Access::UserReadExecute => PF_R | PF_X,
    }
}

/// The RAM a guest of `mem_size` bytes has mapped, as core segments: the
/// fixed low regions (neighbours with the same access merged), then the
/// image region and the heap to the end of memory. The null page and the
/// guard pages are left out, as in the guest's page tables.
pub fn ram_segments(mem_size: u64) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let low = layout::LOW_REGIONS.iter().map(|r| Segment {
        vaddr: r.start,
        size: r.end - r.start,
        flags: flags(r.access),
    });
    let high = Segment {
        vaddr: layout::IMAGE_ADDR,
        size: mem_size.saturating_sub(layout::IMAGE_ADDR),
        flags: PF_R | PF_W | PF_X,
    };
    for s in low.chain([high]) {
        let s = Segment {
            size: s.size.min(mem_size.saturating_sub(s.vaddr)),
            ..s
        };
        if s.size == 0 {
            continue;
        }
        match out.last_mut() {
            Some(prev) if prev.vaddr + prev.size == s.vaddr && prev.flags == s.flags => {
                prev.size += s.size;
            }
            _ => out.push(s),
        }
    }
    out
}

/// Pages read from guest memory at a time.
const RUN_PAGES: usize = 64;
// PAGE_SIZE is 4 KiB, which fits any usize.
#[allow(clippy::cast_possible_truncation)]
const PAGE: usize = PAGE_SIZE as usize;

/// Writes a core file of `ram` with `notes` to `path`: to a temporary name
/// beside it first, renamed over `path` once whole.
pub fn write(path: &Path, notes: &CoreNotes, ram: &GuestRam) -> Result<CoreStats, CoreError> {
    let tmp = temp_path(path);
    let result = write_to(&tmp, notes, ram).and_then(|stats| {
        std::fs::rename(&tmp, path).map_err(io(path))?;
        Ok(stats)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "core".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoreError + '_ {
    move |source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_to(path: &Path, notes: &CoreNotes, ram: &GuestRam) -> Result<CoreStats, CoreError> {
    let candidates = candidate_pages(ram).map_err(|e| CoreError::Memory(e.to_string()))?;
    let segments = ram_segments(ram.size());
    let core = elf::layout(notes, &segments);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io(path))?;
    file.write_all_at(&core.header, 0).map_err(io(path))?;
    let mut stats = CoreStats {
        pages_written: 0,
        file_size: core.file_size,
    };
    let mut buf = vec![0u8; RUN_PAGES * PAGE];
    for (seg, offset) in &core.segments {
        let first = seg.vaddr / PAGE_SIZE;
        let pages = seg.size / PAGE_SIZE;
        let mut p = 0;
        while p < pages {
            let may_hold = |i: u64| {
                usize::try_from(first + i)
                    .ok()
                    .and_then(|i| candidates.get(i))
                    .is_some_and(|&c| c)
            };
            if !may_hold(p) {
                p += 1;
                continue;
            }
            let mut run = 1;
            while run < RUN_PAGES as u64 && p + run < pages && may_hold(p + run) {
                run += 1;
            }
            // At most RUN_PAGES pages.
            #[allow(clippy::cast_possible_truncation)]
            let bytes = &mut buf[..run as usize * PAGE];
            ram.mem
                .read_slice(bytes, GuestAddress(seg.vaddr + p * PAGE_SIZE))
                .map_err(|e| CoreError::Memory(e.to_string()))?;
            for (i, page) in bytes.chunks(PAGE).enumerate() {
                if !is_zero(page) {
                    let at = offset + (p + i as u64) * PAGE_SIZE;
                    file.write_all_at(page, at).map_err(io(path))?;
                    stats.pages_written += 1;
                }
            }
            p += run;
        }
    }
    file.set_len(core.file_size).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    Ok(stats)
}

/// Writes a core file of the VM frozen in `snapshot`: its registers as the
/// snapshot holds them (or the fault's, if the guest had faulted), its
/// memory from the memory file. `program` names the image in the core's
/// notes; a snapshot does not know it, so empty leaves the name out.
pub fn from_snapshot(
    snapshot: &Snapshot,
    path: &Path,
    program: &str,
) -> Result<CoreStats, CoreError> {
    let st = &snapshot.state;
    let reg_err = |e: crate::snapshot::SnapshotError| CoreError::Registers(e.to_string());
    let regs = registers(
        &st.vcpu.regs().map_err(reg_err)?,
        &st.vcpu.sregs().map_err(reg_err)?,
    );
    let file = snapshot
        .open_memory()
        .map_err(|e| CoreError::Memory(e.to_string()))?;
    let ram = GuestRam::from_file(file, st.machine.mem_size, &[], &[])
        .map_err(|e| CoreError::Memory(e.to_string()))?;
    let (regs, stop) = match fault_record(&ram.mem) {
        Some(rec) => (at_fault(regs, &rec), Stop::Exception(rec.vector)),
        None => (regs, Stop::Snapshot),
    };
    let notes = CoreNotes {
        regs,
        signal: stop.signal(),
        fpregs: fpregs(&st.vcpu.xsave),
        name: program.to_owned(),
        args: psargs(program, &st.machine.cmdline),
    };
    write(path, &notes, &ram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_segments_follow_the_layout() {
        let segs = ram_segments(16 << 20);
        // Nothing at the null page or the stack guard; the top reaches the end.
        assert_eq!(segs[0].vaddr, layout::GDT_ADDR);
        assert!(segs.iter().all(|s| s.vaddr >= PAGE_SIZE));
        let guard = layout::STACK_ADDR - PAGE_SIZE;
        assert!(segs
            .iter()
            .all(|s| guard < s.vaddr || guard >= s.vaddr + s.size));
        let last = segs.last().unwrap();
        assert_eq!(last.vaddr + last.size, 16 << 20);
        for w in segs.windows(2) {
            assert!(w[0].vaddr + w[0].size <= w[1].vaddr);
        }
        // The app stack and the image are one RW(X) run only if their
        // flags agree: the stack is RW, the image region RWX.
        let stack = segs.iter().find(|s| s.vaddr == layout::STACK_ADDR).unwrap();
        assert_eq!(stack.flags, PF_R | PF_W);
        // Smaller memory cuts the top.
        let tiny = ram_segments(layout::MIN_MEM_SIZE);
        let top = tiny.last().unwrap();
        assert_eq!(top.vaddr + top.size, layout::MIN_MEM_SIZE);
    }

    #[test]
    fn a_fault_record_replaces_the_general_registers_and_frame() {
        let now = Registers {
            rax: 1,
            rip: 0x20_e000,
            rsp: 0x3_fff8,
            fs_base: 0x1234,
            ds: 0x1b,
            ..Registers::default()
        };
        let mut rec = FaultRecord {
            vector: 14,
            rip: 0x20_0341,
            rsp: 0x1f_bea0,
            cs: 0x23,
            ss: 0x1b,
            rflags: 0x10246,
            ..FaultRecord::default()
        };
        for (i, g) in rec.gprs.iter_mut().enumerate() {
            *g = 100 + i as u64;
        }
        let r = at_fault(now, &rec);
        assert_eq!(
            (r.rax, r.rbx, r.rbp, r.r8, r.r15),
            (100, 101, 106, 107, 114)
        );
        assert_eq!(
            (r.rip, r.rsp, r.cs, r.ss, r.rflags),
            (0x20_0341, 0x1f_bea0, 0x23, 0x1b, 0x10246)
        );
        assert_eq!((r.fs_base, r.ds), (0x1234, 0x1b));
    }

    #[test]
    fn stops_name_the_signals_gdb_prints() {
        assert_eq!(Stop::Exception(14).signal(), SIGSEGV);
        assert_eq!(Stop::Exception(13).signal(), SIGSEGV);
        assert_eq!(Stop::Exception(6).signal(), SIGILL);
        assert_eq!(Stop::Exception(0).signal(), SIGFPE);
        assert_eq!(Stop::Exception(3).signal(), SIGTRAP);
        assert_eq!(Stop::Panic.signal(), SIGABRT);
        assert_eq!(Stop::Crash.signal(), SIGSEGV);
    }

    #[test]
    fn a_written_core_holds_guest_memory_at_its_addresses() {
        let ram = GuestRam::new(layout::MIN_MEM_SIZE, false).unwrap();
        ram.mem
            .write_slice(b"in the image", GuestAddress(layout::IMAGE_ADDR + 0x10))
            .unwrap();
        ram.mem
            .write_slice(b"on the stack", GuestAddress(layout::STACK_TOP - 0x100))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("tandem-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("core");
        let notes = CoreNotes {
            regs: Registers::default(),
            signal: SIGSEGV,
            fpregs: None,
            name: "t".into(),
            args: String::new(),
        };
        let stats = write(&path, &notes, &ram).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, stats.file_size);
        // Two touched pages, whatever else the host backed (zeros stay holes).
        assert_eq!(stats.pages_written, 2);
        let elf = tandem_abi::elf::Elf::parse(&bytes).unwrap();
        let find = |addr: u64, len: u64| {
            let ph = elf
                .program_headers()
                .unwrap()
                .find(|p| {
                    p.kind == tandem_abi::elf::PT_LOAD
                        && p.vaddr <= addr
                        && addr < p.vaddr + p.memsz
                })
                .unwrap();
            elf.range(ph.offset + (addr - ph.vaddr), len)
                .unwrap()
                .to_vec()
        };
        assert_eq!(find(layout::IMAGE_ADDR + 0x10, 12), b"in the image");
        assert_eq!(find(layout::STACK_TOP - 0x100, 12), b"on the stack");
        assert_eq!(find(layout::HEAP_ADDR, 4), [0; 4]);
        // No temporary file is left beside it.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
