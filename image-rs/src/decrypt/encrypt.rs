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
    /// A blob of the source image is not what its descriptor says (digest or size).
    #[error("source blob {expected} hashes to {actual}")]
    BlobDigest {
        /// The descriptor's digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The destination stopped taking blobs (its own error says why).
    #[error("the destination stopped accepting blobs")]
    SinkClosed,
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

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs/sha256").join(digest.hex())
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Encrypts every not yet encrypted layer of image `tag` in the OCI layout `src` into a new
/// layout `dest` (created) tagged `dest_tag`. Every blob read from `src` is checked against its
/// digest first. Returns the new manifest digest.
pub fn encrypt_layout(
    src: &Path,
    tag: &str,
    dest: &Path,
    dest_tag: &str,
    recipients: &Recipients,
) -> Result<Digest, EncryptError> {
    let manifest = read_layout_manifest(src, tag)?;
    let mut out = LayoutWriter::create(dest)?;
    let encrypted = encrypt_manifest(
        &manifest,
        recipients,
        &mut |digest| read(&blob_path(src, digest)),
        &mut |digest, data| out.put(digest, &data),
    )?;
    out.finish(&encrypted, dest_tag)?;
    Ok(encrypted.digest)
}

/// The manifest bytes of image `tag` in the OCI layout `dir`, checked against the index's digest.
pub(crate) fn read_layout_manifest(dir: &Path, tag: &str) -> Result<Vec<u8>, EncryptError> {
    let index = json_of(&read(&dir.join("index.json"))?, "index.json")?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|list| {
            list.iter().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
            })
        })
        .ok_or_else(|| EncryptError::Layout(format!("no image tagged {tag:?}")))?;
    let digest = Digest::parse(entry["digest"].as_str().unwrap_or_default())
        .map_err(|e| EncryptError::Layout(format!("index entry for {tag:?}: {e}")))?;
    let bytes = read(&blob_path(dir, &digest))?;
    check_blob(&digest, None, &bytes)?;
    Ok(bytes)
}

/// Writes an OCI layout: blobs as they come, `index.json` last.
pub(crate) struct LayoutWriter {
    dir: PathBuf,
}

