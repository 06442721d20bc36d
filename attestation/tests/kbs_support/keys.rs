//! The key material replicas of one broker share, written to a directory: `admin.pub` (the admin
//! API's P-256 key), `token.key` (the token signing key) and session keys `<name>.key` (base64 of
//! 32 random bytes). Shared by `tests/kbs_replicas.rs` and `benches/kbs_replicas.rs`.

#![allow(clippy::expect_used)] // test helpers: a failed expect is a failed test

use std::path::Path;

use base64::Engine as _;
use coffer_attestation::kbs::jwt::TokenSigner;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// Writes the shared keys into `dir`, with a session key per name; returns the admin signer.
pub fn write_shared_keys(dir: &Path, session_keys: &[&str]) -> TokenSigner {
    let admin = TokenSigner::generate().expect("admin key");
    let admin_pub = admin
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("admin public key");
    std::fs::write(dir.join("admin.pub"), admin_pub).expect("write admin.pub");
    let token = p256::SecretKey::random(&mut rand_core::OsRng);
    let token_pem = token.to_pkcs8_pem(LineEnding::LF).expect("token key");
    std::fs::write(dir.join("token.key"), token_pem.as_bytes()).expect("write token.key");
    for name in session_keys {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        std::fs::write(
            dir.join(format!("{name}.key")),
            base64::engine::general_purpose::STANDARD.encode(key),
        )
        .expect("write session key");
    }
    admin
}
