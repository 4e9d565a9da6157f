//! Capturing a stopped VM into a [`SnapshotState`]: its vCPU's registers,
//! read from KVM, with what the VM tells of itself (machine, clock, boot
//! trace, console total). Memory is not part of it: [`write`](super::write)
//! and backup points add it.

use kvm_ioctls::{VcpuFd, VmFd};
use tandem_abi::trace::Phase;

use super::{
    ConsoleState, LiveState, MachineState, MemoryRef, SnapshotError, SnapshotState, TraceState,
    VcpuState,
};
use crate::devices::NetState;
use crate::trace::BootTrace;

impl SnapshotState {
    /// The state of a stopped VM (its vCPU with no I/O pending): the
    /// registers of `vcpu`, with the VM's `machine`, its `live` clock and
    /// identity, its `trace` in host TSC stamps, the console bytes
    /// written so far and its network device's state. `memory` names no file yet: the writer fills it in.
    pub fn capture(
        vm: &VmFd,
        vcpu: &VcpuFd,
        machine: MachineState,
        live: LiveState,
        trace: &BootTrace,
        console_written: u64,
        net: Option<NetState>,
    ) -> Result<Self, SnapshotError> {
        let vcpu = VcpuState::capture(vm, vcpu)?;
        Ok(Self {
            abi_version: tandem_abi::ABI_VERSION,
            vcpu,
            live,
            trace: TraceState {
                tsc_khz: machine.tsc_khz,
                stamps: Phase::ALL
                    .iter()
                    .map(|&p| trace.get(p).unwrap_or(0))
                    .collect(),
            },
            console: ConsoleState {
                written: console_written,
            },
            memory: MemoryRef {
                file: String::new(),
                size: machine.mem_size,
                data_pages: 0,
                digest: [0; 32],
            },
            machine,
            net,
            disks: Vec::new(),
            chunks: Default::default(),
        })
    }
}
