//! The agent's error type and its single mapping onto gRPC status codes.
//!
//! Messages cross the trust boundary, so they name the offending id or field and never carry
//! `{:?}` dumps of internal state.

use std::path::PathBuf;

use thiserror::Error;

use crate::policy::Denied;

/// Every failure an agent request can end in.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The request did not validate into a typed request.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// An OCI spec or process the guest does not run (a field outside the closed model, or a
    /// value it cannot apply); the error names the field.
    #[error("invalid request: {0}")]
    Spec(#[from] crate::spec::SpecError),
    /// The policy refused the request.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// No sandbox exists yet (CreateSandbox has not been called) or it is being destroyed.
    #[error("sandbox not created")]
    NoSandbox,
    /// CreateSandbox was called twice.
    #[error("sandbox {0} already exists")]
    SandboxExists(String),
    /// The container id is unknown.
    #[error("container {0} not found")]
    ContainerNotFound(String),
    /// The process is unknown.
    #[error("process {exec_id} of container {container_id} not found")]
    ProcessNotFound {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
    },
    /// The id is already in use.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// What kind of object (container, process, rootfs upload).
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The object is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A size or count limit was exceeded.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Unpacking an uploaded rootfs failed.
    #[error("rootfs for container {container_id}: {reason}")]
    Rootfs {
        /// Container id.
        container_id: String,
        /// What went wrong (no host paths beyond the entry name).
        reason: String,
    },
    /// A sealed secret could not be resolved (the value is never part of the message).
    #[error("container {container_id}: sealed secret {reference}: {reason}")]
    Secret {
        /// Container id.
        container_id: String,
        /// The broker reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The workload identity could not be obtained or placed (the key is never part of the
    /// message).
    #[error("container {container_id}: workload identity: {reason}")]
    Identity {
        /// Container id.
        container_id: String,
        /// Why.
        reason: String,
    },
    /// Loading kernel modules a container needs (the netfilter modules) failed.
    #[error("loading kernel modules: {0}")]
    Modules(#[source] crate::init::InitError),
    /// Applying the pod's network (CreateSandbox) failed.
    #[error("pod network: {0}")]
    Network(#[source] crate::network_setup::NetworkSetupError),
    /// The OCI runtime (libcontainer, in the helper process) failed.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// `DestroySandbox` could not remove these containers; the sandbox stays for another attempt.
    #[error("sandbox not destroyed: containers {} could not be removed", containers.join(", "))]
    DestroyIncomplete {
        /// The containers still there.
        containers: Vec<String>,
    },
    /// A local I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An internal invariant broke; details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl AgentError {
    /// Convenience constructor for [`AgentError::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(err: AgentError) -> Self {
        use tonic::Status;
        match &err {
            AgentError::InvalidArgument(_) | AgentError::Spec(_) => {
                Status::invalid_argument(err.to_string())
            }
            AgentError::Denied(_) => Status::permission_denied(err.to_string()),
            AgentError::NoSandbox | AgentError::FailedPrecondition(_) => {
                Status::failed_precondition(err.to_string())
            }
            AgentError::SandboxExists(_) | AgentError::AlreadyExists { .. } => {
                Status::already_exists(err.to_string())
            }
            AgentError::ContainerNotFound(_) | AgentError::ProcessNotFound { .. } => {
                Status::not_found(err.to_string())
            }
            AgentError::ResourceExhausted(_) => Status::resource_exhausted(err.to_string()),
            AgentError::Rootfs { .. } => Status::invalid_argument(err.to_string()),
            AgentError::Secret { .. } | AgentError::Identity { .. } => {
                Status::failed_precondition(err.to_string())
            }
            AgentError::Runtime(_)
            | AgentError::Modules(_)
            | AgentError::DestroyIncomplete { .. } => Status::internal(err.to_string()),
            // The guest does not have what the host described (a NIC with that MAC, IPv6).
            AgentError::Network(
                crate::network_setup::NetworkSetupError::NoLink { .. }
                | crate::network_setup::NetworkSetupError::AmbiguousLink { .. }
                | crate::network_setup::NetworkSetupError::NoIpv6,
            ) => Status::failed_precondition(err.to_string()),
            AgentError::Network(_) => Status::internal(err.to_string()),
            AgentError::Io { op, .. } => {
                tracing::warn!(error = %err, "request failed");
                Status::internal(format!("{op} failed"))
            }
            AgentError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
