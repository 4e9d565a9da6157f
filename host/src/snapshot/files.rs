//! Crash-safe files: everything is written to a temporary name in the
//! target directory, fsynced, renamed over its final name, and the
//! directory fsynced, so a reader sees the old file or the new one, never a
//! torn one, whenever the writer is killed.
//!
//! Memory files are sparse: pages that are zero are left as holes, so a
//! snapshot of a 1 GiB guest that touched 10 MiB writes 10 MiB.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tandem_abi::layout::PAGE_SIZE;
use vm_memory::{Bytes, GuestAddress};

use super::SnapshotError;
use crate::memory::GuestRam;

// PAGE_SIZE is 4 KiB, which fits any usize.
#[allow(clippy::cast_possible_truncation)]
const PAGE: usize = PAGE_SIZE as usize;
/// Pages read from guest memory at a time.
const RUN_PAGES: usize = 256;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fresh name for a temporary file in `dir`.
pub(crate) fn temp_path(dir: &Path, final_name: &str) -> PathBuf {
    dir.join(format!(
        ".{final_name}.tmp-{}-{:x}",
        std::process::id(),
        nonce()
    ))
}

/// 64 random bits (from getrandom; the TSC if that fails).
pub(crate) fn nonce() -> u64 {
    let mut b = [0u8; 8];
    crate::entropy::fill_random(&mut b);
    u64::from_le_bytes(b)
}

/// Fsyncs a directory, so renames in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `bytes` to `dir/name` atomically (temporary file, fsync, rename,
/// fsync of the directory).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SnapshotError> {
    let tmp = temp_path(dir, name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let dest = dir.join(name);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames a finished temporary file into place and makes it durable.
pub(crate) fn commit(tmp: &Path, dest: &Path, dir: &Path) -> Result<(), SnapshotError> {
    std::fs::rename(tmp, dest).map_err(io(dest))?;
    sync_dir(dir)
}

/// Incremental BLAKE3 over pages, each preceded by its page number.
pub struct PageDigest {
    hasher: blake3::Hasher,
    pages: u64,
    chunks: super::chunks::ChunkHasher,
}

impl Default for PageDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl PageDigest {
    /// An empty digest.
    pub fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            pages: 0,
            chunks: Default::default(),
        }
    }
    /// Adds page number `page` with content `bytes`.
    pub fn add(&mut self, page: u64, bytes: &[u8]) {
        self.hasher.update(&page.to_le_bytes());
        self.hasher.update(bytes);
        self.pages += 1;
        self.chunks.add(page, bytes);
    }
    /// The digest of each chunk holding data, as added so far.
    pub fn chunks(&self) -> super::chunks::ChunkDigests {
        self.chunks.finish()
    }
    /// Pages added.
    pub fn pages(&self) -> u64 {
        self.pages
    }
    /// The digest.
    pub fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// Data extents of `file` as page ranges `[first, end)` (SEEK_DATA/SEEK_HOLE;
/// the whole file where the filesystem cannot tell).
pub(crate) fn data_pages(file: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at: i64 = 0;
    let size_i = i64::try_from(size).unwrap_or(i64::MAX);
    while at < size_i {
        // SAFETY: lseek on a file descriptor we own; it moves only its offset,
        // which nothing else in this process uses (reads are positional).
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // no data past `at`
            }
            return vec![(0, size.div_ceil(PAGE_SIZE))];
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size_i } else { hole.min(size_i) };
        let (d, h) = (data.unsigned_abs(), hole.unsigned_abs());
        out.push((d / PAGE_SIZE, h.div_ceil(PAGE_SIZE)));
        at = hole.max(data + 1);
    }
    out
}

/// What writing a memory file did.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryWriteStats {
    /// Pages that may hold data and were read.
    pub pages_scanned: u64,
    /// Non-zero pages written.
    pub pages_written: u64,
}

