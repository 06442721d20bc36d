//! Cosign key-based signing: the other half of `sigstoreSigned` verification
//! ([`crate::policy`]). A signature is a simple-signing payload naming the image's repository
//! and manifest digest, signed with ECDSA P-256 / SHA-256 (DER, base64), stored as a layer of an
//! OCI artifact tagged `sha256-<hex>.sig` in the image's repository — the layout cosign writes
//! and the verifier reads. Signing an image that already has signatures keeps them and adds one.
//!
//! The image is resolved and its manifest digest checked before anything is signed: a signature
//! is only ever made for a manifest this process has read and hashed.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use oci_client::Reference;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use serde::Serialize;

use crate::config::{Credentials, Limits, RegistriesConfig};
use crate::digest::Digest;
use crate::manifest::{Descriptor, ManifestDoc, OCI_MANIFEST};
use crate::policy::{COSIGN_SIGNATURE, COSIGN_SIMPLESIGNING};
use crate::registry::{Registry, RegistryError, Source, parse_reference};

/// Media type of the signature artifact's config.
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Bound on an existing signature manifest and each payload kept from it.
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;
/// Bound on the signatures one artifact may hold (the verifier reads at most this many too).
const MAX_SIGNATURES: usize = 16;

/// Why an image could not be signed. Nothing is pushed unless every step before it succeeded;
/// the signature manifest goes last.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The signing key file could not be read.
    #[error("reading the signing key {path}")]
    KeyFile {
        /// Key file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key is not an unencrypted P-256 private key in PEM (PKCS#8 or SEC1).
    #[error("the signing key is not an unencrypted P-256 private key (PEM, PKCS#8 or SEC1)")]
    Key,
    /// The registry could not be reached, or refused a request.
    #[error("registry")]
    Registry(#[from] RegistryError),
    /// The image's manifest is not a single image manifest or index this crate reads.
    #[error("the image's manifest")]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The existing signature artifact is malformed or too large to extend.
    #[error("the existing signature artifact {0}: {1}")]
    Existing(String, &'static str),
}

/// An ECDSA P-256 signing key (zeroized on drop by the `p256` crate).
pub struct CosignKey(SigningKey);

impl std::fmt::Debug for CosignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CosignKey(<redacted>)")
    }
}

impl CosignKey {
    /// Parses a PEM private key: PKCS#8 (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256`) or SEC1 (`EC PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, SignError> {
        use p256::pkcs8::DecodePrivateKey as _;
        let pem = zeroize::Zeroizing::new(pem.trim().to_owned());
        if let Ok(key) = SigningKey::from_pkcs8_pem(&pem) {
            return Ok(Self(key));
        }
        p256::SecretKey::from_sec1_pem(&pem)
            .map(|secret| Self(SigningKey::from(secret)))
            .map_err(|_| SignError::Key)
    }

    /// Reads a PEM private key file.
    pub fn from_file(path: &Path) -> Result<Self, SignError> {
        let pem = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            SignError::KeyFile {
                path: path.to_owned(),
                source,
            }
        })?);
        Self::from_pem(&pem)
    }

    /// The matching public key as SPKI PEM (what a `sigstoreSigned` policy's `keyPath` or
    /// `keyData` holds).
    pub fn public_key_pem(&self) -> Result<String, SignError> {
        use p256::pkcs8::EncodePublicKey as _;
        self.0
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|_| SignError::Key)
    }
}

/// The simple-signing payload for `docker_reference` (registry/repository) at `digest`.
#[derive(Serialize)]
struct Payload<'a> {
    critical: Critical<'a>,
    optional: Option<()>,
}

#[derive(Serialize)]
struct Critical<'a> {
    identity: Identity<'a>,
    image: ImageDigest,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Identity<'a> {
    #[serde(rename = "docker-reference")]
    docker_reference: &'a str,
}

#[derive(Serialize)]
struct ImageDigest {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Builds the payload bytes and their base64 DER signature.
pub fn sign_payload(key: &CosignKey, docker_reference: &str, digest: &Digest) -> (Vec<u8>, String) {
    let payload = Payload {
        critical: Critical {
            identity: Identity { docker_reference },
            image: ImageDigest {
                docker_manifest_digest: digest.to_string(),
            },
            kind: "cosign container image signature",
        },
        optional: None,
    };
    // A derived Serialize of plain strings cannot fail.
    let bytes = serde_json::to_vec(&payload).unwrap_or_default();
    let signature: p256::ecdsa::Signature = key.0.sign(&bytes);
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    (bytes, b64)
}

/// Options for [`sign_image`].
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// Registries config (insecure hosts, CAs). Mirrors are not used: signatures go to the
    /// image's own registry.
    pub registries: RegistriesConfig,
    /// Registry credentials.
    pub credentials: Credentials,
    /// Size bounds for the image manifest.
    pub limits: Limits,
}

