//! Little-endian fields of byte buffers, read with bounds checks: a field
//! that runs past the end of the buffer (or whose offset overflows) is
//! `None`, never a panic. Every decoder of bytes from the other side (ELF
//! images, ACPI tables, PVH start info, notes, snapshot files) reads its
//! integers through these.

/// The `N` bytes at `at`, or `None` if any of them is outside `b`.
pub fn array_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The little-endian `u16` at `at`.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    array_at(b, at).map(u16::from_le_bytes)
}

/// The little-endian `u32` at `at`.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    array_at(b, at).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `at`.
pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    array_at(b, at).map(u64::from_le_bytes)
}

/// The little-endian `i64` at `at`.
pub fn i64_at(b: &[u8], at: usize) -> Option<i64> {
    array_at(b, at).map(i64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_and_refuses_outside() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&b, 0), Some(0x0201));
        assert_eq!(u32_at(&b, 1), Some(0x0504_0302));
        assert_eq!(u64_at(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(i64_at(&[0xFF; 8], 0), Some(-1));
        assert_eq!(u64_at(&b, 2), None);
        assert_eq!(u32_at(&b, usize::MAX), None);
        assert_eq!(array_at::<0>(&b, 9), Some([]));
        assert_eq!(array_at::<1>(&b, 9), None);
    }
}
