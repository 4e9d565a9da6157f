//! Incremental backups of a running VM: a chain of points in a directory.
//!
//! The first point is a base (every non-zero page); each later point holds
//! only the pages changed since its predecessor: those KVM's dirty-page log
//! reports (the memory slot has `KVM_MEM_LOG_DIRTY_PAGES`), plus those the
//! VMM itself wrote (hypercall replies, the console header, the live area),
//! which the log cannot see. Each point also holds the whole vCPU and VM
//! state, so any point restores. Digests chain every chunk to its parent
//! (see [`PointMeta`]); `verify` names a damaged or missing piece, and the
//! points before it still restore.
//!
//! Crash safety: a point's pages file is written under a temporary name,
//! fsynced and renamed, then its metadata file the same way; a point exists
//! once its metadata file does. Killed at any moment, the chain holds every
//! earlier point intact.

pub(crate) mod chain;
pub(crate) mod disk;
mod pages;
pub(crate) mod point;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use tandem_abi::layout::PAGE_SIZE;
use vm_memory::{Bytes, GuestAddress};

pub use chain::{Chain, PointReport};
pub use disk::DiskPart;
pub(crate) use disk::DiskSource;
pub use point::PointMeta;
use point::CHUNK_PAGES;

use crate::memory::GuestRam;
use crate::snapshot::{files, SnapshotError, SnapshotState};

// PAGE_SIZE is 4 KiB, which fits any usize.
#[allow(clippy::cast_possible_truncation)]
const PAGE: usize = PAGE_SIZE as usize;

/// Why a backup could not be written, verified or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written, or a format check failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// KVM would not give the dirty log.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The directory already holds a chain.
    #[error("{} already holds a backup chain (points {first}..={last}); use another directory", dir.display())]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
        /// First point.
        first: u64,
        /// Last point.
        last: u64,
    },
    /// The directory holds no point.
    #[error("{} holds no backup point", .0.display())]
    Empty(PathBuf),
    /// No such point in the chain.
    #[error("there is no point {0} in the chain")]
    NoSuchPoint(u64),
    /// A point cannot be restored because it, or one it builds on, is damaged.
    #[error("point {point} cannot be restored: point {damaged} is damaged: {why}")]
    Damaged {
        /// The point asked for.
        point: u64,
        /// The damaged point.
        damaged: u64,
        /// What is wrong.
        why: String,
    },
}

/// Where and how often to take backup points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// The chain's directory.
    pub dir: PathBuf,
    /// Time between points.
    pub every: Duration,
}

/// One backup point written during a run.
#[derive(Debug, Clone)]
pub struct BackupRecord {
    /// Its number.
    pub point: u64,
    /// Pages it holds.
    pub pages: u64,
    /// Pages the dirty log reported (0 for a base).
    pub dirty_pages: u64,
    /// Disk blocks it holds, over all disks.
    pub blocks: u64,
    /// Wall time to write it, fsyncs included.
    pub elapsed: Duration,
}

