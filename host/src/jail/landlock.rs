//! The jail's file-system wall: Landlock rules that leave the VMM process
//! only the paths its VMs need (images and snapshots to read; snapshot,
//! backup and core directories and disks to write; `/dev/kvm` and
//! `/dev/net/tun` to open and `ioctl`; its own `/proc` entries), with
//! every right the kernel's Landlock knows handled, so anything else is
//! refused with `EACCES`. TCP bind and connect are refused outright, and
//! (Landlock ABI 6 and later) signals and abstract Unix sockets leaving
//! the jail too.
//!
//! What is enforced is decided first, purely, from the kernel's Landlock
//! ABI ([`plan`]): no Landlock is an error unless the operator asked for
//! best effort, and then a warning; otherwise every right of that ABI is
//! handled as a hard requirement, so the ruleset is enforced whole or
//! not at all.

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::JailError;

/// What a path is opened for, once the jail is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAccess {
    /// Read files (and list directories) beneath it.
    ReadOnly,
    /// Read, write, create, rename and remove files and directories
    /// beneath it (snapshot and backup directories, disks).
    ReadWrite,
    /// A device node: read, write and `ioctl` (`/dev/kvm`, `/dev/net/tun`).
    Device,
}

/// One path the jail leaves reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    /// The file or directory (everything beneath a directory).
    pub path: PathBuf,
    /// What for.
    pub access: PathAccess,
    /// A system path the process may not have (`/dev/net/tun`,
    /// `/sys/class/net`): skipped when missing instead of refused.
    pub optional: bool,
}

impl PathRule {
    /// A rule on a path the spec names (refused when missing).
    pub fn new(path: impl Into<PathBuf>, access: PathAccess) -> Self {
        Self {
            path: path.into(),
            access,
            optional: false,
        }
    }
}

/// The system paths every jailed VMM needs: KVM, taps, its own `/proc`
/// entries (the page map a snapshot reads, the pids of temporary files'
/// writers) and the interface table a tap is checked in.
pub fn system_rules() -> Vec<PathRule> {
    let optional = |path: &str, access| PathRule {
        path: path.into(),
        access,
        optional: true,
    };
    vec![
        PathRule::new("/dev/kvm", PathAccess::Device),
        optional("/dev/net/tun", PathAccess::Device),
        optional("/proc", PathAccess::ReadOnly),
        optional("/sys/class/net", PathAccess::ReadOnly),
        optional("/sys/devices/virtual/net", PathAccess::ReadOnly),
    ]
}

/// The Landlock ABI the jail enforces at: the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Landlock at this ABI, every right of it handled.
    At(ABI),
    /// No Landlock (the kernel has none; the operator accepted that).
    None,
}

/// Decides what to enforce with the kernel's Landlock ABI version
/// (`landlock_create_ruleset`'s answer: negative or 0 when it has none).
pub fn plan(kernel_abi: i64, best_effort: bool) -> Result<Enforcement, JailError> {
    let abi = ABI::from(i32::try_from(kernel_abi.clamp(-1, 1 << 16)).unwrap_or(-1));
    match abi {
        ABI::Unsupported if best_effort => Ok(Enforcement::None),
        ABI::Unsupported => Err(JailError::NoLandlock { kernel_abi }),
        abi => Ok(Enforcement::At(abi)),
    }
}

/// The kernel's Landlock ABI version (negative: the errno when it has none).
pub fn kernel_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // reads no memory and only answers the ABI version (or fails).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    if rc < 0 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(1))
    } else {
        rc
    }
}

/// The rights a rule of `access` gives at `abi`, for a directory or not.
pub fn rights(access: PathAccess, abi: ABI, is_dir: bool) -> BitFlags<AccessFs> {
    let all = AccessFs::from_all(abi);
    let wanted = match access {
        PathAccess::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
        PathAccess::ReadWrite => {
            AccessFs::ReadFile
                | AccessFs::ReadDir
                | AccessFs::WriteFile
                | AccessFs::RemoveFile
                | AccessFs::RemoveDir
                | AccessFs::MakeReg
                | AccessFs::MakeDir
                | AccessFs::Refer
                | AccessFs::Truncate
        }
        PathAccess::Device => AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
    };
    let wanted = wanted & all;
    if is_dir {
        wanted
    } else {
        wanted & AccessFs::from_file(abi)
    }
}

