//! Per-chunk digests of a memory file, so a restore can check each 64 KiB
//! chunk on its own, the first time the guest touches it
//! (`tandem restore --verify lazy`), instead of reading the whole file.
//!
//! A chunk's digest is BLAKE3 over its non-zero pages, in address order,
//! each preceded by its page number (little-endian `u64`): the same
//! construction as the whole file's digest ([`super::MemoryRef::digest`]),
//! cut at chunk boundaries, so the writer computes both in one pass. A
//! chunk that holds only zeros has no digest: a restore gives the guest
//! zeros there without reading the file, so nothing written into a hole
//! can reach the guest. The list is as long as the snapshot's data, not its
//! memory: a 1 GiB guest that used 1 MiB lists 16 chunks at most.

use serde::{Deserialize, Serialize};
use tandem_abi::layout::PAGE_SIZE;

use super::files::is_zero;
use super::SnapshotError;

/// Pages in one chunk.
pub const CHUNK_PAGES: u64 = 16;
/// Bytes in one chunk (64 KiB): large enough that a fault brings in a
/// useful amount, small enough that checking one costs about 20 µs.
pub const CHUNK_SIZE: u64 = CHUNK_PAGES * PAGE_SIZE;

/// The digests of a memory file's chunks that hold data, by chunk index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDigests {
    /// `(chunk index, digest)`, strictly increasing by index.
    pub digests: Vec<(u32, [u8; 32])>,
}

impl ChunkDigests {
    /// The digest of chunk `chunk`, or `None` if the chunk holds only zeros.
    pub fn get(&self, chunk: u64) -> Option<&[u8; 32]> {
        let chunk = u32::try_from(chunk).ok()?;
        self.digests
            .binary_search_by_key(&chunk, |&(c, _)| c)
            .ok()
            .and_then(|i| self.digests.get(i))
            .map(|(_, d)| d)
    }

    /// Chunks listed.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether no chunk holds data.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks the list against a memory file of `mem_size` bytes holding
    /// `data_pages` non-zero pages: indices strictly increasing and inside
    /// memory, no more chunks than data pages.
    pub fn check(&self, mem_size: u64, data_pages: u64) -> Result<(), SnapshotError> {
        let chunks = mem_size / CHUNK_SIZE;
        if self.digests.len() as u64 > data_pages {
            return Err(SnapshotError::Invalid(format!(
                "{} chunk digests for {data_pages} data pages",
                self.digests.len()
            )));
        }
        let mut last: Option<u32> = None;
        for &(c, _) in &self.digests {
            if u64::from(c) >= chunks {
                return Err(SnapshotError::Invalid(format!(
                    "chunk digest for chunk {c}, past the {chunks} chunks of memory"
                )));
            }
            if last.is_some_and(|l| l >= c) {
                return Err(SnapshotError::Invalid(format!(
                    "chunk digests out of order at chunk {c}"
                )));
            }
            last = Some(c);
        }
        Ok(())
    }
}

/// Builds [`ChunkDigests`] from pages added in address order.
#[derive(Default)]
pub(crate) struct ChunkHasher {
    current: Option<(u64, blake3::Hasher)>,
    done: Vec<(u32, [u8; 32])>,
}

impl ChunkHasher {
    /// Adds non-zero page `page` with content `bytes`; pages come in
    /// increasing order.
    pub(crate) fn add(&mut self, page: u64, bytes: &[u8]) {
        let chunk = page / CHUNK_PAGES;
        if self.current.as_ref().is_some_and(|(c, _)| *c != chunk) {
            self.flush();
        }
        let (_, h) = self
            .current
            .get_or_insert_with(|| (chunk, blake3::Hasher::new()));
        h.update(&page.to_le_bytes());
        h.update(bytes);
    }

    fn flush(&mut self) {
        if let Some((c, h)) = self.current.take() {
            // A chunk index past u32 would need 256 TiB of memory: such
            // pages are never written (memory is far smaller).
            if let Ok(c) = u32::try_from(c) {
                self.done.push((c, *h.finalize().as_bytes()));
            }
        }
    }

    /// The digests so far.
    pub(crate) fn finish(&self) -> ChunkDigests {
        let mut digests = self.done.clone();
        if let Some((c, h)) = &self.current {
            if let Ok(c) = u32::try_from(*c) {
                digests.push((c, *h.finalize().as_bytes()));
            }
        }
        ChunkDigests { digests }
    }
}

