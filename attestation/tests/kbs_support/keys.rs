//! The key material replicas of one broker share ([`coffer_attestation::testing::replicas`]).
//! Shared by `tests/kbs_replicas.rs` and `benches/kbs_replicas.rs`.

#![allow(clippy::expect_used)] // test helpers: a failed expect is a failed test

use std::path::Path;

use coffer_attestation::kbs::jwt::TokenSigner;

/// Writes the shared keys into `dir`, with a session key per name; returns the admin signer.
pub fn write_shared_keys(dir: &Path, session_keys: &[&str]) -> TokenSigner {
    coffer_attestation::testing::replicas::write_shared_keys(dir, session_keys)
        .expect("writing the replicas' shared keys")
}
