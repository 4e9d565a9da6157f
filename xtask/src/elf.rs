//! The size of an image: its `PT_LOAD` program headers, read with the ELF
//! reader the VMM loads images with (`tandem_abi::elf`).

use anyhow::{Context, Result};
use tandem_abi::elf::{Elf, PT_LOAD};

/// How much of an image is actually loaded into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSize {
    /// Number of `PT_LOAD` segments.
    pub segments: u64,
    /// Sum of their `p_filesz`: the bytes copied from the file.
    pub file_bytes: u64,
    /// Sum of their `p_memsz`: the guest memory they occupy (with `.bss`).
    pub mem_bytes: u64,
}

/// Sums the `PT_LOAD` segments of a little-endian ELF64 file.
pub fn load_size(elf: &[u8]) -> Result<LoadSize> {
    let elf = Elf::parse(elf).map_err(anyhow::Error::msg)?;
    let mut size = LoadSize {
        segments: 0,
        file_bytes: 0,
        mem_bytes: 0,
    };
    let phdrs = elf.program_headers().map_err(anyhow::Error::msg)?;
    for ph in phdrs.filter(|ph| ph.kind == PT_LOAD) {
        size.segments += 1;
        size.file_bytes = size
            .file_bytes
            .checked_add(ph.filesz)
            .context("segment sizes overflow")?;
        size.mem_bytes = size
            .mem_bytes
            .checked_add(ph.memsz)
            .context("segment sizes overflow")?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header followed by the given program headers
    /// (type, file size, memory size).
    fn elf(phdrs: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        let count = u16::try_from(phdrs.len()).unwrap_or(u16::MAX);
        f[0x38..0x3a].copy_from_slice(&count.to_le_bytes());
        for &(kind, filesz, memsz) in phdrs {
            let mut p = [0u8; 56];
            p[..4].copy_from_slice(&kind.to_le_bytes());
            p[0x20..0x28].copy_from_slice(&filesz.to_le_bytes());
            p[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
            f.extend_from_slice(&p);
        }
        f
    }

    #[test]
    fn sums_only_load_segments() {
        let f = elf(&[(PT_LOAD, 100, 100), (4, 999, 999), (PT_LOAD, 20, 4096)]);
        let size = load_size(&f).unwrap();
        assert_eq!(
            size,
            LoadSize {
                segments: 2,
                file_bytes: 120,
                mem_bytes: 4196
            }
        );
    }

    #[test]
    fn refuses_bad_input() {
        assert!(load_size(b"not an elf").is_err());
        let mut f = elf(&[(PT_LOAD, 1, 1)]);
        f.truncate(100);
        assert!(load_size(&f).is_err());
        let mut f = elf(&[]);
        f[4] = 1;
        assert!(load_size(&f).is_err());
    }
}
