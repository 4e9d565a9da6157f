//! What a KVM exit means for the run, decided apart from running (as in
//! Firecracker's `handle_kvm_exit`): a pure function of what `KVM_RUN`
//! returned, so every kind of exit can be built and checked in a test.

use kvm_ioctls::VcpuExit;
use tandem_abi::hypercall::HypercallPort;

use super::ExitStatus;
use crate::hypercall::HypercallError;

/// Most bytes one port write carries (an `out` writes 1, 2 or 4).
const MAX_IO_BYTES: usize = 8;

/// What the run loop does after `KVM_RUN` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// `KVM_RUN` was interrupted (a kick or a signal) before any exit:
    /// look at what is due and run again.
    Rerun,
    /// `KVM_RUN` itself failed: end the run with this status at once.
    Fail(ExitStatus),
    /// The guest exited (an exit to count, after which its console is
    /// drained): then do this.
    Exited(ExitAction),
}

/// What a VM exit asks of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExitAction {
    /// The guest wrote `data[..len]` to `port`: serve the hypercall.
    Serve {
        /// The port written.
        port: u16,
        /// The bytes written, copied out of the vCPU's run area.
        data: [u8; MAX_IO_BYTES],
        /// How many of them.
        len: usize,
    },
    /// The guest read `len` bytes at `addr`, outside memory: a device's
    /// register (answered in the run area before this decision) or nothing.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
    },
    /// The guest wrote `data[..len]` at `addr`, outside memory: a device's
    /// register or nothing.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written, copied out of the run area.
        data: [u8; MAX_IO_BYTES],
        /// How many of them.
        len: usize,
    },
    /// The guest's exception entry stopped for a debugger (its registers
    /// are in the fault record).
    DebugTrap,
    /// The guest cannot go on: end the run with this status.
    Stop(ExitStatus),
}

