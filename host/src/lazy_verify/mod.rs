//! Verified lazy restore (`tandem restore --verify lazy`): each 64 KiB
//! chunk of a snapshot's memory file is checked against its digest
//! ([`ChunkDigests`]) the first time the guest touches it, so a corrupted
//! memory file is refused before the guest reads a wrong byte, and the
//! restore does not read (or wait for) memory the guest never uses.
//!
//! Guest memory is private anonymous memory. The 2 MiB regions that hold
//! data are registered with a userfaultfd for missing-page faults; a
//! handler thread serves each fault (KVM's, under PVM's shadow MMU, or the
//! VMM's own) by reading the chunk from the memory file, checking it and
//! copying it in with `UFFDIO_COPY`; a chunk that holds no data gets zeros
//! without a read. Regions with no data at all are not registered: they
//! are plain memory, as a fresh boot's. The working set the restore
//! prefetches goes through the same check before the guest runs.
//!
//! A chunk that does not match is never copied in. The handler records
//! which chunk it was, kicks the vCPU thread out of `KVM_RUN` (the fault
//! in KVM is interrupted by the signal, or the signal is pending when it
//! returns, so the guest runs no further instruction), and the run loop
//! ends the VM with [`ExitStatus::CorruptMemory`](crate::ExitStatus) (exit
//! code `CORRUPT_MEMORY`). Only then, or when no vCPU takes the kick, are
//! further faults answered with zeros, so that no thread of the VMM waits
//! forever on memory that will never be right. A corrupted chunk that the
//! guest never touches is never read and stops nothing.

mod uffd;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_abi::layout::LARGE_PAGE_SIZE;

use crate::snapshot::chunks::{chunk_matches, ChunkDigests, CHUNK_SIZE};
pub use uffd::UffdError;
use uffd::Userfaultfd;
pub(crate) use uffd::HANDLER_IOCTLS;

// CHUNK_SIZE is 64 KiB, which fits any usize.
#[allow(clippy::cast_possible_truncation)]
const CHUNK: usize = CHUNK_SIZE as usize;
/// How long the handler kicks a vCPU thread that has not seen a failure
/// before it answers the fault with zeros anyway (the faulting thread may
/// be the vCPU thread itself, in the VMM's own code).
const KICK_FOR: Duration = Duration::from_millis(200);
const KICK_INTERVAL: Duration = Duration::from_millis(2);

