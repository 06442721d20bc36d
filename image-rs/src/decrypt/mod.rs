//! ocicrypt layer decryption: `AES_256_CTR_HMAC_SHA256` bodies whose key is wrapped in the
//! layer's annotations, either for JWE recipients ([`PrivateKey`]) or by a broker-held
//! key-encryption key ([`KeyUnwrapper`]).
//!
//! The HMAC-SHA256 over the ciphertext is checked when the stream reaches its end; the reader
//! fails there, before the caller commits anything.
//!
//! The digest of the decrypted blob that the private options name is *not* checked on the pull
//! path: it is no stronger than the HMAC (JWE options can be wrapped by anyone with the
//! recipient's public key, with a matching HMAC; options wrapped by a broker KEK bind the digest
//! to the layer key just as the HMAC binds the ciphertext to it), and what it would pin is
//! pinned already (reasoning in the crate README). The pinned manifest fixes the
//! ciphertext (blob digest) and the wrapped key (annotations), so the plaintext too; the
//! digest-pinned config's diff_id fixes the decompressed tar stream that is unpacked, and is
//! checked before anything becomes visible. [`DecryptingReader`], which hands out the decrypted
//! blob itself with no diff_id to check it against, still verifies that digest.

mod broker;
mod encrypt;
mod jwe;
mod keys;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub use broker::{BrokerKeyUnwrapper, KBS_KID_PREFIX};
pub use encrypt::{EncryptError, EncryptedManifest, PublicKey, Recipients, encrypt_layout};
pub(crate) use encrypt::{LayoutWriter, encrypt_manifest, read_layout_manifest};
pub use keys::{KeyUnwrapper, LocalKek, PrivateKey, WrappedKey};

use crate::digest::Digest;

/// Annotation holding JWE-wrapped private options.
pub const ANNOTATION_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// Annotation holding broker-wrapped private options.
pub const ANNOTATION_PROVIDER: &str =
    "org.opencontainers.image.enc.keys.provider.attestation-agent";
