//! The global heap, over the region the boot-info block hands the app.

use linked_list_allocator::LockedHeap;
use tandem_abi::bootinfo::MemRegion;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub(crate) fn init(region: &MemRegion) {
    if region.len == 0 {
        return;
    }
    // SAFETY: the VMM hands the heap region to the app alone: it is mapped
    // user read-write, lies outside the image, stacks and fixed layout, and
    // `init` runs once, before any allocation.
    unsafe { HEAP.lock().init(region.start as *mut u8, region.len as usize) };
}

/// Bytes of heap in use and free.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}
