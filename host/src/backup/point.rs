//! A backup point's metadata file (`point-NNNNNN.meta`): the same sealed
//! header as a snapshot state file (magic `TNDMBKUP`), then a `postcard`
//! [`PointMeta`]. Its pages live in a separate file it names
//! (`point-NNNNNN-<16 hex>.pages`): raw 4 KiB pages, in the order of
//! [`PointMeta::pages`].
//!
//! Each disk's blocks live in a blocks file of their own
//! ([`disk`](super::disk)), under chunk digests made the same way.
//!
//! Digests chain: chunk `i` of point `n` is
//! `BLAKE3(parent chain ‖ n ‖ i ‖ its page numbers ‖ its page bytes)`, and
//! the point's chain digest is
//! `BLAKE3(parent chain ‖ n ‖ BLAKE3(state) ‖ every chunk digest ‖ disks)`
//! where `disks` is their count, then for each its index, sectors, chunk
//! count and chunk digests; a
//! delta's parent chain is its predecessor's chain digest, a base point's
//! is all zeros. A chain is thus verified end to end, and a damaged chunk
//! is named with its pages.

use serde::{Deserialize, Serialize};

use super::disk::DiskPart;
use crate::snapshot::format::{self, SnapshotState};
use crate::snapshot::SnapshotError;

/// Magic of a point metadata file.
pub const MAGIC: [u8; 8] = *b"TNDMBKUP";
/// Version of the point metadata format, in its sealed header. History: 1
/// to 4, the state file's versions (points were sealed with them). 5,
/// [`PointMeta::disks`] appended and the disks in the chain digest: a
/// point holds its disks' changed blocks. Points of another version are
/// refused by name (a chain is read by the tandem that wrote it).
pub const FORMAT_VERSION: u32 = 5;
/// Pages per digest chunk (1 MiB).
pub const CHUNK_PAGES: usize = 256;
/// Largest metadata body: the page list of a full 4 GiB base, and more.
pub const MAX_BODY: u64 = 64 << 20;

/// One backup point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointMeta {
    /// Its number in the chain.
    pub point: u64,
    /// A base holds every non-zero page; a delta the pages changed since its predecessor.
    pub base: bool,
    /// Chain digest of the predecessor (zeros for a base).
    pub parent: [u8; 32],
    /// Name of its pages file.
    pub pages_file: String,
    /// Guest page numbers, ascending, in the order of the pages file.
    pub pages: Vec<u64>,
    /// One digest per chunk of `CHUNK_PAGES` pages.
    pub chunks: Vec<[u8; 32]>,
    /// vCPU, machine, clock: the state to restore at this point.
    pub state: SnapshotState,
    /// This point's chain digest.
    pub chain: [u8; 32],
    /// Each disk's changed blocks (a base: every block with data), in the
    /// order of `state.disks` (format version 4).
    pub disks: Vec<DiskPart>,
}

/// Digest of chunk `index` of point `point`.
pub fn chunk_digest(
    parent: &[u8; 32],
    point: u64,
    index: u64,
    pages: &[u64],
    bytes: &[u8],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(parent);
    h.update(&point.to_le_bytes());
    h.update(&index.to_le_bytes());
    for p in pages {
        h.update(&p.to_le_bytes());
    }
    h.update(bytes);
    *h.finalize().as_bytes()
}

/// Chain digest of a point.
pub fn chain_digest(
    parent: &[u8; 32],
    point: u64,
    state: &SnapshotState,
    chunks: &[[u8; 32]],
    disks: &[DiskPart],
) -> Result<[u8; 32], SnapshotError> {
    let state = postcard::to_allocvec(state)
        .map_err(|e| SnapshotError::Invalid(format!("state does not encode: {e}")))?;
    let mut h = blake3::Hasher::new();
    h.update(parent);
    h.update(&point.to_le_bytes());
    h.update(blake3::hash(&state).as_bytes());
    for c in chunks {
        h.update(c);
    }
    super::disk::chain_update(&mut h, disks);
    Ok(*h.finalize().as_bytes())
}

