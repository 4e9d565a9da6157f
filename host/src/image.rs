//! Tandem images: ELF64 executables for x86_64 with a Tandem ABI note.
//!
//! An image is parsed and checked once ([`Image::parse`]) and can then be
//! loaded into any number of VMs. Every offset, size and address in the file
//! is checked with overflow-safe arithmetic before use: the image is as
//! untrusted as the guest.

use std::path::Path;

use tandem_abi::cpu::SegmentMap;
use tandem_abi::elf::{
    self, Elf, ElfError, EM_X86_64, ET_EXEC, PF_W, PF_X, PHDR_SIZE, PT_LOAD, PT_NOTE,
};
use tandem_abi::layout::{IMAGE_ADDR, IMAGE_END};
use tandem_abi::note::{
    AbiNote, DeviceSet, DevicesNote, DevicesNoteError, NOTE_NAME, NT_TANDEM_ABI, NT_TANDEM_DEVICES,
    PF_TANDEM_BOOT, PF_TANDEM_KERNEL,
};
use tandem_abi::ABI_VERSION;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Images larger than this are refused before parsing.
pub const MAX_IMAGE_FILE: u64 = 64 << 20;
const MAX_PHDRS: usize = 64;

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read image {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Larger than the limit on image files (`MAX_IMAGE_FILE`).
    #[error("image is {0} bytes, larger than the {MAX_IMAGE_FILE}-byte limit")]
    TooLarge(u64),
    /// No ELF magic.
    #[error("not an ELF file (bad magic)")]
    NotElf,
    /// Cut short.
    #[error("image is truncated: {0}")]
    Truncated(&'static str),
    /// Not ELF64 little-endian x86_64 executable.
    #[error("unsupported ELF: {0}")]
    Unsupported(String),
    /// No Tandem ABI note.
    #[error("image has no Tandem ABI note: is it built with tandem-guest?")]
    NoAbiNote,
    /// The ABI note is malformed.
    #[error("image's Tandem ABI note is malformed")]
    BadAbiNote,
    /// The device manifest is malformed or names devices this VMM does not know.
    #[error("image's device manifest is refused: {0}")]
    BadDevicesNote(DevicesNoteError),
    /// More than one device manifest.
    #[error("image has more than one device manifest (Tandem devices note)")]
    DuplicateDevicesNote,
    /// Built against another ABI version.
    #[error("image was built for Tandem ABI version {found}, this VMM speaks version {expected}")]
    AbiMismatch {
        /// Version in the image.
        found: u32,
        /// Version of this VMM.
        expected: u32,
    },
    /// A segment's file range is outside the file.
    #[error(
        "segment {index} file range {offset:#x}+{size:#x} lies outside the {file_len}-byte file"
    )]
    SegmentOutsideFile {
        /// Program header index.
        index: usize,
        /// File offset.
        offset: u64,
        /// File size.
        size: u64,
        /// File length.
        file_len: usize,
    },
    /// A segment would be loaded outside the image region.
    #[error(
        "segment {index} at {start:#x}..{end:#x} lies outside the image region {IMAGE_ADDR:#x}..{IMAGE_END:#x}"
    )]
    SegmentOutsideRegion {
        /// Program header index.
        index: usize,
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// A segment's file size exceeds its memory size.
    #[error("segment {0} has a file size larger than its memory size")]
    BadSegmentSize(usize),
    /// Two segments overlap.
    #[error("segments {0} and {1} overlap")]
    Overlap(usize, usize),
    /// No loadable segment.
    #[error("image has no loadable segment")]
    NoSegments,
    /// The entry point is not inside an executable user segment.
    #[error("entry point {0:#x} is not inside an executable segment of the image")]
    BadEntry(u64),
    /// The exception stubs are not inside the kernel segment.
    #[error("exception stubs at {0:#x} are not inside the image's kernel segment")]
    BadStubs(u64),
}

/// One loadable segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub addr: u64,
    /// Bytes in memory (the tail past `data` is zero).
    pub mem_size: u64,
    /// Bytes from the file.
    pub data: Vec<u8>,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// The guest's CPL0 code (mapped supervisor-only).
    pub kernel: bool,
}

