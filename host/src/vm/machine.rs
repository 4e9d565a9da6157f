//! The one construction path of a VM, for a fresh boot and for a restore
//! alike (as Firecracker's builder uses the same `vstate` constructors for
//! both): create the VM, register guest memory in its one slot, create the
//! vCPU, read its TSC, give it the host's CPUID, and assemble the [`Vm`].
//! What differs (an image and boot structures, or a snapshot's registers)
//! is done by `boot` and `restore` between [`Machine::new`] and
//! [`Machine::into_vm`].
//!
//! Guest memory is registered before the vCPU exists: adding a slot later
//! waits on `synchronize_srcu`.

use kvm_bindings::{kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{VcpuFd, VmFd};
use tandem_abi::layout::LiveArea;
use tandem_abi::trace::Phase;

use super::check::check_config;
use super::error::ioctl;
use super::{Vm, VmConfig, VmError};
use crate::kvm::Hypervisor;
use crate::memory::GuestRam;
use crate::trace::{rdtsc, BootTrace};

/// A VM under construction: KVM's parts, guest memory, and what was
/// learnt on the way.
pub(super) struct Machine {
    // Field order is drop order: vCPU, VM, then guest memory.
    pub(super) vcpu: VcpuFd,
    pub(super) vm: VmFd,
    pub(super) ram: GuestRam,
    pub(super) trace: BootTrace,
    /// The vCPU's TSC frequency.
    pub(super) tsc_khz: u64,
    /// Guest TSC minus host TSC.
    pub(super) tsc_offset: i64,
    /// CPUID leaf 1 features (ECX, EDX) the guest is told of.
    pub(super) cpu_features: (u32, u32),
}

/// Where a new VM's guest starts from.
pub(super) enum Start {
    /// A fresh boot: an empty live area, no console written yet.
    Boot,
    /// A snapshot's moment.
    Resume {
        /// The live area the guest gets (new generation, fresh entropy).
        live: LiveArea,
        /// The guest clock at the snapshot, applied just before the first run.
        guest_clock: u64,
        /// Console bytes written before the snapshot.
        console_written: u64,
    },
}

impl Machine {
    /// Checks `config`, then creates the VM, maps the guest memory `ram`
    /// makes (called once the VM exists), creates the vCPU and sets its
    /// CPUID. The timeline counts from `start_tsc`.
    pub(super) fn new(
        hv: &Hypervisor,
        config: &VmConfig,
        start_tsc: u64,
        ram: impl FnOnce() -> Result<GuestRam, VmError>,
    ) -> Result<Self, VmError> {
        check_config(config)?;
        super::teardown::start();
        let mut trace = BootTrace::new(0);
        trace.set(Phase::VmmStart, start_tsc);
        trace.stamp(Phase::KvmReady);

        let vm = hv.kvm().create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        trace.stamp(Phase::VmCreated);

        let ram = ram()?;
        let region = memory_slot(&ram, config.backup.is_some());
        // SAFETY: the region is a live mapping of `ram.size()` bytes owned by
        // `ram`, which `Machine` and then `Vm` drop after the VM fd (field
        // order), so KVM never sees the mapping go away under the slot.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        trace.stamp(Phase::MemoryMapped);

        let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let tsc_khz = u64::from(hv.tsc_khz(&vcpu)?);
        trace.set_tsc_khz(tsc_khz);
        let tsc_offset = guest_tsc_offset(&vcpu)?;
        // Before any special register is set: KVM checks CR4 against it.
        vcpu.set_cpuid2(hv.supported_cpuid())
            .map_err(ioctl("KVM_SET_CPUID2"))?;
        let leaf1 = hv.cpuid_leaf(1);
        let cpu_features = (leaf1.map_or(0, |l| l.ecx), leaf1.map_or(0, |l| l.edx));
        Ok(Self {
            vcpu,
            vm,
            ram,
            trace,
            tsc_khz,
            tsc_offset,
            cpu_features,
        })
    }

    /// The finished VM, its vCPU ready to run from `start`.
    pub(super) fn into_vm(mut self, config: VmConfig, start: Start) -> Vm {
        let (live, resume_clock, console_before) = match start {
            Start::Boot => (LiveArea::default(), None, 0),
            Start::Resume {
                live,
                guest_clock,
                console_written,
            } => (live, Some(guest_clock), console_written),
        };
        self.trace.stamp(Phase::VcpuReady);
        Vm {
            live_backup: None,
            vcpu: self.vcpu,
            vm: std::sync::Arc::new(self.vm),
            ram: self.ram,
            config,
            trace: self.trace,
            tsc_offset: self.tsc_offset,
            tsc_khz: self.tsc_khz,
            cpu_features: self.cpu_features,
            live,
            resume_clock,
            console_before,
            backup: None,
            backup_records: Vec::new(),
            net: None,
            disks: Vec::new(),
            record_working_set: None,
        }
    }
}

/// The guest memory slot: all of guest memory, with dirty logging for backups.
fn memory_slot(ram: &GuestRam, dirty_log: bool) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot: 0,
        flags: if dirty_log {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: 0,
        memory_size: ram.size(),
        userspace_addr: ram.host_addr(),
    }
}

const MSR_IA32_TSC: u32 = 0x10;

/// Guest TSC minus host TSC (zero where the guest TSC is the host's, as under PVM).
fn guest_tsc_offset(vcpu: &VcpuFd) -> Result<i64, VmError> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|e| VmError::Config(format!("MSR list: {e:?}")))?;
    let before = rdtsc();
    let n = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
    let after = rdtsc();
    if n != 1 {
        return Ok(0);
    }
    let host = before + (after - before) / 2;
    let guest = msrs.as_slice()[0].data;
    Ok(guest.wrapping_sub(host) as i64)
}
