//! Just enough ELF64 to size an image: the `PT_LOAD` program headers.

use anyhow::{bail, ensure, Context, Result};

const PT_LOAD: u32 = 1;
const PHDR_MIN: usize = 56;

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
    ensure!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF",
        "not an ELF file"
    );
    ensure!(elf[4] == 2, "not a 64-bit ELF file");
    ensure!(elf[5] == 1, "not a little-endian ELF file");
    let phoff = usize::try_from(u64_at(elf, 0x20)?).context("program header offset")?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    if phnum > 0 && phentsize < PHDR_MIN {
        bail!("program header entries of {phentsize} bytes are too small");
    }
    let mut size = LoadSize {
        segments: 0,
        file_bytes: 0,
        mem_bytes: 0,
    };
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .context("program header offset overflows")?;
        if u32_at(elf, at)? != PT_LOAD {
            continue;
        }
        size.segments += 1;
        size.file_bytes = size
            .file_bytes
            .checked_add(u64_at(elf, at + 0x20)?)
            .context("segment sizes overflow")?;
        size.mem_bytes = size
            .mem_bytes
            .checked_add(u64_at(elf, at + 0x28)?)
            .context("segment sizes overflow")?;
    }
    Ok(size)
}

fn bytes<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N]> {
    elf.get(at..at.saturating_add(N))
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("ELF file truncated at offset {at:#x}"))
}

fn u16_at(elf: &[u8], at: usize) -> Result<u16> {
    bytes(elf, at).map(u16::from_le_bytes)
}

fn u32_at(elf: &[u8], at: usize) -> Result<u32> {
    bytes(elf, at).map(u32::from_le_bytes)
}

fn u64_at(elf: &[u8], at: usize) -> Result<u64> {
    bytes(elf, at).map(u64::from_le_bytes)
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
