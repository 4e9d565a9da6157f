//! The working-set file (`working-set` in a snapshot directory): the guest
//! pages a VM restored from the snapshot touched, recorded once
//! (`tandem restore --prefetch record`) so later restores fault exactly
//! those in before the guest runs.
//!
//! It has its own magic and version and is bound to one memory file (by
//! that file's digest), so the state file's format does not change, an old
//! list left beside a newer snapshot is never used, and a snapshot without
//! one restores as before.
//!
//! ```text
//! offset  size     field
//!      0     8     magic "TNDMWSET"
//!      8     4     version (little-endian), WORKING_SET_VERSION
//!     12     4     page count N, at most MAX_WORKING_SET_PAGES
//!     16     8     guest memory size in bytes
//!     24    32     digest of the memory file it goes with (MemoryRef::digest)
//!     56     8     reserved, zero
//!     64   4*N     page numbers (u32, little-endian), each below size/4 KiB, no duplicates
//!  64+4N    32     BLAKE3 of every byte before it
//! ```
//!
//! Pages are listed in address order: the host's page tables tell which
//! pages the guest touched, not when.

use std::path::Path;

use tandem_abi::layout::PAGE_SIZE;
use tandem_abi::le;

/// Name of the working-set file in a snapshot directory.
pub const WORKING_SET_FILE: &str = "working-set";
/// The working-set file's magic.
pub const WORKING_SET_MAGIC: [u8; 8] = *b"TNDMWSET";
/// Version of the working-set format (independent of the state file's).
pub const WORKING_SET_VERSION: u32 = 1;
/// Most pages a working set lists (1 GiB of 4 KiB pages); a longer list is
/// refused, and a recording with more pages keeps the first this many.
pub const MAX_WORKING_SET_PAGES: u32 = 1 << 18;
/// Size of the fixed header.
const HEADER: usize = 64;
/// Size of the trailing checksum.
const CHECKSUM: usize = 32;

/// Why a working-set file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkingSetError {
    /// Shorter than a header and checksum.
    #[error("working set is truncated: {found} bytes, at least {expected} expected")]
    Truncated {
        /// Bytes found.
        found: usize,
        /// Bytes at least expected.
        expected: usize,
    },
    /// Not a working-set file.
    #[error("not a Tandem working-set file (bad magic)")]
    BadMagic,
    /// Another version.
    #[error("working-set version {found}; this tandem reads version {WORKING_SET_VERSION}")]
    Version {
        /// Version in the file.
        found: u32,
    },
    /// Reserved bytes are set.
    #[error("working set: reserved header bytes are not zero")]
    Reserved,
    /// More pages than any working set holds.
    #[error("working set lists {found} pages, more than the {MAX_WORKING_SET_PAGES} allowed")]
    TooLong {
        /// Count in the header.
        found: u32,
    },
    /// The length does not match the count.
    #[error("working set of {count} pages must be {expected} bytes, found {found}")]
    Length {
        /// Count in the header.
        count: u32,
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// The checksum does not match: bit flips or editing.
    #[error("working set does not match its checksum (corrupted or edited)")]
    Checksum,
    /// Recorded for another memory size.
    #[error("working set is for {found} bytes of memory, the snapshot has {expected}")]
    MemorySize {
        /// Size in the file.
        found: u64,
        /// Size of the snapshot.
        expected: u64,
    },
    /// Recorded for another memory file (an older snapshot in this directory).
    #[error("working set was recorded for another memory file (stale)")]
    Stale,
    /// A page outside guest memory.
    #[error("working set entry {index}: page {page} is outside the {pages} pages of memory")]
    OutOfRange {
        /// Position in the list.
        index: usize,
        /// The page number.
        page: u32,
        /// Pages of memory.
        pages: u64,
    },
    /// A page listed twice.
    #[error("working set entry {index}: page {page} is listed twice")]
    Duplicate {
        /// Position of the second mention.
        index: usize,
        /// The page number.
        page: u32,
    },
}

/// A checked working set: distinct pages, all inside guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    /// Guest page numbers.
    pub pages: Vec<u32>,
}

