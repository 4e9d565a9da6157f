//! The state file: a fixed 64-byte header, then a `postcard` body.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "TNDMSNAP"
//!      8     4  format version (little-endian)
//!     12     4  architecture: ELF machine number (62 = x86_64)
//!     16     8  body length in bytes
//!     24    32  BLAKE3 digest of the body
//!     56     8  reserved, zero
//!     64     …  body: a postcard-encoded [`SnapshotState`]
//! ```
//!
//! Reading checks, in order: length, magic, format version, architecture,
//! reserved bytes, body length against the file, digest, decoding (no
//! trailing bytes), then every value against what a VM may be
//! ([`SnapshotState::check`]), so that a torn, truncated, bit-flipped,
//! hand-edited, other-version or other-architecture file is refused with an
//! error naming the problem before anything is restored.

use serde::{Deserialize, Serialize};
use tandem_abi::trace::Phase;
use tandem_abi::{layout, le};

use super::chunks::ChunkDigests;
use super::vcpu::VcpuState;
use super::SnapshotError;
use crate::devices::blk::BlkState;
use crate::devices::NetState;

/// The state file's magic.
pub const MAGIC: [u8; 8] = *b"TNDMSNAP";
/// Version of the state file format (and, up to 4, of backup points'
/// metadata, which has its own since: `backup::point::FORMAT_VERSION`);
/// bumped on any change of the body. History: 1, the
/// foundation. 2, [`SnapshotState::net`] appended (the virtio-net
/// device's [`NetState`]), so that VMs with a network device can be
/// snapshotted, restored, cloned and backed up. 3, [`SnapshotState::disks`]
/// appended (each virtio-blk device's [`BlkState`], naming the disk's copy
/// in the snapshot directory). 4, [`SnapshotState::chunks`] appended (a
/// digest per 64 KiB chunk of the memory file that holds data, for
/// `--verify lazy`).
pub const FORMAT_VERSION: u32 = 4;
/// ELF machine number of x86_64, the only architecture Tandem snapshots.
pub const ARCH_X86_64: u32 = 62;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 64;
/// Largest body accepted (the state of one vCPU is a few KiB).
pub const MAX_BODY: u64 = 4 << 20;

/// What a VM was configured with, as far as its guest can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// The app's command line.
    pub cmdline: String,
    /// The VM id handed to the guest.
    pub vm_id: u64,
    /// Cap on console bytes.
    pub console_limit: u64,
    /// TSC frequency the guest was told (it converts ticks with it).
    pub tsc_khz: u64,
    /// CPUID leaf 1 ECX and EDX the guest was told.
    pub cpu_features: (u32, u32),
}

/// The guest's clock and identity at the moment of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// Generation of the VM that was snapshotted.
    pub generation: u64,
    /// Restores its lineage had been through.
    pub restores: u64,
    /// The guest's monotonic clock (TSC plus adjustment) when it froze.
    pub guest_clock: u64,
    /// Host wall clock when it froze, nanoseconds since the Unix epoch.
    pub unix_nanos: u64,
}

/// The boot trace of the VM that was snapshotted (host TSC stamps, 0 = not reached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceState {
    /// TSC frequency of the stamps.
    pub tsc_khz: u64,
    /// One stamp per [`Phase`].
    pub stamps: Vec<u64>,
}

/// Host-side console state. The guest's console buffer is drained before
/// every snapshot, so no text is pending; only the running total is kept
/// (it counts against the console limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Bytes the guest had written.
    pub written: u64,
}

/// The memory file that goes with a state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRef {
    /// Its name inside the snapshot directory (`memory-` and 16 hex digits).
    pub file: String,
    /// Its size: the guest memory size.
    pub size: u64,
    /// Pages holding data (all others are zero and left as holes).
    pub data_pages: u64,
    /// BLAKE3 over every non-zero page, in address order, each preceded by
    /// its page number (little-endian `u64`).
    pub digest: [u8; 32],
}

/// Everything in a state file's body. Fields are only appended, with a
/// [`FORMAT_VERSION`] bump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// `tandem_abi::ABI_VERSION` of the guest in memory.
    pub abi_version: u32,
    /// The VM's configuration.
    pub machine: MachineState,
    /// Every vCPU register set.
    pub vcpu: VcpuState,
    /// Clock and identity.
    pub live: LiveState,
    /// Boot trace of the snapshotted VM.
    pub trace: TraceState,
    /// Console totals.
    pub console: ConsoleState,
    /// The memory file.
    pub memory: MemoryRef,
    /// The virtio-net device, if the VM had one (format version 2).
    pub net: Option<NetState>,
    /// The disks, in order (format version 3).
    pub disks: Vec<BlkState>,
    /// The memory file's chunk digests (format version 4; empty in a
    /// backup point's state, whose pages are checked by its own digests).
    pub chunks: ChunkDigests,
}

