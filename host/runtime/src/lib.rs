//! The Coffer host runtime. It runs on the host and is never part of the guest's trusted computing
//! base: it builds the guest image ([`image`]), launches one VM per sandbox through a
//! [`hypervisor::Hypervisor`] backend, and talks to `coffer-agent` over hybrid vsock
//! ([`agent_client`]). A [`sandbox::Sandbox`] ties one VM and its agent together.
#![forbid(unsafe_code)]

pub mod agent_client;
pub mod config;
pub mod hypervisor;
pub mod image;
pub mod publish;
pub mod rootfs;
pub mod sandbox;
pub mod spec;
pub mod tee;
pub mod tunnel;
pub mod vsock;
