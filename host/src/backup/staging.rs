//! The doing of a live backup point's copies: [`Harvester`] takes KVM's
//! dirty log (`KVM_GET_DIRTY_LOG`, which clears it and write-protects the
//! pages it names, so a write after the harvest shows in the next one) and
//! copies the pages it names into a [`Staging`] buffer, newest copy wins.
//! Rounds run on the backup thread while the guest runs, through its own
//! handles to the VM fd and guest memory (both safe to use from another
//! thread: the ioctl takes KVM's slots lock, the memory is read through
//! vm-memory's volatile accessors); the last round runs on the vCPU thread
//! with the vCPU stopped, so the staged pages are then exactly guest memory
//! at that instant. A page torn by a concurrent guest write is dirty again
//! and is copied again in a later round.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use tandem_abi::layout::PAGE_SIZE;
use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use super::{BackupError, PAGE};
use crate::memory::SharedRam;
use crate::snapshot::SnapshotError;

/// Pages per allocation of the staging buffer (1 MiB): it grows without
/// moving what it holds, so a last round's copies never pay for a
/// reallocation while the guest waits.
const SLAB_PAGES: usize = 256;

/// Where a backup point's pages wait for the write: page number to bytes.
#[derive(Debug, Default)]
pub(crate) struct Staging {
    slots: BTreeMap<u64, usize>,
    slabs: Vec<Box<[u8]>>,
}

impl Staging {
    /// Pages staged.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The staged page numbers, ascending.
    pub fn pages(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    fn slot_bytes(&mut self, slot: usize) -> &mut [u8] {
        let (slab, at) = (slot / SLAB_PAGES, slot % SLAB_PAGES);
        while self.slabs.len() <= slab {
            self.slabs
                .push(vec![0u8; SLAB_PAGES * PAGE].into_boxed_slice());
        }
        &mut self.slabs[slab][at * PAGE..(at + 1) * PAGE]
    }

    /// Copies guest page `page` from `mem` (all of guest memory, see
    /// [`whole`]) into the buffer (over an older copy of it). Says whether
    /// the page is new to the buffer.
    pub fn copy_in(&mut self, mem: &VolatileSlice<'_>, page: u64) -> Result<bool, BackupError> {
        let known = self.slots.get(&page).copied();
        let slot = known.unwrap_or(self.slots.len());
        let src = usize::try_from(page)
            .ok()
            .and_then(|p| p.checked_mul(PAGE))
            .and_then(|at| mem.subslice(at, PAGE).ok())
            .ok_or_else(|| SnapshotError::Invalid(format!("cannot read guest page {page}")))?;
        src.copy_to(self.slot_bytes(slot));
        if known.is_none() {
            self.slots.insert(page, slot);
        }
        Ok(known.is_none())
    }

    /// The staged bytes of `page`.
    pub fn page(&self, page: u64) -> Option<&[u8]> {
        let slot = *self.slots.get(&page)?;
        let (slab, at) = (slot / SLAB_PAGES, slot % SLAB_PAGES);
        self.slabs.get(slab).map(|s| &s[at * PAGE..(at + 1) * PAGE])
    }

    /// Stages `bytes` (one page) as `page` unless a copy of it is staged.
    fn put_if_absent(&mut self, page: u64, bytes: &[u8]) {
        if self.slots.contains_key(&page) {
            return;
        }
        let slot = self.slots.len();
        self.slot_bytes(slot).copy_from_slice(bytes);
        self.slots.insert(page, slot);
    }

    /// Empties the buffer, keeping its memory for the next point.
    pub fn clear(&mut self) {
        self.slots.clear();
    }
}

/// All of guest memory as one slice (its one region), so a round's copies
/// are plain offsets into it.
pub(crate) fn whole(mem: &GuestMemoryMmap) -> Result<VolatileSlice<'_>, BackupError> {
    let region = mem
        .find_region(GuestAddress(0))
        .ok_or_else(|| SnapshotError::Invalid("guest memory has no region at 0".into()))?;
    let len =
        usize::try_from(region.len()).map_err(|_| SnapshotError::Invalid("memory size".into()))?;
    region
        .get_slice(MemoryRegionAddress(0), len)
        .map_err(|e| SnapshotError::Invalid(format!("guest memory: {e}")).into())
}

/// The page numbers set in a dirty-log `bitmap` (bit `b` of word `w` is
/// page `64 w + b`) below `max_page`, ascending.
pub(crate) fn bitmap_pages(bitmap: &[u64], max_page: u64) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(move |(w, &word)| {
        let mut bits = word;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let b = u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            Some(w as u64 * 64 + b)
        })
        .take_while(move |&p| p < max_page)
    })
}

/// Harvests the dirty log into a staging buffer, round by round.
pub(crate) struct Harvester {
    vm: Arc<VmFd>,
    ram: SharedRam,
    size: u64,
    staging: Staging,
    /// Distinct pages the log named since the last [`Harvester::take`].
    logged: u64,
    /// Buffers written out, kept for reuse.
    spare: Option<Staging>,
}

impl std::fmt::Debug for Harvester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harvester")
            .field("size", &self.size)
            .field("staged", &self.staging.len())
            .finish_non_exhaustive()
    }
}

impl Harvester {
    /// A harvester of the dirty log of `vm`'s one slot over `mem` (`size` bytes).
    pub fn new(vm: Arc<VmFd>, ram: SharedRam, size: u64) -> Self {
        Self {
            vm,
            ram,
            size,
            staging: Staging::default(),
            logged: 0,
            spare: None,
        }
    }

