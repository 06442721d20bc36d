//! JWE (RFC 7516, flattened JSON) for resource replies: `ECDH-ES+A256KW` (P-256) or
//! `RSA-OAEP-256`, content encrypted with `A256GCM`, AAD = ASCII of the protected header as sent.
//! Only well-kept primitives are used: RustCrypto (p256, rsa, concat-kdf, aes-kw, aes-gcm) and,
//! for the broker's single-use ECDH-ES half, ring's ephemeral agreement; this module only lays
//! out their inputs as RFC 7518 §4.6 and §5.3 prescribe.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use rand_core::{OsRng, RngCore};
use ring::agreement;
use ring::rand::SystemRandom;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::types::{
    ALG_ECDH_ES_A256KW, ALG_RSA_OAEP_256, ENC_A256GCM, EphemeralKey, ProtectedHeader, Response,
    TeePubKey,
};

/// Smallest RSA modulus this crate *generates* for a TEE key.
pub const RSA_GENERATED_BITS: usize = 3072;
/// Smallest RSA modulus accepted from a peer (Trustee's own attester uses 2048-bit keys).
pub const RSA_MIN_ACCEPTED_BITS: usize = 2048;
const CURVE_P256: &str = "P-256";
const CEK_LEN: usize = 32;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// JWE failures. Decryption failures never carry partial plaintext.
#[derive(Debug, thiserror::Error)]
pub enum JweError {
    /// A base64url field did not decode.
    #[error("jwe field {field} is not base64url")]
    Base64 {
        /// The field.
        field: &'static str,
        /// The decoder error.
        #[source]
        source: base64::DecodeError,
    },
    /// The protected header is not the expected JSON.
    #[error("jwe protected header is malformed")]
    Header(#[source] serde_json::Error),
    /// The header names an algorithm this key cannot or must not use.
    #[error("jwe algorithm {alg}/{enc} does not match the tee key ({expected})")]
    Algorithm {
        /// Header `alg`.
        alg: String,
        /// Header `enc`.
        enc: String,
        /// What the key requires.
        expected: &'static str,
    },
    /// A public key (JWK or `epk`) is not a valid key of the stated type.
    #[error("invalid public key: {reason}")]
    PublicKey {
        /// What is wrong.
        reason: String,
    },
    /// Unwrapping or decrypting failed (wrong key, tampered field, wrong lengths).
    #[error("jwe decryption failed at {stage}")]
    Decrypt {
        /// Which step failed.
        stage: &'static str,
    },
    /// Encryption failed.
    #[error("jwe encryption failed at {stage}")]
    Encrypt {
        /// Which step failed.
        stage: &'static str,
    },
    /// Generating or loading a TEE key failed.
    #[error("tee key: {reason}")]
    Key {
        /// What failed.
        reason: String,
    },
}

/// The private half of the ephemeral TEE key. `Debug` never shows key material.
pub enum TeeKeyPair {
    /// P-256, used with `ECDH-ES+A256KW`.
    Ec(p256::SecretKey),
    /// RSA, used with `RSA-OAEP-256`.
    Rsa(Box<RsaPrivateKey>),
}

impl std::fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ec(_) => f.write_str("TeeKeyPair::Ec([REDACTED])"),
            Self::Rsa(k) => write!(f, "TeeKeyPair::Rsa({} bits, [REDACTED])", k.size() * 8),
        }
    }
}

impl TeeKeyPair {
    /// A fresh P-256 key from the OS CSPRNG.
    pub fn generate_ec() -> Self {
        Self::Ec(p256::SecretKey::random(&mut OsRng))
    }

    /// A fresh RSA key of [`RSA_GENERATED_BITS`] (or more) bits.
    pub fn generate_rsa(bits: usize) -> Result<Self, JweError> {
        if bits < RSA_GENERATED_BITS {
            return Err(JweError::Key {
                reason: format!("rsa keys must have at least {RSA_GENERATED_BITS} bits"),
            });
        }
        RsaPrivateKey::new(&mut OsRng, bits)
            .map(|k| Self::Rsa(Box::new(k)))
            .map_err(|e| JweError::Key {
                reason: e.to_string(),
            })
    }

