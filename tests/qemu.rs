//! The same images under QEMU (PVH direct boot) and GRUB (Multiboot2):
//! every path ends at the same app with the same boot-info block.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_tests::image_path;

/// QEMU's exit status for guest exit code `code` (isa-debug-exit).
fn status(code: u8) -> i32 {
    tandem_abi::platform::qemu_status(code)
}

struct Run {
    code: Option<i32>,
    out: String,
}

fn qemu(machine: &str, accel: &str, boot: &[&str]) -> Run {
    tandem_tests::require_qemu();
    if accel == "kvm" {
        tandem_tests::require_kvm();
    }
    let mut cmd = Command::new("timeout");
    cmd.args([
        "120",
        "qemu-system-x86_64",
        "-machine",
        machine,
        "-accel",
        accel,
        "-m",
        "128M",
    ]);
    // QEMU's default CPU model, under KVM too: `-cpu host` makes QEMU abort
    // on AMD hosts of this KVM (`failed to set MSR 0x10a`).
    cmd.args(tandem_abi::platform::QEMU_ARGS);
    cmd.args(boot);
    let out = cmd.output().expect("cannot start qemu");
    Run {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn pvh(accel: &str, image: &Path, cmdline: &str) -> Run {
    let image = image.to_str().unwrap();
    let mut boot = vec!["-kernel", image];
    if !cmdline.is_empty() {
        boot.extend(["-append", cmdline]);
    }
    qemu("microvm", accel, &boot)
}

/// A temporary folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-qemu-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// A GRUB ISO booting `image` with `cmdline`.
fn iso(scratch: &Scratch, image: &Path, cmdline: &str) -> PathBuf {
    tandem_tests::require_tool("grub-mkrescue", "grub-common");
    let root = scratch.0.join("iso");
    std::fs::create_dir_all(root.join("boot/grub")).unwrap();
    std::fs::copy(image, root.join("boot/app.elf")).unwrap();
    let cfg = format!(
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
         menuentry tandem {{\n multiboot2 /boot/app.elf {cmdline}\n boot\n}}\n"
    );
    std::fs::write(root.join("boot/grub/grub.cfg"), cfg).unwrap();
    let out = scratch.0.join("app.iso");
    let made = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&out)
        .arg(&root)
        .output()
        .expect("grub-mkrescue");
    assert!(
        made.status.success(),
        "grub-mkrescue failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    out
}

fn grub(image: &Path, cmdline: &str, name: &str) -> Run {
    let scratch = Scratch::new(name);
    let iso = iso(&scratch, image, cmdline);
    // TCG: on these machines SeaBIOS + GRUB under KVM (PVM) takes ~18 s, under TCG ~0.3 s.
    qemu("q35", "tcg", &["-cdrom", iso.to_str().unwrap()])
}

#[test]
fn hello_on_pvh_under_tcg() {
    let run = pvh("tcg", &image_path("hello"), "alpha beta");
    assert_eq!(run.code, Some(status(0)), "{}", run.out);
    assert!(run.out.contains("Hello from Tandem!"), "{}", run.out);
    assert!(
        run.out.contains(r#"command line: "alpha beta""#),
        "{}",
        run.out
    );
    assert!(run.out.contains("booted by: pvh"), "{}", run.out);
}

#[test]
fn hello_on_pvh_under_kvm() {
    let run = pvh("kvm", &image_path("hello"), "gamma");
    assert_eq!(run.code, Some(status(0)), "{}", run.out);
    assert!(run.out.contains(r#"command line: "gamma""#), "{}", run.out);
}

#[test]
fn hello_on_grub_multiboot2() {
    let run = grub(&image_path("hello"), "delta epsilon", "hello");
    assert_eq!(run.code, Some(status(0)), "{}", run.out);
    assert!(run.out.contains("Hello from Tandem!"), "{}", run.out);
    assert!(
        run.out.contains(r#"command line: "delta epsilon""#),
        "{}",
        run.out
    );
    assert!(run.out.contains("booted by: GRUB"), "{}", run.out);
}

#[test]
fn panic_reaches_the_exit_code_on_every_path() {
    let run = pvh("tcg", &image_path("panic"), "");
    assert_eq!(run.code, Some(status(101)), "{}", run.out);
    assert!(
        run.out.contains("deliberate panic: the answer is 42"),
        "{}",
        run.out
    );
    let run = grub(&image_path("panic"), "", "panic");
    assert_eq!(run.code, Some(status(101)), "{}", run.out);
    assert!(run.out.contains("deliberate panic"), "{}", run.out);
}

#[test]
fn cpu_exception_is_reported_under_qemu() {
    let run = pvh("tcg", &image_path("pagefault"), "unmapped");
    assert_eq!(run.code, Some(status(102)), "{}", run.out);
    assert!(
        run.out
            .contains("faulting address 0xdead0000 (read, not-present page)"),
        "{}",
        run.out
    );
}

/// The usable memory the guest reports: (total, highest end).
fn usable(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("usable memory: "))
        .unwrap_or_else(|| panic!("no memory report in {out}"));
    let total: u64 = line.split(' ').next().unwrap().parse().unwrap();
    let top = line.rsplit("0x").next().unwrap();
    (total, u64::from_str_radix(top, 16).unwrap())
}

#[test]
fn memory_map_matches_what_qemu_was_given() {
    const MIB: u64 = 1 << 20;
    for (path, run) in [
        ("pvh", pvh("tcg", &image_path("sysinfo"), "mm=1")),
        ("grub", grub(&image_path("sysinfo"), "mm=2", "sysinfo")),
    ] {
        assert_eq!(run.code, Some(status(0)), "{path}: {}", run.out);
        let (total, top) = usable(&run.out);
        // QEMU was given 128 MiB; the firmware keeps the legacy hole below
        // 1 MiB and (SeaBIOS) a few pages at the top for its tables.
        assert!(
            (127 * MIB..=128 * MIB).contains(&top),
            "{path}: highest usable {top:#x}\n{}",
            run.out
        );
        assert!(
            (126 * MIB..=128 * MIB).contains(&total),
            "{path}: usable {total}\n{}",
            run.out
        );
        assert!(
            run.out.contains(&format!(
                "command line: \"mm={}\"",
                if path == "pvh" { 1 } else { 2 }
            )),
            "{}",
            run.out
        );
        assert!(run.out.contains("heap: 0x400000.."), "{}", run.out);
    }
}

/// Rewrites the 32-bit entry a loader will use, in a copy of `image`.
fn patch_entry(image: &Path, pvh_to_mb2: bool, scratch: &Scratch) -> PathBuf {
    let mut elf = std::fs::read(image).unwrap();
    // Find the Xen PHYS32 note ("Xen\0", type 18) and the Multiboot2 entry-address tag.
    let note = elf
        .windows(16)
        .position(|w| w[0..12] == [4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0] && &w[12..16] == b"Xen\0")
        .expect("Xen note");
    let pvh_at = note + 16;
    let magic = 0xE852_50D6u32.to_le_bytes();
    let header = elf
        .windows(4)
        .position(|w| w == magic)
        .expect("Multiboot2 header");
    let tag = header + 16; // type 3, flags, size 12, entry
    assert_eq!(&elf[tag..tag + 2], &[3, 0]);
    let mb2_at = tag + 8;
    let (from, to) = if pvh_to_mb2 {
        (mb2_at, pvh_at)
    } else {
        (pvh_at, mb2_at)
    };
    let entry: [u8; 4] = elf[from..from + 4].try_into().unwrap();
    elf[to..to + 4].copy_from_slice(&entry);
    let out = scratch.0.join("patched.elf");
    std::fs::write(&out, elf).unwrap();
    out
}

#[test]
fn start_info_with_bad_magic_is_refused_not_hung() {
    // PVH loader entering the Multiboot2 entry: eax is not the Multiboot2 magic.
    let scratch = Scratch::new("badpvh");
    let image = patch_entry(&image_path("hello"), true, &scratch);
    let run = pvh("tcg", &image, "");
    assert_eq!(
        run.code,
        Some(status(tandem_abi::hypercall::EXIT_BAD_BOOT_INFO)),
        "{}",
        run.out
    );
    assert!(
        run.out
            .contains("tandem: cannot boot: bad Multiboot2 magic"),
        "{}",
        run.out
    );
    assert!(!run.out.contains("Hello"), "{}", run.out);
}

#[test]
fn multiboot2_info_read_as_start_info_is_refused_not_hung() {
    // GRUB entering the PVH entry: ebx points at Multiboot2 information, whose
    // first word is not the start-info magic.
    let scratch = Scratch::new("badmb2");
    let image = patch_entry(&image_path("hello"), false, &scratch);
    let run = grub(&image, "", "badmb2");
    assert_eq!(
        run.code,
        Some(status(tandem_abi::hypercall::EXIT_BAD_BOOT_INFO)),
        "{}",
        run.out
    );
    assert!(
        run.out
            .contains("tandem: cannot boot: PVH start info has bad magic"),
        "{}",
        run.out
    );
}
