//! What an operator installs: the systemd unit of `tandemd`
//! (`packaging/tandemd.service`), checked by systemd's own verifier.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_tests::{require_tool, tandem_bin};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn unit_text() -> String {
    let path = workspace().join("packaging/tandemd.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The unit's `Key=value` lines of `section`, in order (repeated keys kept).
fn settings(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section {
            let (k, v) = line.split_once('=').expect("a Key=value line");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The built `tandemd`, which the verified copy's `ExecStart` names:
/// systemd checks that it exists and is executable.
fn daemon_bin() -> PathBuf {
    let path = std::env::var_os("TANDEM_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/tandemd"));
    assert!(
        path.is_file(),
        "the tandemd binary {} is missing: run the tests with `cargo xtask test` (or `cargo build -p tandem-daemon`)",
        path.display()
    );
    path
}

fn shim_bin() -> PathBuf {
    let path = std::env::var_os("TANDEM_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/containerd-shim-tandem-v1"));
    assert!(
        path.is_file(),
        "the shim {} is missing: run the tests with `cargo xtask test` (or `cargo build -p tandem-shim`)",
        path.display()
    );
    path
}

/// `systemd-analyze verify` on a copy of `text` (its `/usr/bin/tandemd`
/// replaced by a built binary) in a fresh directory: its exit code and every
/// diagnostic line it printed about the unit.
fn verify(text: &str, tag: &str) -> (Option<i32>, Vec<String>) {
    require_tool("systemd-analyze", "systemd");
    let dir = std::env::temp_dir().join(format!("tandem-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("tandemd.service");
    let bin = daemon_bin();
    std::fs::write(
        &unit,
        text.replace("/usr/bin/tandemd", &bin.display().to_string()),
    )
    .unwrap();
    // --man=no: the man pages are checked with the package, not here.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    std::fs::remove_dir_all(&dir).unwrap();
    // verify exits 0 on a key it does not know or a value it cannot parse
    // (it ignores them, as systemd would): those lines count as failures.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit = text
        .lines()
        .filter(|l| l.contains("tandemd.service"))
        .map(str::to_string)
        .collect();
    (out.status.code(), about_unit)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let (code, lines) = verify(&unit_text(), "good");
    assert_eq!(
        (code, &lines),
        (Some(0), &Vec::<String>::new()),
        "systemd-analyze verify found problems in packaging/tandemd.service"
    );
}

#[test]
fn systemd_analyze_verify_catches_a_broken_unit() {
    // What this test relies on: a misspelt key, a bad value and a missing
    // binary are each reported.
    for (broken, tag) in [
        (unit_text().replace("KillMode=", "KilMode="), "key"),
        (unit_text().replace("Type=notify", "Type=notfy"), "value"),
        (
            unit_text().replace("/usr/bin/tandemd", "/nonexistent/tandemd"),
            "binary",
        ),
    ] {
        let (code, lines) = verify(&broken, tag);
        assert!(
            code != Some(0) || !lines.is_empty(),
            "a broken unit ({tag}) passed systemd-analyze verify"
        );
    }
}

#[test]
fn the_unit_is_what_the_daemon_needs() {
    let text = unit_text();
    let service = settings(&text, "Service");
    let get = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("Type"), ["notify"], "READY=1 once the API answers");
    assert_eq!(get("NotifyAccess"), ["main"]);
    assert_eq!(
        get("KillMode"),
        ["process"],
        "VMs must outlive a daemon restart"
    );
    assert_eq!(
        get("ExecStart"),
        ["/usr/bin/tandemd --socket /run/tandem/tandemd.sock --state-dir /var/lib/tandem --group tandem"]
    );
    assert_eq!(get("RuntimeDirectory"), ["tandem"]);
    assert_eq!(get("RuntimeDirectoryPreserve"), ["yes"]);
    assert_eq!(get("StateDirectory"), ["tandem"]);
    assert_eq!(get("Group"), ["tandem"]);
    assert_eq!(get("DevicePolicy"), ["closed"]);
    let devices = get("DeviceAllow");
    for dev in ["/dev/kvm rw", "/dev/net/tun rw"] {
        assert!(devices.contains(&dev), "DeviceAllow={dev} missing");
    }
    // Settings that would break KVM guests, taps or the workers' jails.
    for key in [
        "MemoryDenyWriteExecute",
        "PrivateDevices",
        "PrivateNetwork",
        "ProtectControlGroups",
        "User",
    ] {
        assert!(get(key).is_empty(), "{key}= would break the daemon");
    }
    assert_eq!(
        settings(&text, "Install"),
        [("WantedBy".to_string(), "multi-user.target".to_string())]
    );
}

/// `tandem __generate-docs DIR` into a fresh directory.
fn generate_docs(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-docs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(tandem_bin())
        .arg("__generate-docs")
        .arg(&dir)
        .output()
        .expect("tandem runs");
    assert!(
        out.status.success(),
        "tandem __generate-docs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn man_pages_and_completions_come_from_the_cli() {
    let dir = generate_docs("cli");
    let man = dir.join("man");
    for page in [
        "tandem.1",
        "tandem-run.1",
        "tandem-restore.1",
        "tandem-fleet.1",
        "tandem-snapshot.1",
        "tandem-snapshot-info.1",
        "tandem-backup-verify.1",
    ] {
        let text = std::fs::read_to_string(man.join(page))
            .unwrap_or_else(|e| panic!("man page {page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains("\n.TH "),
            "{page} is not roff"
        );
        assert!(text.contains(".SH NAME"), "{page} has no NAME section");
    }
    let run = std::fs::read_to_string(man.join("tandem-run.1")).unwrap();
    assert!(
        run.contains("snapshot\\-at\\-ready"),
        "tandem-run.1 lacks --snapshot-at-ready"
    );
    // clap's `help` subcommand and the hidden generator get no page.
    let names: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("help") && !n.contains("generate")),
        "{names:?}"
    );
    let bash = dir.join("completions/bash/tandem.bash");
    let zsh = dir.join("completions/zsh/_tandem");
    let fish = dir.join("completions/fish/tandem.fish");
    for (file, words) in [
        (&bash, ["run", "restore", "fleet", "--snapshot-at-ready"]),
        (&zsh, ["run", "restore", "fleet", "--snapshot-at-ready"]),
        (&fish, ["run", "restore", "fleet", "snapshot-at-ready"]),
    ] {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for w in words {
            assert!(text.contains(w), "{} lacks {w}", file.display());
        }
        assert!(
            !text.contains("__generate-docs"),
            "{} offers the hidden generator",
            file.display()
        );
    }
    // The bash script is valid bash.
    let check = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n {}: {}",
        bash.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `cmd`, failing the test with its output unless it succeeds; its
/// stdout.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace());
    cmd
}

/// The package `cargo xtask deb` makes, but of the debug binaries the tests
/// run (cargo-deb `--profile dev --fast`: about 30 s here instead of the
/// release builds' minutes), with the documents generated where
/// `[package.metadata.deb]` looks for them.
#[test]
fn the_deb_holds_the_binaries_unit_man_pages_and_completions() {
    require_tool("dpkg-deb", "dpkg");
    let has_cargo_deb = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_cargo_deb,
        "cargo-deb is missing: `cargo xtask test` installs it (`cargo install cargo-deb --locked`)"
    );
    // The binaries the package takes, from the debug build of the tests.
    for bin in [tandem_bin(), daemon_bin(), shim_bin()] {
        assert_eq!(
            bin.parent(),
            Some(workspace().join("target/debug").as_path()),
            "cargo deb packs target/debug's binaries, not {}",
            bin.display()
        );
    }
    let dist = workspace().join("target/dist");
    let _ = std::fs::remove_dir_all(&dist);
    run(
        Command::new(tandem_bin()).arg("__generate-docs").arg(&dist),
        "tandem __generate-docs",
    );
    run(
        Command::new(daemon_bin()).arg("__generate-docs").arg(&dist),
        "tandemd __generate-docs",
    );
    let out = std::env::temp_dir().join(format!("tandem-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let said = run(
        cargo()
            .args([
                "deb",
                "-p",
                "tandem",
                "--no-build",
                "--profile",
                "dev",
                "--fast",
            ])
            .arg("--output")
            .arg(&out),
        "cargo deb",
    );
    let deb = PathBuf::from(said.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "cargo deb said {said:?}");

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb), "dpkg-deb -c");
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [
        "./usr/bin/tandem",
        "./usr/bin/tandemd",
        "./usr/bin/containerd-shim-tandem-v1",
        "./usr/lib/systemd/system/tandemd.service",
        "./usr/lib/sysusers.d/tandem.conf",
        "./usr/share/man/man1/tandem.1.gz",
        "./usr/share/man/man1/tandem-run.1.gz",
        "./usr/share/man/man1/tandem-fleet.1.gz",
        "./usr/share/bash-completion/completions/tandem",
        "./usr/share/zsh/vendor-completions/_tandem",
        "./usr/share/fish/vendor_completions.d/tandem.fish",
        "./usr/share/man/man8/tandemd.8.gz",
        "./usr/share/bash-completion/completions/tandemd",
        "./usr/share/zsh/vendor-completions/_tandemd",
        "./usr/share/fish/vendor_completions.d/tandemd.fish",
    ] {
        assert!(
            files.contains(&want),
            "{want} is not in the package:\n{listing}"
        );
    }
    let executables = listing
        .lines()
        .filter(|l| l.starts_with("-rwxr-xr-x") && l.contains("./usr/bin/"))
        .count();
    assert_eq!(executables, 3, "{listing}");

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb), "dpkg-deb -I");
    for want in [
        "Package: tandem",
        "Architecture: amd64",
        "Depends: libc6",
        "postinst",
    ] {
        assert!(info.contains(want), "no {want:?} in dpkg-deb -I:\n{info}");
    }
    let postinst = run(
        Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"),
        "dpkg-deb -I postinst",
    );
    for want in [
        "systemd-sysusers",
        "tandem.conf",
        "deb-systemd-helper",
        "tandemd.service",
    ] {
        assert!(
            postinst.contains(want),
            "postinst lacks {want}:\n{postinst}"
        );
    }

    // What is inside is what the repository holds, and it runs.
    let root = out.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    );
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/tandemd.service")).unwrap();
    assert_eq!(
        unit,
        unit_text(),
        "the packaged unit differs from packaging/tandemd.service"
    );
    let groups = std::fs::read_to_string(root.join("usr/lib/sysusers.d/tandem.conf")).unwrap();
    assert!(groups.lines().any(|l| l.trim() == "g tandem -"), "{groups}");
    for bin in ["tandem", "tandemd"] {
        let version = run(
            Command::new(root.join("usr/bin").join(bin)).arg("--version"),
            &format!("the packaged {bin} --version"),
        );
        assert!(version.starts_with(bin), "{version}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
