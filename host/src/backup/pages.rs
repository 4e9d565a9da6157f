//! Which guest pages a backup point holds: for a base, every page that may
//! hold data; for a delta, those KVM's dirty log reports plus those the
//! VMM itself wrote, which the log cannot see.

use std::collections::BTreeSet;

use tandem_abi::layout;

/// A base point's pages: every page `candidates` marks, ascending.
pub(crate) fn base_pages(candidates: &[bool]) -> Vec<u64> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, &c)| c)
        .map(|(i, _)| i as u64)
        .collect()
}

/// A delta point's pages below `max_page`, ascending: the pages set in the
/// dirty-log `bitmap` (bit `b` of word `w` is page `64 w + b`), the pages
/// the VMM wrote (`host_written`: replies and the like), and always the
/// console and live-area pages (their headers are the VMM's too). Also
/// returns how many pages the log reported.
pub(crate) fn delta_pages(
    bitmap: &[u64],
    host_written: BTreeSet<u64>,
    max_page: u64,
) -> (Vec<u64>, u64) {
    let mut set = BTreeSet::new();
    for (w, word) in bitmap.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            let b = u64::from(bits.trailing_zeros());
            set.insert(w as u64 * 64 + b);
            bits &= bits - 1;
        }
    }
    let dirty = set.len() as u64;
    set.extend(host_written);
    set.insert(layout::CONSOLE_ADDR / layout::PAGE_SIZE);
    set.insert(layout::LIVE_ADDR / layout::PAGE_SIZE);
    (set.into_iter().filter(|&p| p < max_page).collect(), dirty)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: u64 = layout::CONSOLE_ADDR / layout::PAGE_SIZE;
    const LIVE: u64 = layout::LIVE_ADDR / layout::PAGE_SIZE;

    #[test]
    fn a_base_holds_every_candidate() {
        assert_eq!(base_pages(&[false, true, true, false, true]), [1, 2, 4]);
        assert!(base_pages(&[]).is_empty());
    }

    #[test]
    fn a_delta_holds_dirty_and_host_written_pages() {
        let max = 4096;
        let bitmap = [0b101, 1 << 63, 0, 1];
        let (pages, dirty) = delta_pages(&bitmap, BTreeSet::from([2000, 0]), max);
        assert_eq!(dirty, 4);
        let mut want = BTreeSet::from([0, 2, 127, 192, 2000, CONSOLE, LIVE]);
        want.retain(|&p| p < max);
        assert_eq!(pages, want.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_delta_stays_inside_guest_memory() {
        let (pages, dirty) = delta_pages(&[u64::MAX; 2], BTreeSet::from([500]), 70);
        assert_eq!(dirty, 128);
        assert_eq!(pages, (0..70).collect::<Vec<_>>());
        assert!(pages.iter().all(|&p| p < 70));
    }
}
