//! Fuzz bodies: one function per decoder of untrusted bytes, shared by the
//! cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and the regression
//! replay that `cargo xtask test` runs on stable Rust over every saved input
//! (`fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`).
//!
//! Each body must return normally for every input: an error is the expected
//! answer to hostile bytes; a panic, a hang or unbounded growth is a bug.

use std::cell::RefCell;

use tandem_abi::layout;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A fuzz body.
pub type Body = fn(&[u8]);

/// Every target, by the name `cargo xtask fuzz` and `fuzz/` use.
pub const TARGETS: &[(&str, Body)] = &[
    ("boot_info", boot_info),
    ("hypercall_request", hypercall_request),
    ("hypercall_guest", hypercall_guest),
    ("elf_image", elf_image),
    ("pvh_start_info", pvh_start_info),
    ("snapshot_state", snapshot_state),
    ("backup_point", backup_point),
    ("fleet_config", fleet_config),
    ("acpi_tables", acpi_tables),
    ("virtio_cmdline", virtio_cmdline),
    ("blk_request", blk_request),
    ("kvlog_replay", kvlog_replay),
    ("working_set", working_set),
    ("virtio_net_queue", virtio_net_queue),
];

mod net_queue;
pub use net_queue::virtio_net_queue;

/// The body of target `name`.
pub fn target(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The virtio-blk device's request decisions: a chain's shape, then its
/// header, against a disk. Input: a flags byte (bit 0: read-only), the
/// disk's sectors (8 bytes), the 16-byte header, then descriptors of 13
/// bytes each (address, length, flags with bit 0 device-writable).
pub fn blk_request(data: &[u8]) {
    use crate::devices::blk::request::{self, Action, Desc, Geometry, MAX_REQUEST_BYTES};
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let le = |at: usize, n: usize| (0..n).fold(0u64, |v, i| v | u64::from(byte(at + i)) << (8 * i));
    let disk = Geometry {
        read_only: byte(0) & 1 != 0,
        sectors: le(1, 8),
    };
    let mut header = request::Header::default();
    for (i, b) in header.iter_mut().enumerate() {
        *b = byte(9 + i);
    }
    let descs: Vec<Desc> = data
        .get(25..)
        .unwrap_or(&[])
        .chunks_exact(13)
        .map(|c| Desc {
            addr: u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
            len: u32::from_le_bytes(c[8..12].try_into().unwrap_or_default()),
            write_only: c[12] & 1 != 0,
        })
        .collect();
    let app = (layout::HEAP_ADDR, 64 << 20);
    let Ok(shape) = request::shape(0, 0, &descs, app) else {
        return;
    };
    assert!(shape.readable + shape.writable <= request::HEADER_LEN + MAX_REQUEST_BYTES + 1);
    let in_disk = |sector: u64, len: u64| {
        len.is_multiple_of(request::SECTOR_SIZE)
            && len <= MAX_REQUEST_BYTES
            && sector
                .checked_add(len / request::SECTOR_SIZE)
                .is_some_and(|end| end <= disk.sectors)
    };
    match request::parse(0, 0, &header, shape, disk) {
        Ok(Action::Read { sector, len }) => {
            assert!(in_disk(sector, len));
            assert_eq!(shape.writable, len + 1);
        }
        Ok(Action::Write { sector, len }) => {
            assert!(!disk.read_only && in_disk(sector, len));
            assert_eq!(shape.readable, len + request::HEADER_LEN);
        }
        Ok(Action::GetId { len }) => assert!(len < shape.writable),
        Ok(Action::Flush | Action::Decline { .. }) | Err(_) => {}
    }
}

/// The kvstore app's log replay over arbitrary disk bytes
/// ([`tandem_kvlog::fuzz_replay`]).
pub fn kvlog_replay(data: &[u8]) {
    tandem_kvlog::fuzz_replay(data);
}

/// The guest's decoder of `virtio_mmio.device=` parameters on the command
/// line a loader hands it, and the stripping of them from the app's line.
pub fn virtio_cmdline(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    for spec in tandem_abi::virtio_mmio::devices(&line).flatten() {
        // What decodes is a window the page tables may map.
        assert!(spec.size > 0 && spec.size <= tandem_abi::virtio_mmio::MAX_WINDOW);
        assert!(spec.end() <= tandem_abi::virtio_mmio::WINDOW_LIMIT);
    }
    let mut rest = String::new();
    assert!(tandem_abi::virtio_mmio::strip_devices(&line, &mut rest));
    assert!(rest.len() <= line.len());
    assert_eq!(tandem_abi::virtio_mmio::devices(&rest).count(), 0);
}

/// The guest's boot-info decoder (header, checksum, postcard body), compiled
/// for the host. The body is tried both as found and re-sealed with a valid
/// header, so the fuzzer reaches the body decoder past the checksum.
pub fn boot_info(data: &[u8]) {
    let _ = tandem_abi::bootinfo::BootInfo::decode(data);
    let mut block = Vec::with_capacity(data.len() + 16);
    let header = tandem_abi::bootinfo::BootInfoHeader {
        magic: tandem_abi::bootinfo::BOOT_INFO_MAGIC,
        abi_version: tandem_abi::ABI_VERSION,
        body_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
        checksum: tandem_abi::checksum::crc32(data),
    };
    block.extend_from_slice(&header.to_bytes());
    block.extend_from_slice(data);
    if let Ok(info) = tandem_abi::bootinfo::BootInfo::decode(&block) {
        // What decodes must encode and decode again to the same value.
        // (Not to the same bytes: postcard accepts overlong varints, which
        // re-encode shorter; the checksum covers the bytes as written.)
        let mut again = vec![0u8; block.len() + 64];
        if let Ok(n) = info.encode(&mut again) {
            let back = tandem_abi::bootinfo::BootInfo::decode(&again[..n]);
            assert_eq!(back.as_ref(), Ok(&info), "boot info does not round-trip");
        }
    }
}

/// Hypercall request records and replies, as bytes.
pub fn hypercall_request(data: &[u8]) {
    use tandem_abi::hypercall::{Reply, Request};
    if let Some(prefix) = data.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) {
        if let Ok(len) = Request::body_len(prefix) {
            if let Some(body) = data.get(4..4 + len as usize) {
                let _ = Request::decode(body);
            }
        }
    }
    if let Ok(req) = Request::decode(data) {
        let mut out = [0u8; 64];
        if let Some(n) = req.encode_record(&mut out) {
            assert_eq!(
                Request::decode(&out[4..n]),
                Ok(req),
                "request does not round-trip"
            );
        }
    }
    let _ = Reply::decode_record(data);
}

