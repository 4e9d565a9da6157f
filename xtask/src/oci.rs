//! `cargo xtask oci APP`: an OCI image of an app (`FROM scratch` plus the
//! app's ELF as `/APP`, the entrypoint), as an OCI image-layout tarball that
//! `ctr images import` reads. Written by hand (a tar writer and JSON), so
//! xtask needs no image tooling; the output is reproducible (mtime 0).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::project::{Profile, Project};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// The image name `cargo xtask oci APP` gives by default.
pub fn default_name(app: &str) -> String {
    format!("docker.io/tandem/{app}:latest")
}

/// Where `cargo xtask oci APP` writes by default.
pub fn default_out(project: &Project, app: &str) -> PathBuf {
    project.target_dir().join("oci").join(format!("{app}.tar"))
}

fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A minimal ustar writer: regular files and directories, owner root,
/// mtime 0.
struct Tar(Vec<u8>);

impl Tar {
    fn new() -> Self {
        Tar(Vec::new())
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8) -> Result<()> {
        if name.len() > 99 {
            bail!("tar entry name {name:?} is longer than 99 bytes");
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0width$o}", width = len - 1);
            h[at..at + len - 1].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0); // uid
        octal(&mut h, 116, 8, 0); // gid
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, 0); // mtime
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&h);
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        self.header(name, 0o755, 0, b'5')
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(name, mode, data.len(), b'0')?;
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// Writes an OCI image-layout tarball to `out`: one layer holding `payload`
/// as `/file_name` (mode 0755), whose config's `Entrypoint` is that file,
/// named `name` (`io.containerd.image.name`). Returns the manifest digest.
pub fn write_image(payload: &[u8], file_name: &str, name: &str, out: &Path) -> Result<String> {
    if file_name.is_empty() || file_name.contains('/') {
        bail!("bad file name {file_name:?} for the image");
    }
    let mut layer = Tar::new();
    layer.file(file_name, 0o755, payload)?;
    let layer = layer.finish();
    let layer_digest = sha256(&layer);

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": [format!("/{file_name}")] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created_by": "cargo xtask oci" }],
    }))?;
    let config_digest = sha256(&config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": LAYER_TYPE,
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    }))?;
    let manifest_digest = sha256(&manifest);

    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    let mut tar = Tar::new();
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", 0o644, &index)?;
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    for (digest, blob) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        tar.file(&format!("blobs/sha256/{digest}"), 0o644, blob)?;
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(out, tar.finish()).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(format!("sha256:{manifest_digest}"))
}

/// The image of a built app.
pub fn app_image(image: &Path, app: &str, name: &str, out: &Path) -> Result<String> {
    let elf = fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
    write_image(&elf, app, name, out)
}

/// What the containerd tests need (probe, Debian package).
pub const CONTAINERD_TOOLS: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    // The pod-network test: CNI's bridge and host-local plugins, and the
    // shim's `ip`/`tc`.
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ("tc", "iproute2"),
];

/// Builds the shim (debug) and returns its path.
pub fn build_shim(project: &Project) -> Result<PathBuf> {
    let mut cmd = project.cargo();
    cmd.args(["build", "-p", "tandem-shim", "--bins"]);
    crate::project::run(&mut cmd, "shim build")?;
    Ok(shim_bin(project))
}

/// Where `build_shim` puts the shim.
pub fn shim_bin(project: &Project) -> PathBuf {
    project
        .target_dir()
        .join(Profile::Debug.dir())
        .join("containerd-shim-tandem-v1")
}

/// Where `test_images` writes the images.
pub fn test_image_dir(project: &Project) -> PathBuf {
    project.target_dir().join("oci")
}

/// The images the containerd tests import, in target/oci: the hello,
/// service, panic, sysinfo, cat, counter and httpd apps, `pause` (the CRI sandbox image) and
/// `notelf` (a shell script as the entrypoint).
pub fn test_images(project: &Project) -> Result<PathBuf> {
    let dir = test_image_dir(project);
    for app in [
        "hello", "service", "panic", "sysinfo", "cat", "counter", "httpd",
    ] {
        let image = crate::guest::image(project, app)?;
        app_image(
            &image,
            app,
            &default_name(app),
            &dir.join(format!("{app}.tar")),
        )?;
    }
    // The CRI sandbox image: the shim boots nothing for it.
    let hello = crate::guest::image(project, "hello")?;
    app_image(
        &hello,
        "pause",
        &default_name("pause"),
        &dir.join("pause.tar"),
    )?;
    write_image(
        b"#!/bin/sh\necho not a unikernel\n",
        "notelf",
        &default_name("notelf"),
        &dir.join("notelf.tar"),
    )?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_are_valid_ustar() {
        let mut t = Tar::new();
        t.file("a", 0o755, b"hello").unwrap();
        let bytes = t.finish();
        assert_eq!(bytes.len(), 512 + 512 + 1024);
        assert_eq!(&bytes[..2], b"a\0");
        assert_eq!(&bytes[124..135], b"00000000005");
        assert_eq!(&bytes[257..262], b"ustar");
        let mut h = bytes[..512].to_vec();
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        h[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, h.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert_eq!(&bytes[512..517], b"hello");
        assert!(Tar::new().file(&"x".repeat(100), 0o644, b"").is_err());
    }

    #[test]
    fn image_layout_is_consistent() {
        let out = std::env::temp_dir().join(format!("xtask-oci-{}.tar", std::process::id()));
        let digest = write_image(
            b"\x7fELF...",
            "hello",
            "docker.io/tandem/hello:latest",
            &out,
        )
        .unwrap();
        let tar = fs::read(&out).unwrap();
        fs::remove_file(&out).unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap();
        // The manifest blob is in the archive under its digest.
        let name = format!("blobs/sha256/{hex}");
        let mut at = 0;
        let mut found = false;
        while at + 512 <= tar.len() && tar[at] != 0 {
            let end = tar[at..at + 100]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(100);
            let entry = std::str::from_utf8(&tar[at..at + end]).unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&tar[at + 124..at + 135]).unwrap(), 8)
                    .unwrap();
            let data = &tar[at + 512..at + 512 + size];
            if entry == name {
                assert_eq!(sha256(data), hex);
                let m: serde_json::Value = serde_json::from_slice(data).unwrap();
                assert_eq!(m["layers"][0]["mediaType"], LAYER_TYPE);
                found = true;
            }
            at += 512 + size.div_ceil(512) * 512;
        }
        assert!(found, "manifest blob missing");
    }
}
