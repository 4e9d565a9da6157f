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
}

/// An owned anonymous mapping; unmapped on drop, after every user is gone.
#[derive(Debug)]
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory; all access goes through vm-memory's
// volatile accessors or KVM, which are safe from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is a mapping this struct created and owns;
        // the guest memory and KVM slot using it are dropped before it (field
        // order in `GuestRam`).
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Guest RAM: the `vm-memory` view and the mapping behind it.
#[derive(Debug)]
pub struct GuestRam {
    /// Bounds-checked access to guest memory.
    pub mem: GuestMemoryMmap,
    /// The memory file mapped copy-on-write, for a restored VM.
    source: Option<File>,
    // Declared last: dropped after `mem`.
    mapping: Arc<Mapping>,
}

/// Reserves `len + 2 MiB` of address space and returns the 2 MiB-aligned
/// `len` bytes inside it, the rest unmapped again.
fn reserve_aligned(len: usize, size: u64) -> Result<*mut libc::c_void, MemoryError> {
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
    let head = aligned - start;
    let tail = reserve - head - len;
    // SAFETY: both ranges lie inside the mapping just made and are not used.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned as *mut libc::c_void)
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
        let aligned = reserve_aligned(len, size)?;
        let mapping = Arc::new(Mapping { addr: aligned, len });
        // The fixed layout and the image (below HEAP_ADDR) are touched a few
        // pages at a time: 4 KiB pages there, so a boot does not zero whole
        // 2 MiB pages it barely uses. The heap gets huge pages when asked.
        // HEAP_ADDR is 4 MiB, which fits any usize.
        #[allow(clippy::cast_possible_truncation)]
        let low = (tandem_abi::layout::HEAP_ADDR as usize).min(len);
        // SAFETY: advice on ranges of our own mapping; failure only loses the hint.
        unsafe {
            libc::madvise(mapping.addr, low, libc::MADV_NOHUGEPAGE);
            if huge_pages && len > low {
                libc::madvise(mapping.addr.byte_add(low), len - low, libc::MADV_HUGEPAGE);
            }
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let mem = wrap(mapping.addr, len, flags)?;
        Ok(Self {
            mem,
            source: None,
            mapping,
        })
    }

    /// Maps `file` (exactly `size` bytes, a multiple of 2 MiB) copy-on-write
    /// as guest memory at a 2 MiB-aligned host address. Reads nothing: pages
    /// come from the page cache when first touched, and writes stay private
    /// to this mapping. `populate` ranges (guest addresses) are faulted in
    /// at once, writable, so the guest's first touches there are cheap.
    pub fn from_file(file: File, size: u64, populate: &[(u64, u64)]) -> Result<Self, MemoryError> {
        let found = file.metadata().map_err(MemoryError::Io)?.len();
        if found != size {
            return Err(MemoryError::FileSize {
                found,
                expected: size,
            });
        }
        let len = usize::try_from(size).map_err(|_| MemoryError::Region("size".into()))?;
        let aligned = reserve_aligned(len, size)?;
        let mapping = Arc::new(Mapping { addr: aligned, len });
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
        for &(start, end) in populate {
            let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
                continue;
            };
            let end = end.min(len);
            if start < end {
                // SAFETY: advice on a range inside our own mapping; failure
                // only loses the prefault. POPULATE_WRITE makes the private
                // copies now (a page-cache copy each), so the guest's first
                // touches find present, writable host pages: under PVM a
                // guest fault then costs about 3 us instead of 22, and KVM
                // maps a page's present neighbours along with it.
                unsafe {
                    libc::madvise(
                        aligned.byte_add(start),
                        end - start,
                        libc::MADV_POPULATE_WRITE,
                    )
                };
            }
        }
        let mem = wrap(aligned, len, flags)?;
        Ok(Self {
            mem,
            source: Some(file),
            mapping,
        })
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

    /// Host address of guest address 0, for the KVM memory slot only.
    pub fn host_addr(&self) -> u64 {
        self.mapping.addr as u64
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.len as u64
    }
}
