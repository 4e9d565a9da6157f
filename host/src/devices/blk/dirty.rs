//! The blocks of a disk the guest wrote since they were last harvested: a
//! dirty-block bitmap kept by the VMM, as QEMU's dirty bitmaps, Hyper-V's
//! RCT and VMware's CBT keep one, for incremental backups of the disk.
//!
//! A block is [`BLOCK_SIZE`] bytes (4 KiB): the guest's page and file-system
//! block size, the unit `kvstore`'s log and `diskbench` write in, so a small
//! write costs a backup point 4 KiB, not the 16 times more a 64 KiB block
//! would; the bitmap is one bit a block (32 KiB for a 1 GiB disk) and a
//! point's block list one number a changed block. The device marks a block
//! when it has written it (after `pwrite` returned), on the vCPU thread, so
//! a harvest between two runs of the vCPU sees exactly the writes the guest
//! had acknowledged: that is the point's flush boundary (what a backup point
//! holds is what a guest's flush before it would have made durable; what the
//! live disk's `fdatasync` makes durable is the live disk's business).

/// Bytes in a block.
pub const BLOCK_SIZE: u64 = 4096;

/// A bit per block of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBlocks {
    words: Vec<u64>,
    blocks: u64,
}

impl DirtyBlocks {
    /// None dirty, for a disk of `bytes` (the last block may be short).
    pub fn new(bytes: u64) -> Self {
        let blocks = blocks_in(bytes);
        let words = usize::try_from(blocks.div_ceil(64)).unwrap_or(0);
        Self {
            words: vec![0; words],
            blocks,
        }
    }

    /// Every block dirty (a base holds the whole disk).
    pub fn all(bytes: u64) -> Self {
        let mut d = Self::new(bytes);
        d.mark(0, bytes);
        d
    }

    /// Blocks on the disk.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Marks the blocks `[offset, offset + len)` touches (clipped to the disk).
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / BLOCK_SIZE;
        let last = offset.saturating_add(len - 1) / BLOCK_SIZE;
        for b in first..=last.min(self.blocks.saturating_sub(1)) {
            let (w, bit) = (b / 64, b % 64);
            if let Some(word) = usize::try_from(w).ok().and_then(|w| self.words.get_mut(w)) {
                *word |= 1 << bit;
            }
        }
    }

    /// How many blocks are dirty.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The dirty blocks, ascending, and none dirty afterwards.
    pub fn take(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        for (w, word) in self.words.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                out.push(w as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        out
    }
}

/// Blocks in a disk of `bytes`.
pub fn blocks_in(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_marks_every_block_it_touches() {
        let mut d = DirtyBlocks::new(64 * BLOCK_SIZE + 512);
        assert_eq!(d.blocks(), 65);
        d.mark(0, 512);
        d.mark(BLOCK_SIZE - 512, 1024);
        d.mark(10 * BLOCK_SIZE, 3 * BLOCK_SIZE);
        d.mark(64 * BLOCK_SIZE, 512);
        d.mark(5 * BLOCK_SIZE, 0);
        assert_eq!(d.count(), 6);
        assert_eq!(d.take(), [0, 1, 10, 11, 12, 64]);
        assert_eq!(d.count(), 0);
        assert!(d.take().is_empty());
    }

    #[test]
    fn marks_stay_on_the_disk() {
        let mut d = DirtyBlocks::new(2 * BLOCK_SIZE);
        d.mark(BLOCK_SIZE, u64::MAX);
        d.mark(u64::MAX - 3, 3);
        assert_eq!(d.take(), [1]);
        let mut all = DirtyBlocks::all(3 * BLOCK_SIZE - 512);
        assert_eq!(all.take(), [0, 1, 2]);
    }
}
