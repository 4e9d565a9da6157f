//! Tearing a VM down off its runner's path. Closing a VM's descriptors and
//! unmapping its memory costs KVM's shadow MMU time that grows with memory
//! size (here about 2 ms more at 1 GiB than at 64 MiB), after the guest
//! has already exited: a finished run hands its VM to one teardown thread,
//! so [`Vm::run`](super::Vm::run) returns as soon as the report is made.
//!
//! The thread is started when a VM is built (before any seccomp filter:
//! a vCPU thread may not create threads), and its queue is short, so VMs
//! ending faster than they can be torn down wait for room instead of
//! piling up; without the thread a VM is torn down in place, as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;

use super::Vm;

/// VMs waiting for teardown before a finished run waits for room.
const QUEUE: usize = 4;

static TEARDOWN: OnceLock<Option<SyncSender<Vm>>> = OnceLock::new();
static IN_PLACE: AtomicBool = AtomicBool::new(false);

/// Tears every VM down where its run ends, with no teardown thread: for a
/// process that runs one VM and exits (`tandem run`), whose exit pays for
/// the teardown either way; it saves starting a thread before the VM.
/// Call it before the first VM is built.
pub fn tear_down_in_place() {
    IN_PLACE.store(true, Ordering::SeqCst);
}

/// Starts the teardown thread, once per process.
pub(super) fn start() {
    if IN_PLACE.load(Ordering::SeqCst) {
        return;
    }
    TEARDOWN.get_or_init(|| {
        let (tx, rx) = sync_channel::<Vm>(QUEUE);
        std::thread::Builder::new()
            .name("tandem-teardown".into())
            .spawn(move || {
                for vm in rx {
                    drop(vm);
                }
            })
            .ok()
            .map(|_| tx)
    });
}

/// Tears `vm` down on the teardown thread, or here if there is none.
pub(super) fn dispose(vm: Vm) {
    match TEARDOWN.get() {
        Some(Some(tx)) => {
            if let Err(e) = tx.send(vm) {
                drop(e.0);
            }
        }
        _ => drop(vm),
    }
}
