//! JWE (RFC 7516, flattened JSON) for resource replies: `ECDH-ES+A256KW` (P-256 or P-521, as
//! Trustee accepts) or `RSA-OAEP-256`, content encrypted with `A256GCM`, AAD = ASCII of the
//! protected header as sent. Only well-kept primitives are used: RustCrypto (p256, p521, rsa,
//! concat-kdf, aes-kw, aes-gcm) and, for the broker's single-use ECDH-ES half on P-256, ring's
//! ephemeral agreement (ring has no P-521: that half is RustCrypto's `p521::ecdh`); this module
//! only lays out their inputs as RFC 7518 §4.6 and §5.3 prescribe. The `epk` is always on the
//! TEE key's curve; any other curve is [`JweError::UnsupportedCurve`].

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
/// JWK `crv` of a P-256 TEE key (the one this crate generates by default).
pub const CURVE_P256: &str = "P-256";
/// JWK `crv` of a P-521 TEE key (Trustee's other `ECDH-ES+A256KW` curve).
pub const CURVE_P521: &str = "P-521";
/// Coordinate length of a P-256 point.
const P256_COORD_LEN: usize = 32;
/// Coordinate length of a P-521 point (521 bits, big-endian, left-padded).
const P521_COORD_LEN: usize = 66;
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
    /// An EC key (JWK or `epk`) names a curve `ECDH-ES+A256KW` is not done on here: only
    /// [`CURVE_P256`] and [`CURVE_P521`] are, as with Trustee.
    #[error("ec curve {crv:?} is not supported for ECDH-ES+A256KW (P-256 or P-521)")]
    UnsupportedCurve {
        /// The `crv` received.
        crv: String,
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
    /// P-521, used with `ECDH-ES+A256KW`.
    EcP521(p521::SecretKey),
    /// RSA, used with `RSA-OAEP-256`.
    Rsa(Box<RsaPrivateKey>),
}

impl std::fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ec(_) => f.write_str("TeeKeyPair::Ec([REDACTED])"),
            Self::EcP521(_) => f.write_str("TeeKeyPair::EcP521([REDACTED])"),
            Self::Rsa(k) => write!(f, "TeeKeyPair::Rsa({} bits, [REDACTED])", k.size() * 8),
        }
    }
}

impl TeeKeyPair {
    /// A fresh P-256 key from the OS CSPRNG.
    pub fn generate_ec() -> Self {
        Self::Ec(p256::SecretKey::random(&mut OsRng))
    }

