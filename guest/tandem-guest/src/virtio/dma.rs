//! Memory shared with a device: heap pages the device reads and writes by
//! guest-physical address. The guest's memory is identity-mapped, so an
//! allocation's virtual address is the address the device is given.
//!
//! Every access is volatile and bounds-checked against the region; no Rust
//! reference into the region is handed out, since the device may write it
//! at any time.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;

use tandem_abi::layout::PAGE_SIZE;

/// A zeroed, page-aligned heap region shared with a device.
pub(crate) struct DmaRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl DmaRegion {
    /// `len` zeroed bytes, page-aligned; `None` when the heap cannot give them.
    pub(crate) fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), PAGE_SIZE as usize).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(Self { ptr, layout })
    }

    /// Bytes in the region.
    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// The guest-physical address of byte `offset` (identity mapping).
    pub(crate) fn phys(&self, offset: usize) -> u64 {
        self.ptr.as_ptr() as u64 + offset as u64
    }

    fn at<T>(&self, offset: usize) -> Option<*mut T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        (end <= self.len() && offset.is_multiple_of(core::mem::align_of::<T>()))
            // SAFETY: `offset..end` lies inside the allocation (checked).
            .then(|| unsafe { self.ptr.as_ptr().add(offset) }.cast::<T>())
    }

    /// Reads a `T` at `offset` (zero if it does not fit or is misaligned;
    /// callers compute offsets inside the region).
    fn read<T: Copy + Default>(&self, offset: usize) -> T {
        match self.at::<T>(offset) {
            // SAFETY: in bounds and aligned (checked by `at`); the region
            // lives as long as `self`, and a volatile read of plain integers
            // is sound whatever the device wrote.
            Some(p) => unsafe { p.read_volatile() },
            None => T::default(),
        }
    }

    /// Writes a `T` at `offset` (ignored if it does not fit).
    fn write<T: Copy>(&self, offset: usize, value: T) {
        if let Some(p) = self.at::<T>(offset) {
            // SAFETY: in bounds and aligned (checked by `at`); the region is
            // this driver's, shared only with the device.
            unsafe { p.write_volatile(value) }
        }
    }

    pub(crate) fn read_u16(&self, offset: usize) -> u16 {
        self.read(offset)
    }
    pub(crate) fn read_u32(&self, offset: usize) -> u32 {
        self.read(offset)
    }
    pub(crate) fn write_u16(&self, offset: usize, value: u16) {
        self.write(offset, value)
    }
    pub(crate) fn write_u32(&self, offset: usize, value: u32) {
        self.write(offset, value)
    }
    pub(crate) fn write_u64(&self, offset: usize, value: u64) {
        self.write(offset, value)
    }

    /// Copies `out.len()` bytes from `offset` into `out`; false (and
    /// nothing copied) if they do not lie in the region.
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.len())
        {
            return false;
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read::<u8>(offset + i);
        }
        true
    }

    /// Copies `bytes` to `offset`; false (and nothing copied) if they do
    /// not fit.
    pub(crate) fn copy_in(&self, offset: usize, bytes: &[u8]) -> bool {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len())
        {
            return false;
        }
        for (i, &b) in bytes.iter().enumerate() {
            self.write::<u8>(offset + i, b);
        }
        true
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the owner resets its
        // device before dropping the regions it shares with it.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
