//! Reading an OCI bundle: which ELF to boot, with which command line and
//! VM options.
//!
//! Everything here comes from the image and whoever created the container,
//! so it is untrusted: sizes are capped, paths are walked one component at a
//! time without following symbolic links, and every refusal says why.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use tandem_abi::bootinfo::MAX_CMDLINE;
use tandem_abi::note::DeviceKind;

/// Largest `config.json` read.
const MAX_CONFIG: u64 = 4 << 20;
/// Annotation setting the guest memory (`tandem run --mem`).
pub const MEMORY_ANNOTATION: &str = "tandem.dev/memory";
/// Annotation naming a snapshot to start from (`tandem restore`), a plain
/// name inside the shim's snapshot directory.
pub const SNAPSHOT_ANNOTATION: &str = "tandem.dev/snapshot";

/// Why a bundle cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// `config.json` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `config.json` is larger than [`MAX_CONFIG`].
    #[error("{0} is larger than {MAX_CONFIG} bytes")]
    ConfigTooLarge(String),
    /// `config.json` is not a valid OCI runtime spec.
    #[error("invalid OCI runtime config {path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// `process.args` is missing or empty.
    #[error("the OCI config has no process.args: nothing to boot (set the image's Entrypoint to the app's ELF)")]
    NoArgs,
    /// `process.args[0]` is not a plain path inside the root filesystem.
    #[error("process.args[0] {0:?} is not a path inside the image (no `..`, no empty path)")]
    BadPath(String),
    /// A rootfs mount the shim cannot read.
    #[error("unsupported rootfs mount: {0}")]
    Mount(String),
    /// The payload is not in the image.
    #[error("{0}: no such file in the image's root filesystem")]
    Missing(String),
    /// The payload path goes through a symbolic link.
    #[error("{0}: the path to the app goes through a symbolic link, which the Tandem shim does not follow")]
    Symlink(String),
    /// The payload is not a regular file.
    #[error("{0}: not a regular file")]
    NotAFile(String),
    /// The payload is not a bootable Tandem image.
    #[error("{path} is not a Tandem image: {source}")]
    Image {
        /// The path inside the image.
        path: String,
        /// Why the VMM's loader refused it.
        source: tandem::ImageError,
    },
    /// An argument or environment entry cannot be passed on.
    #[error("{0:?} cannot be passed to the guest: its command line is split at whitespace, so words may not contain whitespace or control characters")]
    BadWord(String),
    /// The command line is longer than the guest accepts.
    #[error(
        "the guest command line would be {0} bytes, more than the {MAX_CMDLINE} the guest accepts"
    )]
    CmdlineTooLong(usize),
    /// The spec's network namespace path is not absolute.
    #[error("linux.namespaces: network namespace path {0:?} is not absolute")]
    Netns(String),
    /// `linux.resources` or `linux.cgroupsPath` cannot be applied.
    #[error("{0}")]
    Resources(String),
    /// An annotation has a bad value.
    #[error("annotation {key}={value:?}: {why}")]
    Annotation {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong.
        why: String,
    },
}