/// Why lazy verification could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LazyVerifyError {
    /// The kernel refused a userfaultfd call.
    #[error("userfaultfd is not available for lazy verification ({0}); restore with --verify (full) instead")]
    Unavailable(#[source] UffdError),
    /// The memory file could not be read.
    #[error("cannot read the memory file for lazy verification: {0}")]
    Io(#[source] std::io::Error),
    /// The handler thread or its wake-up descriptor could not be made.
    #[error("cannot start the lazy verification thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Chunk `chunk` as guest-physical bytes, for messages.
fn chunk_name(chunk: u64, file: &std::path::Path) -> String {
    let start = chunk * CHUNK_SIZE;
    format!(
        "chunk {chunk} (guest-physical {start:#x}..{:#x}) of {}",
        start + CHUNK_SIZE,
        file.display()
    )
}

/// The 2 MiB regions holding at least one chunk with data, as merged byte
/// ranges `(start, len)` inside memory of `mem_size` bytes: what is
/// registered. Pure.
pub(crate) fn data_regions(digests: &ChunkDigests, mem_size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(c, _) in &digests.digests {
        let start = u64::from(c) * CHUNK_SIZE / LARGE_PAGE_SIZE * LARGE_PAGE_SIZE;
        if start >= mem_size {
            continue;
        }
        let end = (start + LARGE_PAGE_SIZE).min(mem_size);
        match out.last_mut() {
            Some((s, l)) if *s + *l >= start => *l = (*l).max(end - *s),
            _ => out.push((start, end - start)),
        }
    }
    out
}

/// An offset inside guest memory (whose size fits `usize`) as `usize`.
fn to_usize(x: u64) -> Result<usize, LazyVerifyError> {
    usize::try_from(x).map_err(|_| LazyVerifyError::Io(std::io::Error::other("offset")))
}

/// What the handler and the vCPU thread share.
struct Shared {
    /// The first chunk that did not match, named.
    failure: Mutex<Option<String>>,
    /// Whether `failure` is set (read on every VM exit).
    failed: AtomicBool,
    /// The run loop has seen the failure and will not enter the guest again.
    seen: AtomicBool,
    /// The vCPU thread while a run is attached.
    vcpu: Mutex<Option<crate::control::VcpuThread>>,
    /// Chunks served after a fault.
    served: AtomicU64,
}

/// The handler of one VM's guest memory; stops its thread on drop.
pub(crate) struct LazyVerifier {
    shared: Arc<Shared>,
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LazyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyVerifier")
            .field("failed", &self.shared.failed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// What the handler thread owns.
struct Handler {
    uffd: Userfaultfd,
    file: File,
    path: PathBuf,
    digests: Arc<ChunkDigests>,
    base: u64,
    len: u64,
    shared: Arc<Shared>,
}

/// What checking one chunk came to.
#[derive(Debug, PartialEq, Eq)]
enum Checked {
    /// The chunk holds no data: zeros, nothing read.
    Zeros,
    /// The chunk's bytes matched (they are in the buffer).
    Data,
    /// They did not.
    Corrupt,
}

impl Handler {
    /// Reads chunk `chunk` into `buf` and checks it.
    fn check(&self, chunk: u64, buf: &mut [u8]) -> Result<Checked, std::io::Error> {
        if self.digests.get(chunk).is_none() {
            return Ok(Checked::Zeros);
        }
        self.file.read_exact_at(buf, chunk * CHUNK_SIZE)?;
        Ok(if chunk_matches(&self.digests, chunk, buf) {
            Checked::Data
        } else {
            Checked::Corrupt
        })
    }

    /// Serves a fault in chunk `chunk`.
    fn serve(&self, chunk: u64, buf: &mut [u8], zeros: &[u8]) -> Result<(), UffdError> {
        let dst = self.base + chunk * CHUNK_SIZE;
        if !self.shared.failed.load(Ordering::SeqCst) {
            let failure = match self.check(chunk, buf) {
                Ok(Checked::Data) => {
                    self.uffd.copy(dst, buf)?;
                    None
                }
                Ok(Checked::Zeros) => {
                    self.uffd.copy(dst, zeros)?;
                    None
                }
                Ok(Checked::Corrupt) => Some(format!(
                    "{} does not match its digest (the memory file is corrupted)",
                    chunk_name(chunk, &self.path)
                )),
                Err(e) => Some(format!(
                    "cannot read {}: {e}",
                    chunk_name(chunk, &self.path)
                )),
            };
            if let Some(why) = failure {
                log::error!("{why}");
                self.fail(why);
            }
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            // The VM is over: whoever waits gets zeros, never the file's bytes.
            self.uffd.copy(dst, zeros)?;
        }
        self.shared.served.fetch_add(1, Ordering::Relaxed);
        self.uffd.wake(dst, CHUNK_SIZE)
    }

    /// Records the failure and gets the vCPU thread out of the guest
    /// before the faulting access is let go.
    fn fail(&self, why: String) {
        {
            let mut f = self
                .shared
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(why);
            }
        }
        self.shared.failed.store(true, Ordering::SeqCst);
        // The kick's handler is in place: `attach` registered it before
        // any vCPU thread could be kicked.
        let tries = KICK_FOR.as_millis() / KICK_INTERVAL.as_millis();
        for _ in 0..tries {
            if self.shared.seen.load(Ordering::SeqCst) {
                return;
            }
            let guard = self.shared.vcpu.lock().unwrap_or_else(|p| p.into_inner());
            let Some(thread) = *guard else { return };
            // SAFETY: `thread` is attached, and the run detaches it (under
            // this lock) before the thread can end.
            unsafe { thread.kick() };
            drop(guard);
            std::thread::sleep(KICK_INTERVAL);
        }
    }

    fn run(self, stop: i32) {
        // This thread starts before the vCPU thread locks itself down:
        // it takes a filter of its own (unless seccomp is off).
        if let Err(e) =
            crate::seccomp::install_unless_disabled(crate::seccomp::ThreadKind::Verifier)
        {
            log::warn!("lazy verification thread runs without its seccomp filter: {e}");
        }
        let zeros = vec![0u8; CHUNK];
        let mut buf = vec![0u8; CHUNK];
        let mut faults = Vec::new();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: polls two descriptors this thread's owner keeps open
            // until it has joined the thread.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!(
                    "lazy verification: poll: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            faults.clear();
            if let Err(e) = self.uffd.faults(&mut faults) {
                log::error!("lazy verification: {e}");
                return;
            }
            for &addr in &faults {
                let Some(off) = addr.checked_sub(self.base).filter(|&o| o < self.len) else {
                    continue;
                };
                if let Err(e) = self.serve(off / CHUNK_SIZE, &mut buf, &zeros) {
                    log::error!("lazy verification: {e}");
                    self.fail(format!("cannot serve guest memory at {off:#x}: {e}"));
                }
            }
        }
    }
}

/// Guest memory `base..base+len` as [`LazyVerifier::start`] sets it up.
pub(crate) struct Setup<'a> {
    /// Host address of guest address 0 (2 MiB aligned), a private
    /// anonymous mapping nothing has touched yet.
    pub base: *mut libc::c_void,
    /// Its length.
    pub len: u64,
    /// The memory file.
    pub file: File,
    /// Its path, for messages.
    pub path: PathBuf,
    /// Its chunk digests.
    pub digests: Arc<ChunkDigests>,
    /// Whole 2 MiB regions (page ranges) to copy in now, into huge pages.
    pub copy: &'a [(u64, u64)],
    /// Pages to bring in now, in this order.
    pub populate: &'a [(u64, u64)],
}

/// What the restore's prefetch did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Prefetched {
    /// Chunks checked and brought in.
    pub chunks: u64,
    /// Chunks that did not match, left to fault (and fail) on first touch.
    pub corrupt: u64,
}

