//! The KBS protocol, version 0.4.0 (Trustee-compatible): wire types ([`types`]), the report_data
//! binding ([`binding`]), JWE resource encryption ([`jwe`]), ES256 tokens ([`jwt`]), validated
//! resource paths ([`path`]), the RCAR client ([`client`]), the `coffer-kbs` broker
//! ([`server`]), an external load generator for any KBS 0.4.0 broker ([`load`]), and a
//! conformance and hostile-input check of any KBS 0.4.0 broker ([`check`], sending hand-made
//! requests with [`probe`]).
//!
//! Flow: `POST /kbs/v0/auth {version, tee, extra-params}` → `{nonce, extra-params: ""}` and the
//! `kbs-session-id` cookie; the guest makes an ephemeral key and evidence whose report_data is
//! [`binding::report_data`]; `POST /kbs/v0/attest {init-data, runtime-data, tee-evidence}` →
//! `{token}`; `GET /kbs/v0/resource/<repo>/<type>/<tag>` → JWE to the TEE key. Every failure is
//! HTTP 401 with a problem JSON [`types::ErrorInformation`].

pub mod binding;
#[cfg(feature = "check")]
pub mod check;
pub mod client;
pub mod jwe;
pub mod jwt;
#[cfg(feature = "load")]
pub mod load;
pub mod path;
#[cfg(feature = "check")]
pub mod probe;
#[cfg(feature = "server")]
pub mod server;
pub mod types;
