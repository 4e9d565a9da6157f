//! Snapshots: a VM frozen into a directory, and brought back from it.
//!
//! A snapshot directory holds a state file (`state`: header with magic,
//! format version and architecture, a `postcard` body with every vCPU
//! register set, MSRs, XSAVE, the VM's configuration, clock, console totals,
//! boot trace and network device, and a BLAKE3 digest of the body; see [`SnapshotState`]) and a
//! memory file of raw pages (`memory-<16 hex digits>`, sparse: zero pages
//! are holes), which restore maps `MAP_PRIVATE` without reading it.
//!
//! Writing is crash-safe at every step: the memory file is written under a
//! temporary name, fsynced and renamed to a name no earlier snapshot used;
//! then the state file, which names it, is written the same way; only then
//! are memory files no state file names removed. Killed at any moment, the
//! directory holds either the old snapshot or the new one, whole.
//!
//! Restore checks the whole state file (digest, version, architecture,
//! every size) and the memory file's size, but does not read guest memory:
//! its time does not grow with memory size. `Snapshot::verify_memory`
//! (`tandem snapshot verify`, `tandem restore --verify`) also checks the
//! memory file against the digest the state file records.

mod capture;
pub mod chunks;
pub(crate) mod files;
pub(crate) mod format;
pub(crate) mod vcpu;
pub mod working_set;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use chunks::{ChunkDigests, CHUNK_SIZE};
pub use format::{
    ConsoleState, LiveState, MachineState, MemoryRef, SnapshotState, TraceState, FORMAT_VERSION,
};
pub use vcpu::{MsrValue, VcpuState};
pub use working_set::{WorkingSet, WorkingSetError, WORKING_SET_FILE};

use crate::memory::{GuestRam, MemoryError};
use files::io;

/// Name of the state file in a snapshot directory.
pub(crate) const STATE_FILE: &str = "state";

