//! The guest and the host compile `tandem-abi` in two workspaces, each with
//! its own lockfile (`guest/Cargo.lock`, `Cargo.lock`). The bytes that
//! cross the VM boundary are made by the crates below on one side and read
//! by them on the other, so both lockfiles must pin the same version of
//! each: a `cargo update` on one side only would let the two drift apart
//! without any compile error.

use std::collections::{BTreeMap, BTreeSet};

/// The crates that decide the encoding of every message and block of the
/// contract:
/// - `postcard`: the wire format itself;
/// - `serde`, `serde_core` (the data model, split out of `serde` since
///   1.0.220) and `serde_derive` (the generated impls: field order and
///   variant indices);
/// - `heapless`: the `Serialize`/`Deserialize` impls of its bounded
///   strings and vectors.
const WIRE_FORMAT: &[&str] = &[
    "postcard",
    "serde",
    "serde_core",
    "serde_derive",
    "heapless",
];

/// One `[[package]]` of a lockfile.
#[derive(Debug, Default, Clone)]
struct Package {
    name: String,
    version: String,
    /// `name` or `name version` (when the lockfile holds several versions).
    dependencies: Vec<String>,
}

/// The packages of a `Cargo.lock` (version 3 or 4): only the keys used here.
fn parse_lockfile(text: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    let mut current: Option<Package> = None;
    let mut in_dependencies = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') && !line.starts_with("[[package]]") && !in_dependencies {
            // Another table (`[metadata]`…): the packages are over.
            packages.extend(current.take());
            continue;
        }
        if line == "[[package]]" {
            packages.extend(current.take());
            current = Some(Package::default());
            in_dependencies = false;
            continue;
        }
        let Some(package) = current.as_mut() else {
            continue;
        };
        if in_dependencies {
            if line == "]" {
                in_dependencies = false;
            } else {
                let dep = line.trim_end_matches(',').trim_matches('"');
                package.dependencies.push(dep.to_owned());
            }
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        match key {
            "name" => package.name = value.trim_matches('"').to_owned(),
            "version" => package.version = value.trim_matches('"').to_owned(),
            "dependencies" if value == "[" => in_dependencies = true,
            "dependencies" => {
                // A one-line list: `dependencies = ["a", "b 1.0"]`.
                let list = value.trim_start_matches('[').trim_end_matches(']');
                package.dependencies.extend(
                    list.split(',')
                        .map(|d| d.trim().trim_matches('"'))
                        .filter(|d| !d.is_empty())
                        .map(str::to_owned),
                );
            }
            _ => {}
        }
    }
    packages.extend(current);
    packages
}

/// A lockfile's packages, and the (name → versions) of everything `root`
/// depends on, directly or not.
struct Lockfile {
    path: &'static str,
    packages: Vec<Package>,
}

impl Lockfile {
    fn read(path: &'static str) -> Self {
        let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
        let packages = parse_lockfile(&text);
        assert!(!packages.is_empty(), "{path}: no packages");
        Self { path, packages }
    }

    /// The package a dependency entry (`name` or `name version`) names.
    fn find(&self, entry: &str) -> &Package {
        let (name, version) = match entry.split_once(' ') {
            Some((n, v)) => (n, Some(v)),
            None => (entry, None),
        };
        let found: Vec<&Package> = self
            .packages
            .iter()
            .filter(|p| p.name == name && version.is_none_or(|v| p.version == v))
            .collect();
        assert_eq!(found.len(), 1, "{}: `{entry}` names {found:?}", self.path);
        found[0]
    }

    /// Name → versions of `root` and everything it depends on.
    fn closure(&self, root: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut seen = BTreeMap::<String, BTreeSet<String>>::new();
        let mut todo = vec![self.find(root)];
        while let Some(p) = todo.pop() {
            if seen
                .entry(p.name.clone())
                .or_default()
                .insert(p.version.clone())
            {
                todo.extend(p.dependencies.iter().map(|d| self.find(d)));
            }
        }
        seen
    }
}

#[test]
fn guest_and_host_lockfiles_pin_the_same_wire_format_crates() {
    let host = Lockfile::read("Cargo.lock");
    let guest = Lockfile::read("guest/Cargo.lock");
    let (in_host, in_guest) = (host.closure("tandem-abi"), guest.closure("tandem-abi"));
    for name in WIRE_FORMAT {
        let (h, g) = (in_host.get(*name), in_guest.get(*name));
        assert!(
            h.is_some() && g.is_some(),
            "`{name}` is no longer a dependency of tandem-abi in both lockfiles \
             (host: {h:?}, guest: {g:?}): update WIRE_FORMAT"
        );
        assert_eq!(
            h, g,
            "Cargo.lock and guest/Cargo.lock pin different versions of `{name}`, which \
             decides the encoding between guest and host: update both to the same version \
             (`cargo update -p {name} --precise V` in the root and in guest/)"
        );
        assert_eq!(h.map(BTreeSet::len), Some(1), "two versions of `{name}`");
    }
}

#[test]
fn every_dependency_of_tandem_abi_is_classified() {
    // A new dependency of the contract may decide encodings too: it has to
    // be put in WIRE_FORMAT, or here, on purpose.
    const NOT_WIRE_FORMAT: &[&str] = &[];
    let host = Lockfile::read("Cargo.lock");
    let abi = host.find("tandem-abi");
    for dep in &abi.dependencies {
        let name = dep.split(' ').next().unwrap_or(dep);
        assert!(
            WIRE_FORMAT.contains(&name) || NOT_WIRE_FORMAT.contains(&name),
            "tandem-abi depends on `{name}`: say whether it decides the encoding \
             (WIRE_FORMAT in {}) or not",
            file!()
        );
    }
}

#[test]
fn parses_both_lockfile_forms() {
    let text = r#"
version = 4

[[package]]
name = "a"
version = "1.0.0"
dependencies = [
 "b 2.0.0",
 "c",
]

[[package]]
name = "b"
version = "2.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "00"

[[package]]
name = "c"
version = "0.1.0"
dependencies = ["b 2.0.0"]
"#;
    let p = parse_lockfile(text);
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].dependencies, ["b 2.0.0", "c"]);
    assert_eq!(p[2].dependencies, ["b 2.0.0"]);
    let lock = Lockfile {
        path: "test",
        packages: p,
    };
    let closure = lock.closure("a");
    assert_eq!(closure.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
}