/// Writes the points of one chain.
#[derive(Debug)]
pub(crate) struct BackupWriter {
    dir: PathBuf,
    next: u64,
    parent: [u8; 32],
    host_written: BTreeSet<u64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| {
        BackupError::Snapshot(SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl BackupWriter {
    /// Starts a chain in `dir` (created if needed; refused if it holds one).
    pub fn create(dir: &Path) -> Result<Self, BackupError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let existing = chain::point_numbers(dir)?;
        if let (Some(first), Some(last)) = (existing.first(), existing.last()) {
            return Err(BackupError::NotEmpty {
                dir: dir.to_path_buf(),
                first: *first,
                last: *last,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            next: 0,
            parent: [0; 32],
            host_written: BTreeSet::new(),
        })
    }

    /// Whether the next point is the base.
    pub fn needs_base(&self) -> bool {
        self.next == 0
    }

    /// Notes guest ranges the VMM wrote since the last point.
    pub fn note_host_writes(&mut self, ranges: &[(u64, u64)]) {
        for &(addr, len) in ranges {
            let end = addr.saturating_add(len.max(1));
            let mut page = addr / PAGE_SIZE;
            while page * PAGE_SIZE < end {
                self.host_written.insert(page);
                page += 1;
            }
        }
    }

    /// Takes the host-written pages noted since the last point.
    pub fn take_host_written(&mut self) -> BTreeSet<u64> {
        std::mem::take(&mut self.host_written)
    }

    /// Writes the next point of a stopped VM with `state`: the base (every
    /// page that may hold data) first, then the pages changed since the
    /// previous point. Gets and clears `vm`'s dirty log, so the next point
    /// starts from here; `disks` are the blocks each disk's bitmap gave up
    /// at the same stop (ignored for a base, which holds whole disks).
    pub fn write_next(
        &mut self,
        vm: &VmFd,
        ram: &GuestRam,
        state: &SnapshotState,
        disks: &[DiskSource<'_>],
    ) -> Result<BackupRecord, BackupError> {
        let size = usize::try_from(ram.size())
            .map_err(|_| SnapshotError::Invalid("memory size".into()))?;
        let bitmap = vm
            .get_dirty_log(0, size)
            .map_err(|source| BackupError::Kvm {
                what: "KVM_GET_DIRTY_LOG",
                source,
            })?;
        let candidates = files::candidate_pages(ram)?;
        let host_written = self.take_host_written();
        let (pages, dirty) = if self.needs_base() {
            (pages::base_pages(&candidates), 0)
        } else {
            pages::delta_pages(&bitmap, host_written, ram.size() / PAGE_SIZE)
        };
        let base_disks: Vec<DiskSource<'_>>;
        let disks = if self.needs_base() {
            base_disks = disks
                .iter()
                .map(|d| DiskSource {
                    disk: d.disk,
                    blocks: None,
                })
                .collect();
            &base_disks
        } else {
            disks
        };
        self.write_point(ram, state, &pages, dirty, disks)
    }

    /// Writes the next point: `pages` (ascending, deduplicated) read from
    /// `ram` now, with `state`. Zero pages are left out of a base (restore
    /// starts from zeros) but kept in a delta (the page may have been
    /// non-zero before). Each disk's blocks go into a blocks file of
    /// their own ([`disk::write_parts`]), durable before the metadata.
    pub(crate) fn write_point(
        &mut self,
        ram: &GuestRam,
        state: &SnapshotState,
        pages: &[u64],
        dirty_pages: u64,
        disks: &[DiskSource<'_>],
    ) -> Result<BackupRecord, BackupError> {
        let t = Instant::now();
        let point = self.next;
        let base = point == 0;
        let pages_name = format!("point-{point:06}-{:016x}.pages", files::nonce());
        let tmp = files::temp_path(&self.dir, &pages_name);
        let result = (|| {
            let mut out = std::io::BufWriter::with_capacity(
                1 << 20,
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(io(&tmp))?,
            );
            let mut kept = Vec::with_capacity(pages.len());
            let mut chunks = Vec::new();
            let mut chunk_pages = Vec::with_capacity(CHUNK_PAGES);
            let mut chunk_bytes = Vec::with_capacity(CHUNK_PAGES * PAGE);
            let mut buf = vec![0u8; PAGE];
            for &page in pages {
                ram.mem
                    .read_slice(&mut buf, GuestAddress(page * PAGE_SIZE))
                    .map_err(|e| {
                        SnapshotError::Invalid(format!("cannot read guest page {page}: {e}"))
                    })?;
                if base && files::is_zero(&buf) {
                    continue;
                }
                out.write_all(&buf).map_err(io(&tmp))?;
                kept.push(page);
                chunk_pages.push(page);
                chunk_bytes.extend_from_slice(&buf);
                if chunk_pages.len() == CHUNK_PAGES {
                    chunks.push(point::chunk_digest(
                        &self.parent,
                        point,
                        chunks.len() as u64,
                        &chunk_pages,
                        &chunk_bytes,
                    ));
                    chunk_pages.clear();
                    chunk_bytes.clear();
                }
            }
            if !chunk_pages.is_empty() {
                chunks.push(point::chunk_digest(
                    &self.parent,
                    point,
                    chunks.len() as u64,
                    &chunk_pages,
                    &chunk_bytes,
                ));
            }
            let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
            file.sync_all().map_err(io(&tmp))?;
            files::commit(&tmp, &self.dir.join(&pages_name), &self.dir)?;
            let parts = disk::write_parts(&self.dir, self.parent, point, disks)?;
            let blocks = parts.iter().map(|p| p.blocks.len() as u64).sum();
            let committed = (|| {
                let chain = point::chain_digest(&self.parent, point, state, &chunks, &parts)?;
                let meta = PointMeta {
                    point,
                    base,
                    parent: self.parent,
                    pages_file: pages_name.clone(),
                    pages: kept,
                    chunks,
                    state: state.clone(),
                    chain,
                    disks: parts.clone(),
                };
                files::write_atomic(&self.dir, &point::meta_name(point), &meta.encode()?)?;
                Ok::<_, BackupError>((meta.pages.len() as u64, chain))
            })();
            if committed.is_err() {
                disk::remove_parts(&self.dir, &parts);
            }
            committed.map(|(count, chain)| (count, chain, blocks))
        })();
        let (count, chain, blocks) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.parent = chain;
        self.next += 1;
        Ok(BackupRecord {
            point,
            pages: count,
            dirty_pages,
            blocks,
            elapsed: t.elapsed(),
        })
    }
}
