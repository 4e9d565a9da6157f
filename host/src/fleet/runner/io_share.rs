//! The doing half of `[fleet] io_budget`: one [`IoScheduler`] for the
//! fleet behind a lock, and per VM a handle its disks ask
//! ([`SharedLimit`]), on their vCPU threads (the VMs of a fleet share
//! one process). The decisions are all in [`crate::fleet::io`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::devices::rate_limiter::{Admit, SharedLimit};
use crate::fleet::config::FleetSpec;
use crate::fleet::io::{IoScheduler, IoUse, EPOCH};

/// The fleet's I/O scheduler, shared by its VMs' disks.
#[derive(Debug)]
pub(super) struct FleetIo {
    sched: Mutex<IoScheduler>,
}

impl FleetIo {
    /// The scheduler for `spec`'s budget, if it has one.
    pub(super) fn new(spec: &FleetSpec) -> Option<Arc<Self>> {
        let budget = spec.io_budget?;
        let classes: Vec<_> = spec.vms.iter().map(|v| v.io_class).collect();
        Some(Arc::new(Self {
            sched: Mutex::new(IoScheduler::new(budget, &classes, Instant::now())),
        }))
    }

    /// The handle VM `vm`'s disks draw from.
    pub(super) fn share(self: &Arc<Self>, vm: usize) -> Arc<dyn SharedLimit> {
        Arc::new(IoShare {
            fleet: self.clone(),
            vm,
        })
    }

    /// What VM `vm` has moved under the budget.
    pub(super) fn usage(&self, vm: usize) -> IoUse {
        self.sched.lock().map(|s| s.usage(vm)).unwrap_or_default()
    }
}

/// One VM's draw on the fleet's budget.
#[derive(Debug)]
struct IoShare {
    fleet: Arc<FleetIo>,
    vm: usize,
}

impl SharedLimit for IoShare {
    fn admit(&self, bytes: u64, now: Instant) -> Admit {
        match self.fleet.sched.lock() {
            Ok(mut s) => s.admit(self.vm, bytes, now),
            // A thread that panicked holding the lock: the budget can no
            // longer be shared; wait an epoch at a time rather than run free.
            Err(_) => Admit::At(now + EPOCH),
        }
    }
}
