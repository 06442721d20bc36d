//! Image admission by a containers-policy.json: `insecureAcceptAnything`, `reject`, `signedBy`
//! GPG simple signing (lookaside storage, see [`crate::gpg`]) and `sigstoreSigned` with a cosign
//! public key (signatures from the `sha256-<digest>.sig` tag),
//! scope resolution by registry/namespace/repository and `signedIdentity` matching.
//!
//! Evaluated right after the manifest is resolved: an image the policy does not admit is refused
//! before its config or any layer is downloaded. Requirements this crate does not implement
//! (Fulcio/keyless sigstore, Rekor, `remapIdentity`, non-GPG `signedBy`) refuse the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::Reference;
use p256::ecdsa::signature::Verifier as _;
use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{Descriptor, ManifestDoc};
use crate::registry::{Registry, RegistryError, Source, parse_reference};

/// cosign's simple-signing layer media type.
pub const COSIGN_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation carrying a cosign signature.
pub const COSIGN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const MAX_SIGNATURE_BYTES: u64 = 64 << 10;
const MAX_SIGNATURES: usize = 16;

/// Why the policy did not admit an image (or could not be used).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("reading {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The policy JSON is malformed or has unknown fields.
    #[error("parsing policy")]
    Json(#[source] serde_json::Error),
    /// A requirement this crate does not implement (refused, never skipped).
    #[error("unsupported policy requirement: {0}")]
    Unsupported(&'static str),
    /// A public key could not be loaded.
    #[error("invalid public key {0}")]
    Key(String),
    /// The policy rejects the image.
    #[error("policy rejects {reference}: {reason}")]
    Rejected {
        /// The image reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A policy is required ([`crate::PullOptions::require_policy`]) but none is configured.
    #[error("an image policy is required but none is configured")]
    Missing,
    /// Fetching signatures failed.
    #[error("fetching signatures")]
    Registry(#[source] Box<RegistryError>),
}

/// A containers-policy.json.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Requirements for images no scope matches.
    pub default: Vec<Requirement>,
    /// Per transport (`docker`, …), per scope.
    #[serde(default)]
    pub transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// One requirement.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Requirement {
    /// Accept without checks.
    InsecureAcceptAnything {},
    /// Refuse.
    Reject {},
    /// GPG simple signing from lookaside storage.
    SignedBy {
        /// `GPGKeys` etc.
        key_type: String,
        /// Keyring file.
        #[serde(default)]
        key_path: Option<PathBuf>,
        /// Keyring files.
        #[serde(default)]
        key_paths: Option<Vec<PathBuf>>,
        /// Inline keyring.
        #[serde(default)]
        key_data: Option<String>,
        /// Identity rule.
        #[serde(default)]
        signed_identity: Option<SignedIdentity>,
    },
    /// cosign signatures verified with a public key.
    SigstoreSigned {
        /// PEM public key file.
        #[serde(default)]
        key_path: Option<PathBuf>,
        /// Base64 PEM public key.
        #[serde(default)]
        key_data: Option<String>,
        /// Keyless signing (not implemented: refuses).
        #[serde(default)]
        fulcio: Option<serde_json::Value>,
        /// Rekor key (not implemented: refuses).
        #[serde(default)]
        rekor_public_key_path: Option<PathBuf>,
        /// Identity rule.
        #[serde(default)]
        signed_identity: Option<SignedIdentity>,
    },
}

/// How the signed reference must relate to the pulled one.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum SignedIdentity {
    /// The same reference (tag or digest).
    MatchExact {},
    /// Same repository for digest references, same reference otherwise (the default).
    MatchRepoDigestOrExact {},
    /// Same repository.
    MatchRepository {},
    /// The signature names exactly this reference.
    ExactReference {
        /// The reference.
        docker_reference: String,
    },
    /// The signature names this repository.
    ExactRepository {
        /// The repository.
        docker_repository: String,
    },
    /// Prefix remapping (not implemented: refuses).
    RemapIdentity {
        /// Prefix of the pulled reference.
        prefix: String,
        /// Prefix in the signature.
        signed_prefix: String,
    },
}

impl Policy {
    /// Parses policy JSON; relative key paths are taken relative to `base`.
    pub fn from_json(text: &str, base: &Path) -> Result<Self, PolicyError> {
        let mut policy: Self = serde_json::from_str(text).map_err(PolicyError::Json)?;
        let absolutize = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let all = policy.default.iter_mut().chain(
            policy
                .transports
                .values_mut()
                .flat_map(|s| s.values_mut().flatten()),
        );
        for requirement in all {
            match requirement {
                Requirement::SignedBy {
                    key_path,
                    key_paths,
                    ..
                } => {
                    key_path.iter_mut().for_each(absolutize);
                    key_paths.iter_mut().flatten().for_each(absolutize);
                }
                Requirement::SigstoreSigned { key_path, .. } => {
                    key_path.iter_mut().for_each(absolutize)
                }
                _ => {}
            }
        }
        Ok(policy)
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// The requirements for a docker reference: the most specific matching scope
    /// (`host/repo:tag`, `host/repo`, parent namespaces, `host`, `*.domain` wildcards), then the
    /// transport default (`""`), then the global default.
    pub fn requirements_for(&self, reference: &Reference) -> &[Requirement] {
        let Some(scopes) = self.transports.get("docker") else {
            return &self.default;
        };
        let repo = format!("{}/{}", reference.registry(), reference.repository());
        let mut candidates = vec![reference.whole()];
        let mut scope = repo.as_str();
        loop {
            candidates.push(scope.to_owned());
            match scope.rfind('/') {
                Some(i) => scope = &scope[..i],
                None => break,
            }
        }
        let host = reference.registry();
        let mut rest = host;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            candidates.push(format!("*.{rest}"));
        }
        candidates.push(String::new());
        candidates
            .iter()
            .find_map(|c| scopes.get(c))
            .map_or(&self.default[..], |r| &r[..])
    }

    /// Admits or refuses the image `reference` whose manifest digest is `digest`, fetching
    /// signatures from `source` where a requirement needs them.
    pub async fn admit(
        &self,
        registry: &Registry,
        source: &Source,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<(), PolicyError> {
        let requirements = self.requirements_for(reference);
        let rejected = |reason: String| PolicyError::Rejected {
            reference: reference.whole(),
            reason,
        };
        if requirements.is_empty() {
            return Err(rejected("empty requirement list".to_owned()));
        }
        for requirement in requirements {
            match requirement {
                Requirement::InsecureAcceptAnything {} => {}
                Requirement::Reject {} => return Err(rejected("rejected by policy".to_owned())),
                Requirement::SignedBy {
                    key_type,
                    key_path,
                    key_paths,
                    key_data,
                    signed_identity,
                } => {
                    if key_type != "GPGKeys" {
                        return Err(PolicyError::Unsupported(
                            "signedBy keyType other than GPGKeys",
                        ));
                    }
                    let keyring = load_keyring(
                        key_path.as_deref(),
                        key_paths.as_deref(),
                        key_data.as_deref(),
                    )?;
                    let identity = signed_identity
                        .clone()
                        .unwrap_or(SignedIdentity::MatchRepoDigestOrExact {});
                    if let SignedIdentity::RemapIdentity { .. } = identity {
                        return Err(PolicyError::Unsupported("remapIdentity"));
                    }
                    verify_gpg(registry, reference, digest, &keyring, &identity)
                        .await
                        .map_err(rejected)?;
                }
                Requirement::SigstoreSigned {
                    key_path,
                    key_data,
                    fulcio,
                    rekor_public_key_path,
                    signed_identity,
                } => {
                    if fulcio.is_some() || rekor_public_key_path.is_some() {
                        return Err(PolicyError::Unsupported(
                            "sigstoreSigned with fulcio or rekor",
                        ));
                    }
                    let key = load_cosign_key(key_path.as_deref(), key_data.as_deref())?;
                    let identity = signed_identity
                        .clone()
                        .unwrap_or(SignedIdentity::MatchRepoDigestOrExact {});
                    if let SignedIdentity::RemapIdentity { .. } = identity {
                        return Err(PolicyError::Unsupported("remapIdentity"));
                    }
                    verify_cosign(registry, source, reference, digest, &key, &identity)
                        .await
                        .map_err(|e| match e {
                            CosignFailure::Policy(p) => p,
                            CosignFailure::Reason(reason) => rejected(reason),
                        })?;
                }
            }
        }
        Ok(())
    }
}

fn load_cosign_key(
    path: Option<&Path>,
    data: Option<&str>,
) -> Result<p256::ecdsa::VerifyingKey, PolicyError> {
    use base64::Engine as _;
    use p256::pkcs8::DecodePublicKey as _;
    let pem = match (path, data) {
        (Some(path), None) => {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
                path: path.to_owned(),
                source,
            })?
        }
        (None, Some(data)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| PolicyError::Key("keyData is not base64".to_owned()))?;
            String::from_utf8(bytes)
                .map_err(|_| PolicyError::Key("keyData is not PEM".to_owned()))?
        }
        _ => {
            return Err(PolicyError::Key(
                "exactly one of keyPath and keyData".to_owned(),
            ));
        }
    };
    p256::ecdsa::VerifyingKey::from_public_key_pem(&pem)
        .map_err(|_| PolicyError::Key("not a P-256 public key".to_owned()))
}