// Layout addresses are below 4 GiB (a `const` assert in tandem_abi::layout).
const HYPERCALL_ADDR32: u32 = {
    assert!(layout::HYPERCALL_ADDR <= u32::MAX as u64);
    #[allow(clippy::cast_possible_truncation)]
    let a = layout::HYPERCALL_ADDR as u32;
    a
};
const CONSOLE_CAPACITY32: u32 = {
    assert!(layout::CONSOLE_CAPACITY <= u32::MAX as u64);
    #[allow(clippy::cast_possible_truncation)]
    let c = layout::CONSOLE_CAPACITY as u32;
    c
};

thread_local! {
    /// One small guest, reused: allocating guest memory per input would
    /// make the fuzzer measure mmap.
    static GUEST: RefCell<Option<GuestMemoryMmap>> = const { RefCell::new(None) };
}

/// The host's hypercall service against guest memory the input controls:
/// the port, the value written (an address), the bytes at the request
/// address, at a reply buffer, and the console fill level.
pub fn hypercall_guest(data: &[u8]) {
    let mem_size = layout::MIN_MEM_SIZE;
    GUEST.with(|cell| {
        let mut slot = cell.borrow_mut();
        let mem = slot.get_or_insert_with(|| {
            let size = usize::try_from(mem_size).unwrap_or(usize::MAX);
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap_or_default()
        });
        let word = |at: usize| tandem_abi::le::u32_at(data, at).unwrap_or(0);
        let port = u16::try_from(word(0) & 0xF).map_or(0, |p| 0xE00 + p);
        let width = [1usize, 2, 4, 4][(word(0) >> 4) as usize & 3];
        // Addresses: mostly the hypercall buffer, sometimes anywhere.
        let value = if word(4) & 1 == 0 {
            HYPERCALL_ADDR32
        } else {
            word(8)
        };
        let console_level = word(12) % (CONSOLE_CAPACITY32 + 64);
        let payload = data.get(16..).unwrap_or(&[]);
        let _ = mem.write_slice(&[0u8; 4096], GuestAddress(layout::HYPERCALL_ADDR));
        let _ = mem.write_slice(payload, GuestAddress(u64::from(value)));
        let _ = mem.write_obj(console_level, GuestAddress(layout::CONSOLE_ADDR));
        let _ = crate::hypercall::drain_console(mem);
        let bytes = value.to_le_bytes();
        let _ = crate::hypercall::serve(mem, mem_size, port, &bytes[..width], || (1, 2));
    });
}

