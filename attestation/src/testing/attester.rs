//! [`ForgingAttester`]: an attester whose evidence is forged with the test chain, for a KBS
//! handshake against a broker that trusts it (`[testing]`): the client side of an end-to-end
//! test of reference values and resource policies.

use serde_json::Value;

use super::snp::{SnpFields, SnpTestChain};
use super::tdx::{self, TdxFields, TdxTestChain};
use crate::attester::{Attester, AttesterError};
use crate::kbs::binding::BINDING_LEN;
use crate::kbs::types::Tee;

/// Evidence with chosen fields, signed by a test chain; report_data is the handshake's binding
/// (followed by 16 zero bytes, as hardware carries it) unless [`Self::keeping_report_data`].
#[derive(Debug)]
pub enum ForgingAttester {
    /// SEV-SNP reports.
    Snp {
        /// The test chain.
        chain: Box<SnpTestChain>,
        /// The report's fields.
        fields: SnpFields,
        /// Keep `fields.report_data` instead of the binding.
        keep_report_data: bool,
    },
    /// TDX quotes.
    Tdx {
        /// The test chain.
        chain: Box<TdxTestChain>,
        /// The quote's fields.
        fields: TdxFields,
        /// Keep `fields.report_data` instead of the binding.
        keep_report_data: bool,
    },
}

impl ForgingAttester {
    /// SNP reports with `fields`.
    pub fn snp(chain: SnpTestChain, fields: SnpFields) -> Self {
        tracing::warn!("forging SNP evidence with a TEST chain (development and CI only)");
        Self::Snp {
            chain: Box::new(chain),
            fields,
            keep_report_data: false,
        }
    }

    /// TDX quotes with `fields`.
    pub fn tdx(chain: TdxTestChain, fields: TdxFields) -> Self {
        tracing::warn!("forging TDX evidence with a TEST chain (development and CI only)");
        Self::Tdx {
            chain: Box::new(chain),
            fields,
            keep_report_data: false,
        }
    }

    /// Evidence carrying the fields' report_data whatever the handshake binds (to test that
    /// a broker refuses it).
    pub fn keeping_report_data(mut self) -> Self {
        match &mut self {
            Self::Snp {
                keep_report_data, ..
            }
            | Self::Tdx {
                keep_report_data, ..
            } => *keep_report_data = true,
        }
        self
    }
}

fn padded(binding: &[u8; BINDING_LEN]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..BINDING_LEN].copy_from_slice(binding);
    out
}

fn forge_error(e: super::TestChainError) -> AttesterError {
    AttesterError::Forge {
        reason: e.to_string(),
    }
}

impl Attester for ForgingAttester {
    fn tee(&self) -> Tee {
        match self {
            Self::Snp { .. } => Tee::Snp,
            Self::Tdx { .. } => Tee::Tdx,
        }
    }

    fn evidence(&self, report_data: &[u8; BINDING_LEN]) -> Result<Value, AttesterError> {
        match self {
            Self::Snp {
                chain,
                fields,
                keep_report_data,
            } => {
                let mut fields = fields.clone();
                if !keep_report_data {
                    fields.report_data = padded(report_data);
                }
                Ok(chain.forge(&fields).map_err(forge_error)?.evidence())
            }
            Self::Tdx {
                chain,
                fields,
                keep_report_data,
            } => {
                let mut fields = fields.clone();
                if !keep_report_data {
                    fields.report_data = padded(report_data);
                }
                Ok(tdx::evidence(&chain.forge(&fields)))
            }
        }
    }
}
