//! A checked reader of ELF64 little-endian files: the file header, the
//! program headers and the notes of a `PT_NOTE` segment. The VMM's image
//! loader and xtask's image sizing both read images through it; what an
//! image must be beyond well-formed ELF (machine, type, segment layout, the
//! ABI note) is the loader's to decide.
//!
//! Every offset and size is checked, with overflow-safe arithmetic, before
//! it is used: an image file is as untrusted as the guest. Nothing here
//! panics on any input.

use crate::le;

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// Size of a note's header (`namesz`, `descsz`, `type`).
pub const NOTE_HEADER_SIZE: usize = 12;
/// The ELF magic.
pub const MAGIC: &[u8; 4] = b"\x7fELF";
/// `EI_CLASS` of a 64-bit file.
pub const ELFCLASS64: u8 = 2;
/// `EI_DATA` of a little-endian file.
pub const ELFDATA2LSB: u8 = 1;
/// `e_type` of a fixed-address executable.
pub const ET_EXEC: u16 = 2;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `p_type` of a segment of notes.
pub const PT_NOTE: u32 = 4;
/// `p_flags`: executable.
pub const PF_X: u32 = 1;
/// `p_flags`: writable.
pub const PF_W: u32 = 2;
/// `p_flags`: readable.
pub const PF_R: u32 = 4;

/// Why a file is not well-formed ELF64 little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// No ELF magic.
    NotElf,
    /// The file ends inside the named part.
    Truncated(&'static str),
    /// `EI_CLASS` is not 64-bit.
    Not64Bit(u8),
    /// `EI_DATA` is not little-endian.
    NotLittleEndian(u8),
    /// `e_phentsize` is smaller than an ELF64 program header.
    ProgramHeaderSize(u16),
    /// A note's sizes overflow.
    BadNote,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotElf => write!(f, "not an ELF file (bad magic)"),
            Self::Truncated(what) => write!(f, "ELF file is truncated: {what}"),
            Self::Not64Bit(c) => write!(f, "not a 64-bit ELF (EI_CLASS {c})"),
            Self::NotLittleEndian(d) => write!(f, "not little-endian (EI_DATA {d})"),
            Self::ProgramHeaderSize(n) => write!(f, "program header size {n}"),
            Self::BadNote => write!(f, "a note's sizes overflow"),
        }
    }
}

/// The fields of the file header a loader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `e_type`.
    pub kind: u16,
    /// `e_machine`.
    pub machine: u16,
    /// `e_entry`.
    pub entry: u64,
    /// `e_phoff`: file offset of the program headers.
    pub phoff: u64,
    /// `e_phentsize`: bytes per program header.
    pub phentsize: u16,
    /// `e_phnum`: number of program headers.
    pub phnum: u16,
}

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`.
    pub kind: u32,
    /// `p_flags` ([`PF_X`], [`PF_W`], [`PF_R`] and OS-specific bits).
    pub flags: u32,
    /// `p_offset`: file offset of the segment's bytes.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_filesz`: bytes in the file.
    pub filesz: u64,
    /// `p_memsz`: bytes in memory.
    pub memsz: u64,
    /// `p_align`.
    pub align: u64,
}

/// An ELF64 little-endian file whose identity and header are checked.
#[derive(Debug, Clone, Copy)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    header: Header,
}

impl<'a> Elf<'a> {
    /// Checks the magic, the class (64-bit), the byte order (little-endian)
    /// and that the whole file header is there, in that order.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        if bytes.get(..MAGIC.len()) != Some(MAGIC) {
            return Err(ElfError::NotElf);
        }
        let eh = bytes
            .get(..EHDR_SIZE)
            .ok_or(ElfError::Truncated("ELF header"))?;
        // Inside the 64-byte header: every read below succeeds.
        let (class, data) = (eh[4], eh[5]);
        if class != ELFCLASS64 {
            return Err(ElfError::Not64Bit(class));
        }
        if data != ELFDATA2LSB {
            return Err(ElfError::NotLittleEndian(data));
        }
        let half = |at| le::u16_at(eh, at).unwrap_or(0);
        let word = |at| le::u64_at(eh, at).unwrap_or(0);
        Ok(Self {
            bytes,
            header: Header {
                kind: half(16),
                machine: half(18),
                entry: word(24),
                phoff: word(32),
                phentsize: half(54),
                phnum: half(56),
            },
        })
    }

    /// The file header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `len` bytes of the file from `offset`, or `None` if any is outside it.
    pub fn range(&self, offset: u64, len: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.bytes.get(start..end)
    }

    /// The program headers, in file order, once the whole table is known to
    /// lie inside the file (entries larger than [`PHDR_SIZE`] are allowed;
    /// their tail is skipped).
    pub fn program_headers(&self) -> Result<ProgramHeaders<'a>, ElfError> {
        let Header {
            phoff,
            phentsize,
            phnum,
            ..
        } = self.header;
        if phnum == 0 {
            return Ok(ProgramHeaders {
                table: &[],
                entry: PHDR_SIZE,
            });
        }
        let entry = usize::from(phentsize);
        if entry < PHDR_SIZE {
            return Err(ElfError::ProgramHeaderSize(phentsize));
        }
        // At most 65535 entries of at most 65535 bytes: no overflow.
        let len = entry * usize::from(phnum);
        let table = self
            .range(phoff, len as u64)
            .ok_or(ElfError::Truncated("program headers"))?;
        Ok(ProgramHeaders { table, entry })
    }
}

