//! Refusals of the state file format, one per kind of damage.

use super::*;
use tandem_abi::trace::Phase;

pub(crate) fn sample() -> SnapshotState {
    SnapshotState {
        abi_version: tandem_abi::ABI_VERSION,
        machine: MachineState {
            mem_size: 64 << 20,
            cmdline: "count".into(),
            vm_id: 3,
            console_limit: 1 << 20,
            tsc_khz: 2_000_000,
            cpu_features: (1, 2),
        },
        vcpu: vcpu::tests::sample(),
        live: LiveState {
            generation: 0,
            restores: 0,
            guest_clock: 1234,
            unix_nanos: 5678,
        },
        trace: TraceState {
            tsc_khz: 2_000_000,
            stamps: vec![0; Phase::COUNT],
        },
        console: ConsoleState { written: 10 },
        memory: MemoryRef {
            file: "memory-0123456789abcdef".into(),
            size: 64 << 20,
            data_pages: 3,
            digest: [9; 32],
        },
        net: None,
        disks: Vec::new(),
        chunks: Default::default(),
    }
}

/// Re-seals a hand-edited body with a valid digest, as a careful forger would.
fn reseal(bytes: &mut [u8]) {
    let digest = *blake3::hash(&bytes[format::HEADER_SIZE..]).as_bytes();
    bytes[24..56].copy_from_slice(&digest);
}

fn edited(f: impl FnOnce(&mut SnapshotState)) -> Result<SnapshotState, SnapshotError> {
    let mut s = sample();
    f(&mut s);
    let bytes = postcard::to_allocvec(&s).unwrap();
    let mut file = sample().encode().unwrap();
    file.truncate(format::HEADER_SIZE);
    file[16..24].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    file.extend_from_slice(&bytes);
    reseal(&mut file);
    SnapshotState::decode(&file)
}

#[test]
fn round_trip() {
    let s = sample();
    let bytes = s.encode().unwrap();
    assert_eq!(&bytes[..8], b"TNDMSNAP");
    assert_eq!(SnapshotState::decode(&bytes).unwrap(), s);
}

#[test]
fn refuses_truncated_files() {
    let bytes = sample().encode().unwrap();
    for len in [0, 10, format::HEADER_SIZE - 1] {
        assert!(
            matches!(
                SnapshotState::decode(&bytes[..len]),
                Err(SnapshotError::Truncated {
                    what: "state file",
                    ..
                })
            ),
            "{len}"
        );
    }
    for len in [format::HEADER_SIZE, bytes.len() / 2, bytes.len() - 1] {
        let e = SnapshotState::decode(&bytes[..len]).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Truncated {
                    what: "state file",
                    ..
                }
            ),
            "{len}: {e}"
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}

#[test]
fn refuses_every_single_bit_flip() {
    let bytes = sample().encode().unwrap();
    // Every bit of the header and a stride of the body.
    let positions =
        (0..format::HEADER_SIZE * 8).chain((format::HEADER_SIZE * 8..bytes.len() * 8).step_by(7));
    for bit in positions {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            SnapshotState::decode(&bad).is_err(),
            "bit {bit} flipped was accepted"
        );
    }
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x10;
    assert!(matches!(
        SnapshotState::decode(&bad),
        Err(SnapshotError::BadDigest { what: "state file" })
    ));
}

#[test]
fn refuses_bad_magic_version_and_architecture() {
    let bytes = sample().encode().unwrap();
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(b"NOTASNAP");
    assert!(matches!(
        SnapshotState::decode(&bad),
        Err(SnapshotError::BadMagic)
    ));

    let mut bad = bytes.clone();
    bad[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let e = SnapshotState::decode(&bad).unwrap_err();
    assert!(
        matches!(e, SnapshotError::VersionMismatch { found, .. } if found == FORMAT_VERSION + 1)
    );
    assert!(
        e.to_string()
            .contains(&format!("format version {}", FORMAT_VERSION + 1)),
        "{e}"
    );

    let mut bad = bytes.clone();
    bad[12..16].copy_from_slice(&183u32.to_le_bytes()); // aarch64
    let e = SnapshotState::decode(&bad).unwrap_err();
    assert!(matches!(e, SnapshotError::WrongArchitecture { found: 183 }));
    assert!(e.to_string().contains("x86_64"), "{e}");

    let mut bad = bytes.clone();
    bad[60] = 1;
    assert!(matches!(
        SnapshotState::decode(&bad),
        Err(SnapshotError::Invalid(_))
    ));

    let mut bad = bytes.clone();
    bad.push(0);
    assert!(matches!(
        SnapshotState::decode(&bad),
        Err(SnapshotError::Invalid(_))
    ));

    let mut bad = bytes;
    bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        SnapshotState::decode(&bad),
        Err(SnapshotError::Invalid(_))
    ));
}

