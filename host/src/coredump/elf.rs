//! The bytes of an ELF core file, decided apart from writing them: a pure
//! function from registers and memory ranges to the file's header (ELF
//! header, program headers, notes) and where each range's bytes go.
//!
//! The layout is what Linux writes for a process and gdb reads: `ET_CORE`,
//! `EM_X86_64`, a `PT_NOTE` with `NT_PRSTATUS` (`struct elf_prstatus`, the
//! general registers in `user_regs_struct` order), `NT_PRPSINFO` (the
//! program's name and arguments) and `NT_FPREGSET` (the FXSAVE area), then
//! one `PT_LOAD` per memory range at its virtual address. Segment data
//! starts on page boundaries, so zero pages can stay holes in the file.

use tandem_abi::elf::{EHDR_SIZE, ELFCLASS64, ELFDATA2LSB, EM_X86_64, MAGIC, PHDR_SIZE};
use tandem_abi::elf::{PT_LOAD, PT_NOTE};
use tandem_abi::layout::PAGE_SIZE;

/// `e_type` of a core file.
pub const ET_CORE: u16 = 4;
/// Note type: `struct elf_prstatus`.
pub const NT_PRSTATUS: u32 = 1;
/// Note type: `struct user_fpregs_struct` (the FXSAVE area).
pub const NT_FPREGSET: u32 = 2;
/// Note type: `struct elf_prpsinfo`.
pub const NT_PRPSINFO: u32 = 3;
/// Name of the notes Linux writes.
pub const NOTE_NAME: &[u8] = b"CORE\0";
/// Size of `struct elf_prstatus` on x86_64.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_reg` (the `user_regs_struct`) in `struct elf_prstatus`.
pub const PRSTATUS_REGS: usize = 112;
/// Size of `struct elf_prpsinfo` on x86_64.
pub const PRPSINFO_SIZE: usize = 136;
/// Size of the FXSAVE area (`struct user_fpregs_struct`).
pub const FPREGS_SIZE: usize = 512;
/// Registers in `user_regs_struct`.
pub const USER_REGS: usize = 27;

/// The vCPU's registers as `user_regs_struct` orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// Linux's system-call number slot; `u64::MAX` (-1) outside a call.
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl Registers {
    /// The registers in `user_regs_struct` order.
    pub fn user_regs(&self) -> [u64; USER_REGS] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.rflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }
}

/// What the notes say about the stopped vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreNotes {
    /// Its registers.
    pub regs: Registers,
    /// The signal a Linux process would have died of (gdb prints it).
    pub signal: u32,
    /// The FXSAVE area (x87, SSE, MXCSR), if known.
    pub fpregs: Option<[u8; FPREGS_SIZE]>,
    /// The program's name (`pr_fname`, cut to 15 bytes). Empty when not
    /// known: then there is no `NT_PRPSINFO` note at all, since gdb warns
    /// that a core "may not match" an executable of another name.
    pub name: String,
    /// Its arguments (`pr_psargs`, cut to 79 bytes).
    pub args: String,
}

/// One range of memory in the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its virtual address (page-aligned).
    pub vaddr: u64,
    /// Its size in bytes (a multiple of the page size).
    pub size: u64,
    /// `p_flags` (`PF_R`, `PF_W`, `PF_X`).
    pub flags: u32,
}

/// Where everything goes in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreLayout {
    /// The bytes at offset 0: ELF header, program headers, notes.
    pub header: Vec<u8>,
    /// Each segment with the file offset of its first byte.
    pub segments: Vec<(Segment, u64)>,
    /// Size of the whole file.
    pub file_size: u64,
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// `struct elf_prstatus` of one thread (pid 1) that got `signal`.
fn prstatus(notes: &CoreNotes) -> [u8; PRSTATUS_SIZE] {
    let mut b = [0u8; PRSTATUS_SIZE];
    put(&mut b, 0, &notes.signal.to_le_bytes()); // pr_info.si_signo
    let cursig = u16::try_from(notes.signal).unwrap_or(0);
    put(&mut b, 12, &cursig.to_le_bytes()); // pr_cursig
    put(&mut b, 32, &1u32.to_le_bytes()); // pr_pid
    for (i, r) in notes.regs.user_regs().iter().enumerate() {
        put(&mut b, PRSTATUS_REGS + i * 8, &r.to_le_bytes());
    }
    let fpvalid = u32::from(notes.fpregs.is_some());
    put(
        &mut b,
        PRSTATUS_REGS + USER_REGS * 8,
        &fpvalid.to_le_bytes(),
    ); // pr_fpvalid
    b
}

