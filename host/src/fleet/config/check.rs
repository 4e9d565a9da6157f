//! The rules a fleet must follow, checked on the decoded file. Each broken
//! rule is reported at the value that breaks it and checking goes on, so
//! that one run names every problem. The fleet network's rules are in
//! `check/net.rs`.

mod disk;
mod net;

use std::collections::{BTreeMap, HashMap};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{Decoded, Integer, Period, RawFleet, RawVm};
use super::{
    app_dirs, default_max_concurrent_boots, default_memory_budget, vm_label, FleetSpec,
    LimitOverrides, Limits, Problems, RestartPolicy, VmSpec, DEFAULT_VM_MEMORY, MAX_COUNT,
    MAX_NAME, MAX_WARM,
};
use crate::devices::manifest;
use crate::devices::spec::{LimitItems, NetSpec};
use crate::devices::DiskSpec;
use crate::fleet::io::IoClass;
use crate::image::{Image, ImageError};
use crate::snapshot::Snapshot;
use tandem_abi::note::DeviceKind;

/// Checks a decoded file and builds its fleet; `None` when any problem was
/// found (here or while decoding).
pub(super) fn fleet(
    decoded: &Decoded,
    base: &Path,
    overrides: LimitOverrides,
    p: &mut Problems,
) -> Option<FleetSpec> {
    let file = &decoded.file;
    let limits = limits(file.fleet.as_ref(), overrides, p);
    let io_budget = file
        .fleet
        .as_ref()
        .and_then(|f| f.io_budget.as_ref())
        .and_then(|b| disk::io_budget(b, p));
    let net = file
        .fleet
        .as_ref()
        .and_then(|f| f.network.as_ref())
        .and_then(|n| net::network(n, p));
    let defaults = file.defaults.clone().unwrap_or_default();
    refuse_per_vm_keys(&defaults, p);
    let raw_vms = file.vm.as_ref().map_or(&[][..], |l| &l.0[..]);
    if raw_vms.is_empty() && !decoded.refused("vm") {
        p.unplaced("the fleet has no VMs (add [[vm]] entries)");
    }
    let paths = Paths {
        base,
        app_dirs: app_dirs(base),
    };
    let entries: Vec<Entry> = raw_vms
        .iter()
        .enumerate()
        .filter(|(i, _)| !decoded.refused(&format!("vm.{i}")))
        .map(|(i, raw)| entry(i, raw, &defaults, decoded, &paths, &limits, p))
        .collect();
    duplicates(&entries, p);
    let images = images(&entries, net.is_some(), p);
    disk::manifests(&entries, &images, p);
    let disks = disk::vm_disks(&entries, p);
    let groups = groups(&entries);
    let afters = dependencies(&entries, &groups, p);
    let nets = match &net {
        Some(n) => net::vm_networks(&entries, &images, n, p),
        None => {
            for e in &entries {
                if let Some((_, at)) = &e.net_items {
                    p.at(
                        at,
                        format!("{}: `net` limits need a fleet network ([fleet] network = {{ bridge = ..., subnet = ... }})", e.label),
                    );
                }
            }
            Vec::new()
        }
    };
    let cmdlines = net::references(&entries, &nets, p);
    warm_without_devices(&entries, &nets, p);
    for cycle in cycles(&entries) {
        p.at(
            &cycle.at,
            format!("dependency cycle: {}", cycle.names.join(" -> ")),
        );
    }
    warm_budget(&entries, &limits, p);
    if !p.is_empty() {
        return None;
    }
    Some(FleetSpec {
        vms: expand(&entries, &afters, &images, &nets, &disks, &cmdlines),
        limits,
        network: net.map(|n| n.net),
        io_budget,
    })
}

/// One `[[vm]]` entry, checked, before names are resolved.
struct Entry {
    /// Its name, unless missing or refused.
    group: Option<Spanned<String>>,
    /// How problems name it.
    label: String,
    count: usize,
    image: Option<Spanned<PathBuf>>,
    mem_size: u64,
    cmdline: String,
    /// Where the command line's string is.
    cmdline_at: Option<Range<usize>>,
    /// Its own network limits (`net = { ... }`), and where they are.
    net_items: Option<(LimitItems, Range<usize>)>,
    priority: i64,
    after: Vec<Spanned<String>>,
    snapshot: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
    restart: RestartPolicy,
    max_restarts: u32,
    backoff: Duration,
    backoff_max: Duration,
    boot_timeout: Option<Duration>,
    warm: usize,
    /// Where `warm` is, when given.
    warm_at: Option<Range<usize>>,
    /// Its disks, and where `disk` is.
    disks: disk::EntryDisks,
    /// Its share of the fleet's I/O budget.
    io_class: IoClass,
}

