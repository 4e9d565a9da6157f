//! The fleet file as written: serde structs for its shape, each value kept
//! with its place ([`Spanned`]), and [`decode`], which reads them without
//! stopping at the first value serde refuses.
//!
//! Serde gives up on a document at its first error. To report every
//! unknown key and every value of the wrong type at once, [`decode`]
//! reports the refused key or value at the place the error names, takes it
//! out of the parsed document and reads the rest again; each round takes
//! one item out, so it ends. What was taken out is remembered, so that the
//! checks that follow do not call a refused value missing.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use super::{parse_duration, parse_size, vm_label, Problems, RestartPolicy};
use crate::fleet::io::IoClass;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFile {
    pub fleet: Option<RawFleet>,
    pub defaults: Option<RawVm>,
    pub vm: Option<List<Spanned<RawVm>>>,
}

/// `[fleet]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFleet {
    pub max_concurrent_boots: Option<Spanned<Integer>>,
    pub memory_budget: Option<Spanned<Size>>,
    pub network: Option<Spanned<RawNetwork>>,
    pub io_budget: Option<Spanned<RawIoBudget>>,
}

/// `[fleet] io_budget = { rate = "200M", iops = 20000 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { rate = \"200M\", iops = 20000 }"
)]
pub(super) struct RawIoBudget {
    pub rate: Option<Spanned<Text>>,
    pub iops: Option<Spanned<Text>>,
}

/// `[fleet] network = { bridge = "...", subnet = "...", rate = "10M", ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { bridge = \"tandem0\", subnet = \"10.77.0.0/24\" }"
)]
pub(super) struct RawNetwork {
    pub bridge: Option<Spanned<String>>,
    pub subnet: Option<Spanned<String>>,
    pub rate: Option<Spanned<Text>>,
    pub rate_burst: Option<Spanned<Text>>,
    pub pps: Option<Spanned<Text>>,
    pub pps_burst: Option<Spanned<Text>>,
}

/// A `[[vm]]` entry, and `[defaults]` (where `name`, `after` and `count`
/// are refused by the checks).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawVm {
    pub name: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
    pub memory: Option<Spanned<Size>>,
    pub cmdline: Option<Spanned<String>>,
    pub priority: Option<Spanned<Integer>>,
    pub after: Option<Spanned<List<Spanned<String>>>>,
    pub snapshot: Option<Spanned<String>>,
    pub checkpoint: Option<Spanned<String>>,
    pub restart: Option<Spanned<RestartPolicy>>,
    pub max_restarts: Option<Spanned<Integer>>,
    pub backoff: Option<Spanned<Period>>,
    pub backoff_max: Option<Spanned<Period>>,
    pub boot_timeout: Option<Spanned<Period>>,
    pub count: Option<Spanned<Integer>>,
    pub warm: Option<Spanned<Integer>>,
    pub net: Option<Spanned<RawVmNet>>,
    pub disk: Option<Spanned<List<Spanned<DiskItem>>>>,
    pub io_rate: Option<Spanned<Text>>,
    pub iops: Option<Spanned<Text>>,
    pub io_class: Option<Spanned<IoClass>>,
}

impl RawVm {
    /// This entry, with `defaults` filling the keys it does not set (all
    /// but the per-VM `name`, `after` and `count`).
    pub fn or(&self, defaults: &RawVm) -> RawVm {
        fn or<T: Clone>(v: &Option<T>, d: &Option<T>) -> Option<T> {
            v.as_ref().or(d.as_ref()).cloned()
        }
        RawVm {
            name: self.name.clone(),
            after: self.after.clone(),
            count: self.count.clone(),
            image: or(&self.image, &defaults.image),
            memory: or(&self.memory, &defaults.memory),
            cmdline: or(&self.cmdline, &defaults.cmdline),
            priority: or(&self.priority, &defaults.priority),
            snapshot: or(&self.snapshot, &defaults.snapshot),
            checkpoint: or(&self.checkpoint, &defaults.checkpoint),
            restart: or(&self.restart, &defaults.restart),
            max_restarts: or(&self.max_restarts, &defaults.max_restarts),
            backoff: or(&self.backoff, &defaults.backoff),
            backoff_max: or(&self.backoff_max, &defaults.backoff_max),
            boot_timeout: or(&self.boot_timeout, &defaults.boot_timeout),
            warm: or(&self.warm, &defaults.warm),
            net: or(&self.net, &defaults.net),
            disk: or(&self.disk, &defaults.disk),
            io_rate: or(&self.io_rate, &defaults.io_rate),
            iops: or(&self.iops, &defaults.iops),
            io_class: or(&self.io_class, &defaults.io_class),
        }
    }
}

