//! The public way to make a VM: [`VmBuilder`].

use std::time::Duration;

use super::{RunReport, Vm, VmConfig, VmError};
use crate::console::ConsoleSink;
use crate::image::Image;
use crate::kvm::Hypervisor;
use crate::trace::rdtsc;

/// Builds and boots VMs from one image.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tandem::{ConsoleSink, ExitStatus, Hypervisor, Image, VmBuilder};
/// # let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/target/x86_64-unknown-none/release/hello");
/// let hv = Hypervisor::open()?;
/// let image = Image::from_file(hello.as_ref())?;
/// let console = Arc::new(Mutex::new(Vec::new()));
/// let report = VmBuilder::new(&hv, &image)
///     .cmdline("a b")
///     .mem_size(16 << 20)
///     .console(ConsoleSink::Capture(console.clone()))
///     .run()?;
/// assert_eq!(report.status, ExitStatus::Exited(0));
/// assert!(String::from_utf8_lossy(&console.lock().unwrap()).contains(r#"command line: "a b""#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct VmBuilder<'a> {
    hv: &'a Hypervisor,
    image: &'a Image,
    config: VmConfig,
    start_tsc: u64,
}

impl<'a> VmBuilder<'a> {
    /// A builder with the default configuration; the boot clock starts now.
    pub fn new(hv: &'a Hypervisor, image: &'a Image) -> Self {
        Self {
            hv,
            image,
            config: VmConfig::default(),
            start_tsc: rdtsc(),
        }
    }
    /// Uses `config` whole.
    pub fn config(mut self, config: VmConfig) -> Self {
        self.config = config;
        self
    }
    /// Guest memory size in bytes.
    pub fn mem_size(mut self, bytes: u64) -> Self {
        self.config.mem_size = bytes;
        self
    }
    /// The app's command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.config.cmdline = cmdline.into();
        self
    }
    /// Stop after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }
    /// Where the console goes.
    pub fn console(mut self, sink: ConsoleSink) -> Self {
        self.config.console = sink;
        self
    }
    /// Counts the boot from `tsc` (for example the process start) instead of now.
    pub fn started_at(mut self, tsc: u64) -> Self {
        self.start_tsc = tsc;
        self
    }

    /// Creates the VM, ready to run.
    pub fn build(self) -> Result<Vm, VmError> {
        Vm::boot(self.hv, self.image, self.config, self.start_tsc)
    }

    /// Creates the VM and runs it to the end.
    pub fn run(self) -> Result<RunReport, VmError> {
        self.build()?.run()
    }
}
