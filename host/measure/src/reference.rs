//! Reference values in the shape `coffer-kbs` takes them: the JSON body of its admin endpoint
//! `POST /kbs/v0/reference-values`, `{"snp_measurements": ["<96 hex>", …]}`, which replaces the
//! broker's SNP measurement allow-list (the same list `[attestation.snp] measurements` sets at
//! start). One file registers a guest image's expected launch in one request.
//!
//! TDX values are written under `tdx_mr_td`. `coffer-kbs` does not load TDX reference values from
//! its admin API or config yet, and its upload refuses unknown keys: a file holding them is
//! refused as a whole rather than half-applied.

use serde::{Deserialize, Serialize};

/// Failures reading or extending a reference-values document.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The existing document is not valid reference-values JSON.
    #[error("not a reference-values document")]
    Parse(#[source] serde_json::Error),
    /// The document is not a JSON object.
    #[error("a reference-values document is a json object")]
    NotAnObject,
    /// An existing entry is not a 48-byte hex digest.
    #[error("entry {value:?} of {key} is not 48 bytes of hex")]
    Entry {
        /// The list.
        key: &'static str,
        /// The value.
        value: String,
    },
}

/// A reference-values document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// Accepted SEV-SNP launch measurements (lowercase hex, 48 bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snp_measurements: Vec<String>,
    /// Accepted TDX MRTD values (lowercase hex, 48 bytes); not loaded by `coffer-kbs` yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tdx_mr_td: Vec<String>,
}

impl ReferenceValues {
    /// Parses an existing document, checking every entry.
    pub fn from_json(text: &[u8]) -> Result<Self, ReferenceError> {
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(ReferenceError::Parse)?;
        if !value.is_object() {
            return Err(ReferenceError::NotAnObject);
        }
        let values: Self = serde_json::from_value(value).map_err(ReferenceError::Parse)?;
        for (key, list) in [
            ("snp_measurements", &values.snp_measurements),
            ("tdx_mr_td", &values.tdx_mr_td),
        ] {
            if let Some(value) = list.iter().find(|v| !is_digest_hex(v)) {
                return Err(ReferenceError::Entry {
                    key,
                    value: value.clone(),
                });
            }
        }
        Ok(values)
    }

    /// Adds an SNP launch measurement (once).
    pub fn add_snp(&mut self, digest: &[u8; 48]) {
        push_unique(&mut self.snp_measurements, hex::encode(digest));
    }

    /// Adds a TDX MRTD (once).
    pub fn add_tdx_mr_td(&mut self, mrtd: &[u8; 48]) {
        push_unique(&mut self.tdx_mr_td, hex::encode(mrtd));
    }

    /// The document, pretty-printed with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serialising strings in a plain struct cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

fn push_unique(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

fn is_digest_hex(s: &str) -> bool {
    s.len() == 96 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_dedup() {
        let mut v = ReferenceValues::default();
        v.add_snp(&[0xab; 48]);
        v.add_snp(&[0xab; 48]);
        v.add_snp(&[0x01; 48]);
        let text = v.to_json();
        assert!(!text.contains("tdx_mr_td"));
        let back = ReferenceValues::from_json(text.as_bytes()).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.snp_measurements.len(), 2);
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(ReferenceValues::from_json(b"{\"snp_measurements\": [\"00\"]}").is_err());
        assert!(ReferenceValues::from_json(b"{\"other\": []}").is_err());
        assert!(ReferenceValues::from_json(b"[]").is_err());
    }
}