impl Entry {
    fn name(&self) -> Option<&str> {
        self.group.as_ref().map(|g| g.get_ref().as_str())
    }
}

/// Where the file's relative paths are taken from.
struct Paths<'a> {
    base: &'a Path,
    app_dirs: Vec<PathBuf>,
}

impl Paths<'_> {
    /// An image: an absolute path, a path relative to the file, or an app
    /// name found in one of the app folders.
    fn image(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let rel = self.base.join(path);
        if rel.exists() || p.contains('/') {
            return rel;
        }
        self.app_dirs
            .iter()
            .map(|d| d.join(p))
            .find(|c| c.is_file())
            .unwrap_or(rel)
    }
}

fn limits(fleet: Option<&RawFleet>, overrides: LimitOverrides, p: &mut Problems) -> Limits {
    let file_cap = fleet.and_then(|f| {
        int(
            f.max_concurrent_boots.as_ref(),
            1..=1 << 20,
            "[fleet]",
            "max_concurrent_boots",
            p,
        )
    });
    let file_budget = fleet.and_then(|f| f.memory_budget.as_ref().map(|b| b.get_ref().0));
    let limits = Limits {
        max_concurrent_boots: overrides
            .max_concurrent_boots
            .or(file_cap.and_then(|n| usize::try_from(n).ok()))
            .unwrap_or_else(default_max_concurrent_boots),
        memory_budget: overrides
            .memory_budget
            .or(file_budget)
            .unwrap_or_else(default_memory_budget),
    };
    if limits.max_concurrent_boots == 0 {
        p.unplaced("the cap on concurrent boots must be at least 1");
    }
    limits
}

/// `[defaults]` may hold any VM key but these.
fn refuse_per_vm_keys(defaults: &RawVm, p: &mut Problems) {
    let spans = [
        ("name", defaults.name.as_ref().map(Spanned::span)),
        ("after", defaults.after.as_ref().map(Spanned::span)),
        ("count", defaults.count.as_ref().map(Spanned::span)),
    ];
    for (key, span) in spans {
        if let Some(span) = span {
            p.at(
                &span,
                format!("[defaults]: unknown or per-VM-only key `{key}`"),
            );
        }
    }
}

