//! Our KBS wire types against Trustee's own, the `kbs-types` crate (0.18, `alloc` only): every
//! recorded Trustee message and every message our client and broker send parse with both and
//! encode to the same JSON, so a Trustee peer built on `kbs-types` reads ours. The last test
//! pins where `kbs-types` is looser than the checks we rely on — the reasons it is not our
//! type vocabulary (README, "The card's crates").

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use coffer_attestation::attester::SampleAttester;
use coffer_attestation::kbs::jwe::{self, TeeKeyPair};
use coffer_attestation::kbs::probe;
use coffer_attestation::kbs::types as ours;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(common::vectors_dir().join("kbs").join(name))
        .unwrap_or_else(|e| panic!("KBS vector {name} is missing or unreadable: {e}"))
}

/// `value` parses as ours (`O`) and as kbs-types' (`T`), and both encode it back unchanged.
fn same_in_both<O, T>(value: &Value, what: &str)
where
    O: DeserializeOwned + Serialize,
    T: DeserializeOwned + Serialize,
{
    let o: O =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: ours: {e}"));
    let t: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: kbs-types: {e}"));
    assert_eq!(&serde_json::to_value(&o).unwrap(), value, "{what}: ours");
    assert_eq!(
        &serde_json::to_value(&t).unwrap(),
        value,
        "{what}: kbs-types"
    );
}

#[test]
fn recorded_trustee_messages_parse_and_encode_identically() {
    let mut checked = 0;
    let text = String::from_utf8(vector("kbs-client-exchange.jsonl")).unwrap();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let line: Value = serde_json::from_str(line).unwrap();
        let (req, resp) = (&line["request"], &line["response"]);
        let status = resp["status"].as_u64().unwrap();
        let what = format!("exchange line {i}");
        match (
            req["method"].as_str().unwrap(),
            req["path"].as_str().unwrap(),
        ) {
            ("POST", "/kbs/v0/auth") => {
                same_in_both::<ours::Request, kbs_types::Request>(&req["body"], &what);
                same_in_both::<ours::Challenge, kbs_types::Challenge>(&resp["body"], &what);
                checked += 2;
            }
            ("POST", "/kbs/v0/attest") => {
                same_in_both::<ours::Attestation, kbs_types::Attestation>(&req["body"], &what);
                checked += 1;
            }
            ("GET", p) if p.starts_with("/kbs/v0/resource/") => {
                if status == 200 {
                    same_in_both::<ours::Response, kbs_types::Response>(&resp["body"], &what);
                } else {
                    same_in_both::<ours::ErrorInformation, kbs_types::ErrorInformation>(
                        &resp["body"],
                        &what,
                    );
                }
                checked += 1;
            }
            _ => {}
        }
    }
    for name in [
        "py-ec-cookie.json",
        "py-ec-bearer.json",
        "py-rsa-oaep256-cookie.json",
    ] {
        let v: Value = serde_json::from_slice(&vector(name)).unwrap();
        same_in_both::<ours::Attestation, kbs_types::Attestation>(&v["attest"]["request"], name);
        same_in_both::<ours::Response, kbs_types::Response>(&v["resource"]["response"], name);
        checked += 2;
    }
    assert_eq!(checked, 40);
}

