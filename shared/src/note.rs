//! The ELF notes through which a Tandem image declares its ABI and the
//! devices it needs.
//!
//! The guest library emits one note of type [`NT_TANDEM_ABI`] with name
//! [`NOTE_NAME`] in a `PT_NOTE` segment. Its descriptor is [`AbiNote`]. The
//! host reads it before loading anything and refuses an image of another
//! ABI version, naming both versions.
//!
//! An app that uses devices adds a second note, of type
//! [`NT_TANDEM_DEVICES`] (the guest's `devices!` macro): its descriptor,
//! [`DevicesNote`], is the device manifest, the set of device kinds the app
//! needs. An image without one needs no devices. The Tandem VMM refuses a
//! run that lacks a declared device or offers an undeclared one.

use core::fmt;

use crate::le;

/// Note name, NUL-terminated (`namesz` = 7).
pub const NOTE_NAME: &[u8] = b"Tandem\0";
/// Note type of the ABI note.
pub const NT_TANDEM_ABI: u32 = 1;
/// Size of the note descriptor in bytes.
pub const NOTE_DESC_SIZE: usize = 16;
/// Note type of the device manifest (same name, [`NOTE_NAME`]).
pub const NT_TANDEM_DEVICES: u32 = 2;
/// Size of the device manifest's descriptor in bytes.
pub const DEVICES_DESC_SIZE: usize = 8;
/// The device manifest's layout version, the first field of its descriptor.
pub const DEVICES_VERSION: u32 = 1;
/// `p_flags` bit (in the OS-specific range) marking the segment that holds the
/// guest's CPL0 code: the host maps it supervisor-only, so it runs with SMEP
/// and an app cannot read or patch it.
pub const PF_TANDEM_KERNEL: u32 = 0x0010_0000;
/// `p_flags` bit marking the scratch segment of the PVH and Multiboot2
/// trampolines (boot page tables and stack, no file bytes). The Tandem VMM
/// neither loads nor maps it.
pub const PF_TANDEM_BOOT: u32 = 0x0020_0000;
/// Distance between two exception entry stubs.
pub const EXCEPTION_STUB_STRIDE: u64 = 16;
/// Number of exception vectors with stubs (the architectural exceptions).
pub const EXCEPTION_VECTORS: u64 = 32;
/// Number of stubs in the table: one per exception. (There is no gate open
/// to CPL3: a CPL3 `int` takes #UD on some hosts, so an app that must stop
/// the machine without a Tandem VMM does it through a recognised `ud2`.)
pub const STUB_COUNT: u64 = EXCEPTION_VECTORS;

/// The note descriptor. Little-endian, fields only appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct AbiNote {
    /// [`ABI_VERSION`](crate::ABI_VERSION) the image was built against.
    pub abi_version: u32,
    /// Reserved, 0.
    pub flags: u32,
    /// Guest address of the stub for vector 0; stub `v` is at
    /// `exception_stubs + v * EXCEPTION_STUB_STRIDE`.
    pub exception_stubs: u64,
}

const _: () = assert!(core::mem::size_of::<AbiNote>() == NOTE_DESC_SIZE);

impl AbiNote {
    /// Parses a descriptor; `None` if it is shorter than [`NOTE_DESC_SIZE`].
    /// Longer descriptors are accepted (fields appended by later versions).
    pub fn parse(desc: &[u8]) -> Option<Self> {
        let d = desc.get(..NOTE_DESC_SIZE)?;
        Some(Self {
            abi_version: le::u32_at(d, 0)?,
            flags: le::u32_at(d, 4)?,
            exception_stubs: le::u64_at(d, 8)?,
        })
    }

    /// The descriptor's bytes.
    pub fn to_bytes(&self) -> [u8; NOTE_DESC_SIZE] {
        let mut b = [0u8; NOTE_DESC_SIZE];
        b[0..4].copy_from_slice(&self.abi_version.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.exception_stubs.to_le_bytes());
        b
    }
}