#[test]
fn refuses_a_version_1_state_file_naming_both_versions() {
    // A state file of format 1 (before the network device's state was
    // appended): its body would decode as something else, so the header
    // refuses it first.
    assert_eq!(FORMAT_VERSION, 4);
    let mut old = sample().encode().unwrap();
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    let e = SnapshotState::decode(&old).unwrap_err();
    assert!(matches!(
        e,
        SnapshotError::VersionMismatch {
            found: 1,
            expected: 4
        }
    ));
    assert_eq!(
        e.to_string(),
        "snapshot format version 1; this tandem reads version 4"
    );
}

#[test]
fn a_network_device_round_trips_and_is_checked() {
    let mut s = sample();
    s.net = Some(crate::devices::net_state::tests::sample());
    let bytes = s.encode().unwrap();
    assert_eq!(SnapshotState::decode(&bytes).unwrap(), s);
    // A forged device state, resealed with a valid digest, is refused by name.
    let e = edited(|s| {
        let mut net = crate::devices::net_state::tests::sample();
        net.transport.queues[0].used = 0x1000;
        s.net = Some(net);
    })
    .unwrap_err();
    assert!(matches!(e, SnapshotError::Net(_)), "{e}");
    assert!(
        e.to_string().starts_with(
            "invalid snapshot: network device: virtio-net queue 0: used ring at 0x1000"
        ),
        "{e}"
    );
    let e = edited(|s| {
        let mut net = crate::devices::net_state::tests::sample();
        net.mac = [1, 0, 0, 0, 0, 0];
        s.net = Some(net);
    })
    .unwrap_err();
    assert!(e.to_string().contains("MAC"), "{e}");
}

#[test]
fn refuses_hand_edited_values() {
    assert!(edited(|_| {}).is_ok());
    type Edit = Box<dyn FnOnce(&mut SnapshotState)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("abi", Box::new(|s| s.abi_version += 1)),
        ("mem", Box::new(|s| s.machine.mem_size = 3 << 20)),
        ("mem", Box::new(|s| s.machine.mem_size = 8 << 30)),
        ("memsize", Box::new(|s| s.memory.size = 32 << 20)),
        (
            "name",
            Box::new(|s| s.memory.file = "../../etc/passwd".into()),
        ),
        (
            "name",
            Box::new(|s| s.memory.file = "memory-0123456789ABCDEF".into()),
        ),
        ("pages", Box::new(|s| s.memory.data_pages = u64::MAX)),
        (
            "cmdline",
            Box::new(|s| s.machine.cmdline = "x".repeat(5000)),
        ),
        (
            "stamps",
            Box::new(|s| s.trace.stamps.pop().map(|_| ()).unwrap_or(())),
        ),
        ("tsc", Box::new(|s| s.machine.tsc_khz = 0)),
        ("regs", Box::new(|s| s.vcpu.regs.truncate(8))),
        ("xsave", Box::new(|s| s.vcpu.xsave.truncate(100))),
        ("events", Box::new(|s| s.vcpu.events.push(1))),
    ];
    for (what, f) in cases {
        let e = edited(f).expect_err(what);
        assert!(
            matches!(
                e,
                SnapshotError::Invalid(_)
                    | SnapshotError::RegisterSize { .. }
                    | SnapshotError::AbiMismatch { .. }
            ),
            "{what}: {e}"
        );
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_checks_the_memory_file() {
    let dir = temp_dir("load");
    let mut state = sample();
    state.machine.mem_size = tandem_abi::layout::MIN_MEM_SIZE;
    state.memory.size = tandem_abi::layout::MIN_MEM_SIZE;
    let ram = GuestRam::new(state.machine.mem_size, false).unwrap();
    use vm_memory::Bytes;
    ram.mem
        .write_slice(b"some state", vm_memory::GuestAddress(0x40_1000))
        .unwrap();
    let stats = write(&dir, &mut state, &ram).unwrap();
    assert_eq!(stats.pages_written, 1);
    let snap = Snapshot::load(&dir).unwrap();
    assert_eq!(snap.state, state);
    snap.verify_memory().unwrap();
    // The memory file is sparse and holds the page where it was.
    let mem = std::fs::read(snap.memory_path()).unwrap();
    assert_eq!(&mem[0x40_1000..0x40_100a], b"some state");

    // A second snapshot replaces the first, and its memory file.
    let first = snap.memory_path();
    write(&dir, &mut state, &ram).unwrap();
    assert!(!first.exists());
    let snap = Snapshot::load(&dir).unwrap();

    // A bit flipped in memory is found by verify (restore does not read memory).
    let path = snap.memory_path();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0x40_1003] ^= 4;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Snapshot::load(&dir).unwrap().verify_memory(),
        Err(SnapshotError::BadDigest {
            what: "memory file"
        })
    ));
    // A truncated memory file is refused at load.
    std::fs::write(&path, &bytes[..4096]).unwrap();
    assert!(matches!(
        Snapshot::load(&dir),
        Err(SnapshotError::MemorySize { .. })
    ));
    // A missing one too.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Snapshot::load(&dir),
        Err(SnapshotError::MissingMemory(_))
    ));
    // And a missing state file names the file.
    std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
    let e = Snapshot::load(&dir).unwrap_err();
    assert!(e.to_string().contains("state"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
