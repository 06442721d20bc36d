//! The Coffer host runtime. It runs on the host and is never part of the guest's trusted computing
//! base: it builds the guest image, launches one VM per sandbox through a [`hypervisor::Hypervisor`]
//! backend, and talks to `coffer-agent` over hybrid vsock.
#![forbid(unsafe_code)]

pub mod image;