/// The ELF loader's checks.
pub fn elf_image(data: &[u8]) {
    if let Ok(image) = crate::image::Image::parse(data) {
        // What passes must satisfy what the VMM relies on.
        for s in &image.segments {
            assert!(s.addr >= layout::IMAGE_ADDR && s.addr + s.mem_size <= layout::IMAGE_END);
            assert!(s.data.len() as u64 <= s.mem_size);
        }
        let mut pt = vec![0u8; tandem_abi::cpu::pt_area::SIZE];
        let _ = tandem_abi::cpu::build_page_tables(
            &mut pt,
            layout::MIN_MEM_SIZE,
            &image.segment_maps(),
            &[],
        );
    }
}

/// PVH start info and memory-map entries (the guest's decoder).
pub fn pvh_start_info(data: &[u8]) {
    let _ = tandem_abi::pvh::StartInfo::parse(data);
    for chunk in data.chunks(tandem_abi::pvh::MEMMAP_ENTRY_SIZE) {
        let _ = tandem_abi::pvh::parse_memmap_entry(chunk);
    }
}

/// Snapshot state files, as found and with the body re-sealed (so the body
/// decoder and its consistency checks are reached past the digest).
pub fn snapshot_state(data: &[u8]) {
    use crate::snapshot::format::{seal, SnapshotState, MAGIC};
    let _ = SnapshotState::decode(data);
    let _ = SnapshotState::decode(&seal(&MAGIC, data));
}

/// Working-set files of a 64 MiB snapshot, as found and with the checksum
/// made valid (so the range, duplicate and binding checks are reached).
/// What decodes lists distinct pages inside memory.
pub fn working_set(data: &[u8]) {
    use crate::snapshot::WorkingSet;
    const MEM: u64 = 64 << 20;
    let digest = [7u8; 32];
    let mut fixed = data.to_vec();
    if fixed.len() >= 32 {
        let n = fixed.len() - 32;
        let sum = blake3::hash(&fixed[..n]);
        fixed[n..].copy_from_slice(sum.as_bytes());
    }
    for bytes in [data, &fixed[..]] {
        if let Ok(ws) = WorkingSet::decode(bytes, MEM, &digest) {
            let mut pages = ws.pages.clone();
            pages.sort_unstable();
            pages.dedup();
            assert_eq!(pages.len(), ws.pages.len());
            assert!(pages
                .iter()
                .all(|&p| u64::from(p) < MEM / layout::PAGE_SIZE));
        }
    }
}

/// Backup point metadata, as found and re-sealed.
pub fn backup_point(data: &[u8]) {
    use crate::backup::point::{PointMeta, FORMAT_VERSION, MAGIC};
    let _ = PointMeta::decode(data);
    let sealed = crate::snapshot::format::seal_version(&MAGIC, FORMAT_VERSION, data);
    let _ = PointMeta::decode(&sealed);
}

/// Fleet files (TOML, then every check), with paths under a folder that
/// does not exist, so no image is read.
pub fn fleet_config(data: &[u8]) {
    use crate::fleet::config::{FleetSpec, LimitOverrides};
    let text = String::from_utf8_lossy(data);
    let overrides = LimitOverrides {
        max_concurrent_boots: Some(2),
        memory_budget: Some(1 << 30),
    };
    let _ = FleetSpec::parse(
        &text,
        std::path::Path::new("/nonexistent/tandem-fuzz"),
        overrides,
    );
}