    /// A fresh P-521 key from the OS CSPRNG.
    pub fn generate_ec_p521() -> Self {
        Self::EcP521(p521::SecretKey::random(&mut OsRng))
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
            Self::EcP521(k) => {
                let point = k.public_key().to_encoded_point(false);
                let coord =
                    |c: Option<&p521::FieldBytes>| c.map(|b| B64URL.encode(b)).unwrap_or_default();
                TeePubKey::Ec {
                    crv: CURVE_P521.to_owned(),
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
            Self::Ec(_) | Self::EcP521(_) => ALG_ECDH_ES_A256KW,
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
            Self::Ec(_) | Self::EcP521(_) => {
                let epk = header.epk.as_ref().ok_or_else(|| JweError::PublicKey {
                    reason: "ecdh-es header without epk".into(),
                })?;
                // The sender's ephemeral key must be on this key's curve.
                let kek = match (self, ec_public_key(&epk.crv, &epk.x, &epk.y)?) {
                    (Self::Ec(secret), EcPublicKey::P256(peer)) => {
                        let shared = p256::ecdh::diffie_hellman(
                            secret.to_nonzero_scalar(),
                            peer.as_affine(),
                        );
                        derive_kek(shared.raw_secret_bytes(), &header)?
                    }
                    (Self::EcP521(secret), EcPublicKey::P521(peer)) => {
                        let shared = p521::ecdh::diffie_hellman(
                            secret.to_nonzero_scalar(),
                            peer.as_affine(),
                        );
                        derive_kek(shared.raw_secret_bytes(), &header)?
                    }
                    _ => {
                        return Err(JweError::PublicKey {
                            reason: format!("epk curve {} is not the tee key's curve", epk.crv),
                        });
                    }
                };
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
            let (epk, z) = match ec_public_key(crv, x, y)? {
                EcPublicKey::P256(peer) => agree_p256(&peer)?,
                EcPublicKey::P521(peer) => agree_p521(&peer)?,
            };
            let header = ProtectedHeader {
                alg: ALG_ECDH_ES_A256KW.into(),
                enc: ENC_A256GCM.into(),
                epk: Some(epk),
                ..ProtectedHeader::default()
            };
            let kek = derive_kek(&z, &header)?;
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

/// An EC public key on one of the curves `ECDH-ES+A256KW` is done on.
enum EcPublicKey {
    P256(p256::PublicKey),
    P521(p521::PublicKey),
}

/// Parses a JWK's (or `epk`'s) `crv`, `x`, `y`: coordinates of exactly the curve's length, a
/// point on the curve (the identity cannot be encoded in affine coordinates).
fn ec_public_key(crv: &str, x: &str, y: &str) -> Result<EcPublicKey, JweError> {
    let len = match crv {
        CURVE_P256 => P256_COORD_LEN,
        CURVE_P521 => P521_COORD_LEN,
        _ => {
            return Err(JweError::UnsupportedCurve {
                crv: crv.to_owned(),
            });
        }
    };
    let x = decode("x", x)?;
    let y = decode("y", y)?;
    if x.len() != len || y.len() != len {
        return Err(JweError::PublicKey {
            reason: format!("{crv} coordinates must be {len} bytes"),
        });
    }
    let not_on_curve = || JweError::PublicKey {
        reason: format!("point is not on {crv}"),
    };
    if crv == CURVE_P256 {
        let point = p256::EncodedPoint::from_affine_coordinates(
            p256::FieldBytes::from_slice(&x),
            p256::FieldBytes::from_slice(&y),
            false,
        );
        Option::from(p256::PublicKey::from_encoded_point(&point))
            .map(EcPublicKey::P256)
            .ok_or_else(not_on_curve)
    } else {
        let point = p521::EncodedPoint::from_affine_coordinates(
            p521::FieldBytes::from_slice(&x),
            p521::FieldBytes::from_slice(&y),
            false,
        );
        Option::from(p521::PublicKey::from_encoded_point(&point))
            .map(EcPublicKey::P521)
            .ok_or_else(not_on_curve)
    }
}

/// The broker's ephemeral half on P-256 (ring: single-use keys): the `epk` and the shared
/// secret Z.
fn agree_p256(peer: &p256::PublicKey) -> Result<(EphemeralKey, Zeroizing<Vec<u8>>), JweError> {
    let peer = peer.to_encoded_point(false);
    let rng = SystemRandom::new();
    let ephemeral_failed = || JweError::Encrypt {
        stage: "ephemeral key",
    };
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| ephemeral_failed())?;
    let public = ephemeral
        .compute_public_key()
        .map_err(|_| ephemeral_failed())?;
    // Uncompressed SEC1: 0x04 || x (32) || y (32).
    let (epk_x, epk_y) = match public.as_ref() {
        [0x04, xy @ ..] if xy.len() == 2 * P256_COORD_LEN => xy.split_at(P256_COORD_LEN),
        _ => return Err(ephemeral_failed()),
    };
    let epk = EphemeralKey {
        crv: CURVE_P256.into(),
        kty: "EC".into(),
        x: B64URL.encode(epk_x),
        y: B64URL.encode(epk_y),
    };
    let z = agreement::agree_ephemeral(
        ephemeral,
        &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer.as_bytes()),
        |z| Zeroizing::new(z.to_vec()),
    )
    .map_err(|_| JweError::PublicKey {
        reason: "ecdh with the tee key failed".into(),
    })?;
    Ok((epk, z))
}

/// The broker's ephemeral half on P-521 (RustCrypto; ring has no P-521 agreement): the `epk`
/// and the shared secret Z (66 bytes).
fn agree_p521(peer: &p521::PublicKey) -> Result<(EphemeralKey, Zeroizing<Vec<u8>>), JweError> {
    let ephemeral = p521::ecdh::EphemeralSecret::random(&mut OsRng);
    let point = ephemeral.public_key().to_encoded_point(false);
    let (Some(epk_x), Some(epk_y)) = (point.x(), point.y()) else {
        return Err(JweError::Encrypt {
            stage: "ephemeral key",
        });
    };
    let epk = EphemeralKey {
        crv: CURVE_P521.into(),
        kty: "EC".into(),
        x: B64URL.encode(epk_x),
        y: B64URL.encode(epk_y),
    };
    let shared = ephemeral.diffie_hellman(peer);
    Ok((epk, Zeroizing::new(shared.raw_secret_bytes().to_vec())))
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
        let key = TeeKeyPair::generate_ec_p521();
        assert_eq!(format!("{key:?}"), "TeeKeyPair::EcP521([REDACTED])");
    }

    fn header_of(jwe: &Response) -> ProtectedHeader {
        serde_json::from_slice(&B64URL.decode(&jwe.protected).unwrap()).unwrap()
    }

    #[test]
    fn p521_jwk_has_66_byte_coordinates_and_is_accepted() {
        let jwk = TeeKeyPair::generate_ec_p521().public_jwk();
        let TeePubKey::Ec { crv, alg, x, y } = &jwk else {
            panic!("not an ec jwk: {jwk:?}");
        };
        assert_eq!(
            (crv.as_str(), alg.as_str()),
            (CURVE_P521, ALG_ECDH_ES_A256KW)
        );
        assert_eq!(B64URL.decode(x).unwrap().len(), 66);
        assert_eq!(B64URL.decode(y).unwrap().len(), 66);
        validate_tee_pubkey(&jwk).unwrap();
    }

    #[test]
    fn p521_wrap_unwrap_round_trip_and_tamper() {
        let key = TeeKeyPair::generate_ec_p521();
        let jwe = encrypt(&key.public_jwk(), b"p-521 secret").unwrap();
        // The broker's ephemeral key is on the TEE key's curve, as Trustee sends it.
        let epk = header_of(&jwe).epk.unwrap();
        assert_eq!((epk.crv.as_str(), epk.kty.as_str()), (CURVE_P521, "EC"));
        assert_eq!(B64URL.decode(&epk.x).unwrap().len(), 66);
        // A256KW of a 32-byte CEK: 40 bytes.
        assert_eq!(B64URL.decode(&jwe.encrypted_key).unwrap().len(), 40);
        assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), b"p-521 secret");

        let mut bad = jwe.clone();
        bad.ciphertext = B64URL.encode(b"tampered....");
        assert!(matches!(
            key.decrypt(&bad),
            Err(JweError::Decrypt { stage: "a256gcm" })
        ));
        let mut bad = jwe.clone();
        let mut wrapped = B64URL.decode(&jwe.encrypted_key).unwrap();
        wrapped[0] ^= 1;
        bad.encrypted_key = B64URL.encode(wrapped);
        assert!(matches!(
            key.decrypt(&bad),
            Err(JweError::Decrypt {
                stage: "key unwrap"
            })
        ));
        // Another P-521 key, and a P-256 key, cannot open it.
        assert!(TeeKeyPair::generate_ec_p521().decrypt(&jwe).is_err());
        assert!(matches!(
            TeeKeyPair::generate_ec().decrypt(&jwe),
            Err(JweError::PublicKey { .. })
        ));
    }

