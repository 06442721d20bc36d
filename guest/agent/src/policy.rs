//! The single authorization point. Every decoded [`AgentRequest`] passes [`Gate::authorize`] before
//! anything happens; the dispatcher only accepts a [`Permit`], which nothing else can construct.
//!
//! Until the policy engine lands (issue #5) the only policy is [`OpenPolicy`], which allows every
//! request and says so loudly at start-up. It is the sandbox-mode behaviour; confidential mode does
//! not exist without the engine.

use std::fmt;

use thiserror::Error;

use crate::request::AgentRequest;

/// A refusal, with the RPC and a readable reason (never the whole request).
#[derive(Debug, Error)]
#[error("{rpc} denied by policy: {reason}")]
pub struct Denied {
    /// RPC name.
    pub rpc: &'static str,
    /// Why.
    pub reason: String,
}

/// A policy decides each request.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Allow (`Ok`) or deny with a reason.
    fn decide(&self, request: &AgentRequest) -> Result<(), String>;
}

/// Allows every request. The spine's default until the policy engine exists.
#[derive(Debug, Default)]
pub struct OpenPolicy;

impl Policy for OpenPolicy {
    fn decide(&self, _request: &AgentRequest) -> Result<(), String> {
        Ok(())
    }
}

/// Proof that a request was authorized. Only [`Gate::authorize`] creates one.
#[derive(Debug)]
pub struct Permit {
    _private: (),
}

/// The gate every request passes through.
#[derive(Debug)]
pub struct Gate {
    policy: Box<dyn Policy>,
}

impl Gate {
    /// A gate over `policy`.
    pub fn new(policy: Box<dyn Policy>) -> Self {
        Self { policy }
    }

    /// Decides `request`; the returned permit is required to dispatch it.
    pub fn authorize(&self, request: &AgentRequest) -> Result<Permit, Denied> {
        match self.policy.decide(request) {
            Ok(()) => {
                tracing::debug!(rpc = request.name(), "allowed");
                Ok(Permit { _private: () })
            }
            Err(reason) => {
                tracing::info!(rpc = request.name(), %reason, "denied");
                Err(Denied {
                    rpc: request.name(),
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct DenyAll;
    impl Policy for DenyAll {
        fn decide(&self, request: &AgentRequest) -> Result<(), String> {
            Err(format!("{} is not listed", request.name()))
        }
    }

    #[test]
    fn denial_names_the_rpc_and_reason() {
        let gate = Gate::new(Box::new(DenyAll));
        let err = gate.authorize(&AgentRequest::GetGuestDetails).unwrap_err();
        assert_eq!(
            err.to_string(),
            "GetGuestDetails denied by policy: GetGuestDetails is not listed"
        );
    }

    #[test]
    fn open_policy_allows() {
        let gate = Gate::new(Box::new(OpenPolicy));
        assert!(gate.authorize(&AgentRequest::GetOomEvent).is_ok());
    }
}
