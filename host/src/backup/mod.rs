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
//!
//! How a point is taken is its [`BackupMode`]: `stop` writes it with the
//! guest stopped; `precopy` (the default) copies what changed while the
//! guest runs, in rounds on a backup thread (`live`, `staging`), decided
//! by the pure planner in `precopy`, and stops the guest only for the last
//! small set and the vCPU state, then writes and fsyncs on that thread.

pub(crate) mod chain;
pub(crate) mod disk;
pub(crate) mod live;
mod pages;
pub(crate) mod point;
pub mod precopy;
pub(crate) mod staging;

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
pub(crate) use disk::{CapturedBlocks, DiskSource, MAX_CAPTURED_BYTES};
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

/// How backup points are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackupMode {
    /// The guest is stopped for the whole point: copy, write, fsyncs.
    Stop,
    /// Pre-copy: changed pages are copied while the guest runs; it stops
    /// only for the last small set and its vCPU state; the write and the
    /// fsyncs happen on the backup thread while it runs on.
    #[default]
    Precopy,
}

impl std::str::FromStr for BackupMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(Self::Stop),
            "precopy" => Ok(Self::Precopy),
            _ => Err(format!("backup mode `{s}`: expected `stop` or `precopy`")),
        }
    }
}

impl std::fmt::Display for BackupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stop => "stop",
            Self::Precopy => "precopy",
        })
    }
}

/// Where and how often to take backup points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// The chain's directory.
    pub dir: PathBuf,
    /// Time between points.
    pub every: Duration,
    /// How points are taken.
    pub mode: BackupMode,
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
    /// Wall time to write it, fsyncs included (with pre-copy, from its
    /// first round to its commit).
    pub elapsed: Duration,
    /// How long the guest was stopped for it: from the vCPU's stop to its
    /// resumption, as the host saw it.
    pub pause: Duration,
    /// Time to write its files from the copied pages, fsyncs included:
    /// what a stopped point of the same pages holds the guest for, on top
    /// of the copies.
    pub write: Duration,
    /// Pre-copy rounds before the stop (0 in stop mode).
    pub rounds: u32,
    /// Whether the guest ran on while it was written (pre-copy, disks'
    /// blocks read at the stop); false for a stopped point.
    pub live: bool,
    /// The guest's TSC when its vCPU stopped for the point (lets a guest
    /// match its own view of the pause to this point).
    pub stopped_tsc: u64,
}

/// Where a point's pages are read from when it is written.
pub(crate) trait PageSource {
    /// Reads page `page` into `buf` (one page long).
    fn read_page(&self, page: u64, buf: &mut [u8]) -> Result<(), BackupError>;
}

impl PageSource for GuestRam {
    fn read_page(&self, page: u64, buf: &mut [u8]) -> Result<(), BackupError> {
        self.mem
            .read_slice(buf, GuestAddress(page * PAGE_SIZE))
            .map_err(|e| SnapshotError::Invalid(format!("cannot read guest page {page}: {e}")))?;
        Ok(())
    }
}

impl PageSource for staging::Staging {
    fn read_page(&self, page: u64, buf: &mut [u8]) -> Result<(), BackupError> {
        let bytes = self
            .page(page)
            .ok_or_else(|| SnapshotError::Invalid(format!("page {page} was not staged")))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Adds the pages of guest ranges `(address, length)` to `set`.
pub(crate) fn note_pages(set: &mut BTreeSet<u64>, ranges: &[(u64, u64)]) {
    for &(addr, len) in ranges {
        let end = addr.saturating_add(len.max(1));
        let mut page = addr / PAGE_SIZE;
        while page * PAGE_SIZE < end {
            set.insert(page);
            page += 1;
        }
    }
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
        note_pages(&mut self.host_written, ranges);
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
                    captured: None,
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
        ram: &dyn PageSource,
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
                ram.read_page(page, &mut buf)?;
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
        let elapsed = t.elapsed();
        Ok(BackupRecord {
            point,
            pages: count,
            dirty_pages,
            blocks,
            elapsed,
            pause: elapsed,
            write: elapsed,
            rounds: 0,
            live: false,
            stopped_tsc: 0,
        })
    }
}
