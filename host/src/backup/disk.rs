//! The disks' part of a backup point: the blocks each disk's dirty-block
//! bitmap reported since the previous point (a base: every block holding
//! data), in one blocks file per disk (`point-NNNNNN-dI-<16 hex>.blocks`,
//! raw 4 KiB blocks in the order of [`DiskPart::blocks`], a short last
//! block of the disk padded with zeros), under digests chained as the
//! pages' are (see [`point`](super::point)). Written, checked, restored
//! and folded here; which blocks a point holds is the device's account
//! ([`BlkDevice::take_dirty_blocks`](crate::devices::blk::BlkDevice::take_dirty_blocks)).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::point::{self, PointMeta};
use super::{io, BackupError};
use crate::devices::blk::dirty::{blocks_in, BLOCK_SIZE};
use crate::devices::blk::request::SECTOR_SIZE;
use crate::devices::blk::DiskFile;
use crate::snapshot::{files, SnapshotError};

/// Blocks per digest chunk (1 MiB), as pages per chunk.
pub const CHUNK_BLOCKS: usize = 256;
// BLOCK_SIZE is 4 KiB, which fits any usize.
#[allow(clippy::cast_possible_truncation)]
const BLOCK: usize = BLOCK_SIZE as usize;
/// Longest run of blocks read or written at once (1 MiB).
const RUN_BLOCKS: usize = 256;

/// One disk's part of a backup point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPart {
    /// Its blocks file.
    pub file: String,
    /// The disk's size in sectors.
    pub sectors: u64,
    /// Block numbers, ascending, in the order of the blocks file.
    pub blocks: Vec<u64>,
    /// One digest per chunk of [`CHUNK_BLOCKS`] blocks.
    pub chunks: Vec<[u8; 32]>,
}

/// What a point takes from one disk: the disk, and the blocks to store
/// (`None`: a base, every block with data).
pub(crate) struct DiskSource<'a> {
    /// The live disk.
    pub disk: &'a DiskFile,
    /// The blocks its bitmap reported, ascending.
    pub blocks: Option<Vec<u64>>,
    /// The blocks' bytes, read at the point's stop (pre-copy: the guest
    /// runs on while they are written); `None`: read from `disk` now.
    pub captured: Option<&'a CapturedBlocks>,
}

/// Most bytes of dirty disk blocks read at a pre-copy stop, over all of
/// a VM's disks (64 MiB); a point with more is written stopped.
pub const MAX_CAPTURED_BYTES: u64 = 64 << 20;

/// One disk's dirty blocks and their bytes, read with the vCPU stopped.
#[derive(Debug, Default)]
pub(crate) struct CapturedBlocks {
    /// Block numbers, ascending.
    pub blocks: Vec<u64>,
    /// [`BLOCK_SIZE`] bytes per block, in the order of `blocks`.
    pub bytes: Vec<u8>,
}

impl CapturedBlocks {
    /// Reads `blocks` (ascending) of `disk` now.
    pub fn read(disk: &DiskFile, blocks: Vec<u64>) -> Result<Self, BackupError> {
        let len = disk.sectors() * SECTOR_SIZE;
        let mut bytes = Vec::with_capacity(blocks.len() * BLOCK);
        read_blocks(disk, len, &blocks, &mut |_, b| {
            bytes.extend_from_slice(b);
            Ok(())
        })?;
        Ok(Self { blocks, bytes })
    }

    /// The bytes `n` blocks take in memory.
    pub fn bytes_for(n: usize) -> u64 {
        n as u64 * BLOCK_SIZE
    }
}

/// Name of disk `disk`'s blocks file in point `point`.
fn blocks_name(point: u64, disk: usize) -> String {
    format!("point-{point:06}-d{disk}-{:016x}.blocks", files::nonce())
}

