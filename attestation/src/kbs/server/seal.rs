//! Sealed session cookies: the `kbs-session-id` value carries the session itself, sealed by the
//! broker, so no broker keeps sessions in memory and any replica holding the key set opens it.
//!
//! Two kinds of value, told apart by their version byte (which the additional data binds, so one
//! cannot be passed off as the other):
//! - **challenge** (`/auth`, version 1): `tee (1) ‖ expires (8, big-endian Unix milliseconds) ‖
//!   nonce (32)`; the session's id is the nonce's first 16 bytes.
//! - **attested session** (`/attest`, version 2): the challenge's fields, then the TEE public key
//!   and the token's claims as JSON ([`SealedSession`]): what `/resource` and `/identity` need.
//!   At most [`MAX_SESSION_PLAIN`] bytes.
//!
//! Value: base64url (no padding) of `version (1) ‖ kid (4) ‖ salt (16) ‖ AES-256-GCM ciphertext
//! ‖ tag (16)`. Each cookie is sealed under its own key, HKDF-SHA256(ikm = the broker key, salt,
//! info = [`HKDF_INFO`]), with a zero GCM nonce: a random 128-bit salt per cookie takes the place
//! of the 96-bit nonce, whose random choice would bound a key to 2^32 cookies (an `/auth` flood
//! reaches that in a day). The additional data binds version and kid.
//!
//! A [`SessionKeys`] set seals with its first key and opens with any (the kid picks one):
//! rotation is "new key first, old key second", then the old key is dropped once every cookie it
//! sealed has expired (`sessions.ttl_secs`).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use rand_core::{OsRng, RngCore};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::kbs::types::Tee;

/// Cookie format version of a challenge.
const VERSION: u8 = 1;
/// Cookie format version of an attested session.
const VERSION_SESSION: u8 = 2;
/// Largest plaintext of an attested session cookie (key and claims JSON).
pub const MAX_SESSION_PLAIN: usize = 48 * 1024;
const KID_LEN: usize = 4;
const SALT_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Length of a broker session key.
pub const KEY_LEN: usize = 32;
/// Length of the challenge nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a session id (the nonce's prefix).
pub const ID_LEN: usize = 16;
const PLAIN_LEN: usize = 1 + 8 + NONCE_LEN;
const HEADER_LEN: usize = 1 + KID_LEN + SALT_LEN;
const SEALED_LEN: usize = HEADER_LEN + PLAIN_LEN + TAG_LEN;
/// HKDF `info` of the per-cookie key.
const HKDF_INFO: &[u8] = b"coffer-kbs session cookie v1";
/// Upper bound on a challenge cookie value (base64 of [`SEALED_LEN`]).
const MAX_COOKIE_LEN: usize = SEALED_LEN.div_ceil(3) * 4;
/// Upper bound on any cookie value we try to open.
const MAX_SESSION_COOKIE_LEN: usize = (HEADER_LEN + MAX_SESSION_PLAIN + TAG_LEN).div_ceil(3) * 4;

/// A session id: the first [`ID_LEN`] bytes of the challenge nonce.
pub type SessionId = [u8; ID_LEN];

/// Failures loading session keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read session key {path}")]
    Read {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not base64 of 32 bytes.
    #[error("session key {path} is not base64 of {KEY_LEN} bytes")]
    Format {
        /// File.
        path: std::path::PathBuf,
    },
    /// Two keys of the set are the same key (or share a kid).
    #[error("session keys repeat a key")]
    Duplicate,
}

struct SessionKey {
    kid: [u8; KID_LEN],
    secret: Zeroizing<[u8; KEY_LEN]>,
}

/// The keys sealing and opening session cookies. `Debug` shows only the kids.
pub struct SessionKeys {
    /// First: the sealing key.
    keys: Vec<SessionKey>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self.keys.iter().map(|k| hex::encode(k.kid)).collect();
        f.debug_struct("SessionKeys").field("kids", &kids).finish()
    }
}

/// What a sealed cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The TEE the challenge was issued for.
    pub tee: Tee,
    /// Expiry of the challenge, Unix milliseconds.
    pub expires_ms: u64,
    /// The challenge nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl Opened {
    /// The session id.
    pub fn id(&self) -> SessionId {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.nonce[..ID_LEN]);
        id
    }

    /// The nonce as sent in the challenge (standard base64, padded).
    pub fn nonce_b64(&self) -> String {
        B64.encode(self.nonce)
    }
}

