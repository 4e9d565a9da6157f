//! vCPU state: every register set KVM exposes for a Tandem vCPU, captured
//! as raw bytes of the `repr(C)` KVM structures (through zerocopy, no
//! unsafe) and set back in the order KVM expects.
//!
//! What is saved: general registers, special registers (segments,
//! descriptor tables, control registers, EFER, APIC base), every MSR KVM
//! lists that this vCPU accepts (TSC, EFER, STAR, LSTAR, CSTAR, SFMASK,
//! kernel GS base, SYSENTER, PAT, ...), the XSAVE area (XSAVE2 where KVM
//! offers it: FPU, SSE, AVX and MXCSR, which the legacy FPU ioctl misses),
//! XCR0, debug registers and pending events (exceptions, NMI, interrupt
//! shadow). There is no LAPIC, IOAPIC or PIT state: Tandem creates no
//! in-kernel interrupt controller and no PIT.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_debugregs, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    Xsave,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, IntoBytes};

use super::SnapshotError;

/// `IA32_TSC`: saved, never restored (the guest TSC is the host's here,
/// and the guest's clock is kept continuous through the live area instead).
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_ADJUST`: tied to the TSC, not restored either.
const MSR_IA32_TSC_ADJUST: u32 = 0x3b;
/// `IA32_TSC_DEADLINE`: needs an in-kernel LAPIC, which Tandem never creates.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Most MSRs per KVM_GET_MSRS call (kvm-bindings' FAM limit is 256).
const MSR_BATCH: usize = 128;

/// One MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrValue {
    /// MSR number.
    pub index: u32,
    /// Its value.
    pub data: u64,
}

/// A vCPU's registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// `kvm_regs`.
    pub regs: Vec<u8>,
    /// `kvm_sregs`.
    pub sregs: Vec<u8>,
    /// MSRs, in KVM's list order.
    pub msrs: Vec<MsrValue>,
    /// The XSAVE area (`kvm_xsave` region, then XSAVE2's extra words).
    pub xsave: Vec<u8>,
    /// `kvm_xcrs`.
    pub xcrs: Vec<u8>,
    /// `kvm_debugregs`.
    pub debugregs: Vec<u8>,
    /// `kvm_vcpu_events`.
    pub events: Vec<u8>,
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

fn decode<T: FromBytes>(what: &'static str, bytes: &[u8]) -> Result<T, SnapshotError> {
    T::read_from_bytes(bytes).map_err(|_| SnapshotError::RegisterSize {
        what,
        found: bytes.len(),
        expected: std::mem::size_of::<T>(),
    })
}

/// Size of the XSAVE area KVM uses on this host: `KVM_CAP_XSAVE2`'s answer,
/// or the legacy 4 KiB.
fn xsave_size(vm: &VmFd) -> usize {
    let legacy = std::mem::size_of::<kvm_xsave>();
    usize::try_from(vm.check_extension_int(Cap::Xsave2))
        .unwrap_or(0)
        .max(legacy)
}

/// The MSRs `KVM_GET_MSR_INDEX_LIST` lists, asked when `/dev/kvm` is opened.
static KVM_MSR_LIST: OnceLock<Vec<u32>> = OnceLock::new();

/// Asks `kvm` for its MSR list once per process, so a snapshot need not
/// open `/dev/kvm` again (a failure leaves it to the snapshot).
pub(crate) fn learn_msr_index_list(kvm: &Kvm) {
    if KVM_MSR_LIST.get().is_none() {
        if let Ok(list) = kvm.get_msr_index_list() {
            let _ = KVM_MSR_LIST.set(list.as_slice().to_vec());
        }
    }
}

/// The MSRs KVM lists that a vCPU here accepts in KVM_GET_MSRS, learnt
/// once per process.
fn msr_indices(vcpu: &VcpuFd) -> Result<&'static [u32], SnapshotError> {
    static LIST: OnceLock<Vec<u32>> = OnceLock::new();
    if let Some(list) = LIST.get() {
        return Ok(list);
    }
    // A system ioctl, asked once per process, when /dev/kvm is opened
    // (`learn_msr_index_list`); else here, opening /dev/kvm again (which a
    // jailed VMM, no longer root, may not), so the KVM handle stays out of
    // every VM.
    let all = match KVM_MSR_LIST.get() {
        Some(list) => list.clone(),
        None => Kvm::new()
            .map_err(ioctl("open /dev/kvm"))?
            .get_msr_index_list()
            .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec(),
    };
    let ok = read_msrs(vcpu, &all)?
        .into_iter()
        .map(|m| m.index)
        .collect();
    Ok(LIST.get_or_init(|| ok))
}

impl VcpuState {
    /// Captures the state of a stopped vCPU (no pending I/O: see
    /// `Vm::complete_pending_io`).
    pub fn capture(vm: &VmFd, vcpu: &VcpuFd) -> Result<Self, SnapshotError> {
        let regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let indices = msr_indices(vcpu)?;
        let mut msrs = Vec::with_capacity(indices.len());
        for batch in indices.chunks(MSR_BATCH) {
            let got = msr_batch(vcpu, batch)?;
            if got.len() != batch.len() {
                let index = batch.get(got.len()).copied().unwrap_or(0);
                return Err(SnapshotError::Msr { op: "read", index });
            }
            msrs.extend(got);
        }
        let xsave = capture_xsave(vm, vcpu)?;
        let xcrs = vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
        let debugregs = vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?;
        let events = vcpu
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        Ok(Self {
            regs: regs.as_bytes().to_vec(),
            sregs: sregs.as_bytes().to_vec(),
            msrs,
            xsave,
            xcrs: xcrs.as_bytes().to_vec(),
            debugregs: debugregs.as_bytes().to_vec(),
            events: events.as_bytes().to_vec(),
        })
    }

    /// Checks every register set's size and the XSAVE area's shape.
    pub fn check(&self) -> Result<(), SnapshotError> {
        self.regs()?;
        self.sregs()?;
        decode::<kvm_xcrs>("xcrs", &self.xcrs)?;
        decode::<kvm_debugregs>("debug registers", &self.debugregs)?;
        decode::<kvm_vcpu_events>("vcpu events", &self.events)?;
        let legacy = std::mem::size_of::<kvm_xsave>();
        if self.xsave.len() < legacy || !(self.xsave.len() - legacy).is_multiple_of(4) {
            return Err(SnapshotError::RegisterSize {
                what: "xsave",
                found: self.xsave.len(),
                expected: legacy,
            });
        }
        if self.msrs.len() > 4096 {
            return Err(SnapshotError::Invalid(format!(
                "{} MSRs is more than any vCPU has",
                self.msrs.len()
            )));
        }
        Ok(())
    }

    /// The general registers.
    pub fn regs(&self) -> Result<kvm_regs, SnapshotError> {
        decode("general registers", &self.regs)
    }

    /// The special registers.
    pub fn sregs(&self) -> Result<kvm_sregs, SnapshotError> {
        decode("special registers", &self.sregs)
    }

    /// The value of MSR `index`, if saved.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.index == index).map(|m| m.data)
    }

    /// Sets this state on a fresh vCPU whose CPUID is already set.
    pub fn apply(&self, vm: &VmFd, vcpu: &VcpuFd) -> Result<(), SnapshotError> {
        vcpu.set_regs(&self.regs()?)
            .map_err(ioctl("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs()?)
            .map_err(ioctl("KVM_SET_SREGS"))?;
        apply_xsave(vm, vcpu, &self.xsave)?;
        vcpu.set_xcrs(&decode("xcrs", &self.xcrs)?)
            .map_err(ioctl("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&decode("debug registers", &self.debugregs)?)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        // Only the MSRs whose value differs from a fresh vCPU's are set:
        // fewer ioctls, and MSRs this host's KVM lists but will not take
        // back (paravirtual ones whose CPUID bit is off) are left alone
        // when the guest never changed them.
        let fresh = read_msrs(vcpu, &self.msrs.iter().map(|m| m.index).collect::<Vec<_>>())?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .filter(|m| {
                !matches!(
                    m.index,
                    MSR_IA32_TSC | MSR_IA32_TSC_ADJUST | MSR_IA32_TSC_DEADLINE
                )
            })
            .filter(|m| fresh.iter().find(|f| f.index == m.index).map(|f| f.data) != Some(m.data))
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        for batch in entries.chunks(MSR_BATCH) {
            let list = Msrs::from_entries(batch)
                .map_err(|e| SnapshotError::Invalid(format!("MSR list: {e:?}")))?;
            let n = vcpu.set_msrs(&list).map_err(ioctl("KVM_SET_MSRS"))?;
            if n != batch.len() {
                let index = batch.get(n).map_or(0, |e| e.index);
                return Err(SnapshotError::Msr { op: "write", index });
            }
        }
        // Events last: they may hold an exception that the state above frames.
        vcpu.set_vcpu_events(&decode("vcpu events", &self.events)?)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// Reads the MSRs in `indices` that this vCPU gives (those it refuses are left out).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<MsrValue>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut at = 0;
    while at < indices.len() {
        let batch = &indices[at..indices.len().min(at + MSR_BATCH)];
        let got = msr_batch(vcpu, batch)?;
        at += got.len();
        if got.len() < batch.len() {
            at += 1; // KVM stops at the first MSR it refuses: leave that one out.
        }
        out.extend(got);
    }
    Ok(out)
}

/// One KVM_GET_MSRS of `batch`: the values of the leading MSRs KVM gave
/// (it stops at the first it refuses).
fn msr_batch(vcpu: &VcpuFd, batch: &[u32]) -> Result<Vec<MsrValue>, SnapshotError> {
    let entries: Vec<kvm_msr_entry> = batch
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut list = Msrs::from_entries(&entries)
        .map_err(|e| SnapshotError::Invalid(format!("MSR list: {e:?}")))?;
    let n = vcpu
        .get_msrs(&mut list)
        .map_err(ioctl("KVM_GET_MSRS"))?
        .min(batch.len());
    Ok(list.as_slice()[..n]
        .iter()
        .map(|e| MsrValue {
            index: e.index,
            data: e.data,
        })
        .collect())
}

fn words_to_bytes(words: &[u32], out: &mut Vec<u8>) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

fn bytes_to_words(bytes: &[u8], out: &mut [u32]) {
    for (w, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// The vCPU's whole XSAVE area (the legacy region first), as bytes.
pub(crate) fn capture_xsave(vm: &VmFd, vcpu: &VcpuFd) -> Result<Vec<u8>, SnapshotError> {
    let legacy = std::mem::size_of::<kvm_xsave>();
    let size = xsave_size(vm);
    let extra = (size - legacy).div_ceil(4);
    let mut xsave =
        Xsave::new(extra).map_err(|e| SnapshotError::Invalid(format!("XSAVE area: {e:?}")))?;
    // SAFETY: `xsave` has room for the whole area KVM_CAP_XSAVE2 reports
    // (the legacy region plus `extra` words), asked for just above.
    unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(ioctl("KVM_GET_XSAVE2"))?;
    let mut out = Vec::with_capacity(legacy + extra * 4);
    words_to_bytes(&xsave.as_fam_struct_ref().xsave.region, &mut out);
    words_to_bytes(xsave.as_slice(), &mut out);
    Ok(out)
}

/// Sets the vCPU's XSAVE area from [`capture_xsave`]'s bytes.
pub(crate) fn apply_xsave(vm: &VmFd, vcpu: &VcpuFd, bytes: &[u8]) -> Result<(), SnapshotError> {
    let legacy = std::mem::size_of::<kvm_xsave>();
    let size = xsave_size(vm);
    let expected = legacy + (size - legacy).div_ceil(4) * 4;
    if bytes.len() != expected {
        return Err(SnapshotError::RegisterSize {
            what: "xsave (this host's XSAVE area differs)",
            found: bytes.len(),
            expected,
        });
    }
    let mut xsave = Xsave::new((expected - legacy) / 4)
        .map_err(|e| SnapshotError::Invalid(format!("XSAVE area: {e:?}")))?;
    // SAFETY: only the plain-data region of the FAM struct is written.
    let fam = unsafe { xsave.as_mut_fam_struct() };
    bytes_to_words(&bytes[..legacy], &mut fam.xsave.region);
    bytes_to_words(&bytes[legacy..], xsave.as_mut_slice());
    // SAFETY: `xsave` holds the whole area KVM_CAP_XSAVE2 reports for this
    // host (checked above), so KVM reads nothing past it.
    unsafe { vcpu.set_xsave2(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> VcpuState {
        VcpuState {
            regs: kvm_regs {
                rip: 0x20_1000,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
            sregs: kvm_sregs::default().as_bytes().to_vec(),
            msrs: vec![MsrValue {
                index: MSR_IA32_TSC,
                data: 5,
            }],
            xsave: vec![0; std::mem::size_of::<kvm_xsave>()],
            xcrs: kvm_xcrs::default().as_bytes().to_vec(),
            debugregs: kvm_debugregs::default().as_bytes().to_vec(),
            events: kvm_vcpu_events::default().as_bytes().to_vec(),
        }
    }

    #[test]
    fn sizes_are_checked() {
        let s = sample();
        s.check().unwrap();
        assert_eq!(s.regs().unwrap().rip, 0x20_1000);
        assert_eq!(s.msr(MSR_IA32_TSC), Some(5));
        let mut bad = sample();
        bad.sregs.pop();
        assert!(matches!(
            bad.check(),
            Err(SnapshotError::RegisterSize {
                what: "special registers",
                ..
            })
        ));
        let mut bad = sample();
        bad.xsave.push(0);
        assert!(matches!(
            bad.check(),
            Err(SnapshotError::RegisterSize { what: "xsave", .. })
        ));
    }
}
