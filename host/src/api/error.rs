//! The API's typed errors: what went wrong ([`ErrorKind`], which fixes the
//! HTTP status) and why, in words ([`ApiError::error`]).

use serde::{Deserialize, Serialize};

/// What kind of refusal or failure an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request is malformed: its body, a field, the path's name.
    #[error("bad request")]
    BadRequest,
    /// The peer's uid is not allowed (SO_PEERCRED against the allowed group).
    #[error("forbidden")]
    Forbidden,
    /// No such VM or fleet.
    #[error("not found")]
    NotFound,
    /// The path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request clashes with the state: a name taken, a VM running.
    #[error("conflict")]
    Conflict,
    /// The body is larger than [`MAX_BODY`](super::MAX_BODY).
    #[error("payload too large")]
    PayloadTooLarge,
    /// The request head is larger than [`MAX_HEAD`](super::MAX_HEAD).
    #[error("request header fields too large")]
    HeadTooLarge,
    /// The body is chunked or its length is missing.
    #[error("length required")]
    LengthRequired,
    /// The daemon failed doing what was asked (its log says more).
    #[error("internal error")]
    Internal,
    /// The operation is not offered (yet).
    #[error("not implemented")]
    NotImplemented,
    /// The daemon is too busy (too many connections at once).
    #[error("unavailable")]
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status of this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::LengthRequired => 411,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeadTooLarge => 431,
            ErrorKind::Internal => 500,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Unavailable => 503,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {error}")]
pub struct ApiError {
    /// What kind of error (fixes the status).
    pub kind: ErrorKind,
    /// Why, naming what was wrong.
    pub error: String,
}

impl ApiError {
    /// An error of `kind`, for `why`.
    pub fn new(kind: ErrorKind, why: impl Into<String>) -> Self {
        Self {
            kind,
            error: why.into(),
        }
    }

    /// 400 with the reason.
    pub fn bad_request(why: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, why)
    }

    /// 404 for the VM called `name`.
    pub fn no_vm(name: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("no VM named '{name}'"))
    }

    /// 409 with the reason.
    pub fn conflict(why: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, why)
    }

    /// 500 with the reason.
    pub fn internal(why: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, why)
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}