#[test]
fn our_client_and_broker_messages_read_the_same_with_kbs_types() {
    let keys = [
        TeeKeyPair::generate_ec(),
        TeeKeyPair::generate_ec_p521(),
        coffer_attestation::kbs::jwe::TeeKeyPair::from_pkcs8_der(&rsa_pkcs8()).unwrap(),
    ];
    for key in &keys {
        let what = format!("{key:?}");
        // The client's /attest body (sample evidence) as a Trustee server parses it.
        let body = probe::attestation("bm9uY2U", key, &SampleAttester::default()).unwrap();
        same_in_both::<ours::Attestation, kbs_types::Attestation>(&body, &what);
        // The broker's resource reply: kbs-types decodes the protected header and encodes it
        // again; equal text means a client that derives the AAD from kbs-types' header (as
        // Trustee's guest-components do) authenticates exactly the header we sent.
        let reply =
            serde_json::to_value(jwe::encrypt(&key.public_jwk(), b"resource").unwrap()).unwrap();
        same_in_both::<ours::Response, kbs_types::Response>(&reply, &what);
        let parsed: kbs_types::Response = serde_json::from_value(reply.clone()).unwrap();
        let aad = parsed.protected.generate_aad().unwrap();
        assert_eq!(
            aad,
            reply["protected"].as_str().unwrap().as_bytes(),
            "{what}"
        );
    }
    let auth = json!({"version": "0.4.0", "tee": "snp", "extra-params": {}});
    same_in_both::<ours::Request, kbs_types::Request>(&auth, "auth");
}

/// A 2048-bit RSA key is slow to generate in a debug build: one PKCS#8 key from the recorded
/// Trustee vector serves.
fn rsa_pkcs8() -> Vec<u8> {
    use base64::Engine as _;
    let v: Value = serde_json::from_slice(&vector("py-rsa-oaep256-cookie.json")).unwrap();
    let pem = v["tee_private_key_pem"].as_str().unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Where `kbs-types` accepts what our types refuse: each is a check we rely on.
#[test]
fn kbs_types_is_looser_where_our_checks_need_strictness() {
    // 1. A JWE protected header with members we do not implement (`zip`, `crit`): kbs-types keeps
    //    unknown members in a flattened map, which cannot deny them; ours refuses (KBS-08).
    let header = r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","zip":"DEF","crit":["exp"]}"#;
    assert!(serde_json::from_str::<kbs_types::ProtectedHeader>(header).is_ok());
    assert!(serde_json::from_str::<ours::ProtectedHeader>(header).is_err());
    // 2. A resource reply with `aad` or an unprotected header: accepted there, refused here.
    let key = TeeKeyPair::generate_ec();
    let mut reply = serde_json::to_value(jwe::encrypt(&key.public_jwk(), b"x").unwrap()).unwrap();
    reply["aad"] = json!("YWFk");
    reply["unprotected"] = json!({"kid": "k"});
    assert!(serde_json::from_value::<kbs_types::Response>(reply.clone()).is_ok());
    assert!(serde_json::from_value::<ours::Response>(reply).is_err());
    // 3. The AAD is the protected header *as received*. kbs-types decodes it into a struct, so a
    //    client can only re-encode it: a broker that orders the members otherwise (legal JWE)
    //    gets a different AAD and an authentication failure. Ours keeps the received text.
    let reordered = r#"{"enc":"A256GCM","alg":"RSA-OAEP-256"}"#;
    let parsed: kbs_types::ProtectedHeader = serde_json::from_str(reordered).unwrap();
    let received =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, reordered);
    assert_ne!(parsed.generate_aad().unwrap(), received.into_bytes());
    // 4. TEEs we have no verifier for parse there (the broker would have to refuse them again,
    //    by hand, after parsing); ours refuses them when the request is parsed.
    for tee in ["sgx", "se", "cca", "csv", "hygondcu"] {
        let body = json!({"version": "0.4.0", "tee": tee, "extra-params": {}});
        assert!(
            serde_json::from_value::<kbs_types::Request>(body.clone()).is_ok(),
            "{tee}"
        );
        assert!(
            serde_json::from_value::<ours::Request>(body).is_err(),
            "{tee}"
        );
    }
    // 5. An `AKP` (post-quantum) tee-pubkey: a variant there, no such key type here.
    let akp = json!({"kty": "AKP", "alg": "ML-KEM-768+A192KW", "pub": "AA"});
    assert!(serde_json::from_value::<kbs_types::TeePubKey>(akp.clone()).is_ok());
    assert!(serde_json::from_value::<ours::TeePubKey>(akp).is_err());
}