/// Whether `name` is a pages file name this format writes for `point`.
pub fn valid_pages_name(name: &str, point: u64) -> bool {
    let prefix = format!("point-{point:06}-");
    name.strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(".pages"))
        .is_some_and(|hex| {
            hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Name of point `n`'s metadata file.
pub fn meta_name(point: u64) -> String {
    format!("point-{point:06}.meta")
}

/// The point number of a metadata file name.
pub fn parse_meta_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("point-")?.strip_suffix(".meta")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl PointMeta {
    /// The sealed file.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let body = postcard::to_allocvec(self)
            .map_err(|e| SnapshotError::Invalid(format!("point does not encode: {e}")))?;
        Ok(format::seal_version(&MAGIC, FORMAT_VERSION, &body))
    }

    /// Checks and decodes a sealed metadata file.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let what = "backup point metadata";
        let body = format::unseal_version(&MAGIC, FORMAT_VERSION, bytes, MAX_BODY, what)
            .map_err(|e| match e {
                SnapshotError::VersionMismatch { found, expected } => SnapshotError::Invalid(format!(
                    "backup point format version {found}; this tandem reads version {expected} (5 added disks to points; restore a chain with the tandem that wrote it)"
                )),
                e => e,
            })?;
        let meta = match postcard::take_from_bytes::<PointMeta>(body) {
            Ok((meta, [])) => meta,
            Ok((_, rest)) => {
                return Err(SnapshotError::Invalid(format!(
                    "{} trailing bytes after the point",
                    rest.len()
                )))
            }
            Err(e) => {
                return Err(SnapshotError::Invalid(format!(
                    "point does not decode: {e}"
                )))
            }
        };
        meta.check()?;
        Ok(meta)
    }

    fn check(&self) -> Result<(), SnapshotError> {
        let bad = |what: String| Err(SnapshotError::Invalid(what));
        if !valid_pages_name(&self.pages_file, self.point) {
            return bad(format!(
                "pages file name {:?} is not valid",
                self.pages_file
            ));
        }
        let max_page = self.state.machine.mem_size / tandem_abi::layout::PAGE_SIZE;
        if !self.pages.windows(2).all(|w| w[0] < w[1]) {
            return bad("page list is not strictly ascending".into());
        }
        if self.pages.last().is_some_and(|&p| p >= max_page) {
            return bad("page list runs past the end of memory".into());
        }
        if self.chunks.len() != self.pages.len().div_ceil(CHUNK_PAGES) {
            return bad(format!(
                "{} chunk digests for {} pages",
                self.chunks.len(),
                self.pages.len()
            ));
        }
        if self.base && self.parent != [0; 32] {
            return bad("a base point names a parent".into());
        }
        super::disk::check_meta(self)?;
        // The state's memory reference is unused in a point; its machine must still be sane.
        let mut state = self.state.clone();
        state.memory.file = "memory-0000000000000000".into();
        state.memory.size = state.machine.mem_size;
        state.memory.data_pages = 0;
        state.chunks = Default::default();
        state.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(meta_name(3), "point-000003.meta");
        assert_eq!(parse_meta_name("point-000003.meta"), Some(3));
        assert_eq!(parse_meta_name("point-3.meta"), None);
        assert_eq!(parse_meta_name("point-00000x.meta"), None);
        assert!(valid_pages_name("point-000003-0123456789abcdef.pages", 3));
        assert!(!valid_pages_name("point-000004-0123456789abcdef.pages", 3));
        assert!(!valid_pages_name("point-000003-../../etc/pass.pages", 3));
    }

    #[test]
    fn a_point_of_another_format_version_is_refused_by_name() {
        let old = format::seal_version(&MAGIC, 4, b"a point from before disks");
        let e = PointMeta::decode(&old).unwrap_err().to_string();
        assert!(
            e.contains("backup point format version 4; this tandem reads version 5"),
            "{e}"
        );
        let e = PointMeta::decode(&format::seal(&MAGIC, b"x")).unwrap_err();
        assert!(e.to_string().contains("format version"), "{e}");
    }

    #[test]
    fn chunk_digests_chain_to_the_parent() {
        let a = chunk_digest(&[0; 32], 1, 0, &[5], &[1; 4096]);
        let b = chunk_digest(&[1; 32], 1, 0, &[5], &[1; 4096]);
        let c = chunk_digest(&[0; 32], 1, 0, &[6], &[1; 4096]);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
