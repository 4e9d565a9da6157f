//! Bringing a VM back from a snapshot: the shared construction over the
//! memory file mapped copy-on-write, then the snapshot's registers and
//! network device (on the tap the restore names), a new generation, fresh
//! entropy, and a boot-info block rewritten for the new VM.

use tandem_abi::layout::{self, LiveArea};

use super::boot_info::{boot_info, write_boot_info};
use super::machine::{Machine, Start};
use super::memory_plan::{self, MemoryPlan, PlanInput, Prefetch};
use super::{Vm, VmConfig, VmError};
use crate::devices::blk::request::SECTOR_SIZE;
use crate::devices::blk::{copy, DiskFile};
use crate::devices::tap::Tap;
use crate::devices::{BlkDevice, DiskSpec, NetDevice, NetSpec, NetState};
use crate::entropy::fill_random;
use crate::kvm::Hypervisor;
use crate::memory::GuestRam;
use crate::snapshot::{self, MachineState, Snapshot, SnapshotError, WorkingSet};
use crate::trace::rdtsc;

/// What a restore of one snapshot may reuse from the last: its working
/// set, read and checked once (pools restore the same snapshot many times).
#[derive(Debug, Clone, Default)]
pub(crate) struct RestoreInputs {
    /// The checked working set, if the snapshot has a valid one.
    pub working_set: Option<WorkingSet>,
    /// The snapshot's chunk digests, shared by the VMs restored from it.
    pub chunks: std::sync::Arc<snapshot::ChunkDigests>,
}

impl RestoreInputs {
    /// Reads what a restore in `prefetch` mode needs from `snapshot`. A
    /// damaged, hostile or stale working set is not an error: it only
    /// speeds restores up, so it is ignored with a warning that names what
    /// is wrong, and the restore falls back to the memory file's data.
    pub(crate) fn read(snapshot: &Snapshot, prefetch: Prefetch) -> Self {
        let chunks = std::sync::Arc::new(snapshot.state.chunks.clone());
        if prefetch != Prefetch::Auto {
            return Self {
                working_set: None,
                chunks,
            };
        }
        let working_set = match snapshot.working_set() {
            Ok(ws) => ws,
            Err(e) => {
                log::warn!("ignoring the working set: {e}");
                None
            }
        };
        Self {
            working_set,
            chunks,
        }
    }
}

impl Vm {
    /// Creates a VM from a checked snapshot, ready to run from exactly where
    /// it was frozen. Guest memory maps the memory file copy-on-write (read
    /// lazily: the time does not grow with memory size). The VM gets a new
    /// generation and fresh entropy in its live area, and its clock carries
    /// on from the snapshot's moment. The machine (memory size, command
    /// line, VM id, console limit) comes from the snapshot; `config` gives
    /// the rest (console, timeout, snapshots, backups).
    ///
    /// Anything wrong (another kind of host, a register set KVM refuses)
    /// fails here, before the guest runs a single instruction.
    pub fn restore(
        hv: &Hypervisor,
        snapshot: &Snapshot,
        config: VmConfig,
    ) -> Result<Self, VmError> {
        Self::restore_at(hv, snapshot, config, rdtsc())
    }

    /// [`Vm::restore`], counting the restore's timeline from `start_tsc`.
    pub fn restore_at(
        hv: &Hypervisor,
        snapshot: &Snapshot,
        config: VmConfig,
        start_tsc: u64,
    ) -> Result<Self, VmError> {
        let inputs = RestoreInputs::read(snapshot, config.prefetch);
        Self::restore_with(hv, snapshot, &inputs, config, start_tsc)
    }

