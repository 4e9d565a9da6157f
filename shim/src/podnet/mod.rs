//! The VM on the pod's network: inside the pod's network namespace, a tap
//! joined to the interface the CNI plugin made (the decisions are in
//! [`plan`]), done with iproute2's `ip` and `tc`, and undone when the VM
//! ends. [`netns`] runs a program inside the namespace.

pub mod netns;
pub mod plan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

pub use netns::Netns;
use plan::{Cmd, PlanError, PodNetwork};

/// Why a VM cannot be put on its pod's network.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// The network namespace cannot be opened.
    #[error("cannot open the pod's network namespace {}: {source}", .path.display())]
    Open {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path is no network namespace.
    #[error("{} is not a network namespace", .0.display())]
    NotNetns(PathBuf),
    /// `ip` or `tc` is not installed.
    #[error(
        "cannot run {program} (Debian package iproute2) in the pod's network namespace: {source}"
    )]
    Tool {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` in the pod's network namespace {} failed ({status}): {stderr}", .netns.display())]
    Command {
        /// The command line.
        command: String,
        /// The namespace.
        netns: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The pod's interface cannot be read.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The value computed for `--net` is refused by the VMM's own parser.
    #[error("the pod's network gives --net {arg:?}, which tandem refuses: {source}")]
    Spec {
        /// The value.
        arg: String,
        /// Why.
        source: tandem::devices::NetSpecError,
    },
    /// Another VM of the pod has the network.
    #[error("the pod's network ({}) is already given to the VM of container {holder}; a pod's network goes to one Tandem VM at a time", .netns.display())]
    Taken {
        /// The namespace.
        netns: PathBuf,
        /// The container holding it.
        holder: String,
    },
}

/// Opens the namespace at `path`, refusing what is none.
pub fn open(path: &Path) -> Result<Netns, PodNetError> {
    match Netns::open(path) {
        Ok(Some(ns)) => Ok(ns),
        Ok(None) => Err(PodNetError::NotNetns(path.into())),
        Err(source) => Err(PodNetError::Open {
            path: path.into(),
            source,
        }),
    }
}

/// Runs `cmd` inside `ns`; returns its stdout.
fn run(ns: &Netns, cmd: &Cmd) -> Result<Vec<u8>, PodNetError> {
    let Some((program, args)) = cmd.split_first() else {
        return Ok(Vec::new());
    };
    let mut c = Command::new(program);
    c.args(args).stdin(Stdio::null());
    ns.enter(&mut c);
    let out = c.output().map_err(|source| PodNetError::Tool {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(PodNetError::Command {
            command: cmd.join(" "),
            netns: ns.path().into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Runs `cmds` inside `ns` in order, each run of consecutive commands of
/// one program as one `PROGRAM -batch -` (one process instead of one per
/// command: the wiring is on the path to the VM's first packet). Interface
/// names hold no whitespace (the kernel refuses them), so a line is the
/// arguments joined by spaces.
fn run_batched(ns: &Netns, cmds: &[Cmd]) -> Result<(), PodNetError> {
    use std::io::Write;
    for group in cmds.chunk_by(|a, b| a.first() == b.first()) {
        let program = match group {
            [one] => {
                run(ns, one)?;
                continue;
            }
            [first, ..] => match first.first() {
                Some(p) => p.clone(),
                None => continue,
            },
            [] => continue,
        };
        let script: String = group
            .iter()
            .map(|c| c.get(1..).unwrap_or_default().join(" ") + "\n")
            .collect();
        let mut c = Command::new(&program);
        c.args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        ns.enter(&mut c);
        let tool = |source| PodNetError::Tool {
            program: program.clone(),
            source,
        };
        let mut child = c.spawn().map_err(tool)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(tool)?;
        }
        let out = child.wait_with_output().map_err(tool)?;
        if !out.status.success() {
            return Err(PodNetError::Command {
                command: format!("{program} -batch - <<< {:?}", script.trim_end()),
                netns: ns.path().into(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

fn words(w: &[&str]) -> Cmd {
    w.iter().map(|s| s.to_string()).collect()
}

/// Who holds each pod network namespace (one VM at a time).
#[derive(Debug, Default, Clone)]
pub struct Holders(Arc<Mutex<HashMap<PathBuf, String>>>);

impl Holders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A VM's place on its pod's network: the tap is joined to the pod's
/// interface while this lives; dropping it undoes that and frees the
/// network for another VM of the pod.
#[derive(Debug)]
pub struct Attached {
    ns: Netns,
    net: PodNetwork,
    arg: String,
    holders: Holders,
}

impl Attached {
    /// The VM's `--net` value.
    pub fn arg(&self) -> &str {
        &self.arg
    }

    /// The namespace (the VMM runs in it).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        for cmd in plan::detach(&self.net) {
            if let Err(e) = run(&self.ns, &cmd) {
                log::warn!("undoing the pod network: {e}");
            }
        }
        self.holders.lock().remove(self.ns.path());
        log::info!("pod network {} released", self.ns.path().display());
    }
}

/// Joins a new tap to the pod's interface in the namespace at `path`, for
/// task `id`; refuses if another task of the pod has it.
pub fn attach(path: &Path, id: &str, holders: &Holders) -> Result<Attached, PodNetError> {
    let began = std::time::Instant::now();
    let ns = open(path)?;
    {
        let mut held = holders.lock();
        if let Some(holder) = held.get(path) {
            return Err(PodNetError::Taken {
                netns: path.into(),
                holder: holder.clone(),
            });
        }
        held.insert(path.into(), id.into());
    }
    let addrs = run(&ns, &words(&["ip", "-j", "addr", "show"]));
    let routes = run(&ns, &words(&["ip", "-j", "-4", "route", "show", "default"]));
    let net = addrs.and_then(|a| Ok(plan::pod_network(&a, &routes?)?));
    let net = match net {
        Ok(n) => n,
        Err(e) => {
            holders.lock().remove(path);
            return Err(e);
        }
    };
    let arg = plan::net_arg(&net);
    // From here on, dropping `attached` undoes what was done.
    let attached = Attached {
        ns,
        net,
        arg,
        holders: holders.clone(),
    };
    if let Err(source) = attached.arg.parse::<tandem::devices::NetSpec>() {
        return Err(PodNetError::Spec {
            arg: attached.arg.clone(),
            source,
        });
    }
    if attached.net.stale_tap {
        for cmd in plan::detach(&attached.net) {
            if let Err(e) = run(&attached.ns, &cmd) {
                log::info!("removing a tap left over: {e}");
            }
        }
    }
    run_batched(&attached.ns, &plan::attach(&attached.net))?;
    log::info!(
        "pod network {}: {} joined to {} for {id} in {} ms: --net {}",
        path.display(),
        plan::TAP,
        attached.net.iface.name,
        began.elapsed().as_millis(),
        attached.arg
    );
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network namespace as CNI leaves a pod's: `eth0` (one end of a
    /// veth pair) with an address and a default route. Deleted on drop.
    struct TestPod {
        name: String,
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip (Debian's iproute2 is needed): {e}"));
        assert!(
            out.status.success(),
            "`ip {}` failed (this test needs root): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    impl TestPod {
        fn new(tag: &str) -> Self {
            let name = format!("tdm-shim-{}-{tag}", std::process::id());
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            ip(&["netns", "add", &name]);
            let pod = TestPod { name };
            let n = pod.name.as_str();
            ip(&[
                "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            ]);
            ip(&[
                "-n",
                n,
                "link",
                "set",
                "eth0",
                "address",
                "02:aa:00:00:00:07",
            ]);
            ip(&["-n", n, "addr", "add", "10.77.0.7/24", "dev", "eth0"]);
            ip(&["-n", n, "link", "set", "eth0", "up"]);
            ip(&["-n", n, "link", "set", "peer0", "up"]);
            ip(&["-n", n, "route", "add", "default", "via", "10.77.0.1"]);
            pod
        }

        fn path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.name)
        }

        fn tc(&self, args: &[&str]) -> String {
            let ns = open(&self.path()).unwrap();
            let cmd: Cmd = std::iter::once("tc")
                .chain(args.iter().copied())
                .map(String::from)
                .collect();
            String::from_utf8(run(&ns, &cmd).unwrap()).unwrap()
        }
    }

    impl Drop for TestPod {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }

    #[test]
    fn attach_joins_a_tap_to_the_pod_interface_and_drop_undoes_it() {
        let pod = TestPod::new("attach");
        let holders = Holders::default();
        let attached = attach(&pod.path(), "web", &holders).unwrap();
        assert_eq!(
            attached.arg(),
            "tap=tandem0,mac=02:aa:00:00:00:07,ip=10.77.0.7/24,gw=10.77.0.1"
        );
        let links = ip(&["-n", &pod.name, "-o", "link", "show", "tandem0"]);
        assert!(
            links.contains("state UP") || links.contains(",UP"),
            "{links}"
        );
        let to_tap = pod.tc(&["filter", "show", "dev", "eth0", "ingress"]);
        assert!(
            to_tap.contains("mirred") && to_tap.contains("Redirect to device tandem0"),
            "{to_tap}"
        );
        let to_pod = pod.tc(&["filter", "show", "dev", "tandem0", "ingress"]);
        assert!(to_pod.contains("Redirect to device eth0"), "{to_pod}");

        // One VM at a time.
        let e = attach(&pod.path(), "other", &holders).unwrap_err();
        assert!(
            matches!(&e, PodNetError::Taken { holder, .. } if holder == "web"),
            "{e}"
        );

        drop(attached);
        let links = ip(&["-n", &pod.name, "-o", "link", "show"]);
        assert!(!links.contains("tandem0"), "{links}");
        let qdiscs = pod.tc(&["qdisc", "show", "dev", "eth0"]);
        assert!(!qdiscs.contains("ingress"), "{qdiscs}");
        // The network is free again, and a tap left behind (a VM that died
        // with its shim) is replaced.
        let again = attach(&pod.path(), "other", &holders).unwrap();
        std::mem::forget(again);
        holders.lock().clear();
        let third = attach(&pod.path(), "third", &holders).unwrap();
        assert_eq!(
            third.arg(),
            "tap=tandem0,mac=02:aa:00:00:00:07,ip=10.77.0.7/24,gw=10.77.0.1"
        );
    }

    #[test]
    fn what_is_no_pod_network_is_named() {
        let e = attach(Path::new("/etc/hostname"), "c", &Holders::default()).unwrap_err();
        assert_eq!(e.to_string(), "/etc/hostname is not a network namespace");
        let e = attach(Path::new("/run/netns/tdm-none"), "c", &Holders::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot open the pod's network namespace /run/netns/tdm-none: "),
            "{e}"
        );
        // An empty namespace: no interface CNI made.
        let pod = TestPod::new("empty");
        ip(&["-n", &pod.name, "link", "del", "eth0"]);
        let e = attach(&pod.path(), "c", &Holders::default()).unwrap_err();
        assert!(e.to_string().contains("did the CNI plugin run?"), "{e}");
    }
}
