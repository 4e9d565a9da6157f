//! A fresh boot: the shared construction, then the image, the CPU
//! structures and the boot-info block written into guest memory, and the
//! vCPU set to enter the app at CPL3. Nothing is left for the guest to do
//! before its first instruction.

use tandem_abi::cpu::MmioWindow;
use tandem_abi::trace::Phase;

use super::boot_info::{boot_info, write_boot_info};
use super::error::ioctl;
use super::machine::{Machine, Start};
use super::prefault::prefault;
use super::{Vm, VmConfig, VmError};
use crate::arch;
use crate::devices::tap::Tap;
use crate::devices::{manifest, NetDevice, NetSpec};
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
            manifest::offered(config.net.is_some()),
        )?;
        let mut machine = Machine::new(hv, &config, start_tsc, || {
            Ok(GuestRam::new(config.mem_size, config.huge_pages)?)
        })?;
        let net = match &config.net {
            Some(spec) => Some(net_device(spec, config.mem_size)?),
            None => None,
        };
        let mmio: Vec<MmioWindow> = net
            .iter()
            .map(|n| {
                let (start, len) = n.window();
                MmioWindow { start, len }
            })
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
        );
        write_boot_info(mem, &info)?;
        prefault(mem, image)?;
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
        Ok(vm)
    }
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
