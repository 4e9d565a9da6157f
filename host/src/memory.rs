//! Guest memory: one anonymous mapping, 2 MiB aligned, its heap backed by
//! transparent huge pages (first touch of a 4 KiB page costs about 4 µs under
//! PVM, far less per byte with huge pages), wrapped in `vm-memory` so every
//! access the VMM makes is bounds-checked.

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
    // Declared last: dropped after `mem`.
    mapping: Arc<Mapping>,
}

impl GuestRam {
    /// Maps `size` bytes (a multiple of 2 MiB) at a 2 MiB-aligned host address.
    /// With `huge_pages`, asks for transparent huge pages.
    pub fn new(size: u64, huge_pages: bool) -> Result<Self, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::Region("size".into()))?;
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
        let mapping = Arc::new(Mapping {
            addr: aligned as *mut libc::c_void,
            len,
        });
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
        // SAFETY: `aligned..aligned+len` is a valid anonymous mapping with these
        // prot and flags, owned by `mapping`, which outlives the region.
        let region = unsafe { MmapRegion::build_raw(aligned as *mut u8, len, prot, flags) }
            .map_err(|e| MemoryError::Region(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| MemoryError::Region("region wraps the address space".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| MemoryError::Region(e.to_string()))?;
        Ok(Self { mem, mapping })
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
