//! The key material replicas of one broker share, written to a directory: `admin.pub` (the admin
//! API's P-256 key), `token.key` (the token signing key) and session keys `<name>.key` (base64 of
//! 32 random bytes), as a Kubernetes Secret mounted into every replica would hold them. Used by
//! the attestation crate's replica tests and bench and by the CLI suite's replicated set.

use std::path::Path;

use base64::Engine as _;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_core::{OsRng, RngCore};

use crate::kbs::jwt::TokenSigner;

/// Writes the shared keys into `dir`, with a session key per name (the first seals); returns
/// the signer of admin tokens.
pub fn write_shared_keys(dir: &Path, session_keys: &[&str]) -> std::io::Result<TokenSigner> {
    let admin = TokenSigner::generate().map_err(std::io::Error::other)?;
    let admin_pub = admin
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(std::io::Error::other)?;
    std::fs::write(dir.join("admin.pub"), admin_pub)?;
    let token = p256::SecretKey::random(&mut OsRng);
    let token_pem = token
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(std::io::Error::other)?;
    std::fs::write(dir.join("token.key"), token_pem.as_bytes())?;
    for name in session_keys {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        std::fs::write(
            dir.join(format!("{name}.key")),
            base64::engine::general_purpose::STANDARD.encode(key),
        )?;
    }
    Ok(admin)
}