/// A checked Tandem image, ready to load into any number of VMs.
#[derive(Debug, Clone)]
pub struct Image {
    /// Entry point (Tandem PV entry, CPL3).
    pub entry: u64,
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// The ABI note.
    pub note: AbiNote,
    /// The devices the image declares it needs (its device manifest; none
    /// without one).
    pub devices: DeviceSet,
    /// The file's name, for messages (`httpd`); empty if parsed from memory.
    pub name: String,
    /// Size of the file.
    pub file_size: usize,
}

/// The loader's words for what the ELF reader refuses (`tests/images.rs`
/// checks them).
impl From<ElfError> for ImageError {
    fn from(e: ElfError) -> Self {
        match e {
            ElfError::NotElf => Self::NotElf,
            ElfError::Truncated(what) => Self::Truncated(what),
            ElfError::Not64Bit(_) => Self::Unsupported("not a 64-bit ELF (EI_CLASS)".into()),
            ElfError::NotLittleEndian(_) => Self::Unsupported("not little-endian (EI_DATA)".into()),
            ElfError::ProgramHeaderSize(n) => Self::Unsupported(format!("program header size {n}")),
            ElfError::BadNote => Self::BadAbiNote,
        }
    }
}

impl Image {
    /// Reads and checks an image file.
    pub fn from_file(path: &Path) -> Result<Self, ImageError> {
        let read_err = |source| ImageError::Read {
            path: path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_IMAGE_FILE {
            return Err(ImageError::TooLarge(len));
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let mut image = Self::parse(&bytes)?;
        image.name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        log::debug!(
            "image {}: {len} bytes, entry {:#x}, {} segments, ABI version {}",
            path.display(),
            image.entry,
            image.segments.len(),
            image.note.abi_version
        );
        Ok(image)
    }

    /// Checks an image held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() as u64 > MAX_IMAGE_FILE {
            return Err(ImageError::TooLarge(bytes.len() as u64));
        }
        let elf = Elf::parse(bytes)?;
        let eh = elf.header();
        let machine = eh.machine;
        if machine != EM_X86_64 {
            return Err(ImageError::Unsupported(format!(
                "built for machine {machine}, not x86_64 ({EM_X86_64})"
            )));
        }
        let kind = eh.kind;
        if kind != ET_EXEC {
            return Err(ImageError::Unsupported(format!(
                "ELF type {kind} is not a fixed-address executable (ET_EXEC)"
            )));
        }
        let entry = eh.entry;
        let phentsize = usize::from(eh.phentsize);
        let phnum = usize::from(eh.phnum);
        if phentsize != PHDR_SIZE {
            return Err(ImageError::Unsupported(format!(
                "program header size {phentsize}"
            )));
        }
        if phnum == 0 || phnum > MAX_PHDRS {
            return Err(ImageError::Unsupported(format!("{phnum} program headers")));
        }

        let mut segments = Vec::new();
        let mut note = None;
        let mut devices = None;
        for (index, ph) in elf.program_headers()?.enumerate() {
            let (offset, vaddr) = (ph.offset, ph.vaddr);
            let (filesz, memsz, flags) = (ph.filesz, ph.memsz, ph.flags);
            let file_range = || {
                elf.range(offset, filesz)
                    .ok_or(ImageError::SegmentOutsideFile {
                        index,
                        offset,
                        size: filesz,
                        file_len: bytes.len(),
                    })
            };
            match ph.kind {
                PT_LOAD => {
                    if filesz > memsz {
                        return Err(ImageError::BadSegmentSize(index));
                    }
                    let end = vaddr.checked_add(memsz);
                    match end {
                        Some(end) if vaddr >= IMAGE_ADDR && end <= IMAGE_END => {}
                        _ => {
                            return Err(ImageError::SegmentOutsideRegion {
                                index,
                                start: vaddr,
                                end: end.unwrap_or(u64::MAX),
                            })
                        }
                    }
                    // Empty segments hold nothing; the trampolines' scratch
                    // segment is only for the PVH and Multiboot2 paths.
                    if memsz == 0 || flags & PF_TANDEM_BOOT != 0 {
                        continue;
                    }
                    segments.push((
                        index,
                        Segment {
                            addr: vaddr,
                            mem_size: memsz,
                            data: file_range()?.to_vec(),
                            write: flags & PF_W != 0,
                            exec: flags & PF_X != 0,
                            kernel: flags & PF_TANDEM_KERNEL != 0,
                        },
                    ));
                }
                PT_NOTE => read_notes(file_range()?, &mut note, &mut devices)?,
                _ => {}
            }
        }
        let note = note.ok_or(ImageError::NoAbiNote)?;
        if note.abi_version != ABI_VERSION {
            return Err(ImageError::AbiMismatch {
                found: note.abi_version,
                expected: ABI_VERSION,
            });
        }
        if segments.is_empty() {
            return Err(ImageError::NoSegments);
        }
        segments.sort_by_key(|(_, s)| s.addr);
        for pair in segments.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.1.addr + a.1.mem_size > b.1.addr {
                return Err(ImageError::Overlap(a.0, b.0));
            }
        }
        let segments: Vec<Segment> = segments.into_iter().map(|(_, s)| s).collect();
        let inside = |addr: u64, want_kernel: bool| {
            segments.iter().any(|s| {
                s.exec && s.kernel == want_kernel && addr >= s.addr && addr < s.addr + s.mem_size
            })
        };
        if !inside(entry, false) {
            return Err(ImageError::BadEntry(entry));
        }
        let stubs = note.exception_stubs;
        let stubs_end = stubs.checked_add(
            tandem_abi::note::STUB_COUNT * tandem_abi::note::EXCEPTION_STUB_STRIDE - 1,
        );
        if !inside(stubs, true) || !stubs_end.is_some_and(|e| inside(e, true)) {
            return Err(ImageError::BadStubs(stubs));
        }
        Ok(Image {
            entry,
            segments,
            note,
            devices: devices.map_or(DeviceSet::NONE, |d: DevicesNote| d.devices),
            name: String::new(),
            file_size: bytes.len(),
        })
    }

    /// Page permissions of the segments, for the page-table builder.
    pub fn segment_maps(&self) -> Vec<SegmentMap> {
        self.segments
            .iter()
            .map(|s| SegmentMap {
                start: s.addr,
                end: s.addr + s.mem_size,
                write: s.write,
                exec: s.exec,
                user: !s.kernel,
            })
            .collect()
    }

    /// Bytes the image occupies in memory (sum of segment sizes).
    pub fn loaded_size(&self) -> u64 {
        self.segments.iter().map(|s| s.mem_size).sum()
    }

    /// Copies the segments into guest memory. Memory past each segment's file
    /// bytes is left as found: freshly mapped guest memory is zero.
    pub fn load(&self, mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
        for s in &self.segments {
            mem.write_slice(&s.data, GuestAddress(s.addr))?;
        }
        Ok(())
    }
}

