//! ocicrypt encryption of an OCI image layout: each layer gets a fresh AES-256-CTR key and
//! nonce, an HMAC-SHA256 over the ciphertext, and its private options wrapped for JWE recipients
//! (`RSA-OAEP-256`, `ECDH-ES+A256KW`; one multi-recipient JWE) and/or a broker-held
//! key-encryption key (the `provider.attestation-agent` annotation), so `skopeo` and this crate
//! can decrypt it.

use std::fs;
use std::path::{Path, PathBuf};

use aes::cipher::{KeyIvInit, StreamCipher};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    ANNOTATION_JWE, ANNOTATION_PROVIDER, ANNOTATION_PUBOPTS, CIPHER_AES_CTR_HMAC, LocalKek,
};
use crate::digest::Digest;

/// Why encryption failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    /// A file of the layout could not be read or written.
    #[error("{op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The layout's JSON is not what an OCI layout holds.
    #[error("malformed layout: {0}")]
    Layout(String),
    /// A public key is not a supported PEM key.
    #[error("unsupported or malformed public key")]
    KeyFormat,
    /// No recipient was given.
    #[error("no recipients")]
    NoRecipients,
    /// A cryptographic operation failed.
    #[error("{0} failed")]
    Crypto(&'static str),
    /// Wrapping for the key-encryption key failed.
    #[error("wrapping for the key-encryption key")]
    Kek(#[source] super::DecryptError),
}

/// A JWE recipient public key.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// RSA (wrapped with `RSA-OAEP-256`).
    Rsa(Box<rsa::RsaPublicKey>),
    /// P-256 (wrapped with `ECDH-ES+A256KW`).
    P256(p256::PublicKey),
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` (SPKI) for RSA or P-256.
    pub fn from_pem(pem: &str) -> Result<Self, EncryptError> {
        use p256::pkcs8::DecodePublicKey as _;
        if let Ok(key) = rsa::RsaPublicKey::from_public_key_pem(pem) {
            return Ok(Self::Rsa(Box::new(key)));
        }
        p256::PublicKey::from_public_key_pem(pem)
            .map(Self::P256)
            .map_err(|_| EncryptError::KeyFormat)
    }

    /// Reads a PEM public key file.
    pub fn from_file(path: &Path) -> Result<Self, EncryptError> {
        Self::from_pem(&read_string(path)?)
    }
}

/// Who can decrypt the layers.
#[derive(Debug, Default)]
pub struct Recipients {
    /// JWE recipients.
    pub public_keys: Vec<PublicKey>,
    /// A broker-held key-encryption key: `(kid, keys holding it)`.
    pub kek: Option<(String, LocalKek)>,
}

fn read(path: &Path) -> Result<Vec<u8>, EncryptError> {
    fs::read(path).map_err(|source| EncryptError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, EncryptError> {
    fs::read_to_string(path).map_err(|source| EncryptError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, data: &[u8]) -> Result<(), EncryptError> {
    fs::write(path, data).map_err(|source| EncryptError::Io {
        op: "writing",
        path: path.to_owned(),
        source,
    })
}

fn json_of(bytes: &[u8], what: &str) -> Result<Value, EncryptError> {
    serde_json::from_slice(bytes).map_err(|e| EncryptError::Layout(format!("{what}: {e}")))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, EncryptError> {
    let digest = Digest::parse(digest).map_err(|e| EncryptError::Layout(e.to_string()))?;
    Ok(layout.join("blobs/sha256").join(digest.hex()))
}

fn put_blob(layout: &Path, data: &[u8]) -> Result<(Digest, u64), EncryptError> {
    let digest = Digest::of(data);
    write(&layout.join("blobs/sha256").join(digest.hex()), data)?;
    Ok((digest, data.len() as u64))
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Encrypts every not yet encrypted layer of image `tag` in the OCI layout `src` into a new
/// layout `dest` (created) tagged `dest_tag`. Returns the new manifest digest.
pub fn encrypt_layout(
    src: &Path,
    tag: &str,
    dest: &Path,
    dest_tag: &str,
    recipients: &Recipients,
) -> Result<Digest, EncryptError> {
    if recipients.public_keys.is_empty() && recipients.kek.is_none() {
        return Err(EncryptError::NoRecipients);
    }
    let index = json_of(&read(&src.join("index.json"))?, "index.json")?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|list| {
            list.iter().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
            })
        })
        .ok_or_else(|| EncryptError::Layout(format!("no image tagged {tag:?}")))?;
    let manifest_digest = entry["digest"].as_str().unwrap_or_default();
    let mut manifest = json_of(&read(&blob_path(src, manifest_digest)?)?, "manifest")?;

    fs::create_dir_all(dest.join("blobs/sha256")).map_err(|source| EncryptError::Io {
        op: "creating layout",
        path: dest.to_owned(),
        source,
    })?;
    write(
        &dest.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    put_blob(dest, &read(&blob_path(src, &config_digest)?)?)?;

    let layers = manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| EncryptError::Layout("manifest has no layers".to_owned()))?;
    for layer in layers.iter_mut() {
        let media_type = layer["mediaType"].as_str().unwrap_or_default().to_owned();
        let digest = layer["digest"].as_str().unwrap_or_default().to_owned();
        let blob = read(&blob_path(src, &digest)?)?;
        if media_type.ends_with("+encrypted") {
            put_blob(dest, &blob)?;
            continue;
        }
        let (ciphertext, annotations) = encrypt_layer(&blob, &digest, recipients)?;
        let (new_digest, size) = put_blob(dest, &ciphertext)?;
        layer["mediaType"] = format!("{media_type}+encrypted").into();
        layer["digest"] = new_digest.to_string().into();
        layer["size"] = size.into();
        let slot = layer
            .as_object_mut()
            .ok_or_else(|| EncryptError::Layout("layer descriptor".to_owned()))?
            .entry("annotations")
            .or_insert_with(|| json!({}));
        for (key, value) in annotations {
            slot[key] = value.into();
        }
    }
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| EncryptError::Layout(e.to_string()))?;
    let (digest, size) = put_blob(dest, &manifest_bytes)?;
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(crate::manifest::OCI_MANIFEST)
        .to_owned();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": dest_tag},
        }],
    });
    write(
        &dest.join("index.json"),
        &serde_json::to_vec(&index).map_err(|e| EncryptError::Layout(e.to_string()))?,
    )?;
    Ok(digest)
}

type Annotations = Vec<(&'static str, String)>;

fn encrypt_layer(
    blob: &[u8],
    digest: &str,
    recipients: &Recipients,
) -> Result<(Vec<u8>, Annotations), EncryptError> {
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(key.as_mut());
    OsRng.fill_bytes(&mut nonce);
    let mut ciphertext = blob.to_vec();
    ctr::Ctr128BE::<aes::Aes256>::new(key.as_ref().into(), (&nonce).into())
        .apply_keystream(&mut ciphertext);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_slice())
        .map_err(|_| EncryptError::Crypto("hmac"))?;
    mac.update(&ciphertext);
    let hmac = mac.finalize().into_bytes();

    let private = Zeroizing::new(
        serde_json::to_vec(&json!({
            "symkey": b64(key.as_slice()),
            "digest": digest,
            "cipheroptions": {"nonce": b64(&nonce)},
        }))
        .map_err(|e| EncryptError::Layout(e.to_string()))?,
    );
    let public = json!({"cipher": CIPHER_AES_CTR_HMAC, "hmac": b64(&hmac), "cipheroptions": {}});
    let mut annotations = vec![(ANNOTATION_PUBOPTS, b64(public.to_string().as_bytes()))];
    if !recipients.public_keys.is_empty() {
        let jwe = jwe_encrypt(&private, &recipients.public_keys)?;
        annotations.push((ANNOTATION_JWE, b64(jwe.as_bytes())));
    }
    if let Some((kid, kek)) = &recipients.kek {
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let wrapped = kek.wrap(kid, &private, iv).map_err(EncryptError::Kek)?;
        let json = serde_json::to_vec(&wrapped).map_err(|e| EncryptError::Layout(e.to_string()))?;
        annotations.push((ANNOTATION_PROVIDER, b64(&json)));
    }
    Ok((ciphertext, annotations))
}

/// A general-serialization JWE (`A256GCM`) of `plaintext` for every key in `keys`.
fn jwe_encrypt(plaintext: &[u8], keys: &[PublicKey]) -> Result<String, EncryptError> {
    let mut cek = Zeroizing::new([0u8; 32]);
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(cek.as_mut());
    OsRng.fill_bytes(&mut iv);
    let mut recipients = Vec::new();
    for key in keys {
        recipients.push(match key {
            PublicKey::Rsa(rsa_key) => {
                let wrapped = rsa_key
                    .encrypt(&mut OsRng, rsa::Oaep::new::<Sha256>(), cek.as_slice())
                    .map_err(|_| EncryptError::Crypto("rsa-oaep-256"))?;
                json!({"header": {"alg": "RSA-OAEP-256"}, "encrypted_key": b64url(&wrapped)})
            }
            PublicKey::P256(public) => {
                let alg = "ECDH-ES+A256KW";
                let ephemeral = p256::ecdh::EphemeralSecret::random(&mut OsRng);
                let shared = ephemeral.diffie_hellman(public);
                let kek = super::jwe::concat_kdf(shared.raw_secret_bytes(), alg.as_bytes(), &[], &[]);
                let kek = aes_kw::KekAes256::try_from(kek.as_slice())
                    .map_err(|_| EncryptError::Crypto("a256kw"))?;
                let wrapped = kek
                    .wrap_vec(cek.as_slice())
                    .map_err(|_| EncryptError::Crypto("a256kw"))?;
                let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &ephemeral.public_key(),
                    false,
                );
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err(EncryptError::Crypto("ephemeral key"));
                };
                json!({
                    "header": {"alg": alg, "epk": {"kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y)}},
                    "encrypted_key": b64url(&wrapped),
                })
            }
        });
    }
    let protected = b64url(br#"{"enc":"A256GCM"}"#);
    let cipher =
        Aes256Gcm::new_from_slice(cek.as_slice()).map_err(|_| EncryptError::Crypto("a256gcm"))?;
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| EncryptError::Crypto("a256gcm"))?;
    let (body, tag) = sealed.split_at(sealed.len().saturating_sub(16));
    Ok(json!({
        "protected": protected,
        "recipients": recipients,
        "iv": b64url(&iv),
        "ciphertext": b64url(body),
        "tag": b64url(tag),
    })
    .to_string())
}
