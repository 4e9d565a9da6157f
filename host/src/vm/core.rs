//! A core file of a VM whose guest crashed, written at the end of its run
//! when its configuration asks for one ([`VmConfig::core`](super::VmConfig::core)).

use std::path::PathBuf;

use tandem_abi::exit::{EXCEPTION, PANIC};

use super::error::ioctl;
use super::{ExitStatus, Vm, VmError};
use crate::coredump::{self, CoreNotes, CoreStats, Stop};

/// Where a crashed guest's core file goes, and what it calls the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreFile {
    /// The file to write.
    pub path: PathBuf,
    /// The program's name in the core's notes (gdb prints it), e.g. the
    /// image's file name.
    pub program: String,
}

/// How the guest stopped, if it crashed: a panic (101), an exception it
/// could not handle (102, the vector from the fault record if there is
/// one), or a crash the VMM saw (122).
fn crash(status: &ExitStatus, fault_vector: Option<u64>) -> Option<Stop> {
    match status {
        ExitStatus::Exited(PANIC) => Some(Stop::Panic),
        ExitStatus::Exited(EXCEPTION) => Some(fault_vector.map_or(Stop::Crash, Stop::Exception)),
        ExitStatus::Crashed(_) => Some(fault_vector.map_or(Stop::Crash, Stop::Exception)),
        _ => None,
    }
}

impl Vm {
    /// Writes the core file the configuration asks for if the guest
    /// crashed; says what it wrote. At a fault, the registers are those the
    /// guest recorded at the faulting instruction.
    pub(super) fn core_if_crashed(
        &self,
        status: &ExitStatus,
    ) -> Result<Option<(PathBuf, CoreStats)>, VmError> {
        let Some(core) = &self.config.core else {
            return Ok(None);
        };
        let record = coredump::fault_record(&self.ram.mem);
        let Some(stop) = crash(status, record.map(|r| r.vector)) else {
            return Ok(None);
        };
        let regs = self.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let mut regs = coredump::registers(&regs, &sregs);
        if let Some(rec) = &record {
            regs = coredump::at_fault(regs, rec);
        }
        // The FP registers are a nicety: a core without them still opens.
        let xsave = self.vcpu.get_xsave().ok();
        let fpregs = xsave.and_then(|x| {
            let bytes: Vec<u8> = x.region.iter().flat_map(|w| w.to_le_bytes()).collect();
            coredump::fpregs(&bytes)
        });
        let notes = CoreNotes {
            regs,
            signal: stop.signal(),
            fpregs,
            name: core.program.clone(),
            args: coredump::psargs(&core.program, &self.config.cmdline),
        };
        let (path, ram) = (&core.path, &self.ram);
        let stats = crate::io_thread::call(|| coredump::write(path, &notes, ram))
            .map_err(|e| VmError::Config(e.to_string()))??;
        Ok(Some((core.path.clone(), stats)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crashes_get_a_core() {
        assert_eq!(crash(&ExitStatus::Exited(PANIC), None), Some(Stop::Panic));
        assert_eq!(
            crash(&ExitStatus::Exited(EXCEPTION), Some(14)),
            Some(Stop::Exception(14))
        );
        assert_eq!(
            crash(&ExitStatus::Exited(EXCEPTION), None),
            Some(Stop::Crash)
        );
        assert_eq!(
            crash(&ExitStatus::Crashed("triple fault".into()), None),
            Some(Stop::Crash)
        );
        assert_eq!(crash(&ExitStatus::Exited(0), Some(14)), None);
        assert_eq!(crash(&ExitStatus::Exited(1), None), None);
        assert_eq!(crash(&ExitStatus::Stopped, None), None);
    }
}
