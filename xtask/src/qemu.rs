//! Booting Tandem images where a normal kernel boots: QEMU's PVH direct
//! kernel boot (`-kernel`), and GRUB (Multiboot2) from an ISO, on microvm or
//! q35 with SeaBIOS, under KVM or TCG.
//!
//! Default accelerator, by measurement on these machines (`/dev/kvm` is
//! KVM's software PVM mode, where firmware and other CPL0 code is emulated
//! instruction by instruction): `hello`, whole process, one run each —
//! microvm + PVH: TCG 52 ms, KVM 92 ms; q35 + SeaBIOS + PVH: TCG 83 ms, KVM
//! 1.37 s; q35 + SeaBIOS + GRUB: TCG 0.34 s, KVM 17.7 s. So TCG is the
//! default on every QEMU path here; `--accel kvm` overrides, and
//! `cargo xtask bench boot-paths` measures both side by side.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project::{self, Project};

/// Exit status QEMU reports for guest exit code `c` through `isa-debug-exit`.
pub fn guest_code(status: i32) -> Option<u8> {
    (status & 1 == 1)
        .then(|| u8::try_from(status >> 1).ok())
        .flatten()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => bail!("unknown accelerator `{other}` (kvm or tcg)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// QEMU's minimal machine: no PCI, no firmware for `-kernel` (PVH only).
    Microvm,
    /// A PC with SeaBIOS.
    Q35,
}

impl Machine {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "microvm" => Ok(Machine::Microvm),
            "q35" => Ok(Machine::Q35),
            other => bail!("unknown machine `{other}` (microvm or q35)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// What QEMU boots.
pub enum Boot<'a> {
    /// PVH direct kernel boot of an image, with a command line.
    Pvh { image: &'a Path, cmdline: &'a str },
    /// A GRUB ISO (Multiboot2).
    Iso(&'a Path),
}

/// Guest memory for QEMU runs.
pub const MEM: &str = "128M";

/// A transport protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A host port of 127.0.0.1 forwarded to a guest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    pub host: u16,
    pub guest: u16,
}

/// The apps that serve on the network, and the guest ports they serve,
/// forwarded from the host port `--port` names (the same number for each).
pub const NET_APPS: &[(&str, &[(Proto, u16)])] = &[
    ("httpd", &[(Proto::Tcp, 80)]),
    ("echo", &[(Proto::Tcp, 7), (Proto::Udp, 7)]),
];

/// The host port forwarded when `--port` is not given.
pub const DEFAULT_HOST_PORT: u16 = 8080;

/// The forwards of network app `app` from host port `host`; `None` for an
/// app that does not serve on the network.
pub fn app_forwards(app: &str, host: u16) -> Option<Vec<Forward>> {
    let (_, ports) = NET_APPS.iter().find(|(name, _)| *name == app)?;
    Some(
        ports
            .iter()
            .map(|&(proto, guest)| Forward { proto, host, guest })
            .collect(),
    )
}

/// QEMU's user-network backend with `forwards`, and a virtio-net device on it.
pub fn net_args(forwards: &[Forward]) -> Vec<String> {
    use tandem_abi::platform::{QEMU_NETDEV_ID, QEMU_NET_DEVICE};
    let mut netdev = format!("user,id={QEMU_NETDEV_ID}");
    for f in forwards {
        let proto = match f.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        netdev.push_str(&format!(
            ",hostfwd={proto}:127.0.0.1:{}-:{}",
            f.host, f.guest
        ));
    }
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        QEMU_NET_DEVICE.into(),
    ]
}

/// The QEMU command line: serial console on stdio, the debug-exit device at
/// Tandem's port, no other devices, no reboot.
pub fn command(machine: Machine, accel: Accel, boot: &Boot) -> Command {
    command_with_net(machine, accel, boot, None)
}

/// [`command`], with a virtio-net device on QEMU's user network when `net`
/// is given (microvm only: q35 has no virtio-mmio bus). The machine is then
/// microvm without ACPI, so QEMU names the device on the command line.
pub fn command_with_net(
    machine: Machine,
    accel: Accel,
    boot: &Boot,
    net: Option<&[Forward]>,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    let machine_arg = match (machine, net) {
        (Machine::Microvm, Some(_)) => tandem_abi::platform::QEMU_NET_MACHINE,
        _ => machine.name(),
    };
    cmd.args(["-machine", machine_arg, "-accel", accel.name(), "-m", MEM]);
    cmd.args(tandem_abi::platform::QEMU_ARGS);
    if let Some(forwards) = net {
        cmd.args(net_args(forwards));
    }
    match boot {
        Boot::Pvh { image, cmdline } => {
            cmd.arg("-kernel").arg(image);
            if !cmdline.is_empty() {
                cmd.args(["-append", cmdline]);
            }
        }
        Boot::Iso(iso) => {
            cmd.arg("-cdrom").arg(iso);
        }
    }
    cmd
}

/// Makes sure the Debian packages behind `tools` are installed: installs the
/// missing ones with apt-get when running as root, else names the command.
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(probe, _)| !present(probe))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // Root (the effective uid, from `id -u`) can install; anyone else is told how.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !root {
        bail!("missing Debian packages: {list}\ninstall them with: sudo apt-get install -y {list}");
    }
    eprintln!("xtask: installing missing Debian packages with apt-get: {list}");
    project::run_downloading(
        || {
            let mut update = Command::new("apt-get");
            update
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive");
            update
        },
        "apt-get update",
    )?;
    project::run_downloading(
        || {
            let mut install = Command::new("apt-get");
            install
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive");
            install
        },
        "apt-get install",
    )?;
    if let Some((probe, package)) = tools.iter().find(|(probe, _)| !present(probe)) {
        bail!("{probe} is still missing after installing {package}");
    }
    Ok(())
}

