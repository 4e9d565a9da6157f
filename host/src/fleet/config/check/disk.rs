//! The rules of a fleet VM's disks: `disk = ["path=FILE[,ro]", ...]` as
//! `--disk` takes them, `io_rate` and `iops` over them, the image's
//! manifest, one writer per file across the fleet, and each file opened
//! (size, writability, lock) before anything starts.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_abi::note::DeviceKind;
use toml::Spanned;

use super::super::raw::{RawIoBudget, RawVm, Text};
use super::super::Problems;
use super::Entry;
use crate::devices::blk::spec::rate_limit;
use crate::devices::blk::{DiskFile, DiskSpecError};
use crate::devices::manifest::{self, DeviceMismatch};
use crate::devices::rate_limiter::RateLimit;
use crate::devices::DiskSpec;
use crate::fleet::io::IoBudget;
use crate::image::Image;

/// What replicas' disk paths put their index in place of.
pub(super) const REPLICA_INDEX: &str = "{i}";

/// An entry's disks, checked on their own.
#[derive(Default)]
pub(super) struct EntryDisks {
    /// Each disk (relative paths taken from the file's folder, `{i}` not
    /// yet replaced), with the place of its string.
    pub(super) disks: Vec<(DiskSpec, Range<usize>)>,
    /// Where the `disk` value is, when given.
    pub(super) at: Option<Range<usize>>,
}

/// A `--disk` refusal without its `--disk: ` (the key is named already).
fn reason(e: &DiskSpecError) -> String {
    let s = e.to_string();
    s.strip_prefix("--disk: ").unwrap_or(&s).to_string()
}

/// A limit key's value: parsed as `--disk` parses `key=`, each refusal at it.
fn limit(
    value: &Option<Spanned<Text>>,
    parse: impl Fn(&str) -> Result<RateLimit, DiskSpecError>,
    what: &str,
    key: &str,
    p: &mut Problems,
) -> RateLimit {
    let Some(v) = value else {
        return RateLimit::default();
    };
    parse(&v.get_ref().0).unwrap_or_else(|e| {
        p.at(&v.span(), format!("{what}: `{key}`: {}", reason(&e)));
        RateLimit::default()
    })
}

/// `[fleet] io_budget = { rate = "200M", iops = 20000 }`: each bad value
/// a problem at it; `None` when refused.
pub(super) fn io_budget(raw: &Spanned<RawIoBudget>, p: &mut Problems) -> Option<IoBudget> {
    let what = "[fleet] io_budget";
    let b = raw.get_ref();
    if b.rate.is_none() && b.iops.is_none() {
        p.at(
            &raw.span(),
            format!("{what}: needs `rate` (bytes a second), `iops` (requests a second) or both, like {{ rate = \"200M\", iops = 20000 }}"),
        );
        return None;
    }
    let mut ok = true;
    let mut check = |v: &Option<Spanned<Text>>,
                     key: &str,
                     parse: &dyn Fn(&str) -> Result<RateLimit, DiskSpecError>| {
        let limit = limit(v, parse, what, key, p);
        if v.is_some() && !limit.is_limited() {
            ok = false;
        }
        limit
    };
    let rate = check(&b.rate, "rate", &|v| rate_limit(Some(v), None));
    let iops = check(&b.iops, "iops", &|v| rate_limit(None, Some(v)));
    ok.then(|| IoBudget {
        bytes: rate.bytes.map(|b| b.rate()),
        ops: iops.ops.map(|b| b.rate()),
    })
}