/// The digest of chunk `chunk` whose bytes are `bytes` (one chunk), or
/// `None` if they are all zero.
pub fn chunk_digest(chunk: u64, bytes: &[u8]) -> Option<[u8; 32]> {
    let mut h = ChunkHasher::default();
    let first = chunk * CHUNK_PAGES;
    // PAGE_SIZE is 4 KiB, which fits any usize.
    #[allow(clippy::cast_possible_truncation)]
    for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
        if !is_zero(page) {
            h.add(first + i as u64, page);
        }
    }
    h.finish().digests.first().map(|&(_, d)| d)
}

/// Whether `bytes`, read as chunk `chunk`, match `digests` (a chunk
/// without a digest must be all zeros).
pub fn chunk_matches(digests: &ChunkDigests, chunk: u64, bytes: &[u8]) -> bool {
    chunk_digest(chunk, bytes).as_ref() == digests.get(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    // CHUNK_SIZE is 64 KiB, which fits any usize.
    #[allow(clippy::cast_possible_truncation)]
    const CHUNK: usize = CHUNK_SIZE as usize;
    #[allow(clippy::cast_possible_truncation)]
    const PAGE: usize = PAGE_SIZE as usize;

    fn memory() -> Vec<u8> {
        let mut m = vec![0u8; 4 * CHUNK];
        m[5] = 1; // chunk 0, page 0
        m[3 * PAGE + 7] = 2; // chunk 0, page 3
        m[2 * CHUNK + 100] = 3; // chunk 2
        m
    }

    fn hashed(m: &[u8]) -> ChunkDigests {
        let mut h = ChunkHasher::default();
        for (p, page) in m.chunks(PAGE).enumerate() {
            if !is_zero(page) {
                h.add(p as u64, page);
            }
        }
        h.finish()
    }

    #[test]
    fn the_writer_and_the_checker_agree_chunk_by_chunk() {
        let m = memory();
        let d = hashed(&m);
        assert_eq!(
            d.digests.iter().map(|&(c, _)| c).collect::<Vec<_>>(),
            [0, 2]
        );
        for (c, bytes) in m.chunks(CHUNK).enumerate() {
            assert!(chunk_matches(&d, c as u64, bytes), "chunk {c}");
        }
        assert!(d.check(4 * CHUNK_SIZE, 3).is_ok());
    }

    #[test]
    fn a_flipped_byte_fails_only_its_chunk() {
        let d = hashed(&memory());
        let mut m = memory();
        m[2 * CHUNK + 101] ^= 0x40; // chunk 2
        m[CHUNK + 9] = 1; // chunk 1, a hole, now non-zero
        let ok: Vec<bool> = m
            .chunks(CHUNK)
            .enumerate()
            .map(|(c, b)| chunk_matches(&d, c as u64, b))
            .collect();
        assert_eq!(ok, [true, false, false, true]);
        // A chunk with data read as zeros (a punched hole) fails too.
        assert!(!chunk_matches(&d, 0, &[0u8; CHUNK]));
    }

    #[test]
    fn hostile_lists_are_refused() {
        let d = |v: &[u32]| ChunkDigests {
            digests: v.iter().map(|&c| (c, [0; 32])).collect(),
        };
        let e = d(&[3, 2]).check(64 << 20, 10).unwrap_err().to_string();
        assert!(e.contains("out of order at chunk 2"), "{e}");
        let e = d(&[1, 1]).check(64 << 20, 10).unwrap_err().to_string();
        assert!(e.contains("out of order"), "{e}");
        let e = d(&[1024]).check(64 << 20, 10).unwrap_err().to_string();
        assert!(e.contains("past the 1024 chunks"), "{e}");
        let e = d(&[1, 2, 3]).check(64 << 20, 2).unwrap_err().to_string();
        assert!(e.contains("3 chunk digests for 2 data pages"), "{e}");
        assert_eq!(d(&[1, 5]).get(5), Some(&[0; 32]));
        assert_eq!(d(&[1, 5]).get(4), None);
        assert_eq!(d(&[1, 5]).get(u64::MAX), None);
    }
}
