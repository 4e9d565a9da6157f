//! The ELF note through which a Tandem image declares its ABI.
//!
//! The guest library emits one note of type [`NT_TANDEM_ABI`] with name
//! [`NOTE_NAME`] in a `PT_NOTE` segment. Its descriptor is [`AbiNote`]. The
//! host reads it before loading anything and refuses an image of another
//! ABI version, naming both versions.

use crate::le;

/// Note name, NUL-terminated (`namesz` = 7).
pub const NOTE_NAME: &[u8] = b"Tandem\0";
/// Note type of the ABI note.
pub const NT_TANDEM_ABI: u32 = 1;
/// Size of the note descriptor in bytes.
pub const NOTE_DESC_SIZE: usize = 16;
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
}