/// The guest's ACPI power-off decoder over a small physical memory image
/// the input controls, placed at the start of the BIOS area so that the
/// RSDP scan finds what the input puts there; tried scanned and with the
/// RSDP given at the image's start. What it returns must be a well-formed
/// write.
pub fn acpi_tables(data: &[u8]) {
    use tandem_abi::acpi::{
        find_poweroff, AddressSpace, MemImage, PowerOff, PM1_SLP_EN, PM1_SLP_TYP_SHIFT,
        RSDP_SCAN_START, SLEEP_CONTROL_SLP_EN, SLEEP_CONTROL_SLP_TYP_SHIFT,
    };
    let mem = MemImage {
        base: RSDP_SCAN_START,
        bytes: data,
    };
    for rsdp in [None, Some(RSDP_SCAN_START)] {
        match find_poweroff(&mem, rsdp) {
            Ok(PowerOff::Pm1Control { a, b }) => {
                for w in std::iter::once(a).chain(b) {
                    assert_eq!(w.value & !(7 << PM1_SLP_TYP_SHIFT | PM1_SLP_EN), 0);
                    assert_ne!(w.value & PM1_SLP_EN, 0, "PM1 write without SLP_EN");
                }
            }
            Ok(PowerOff::SleepControl { space, addr, value }) => {
                assert_eq!(
                    value & !(7 << SLEEP_CONTROL_SLP_TYP_SHIFT | SLEEP_CONTROL_SLP_EN),
                    0
                );
                assert_ne!(
                    value & SLEEP_CONTROL_SLP_EN,
                    0,
                    "sleep control without SLP_EN"
                );
                assert!(space == AddressSpace::Memory || addr <= 0xFFFF);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// A physical memory image from the start of the BIOS area (where the
/// `acpi_tables` body maps its input) holding ACPI tables as QEMU builds
/// them: q35-like (RSDP 1.0, RSDT, an ACPI 1.0 FADT with PM1a at 0x604,
/// `\_S5 {0,0,0,0}`) or, with `hw_reduced`, microvm-like (RSDP 2.0, XSDT,
/// a hardware-reduced FADT with the GED sleep register at 0xfea00200,
/// `\_S5 {5,0,0,0}`).
fn acpi_seed(hw_reduced: bool) -> Vec<u8> {
    let at = |offset: usize| tandem_abi::acpi::RSDP_SCAN_START + offset as u64;
    let at32 = |offset: usize| u32::try_from(at(offset)).unwrap_or(0).to_le_bytes();
    let seal = |t: &mut [u8], at: usize| {
        t[at] = 0;
        t[at] = t.iter().fold(0u8, |s, b| s.wrapping_sub(*b));
    };
    let table = |sig: &[u8; 4], body: &[u8]| {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        let len = u32::try_from(36 + body.len()).unwrap_or(0);
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[8] = 2;
        t[10..16].copy_from_slice(b"TANDEM");
        t.extend_from_slice(body);
        seal(&mut t, 9);
        t
    };
    let (root_at, fadt_at, dsdt_at) = (0x40, 0x80, 0x200);
    let mut rsdp = vec![0u8; if hw_reduced { 36 } else { 20 }];
    rsdp[..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(b"TANDEM");
    let mut fadt = vec![0u8; if hw_reduced { 268 } else { 116 }];
    let (root, s5_package): (Vec<u8>, &[u8]) = if hw_reduced {
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&at(root_at).to_le_bytes());
        seal(&mut rsdp[..20], 8);
        seal(&mut rsdp, 32);
        fadt[112..116].copy_from_slice(&(1u32 << 20).to_le_bytes()); // HW_REDUCED_ACPI
        fadt[140..148].copy_from_slice(&at(dsdt_at).to_le_bytes()); // X_DSDT
        fadt[245] = 8; // SLEEP_CONTROL_REG: memory, 8 bits
        fadt[248..256].copy_from_slice(&0xFEA0_0200u64.to_le_bytes());
        let xsdt = table(b"XSDT", &at(fadt_at).to_le_bytes());
        (xsdt, &[0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00])
    } else {
        rsdp[16..20].copy_from_slice(&at32(root_at));
        seal(&mut rsdp, 8);
        fadt[40..44].copy_from_slice(&at32(dsdt_at)); // DSDT
        fadt[64..68].copy_from_slice(&0x604u32.to_le_bytes()); // PM1a_CNT_BLK
        let rsdt = table(b"RSDT", &at32(fadt_at));
        (rsdt, &[0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00])
    };
    let fadt = table(b"FACP", &fadt[36..]);
    let mut aml = vec![0x08, 0x5C]; // Name (\_S5, Package (4) {...})
    aml.extend_from_slice(b"_S5_");
    aml.extend_from_slice(s5_package);
    let dsdt = table(b"DSDT", &aml);
    let mut mem = vec![0u8; dsdt_at + dsdt.len()];
    for (offset, bytes) in [
        (0, &rsdp),
        (root_at, &root),
        (fadt_at, &fadt),
        (dsdt_at, &dsdt),
    ] {
        mem[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    mem
}

/// Valid inputs for the targets that can be built without a VM: the
/// starting points of a fuzzing run (`cargo xtask fuzz` writes them to
/// `fuzz/corpus/<target>/seed-*`; real images, snapshots and backups are
/// added from files).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    use tandem_abi::bootinfo::*;
    use tandem_abi::hypercall::{GuestBuf, Reply, Request};
    let record = |r: &Request| {
        let mut b = [0u8; 64];
        let n = r.encode_record(&mut b).unwrap_or(0);
        b[..n].to_vec()
    };
    let requests = [
        Request::Flush,
        Request::Exit { code: 3 },
        Request::Ready,
        Request::WallClock {
            reply: GuestBuf {
                addr: layout::HYPERCALL_ADDR + 0x1000,
                len: 64,
            },
        },
    ];
    match name {
        "boot_info" => {
            let mut memory = heapless::Vec::new();
            let _ = memory.push(MemRegion {
                start: 0,
                len: layout::HEAP_ADDR,
                kind: MemKind::Reserved,
            });
            let heap = MemRegion {
                start: layout::HEAP_ADDR,
                len: 60 << 20,
                kind: MemKind::Usable,
            };
            let _ = memory.push(heap);
            let info = BootInfo {
                boot_path: BootPath::Pvh,
                memory,
                heap,
                cmdline: heapless::String::try_from("seed cmdline").unwrap_or_default(),
                cpu: CpuInfo {
                    count: 1,
                    tsc_khz: 2_600_000,
                    features_ecx: 1,
                    features_edx: 2,
                },
                host: HostStamps {
                    vmm_start: 1,
                    vcpu_ready: 2,
                },
                vm_id: 7,
                generation: 1,
                devices: heapless::Vec::new(),
                entropy: [9; ENTROPY_SIZE],
                loader: heapless::String::try_from("GRUB").unwrap_or_default(),
            };
            let mut block = vec![0u8; usize::try_from(layout::BOOT_INFO_MAX).unwrap_or(0)];
            let n = info.encode(&mut block).unwrap_or(0);
            block.truncate(n);
            let body = block.get(16..).unwrap_or(&[]).to_vec();
            vec![block, body]
        }
        "hypercall_request" => {
            let mut v: Vec<Vec<u8>> = requests.iter().map(record).collect();
            let mut reply = [0u8; 32];
            let n = Reply::WallClock {
                unix_nanos: 5,
                tsc: 6,
            }
            .encode_record(&mut reply)
            .unwrap_or(0);
            v.push(reply[..n].to_vec());
            v
        }
        "hypercall_guest" => requests
            .iter()
            .map(|r| {
                // port 0xE00, width 4; value: the hypercall buffer; console level 5.
                let mut input = vec![0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0];
                input.extend(record(r));
                input
            })
            .collect(),
        "pvh_start_info" => {
            let mut b = vec![0u8; 56];
            b[0..4].copy_from_slice(&tandem_abi::pvh::START_INFO_MAGIC.to_le_bytes());
            b[4..8].copy_from_slice(&1u32.to_le_bytes());
            b[40..48].copy_from_slice(&0x8000u64.to_le_bytes());
            b[48..52].copy_from_slice(&2u32.to_le_bytes());
            let mut e = vec![0u8; 24];
            e[8..16].copy_from_slice(&(128u64 << 20).to_le_bytes());
            e[16..20].copy_from_slice(&1u32.to_le_bytes());
            let mut both = b.clone();
            both.extend(&e);
            vec![b, both]
        }
        "fleet_config" => vec![
            b"[defaults]\nimage = \"hello\"\nmemory = \"8M\"\n\n[[vm]]\nname = \"db\"\npriority = 10\n\n[[vm]]\nname = \"api\"\nafter = [\"db\"]\nrestart = \"on-failure\"\nmax_restarts = 3\nbackoff = \"10ms\"\n".to_vec(),
            b"[[vm]]\nname = \"a\"\nafter = [\"b\"]\n[[vm]]\nname = \"b\"\nafter = [\"a\"]\n".to_vec(),
        ],
        "acpi_tables" => vec![acpi_seed(false), acpi_seed(true)],
        "blk_request" => {
            // A 1 MiB disk; chains in the app's memory.
            let at = layout::HEAP_ADDR;
            let seed = |flags: u8, kind: u32, sector: u64, descs: &[(u64, u32, u8)]| {
                let mut b = vec![flags];
                b.extend(2048u64.to_le_bytes());
                b.extend(kind.to_le_bytes());
                b.extend(0u32.to_le_bytes());
                b.extend(sector.to_le_bytes());
                for &(addr, len, w) in descs {
                    b.extend(addr.to_le_bytes());
                    b.extend(len.to_le_bytes());
                    b.push(w);
                }
                b
            };
            let read = [(at, 16, 0), (at + 4096, 4096, 1), (at + 64, 1, 1)];
            let write = [(at, 16, 0), (at + 4096, 512, 0), (at + 64, 1, 1)];
            let status = [(at, 16, 0), (at + 64, 1, 1)];
            vec![
                seed(0, 0, 8, &read),
                seed(0, 1, 2047, &write),
                seed(1, 1, 0, &write),
                seed(0, 4, 0, &status),
                seed(0, 8, 0, &[(at, 16, 0), (at + 64, 21, 1)]),
                seed(0, 0, 2047, &read),
            ]
        }
        "kvlog_replay" => {
            use tandem_kvlog::{encode, Record};
            let mut log = encode(0, &Record::Put { key: b"a", value: b"1" });
            log.extend(encode(1, &Record::Put { key: b"b", value: &[7u8; 700] }));
            log.extend(encode(2, &Record::Del { key: b"a" }));
            let mut torn = log.clone();
            torn.truncate(log.len() - 512 - 100);
            vec![log, torn]
        }
        "working_set" => vec![
            crate::snapshot::WorkingSet::encode(&[5, 1, 16383, 1024], 64 << 20, &[7; 32]),
            crate::snapshot::WorkingSet::encode(&[3, 4, 3], 64 << 20, &[7; 32]),
        ],
        "virtio_net_queue" => net_queue::seeds(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_survives_small_inputs() {
        let mut s: u64 = 0x0123_4567_89AB_CDEF;
        for (name, f) in TARGETS {
            for len in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        s.to_le_bytes()[0]
                    })
                    .collect();
                f(&bytes);
            }
            assert!(target(name).is_some());
            for seed in seeds(name) {
                f(&seed);
            }
        }
    }

    #[test]
    fn seeds_are_valid_inputs() {
        let bi = seeds("boot_info");
        assert!(tandem_abi::bootinfo::BootInfo::decode(&bi[0]).is_ok());
        for r in seeds("hypercall_request").iter().take(4) {
            assert!(tandem_abi::hypercall::Request::decode(&r[4..]).is_ok());
        }
        assert!(tandem_abi::pvh::StartInfo::parse(&seeds("pvh_start_info")[0]).is_ok());
        use tandem_abi::acpi::{find_poweroff, AddressSpace, MemImage, PowerOff, RSDP_SCAN_START};
        let acpi = seeds("acpi_tables");
        let found = |bytes: &[u8]| {
            find_poweroff(
                &MemImage {
                    base: RSDP_SCAN_START,
                    bytes,
                },
                None,
            )
        };
        assert!(
            matches!(found(&acpi[0]), Ok(PowerOff::Pm1Control { a, .. }) if a.port == 0x604 && a.value == 0x2000)
        );
        assert_eq!(
            found(&acpi[1]).ok(),
            Some(PowerOff::SleepControl {
                space: AddressSpace::Memory,
                addr: 0xFEA0_0200,
                value: 0x34
            })
        );
    }
}
