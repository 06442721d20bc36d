//! The single authorization point. Every decoded [`AgentRequest`] passes [`Gate::authorize`] before
//! anything happens; the dispatcher only accepts a [`Permit`], which nothing else can construct.
//!
//! The policy is Rego evaluated by `coffer-policies` ([`RegoPolicy`]) on a typed input built from the
//! request and the sandbox state; any evaluation problem is a denial. The agent enforces exactly one
//! policy (`select_policy` in `main.rs`): the `policy.rego` of the measured initdata (with its
//! `policy-data.json`), else an explicit `--policy` file (never both), else the mode's shipped default:
//! `confidential.rego` in a TEE (no container without policy data), `sandbox.rego` outside one.

use std::collections::BTreeMap;
use std::fmt;

use coffer_policies as pol;
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

/// Facts an allowed `CreateContainer` records on the new container (see
/// [`coffer_policies::Decision::record`]).
pub type Record = BTreeMap<String, String>;

/// A policy decides each request, given the sandbox state.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Allow (`Ok`, with what to record on a created container) or deny with a reason.
    fn decide(&self, request: &AgentRequest, state: &pol::SandboxState) -> Result<Record, String>;
}

/// The agent's evaluation limits: the engine's defaults with a 2 s time budget. The budget bounds
/// policy bombs (POL-02); the engine's 250 ms default is too tight for a guest without hardware
/// acceleration (TCG) on a loaded host, where a legitimate decision must never time out.
fn agent_limits() -> pol::Limits {
    pol::Limits {
        max_eval_time: std::time::Duration::from_secs(2),
        ..pol::Limits::default()
    }
}

/// A Rego policy evaluated by the `coffer-policies` engine.
#[derive(Debug, Clone)]
pub struct RegoPolicy {
    engine: pol::Engine,
    name: String,
}

impl RegoPolicy {
    /// Loads `source` (with optional policy data) under a name for logs.
    pub fn load(name: &str, source: &str, data: Option<&str>) -> Result<Self, pol::PolicyError> {
        Ok(Self {
            engine: pol::Engine::new(source, data, agent_limits())?,
            name: name.to_owned(),
        })
    }

    /// The shipped sandbox-mode policy.
    pub fn sandbox_default() -> Result<Self, pol::PolicyError> {
        Self::load("sandbox.rego (built in)", pol::SANDBOX_POLICY, None)
    }

    /// The shipped confidential-mode policy (with no policy data it admits no container).
    pub fn confidential_default() -> Result<Self, pol::PolicyError> {
        Self::load(
            "confidential.rego (built in)",
            pol::CONFIDENTIAL_POLICY,
            None,
        )
    }

    /// The name it was loaded under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Policy for RegoPolicy {
    fn decide(&self, request: &AgentRequest, state: &pol::SandboxState) -> Result<Record, String> {
        let input = pol::PolicyInput::new(crate::policy_input::request(request), state.clone());
        let decision = self.engine.decide(&input);
        if decision.allowed {
            Ok(decision.record)
        } else {
            Err(decision.reason)
        }
    }
}

/// Proof that a request was authorized. Only [`Gate::authorize`] creates one.
#[derive(Debug)]
pub struct Permit {
    record: Record,
}

impl Permit {
    /// What the decision recorded (non-empty only for `CreateContainer`).
    pub fn into_record(self) -> Record {
        self.record
    }
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

    /// Decides `request` in `state`; the returned permit is required to dispatch it.
    pub fn authorize(
        &self,
        request: &AgentRequest,
        state: &pol::SandboxState,
    ) -> Result<Permit, Denied> {
        match self.policy.decide(request, state) {
            Ok(record) => {
                tracing::debug!(rpc = request.name(), "allowed");
                Ok(Permit { record })
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
    use crate::request::{Id, RootfsSource};

    #[derive(Debug)]
    struct DenyAll;
    impl Policy for DenyAll {
        fn decide(&self, request: &AgentRequest, _: &pol::SandboxState) -> Result<Record, String> {
            Err(format!("{} is not listed", request.name()))
        }
    }

    #[test]
    fn denial_names_the_rpc_and_reason() {
        let gate = Gate::new(Box::new(DenyAll));
        let err = gate
            .authorize(
                &AgentRequest::GetGuestDetails,
                &pol::SandboxState::default(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "GetGuestDetails denied by policy: GetGuestDetails is not listed"
        );
    }

    fn create_with(spec: oci_spec::runtime::Spec) -> Result<AgentRequest, crate::spec::SpecError> {
        let container = Id::parse("container_id", "c1").unwrap();
        let rootfs = RootfsSource::Uploaded;
        let spec = crate::spec::decode_container(
            container.as_str(),
            rootfs.policy_view(),
            &serde_json::to_vec(&spec).unwrap(),
        )?;
        Ok(AgentRequest::CreateContainer {
            container,
            spec: Box::new(spec),
            rootfs,
        })
    }

    #[test]
    fn sandbox_policy_allows_plain_requests_and_default_containers() {
        let gate = Gate::new(Box::new(RegoPolicy::sandbox_default().unwrap()));
        let state = pol::SandboxState::default();
        assert!(gate.authorize(&AgentRequest::GetOomEvent, &state).is_ok());
        let spec = oci_spec::runtime::Spec::default();
        gate.authorize(&create_with(spec).unwrap(), &state).unwrap();
    }

    /// AGT-CC: OCI hooks run as guest root. They are outside the closed spec, so a spec carrying
    /// them never becomes a request the policy (or anything after it) sees.
    #[test]
    fn hooks_never_reach_the_policy() {
        let mut spec = oci_spec::runtime::Spec::default();
        let hook = oci_spec::runtime::HookBuilder::default()
            .path("/bin/sh")
            .build()
            .unwrap();
        let hooks = oci_spec::runtime::HooksBuilder::default()
            .prestart(vec![hook])
            .build()
            .unwrap();
        spec.set_hooks(Some(hooks));
        assert_eq!(
            create_with(spec).unwrap_err(),
            crate::spec::SpecError::Unsupported {
                field: "hooks.prestart".into()
            }
        );
    }
}