/// An integer value in `range`, else a problem.
fn int(
    value: Option<&Spanned<Integer>>,
    range: RangeInclusive<i64>,
    what: &str,
    key: &str,
    p: &mut Problems,
) -> Option<i64> {
    let value = value?;
    let n = value.get_ref().0;
    if range.contains(&n) {
        return Some(n);
    }
    p.at(
        &value.span(),
        format!(
            "{what}: `{key}` = {n} is outside {}..={}",
            range.start(),
            range.end()
        ),
    );
    None
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Checks the `index`th `[[vm]]` entry (with `defaults` for the keys it
/// does not set) on its own.
fn entry(
    index: usize,
    raw: &Spanned<RawVm>,
    defaults: &RawVm,
    decoded: &Decoded,
    paths: &Paths<'_>,
    limits: &Limits,
    p: &mut Problems,
) -> Entry {
    // The `[[vm]]` header: the place of what the entry lacks.
    let header = raw.span();
    let vm = raw.get_ref().or(defaults);
    let what = vm_label(vm.name.as_ref().map(|n| n.get_ref().as_str()), index);
    match &vm.name {
        Some(n) if !valid_name(n.get_ref()) => p.at(
            &n.span(),
            format!(
                "{what}: names are 1 to {MAX_NAME} characters of letters, digits, `-`, `_` and `.`"
            ),
        ),
        None if !decoded.refused(&format!("vm.{index}.name")) => {
            p.at(&header, format!("{what}: missing `name`"))
        }
        _ => {}
    }
    let image = vm
        .image
        .as_ref()
        .map(|s| Spanned::new(s.span(), paths.image(s.get_ref())));
    if image.is_none()
        && !decoded.refused(&format!("vm.{index}.image"))
        && !decoded.refused("defaults.image")
    {
        p.at(&header, format!("{what}: missing `image`"));
    }
    if let Some(t) = vm.boot_timeout.as_ref().filter(|t| t.get_ref().0.is_zero()) {
        p.at(
            &t.span(),
            format!("{what}: `boot_timeout` must be more than 0"),
        );
    }
    let duration = |d: &Option<Spanned<Period>>| d.as_ref().map(|d| d.get_ref().0);
    let warm = int(vm.warm.as_ref(), 0..=MAX_WARM, &what, "warm", p)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    if let Some(w) = vm
        .warm
        .as_ref()
        .filter(|_| warm > 0 && vm.snapshot.is_none())
    {
        p.at(
            &w.span(),
            format!("{what}: `warm` keeps VMs restored ahead from a `snapshot`, and it has none"),
        );
    }
    let count = int(vm.count.as_ref(), 1..=MAX_COUNT, &what, "count", p)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(1);
    Entry {
        disks: disk::entry_disks(&vm, raw.get_ref(), count, paths.base, &what, p),
        io_class: vm
            .io_class
            .as_ref()
            .map_or_else(IoClass::default, |c| *c.get_ref()),
        // Without a snapshot (refused above) there is no pool to count.
        warm: if vm.snapshot.is_some() { warm } else { 0 },
        warm_at: vm.warm.as_ref().map(|w| w.span()),
        group: vm.name.clone(),
        count,
        image,
        mem_size: memory(&vm, &header, &what, limits, p),
        cmdline: cmdline(&vm, &what, p),
        cmdline_at: vm.cmdline.as_ref().map(Spanned::span),
        net_items: vm.net.as_ref().and_then(|n| {
            let t = n.get_ref();
            let values = [
                ("rate", &t.rate),
                ("rate_burst", &t.rate_burst),
                ("pps", &t.pps),
                ("pps_burst", &t.pps_burst),
            ];
            let items = net::limit_items(values, &format!("{what}: `net`"), p)?;
            Some((items, n.span()))
        }),
        priority: int(
            vm.priority.as_ref(),
            -1_000_000..=1_000_000,
            &what,
            "priority",
            p,
        )
        .unwrap_or(0),
        snapshot: snapshot(&vm, paths, &what, p),
        checkpoint: vm.checkpoint.as_ref().map(|s| paths.base.join(s.get_ref())),
        restart: vm
            .restart
            .as_ref()
            .map_or(RestartPolicy::Never, |r| *r.get_ref()),
        max_restarts: int(
            vm.max_restarts.as_ref(),
            0..=1_000_000,
            &what,
            "max_restarts",
            p,
        )
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(3),
        backoff: duration(&vm.backoff).unwrap_or(Duration::from_millis(100)),
        backoff_max: duration(&vm.backoff_max).unwrap_or(Duration::from_secs(10)),
        boot_timeout: duration(&vm.boot_timeout),
        after: vm.after.map(|l| l.into_inner().0).unwrap_or_default(),
        label: what,
    }
}

/// Guest memory: what `tandem run --mem` accepts, and within the budget.
fn memory(vm: &RawVm, header: &Range<usize>, what: &str, limits: &Limits, p: &mut Problems) -> u64 {
    let (mem_size, at) = vm.memory.as_ref().map_or_else(
        || (DEFAULT_VM_MEMORY, header.clone()),
        |m| (m.get_ref().0, m.span()),
    );
    if let Err(e) = crate::vm::check_mem_size(mem_size) {
        p.at(&at, format!("{what}: {e}"));
    }
    if mem_size > limits.memory_budget {
        p.at(
            &at,
            format!(
                "{what} needs {} MiB, more than the whole memory budget of {} MiB: it could never start",
                mem_size >> 20,
                limits.memory_budget >> 20
            ),
        );
    }
    mem_size
}

/// Warm pools hold their memory for the whole run: with them, every VM
/// must still fit the budget, or it could never start.
/// A warm pool keeps VMs without devices: a VM on the fleet network
/// (`nets`, replicas expanded) cannot start from one.
fn warm_without_devices(entries: &[Entry], nets: &[Option<NetSpec>], p: &mut Problems) {
    let mut first = 0usize;
    for e in entries {
        let networked = nets
            .get(first..first.saturating_add(e.count))
            .is_some_and(|n| n.iter().any(Option::is_some));
        first = first.saturating_add(e.count);
        if let (true, true, Some(at)) = (networked, e.warm > 0, &e.warm_at) {
            p.at(
                at,
                format!(
                    "{}: `warm` pools keep VMs without devices, and this VM is on the fleet network",
                    e.label
                ),
            );
        }
    }
}

fn warm_budget(entries: &[Entry], limits: &Limits, p: &mut Problems) {
    let pools: u64 = entries
        .iter()
        .map(|e| crate::pool::pool_memory(e.warm, e.mem_size))
        .fold(0, u64::saturating_add);
    if pools == 0 {
        return;
    }
    if let Some(e) = entries
        .iter()
        .find(|e| pools.saturating_add(e.mem_size) > limits.memory_budget)
    {
        p.unplaced(format!(
            "warm pools hold {} MiB of the {} MiB memory budget: {} ({} MiB) could never start",
            pools >> 20,
            limits.memory_budget >> 20,
            e.label,
            e.mem_size >> 20
        ));
    }
}

/// The app's command line: it must fit the boot information.
fn cmdline(vm: &RawVm, what: &str, p: &mut Problems) -> String {
    let Some(c) = &vm.cmdline else {
        return String::new();
    };
    let max = tandem_abi::bootinfo::MAX_CMDLINE;
    if c.get_ref().len() > max {
        p.at(
            &c.span(),
            format!(
                "{what}: command line of {} bytes is longer than {max}",
                c.get_ref().len()
            ),
        );
    }
    c.get_ref().clone()
}

/// The snapshot to start from: it must load.
fn snapshot(vm: &RawVm, paths: &Paths<'_>, what: &str, p: &mut Problems) -> Option<PathBuf> {
    let s = vm.snapshot.as_ref()?;
    let dir = paths.base.join(s.get_ref());
    if let Err(e) = Snapshot::load(&dir) {
        p.at(
            &s.span(),
            format!("{what}: snapshot {}: {e}", dir.display()),
        );
    }
    Some(dir)
}

/// Names are unique; a duplicate is reported where it repeats.
fn duplicates(entries: &[Entry], p: &mut Problems) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(name) = &e.group else { continue };
        match first.get(name.get_ref().as_str()) {
            Some(f) => p.at(
                &name.span(),
                format!(
                    "duplicate VM name `{}` (entries #{} and #{})",
                    name.get_ref(),
                    f + 1,
                    i + 1
                ),
            ),
            None => {
                first.insert(name.get_ref(), i);
            }
        }
    }
}

