//! Making the pages a boot touches present before the guest runs, so its
//! page faults are few and cheap.

use tandem_abi::layout;

use super::VmError;
use crate::image::Image;
use crate::memory::GuestRam;

/// Ranges of which the guest touches several pages on its way to `main` and
/// at exit: the boot-info block, trace stamps, hypercall and console buffers
/// (one prefetch group), and the top of the stack (decoding the boot-info
/// block uses a few pages of it). Measured on hello: guest init 170 µs
/// without these, 75 µs with. The exception path is left alone: completing
/// its groups costs every boot more than it saves the rare faulting one.
const HOT: &[(u64, u64)] = &[
    (
        layout::BOOT_INFO_ADDR,
        layout::CONSOLE_ADDR + layout::PAGE_SIZE,
    ),
    (layout::STACK_TOP - PREFETCH_GROUP, layout::STACK_TOP),
];

/// KVM's shadow MMU maps up to 8 neighbouring pages (an aligned 32 KiB
/// group) on each guest page fault, but stops at the first neighbour whose
/// host page is not yet present. Under PVM each guest fault costs about
/// 22 µs and a host page fault about 3 µs, so for groups of which the guest
/// touches several pages, the host makes every mapped page present and
/// writable: one guest fault then maps the whole group.
const PREFETCH_GROUP: u64 = 8 * layout::PAGE_SIZE;

pub(super) fn prefault(ram: &GuestRam, image: &Image) -> Result<(), VmError> {
    let page_size = layout::PAGE_SIZE;
    let mapped = |page: u64| {
        layout::LOW_REGIONS
            .iter()
            .any(|r| r.access != layout::Access::None && page >= r.start && page < r.end)
            || image
                .segments
                .iter()
                .any(|s| page >= s.addr & !(page_size - 1) && page < s.addr + s.mem_size)
    };
    // Each run of mapped pages in the groups is made present and writable
    // in one call, without reading it first (see `GuestRam::populate_write`).
    let touch_groups = |start: u64, end: u64| {
        let mut page = start & !(PREFETCH_GROUP - 1);
        let mut run: Option<u64> = None;
        while page < end {
            match (mapped(page), run) {
                (true, None) => run = Some(page),
                (false, Some(from)) => {
                    ram.populate_write(from / page_size, page / page_size);
                    run = None;
                }
                _ => {}
            }
            page += page_size;
        }
        if let Some(from) = run {
            ram.populate_write(from / page_size, page / page_size);
        }
    };
    for &(start, end) in HOT {
        touch_groups(start, end);
    }
    for seg in &image.segments {
        touch_groups(seg.addr, seg.addr + seg.mem_size);
    }
    Ok(())
}