    /// Loads a PKCS#8 DER private key (P-256 or RSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JweError> {
        use p256::pkcs8::DecodePrivateKey as _;
        if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
            return Ok(Self::Ec(k));
        }
        RsaPrivateKey::from_pkcs8_der(der)
            .map(|k| Self::Rsa(Box::new(k)))
            .map_err(|e| JweError::Key {
                reason: format!("not a p-256 or rsa pkcs#8 key: {e}"),
            })
    }

    /// The public key as the JWK sent in `runtime-data.tee-pubkey`.
    pub fn public_jwk(&self) -> TeePubKey {
        match self {
            Self::Ec(k) => {
                let point = k.public_key().to_encoded_point(false);
                let coord =
                    |c: Option<&p256::FieldBytes>| c.map(|b| B64URL.encode(b)).unwrap_or_default();
                TeePubKey::Ec {
                    crv: CURVE_P256.to_owned(),
                    alg: ALG_ECDH_ES_A256KW.to_owned(),
                    x: coord(point.x()),
                    y: coord(point.y()),
                }
            }
            Self::Rsa(k) => TeePubKey::Rsa {
                alg: ALG_RSA_OAEP_256.to_owned(),
                n: B64URL.encode(k.n().to_bytes_be()),
                e: B64URL.encode(k.e().to_bytes_be()),
            },
        }
    }

    /// Decrypts a resource reply addressed to this key. Checks `alg`/`enc` against the key type
    /// first; any failure returns an error and no plaintext (KBS-08).
    pub fn decrypt(&self, jwe: &Response) -> Result<Zeroizing<Vec<u8>>, JweError> {
        let header_json = decode("protected", &jwe.protected)?;
        let header: ProtectedHeader =
            serde_json::from_slice(&header_json).map_err(JweError::Header)?;
        let expected = match self {
            Self::Ec(_) => ALG_ECDH_ES_A256KW,
            Self::Rsa(_) => ALG_RSA_OAEP_256,
        };
        if header.alg != expected || header.enc != ENC_A256GCM {
            return Err(JweError::Algorithm {
                alg: header.alg,
                enc: header.enc,
                expected,
            });
        }
        let encrypted_key = decode("encrypted_key", &jwe.encrypted_key)?;
        let cek: Zeroizing<Vec<u8>> = match self {
            Self::Ec(secret) => {
                let epk = header.epk.as_ref().ok_or_else(|| JweError::PublicKey {
                    reason: "ecdh-es header without epk".into(),
                })?;
                let peer = ec_public_key(&epk.crv, &epk.x, &epk.y)?;
                let shared =
                    p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
                let kek = derive_kek(shared.raw_secret_bytes(), &header)?;
                let kw = aes_kw::KekAes256::from(*kek);
                Zeroizing::new(
                    kw.unwrap_vec(&encrypted_key)
                        .map_err(|_| JweError::Decrypt {
                            stage: "key unwrap",
                        })?,
                )
            }
            Self::Rsa(key) => Zeroizing::new(
                key.decrypt(Oaep::new::<Sha256>(), &encrypted_key)
                    .map_err(|_| JweError::Decrypt { stage: "rsa-oaep" })?,
            ),
        };
        if cek.len() != CEK_LEN {
            return Err(JweError::Decrypt {
                stage: "cek length",
            });
        }
        let iv = decode("iv", &jwe.iv)?;
        let tag = decode("tag", &jwe.tag)?;
        if iv.len() != IV_LEN || tag.len() != TAG_LEN {
            return Err(JweError::Decrypt {
                stage: "iv or tag length",
            });
        }
        let mut msg = decode("ciphertext", &jwe.ciphertext)?;
        msg.extend_from_slice(&tag);
        let cipher =
            Aes256Gcm::new_from_slice(&cek).map_err(|_| JweError::Decrypt { stage: "cek" })?;
        cipher
            .decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &msg,
                    aad: jwe.protected.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| JweError::Decrypt { stage: "a256gcm" })
    }
}

