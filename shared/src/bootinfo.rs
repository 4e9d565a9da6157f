//! The boot-info block: everything the app needs to know about its machine.
//!
//! In guest memory at [`BOOT_INFO_ADDR`](crate::layout::BOOT_INFO_ADDR):
//! a fixed 16-byte [`BootInfoHeader`] (magic, ABI version, body length, CRC-32
//! of the body) followed by the [`BootInfo`] body encoded with `postcard`.
//! Every path (Tandem PV, PVH, Multiboot2) ends with the same block.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::checksum::crc32;
use crate::layout::BOOT_INFO_MAX;
use crate::le;
use crate::ABI_VERSION;

/// `"TNDM"` little-endian.
pub const BOOT_INFO_MAGIC: u32 = u32::from_le_bytes(*b"TNDM");
/// Size of [`BootInfoHeader`] in bytes.
pub const HEADER_SIZE: usize = 16;
/// Largest body that fits the reserved area.
// BOOT_INFO_MAX is 0x2000, which fits any usize.
#[allow(clippy::cast_possible_truncation)]
pub const MAX_BODY: usize = BOOT_INFO_MAX as usize - HEADER_SIZE;
/// Most memory-map entries carried.
pub const MAX_MEM_REGIONS: usize = 32;
/// Longest command line, in bytes.
pub const MAX_CMDLINE: usize = 2048;
/// Most device descriptions carried.
pub const MAX_DEVICES: usize = 8;
/// Bytes of the entropy seed.
pub const ENTROPY_SIZE: usize = 32;
/// Longest boot-loader name kept.
pub const MAX_LOADER_NAME: usize = 64;

/// The raw header in front of the body. All fields little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BootInfoHeader {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u32,
    /// [`ABI_VERSION`] of the writer.
    pub abi_version: u32,
    /// Length of the postcard body that follows.
    pub body_len: u32,
    /// CRC-32 of the body.
    pub checksum: u32,
}

const _: () = assert!(core::mem::size_of::<BootInfoHeader>() == HEADER_SIZE);

impl BootInfoHeader {
    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.abi_version.to_le_bytes());
        b[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Parses the header's bytes (no checks beyond the length).
    pub fn from_bytes(b: &[u8]) -> Result<Self, BootInfoError> {
        let b = b.get(..HEADER_SIZE).ok_or(BootInfoError::Truncated)?;
        let word = |at| le::u32_at(b, at).ok_or(BootInfoError::Truncated);
        Ok(Self {
            magic: word(0)?,
            abi_version: word(4)?,
            body_len: word(8)?,
            checksum: word(12)?,
        })
    }
}

/// What kind of memory a region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemKind {
    /// Free RAM the app may use.
    Usable,
    /// Used by the layout, the image or firmware.
    Reserved,
    /// ACPI tables (reclaimable after reading).
    Acpi,
}

/// One entry of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemRegion {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is.
    pub kind: MemKind,
}

/// How the guest was booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootPath {
    /// Entered at CPL3 by the Tandem VMM.
    TandemPv,
    /// PVH direct boot (QEMU `-kernel`, other PVH VMMs).
    Pvh,
    /// Multiboot2 (GRUB).
    Multiboot2,
}

/// A device the VMM offers. Appended to as devices are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    /// A block device served by hypercalls.
    Block {
        /// Device index used in requests.
        id: u32,
        /// Size in 512-byte sectors.
        sectors: u64,
        /// Whether writes are refused.
        read_only: bool,
    },
    /// A virtio device on the virtio-mmio transport, its register window
    /// mapped user read-write and uncached (added in ABI version 3). The
    /// driver reads the device type from the window itself.
    VirtioMmio {
        /// Guest-physical address of the register window.
        base: u64,
        /// Bytes of the window.
        size: u64,
        /// Interrupt line the device raises (a polling driver ignores it).
        irq: u32,
    },
    /// Static IPv4 settings of the network device at `base` (added in ABI
    /// version 4): the guest uses them instead of asking DHCP.
    NetConfig {
        /// The register window of the virtio-net device they are for.
        base: u64,
        /// The interface's IPv4 address.
        address: [u8; 4],
        /// Its prefix length (0 to 32).
        prefix_len: u8,
        /// The default gateway, if any.
        gateway: Option<[u8; 4]>,
        /// A DNS server, if any.
        dns: Option<[u8; 4]>,
    },
}