/// A kind of device an image can declare; its bit in [`DeviceSet`] is
/// `1 << kind as u32`. Only appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A virtio-net device (bit 0).
    Net = 0,
    /// A virtio-blk disk (bit 1): the Tandem VMM's `--disk`.
    Block = 1,
}

impl DeviceKind {
    /// Every kind, in bit order.
    pub const ALL: [DeviceKind; 2] = [DeviceKind::Net, DeviceKind::Block];

    /// Its bit in a [`DeviceSet`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// Its name in the guest's `devices!` macro (`net`).
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::Net => "net",
            DeviceKind::Block => "block",
        }
    }

    /// What it is, for messages ("a network device").
    pub const fn noun(self) -> &'static str {
        match self {
            DeviceKind::Net => "a network device",
            DeviceKind::Block => "a block device",
        }
    }
}

/// A set of device kinds: bit `k` is [`DeviceKind`] `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceSet(u32);

impl DeviceSet {
    /// No devices.
    pub const NONE: DeviceSet = DeviceSet(0);
    /// The bits of every [`DeviceKind`].
    pub const KNOWN: u32 = DeviceKind::Net.bit() | DeviceKind::Block.bit();

    /// The set with the bits of [`KNOWN`](Self::KNOWN) in `bits`; the
    /// others are dropped (check them first with [`DevicesNote::parse`]).
    pub const fn from_known_bits(bits: u32) -> Self {
        DeviceSet(bits & Self::KNOWN)
    }

    /// The set holding `kinds`.
    pub const fn of(kinds: &[DeviceKind]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < kinds.len() {
            bits |= kinds[i].bit();
            i += 1;
        }
        DeviceSet(bits)
    }

    /// Its bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether it holds `kind`.
    pub const fn contains(self, kind: DeviceKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether it holds no device.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Its kinds, in bit order.
    pub fn kinds(self) -> impl Iterator<Item = DeviceKind> {
        DeviceKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

/// The device manifest's descriptor. Little-endian; a later layout bumps
/// [`DEVICES_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicesNote {
    /// [`DEVICES_VERSION`].
    pub version: u32,
    /// The devices the image needs.
    pub devices: DeviceSet,
}

/// Why a device manifest was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicesNoteError {
    /// The descriptor is not [`DEVICES_DESC_SIZE`] bytes.
    Size(usize),
    /// A layout version this side does not read.
    Version(u32),
    /// Bits outside [`DeviceSet::KNOWN`].
    UnknownDevices(u32),
}

impl fmt::Display for DevicesNoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Size(n) => write!(f, "its descriptor is {n} bytes, not {DEVICES_DESC_SIZE}"),
            Self::Version(v) => write!(
                f,
                "manifest version {v}, this VMM reads version {DEVICES_VERSION}"
            ),
            Self::UnknownDevices(bits) => {
                f.write_str("it declares unknown device bit")?;
                if bits.count_ones() > 1 {
                    f.write_str("s")?;
                }
                let mut first = true;
                for b in (0..32).filter(|b| bits & (1 << b) != 0) {
                    write!(f, "{}{b}", if first { " " } else { ", " })?;
                    first = false;
                }
                f.write_str(" (this VMM knows")?;
                for (i, k) in DeviceKind::ALL.into_iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{} = bit {}", k.name(), k as u32)?;
                }
                f.write_str(")")
            }
        }
    }
}

impl DevicesNote {
    /// The manifest declaring `devices`.
    pub const fn new(devices: DeviceSet) -> Self {
        Self {
            version: DEVICES_VERSION,
            devices,
        }
    }

    /// Parses a descriptor: exactly [`DEVICES_DESC_SIZE`] bytes, version
    /// [`DEVICES_VERSION`], no bit outside [`DeviceSet::KNOWN`].
    pub fn parse(desc: &[u8]) -> Result<Self, DevicesNoteError> {
        if desc.len() != DEVICES_DESC_SIZE {
            return Err(DevicesNoteError::Size(desc.len()));
        }
        let version = le::u32_at(desc, 0).ok_or(DevicesNoteError::Size(desc.len()))?;
        let bits = le::u32_at(desc, 4).ok_or(DevicesNoteError::Size(desc.len()))?;
        if version != DEVICES_VERSION {
            return Err(DevicesNoteError::Version(version));
        }
        if bits & !DeviceSet::KNOWN != 0 {
            return Err(DevicesNoteError::UnknownDevices(bits & !DeviceSet::KNOWN));
        }
        Ok(Self::new(DeviceSet::from_known_bits(bits)))
    }