/// Why a snapshot could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Fewer bytes than the format says.
    #[error("{what} is truncated: {found} bytes, expected {expected}")]
    Truncated {
        /// What is short.
        what: &'static str,
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// Not a Tandem snapshot state file.
    #[error("not a Tandem snapshot state file (bad magic)")]
    BadMagic,
    /// Another format version.
    #[error("snapshot format version {found}; this tandem reads version {expected}")]
    VersionMismatch {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// Another architecture.
    #[error("snapshot is for architecture {found} (ELF machine number); this tandem restores x86_64 (62)")]
    WrongArchitecture {
        /// Architecture in the file.
        found: u32,
    },
    /// The guest in the snapshot speaks another ABI version.
    #[error(
        "snapshot holds a guest of ABI version {found}; this tandem speaks version {expected}"
    )]
    AbiMismatch {
        /// Version in the snapshot.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// Content does not match its digest: bit flips or editing.
    #[error("{what} does not match its digest (corrupted or edited)")]
    BadDigest {
        /// What failed.
        what: &'static str,
    },
    /// A register set of the wrong size.
    #[error("{what} is {found} bytes, expected {expected}")]
    RegisterSize {
        /// Which register set.
        what: &'static str,
        /// Size found.
        found: usize,
        /// Size expected.
        expected: usize,
    },
    /// A value no VM may have.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// The memory file is missing.
    #[error("memory file {} is missing", .0.display())]
    MissingMemory(PathBuf),
    /// The memory file is not the size the state file says.
    #[error("memory file {} is {found} bytes, expected {expected}", path.display())]
    MemorySize {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// Size expected.
        expected: u64,
    },
    /// This host cannot run the snapshot's guest as it was.
    #[error("snapshot was taken on another kind of host: {0}")]
    HostMismatch(String),
    /// KVM refused to read or set vCPU state.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// An MSR could not be read or written.
    #[error("KVM refused to {op} MSR {index:#x}")]
    Msr {
        /// "read" or "write".
        op: &'static str,
        /// The MSR.
        index: u32,
    },
    /// Guest memory could not be mapped or inspected.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The network device's state is not one the device could have been in.
    #[error("invalid snapshot: network device: {0}")]
    Net(#[from] crate::devices::NetStateError),
    /// A disk's state is not one the device could have been in.
    #[error("invalid snapshot: disk: {0}")]
    Disk(#[from] crate::devices::blk::BlkStateError),
    /// A disk's copy is missing or not the size the state says.
    #[error("snapshot disk {path}: {why}")]
    DiskFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A snapshot directory whose state file has been read and checked.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The directory.
    pub dir: PathBuf,
    /// The checked state.
    pub state: SnapshotState,
}

/// What writing a snapshot cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    /// Pages that may have held data and were read.
    pub pages_scanned: u64,
    /// Non-zero pages written to the memory file.
    pub pages_written: u64,
    /// Wall time of the whole write, fsyncs included.
    pub elapsed: Duration,
}

impl Snapshot {
    /// Reads and checks `dir/state`, and checks that the memory file it
    /// names exists with the right size. Reads no guest memory.
    pub fn load(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let file = File::open(&path).map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        let cap = format::HEADER_SIZE as u64 + format::MAX_BODY;
        if len > cap {
            return Err(SnapshotError::Invalid(format!(
                "state file is {len} bytes, more than any state ({cap})"
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, cap), &mut bytes)
            .map_err(io(&path))?;
        let state = SnapshotState::decode(&bytes)?;
        let snapshot = Self {
            dir: dir.to_path_buf(),
            state,
        };
        snapshot.open_memory()?;
        for d in &snapshot.state.disks {
            let path = dir.join(&d.file);
            let why = match std::fs::metadata(&path) {
                Ok(m) if m.len() == d.sectors * crate::devices::blk::request::SECTOR_SIZE => None,
                Ok(m) => Some(format!(
                    "is {} bytes, the snapshot's disk {}",
                    m.len(),
                    d.sectors * crate::devices::blk::request::SECTOR_SIZE
                )),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                return Err(SnapshotError::DiskFile { path, why });
            }
        }
        log::debug!(
            "snapshot {}: {} MiB of memory, {} data pages, generation {:#x}",
            dir.display(),
            snapshot.state.machine.mem_size >> 20,
            snapshot.state.memory.data_pages,
            snapshot.state.live.generation
        );
        Ok(snapshot)
    }

    /// Path of the memory file.
    pub fn memory_path(&self) -> PathBuf {
        self.dir.join(&self.state.memory.file)
    }

    /// Opens the memory file, read-only, after checking its size.
    pub fn open_memory(&self) -> Result<File, SnapshotError> {
        let path = self.memory_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::MissingMemory(path))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let found = file.metadata().map_err(io(&path))?.len();
        if found != self.state.memory.size {
            return Err(SnapshotError::MemorySize {
                path,
                found,
                expected: self.state.memory.size,
            });
        }
        Ok(file)
    }

    /// The working set recorded for this snapshot (`working-set` in its
    /// directory): `Ok(None)` if there is none, an error naming what is
    /// wrong with a damaged, hostile or stale one.
    pub fn working_set(&self) -> Result<Option<WorkingSet>, String> {
        working_set::read(&self.dir, self.state.memory.size, &self.state.memory.digest)
    }

    /// Writes `pages` as this snapshot's working set, atomically (at most
    /// [`working_set::MAX_WORKING_SET_PAGES`] are kept).
    pub fn write_working_set(&self, pages: &[u32]) -> Result<(), SnapshotError> {
        let bytes = WorkingSet::encode(pages, self.state.memory.size, &self.state.memory.digest);
        files::write_atomic(&self.dir, WORKING_SET_FILE, &bytes)
    }

    /// Reads the whole memory file and checks it against the recorded digest.
    pub fn verify_memory(&self) -> Result<(), SnapshotError> {
        let file = self.open_memory()?;
        let path = self.memory_path();
        let digest = files::digest_file(&file, self.state.memory.size, &path)?;
        if digest.pages() != self.state.memory.data_pages
            || digest.finish() != self.state.memory.digest
        {
            return Err(SnapshotError::BadDigest {
                what: "memory file",
            });
        }
        Ok(())
    }
}

/// Writes a snapshot of `ram` with vCPU and VM state `state` into `dir`
/// (created if needed), replacing any snapshot there atomically.
/// `state.memory` is filled in here.
pub(crate) fn write(
    dir: &Path,
    state: &mut SnapshotState,
    ram: &GuestRam,
) -> Result<WriteStats, SnapshotError> {
    write_with(dir, state, ram.size(), |out, path| {
        let candidates = files::candidate_pages(ram)?;
        files::write_memory(ram, &candidates, out, path)
    })
}

/// Writes a snapshot whose memory file (`size` bytes, all holes when
/// `fill` is called) `fill` writes: every non-zero page at its own offset,
/// returning the digest over them.
pub(crate) fn write_with(
    dir: &Path,
    state: &mut SnapshotState,
    size: u64,
    fill: impl FnOnce(
        &File,
        &Path,
    ) -> Result<(files::PageDigest, files::MemoryWriteStats), SnapshotError>,
) -> Result<WriteStats, SnapshotError> {
    let t = Instant::now();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("memory-{:016x}", files::nonce());
    let tmp = files::temp_path(dir, &name);
    let dest = dir.join(&name);
    let result = (|| {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        out.set_len(size).map_err(io(&tmp))?;
        let (digest, stats) = fill(&out, &tmp)?;
        out.sync_all().map_err(io(&tmp))?;
        files::commit(&tmp, &dest, dir)?;
        state.memory = MemoryRef {
            file: name.clone(),
            size,
            data_pages: digest.pages(),
            digest: digest.finish(),
        };
        state.chunks = digest.chunks();
        files::write_atomic(dir, STATE_FILE, &state.encode()?)?;
        Ok(stats)
    })();
    let stats = match result {
        Ok(stats) => stats,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    remove_stale(dir, &name, &state.disks);
    Ok(WriteStats {
        pages_scanned: stats.pages_scanned,
        pages_written: stats.pages_written,
        elapsed: t.elapsed(),
    })
}

/// Removes memory files other than `keep`, the old working set and leftover temporary files
/// (only after the state file naming `keep` is durable).
fn remove_stale(dir: &Path, keep: &str, disks: &[crate::devices::blk::BlkState]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // A working set lists the pages of the memory file it was recorded
        // against; the new snapshot's guest may use others.
        let stale_memory =
            (format::valid_memory_name(name) && name != keep) || name == WORKING_SET_FILE;
        let stale_disk = crate::devices::blk::state::valid_disk_name(name)
            && !disks.iter().any(|d| d.file == name);
        let stale_memory = stale_memory || stale_disk;
        let temp = name.starts_with('.') && name.contains(".tmp-");
        if stale_memory || (temp && !temp_in_use(name)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether a temporary file belongs to a live process other than this one
/// (its name carries the writer's pid).
fn temp_in_use(name: &str) -> bool {
    let Some(pid) = name
        .rsplit_once(".tmp-")
        .and_then(|(_, rest)| rest.split('-').next())
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return false;
    };
    if pid == i32::try_from(std::process::id()).unwrap_or(0) {
        return false;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
pub(crate) mod tests;
