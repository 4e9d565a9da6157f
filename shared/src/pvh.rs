//! The PVH boot ABI (`hvm_start_info`, Xen's `arch-x86/hvm/start_info.h`):
//! what a PVH loader such as QEMU `-kernel` hands the 32-bit entry in `ebx`.
//!
//! Parsed from plain byte slices (copied out of memory by the guest), so the
//! decoder runs and is tested on the host too.

use crate::bootinfo::{MemKind, MemRegion};
use crate::le;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the ELF note type that names the 32-bit entry.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336E_C578;
/// Size of the version-0 fields.
pub const START_INFO_V0_SIZE: usize = 48;
/// Size with the version-1 memory-map fields.
pub const START_INFO_V1_SIZE: usize = 56;
/// Size of one `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// Most memory-map entries read.
pub const MAX_MEMMAP_ENTRIES: u32 = 128;

/// Why a start-info structure was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    /// Fewer bytes than the structure.
    Truncated,
    /// The magic is wrong.
    BadMagic(u32),
    /// More memory-map entries than [`MAX_MEMMAP_ENTRIES`].
    TooManyEntries(u32),
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => write!(f, "PVH start info is truncated"),
            Self::BadMagic(m) => write!(
                f,
                "PVH start info has bad magic {m:#010x} (expected {START_INFO_MAGIC:#010x})"
            ),
            Self::TooManyEntries(n) => {
                write!(
                    f,
                    "PVH memory map has {n} entries, more than {MAX_MEMMAP_ENTRIES}"
                )
            }
        }
    }
}

/// The fields of `hvm_start_info` Tandem uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartInfo {
    /// Structure version.
    pub version: u32,
    /// Physical address of the NUL-terminated command line (0 if none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0 if the loader gives none).
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version 1; 0 if none).
    pub memmap_paddr: u64,
    /// Entries in the memory map.
    pub memmap_entries: u32,
}

impl StartInfo {
    /// Parses the structure from `bytes` (at least [`START_INFO_V1_SIZE`]
    /// bytes should be offered; a version-0 structure needs only 48).
    pub fn parse(bytes: &[u8]) -> Result<Self, StartInfoError> {
        let field32 = |at| le::u32_at(bytes, at).ok_or(StartInfoError::Truncated);
        let field64 = |at| le::u64_at(bytes, at).ok_or(StartInfoError::Truncated);
        let magic = field32(0)?;
        if magic != START_INFO_MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        if bytes.len() < START_INFO_V0_SIZE {
            return Err(StartInfoError::Truncated);
        }
        let version = field32(4)?;
        let (memmap_paddr, memmap_entries) = if version >= 1 {
            if bytes.len() < START_INFO_V1_SIZE {
                return Err(StartInfoError::Truncated);
            }
            (field64(40)?, field32(48)?)
        } else {
            (0, 0)
        };
        if memmap_entries > MAX_MEMMAP_ENTRIES {
            return Err(StartInfoError::TooManyEntries(memmap_entries));
        }
        Ok(Self {
            version,
            cmdline_paddr: field64(24)?,
            rsdp_paddr: field64(32)?,
            memmap_paddr,
            memmap_entries,
        })
    }

    /// Bytes of memory map to read at `memmap_paddr`.
    pub fn memmap_len(&self) -> usize {
        self.memmap_entries as usize * MEMMAP_ENTRY_SIZE
    }
}

/// Parses one `hvm_memmap_table_entry` (address, size, type).
pub fn parse_memmap_entry(bytes: &[u8]) -> Option<MemRegion> {
    let e = bytes.get(..MEMMAP_ENTRY_SIZE)?;
    let kind = match le::u32_at(e, 16)? {
        1 => MemKind::Usable,
        3 => MemKind::Acpi,
        _ => MemKind::Reserved,
    };
    Some(MemRegion {
        start: le::u64_at(e, 0)?,
        len: le::u64_at(e, 8)?,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> [u8; START_INFO_V1_SIZE] {
        let mut b = [0u8; START_INFO_V1_SIZE];
        b[0..4].copy_from_slice(&START_INFO_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&0x7000u64.to_le_bytes());
        b[32..40].copy_from_slice(&0xF_5A40u64.to_le_bytes());
        b[40..48].copy_from_slice(&0x8000u64.to_le_bytes());
        b[48..52].copy_from_slice(&3u32.to_le_bytes());
        b
    }

    #[test]
    fn parses_v1() {
        let s = StartInfo::parse(&sample()).unwrap();
        assert_eq!(
            s,
            StartInfo {
                version: 1,
                cmdline_paddr: 0x7000,
                rsdp_paddr: 0xF_5A40,
                memmap_paddr: 0x8000,
                memmap_entries: 3
            }
        );
        assert_eq!(s.memmap_len(), 72);
    }

    #[test]
    fn refuses_bad_input() {
        let mut b = sample();
        b[0] ^= 1;
        assert!(matches!(
            StartInfo::parse(&b),
            Err(StartInfoError::BadMagic(_))
        ));
        let b = sample();
        for cut in 0..START_INFO_V1_SIZE {
            assert!(StartInfo::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut b = sample();
        b[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            StartInfo::parse(&b),
            Err(StartInfoError::TooManyEntries(u32::MAX))
        );
        // Version 0 needs no memory map fields.
        let mut b = sample();
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            StartInfo::parse(&b[..START_INFO_V0_SIZE])
                .unwrap()
                .memmap_entries,
            0
        );
    }

    #[test]
    fn memmap_entries() {
        let mut e = [0u8; MEMMAP_ENTRY_SIZE];
        e[0..8].copy_from_slice(&0x10_0000u64.to_le_bytes());
        e[8..16].copy_from_slice(&0x7F0_0000u64.to_le_bytes());
        e[16..20].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            parse_memmap_entry(&e),
            Some(MemRegion {
                start: 0x10_0000,
                len: 0x7F0_0000,
                kind: MemKind::Usable
            })
        );
        assert_eq!(parse_memmap_entry(&e[..20]), None);
    }
}
