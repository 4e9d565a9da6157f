//! Warm pools: VMs restored from one snapshot ahead of need (VM created,
//! memory mapped with the snapshot's working set faulted in, vCPU created
//! and its registers set), so starting one is taking it off a queue. A
//! background thread restores a new one whenever one is taken.
//!
//! Every VM of a pool is a restore of its own: a new generation, fresh
//! entropy, private copies of the pages it writes; the guest's clock is
//! carried on from the snapshot when the taken VM first runs, so time spent
//! waiting in the pool does not show as a jump.
//!
//! ```
//! use tandem::pool::Pool;
//! use tandem::{ConsoleSink, ExitStatus, Hypervisor, Image, Snapshot, VmBuilder, VmConfig};
//! # let counter = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/target/x86_64-unknown-none/release/counter");
//! # let dir = std::env::temp_dir().join(format!("tandem-pool-doc-{}", std::process::id()));
//! let hv = Hypervisor::open()?;
//! let image = Image::from_file(counter.as_ref())?;
//! let mut boot = VmConfig { cmdline: "ready exit-at=3".into(), console: ConsoleSink::Discard, ..VmConfig::default() };
//! boot.snapshot_at_ready = Some(dir.clone());
//! boot.exit_after_snapshot = true;
//! VmBuilder::new(&hv, &image).config(boot).run()?;
//!
//! let pool = Pool::new(Snapshot::load(&dir)?, 2, VmConfig { console: ConsoleSink::Discard, ..VmConfig::default() })?;
//! let (a, b) = (pool.take(None)?, pool.take(None)?);
//! assert_ne!(a.generation(), b.generation());
//! assert_eq!(a.run()?.status, ExitStatus::Exited(0));
//! assert_eq!(b.run()?.status, ExitStatus::Exited(0));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tandem_abi::trace::Phase;

use crate::kvm::{Hypervisor, KvmError};
use crate::snapshot::Snapshot;
use crate::trace::rdtsc;
use crate::vm::{Prefetch, RestoreInputs, Vm, VmConfig, VmError};

/// Why a pool could not be made or give a VM.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `/dev/kvm` could not be opened.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A VM could not be restored.
    #[error("cannot restore a pool VM: {0}")]
    Vm(#[from] VmError),
    /// A configuration a pool cannot give its VMs.
    #[error("a pooled VM cannot have {0}")]
    Config(&'static str),
}

/// How long the refill thread waits after a failed restore before it tries again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// VMs restored from one snapshot, kept ready.
pub struct Pool {
    shared: Arc<Shared>,
    refiller: Option<JoinHandle<()>>,
}

struct Shared {
    hv: Hypervisor,
    snapshot: Snapshot,
    inputs: RestoreInputs,
    template: VmConfig,
    size: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Vm>,
    stop: bool,
    /// Takes that found the pool empty and restored on the spot.
    misses: u64,
}

/// What a pool has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// VMs ready now.
    pub ready: usize,
    /// The pool's size.
    pub size: usize,
    /// Takes that found it empty.
    pub misses: u64,
}

impl Pool {
    /// Restores `size` VMs of `snapshot` (each with `template`'s
    /// configuration, its machine taken from the snapshot as
    /// [`Vm::restore`] does) before it returns, then keeps `size` ready
    /// from a background thread. `template` must have no backups (their
    /// dirty log is part of the memory slot), no network device and no
    /// working-set recording.
    pub fn new(snapshot: Snapshot, size: usize, template: VmConfig) -> Result<Self, PoolError> {
        Self::with_hypervisor(Hypervisor::open()?, snapshot, size, template)
    }

