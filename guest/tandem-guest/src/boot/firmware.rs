//! What the loader handed over, copied out of its memory before the boot
//! code writes the Tandem layout over whatever the loader left there.

use heapless::{String, Vec};
use tandem_abi::bootinfo::{
    BootPath, MemKind, MemRegion, MAX_CMDLINE, MAX_LOADER_NAME, MAX_MEM_REGIONS,
};
use tandem_abi::pvh::{self, StartInfo, StartInfoError, MEMMAP_ENTRY_SIZE, START_INFO_V1_SIZE};

/// `eax` at the Multiboot2 entry.
pub const MULTIBOOT2_MAGIC: u32 = 0x36D7_6289;
/// Largest Multiboot2 information structure read.
const MAX_MBI: u32 = 64 * 1024;

/// The loader's view of the machine, in Tandem's terms.
pub struct Firmware {
    pub path: BootPath,
    pub memory: Vec<MemRegion, MAX_MEM_REGIONS>,
    pub cmdline: String<MAX_CMDLINE>,
    pub loader: String<MAX_LOADER_NAME>,
    /// Where the loader says the ACPI RSDP is (else it is searched for).
    pub rsdp: Option<u64>,
}

/// Why the loader's information was refused.
pub enum FirmwareError {
    UnknownPath,
    StartInfo(StartInfoError),
    NoMemoryMap,
    Multiboot2Magic(u32),
    Multiboot2Info,
    AddressAbove4G(u64),
}

impl core::fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownPath => write!(f, "entered through an unknown path"),
            Self::StartInfo(e) => write!(f, "{e}"),
            Self::NoMemoryMap => write!(f, "the loader gave no memory map"),
            Self::Multiboot2Magic(m) => write!(
                f,
                "bad Multiboot2 magic {m:#010x} in eax (expected {MULTIBOOT2_MAGIC:#010x}): not started by a Multiboot2 loader"
            ),
            Self::Multiboot2Info => write!(f, "the Multiboot2 information structure does not parse"),
            Self::AddressAbove4G(a) => write!(f, "boot data at {a:#x} lies above the 4 GiB the boot code maps"),
        }
    }
}

/// Physical memory below 4 GiB, through the boot page tables (for the
/// ACPI tables).
pub struct BootMemory;

impl tandem_abi::acpi::PhysRead for BootMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        match phys(addr, buf.len()) {
            Ok(src) => {
                buf.copy_from_slice(src);
                true
            }
            Err(_) => false,
        }
    }
}

/// `len` bytes of physical memory at `addr`, below 4 GiB.
fn phys(addr: u64, len: usize) -> Result<&'static [u8], FirmwareError> {
    let end = addr
        .checked_add(len as u64)
        .ok_or(FirmwareError::AddressAbove4G(addr))?;
    if addr == 0 || end > 1 << 32 {
        return Err(FirmwareError::AddressAbove4G(addr));
    }
    // SAFETY: the boot page tables identity-map the first 4 GiB (user
    // readable); the range lies inside it and is only read, and the boot
    // code writes only the Tandem layout, which the loader's data is
    // copied out of before.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// A NUL-terminated string at `addr`, cut at `MAX_CMDLINE` bytes.
fn c_string(addr: u64) -> Result<String<MAX_CMDLINE>, FirmwareError> {
    let mut out = String::new();
    if addr == 0 {
        return Ok(out);
    }
    let bytes = phys(addr, MAX_CMDLINE)?;
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(MAX_CMDLINE);
    let text = core::str::from_utf8(&bytes[..len]).unwrap_or("");
    let _ = out.push_str(text);
    Ok(out)
}

fn push_region(memory: &mut Vec<MemRegion, MAX_MEM_REGIONS>, r: MemRegion) {
    if r.len != 0 {
        // Regions past MAX_MEM_REGIONS are dropped; the heap comes from the first ones.
        let _ = memory.push(r);
    }
}

/// Reads PVH's `hvm_start_info` at `addr`.
pub fn from_pvh(addr: u64) -> Result<Firmware, FirmwareError> {
    let info =
        StartInfo::parse(phys(addr, START_INFO_V1_SIZE)?).map_err(FirmwareError::StartInfo)?;
    if info.memmap_entries == 0 {
        return Err(FirmwareError::NoMemoryMap);
    }
    let table = phys(info.memmap_paddr, info.memmap_len())?;
    let mut memory = Vec::new();
    for entry in table.chunks_exact(MEMMAP_ENTRY_SIZE) {
        if let Some(r) = pvh::parse_memmap_entry(entry) {
            push_region(&mut memory, r);
        }
    }
    memory.sort_unstable_by_key(|r| r.start);
    let mut loader = String::new();
    let _ = loader.push_str("pvh");
    Ok(Firmware {
        path: BootPath::Pvh,
        memory,
        cmdline: c_string(info.cmdline_paddr)?,
        loader,
        rsdp: (info.rsdp_paddr != 0).then_some(info.rsdp_paddr),
    })
}

/// Reads the Multiboot2 information structure at `addr`.
pub fn from_multiboot2(addr: u64, magic: u64) -> Result<Firmware, FirmwareError> {
    let magic = magic as u32;
    if magic != MULTIBOOT2_MAGIC {
        return Err(FirmwareError::Multiboot2Magic(magic));
    }
    let header = phys(addr, 8)?;
    let total = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if !(8..=MAX_MBI).contains(&total) {
        return Err(FirmwareError::Multiboot2Info);
    }
    phys(addr, total as usize)?;
    // SAFETY: the structure's `total` bytes lie in identity-mapped memory
    // below 4 GiB (checked above), and nothing writes them while it is read.
    let mbi = unsafe {
        multiboot2::BootInformation::load(addr as *const multiboot2::BootInformationHeader)
    }
    .map_err(|_| FirmwareError::Multiboot2Info)?;

    let mut memory = Vec::new();
    let map = mbi.memory_map_tag().ok_or(FirmwareError::NoMemoryMap)?;
    for area in map.memory_areas() {
        let kind = match area.typ() {
            multiboot2::MemoryAreaType::Available => MemKind::Usable,
            multiboot2::MemoryAreaType::AcpiAvailable => MemKind::Acpi,
            _ => MemKind::Reserved,
        };
        push_region(
            &mut memory,
            MemRegion {
                start: area.start_address(),
                len: area.size(),
                kind,
            },
        );
    }
    memory.sort_unstable_by_key(|r| r.start);
    let mut cmdline = String::new();
    if let Some(text) = mbi.command_line_tag().and_then(|t| t.cmdline().ok()) {
        let cut = floor_char_boundary(text, MAX_CMDLINE);
        let _ = cmdline.push_str(&text[..cut]);
    }
    let mut loader = String::new();
    if let Some(name) = mbi.boot_loader_name_tag().and_then(|t| t.name().ok()) {
        let cut = floor_char_boundary(name, MAX_LOADER_NAME);
        let _ = loader.push_str(&name[..cut]);
    }
    Ok(Firmware {
        path: BootPath::Multiboot2,
        memory,
        cmdline,
        loader,
        // GRUB's ACPI tags hold a copy of the RSDP, not its address; on a
        // BIOS machine the search of the BIOS area finds the original.
        rsdp: None,
    })
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = s.len().min(max);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
