//! Virtio-mmio devices as a loader describes them on the kernel command
//! line: `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`, the format Linux
//! reads and QEMU microvm appends (with `acpi=off`) for every virtio-mmio
//! transport that has a device behind it, for example
//! `virtio_mmio.device=512@0xfeb00e00:12`.
//!
//! The command line comes from whoever booted the guest, so the decoder
//! checks every number: sizes take Linux's `K`/`M`/`G` suffixes, addresses
//! are hexadecimal (`0x`), octal (leading `0`) or decimal, nothing may
//! overflow, and a window must be non-empty, at most [`MAX_WINDOW`] bytes
//! and end at or below 4 GiB (where the Tandem page tables can map it).

/// The parameter that names one device.
pub const DEVICE_PARAM: &str = "virtio_mmio.device=";
/// Largest register window accepted (a virtio-mmio transport needs 0x200).
pub const MAX_WINDOW: u64 = 0x1_0000;
/// Windows must end at or below this address.
pub const WINDOW_LIMIT: u64 = 1 << 32;

/// One device's register window and interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceSpec {
    /// Guest-physical address of the register window.
    pub base: u64,
    /// Bytes of the window.
    pub size: u64,
    /// Interrupt line (GSI) the device raises; unused by a polling guest.
    pub irq: u32,
}

/// Why a `virtio_mmio.device=` parameter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpecError {
    /// Not `<size>@<base>:<irq>[:<id>]`.
    Syntax,
    /// A number does not parse or does not fit.
    Number,
    /// The window is empty or larger than [`MAX_WINDOW`].
    BadSize(u64),
    /// The window does not end at or below [`WINDOW_LIMIT`].
    OutOfRange(u64),
}

impl core::fmt::Display for DeviceSpecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Syntax => write!(f, "not <size>@<base>:<irq>[:<id>]"),
            Self::Number => write!(f, "a number does not parse or overflows"),
            Self::BadSize(n) => write!(
                f,
                "window of {n:#x} bytes (must be 1 to {MAX_WINDOW:#x} bytes)"
            ),
            Self::OutOfRange(a) => write!(f, "window at {a:#x} does not end below 4 GiB"),
        }
    }
}

/// Splits off the leading unsigned number of `s` (C's `strtoull` with base
/// 0: `0x` hex, leading `0` octal, else decimal).
fn number(s: &str) -> Result<(u64, &str), DeviceSpecError> {
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (16, hex)
    } else if s.len() > 1 && s.starts_with('0') && s.as_bytes()[1].is_ascii_digit() {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return Err(DeviceSpecError::Number);
    }
    let value = u64::from_str_radix(&digits[..end], radix).map_err(|_| DeviceSpecError::Number)?;
    Ok((value, &digits[end..]))
}

/// A size with an optional binary suffix (Linux's `memparse`).
fn size(s: &str) -> Result<(u64, &str), DeviceSpecError> {
    let (value, rest) = number(s)?;
    let shift = match rest.as_bytes().first() {
        Some(b'k' | b'K') => 10,
        Some(b'm' | b'M') => 20,
        Some(b'g' | b'G') => 30,
        _ => return Ok((value, rest)),
    };
    let scaled = value
        .checked_mul(1 << shift)
        .ok_or(DeviceSpecError::Number)?;
    Ok((scaled, &rest[1..]))
}

impl MmioDeviceSpec {
    /// Decodes the value of one parameter (what follows [`DEVICE_PARAM`]).
    pub fn parse(value: &str) -> Result<Self, DeviceSpecError> {
        let (size, rest) = size(value)?;
        let rest = rest.strip_prefix('@').ok_or(DeviceSpecError::Syntax)?;
        let (base, rest) = number(rest)?;
        let rest = rest.strip_prefix(':').ok_or(DeviceSpecError::Syntax)?;
        let (irq, rest) = number(rest)?;
        let irq = u32::try_from(irq).map_err(|_| DeviceSpecError::Number)?;
        // An optional platform-device id, as Linux accepts; unused here.
        let rest = match rest.strip_prefix(':') {
            Some(id) => number(id)?.1,
            None => rest,
        };
        if !rest.is_empty() {
            return Err(DeviceSpecError::Syntax);
        }
        if size == 0 || size > MAX_WINDOW {
            return Err(DeviceSpecError::BadSize(size));
        }
        match base.checked_add(size) {
            Some(end) if end <= WINDOW_LIMIT => Ok(Self { base, size, irq }),
            _ => Err(DeviceSpecError::OutOfRange(base)),
        }
    }

    /// One past the window's last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// Every `virtio_mmio.device=` parameter of `cmdline`, decoded, in order.
pub fn devices(
    cmdline: &str,
) -> impl Iterator<Item = Result<MmioDeviceSpec, DeviceSpecError>> + '_ {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(DEVICE_PARAM))
        .map(MmioDeviceSpec::parse)
}