/// What [`sign_image`] did.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signed manifest's digest.
    pub digest: Digest,
    /// The signed identity (`registry/repository`).
    pub identity: String,
    /// The signature artifact's reference (`…:sha256-<hex>.sig`).
    pub signature_ref: String,
    /// Signatures in the artifact now, this one included.
    pub signatures: usize,
}

/// Signs the image `reference` (a tag is resolved to its manifest digest; a pinned digest must
/// match the registry's manifest) and pushes the signature artifact beside it.
pub async fn sign_image(
    reference: &str,
    key: &CosignKey,
    options: &SignOptions,
) -> Result<Signed, SignError> {
    let reference = parse_reference(reference)?;
    let registry = Registry::new(options.registries.clone(), options.credentials.clone())?;
    // The registry itself, never a mirror: the signature must live where verifiers look.
    let source = registry
        .sources(&reference)
        .pop()
        .ok_or(crate::manifest::ManifestError::NoPlatform)?;
    let pinned = reference
        .digest()
        .map(Digest::parse)
        .transpose()
        .map_err(|_| crate::manifest::ManifestError::MediaType("non-sha256 digest".into()))?;
    let (bytes, digest) = registry
        .manifest(
            &source,
            &reference,
            pinned.as_ref(),
            options.limits.max_manifest_bytes,
        )
        .await?;
    // Only a manifest or index this crate reads gets signed.
    ManifestDoc::parse(&bytes)?;
    let identity = format!("{}/{}", reference.registry(), reference.repository());
    let (payload, signature) = sign_payload(key, &identity, &digest);

    let sig_tag = format!("sha256-{}.sig", digest.hex());
    let target = Reference::with_tag(
        reference.registry().to_owned(),
        reference.repository().to_owned(),
        sig_tag,
    );
    let mut layers = existing_signatures(&registry, &source, &target).await?;
    let payload_digest = Digest::of(&payload);
    let duplicate = layers.iter().any(|l| {
        l.digest == payload_digest && l.annotations.get(COSIGN_SIGNATURE) == Some(&signature)
    });
    if !duplicate {
        if layers.len() >= MAX_SIGNATURES {
            return Err(SignError::Existing(
                target.whole(),
                "already holds the maximum number of signatures",
            ));
        }
        registry
            .push_blob(&target, &payload_digest, &payload)
            .await?;
        layers.push(SigLayer {
            digest: payload_digest,
            size: payload.len() as u64,
            annotations: BTreeMap::from([(COSIGN_SIGNATURE.to_owned(), signature)]),
        });
    }
    let config = artifact_config(&layers);
    let config_digest = Digest::of(&config);
    registry.push_blob(&target, &config_digest, &config).await?;
    let manifest = artifact_manifest(&config_digest, config.len(), &layers);
    registry
        .push_manifest(&target, manifest, OCI_MANIFEST)
        .await?;
    tracing::info!(image = %reference.whole(), %digest, signature = %target.whole(), "image signed");
    Ok(Signed {
        digest,
        identity,
        signature_ref: target.whole(),
        signatures: layers.len(),
    })
}

/// One simple-signing layer of a signature artifact.
#[derive(Debug, Clone)]
struct SigLayer {
    digest: Digest,
    size: u64,
    annotations: BTreeMap<String, String>,
}

