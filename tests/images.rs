//! Bad images and bad options: each gives a clear error naming the problem
//! and a non-zero exit (125, "the VMM could not start the guest").

use std::path::PathBuf;

use tandem_abi::le;
use tandem_tests::{image_path, tandem};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-images-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn hello() -> Vec<u8> {
    std::fs::read(image_path("hello")).unwrap()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    le::u64_at(b, at).unwrap()
}

/// Offsets of the program headers of type `p_type`.
fn phdrs(elf: &[u8], p_type: u32) -> Vec<usize> {
    let phoff = usize::try_from(u64_at(elf, 32)).unwrap();
    (0..le::u16_at(elf, 56).unwrap())
        .map(|i| phoff + usize::from(i) * 56)
        .filter(|&at| le::u32_at(elf, at) == Some(p_type))
        .collect()
}

fn refused(image: &str, extra: &[&str], message: &str) {
    let mut args = vec!["run", image];
    args.extend_from_slice(extra);
    let run = tandem(&args);
    assert_eq!(
        run.code,
        Some(125),
        "expected exit 125 for {message:?}; stderr: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(message),
        "expected {message:?} in stderr: {}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "nothing may boot: {}", run.stdout);
}

#[test]
fn not_an_elf() {
    let s = Scratch::new("notelf");
    refused(
        &s.write("text", b"#!/bin/sh\necho hi\n"),
        &[],
        "not an ELF file",
    );
    refused(&s.write("empty", b""), &[], "not an ELF file");
}

#[test]
fn missing_file() {
    let image = "/nonexistent/tandem-image";
    refused(
        image,
        &[],
        "cannot read image /nonexistent/tandem-image: No such file or directory (os error 2)",
    );
    // The file and the OS error are named once each.
    let run = tandem(&["run", image]);
    assert_eq!(
        run.stderr.matches("os error 2").count(),
        1,
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches(image).count(), 1, "{}", run.stderr);
}

#[test]
fn truncated() {
    let s = Scratch::new("trunc");
    let img = hello();
    refused(
        &s.write("head", &img[..40]),
        &[],
        "image is truncated: ELF header",
    );
    // Cut inside the loadable segments.
    refused(
        &s.write("half", &img[..img.len() / 4]),
        &[],
        "lies outside the",
    );
}

#[test]
fn another_machine() {
    let s = Scratch::new("machine");
    let mut img = hello();
    img[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    refused(
        &s.write("arm", &img),
        &[],
        "built for machine 183, not x86_64",
    );
    let mut img = hello();
    img[4] = 1; // ELFCLASS32
    refused(&s.write("elf32", &img), &[], "not a 64-bit ELF");
}

#[test]
fn another_abi_version() {
    let s = Scratch::new("abi");
    let mut img = hello();
    let note = phdrs(&img, 4)[0];
    let off = usize::try_from(u64_at(&img, note + 8)).unwrap();
    // The Tandem note: 12-byte header, "Tandem\0" padded to 8, then abi_version.
    assert_eq!(&img[off + 12..off + 18], b"Tandem");
    let v = tandem_abi::ABI_VERSION + 41;
    img[off + 20..off + 24].copy_from_slice(&v.to_le_bytes());
    refused(
        &s.write("abi", &img),
        &[],
        &format!(
            "built for Tandem ABI version {v}, this VMM speaks version {}",
            tandem_abi::ABI_VERSION
        ),
    );
    // And with no note at all.
    let mut img = hello();
    img[off + 12] = b'X';
    refused(&s.write("nonote", &img), &[], "no Tandem ABI note");
}

#[test]
fn devices_must_match_the_manifest() {
    // httpd declares `net`: without --net it is refused, before /dev/kvm.
    let httpd = image_path("httpd");
    refused(
        httpd.to_str().unwrap(),
        &[],
        "image httpd needs a network device: run it with --net tap=NAME",
    );
    // hello declares nothing: --net is refused before the tap is looked
    // up, so no tap is needed.
    let hello = image_path("hello");
    refused(
        hello.to_str().unwrap(),
        &["--net", "tap=tdm-absent0"],
        "image hello does not declare a network device; remove --net",
    );
}

#[test]
fn a_bad_device_manifest_is_refused_by_name() {
    let s = Scratch::new("manifest");
    let mut img = std::fs::read(image_path("httpd")).unwrap();
    let note = phdrs(&img, 4)[0];
    let off = usize::try_from(u64_at(&img, note + 8)).unwrap();
    let len = usize::try_from(u64_at(&img, note + 32)).unwrap();
    // The manifest: namesz 7, descsz 8, type NT_TANDEM_DEVICES, "Tandem".
    let mut header = Vec::new();
    for w in [7u32, 8, tandem_abi::note::NT_TANDEM_DEVICES] {
        header.extend_from_slice(&w.to_le_bytes());
    }
    header.extend_from_slice(b"Tandem\0\0");
    let at = off
        + img[off..off + len]
            .windows(header.len())
            .position(|w| w == header)
            .expect("httpd has a device manifest in its PT_NOTE segment");
    assert_eq!(&img[at + 20..at + 28], &[1, 0, 0, 0, 1, 0, 0, 0]);
    img[at + 24] = 0x05;
    refused(
        &s.write("bits", &img),
        &["--net", "tap=tdm-absent0"],
        "device manifest is refused: it declares unknown device bit 2",
    );
    img[at + 24] = 0x01;
    img[at + 20] = 3;
    refused(
        &s.write("version", &img),
        &["--net", "tap=tdm-absent0"],
        "manifest version 3, this VMM reads version 1",
    );
}

#[test]
fn segment_outside_memory() {
    let s = Scratch::new("segment");
    let mut img = hello();
    let load = *phdrs(&img, 1).last().unwrap();
    img[load + 16..load + 24].copy_from_slice(&0x10_0000_0000u64.to_le_bytes());
    refused(
        &s.write("far", &img),
        &[],
        "lies outside the image region 0x200000..0x400000",
    );
    let mut img = hello();
    let load = phdrs(&img, 1)[0];
    img[load + 16..load + 24].copy_from_slice(&0x1000u64.to_le_bytes()); // over the GDT
    refused(&s.write("low", &img), &[], "lies outside the image region");
}

#[test]
fn entry_outside_image() {
    let s = Scratch::new("entry");
    let mut img = hello();
    img[24..32].copy_from_slice(&0x100u64.to_le_bytes());
    refused(
        &s.write("entry", &img),
        &[],
        "entry point 0x100 is not inside an executable segment",
    );
}

#[test]
fn too_little_or_bad_memory() {
    let hello = image_path("hello");
    let hello = hello.to_str().unwrap();
    refused(hello, &["--mem", "2M"], "2 MiB of memory is too little");
    refused(hello, &["--mem", "65M"], "not a multiple of 2 MiB");
    refused(
        hello,
        &["--mem", "8G"],
        "more than the 4096 MiB Tandem maps",
    );
}

#[test]
fn bad_options_are_usage_errors() {
    let run = tandem(&[
        "run",
        image_path("hello").to_str().unwrap(),
        "--mem",
        "lots",
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("not a size"), "{}", run.stderr);
}
