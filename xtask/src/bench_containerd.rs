//! `cargo xtask bench containerd`: `ctr run --rm` of hello under the Tandem
//! shim against the same command with runc running a static hello binary,
//! on a private containerd (as root), runs interleaved so machine noise hits
//! both alike.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::project::{self, Profile, Project};
use crate::stats::Summary;
use crate::{guest, host, oci, qemu};

pub struct Options {
    /// Measured runs of each command.
    pub runs: usize,
    /// Where the JSON goes.
    pub json: Option<PathBuf>,
}

/// Parses `--runs N` and `--json FILE`.
pub fn parse(args: &[String]) -> Result<Options> {
    let c = crate::bench_args::parse(args, "containerd", 30, 3, |_, _| Ok(false))?;
    Ok(Options {
        runs: c.runs,
        json: c.json,
    })
}

/// A static x86-64 Linux executable that writes `Hello from runc!` and
/// exits 0: one `PT_LOAD` segment, two system calls, no libc.
pub fn static_hello() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE_AT: u64 = 64 + 56;
    let msg = b"Hello from runc!\n";
    let mut code: Vec<u8> = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1
    code.extend([0x48, 0x8d, 0x35, 16, 0, 0, 0]); // lea rsi, [rip + 16] (the message)
    code.extend([0xba, 17, 0, 0, 0]); // mov edx, 17 (the message's length)
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend([0x31, 0xff]); // xor edi, edi
    code.extend([0x0f, 0x05]); // syscall
    debug_assert_eq!(msg.len(), 17);
    code.extend(msg);
    let total = CODE_AT + code.len() as u64;

    let mut elf = Vec::new();
    elf.extend(b"\x7fELF");
    elf.extend([2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    elf.extend([0u8; 8]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(0x3eu16.to_le_bytes()); // x86-64
    elf.extend(1u32.to_le_bytes());
    elf.extend((BASE + CODE_AT).to_le_bytes()); // entry
    elf.extend(64u64.to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes()); // flags
    elf.extend(64u16.to_le_bytes()); // header size
    elf.extend(56u16.to_le_bytes()); // program header size
    elf.extend(1u16.to_le_bytes()); // one program header
    elf.extend(64u16.to_le_bytes()); // section header size
    elf.extend(0u16.to_le_bytes());
    elf.extend(0u16.to_le_bytes());
    // PT_LOAD, R+X, the whole file at BASE.
    elf.extend(1u32.to_le_bytes());
    elf.extend(5u32.to_le_bytes());
    elf.extend(0u64.to_le_bytes());
    elf.extend(BASE.to_le_bytes());
    elf.extend(BASE.to_le_bytes());
    elf.extend(total.to_le_bytes());
    elf.extend(total.to_le_bytes());
    elf.extend(0x1000u64.to_le_bytes());
    elf.extend(code);
    elf
}

/// A private containerd, killed on drop.
struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    fn start(dir: &Path, bin_dir: &Path, tandem: &Path) -> Result<Containerd> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n\
             [ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        fs::write(dir.join("config.toml"), config)?;
        let mut path = vec![bin_dir.to_path_buf()];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", std::env::join_paths(path)?)
            .env("TANDEM_BIN", tandem)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start containerd")?;
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            child,
        };
        let start = Instant::now();
        while c.ctr(&["version"]).map(|o| o.status.success()) != Ok(true) {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("containerd did not answer within 30 s (log: {d}/containerd.log)");
            }
            if let Some(st) = c.child.try_wait()? {
                bail!("containerd exited ({st}); log: {d}/containerd.log");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    fn ctr(&mut self, args: &[&str]) -> std::result::Result<std::process::Output, String> {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("c.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ctr: {e}"))
    }

    /// One `ctr run --rm`, timed; checks its exit status and output.
    fn run(&mut self, args: &[&str], expect: &str) -> Result<f64> {
        let t = Instant::now();
        let out = self.ctr(args).map_err(anyhow::Error::msg)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains(expect) {
            bail!(
                "ctr {} failed ({}):\n{stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ms)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn bench(project: &Project, opts: &Options) -> Result<()> {
    qemu::ensure_tools(oci::CONTAINERD_TOOLS)?;
    guest::build(project)?;
    host::build(project, Profile::Release, false)?;
    let mut cmd = project.cargo();
    cmd.args(["build", "--release", "-p", "tandem-shim", "--bins"]);
    project::run(&mut cmd, "shim build")?;
    let bin_dir = project.target_dir().join(Profile::Release.dir());
    let tandem = project.host_bin(Profile::Release);

    let out_dir = project.target_dir().join("bench");
    let hello_tar = out_dir.join("oci-tandem-hello.tar");
    let runc_tar = out_dir.join("oci-runc-hello.tar");
    let tandem_ref = "docker.io/tandem/hello:latest";
    let runc_ref = "docker.io/tandem/runc-hello:latest";
    oci::app_image(
        &guest::image(project, "hello")?,
        "hello",
        tandem_ref,
        &hello_tar,
    )?;
    oci::write_image(&static_hello(), "hello", runc_ref, &runc_tar)?;

    let dir = std::env::temp_dir().join(format!("tandem-bench-ctd-{}", std::process::id()));
    let mut c = Containerd::start(&dir, &bin_dir, &tandem)?;
    for tar in [&hello_tar, &runc_tar] {
        let tar = tar.to_str().context("non-UTF-8 path")?;
        let out = c
            .ctr(&["images", "import", tar])
            .map_err(anyhow::Error::msg)?;
        if !out.status.success() {
            bail!(
                "ctr images import {tar}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let tandem_args = |id: &str| {
        vec![
            "run".to_string(),
            "--rm".into(),
            "--runtime".into(),
            "io.containerd.tandem.v1".into(),
            tandem_ref.into(),
            id.into(),
        ]
    };
    let runc_args = |id: &str| vec!["run".to_string(), "--rm".into(), runc_ref.into(), id.into()];
    let mut samples = [Vec::new(), Vec::new()];
    eprintln!(
        "bench containerd: {} runs of each, after 2 warm-up runs",
        opts.runs
    );
    for i in 0..opts.runs + 2 {
        let t_args = tandem_args(&format!("bench-tandem-{i}"));
        let r_args = runc_args(&format!("bench-runc-{i}"));
        let t: Vec<&str> = t_args.iter().map(String::as_str).collect();
        let r: Vec<&str> = r_args.iter().map(String::as_str).collect();
        let t_ms = c.run(&t, "Hello from Tandem!")?;
        let r_ms = c.run(&r, "Hello from runc!")?;
        if i >= 2 {
            samples[0].push(t_ms);
            samples[1].push(r_ms);
        }
    }
    drop(c);

    let tandem_s = Summary::of(&samples[0]).context("no samples")?;
    let runc_s = Summary::of(&samples[1]).context("no samples")?;
    crate::table::print_summaries(
        "ctr run --rm (ms)",
        &[
            ("Tandem shim, hello unikernel", tandem_s),
            ("runc, static hello binary", runc_s),
        ],
    );
    let ratio = runc_s.median / tandem_s.median;
    println!("runc / Tandem (medians): {ratio:.2}");
    let json = json!({
        "what": "wall time of `ctr run --rm`, process start to exit, private containerd",
        "tandem": tandem_s.to_json(),
        "runc": runc_s.to_json(),
        "runc_over_tandem_median": crate::stats::round3(ratio),
    });
    let path = opts
        .json
        .clone()
        .unwrap_or_else(|| out_dir.join("containerd.json"));
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("{}", project.show(&path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_hello_runs() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("xtask-static-hello-{}", std::process::id()));
        fs::write(&path, static_hello()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new(&path).output().unwrap();
        fs::remove_file(&path).unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"Hello from runc!\n");
    }
}