/// Whether `name` is a blocks file name this format writes for `point`'s disk `disk`.
pub fn valid_blocks_name(name: &str, point: u64, disk: usize) -> bool {
    let prefix = format!("point-{point:06}-d{disk}-");
    name.strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(".blocks"))
        .is_some_and(|hex| {
            hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Digest of chunk `index` of disk `disk` in point `point`.
pub fn chunk_digest(
    parent: &[u8; 32],
    point: u64,
    disk: u64,
    index: u64,
    blocks: &[u64],
    bytes: &[u8],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"disk");
    h.update(parent);
    h.update(&point.to_le_bytes());
    h.update(&disk.to_le_bytes());
    h.update(&index.to_le_bytes());
    for b in blocks {
        h.update(&b.to_le_bytes());
    }
    h.update(bytes);
    *h.finalize().as_bytes()
}

/// Feeds a point's disks into its chain digest.
pub(crate) fn chain_update(h: &mut blake3::Hasher, disks: &[DiskPart]) {
    h.update(&(disks.len() as u64).to_le_bytes());
    for (i, d) in disks.iter().enumerate() {
        h.update(&(i as u64).to_le_bytes());
        h.update(&d.sectors.to_le_bytes());
        h.update(&(d.chunks.len() as u64).to_le_bytes());
        for c in &d.chunks {
            h.update(c);
        }
    }
}

/// A blocks file being written: blocks appended, chunk digests made as
/// they fill.
struct BlocksOut {
    out: std::io::BufWriter<File>,
    tmp: PathBuf,
    name: String,
    parent: [u8; 32],
    point: u64,
    disk: u64,
    blocks: Vec<u64>,
    chunks: Vec<[u8; 32]>,
    chunk_bytes: Vec<u8>,
}

impl BlocksOut {
    fn create(dir: &Path, parent: [u8; 32], point: u64, disk: usize) -> Result<Self, BackupError> {
        let name = blocks_name(point, disk);
        let tmp = files::temp_path(dir, &name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        Ok(Self {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            name,
            parent,
            point,
            disk: disk as u64,
            blocks: Vec::new(),
            chunks: Vec::new(),
            chunk_bytes: Vec::with_capacity(CHUNK_BLOCKS * BLOCK),
        })
    }

    /// Appends block `block` (`bytes`: [`BLOCK_SIZE`] of them).
    fn push(&mut self, block: u64, bytes: &[u8]) -> Result<(), BackupError> {
        self.out.write_all(bytes).map_err(io(&self.tmp))?;
        self.blocks.push(block);
        self.chunk_bytes.extend_from_slice(bytes);
        if self.chunk_bytes.len() == CHUNK_BLOCKS * BLOCK {
            self.seal_chunk();
        }
        Ok(())
    }

    fn seal_chunk(&mut self) {
        let index = self.chunks.len();
        let first = index * CHUNK_BLOCKS;
        let blocks = &self.blocks[first..];
        self.chunks.push(chunk_digest(
            &self.parent,
            self.point,
            self.disk,
            index as u64,
            blocks,
            &self.chunk_bytes,
        ));
        self.chunk_bytes.clear();
    }

    /// Makes the file durable under its name; its part of the point.
    fn finish(mut self, dir: &Path, sectors: u64) -> Result<DiskPart, BackupError> {
        if !self.chunk_bytes.is_empty() {
            self.seal_chunk();
        }
        let tmp = self.tmp.clone();
        let file = self
            .out
            .into_inner()
            .map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        files::commit(&tmp, &dir.join(&self.name), dir)?;
        Ok(DiskPart {
            file: self.name,
            sectors,
            blocks: self.blocks,
            chunks: self.chunks,
        })
    }
}

/// Writes each disk's part of point `point` into `dir`: the blocks its
/// source names, read from the live disk now (the vCPU stopped, so they
/// are the disk at the point's instant); a base leaves out holes and zero
/// blocks (a restore starts from zeros), a delta keeps zero blocks (the
/// block may have held data before). Every file is durable before this
/// returns; on an error none is left under a final name it would count.
pub(crate) fn write_parts(
    dir: &Path,
    parent: [u8; 32],
    point: u64,
    sources: &[DiskSource<'_>],
) -> Result<Vec<DiskPart>, BackupError> {
    let mut parts = Vec::with_capacity(sources.len());
    for (i, src) in sources.iter().enumerate() {
        let part = (|| {
            let sectors = src.disk.sectors();
            let len = sectors * SECTOR_SIZE;
            let mut out = BlocksOut::create(dir, parent, point, i)?;
            let result = match (src.captured, &src.blocks) {
                (Some(c), _) => push_captured(c, &mut out),
                (None, Some(b)) => copy_blocks(src.disk, len, b, false, &mut out),
                (None, None) => {
                    let blocks = data_blocks(src.disk.file(), len);
                    copy_blocks(src.disk, len, &blocks, true, &mut out)
                }
            };
            if let Err(e) = result {
                let _ = std::fs::remove_file(&out.tmp);
                return Err(e);
            }
            let tmp = out.tmp.clone();
            out.finish(dir, sectors).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })();
        match part {
            Ok(p) => parts.push(p),
            Err(e) => {
                remove_parts(dir, &parts);
                return Err(e);
            }
        }
    }
    Ok(parts)
}

/// Removes the blocks files of `parts` (a point that was not committed).
pub(crate) fn remove_parts(dir: &Path, parts: &[DiskPart]) {
    for p in parts {
        let _ = std::fs::remove_file(dir.join(&p.file));
    }
}

/// The blocks of a disk of `len` bytes that hold data, by `SEEK_DATA`.
fn data_blocks(file: &File, len: u64) -> Vec<u64> {
    let max = blocks_in(len);
    let mut out = Vec::new();
    // BLOCK_SIZE is PAGE_SIZE: the extents come in blocks.
    for (first, end) in files::data_pages(file, len) {
        out.extend(first..end.min(max));
    }
    out
}

/// Appends blocks read at the stop to `out`.
fn push_captured(c: &CapturedBlocks, out: &mut BlocksOut) -> Result<(), BackupError> {
    if c.bytes.len() != c.blocks.len() * BLOCK {
        return Err(
            SnapshotError::Invalid("captured disk blocks and bytes disagree".into()).into(),
        );
    }
    for (&block, bytes) in c.blocks.iter().zip(c.bytes.chunks(BLOCK)) {
        out.push(block, bytes)?;
    }
    Ok(())
}

/// Reads `blocks` from `disk` in runs of consecutive blocks and appends
/// them to `out` (`skip_zero`: leaving out zero blocks).
fn copy_blocks(
    disk: &DiskFile,
    len: u64,
    blocks: &[u64],
    skip_zero: bool,
    out: &mut BlocksOut,
) -> Result<(), BackupError> {
    read_blocks(disk, len, blocks, &mut |block, bytes| {
        if skip_zero && files::is_zero(bytes) {
            return Ok(());
        }
        out.push(block, bytes)
    })
}

/// Takes each block read: its number and its [`BLOCK_SIZE`] bytes.
type BlockSink<'a> = dyn FnMut(u64, &[u8]) -> Result<(), BackupError> + 'a;

/// Reads `blocks` (ascending) from `disk` of `len` bytes in runs of
/// consecutive blocks, handing each block to `sink` (a short last block
/// padded with zeros).
fn read_blocks(
    disk: &DiskFile,
    len: u64,
    blocks: &[u64],
    sink: &mut BlockSink<'_>,
) -> Result<(), BackupError> {
    let max = blocks_in(len);
    let mut buf = vec![0u8; BLOCK * RUN_BLOCKS];
    let mut i = 0;
    while i < blocks.len() {
        let first = blocks[i];
        if first >= max {
            return Err(SnapshotError::Invalid(format!(
                "block {first} is past the end of disk {}",
                disk.path().display()
            ))
            .into());
        }
        let mut n = 1;
        while i + n < blocks.len() && blocks[i + n] == first + n as u64 && n < RUN_BLOCKS {
            n += 1;
        }
        let start = first * BLOCK_SIZE;
        let want = (n as u64 * BLOCK_SIZE).min(len - start);
        // At most RUN_BLOCKS blocks.
        let want = usize::try_from(want).unwrap_or(0);
        let run = &mut buf[..n * BLOCK];
        run.fill(0);
        disk.read_at(&mut run[..want], start).map_err(|source| {
            BackupError::Snapshot(SnapshotError::Io {
                path: disk.path().to_path_buf(),
                source,
            })
        })?;
        for (k, bytes) in run.chunks(BLOCK).enumerate() {
            sink(first + k as u64, bytes)?;
        }
        i += n;
    }
    Ok(())
}

/// Checks disk `i`'s part of `meta` against its blocks file.
pub(crate) fn check_part(dir: &Path, meta: &PointMeta, i: usize) -> Result<(), String> {
    let Some(part) = meta.disks.get(i) else {
        return Err(format!("disk {i}: no such disk in the point"));
    };
    let path = dir.join(&part.file);
    let file = File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("disk {i}: its blocks file {} is missing", part.file)
        } else {
            format!("disk {i}: cannot read {}: {e}", path.display())
        }
    })?;
    let len = file.metadata().map_err(|e| format!("disk {i}: {e}"))?.len();
    let mut buf = vec![0u8; CHUNK_BLOCKS * BLOCK];
    for (c, blocks) in part.blocks.chunks(CHUNK_BLOCKS).enumerate() {
        let at = (c * CHUNK_BLOCKS) as u64 * BLOCK_SIZE;
        let bytes = &mut buf[..blocks.len() * BLOCK];
        let span = || {
            format!(
                "disk blocks {}..={}",
                blocks.first().copied().unwrap_or(0),
                blocks.last().copied().unwrap_or(0)
            )
        };
        if at + bytes.len() as u64 > len {
            return Err(format!(
                "disk {i}, chunk {c}: truncated ({} ends at byte {len}, the chunk at {}; {})",
                part.file,
                at + bytes.len() as u64,
                span()
            ));
        }
        file.read_exact_at(bytes, at)
            .map_err(|e| format!("disk {i}, chunk {c}: cannot read {}: {e}", path.display()))?;
        let digest = chunk_digest(&meta.parent, meta.point, i as u64, c as u64, blocks, bytes);
        if part.chunks.get(c) != Some(&digest) {
            return Err(format!(
                "disk {i}, chunk {c}: digest mismatch ({} of {})",
                span(),
                part.file
            ));
        }
    }
    let expected = part.blocks.len() as u64 * BLOCK_SIZE;
    if len != expected {
        return Err(format!(
            "disk {i}: its blocks file {} is {len} bytes, expected {expected} (extended)",
            part.file
        ));
    }
    Ok(())
}

