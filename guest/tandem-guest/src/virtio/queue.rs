//! A split virtqueue (virtio 1.2, 2.7) in one region laid out as the legacy
//! transport requires (descriptors, available ring, then the used ring on
//! the next page), which the modern transport accepts as well.
//!
//! The driver owns the descriptors: each descriptor `i` always points at
//! buffer `i` of its queue, and is either the driver's or in flight (made
//! available to the device). A used entry is accepted only if it names a
//! descriptor in flight, with a length the buffer holds, and only as many
//! entries as were in flight.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use super::dma::DmaRegion;
use super::mmio::{DeviceError, LEGACY_PAGE};

/// Descriptor flag: the chain goes on at `next`.
const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes the buffer.
pub(crate) const DESC_F_WRITE: u16 = 2;
/// Available-ring flag: the driver wants no interrupt (it polls).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device needs no notification now.
const USED_F_NO_NOTIFY: u16 = 1;

const DESC_SIZE: usize = 16;

/// Where each part of a queue of `size` entries lies in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLayout {
    pub size: u16,
    pub avail: usize,
    pub used: usize,
    pub total: usize,
}

impl QueueLayout {
    /// The legacy layout of a queue of `size` entries (a power of two).
    pub(crate) fn new(size: u16) -> Self {
        let n = usize::from(size);
        let page = LEGACY_PAGE as usize;
        let avail = DESC_SIZE * n;
        // flags, idx, ring, used_event
        let used = (avail + 6 + 2 * n).next_multiple_of(page);
        // flags, idx, ring of (id, len), avail_event
        let total = (used + 6 + 8 * n).next_multiple_of(page);
        Self {
            size,
            avail,
            used,
            total,
        }
    }
}

/// One queue: its ring region, which descriptors are in flight, and how
/// far the driver has read the used ring.
pub(crate) struct Virtqueue {
    index: u16,
    layout: QueueLayout,
    ring: DmaRegion,
    in_flight: Vec<bool>,
    in_flight_count: u16,
    avail_idx: u16,
    last_used: u16,
    kick: bool,
}

impl Virtqueue {
    pub(crate) fn new(index: u16, layout: QueueLayout) -> Result<Self, DeviceError> {
        let ring = DmaRegion::new(layout.total).ok_or(DeviceError::OutOfMemory)?;
        ring.write_u16(layout.avail, AVAIL_F_NO_INTERRUPT);
        Ok(Self {
            index,
            layout,
            ring,
            in_flight: vec![false; usize::from(layout.size)],
            in_flight_count: 0,
            avail_idx: 0,
            last_used: 0,
            kick: false,
        })
    }

    pub(crate) fn size(&self) -> u16 {
        self.layout.size
    }
    pub(crate) fn desc_addr(&self) -> u64 {
        self.ring.phys(0)
    }
    pub(crate) fn avail_addr(&self) -> u64 {
        self.ring.phys(self.layout.avail)
    }
    pub(crate) fn used_addr(&self) -> u64 {
        self.ring.phys(self.layout.used)
    }

    /// Makes descriptor `id` (pointing at `len` bytes at `addr`)
    /// available to the device. The descriptor is rewritten every time, so
    /// nothing the device may have scribbled on it survives.
    pub(crate) fn push(&mut self, id: u16, addr: u64, len: u32, flags: u16) {
        let slot = usize::from(id);
        if slot >= self.in_flight.len() || self.in_flight[slot] {
            return;
        }
        let d = slot * DESC_SIZE;
        self.ring.write_u64(d, addr);
        self.ring.write_u32(d + 8, len);
        self.ring.write_u16(d + 12, flags);
        self.ring.write_u16(d + 14, 0);
        let ring_slot = usize::from(self.avail_idx % self.layout.size);
        self.ring
            .write_u16(self.layout.avail + 4 + 2 * ring_slot, id);
        // The descriptor and ring entry must be visible before the index.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ring.write_u16(self.layout.avail + 2, self.avail_idx);
        self.in_flight[slot] = true;
        self.in_flight_count += 1;
        self.kick = true;
    }

    /// Makes the chain of `bufs` (`(addr, len, flags)` each) available,
    /// in descriptors `head`, `head + 1`, ...: only `head` is then in
    /// flight (and named by the used entry); the others belong to it.
    /// Ignored if the descriptors do not fit or `head` is in flight.
    pub(crate) fn push_chain(&mut self, head: u16, bufs: &[(u64, u32, u16)]) {
        let first = usize::from(head);
        let Some(end) = first.checked_add(bufs.len()) else {
            return;
        };
        if bufs.is_empty() || end > self.in_flight.len() || self.in_flight[first] {
            return;
        }
        for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
            let d = (first + i) * DESC_SIZE;
            let last = i + 1 == bufs.len();
            self.ring.write_u64(d, addr);
            self.ring.write_u32(d + 8, len);
            self.ring
                .write_u16(d + 12, if last { flags } else { flags | DESC_F_NEXT });
            // `end` is at most the queue size, a u16.
            self.ring
                .write_u16(d + 14, if last { 0 } else { (first + i + 1) as u16 });
        }
        let ring_slot = usize::from(self.avail_idx % self.layout.size);
        self.ring
            .write_u16(self.layout.avail + 4 + 2 * ring_slot, head);
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ring.write_u16(self.layout.avail + 2, self.avail_idx);
        self.in_flight[first] = true;
        self.in_flight_count += 1;
        self.kick = true;
    }

    /// The next used entry, checked: `Ok(None)` when there is none.
    /// `capacity` is the most bytes a buffer of this queue holds.
    pub(crate) fn pop_used(&mut self, capacity: u32) -> Result<Option<(u16, u32)>, DeviceError> {
        let used_idx = self.ring.read_u16(self.layout.used + 2);
        let ahead = used_idx.wrapping_sub(self.last_used);
        if ahead == 0 {
            return Ok(None);
        }
        if ahead > self.in_flight_count {
            return Err(DeviceError::BadUsedIndex {
                queue: self.index,
                ahead,
            });
        }
        // Read the entry only after seeing the index that covers it.
        fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used % self.layout.size);
        let entry = self.layout.used + 4 + 8 * slot;
        let id = self.ring.read_u32(entry);
        let len = self.ring.read_u32(entry + 4);
        let index = usize::try_from(id)
            .ok()
            .filter(|&i| i < self.in_flight.len());
        let Some(i) = index.filter(|&i| self.in_flight[i]) else {
            return Err(DeviceError::BadDescriptor {
                queue: self.index,
                id,
            });
        };
        if len > capacity {
            return Err(DeviceError::BadLength {
                queue: self.index,
                len,
            });
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight[i] = false;
        self.in_flight_count -= 1;
        // `i` is below the queue size, a u16.
        Ok(Some((i as u16, len)))
    }

    /// Whether the device should be told about new buffers: some were
    /// pushed since the last time, and the device has not said it needs
    /// no notification. Clears the pending mark.
    pub(crate) fn take_kick(&mut self) -> bool {
        if !core::mem::take(&mut self.kick) {
            return false;
        }
        fence(Ordering::SeqCst);
        self.ring.read_u16(self.layout.used) & USED_F_NO_NOTIFY == 0
    }
}
