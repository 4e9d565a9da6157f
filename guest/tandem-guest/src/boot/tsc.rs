//! The TSC frequency when no Tandem VMM says it: CPUID leaf 0x15 (crystal
//! clock), else the hypervisor leaf 0x40000010 (kHz), else a 10 ms count
//! against PIT channel 2.

use core::arch::x86_64::__cpuid;
use x86_64::instructions::port::Port;

/// PIT input clock, in Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration window, in milliseconds.
const CALIBRATION_MS: u64 = 10;

pub fn frequency_khz() -> u64 {
    from_cpuid().unwrap_or_else(from_pit)
}

fn from_cpuid() -> Option<u64> {
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000);
        }
    }
    let hv = __cpuid(0x4000_0000).eax;
    if (0x4000_0010..0x5000_0000).contains(&hv) {
        let khz = __cpuid(0x4000_0010).eax;
        if khz != 0 {
            return Some(u64::from(khz));
        }
    }
    None
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
    let start = crate::time::rdtsc();
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
    let ticks = crate::time::rdtsc() - start;
    if elapsed < window / 2 || ticks == 0 {
        return 1_000_000; // no working PIT: assume 1 GHz
    }
    ticks * PIT_HZ / elapsed / 1000
}
