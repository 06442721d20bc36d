//! JWE (JSON serialization, general and flattened) recipient decryption for
//! `org.opencontainers.image.enc.keys.jwe`: `RSA-OAEP` (SHA-1), `RSA-OAEP-256` and
//! `ECDH-ES+A256KW` key management with `A256GCM` content encryption.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{DecryptError, PrivateKey};

#[derive(Deserialize)]
struct Jwe {
    protected: Option<String>,
    #[serde(default)]
    unprotected: Option<Map<String, Value>>,
    #[serde(default)]
    recipients: Option<Vec<Recipient>>,
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    encrypted_key: Option<String>,
    #[serde(default)]
    aad: Option<String>,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct Recipient {
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    encrypted_key: Option<String>,
}

fn b64url(text: &str, what: &'static str) -> Result<Vec<u8>, DecryptError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| DecryptError::Malformed(what))
}

fn header_str<'a>(header: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    header.get(key).and_then(Value::as_str)
}

/// Decrypts the JWE JSON `jwe` with the first of `keys` that a recipient was encrypted to.
/// Returns [`DecryptError::NoMatchingKey`] when none fits.
pub(crate) fn decrypt(jwe: &[u8], keys: &[PrivateKey]) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let jwe: Jwe = serde_json::from_slice(jwe).map_err(|_| DecryptError::Malformed("jwe json"))?;
    let mut shared = match &jwe.protected {
        Some(p) => {
            serde_json::from_slice::<Map<String, Value>>(&b64url(p, "jwe protected header")?)
                .map_err(|_| DecryptError::Malformed("jwe protected header"))?
        }
        None => Map::new(),
    };
    if let Some(unprotected) = &jwe.unprotected {
        shared.extend(unprotected.clone());
    }
    let recipients = match jwe.recipients {
        Some(list) => list,
        None => vec![Recipient {
            header: jwe.header.clone(),
            encrypted_key: jwe.encrypted_key.clone(),
        }],
    };
    let iv = b64url(&jwe.iv, "jwe iv")?;
    let ciphertext = b64url(&jwe.ciphertext, "jwe ciphertext")?;
    let tag = b64url(&jwe.tag, "jwe tag")?;
    let mut aad = jwe.protected.clone().unwrap_or_default().into_bytes();
    if let Some(extra) = &jwe.aad {
        aad.push(b'.');
        aad.extend_from_slice(extra.as_bytes());
    }
    for recipient in &recipients {
        let mut header = shared.clone();
        if let Some(h) = &recipient.header {
            header.extend(h.clone());
        }
        let enc = header_str(&header, "enc").unwrap_or_default();
        if enc != "A256GCM" {
            return Err(DecryptError::Algorithm(enc.to_owned()));
        }
        let encrypted_key = b64url(
            recipient.encrypted_key.as_deref().unwrap_or_default(),
            "jwe encrypted_key",
        )?;
        for key in keys {
            let Some(cek) = unwrap_cek(&header, &encrypted_key, key)? else {
                continue;
            };
            if cek.len() != 32 || iv.len() != 12 {
                continue;
            }
            let Ok(cipher) = Aes256Gcm::new_from_slice(&cek) else {
                continue;
            };
            let mut sealed = ciphertext.clone();
            sealed.extend_from_slice(&tag);
            if let Ok(plain) = cipher.decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            ) {
                return Ok(Zeroizing::new(plain));
            }
        }
    }
    Err(DecryptError::NoMatchingKey)
}

/// The content-encryption key for `key`, or `None` when `key` does not fit this recipient.
fn unwrap_cek(
    header: &Map<String, Value>,
    encrypted_key: &[u8],
    key: &PrivateKey,
) -> Result<Option<Zeroizing<Vec<u8>>>, DecryptError> {
    let alg = header_str(header, "alg").unwrap_or_default();
    match (alg, key) {
        ("RSA-OAEP", PrivateKey::Rsa(rsa_key)) => Ok(rsa_key
            .decrypt(rsa::Oaep::new::<sha1::Sha1>(), encrypted_key)
            .ok()
            .map(Zeroizing::new)),
        ("RSA-OAEP-256", PrivateKey::Rsa(rsa_key)) => Ok(rsa_key
            .decrypt(rsa::Oaep::new::<Sha256>(), encrypted_key)
            .ok()
            .map(Zeroizing::new)),
        ("ECDH-ES+A256KW", PrivateKey::P256(secret)) => {
            let epk = header
                .get("epk")
                .and_then(Value::as_object)
                .ok_or(DecryptError::Malformed("jwe epk"))?;
            if header_str(epk, "kty") != Some("EC") || header_str(epk, "crv") != Some("P-256") {
                return Ok(None);
            }
            let x = b64url(header_str(epk, "x").unwrap_or_default(), "jwe epk x")?;
            let y = b64url(header_str(epk, "y").unwrap_or_default(), "jwe epk y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(DecryptError::Malformed("jwe epk coordinates"));
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let public = p256::PublicKey::from_sec1_bytes(point.as_bytes())
                .map_err(|_| DecryptError::Malformed("jwe epk point"))?;
            let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
            let apu = b64url(header_str(header, "apu").unwrap_or_default(), "jwe apu")?;
            let apv = b64url(header_str(header, "apv").unwrap_or_default(), "jwe apv")?;
            let kek = concat_kdf(shared.raw_secret_bytes(), alg.as_bytes(), &apu, &apv);
            let Ok(kek) = aes_kw::KekAes256::try_from(kek.as_slice()) else {
                return Ok(None);
            };
            Ok(kek.unwrap_vec(encrypted_key).ok().map(Zeroizing::new))
        }
        ("RSA-OAEP" | "RSA-OAEP-256" | "ECDH-ES+A256KW", _) => Ok(None),
        (other, _) => Err(DecryptError::Algorithm(other.to_owned())),
    }
}

/// The single-round Concat KDF of NIST SP 800-56A as profiled by RFC 7518 §4.6.2 (256-bit output).
pub(super) fn concat_kdf(z: &[u8], alg: &[u8], apu: &[u8], apv: &[u8]) -> Zeroizing<Vec<u8>> {
    let field = |h: &mut Sha256, data: &[u8]| {
        h.update((data.len() as u32).to_be_bytes());
        h.update(data);
    };
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    field(&mut h, alg);
    field(&mut h, apu);
    field(&mut h, apv);
    h.update(256u32.to_be_bytes());
    Zeroizing::new(h.finalize().to_vec())
}
