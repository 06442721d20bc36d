//! `signedBy` (GPG "simple signing") signatures: OpenPGP signed messages whose literal data is
//! the JSON `{"critical": {"identity": {"docker-reference"}, "image":
//! {"docker-manifest-digest"}, "type": "atomic container signature"}, …}`, read from lookaside
//! storage laid out as skopeo writes it: `<base>/<repository>@sha256=<hex>/signature-<n>`.

use std::io::Cursor;
use std::path::Path;

use pgp::composed::{Deserializable, Message, SignedPublicKey};
use serde::Deserialize;

use crate::digest::Digest;

const MAX_SIGNATURE_BYTES: usize = 64 << 10;
const MAX_SIGNATURES: usize = 16;

/// Public keys trusted for `signedBy`.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Parses binary or armored OpenPGP public keys (each must carry valid self-signatures).
    pub fn from_bytes(data: &[u8]) -> Result<Self, String> {
        let (keys, _) = SignedPublicKey::from_reader_many(Cursor::new(data.to_vec()))
            .map_err(|e| format!("keyring: {e}"))?;
        let mut out = Vec::new();
        for key in keys {
            let key = key.map_err(|e| format!("keyring: {e}"))?;
            key.verify()
                .map_err(|e| format!("keyring self-signature: {e}"))?;
            out.push(key);
        }
        if out.is_empty() {
            return Err("keyring holds no key".to_owned());
        }
        Ok(Self { keys: out })
    }

    /// Reads a keyring file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        Self::from_bytes(&std::fs::read(path).map_err(|e| format!("reading {path:?}: {e}"))?)
    }

    /// Verifies an OpenPGP signed message against any key (primary or subkey) and returns the
    /// signed literal data.
    pub fn verify(&self, signature: &[u8]) -> Result<Vec<u8>, String> {
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err("signature too large".to_owned());
        }
        for key in &self.keys {
            let mut candidates: Vec<&dyn pgp::types::PublicKeyTrait> = vec![key];
            candidates.extend(
                key.public_subkeys
                    .iter()
                    .map(|k| k as &dyn pgp::types::PublicKeyTrait),
            );
            for candidate in candidates {
                let Ok(message) = Message::from_bytes(Cursor::new(signature.to_vec())) else {
                    return Err("not an OpenPGP message".to_owned());
                };
                let mut message = if message.is_compressed() {
                    message
                        .decompress()
                        .map_err(|_| "bad compressed packet".to_owned())?
                } else {
                    message
                };
                let Ok(data) = message.as_data_vec() else {
                    continue;
                };
                if data.len() > MAX_SIGNATURE_BYTES {
                    return Err("signed payload too large".to_owned());
                }
                if message.verify(candidate).is_ok() {
                    return Ok(data);
                }
            }
        }
        Err("signature does not verify with the policy keyring".to_owned())
    }
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks a verified simple-signing payload for `digest`; returns the signed reference.
pub fn check_payload(payload: &[u8], digest: &Digest) -> Result<String, String> {
    let payload: Payload =
        serde_json::from_slice(payload).map_err(|_| "malformed signature payload".to_owned())?;
    if payload.critical.kind != "atomic container signature" {
        return Err(format!(
            "unexpected signature type {:?}",
            payload.critical.kind
        ));
    }
    if payload.critical.image.docker_manifest_digest != digest.to_string() {
        return Err("signature is for another manifest".to_owned());
    }
    Ok(payload.critical.identity.docker_reference)
}

/// Fetches the signatures of `repository@digest` from the lookaside base (`file://` or
/// `http(s)://`), in order, until the first missing one.
pub async fn lookaside_signatures(
    client: &reqwest::Client,
    base: &str,
    repository: &str,
    digest: &Digest,
) -> Result<Vec<Vec<u8>>, String> {
    let base = base.trim_end_matches('/');
    let mut out = Vec::new();
    for n in 1..=MAX_SIGNATURES {
        let suffix = format!("{repository}@sha256={}/signature-{n}", digest.hex());
        let found = if let Some(dir) = base.strip_prefix("file://") {
            match tokio::fs::read(Path::new(dir).join(&suffix)).await {
                Ok(data) => Some(data),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("reading lookaside signature: {e}")),
            }
        } else if base.starts_with("https://") || base.starts_with("http://") {
            let response = client
                .get(format!("{base}/{suffix}"))
                .send()
                .await
                .map_err(|e| format!("fetching lookaside signature: {e}"))?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                None
            } else if !response.status().is_success() {
                return Err(format!("lookaside answered {}", response.status()));
            } else {
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| format!("fetching lookaside signature: {e}"))?;
                Some(body.to_vec())
            }
        } else {
            return Err(format!("unsupported lookaside location {base:?}"));
        };
        match found {
            Some(data) if data.len() <= MAX_SIGNATURE_BYTES => out.push(data),
            Some(_) => return Err("lookaside signature too large".to_owned()),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPG: &str = vectors_dir!("signatures/skopeo-gpg");
    const HEX: &str = "4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312";

    #[tokio::test]
    async fn skopeo_gpg_vector_verifies_with_its_keyring() {
        let digest = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let client = reqwest::Client::new();
        let sigs = lookaside_signatures(
            &client,
            &format!("file://{GPG}/lookaside"),
            "peers/hello",
            &digest,
        )
        .await
        .unwrap();
        assert_eq!(sigs.len(), 1);
        for keyring in ["pubkey.gpg", "pubkey.asc"] {
            let keyring = Keyring::from_file(Path::new(&format!("{GPG}/{keyring}"))).unwrap();
            let payload = keyring.verify(&sigs[0]).unwrap();
            assert_eq!(
                check_payload(&payload, &digest).unwrap(),
                "127.0.0.1:5000/peers/hello:signed"
            );
            assert!(check_payload(&payload, &Digest::of(b"modified manifest")).is_err());
        }
        let mut tampered = sigs[0].clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 1;
        let keyring = Keyring::from_file(Path::new(&format!("{GPG}/pubkey.gpg"))).unwrap();
        assert!(keyring.verify(&tampered).is_err());
    }
}