/// Whether `name` is a memory file name this format writes: `memory-` and
/// 16 lowercase hex digits, so a state file cannot point outside its directory.
pub fn valid_memory_name(name: &str) -> bool {
    name.strip_prefix("memory-").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn invalid(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(what.into())
}

impl SnapshotState {
    /// Checks every value against what a Tandem VM may be.
    pub fn check(&self) -> Result<(), SnapshotError> {
        if self.abi_version != tandem_abi::ABI_VERSION {
            return Err(SnapshotError::AbiMismatch {
                found: self.abi_version,
                expected: tandem_abi::ABI_VERSION,
            });
        }
        let m = self.machine.mem_size;
        if !(layout::MIN_MEM_SIZE..=layout::MAX_MEM_SIZE).contains(&m)
            || !m.is_multiple_of(layout::LARGE_PAGE_SIZE)
        {
            return Err(invalid(format!("memory size {m} is not one Tandem boots")));
        }
        if self.machine.cmdline.len() > tandem_abi::bootinfo::MAX_CMDLINE {
            return Err(invalid(format!(
                "command line of {} bytes exceeds {}",
                self.machine.cmdline.len(),
                tandem_abi::bootinfo::MAX_CMDLINE
            )));
        }
        if self.machine.tsc_khz == 0 || self.trace.tsc_khz != self.machine.tsc_khz {
            return Err(invalid("TSC frequency is zero or inconsistent"));
        }
        if self.trace.stamps.len() != Phase::COUNT {
            return Err(invalid(format!(
                "boot trace has {} stamps, expected {}",
                self.trace.stamps.len(),
                Phase::COUNT
            )));
        }
        if !valid_memory_name(&self.memory.file) {
            return Err(invalid(format!(
                "memory file name {:?} is not memory-<16 hex digits>",
                self.memory.file
            )));
        }
        if self.memory.size != m {
            return Err(invalid(format!(
                "memory file size {} differs from memory size {m}",
                self.memory.size
            )));
        }
        if self.memory.data_pages > m / layout::PAGE_SIZE {
            return Err(invalid(format!(
                "{} data pages in {m} bytes of memory",
                self.memory.data_pages
            )));
        }
        if let Some(net) = &self.net {
            net.check(m)?;
        }
        if self.disks.len() > crate::devices::blk::MAX_DISKS {
            return Err(invalid(format!("{} disks", self.disks.len())));
        }
        for d in &self.disks {
            d.check(m)?;
        }
        self.chunks.check(m, self.memory.data_pages)?;
        self.vcpu.check()
    }

    /// The whole state file: header and body.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let body = postcard::to_allocvec(self)
            .map_err(|e| SnapshotError::Invalid(format!("state does not encode: {e}")))?;
        Ok(seal(&MAGIC, &body))
    }

    /// Checks and decodes a whole state file.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let body = unseal(&MAGIC, bytes, MAX_BODY, "state file")?;
        let state = match postcard::take_from_bytes::<SnapshotState>(body) {
            Ok((state, [])) => state,
            Ok((_, rest)) => {
                return Err(invalid(format!(
                    "{} trailing bytes after the body",
                    rest.len()
                )))
            }
            Err(e) => return Err(invalid(format!("body does not decode: {e}"))),
        };
        state.check()?;
        Ok(state)
    }
}

/// A header (`magic`, format version, architecture, body length, BLAKE3
/// of the body) in front of `body`.
pub fn seal(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    seal_version(magic, FORMAT_VERSION, body)
}

/// [`seal`] with another format's `version` (backup points have their own).
pub fn seal_version(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(&[0u8; 8]);
    debug_assert_eq!(out.len(), HEADER_SIZE);
    out.extend_from_slice(body);
    out
}

/// Checks a sealed file's header and digest; returns its body.
pub fn unseal<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    max_body: u64,
    what: &'static str,
) -> Result<&'a [u8], SnapshotError> {
    unseal_version(magic, FORMAT_VERSION, bytes, max_body, what)
}

/// [`unseal`] of a file of another format, at `expected` version.
pub fn unseal_version<'a>(
    magic: &[u8; 8],
    expected: u32,
    bytes: &'a [u8],
    max_body: u64,
    what: &'static str,
) -> Result<&'a [u8], SnapshotError> {
    let header: &[u8; HEADER_SIZE] = bytes
        .get(..HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or(SnapshotError::Truncated {
            what,
            expected: HEADER_SIZE as u64,
            found: bytes.len() as u64,
        })?;
    let (found_magic, rest) = header.split_at(8);
    if found_magic != magic {
        return Err(SnapshotError::BadMagic);
    }
    // Offsets inside the fixed-size header: every read succeeds.
    let version = le::u32_at(rest, 0).unwrap_or(0);
    if version != expected {
        return Err(SnapshotError::VersionMismatch {
            found: version,
            expected,
        });
    }
    let arch = le::u32_at(rest, 4).unwrap_or(0);
    if arch != ARCH_X86_64 {
        return Err(SnapshotError::WrongArchitecture { found: arch });
    }
    let body_len = le::u64_at(rest, 8).unwrap_or(0);
    let digest: [u8; 32] = le::array_at(rest, 16).unwrap_or([0; 32]);
    if rest[48..56] != [0u8; 8] {
        return Err(invalid(format!(
            "{what}: reserved header bytes are not zero"
        )));
    }
    if body_len > max_body {
        return Err(invalid(format!(
            "{what}: body length {body_len} exceeds {max_body}"
        )));
    }
    let body = &bytes[HEADER_SIZE..];
    let found = body.len() as u64;
    if found < body_len {
        return Err(SnapshotError::Truncated {
            what,
            expected: HEADER_SIZE as u64 + body_len,
            found: bytes.len() as u64,
        });
    }
    if found > body_len {
        return Err(invalid(format!(
            "{what}: {} bytes follow the {body_len}-byte body",
            found - body_len
        )));
    }
    if blake3::hash(body).as_bytes() != &digest {
        return Err(SnapshotError::BadDigest { what });
    }
    Ok(body)
}
