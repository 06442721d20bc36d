//! JSON Web Tokens (RFC 7519 compact JWS): ES256 for attestation tokens (signed and verified
//! here), ES256 or EdDSA (Ed25519, RFC 8037) for admin requests (verified only; the `kbs-client`
//! of Trustee releases with the `simple` admin backend signs its admin tokens with Ed25519, current
//! Trustee forwards a token from an external identity provider instead).
//!
//! Verification trusts exactly the keys chosen by the caller, each bound to one algorithm: the
//! header's `alg` selects the key of that algorithm, so `none`, `HS256`, every other algorithm
//! and an `alg` no configured key has are refused, and header keys (`jwk`, `x5c`, `jku`) are
//! ignored, never used (KBS-07). `exp` is required; `nbf` and `iat` may not lie in the future
//! beyond [`CLOCK_SKEW_SECS`]. The signature primitives are ring's.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::VerifyingKey;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    UnparsedPublicKey,
};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// Largest token accepted (bytes); bigger ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Allowed clock skew for `nbf`/`iat`/`exp`, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// The protected header of every token [`TokenSigner`] issues.
const ES256_HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;
/// `id-Ed25519` (RFC 8410).
const OID_ED25519: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112");

/// Token failures.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("token is malformed: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// The header's `alg` is not the algorithm of any trusted key.
    #[error("token algorithm {found:?} is not one of the trusted keys' ({trusted})")]
    Algorithm {
        /// The header's `alg`.
        found: Option<String>,
        /// The algorithms of the trusted keys, comma-separated.
        trusted: String,
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
    /// Signing failed in the primitive.
    #[error("token could not be signed")]
    Sign,
    /// A PEM key could not be loaded.
    #[error("{alg} key is invalid: {reason}")]
    Key {
        /// The algorithm the key was loaded for.
        alg: Algorithm,
        /// Loader error.
        reason: String,
    },
}

/// The JWS algorithms a [`VerificationKey`] can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 / SHA-256, signature `r || s` (RFC 7518 §3.4).
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Algorithm {
    /// The header's `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key trusted to verify tokens of exactly one algorithm.
#[derive(Debug, Clone)]
pub struct VerificationKey {
    alg: Algorithm,
    /// ES256: the uncompressed SEC1 point; EdDSA: the 32-byte key.
    key: UnparsedPublicKey<Vec<u8>>,
}

impl VerificationKey {
    /// An ES256 key.
    pub fn es256(key: &VerifyingKey) -> Self {
        Self {
            alg: Algorithm::Es256,
            key: UnparsedPublicKey::new(
                &ECDSA_P256_SHA256_FIXED,
                key.to_encoded_point(false).as_bytes().to_vec(),
            ),
        }
    }

    /// An ES256 key from a P-256 SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn es256_from_pem(pem: &str) -> Result<Self, JwtError> {
        use p256::pkcs8::DecodePublicKey as _;
        VerifyingKey::from_public_key_pem(pem)
            .map(|k| Self::es256(&k))
            .map_err(|e| JwtError::Key {
                alg: Algorithm::Es256,
                reason: format!("not a p-256 spki pem: {e}"),
            })
    }

    /// An EdDSA key from an Ed25519 SPKI PEM (RFC 8410, `-----BEGIN PUBLIC KEY-----`), as
    /// the admin key pairs of Trustee's `simple` admin backend are written.
    pub fn ed25519_from_pem(pem: &str) -> Result<Self, JwtError> {
        use x509_cert::der::DecodePem as _;
        let key_err = |reason: String| JwtError::Key {
            alg: Algorithm::EdDsa,
            reason,
        };
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_pem(pem)
            .map_err(|e| key_err(format!("not an spki pem: {e}")))?;
        if spki.algorithm.oid != OID_ED25519 || spki.algorithm.parameters.is_some() {
            return Err(key_err(format!(
                "algorithm {} is not id-Ed25519",
                spki.algorithm.oid
            )));
        }
        let raw = spki
            .subject_public_key
            .as_bytes()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| key_err("public key is not 32 bytes".into()))?;
        Ok(Self {
            alg: Algorithm::EdDsa,
            key: UnparsedPublicKey::new(&ED25519, raw.to_vec()),
        })
    }

    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// Signs claims as an ES256 JWT (ring). The key lives as long as the broker; ring does not
/// zeroize it on drop (the scalar copy it is loaded from is zeroized).
pub struct TokenSigner {
    key: EcdsaKeyPair,
    public: VerifyingKey,
    rng: SystemRandom,
    /// base64url of [`ES256_HEADER`].
    header: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner([REDACTED])")
    }
}

