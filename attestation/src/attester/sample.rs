//! Development-only sample evidence: no hardware root of trust. Its shape is Trustee's sample
//! evidence (`svn`, base64 `report_data`) plus a `development_only` marker; every use logs a
//! warning.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Attester, AttesterError};
use crate::kbs::binding::BINDING_LEN;
use crate::kbs::types::Tee;

/// Sample attester (explicit opt-in only; never chosen by detection).
#[derive(Debug, Default)]
pub struct SampleAttester;

impl SampleAttester {
    /// Creates the attester and logs that it provides no security.
    pub fn new() -> Self {
        tracing::warn!(
            "sample attester selected: evidence is NOT hardware-backed (development only)"
        );
        Self
    }
}

impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn evidence(&self, report_data: &[u8; BINDING_LEN]) -> Result<Value, AttesterError> {
        tracing::warn!("producing sample evidence (development only, no hardware root of trust)");
        Ok(json!({
            "svn": "1",
            "report_data": B64.encode(report_data),
            "development_only": true,
        }))
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
    }
}