    /// [`Pool::new`] with a `/dev/kvm` handle opened before (a jailed
    /// process, no longer root, may not open it again).
    pub fn with_hypervisor(
        hv: Hypervisor,
        snapshot: Snapshot,
        size: usize,
        template: VmConfig,
    ) -> Result<Self, PoolError> {
        check_template(&template)?;
        let inputs = RestoreInputs::read(&snapshot, template.prefetch);
        let shared = Arc::new(Shared {
            hv,
            snapshot,
            inputs,
            template,
            size,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        for _ in 0..size {
            let vm = shared.restore()?;
            shared.lock().ready.push_back(vm);
        }
        let s = shared.clone();
        let refiller = std::thread::Builder::new()
            .name("tandem-pool".into())
            .spawn(move || s.refill())
            .ok();
        if refiller.is_none() {
            log::warn!("pool: no refill thread; takes past the first {size} restore on the spot");
        }
        Ok(Self { shared, refiller })
    }

    /// A VM ready to run: one from the pool (restored on the spot if the
    /// pool is empty), its console, timeout, snapshot and stop settings
    /// replaced by `config`'s when given (its machine stays the
    /// snapshot's). Its boot trace counts from now.
    pub fn take(&self, config: Option<VmConfig>) -> Result<Vm, PoolError> {
        let now = rdtsc();
        if let Some(c) = &config {
            check_template(c)?;
        }
        let pooled = {
            let mut st = self.shared.lock();
            let vm = st.ready.pop_front();
            if vm.is_none() {
                st.misses += 1;
            }
            vm
        };
        self.shared.changed.notify_all();
        let mut vm = match pooled {
            Some(vm) => vm,
            None => self.shared.restore()?,
        };
        if let Some(c) = config {
            vm.reconfigure(c);
        }
        for phase in [
            Phase::VmmStart,
            Phase::KvmReady,
            Phase::VmCreated,
            Phase::MemoryMapped,
        ] {
            vm.trace_mut().set(phase, now);
        }
        vm.trace_mut().stamp(Phase::VcpuReady);
        Ok(vm)
    }

    /// Waits until the pool is full again (or `timeout` passes); whether it is.
    pub fn wait_full(&self, timeout: Duration) -> bool {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |s| s.ready.len() < self.shared.size)
            .unwrap_or_else(|e| e.into_inner());
        st.ready.len() >= self.shared.size
    }

    /// Ready VMs, size and misses.
    pub fn stats(&self) -> PoolStats {
        let st = self.shared.lock();
        PoolStats {
            ready: st.ready.len(),
            size: self.shared.size,
            misses: st.misses,
        }
    }

    /// Guest memory the pool's ready VMs may hold at most (each maps the
    /// snapshot's whole memory), for budgets.
    pub fn memory(&self) -> u64 {
        pool_memory(
            self.shared.size,
            self.shared.snapshot.state.machine.mem_size,
        )
    }
}

/// Guest memory a pool of `size` VMs of `mem_size` bytes counts for.
pub fn pool_memory(size: usize, mem_size: u64) -> u64 {
    (size as u64).saturating_mul(mem_size)
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.refiller.take() {
            let _ = t.join();
        }
    }
}

fn check_template(c: &VmConfig) -> Result<(), PoolError> {
    if c.backup.is_some() {
        return Err(PoolError::Config("backups"));
    }
    if c.net.is_some() {
        return Err(PoolError::Config("a network device"));
    }
    if !c.disks.is_empty() {
        return Err(PoolError::Config("disks"));
    }
    if c.prefetch == Prefetch::Record {
        return Err(PoolError::Config("--prefetch record"));
    }
    Ok(())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restore(&self) -> Result<Vm, VmError> {
        Vm::restore_with(
            &self.hv,
            &self.snapshot,
            &self.inputs,
            self.template.clone(),
            rdtsc(),
        )
    }

    /// The refill thread: restores one whenever fewer than `size` are ready.
    fn refill(&self) {
        loop {
            {
                let st = self.lock();
                let st = self
                    .changed
                    .wait_while(st, |s| !s.stop && s.ready.len() >= self.size)
                    .unwrap_or_else(|e| e.into_inner());
                if st.stop {
                    return;
                }
            }
            match self.restore() {
                Ok(vm) => {
                    let mut st = self.lock();
                    if st.stop {
                        return;
                    }
                    st.ready.push_back(vm);
                    drop(st);
                    self.changed.notify_all();
                }
                Err(e) => {
                    log::warn!("pool: cannot restore a VM: {e}");
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
    }
}
