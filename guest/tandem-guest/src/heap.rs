//! The global heap, over the region the boot-info block hands the app.
//!
//! The allocator is set up at boot but writes its first header only on the
//! first allocation: touching the heap costs a page fault (and, with huge
//! pages, zeroing 2 MiB on the host), which an app that never allocates
//! should not pay before `main`.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use linked_list_allocator::LockedHeap;
use tandem_abi::bootinfo::MemRegion;

struct LazyHeap {
    heap: LockedHeap,
    start: AtomicU64,
    len: AtomicU64,
    ready: AtomicBool,
}

impl LazyHeap {
    fn ensure(&self) {
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        let mut heap = self.heap.lock();
        if !self.ready.load(Ordering::Relaxed) {
            let (start, len) = (
                self.start.load(Ordering::Relaxed),
                self.len.load(Ordering::Relaxed),
            );
            if len != 0 {
                // SAFETY: the VMM hands the heap region to the app alone: it is
                // mapped user read-write, lies outside the image, stacks and
                // fixed layout, and this runs once, before any allocation.
                unsafe { heap.init(start as *mut u8, len as usize) };
            }
            self.ready.store(true, Ordering::Release);
        }
    }
}

// SAFETY: delegates to linked_list_allocator's LockedHeap, a sound allocator,
// after initialising it exactly once over memory nothing else uses.
unsafe impl GlobalAlloc for LazyHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.ensure();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.heap.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees; `ptr` came from `alloc`.
        unsafe { self.heap.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: LazyHeap = LazyHeap {
    heap: LockedHeap::empty(),
    start: AtomicU64::new(0),
    len: AtomicU64::new(0),
    ready: AtomicBool::new(false),
};

pub(crate) fn init(region: &MemRegion) {
    HEAP.start.store(region.start, Ordering::Relaxed);
    HEAP.len.store(region.len, Ordering::Relaxed);
}

/// Bytes of heap in use and free.
pub fn usage() -> (usize, usize) {
    HEAP.ensure();
    let heap = HEAP.heap.lock();
    (heap.used(), heap.free())
}
