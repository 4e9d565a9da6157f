//! The boot-info block a booting guest is handed: its memory map, command
//! line, CPU facts, host stamps, identity and entropy seed.

use tandem_abi::bootinfo::{
    BootInfo, BootPath, CpuInfo, Device, HostStamps, MemKind, MemRegion, ENTROPY_SIZE, MAX_DEVICES,
};
use tandem_abi::layout;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{VmConfig, VmError};
use crate::devices::{BlkDevice, NetDevice};
use crate::entropy::fill_random;

/// The boot-info block for a VM of `config` whose vCPU runs its TSC at
/// `tsc_khz` with CPUID leaf 1 `cpu_features` (ECX, EDX); `vmm_start` and
/// `vcpu_ready` are guest TSC stamps.
pub(super) fn boot_info(
    config: &VmConfig,
    tsc_khz: u64,
    cpu_features: (u32, u32),
    vmm_start: u64,
    vcpu_ready: u64,
    net: Option<&NetDevice>,
    disks: &[BlkDevice],
) -> BootInfo {
    let mut memory = heapless::Vec::new();
    let heap = MemRegion {
        start: layout::HEAP_ADDR,
        len: layout::heap_size(config.mem_size),
        kind: MemKind::Usable,
    };
    // Two entries always fit MAX_MEM_REGIONS.
    let _ = memory.push(MemRegion {
        start: 0,
        len: layout::HEAP_ADDR,
        kind: MemKind::Reserved,
    });
    let _ = memory.push(heap);
    let mut entropy = [0u8; ENTROPY_SIZE];
    fill_random(&mut entropy);
    BootInfo {
        boot_path: BootPath::TandemPv,
        memory,
        heap,
        // Length checked in check_config.
        cmdline: heapless::String::try_from(config.cmdline.as_str()).unwrap_or_default(),
        cpu: CpuInfo {
            count: 1,
            tsc_khz,
            features_ecx: cpu_features.0,
            features_edx: cpu_features.1,
        },
        host: HostStamps {
            vmm_start,
            vcpu_ready,
        },
        vm_id: config.vm_id,
        generation: 0,
        devices: devices(config, net, disks),
        entropy,
        loader: heapless::String::try_from("tandem").unwrap_or_default(),
    }
}

/// Writes `info` at [`layout::BOOT_INFO_ADDR`] (while the vCPU is stopped:
/// before a boot, or when a restore rewrites it).
pub(super) fn write_boot_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), VmError> {
    // BOOT_INFO_MAX is 8 KiB, which fits any usize.
    #[allow(clippy::cast_possible_truncation)]
    let mut block = [0u8; layout::BOOT_INFO_MAX as usize];
    let n = info
        .encode(&mut block)
        .map_err(|e| VmError::Config(format!("boot-info block: {e}")))?;
    mem.write_slice(&block[..n], GuestAddress(layout::BOOT_INFO_ADDR))?;
    Ok(())
}

/// The devices the guest is told of: the network device's window and, if
/// the operator gave them, its static IPv4 settings; then each disk's window.
fn devices(
    config: &VmConfig,
    net: Option<&NetDevice>,
    disks: &[BlkDevice],
) -> heapless::Vec<Device, MAX_DEVICES> {
    let mut devices = heapless::Vec::new();
    if let Some(net) = net {
        net_devices(config, net, &mut devices);
    }
    for d in disks {
        let (base, size) = d.window();
        // MAX_DISKS (4) and the network device's two entries fit MAX_DEVICES.
        let _ = devices.push(Device::VirtioMmio { base, size, irq: 0 });
    }
    devices
}

fn net_devices(
    config: &VmConfig,
    net: &NetDevice,
    devices: &mut heapless::Vec<Device, MAX_DEVICES>,
) {
    let (base, size) = net.window();
    // Two entries always fit MAX_DEVICES.
    let _ = devices.push(Device::VirtioMmio { base, size, irq: 0 });
    if let Some(ip) = config.net.as_ref().and_then(|n| n.ipv4) {
        let _ = devices.push(Device::NetConfig {
            base,
            address: ip.address.octets(),
            prefix_len: ip.prefix_len,
            gateway: ip.gateway.map(|g| g.octets()),
            dns: ip.dns.map(|d| d.octets()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_describes_the_config() {
        let config = VmConfig {
            mem_size: 16 << 20,
            cmdline: "a b".into(),
            vm_id: 7,
            ..VmConfig::default()
        };
        let info = boot_info(&config, 2_000_000, (0x11, 0x22), 5, 9, None, &[]);
        assert_eq!(info.boot_path, BootPath::TandemPv);
        assert_eq!(info.cmdline.as_str(), "a b");
        assert_eq!(info.vm_id, 7);
        assert_eq!(info.generation, 0);
        assert_eq!(info.cpu.tsc_khz, 2_000_000);
        assert_eq!((info.cpu.features_ecx, info.cpu.features_edx), (0x11, 0x22));
        assert_eq!((info.host.vmm_start, info.host.vcpu_ready), (5, 9));
        assert_eq!(info.heap.start, layout::HEAP_ADDR);
        assert_eq!(info.heap.len, layout::heap_size(16 << 20));
        assert_eq!(info.memory.len(), 2);
        assert_eq!(info.memory[0].kind, MemKind::Reserved);
        // The block must encode within its fixed area.
        let mut block = vec![0u8; usize::try_from(layout::BOOT_INFO_MAX).unwrap()];
        assert!(info.encode(&mut block).is_ok());
    }
}