impl LazyVerifier {
    /// Brings in the prefetched chunks (each checked first), registers the
    /// regions with data and starts the handler thread.
    pub(crate) fn start(s: Setup<'_>) -> Result<(Self, Prefetched), LazyVerifyError> {
        let page = tandem_abi::layout::PAGE_SIZE;
        let base = s.base as u64;
        let mut done = Prefetched::default();
        let mut present: Vec<u64> = Vec::new();
        // Offsets of bad chunks dropped from the dense regions: dropped
        // again once registered, since khugepaged may refill the hole with
        // zeros (a huge page collapsed) before the region is registered.
        let mut dropped: Vec<usize> = Vec::new();
        // Dense regions, copied into huge pages before registering: the
        // guest maps them 2 MiB at a time. A bad chunk among them is
        // dropped again, so its first touch faults and fails.
        for &(first, end) in s.copy {
            let (start, n) = (first * page, (end - first) * page);
            if start.checked_add(n).is_none_or(|e| e > s.len) {
                continue;
            }
            let (start_usize, n_usize) = (to_usize(start)?, to_usize(n)?);
            // SAFETY: advice on a range of the caller's fresh mapping.
            unsafe { libc::madvise(s.base.byte_add(start_usize), n_usize, libc::MADV_HUGEPAGE) };
            // SAFETY: the range lies inside the caller's mapping, which no
            // Rust reference points into and nothing else uses yet; the
            // slice lives only for the read and the checks below.
            let region = unsafe {
                std::slice::from_raw_parts_mut(s.base.byte_add(start_usize).cast::<u8>(), n_usize)
            };
            s.file
                .read_exact_at(region, start)
                .map_err(LazyVerifyError::Io)?;
            for (i, bytes) in region.chunks(CHUNK).enumerate() {
                let chunk = start / CHUNK_SIZE + i as u64;
                if chunk_matches(&s.digests, chunk, bytes) {
                    done.chunks += 1;
                    present.push(chunk);
                } else {
                    done.corrupt += 1;
                    // SAFETY: drops one chunk of the range just filled.
                    unsafe {
                        libc::madvise(
                            s.base.byte_add(start_usize + i * CHUNK),
                            CHUNK,
                            libc::MADV_DONTNEED,
                        )
                    };
                    dropped.push(start_usize + i * CHUNK);
                }
            }
        }
        let uffd = Userfaultfd::open().map_err(LazyVerifyError::Unavailable)?;
        let regions = data_regions(&s.digests, s.len);
        for &(start, len) in &regions {
            uffd.register(base + start, len)
                .map_err(LazyVerifyError::Unavailable)?;
        }
        for &at in &dropped {
            // SAFETY: drops one chunk of the caller's mapping again, now
            // registered: its next touch is a missing fault, checked.
            unsafe { libc::madvise(s.base.byte_add(at), CHUNK, libc::MADV_DONTNEED) };
        }
        let registered = |chunk: u64| {
            let at = chunk * CHUNK_SIZE;
            regions.iter().any(|&(s, l)| at >= s && at < s + l)
        };
        // The rest of the prefetch, chunk by chunk, in order.
        present.sort_unstable();
        let mut buf = vec![0u8; CHUNK];
        let zeros = vec![0u8; CHUNK];
        for &(first, end) in s.populate {
            let mut p = first;
            while p < end {
                let chunk = p * page / CHUNK_SIZE;
                p = (chunk + 1) * CHUNK_SIZE / page;
                if present.binary_search(&chunk).is_ok() || chunk * CHUNK_SIZE >= s.len {
                    continue;
                }
                let at = chunk * CHUNK_SIZE;
                if !registered(chunk) {
                    // Plain memory (no data in its region): make it present.
                    // SAFETY: advice on one chunk of the caller's mapping.
                    unsafe {
                        libc::madvise(
                            s.base.byte_add(to_usize(at)?),
                            CHUNK,
                            libc::MADV_POPULATE_WRITE,
                        )
                    };
                } else {
                    let src = match s.digests.get(chunk) {
                        None => &zeros[..],
                        Some(_) => {
                            s.file
                                .read_exact_at(&mut buf, at)
                                .map_err(LazyVerifyError::Io)?;
                            if !chunk_matches(&s.digests, chunk, &buf) {
                                done.corrupt += 1;
                                present.push(chunk);
                                present.sort_unstable();
                                continue;
                            }
                            &buf[..]
                        }
                    };
                    uffd.copy(base + at, src)
                        .map_err(LazyVerifyError::Unavailable)?;
                    done.chunks += 1;
                }
                present.push(chunk);
                present.sort_unstable();
            }
        }
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            seen: AtomicBool::new(false),
            vcpu: Mutex::new(None),
            served: AtomicU64::new(0),
        });
        // SAFETY: creates a new eventfd; the call takes flags only.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(LazyVerifyError::Thread(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` was just opened and is owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let handler = Handler {
            uffd,
            file: s.file,
            path: s.path,
            digests: s.digests,
            base,
            len: s.len,
            shared: shared.clone(),
        };
        let stop_raw = stop.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("tandem-verify".into())
            .spawn(move || handler.run(stop_raw))
            .map_err(LazyVerifyError::Thread)?;
        Ok((
            Self {
                shared,
                stop,
                thread: Some(thread),
            },
            done,
        ))
    }

    /// The chunk that failed, named, once one has.
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.shared.failed.load(Ordering::SeqCst) {
            return None;
        }
        self.shared.seen.store(true, Ordering::SeqCst);
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Chunks served on faults so far.
    pub(crate) fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Records the calling thread as the vCPU thread to kick until the
    /// guard drops.
    pub(crate) fn attach(&self) -> Attached {
        crate::control::register_kick_handler();
        let me = crate::control::VcpuThread::current();
        *self.shared.vcpu.lock().unwrap_or_else(|p| p.into_inner()) = Some(me);
        Attached(self.shared.clone())
    }
}