/// An integer (serde's own would say "expected i64").
#[derive(Debug, Clone, Copy)]
pub(super) struct Integer(pub i64);

/// A size: a positive integer of bytes or a string such as `"64M"`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Size(pub u64);

/// A VM's own network limits: `net = { rate = "1M", pps = "1k" }`, each
/// over the fleet's.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { rate = \"1M\", pps = \"1k\" }"
)]
pub(super) struct RawVmNet {
    pub rate: Option<Spanned<Text>>,
    pub rate_burst: Option<Spanned<Text>>,
    pub pps: Option<Spanned<Text>>,
    pub pps_burst: Option<Spanned<Text>>,
}

/// A string, or an integer taken as its digits (`rate = 1000`).
#[derive(Debug, Clone)]
pub(super) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string such as \"10M\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Text, E> {
                Ok(Text(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Text, E> {
                Ok(Text(n.to_string()))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text, E> {
                Ok(Text(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One disk of `disk = [...]`: what `--disk` takes, as a string.
#[derive(Debug, Clone)]
pub(super) struct DiskItem(pub String);

impl<'de> Deserialize<'de> for DiskItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DiskItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a disk such as \"path=data.img\" or \"path=data-{i}.img,ro\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DiskItem, E> {
                Ok(DiskItem(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A duration, as a string such as `"250ms"`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Period(pub Duration);

/// A TOML array, whose refusal says what it should list.
#[derive(Debug, Clone)]
pub(super) struct List<T>(pub Vec<T>);

/// What a [`List`] of these is called.
pub(super) trait Listed {
    const LIST: &'static str;
}

impl Listed for Spanned<String> {
    const LIST: &'static str = "a list of VM names";
}

impl Listed for Spanned<DiskItem> {
    const LIST: &'static str = "a list of disks such as [\"path=data.img\"]";
}

impl Listed for Spanned<RawVm> {
    const LIST: &'static str = "an array of tables ([[vm]])";
}

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Integer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Integer, E> {
                Ok(Integer(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Integer, E> {
                i64::try_from(n)
                    .map(Integer)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(n), &self))
            }
        }
        d.deserialize_i64(V)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64M\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                match u64::try_from(n) {
                    Ok(b) if b > 0 => Ok(Size(b)),
                    _ => Err(E::invalid_value(Unexpected::Signed(n), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                match n {
                    0 => Err(E::invalid_value(Unexpected::Unsigned(n), &self)),
                    b => Ok(Size(b)),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Period;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"2s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Period, E> {
                parse_duration(s).map(Period).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RestartPolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"never\", \"on-failure\" or \"always\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RestartPolicy, E> {
                match s {
                    "never" => Ok(RestartPolicy::Never),
                    "on-failure" => Ok(RestartPolicy::OnFailure),
                    "always" => Ok(RestartPolicy::Always),
                    other => Err(E::custom(format!(
                        "\"{other}\" is not a policy: expected \"never\", \"on-failure\" or \"always\""
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for IoClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IoClass;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"critical\", \"standard\" or \"batch\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<IoClass, E> {
                IoClass::from_name(s).ok_or_else(|| {
                    E::custom(format!(
                        "\"{s}\" is not an I/O class: expected \"critical\", \"standard\" or \"batch\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de, T: Deserialize<'de> + Listed> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Listed> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::LIST)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List(items))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// One step from the document's root to a key or value: a key of a
/// table, or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A key or value serde refused: where it is from the root, and whether
/// the key itself was refused (unknown) rather than its value.
#[derive(Debug)]
struct Refused {
    path: Vec<Step>,
    key: bool,
}

/// What [`decode`] read: the file, and what it had to leave out.
#[derive(Debug)]
pub(super) struct Decoded {
    pub file: RawFile,
    refused: BTreeSet<String>,
}

impl Decoded {
    /// Whether the value at `path` (`"vm.0.name"`, `"defaults.image"`, or
    /// `"vm.0"` for an entry that is not a table) was refused and reported
    /// already.
    pub fn refused(&self, path: &str) -> bool {
        self.refused.contains(path)
    }
}

/// Reads `doc` into a [`RawFile`], reporting every key and value serde
/// refuses at its place. `None` when an error could not be placed on any
/// key or value (it is reported too).
pub(super) fn decode(mut doc: Spanned<DeTable<'_>>, problems: &mut Problems) -> Option<Decoded> {
    let mut refused = BTreeSet::new();
    // Each round takes one item out, or empties a `vm` item (which then
    // reads): there are never more rounds than items.
    for _ in 0..=items(doc.get_ref()) {
        let err = match RawFile::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(file) => return Some(Decoded { file, refused }),
            Err(e) => e,
        };
        let Some((span, r)) = err
            .span()
            .and_then(|span| Some((span.clone(), find_in_table(doc.get_ref(), &span)?)))
        else {
            match err.span() {
                Some(span) => problems.at(&span, err.message()),
                None => problems.unplaced(err.message()),
            }
            return None;
        };
        problems.at(&span, describe(doc.get_ref(), &r, err.message()));
        r.take_out(doc.get_mut());
        refused.insert(r.to_string());
    }
    None
}

/// How many keys and array items `table` holds, at every depth.
fn items(table: &DeTable<'_>) -> usize {
    fn in_value(v: &DeValue<'_>) -> usize {
        match v {
            DeValue::Table(t) => items(t),
            DeValue::Array(a) => a.iter().map(|i| 1 + in_value(i.get_ref())).sum(),
            _ => 0,
        }
    }
    table.values().map(|v| 1 + in_value(v.get_ref())).sum()
}

impl Refused {
    /// Takes the refused item out of `doc`.
    fn take_out(&self, doc: &mut DeTable<'_>) {
        match self.path.as_slice() {
            // A `vm` item that is not a table: an empty one in its place
            // keeps the numbers of the entries after it (the checks skip it).
            [Step::Key(vm), Step::Index(i)] if vm == "vm" => {
                if let Some(DeValue::Array(a)) = doc.get_mut("vm").map(Spanned::get_mut) {
                    if let Some(item) = a.get_mut(*i) {
                        *item.get_mut() = DeValue::Table(DeTable::new());
                    }
                }
            }
            path => remove(doc, path),
        }
    }
}

/// `vm.0.name`.
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.path.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match step {
                Step::Key(k) => f.write_str(k)?,
                Step::Index(n) => write!(f, "{n}")?,
            }
        }
        Ok(())
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The innermost key or value of `table` that `span` falls in. Container
/// spans are not trusted (an array of tables spans only its first header),
/// so every child is searched.
fn find_in_table(table: &DeTable<'_>, span: &Range<usize>) -> Option<Refused> {
    for (k, v) in table.iter() {
        let step = Step::Key(k.get_ref().to_string());
        if contains(&k.span(), span) {
            return Some(Refused {
                path: vec![step],
                key: true,
            });
        }
        if let Some(mut r) = find_in_value(v.get_ref(), span) {
            r.path.insert(0, step);
            return Some(r);
        }
        if contains(&v.span(), span) {
            return Some(Refused {
                path: vec![step],
                key: false,
            });
        }
    }
    None
}

fn find_in_value(value: &DeValue<'_>, span: &Range<usize>) -> Option<Refused> {
    match value {
        DeValue::Table(t) => find_in_table(t, span),
        DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
            let mut r = find_in_value(item.get_ref(), span).or_else(|| {
                contains(&item.span(), span).then(|| Refused {
                    path: Vec::new(),
                    key: false,
                })
            })?;
            r.path.insert(0, Step::Index(i));
            Some(r)
        }),
        _ => None,
    }
}

/// Takes the key (and its value) or array item at `path` out of `table`.
fn remove(table: &mut DeTable<'_>, path: &[Step]) {
    match path {
        [Step::Key(k)] => {
            table.remove(k.as_str());
        }
        [Step::Key(k), rest @ ..] => {
            if let Some(v) = table.get_mut(k.as_str()) {
                remove_in_value(v.get_mut(), rest);
            }
        }
        _ => {}
    }
}

fn remove_in_value(value: &mut DeValue<'_>, path: &[Step]) {
    match (value, path) {
        (DeValue::Table(t), _) => remove(t, path),
        (DeValue::Array(a), [Step::Index(i)]) => {
            *a = std::mem::replace(a, DeArray::new())
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, item)| item)
                .collect::<DeArray<'_>>();
        }
        (DeValue::Array(a), [Step::Index(i), rest @ ..]) => {
            if let Some(item) = a.get_mut(*i) {
                remove_in_value(item.get_mut(), rest);
            }
        }
        _ => {}
    }
}

/// The problem with a refused key or value, named as the checks name them:
/// by its table (or VM) and key.
fn describe(doc: &DeTable<'_>, r: &Refused, message: &str) -> String {
    let (what, rest) = match r.path.as_slice() {
        [Step::Key(top)] if r.key => {
            return format!(
                "unknown top-level key `{top}` (expected [fleet], [defaults] and [[vm]])"
            )
        }
        [Step::Key(vm), Step::Index(i), rest @ ..] if vm == "vm" => {
            let name = doc
                .get("vm")
                .and_then(|v| v.get_ref().get(*i))
                .and_then(|t| t.get_ref().get("name"))
                .and_then(|n| n.get_ref().as_str());
            (vm_label(name, *i), rest)
        }
        [Step::Key(vm)] if vm == "vm" => ("`vm`".to_string(), &[][..]),
        [Step::Key(table), rest @ ..] => (format!("[{table}]"), rest),
        _ => return message.to_string(),
    };
    match rest {
        [Step::Key(key)] if r.key && what == "[defaults]" => {
            format!("{what}: unknown or per-VM-only key `{key}`")
        }
        [Step::Key(key)] if r.key => format!("{what}: unknown key `{key}`"),
        [Step::Key(key), ..] => format!("{what}: `{key}`: {message}"),
        _ => format!("{what}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(text: &str) -> (Option<Decoded>, Vec<String>) {
        let doc = DeTable::parse(text).expect("valid TOML");
        let mut p = Problems::new(text);
        let d = decode(doc, &mut p);
        (d, p.into_sorted().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn every_refused_item_is_reported_and_taken_out() {
        let (d, p) = decoded(
            "[[vm]]\nname = \"a\"\nx = 1\ny = 2\nafter = [[1], { z = 1 }, \"ok\"]\nmemory = \"8M\"\n",
        );
        assert_eq!(
            p,
            [
                "3:1: vm `a`: unknown key `x`",
                "4:1: vm `a`: unknown key `y`",
                "5:10: vm `a`: `after`: invalid type: sequence, expected a string",
                "5:15: vm `a`: `after`: invalid type: map, expected a string",
            ]
        );
        let d = d.expect("decoded");
        // Items of a list are numbered as they are when taken out.
        for path in ["vm.0.x", "vm.0.y", "vm.0.after.0"] {
            assert!(d.refused(path), "{path} not refused");
        }
        let vms = &d.file.vm.as_ref().expect("vm").0;
        let vm = vms[0].get_ref();
        let after: Vec<&str> = vm
            .after
            .as_ref()
            .expect("after")
            .get_ref()
            .0
            .iter()
            .map(|n| n.get_ref().as_str())
            .collect();
        assert_eq!(after, ["ok"]);
        assert_eq!(vm.memory.as_ref().map(|m| m.get_ref().0), Some(8 << 20));
    }

    #[test]
    fn an_entry_that_is_not_a_table_keeps_the_numbers_of_the_others() {
        let (d, p) = decoded("vm = [\"x\", { name = 1 }]\n");
        assert_eq!(
            p,
            [
                "1:7: [[vm]] #1: invalid type: string \"x\", expected a table",
                "1:21: [[vm]] #2: `name`: invalid type: integer `1`, expected a string",
            ]
        );
        let d = d.expect("decoded");
        assert!(d.refused("vm.0") && d.refused("vm.1.name"));
        assert_eq!(d.file.vm.as_ref().map(|v| v.0.len()), Some(2));
    }
}
