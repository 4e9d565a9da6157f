//! A fresh boot: the shared construction, then the image, the CPU
//! structures and the boot-info block written into guest memory, and the
//! vCPU set to enter the app at CPL3. Nothing is left for the guest to do
//! before its first instruction.

use tandem_abi::cpu::MmioWindow;
use tandem_abi::layout;
use tandem_abi::trace::Phase;

use super::boot_info::{boot_info, write_boot_info};
use super::error::ioctl;
use super::machine::{Machine, Start};
use super::prefault::prefault;
use super::{Vm, VmConfig, VmError};
use crate::arch;
use crate::devices::blk::DiskFile;
use crate::devices::tap::Tap;
use crate::devices::{manifest, BlkDevice, NetDevice, NetSpec};
use crate::entropy::fill_random;
use crate::image::Image;
use crate::kvm::Hypervisor;
use crate::memory::GuestRam;
use crate::trace::rdtsc;

impl Vm {
    /// Builds a VM that boots `image`, its timeline counting from `start_tsc`.
    pub(super) fn boot(
        hv: &Hypervisor,
        image: &Image,
        config: VmConfig,
        start_tsc: u64,
    ) -> Result<Self, VmError> {
        // Before KVM or a tap is touched.
        manifest::check(
            &image.name,
            image.devices,
            manifest::offered_with(config.net.is_some(), !config.disks.is_empty()),
        )?;
        // Every disk image checked and locked before KVM is asked for anything.
        let disk_files = config
            .disks
            .iter()
            .map(|d| DiskFile::open(&d.path, d.read_only))
            .collect::<Result<Vec<_>, _>>()?;
        let mut machine = Machine::new(hv, &config, start_tsc, || {
            Ok(GuestRam::new(config.mem_size, config.huge_pages)?)
        })?;
        let net = match &config.net {
            Some(spec) => Some(net_device(spec, config.mem_size)?),
            None => None,
        };
        let mut disks = blk_devices(disk_files, config.mem_size);
        for (d, spec) in disks.iter_mut().zip(&config.disks) {
            d.set_rate_limit(spec.limit);
            d.set_shared_limit(config.io_share.clone());
        }
        let mmio: Vec<MmioWindow> = net
            .iter()
            .map(NetDevice::window)
            .chain(disks.iter().map(BlkDevice::window))
            .map(|(start, len)| MmioWindow { start, len })
            .collect();
        let mem = &machine.ram.mem;
        image.load(mem)?;
        arch::write_structures(
            mem,
            config.mem_size,
            &image.segment_maps(),
            &mmio,
            image.note.exception_stubs,
        )?;
        let to_guest = |host: u64| host.wrapping_add_signed(machine.tsc_offset);
        let info = boot_info(
            &config,
            machine.tsc_khz,
            machine.cpu_features,
            to_guest(start_tsc),
            to_guest(rdtsc()),
            net.as_ref(),
            &disks,
        );
        write_boot_info(mem, &info)?;
        prefault(&machine.ram, image)?;
        machine.trace.stamp(Phase::ImageLoaded);

        let vcpu = &machine.vcpu;
        let smep = hv.cpuid_leaf(7).is_some_and(|l| l.ebx & (1 << 7) != 0);
        let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&arch::user_mode_sregs(sregs, smep))
            .map_err(ioctl("KVM_SET_SREGS"))?;
        vcpu.set_regs(&arch::entry_regs(image.entry))
            .map_err(ioctl("KVM_SET_REGS"))?;
        let mut vm = machine.into_vm(config, Start::Boot);
        vm.attach_net(net);
        vm.attach_disks(disks);
        Ok(vm)
    }
}

/// The virtio-blk devices for `files`, in the windows after the network
/// device's.
pub(super) fn blk_devices(files: Vec<DiskFile>, mem_size: u64) -> Vec<BlkDevice> {
    files
        .into_iter()
        .zip(1u64..)
        .map(|(f, slot)| BlkDevice::new(f, layout::virtio_mmio_window(slot), mem_size))
        .collect()
}

/// The virtio-net device `spec` asks for: its tap attached (or made, when
/// missing and the process may), its MAC the one asked for or a random
/// locally administered one, its rate limits.
fn net_device(spec: &NetSpec, mem_size: u64) -> Result<NetDevice, VmError> {
    let tap = Tap::setup(&spec.tap_setup())?;
    let mac = spec.mac.unwrap_or_else(|| {
        let mut m = [0u8; 6];
        fill_random(&mut m);
        // Unicast, locally administered.
        m[0] = (m[0] & 0xfc) | 0x02;
        m
    });
    let mut device = NetDevice::new(tap, mac, mem_size);
    device.set_rate_limit(spec.limit);
    Ok(device)
}