/// One rootfs mount as containerd hands it to the shim.
#[derive(Debug, Clone, Default)]
pub struct RootMount {
    /// `bind`, `overlay`, ...
    pub kind: String,
    /// Source directory (for bind mounts).
    pub source: String,
    /// Mount options (`lowerdir=...` for overlay).
    pub options: Vec<String>,
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The ELF on the host (inside a snapshot directory or the bundle).
    pub elf: PathBuf,
    /// `process.args[0]` as the image names it.
    pub name: String,
    /// The guest's command line.
    pub cmdline: String,
    /// `--mem` for `tandem run` in bytes, from the `tandem.dev/memory`
    /// annotation, checked by [`memory`].
    pub memory: Option<u64>,
    /// The snapshot to start from, from the `tandem.dev/snapshot`
    /// annotation: a plain name (no path), checked by [`snapshot_name`].
    pub snapshot: Option<String>,
    /// Whether the image declares a network device (its device manifest):
    /// the VMM refuses to boot it without one, and refuses to offer one to
    /// an image that does not declare it.
    pub net: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Spec {
    process: Option<Process>,
    root: Option<Root>,
    annotations: HashMap<String, String>,
    linux: Option<Linux>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Linux {
    namespaces: Vec<Namespace>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    path: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Process {
    args: Vec<String>,
    env: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Root {
    path: String,
}

/// CRI annotation naming the pod (sandbox) a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// CRI annotation: `sandbox` for the pod's placeholder (pause) container.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Where a container stands in a Kubernetes pod, from its CRI annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    /// The pod's sandbox id, if the container is in a pod.
    pub sandbox_id: Option<String>,
    /// The pod's placeholder (the CRI pause container): it boots no VM.
    pub is_sandbox: bool,
    /// The network namespace the spec joins (`linux.namespaces`, type
    /// `network`, with a path): a CRI pod's, which its CNI plugin wired.
    pub netns: Option<PathBuf>,
}

/// Reads the pod annotations of `bundle/config.json`.
pub fn pod(bundle: &Path) -> Result<Pod, BundleError> {
    let spec = read_spec(&bundle.join("config.json"))?;
    let sandbox_id = spec
        .annotations
        .get(SANDBOX_ID_ANNOTATION)
        .filter(|id| !id.is_empty())
        .cloned();
    if let Some(id) = &sandbox_id {
        // It names the shim's socket: keep it to what containerd's ids allow.
        let ok = id.len() <= 76
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(BundleError::Annotation {
                key: SANDBOX_ID_ANNOTATION.into(),
                value: id.clone(),
                why: "not a container id (letters, digits, -, _, .; at most 76)".into(),
            });
        }
    }
    let is_sandbox = spec
        .annotations
        .get(CONTAINER_TYPE_ANNOTATION)
        .is_some_and(|t| t == "sandbox");
    let netns = network_namespace(spec.linux.unwrap_or_default())?;
    Ok(Pod {
        sandbox_id,
        is_sandbox,
        netns,
    })
}

/// The path of the network namespace `linux` joins, if it names one (a
/// namespace without a path is a new, empty one: nothing to wire).
fn network_namespace(linux: Linux) -> Result<Option<PathBuf>, BundleError> {
    let Some(ns) = linux
        .namespaces
        .into_iter()
        .find(|n| n.kind == "network" && !n.path.is_empty())
    else {
        return Ok(None);
    };
    if !ns.path.starts_with('/') {
        return Err(BundleError::Netns(ns.path));
    }
    Ok(Some(PathBuf::from(ns.path)))
}

/// Reads `bundle/config.json` and finds the app in the root filesystem,
/// which is either `rootfs` (the mounts containerd passed, read in place
/// without mounting them) or the spec's `root.path` inside the bundle.
pub fn load(bundle: &Path, rootfs: &[RootMount]) -> Result<Payload, BundleError> {
    let spec = read_spec(&bundle.join("config.json"))?;
    let process = spec.process.unwrap_or_default();
    let Some(name) = process.args.first() else {
        return Err(BundleError::NoArgs);
    };
    let rel = relative(name)?;
    let layers = match rootfs {
        [] => {
            let root = spec.root.map(|r| r.path).unwrap_or_default();
            let root = if root.is_empty() {
                "rootfs".into()
            } else {
                root
            };
            vec![bundle.join(root)]
        }
        [m] => layers(m)?,
        _ => {
            return Err(BundleError::Mount(format!(
                "{} rootfs mounts (one is supported)",
                rootfs.len()
            )))
        }
    };
    let elf = find(&layers, &rel, name)?;
    let image = tandem::Image::from_file(&elf).map_err(|source| BundleError::Image {
        path: name.clone(),
        source,
    })?;
    let cmdline = cmdline(&process.args[1..], &process.env)?;
    let memory = match spec.annotations.get(MEMORY_ANNOTATION) {
        Some(v) => Some(memory(v)?),
        None => None,
    };
    let snapshot = match spec.annotations.get(SNAPSHOT_ANNOTATION) {
        Some(v) => Some(snapshot_name(v)?),
        None => None,
    };
    Ok(Payload {
        elf,
        name: name.clone(),
        cmdline,
        memory,
        snapshot,
        net: image.devices.contains(DeviceKind::Net),
    })
}

/// A snapshot name: letters, digits, `-`, `_`, `.`, not starting with a
/// dot, at most 128 bytes, so it can only name an entry of the snapshot
/// directory.
fn snapshot_name(v: &str) -> Result<String, BundleError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(BundleError::Annotation {
            key: SNAPSHOT_ANNOTATION.into(),
            value: v.into(),
            why: "not a snapshot name (letters, digits, -, _, .; no path)".into(),
        });
    }
    Ok(v.into())
}

