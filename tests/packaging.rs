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

/// The binary the unit's `ExecStart` is pointed at in the verified copy:
/// systemd checks that it exists and is executable.
fn daemon_bin() -> PathBuf {
    tandem_bin()
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
        ["/usr/bin/tandemd --socket /run/tandem/tandemd.sock --state-dir /var/lib/tandem"]
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
