//! ocicrypt layer annotations and the JWEs inside them, and the KBS resource JWE.
//!
//! The first byte picks the parser:
//! - 0 (mod 4): a layer descriptor's annotations (a JSON object of strings) through image-rs's
//!   `Decryptor::layer_key` holding the EC and RSA recipient keys of `tests/vectors/ocicrypt`:
//!   `pubopts` base64 + JSON, each comma-separated JWE of the `keys.jwe` annotation (header,
//!   key agreement or RSA-OAEP, key unwrap, AES-GCM), then the private options' key, nonce and
//!   digest;
//! - 2 (mod 4): the same entry point with the rest as one JWE JSON document, which the harness
//!   puts base64-encoded into the `keys.jwe` annotation beside a valid `pubopts` (so the fuzzer
//!   mutates the JWE itself, not its base64);
//! - odd: a KBS resource reply (`kbs::types::Response`, JSON) decrypted by
//!   `kbs::jwe::TeeKeyPair::decrypt` with the EC (bit 1 clear) or RSA TEE key of the recorded
//!   `tests/vectors/kbs/py-*` exchanges, whose replies are the seeds.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use coffer_attestation::kbs::jwe::TeeKeyPair;
use coffer_attestation::kbs::types::Response;
use coffer_image::decrypt::{ANNOTATION_JWE, ANNOTATION_PUBOPTS, Decryptor, PrivateKey};
use libfuzzer_sys::fuzz_target;

/// Public options naming the one cipher (`CIPHER_AES_CTR_HMAC`), with a 32-byte HMAC.
const PUBOPTS: &str = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","cipheroptions":{}}"#;

static DECRYPTOR: LazyLock<Decryptor> = LazyLock::new(|| {
    let key = |pem| PrivateKey::from_pem(pem).expect("vector key");
    Decryptor::default()
        .with_private_key(key(include_str!(
            "../../tests/vectors/ocicrypt/keys/ec-priv.pem"
        )))
        .with_private_key(key(include_str!(
            "../../tests/vectors/ocicrypt/keys/rsa-priv.pem"
        )))
});

/// The TEE private key a recorded KBS exchange carries (PKCS#8 PEM).
fn tee_key(vector: &str) -> TeeKeyPair {
    let vector: serde_json::Value = serde_json::from_str(vector).expect("vector json");
    let pem = vector["tee_private_key_pem"].as_str().expect("vector key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("vector key base64");
    TeeKeyPair::from_pkcs8_der(&der).expect("vector key der")
}

static TEE_EC: LazyLock<TeeKeyPair> =
    LazyLock::new(|| tee_key(include_str!("../../tests/vectors/kbs/py-ec-cookie.json")));
static TEE_RSA: LazyLock<TeeKeyPair> = LazyLock::new(|| {
    tee_key(include_str!(
        "../../tests/vectors/kbs/py-rsa-oaep256-cookie.json"
    ))
});

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    if form & 3 == 0 {
        let Ok(annotations) = serde_json::from_slice::<BTreeMap<String, String>>(rest) else {
            return;
        };
        let _ = futures::executor::block_on(DECRYPTOR.layer_key(&annotations));
    } else if form & 3 == 2 {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let annotations = BTreeMap::from([
            (ANNOTATION_JWE.to_owned(), b64.encode(rest)),
            (ANNOTATION_PUBOPTS.to_owned(), b64.encode(PUBOPTS)),
        ]);
        let _ = futures::executor::block_on(DECRYPTOR.layer_key(&annotations));
    } else {
        let Ok(reply) = serde_json::from_slice::<Response>(rest) else {
            return;
        };
        let key = if form & 2 == 0 { &*TEE_EC } else { &*TEE_RSA };
        let _ = key.decrypt(&reply);
    }
});