/// `struct elf_prpsinfo`: state "R", the name and the arguments.
fn prpsinfo(notes: &CoreNotes) -> [u8; PRPSINFO_SIZE] {
    let mut b = [0u8; PRPSINFO_SIZE];
    b[1] = b'R'; // pr_sname
    put(&mut b, 24, &1u32.to_le_bytes()); // pr_pid
    let name = notes.name.as_bytes();
    put(&mut b, 40, &name[..name.len().min(15)]); // pr_fname[16]
    let args = notes.args.as_bytes();
    put(&mut b, 56, &args[..args.len().min(79)]); // pr_psargs[80]
    b
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Appends one note (name `CORE`) to `out`.
fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8]) {
    let namesz = u32::try_from(NOTE_NAME.len()).unwrap_or(0);
    let descsz = u32::try_from(desc.len()).unwrap_or(0);
    out.extend_from_slice(&namesz.to_le_bytes());
    out.extend_from_slice(&descsz.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(NOTE_NAME);
    out.resize(out.len() + align4(NOTE_NAME.len()) - NOTE_NAME.len(), 0);
    out.extend_from_slice(desc);
    out.resize(out.len() + align4(desc.len()) - desc.len(), 0);
}

/// The notes segment's bytes.
pub fn notes_bytes(notes: &CoreNotes) -> Vec<u8> {
    let mut out = Vec::new();
    note(&mut out, NT_PRSTATUS, &prstatus(notes));
    if !notes.name.is_empty() {
        note(&mut out, NT_PRPSINFO, &prpsinfo(notes));
    }
    if let Some(fp) = &notes.fpregs {
        note(&mut out, NT_FPREGSET, fp);
    }
    out
}

fn program_header(out: &mut Vec<u8>, kind: u32, flags: u32, offset: u64, vaddr: u64, size: u64) {
    let (filesz, align) = if kind == PT_LOAD {
        (size, PAGE_SIZE)
    } else {
        (size, 4)
    };
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    for v in [offset, vaddr, vaddr, filesz, size, align] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Lays out a core file of `notes` and `segments`: the header bytes and
/// each segment's file offset (page-aligned, in the order given).
pub fn layout(notes: &CoreNotes, segments: &[Segment]) -> CoreLayout {
    let notes = notes_bytes(notes);
    let phnum = segments.len() + 1;
    let notes_at = EHDR_SIZE + phnum * PHDR_SIZE;
    let header_len = (notes_at + notes.len()) as u64;
    let mut offset = header_len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut placed: Vec<(Segment, u64)> = Vec::with_capacity(segments.len());
    for s in segments {
        placed.push((*s, offset));
        offset += s.size;
    }

    let mut h = Vec::with_capacity(notes_at + notes.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&[ELFCLASS64, ELFDATA2LSB, 1, 0]); // EI_VERSION 1, EI_OSABI SYSV
    h.resize(16, 0);
    h.extend_from_slice(&ET_CORE.to_le_bytes());
    h.extend_from_slice(&EM_X86_64.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // e_version
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
                                              // The header sizes are ELF constants; a core has far fewer than 65535
                                              // segments (one per memory range).
    h.extend_from_slice(&u16::try_from(EHDR_SIZE).unwrap_or(0).to_le_bytes());
    h.extend_from_slice(&u16::try_from(PHDR_SIZE).unwrap_or(0).to_le_bytes());
    h.extend_from_slice(&u16::try_from(phnum).unwrap_or(u16::MAX).to_le_bytes());
    h.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    program_header(&mut h, PT_NOTE, 0, notes_at as u64, 0, notes.len() as u64);
    for (s, off) in &placed {
        program_header(&mut h, PT_LOAD, s.flags, *off, s.vaddr, s.size);
    }
    h.extend_from_slice(&notes);
    let file_size = if placed.is_empty() {
        header_len
    } else {
        offset
    };
    CoreLayout {
        header: h,
        segments: placed,
        file_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_abi::elf::{notes, Elf, PF_R, PF_W, PF_X};
    use tandem_abi::le::u64_at;

    fn sample() -> CoreNotes {
        CoreNotes {
            regs: Registers {
                r15: 15,
                rbp: 0x1f_ff00,
                rax: 0xaa,
                rip: 0x20_1234,
                cs: 0x23,
                rflags: 0x202,
                rsp: 0x1f_fe00,
                ss: 0x1b,
                gs: 7,
                orig_rax: u64::MAX,
                ..Registers::default()
            },
            signal: 11,
            fpregs: Some([0x5a; FPREGS_SIZE]),
            name: "a-name-longer-than-fifteen".into(),
            args: "pagefault null".into(),
        }
    }

    #[test]
    fn a_core_parses_back_with_its_notes_and_segments() {
        let segments = [
            Segment {
                vaddr: 0x1000,
                size: 0x2000,
                flags: PF_R,
            },
            Segment {
                vaddr: 0x20_0000,
                size: 0x20_0000,
                flags: PF_R | PF_W | PF_X,
            },
        ];
        let core = layout(&sample(), &segments);
        let elf = Elf::parse(&core.header).unwrap();
        assert_eq!(elf.header().kind, ET_CORE);
        assert_eq!(elf.header().machine, EM_X86_64);
        let phdrs: Vec<_> = elf.program_headers().unwrap().collect();
        assert_eq!(phdrs.len(), 3);
        assert_eq!(phdrs[0].kind, PT_NOTE);
        for (ph, ((seg, off), want)) in phdrs[1..].iter().zip(core.segments.iter().zip(&segments)) {
            assert_eq!(seg, want);
            assert_eq!(
                (ph.kind, ph.vaddr, ph.paddr, ph.memsz, ph.filesz, ph.offset, ph.flags),
                (PT_LOAD, want.vaddr, want.vaddr, want.size, want.size, *off, want.flags)
            );
            assert_eq!(off % PAGE_SIZE, 0, "segment data is page-aligned");
        }
        assert!(core.segments[0].1 >= core.header.len() as u64);
        assert_eq!(core.segments[1].1, core.segments[0].1 + 0x2000);
        assert_eq!(core.file_size, core.segments[1].1 + 0x20_0000);

        let seg = elf.range(phdrs[0].offset, phdrs[0].filesz).unwrap();
        let found: Vec<_> = notes(seg).map(|n| n.unwrap()).collect();
        assert_eq!(
            found.iter().map(|n| (n.kind, n.name)).collect::<Vec<_>>(),
            [
                (NT_PRSTATUS, NOTE_NAME),
                (NT_PRPSINFO, NOTE_NAME),
                (NT_FPREGSET, NOTE_NAME)
            ]
        );
        let pr = found[0].desc;
        assert_eq!(pr.len(), PRSTATUS_SIZE);
        assert_eq!(pr[0..4], 11u32.to_le_bytes()); // si_signo
        assert_eq!(pr[12..14], 11u16.to_le_bytes()); // pr_cursig
        let reg = |i: usize| u64_at(pr, PRSTATUS_REGS + 8 * i).unwrap();
        // user_regs_struct: r15 first, rbp 4th, rax 10th, rip 16th, rsp 19th, gs last.
        assert_eq!(
            [
                reg(0),
                reg(4),
                reg(10),
                reg(15),
                reg(16),
                reg(17),
                reg(18),
                reg(19),
                reg(20),
                reg(26)
            ],
            [
                15,
                0x1f_ff00,
                0xaa,
                u64::MAX,
                0x20_1234,
                0x23,
                0x202,
                0x1f_fe00,
                0x1b,
                7
            ]
        );
        assert_eq!(
            pr[PRSTATUS_REGS + 27 * 8..PRSTATUS_REGS + 27 * 8 + 4],
            1u32.to_le_bytes()
        );
        let ps = found[1].desc;
        assert_eq!(ps.len(), PRPSINFO_SIZE);
        assert_eq!(&ps[40..56], b"a-name-longer-t\0");
        assert_eq!(&ps[56..70], b"pagefault null");
        assert_eq!(found[2].desc, &[0x5a; FPREGS_SIZE]);
    }

    #[test]
    fn without_fp_registers_or_a_name_there_are_fewer_notes() {
        let mut n = sample();
        n.fpregs = None;
        n.name = String::new();
        let core = layout(&n, &[]);
        let elf = Elf::parse(&core.header).unwrap();
        let ph = elf.program_headers().unwrap().next().unwrap();
        let seg = elf.range(ph.offset, ph.filesz).unwrap();
        let kinds: Vec<_> = notes(seg).map(|n| n.unwrap().kind).collect();
        assert_eq!(kinds, [NT_PRSTATUS]);
        let pr = notes(seg).next().unwrap().unwrap().desc;
        assert_eq!(
            pr[PRSTATUS_REGS + 27 * 8..PRSTATUS_REGS + 27 * 8 + 4],
            [0; 4]
        );
        assert_eq!(core.file_size, core.header.len() as u64);
    }
}
