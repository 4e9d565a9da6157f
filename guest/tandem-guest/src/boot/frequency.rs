//! The TSC frequency when no Tandem VMM says it: CPUID leaf 0x15 (crystal
//! clock), else the hypervisor leaf 0x40000010 (kHz), else KVM's
//! paravirtual clock (kvmclock's scale factor is the TSC frequency), and
//! only as the last resort a 10 ms count against PIT channel 0.
//!
//! CPUID is read at CPL0 (where it answers for the machine's own
//! hypervisor) by `boot_cpl0`; this runs at CPL3 on its results.

use x86_64::instructions::port::Port;

use super::{kvmclock, load, FACTS};

/// PIT input clock, in Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window, in milliseconds.
const CALIBRATION_MS: u64 = 10;

pub fn tsc_khz() -> u64 {
    from_cpuid()
        .or_else(|| kvmclock().and_then(|(mul, shift)| from_kvmclock(mul, shift)))
        .unwrap_or_else(from_pit)
}

fn from_cpuid() -> Option<u64> {
    let [den, num, hz] = FACTS.leaf15.each_ref().map(load);
    if den != 0 && num != 0 && hz != 0 {
        return Some(u64::from(hz) * u64::from(num) / u64::from(den) / 1000);
    }
    let khz = load(&FACTS.hv_tsc_khz);
    (khz != 0).then_some(u64::from(khz))
}

/// kvmclock converts TSC ticks to nanoseconds as
/// `ns = ((ticks << shift) * mul) >> 32` (a right shift when `shift` is
/// negative), so the TSC runs at `10^6 * 2^32 / (mul * 2^shift)` kHz.
pub(crate) fn from_kvmclock(mul: u32, shift: i8) -> Option<u64> {
    if mul == 0 || !(-32..=32).contains(&shift) {
        return None;
    }
    let scaled = 1_000_000u128 << 32;
    let khz = if shift >= 0 {
        (scaled / u128::from(mul)) >> shift
    } else {
        (scaled << -shift) / u128::from(mul)
    };
    u64::try_from(khz).ok().filter(|&k| k != 0)
}

fn pit_count(command: &mut Port<u8>, channel0: &mut Port<u8>) -> u16 {
    // SAFETY: latching and reading PIT channel 0 only reads its counter.
    unsafe {
        command.write(0x00); // latch channel 0
        let lo = channel0.read();
        let hi = channel0.read();
        u16::from_le_bytes([lo, hi])
    }
}

/// Counts TSC ticks while PIT channel 0 (1.193182 MHz, latched reads, no
/// speaker port needed: microvm has none) counts down 10 ms.
fn from_pit() -> u64 {
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel0: Port<u8> = Port::new(0x40);
    let window = PIT_HZ * CALIBRATION_MS / 1000;
    // SAFETY: the PIT is a standard PC device, used by nothing else during
    // boot (interrupts are off); mode 2 with the largest reload value.
    unsafe {
        command.write(0x34);
        channel0.write(0xFF);
        channel0.write(0xFF);
    }
    let first = pit_count(&mut command, &mut channel0);
    let start = crate::tsc::rdtsc();
    let mut last = first;
    let mut elapsed = 0u64;
    // Bounded: a machine without a PIT still boots (with a guess).
    for _ in 0..2_000_000 {
        let now = pit_count(&mut command, &mut channel0);
        // The counter counts down and wraps at 0 (every 55 ms, far longer
        // than between two reads).
        elapsed += u64::from(last.wrapping_sub(now));
        last = now;
        if elapsed >= window {
            break;
        }
    }
    let ticks = crate::tsc::rdtsc() - start;
    if elapsed < window / 2 || ticks == 0 {
        return 1_000_000; // no working PIT: assume 1 GHz
    }
    ticks * PIT_HZ / elapsed / 1000
}