/// Decides what an exit means, copying what it carries (the run area it
/// points into is rewritten by the next `KVM_RUN`).
pub(super) fn handle_kvm_exit(exit: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> Decision {
    let stop = |status| Decision::Exited(ExitAction::Stop(status));
    let crash = |why: String| stop(ExitStatus::Crashed(why));
    match exit {
        Ok(VcpuExit::IoOut(port, _)) if port == HypercallPort::DebugTrap as u16 => {
            Decision::Exited(ExitAction::DebugTrap)
        }
        Ok(VcpuExit::IoOut(port, bytes)) => {
            let mut data = [0u8; MAX_IO_BYTES];
            let len = bytes.len().min(MAX_IO_BYTES);
            data[..len].copy_from_slice(&bytes[..len]);
            Decision::Exited(ExitAction::Serve { port, data, len })
        }
        // Hypercalls are writes only: a read of one of their ports is a
        // misuse, of any other port a port Tandem does not have.
        Ok(VcpuExit::IoIn(port, _)) => {
            let e = match HypercallPort::try_from(port) {
                Ok(_) => HypercallError::PortRead(port),
                Err(port) => HypercallError::UnknownPort(port),
            };
            stop(ExitStatus::ProtocolViolation(e))
        }
        Ok(VcpuExit::Shutdown) => {
            crash("triple fault (the guest could not handle an exception)".into())
        }
        Ok(VcpuExit::Hlt) => crash("the guest halted".into()),
        Ok(VcpuExit::MmioRead(addr, _)) => Decision::Exited(ExitAction::MmioRead { addr }),
        Ok(VcpuExit::MmioWrite(addr, bytes)) => {
            let mut data = [0u8; MAX_IO_BYTES];
            let len = bytes.len().min(MAX_IO_BYTES);
            data[..len].copy_from_slice(&bytes[..len]);
            Decision::Exited(ExitAction::MmioWrite { addr, data, len })
        }
        Ok(VcpuExit::FailEntry(reason, _)) => crash(format!(
            "KVM could not enter the guest (reason {reason:#x})"
        )),
        Ok(VcpuExit::InternalError) => crash("KVM internal error".into()),
        Ok(other) => crash(format!("unexpected VM exit {other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Decision::Rerun,
        Err(e) => Decision::Fail(ExitStatus::Crashed(format!("KVM_RUN failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crashed(d: Decision) -> String {
        match d {
            Decision::Exited(ExitAction::Stop(ExitStatus::Crashed(why))) => why,
            other => panic!("not a crash: {other:?}"),
        }
    }

    #[test]
    fn a_port_write_is_a_hypercall_with_its_bytes_copied() {
        let port = HypercallPort::Request as u16;
        assert_eq!(
            handle_kvm_exit(Ok(VcpuExit::IoOut(port, &[1, 2, 3, 4]))),
            Decision::Exited(ExitAction::Serve {
                port,
                data: [1, 2, 3, 4, 0, 0, 0, 0],
                len: 4
            })
        );
        // An unknown port is the hypercall layer's to refuse, with its error.
        assert_eq!(
            handle_kvm_exit(Ok(VcpuExit::IoOut(0x80, &[7]))),
            Decision::Exited(ExitAction::Serve {
                port: 0x80,
                data: [7, 0, 0, 0, 0, 0, 0, 0],
                len: 1
            })
        );
        // More than a port write can carry is cut, never a panic.
        let long = [9u8; 12];
        let Decision::Exited(ExitAction::Serve { len, data, .. }) =
            handle_kvm_exit(Ok(VcpuExit::IoOut(1, &long)))
        else {
            panic!("not a hypercall");
        };
        assert_eq!((len, data), (MAX_IO_BYTES, [9; MAX_IO_BYTES]));
    }

    #[test]
    fn the_debug_port_is_a_debugger_stop() {
        let port = HypercallPort::DebugTrap as u16;
        assert_eq!(
            handle_kvm_exit(Ok(VcpuExit::IoOut(port, &[0, 0, 0, 0]))),
            Decision::Exited(ExitAction::DebugTrap)
        );
    }

    #[test]
    fn a_port_read_breaks_the_protocol() {
        let violation = |e| Decision::Exited(ExitAction::Stop(ExitStatus::ProtocolViolation(e)));
        let port = HypercallPort::Exit as u16;
        let mut buf = [0u8; 4];
        assert_eq!(
            handle_kvm_exit(Ok(VcpuExit::IoIn(port, &mut buf))),
            violation(HypercallError::PortRead(port))
        );
        assert_eq!(
            handle_kvm_exit(Ok(VcpuExit::IoIn(0x3f8, &mut buf))),
            violation(HypercallError::UnknownPort(0x3f8))
        );
    }

    #[test]
    fn faults_and_halts_are_crashes() {
        assert!(crashed(handle_kvm_exit(Ok(VcpuExit::Shutdown))).contains("triple fault"));
        assert_eq!(
            crashed(handle_kvm_exit(Ok(VcpuExit::Hlt))),
            "the guest halted"
        );

        assert_eq!(
            crashed(handle_kvm_exit(Ok(VcpuExit::FailEntry(0x21, 0)))),
            "KVM could not enter the guest (reason 0x21)"
        );
        assert_eq!(
            crashed(handle_kvm_exit(Ok(VcpuExit::InternalError))),
            "KVM internal error"
        );
        assert_eq!(
            crashed(handle_kvm_exit(Ok(VcpuExit::IrqWindowOpen))),
            "unexpected VM exit IrqWindowOpen"
        );
    }

    #[test]
    fn mmio_accesses_go_to_the_devices_with_their_bytes() {
        let mut buf = [0u8; 4];
        assert_eq!(
            handle_kvm_exit(Ok(VcpuExit::MmioRead(0xfeb0_0000, &mut buf))),
            Decision::Exited(ExitAction::MmioRead { addr: 0xfeb0_0000 })
        );
        assert_eq!(
            handle_kvm_exit(Ok(VcpuExit::MmioWrite(0x1000, &[1, 2]))),
            Decision::Exited(ExitAction::MmioWrite {
                addr: 0x1000,
                data: [1, 2, 0, 0, 0, 0, 0, 0],
                len: 2
            })
        );
        let Decision::Exited(ExitAction::MmioWrite { len, .. }) =
            handle_kvm_exit(Ok(VcpuExit::MmioWrite(0x1000, &[3; 16])))
        else {
            panic!("not an MMIO write");
        };
        assert_eq!(len, MAX_IO_BYTES);
    }

    #[test]
    fn an_interrupted_run_is_run_again() {
        for errno in [libc::EINTR, libc::EAGAIN] {
            assert_eq!(
                handle_kvm_exit(Err(kvm_ioctls::Error::new(errno))),
                Decision::Rerun
            );
        }
    }

    #[test]
    fn a_failed_run_ends_at_once() {
        let Decision::Fail(ExitStatus::Crashed(why)) =
            handle_kvm_exit(Err(kvm_ioctls::Error::new(libc::EFAULT)))
        else {
            panic!("not a failure");
        };
        assert!(why.starts_with("KVM_RUN failed: "), "{why}");
    }
}