/// Encrypts `plaintext` to a TEE public key (the broker side).
pub fn encrypt(recipient: &TeePubKey, plaintext: &[u8]) -> Result<Response, JweError> {
    let mut cek = Zeroizing::new([0u8; CEK_LEN]);
    OsRng.fill_bytes(cek.as_mut());
    let (header, encrypted_key) = match recipient {
        TeePubKey::Ec { crv, alg, x, y } => {
            if alg != ALG_ECDH_ES_A256KW {
                return Err(JweError::Algorithm {
                    alg: alg.clone(),
                    enc: ENC_A256GCM.into(),
                    expected: ALG_ECDH_ES_A256KW,
                });
            }
            let peer = ec_public_key(crv, x, y)?.to_encoded_point(false);
            // The broker's half of ECDH-ES is single-use: ring's ephemeral agreement fits it.
            let rng = SystemRandom::new();
            let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
                .map_err(|_| JweError::Encrypt {
                stage: "ephemeral key",
            })?;
            let epk = ephemeral
                .compute_public_key()
                .map_err(|_| JweError::Encrypt {
                    stage: "ephemeral key",
                })?;
            // Uncompressed SEC1: 0x04 || x (32) || y (32).
            let (epk_x, epk_y) = match epk.as_ref() {
                [0x04, xy @ ..] if xy.len() == 64 => xy.split_at(32),
                _ => {
                    return Err(JweError::Encrypt {
                        stage: "ephemeral key",
                    });
                }
            };
            let header = ProtectedHeader {
                alg: ALG_ECDH_ES_A256KW.into(),
                enc: ENC_A256GCM.into(),
                epk: Some(EphemeralKey {
                    crv: CURVE_P256.into(),
                    kty: "EC".into(),
                    x: B64URL.encode(epk_x),
                    y: B64URL.encode(epk_y),
                }),
                ..ProtectedHeader::default()
            };
            let kek = agreement::agree_ephemeral(
                ephemeral,
                &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer.as_bytes()),
                |z| derive_kek(z, &header),
            )
            .map_err(|_| JweError::PublicKey {
                reason: "ecdh with the tee key failed".into(),
            })??;
            let wrapped = aes_kw::KekAes256::from(*kek)
                .wrap_vec(cek.as_ref())
                .map_err(|_| JweError::Encrypt { stage: "key wrap" })?;
            (header, wrapped)
        }
        TeePubKey::Rsa { alg, n, e } => {
            if alg != ALG_RSA_OAEP_256 {
                return Err(JweError::Algorithm {
                    alg: alg.clone(),
                    enc: ENC_A256GCM.into(),
                    expected: ALG_RSA_OAEP_256,
                });
            }
            let key = rsa_public_key(n, e)?;
            let wrapped = key
                .encrypt(&mut OsRng, Oaep::new::<Sha256>(), cek.as_ref())
                .map_err(|_| JweError::Encrypt { stage: "rsa-oaep" })?;
            let header = ProtectedHeader {
                alg: ALG_RSA_OAEP_256.into(),
                enc: ENC_A256GCM.into(),
                ..ProtectedHeader::default()
            };
            (header, wrapped)
        }
    };
    let header_json =
        serde_json::to_vec(&header).map_err(|_| JweError::Encrypt { stage: "header" })?;
    let protected = B64URL.encode(header_json);
    let mut iv = [0u8; IV_LEN];
    OsRng.fill_bytes(&mut iv);
    let cipher =
        Aes256Gcm::new_from_slice(cek.as_ref()).map_err(|_| JweError::Encrypt { stage: "cek" })?;
    let mut sealed = cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| JweError::Encrypt { stage: "a256gcm" })?;
    let tag = sealed.split_off(sealed.len().saturating_sub(TAG_LEN));
    Ok(Response {
        protected,
        encrypted_key: B64URL.encode(encrypted_key),
        iv: B64URL.encode(iv),
        ciphertext: B64URL.encode(sealed),
        tag: B64URL.encode(tag),
    })
}

