//! The floor `cargo xtask bench` measures `tandem run` against: the
//! minimal C VMM of `tools/minvmm` (a VM, one `hlt`, exit; static), and the
//! `rss` launcher that reads a whole process's peak RSS. Both are built
//! with Debian's gcc (static glibc from libc6-dev) into `target/bench/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::project::{self, Project};
use crate::qemu;

/// What building the floor needs.
const TOOLS: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev"),
];

/// The built tools.
pub struct Floor {
    /// The minimal C VMM.
    pub minvmm: PathBuf,
    /// The RSS launcher.
    pub rss: PathBuf,
}

/// Builds `tools/minvmm/minvmm.c` and `rss.c` (static, -O2).
pub fn build(project: &Project) -> Result<Floor> {
    qemu::ensure_tools(TOOLS)?;
    let src = project.root().join("tools").join("minvmm");
    let out = project.target_dir().join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut built = Vec::new();
    for name in ["minvmm", "rss"] {
        let bin = out.join(name);
        let mut cc = Command::new("gcc");
        cc.args(["-O2", "-static", "-Wall", "-o"])
            .arg(&bin)
            .arg(src.join(format!("{name}.c")));
        project::run(&mut cc, &format!("building tools/minvmm/{name}.c"))?;
        built.push(bin);
    }
    let rss = built.pop().context("rss built")?;
    let minvmm = built.pop().context("minvmm built")?;
    Ok(Floor { minvmm, rss })
}

/// Peak RSS of one whole run of `cmd` (program and arguments) in KiB,
/// through the `rss` launcher; the run must exit 0.
pub fn peak_rss_kib(rss: &Path, cmd: &[&std::ffi::OsStr]) -> Result<u64> {
    let out = Command::new(rss)
        .args(cmd)
        .output()
        .with_context(|| format!("cannot start {}", rss.display()))?;
    project::check(out.status, "the rss launcher")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let kib: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("rss printed {text:?}"))?;
    let code: i32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("rss printed {text:?}"))?;
    if code != 0 {
        bail!("{:?} exited {code} while its RSS was measured", cmd.first());
    }
    ensure!(kib > 0, "rss measured 0 KiB for {:?}", cmd.first());
    Ok(kib)
}