impl TokenSigner {
    /// A signer with a fresh random key (tokens do not survive a restart).
    pub fn generate() -> Result<Self, JwtError> {
        Self::from_secret(&p256::SecretKey::random(&mut rand_core::OsRng))
    }

    /// Loads a P-256 PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, JwtError> {
        use p256::pkcs8::DecodePrivateKey as _;
        let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| JwtError::Key {
            alg: Algorithm::Es256,
            reason: format!("not a p-256 pkcs#8 pem: {e}"),
        })?;
        Self::from_secret(&secret)
    }

    fn from_secret(secret: &p256::SecretKey) -> Result<Self, JwtError> {
        let public = secret.public_key();
        let scalar = Zeroizing::new(secret.to_bytes());
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            scalar.as_slice(),
            public.to_encoded_point(false).as_bytes(),
            &rng,
        )
        .map_err(|e| JwtError::Key {
            alg: Algorithm::Es256,
            reason: e.to_string(),
        })?;
        Ok(Self {
            key,
            public: VerifyingKey::from(public),
            rng,
            header: B64URL.encode(ES256_HEADER),
        })
    }

    /// The matching verification key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.public
    }

    /// The matching verification key, as [`verify`] takes it.
    pub fn verification_key(&self) -> VerificationKey {
        VerificationKey::es256(&self.public)
    }

    /// Signs `claims` (a JSON object) with header `{"alg":"ES256","typ":"JWT"}`.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let payload = serde_json::to_vec(claims).map_err(JwtError::Encode)?;
        // header.payload.signature: 86 base64url characters for the 64-byte signature.
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 92);
        token.push_str(&self.header);
        token.push('.');
        B64URL.encode_string(payload, &mut token);
        let signature = self
            .key
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| JwtError::Sign)?;
        token.push('.');
        B64URL.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// Verifies a JWT with the one key in `keys` whose algorithm the header names, at unix time