/// CPU facts, taken by the VMM from KVM (CPL3 `cpuid` reports the outer
/// hypervisor on some hosts, so the guest never asks the CPU itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Number of vCPUs.
    pub count: u32,
    /// TSC frequency in kHz (so the guest never calibrates).
    pub tsc_khz: u64,
    /// CPUID leaf 1 ECX as offered to the guest.
    pub features_ecx: u32,
    /// CPUID leaf 1 EDX as offered to the guest.
    pub features_edx: u32,
}

/// Host boot-trace stamps, already converted to the guest's TSC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostStamps {
    /// [`Phase::VmmStart`](crate::trace::Phase::VmmStart).
    pub vmm_start: u64,
    /// [`Phase::VcpuReady`](crate::trace::Phase::VcpuReady), just before the first run.
    pub vcpu_ready: u64,
}

/// The boot-info body. Fields are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInfo {
    /// How the guest was booted.
    pub boot_path: BootPath,
    /// Memory map, sorted by address.
    pub memory: Vec<MemRegion, MAX_MEM_REGIONS>,
    /// The heap: the usable RAM the app's allocator manages.
    pub heap: MemRegion,
    /// Command line (UTF-8).
    pub cmdline: String<MAX_CMDLINE>,
    /// CPU facts.
    pub cpu: CpuInfo,
    /// Host boot-trace stamps.
    pub host: HostStamps,
    /// Identity of this VM on its host.
    pub vm_id: u64,
    /// Changes on every restore or clone, so the guest can reseed (the
    /// host rewrites the block of a restored VM with the live area's
    /// generation, ABI version 6).
    pub generation: u64,
    /// Devices offered.
    pub devices: Vec<Device, MAX_DEVICES>,
    /// Fresh random bytes for seeding.
    pub entropy: [u8; ENTROPY_SIZE],
    /// Who booted the guest: "tandem", the PVH loader, or the Multiboot2
    /// boot loader's name (GRUB's, say). Added in ABI version 2.
    pub loader: String<MAX_LOADER_NAME>,
}

/// Why a boot-info block was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// Fewer bytes than the header or its body length says.
    Truncated,
    /// The magic is not [`BOOT_INFO_MAGIC`].
    BadMagic(u32),
    /// Written for another ABI version.
    VersionMismatch {
        /// Version in the block.
        found: u32,
        /// Version this side speaks.
        expected: u32,
    },
    /// The body is longer than the reserved area.
    TooLarge(u32),
    /// The body's CRC-32 does not match the header.
    BadChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the body as found.
        computed: u32,
    },
    /// The body is not a valid encoding (or has trailing bytes).
    BadBody,
    /// The output buffer is too small, or the body would not fit the area.
    NoSpace,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => write!(f, "boot-info block is truncated"),
            Self::BadMagic(m) => write!(
                f,
                "boot-info block has bad magic {m:#010x} (expected {BOOT_INFO_MAGIC:#010x})"
            ),
            Self::VersionMismatch { found, expected } => write!(
                f,
                "boot-info block is ABI version {found}, this guest speaks version {expected}"
            ),
            Self::TooLarge(n) => write!(f, "boot-info body of {n} bytes exceeds {MAX_BODY}"),
            Self::BadChecksum { stored, computed } => write!(
                f,
                "boot-info checksum mismatch: header says {stored:#010x}, body has {computed:#010x}"
            ),
            Self::BadBody => write!(f, "boot-info body does not decode"),
            Self::NoSpace => write!(f, "boot-info block does not fit its area"),
        }
    }
}