fn read_spec(path: &Path) -> Result<Spec, BundleError> {
    let bytes = read_config(path)?;
    serde_json::from_slice(&bytes).map_err(|source| BundleError::Config {
        path: path.display().to_string(),
        source,
    })
}

/// The bytes of `config.json`, at most [`MAX_CONFIG`].
pub(crate) fn read_config(path: &Path) -> Result<Vec<u8>, BundleError> {
    let read = |source| BundleError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(BundleError::ConfigTooLarge(path.display().to_string()));
    }
    Ok(bytes)
}

/// `args[0]` as a relative path of normal components.
fn relative(name: &str) -> Result<PathBuf, BundleError> {
    let mut rel = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(BundleError::BadPath(name.into()))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(BundleError::BadPath(name.into()));
    }
    Ok(rel)
}

/// The directories to look in, topmost first.
fn layers(m: &RootMount) -> Result<Vec<PathBuf>, BundleError> {
    match m.kind.as_str() {
        "bind" | "rbind" => {
            if m.source.is_empty() {
                return Err(BundleError::Mount("bind mount without a source".into()));
            }
            Ok(vec![PathBuf::from(&m.source)])
        }
        "overlay" => {
            let mut upper = Vec::new();
            let mut lower = Vec::new();
            for o in &m.options {
                if let Some(dir) = o.strip_prefix("upperdir=") {
                    upper.push(PathBuf::from(dir));
                } else if let Some(dirs) = o.strip_prefix("lowerdir=") {
                    lower.extend(dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
                }
            }
            upper.extend(lower);
            if upper.is_empty() {
                return Err(BundleError::Mount(
                    "overlay mount without lowerdir or upperdir".into(),
                ));
            }
            Ok(upper)
        }
        other => Err(BundleError::Mount(format!(
            "type {other:?} (the Tandem shim reads bind and overlay snapshots)"
        ))),
    }
}

/// Finds `rel` in the topmost layer that has it, as overlayfs would, without
/// following symbolic links. An overlay whiteout (a character device) hides
/// the file in the layers below.
fn find(layers: &[PathBuf], rel: &Path, name: &str) -> Result<PathBuf, BundleError> {
    use std::os::unix::fs::FileTypeExt;
    'layer: for layer in layers {
        let mut path = layer.clone();
        let count = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            path.push(c);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'layer,
                Err(e) => {
                    return Err(BundleError::Read {
                        path: name.into(),
                        source: e,
                    })
                }
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                return Err(BundleError::Symlink(name.into()));
            }
            if ft.is_char_device() {
                // A whiteout: deleted in this layer.
                return Err(BundleError::Missing(name.into()));
            }
            let last = i + 1 == count;
            if last {
                if !ft.is_file() {
                    return Err(BundleError::NotAFile(name.into()));
                }
                return Ok(path);
            }
            if !ft.is_dir() {
                return Err(BundleError::Missing(name.into()));
            }
        }
    }
    Err(BundleError::Missing(name.into()))
}

/// Environment entries the runtime adds on its own, not the user: `PATH`
/// (every container), `HOSTNAME` (CRI) and `KUBERNETES_*` (kubelet's
/// service variables). A unikernel has no use for them.
fn runtime_added(entry: &str) -> bool {
    let name = entry.split_once('=').map_or(entry, |(k, _)| k);
    name == "PATH" || name == "HOSTNAME" || name.starts_with("KUBERNETES_")
}