/// Restricts the calling thread (and the threads it starts from now on)
/// to `rules`. Returns the ABI enforced.
pub fn restrict(rules: &[PathRule], best_effort: bool) -> Result<Enforcement, JailError> {
    let enforcement = plan(kernel_abi(), best_effort)?;
    let Enforcement::At(abi) = enforcement else {
        log::warn!(
            "the kernel has no Landlock: the jail's paths are not enforced (best effort asked)"
        );
        return Ok(enforcement);
    };
    let landlock = |e: landlock::RulesetError| JailError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock)?;
    let net = AccessNet::from_all(abi);
    if !net.is_empty() {
        ruleset = ruleset.handle_access(net).map_err(landlock)?;
    }
    let scopes = Scope::from_all(abi);
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(landlock)?;
    }
    let mut created = ruleset.create().map_err(landlock)?;
    for rule in rules {
        let Some(fd) = open_rule_path(rule)? else {
            continue;
        };
        let is_dir = rule.path.is_dir();
        let access = rights(rule.access, abi, is_dir);
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| JailError::Rule {
                path: rule.path.clone(),
                reason: e.to_string(),
            })?;
        log::debug!("jail: {:?} {}", rule.access, rule.path.display());
    }
    let status = created.restrict_self().map_err(landlock)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(JailError::Landlock(format!(
            "the kernel enforces the ruleset only {:?}",
            status.ruleset
        )));
    }
    log::debug!(
        "Landlock ABI {abi} enforced: {} paths reachable",
        rules.len()
    );
    Ok(enforcement)
}

/// The path of `rule`, opened `O_PATH`; `None` for a missing optional one.
fn open_rule_path(rule: &PathRule) -> Result<Option<PathFd>, JailError> {
    if rule.optional && !Path::new(&rule.path).exists() {
        return Ok(None);
    }
    PathFd::new(&rule.path)
        .map(Some)
        .map_err(|e| JailError::Rule {
            path: rule.path.clone(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_landlock_is_an_error_unless_best_effort_was_asked() {
        let e = plan(-38, false).unwrap_err().to_string();
        assert!(
            e.contains("no Landlock") && e.contains("--jail-best-effort"),
            "{e}"
        );
        assert!(plan(0, false).is_err());
        assert_eq!(plan(-95, true).unwrap(), Enforcement::None);
        assert_eq!(plan(1, false).unwrap(), Enforcement::At(ABI::V1));
        assert_eq!(plan(7, false).unwrap(), Enforcement::At(ABI::V7));
        // A newer kernel than the crate knows: its newest ABI.
        assert!(matches!(plan(1000, false).unwrap(), Enforcement::At(_)));
    }

    #[test]
    fn rights_give_each_kind_of_path_what_it_needs_and_no_more() {
        let ro = rights(PathAccess::ReadOnly, ABI::V7, true);
        assert_eq!(ro, AccessFs::ReadFile | AccessFs::ReadDir);
        let rw = rights(PathAccess::ReadWrite, ABI::V7, true);
        assert!(rw.contains(AccessFs::MakeReg | AccessFs::RemoveFile | AccessFs::Truncate));
        assert!(!rw.contains(AccessFs::Execute));
        assert!(!rw.contains(AccessFs::MakeChar) && !rw.contains(AccessFs::MakeSym));
        assert!(!rw.contains(AccessFs::IoctlDev));
        // A file gets only file rights (Landlock refuses directory rights on one).
        let disk = rights(PathAccess::ReadWrite, ABI::V7, false);
        assert_eq!(
            disk,
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate
        );
        let dev = rights(PathAccess::Device, ABI::V7, false);
        assert_eq!(
            dev,
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev
        );
        // Before ABI 5 there is no device ioctl right to give (nor to handle).
        let old = rights(PathAccess::Device, ABI::V3, false);
        assert_eq!(old, AccessFs::ReadFile | AccessFs::WriteFile);
    }

    #[test]
    fn this_kernel_has_landlock() {
        // The machines this runs on (Linux 6.18) have ABI 7; a kernel
        // without Landlock fails here with its errno, not silently.
        assert!(kernel_abi() >= 1, "landlock ABI {}", kernel_abi());
    }
}