/// `cmdline` without its `virtio_mmio.device=` parameters (each with the
/// whitespace before it), so the app sees the command line it was given;
/// the devices reach it as boot-info device descriptions instead.
/// Appends to `out`; false if `out` ran out of room.
pub fn strip_devices(cmdline: &str, out: &mut impl core::fmt::Write) -> bool {
    let mut rest = cmdline;
    let mut at_start = true;
    while !rest.is_empty() {
        let ws = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_whitespace())
                .len();
        let (space, tail) = rest.split_at(ws);
        let word_len = tail
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(tail.len());
        let (word, after) = tail.split_at(word_len);
        if word.starts_with(DEVICE_PARAM) {
            // A parameter at the very start takes the whitespace after it.
            if at_start {
                let ws_after = after.len()
                    - after
                        .trim_start_matches(|c: char| c.is_ascii_whitespace())
                        .len();
                rest = &after[ws_after..];
                continue;
            }
        } else if out
            .write_str(space)
            .and_then(|()| out.write_str(word))
            .is_err()
        {
            return false;
        }
        at_start = false;
        rest = after;
    }
    true
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn all(cmdline: &str) -> Vec<Result<MmioDeviceSpec, DeviceSpecError>> {
        devices(cmdline).collect()
    }

    fn strip(cmdline: &str) -> String {
        let mut out = String::new();
        assert!(strip_devices(cmdline, &mut out));
        out
    }

    #[test]
    fn decodes_what_qemu_microvm_appends() {
        // QEMU 7.2 microvm, acpi=off, two virtio-net devices, `-append "a b"`.
        let line = "a b virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11";
        assert_eq!(
            all(line),
            [
                Ok(MmioDeviceSpec {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                }),
                Ok(MmioDeviceSpec {
                    base: 0xfeb0_0c00,
                    size: 512,
                    irq: 11
                }),
            ]
        );
        assert_eq!(strip(line), "a b");
        assert_eq!(strip(" virtio_mmio.device=512@0xfeb00e00:12"), "");
        assert_eq!(strip("virtio_mmio.device=512@0x1000:1  x"), "x");
        assert_eq!(strip("a  b"), "a  b");
        assert!(all("a b virtio_mmio.devices=1@2:3").is_empty());
    }

    #[test]
    fn numbers_as_linux_reads_them() {
        let spec = MmioDeviceSpec::parse("4K@0xd0000000:5:3").unwrap();
        assert_eq!((spec.base, spec.size, spec.irq), (0xd000_0000, 4096, 5));
        assert_eq!(spec.end(), 0xd000_1000);
        assert_eq!(MmioDeviceSpec::parse("0x200@4096:0").unwrap().base, 4096);
        assert_eq!(MmioDeviceSpec::parse("01000@010:1").unwrap().size, 512);
        assert_eq!(
            MmioDeviceSpec::parse("0@0x1000:1"),
            Err(DeviceSpecError::BadSize(0))
        );
        assert_eq!(
            MmioDeviceSpec::parse("1M@0x1000:1"),
            Err(DeviceSpecError::BadSize(1 << 20))
        );
    }

    #[test]
    fn refuses_malformed_and_hostile_values() {
        use DeviceSpecError::*;
        for (value, error) in [
            ("", Number),
            ("512", Syntax),
            ("512@", Number),
            ("512@0xfeb00e00", Syntax),
            ("512@0xfeb00e00:", Number),
            ("512@0xfeb00e00:12x", Syntax),
            ("512@0xfeb00e00:12:", Number),
            ("512@0x:12", Number),
            ("512@0xfeb00e00:4294967296", Number),
            ("99999999999999999999@1:1", Number),
            ("17179869184G@0x1000:1", Number),
            ("512@0xffffffffffffffff:1", OutOfRange(u64::MAX)),
            ("512@0xfffffff00:1", OutOfRange(0xf_ffff_ff00)),
            ("512@0xfffffe01:1", OutOfRange(0xffff_fe01)),
            ("-1@0x1000:1", Number),
        ] {
            assert_eq!(MmioDeviceSpec::parse(value), Err(error), "{value:?}");
        }
        // Ends exactly at 4 GiB: accepted.
        assert!(MmioDeviceSpec::parse("512@0xfffffe00:1").is_ok());
    }

    #[test]
    fn strip_reports_a_full_buffer() {
        let mut small: heapless::String<3> = heapless::String::new();
        assert!(!strip_devices(
            "abcd virtio_mmio.device=512@0x1000:1",
            &mut small
        ));
        let mut fits: heapless::String<3> = heapless::String::new();
        assert!(strip_devices(
            "abc virtio_mmio.device=512@0x1000:1",
            &mut fits
        ));
        assert_eq!(fits, "abc");
    }

    #[test]
    fn random_input_never_panics() {
        let mut s: u64 = 0x1234_5678_9ABC_DEF1;
        let alphabet = b"0123456789abcdefxX@:KMG virtio_mmio.device=";
        for _ in 0..20_000 {
            let mut line = String::new();
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = usize::try_from(s % 48).unwrap();
            for i in 0..len {
                let pick = usize::try_from((s >> (i % 50)) % alphabet.len() as u64).unwrap();
                line.push(char::from(alphabet[pick]));
            }
            let _ = all(&line);
            let _ = strip(&line);
            let _ = MmioDeviceSpec::parse(&line);
        }
    }
}
