//! `containerd-shim-tandem-v1`: the containerd runtime shim for Tandem.
//!
//! containerd starts it for a container created with the runtime
//! `io.containerd.tandem.v1`. The container's `process.args[0]` is a Tandem
//! image (an ELF) in its root filesystem; the shim boots it with
//! `tandem run`, found through `$TANDEM_BIN`, next to the shim, or on
//! `PATH`, in that order. See README.md, "containerd and Kubernetes".

mod bundle;
mod service;

fn main() {
    let config = containerd_shim::Config {
        // The shim waits for its own `tandem run` children: the library's
        // reaper would take their exit statuses first.
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Shim>(service::RUNTIME_ID, Some(config));
}