/// The program headers of an [`Elf`] file.
#[derive(Debug, Clone)]
pub struct ProgramHeaders<'a> {
    table: &'a [u8],
    entry: usize,
}

impl Iterator for ProgramHeaders<'_> {
    type Item = ProgramHeader;

    fn next(&mut self) -> Option<ProgramHeader> {
        let ph = self.table.get(..PHDR_SIZE)?;
        self.table = self.table.get(self.entry..).unwrap_or(&[]);
        Some(ProgramHeader {
            kind: le::u32_at(ph, 0)?,
            flags: le::u32_at(ph, 4)?,
            offset: le::u64_at(ph, 8)?,
            vaddr: le::u64_at(ph, 16)?,
            paddr: le::u64_at(ph, 24)?,
            filesz: le::u64_at(ph, 32)?,
            memsz: le::u64_at(ph, 40)?,
            align: le::u64_at(ph, 48)?,
        })
    }
}

/// One note of a `PT_NOTE` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// The name, with its NUL terminator (`namesz` bytes).
    pub name: &'a [u8],
    /// The note's type.
    pub kind: u32,
    /// The descriptor (`descsz` bytes).
    pub desc: &'a [u8],
}

/// The notes of a `PT_NOTE` segment's bytes, in order; a note cut short is
/// an error, after which the walk ends. Trailing bytes too few for a note
/// header are ignored.
pub fn notes(segment: &[u8]) -> Notes<'_> {
    Notes { rest: segment }
}

/// The iterator of [`notes`].
#[derive(Debug, Clone)]
pub struct Notes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Notes<'a> {
    type Item = Result<Note<'a>, ElfError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.rest;
        let (namesz, descsz, kind) = (le::u32_at(b, 0)?, le::u32_at(b, 4)?, le::u32_at(b, 8)?);
        let note = Self::split(b, namesz, descsz, kind);
        self.rest = match note {
            Ok((_, rest)) => rest,
            Err(_) => &[],
        };
        Some(note.map(|(note, _)| note))
    }
}

