//! Random bytes for seeds: boot-info entropy, a restored VM's generation,
//! fresh file names. A leaf: it uses nothing else of the crate, so every
//! module may take randomness from it without an import circle.

/// Fills `buf` from `getrandom`, or from the TSC if that fails: entropy is
/// a seed, not a key, and a boot must not fail for want of it.
pub(crate) fn fill_random(buf: &mut [u8]) {
    // The system call itself, not libc's wrapper: a static musl build with
    // fat LTO resolved the wrapper (a weak symbol) to address 0.
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getrandom,
            buf.as_mut_ptr(),
            buf.len(),
            libc::GRND_NONBLOCK,
        )
    };
    if usize::try_from(n).ok() != Some(buf.len()) {
        for (i, b) in buf.iter_mut().enumerate() {
            // Keeping only the low byte is the point.
            #[allow(clippy::cast_possible_truncation)]
            let byte = (tsc() >> (i % 8)) as u8;
            *b = byte;
        }
    }
}

/// The time-stamp counter (`tandem-tsc`'s, as everywhere).
fn tsc() -> u64 {
    tandem_tsc::rdtsc()
}

#[cfg(test)]
mod tests {
    use super::fill_random;

    #[test]
    fn fills_the_whole_buffer() {
        // 64 bytes all zero after a fill would be a broken source.
        let mut b = [0u8; 64];
        fill_random(&mut b);
        assert!(b.iter().any(|&x| x != 0));
        let mut c = [0u8; 64];
        fill_random(&mut c);
        assert_ne!(b, c);
    }
}
