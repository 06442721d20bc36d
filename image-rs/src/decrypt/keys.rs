//! Private keys for JWE recipients and the [`KeyUnwrapper`] trait for broker-held keys.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use futures::future::BoxFuture;
use zeroize::Zeroizing;

use super::DecryptError;

/// A recipient private key for `org.opencontainers.image.enc.keys.jwe`.
#[derive(Clone)]
pub enum PrivateKey {
    /// RSA, for `RSA-OAEP` and `RSA-OAEP-256`.
    Rsa(Box<rsa::RsaPrivateKey>),
    /// NIST P-256, for `ECDH-ES+A256KW`.
    P256(p256::SecretKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa(_) => f.write_str("PrivateKey::Rsa(<redacted>)"),
            Self::P256(_) => f.write_str("PrivateKey::P256(<redacted>)"),
        }
    }
}

impl PrivateKey {
    /// Parses a PEM private key: PKCS#8 (RSA or P-256), PKCS#1 RSA or SEC1 EC.
    pub fn from_pem(pem: &str) -> Result<Self, DecryptError> {
        use p256::pkcs8::DecodePrivateKey as _;
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
            return Ok(Self::Rsa(Box::new(key)));
        }
        if let Ok(key) = rsa::RsaPrivateKey::from_pkcs1_pem(pem) {
            return Ok(Self::Rsa(Box::new(key)));
        }
        if let Ok(key) = p256::SecretKey::from_pkcs8_pem(pem) {
            return Ok(Self::P256(key));
        }
        if let Ok(key) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(Self::P256(key));
        }
        Err(DecryptError::KeyFormat)
    }

    /// Reads a PEM private key file.
    pub fn from_file(path: &Path) -> Result<Self, DecryptError> {
        let pem = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            DecryptError::KeyFile {
                path: path.to_owned(),
                source,
            }
        })?);
        Self::from_pem(&pem)
    }
}

/// A key wrapped by a key-encryption key held elsewhere (the
/// `org.opencontainers.image.enc.keys.provider.attestation-agent` annotation).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct WrappedKey {
    /// Names the key-encryption key, e.g. `kbs:///default/key/1`.
    pub kid: String,
    /// The wrapped private layer options (base64).
    pub wrapped_data: String,
    /// The wrapping nonce (base64).
    pub iv: String,
    /// The wrapping algorithm, e.g. `A256GCM`.
    pub wrap_type: String,
}

/// Unwraps broker-held layer keys. The key broker client implements this; [`LocalKek`] is the
/// local implementation for tests and offline use.
pub trait KeyUnwrapper: Send + Sync + fmt::Debug {
    /// Returns the unwrapped private layer options (JSON) for `key`, or
    /// [`DecryptError::UnknownKid`] when this unwrapper does not hold `key.kid`.
    fn unwrap_key<'a>(
        &'a self,
        key: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, DecryptError>>;
}

/// Key-encryption keys held locally, by `kid`.
#[derive(Default)]
pub struct LocalKek {
    keys: Vec<(String, Zeroizing<[u8; 32]>)>,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field(
                "kids",
                &self.keys.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LocalKek {
    /// Adds a 32-byte key-encryption key under `kid`.
    pub fn with_key(mut self, kid: impl Into<String>, key: Zeroizing<[u8; 32]>) -> Self {
        self.keys.push((kid.into(), key));
        self
    }

    /// Adds the 32-byte key in `path` under `kid`.
    pub fn with_key_file(self, kid: impl Into<String>, path: &Path) -> Result<Self, DecryptError> {
        let bytes =
            Zeroizing::new(std::fs::read(path).map_err(|source| DecryptError::KeyFile {
                path: path.to_owned(),
                source,
            })?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(DecryptError::KeyFormat);
        }
        key.copy_from_slice(&bytes);
        Ok(self.with_key(kid, key))
    }

    fn unwrap_sync(&self, key: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let Some((_, kek)) = self.keys.iter().find(|(kid, _)| *kid == key.kid) else {
            return Err(DecryptError::UnknownKid(key.kid.clone()));
        };
        if key.wrap_type != "A256GCM" {
            return Err(DecryptError::Algorithm(key.wrap_type.clone()));
        }
        let iv = super::b64_std(&key.iv, "provider iv")?;
        let data = super::b64_std(&key.wrapped_data, "provider wrapped_data")?;
        if iv.len() != 12 {
            return Err(DecryptError::Malformed("provider iv is not 12 bytes"));
        }
        let cipher =
            Aes256Gcm::new_from_slice(kek.as_slice()).map_err(|_| DecryptError::KeyFormat)?;
        cipher
            .decrypt(Nonce::from_slice(&iv), data.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| DecryptError::Unwrap("A256GCM"))
    }

    /// Wraps private layer options under `kid` (the inverse of unwrapping; used to build
    /// provider annotations).
    pub fn wrap(
        &self,
        kid: &str,
        plaintext: &[u8],
        iv: [u8; 12],
    ) -> Result<WrappedKey, DecryptError> {
        use base64::Engine as _;
        let Some((_, kek)) = self.keys.iter().find(|(k, _)| k == kid) else {
            return Err(DecryptError::UnknownKid(kid.to_owned()));
        };
        let cipher =
            Aes256Gcm::new_from_slice(kek.as_slice()).map_err(|_| DecryptError::KeyFormat)?;
        let sealed = cipher
            .encrypt(Nonce::from_slice(&iv), plaintext)
            .map_err(|_| DecryptError::Unwrap("A256GCM"))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(WrappedKey {
            kid: kid.to_owned(),
            wrapped_data: b64.encode(sealed),
            iv: b64.encode(iv),
            wrap_type: "A256GCM".to_owned(),
        })
    }
}

impl KeyUnwrapper for LocalKek {
    fn unwrap_key<'a>(
        &'a self,
        key: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, DecryptError>> {
        Box::pin(async move { self.unwrap_sync(key) })
    }
}