    /// One round: takes (and clears) the dirty log and copies the pages it
    /// names. Returns how many it named.
    pub fn round(&mut self) -> Result<u64, BackupError> {
        let size =
            usize::try_from(self.size).map_err(|_| SnapshotError::Invalid("memory size".into()))?;
        let t = std::time::Instant::now();
        let bitmap = self
            .vm
            .get_dirty_log(0, size)
            .map_err(|source| BackupError::Kvm {
                what: "KVM_GET_DIRTY_LOG",
                source,
            })?;
        let got = t.elapsed();
        let mem = whole(&self.ram.mem)?;
        let mut n = 0;
        for page in bitmap_pages(&bitmap, self.size / PAGE_SIZE) {
            if self.staging.copy_in(&mem, page)? {
                self.logged += 1;
            }
            n += 1;
        }
        log::trace!(
            "dirty log: {n} pages, harvest {:.3} ms, copies {:.3} ms",
            got.as_secs_f64() * 1e3,
            (t.elapsed() - got).as_secs_f64() * 1e3
        );
        Ok(n)
    }

    /// Copies `pages` (the VMM's own writes, which the log cannot see) now.
    pub fn copy_pages(&mut self, pages: impl IntoIterator<Item = u64>) -> Result<(), BackupError> {
        let max = self.size / PAGE_SIZE;
        let mem = whole(&self.ram.mem)?;
        for page in pages.into_iter().filter(|&p| p < max) {
            self.staging.copy_in(&mem, page)?;
        }
        Ok(())
    }

    /// Pages staged so far.
    pub fn staged(&self) -> usize {
        self.staging.len()
    }

    /// Takes the staged pages and how many distinct pages the log named,
    /// leaving an empty buffer (a spare one if a written buffer was handed
    /// back).
    pub fn take(&mut self) -> (Staging, u64) {
        let next = self.spare.take().unwrap_or_default();
        let logged = std::mem::take(&mut self.logged);
        (std::mem::replace(&mut self.staging, next), logged)
    }

    /// Hands back the pages of a point that could not be written: their
    /// dirty bits were cleared, so the next point must hold them. A page
    /// staged since is newer and stays.
    pub fn give_back(&mut self, failed: Staging) {
        for page in failed.pages() {
            if let Some(bytes) = failed.page(page) {
                self.staging.put_if_absent(page, bytes);
            }
        }
    }

    /// Frees the buffers (on the thread that calls it).
    pub fn release(&mut self) {
        self.staging = Staging::default();
        self.spare = None;
    }

    /// Hands back a written buffer for reuse.
    pub fn recycle(&mut self, mut staging: Staging) {
        staging.clear();
        self.spare = Some(staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_pages_are_the_set_bits_in_memory() {
        let pages: Vec<u64> = bitmap_pages(&[0b101, 1 << 63, 0, 1], 4096).collect();
        assert_eq!(pages, [0, 2, 127, 192]);
        let pages: Vec<u64> = bitmap_pages(&[u64::MAX; 2], 70).collect();
        assert_eq!(pages, (0..70).collect::<Vec<_>>());
    }

    use vm_memory::Bytes;

    #[test]
    fn the_newest_copy_of_a_page_wins_and_buffers_are_reused() {
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        let mem = whole(&guest).unwrap();
        let mut s = Staging::default();
        guest
            .write_slice(&[1; 8], GuestAddress(3 * PAGE_SIZE))
            .unwrap();
        assert!(s.copy_in(&mem, 3).unwrap());
        guest
            .write_slice(&[2; 8], GuestAddress(3 * PAGE_SIZE))
            .unwrap();
        assert!(s.copy_in(&mem, 300).unwrap());
        assert!(!s.copy_in(&mem, 3).unwrap());
        assert_eq!(s.len(), 2);
        assert_eq!(s.pages(), [3, 300]);
        assert_eq!(&s.page(3).unwrap()[..8], &[2; 8]);
        assert!(s.page(300).unwrap().iter().all(|&b| b == 0));
        assert!(s.copy_in(&mem, 1 << 20).is_err(), "a page past memory");
        assert_eq!(s.len(), 2, "a failed copy stages nothing");
        s.clear();
        assert_eq!(s.len(), 0);
        assert!(s.page(3).is_none());
        s.copy_in(&mem, 7).unwrap();
        assert_eq!(&s.page(7).unwrap()[..8], &[0; 8]);
    }

    #[test]
    fn a_failed_point_gives_its_pages_back_without_hiding_newer_copies() {
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        let mem = whole(&guest).unwrap();
        let mut failed = Staging::default();
        guest.write_slice(&[1; 8], GuestAddress(0)).unwrap();
        failed.copy_in(&mem, 0).unwrap();
        failed.copy_in(&mem, 1).unwrap();
        let mut current = Staging::default();
        guest.write_slice(&[2; 8], GuestAddress(0)).unwrap();
        current.copy_in(&mem, 0).unwrap();
        for (page, bytes) in failed
            .pages()
            .into_iter()
            .map(|p| (p, failed.page(p).unwrap()))
        {
            current.put_if_absent(page, bytes);
        }
        assert_eq!(current.pages(), [0, 1]);
        assert_eq!(&current.page(0).unwrap()[..8], &[2; 8]);
    }
}