/// The vCPU thread's registration with a [`LazyVerifier`].
pub(crate) struct Attached(Arc<Shared>);

impl Drop for Attached {
    fn drop(&mut self) {
        *self.0.vcpu.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for LazyVerifier {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our own eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regions_with_data_are_registered_merged() {
        let d = |v: &[u32]| ChunkDigests {
            digests: v.iter().map(|&c| (c, [0; 32])).collect(),
        };
        let per_region = u32::try_from(LARGE_PAGE_SIZE / CHUNK_SIZE).unwrap();
        let mem = 64 << 20;
        assert!(data_regions(&d(&[]), mem).is_empty());
        // Chunks 0 and 1 share region 0; region 1 is next to it; region 5 is apart.
        let r = data_regions(&d(&[0, 1, per_region, 5 * per_region + 3]), mem);
        assert_eq!(
            r,
            vec![
                (0, 2 * LARGE_PAGE_SIZE),
                (5 * LARGE_PAGE_SIZE, LARGE_PAGE_SIZE)
            ]
        );
        // A chunk past memory (refused by the state check anyway) is ignored.
        assert!(data_regions(&d(&[u32::MAX]), mem).is_empty());
    }

    #[test]
    fn chunks_are_named_by_number_and_address() {
        let n = chunk_name(3, std::path::Path::new("/s/memory-x"));
        assert_eq!(
            n,
            "chunk 3 (guest-physical 0x30000..0x40000) of /s/memory-x"
        );
    }
}
