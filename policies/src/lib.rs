//! Coffer's policy engine: every agent request is decided by one Rego policy, evaluated with
//! [regorus](https://github.com/microsoft/regorus).
//!
//! # Contract
//!
//! * **Input.** The policy sees `input` = [`PolicyInput`]: `{"version": 1, "request": {...},
//!   "state": {...}}`. `request` is tagged by `kind`, the RPC name ([`Request::name`]); `state` lists
//!   the sandbox's containers. The schema is owned by this crate and versioned by
//!   [`INPUT_VERSION`]; it is not the raw protobuf or OCI JSON. Every field is always present.
//! * **Policy.** One module in package `coffer.policy` (Rego v1 syntax) declaring a rule
//!   `decision`, plus an optional JSON data document that becomes `data`.
//! * **Result.** The engine evaluates `data.coffer.policy.decision`, which must be exactly
//!   `{"allow": <bool>, "reason": <string>}`; `reason` may be omitted only when `allow` is true and
//!   must otherwise be non-empty. The reason should name the rule and the offending field.
//!
//! # Fail closed (INV-5)
//!
//! Loading ([`Engine::new`]) fails on an oversized, unparsable or uncompilable policy, a recursive
//! function (regorus would overflow the stack), a wrong package, a missing `decision` rule, or invalid data; a caller that cannot load its policy must
//! refuse to serve. Once loaded, [`Engine::decide`] never errors: each of the following is a denial
//! whose reason names the cause, and no caller can turn it into an allow:
//!
//! | cause | reason starts with |
//! |---|---|
//! | `decision` undefined for this input | `policy result undefined` |
//! | result not an object, `allow` not a bool, unknown field, denial without reason | `policy result invalid` |
//! | evaluation error, incl. builtin type errors (strict builtin errors are on) and conflicting rule outputs | `policy error` |
//! | evaluation time limit exceeded ([`Limits::max_eval_time`]) | `policy limit exceeded` |
//! | serialized input over [`Limits::max_input_bytes`] | `policy input is` |
//!
//! The engine is built with regorus's `std` and `arc` features only: no network, time, random or
//! regex builtins are available to policies. See [`Limits`] for what regorus 0.14 can and cannot
//! bound.
//!
//! # Shipped policies
//!
//! [`SANDBOX_POLICY`] (`sandbox.rego`) is the non-confidential default: it allows the API but
//! refuses containers with OCI hooks, bind mounts of guest paths, or joined (host) namespaces.
#![forbid(unsafe_code)]

mod engine;
mod input;
mod recursion;

pub use engine::{
    DECISION_RULE, Decision, Engine, Limits, MAX_REASON_BYTES, POLICY_PACKAGE, PolicyError,
};
pub use input::{
    Capabilities, ContainerState, CreateContainer, Device, INPUT_VERSION, Mount, Namespace,
    NamespaceType, PolicyInput, Process, Request, Rootfs, RootfsSource, SandboxState, User,
};

/// The sandbox-mode (non-confidential) default policy, `policies/sandbox.rego`.
pub const SANDBOX_POLICY: &str = include_str!("../sandbox.rego");
