//! `containerd-shim-coffer-v2`: the containerd runtime v2 shim that runs each pod in its own Coffer
//! VM.
//!
//! Model: one shim process and one VM per pod. containerd starts the shim for a pod's first
//! container (a `ctr run` container, or the CRI pause container); containers whose CRI annotations
//! (`io.kubernetes.cri.container-type = container`, `io.kubernetes.cri.sandbox-id = <pod>`) name
//! the pod reach the same shim (their `start` finds the pod's socket) and run in the same VM.
//! Each Task API call ([`service`]) maps to one method of [`pod::Pod`], which drives the guest agent
//! through `coffer-runtime` (`Sandbox`, rootfs delivery, agent client). Task events go back to
//! containerd; stdio goes through containerd's fifos ([`io`]). A crashed shim is cleaned up by
//! containerd's `delete` action ([`cleanup`]).
//!
//! Trust: in confidential mode the shim is untrusted (it is part of the host); nothing here is
//! relied on for the guest's protection. In sandbox mode the guest is the untrusted side: what
//! the agent answers is data, never code or paths the shim acts on.
#![forbid(unsafe_code)]

pub mod cleanup;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod io;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod pod;
pub mod process;
pub mod service;
pub mod spec;