/// Checks that a `tee-pubkey` is a usable key of its stated type (broker side, before binding).
pub fn validate_tee_pubkey(key: &TeePubKey) -> Result<(), JweError> {
    match key {
        TeePubKey::Ec { crv, alg, x, y } => {
            if alg != ALG_ECDH_ES_A256KW {
                return Err(JweError::PublicKey {
                    reason: format!("ec key with alg {alg}"),
                });
            }
            ec_public_key(crv, x, y).map(|_| ())
        }
        TeePubKey::Rsa { alg, n, e } => {
            if alg != ALG_RSA_OAEP_256 {
                return Err(JweError::PublicKey {
                    reason: format!("rsa key with alg {alg}"),
                });
            }
            rsa_public_key(n, e).map(|_| ())
        }
    }
}

fn decode(field: &'static str, value: &str) -> Result<Vec<u8>, JweError> {
    B64URL
        .decode(value)
        .map_err(|source| JweError::Base64 { field, source })
}

fn ec_public_key(crv: &str, x: &str, y: &str) -> Result<p256::PublicKey, JweError> {
    if crv != CURVE_P256 {
        return Err(JweError::PublicKey {
            reason: format!("curve {crv} is not P-256"),
        });
    }
    let x = decode("x", x)?;
    let y = decode("y", y)?;
    if x.len() != 32 || y.len() != 32 {
        return Err(JweError::PublicKey {
            reason: "p-256 coordinates must be 32 bytes".into(),
        });
    }
    let point = p256::EncodedPoint::from_affine_coordinates(
        p256::FieldBytes::from_slice(&x),
        p256::FieldBytes::from_slice(&y),
        false,
    );
    Option::from(p256::PublicKey::from_encoded_point(&point)).ok_or_else(|| JweError::PublicKey {
        reason: "point is not on p-256".into(),
    })
}

fn rsa_public_key(n: &str, e: &str) -> Result<RsaPublicKey, JweError> {
    let n = BigUint::from_bytes_be(&decode("n", n)?);
    let e = BigUint::from_bytes_be(&decode("e", e)?);
    let key = RsaPublicKey::new(n, e).map_err(|err| JweError::PublicKey {
        reason: err.to_string(),
    })?;
    if key.size() * 8 < RSA_MIN_ACCEPTED_BITS {
        return Err(JweError::PublicKey {
            reason: format!("rsa modulus below {RSA_MIN_ACCEPTED_BITS} bits"),
        });
    }
    Ok(key)
}

/// RFC 7518 §4.6.2: Concat KDF (SHA-256) with AlgorithmID = `alg`, PartyUInfo = `apu`,
/// PartyVInfo = `apv`, SuppPubInfo = key length in bits (256 for A256KW).
fn derive_kek(z: &[u8], header: &ProtectedHeader) -> Result<Zeroizing<[u8; 32]>, JweError> {
    let apu = match &header.apu {
        Some(v) => decode("apu", v)?,
        None => Vec::new(),
    };
    let apv = match &header.apv {
        Some(v) => decode("apv", v)?,
        None => Vec::new(),
    };
    let mut other_info = Vec::with_capacity(64);
    for part in [header.alg.as_bytes(), &apu, &apv] {
        let len = u32::try_from(part.len()).map_err(|_| JweError::Decrypt { stage: "kdf" })?;
        other_info.extend_from_slice(&len.to_be_bytes());
        other_info.extend_from_slice(part);
    }
    other_info.extend_from_slice(&256u32.to_be_bytes());
    let mut kek = Zeroizing::new([0u8; 32]);
    concat_kdf::derive_key_into::<Sha256>(z, &other_info, kek.as_mut())
        .map_err(|_| JweError::Decrypt { stage: "kdf" })?;
    Ok(kek)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_round_trip_and_tamper_kbs08() {
        let key = TeeKeyPair::generate_ec();
        let jwe = encrypt(&key.public_jwk(), b"secret bytes").unwrap();
        assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), b"secret bytes");
        let mut bad = jwe.clone();
        bad.tag = B64URL.encode([0u8; 16]);
        assert!(key.decrypt(&bad).is_err());
        let other = TeeKeyPair::generate_ec();
        assert!(other.decrypt(&jwe).is_err());
    }

    #[test]
    fn debug_redacts_key() {
        let key = TeeKeyPair::generate_ec();
        assert_eq!(format!("{key:?}"), "TeeKeyPair::Ec([REDACTED])");
    }
}