/// `now`, and returns its claims object.
pub fn verify(
    token: &str,
    keys: &[VerificationKey],
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
    let Some(key) = keys.iter().find(|k| Some(k.alg.as_str()) == alg) else {
        return Err(JwtError::Algorithm {
            found: alg.map(str::to_owned),
            trusted: keys
                .iter()
                .map(|k| k.alg.as_str())
                .collect::<Vec<_>>()
                .join(","),
        });
    };
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let signature = B64URL.decode(s).map_err(|_| JwtError::Malformed {
        reason: "signature not base64url",
    })?;
    let signing_input_len = h.len() + 1 + p.len();
    let signing_input = token
        .get(..signing_input_len)
        .ok_or(JwtError::Malformed { reason: "length" })?;
    key.key
        .verify(signing_input.as_bytes(), &signature)
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
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    /// RFC 8410 §10.1: an Ed25519 SPKI public key.
    const RFC8410_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
        -----END PUBLIC KEY-----\n";

    fn ed25519_pair() -> Ed25519KeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn ed25519_pem(pair: &Ed25519KeyPair) -> String {
        use x509_cert::der::EncodePem as _;
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned {
            algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
                oid: OID_ED25519,
                parameters: None,
            },
            subject_public_key: x509_cert::der::asn1::BitString::from_bytes(
                pair.public_key().as_ref(),
            )
            .unwrap(),
        };
        spki.to_pem(x509_cert::der::pem::LineEnding::LF).unwrap()
    }

    /// A compact JWS with `header` over `claims`, signed by `pair` (as the kbs-client of Trustee's
    /// `simple` admin backend signs admin tokens: `{"alg":"EdDSA","typ":"JWT"}`).
    fn eddsa_token(header: &str, claims: &Value, pair: &Ed25519KeyPair) -> String {
        let input = format!(
            "{}.{}",
            B64URL.encode(header),
            B64URL.encode(claims.to_string())
        );
        let sig = pair.sign(input.as_bytes());
        format!("{input}.{}", B64URL.encode(sig.as_ref()))
    }

    #[test]
    fn sign_verify_and_refusals_kbs07() {
        let signer = TokenSigner::generate().unwrap();
        let claims = serde_json::json!({"iss": "me", "exp": 2000, "iat": 1000});
        let token = signer.sign(&claims).unwrap();
        let key = [signer.verification_key()];
        assert!(verify(&token, &key, 1500, Some("me")).is_ok());
        assert!(matches!(
            verify(&token, &key, 2100, None),
            Err(JwtError::Time { .. })
        ));
        assert!(matches!(
            verify(&token, &key, 1500, Some("other")),
            Err(JwtError::Issuer { .. })
        ));
        let foreign = [TokenSigner::generate().unwrap().verification_key()];
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
        // The signature is ring's fixed-width r || s, as RFC 7518 §3.4 requires.
        assert_eq!(B64URL.decode(parts[2]).unwrap().len(), 64);
        assert_eq!(
            B64URL.decode(parts[0]).unwrap(),
            br#"{"alg":"ES256","typ":"JWT"}"#
        );
    }

    #[test]
    fn ed25519_spki_pem_loads_and_other_keys_are_refused() {
        let key = VerificationKey::ed25519_from_pem(RFC8410_PUBLIC_PEM).unwrap();
        assert_eq!(key.algorithm(), Algorithm::EdDsa);
        let p256_pem = {
            use p256::pkcs8::{EncodePublicKey as _, LineEnding};
            TokenSigner::generate()
                .unwrap()
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        };
        assert!(matches!(
            VerificationKey::ed25519_from_pem(&p256_pem),
            Err(JwtError::Key {
                alg: Algorithm::EdDsa,
                ..
            })
        ));
        assert!(matches!(
            VerificationKey::es256_from_pem(RFC8410_PUBLIC_PEM),
            Err(JwtError::Key {
                alg: Algorithm::Es256,
                ..
            })
        ));
        assert!(VerificationKey::ed25519_from_pem("not a pem").is_err());
    }

    #[test]
    fn eddsa_tokens_verify_against_the_ed25519_key_only_kbs07() {
        let pair = ed25519_pair();
        let ed = VerificationKey::ed25519_from_pem(&ed25519_pem(&pair)).unwrap();
        let es = TokenSigner::generate().unwrap();
        let keys = [es.verification_key(), ed.clone()];
        let header = r#"{"alg":"EdDSA","typ":"JWT"}"#;
        let claims = serde_json::json!({"iat": 1000, "nbf": 1000, "exp": 2000});
        let token = eddsa_token(header, &claims, &pair);
        assert!(verify(&token, &keys, 1500, None).is_ok());
        assert!(verify(&token, std::slice::from_ref(&ed), 1500, None).is_ok());
        // No EdDSA key trusted: refused by algorithm, whatever the signature.
        assert!(matches!(
            verify(&token, &[es.verification_key()], 1500, None),
            Err(JwtError::Algorithm { found: Some(a), .. }) if a == "EdDSA"
        ));
        // Expired, and not yet valid.
        assert!(matches!(
            verify(&token, &keys, 2100, None),
            Err(JwtError::Time { .. })
        ));
        assert!(matches!(
            verify(&token, &keys, 100, None),
            Err(JwtError::Time { .. })
        ));
        // A foreign Ed25519 signer.
        let foreign = eddsa_token(header, &claims, &ed25519_pair());
        assert!(matches!(
            verify(&foreign, &keys, 1500, None),
            Err(JwtError::Signature)
        ));
        // alg/key mismatch both ways: an Ed25519 signature labelled ES256, an ES256 signature
        // labelled EdDSA.
        let relabelled = eddsa_token(r#"{"alg":"ES256","typ":"JWT"}"#, &claims, &pair);
        assert!(matches!(
            verify(&relabelled, &keys, 1500, None),
            Err(JwtError::Signature)
        ));
        let es_token = es.sign(&claims).unwrap();
        let es_parts: Vec<&str> = es_token.split('.').collect();
        let as_eddsa = format!("{}.{}.{}", B64URL.encode(header), es_parts[1], es_parts[2]);
        assert!(matches!(
            verify(&as_eddsa, &keys, 1500, None),
            Err(JwtError::Signature)
        ));
        // alg none, lower-case variants and a missing alg.
        for alg in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"eddsa"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            let parts: Vec<&str> = token.split('.').collect();
            let forged = format!("{}.{}.{}", B64URL.encode(alg), parts[1], parts[2]);
            assert!(matches!(
                verify(&forged, &keys, 1500, None),
                Err(JwtError::Algorithm { .. })
            ));
        }
        let unsigned = format!("{}.{}.", B64URL.encode(r#"{"alg":"none"}"#), {
            B64URL.encode(claims.to_string())
        });
        assert!(verify(&unsigned, &keys, 1500, None).is_err());
        // A critical header extension is refused even with a valid signature.
        let crit = eddsa_token(
            r#"{"alg":"EdDSA","crit":["b64"],"b64":false}"#,
            &claims,
            &pair,
        );
        assert!(matches!(
            verify(&crit, &keys, 1500, None),
            Err(JwtError::Critical)
        ));
    }
}
