//! The Coffer host runtime. It runs on the host and is never part of the guest's trusted computing
//! base: it builds the guest image ([`image`]), launches one VM per sandbox through a
//! [`hypervisor::Hypervisor`] backend, and talks to `coffer-agent` over hybrid vsock
//! ([`agent_client`]). A [`sandbox::Sandbox`] ties one VM and its agent together, and joins the VM
//! to its pod's network ([`network`]).
// `unsafe` lives in `sys` only (the tap ioctl, a VMM child's set-up before exec).
#![deny(unsafe_code)]

pub mod agent_client;
pub mod boot_phases;
pub mod config;
pub mod gc;
pub mod hypervisor;
pub mod image;
pub mod network;
pub mod publish;
pub mod rootfs;
pub mod sandbox;
pub mod spec;
mod sys;
pub mod tee;
pub mod tunnel;
pub mod vsock;
