//! `--jail` and its options (`run` and `restore`): the paths the run's
//! options name become the jail's ([`tandem::jail::JailSpec`]).

use std::path::{Path, PathBuf};

use tandem::jail::{CgroupSpec, JailIds, JailSpec, PathAccess, UidPool};

/// The jail of `tandem run` and `tandem restore`.
#[derive(clap::Args, Clone, Default)]
pub struct JailArgs {
    /// Jail the VMM once the VM is set up: Landlock leaves it only the
    /// paths its options name (image, snapshot, backup and core
    /// directories, disks) and /dev/kvm, /dev/net/tun, /proc; with
    /// --uid-pool or --user it also becomes that uid (supplementary groups
    /// dropped), and its writable directories are given to it.
    #[arg(long)]
    pub jail: bool,
    /// With --jail: the only directories the VMM may write, instead of
    /// those its options name (repeatable); a snapshot, backup or core
    /// file elsewhere is then refused by the kernel.
    #[arg(long = "jail-dir", value_name = "DIR", requires = "jail")]
    pub jail_dirs: Vec<PathBuf>,
    /// With --jail: also let the VMM read PATH (repeatable).
    #[arg(long = "jail-ro", value_name = "PATH", requires = "jail")]
    pub jail_ro: Vec<PathBuf>,
    /// With --jail: become a free uid of FIRST-LAST (its gid the same
    /// number), held by a lock file in /run/tandem/uid-pool while the
    /// VMM lives.
    #[arg(
        long,
        value_name = "FIRST-LAST",
        requires = "jail",
        conflicts_with = "user"
    )]
    pub uid_pool: Option<UidPool>,
    /// With --jail: run in control group NAME (made if missing, under
    /// the cgroup v2 hierarchy, or each v1 one), with these limits:
    /// cpu=50% (cpu.max: half of one CPU), memory=128M (memory.max),
    /// pids=N (pids.max).
    #[arg(
        long,
        value_name = "NAME[,cpu=P%][,memory=SIZE][,pids=N]",
        requires = "jail"
    )]
    pub cgroup: Option<CgroupSpec>,
    /// With --jail: on a kernel without Landlock, go on without the path
    /// rules (with a warning) instead of refusing to run.
    #[arg(long, requires = "jail")]
    pub jail_best_effort: bool,
}

/// The paths a run's options name, by use.
#[derive(Default)]
pub struct RunPaths {
    /// Read: the image, the snapshot restored from.
    pub read: Vec<PathBuf>,
    /// Written: snapshot and backup directories, the core file's directory.
    pub write: Vec<PathBuf>,
    /// Disks: (file, read-only).
    pub disks: Vec<(PathBuf, bool)>,
}

impl RunPaths {
    /// Adds the directory a file will be created in (`--core FILE`).
    pub fn write_parent_of(&mut self, file: &Path) {
        let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
        self.write
            .push(parent.map_or_else(|| PathBuf::from("."), Path::to_path_buf));
    }
}

impl JailArgs {
    /// The jail `--jail` asks for with `paths`, and `user`/`group`; `None`
    /// without `--jail`.
    pub fn spec(
        &self,
        paths: RunPaths,
        user: Option<&str>,
        group: Option<&str>,
    ) -> Option<JailSpec> {
        if !self.jail {
            return None;
        }
        let mut spec = JailSpec {
            best_effort: self.jail_best_effort,
            cgroup: self.cgroup.clone(),
            ..JailSpec::default()
        };
        spec.ids = match (&self.uid_pool, user) {
            (Some(pool), _) => JailIds::Pool(pool.clone()),
            (None, Some(user)) => JailIds::User {
                user: user.into(),
                group: group.map(Into::into),
            },
            (None, None) => JailIds::Keep,
        };
        for p in paths.read.iter().chain(&self.jail_ro) {
            spec.allow(p, PathAccess::ReadOnly);
        }
        for (p, ro) in &paths.disks {
            let access = if *ro {
                PathAccess::ReadOnly
            } else {
                PathAccess::ReadWrite
            };
            spec.allow(p, access);
        }
        if self.jail_dirs.is_empty() {
            for p in &paths.write {
                spec.allow(p, PathAccess::ReadWrite);
            }
        } else {
            for p in &self.jail_dirs {
                spec.allow(p, PathAccess::ReadWrite);
            }
            for p in &paths.write {
                if !self.jail_dirs.iter().any(|d| p.starts_with(d)) {
                    log::warn!(
                        "{} is outside the jail's --jail-dir directories: writing there will be refused",
                        p.display()
                    );
                }
            }
        }
        Some(spec)
    }
}