/// The simple-signing layers of an existing artifact at `target` (none when there is none).
async fn existing_signatures(
    registry: &Registry,
    source: &Source,
    target: &Reference,
) -> Result<Vec<SigLayer>, SignError> {
    let bytes = match registry
        .manifest(source, target, None, MAX_SIGNATURE_BYTES)
        .await
    {
        Ok((bytes, _)) => bytes,
        // Nothing signed yet. Any other failure stops the signing: overwriting an artifact that
        // could not be read would drop its signatures.
        Err(RegistryError::Status { status: 404, .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let layers: Vec<Descriptor> = match ManifestDoc::parse(&bytes) {
        Ok(ManifestDoc::Image(m)) => m.layers,
        _ => {
            return Err(SignError::Existing(
                target.whole(),
                "is not an image manifest",
            ));
        }
    };
    let kept: Vec<SigLayer> = layers
        .into_iter()
        .filter(|l| l.media_type == COSIGN_SIMPLESIGNING && l.size <= MAX_SIGNATURE_BYTES)
        .map(|l| SigLayer {
            digest: l.digest,
            size: l.size,
            annotations: l.annotations,
        })
        .collect();
    if kept.len() > MAX_SIGNATURES {
        return Err(SignError::Existing(
            target.whole(),
            "holds too many signatures",
        ));
    }
    Ok(kept)
}

/// The artifact's config: one diff_id and one history entry per signature layer.
fn artifact_config(layers: &[SigLayer]) -> Vec<u8> {
    const EPOCH: &str = "0001-01-01T00:00:00Z";
    let config = serde_json::json!({
        "architecture": "",
        "created": EPOCH,
        "history": layers.iter().map(|_| serde_json::json!({"created": EPOCH})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
        },
        "config": {},
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

fn artifact_manifest(config: &Digest, config_size: usize, layers: &[SigLayer]) -> Vec<u8> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config_size, "digest": config.to_string()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": COSIGN_SIMPLESIGNING,
            "size": l.size,
            "digest": l.digest.to_string(),
            "annotations": l.annotations,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{SignedIdentity, check_signature};

    /// A fresh PKCS#8 PEM key, as `openssl genpkey -algorithm EC` writes it.
    fn key_pem() -> String {
        use p256::pkcs8::EncodePrivateKey as _;
        SigningKey::random(&mut rand_core::OsRng)
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    }

    fn reference() -> Reference {
        parse_reference(&format!(
            "127.0.0.1:5000/app/demo@sha256:{}",
            "ab".repeat(32)
        ))
        .unwrap()
    }

    #[test]
    fn signature_verifies_with_its_public_key_only() {
        let key = CosignKey::from_pem(&key_pem()).unwrap();
        let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let (payload, sig) = sign_payload(&key, "127.0.0.1:5000/app/demo", &digest);
        let public = key.0.verifying_key();
        let identity = SignedIdentity::MatchRepoDigestOrExact {};
        check_signature(&payload, &sig, public, &reference(), &digest, &identity).unwrap();

        // Another key's public half refuses it (the verifier's "signature by another key").
        let other = SigningKey::random(&mut rand_core::OsRng);
        let err = check_signature(
            &payload,
            &sig,
            other.verifying_key(),
            &reference(),
            &digest,
            &identity,
        )
        .unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        // The signature binds the digest: another manifest is refused.
        let elsewhere = Digest::parse(&format!("sha256:{}", "cd".repeat(32))).unwrap();
        let err = check_signature(&payload, &sig, public, &reference(), &elsewhere, &identity)
            .unwrap_err();
        assert!(err.contains("another manifest"), "{err}");
    }

    #[test]
    fn keys_load_from_pkcs8_and_sec1_and_refuse_others() {
        let key = CosignKey::from_pem(&key_pem()).unwrap();
        assert!(
            key.public_key_pem()
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        assert_eq!(format!("{key:?}"), "CosignKey(<redacted>)");
        use p256::pkcs8::LineEnding;
        let sec1 = p256::SecretKey::random(&mut rand_core::OsRng)
            .to_sec1_pem(LineEnding::LF)
            .unwrap();
        CosignKey::from_pem(&sec1).unwrap();
        assert!(matches!(
            CosignKey::from_pem(&key.public_key_pem().unwrap()),
            Err(SignError::Key)
        ));
        assert!(matches!(CosignKey::from_pem("junk"), Err(SignError::Key)));
    }

    #[test]
    fn artifact_lists_every_signature_layer() {
        let layers = vec![SigLayer {
            digest: Digest::of(b"p"),
            size: 1,
            annotations: BTreeMap::from([(COSIGN_SIGNATURE.to_owned(), "c2ln".to_owned())]),
        }];
        let config = artifact_config(&layers);
        let manifest = artifact_manifest(&Digest::of(&config), config.len(), &layers);
        let ManifestDoc::Image(parsed) = ManifestDoc::parse(&manifest).unwrap() else {
            panic!("not an image manifest");
        };
        assert_eq!(parsed.layers.len(), 1);
        assert_eq!(parsed.layers[0].media_type, COSIGN_SIMPLESIGNING);
        assert_eq!(parsed.layers[0].annotations[COSIGN_SIGNATURE], "c2ln");
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            Digest::of(b"p").to_string()
        );
    }
}
