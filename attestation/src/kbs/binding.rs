//! The report_data binding: which bytes the TEE evidence must carry for a given challenge.
//!
//! As observed from Trustee's KBS 0.4.0 (and checked against every exchange in
//! `tests/vectors/kbs/`): when the challenge selects no hash algorithm (`"extra-params": ""`),
//! report_data is **SHA-384** over the canonical JSON (RFC 8785 JCS: keys sorted, no whitespace)
//! of `{"additional-evidence": <tee-evidence.additional_evidence>, "nonce": <nonce>,
//! "tee-pubkey": <JWK>}`. Sample evidence carries it base64-encoded (48 bytes); a 64-byte hardware
//! field (SNP `REPORT_DATA`, TDX `REPORTDATA`) carries the 48 bytes followed by 16 zero bytes, and
//! is compared over all 64 bytes (INV-2: one fixed algorithm, one fixed layout).

use serde_json::{Map, Value};
use sha2::{Digest, Sha384};

use super::types::RuntimeData;

/// Length of the binding hash (SHA-384).
pub const BINDING_LEN: usize = 48;

/// Serializes `value` canonically: object keys sorted by their UTF-16 code units (JCS), no
/// insignificant whitespace, strings escaped as JSON requires. Independent of serde_json's
/// `preserve_order` feature.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serializing a scalar `Value` cannot fail; the string form is valid JSON.
    out.extend_from_slice(value.to_string().as_bytes());
}

/// The JSON object whose canonical form is hashed: runtime data plus `additional-evidence`.
pub fn runtime_data_claims(runtime: &RuntimeData, additional_evidence: &str) -> Value {
    let mut map = Map::new();
    map.insert(
        "additional-evidence".to_owned(),
        Value::String(additional_evidence.to_owned()),
    );
    map.insert("nonce".to_owned(), Value::String(runtime.nonce.clone()));
    map.insert(
        "tee-pubkey".to_owned(),
        serde_json::to_value(&runtime.tee_pubkey).unwrap_or(Value::Null),
    );
    Value::Object(map)
}

/// SHA-384 of the canonical runtime-data claims: the 48-byte binding.
pub fn report_data(runtime: &RuntimeData, additional_evidence: &str) -> [u8; BINDING_LEN] {
    let canonical = canonical_json(&runtime_data_claims(runtime, additional_evidence));
    Sha384::digest(&canonical).into()
}

/// The binding laid out in a 64-byte hardware report_data field: hash then 16 zero bytes.
pub fn report_data_64(runtime: &RuntimeData, additional_evidence: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..BINDING_LEN].copy_from_slice(&report_data(runtime, additional_evidence));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kbs::types::TeePubKey;

    fn runtime() -> RuntimeData {
        RuntimeData {
            nonce: "bm9uY2U=".into(),
            tee_pubkey: TeePubKey::Ec {
                crv: "P-256".into(),
                alg: "ECDH-ES+A256KW".into(),
                x: "eA".into(),
                y: "eQ".into(),
            },
        }
    }

    #[test]
    fn canonical_json_sorts_and_strips_whitespace_kbs02() {
        let a: Value =
            serde_json::from_str(r#"{ "b" : 1, "a" : {"z":"\u00e9", "y":[true,null]} }"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&a)).unwrap(),
            r#"{"a":{"y":[true,null],"z":"é"},"b":1}"#
        );
    }

    #[test]
    fn binding_depends_on_every_input_kbs02() {
        let base = report_data(&runtime(), "");
        let mut other = runtime();
        other.nonce = "b3RoZXI=".into();
        assert_ne!(base, report_data(&other, ""));
        assert_ne!(base, report_data(&runtime(), "x"));
        let wide = report_data_64(&runtime(), "");
        assert_eq!(&wide[..48], &base[..]);
        assert_eq!(&wide[48..], &[0u8; 16][..]);
    }
}