    /// The descriptor's bytes.
    pub fn to_bytes(&self) -> [u8; DEVICES_DESC_SIZE] {
        let mut b = [0u8; DEVICES_DESC_SIZE];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..8].copy_from_slice(&self.devices.bits().to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short() {
        let n = AbiNote {
            abi_version: 1,
            flags: 0,
            exception_stubs: 0x20_1000,
        };
        assert_eq!(AbiNote::parse(&n.to_bytes()), Some(n));
        assert_eq!(AbiNote::parse(&n.to_bytes()[..15]), None);
        assert_eq!(
            n.to_bytes(),
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x20, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn device_manifest_golden_bytes() {
        assert_eq!(DeviceKind::Net.bit(), 1);
        assert_eq!(DeviceKind::Block.bit(), 2);
        assert_eq!(NT_TANDEM_DEVICES, 2);
        let net = DevicesNote::new(DeviceSet::of(&[DeviceKind::Net]));
        assert_eq!(net.to_bytes(), [1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(DevicesNote::parse(&net.to_bytes()), Ok(net));
        let both = DevicesNote::new(DeviceSet::of(&DeviceKind::ALL));
        assert_eq!(both.to_bytes(), [1, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(DevicesNote::parse(&both.to_bytes()), Ok(both));
        let none = DevicesNote::new(DeviceSet::NONE);
        assert_eq!(none.to_bytes(), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(DevicesNote::parse(&none.to_bytes())
            .unwrap()
            .devices
            .is_empty());
        let kinds: [DeviceKind; 2] = [DeviceKind::Net, DeviceKind::Block];
        assert!(both.devices.kinds().eq(kinds));
        assert!(net.devices.kinds().eq([DeviceKind::Net]));
    }

    #[test]
    fn hostile_device_manifests_are_refused_by_name() {
        extern crate std;
        use std::string::ToString;
        for len in [0, 4, 7, 9, 16] {
            assert_eq!(
                DevicesNote::parse(&[1u8; 16][..len]),
                Err(DevicesNoteError::Size(len))
            );
        }
        assert_eq!(
            DevicesNote::parse(&[2, 0, 0, 0, 1, 0, 0, 0]),
            Err(DevicesNoteError::Version(2))
        );
        assert_eq!(
            DevicesNote::parse(&[0, 0, 0, 0, 1, 0, 0, 0]),
            Err(DevicesNoteError::Version(0))
        );
        let e = DevicesNote::parse(&[1, 0, 0, 0, 0x25, 0, 0, 0x80]).unwrap_err();
        assert_eq!(e, DevicesNoteError::UnknownDevices(0x8000_0024));
        assert_eq!(
            e.to_string(),
            "it declares unknown device bits 2, 5, 31 (this VMM knows net = bit 0, block = bit 1)"
        );
        assert_eq!(
            DevicesNoteError::UnknownDevices(4).to_string(),
            "it declares unknown device bit 2 (this VMM knows net = bit 0, block = bit 1)"
        );
        assert_eq!(
            DevicesNoteError::Version(7).to_string(),
            "manifest version 7, this VMM reads version 1"
        );
        assert_eq!(
            DevicesNoteError::Size(3).to_string(),
            "its descriptor is 3 bytes, not 8"
        );
        // Every 8-byte descriptor either parses into known bits or is refused.
        for bits in (0..32).map(|b| 1u32 << b) {
            let mut d = [1, 0, 0, 0, 0, 0, 0, 0];
            d[4..].copy_from_slice(&bits.to_le_bytes());
            match DevicesNote::parse(&d) {
                Ok(n) => assert_eq!(n.devices.bits(), bits),
                Err(e) => assert_eq!(e, DevicesNoteError::UnknownDevices(bits)),
            }
        }
    }
}