/// Each distinct image file checked once, shared by the VMs that boot it;
/// a bad one is reported once, at its first use, naming every user.
fn images(entries: &[Entry], network: bool, p: &mut Problems) -> BTreeMap<PathBuf, Arc<Image>> {
    let mut checked: BTreeMap<PathBuf, Option<Arc<Image>>> = BTreeMap::new();
    for e in entries {
        let Some(image) = &e.image else { continue };
        let file = image.get_ref();
        if checked.contains_key(file) {
            continue;
        }
        let what = || {
            let mut users: Vec<&str> = Vec::new();
            for o in entries {
                if o.image.as_ref().map(Spanned::get_ref) == Some(file) {
                    if let Some(n) = o.name().filter(|n| !users.contains(n)) {
                        users.push(n);
                    }
                }
            }
            if users.is_empty() {
                e.label.clone()
            } else {
                format!("vm `{}`", users.join("`, `"))
            }
        };
        let loaded = match Image::from_file(file) {
            // With a fleet network, a VM whose image declares a network
            // device gets one; without, it cannot run here. No other
            // device is offered.
            Ok(i) => {
                // Disks are each VM's own: checked per entry (`check/disk.rs`).
                let net = network && i.devices.contains(DeviceKind::Net);
                let block = i.devices.contains(DeviceKind::Block);
                match manifest::check(&i.name, i.devices, manifest::offered_with(net, block)) {
                    Ok(()) => Some(Arc::new(i)),
                    Err(m) => {
                        let what = what();
                        let hint = if i.devices.contains(DeviceKind::Net) && !network {
                            " (give the fleet a network: [fleet] network = { bridge = \"tandem0\", subnet = \"10.77.0.0/24\" })"
                        } else {
                            " (a fleet offers VMs the network and disks only)"
                        };
                        p.at(&image.span(), format!("{what}: {m}{hint}"));
                        None
                    }
                }
            }
            Err(err) => {
                let why = match err {
                    // It names the file already.
                    ImageError::Read { .. } => err.to_string(),
                    _ => format!("image {}: {err}", file.display()),
                };
                p.at(&image.span(), format!("{}: {why}", what()));
                None
            }
        };
        checked.insert(file.clone(), loaded);
    }
    checked
        .into_iter()
        .filter_map(|(f, i)| Some((f, i?)))
        .collect()
}

/// The indices (into [`FleetSpec::vms`], replicas expanded) of each name;
/// a duplicated name keeps its first entry's.
fn groups(entries: &[Entry]) -> HashMap<&str, Range<usize>> {
    let mut groups = HashMap::new();
    let mut next = 0usize;
    for e in entries {
        if let Some(name) = e.name() {
            groups.entry(name).or_insert(next..next + e.count);
        }
        next += e.count;
    }
    groups
}

