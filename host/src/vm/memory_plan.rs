//! How a restore lays out guest memory, decided without touching any: pure
//! (no KVM, no files, no clock), fed the memory file's data extents and the
//! snapshot's working set, returning what `GuestRam::from_file` does.
//!
//! Under PVM's shadow MMU a restored guest pays a fault for every page it
//! touches again. A file mapping gives KVM 4 KiB host pages only, so the
//! guest's 2 MiB heap mappings are shadowed 4 KiB at a time; anonymous
//! huge-page memory lets one fault map 2 MiB (here, reading a 64 MiB heap
//! took 36 ms from the file mapping and 2.4 ms from copied huge pages). So
//! 2 MiB regions the guest uses densely are copied out of the file into
//! anonymous huge pages, within a budget; the pages it uses elsewhere are
//! prefaulted in the file mapping (a host fault there costs about 3 µs
//! instead of the guest's 22); everything else stays lazy.

use tandem_abi::layout::{HEAP_ADDR, LARGE_PAGE_SIZE, PAGE_SIZE};

/// What a restore faults in before the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefetch {
    /// The snapshot's working set when it has a valid one, else `Data`.
    #[default]
    Auto,
    /// The memory file's data: dense regions copied, the rest prefaulted
    /// low addresses first, both bounded.
    Data,
    /// Nothing, and the pages the guest touches are written to the
    /// snapshot's working-set file when the run ends.
    Record,
    /// Nothing: every page comes in on first touch.
    Lazy,
}

impl std::str::FromStr for Prefetch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "data" => Ok(Self::Data),
            "record" => Ok(Self::Record),
            "lazy" => Ok(Self::Lazy),
            _ => Err(format!(
                "prefetch mode `{s}`: expected auto, data, record or lazy"
            )),
        }
    }
}

/// Pages in a 2 MiB region, the unit that is copied.
pub(crate) const REGION_PAGES: u64 = LARGE_PAGE_SIZE / PAGE_SIZE;
/// A region is worth copying when it holds at least this many pages the
/// guest uses (copying 2 MiB costs about what 64 guest faults do).
pub(crate) const DENSE_PAGES: u64 = 64;
/// Most memory copied into huge pages per restore (64 MiB).
pub(crate) const COPY_BUDGET_PAGES: u64 = (64 << 20) / PAGE_SIZE;
/// Most data pages prefaulted without a working set (about 1 µs each).
pub(crate) const DATA_POPULATE_MAX: u64 = 2048;
/// Most working-set pages prefaulted outside copied regions (64 MiB).
pub(crate) const WORKING_SET_POPULATE_MAX: u64 = 16384;
/// Regions below the heap hold the fixed layout and the image, mapped in
/// 4 KiB pages: never copied.
const FIRST_COPY_REGION: u64 = HEAP_ADDR / LARGE_PAGE_SIZE;

/// What the planner is told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanInput<'a> {
    /// Pages of guest memory.
    pub mem_pages: u64,
    /// Data extents of the memory file, page ranges `[first, end)`.
    pub data: &'a [(u64, u64)],
    /// The snapshot's checked working set, if it has one.
    pub working_set: Option<&'a [u32]>,
    /// The mode asked for.
    pub prefetch: Prefetch,
}

/// What a restore does to guest memory, as page ranges `[first, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MemoryPlan {
    /// Whole 2 MiB regions copied into anonymous huge-page memory.
    pub copy: Vec<(u64, u64)>,
    /// Pages prefaulted, writable, in the file mapping, in this order.
    pub populate: Vec<(u64, u64)>,
}

impl MemoryPlan {
    /// Pages copied.
    pub fn copied_pages(&self) -> u64 {
        self.copy.iter().map(|(a, b)| b - a).sum()
    }
    /// Pages prefaulted.
    pub fn populated_pages(&self) -> u64 {
        self.populate.iter().map(|(a, b)| b - a).sum()
    }
}

