//! The VM's cgroup: made and limited before the VMM starts (the VMM joins it
//! itself, before exec, through [`crate::vmm::join_cgroup`]), read for
//! `Stats`, removed at `delete`. What the group and its limits are comes
//! from [`crate::resources`].

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use tandem::cgroup::{Cgroup, CgroupError, Cgroups};

use crate::resources::{self, CgroupPlan};

/// How long a removal waits for a killed VMM to leave the group.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// Creates the group of `plan` with its limits, and opens the
/// `cgroup.procs` files the VMM child writes itself into.
pub fn prepare(plan: &CgroupPlan) -> Result<(Cgroup, Vec<File>), CgroupError> {
    let group = Cgroups::detect()?.create(&plan.path)?;
    group.set_limits(&plan.limits)?;
    let mut files = Vec::new();
    for path in group.procs_files() {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CgroupError::Io {
                what: "opening",
                path: path.clone(),
                source,
            })?;
        files.push(file);
    }
    log::info!(
        "cgroup {} ({:?}): {:?}",
        group.path(),
        group.version(),
        plan.limits
    );
    Ok((group, files))
}

/// Removes `group`, waiting a little for processes still leaving it.
pub fn remove(group: &Cgroup) {
    let start = Instant::now();
    loop {
        match group.remove() {
            Ok(()) => return,
            Err(CgroupError::Busy(_)) if start.elapsed() < REMOVE_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                log::warn!("cannot remove cgroup {}: {e}", group.path());
                return;
            }
        }
    }
}

/// After a dead shim: removes the group the bundle's spec names, if any.
pub fn remove_leftover(bundle: &Path) {
    let Ok((Some(plan), _)) = resources::read(bundle) else {
        return;
    };
    if let Ok(group) = Cgroups::detect().and_then(|c| c.open(&plan.path)) {
        remove(&group);
    }
}