impl BootInfo {
    /// Encodes header and body into `out`; returns the number of bytes used.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BootInfoError> {
        if out.len() < HEADER_SIZE {
            return Err(BootInfoError::NoSpace);
        }
        let (head, rest) = out.split_at_mut(HEADER_SIZE);
        let limit = rest.len().min(MAX_BODY);
        let body =
            postcard::to_slice(self, &mut rest[..limit]).map_err(|_| BootInfoError::NoSpace)?;
        let body_len = body.len();
        let header = BootInfoHeader {
            magic: BOOT_INFO_MAGIC,
            abi_version: ABI_VERSION,
            body_len: u32::try_from(body_len).map_err(|_| BootInfoError::NoSpace)?,
            checksum: crc32(body),
        };
        head.copy_from_slice(&header.to_bytes());
        Ok(HEADER_SIZE + body_len)
    }

    /// Checks and decodes a block (header and body). `bytes` may extend past the
    /// block's end; nothing past `HEADER_SIZE + body_len` is read.
    pub fn decode(bytes: &[u8]) -> Result<Self, BootInfoError> {
        let header = BootInfoHeader::from_bytes(bytes)?;
        if header.magic != BOOT_INFO_MAGIC {
            return Err(BootInfoError::BadMagic(header.magic));
        }
        if header.abi_version != ABI_VERSION {
            return Err(BootInfoError::VersionMismatch {
                found: header.abi_version,
                expected: ABI_VERSION,
            });
        }
        let len = header.body_len as usize;
        if len > MAX_BODY {
            return Err(BootInfoError::TooLarge(header.body_len));
        }
        let body = bytes
            .get(HEADER_SIZE..HEADER_SIZE + len)
            .ok_or(BootInfoError::Truncated)?;
        let computed = crc32(body);
        if computed != header.checksum {
            return Err(BootInfoError::BadChecksum {
                stored: header.checksum,
                computed,
            });
        }
        match postcard::take_from_bytes::<BootInfo>(body) {
            Ok((info, [])) => Ok(info),
            _ => Err(BootInfoError::BadBody),
        }
    }

    /// The usable RAM regions.
    pub fn usable_memory(&self) -> impl Iterator<Item = &MemRegion> {
        self.memory.iter().filter(|r| r.kind == MemKind::Usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole reserved area, header included.
    const AREA: usize = HEADER_SIZE + MAX_BODY;

    pub(crate) fn sample() -> BootInfo {
        let mut memory = Vec::new();
        memory
            .push(MemRegion {
                start: 0,
                len: 0x40_0000,
                kind: MemKind::Reserved,
            })
            .unwrap();
        memory
            .push(MemRegion {
                start: 0x40_0000,
                len: 0x3C0_0000,
                kind: MemKind::Usable,
            })
            .unwrap();
        BootInfo {
            boot_path: BootPath::TandemPv,
            memory,
            heap: MemRegion {
                start: 0x40_0000,
                len: 0x3C0_0000,
                kind: MemKind::Usable,
            },
            cmdline: String::try_from("hello world").unwrap(),
            cpu: CpuInfo {
                count: 1,
                tsc_khz: 2_000_000,
                features_ecx: 0x8000_0000,
                features_edx: 0x1,
            },
            host: HostStamps {
                vmm_start: 100,
                vcpu_ready: 200,
            },
            vm_id: 7,
            generation: 1,
            devices: Vec::new(),
            entropy: [0xAB; ENTROPY_SIZE],
            loader: String::try_from("tandem").unwrap(),
        }
    }

    #[test]
    fn round_trip() {
        let info = sample();
        let mut buf = [0u8; AREA];
        let n = info.encode(&mut buf).unwrap();
        assert_eq!(BootInfo::decode(&buf[..n]).unwrap(), info);
        // Bytes past the block are ignored.
        assert_eq!(BootInfo::decode(&buf).unwrap(), info);
    }

    #[test]
    fn golden_bytes() {
        let mut buf = [0u8; 256];
        let n = sample().encode(&mut buf).unwrap();
        // Pins the encoding: any change to field order or types changes these
        // bytes and must come with an ABI_VERSION bump.
        let expected: &[u8] = &[
            0x54, 0x4e, 0x44, 0x4d, 0x06, 0x00, 0x00, 0x00, 0x5d, 0x00, 0x00, 0x00, 0x77, 0xe4,
            0xdd, 0xcd, // header
            0x00, // boot_path = TandemPv
            0x02, 0x00, 0x80, 0x80, 0x80, 0x02, 0x01, 0x80, 0x80, 0x80, 0x02, 0x80, 0x80, 0x80,
            0x1e, 0x00, // memory
            0x80, 0x80, 0x80, 0x02, 0x80, 0x80, 0x80, 0x1e, 0x00, // heap
            0x0b, b'h', b'e', b'l', b'l', b'o', b' ', b'w', b'o', b'r', b'l', b'd', // cmdline
            0x01, 0x80, 0x89, 0x7a, 0x80, 0x80, 0x80, 0x80, 0x08, 0x01, // cpu
            0x64, 0xc8, 0x01, // host
            0x07, 0x01, 0x00, // vm_id, generation, devices
        ];
        assert_eq!(&buf[..expected.len()], expected);
        let entropy_end = expected.len() + ENTROPY_SIZE;
        assert_eq!(&buf[expected.len()..entropy_end], &[0xAB; ENTROPY_SIZE]);
        assert_eq!(&buf[entropy_end..n], b"\x06tandem"); // loader
    }

    #[test]
    fn golden_bytes_of_devices() {
        // Variants are numbered in order of appearance: Block 0, VirtioMmio 1,
        // NetConfig 2.
        let mut buf = [0u8; 32];
        let block = Device::Block {
            id: 1,
            sectors: 300,
            read_only: true,
        };
        assert_eq!(
            postcard::to_slice(&block, &mut buf).unwrap(),
            &[0x00, 0x01, 0xac, 0x02, 0x01]
        );
        let net = Device::VirtioMmio {
            base: 0xfeb0_0e00,
            size: 512,
            irq: 12,
        };
        assert_eq!(
            postcard::to_slice(&net, &mut buf).unwrap(),
            &[0x01, 0x80, 0x9c, 0xc0, 0xf5, 0x0f, 0x80, 0x04, 0x0c]
        );
        let config = Device::NetConfig {
            base: 0xfeb0_0000,
            address: [10, 99, 1, 2],
            prefix_len: 24,
            gateway: Some([10, 99, 1, 1]),
            dns: None,
        };
        assert_eq!(
            postcard::to_slice(&config, &mut buf).unwrap(),
            &[0x02, 0x80, 0x80, 0xc0, 0xf5, 0x0f, 10, 99, 1, 2, 24, 0x01, 10, 99, 1, 1, 0x00]
        );
        let mut info = sample();
        info.devices.push(net).unwrap();
        info.devices.push(config).unwrap();
        let mut block_buf = [0u8; AREA];
        let n = info.encode(&mut block_buf).unwrap();
        assert_eq!(BootInfo::decode(&block_buf[..n]).unwrap(), info);
    }

    #[test]
    fn refuses_bad_headers() {
        let mut buf = [0u8; AREA];
        let n = sample().encode(&mut buf).unwrap();

        let mut bad = buf;
        bad[0] ^= 1;
        assert!(matches!(
            BootInfo::decode(&bad),
            Err(BootInfoError::BadMagic(_))
        ));

        let mut bad = buf;
        bad[4..8].copy_from_slice(&(ABI_VERSION + 1).to_le_bytes());
        assert_eq!(
            BootInfo::decode(&bad),
            Err(BootInfoError::VersionMismatch {
                found: ABI_VERSION + 1,
                expected: ABI_VERSION
            })
        );

        let mut bad = buf;
        bad[HEADER_SIZE + 3] ^= 0x40;
        assert!(matches!(
            BootInfo::decode(&bad),
            Err(BootInfoError::BadChecksum { .. })
        ));

        let mut bad = buf;
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            BootInfo::decode(&bad),
            Err(BootInfoError::TooLarge(u32::MAX))
        );

        for cut in 0..n {
            assert!(
                BootInfo::decode(&buf[..cut]).is_err(),
                "accepted a block cut at {cut}"
            );
        }
    }

    #[test]
    fn trailing_body_bytes_are_refused() {
        let mut buf = [0u8; AREA];
        let n = sample().encode(&mut buf).unwrap();
        // Extend the body by one byte and fix the checksum: the decoder must
        // still refuse it (trailing bytes).
        let body_len = u32::try_from(n - HEADER_SIZE + 1).unwrap();
        buf[8..12].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32(&buf[HEADER_SIZE..n + 1]);
        buf[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(BootInfo::decode(&buf), Err(BootInfoError::BadBody));
    }

    #[test]
    // Keeping the low byte of the generator's output is the point.
    #[allow(clippy::cast_possible_truncation)]
    fn random_bodies_never_panic() {
        // xorshift: deterministic, no dependency.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut buf = [0u8; 600];
        for _ in 0..20_000 {
            let len = usize::try_from(next() % (600 - HEADER_SIZE as u64)).unwrap();
            for b in buf[HEADER_SIZE..HEADER_SIZE + len].iter_mut() {
                *b = next() as u8;
            }
            let header = BootInfoHeader {
                magic: BOOT_INFO_MAGIC,
                abi_version: ABI_VERSION,
                body_len: u32::try_from(len).unwrap(),
                checksum: crc32(&buf[HEADER_SIZE..HEADER_SIZE + len]),
            };
            buf[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
            let _ = BootInfo::decode(&buf);
        }
    }

    #[test]
    fn oversized_cmdline_does_not_encode_into_small_area() {
        let mut info = sample();
        info.cmdline.clear();
        for _ in 0..MAX_CMDLINE {
            info.cmdline.push('x').unwrap();
        }
        let mut small = [0u8; 512];
        assert_eq!(info.encode(&mut small), Err(BootInfoError::NoSpace));
        let mut buf = [0u8; AREA];
        let n = info.encode(&mut buf).unwrap();
        assert_eq!(BootInfo::decode(&buf[..n]).unwrap(), info);
    }
}