/// The guest's command line: the remaining arguments, then each environment
/// entry but those the runtime adds ([`runtime_added`]) as a `KEY=VALUE`
/// word, separated by single spaces.
fn cmdline(args: &[String], env: &[String]) -> Result<String, BundleError> {
    let words = args.iter().chain(env.iter().filter(|e| !runtime_added(e)));
    let mut line = String::new();
    for w in words {
        if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BundleError::BadWord(w.clone()));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if line.len() > MAX_CMDLINE {
        return Err(BundleError::CmdlineTooLong(line.len()));
    }
    Ok(line)
}

/// The guest memory in bytes, read and checked exactly as `tandem run
/// --mem` reads and checks it ([`tandem::units::parse_size`], then
/// [`tandem::check_mem_size`]), so a value `create` accepts is one
/// `start` can boot.
pub(crate) fn memory(v: &str) -> Result<u64, BundleError> {
    let bad = |why| BundleError::Annotation {
        key: MEMORY_ANNOTATION.into(),
        value: v.into(),
        why,
    };
    let bytes = tandem::units::parse_size(v).map_err(bad)?;
    tandem::check_mem_size(bytes).map_err(bad)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tandem-shim-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative("/hello").unwrap(), PathBuf::from("hello"));
        assert_eq!(relative("./a/b").unwrap(), PathBuf::from("a/b"));
        assert!(matches!(relative("/"), Err(BundleError::BadPath(_))));
        assert!(matches!(relative(""), Err(BundleError::BadPath(_))));
        assert!(matches!(
            relative("/a/../../etc/shadow"),
            Err(BundleError::BadPath(_))
        ));
    }

    #[test]
    fn command_line_from_args_and_env() {
        let args = ["init-ms=5".to_string(), "no-ready".to_string()];
        let env = [
            "PATH=/bin".to_string(),
            "HOSTNAME=node-1".to_string(),
            "KUBERNETES_SERVICE_HOST=10.0.0.1".to_string(),
            "MODE=fast".to_string(),
        ];
        assert_eq!(
            cmdline(&args, &env).unwrap(),
            "init-ms=5 no-ready MODE=fast"
        );
        assert_eq!(cmdline(&[], &[]).unwrap(), "");
        assert!(matches!(
            cmdline(&["a b".into()], &[]),
            Err(BundleError::BadWord(_))
        ));
        assert!(matches!(
            cmdline(&["x".repeat(MAX_CMDLINE + 1)], &[]),
            Err(BundleError::CmdlineTooLong(_))
        ));
    }

    #[test]
    fn snapshot_annotation() {
        assert_eq!(snapshot_name("svc-ready.1").unwrap(), "svc-ready.1");
        for bad in ["", "..", ".hidden", "../etc", "a/b", "/abs", "a b"] {
            assert!(snapshot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_annotation() {
        // The sizes `tandem run --mem` takes, in the same spellings.
        assert_eq!(memory("64M").unwrap(), 64 << 20);
        assert_eq!(memory("64MiB").unwrap(), 64 << 20);
        assert_eq!(memory("1G").unwrap(), 1 << 30);
        assert_eq!(memory("16777216").unwrap(), 16 << 20);
        // Sizes `start` could not boot are refused at `create`, naming the
        // annotation, the value and the reason.
        let err = memory("3M").unwrap_err().to_string();
        assert!(err.contains("tandem.dev/memory=\"3M\""), "{err}");
        assert!(err.contains("too little"), "{err}");
        let err = memory("65M").unwrap_err().to_string();
        assert!(err.contains("not a multiple of 2 MiB"), "{err}");
        let err = memory("8G").unwrap_err().to_string();
        assert!(err.contains("more than the"), "{err}");
        // Garbage.
        for v in ["", "M", "lots", "64MM", "-1M", "64Q", "99999999999999G"] {
            let err = memory(v).unwrap_err().to_string();
            assert!(
                err.contains("annotation tandem.dev/memory="),
                "{v:?}: {err}"
            );
        }
    }

    #[test]
    fn overlay_layers_topmost_first() {
        let m = RootMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "workdir=/w".into(),
                "upperdir=/u".into(),
                "lowerdir=/l1:/l2".into(),
            ],
        };
        assert_eq!(
            layers(&m).unwrap(),
            vec![
                PathBuf::from("/u"),
                PathBuf::from("/l1"),
                PathBuf::from("/l2")
            ]
        );
        let tmpfs = RootMount {
            kind: "tmpfs".into(),
            ..Default::default()
        };
        assert!(matches!(layers(&tmpfs), Err(BundleError::Mount(_))));
    }

    #[test]
    fn find_walks_layers_without_symlinks() {
        let dir = tmp("find");
        let (upper, lower) = (dir.join("upper"), dir.join("lower"));
        fs::create_dir_all(upper.join("bin")).unwrap();
        fs::create_dir_all(lower.join("bin")).unwrap();
        fs::write(lower.join("bin/app"), b"x").unwrap();
        let layers = [upper.clone(), lower.clone()];
        assert_eq!(
            find(&layers, Path::new("bin/app"), "/bin/app").unwrap(),
            lower.join("bin/app")
        );
        std::os::unix::fs::symlink("/etc/passwd", upper.join("bin/link")).unwrap();
        assert!(matches!(
            find(&layers, Path::new("bin/link"), "/bin/link"),
            Err(BundleError::Symlink(_))
        ));
        assert!(matches!(
            find(&layers, Path::new("bin"), "/bin"),
            Err(BundleError::NotAFile(_))
        ));
        assert!(matches!(
            find(&layers, Path::new("nope"), "/nope"),
            Err(BundleError::Missing(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pod_annotations() {
        let dir = tmp("pod");
        fs::write(dir.join("config.json"), b"{}").unwrap();
        assert_eq!(pod(&dir).unwrap(), Pod::default());
        fs::write(
            dir.join("config.json"),
            br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod-1","io.kubernetes.cri.container-type":"sandbox"}}"#,
        )
        .unwrap();
        let p = pod(&dir).unwrap();
        assert_eq!(p.sandbox_id.as_deref(), Some("pod-1"));
        assert!(p.is_sandbox);
        fs::write(
            dir.join("config.json"),
            br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"../../x"}}"#,
        )
        .unwrap();
        assert!(matches!(pod(&dir), Err(BundleError::Annotation { .. })));
        // The network namespace CRI hands a pod's containers; one without a
        // path (a new, empty namespace) is none to wire.
        fs::write(
            dir.join("config.json"),
            br#"{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            pod(&dir).unwrap().netns.as_deref(),
            Some(Path::new("/var/run/netns/cni-1"))
        );
        fs::write(
            dir.join("config.json"),
            br#"{"linux":{"namespaces":[{"type":"network"}]}}"#,
        )
        .unwrap();
        assert_eq!(pod(&dir).unwrap().netns, None);
        fs::write(
            dir.join("config.json"),
            br#"{"linux":{"namespaces":[{"type":"network","path":"netns/x"}]}}"#,
        )
        .unwrap();
        let err = pod(&dir).unwrap_err().to_string();
        assert!(err.contains("\"netns/x\" is not absolute"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bundle_errors_are_clear() {
        let dir = tmp("bundle");
        let err = load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        fs::write(dir.join("config.json"), b"{not json").unwrap();
        let err = load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains("invalid OCI runtime config"), "{err}");
        fs::write(dir.join("config.json"), br#"{"process":{"args":[]}}"#).unwrap();
        assert!(matches!(load(&dir, &[]), Err(BundleError::NoArgs)));
        fs::write(
            dir.join("config.json"),
            br#"{"process":{"args":["/app"]},"root":{"path":"rootfs"}}"#,
        )
        .unwrap();
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        assert!(matches!(load(&dir, &[]), Err(BundleError::Missing(_))));
        fs::write(dir.join("rootfs/app"), b"#!/bin/sh\necho not an ELF\n").unwrap();
        let err = load(&dir, &[]).unwrap_err().to_string();
        assert!(err.contains("/app is not a Tandem image"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
