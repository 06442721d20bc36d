//! Wire compatibility with Trustee's KBS 0.4.0, proven against the recorded exchanges in
//! `tests/vectors/kbs/` (see its README): our types parse every recorded message and re-encode
//! it field for field; our report_data binding reproduces every recorded report_data; our JWE
//! decryption yields the recorded plaintexts with the recorded TEE private keys. A missing vector
//! fails the test.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use coffer_attestation::kbs::binding;
use coffer_attestation::kbs::jwe::TeeKeyPair;
use coffer_attestation::kbs::types::{
    Attestation, AttestationToken, Challenge, ErrorInformation, ProtectedHeader, Request, Response,
    TeePubKey,
};
use serde_json::Value;

const PY_VECTORS: [&str; 3] = [
    "py-ec-cookie.json",
    "py-ec-bearer.json",
    "py-rsa-oaep256-cookie.json",
];

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(common::vectors_dir().join("kbs").join(name))
        .unwrap_or_else(|e| panic!("KBS vector {name} is missing or unreadable: {e}"))
}

fn json_vector(name: &str) -> Value {
    serde_json::from_slice(&vector(name)).unwrap()
}

fn exchange() -> Vec<Value> {
    String::from_utf8(vector("kbs-client-exchange.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    B64.decode(body).unwrap()
}

/// Re-encoding a parsed message gives back the recorded JSON value exactly.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(recorded: &Value) -> T {
    let parsed: T = serde_json::from_value(recorded.clone()).unwrap();
    assert_eq!(&serde_json::to_value(&parsed).unwrap(), recorded);
    parsed
}

#[test]
fn py_vectors_jwe_decrypts_to_recorded_plaintext_kbs08() {
    for name in PY_VECTORS {
        let v = json_vector(name);
        let key =
            TeeKeyPair::from_pkcs8_der(&pem_to_der(v["tee_private_key_pem"].as_str().unwrap()))
                .unwrap();
        let jwe: Response = round_trips(&v["resource"]["response"]);
        let plaintext = key.decrypt(&jwe).unwrap();
        let expected = B64.decode(v["plaintext_b64"].as_str().unwrap()).unwrap();
        assert_eq!(plaintext.as_slice(), expected.as_slice(), "{name}");
        // Our key's JWK equals the tee-pubkey the client sent.
        let sent: TeePubKey =
            serde_json::from_value(v["attest"]["request"]["runtime-data"]["tee-pubkey"].clone())
                .unwrap();
        assert_eq!(key.public_jwk(), sent, "{name}");
        // Flipping one byte of the ciphertext, tag or protected header is detected (KBS-08).
        for field in ["ciphertext", "tag", "protected", "encrypted_key", "iv"] {
            let mut tampered = jwe.clone();
            let target = match field {
                "ciphertext" => &mut tampered.ciphertext,
                "tag" => &mut tampered.tag,
                "protected" => &mut tampered.protected,
                "encrypted_key" => &mut tampered.encrypted_key,
                _ => &mut tampered.iv,
            };
            let mut raw = B64URL.decode(target.as_str()).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            *target = B64URL.encode(raw);
            assert!(
                key.decrypt(&tampered).is_err(),
                "{name}: tampered {field} accepted"
            );
        }
    }
}

#[test]
fn py_vectors_report_data_matches_binding_rule_kbs02() {
    for name in PY_VECTORS {
        let v = json_vector(name);
        assert_eq!(
            v["report_data_rule"],
            "base64(SHA-384(JCS({additional-evidence, nonce, tee-pubkey})))"
        );
        let attestation: Attestation = round_trips(&v["attest"]["request"]);
        assert_eq!(
            attestation.runtime_data.nonce,
            v["auth"]["response"]["nonce"].as_str().unwrap()
        );
        let computed = binding::report_data(
            &attestation.runtime_data,
            &attestation.tee_evidence.additional_evidence,
        );
        let recorded = attestation.tee_evidence.primary_evidence["report_data"]
            .as_str()
            .unwrap();
        assert_eq!(B64.encode(computed), recorded, "{name}");
        // A swapped key or nonce changes the binding.
        let mut swapped = attestation.runtime_data.clone();
        swapped.nonce = "AAAA".into();
        assert_ne!(B64.encode(binding::report_data(&swapped, "")), recorded);
    }
}

#[test]
fn trustee_exchange_messages_round_trip_and_bind() {
    let mut attests = 0;
    for (i, line) in exchange().iter().enumerate() {
        let (req, resp) = (&line["request"], &line["response"]);
        let path = req["path"].as_str().unwrap();
        let status = resp["status"].as_u64().unwrap();
        match (req["method"].as_str().unwrap(), path) {
            ("POST", "/kbs/v0/auth") => {
                let r: Request = round_trips(&req["body"]);
                assert_eq!(r.version, "0.4.0");
                let c: Challenge = round_trips(&resp["body"]);
                assert_eq!(c.extra_params, Value::String(String::new()), "line {i}");
                assert_eq!(B64.decode(&c.nonce).unwrap().len(), 32);
                let cookie = resp["headers"]["set-cookie"].as_str().unwrap();
                assert!(cookie.starts_with("kbs-session-id="), "line {i}");
            }
            ("POST", "/kbs/v0/attest") => {
                let a: Attestation = round_trips(&req["body"]);
                let rd = binding::report_data(&a.runtime_data, &a.tee_evidence.additional_evidence);
                assert_eq!(
                    B64.encode(rd),
                    a.tee_evidence.primary_evidence["report_data"]
                        .as_str()
                        .unwrap(),
                    "line {i}"
                );
                let _: AttestationToken = round_trips(&resp["body"]);
                attests += 1;
            }
            ("GET", p) if p.starts_with("/kbs/v0/resource/") => {
                if status == 200 {
                    let jwe: Response = round_trips(&resp["body"]);
                    let header: ProtectedHeader =
                        serde_json::from_slice(&B64URL.decode(&jwe.protected).unwrap()).unwrap();
                    assert_eq!(header.alg, "ECDH-ES+A256KW");
                    assert_eq!(header.enc, "A256GCM");
                } else {
                    assert_eq!(status, 401, "line {i}");
                    let e: ErrorInformation = round_trips(&resp["body"]);
                    assert!(
                        ["TokenNotFound", "PolicyDeny"].contains(&e.kind()),
                        "line {i}: {}",
                        e.kind()
                    );
                }
            }
            _ => {}
        }
    }
    assert!(attests >= 5);
}

#[test]
fn jwe_for_another_key_type_or_key_is_refused_kbs08() {
    let rsa = json_vector("py-rsa-oaep256-cookie.json");
    let ec = json_vector("py-ec-cookie.json");
    let ec_key =
        TeeKeyPair::from_pkcs8_der(&pem_to_der(ec["tee_private_key_pem"].as_str().unwrap()))
            .unwrap();
    let rsa_jwe: Response = serde_json::from_value(rsa["resource"]["response"].clone()).unwrap();
    // alg RSA-OAEP-256 offered to an EC key: refused before any unwrap.
    assert!(ec_key.decrypt(&rsa_jwe).is_err());
    // An ECDH-ES JWE addressed to another EC key (the bearer vector's) does not decrypt.
    let other: Response =
        serde_json::from_value(json_vector("py-ec-bearer.json")["resource"]["response"].clone())
            .unwrap();
    assert!(ec_key.decrypt(&other).is_err());
    // Truncated JSON never parses into a Response.
    let text = rsa["resource"]["response"].to_string();
    assert!(serde_json::from_str::<Response>(&text[..text.len() / 2]).is_err());
}
