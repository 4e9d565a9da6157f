//! What the app sees of its machine: command line, boot info, boot time,
//! and the calls that end or announce its life (`exit`, `ready`).

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::time::Duration;

use tandem_abi::bootinfo::BootInfo;
use tandem_abi::layout::LiveArea;
use tandem_abi::trace::Phase;

use crate::platform::{self, live_word};
use crate::{time, trace};

/// The app's view of its VM, built from the checked boot-info block.
pub struct Env {
    info: BootInfo,
}

struct EnvCell(UnsafeCell<MaybeUninit<Env>>);

// SAFETY: the guest runs one vCPU with interrupts off; the cell is written
// once, in `init`, before the app starts, and only read afterwards.
unsafe impl Sync for EnvCell {}

static ENV: EnvCell = EnvCell(UnsafeCell::new(MaybeUninit::uninit()));

pub(crate) fn init(info: BootInfo) -> &'static Env {
    // SAFETY: called once from the entry path before any reader exists (see EnvCell).
    unsafe { (*ENV.0.get()).write(Env { info }) }
}

/// The app's environment, for library code that runs on the app's behalf.
pub(crate) fn get() -> &'static Env {
    // SAFETY: `init` wrote the cell before the app's `main`, and only code
    // the app calls (so after `main` began) gets here; it is never written again.
    unsafe { (*ENV.0.get()).assume_init_ref() }
}

impl Env {
    /// The whole command line.
    pub fn cmdline(&self) -> &str {
        &self.info.cmdline
    }

    /// The command line split on whitespace.
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.info.cmdline.split_whitespace()
    }

    /// The checked boot-info block, as the VM booted with it. (For a
    /// restored or cloned VM the host rewrites the block in memory with its
    /// new generation and devices; the network stack reads that one again
    /// when it sees the generation change.)
    pub fn boot_info(&self) -> &BootInfo {
        &self.info
    }

    /// The VM's generation: changes on every restore or clone (reseed on
    /// change). Read from the live area, which the host rewrites on restore;
    /// the boot-info block keeps the generation the VM booted with.
    pub fn generation(&self) -> u64 {
        match live_word(LiveArea::GENERATION) {
            0 => self.info.generation,
            live => live,
        }
    }

    /// How many restores this VM's lineage has been through (0 when booted).
    pub fn restores(&self) -> u64 {
        live_word(LiveArea::RESTORES)
    }

    /// Fresh random bytes: the live area's after a restore or clone, the
    /// boot-info block's before.
    pub fn entropy(&self) -> [u8; 32] {
        if live_word(LiveArea::GENERATION) == 0 {
            return self.info.entropy;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&live_word(LiveArea::ENTROPY + i as u64 * 8).to_le_bytes());
        }
        out
    }

    /// Time from the VMM's start to the app's `main`, on the TSC. Without a
    /// Tandem VMM (PVH, Multiboot2) nothing stamps the VMM's start: then it
    /// is the time from the guest's first instruction.
    pub fn boot_time(&self) -> Duration {
        let main = trace::get(Phase::AppMain);
        let start = match self.info.host.vmm_start {
            0 => trace::get(Phase::FirstInstruction),
            t => t,
        };
        time::ticks_to_duration(main.saturating_sub(start))
    }

    /// How the guest was booted: "tandem", "pvh", or the Multiboot2 boot
    /// loader's name.
    pub fn loader(&self) -> &str {
        &self.info.loader
    }

    /// Time from the guest's first instruction to the app's `main`.
    pub fn guest_init_time(&self) -> Duration {
        let main = trace::get(Phase::AppMain);
        time::ticks_to_duration(main.saturating_sub(trace::get(Phase::FirstInstruction)))
    }

    /// The host's wall clock, in nanoseconds since the Unix epoch (one VM exit).
    /// `None` without a Tandem VMM.
    pub fn wall_clock_nanos(&self) -> Option<u64> {
        platform::wall_clock_nanos()
    }
}

/// What [`snapshot`] found when it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The host wrote the snapshot; this is the original VM carrying on.
    Taken,
    /// This VM was restored (or cloned) from the snapshot: its generation changed.
    Restored,
    /// The host took no snapshot (no snapshot directory, or the write failed).
    NotTaken,
}

/// Asks the host to snapshot this VM now (one VM exit, plus the time to
/// write the snapshot). Returns twice, in a sense: once in the original VM
/// ([`SnapshotOutcome::Taken`]) and once in every VM restored from it
/// ([`SnapshotOutcome::Restored`]).
pub fn snapshot() -> SnapshotOutcome {
    let before = live_word(LiveArea::GENERATION);
    let taken = platform::snapshot();
    if live_word(LiveArea::GENERATION) != before {
        return SnapshotOutcome::Restored;
    }
    match taken {
        Some(true) => SnapshotOutcome::Taken,
        _ => SnapshotOutcome::NotTaken,
    }
}

/// Tells the host the app is ready to serve (flushes the console too).
pub fn ready() {
    trace::stamp(Phase::AppReady);
    platform::ready();
}

/// Stops the VM with `code` (0 is success). The host drains the console first.
pub fn exit(code: u8) -> ! {
    platform::exit(code)
}

/// What `main` may return.
pub trait Termination {
    /// The exit code it stands for.
    fn exit_code(self) -> u8;
}

impl Termination for () {
    fn exit_code(self) -> u8 {
        0
    }
}

impl Termination for u8 {
    fn exit_code(self) -> u8 {
        self
    }
}

impl<E: core::fmt::Display> Termination for Result<(), E> {
    fn exit_code(self) -> u8 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                crate::println!("error: {e}");
                1
            }
        }
    }
}