/// Each entry's `after` as indices of the VMs it waits for.
fn dependencies(
    entries: &[Entry],
    groups: &HashMap<&str, Range<usize>>,
    p: &mut Problems,
) -> Vec<Vec<usize>> {
    entries
        .iter()
        .map(|e| {
            let mut deps = Vec::new();
            for a in &e.after {
                let name = a.get_ref().as_str();
                if e.name() == Some(name) {
                    p.at(&a.span(), format!("{} lists itself in `after`", e.label));
                    continue;
                }
                match groups.get(name) {
                    Some(ids) => deps.extend(ids.clone()),
                    None => p.at(
                        &a.span(),
                        format!(
                            "{}: `after` names `{name}`, which is not a VM of this fleet",
                            e.label
                        ),
                    ),
                }
            }
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect()
}

/// A dependency cycle: its entries' names (the first repeated at the end),
/// and the place of the `after` name that closes it.
struct Cycle {
    names: Vec<String>,
    at: Range<usize>,
}

/// Every dependency cycle among entries, each found once.
fn cycles(entries: &[Entry]) -> Vec<Cycle> {
    let mut idx: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(name) = e.name() {
            idx.entry(name).or_insert(i);
        }
    }
    let edges: Vec<Vec<(usize, Range<usize>)>> = entries
        .iter()
        .map(|e| {
            e.after
                .iter()
                .filter(|a| e.name() != Some(a.get_ref().as_str()))
                .filter_map(|a| Some((*idx.get(a.get_ref().as_str())?, a.span())))
                .collect()
        })
        .collect();
    let name = |v: usize| {
        let e = &entries[v];
        e.name().map_or_else(|| e.label.clone(), str::to_string)
    };
    // Iterative DFS with colours; each back edge closes one cycle.
    let n = entries.len();
    let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut found = Vec::new();
    for root in 0..n {
        if colour[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some((to, at)) = edges[node].get(*next) else {
                colour[node] = 2;
                stack.pop();
                continue;
            };
            *next += 1;
            match colour[*to] {
                0 => {
                    colour[*to] = 1;
                    stack.push((*to, 0));
                }
                1 => {
                    let start = stack.iter().position(|&(v, _)| v == *to).unwrap_or(0);
                    let mut names: Vec<String> =
                        stack[start..].iter().map(|&(v, _)| name(v)).collect();
                    names.push(name(*to));
                    found.push(Cycle {
                        names,
                        at: at.clone(),
                    });
                }
                _ => {}
            }
        }
    }
    found
}

/// The fleet's VMs: each entry's replicas, named `group-i` when there are
/// several. Only called on a fleet without problems: every entry has a
/// name and a checked image.
fn expand(
    entries: &[Entry],
    afters: &[Vec<usize>],
    images: &BTreeMap<PathBuf, Arc<Image>>,
    nets: &[Option<NetSpec>],
    disks: &[Vec<DiskSpec>],
    cmdlines: &[String],
) -> Vec<VmSpec> {
    let mut vms = Vec::with_capacity(entries.iter().map(|e| e.count).sum());
    let mut index = 0usize;
    for ((e, after), cmdline) in entries.iter().zip(afters).zip(cmdlines) {
        let first = index;
        index += e.count;
        let (Some(group), Some(path)) = (e.name(), &e.image) else {
            continue;
        };
        let Some(image) = images.get(path.get_ref()) else {
            continue;
        };
        for r in 0..e.count {
            let one = e.count == 1;
            vms.push(VmSpec {
                name: if one {
                    group.to_string()
                } else {
                    format!("{group}-{r}")
                },
                group: group.to_string(),
                image_path: path.get_ref().clone(),
                image: image.clone(),
                mem_size: e.mem_size,
                cmdline: cmdline.clone(),
                net: nets.get(first + r).cloned().flatten(),
                disks: disks.get(first + r).cloned().unwrap_or_default(),
                priority: e.priority,
                after: after.clone(),
                snapshot: e.snapshot.clone(),
                checkpoint: e.checkpoint.as_ref().map(|d| {
                    if one {
                        d.clone()
                    } else {
                        d.join(r.to_string())
                    }
                }),
                restart: e.restart,
                max_restarts: e.max_restarts,
                backoff: e.backoff,
                backoff_max: e.backoff_max,
                boot_timeout: e.boot_timeout,
                warm: e.warm,
                io_class: e.io_class,
            });
        }
    }
    vms
}