/// For every block of disk `i` the points of `lineage` (a base first)
/// hold: which point's blocks file has its latest content, and where in it.
fn block_map(lineage: &[&PointMeta], i: usize) -> BTreeMap<u64, (usize, u64)> {
    let mut map = BTreeMap::new();
    for (p, meta) in lineage.iter().enumerate() {
        if let Some(part) = meta.disks.get(i) {
            for (slot, &b) in part.blocks.iter().enumerate() {
                map.insert(b, (p, slot as u64));
            }
        }
    }
    map
}

/// Checks that every point of `lineage` has the disks its last point has.
pub(crate) fn check_lineage(lineage: &[&PointMeta]) -> Result<(), String> {
    let Some(last) = lineage.last() else {
        return Ok(());
    };
    for m in lineage {
        let same = m.disks.len() == last.disks.len()
            && m.disks
                .iter()
                .zip(&last.disks)
                .all(|(a, b)| a.sectors == b.sectors);
        if !same {
            return Err(format!(
                "point {} has other disks than point {}",
                m.point, last.point
            ));
        }
    }
    Ok(())
}

/// Builds disk `i` as it was at the last point of `lineage` into a new
/// file `to` (temporary name, fsync, rename): zeros, then each block's
/// latest content, holes where it is zero. Returns the blocks written.
pub(crate) fn restore_disk(
    dir: &Path,
    lineage: &[&PointMeta],
    i: usize,
    to: &Path,
    to_dir: &Path,
) -> Result<u64, BackupError> {
    let last = lineage.last().ok_or(BackupError::NoSuchPoint(0))?;
    let part = last
        .disks
        .get(i)
        .ok_or_else(|| SnapshotError::Invalid(format!("point {} has no disk {i}", last.point)))?;
    let len = part.sectors * SECTOR_SIZE;
    let sources: Vec<(PathBuf, Option<File>)> = lineage
        .iter()
        .map(|m| {
            let Some(p) = m.disks.get(i) else {
                return Ok((PathBuf::new(), None));
            };
            let path = dir.join(&p.file);
            File::open(&path)
                .map(|f| (path.clone(), Some(f)))
                .map_err(io(&path))
        })
        .collect::<Result<_, BackupError>>()?;
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("disk");
    let tmp = files::temp_path(to_dir, name);
    let result = (|| {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        out.set_len(len).map_err(io(&tmp))?;
        let mut buf = vec![0u8; BLOCK];
        let mut written = 0;
        for (&block, &(p, slot)) in &block_map(lineage, i) {
            let (path, Some(f)) = &sources[p] else {
                continue;
            };
            f.read_exact_at(&mut buf, slot * BLOCK_SIZE)
                .map_err(io(path))?;
            if files::is_zero(&buf) {
                continue;
            }
            let at = block * BLOCK_SIZE;
            let n = usize::try_from((len.saturating_sub(at)).min(BLOCK_SIZE)).unwrap_or(0);
            out.write_all_at(&buf[..n], at).map_err(io(&tmp))?;
            written += 1;
        }
        out.sync_all().map_err(io(&tmp))?;
        files::commit(&tmp, to, to_dir)?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Disk `i` of the last point of `lineage` folded into one base part of
/// point `point` (no parent) in `dir`: every non-zero block's latest content.
pub(crate) fn fold_disk(
    dir: &Path,
    lineage: &[&PointMeta],
    i: usize,
    point: u64,
) -> Result<DiskPart, BackupError> {
    let last = lineage.last().ok_or(BackupError::NoSuchPoint(point))?;
    let sectors = last.disks.get(i).map_or(0, |d| d.sectors);
    let mut out = BlocksOut::create(dir, [0; 32], point, i)?;
    let result = (|| {
        let mut buf = vec![0u8; BLOCK];
        let mut open: BTreeMap<usize, File> = BTreeMap::new();
        for (&block, &(p, slot)) in &block_map(lineage, i) {
            let Some(part) = lineage[p].disks.get(i) else {
                continue;
            };
            let path = dir.join(&part.file);
            let f = match open.entry(p) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(File::open(&path).map_err(io(&path))?)
                }
            };
            f.read_exact_at(&mut buf, slot * BLOCK_SIZE)
                .map_err(io(&path))?;
            if !files::is_zero(&buf) {
                out.push(block, &buf)?;
            }
        }
        Ok::<(), BackupError>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&out.tmp);
        return Err(e);
    }
    let tmp = out.tmp.clone();
    out.finish(dir, sectors).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Checks a decoded point's disk parts against its state: one per disk of
/// the state, of its size, names this format writes, blocks ascending and
/// on the disk, a digest per chunk.
pub(crate) fn check_meta(meta: &PointMeta) -> Result<(), SnapshotError> {
    let bad = |what: String| Err(SnapshotError::Invalid(what));
    if meta.disks.len() != meta.state.disks.len() {
        return bad(format!(
            "{} disk parts for {} disks",
            meta.disks.len(),
            meta.state.disks.len()
        ));
    }
    for (i, (part, state)) in meta.disks.iter().zip(&meta.state.disks).enumerate() {
        if !valid_blocks_name(&part.file, meta.point, i) {
            return bad(format!(
                "disk {i}: blocks file name {:?} is not valid",
                part.file
            ));
        }
        if part.sectors != state.sectors {
            return bad(format!(
                "disk {i}: {} sectors, its device state says {}",
                part.sectors, state.sectors
            ));
        }
        let max = blocks_in(part.sectors.saturating_mul(SECTOR_SIZE));
        if !part.blocks.windows(2).all(|w| w[0] < w[1]) {
            return bad(format!("disk {i}: block list is not strictly ascending"));
        }
        if part.blocks.last().is_some_and(|&b| b >= max) {
            return bad(format!(
                "disk {i}: block list runs past the end of the disk"
            ));
        }
        if part.chunks.len() != part.blocks.len().div_ceil(CHUNK_BLOCKS) {
            return bad(format!(
                "disk {i}: {} chunk digests for {} blocks",
                part.chunks.len(),
                part.blocks.len()
            ));
        }
    }
    Ok(())
}

/// The name a point's state gives disk `i` (the blocks live beside it; a
/// restore names the disk file it writes).
pub(crate) fn placeholder_name(i: usize) -> String {
    format!("disk-{i}-{:016x}", 0)
}

const _: () = assert!(BLOCK_SIZE == tandem_abi::layout::PAGE_SIZE);
const _: () = assert!(CHUNK_BLOCKS == point::CHUNK_PAGES);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_blocks_name(
            "point-000003-d0-0123456789abcdef.blocks",
            3,
            0
        ));
        assert!(!valid_blocks_name(
            "point-000003-d1-0123456789abcdef.blocks",
            3,
            0
        ));
        assert!(!valid_blocks_name(
            "point-000004-d0-0123456789abcdef.blocks",
            3,
            0
        ));
        assert!(!valid_blocks_name(
            "point-000003-d0-../../etc/passwd.blocks",
            3,
            0
        ));
        let n = blocks_name(7, 2);
        assert!(valid_blocks_name(&n, 7, 2), "{n}");
    }

    #[test]
    fn disk_chunks_are_their_own_digests() {
        let a = chunk_digest(&[0; 32], 1, 0, 0, &[5], &[1; 4096]);
        assert_ne!(a, chunk_digest(&[0; 32], 1, 1, 0, &[5], &[1; 4096]));
        assert_ne!(a, chunk_digest(&[0; 32], 1, 0, 0, &[6], &[1; 4096]));
        assert_ne!(a, point::chunk_digest(&[0; 32], 1, 0, &[5], &[1; 4096]));
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;
    use crate::devices::blk::state::BlkState;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-bkdisk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A point `n` of `parts` on a sample state with one disk of `sectors`.
    fn meta(n: u64, parent: [u8; 32], sectors: u64, parts: Vec<DiskPart>) -> PointMeta {
        let mut state = crate::snapshot::tests::sample();
        state.disks = vec![BlkState {
            transport: crate::devices::mmio::Transport::new(2, 0, 1, 256, vec![]).state(),
            position: Default::default(),
            file: placeholder_name(0),
            sectors,
            read_only: false,
        }];
        PointMeta {
            point: n,
            base: n == 0,
            parent,
            pages_file: format!("point-{n:06}-0000000000000000.pages"),
            pages: vec![],
            chunks: vec![],
            state,
            chain: [u8::try_from(n).unwrap(); 32],
            disks: parts,
        }
    }

    #[test]
    fn a_base_and_a_delta_restore_the_disk_and_damage_is_named() {
        let d = dir("rt");
        // 3 MiB + one sector: a short last block; data in MiB 1 and at the end.
        let len = (3 << 20) + 512;
        let img = d.join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(len).unwrap();
        let disk = DiskFile::open(&img, false).unwrap();
        disk.write_at(&[7u8; 8192], 1 << 20).unwrap();
        disk.write_at(&[9u8; 512], 3 << 20).unwrap();
        let chain = d.join("chain");
        std::fs::create_dir_all(&chain).unwrap();
        let base = write_parts(
            &chain,
            [0; 32],
            0,
            &[DiskSource {
                disk: &disk,
                blocks: None,
                captured: None,
            }],
        )
        .unwrap();
        // Sparse: the two data blocks of MiB 1 and the short last one.
        assert_eq!(base[0].blocks, [256, 257, 768]);
        // A delta: block 256 zeroed, block 3 written.
        disk.write_at(&[0u8; 4096], 1 << 20).unwrap();
        disk.write_at(&[5u8; 4096], 3 * 4096).unwrap();
        let parent = [1u8; 32];
        let delta = write_parts(
            &chain,
            parent,
            1,
            &[DiskSource {
                disk: &disk,
                blocks: Some(vec![3, 256]),
                captured: None,
            }],
        )
        .unwrap();
        let sectors = len / SECTOR_SIZE;
        let (m0, m1) = (
            meta(0, [0; 32], sectors, base),
            meta(1, parent, sectors, delta),
        );
        check_meta(&m0).unwrap();
        check_meta(&m1).unwrap();
        check_part(&chain, &m0, 0).unwrap();
        check_part(&chain, &m1, 0).unwrap();
        // Restored at each point: the disk as it was.
        let at0 = d.join("at0");
        restore_disk(&chain, &[&m0], 0, &at0, &d).unwrap();
        let got = std::fs::read(&at0).unwrap();
        assert_eq!(got.len() as u64, len);
        assert!(got[(1 << 20)..(1 << 20) + 8192].iter().all(|&b| b == 7));
        assert!(got[(3 << 20)..].iter().all(|&b| b == 9));
        assert!(got[3 * 4096..4 * 4096].iter().all(|&b| b == 0));
        let at1 = d.join("at1");
        restore_disk(&chain, &[&m0, &m1], 0, &at1, &d).unwrap();
        assert_eq!(std::fs::read(&at1).unwrap(), std::fs::read(&img).unwrap());
        // Folded into one base: the same disk.
        let folded = fold_disk(&chain, &[&m0, &m1], 0, 1).unwrap();
        assert_eq!(folded.blocks, [3, 257, 768]);
        // A flipped byte is named by its chunk.
        let f = OpenOptions::new()
            .write(true)
            .open(chain.join(&m1.disks[0].file))
            .unwrap();
        f.write_all_at(&[0xAA], 10).unwrap();
        let e = check_part(&chain, &m1, 0).unwrap_err();
        assert!(e.starts_with("disk 0, chunk 0: digest mismatch"), "{e}");
        // A wrong block list is refused before any file is read.
        let mut bad = m1.clone();
        bad.disks[0].blocks = vec![256, 3];
        assert!(check_meta(&bad).is_err());
        bad.disks[0].blocks = vec![3, 769];
        assert!(check_meta(&bad)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