/// Decides the plan.
pub(crate) fn plan(input: &PlanInput<'_>) -> MemoryPlan {
    match (input.prefetch, input.working_set) {
        (Prefetch::Lazy | Prefetch::Record, _) => MemoryPlan::default(),
        (Prefetch::Auto, Some(ws)) => {
            let pages = ws
                .iter()
                .map(|&p| u64::from(p))
                .filter(|&p| p < input.mem_pages);
            plan_pages(pages, WORKING_SET_POPULATE_MAX)
        }
        (Prefetch::Auto | Prefetch::Data, _) => {
            let pages = input
                .data
                .iter()
                .flat_map(|&(a, b)| a.min(input.mem_pages)..b.min(input.mem_pages));
            plan_pages(pages, DATA_POPULATE_MAX)
        }
    }
}

/// Copies the dense regions of `pages` (in the order their first page
/// comes, within the budget) and prefaults the rest of `pages`, in order,
/// up to `populate_max`.
fn plan_pages(pages: impl Iterator<Item = u64> + Clone, populate_max: u64) -> MemoryPlan {
    // Region -> (pages used, rank of its first page).
    let mut regions: std::collections::BTreeMap<u64, (u64, usize)> = Default::default();
    for (rank, p) in pages.clone().enumerate() {
        let e = regions.entry(p / REGION_PAGES).or_insert((0, rank));
        e.0 += 1;
    }
    let mut dense: Vec<(usize, u64)> = regions
        .iter()
        .filter(|(&r, &(n, _))| r >= FIRST_COPY_REGION && n >= DENSE_PAGES)
        .map(|(&r, &(_, rank))| (rank, r))
        .collect();
    dense.sort_unstable();
    let budget = (COPY_BUDGET_PAGES / REGION_PAGES) as usize;
    let mut copied: Vec<u64> = dense.into_iter().take(budget).map(|(_, r)| r).collect();
    copied.sort_unstable();
    let is_copied = |p: u64| copied.binary_search(&(p / REGION_PAGES)).is_ok();

    let mut populate: Vec<(u64, u64)> = Vec::new();
    let mut left = populate_max;
    for p in pages.filter(|&p| !is_copied(p)) {
        if left == 0 {
            break;
        }
        left -= 1;
        match populate.last_mut() {
            Some(last) if last.1 == p => last.1 += 1,
            _ => populate.push((p, p + 1)),
        }
    }
    let mut copy: Vec<(u64, u64)> = Vec::new();
    for r in copied {
        let (a, b) = (r * REGION_PAGES, (r + 1) * REGION_PAGES);
        match copy.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => copy.push((a, b)),
        }
    }
    MemoryPlan { copy, populate }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM_PAGES: u64 = (1 << 30) / PAGE_SIZE;
    const HEAP: u64 = HEAP_ADDR / PAGE_SIZE;

    fn input<'a>(
        data: &'a [(u64, u64)],
        ws: Option<&'a [u32]>,
        prefetch: Prefetch,
    ) -> PlanInput<'a> {
        PlanInput {
            mem_pages: MEM_PAGES,
            data,
            working_set: ws,
            prefetch,
        }
    }

    #[test]
    fn lazy_and_record_fault_nothing_in() {
        let data = [(0, 1000), (HEAP, HEAP + 4096)];
        for mode in [Prefetch::Lazy, Prefetch::Record] {
            assert_eq!(
                plan(&input(&data, Some(&[1, 2, 3]), mode)),
                MemoryPlan::default()
            );
        }
    }

    #[test]
    fn sparse_data_is_prefaulted_low_first_up_to_the_cap() {
        // Two pages in each of many regions: nothing is dense.
        let data: Vec<(u64, u64)> = (0..4000).map(|i| (i * 60, i * 60 + 2)).collect();
        let p = plan(&input(&data, None, Prefetch::Data));
        assert!(p.copy.is_empty());
        assert_eq!(p.populated_pages(), DATA_POPULATE_MAX);
        assert_eq!(p.populate[0], (0, 2));
        assert!(p.populate.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn dense_heap_regions_are_copied_whole_and_not_prefaulted() {
        let data = [
            (10, 20),
            (HEAP, HEAP + 2 * REGION_PAGES),
            (HEAP + 5000, HEAP + 5010),
        ];
        let p = plan(&input(&data, None, Prefetch::Auto));
        assert_eq!(p.copy, vec![(HEAP, HEAP + 2 * REGION_PAGES)]);
        assert_eq!(p.populate, vec![(10, 20), (HEAP + 5000, HEAP + 5010)]);
    }

    #[test]
    fn the_fixed_layout_and_image_are_never_copied() {
        let data = [(0, HEAP)];
        let p = plan(&input(&data, None, Prefetch::Data));
        assert!(p.copy.is_empty());
        assert_eq!(p.populate, vec![(0, HEAP)]);
    }

    #[test]
    fn copying_stops_at_the_budget_first_regions_first() {
        let data = [(HEAP, MEM_PAGES)];
        let p = plan(&input(&data, None, Prefetch::Data));
        assert_eq!(p.copied_pages(), COPY_BUDGET_PAGES);
        assert_eq!(p.copy, vec![(HEAP, HEAP + COPY_BUDGET_PAGES)]);
        // What is not copied is prefaulted, up to the cap.
        assert_eq!(p.populated_pages(), DATA_POPULATE_MAX);
        assert_eq!(p.populate[0].0, HEAP + COPY_BUDGET_PAGES);
    }

    #[test]
    fn a_working_set_decides_instead_of_the_data_in_its_order() {
        // Much data, but the guest used a few pages and one dense region,
        // which it touched last: that region is still copied, and the
        // sparse pages are prefaulted in the order they were listed.
        let data = [(0, MEM_PAGES)];
        let dense_region = HEAP + 40 * REGION_PAGES;
        let mut ws: Vec<u32> = vec![9, 3, 7];
        ws.extend((dense_region..dense_region + 100).map(|p| u32::try_from(p).unwrap()));
        let p = plan(&input(&data, Some(&ws), Prefetch::Auto));
        assert_eq!(p.copy, vec![(dense_region, dense_region + REGION_PAGES)]);
        assert_eq!(p.populate, vec![(9, 10), (3, 4), (7, 8)]);
        // Data mode ignores the working set.
        let d = plan(&input(&data, Some(&ws), Prefetch::Data));
        assert_eq!(d.copied_pages(), COPY_BUDGET_PAGES);
    }

    #[test]
    fn working_set_regions_first_within_the_budget() {
        // More dense working-set regions than the budget holds: the first
        // touched win, whatever their address.
        let n = COPY_BUDGET_PAGES / REGION_PAGES + 4;
        let mut ws = Vec::new();
        for r in (0..n).rev() {
            let base = HEAP + r * REGION_PAGES;
            ws.extend((base..base + DENSE_PAGES).map(|p| u32::try_from(p).unwrap()));
        }
        let p = plan(&input(&[], Some(&ws), Prefetch::Auto));
        assert_eq!(p.copied_pages(), COPY_BUDGET_PAGES);
        assert!(p.copy.iter().all(|&(a, _)| a >= HEAP + 4 * REGION_PAGES));
        // The regions left over are prefaulted page by page instead.
        assert_eq!(p.populated_pages(), 4 * DENSE_PAGES);
    }

    #[test]
    fn pages_past_memory_are_ignored() {
        let data = [(MEM_PAGES - 2, MEM_PAGES + 100)];
        let p = plan(&input(&data, Some(&[u32::MAX]), Prefetch::Data));
        assert_eq!(p.populate, vec![(MEM_PAGES - 2, MEM_PAGES)]);
        let w = plan(&input(&data, Some(&[u32::MAX]), Prefetch::Auto));
        assert_eq!(w, MemoryPlan::default());
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!("auto".parse::<Prefetch>(), Ok(Prefetch::Auto));
        assert_eq!("record".parse::<Prefetch>(), Ok(Prefetch::Record));
        assert!("eager"
            .parse::<Prefetch>()
            .unwrap_err()
            .contains("auto, data"));
    }
}