/// Which pages of `ram` may hold anything but zeros: those the host ever
/// backed, plus the data of the file a restored VM maps.
pub(crate) fn candidate_pages(ram: &GuestRam) -> Result<Vec<bool>, SnapshotError> {
    let mut pages: Vec<bool> = ram
        .resident_pages()
        .map_err(SnapshotError::Memory)?
        .into_iter()
        .map(|b| b != 0)
        .collect();
    if let Some(file) = ram.source_file() {
        for (first, end) in data_pages(file, ram.size()) {
            for p in first..end {
                if let Some(slot) = usize::try_from(p).ok().and_then(|i| pages.get_mut(i)) {
                    *slot = true;
                }
            }
        }
    }
    Ok(pages)
}

/// Writes guest memory into the new file `out` (already `ram.size()` bytes
/// long, all holes): every non-zero candidate page at its own offset.
/// Returns the digest over the pages written.
pub(crate) fn write_memory(
    ram: &GuestRam,
    candidates: &[bool],
    out: &File,
    path: &Path,
) -> Result<(PageDigest, MemoryWriteStats), SnapshotError> {
    let mut digest = PageDigest::new();
    let mut stats = MemoryWriteStats::default();
    let mut buf = vec![0u8; RUN_PAGES * PAGE];
    let mut page = 0usize;
    while page < candidates.len() {
        if !candidates[page] {
            page += 1;
            continue;
        }
        let mut run = 1;
        while run < RUN_PAGES && candidates.get(page + run) == Some(&true) {
            run += 1;
        }
        let bytes = &mut buf[..run * PAGE];
        let addr = page as u64 * PAGE_SIZE;
        ram.mem
            .read_slice(bytes, GuestAddress(addr))
            .map_err(|e| SnapshotError::Invalid(format!("cannot read guest memory: {e}")))?;
        stats.pages_scanned += run as u64;
        write_nonzero(bytes, page as u64, out, path, &mut digest, &mut stats)?;
        page += run;
    }
    Ok((digest, stats))
}

/// Writes the non-zero pages of `bytes` (which start at page `first`) to
/// `out`, coalescing neighbours into one write.
pub(crate) fn write_nonzero(
    bytes: &[u8],
    first: u64,
    out: &File,
    path: &Path,
    digest: &mut PageDigest,
    stats: &mut MemoryWriteStats,
) -> Result<(), SnapshotError> {
    let pages: Vec<&[u8]> = bytes.chunks(PAGE).collect();
    let mut i = 0;
    while i < pages.len() {
        if is_zero(pages[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < pages.len() && !is_zero(pages[i]) {
            digest.add(first + i as u64, pages[i]);
            i += 1;
        }
        let off = (first + start as u64) * PAGE_SIZE;
        out.write_all_at(&bytes[start * PAGE..i * PAGE], off)
            .map_err(io(path))?;
        stats.pages_written += (i - start) as u64;
    }
    Ok(())
}

pub(crate) fn is_zero(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(16);
    let words_zero = chunks.by_ref().fold(0u128, |acc, c| {
        acc | u128::from_ne_bytes(c.try_into().unwrap_or([0xFF; 16]))
    }) == 0;
    words_zero && chunks.remainder().iter().all(|&b| b == 0)
}

/// Recomputes the digest of a memory file, reading only its data extents.
pub fn digest_file(file: &File, size: u64, path: &Path) -> Result<PageDigest, SnapshotError> {
    let mut digest = PageDigest::new();
    let mut buf = vec![0u8; RUN_PAGES * PAGE];
    for (first, end) in data_pages(file, size) {
        let mut page = first;
        while page < end {
            let run = usize::try_from((end - page).min(RUN_PAGES as u64)).unwrap_or(RUN_PAGES);
            let bytes = &mut buf[..run * PAGE];
            file.read_exact_at(bytes, page * PAGE_SIZE)
                .map_err(io(path))?;
            for (i, p) in bytes.chunks(PAGE).enumerate() {
                if !is_zero(p) {
                    digest.add(page + i as u64, p);
                }
            }
            page += run as u64;
        }
    }
    Ok(digest)
}