/// What an attested session cookie says: the challenge it answered, when it expires, and what
/// resource and identity requests need. `Debug` leaves out the claims.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedSession {
    /// The session's expiry, Unix milliseconds (never after the token's).
    pub expires_ms: u64,
    /// The answered challenge's nonce prefix (the session id).
    pub id: SessionId,
    /// The key resources are encrypted to (JWK).
    pub tee_pubkey: crate::kbs::types::TeePubKey,
    /// The token's claims (the resource policy's input).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for SealedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSession")
            .field("expires_ms", &self.expires_ms)
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

fn kid_of(secret: &[u8; KEY_LEN]) -> [u8; KID_LEN] {
    let digest = Sha256::new()
        .chain_update(b"coffer-kbs session key id\0")
        .chain_update(secret)
        .finalize();
    let mut kid = [0u8; KID_LEN];
    kid.copy_from_slice(&digest[..KID_LEN]);
    kid
}

fn tee_byte(tee: Tee) -> u8 {
    match tee {
        Tee::Sample => 0,
        Tee::Snp => 1,
        Tee::Tdx => 2,
    }
}

fn tee_from_byte(b: u8) -> Option<Tee> {
    match b {
        0 => Some(Tee::Sample),
        1 => Some(Tee::Snp),
        2 => Some(Tee::Tdx),
        _ => None,
    }
}

