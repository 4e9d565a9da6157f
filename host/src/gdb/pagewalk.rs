//! Guest-virtual to guest-physical addresses through the guest's own page
//! tables (4-level, 4 KiB, 2 MiB and 1 GiB pages), for the debugger's
//! memory reads and writes. The tables are guest memory, hence hostile:
//! every entry is read through a bounds-checked accessor, and an address
//! the tables do not map present is refused, never guessed.

/// Guest-physical memory, read one little-endian `u64` at a time.
pub trait PhysMem {
    /// The `u64` at `gpa`, or `None` outside guest memory.
    fn read_u64(&self, gpa: u64) -> Option<u64>;
}

impl PhysMem for vm_memory::GuestMemoryMmap {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        use vm_memory::Bytes;
        self.read_obj(vm_memory::GuestAddress(gpa)).ok()
    }
}

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical-address bits of an entry (51:12).
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Where `gva` lies in guest-physical memory and how many bytes from there
/// its page still covers, if the tables at `cr3` map it present.
pub fn translate(mem: &impl PhysMem, cr3: u64, gva: u64) -> Option<(u64, u64)> {
    // Only canonical addresses have a translation.
    let top = gva >> 47;
    if top != 0 && top != 0x1_FFFF {
        return None;
    }
    let mut table = cr3 & ADDR_MASK;
    for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
        let index = (gva >> shift) & 0x1FF;
        let entry = mem.read_u64(table.checked_add(index * 8)?)?;
        if entry & PRESENT == 0 {
            return None;
        }
        let large = level != 4 && level != 1 && entry & PAGE_SIZE_BIT != 0;
        if level == 1 || large {
            let size = 1u64 << shift;
            let base = entry & ADDR_MASK & !(size - 1);
            let offset = gva & (size - 1);
            return Some((base + offset, size - offset));
        }
        table = entry & ADDR_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<u64, u64>);
    impl PhysMem for Fake {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            self.0
                .get(&gpa)
                .copied()
                .or(if gpa < 0x10_0000 { Some(0) } else { None })
        }
    }

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000:
    /// 4 KiB page 0x5000 -> 0x5000, 2 MiB page 0x20_0000 -> 0x20_0000,
    /// 1 GiB page at 1 GiB -> 0x4000_0000.
    fn tables() -> Fake {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2000 | 3);
        m.insert(0x2000, 0x3000 | 3);
        m.insert(0x2008, 0x4000_0000 | PAGE_SIZE_BIT | 3);
        m.insert(0x3000, 0x4000 | 3);
        m.insert(0x3008, 0x20_0000 | PAGE_SIZE_BIT | 3);
        m.insert(0x4000 + 5 * 8, 0x5000 | 5);
        Fake(m)
    }

    #[test]
    fn pages_of_every_size_translate() {
        let t = tables();
        assert_eq!(
            translate(&t, 0x1000, 0x5123),
            Some((0x5123, 0x1000 - 0x123))
        );
        assert_eq!(
            translate(&t, 0x1000, 0x20_0010),
            Some((0x20_0010, 0x20_0000 - 0x10))
        );
        assert_eq!(
            translate(&t, 0x1000, 0x4000_0008),
            Some((0x4000_0008, (1 << 30) - 8))
        );
    }

    #[test]
    fn what_is_not_mapped_is_refused() {
        let t = tables();
        assert_eq!(translate(&t, 0x1000, 0), None); // null page: PTE 0 not present
        assert_eq!(translate(&t, 0x1000, 0x6000), None);
        assert_eq!(translate(&t, 0x1000, 0x8000_0000), None); // PDPT entry 2
        assert_eq!(translate(&t, 0x1000, 1 << 40), None); // PML4 entry 2
        assert_eq!(translate(&t, 0x1000, 0x8000_0000_0000), None); // not canonical
        assert_eq!(translate(&t, 0x1000, u64::MAX), None);
        // Tables pointing outside guest memory end the walk.
        let mut bad = tables();
        bad.0.insert(0x1000, 0xFFFF_FFFF_F000 | 3);
        assert_eq!(translate(&bad, 0x1000, 0x5000), None);
        assert_eq!(translate(&t, 0xFFFF_FFFF_F000, 0x5000), None);
    }
}
