//! The `tandemd` REST API: the request and response bodies (JSON through
//! serde), the typed errors, and a small blocking client over the daemon's
//! Unix socket ([`Client`]), shared by the daemon and `tandem ctl`.
//!
//! The paths (all under [`PREFIX`] but `/healthz` and `/metrics`), in
//! `docs/openapi.yaml` in full:
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /healthz` | | [`Health`] |
//! | `POST /v1/vms` | [`CreateVm`] | 201, [`VmInfo`] |
//! | `GET /v1/vms` | | [`VmList`] |
//! | `GET /v1/vms/NAME` | | [`VmInfo`] |
//! | `DELETE /v1/vms/NAME` | | 200, [`VmInfo`] (the last state) |
//! | `POST /v1/vms/NAME/start`, `/stop`, `/kill` | [`StopVm`] for stop, optional | [`VmInfo`] |
//! | `POST /v1/vms/NAME/snapshot` | [`SnapshotVm`] | [`SnapshotInfo`] |
//! | `POST /v1/vms/NAME/restore` | [`RestoreVm`] | [`VmInfo`] |
//! | `GET /v1/vms/NAME/console` | | `text/plain`, the console log |
//! | `GET /v1/vms/NAME/events`, `GET /v1/events` | `?since=SEQ` | [`EventList`] |
//! | `POST /v1/fleets` | [`ApplyFleet`] | 201, [`FleetInfo`] |
//! | `GET /v1/fleets`, `GET /v1/fleets/ID` | | [`FleetList`], [`FleetInfo`] |
//!
//! Every error is an [`ApiError`] body with the HTTP status of its
//! [`ErrorKind`]. The types only grow: fields are added with defaults, so
//! an older client reads a newer daemon's answers.

mod client;
mod error;
mod types;

pub use client::{Client, ClientError, Response};
pub use error::{ApiError, ErrorKind};
pub use types::*;

/// Every VM and fleet path starts with this.
pub const PREFIX: &str = "/v1";
/// Largest request body the daemon reads (bytes): a bigger one is refused
/// with 413 before it is read.
pub const MAX_BODY: usize = 1 << 20;
/// Largest request head (request line and headers) the daemon reads.
pub const MAX_HEAD: usize = 16 << 10;
/// Longest VM name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest command line handed to a guest through the API.
pub const MAX_CMDLINE_LEN: usize = 4096;
/// Most disks one VM may be given through the API.
pub const MAX_DISKS: usize = 8;
/// The most console bytes `GET /v1/vms/NAME/console` returns (its end).
pub const MAX_CONSOLE_ANSWER: u64 = 1 << 20;