impl LayoutWriter {
    /// Creates the layout directory (or reuses an existing one).
    pub(crate) fn create(dir: &Path) -> Result<Self, EncryptError> {
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(|source| EncryptError::Io {
            op: "creating layout",
            path: dir.to_owned(),
            source,
        })?;
        write(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Stores one blob.
    pub(crate) fn put(&mut self, digest: &Digest, data: &[u8]) -> Result<(), EncryptError> {
        write(&blob_path(&self.dir, digest), data)
    }

    /// Stores the manifest and an `index.json` naming it `tag`.
    pub(crate) fn finish(
        self,
        manifest: &EncryptedManifest,
        tag: &str,
    ) -> Result<(), EncryptError> {
        write(&blob_path(&self.dir, &manifest.digest), &manifest.bytes)?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": manifest.media_type,
                "digest": manifest.digest.to_string(),
                "size": manifest.bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        write(
            &self.dir.join("index.json"),
            &serde_json::to_vec(&index).map_err(|e| EncryptError::Layout(e.to_string()))?,
        )
    }
}

/// An encrypted image's manifest.
#[derive(Debug, Clone)]
pub struct EncryptedManifest {
    /// The manifest JSON.
    pub bytes: Vec<u8>,
    /// Its media type (always the OCI image manifest).
    pub media_type: &'static str,
    /// Its digest.
    pub digest: Digest,
}

fn check_blob(digest: &Digest, size: Option<u64>, data: &[u8]) -> Result<(), EncryptError> {
    let actual = Digest::of(data);
    if actual != *digest || size.is_some_and(|s| s != data.len() as u64) {
        return Err(EncryptError::BlobDigest {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The OCI media type for a Docker schema 2 config or layer media type (others unchanged).
fn oci_media_type(media_type: &str) -> String {
    let (base, suffix) = match media_type.strip_suffix("+encrypted") {
        Some(base) => (base, "+encrypted"),
        None => (media_type, ""),
    };
    let base = match base {
        "application/vnd.docker.container.image.v1+json" => {
            "application/vnd.oci.image.config.v1+json"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        }
        other => other,
    };
    format!("{base}{suffix}")
}

/// Returns a blob of the input image by digest.
pub(crate) type BlobSource<'a> = dyn FnMut(&Digest) -> Result<Vec<u8>, EncryptError> + Send + 'a;
/// Receives a blob of the output image.
pub(crate) type BlobSink<'a> = dyn FnMut(&Digest, Vec<u8>) -> Result<(), EncryptError> + 'a;

/// Encrypts the image whose manifest is `manifest` (an OCI or Docker schema 2 image manifest):
/// every layer not yet encrypted gets a fresh key; the result is an OCI image manifest.
///
/// `source(digest)` returns a blob of the input image; each is checked against its descriptor's
/// digest and size before use. `sink(digest, bytes)` receives every blob of the output image (config
/// and layers, in manifest order); the manifest itself is returned, not sunk.
pub(crate) fn encrypt_manifest(
    manifest: &[u8],
    recipients: &Recipients,
    source: &mut BlobSource<'_>,
    sink: &mut BlobSink<'_>,
) -> Result<EncryptedManifest, EncryptError> {
    if recipients.public_keys.is_empty() && recipients.kek.is_none() {
        return Err(EncryptError::NoRecipients);
    }
    let mut manifest = json_of(manifest, "manifest")?;
    match manifest["mediaType"].as_str() {
        None | Some(crate::manifest::OCI_MANIFEST | crate::manifest::DOCKER_MANIFEST) => {}
        Some(other) => {
            return Err(EncryptError::Layout(format!(
                "{other:?} is not an image manifest"
            )));
        }
    }
    manifest["mediaType"] = crate::manifest::OCI_MANIFEST.into();

    let (config_digest, config_size) = descriptor(&manifest["config"], "config")?;
    if let Some(media_type) = manifest["config"]["mediaType"].as_str() {
        manifest["config"]["mediaType"] = oci_media_type(media_type).into();
    }
    let config = source(&config_digest)?;
    check_blob(&config_digest, Some(config_size), &config)?;
    sink(&config_digest, config)?;

    let layers = manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| EncryptError::Layout("manifest has no layers".to_owned()))?;
    for layer in layers.iter_mut() {
        let (digest, size) = descriptor(layer, "layer")?;
        let media_type = oci_media_type(layer["mediaType"].as_str().unwrap_or_default());
        let kind = crate::manifest::LayerKind::of(&media_type)
            .map_err(|e| EncryptError::Layout(e.to_string()))?;
        let blob = source(&digest)?;
        check_blob(&digest, Some(size), &blob)?;
        if kind.encrypted {
            layer["mediaType"] = media_type.into();
            sink(&digest, blob)?;
            continue;
        }
        let (ciphertext, annotations) = encrypt_layer(blob, &digest.to_string(), recipients)?;
        let new_digest = Digest::of(&ciphertext);
        layer["mediaType"] = format!("{media_type}+encrypted").into();
        layer["digest"] = new_digest.to_string().into();
        layer["size"] = ciphertext.len().into();
        let slot = layer
            .as_object_mut()
            .ok_or_else(|| EncryptError::Layout("layer descriptor".to_owned()))?
            .entry("annotations")
            .or_insert_with(|| json!({}));
        for (key, value) in annotations {
            slot[key] = value.into();
        }
        sink(&new_digest, ciphertext)?;
    }
    let bytes = serde_json::to_vec(&manifest).map_err(|e| EncryptError::Layout(e.to_string()))?;
    Ok(EncryptedManifest {
        digest: Digest::of(&bytes),
        bytes,
        media_type: crate::manifest::OCI_MANIFEST,
    })
}

fn descriptor(value: &Value, what: &str) -> Result<(Digest, u64), EncryptError> {
    let digest = Digest::parse(value["digest"].as_str().unwrap_or_default())
        .map_err(|e| EncryptError::Layout(format!("{what} descriptor: {e}")))?;
    let size = value["size"]
        .as_u64()
        .ok_or_else(|| EncryptError::Layout(format!("{what} descriptor has no size")))?;
    Ok((digest, size))
}

type Annotations = Vec<(&'static str, String)>;

fn encrypt_layer(
    blob: Vec<u8>,
    digest: &str,
    recipients: &Recipients,
) -> Result<(Vec<u8>, Annotations), EncryptError> {
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(key.as_mut());
    OsRng.fill_bytes(&mut nonce);
    let mut ciphertext = blob;
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