fn load_keyring(
    path: Option<&Path>,
    paths: Option<&[PathBuf]>,
    data: Option<&str>,
) -> Result<crate::gpg::Keyring, PolicyError> {
    use base64::Engine as _;
    let bytes = match (path, paths, data) {
        (Some(path), None, None) => std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?,
        (None, Some(paths), None) => {
            let mut all = Vec::new();
            for path in paths {
                all.extend(std::fs::read(path).map_err(|source| PolicyError::Read {
                    path: path.clone(),
                    source,
                })?);
            }
            all
        }
        (None, None, Some(data)) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| PolicyError::Key("keyData is not base64".to_owned()))?,
        _ => {
            return Err(PolicyError::Key(
                "exactly one of keyPath, keyPaths and keyData".to_owned(),
            ));
        }
    };
    crate::gpg::Keyring::from_bytes(&bytes).map_err(PolicyError::Key)
}

async fn verify_gpg(
    registry: &Registry,
    reference: &Reference,
    digest: &Digest,
    keyring: &crate::gpg::Keyring,
    identity: &SignedIdentity,
) -> Result<(), String> {
    let Some(base) = registry.lookaside_for(reference.registry()) else {
        return Err("no lookaside configured for this registry".to_owned());
    };
    let signatures = crate::gpg::lookaside_signatures(
        registry.lookaside_client(),
        base,
        reference.repository(),
        digest,
    )
    .await?;
    let mut last = "no signature found".to_owned();
    for signature in signatures {
        let checked = keyring.verify(&signature).and_then(|payload| {
            let signed = crate::gpg::check_payload(&payload, digest)?;
            identity_matches(identity, reference, &signed)
        });
        match checked {
            Ok(()) => return Ok(()),
            Err(reason) => last = reason,
        }
    }
    Err(last)
}

