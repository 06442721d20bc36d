//! Development-only sample evidence: no hardware root of trust. Its shape is Trustee's sample
//! evidence (`svn`, base64 `report_data`) plus a `development_only` marker and, when built with
//! [`SampleAttester::with_init_data_digest`], `init_data` (hex): the stand-in for the hardware
//! field (SNP HOSTDATA, TDX MRCONFIGID) that binds the initdata digest. Every use logs a warning.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Attester, AttesterError};
use crate::kbs::binding::BINDING_LEN;
use crate::kbs::types::Tee;

/// Sample attester (explicit opt-in only; never chosen by detection).
#[derive(Debug, Default)]
pub struct SampleAttester {
    init_data_digest: Option<Vec<u8>>,
}

impl SampleAttester {
    /// Creates the attester and logs that it provides no security. Its evidence binds no
    /// initdata (the broker then acts on none of the initdata's entries, e.g. no identity).
    pub fn new() -> Self {
        tracing::warn!(
            "sample attester selected: evidence is NOT hardware-backed (development only)"
        );
        Self::default()
    }

    /// Like [`Self::new`], with evidence carrying `digest`, the digest of the initdata the
    /// client sends (as a TEE's launch measurement would).
    pub fn with_init_data_digest(digest: Vec<u8>) -> Self {
        let mut attester = Self::new();
        attester.init_data_digest = Some(digest);
        attester
    }
}

impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn evidence(&self, report_data: &[u8; BINDING_LEN]) -> Result<Value, AttesterError> {
        tracing::warn!("producing sample evidence (development only, no hardware root of trust)");
        let mut evidence = json!({
            "svn": "1",
            "report_data": B64.encode(report_data),
            "development_only": true,
        });
        if let (Some(digest), Some(map)) = (&self.init_data_digest, evidence.as_object_mut()) {
            map.insert("init_data".into(), json!(hex::encode(digest)));
        }
        Ok(evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_evidence_says_it_is_development_only() {
        let ev = SampleAttester::new().evidence(&[7u8; BINDING_LEN]).unwrap();
        assert_eq!(ev["development_only"], true);
        assert_eq!(
            B64.decode(ev["report_data"].as_str().unwrap()).unwrap(),
            vec![7u8; BINDING_LEN]
        );
        assert!(ev.get("init_data").is_none());
        let ev = SampleAttester::with_init_data_digest(vec![0xab; 32])
            .evidence(&[7u8; BINDING_LEN])
            .unwrap();
        assert_eq!(ev["init_data"], "ab".repeat(32));
    }
}