/// Annotation holding the public options (cipher, HMAC).
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER_AES_CTR_HMAC: &str = "AES_256_CTR_HMAC_SHA256";

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Why a layer could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// None of the configured keys or unwrappers opens any recipient.
    #[error("no matching private key")]
    NoMatchingKey,
    /// The layer carries no wrapped key annotation this crate understands.
    #[error("encrypted layer has no wrapped key annotation")]
    NoWrappedKey,
    /// A key unwrapper does not hold the named key-encryption key.
    #[error("no key-encryption key for kid {0:?}")]
    UnknownKid(String),
    /// An algorithm this crate does not implement.
    #[error("unsupported algorithm {0:?}")]
    Algorithm(String),
    /// A malformed annotation or JWE field.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Key unwrapping failed cryptographically.
    #[error("{0} unwrap failed")]
    Unwrap(&'static str),
    /// A key file is not a supported PEM private key.
    #[error("unsupported or malformed private key")]
    KeyFormat,
    /// A key file could not be read.
    #[error("reading key file {path:?}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The HMAC over the ciphertext does not match: the layer was tampered with.
    #[error("layer hmac mismatch")]
    MacMismatch,
    /// The decrypted blob's digest is not the one the wrapped key names (checked by
    /// [`DecryptingReader`] only; see the module docs).
    #[error("decrypted layer digest {actual} does not match {expected}")]
    PlaintextDigest {
        /// From the private options.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// A key broker failed (for [`KeyUnwrapper`] implementations).
    #[error("key unwrapper failed: {0}")]
    Unwrapper(String),
    /// The key broker refused (or failed) to release a key-encryption key.
    #[error("key broker")]
    Broker(#[source] coffer_attestation::kbs::client::KbsClientError),
}

/// Where layer keys come from.
#[derive(Debug, Clone, Default)]
pub struct Decryptor {
    keys: Vec<PrivateKey>,
    unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
}

impl Decryptor {
    /// Adds a JWE recipient private key.
    pub fn with_private_key(mut self, key: PrivateKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds a broker-style unwrapper for the provider annotation.
    pub fn with_unwrapper(mut self, unwrapper: Arc<dyn KeyUnwrapper>) -> Self {
        self.unwrappers.push(unwrapper);
        self
    }

    /// Whether any key source is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.unwrappers.is_empty()
    }

    /// Finds the layer key from a layer descriptor's annotations.
    pub async fn layer_key(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<LayerKey, DecryptError> {
        let public: PublicOptions = annotations
            .get(ANNOTATION_PUBOPTS)
            .ok_or(DecryptError::Malformed("missing pubopts annotation"))
            .and_then(|v| b64_std(v, "pubopts"))
            .and_then(|v| {
                serde_json::from_slice(&v).map_err(|_| DecryptError::Malformed("pubopts json"))
            })?;
        if public.cipher != CIPHER_AES_CTR_HMAC {
            return Err(DecryptError::Algorithm(public.cipher));
        }
        let hmac = b64_std(&public.hmac, "pubopts hmac")?;
        let private = self.private_options(annotations).await?;
        LayerKey::from_private(&private, hmac)
    }

    /// Unwraps a layer's private options JSON (symmetric key, nonce, plaintext digest) from its
    /// annotations, e.g. to re-wrap them for another recipient.
    pub async fn private_options(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let mut saw_wrapped = false;
        if let Some(value) = annotations.get(ANNOTATION_JWE) {
            saw_wrapped = true;
            for part in value.split(',').filter(|p| !p.is_empty()) {
                let jwe = b64_std(part, "jwe annotation")?;
                match jwe::decrypt(&jwe, &self.keys) {
                    Ok(plain) => return Ok(plain),
                    Err(DecryptError::NoMatchingKey) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(value) = annotations.get(ANNOTATION_PROVIDER) {
            saw_wrapped = true;
            for part in value.split(',').filter(|p| !p.is_empty()) {
                let wrapped: WrappedKey =
                    serde_json::from_slice(&b64_std(part, "provider annotation")?)
                        .map_err(|_| DecryptError::Malformed("provider annotation json"))?;
                for unwrapper in &self.unwrappers {
                    match unwrapper.unwrap_key(&wrapped).await {
                        Ok(plain) => return Ok(plain),
                        Err(DecryptError::UnknownKid(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if saw_wrapped {
            Err(DecryptError::NoMatchingKey)
        } else {
            Err(DecryptError::NoWrappedKey)
        }
    }
}

pub(crate) fn b64_std(text: &str, what: &'static str) -> Result<Vec<u8>, DecryptError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| DecryptError::Malformed(what))
}

#[derive(Deserialize)]
struct PublicOptions {
    cipher: String,
    hmac: String,
}

#[derive(Deserialize)]
struct PrivateOptions {
    symkey: String,
    digest: Digest,
    cipheroptions: BTreeMap<String, String>,
}

impl Drop for PrivateOptions {
    fn drop(&mut self) {
        self.symkey.zeroize();
    }
}

/// A layer's symmetric key material (zeroized on drop, never printed).
pub struct LayerKey {
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
    hmac: Vec<u8>,
    plaintext_digest: Digest,
}

impl fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerKey")
            .field("plaintext_digest", &self.plaintext_digest)
            .finish_non_exhaustive()
    }
}

impl LayerKey {
    fn from_private(private: &[u8], hmac: Vec<u8>) -> Result<Self, DecryptError> {
        let opts: PrivateOptions = serde_json::from_slice(private)
            .map_err(|_| DecryptError::Malformed("private options"))?;
        let symkey = Zeroizing::new(b64_std(&opts.symkey, "symkey")?);
        let nonce = b64_std(
            opts.cipheroptions
                .get("nonce")
                .ok_or(DecryptError::Malformed("missing nonce"))?,
            "nonce",
        )?;
        let mut key = Zeroizing::new([0u8; 32]);
        let nonce: [u8; 16] = nonce
            .try_into()
            .map_err(|_| DecryptError::Malformed("nonce length"))?;
        if symkey.len() != 32 || hmac.len() != 32 {
            return Err(DecryptError::Malformed("key or hmac length"));
        }
        key.copy_from_slice(&symkey);
        Ok(Self {
            key,
            nonce,
            hmac,
            plaintext_digest: opts.digest.clone(),
        })
    }

    /// Builds a key from its parts (used by encryption and tests).
    pub fn new(
        key: Zeroizing<[u8; 32]>,
        nonce: [u8; 16],
        hmac: Vec<u8>,
        plaintext_digest: Digest,
    ) -> Self {
        Self {
            key,
            nonce,
            hmac,
            plaintext_digest,
        }
    }

    /// The digest of the unencrypted blob.
    pub fn plaintext_digest(&self) -> &Digest {
        &self.plaintext_digest
    }

    /// Wraps `ciphertext` in a reader yielding the decrypted blob, failing at the end of the
    /// stream on a bad HMAC or plaintext digest.
    pub fn decrypting_reader<R: Read>(self, ciphertext: R) -> DecryptingReader<R> {
        let expected = self.plaintext_digest.clone();
        let (mac, decrypter) = self.split();
        DecryptingReader {
            inner: ciphertext,
            checks: Checks::Reading(Box::new(ReaderChecks {
                mac,
                decrypter,
                plain: Sha256::new(),
                expected,
            })),
        }
    }

    /// The two halves of decrypting a layer, for a pipeline that runs them on two threads: the
    /// HMAC over the ciphertext, and the keystream.
    pub(crate) fn split(self) -> (CiphertextMac, Decrypter) {
        let cipher = Aes256Ctr::new(self.key.as_ref().into(), (&self.nonce).into());
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_slice());
        (
            CiphertextMac {
                mac: mac.ok(),
                expected: self.hmac.clone(),
            },
            Decrypter { cipher },
        )
    }
}

/// The ocicrypt HMAC-SHA256 over a layer's ciphertext.
pub(crate) struct CiphertextMac {
    /// `None` only if the key was refused (it is 32 bytes, which HMAC always accepts).
    mac: Option<Hmac<Sha256>>,
    expected: Vec<u8>,
}

impl CiphertextMac {
    /// Feeds the next ciphertext bytes.
    pub(crate) fn update(&mut self, ciphertext: &[u8]) {
        if let Some(mac) = self.mac.as_mut() {
            mac.update(ciphertext);
        }
    }

    /// The verdict over all the ciphertext fed.
    pub(crate) fn verify(self) -> Result<(), DecryptError> {
        self.mac
            .ok_or(DecryptError::MacMismatch)?
            .verify_slice(&self.expected)
            .map_err(|_| DecryptError::MacMismatch)
    }
}

/// AES-256-CTR decryption of a layer.
pub(crate) struct Decrypter {
    cipher: Aes256Ctr,
}

impl Decrypter {
    /// Decrypts the next bytes in place.
    pub(crate) fn decrypt(&mut self, data: &mut [u8]) {
        self.cipher.apply_keystream(data);
    }

    /// Decrypts the next `ciphertext` bytes into `plaintext` (of the same length; the only
    /// error `apply_keystream_b2b` reports, so a mismatch is a caller bug and leaves
    /// `plaintext` as it was).
    pub(crate) fn decrypt_into(&mut self, ciphertext: &[u8], plaintext: &mut [u8]) {
        let _ = self.cipher.apply_keystream_b2b(ciphertext, plaintext);
    }
}

/// Decrypts an ocicrypt layer stream; see [`LayerKey::decrypting_reader`].
pub struct DecryptingReader<R> {
    inner: R,
    checks: Checks,
}

/// What a [`DecryptingReader`] checks at the end of the stream: the HMAC over the ciphertext,
/// and the digest of the decrypted blob it handed out.
struct ReaderChecks {
    mac: CiphertextMac,
    decrypter: Decrypter,
    plain: Sha256,
    expected: Digest,
}

impl ReaderChecks {
    fn verify(self) -> Result<(), DecryptError> {
        self.mac.verify()?;
        let actual = Digest::from_hasher(self.plain);
        if actual == self.expected {
            Ok(())
        } else {
            Err(DecryptError::PlaintextDigest {
                expected: self.expected,
                actual,
            })
        }
    }
}

/// Where a [`DecryptingReader`] is: reading, or at the end with the verdict.
enum Checks {
    Reading(Box<ReaderChecks>),
    Passed,
    /// A failed check fails every later read too.
    Failed(DecryptError),
}

impl<R> fmt::Debug for DecryptingReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptingReader").finish_non_exhaustive()
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let checks = match &mut self.checks {
            Checks::Reading(checks) => checks,
            Checks::Passed => return Ok(0),
            Checks::Failed(err) => return Err(io::Error::other(err.duplicate())),
        };
        let n = self.inner.read(buf)?;
        if n > 0 {
            checks.mac.update(&buf[..n]);
            checks.decrypter.decrypt(&mut buf[..n]);
            checks.plain.update(&buf[..n]);
            return Ok(n);
        }
        let Checks::Reading(checks) = std::mem::replace(&mut self.checks, Checks::Passed) else {
            return Ok(0);
        };
        match checks.verify() {
            Ok(()) => Ok(0),
            Err(err) => {
                self.checks = Checks::Failed(err.duplicate());
                Err(io::Error::other(err))
            }
        }
    }
}

impl DecryptError {
    /// A copy of this error for a second reporter (the end-of-stream verdicts exactly; other
    /// variants by their message).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::MacMismatch => Self::MacMismatch,
            Self::PlaintextDigest { expected, actual } => Self::PlaintextDigest {
                expected: expected.clone(),
                actual: actual.clone(),
            },
            other => Self::Unwrapper(other.to_string()),
        }
    }
}

/// Finds a [`DecryptError`] in an I/O error's chain (the readers report through `io::Error`).
pub(crate) fn decrypt_error_in(err: &io::Error) -> Option<&DecryptError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if let Some(d) = e.downcast_ref::<DecryptError>() {
            return Some(d);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            source = io.get_ref().map(|e| e as _);
            continue;
        }
        source = e.source();
    }
    None
}