impl WorkingSet {
    /// Encodes `pages` (at most [`MAX_WORKING_SET_PAGES`] are kept) for the
    /// memory file of `mem_size` bytes with digest `memory_digest`.
    pub fn encode(pages: &[u32], mem_size: u64, memory_digest: &[u8; 32]) -> Vec<u8> {
        let pages = &pages[..pages.len().min(MAX_WORKING_SET_PAGES as usize)];
        let mut out = Vec::with_capacity(HEADER + 4 * pages.len() + CHECKSUM);
        out.extend_from_slice(&WORKING_SET_MAGIC);
        out.extend_from_slice(&WORKING_SET_VERSION.to_le_bytes());
        // At most MAX_WORKING_SET_PAGES (2^18): fits a u32.
        #[allow(clippy::cast_possible_truncation)]
        out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        out.extend_from_slice(&mem_size.to_le_bytes());
        out.extend_from_slice(memory_digest);
        out.extend_from_slice(&[0u8; 8]);
        for p in pages {
            out.extend_from_slice(&p.to_le_bytes());
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Checks and decodes a whole working-set file for the snapshot whose
    /// memory is `mem_size` bytes with digest `memory_digest`.
    pub fn decode(
        bytes: &[u8],
        mem_size: u64,
        memory_digest: &[u8; 32],
    ) -> Result<Self, WorkingSetError> {
        if bytes.len() < HEADER + CHECKSUM {
            return Err(WorkingSetError::Truncated {
                found: bytes.len(),
                expected: HEADER + CHECKSUM,
            });
        }
        if bytes[..8] != WORKING_SET_MAGIC {
            return Err(WorkingSetError::BadMagic);
        }
        // Offsets inside the header, which is there: every read succeeds.
        let version = le::u32_at(bytes, 8).unwrap_or(0);
        if version != WORKING_SET_VERSION {
            return Err(WorkingSetError::Version { found: version });
        }
        if bytes[56..64] != [0u8; 8] {
            return Err(WorkingSetError::Reserved);
        }
        let count = le::u32_at(bytes, 12).unwrap_or(u32::MAX);
        if count > MAX_WORKING_SET_PAGES {
            return Err(WorkingSetError::TooLong { found: count });
        }
        let expected = HEADER + 4 * count as usize + CHECKSUM;
        if bytes.len() != expected {
            return Err(WorkingSetError::Length {
                count,
                expected,
                found: bytes.len(),
            });
        }
        let (signed, sum) = bytes.split_at(expected - CHECKSUM);
        if blake3::hash(signed).as_bytes() != sum {
            return Err(WorkingSetError::Checksum);
        }
        let size = le::u64_at(bytes, 16).unwrap_or(0);
        if size != mem_size {
            return Err(WorkingSetError::MemorySize {
                found: size,
                expected: mem_size,
            });
        }
        if le::array_at::<32>(bytes, 24).as_ref() != Some(memory_digest) {
            return Err(WorkingSetError::Stale);
        }
        let mem_pages = mem_size / PAGE_SIZE;
        let mut seen = vec![0u64; usize::try_from(mem_pages.div_ceil(64)).unwrap_or(0)];
        let mut pages = Vec::with_capacity(count as usize);
        for (index, raw) in signed[HEADER..].chunks_exact(4).enumerate() {
            let page = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if u64::from(page) >= mem_pages {
                return Err(WorkingSetError::OutOfRange {
                    index,
                    page,
                    pages: mem_pages,
                });
            }
            let (word, bit) = ((page / 64) as usize, page % 64);
            match seen.get_mut(word) {
                Some(w) if *w & (1 << bit) != 0 => {
                    return Err(WorkingSetError::Duplicate { index, page })
                }
                Some(w) => *w |= 1 << bit,
                None => {
                    return Err(WorkingSetError::OutOfRange {
                        index,
                        page,
                        pages: mem_pages,
                    })
                }
            }
            pages.push(page);
        }
        Ok(Self { pages })
    }
}

/// Reads `dir/working-set` if there is one: `Ok(None)` when absent, the
/// decoder's verdict otherwise. A file longer than any working set is
/// refused before it is read whole.
pub fn read(
    dir: &Path,
    mem_size: u64,
    memory_digest: &[u8; 32],
) -> Result<Option<WorkingSet>, String> {
    let path = dir.join(WORKING_SET_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let cap = (HEADER + 4 * MAX_WORKING_SET_PAGES as usize + CHECKSUM) as u64;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > cap {
        return Err(format!(
            "{}: {len} bytes, more than any working set ({cap})",
            path.display()
        ));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, cap), &mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    WorkingSet::decode(&bytes, mem_size, memory_digest)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: u64 = 64 << 20;
    const DIGEST: [u8; 32] = [7; 32];

    fn good() -> Vec<u8> {
        WorkingSet::encode(&[5, 1, 16383, 1024], MEM, &DIGEST)
    }

    /// Re-seals `bytes` after an edit, so the checks behind the checksum
    /// are reached.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let n = bytes.len() - CHECKSUM;
        let sum = blake3::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(sum.as_bytes());
        bytes
    }

    #[test]
    fn a_working_set_round_trips_in_its_order() {
        let ws = WorkingSet::decode(&good(), MEM, &DIGEST).unwrap();
        assert_eq!(ws.pages, vec![5, 1, 16383, 1024]);
        let empty = WorkingSet::encode(&[], MEM, &DIGEST);
        assert!(WorkingSet::decode(&empty, MEM, &DIGEST)
            .unwrap()
            .pages
            .is_empty());
    }

    #[test]
    fn the_header_is_pinned() {
        let b = good();
        assert_eq!(&b[..8], b"TNDMWSET");
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &4u32.to_le_bytes());
        assert_eq!(&b[16..24], &MEM.to_le_bytes());
        assert_eq!(&b[64..68], &5u32.to_le_bytes());
        assert_eq!(b.len(), 64 + 16 + 32);
    }

    #[test]
    fn truncated_or_foreign_files_are_refused_by_name() {
        let b = good();
        for n in [0, 10, 95] {
            assert!(matches!(
                WorkingSet::decode(&b[..n], MEM, &DIGEST),
                Err(WorkingSetError::Truncated { .. })
            ));
        }
        assert!(matches!(
            WorkingSet::decode(&b[..b.len() - 1], MEM, &DIGEST),
            Err(WorkingSetError::Length { .. })
        ));
        let mut m = b.clone();
        m[0] = b'X';
        assert_eq!(
            WorkingSet::decode(&m, MEM, &DIGEST),
            Err(WorkingSetError::BadMagic)
        );
        let mut v = b.clone();
        v[8] = 9;
        assert_eq!(
            WorkingSet::decode(&v, MEM, &DIGEST),
            Err(WorkingSetError::Version { found: 9 })
        );
        let mut r = b.clone();
        r[60] = 1;
        assert_eq!(
            WorkingSet::decode(&r, MEM, &DIGEST),
            Err(WorkingSetError::Reserved)
        );
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let b = good();
        for i in 0..b.len() {
            let mut f = b.clone();
            f[i] ^= 0x10;
            assert!(
                WorkingSet::decode(&f, MEM, &DIGEST).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn a_huge_count_is_refused_before_any_allocation() {
        let mut b = good();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            WorkingSet::decode(&b, MEM, &DIGEST),
            Err(WorkingSetError::TooLong { found: u32::MAX })
        );
        let many: Vec<u32> = (0..MAX_WORKING_SET_PAGES + 10).collect();
        let capped = WorkingSet::encode(&many, 1 << 30, &DIGEST);
        let ws = WorkingSet::decode(&capped, 1 << 30, &DIGEST).unwrap();
        assert_eq!(ws.pages.len(), MAX_WORKING_SET_PAGES as usize);
    }

    #[test]
    fn another_snapshot_or_size_is_stale() {
        assert_eq!(
            WorkingSet::decode(&good(), MEM, &[8; 32]),
            Err(WorkingSetError::Stale)
        );
        assert_eq!(
            WorkingSet::decode(&good(), 128 << 20, &DIGEST),
            Err(WorkingSetError::MemorySize {
                found: MEM,
                expected: 128 << 20
            })
        );
    }

    #[test]
    fn pages_outside_memory_or_twice_are_refused() {
        let out = reseal(WorkingSet::encode(&[1, 16384], MEM, &DIGEST));
        assert_eq!(
            WorkingSet::decode(&out, MEM, &DIGEST),
            Err(WorkingSetError::OutOfRange {
                index: 1,
                page: 16384,
                pages: 16384
            })
        );
        let far = WorkingSet::encode(&[u32::MAX], MEM, &DIGEST);
        assert!(matches!(
            WorkingSet::decode(&far, MEM, &DIGEST),
            Err(WorkingSetError::OutOfRange { .. })
        ));
        let dup = WorkingSet::encode(&[3, 4, 3], MEM, &DIGEST);
        assert_eq!(
            WorkingSet::decode(&dup, MEM, &DIGEST),
            Err(WorkingSetError::Duplicate { index: 2, page: 3 })
        );
    }

    #[test]
    fn a_missing_file_is_none_and_an_oversized_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("tandem-ws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(WORKING_SET_FILE));
        assert_eq!(read(&dir, MEM, &DIGEST), Ok(None));
        std::fs::write(dir.join(WORKING_SET_FILE), good()).unwrap();
        assert_eq!(read(&dir, MEM, &DIGEST).unwrap().unwrap().pages.len(), 4);
        let f = std::fs::File::create(dir.join(WORKING_SET_FILE)).unwrap();
        f.set_len(8 << 20).unwrap();
        let e = read(&dir, MEM, &DIGEST).unwrap_err();
        assert!(e.contains("more than any working set"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
