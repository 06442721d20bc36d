//! ES256 JSON Web Tokens (RFC 7519 compact JWS), for attestation tokens and admin requests.
//!
//! Verification trusts exactly one key chosen by the caller: the header must say `alg: ES256`
//! (so `none`, `HS256` and every other algorithm are refused), and header keys (`jwk`, `x5c`,
//! `jku`) are ignored, never used (KBS-07). `exp` is required; `nbf` and `iat` may not lie in the
//! future beyond [`CLOCK_SKEW_SECS`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde_json::{Map, Value};

/// Largest token accepted (bytes); bigger ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Allowed clock skew for `nbf`/`iat`/`exp`, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Token failures.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("token is malformed: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// The header's `alg` is not ES256.
    #[error("token algorithm {found:?} is not ES256")]
    Algorithm {
        /// The header's `alg`.
        found: Option<String>,
    },
    /// The header carries `crit` extensions we do not understand.
    #[error("token has critical header extensions")]
    Critical,
    /// The signature does not verify with the trusted key.
    #[error("token signature does not verify")]
    Signature,
    /// `exp` missing or in the past, or `nbf`/`iat` in the future.
    #[error("token is not valid now: {reason}")]
    Time {
        /// Which claim failed.
        reason: &'static str,
    },
    /// The issuer is not the expected one.
    #[error("token issuer {found:?} is not {expected}")]
    Issuer {
        /// Expected issuer.
        expected: String,
        /// Found issuer.
        found: Option<String>,
    },
    /// Signing failed (claims not serializable).
    #[error("token could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// A PEM key could not be loaded.
    #[error("es256 key is not a p-256 pkcs#8/spki pem: {reason}")]
    Key {
        /// Loader error.
        reason: String,
    },
}

/// Signs claims as an ES256 JWT.
pub struct TokenSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner([REDACTED])")
    }
}

impl TokenSigner {
    /// A signer with a fresh random key (tokens do not survive a restart).
    pub fn generate() -> Self {
        Self {
            key: SigningKey::random(&mut rand_core::OsRng),
        }
    }

    /// Loads a P-256 PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, JwtError> {
        use p256::pkcs8::DecodePrivateKey as _;
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| JwtError::Key {
                reason: e.to_string(),
            })
    }

    /// The matching verification key.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    /// Signs `claims` (a JSON object) with header `{"alg":"ES256","typ":"JWT"}`.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
        let header = serde_json::to_vec(&header).map_err(JwtError::Encode)?;
        let payload = serde_json::to_vec(claims).map_err(JwtError::Encode)?;
        let signing_input = format!("{}.{}", B64URL.encode(header), B64URL.encode(payload));
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            B64URL.encode(signature.to_bytes())
        ))
    }
}

/// Loads a P-256 public key from SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, JwtError> {
    use p256::pkcs8::DecodePublicKey as _;
    VerifyingKey::from_public_key_pem(pem).map_err(|e| JwtError::Key {
        reason: e.to_string(),
    })
}

/// Verifies an ES256 JWT with `key` at unix time `now` and returns its claims object.
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    now: u64,
    issuer: Option<&str>,
) -> Result<Map<String, Value>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed {
            reason: "token too long",
        });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed {
            reason: "not three parts",
        });
    };
    let header: Map<String, Value> = decode_json(h)?;
    let alg = header.get("alg").and_then(Value::as_str);
    if alg != Some("ES256") {
        return Err(JwtError::Algorithm {
            found: alg.map(str::to_owned),
        });
    }
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let sig_bytes = B64URL.decode(s).map_err(|_| JwtError::Malformed {
        reason: "signature not base64url",
    })?;
    let signature = Signature::from_slice(&sig_bytes).map_err(|_| JwtError::Signature)?;
    let signing_input_len = h.len() + 1 + p.len();
    let signing_input = token
        .get(..signing_input_len)
        .ok_or(JwtError::Malformed { reason: "length" })?;
    key.verify(signing_input.as_bytes(), &signature)
        .map_err(|_| JwtError::Signature)?;
    let claims: Map<String, Value> = decode_json(p)?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(JwtError::Time {
            reason: "exp missing",
        })?;
    if exp.saturating_add(CLOCK_SKEW_SECS) <= now {
        return Err(JwtError::Time { reason: "expired" });
    }
    for claim in ["nbf", "iat"] {
        if let Some(v) = claims.get(claim) {
            let t = v.as_u64().ok_or(JwtError::Time {
                reason: "nbf/iat not a number",
            })?;
            if t > now.saturating_add(CLOCK_SKEW_SECS) {
                return Err(JwtError::Time {
                    reason: "nbf/iat in the future",
                });
            }
        }
    }
    if let Some(expected) = issuer {
        let found = claims.get("iss").and_then(Value::as_str);
        if found != Some(expected) {
            return Err(JwtError::Issuer {
                expected: expected.to_owned(),
                found: found.map(str::to_owned),
            });
        }
    }
    Ok(claims)
}

fn decode_json(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = B64URL.decode(part).map_err(|_| JwtError::Malformed {
        reason: "part not base64url",
    })?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed {
        reason: "part not a json object",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refusals_kbs07() {
        let signer = TokenSigner::generate();
        let claims = serde_json::json!({"iss": "me", "exp": 2000, "iat": 1000});
        let token = signer.sign(&claims).unwrap();
        let key = signer.verifying_key();
        assert!(verify(&token, &key, 1500, Some("me")).is_ok());
        assert!(matches!(
            verify(&token, &key, 2100, None),
            Err(JwtError::Time { .. })
        ));
        assert!(matches!(
            verify(&token, &key, 1500, Some("other")),
            Err(JwtError::Issuer { .. })
        ));
        let foreign = TokenSigner::generate().verifying_key();
        assert!(matches!(
            verify(&token, &foreign, 1500, None),
            Err(JwtError::Signature)
        ));
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let alg_none = format!("{none_header}.{}.", parts[1]);
        assert!(matches!(
            verify(&alg_none, &key, 1500, None),
            Err(JwtError::Algorithm { .. })
        ));
    }
}