/// A tool is present if it is an absolute path that exists, or a command on PATH.
fn present(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    project::on_path(probe)
}

/// What the network tests need: taps (`ip tuntap`, `ip addr`) and a run
/// without CAP_NET_ADMIN (`setpriv`).
pub const NET_TOOLS: &[(&str, &str)] = &[("ip", "iproute2"), ("setpriv", "util-linux")];
/// What debugging a guest needs (core files, `cargo xtask gdb`).
pub const GDB_TOOLS: &[(&str, &str)] = &[("gdb", "gdb")];
/// What QEMU paths need.
pub const QEMU_TOOLS: &[(&str, &str)] = &[("qemu-system-x86_64", "qemu-system-x86")];
/// What making a GRUB ISO needs (BIOS modules, ISO writer, FAT tools).
pub const GRUB_TOOLS: &[(&str, &str)] = &[
    ("grub-mkrescue", "grub-common"),
    ("/usr/lib/grub/i386-pc/multiboot2.mod", "grub-pc-bin"),
    ("xorriso", "xorriso"),
    ("mformat", "mtools"),
];

/// Builds a bootable ISO (GRUB, BIOS) of `image` with `cmdline`, GRUB's
/// console on the serial line. Returns its path.
pub fn make_iso(
    project: &Project,
    app: &str,
    image: &Path,
    cmdline: &str,
    out: Option<PathBuf>,
) -> Result<PathBuf> {
    ensure_tools(GRUB_TOOLS)?;
    let stage = project.target_dir().join("iso").join(app);
    let boot = stage.join("boot");
    std::fs::create_dir_all(boot.join("grub"))
        .with_context(|| format!("cannot create {}", boot.display()))?;
    std::fs::copy(image, boot.join(format!("{app}.elf")))
        .with_context(|| format!("cannot copy {}", image.display()))?;
    let cfg = format!(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial console\n\
         terminal_output serial console\nmenuentry \"tandem {app}\" {{\n    multiboot2 /boot/{app}.elf {cmdline}\n    boot\n}}\n"
    );
    std::fs::write(boot.join("grub/grub.cfg"), cfg).context("cannot write grub.cfg")?;
    let iso = out.unwrap_or_else(|| project.target_dir().join("iso").join(format!("{app}.iso")));
    let mut cmd = Command::new("grub-mkrescue");
    cmd.arg("-o").arg(&iso).arg(&stage);
    let output = cmd.output().context("cannot run grub-mkrescue")?;
    if !output.status.success() {
        bail!(
            "grub-mkrescue failed ({}):\n{}",
            project::describe(output.status),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_status_to_guest_code() {
        assert_eq!(guest_code(1), Some(0));
        assert_eq!(guest_code(203), Some(101));
        assert_eq!(guest_code(0), None);
        assert_eq!(guest_code(2), None);
    }

    #[test]
    fn command_lines() {
        let img = Path::new("/x/hello");
        let cmd = command(
            Machine::Microvm,
            Accel::Kvm,
            &Boot::Pvh {
                image: img,
                cmdline: "a b",
            },
        );
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // QEMU's default CPU model under KVM too: `-cpu host` makes QEMU
        // abort on AMD hosts of this KVM (`failed to set MSR 0x10a`).
        assert!(!args.contains(&"-cpu".to_string()));
        assert!(args.windows(2).any(|w| w == ["-append", "a b"]));
        let cmd = command(Machine::Q35, Accel::Tcg, &Boot::Iso(Path::new("/x/a.iso")));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.windows(2).any(|w| w == ["-cdrom", "/x/a.iso"]));
        assert!(!args.contains(&"-cpu".to_string()));
    }

    #[test]
    fn network_command_line() {
        let forwards = app_forwards("echo", 9000).unwrap();
        let cmd = command_with_net(
            Machine::Microvm,
            Accel::Tcg,
            &Boot::Pvh {
                image: Path::new("/x/echo"),
                cmdline: "",
            },
            Some(&forwards),
        );
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args
            .windows(2)
            .any(|w| w == ["-machine", "microvm,acpi=off"]));
        assert!(args.windows(2).any(|w| w
            == [
                "-netdev",
                "user,id=n0,hostfwd=tcp:127.0.0.1:9000-:7,hostfwd=udp:127.0.0.1:9000-:7"
            ]));
        assert!(args
            .windows(2)
            .any(|w| w == ["-device", "virtio-net-device,netdev=n0"]));
        // The debug-exit device stays.
        assert!(args.iter().any(|a| a.starts_with("isa-debug-exit")));
        assert_eq!(app_forwards("hello", 1), None);
        assert_eq!(
            app_forwards("httpd", DEFAULT_HOST_PORT).unwrap(),
            [Forward {
                proto: Proto::Tcp,
                host: 8080,
                guest: 80
            }]
        );
    }
}
