//! Guest memory: one anonymous mapping, 2 MiB aligned, its heap backed by
//! transparent huge pages (first touch of a 4 KiB page costs about 4 µs under
//! PVM, far less per byte with huge pages), wrapped in `vm-memory` so every
//! access the VMM makes is bounds-checked.
//!
//! A restored VM maps its snapshot's memory file instead, `MAP_PRIVATE`:
//! nothing is read at restore (the time does not grow with memory size),
//! pages come in from the page cache on first touch, and the guest's writes
//! go to private copies, so any number of clones share one file.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tandem_abi::layout::LARGE_PAGE_SIZE;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `mmap` failed.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// vm-memory refused the region.
    #[error("cannot build guest memory: {0}")]
    Region(String),
    /// A memory file is not the size the guest memory must be.
    #[error("memory file is {found} bytes, expected {expected}")]
    FileSize {
        /// Size of the file.
        found: u64,
        /// Size of guest memory.
        expected: u64,
    },
    /// The file behind guest memory could not be inspected.
    #[error("cannot inspect guest memory: {0}")]
    Io(#[source] std::io::Error),
    /// Lazy verification could not be set up.
    #[error(transparent)]
    LazyVerify(#[from] crate::lazy_verify::LazyVerifyError),
}

/// An owned anonymous mapping; unmapped on drop, after every user is gone.
/// `addr..addr+len` is the guest memory, inside the reservation
/// `base..base+reserved` it was aligned in (kept whole: see
/// [`reserve_aligned`]).
#[derive(Debug)]
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
    base: *mut libc::c_void,
    reserved: usize,
}

// SAFETY: the mapping is plain memory; all access goes through vm-memory's
// volatile accessors or KVM, which are safe from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base..base+reserved` is a reservation this struct created
        // and owns (the guest memory inside it included); the guest memory
        // and KVM slot using it are dropped before it (field order in
        // `GuestRam`).
        unsafe { libc::munmap(self.base, self.reserved) };
    }
}

/// Guest RAM: the `vm-memory` view and the mapping behind it.
#[derive(Debug)]
pub struct GuestRam {
    /// Bounds-checked access to guest memory.
    pub mem: GuestMemoryMmap,
    /// The memory file mapped copy-on-write, for a restored VM (for a
    /// lazily verified one: the file its chunks are read from).
    source: Option<File>,
    /// For `--verify lazy`: the handler that checks each chunk on first touch.
    verifier: Option<crate::lazy_verify::LazyVerifier>,
    // Declared last: dropped after `mem`.
    mapping: Arc<Mapping>,
}

/// Another handle to guest memory, for a thread other than the vCPU's
/// (the backup thread's pre-copy): it keeps the mapping alive as long as
/// it lives, whatever becomes of the VM.
#[derive(Debug, Clone)]
pub struct SharedRam {
    /// Bounds-checked access to guest memory.
    pub mem: GuestMemoryMmap,
    // Declared last: dropped after `mem`.
    _mapping: Arc<Mapping>,
}

/// Reserves `len + 2 MiB` of address space and returns it with the
/// 2 MiB-aligned `len` bytes inside it. The slack before and after is left
/// mapped (untouched, it costs address space only): unmapping it would
/// call every MMU notifier of the process, one per VM in a fleet
/// (docs/fleet-scaling.md).
fn reserve_aligned(len: usize, size: u64) -> Result<Mapping, MemoryError> {
    // LARGE_PAGE_SIZE is 2 MiB, which fits any usize.
    #[allow(clippy::cast_possible_truncation)]
    let align = LARGE_PAGE_SIZE as usize;
    let reserve = len + align;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), reserve, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(MemoryError::Mmap {
            size,
            source: std::io::Error::last_os_error(),
        });
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    Ok(Mapping {
        addr: aligned as *mut libc::c_void,
        len,
        base: raw,
        reserved: reserve,
    })
}