enum CosignFailure {
    Policy(PolicyError),
    Reason(String),
}

impl From<RegistryError> for CosignFailure {
    fn from(e: RegistryError) -> Self {
        Self::Policy(PolicyError::Registry(Box::new(e)))
    }
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: PayloadIdentity,
    image: PayloadImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PayloadIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

async fn verify_cosign(
    registry: &Registry,
    source: &Source,
    reference: &Reference,
    digest: &Digest,
    key: &p256::ecdsa::VerifyingKey,
    identity: &SignedIdentity,
) -> Result<(), CosignFailure> {
    let sig_ref = Reference::with_tag(
        source.reference.registry().to_owned(),
        source.reference.repository().to_owned(),
        format!("sha256-{}.sig", digest.hex()),
    );
    let (bytes, _) = match registry
        .manifest(source, &sig_ref, None, MAX_SIGNATURE_BYTES)
        .await
    {
        Ok(found) => found,
        Err(
            RegistryError::Request { .. }
            | RegistryError::Status { .. }
            | RegistryError::Transport { .. },
        ) => {
            return Err(CosignFailure::Reason(
                "no cosign signature found".to_owned(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let layers: Vec<Descriptor> = match ManifestDoc::parse(&bytes) {
        Ok(ManifestDoc::Image(m)) => m.layers,
        _ => {
            return Err(CosignFailure::Reason(
                "malformed signature manifest".to_owned(),
            ));
        }
    };
    let mut last = "no valid signature".to_owned();
    for layer in layers
        .iter()
        .filter(|l| l.media_type == COSIGN_SIMPLESIGNING)
        .take(MAX_SIGNATURES)
    {
        let Some(signature) = layer.annotations.get(COSIGN_SIGNATURE) else {
            continue;
        };
        let payload = registry
            .small_blob(source, layer, MAX_SIGNATURE_BYTES, "signature payload")
            .await?;
        match check_signature(&payload, signature, key, reference, digest, identity) {
            Ok(()) => return Ok(()),
            Err(reason) => last = reason,
        }
    }
    Err(CosignFailure::Reason(last))
}

/// Verifies one cosign simple-signing payload and its signature.
pub fn check_signature(
    payload: &[u8],
    signature_b64: &str,
    key: &p256::ecdsa::VerifyingKey,
    reference: &Reference,
    digest: &Digest,
    identity: &SignedIdentity,
) -> Result<(), String> {
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| "signature is not base64".to_owned())?;
    let signature = p256::ecdsa::Signature::from_der(&der)
        .map_err(|_| "signature is not DER ECDSA".to_owned())?;
    key.verify(payload, &signature)
        .map_err(|_| "signature does not verify with the policy key".to_owned())?;
    let payload: Payload =
        serde_json::from_slice(payload).map_err(|_| "malformed signature payload".to_owned())?;
    if payload.critical.kind != "cosign container image signature" {
        return Err(format!(
            "unexpected signature type {:?}",
            payload.critical.kind
        ));
    }
    if payload.critical.image.docker_manifest_digest != digest.to_string() {
        return Err("signature is for another manifest".to_owned());
    }
    identity_matches(
        identity,
        reference,
        &payload.critical.identity.docker_reference,
    )
}

fn repo_of(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

fn identity_matches(
    identity: &SignedIdentity,
    image: &Reference,
    signed: &str,
) -> Result<(), String> {
    let signed_ref =
        parse_reference(signed).map_err(|_| format!("bad signed identity {signed:?}"))?;
    let ok = match identity {
        SignedIdentity::MatchExact {} => image.whole() == signed_ref.whole(),
        SignedIdentity::MatchRepoDigestOrExact {} => {
            if image.digest().is_some() {
                repo_of(image) == repo_of(&signed_ref)
            } else {
                image.whole() == signed_ref.whole()
            }
        }
        SignedIdentity::MatchRepository {} => repo_of(image) == repo_of(&signed_ref),
        SignedIdentity::ExactReference { docker_reference } => {
            parse_reference(docker_reference).is_ok_and(|r| r.whole() == signed_ref.whole())
        }
        SignedIdentity::ExactRepository { docker_repository } => {
            parse_reference(docker_repository).is_ok_and(|r| repo_of(&r) == repo_of(&signed_ref))
        }
        SignedIdentity::RemapIdentity { .. } => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("signed identity {signed:?} does not match"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGS: &str = vectors_dir!("signatures");

    #[test]
    fn scopes_resolve_most_specific_first() {
        let policy = Policy::from_json(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "r.example.com/ns/app":[{"type":"insecureAcceptAnything"}],
                "r.example.com/ns":[{"type":"reject"}],
                "*.example.com":[{"type":"insecureAcceptAnything"}],
                "":[{"type":"reject"}]}}}"#,
            Path::new("/"),
        )
        .unwrap();
        let kind = |r: &str| match policy.requirements_for(&parse_reference(r).unwrap())[0] {
            Requirement::InsecureAcceptAnything {} => "accept",
            Requirement::Reject {} => "reject",
            _ => "other",
        };
        assert_eq!(kind("r.example.com/ns/app:1"), "accept");
        assert_eq!(kind("r.example.com/ns/other:1"), "reject");
        assert_eq!(kind("q.example.com/x:1"), "accept");
        assert_eq!(kind("docker.io/library/busybox"), "reject");
        assert!(matches!(
            Policy::from_json(
                r#"{"default":[{"type":"reject","extra":1}]}"#,
                Path::new("/")
            ),
            Err(PolicyError::Json(_))
        ));
    }

    #[test]
    fn cosign_vector_verifies_with_its_key_only() {
        let payload = std::fs::read(format!(
            "{SIGS}/cosign-style/blob-sha256-5bd4fc8e089c0e11941111664a016b9faef78a2ff08b86f15605fd82baf27161"
        ))
        .unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!("{SIGS}/cosign-style/sig-manifest.json")).unwrap(),
        )
        .unwrap();
        let sig = manifest["layers"][0]["annotations"][COSIGN_SIGNATURE]
            .as_str()
            .unwrap();
        let digest = Digest::parse(
            "sha256:4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312",
        )
        .unwrap();
        let image = parse_reference("127.0.0.1:5000/peers/hello@sha256:4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312").unwrap();
        let good = load_cosign_key(
            Some(Path::new(&format!("{SIGS}/cosign-style/cosign.pub"))),
            None,
        )
        .unwrap();
        let other = load_cosign_key(
            Some(Path::new(&format!("{SIGS}/cosign-style/other.pub"))),
            None,
        )
        .unwrap();
        let id = SignedIdentity::MatchRepoDigestOrExact {};
        check_signature(&payload, sig, &good, &image, &digest, &id).unwrap();
        assert!(check_signature(&payload, sig, &other, &image, &digest, &id).is_err());
        let elsewhere = parse_reference("127.0.0.1:5000/peers/other@sha256:4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312").unwrap();
        assert!(check_signature(&payload, sig, &good, &elsewhere, &digest, &id).is_err());
        let wrong_digest = Digest::of(b"x");
        assert!(check_signature(&payload, sig, &good, &image, &wrong_digest, &id).is_err());
        let mut tampered = payload.clone();
        tampered[10] ^= 1;
        assert!(check_signature(&tampered, sig, &good, &image, &digest, &id).is_err());
    }
}