/// `vm` (with its defaults) and `own` (the entry as written): its disks,
/// with `io_rate` and `iops` under each disk's own limits.
pub(super) fn entry_disks(
    vm: &RawVm,
    own: &RawVm,
    count: usize,
    base: &Path,
    what: &str,
    p: &mut Problems,
) -> EntryDisks {
    let rate = limit(
        &vm.io_rate,
        |v| rate_limit(Some(v), None),
        what,
        "io_rate",
        p,
    );
    let iops = limit(&vm.iops, |v| rate_limit(None, Some(v)), what, "iops", p);
    let over = RateLimit {
        bytes: rate.bytes,
        ops: iops.ops,
    };
    let Some(list) = &vm.disk else {
        // Limits in `[defaults]` hold for the VMs with disks only.
        for (key, v) in [("io_rate", &own.io_rate), ("iops", &own.iops)] {
            if let Some(v) = v {
                p.at(
                    &v.span(),
                    format!("{what}: `{key}` limits the VM's disks, and it has no `disk`"),
                );
            }
        }
        return EntryDisks::default();
    };
    let mut disks = Vec::new();
    for item in &list.get_ref().0 {
        let text = &item.get_ref().0;
        let spec = match text.parse::<DiskSpec>() {
            Ok(s) => s,
            Err(e) => {
                p.at(
                    &item.span(),
                    format!("{what}: disk {text:?}: {}", reason(&e)),
                );
                continue;
            }
        };
        let shared = !spec.path.to_string_lossy().contains(REPLICA_INDEX);
        if count > 1 && shared && !spec.read_only {
            p.at(
                &item.span(),
                format!(
                    "{what}: disk {text:?}: its {count} replicas need one writable disk each: put {REPLICA_INDEX} (the replica's index) in the path"
                ),
            );
            continue;
        }
        let spec = DiskSpec {
            path: base.join(&spec.path),
            ..spec
        }
        .or_limit(over);
        disks.push((spec, item.span()));
    }
    let at = Some(list.span());
    let restored = [("snapshot", &vm.snapshot), ("checkpoint", &vm.checkpoint)];
    if let (Some(at), Some((key, _))) = (&at, restored.iter().find(|(_, v)| v.is_some())) {
        p.at(
            at,
            format!(
                "{what}: `disk` with `{key}` is not supported yet (a restore needs a disk file of its own, as `tandem restore --disk path=NEWFILE` takes)"
            ),
        );
    }
    EntryDisks { disks, at }
}

/// An image declaring a block device needs `disk`; `disk` needs an image
/// declaring one (the device manifest's rule, as `tandem run` applies it).
pub(super) fn manifests(
    entries: &[Entry],
    images: &BTreeMap<PathBuf, Arc<Image>>,
    p: &mut Problems,
) {
    for e in entries {
        let Some(path) = &e.image else { continue };
        let Some(image) = images.get(path.get_ref()) else {
            continue;
        };
        // The network is the images check's; only the disks are decided here.
        let net = image.devices.contains(DeviceKind::Net);
        let offers = manifest::offered_with(net, e.disks.at.is_some());
        match manifest::check(&image.name, image.devices, offers) {
            Err(DeviceMismatch::Missing {
                image,
                kind: DeviceKind::Block,
            }) => p.at(
                &path.span(),
                format!(
                    "{}: image {image} needs a block device: give the VM `disk = [\"path=FILE\"]`",
                    e.label
                ),
            ),
            Err(DeviceMismatch::Undeclared {
                image,
                kind: DeviceKind::Block,
            }) => {
                if let Some(at) = &e.disks.at {
                    p.at(
                        at,
                        format!(
                            "{}: image {image} does not declare a block device; remove `disk`",
                            e.label
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Each VM's disks (replicas expanded, `{i}` replaced by the replica's
/// index): no file written by two VMs, or read by one and written by
/// another; each file opened as its VM will open it.
pub(super) fn vm_disks(entries: &[Entry], p: &mut Problems) -> Vec<Vec<DiskSpec>> {
    // The first VM to name each file, and whether it writes it.
    let mut users: HashMap<PathBuf, (String, bool)> = HashMap::new();
    let mut out = Vec::new();
    for e in entries {
        for r in 0..e.count {
            let vm = if e.count == 1 {
                e.label.clone()
            } else {
                format!("{} (replica {r})", e.label)
            };
            let mut mine = Vec::new();
            for (spec, at) in &e.disks.disks {
                let path = spec.path.to_string_lossy();
                let spec = DiskSpec {
                    path: PathBuf::from(path.replace(REPLICA_INDEX, &r.to_string())),
                    ..spec.clone()
                };
                let key = std::fs::canonicalize(&spec.path).unwrap_or_else(|_| spec.path.clone());
                match users.get(&key) {
                    Some((first, writes)) if *writes || !spec.read_only => p.at(
                        at,
                        format!(
                            "{vm}: disk {} is {first}'s too: a disk written by one VM is no other VM's",
                            spec.path.display()
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        users.insert(key, (vm.clone(), !spec.read_only));
                        // Checked as the VM will open it, then closed (and
                        // unlocked) again.
                        if let Err(err) = DiskFile::open(&spec.path, spec.read_only) {
                            p.at(at, format!("{vm}: {err}"));
                        }
                    }
                }
                mine.push(spec);
            }
            out.push(mine);
        }
    }
    out
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