impl<'a> Notes<'a> {
    /// The note at the start of `b` and the bytes after it (name and
    /// descriptor are each padded to 4 bytes).
    fn split(
        b: &'a [u8],
        namesz: u32,
        descsz: u32,
        kind: u32,
    ) -> Result<(Note<'a>, &'a [u8]), ElfError> {
        let size = |n: u32| usize::try_from(n).map_err(|_| ElfError::BadNote);
        let (namesz, descsz) = (size(namesz)?, size(descsz)?);
        let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
        let name_end = align4(namesz)
            .and_then(|n| n.checked_add(NOTE_HEADER_SIZE))
            .ok_or(ElfError::BadNote)?;
        let desc_end = align4(descsz)
            .and_then(|d| d.checked_add(name_end))
            .ok_or(ElfError::BadNote)?;
        let name = NOTE_HEADER_SIZE
            .checked_add(namesz)
            .and_then(|end| b.get(NOTE_HEADER_SIZE..end))
            .ok_or(ElfError::Truncated("note name"))?;
        let desc = name_end
            .checked_add(descsz)
            .and_then(|end| b.get(name_end..end))
            .ok_or(ElfError::Truncated("note descriptor"))?;
        let rest = b.get(desc_end..).unwrap_or(&[]);
        Ok((Note { name, kind, desc }, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header followed by program headers of `entry` bytes each
    /// (type, file size, memory size).
    fn elf(entry: u16, phdrs: &[(u32, u64, u64)]) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[..4].copy_from_slice(MAGIC);
        f[4] = ELFCLASS64;
        f[5] = ELFDATA2LSB;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&0x20_1000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&entry.to_le_bytes());
        let count = u16::try_from(phdrs.len()).unwrap_or(u16::MAX);
        f[56..58].copy_from_slice(&count.to_le_bytes());
        for (i, &(kind, filesz, memsz)) in phdrs.iter().enumerate() {
            let at = 64 + i * usize::from(entry);
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        f
    }

    #[test]
    fn reads_header_and_program_headers() {
        let f = elf(56, &[(PT_LOAD, 100, 200), (PT_NOTE, 8, 8)]);
        let e = Elf::parse(&f).unwrap();
        assert_eq!(e.header().kind, ET_EXEC);
        assert_eq!(e.header().machine, EM_X86_64);
        assert_eq!(e.header().entry, 0x20_1000);
        let mut phs = e.program_headers().unwrap();
        let first = phs.next().unwrap();
        assert_eq!((first.kind, first.filesz, first.memsz), (PT_LOAD, 100, 200));
        assert_eq!(phs.next().map(|p| p.kind), Some(PT_NOTE));
        assert_eq!(phs.next(), None);
        // Larger entries: their tails are skipped.
        let f = elf(64, &[(PT_NOTE, 1, 1), (PT_LOAD, 2, 3)]);
        let kinds: [u32; 2] = {
            let mut it = Elf::parse(&f).unwrap().program_headers().unwrap();
            [it.next().unwrap().kind, it.next().unwrap().kind]
        };
        assert_eq!(kinds, [PT_NOTE, PT_LOAD]);
    }

    #[test]
    fn refuses_what_is_not_elf64_little_endian() {
        assert_eq!(Elf::parse(b"\x7fEL").err(), Some(ElfError::NotElf));
        assert_eq!(Elf::parse(b"not an elf").err(), Some(ElfError::NotElf));
        let f = elf(56, &[]);
        assert_eq!(
            Elf::parse(&f[..63]).err(),
            Some(ElfError::Truncated("ELF header"))
        );
        let mut g = f;
        g[4] = 1;
        assert_eq!(Elf::parse(&g).err(), Some(ElfError::Not64Bit(1)));
        let mut g = f;
        g[5] = 2;
        assert_eq!(Elf::parse(&g).err(), Some(ElfError::NotLittleEndian(2)));
        let f = elf(40, &[(PT_LOAD, 1, 1)]);
        assert_eq!(
            Elf::parse(&f).unwrap().program_headers().err(),
            Some(ElfError::ProgramHeaderSize(40))
        );
        let f = elf(56, &[(PT_LOAD, 1, 1), (PT_LOAD, 1, 1)]);
        assert_eq!(
            Elf::parse(&f[..64 + 56 + 55])
                .unwrap()
                .program_headers()
                .err(),
            Some(ElfError::Truncated("program headers"))
        );
    }

    #[test]
    fn walks_notes() {
        let mut seg = [0u8; 52];
        // "ab\0" (padded to 4) with a 5-byte descriptor (padded to 8).
        seg[0..4].copy_from_slice(&3u32.to_le_bytes());
        seg[4..8].copy_from_slice(&5u32.to_le_bytes());
        seg[8..12].copy_from_slice(&7u32.to_le_bytes());
        seg[12..15].copy_from_slice(b"ab\0");
        seg[16..21].copy_from_slice(b"hello");
        // Then a note whose descriptor runs past the end.
        seg[24..28].copy_from_slice(&1u32.to_le_bytes());
        seg[28..32].copy_from_slice(&64u32.to_le_bytes());
        let mut it = notes(&seg);
        let n = it.next().unwrap().unwrap();
        assert_eq!((n.name, n.kind, n.desc), (&b"ab\0"[..], 7, &b"hello"[..]));
        assert_eq!(it.next(), Some(Err(ElfError::Truncated("note descriptor"))));
        assert_eq!(it.next(), None);
        let mut short = seg;
        short[0..4].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            notes(&short).next(),
            Some(Err(ElfError::Truncated("note name")))
        );
        assert_eq!(notes(&seg[..11]).next(), None);
    }

    #[test]
    fn random_mutations_never_panic() {
        let base = elf(56, &[(PT_LOAD, 100, 200), (PT_NOTE, 8, 8)]);
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut f = base;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                f[(s % 200) as usize] = s.to_le_bytes()[4];
            }
            if let Ok(e) = Elf::parse(&f) {
                if let Ok(phs) = e.program_headers() {
                    for ph in phs {
                        let _ = e
                            .range(ph.offset, ph.filesz)
                            .map(notes)
                            .map(Iterator::count);
                    }
                }
            }
        }
    }
}
