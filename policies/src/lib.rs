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
//!   `{"allow": <bool>, "reason": <string>}` plus an optional `"record": {<string>: <string>}`;
//!   `reason` may be omitted only when `allow` is true and must otherwise be non-empty. The reason
//!   should name the rule and the offending field. `record` is the decision's state update: on an
//!   allowed `CreateContainer` the agent stores it on the new container if (and only if) creation
//!   succeeds, and later inputs show it in `state.containers[].record` (at most
//!   [`MAX_RECORD_ENTRIES`] entries of [`MAX_RECORD_BYTES`]); on any other request it is invalid.
//!
//! # Fail closed (INV-5)
//!
//! Loading ([`Engine::new`]) fails on an oversized, unparsable or uncompilable policy, a recursive
//! function (regorus would overflow the stack), a wrong package, a missing `decision` rule, invalid
//! data, or — when the policy declares the optional rule `data_problems` (a set of strings,
//! [`DATA_PROBLEMS_RULE`]) — any problem that rule reports about its data; a caller that cannot load its policy must
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
//! The engine is built with regorus's `std`, `arc` and `regex` features only: no network, time or
//! random builtins are available to policies. Regular expressions use the `regex` crate, whose
//! matching time is linear in the input (no catastrophic backtracking). See [`Limits`] for what regorus 0.14 can and cannot
//! bound.
//!
//! # Kata compatibility
//!
//! [`KataEngine`] is a separate, explicit mode for Kata genpolicy policies (package
//! `agent_policy`): it evaluates `data.agent_policy.<RequestMessage>` on Kata's request JSON, with
//! Kata's engine settings and stateful `{"allowed", "ops"}` results; see its module and
//! `policies/README.md`. It never applies to policies of our contract.
//!
//! # Shipped policies
//!
//! [`SANDBOX_POLICY`] (`sandbox.rego`) is the non-confidential default: it allows the API but
//! refuses containers with OCI hooks, bind mounts of guest paths, or joined (host) namespaces.
//! [`CONFIDENTIAL_POLICY`] (`confidential.rego`) is the confidential-mode default: it admits only
//! what its policy data lists (schema in `POLICY-DATA.md`). Initdata (the `coffer-initdata` crate)
//! carries the policy a sandbox actually enforces.
#![forbid(unsafe_code)]

mod engine;
mod input;
mod json_patch;
mod kata;
mod recursion;

/// The initdata parser, which moved to its own crate (`coffer-initdata`, #20); this path remains
/// for code written against it. New code uses `coffer_initdata`.
pub use coffer_initdata as initdata;
pub use engine::{
    DATA_INDEX_KEY, DATA_INDEX_RULE, DATA_PROBLEMS_RULE, DECISION_RULE, Decision, Engine, Limits,
    MAX_REASON_BYTES, MAX_RECORD_BYTES, MAX_RECORD_ENTRIES, POLICY_PACKAGE, PolicyError,
};
pub use input::{
    Capabilities, ConsoleSize, ContainerState, CpuLimits, CreateContainer, Device, DeviceRule,
    DnsConfig, EVER_STARTED_KEPT, HostEntry, HugepageLimit, INPUT_VERSION, MemoryLimits, Mount,
    Namespace, NamespaceType, NetworkInterface, NetworkRoute, PodNetwork, PolicyInput, Process,
    Request, Resources, Rlimit, Rootfs, RootfsSource, SandboxState, Seccomp, SeccompArg,
    SeccompRule, User, note_started,
};
pub use kata::{
    FAILING_POLICY_SETTING, KATA_PACKAGE, KATA_REQUESTS, KataDecision, KataEngine, MAX_PRINTS,
    NO_REASON, kata_request,
};

/// The sandbox-mode (non-confidential) default policy, `policies/sandbox.rego`.
pub const SANDBOX_POLICY: &str = include_str!("../sandbox.rego");

/// The confidential-mode default policy, `policies/confidential.rego`; its data document follows
/// `policies/POLICY-DATA.md`.
pub const CONFIDENTIAL_POLICY: &str = include_str!("../confidential.rego");
