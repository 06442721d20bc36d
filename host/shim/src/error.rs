//! The shim's error type and its one mapping to a ttrpc status for containerd.

use std::path::PathBuf;

use coffer_runtime::config::ConfigError;
use coffer_runtime::rootfs::RootfsError;
use coffer_runtime::sandbox::SandboxError;
use containerd_shim::protos::ttrpc::{self, Code};

/// Failures of Task API calls.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No such task or process.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `task` or `process`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// A task or process with this id exists.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// `task` or `process`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The request does not fit the task's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The call is not supported by this runtime (yet).
    #[error("{call} is not supported by the coffer runtime: {reason}")]
    Unimplemented {
        /// The Task API call.
        call: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The settings are unusable.
    #[error("settings")]
    Config(#[from] ConfigError),
    /// The guest image is unusable.
    #[error("guest image {dir}: {message}")]
    GuestImage {
        /// The image directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A socket of the pod VM would not fit a unix socket address (`state_dir` is too long for
    /// the pod id; CRI's ids have 64 characters).
    #[error(
        "socket path {path} is {len} bytes, over the {max} a unix socket address holds: \
         choose a shorter state_dir"
    )]
    SocketPathTooLong {
        /// The longest socket path of the pod VM.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The pod VM failed to start or is gone.
    #[error("starting the pod VM")]
    Sandbox(#[from] SandboxError),
    /// The pod VM died.
    #[error("{0}")]
    VmGone(String),
    /// The rootfs could not be delivered.
    #[error("delivering the rootfs")]
    Rootfs(#[from] RootfsError),
    /// Mounting or unmounting the snapshot failed.
    #[error("{op} {path}: {message}")]
    Mount {
        /// `mount` or `unmount`.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// Cause as the mount helper reports it.
        message: String,
    },
    /// The guest agent refused or failed a call.
    #[error("agent {call}: {}", status.message())]
    Agent {
        /// The agent RPC.
        call: &'static str,
        /// Its status.
        #[source]
        status: tonic::Status,
    },
    /// Local file handling failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    /// An agent failure for `call`.
    pub fn agent(call: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Agent { call, status }
    }

    fn code(&self) -> Code {
        match self {
            Self::NotFound { .. } => Code::NOT_FOUND,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition(_) | Self::VmGone(_) => Code::FAILED_PRECONDITION,
            Self::Unimplemented { .. } => Code::UNIMPLEMENTED,
            Self::Agent { status, .. } => match status.code() {
                tonic::Code::NotFound => Code::NOT_FOUND,
                tonic::Code::AlreadyExists => Code::ALREADY_EXISTS,
                tonic::Code::InvalidArgument => Code::INVALID_ARGUMENT,
                tonic::Code::FailedPrecondition => Code::FAILED_PRECONDITION,
                tonic::Code::PermissionDenied => Code::PERMISSION_DENIED,
                tonic::Code::Unimplemented => Code::UNIMPLEMENTED,
                tonic::Code::Unavailable => Code::UNAVAILABLE,
                _ => Code::INTERNAL,
            },
            Self::Config(_)
            | Self::SocketPathTooLong { .. }
            | Self::GuestImage { .. }
            | Self::Sandbox(_)
            | Self::Rootfs(_)
            | Self::Mount { .. }
            | Self::Io { .. } => Code::INTERNAL,
        }
    }
}

/// The one mapping from shim errors to what containerd sees: the code containerd's errdefs
/// understand (`NotFound` lets it treat a vanished task as deleted) and the error's message chain.
impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> Self {
        // Wrapped library errors with their causes, each once (as the binaries print errors).
        let message = match &err {
            ShimError::Config(_) | ShimError::Sandbox(_) | ShimError::Rootfs(_) => {
                coffer_log::error_line(&err)
            }
            _ => err.to_string(),
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_reach_containerd() {
        let err: ttrpc::Error = ShimError::NotFound {
            kind: "task",
            id: "t1".into(),
        }
        .into();
        match err {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message, "task t1 not found");
            }
            other => panic!("{other:?}"),
        }
        let err: ttrpc::Error = ShimError::Config(ConfigError::Read {
            path: "/etc/x.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
        .into();
        match err {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert_eq!(s.message, "settings: reading /etc/x.toml: entity not found");
            }
            other => panic!("{other:?}"),
        }
        let err: ttrpc::Error = ShimError::Unimplemented {
            call: "Checkpoint",
            reason: "VM sandboxes cannot be checkpointed",
        }
        .into();
        match err {
            ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::UNIMPLEMENTED),
            other => panic!("{other:?}"),
        }
    }
}
