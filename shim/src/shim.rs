//! The shim process's lifecycle as containerd drives it: `start` (spawn
//! the serving shim, one per pod), serving the task service, `delete`
//! after a dead shim, and the end of the shim.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::bundle::{self, BundleError, Pod};
use crate::service::{ContainerdEvents, Service};
use crate::socket;
use crate::vmcgroup;
use crate::vmm::{self, Signal};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.tandem.v1";

/// The shim process: its lifecycle hooks for containerd.
pub struct Shim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: String,
    /// containerd's socket (`-address`).
    address: String,
    /// The ttrpc socket this shim serves (`-socket`), when serving.
    socket: String,
}

impl containerd_shim::Shim for Shim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = self.grouping();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// Called by containerd after a shim died: stop a VM it left behind.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = self.bundle_dir();
        let pid = vmm::kill_leftover(&bundle);
        vmcgroup::remove_leftover(&bundle);
        // The dead shim's socket (containerd also calls this when one
        // container's connection to a pod's live shim closes).
        socket::remove_stale_socket(&containerd_shim::socket_address(
            &self.address,
            &self.namespace,
            &self.grouping(),
        ));
        log::info!(
            "delete after dead shim: namespace {} id {} bundle {} vmm pid {pid:?}",
            self.namespace,
            self.id,
            bundle.display()
        );
        Ok(DeleteResponse {
            pid: pid.unwrap_or(0),
            exit_status: Signal::KILL.exit_status(),
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        socket::remove_socket(&self.socket);
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let events = ContainerdEvents {
            publisher,
            namespace: self.namespace.clone(),
        };
        Service::new(Box::new(events), self.exit.clone())
    }
}

impl Shim {
    fn bundle_dir(&self) -> PathBuf {
        bundle_dir(&self.bundle, || std::env::current_dir().unwrap_or_default())
    }

    fn grouping(&self) -> String {
        grouping(bundle::pod(&self.bundle_dir()), &self.id)
    }
}

/// The bundle: `-bundle`, else the working directory containerd gave.
fn bundle_dir(flag: &str, cwd: impl FnOnce() -> PathBuf) -> PathBuf {
    if flag.is_empty() {
        cwd()
    } else {
        Path::new(flag).to_path_buf()
    }
}

/// Which shim serves a container: one per pod (the containers of a
/// Kubernetes pod share the shim of their sandbox), else one per container.
fn grouping(pod: Result<Pod, BundleError>, id: &str) -> String {
    match pod {
        Ok(Pod {
            sandbox_id: Some(sandbox),
            ..
        }) => sandbox,
        _ => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tmp_dir;

    #[test]
    fn bundle_from_the_flag_else_the_working_directory() {
        assert_eq!(bundle_dir("/b", || unreachable!()), Path::new("/b"));
        assert_eq!(bundle_dir("", || PathBuf::from("/cwd")), Path::new("/cwd"));
    }

    #[test]
    fn containers_of_a_pod_share_its_shim() {
        let pod = |sandbox_id: Option<&str>| Pod {
            sandbox_id: sandbox_id.map(String::from),
            is_sandbox: false,
            netns: None,
        };
        assert_eq!(grouping(Ok(pod(Some("pod-1"))), "c1"), "pod-1");
        assert_eq!(grouping(Ok(pod(None)), "c1"), "c1");
        assert_eq!(grouping(Err(BundleError::NoArgs), "c1"), "c1");

        let dir = tmp_dir("grouping");
        std::fs::write(
            dir.join("config.json"),
            br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod-2"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(bundle::pod(&dir), "c2"), "pod-2");
        assert_eq!(grouping(bundle::pod(&dir.join("none")), "c3"), "c3");
    }
}
