//! The hypervisor: `/dev/kvm` and what is learnt from it once per process
//! (supported CPUID costs about 270 µs to query here; it is never asked twice).

use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Why KVM could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available, and may this user open /dev/kvm?)")]
    Open(#[source] kvm_ioctls::Error),
    /// An ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// A capability Tandem needs is missing.
    #[error("KVM lacks a capability Tandem needs: {0}")]
    Missing(&'static str),
}

/// An open `/dev/kvm` with its CPUID support, shared by every VM of a process.
pub struct Hypervisor {
    kvm: Kvm,
    cpuid: CpuId,
    tsc_khz: OnceLock<u32>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("tsc_khz", &self.tsc_khz.get())
            .finish()
    }
}

impl Hypervisor {
    /// Opens `/dev/kvm` and queries what every VM will need.
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        if kvm.get_api_version() != 12 {
            return Err(KvmError::Missing("KVM API version 12"));
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| KvmError::Ioctl {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        crate::snapshot::vcpu::learn_msr_index_list(&kvm);
        log::debug!(
            "/dev/kvm open: API version 12, {} supported CPUID leaves",
            cpuid.as_slice().len()
        );
        Ok(Self {
            kvm,
            cpuid,
            tsc_khz: OnceLock::new(),
        })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// CPUID entries KVM supports.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// Leaf `function` (subleaf 0) of the supported CPUID.
    pub fn cpuid_leaf(&self, function: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
        self.cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == 0)
            .copied()
    }

    /// TSC frequency, learnt from the first vCPU and reused.
    pub fn tsc_khz(&self, vcpu: &kvm_ioctls::VcpuFd) -> Result<u32, KvmError> {
        if let Some(khz) = self.tsc_khz.get() {
            return Ok(*khz);
        }
        let khz = vcpu.get_tsc_khz().map_err(|source| KvmError::Ioctl {
            what: "KVM_GET_TSC_KHZ",
            source,
        })?;
        Ok(*self.tsc_khz.get_or_init(|| khz))
    }
}