/// Walks the notes of a `PT_NOTE` segment for the Tandem ABI note (the
/// first one counts) and the device manifest (at most one in the image).
fn read_notes(
    segment: &[u8],
    abi: &mut Option<AbiNote>,
    devices: &mut Option<DevicesNote>,
) -> Result<(), ImageError> {
    for note in elf::notes(segment) {
        let note = note?;
        if note.name != NOTE_NAME {
            continue;
        }
        match note.kind {
            NT_TANDEM_ABI if abi.is_none() => {
                *abi = Some(AbiNote::parse(note.desc).ok_or(ImageError::BadAbiNote)?);
            }
            NT_TANDEM_DEVICES => {
                if devices.is_some() {
                    return Err(ImageError::DuplicateDevicesNote);
                }
                *devices = Some(DevicesNote::parse(note.desc).map_err(ImageError::BadDevicesNote)?);
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid image: kernel segment, code segment, ABI note.
    pub(crate) fn tiny_image(abi: u32) -> Vec<u8> {
        tiny_image_with(abi, &[])
    }

    /// [`tiny_image`] with a device manifest note after the ABI note for
    /// each descriptor in `manifests`.
    pub(crate) fn tiny_image_with(abi: u32, manifests: &[&[u8]]) -> Vec<u8> {
        let mut f = vec![0u8; 0x3000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&0x20_1000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&u16::try_from(PHDR_SIZE).unwrap().to_le_bytes());
        f[56..58].copy_from_slice(&3u16.to_le_bytes());
        let mut ph = |i: usize, t: u32, flags: u32, off: u64, addr: u64, size: u64| {
            let at = 64 + i * PHDR_SIZE;
            f[at..at + 4].copy_from_slice(&t.to_le_bytes());
            f[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        };
        ph(0, PT_LOAD, 5 | PF_TANDEM_KERNEL, 0x1000, 0x20_0000, 0x400);
        ph(1, PT_LOAD, 5, 0x2000, 0x20_1000, 0x100);
        let notes_len: usize = manifests
            .iter()
            .map(|d| 20 + d.len().next_multiple_of(4))
            .sum();
        ph(2, PT_NOTE, 4, 0x400, 0, 36 + notes_len as u64);
        let note = AbiNote {
            abi_version: abi,
            flags: 0,
            exception_stubs: 0x20_0000,
        };
        let n = &mut f[0x400..0x400 + 36];
        n[0..4].copy_from_slice(&7u32.to_le_bytes());
        n[4..8].copy_from_slice(&16u32.to_le_bytes());
        n[8..12].copy_from_slice(&NT_TANDEM_ABI.to_le_bytes());
        n[12..19].copy_from_slice(NOTE_NAME);
        n[20..36].copy_from_slice(&note.to_bytes());
        let mut at = 0x400 + 36;
        for desc in manifests {
            let len = u32::try_from(desc.len()).unwrap();
            f[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
            f[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
            f[at + 8..at + 12].copy_from_slice(&NT_TANDEM_DEVICES.to_le_bytes());
            f[at + 12..at + 19].copy_from_slice(NOTE_NAME);
            f[at + 20..at + 20 + desc.len()].copy_from_slice(desc);
            at += 20 + desc.len().next_multiple_of(4);
        }
        f
    }

    #[test]
    fn reads_the_device_manifest() {
        use tandem_abi::note::DeviceKind;
        let img = Image::parse(&tiny_image(ABI_VERSION)).unwrap();
        assert!(img.devices.is_empty(), "no manifest: no devices");
        let net = DevicesNote::new(DeviceSet::of(&[DeviceKind::Net])).to_bytes();
        let img = Image::parse(&tiny_image_with(ABI_VERSION, &[&net])).unwrap();
        assert!(img.devices.contains(DeviceKind::Net));
        assert!(!img.devices.contains(DeviceKind::Block));
        let none = DevicesNote::new(DeviceSet::NONE).to_bytes();
        let img = Image::parse(&tiny_image_with(ABI_VERSION, &[&none])).unwrap();
        assert!(img.devices.is_empty());
    }

    #[test]
    fn refuses_bad_device_manifests_by_name() {
        let refusal = |manifests: &[&[u8]]| {
            Image::parse(&tiny_image_with(ABI_VERSION, manifests))
                .unwrap_err()
                .to_string()
        };
        let e = refusal(&[&[1, 0, 0, 0, 5, 0, 0, 0]]);
        assert!(e.contains("unknown device bit 2 "), "{e}");
        assert!(e.contains("device manifest"), "{e}");
        let e = refusal(&[&[9, 0, 0, 0, 1, 0, 0, 0]]);
        assert!(e.contains("manifest version 9"), "{e}");
        let e = refusal(&[&[1, 0, 0, 0]]);
        assert!(e.contains("4 bytes, not 8"), "{e}");
        let e = refusal(&[&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]]);
        assert!(e.contains("12 bytes, not 8"), "{e}");
        let net: &[u8] = &[1, 0, 0, 0, 1, 0, 0, 0];
        let e = refusal(&[net, net]);
        assert!(e.contains("more than one device manifest"), "{e}");
    }

    #[test]
    fn parses_tiny_image() {
        let img = Image::parse(&tiny_image(ABI_VERSION)).unwrap();
        assert_eq!(img.entry, 0x20_1000);
        assert_eq!(img.segments.len(), 2);
        assert!(img.segments[0].kernel);
    }

    #[test]
    fn refuses_other_abi() {
        assert!(matches!(
            Image::parse(&tiny_image(ABI_VERSION + 1)),
            Err(ImageError::AbiMismatch { found, expected }) if found == ABI_VERSION + 1 && expected == ABI_VERSION
        ));
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let img = tiny_image(ABI_VERSION);
        for cut in 0..img.len() {
            let _ = Image::parse(&img[..cut]);
        }
        assert!(Image::parse(&img[..0x2000]).is_err());
    }

    #[test]
    fn random_mutations_never_panic() {
        let base = tiny_image(ABI_VERSION);
        let mut s: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..20_000 {
            let mut img = base.clone();
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let at = (s % 0x460) as usize;
                img[at] = s.to_le_bytes()[4]; // bits 32..40
            }
            let _ = Image::parse(&img);
        }
    }
}
