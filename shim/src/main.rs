//! `containerd-shim-tandem-v1`: the containerd runtime shim for Tandem.
//!
//! containerd starts it for a container created with the runtime
//! `io.containerd.tandem.v1`. The container's `process.args[0]` is a Tandem
//! image (an ELF) in its root filesystem; the shim boots it with
//! `tandem run`, found through `$TANDEM_BIN`, next to the shim, or on
//! `PATH`, in that order. See README.md, "containerd and Kubernetes".
//!
//! Modules: `shim` (the process's lifecycle), `service` (the ttrpc task
//! service), `task` (a task's states, pure), `vmm` (the `tandem` child),
//! `stdio` (the task's FIFOs), `socket` (stale shim sockets), `bundle`
//! (reading the OCI bundle), `resources` (its cgroup and limits), `vmcgroup`
//! (the VM's cgroup), `metrics` (the `Stats` answer), `podnet` (the VM on
//! its pod's network),
//! `error` (what containerd is told).

mod bundle;
mod error;
mod metrics;
mod podnet;
mod resources;
mod service;
mod shim;
mod socket;
mod stdio;
mod task;
#[cfg(test)]
mod testing;
mod vmcgroup;
mod vmm;

fn main() {
    let config = containerd_shim::Config {
        // The shim waits for its own `tandem run` children: the library's
        // reaper would take their exit statuses first.
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<shim::Shim>(shim::RUNTIME_ID, Some(config));
}
