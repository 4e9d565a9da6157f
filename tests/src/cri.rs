//! A small CRI client (the Kubernetes Container Runtime Interface, as
//! kubelet speaks it): the `runtime.v1` messages and the gRPC
//! `RuntimeService` client, over containerd's unix socket.
//!
//! `cri_v1.rs` is generated, not written: `cargo xtask codegen` makes it
//! from the CRI `api.proto` checked in at `tests/proto/runtime/v1/api.proto`
//! (`runtime.v1`, Apache-2.0, the Kubernetes Authors; as shipped in the
//! `k8s-cri` 0.11 crate's `proto/v1.proto`), with `protox` and
//! `tonic-prost-build` 0.14 (`tools/codegen`). It is checked in so building
//! the workspace needs no code generator; `tests/codegen.rs` fails when it
//! is not what the proto makes.

#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::all,
    unused_qualifications
)]
pub mod v1 {
    include!("cri_v1.rs");
}

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

pub use v1::runtime_service_client::RuntimeServiceClient;

/// Connects to the CRI gRPC server on the unix socket `path`.
pub async fn connect(path: PathBuf) -> Result<RuntimeServiceClient<Channel>, String> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to the CRI socket: {e}"))?;
    Ok(RuntimeServiceClient::new(channel))
}