    /// [`Vm::restore_at`] with the snapshot's working set already read.
    pub(crate) fn restore_with(
        hv: &Hypervisor,
        snapshot: &Snapshot,
        inputs: &RestoreInputs,
        mut config: VmConfig,
        start_tsc: u64,
    ) -> Result<Self, VmError> {
        let st = &snapshot.state;
        // Each disk a new writable copy of the snapshot's, before KVM.
        let disk_files = restored_disks(snapshot, &config.disks)?;
        config.net = restored_net(st.net.as_ref(), config.net.take())?;
        config.mem_size = st.machine.mem_size;
        config.cmdline = st.machine.cmdline.clone();
        config.vm_id = st.machine.vm_id;
        config.console_limit = st.machine.console_limit;
        // Before KVM is touched: a missing tap is the likeliest mistake.
        // As at boot, a missing tap is made when the process may.
        let tap = config
            .net
            .as_ref()
            .map(|n| Tap::setup(&n.tap_setup()))
            .transpose()?;
        let prefetch = config.prefetch;
        let verify_lazily = config.verify_lazily;
        let machine = Machine::new(hv, &config, start_tsc, || {
            let file = snapshot.open_memory()?;
            let plan = restore_plan(&file, st.machine.mem_size, inputs, prefetch);
            log::debug!(
                "restore: {} pages copied into huge pages, {} prefaulted ({prefetch:?})",
                plan.copied_pages(),
                plan.populated_pages()
            );
            if verify_lazily {
                let (ram, done) = GuestRam::from_file_verified(
                    file,
                    snapshot.memory_path(),
                    st.machine.mem_size,
                    inputs.chunks.clone(),
                    &plan.copy,
                    &plan.populate,
                )?;
                log::debug!(
                    "restore: {} chunks checked and brought in, {} did not match (left to fail on first touch)",
                    done.chunks,
                    done.corrupt
                );
                return Ok(ram);
            }
            Ok(GuestRam::from_file(
                file,
                st.machine.mem_size,
                &plan.copy,
                &plan.populate,
            )?)
        })?;
        check_host(&st.machine, machine.tsc_khz, machine.cpu_features)?;
        st.vcpu.apply(&machine.vm, &machine.vcpu)?;
        let net = match (tap, &st.net, &config.net) {
            (Some(tap), Some(state), Some(spec)) => {
                let mac = spec.mac.unwrap_or(state.mac);
                let mut dev =
                    NetDevice::restore(tap, state, mac, &machine.ram.mem, config.mem_size)
                        .map_err(SnapshotError::Net)?;
                dev.set_rate_limit(spec.limit);
                Some(dev)
            }
            _ => None,
        };
        let mut disks = Vec::with_capacity(disk_files.len());
        for ((file, state), slot) in disk_files.into_iter().zip(&st.disks).zip(1u64..) {
            let base = layout::virtio_mmio_window(slot);
            disks.push(BlkDevice::restore(
                file,
                state,
                base,
                &machine.ram.mem,
                config.mem_size,
            )?);
        }
        for (d, spec) in disks.iter_mut().zip(&config.disks) {
            d.set_rate_limit(spec.limit);
            d.set_shared_limit(config.io_share.clone());
        }

        let mut live = LiveArea {
            generation: new_generation(st.live.generation),
            tsc_adjust: 0,
            restores: st.live.restores.saturating_add(1),
            reserved: 0,
            entropy: [0; 32],
        };
        fill_random(&mut live.entropy);
        // The block now describes this VM: its generation and devices (a
        // clone's own address); the guest reads it again when it sees the
        // live area's new generation.
        let to_guest = |host: u64| host.wrapping_add_signed(machine.tsc_offset);
        let mut info = boot_info(
            &config,
            machine.tsc_khz,
            machine.cpu_features,
            to_guest(start_tsc),
            to_guest(rdtsc()),
            net.as_ref(),
            &disks,
        );
        info.generation = live.generation;
        write_boot_info(&machine.ram.mem, &info)?;
        let start = Start::Resume {
            live,
            guest_clock: st.live.guest_clock,
            console_written: st.console.written,
        };
        let mut vm = machine.into_vm(config, start);
        vm.attach_net(net);
        vm.attach_disks(disks);
        if prefetch == Prefetch::Record {
            vm.record_working_set = Some(snapshot.clone());
        }
        Ok(vm)
    }