    #[test]
    fn p256_key_refuses_a_p521_epk_and_p521_key_a_p256_epk() {
        let p256 = TeeKeyPair::generate_ec();
        let p521 = TeeKeyPair::generate_ec_p521();
        let to_p256 = encrypt(&p256.public_jwk(), b"x").unwrap();
        let to_p521 = encrypt(&p521.public_jwk(), b"x").unwrap();
        for (key, jwe) in [(&p521, &to_p256), (&p256, &to_p521)] {
            let err = key.decrypt(jwe).unwrap_err();
            assert!(
                err.to_string().contains("is not the tee key's curve"),
                "{err}"
            );
        }
    }

    #[test]
    fn other_curves_are_refused_with_a_typed_error() {
        let p521 = TeeKeyPair::generate_ec_p521().public_jwk();
        let TeePubKey::Ec { x, y, .. } = p521 else {
            panic!()
        };
        for crv in ["P-384", "secp256k1", "X25519", "p-521", ""] {
            let jwk = TeePubKey::Ec {
                crv: crv.into(),
                alg: ALG_ECDH_ES_A256KW.into(),
                x: x.clone(),
                y: y.clone(),
            };
            for err in [
                validate_tee_pubkey(&jwk).unwrap_err(),
                encrypt(&jwk, b"x").unwrap_err(),
            ] {
                assert!(
                    matches!(&err, JweError::UnsupportedCurve { crv: c } if c == crv),
                    "{crv}: {err:?}"
                );
            }
        }
        assert_eq!(
            JweError::UnsupportedCurve {
                crv: "P-384".into()
            }
            .to_string(),
            "ec curve \"P-384\" is not supported for ECDH-ES+A256KW (P-256 or P-521)"
        );
    }

    #[test]
    fn p521_points_off_the_curve_or_of_the_wrong_length_are_refused() {
        let TeePubKey::Ec { x, y, .. } = TeeKeyPair::generate_ec_p521().public_jwk() else {
            panic!()
        };
        let mut y_bytes = B64URL.decode(&y).unwrap();
        y_bytes[65] ^= 1;
        let off_curve = TeePubKey::Ec {
            crv: CURVE_P521.into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: x.clone(),
            y: B64URL.encode(&y_bytes),
        };
        let err = validate_tee_pubkey(&off_curve).unwrap_err();
        assert!(err.to_string().contains("not on P-521"), "{err}");
        // P-256-sized coordinates under crv P-521 (and the reverse) are refused by length.
        let TeePubKey::Ec {
            x: x256, y: y256, ..
        } = TeeKeyPair::generate_ec().public_jwk()
        else {
            panic!()
        };
        for (crv, x, y) in [(CURVE_P521, &x256, &y256), (CURVE_P256, &x, &y)] {
            let jwk = TeePubKey::Ec {
                crv: crv.into(),
                alg: ALG_ECDH_ES_A256KW.into(),
                x: x.clone(),
                y: y.clone(),
            };
            let err = validate_tee_pubkey(&jwk).unwrap_err();
            assert!(
                err.to_string().contains("coordinates must be"),
                "{crv}: {err}"
            );
        }
    }
}
