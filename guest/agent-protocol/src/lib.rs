//! The `coffer.agent.v1` protocol: the one definition of the API between the host runtime and
//! `coffer-agent` (see `PROTOCOL.md` beside this crate for what each call does and what is trusted).
//!
//! Features: `client` generates `agent_client::AgentClient` (host side), `server` generates
//! `agent_server::{Agent, AgentServer}` (guest side). Messages are always available.
#![forbid(unsafe_code)]

/// Generated messages and (per feature) client/server stubs of `coffer.agent.v1`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("coffer.agent.v1");
}

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The host vsock port the agent connects to once it listens, to announce itself with
/// [`READY_ANNOUNCEMENT`]. The host opens no connection into the guest before that: a hybrid-vsock
/// backend can be broken by a host connection that arrives while the guest's vsock driver is still
/// setting the device up (see `PROTOCOL.md`, "Start-up").
pub const HOST_READY_VSOCK_PORT: u32 = 1023;

/// What the agent writes on its connection to [`HOST_READY_VSOCK_PORT`], then closes it.
pub const READY_ANNOUNCEMENT: &[u8] = b"coffer-agent ready\n";

/// The agent's version, reported by `CreateSandbox` and `GetGuestDetails`.
pub const PROTOCOL_PACKAGE: &str = "coffer.agent.v1";

/// Printed on the guest console by `coffer-agent` as soon as it runs as PID 1 (boot probes wait for
/// it).
pub const GUEST_INIT_MARKER: &str = "coffer-agent: init";

/// Printed on the guest console once the agent listens (boot benchmarks wait for it).
pub const GUEST_READY_MARKER: &str = "coffer-agent: ready";