/// Page range `[first, end)` as a byte range `(start, len)` inside a
/// mapping of `len` bytes (clipped), or `None` if empty; with `whole`,
/// only whole 2 MiB regions are kept.
fn byte_range(first: u64, end: u64, len: usize, whole: bool) -> Option<(usize, usize)> {
    let page = tandem_abi::layout::PAGE_SIZE;
    let start = usize::try_from(first.checked_mul(page)?).ok()?;
    let end = usize::try_from(end.checked_mul(page)?).ok()?.min(len);
    // LARGE_PAGE_SIZE is 2 MiB, which fits any usize.
    #[allow(clippy::cast_possible_truncation)]
    let region = LARGE_PAGE_SIZE as usize;
    if start >= end || (whole && (start % region != 0 || end % region != 0)) {
        return None;
    }
    Some((start, end - start))
}

/// Replaces `base+start .. +len` of a file mapping with anonymous huge-page
/// memory holding the same bytes of `file` (holes read as zeros).
fn copy_in(
    base: *mut libc::c_void,
    start: usize,
    len: usize,
    file: &File,
    size: u64,
) -> Result<(), MemoryError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
    // SAFETY: `base+start .. +len` lies inside the caller's own mapping
    // (checked by `byte_range`), which nothing uses yet: the guest has not
    // run and no slot maps it. MAP_FIXED replaces exactly that range.
    let raw = unsafe { libc::mmap(base.byte_add(start), len, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(MemoryError::Mmap {
            size,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: advice on the range just mapped; failure only loses the hint.
    unsafe { libc::madvise(raw, len, libc::MADV_HUGEPAGE) };
    let mut done = 0usize;
    while done < len {
        let off = i64::try_from(start + done).map_err(|_| MemoryError::Region("offset".into()))?;
        // SAFETY: reads into the anonymous range just mapped, which no Rust
        // reference points into and no one else uses yet; at most
        // `len - done` bytes, inside it.
        let n = unsafe { libc::pread(file.as_raw_fd(), raw.byte_add(done), len - done, off) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            let e = if n == 0 {
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
            } else {
                std::io::Error::last_os_error()
            };
            return Err(MemoryError::Io(e));
        }
        done += n.unsigned_abs();
    }
    Ok(())
}

fn wrap(addr: *mut libc::c_void, len: usize, flags: i32) -> Result<GuestMemoryMmap, MemoryError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: `addr..addr+len` is a valid mapping with these prot and flags,
    // owned by a `Mapping` that the caller keeps alive longer than the region.
    let region = unsafe { MmapRegion::build_raw(addr.cast::<u8>(), len, prot, flags) }
        .map_err(|e| MemoryError::Region(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| MemoryError::Region("region wraps the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| MemoryError::Region(e.to_string()))
}

impl GuestRam {
    /// Maps `size` bytes (a multiple of 2 MiB) at a 2 MiB-aligned host address.
    /// With `huge_pages`, asks for transparent huge pages.
    pub fn new(size: u64, huge_pages: bool) -> Result<Self, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::Region("size".into()))?;
        let mapping = Arc::new(reserve_aligned(len, size)?);
        // The fixed layout and the image (below HEAP_ADDR) are touched a few
        // pages at a time: 4 KiB pages there, so a boot does not zero whole
        // 2 MiB pages it barely uses. The heap gets huge pages when asked.
        // HEAP_ADDR is 4 MiB, which fits any usize.
        #[allow(clippy::cast_possible_truncation)]
        let low = (tandem_abi::layout::HEAP_ADDR as usize).min(len);
        // The slack of the reservation takes the advice of its neighbour,
        // so the whole reservation is two VMAs (fewer VMAs: a cheaper
        // KVM_CREATE_VM, which walks them all).
        let head = mapping.addr as usize - mapping.base as usize;
        let rest = mapping.reserved - head - low;
        // SAFETY: advice on ranges of our own reservation; failure only
        // loses the hint.
        unsafe {
            libc::madvise(mapping.base, head + low, libc::MADV_NOHUGEPAGE);
            if huge_pages && len > low {
                libc::madvise(mapping.addr.byte_add(low), rest, libc::MADV_HUGEPAGE);
            }
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let mem = wrap(mapping.addr, len, flags)?;
        Ok(Self {
            mem,
            source: None,
            verifier: None,
            mapping,
        })
    }

    /// Maps `file` (exactly `size` bytes, a multiple of 2 MiB) copy-on-write
    /// as guest memory at a 2 MiB-aligned host address. Reads nothing but
    /// what the plan asks: `copy` page ranges (whole 2 MiB regions) are
    /// replaced by anonymous huge-page memory holding the file's bytes, so
    /// KVM can map them 2 MiB at a time; `populate` page ranges are faulted
    /// in, writable, so the guest's first touches there are cheap. All
    /// other pages come from the page cache when first touched, and writes
    /// stay private to this mapping.
    pub fn from_file(
        file: File,
        size: u64,
        copy: &[(u64, u64)],
        populate: &[(u64, u64)],
    ) -> Result<Self, MemoryError> {
        let found = file.metadata().map_err(MemoryError::Io)?.len();
        if found != size {
            return Err(MemoryError::FileSize {
                found,
                expected: size,
            });
        }
        let len = usize::try_from(size).map_err(|_| MemoryError::Region("size".into()))?;
        let mapping = Arc::new(reserve_aligned(len, size)?);
        let aligned = mapping.addr;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
        // SAFETY: replaces our own reservation (owned by `mapping`) with a
        // private mapping of `len` bytes of `file`, whose size was checked.
        let raw = unsafe {
            libc::mmap(
                aligned,
                len,
                prot,
                flags | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED || raw != aligned {
            return Err(MemoryError::Mmap {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        for &(first, end) in copy {
            let Some((start, n)) = byte_range(first, end, len, true) else {
                continue;
            };
            copy_in(aligned, start, n, &file, size)?;
        }
        for &(first, end) in populate {
            let Some((start, n)) = byte_range(first, end, len, false) else {
                continue;
            };
            // SAFETY: advice on a range inside our own mapping; failure
            // only loses the prefault. POPULATE_WRITE makes the private
            // copies now (a page-cache copy each), so the guest's first
            // touches find present, writable host pages: under PVM a
            // guest fault then costs about 3 us instead of 22, and KVM
            // maps a page's present neighbours along with it.
            unsafe { libc::madvise(aligned.byte_add(start), n, libc::MADV_POPULATE_WRITE) };
        }
        let mem = wrap(aligned, len, flags)?;
        Ok(Self {
            mem,
            source: Some(file),
            verifier: None,
            mapping,
        })
    }

    /// Private anonymous memory for a snapshot whose memory file `file`
    /// (exactly `size` bytes, a multiple of 2 MiB) is checked chunk by
    /// chunk against `digests` as the guest first touches it (see
    /// [`crate::lazy_verify`]). The plan's `copy` regions and `populate`
    /// pages are brought in now, each chunk checked first.
    pub(crate) fn from_file_verified(
        file: File,
        path: std::path::PathBuf,
        size: u64,
        digests: Arc<crate::snapshot::ChunkDigests>,
        copy: &[(u64, u64)],
        populate: &[(u64, u64)],
    ) -> Result<(Self, crate::lazy_verify::Prefetched), MemoryError> {
        let found = file.metadata().map_err(MemoryError::Io)?.len();
        if found != size {
            return Err(MemoryError::FileSize {
                found,
                expected: size,
            });
        }
        let mut ram = Self::new(size, true)?;
        let handler_file = file.try_clone().map_err(MemoryError::Io)?;
        let (verifier, prefetched) =
            crate::lazy_verify::LazyVerifier::start(crate::lazy_verify::Setup {
                base: ram.mapping.addr,
                len: size,
                file: handler_file,
                path,
                digests,
                copy,
                populate,
            })?;
        ram.source = Some(file);
        ram.verifier = Some(verifier);
        Ok((ram, prefetched))
    }

    /// The lazy verifier of this memory, if it has one.
    pub(crate) fn verifier(&self) -> Option<&crate::lazy_verify::LazyVerifier> {
        self.verifier.as_ref()
    }

    /// The guest pages present in this process's page tables: those the
    /// guest (through KVM) or the VMM touched since the memory was mapped,
    /// in address order (from `/proc/self/pagemap`).
    pub fn present_pages(&self) -> Result<Vec<u32>, MemoryError> {
        use std::os::unix::fs::FileExt;
        let pagemap = File::open("/proc/self/pagemap").map_err(MemoryError::Io)?;
        let page = tandem_abi::layout::PAGE_SIZE;
        let first = self.mapping.addr as u64 / page;
        let pages = self.size() / page;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8 * 4096];
        let mut at = 0u64;
        while at < pages {
            let n = (pages - at).min(4096);
            let bytes = &mut buf[..usize::try_from(n * 8).unwrap_or(0)];
            pagemap
                .read_exact_at(bytes, (first + at) * 8)
                .map_err(MemoryError::Io)?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                if entry & (1 << 63) != 0 {
                    if let Ok(p) = u32::try_from(at + i as u64) {
                        out.push(p);
                    }
                }
            }
            at += n;
        }
        Ok(out)
    }

    /// The memory file behind a restored VM's memory.
    pub fn source_file(&self) -> Option<&File> {
        self.source.as_ref()
    }

    /// One byte per 4 KiB page: non-zero when the page may hold something
    /// other than zeros. For anonymous memory these are the pages the host
    /// has ever backed (`mincore`); a page never touched reads as zero.
    /// Memory mapped from a file must also count the file's data, which
    /// [`GuestRam::source_file`] gives.
    pub fn resident_pages(&self) -> Result<Vec<u8>, MemoryError> {
        // PAGE_SIZE is 4 KiB, which fits any usize.
        #[allow(clippy::cast_possible_truncation)]
        let pages = self
            .mapping
            .len
            .div_ceil(tandem_abi::layout::PAGE_SIZE as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: `addr..addr+len` is our own live mapping and `vec` has one
        // byte per page of it, as mincore requires.
        let r = unsafe { libc::mincore(self.mapping.addr, self.mapping.len, vec.as_mut_ptr()) };
        if r != 0 {
            return Err(MemoryError::Io(std::io::Error::last_os_error()));
        }
        for b in &mut vec {
            *b &= 1;
        }
        Ok(vec)
    }

    /// A handle to this memory for another thread.
    pub fn shared(&self) -> SharedRam {
        SharedRam {
            mem: self.mem.clone(),
            _mapping: self.mapping.clone(),
        }
    }

    /// Makes guest pages `[first, end)` present and writable in the host
    /// (`MADV_POPULATE_WRITE`), their content unchanged. Unlike touching
    /// them (a read, then a write), an untouched page is never mapped to
    /// the shared zero page first, so there is no copy-on-write fault: in
    /// a process with many VMs each such fault calls every VM's MMU
    /// notifier (docs/fleet-scaling.md).
    pub fn populate_write(&self, first: u64, end: u64) {
        let Some((start, n)) = byte_range(first, end, self.mapping.len, false) else {
            return;
        };
        // SAFETY: advice on a range inside our own live mapping (clipped by
        // `byte_range`); it changes no byte, and failure only loses the
        // prefault (the pages then fault in on first touch).
        unsafe {
            libc::madvise(
                self.mapping.addr.byte_add(start),
                n,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }

    /// Host address of guest address 0, for the KVM memory slot only.
    pub fn host_addr(&self) -> u64 {
        self.mapping.addr as u64
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.len as u64
    }
}
