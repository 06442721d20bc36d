//! Broker errors and their one mapping to HTTP: like Trustee, every refusal is HTTP 401 with a
//! problem JSON `{type, detail}`; the detail names the category, never internals (those are
//! logged). A refused evidence names the check it failed and the values of the client's own
//! evidence ([`VerifyError::detail`]): nothing the client did not send, except the broker's
//! policy minimums.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::super::types::{ERROR_TYPE_PREFIX, ErrorInformation};
use super::verify::VerifyError;
use crate::kbs::jwe::JweError;
use crate::kbs::jwt::JwtError;
use crate::kbs::path::PathError;

/// Everything the broker can refuse.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The request body is not the expected JSON.
    #[error("malformed {what} request")]
    BadRequest {
        /// Which request.
        what: &'static str,
        /// Decoder error.
        #[source]
        source: serde_json::Error,
    },
    /// The client speaks another protocol version.
    #[error("protocol version {found} is not supported (expected 0.4.0)")]
    Version {
        /// Version sent.
        found: String,
    },
    /// The TEE is not accepted by this broker.
    #[error("tee {tee} is not enabled on this broker")]
    TeeDisabled {
        /// The TEE.
        tee: &'static str,
    },
    /// The session store is full.
    #[error("too many sessions")]
    TooManySessions,
    /// No, unknown, expired or already-used session cookie on `/attest` (KBS-01).
    #[error("no valid challenge for this session")]
    NoChallenge,
    /// `runtime-data.nonce` is not this session's nonce (KBS-01).
    #[error("nonce does not match the challenge")]
    NonceMismatch,
    /// The TEE public key is unusable.
    #[error("invalid tee public key")]
    TeeKey(#[source] JweError),
    /// Init-data is malformed or too large.
    #[error("invalid init-data: {reason}")]
    InitData {
        /// What is wrong.
        reason: String,
    },
    /// Evidence verification failed.
    #[error("evidence verification failed")]
    Verify(#[source] VerifyError),
    /// No token or cookie on a resource request.
    #[error("attestation token not found")]
    TokenNotFound,
    /// The bearer token does not verify.
    #[error("attestation token rejected")]
    Token(#[source] JwtError),
    /// The resource policy denied the request (or failed: deny).
    #[error("access denied by policy")]
    PolicyDeny,
    /// The resource path is invalid.
    #[error("invalid resource path")]
    Path(#[source] PathError),
    /// No such resource.
    #[error("resource not found")]
    ResourceNotFound,
    /// Admin authentication failed.
    #[error("admin authentication failed")]
    AdminAuth {
        /// Why.
        reason: String,
    },
    /// A policy or reference value upload was refused.
    #[error("invalid admin request: {reason}")]
    AdminRequest {
        /// Why.
        reason: String,
    },
    /// No identity CA is configured (`[identity] trust_domain`).
    #[error("identity issuance is not configured on this broker")]
    IdentityDisabled,
    /// An identity request was refused after authentication.
    #[error("identity refused")]
    Identity(#[source] super::identity::IdentityRefusal),
    /// The store did not answer (or failed): the broker serves nothing stale instead.
    #[error("store unavailable")]
    StoreUnavailable {
        /// Cause (logged, not sent).
        #[source]
        source: super::store::StoreError,
    },
    /// Storage or encryption failed on the broker side.
    #[error("internal error")]
    Internal {
        /// What failed (logged, not sent).
        reason: String,
    },
}

impl KbsError {
    /// The problem-type suffix (Trustee's names where Trustee has one).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. }
            | Self::Version { .. }
            | Self::TeeDisabled { .. }
            | Self::TooManySessions
            | Self::NoChallenge
            | Self::NonceMismatch
            | Self::TeeKey(_)
            | Self::InitData { .. }
            | Self::Verify(_) => "AttestationError",
            Self::TokenNotFound => "TokenNotFound",
            Self::Token(_) => "JwtVerificationFailed",
            Self::PolicyDeny => "PolicyDeny",
            Self::Path(_) => "InvalidRequest",
            Self::ResourceNotFound => "ResourceNotFound",
            Self::AdminAuth { .. } => "AdminAuth",
            Self::AdminRequest { .. } => "InvalidRequest",
            Self::IdentityDisabled => "PluginNotFound",
            Self::Identity(super::identity::IdentityRefusal::Csr(_))
            | Self::Identity(super::identity::IdentityRefusal::Lifetime { .. }) => "InvalidRequest",
            Self::Identity(_) => "IdentityRefused",
            Self::Internal { .. } | Self::StoreUnavailable { .. } => "InternalError",
        }
    }

    /// A short, fixed name for the refusal's cause (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Version { .. } => "version",
            Self::TeeDisabled { .. } => "tee_disabled",
            Self::TooManySessions => "too_many_sessions",
            Self::NoChallenge => "no_challenge",
            Self::NonceMismatch => "nonce_mismatch",
            Self::TeeKey(_) => "tee_key",
            Self::InitData { .. } => "init_data",
            Self::Verify(_) => "evidence",
            Self::TokenNotFound => "no_session",
            Self::Token(_) => "token",
            Self::PolicyDeny => "policy_deny",
            Self::Path(_) => "path",
            Self::ResourceNotFound => "not_found",
            Self::AdminAuth { .. } => "admin_auth",
            Self::AdminRequest { .. } => "admin_request",
            Self::IdentityDisabled => "identity_disabled",
            Self::Identity(_) => "identity",
            Self::StoreUnavailable { .. } => "store_unavailable",
            Self::Internal { .. } => "internal",
        }
    }

    /// The problem JSON sent to the client.
    pub fn info(&self) -> ErrorInformation {
        ErrorInformation {
            error_type: format!("{ERROR_TYPE_PREFIX}{}", self.kind()),
            // Identity refusals name their cause (CSR, initdata, lifetime: nothing secret), as
            // do TEE key refusals (the client's own key: its curve, length or algorithm);
            // evidence refusals the check that failed (the field), without broker paths.
            detail: match self {
                Self::Identity(_) | Self::TeeKey(_) => error_chain(self),
                Self::Verify(e) => format!("{self}: {}", e.detail()),
                _ => self.to_string(),
            },
        }
    }
}

impl IntoResponse for KbsError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal { reason } => tracing::error!(%reason, "kbs internal error"),
            Self::StoreUnavailable { source } => {
                tracing::error!(error = %error_chain(source), "kbs store unavailable");
            }
            other => {
                let chain = error_chain(other);
                tracing::info!(kind = other.kind(), error = %chain, "kbs request refused");
            }
        }
        let status = match self {
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            // Not a refusal: the client retries (on another replica).
            Self::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        json_response(status, &self.info())
    }
}

/// A JSON reply (`content-type: application/json`).
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `error: cause: cause` for logs and refusal details, each cause once (the CLI's rule:
/// [`coffer_log::error_line`]).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    coffer_log::error_line(e)
}