impl SessionKeys {
    /// One fresh random key (cookies die with the process).
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(secret.as_mut());
        Self {
            keys: vec![SessionKey {
                kid: kid_of(&secret),
                secret,
            }],
        }
    }

    /// The keys in `paths` (each base64 of 32 bytes); the first seals. Empty: [`Self::generate`].
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self, KeyError> {
        if paths.is_empty() {
            return Ok(Self::generate());
        }
        let mut keys = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            let text =
                Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?,
                );
            let secret = Self::decode(text.trim()).ok_or_else(|| KeyError::Format {
                path: path.to_path_buf(),
            })?;
            keys.push(secret);
        }
        Self::from_secrets(keys)
    }

    fn decode(text: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let bytes = Zeroizing::new(B64.decode(text).ok()?);
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return None;
        }
        secret.copy_from_slice(&bytes);
        Some(secret)
    }

    /// A set from raw keys; the first seals.
    pub fn from_secrets(secrets: Vec<Zeroizing<[u8; KEY_LEN]>>) -> Result<Self, KeyError> {
        let mut keys: Vec<SessionKey> = Vec::with_capacity(secrets.len());
        for secret in secrets {
            let kid = kid_of(&secret);
            if keys.iter().any(|k| k.kid == kid) {
                return Err(KeyError::Duplicate);
            }
            keys.push(SessionKey { kid, secret });
        }
        if keys.is_empty() {
            return Ok(Self::generate());
        }
        Ok(Self { keys })
    }

    fn cookie_key(secret: &[u8; KEY_LEN], salt: &[u8]) -> Option<LessSafeKey> {
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        Salt::new(HKDF_SHA256, salt)
            .extract(secret.as_slice())
            .expand(&[HKDF_INFO], HKDF_SHA256)
            .ok()?
            .fill(okm.as_mut())
            .ok()?;
        UnboundKey::new(&AES_256_GCM, okm.as_slice())
            .ok()
            .map(LessSafeKey::new)
    }

    /// Seals `plain` as a cookie value of `version` under the sealing key.
    fn seal_bytes(&self, version: u8, mut plain: Vec<u8>) -> Option<String> {
        let key = self.keys.first()?;
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(version);
        out.extend_from_slice(&key.kid);
        out.extend_from_slice(&salt);
        let sealing = Self::cookie_key(&key.secret, &salt)?;
        let tag = sealing
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0u8; 12]),
                Aad::from(&out),
                &mut plain,
            )
            .ok()?;
        out.extend_from_slice(&plain);
        out.extend_from_slice(tag.as_ref());
        Some(B64URL.encode(&out))
    }

    /// Opens a cookie value of `version` this key set sealed (at most `max_len` characters);
    /// `None` for anything else (wrong length, version, unknown kid, tampered bytes).
    fn open_bytes(&self, version: u8, value: &str, max_len: usize) -> Option<Zeroizing<Vec<u8>>> {
        if value.len() > max_len {
            return None;
        }
        let mut bytes = Zeroizing::new(B64URL.decode(value).ok()?);
        if bytes.len() < HEADER_LEN + TAG_LEN || bytes[0] != version {
            return None;
        }
        let key = self.keys.iter().find(|k| k.kid == bytes[1..=KID_LEN])?;
        let (header, body) = bytes.split_at_mut(HEADER_LEN);
        let opening = Self::cookie_key(&key.secret, &header[1 + KID_LEN..])?;
        let plain = opening
            .open_in_place(
                Nonce::assume_unique_for_key([0u8; 12]),
                Aad::from(&*header),
                body,
            )
            .ok()?;
        Some(Zeroizing::new(plain.to_vec()))
    }

    /// Seals a fresh challenge for `tee` expiring at `expires_ms` (Unix milliseconds): returns
    /// the cookie value and what it says. `None` only if the crypto library fails.
    pub fn seal(&self, tee: Tee, expires_ms: u64) -> Option<(String, Opened)> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut plain = Vec::with_capacity(PLAIN_LEN + TAG_LEN);
        plain.push(tee_byte(tee));
        plain.extend_from_slice(&expires_ms.to_be_bytes());
        plain.extend_from_slice(&nonce);
        let value = self.seal_bytes(VERSION, plain)?;
        Some((
            value,
            Opened {
                tee,
                expires_ms,
                nonce,
            },
        ))
    }

    /// Opens a challenge cookie this key set sealed; `None` for anything else (an attested
    /// session cookie included). Expiry is the caller's check.
    pub fn open(&self, value: &str) -> Option<Opened> {
        let plain = self.open_bytes(VERSION, value, MAX_COOKIE_LEN)?;
        if plain.len() != PLAIN_LEN {
            return None;
        }
        let tee = tee_from_byte(plain[0])?;
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&plain[1..9]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&plain[9..]);
        Some(Opened {
            tee,
            expires_ms: u64::from_be_bytes(expires),
            nonce,
        })
    }

    /// Seals an attested session; `None` when it is larger than [`MAX_SESSION_PLAIN`] or the
    /// crypto library fails.
    pub fn seal_session(&self, session: &SealedSession) -> Option<String> {
        let plain = serde_json::to_vec(session).ok()?;
        if plain.len() > MAX_SESSION_PLAIN {
            return None;
        }
        self.seal_bytes(VERSION_SESSION, plain)
    }

    /// Opens an attested session cookie this key set sealed; `None` for anything else (a
    /// challenge cookie included). Expiry is the caller's check.
    pub fn open_session(&self, value: &str) -> Option<SealedSession> {
        let plain = self.open_bytes(VERSION_SESSION, value, MAX_SESSION_COOKIE_LEN)?;
        serde_json::from_slice(&plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new([b; KEY_LEN])
    }

    #[test]
    fn sealed_cookie_round_trips_and_is_cookie_safe() {
        let keys = SessionKeys::generate();
        let (value, opened) = keys.seal(Tee::Snp, 1_700_000_000).unwrap();
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(value.len() <= MAX_COOKIE_LEN);
        assert_eq!(keys.open(&value), Some(opened.clone()));
        assert_eq!(opened.tee, Tee::Snp);
        assert_eq!(opened.expires_ms, 1_700_000_000);
        assert_eq!(B64.decode(opened.nonce_b64()).unwrap().len(), NONCE_LEN);
        // Two challenges never share a nonce or a cookie.
        let (other, again) = keys.seal(Tee::Snp, 1_700_000_000).unwrap();
        assert_ne!(other, value);
        assert_ne!(again.nonce, opened.nonce);
    }

    #[test]
    fn tampered_truncated_foreign_and_unknown_kid_cookies_do_not_open() {
        let keys = SessionKeys::from_secrets(vec![secret(1)]).unwrap();
        let (value, _) = keys.seal(Tee::Sample, 42).unwrap();
        let raw = B64URL.decode(&value).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            assert!(keys.open(&B64URL.encode(&bad)).is_none(), "byte {i}");
        }
        assert!(keys.open(&B64URL.encode(&raw[..raw.len() - 1])).is_none());
        assert!(keys.open("").is_none());
        assert!(keys.open("00ff").is_none());
        assert!(keys.open(&"A".repeat(10_000)).is_none());
        let other = SessionKeys::from_secrets(vec![secret(2)]).unwrap();
        assert!(other.open(&value).is_none());
    }

    #[test]
    fn rotation_new_key_seals_old_key_still_opens() {
        let old = SessionKeys::from_secrets(vec![secret(1)]).unwrap();
        let (old_cookie, old_opened) = old.seal(Tee::Sample, 7).unwrap();
        let rolled = SessionKeys::from_secrets(vec![secret(2), secret(1)]).unwrap();
        assert_eq!(rolled.open(&old_cookie), Some(old_opened));
        let (new_cookie, new_opened) = rolled.seal(Tee::Sample, 8).unwrap();
        // Replicas not yet rolled cannot open the new key's cookies; rolled ones can.
        assert!(old.open(&new_cookie).is_none());
        let new_only = SessionKeys::from_secrets(vec![secret(2)]).unwrap();
        assert_eq!(new_only.open(&new_cookie), Some(new_opened));
        assert!(new_only.open(&old_cookie).is_none());
        assert!(matches!(
            SessionKeys::from_secrets(vec![secret(3), secret(3)]),
            Err(KeyError::Duplicate)
        ));
    }

    fn sealed_session(expires_ms: u64) -> SealedSession {
        let mut claims = serde_json::Map::new();
        claims.insert("exp".into(), serde_json::Value::from(9));
        SealedSession {
            expires_ms,
            id: [7u8; ID_LEN],
            tee_pubkey: crate::kbs::jwe::TeeKeyPair::generate_ec().public_jwk(),
            claims,
        }
    }

    #[test]
    fn attested_sessions_round_trip_across_key_sets_and_never_pass_as_challenges() {
        let a = SessionKeys::from_secrets(vec![secret(1)]).unwrap();
        // Another replica with the same key; one mid-rotation with a new key first.
        let b = SessionKeys::from_secrets(vec![secret(1)]).unwrap();
        let rolled = SessionKeys::from_secrets(vec![secret(2), secret(1)]).unwrap();
        let session = sealed_session(1_700_000_000_000);
        let value = a.seal_session(&session).unwrap();
        assert_eq!(b.open_session(&value), Some(session.clone()));
        assert_eq!(rolled.open_session(&value), Some(session.clone()));
        let new = rolled.seal_session(&session).unwrap();
        assert!(a.open_session(&new).is_none());
        // A session is not a challenge and a challenge is not a session.
        assert!(a.open(&value).is_none());
        let (challenge, _) = a.seal(Tee::Sample, 1).unwrap();
        assert!(a.open_session(&challenge).is_none());
        // Every flipped byte is refused.
        let raw = B64URL.decode(&value).unwrap();
        for i in (0..raw.len()).step_by(7) {
            let mut bad = raw.clone();
            bad[i] ^= 0x80;
            assert!(a.open_session(&B64URL.encode(&bad)).is_none(), "byte {i}");
        }
        // The key and claims do not show in Debug.
        let shown = format!("{session:?}");
        assert!(
            !shown.contains("claims") && !shown.contains("tee_pubkey"),
            "{shown}"
        );
        // Oversized sessions are not sealed.
        let mut big = session;
        big.claims.insert(
            "pad".into(),
            serde_json::Value::String("x".repeat(MAX_SESSION_PLAIN)),
        );
        assert!(a.seal_session(&big).is_none());
        assert!(
            a.open_session(&"A".repeat(MAX_SESSION_COOKIE_LEN + 1))
                .is_none()
        );
    }

    #[test]
    fn key_files_are_base64_of_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, format!("{}\n", B64.encode([9u8; KEY_LEN]))).unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, B64.encode([9u8; 16])).unwrap();
        let keys = SessionKeys::load(&[&good]).unwrap();
        assert!(format!("{keys:?}").contains(&hex::encode(kid_of(&[9u8; KEY_LEN]))));
        assert!(!format!("{keys:?}").contains(&B64.encode([9u8; KEY_LEN])));
        assert!(matches!(
            SessionKeys::load(&[&short]),
            Err(KeyError::Format { .. })
        ));
        assert!(matches!(
            SessionKeys::load(&[dir.path().join("missing")]),
            Err(KeyError::Read { .. })
        ));
    }
}
