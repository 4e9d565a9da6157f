//! Whether a configuration describes a VM Tandem can build.

use tandem_abi::bootinfo::MAX_CMDLINE;
use tandem_abi::layout;

use super::{VmConfig, VmError};

/// Checks a guest memory size as `tandem run --mem` and the shim's
/// `tandem.dev/memory` annotation need it: from [`layout::MIN_MEM_SIZE`] to
/// [`layout::MAX_MEM_SIZE`], a multiple of 2 MiB. The error says which.
///
/// ```
/// use tandem::check_mem_size;
/// assert!(check_mem_size(64 << 20).is_ok());
/// assert!(check_mem_size(65 << 20).unwrap_err().contains("not a multiple of 2 MiB"));
/// assert!(check_mem_size(3 << 20).unwrap_err().contains("too little"));
/// ```
pub fn check_mem_size(m: u64) -> Result<(), String> {
    if m < layout::MIN_MEM_SIZE {
        return Err(format!(
            "{} MiB of memory is too little: Tandem needs at least {} MiB (layout {} MiB + 2 MiB heap)",
            m >> 20,
            layout::MIN_MEM_SIZE >> 20,
            layout::HEAP_ADDR >> 20
        ));
    }
    if m > layout::MAX_MEM_SIZE {
        return Err(format!(
            "{} MiB of memory is more than the {} MiB Tandem maps",
            m >> 20,
            layout::MAX_MEM_SIZE >> 20
        ));
    }
    if !m.is_multiple_of(layout::LARGE_PAGE_SIZE) {
        return Err(format!("memory size {m} is not a multiple of 2 MiB"));
    }
    Ok(())
}

/// Checks what every VM, booted or restored, must satisfy before KVM is
/// asked for anything: its memory size and the length of its command line.
pub(super) fn check_config(config: &VmConfig) -> Result<(), VmError> {
    check_mem_size(config.mem_size).map_err(VmError::Config)?;
    if config.cmdline.len() > MAX_CMDLINE {
        return Err(VmError::Config(format!(
            "command line of {} bytes exceeds {} bytes",
            config.cmdline.len(),
            MAX_CMDLINE
        )));
    }
    if config.disks.len() > crate::devices::blk::MAX_DISKS {
        return Err(VmError::Config(format!(
            "{} disks asked for; a VM has at most {}",
            config.disks.len(),
            crate::devices::blk::MAX_DISKS
        )));
    }
    if !config.disks.is_empty() && config.mem_size > layout::VIRTIO_MMIO_BASE {
        return Err(VmError::Config(format!(
            "a VM with a disk has at most {} MiB of memory (its device windows are at {:#x})",
            layout::VIRTIO_MMIO_BASE >> 20,
            layout::VIRTIO_MMIO_BASE
        )));
    }
    if config.net.is_some() && config.mem_size > layout::VIRTIO_MMIO_BASE {
        return Err(VmError::Config(format!(
            "a VM with a network device has at most {} MiB of memory (its device window is at {:#x})",
            layout::VIRTIO_MMIO_BASE >> 20,
            layout::VIRTIO_MMIO_BASE
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid() {
        assert!(check_config(&VmConfig::default()).is_ok());
    }

    #[test]
    fn a_command_line_past_the_boot_info_limit_is_refused() {
        let config = VmConfig {
            cmdline: "x".repeat(MAX_CMDLINE + 1),
            ..VmConfig::default()
        };
        let e = check_config(&config).unwrap_err().to_string();
        assert!(e.contains(&format!("exceeds {MAX_CMDLINE} bytes")), "{e}");
        let config = VmConfig {
            cmdline: "x".repeat(MAX_CMDLINE),
            ..VmConfig::default()
        };
        assert!(check_config(&config).is_ok());
    }

    #[test]
    fn memory_sizes_at_the_edges() {
        assert!(check_mem_size(layout::MIN_MEM_SIZE).is_ok());
        assert!(check_mem_size(layout::MAX_MEM_SIZE).is_ok());
        assert!(check_mem_size(layout::MIN_MEM_SIZE - layout::LARGE_PAGE_SIZE).is_err());
        let e = check_mem_size(layout::MAX_MEM_SIZE + layout::LARGE_PAGE_SIZE).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let config = VmConfig {
            mem_size: 3 << 20,
            ..VmConfig::default()
        };
        assert!(matches!(check_config(&config), Err(VmError::Config(_))));
    }
}
