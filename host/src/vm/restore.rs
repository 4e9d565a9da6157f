//! Freezing a VM into a snapshot and bringing one back.

use std::path::Path;

use kvm_ioctls::VcpuExit;
use tandem_abi::layout::{self, LiveArea};
use tandem_abi::trace::Phase;
use vm_memory::{Bytes, GuestAddress};

use super::error::ioctl;
use super::{guest_tsc_offset, memory_slot, Vm, VmConfig, VmError};
use crate::entropy::fill_random;
use crate::kvm::Hypervisor;
use crate::memory::GuestRam;
use crate::snapshot::{
    self, ConsoleState, LiveState, MachineState, MemoryRef, Snapshot, SnapshotError, SnapshotState,
    TraceState, VcpuState, WriteStats,
};
use crate::trace::{rdtsc, BootTrace};

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

/// Most pages a restore prefaults: the cost is bounded (about 1 us a
/// page), whatever the snapshot holds; the rest come in on first touch.
const POPULATE_MAX_PAGES: u64 = 2048;

/// The data of the memory file (pages the guest had used), low addresses
/// first, up to [`POPULATE_MAX_PAGES`], as guest ranges to prefault.
fn populate_ranges(file: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    let mut left = POPULATE_MAX_PAGES;
    let mut out = Vec::new();
    for (first, end) in snapshot::files::data_pages(file, size) {
        if left == 0 {
            break;
        }
        let n = (end - first).min(left);
        left -= n;
        out.push((first * layout::PAGE_SIZE, (first + n) * layout::PAGE_SIZE));
    }
    out
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
        mut config: VmConfig,
        start_tsc: u64,
    ) -> Result<Self, VmError> {
        let st = &snapshot.state;
        config.mem_size = st.machine.mem_size;
        config.cmdline = st.machine.cmdline.clone();
        config.vm_id = st.machine.vm_id;
        config.console_limit = st.machine.console_limit;
        super::check::check_config(&config)?;
        let mut trace = BootTrace::new(0);
        trace.set(Phase::VmmStart, start_tsc);
        trace.stamp(Phase::KvmReady);

        let file = snapshot.open_memory()?;
        let vm = hv.kvm().create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        trace.stamp(Phase::VmCreated);
        let populate = populate_ranges(&file, st.machine.mem_size);
        let ram = GuestRam::from_file(file, st.machine.mem_size, &populate)?;
        let region = memory_slot(&ram, config.backup.is_some());
        // SAFETY: the region is a live mapping of `ram.size()` bytes owned by
        // `ram`, which the Vm drops after the VM fd (field order).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        trace.stamp(Phase::MemoryMapped);

        let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let tsc_khz = u64::from(hv.tsc_khz(&vcpu)?);
        trace.set_tsc_khz(tsc_khz);
        if tsc_khz != st.machine.tsc_khz {
            return Err(SnapshotError::HostMismatch(format!(
                "the guest was told its TSC runs at {} kHz, this host's runs at {tsc_khz} kHz",
                st.machine.tsc_khz
            ))
            .into());
        }
        let leaf1 = hv.cpuid_leaf(1);
        let features = (leaf1.map_or(0, |l| l.ecx), leaf1.map_or(0, |l| l.edx));
        if features != st.machine.cpu_features {
            return Err(SnapshotError::HostMismatch(format!(
                "CPUID leaf 1 features {:08x}:{:08x} differ from the snapshot's {:08x}:{:08x}",
                features.0, features.1, st.machine.cpu_features.0, st.machine.cpu_features.1
            ))
            .into());
        }
        let tsc_offset = guest_tsc_offset(&vcpu)?;
        vcpu.set_cpuid2(hv.supported_cpuid())
            .map_err(ioctl("KVM_SET_CPUID2"))?;
        st.vcpu.apply(&vm, &vcpu)?;

        let mut live = LiveArea {
            generation: new_generation(st.live.generation),
            tsc_adjust: 0,
            restores: st.live.restores.saturating_add(1),
            reserved: 0,
            entropy: [0; 32],
        };
        fill_random(&mut live.entropy);
        trace.stamp(Phase::VcpuReady);
        Ok(Self {
            vcpu,
            vm,
            ram,
            config,
            trace,
            tsc_offset,
            tsc_khz,
            cpu_features: features,
            live,
            resume_clock: Some(st.live.guest_clock),
            console_before: st.console.written,
            backup: None,
            backup_records: Vec::new(),
        })
    }

    /// The generation this VM's guest sees (0 for a VM that booted and was
    /// never restored).
    pub fn generation(&self) -> u64 {
        self.live.generation
    }

    fn write_live(&self) -> Result<(), VmError> {
        self.ram
            .mem
            .write_slice(&self.live.to_bytes(), GuestAddress(layout::LIVE_ADDR))?;
        Ok(())
    }

    /// Sets the live area's clock adjustment so the guest clock reads
    /// `guest_clock` now, and writes the live area.
    fn set_guest_clock(&mut self, guest_clock: u64) -> Result<(), VmError> {
        let guest_tsc = rdtsc().wrapping_add_signed(self.tsc_offset);
        // Two's-complement difference: the adjustment may be of either sign.
        self.live.tsc_adjust = guest_clock.wrapping_sub(guest_tsc) as i64;
        self.write_live()
    }

    /// For a restored VM, just before its first run: the guest clock
    /// resumes from the snapshot's moment.
    pub(super) fn resume_clock_now(&mut self) -> Result<(), VmError> {
        if let Some(clock) = self.resume_clock.take() {
            self.set_guest_clock(clock)?;
        }
        Ok(())
    }

    /// The guest's clock now (TSC plus the live adjustment).
    fn guest_clock(&self) -> u64 {
        rdtsc()
            .wrapping_add_signed(self.tsc_offset)
            .wrapping_add_signed(self.live.tsc_adjust)
    }

    /// Finishes the I/O the last exit left pending (KVM completes an `out`,
    /// advancing RIP, only on the next `KVM_RUN`): a `KVM_RUN` with
    /// `immediate_exit` set does that and returns at once, so the saved RIP
    /// is past the hypercall and a restored guest does not repeat it.
    pub(super) fn complete_pending_io(&mut self) -> Result<(), VmError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let outcome = match self.vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(ioctl("KVM_RUN (immediate exit)")(e)),
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) | Ok(_) => Err(VmError::Config(
                "the vCPU exited instead of stopping for a snapshot".into(),
            )),
        };
        self.vcpu.set_kvm_immediate_exit(0);
        outcome
    }

    /// Captures everything but memory: vCPU registers, machine, clock,
    /// trace, console totals. The vCPU must be stopped with no I/O pending.
    pub(crate) fn capture_state(&mut self, console_written: u64) -> Result<SnapshotState, VmError> {
        self.complete_pending_io()?;
        let guest_clock = self.guest_clock();
        let vcpu = VcpuState::capture(&self.vm, &self.vcpu)?;
        let mut trace = self.trace.clone();
        for phase in tandem_abi::trace::Phase::ALL {
            if phase.stamped_by_guest() {
                let g = self.guest_stamp(phase);
                if g != 0 {
                    trace.set(phase, g.wrapping_add_signed(-self.tsc_offset));
                }
            }
        }
        Ok(SnapshotState {
            abi_version: tandem_abi::ABI_VERSION,
            machine: MachineState {
                mem_size: self.config.mem_size,
                cmdline: self.config.cmdline.clone(),
                vm_id: self.config.vm_id,
                console_limit: self.config.console_limit,
                tsc_khz: self.tsc_khz,
                cpu_features: self.cpu_features,
            },
            vcpu,
            live: LiveState {
                generation: self.live.generation,
                restores: self.live.restores,
                guest_clock,
                unix_nanos: unix_nanos(),
            },
            trace: TraceState {
                tsc_khz: self.tsc_khz,
                stamps: tandem_abi::trace::Phase::ALL
                    .iter()
                    .map(|&p| trace.get(p).unwrap_or(0))
                    .collect(),
            },
            console: ConsoleState {
                written: console_written,
            },
            memory: MemoryRef {
                file: String::new(),
                size: self.config.mem_size,
                data_pages: 0,
                digest: [0; 32],
            },
        })
    }

    /// Writes a snapshot of this (stopped) VM into `dir`. The VM's own
    /// clock skips the time the write took, as a restored copy's does.
    pub(crate) fn take_snapshot(
        &mut self,
        dir: &Path,
        console_written: u64,
    ) -> Result<WriteStats, VmError> {
        let mut state = self.capture_state(console_written)?;
        let result = snapshot::write(dir, &mut state, &self.ram);
        // With backups on, every snapshot is also a backup point, taken at
        // the same stop (before the clock below changes the live area), so
        // the chain can be restored to exactly the snapshot's moment.
        if result.is_ok() && self.backup.as_ref().is_some_and(|b| !b.needs_base()) {
            match self.write_backup_point(&state) {
                Ok(record) => self.backup_records.push(record),
                Err(e) if self.config.verbose => eprintln!("tandem: backup point failed: {e}"),
                Err(_) => {}
            }
        }
        self.set_guest_clock(state.live.guest_clock)?;
        Ok(result?)
    }
}