    /// Writes the pages the guest touched since its restore as the
    /// snapshot's working set (`--prefetch record`), once its run is over.
    pub(super) fn record_working_set(&mut self) {
        let Some(snapshot) = self.record_working_set.take() else {
            return;
        };
        let ram = &self.ram;
        // On the I/O thread: the vCPU thread opens no file.
        let result = crate::io_thread::call(|| {
            ram.present_pages()
                .map_err(|e| e.to_string())
                .and_then(|pages| {
                    snapshot
                        .write_working_set(&pages)
                        .map(|()| pages.len())
                        .map_err(|e| e.to_string())
                })
        })
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match result {
            Ok(n) => log::info!(
                "working set of {n} pages recorded in {}",
                snapshot.dir.join(snapshot::WORKING_SET_FILE).display()
            ),
            Err(e) => log::warn!("cannot record the working set: {e}"),
        }
    }
}

/// The disks a restored VM gets: one `--disk path=NEWFILE` per disk of
/// the snapshot's VM, each file made (it must not exist) as a reflink or
/// copy of the snapshot's copy, so that what this VM writes is its own
/// and the snapshot (and every other restore of it) keeps its disk.
fn restored_disks(snapshot: &Snapshot, given: &[DiskSpec]) -> Result<Vec<DiskFile>, VmError> {
    let wanted = &snapshot.state.disks;
    if given.len() != wanted.len() {
        return Err(VmError::Config(format!(
            "the snapshot's VM has {} disk(s) and {} --disk were given: give one --disk path=NEWFILE per disk (each made from the snapshot's copy)",
            wanted.len(),
            given.len()
        )));
    }
    let mut files = Vec::with_capacity(given.len());
    for (i, (state, spec)) in wanted.iter().zip(given).enumerate() {
        if spec.read_only != state.read_only {
            return Err(VmError::Config(format!(
                "disk {i} was {} in the snapshot: {} ,ro on its --disk",
                if state.read_only {
                    "read-only"
                } else {
                    "writable"
                },
                if state.read_only { "add" } else { "remove" }
            )));
        }
        let from_path = snapshot.dir.join(&state.file);
        let from = std::fs::File::open(&from_path).map_err(|e| SnapshotError::DiskFile {
            path: from_path.clone(),
            why: e.to_string(),
        })?;
        let len = state.sectors * SECTOR_SIZE;
        let kind = copy::clone_file(&from, &from_path, len, &spec.path)?;
        log::debug!(
            "disk {i}: {} made from the snapshot ({kind:?})",
            spec.path.display()
        );
        files.push(DiskFile::open(&spec.path, spec.read_only)?);
    }
    Ok(files)
}

/// The network device a restored VM gets: the snapshot's VM had one
/// exactly when `--net` gives one. The MAC and static IPv4 settings
/// `given` leaves out are the snapshot's (the same VM, moved to another
/// tap); the result names both.
fn restored_net(
    state: Option<&NetState>,
    given: Option<NetSpec>,
) -> Result<Option<NetSpec>, VmError> {
    match (state, given) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(VmError::Config(
            "the snapshot's VM has a network device: restore it with --net tap=NAME (a tap to attach it to)".into(),
        )),
        (None, Some(spec)) => Err(VmError::Config(format!(
            "the snapshot's VM has no network device: remove --net tap={}",
            spec.tap
        ))),
        (Some(state), Some(spec)) => Ok(Some(NetSpec {
            mac: Some(spec.mac.unwrap_or(state.mac)),
            ipv4: spec.ipv4.or(state.ipv4.map(Into::into)),
            ..spec
        })),
    }
}

/// The plan for one restore: the memory file's data extents (read with
/// SEEK_DATA, cost by extent, not by memory size) and the working set.
fn restore_plan(
    file: &std::fs::File,
    mem_size: u64,
    inputs: &RestoreInputs,
    prefetch: Prefetch,
) -> MemoryPlan {
    let mem_pages = mem_size / tandem_abi::layout::PAGE_SIZE;
    let working_set = inputs.working_set.as_ref().map(|w| w.pages.as_slice());
    let data = match (prefetch, working_set) {
        (Prefetch::Data, _) | (Prefetch::Auto, None) => snapshot::files::data_pages(file, mem_size),
        _ => Vec::new(),
    };
    memory_plan::plan(&PlanInput {
        mem_pages,
        data: &data,
        working_set,
        prefetch,
    })
}