impl Vm {
    /// Writes the next backup point of this (stopped) VM: the base on the
    /// first call, then the pages dirtied since the previous point.
    pub(super) fn backup_point(
        &mut self,
        cfg: &crate::backup::BackupConfig,
        console: &crate::console::Console,
    ) -> Result<crate::backup::BackupRecord, VmError> {
        if self.backup.is_none() {
            self.backup = Some(crate::backup::BackupWriter::create(&cfg.dir)?);
        }
        let total = console.written() + self.console_before;
        let state = self.capture_state(total)?;
        let record = self.write_backup_point(&state)?;
        self.set_guest_clock(state.live.guest_clock)?;
        Ok(record)
    }

    /// Writes the next backup point with `state` (the vCPU stopped).
    fn write_backup_point(
        &mut self,
        state: &crate::snapshot::SnapshotState,
    ) -> Result<crate::backup::BackupRecord, VmError> {
        use std::collections::BTreeSet;
        let size = usize::try_from(self.config.mem_size)
            .map_err(|_| VmError::Config("memory size".into()))?;
        // Gets and clears the log: the next point starts from here.
        let bitmap =
            self.vm
                .get_dirty_log(0, size)
                .map_err(|source| crate::backup::BackupError::Kvm {
                    what: "KVM_GET_DIRTY_LOG",
                    source,
                })?;
        let candidates = snapshot::files::candidate_pages(&self.ram)?;
        let Some(writer) = self.backup.as_mut() else {
            return Err(VmError::Config("backup writer missing".into()));
        };
        let host_written = writer.take_host_written();
        let (pages, dirty): (Vec<u64>, u64) = if writer.needs_base() {
            let all = candidates
                .iter()
                .enumerate()
                .filter(|(_, &c)| c)
                .map(|(i, _)| i as u64)
                .collect();
            (all, 0)
        } else {
            let mut set = BTreeSet::new();
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    set.insert(w as u64 * 64 + b);
                    bits &= bits - 1;
                }
            }
            let dirty = set.len() as u64;
            // What the VMM itself wrote, which the log cannot see: replies,
            // the console header, the live area.
            set.extend(host_written);
            set.insert(layout::CONSOLE_ADDR / layout::PAGE_SIZE);
            set.insert(layout::LIVE_ADDR / layout::PAGE_SIZE);
            let max = self.config.mem_size / layout::PAGE_SIZE;
            (set.into_iter().filter(|&p| p < max).collect(), dirty)
        };
        Ok(writer.write_point(&self.ram, state, &pages, dirty)?)
    }

    /// Notes guest ranges the VMM wrote, for the next backup point.
    pub(super) fn note_host_writes(&mut self, ranges: &[(u64, u64)]) {
        if let Some(b) = self.backup.as_mut() {
            b.note_host_writes(ranges);
        }
    }
}