/// Refuses a host whose vCPU would not be the one the guest was told of:
/// another TSC frequency (the guest converts ticks with it) or other CPUID
/// features (it may use them).
fn check_host(
    machine: &MachineState,
    tsc_khz: u64,
    features: (u32, u32),
) -> Result<(), SnapshotError> {
    if tsc_khz != machine.tsc_khz {
        return Err(SnapshotError::HostMismatch(format!(
            "the guest was told its TSC runs at {} kHz, this host's runs at {tsc_khz} kHz",
            machine.tsc_khz
        )));
    }
    if features != machine.cpu_features {
        return Err(SnapshotError::HostMismatch(format!(
            "CPUID leaf 1 features {:08x}:{:08x} differ from the snapshot's {:08x}:{:08x}",
            features.0, features.1, machine.cpu_features.0, machine.cpu_features.1
        )));
    }
    Ok(())
}

/// A generation no VM of this lineage had: random, non-zero, not `old`.
fn new_generation(old: u64) -> u64 {
    loop {
        let mut b = [0u8; 8];
        fill_random(&mut b);
        let g = u64::from_le_bytes(b);
        if g != 0 && g != old {
            return g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineState {
        MachineState {
            mem_size: 64 << 20,
            cmdline: String::new(),
            vm_id: 0,
            console_limit: 0,
            tsc_khz: 2_000_000,
            cpu_features: (0x1234, 0x5678),
        }
    }

    #[test]
    fn the_same_host_is_accepted() {
        assert!(check_host(&machine(), 2_000_000, (0x1234, 0x5678)).is_ok());
    }

    #[test]
    fn another_tsc_or_cpu_is_refused_by_name() {
        let e = check_host(&machine(), 2_100_000, (0x1234, 0x5678)).unwrap_err();
        assert!(matches!(e, SnapshotError::HostMismatch(_)));
        assert!(e.to_string().contains("2000000 kHz"), "{e}");
        let e = check_host(&machine(), 2_000_000, (0x1234, 0)).unwrap_err();
        assert!(e.to_string().contains("00001234:00000000"), "{e}");
    }

    #[test]
    fn a_network_device_is_restored_exactly_when_one_is_given() {
        let state = crate::devices::net_state::tests::sample();
        let spec = |s: &str| s.parse::<NetSpec>().unwrap();
        assert!(restored_net(None, None).unwrap().is_none());
        let e = restored_net(Some(&state), None).unwrap_err().to_string();
        assert!(
            e.contains("has a network device: restore it with --net tap=NAME"),
            "{e}"
        );
        let e = restored_net(None, Some(spec("tap=t0")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has no network device: remove --net tap=t0"),
            "{e}"
        );
        // What --net leaves out is the snapshot's.
        let kept = restored_net(Some(&state), Some(spec("tap=t1")))
            .unwrap()
            .unwrap();
        assert_eq!(kept.tap, "t1");
        assert_eq!(kept.mac, Some(state.mac));
        assert_eq!(kept.ipv4.map(Into::into), state.ipv4);
        let moved = restored_net(
            Some(&state),
            Some(spec("tap=t2,mac=02:00:00:00:00:09,ip=10.1.0.2/16")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(moved.mac, Some([2, 0, 0, 0, 0, 9]));
        assert_eq!(moved.ipv4.unwrap().address.octets(), [10, 1, 0, 2]);
        assert_eq!(moved.ipv4.unwrap().gateway, None);
    }

    #[test]
    fn a_new_generation_is_never_zero_or_the_old_one() {
        for old in [0, 1, u64::MAX] {
            let g = new_generation(old);
            assert_ne!(g, 0);
            assert_ne!(g, old);
        }
    }
}
