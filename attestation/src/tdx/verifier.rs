//! The TDX evidence verifier: the ordered checks over a quote, its collateral and the policy.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::verify::QuoteVerifier;

use super::chain::{INTEL_ROOT_CA_DER, PckInfo, verify_signatures_in};
use super::error::{TdxError, to_hex};
use super::policy::{Expected, TcbStatus, TdxPolicy, check_expected};
use super::quote::TdQuote;

/// Largest collateral file accepted (the real ones are about 16 KiB).
pub const MAX_COLLATERAL_LEN: u64 = 1024 * 1024;

/// Intel DCAP collateral for one platform (the `QuoteCollateralV3` JSON of dcap-qvl / PCCS):
/// PCK CRL and root CA CRL, TCB info and QE identity with their signatures and issuer chains.
#[derive(Debug, Clone)]
pub struct Collateral {
    inner: QuoteCollateralV3,
    fmspc: [u8; 6],
}

impl Collateral {
    /// Parses collateral JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TdxError> {
        let mut inner: QuoteCollateralV3 =
            serde_json::from_slice(bytes).map_err(|e| TdxError::Collateral {
                reason: e.to_string(),
            })?;
        // dcap-qvl prefers a PCK chain from the collateral over the quote's; TD quotes always
        // carry their own (certification data type 5), which is the one checked here.
        inner.pck_certificate_chain = None;
        let tcb_info: serde_json::Value =
            serde_json::from_str(&inner.tcb_info).map_err(|e| TdxError::Collateral {
                reason: format!("tcb_info: {e}"),
            })?;
        let fmspc = tcb_info
            .get("fmspc")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| hex::decode(s).ok())
            .and_then(|v| <[u8; 6]>::try_from(v).ok())
            .ok_or_else(|| TdxError::Collateral {
                reason: "tcb_info has no 6-byte hex fmspc".to_owned(),
            })?;
        Ok(Self { inner, fmspc })
    }

    /// Loads collateral for `fmspc` from `path`: a JSON file, or a directory holding one file per
    /// platform named `<FMSPC>.json` (upper- or lower-case hex).
    pub fn load(path: &Path, fmspc: &[u8; 6]) -> Result<Self, TdxError> {
        let file = if path.is_dir() {
            let upper = path.join(format!("{}.json", to_hex(fmspc).to_uppercase()));
            if upper.is_file() {
                upper
            } else {
                path.join(format!("{}.json", to_hex(fmspc)))
            }
        } else {
            path.to_path_buf()
        };
        let read_err = |e: std::io::Error| TdxError::Collateral {
            reason: format!("reading {}: {e}", file.display()),
        };
        let len = std::fs::metadata(&file).map_err(read_err)?.len();
        if len > MAX_COLLATERAL_LEN {
            return Err(TdxError::Collateral {
                reason: format!(
                    "{} has {len} bytes, more than {MAX_COLLATERAL_LEN}",
                    file.display()
                ),
            });
        }
        Self::from_json(&std::fs::read(&file).map_err(read_err)?)
    }

    /// FMSPC the collateral's TCB info is for.
    pub fn fmspc(&self) -> [u8; 6] {
        self.fmspc
    }
}

/// The TCB verdict from collateral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbVerdict {
    /// Merged platform and QE TCB status.
    pub status: TcbStatus,
    /// Advisories that apply.
    pub advisory_ids: Vec<String>,
}

/// A quote that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedQuote {
    /// The decoded quote.
    pub quote: TdQuote,
    /// What the PCK chain says about the platform.
    pub pck: PckInfo,
    /// TCB verdict from collateral; `None` only from [`TdxVerifier::verify_signature_only`].
    pub tcb: Option<TcbVerdict>,
}

/// Verifies TDX quotes against the embedded Intel root and a [`TdxPolicy`].
#[derive(Debug, Clone, Default)]
pub struct TdxVerifier {
    policy: TdxPolicy,
    testing_root: Option<Vec<u8>>,
}

impl TdxVerifier {
    /// A verifier enforcing `policy`, trusting Intel's root.
    pub fn new(policy: TdxPolicy) -> Self {
        Self {
            policy,
            testing_root: None,
        }
    }

    /// The same verifier trusting a test chain's root (DER) too (development and CI only):
    /// quotes it certifies, with collateral it signed, pass the same checks as Intel-certified
    /// ones and are marked [`PckInfo::testing`].
    pub fn trusting_testing_root(mut self, root_der: Vec<u8>) -> Self {
        self.testing_root = Some(root_der);
        self
    }

    /// The root a verified PCK chain ended at (DER).
    fn root_of(&self, pck: &PckInfo) -> Vec<u8> {
        match (&self.testing_root, pck.testing) {
            (Some(root), true) => root.clone(),
            _ => INTEL_ROOT_CA_DER.to_vec(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &TdxPolicy {
        &self.policy
    }

    /// Full verification, in this order; the first failure is returned:
    /// 1. decode; TD quote v4/v5 only (SGX refused), ECDSA P-256, Intel QE;
    /// 2. PCK chain to the embedded Intel root at `now`, QE report signature and binding, quote
    ///    signature ([`super::chain`]);
    /// 3. the collateral is for the PCK certificate's FMSPC;
    /// 4. dcap-qvl with the collateral at `now`: CRLs (incl. expiry), TCB info and QE identity
    ///    signatures, issue/next-update dates, QE identity, TCB level match, debug/SEPT_VE
    ///    attributes and MRSERVICETD (as allowed by the policy);
    /// 5. TCB status in the allow-list, no denied advisory;
    /// 6. TD attributes ([`TdxPolicy::check_attributes`]);
    /// 7. MRTD/RTMR/MRSEAM/XFAM reference values;
    /// 8. REPORTDATA and MRCONFIGID exact.
    pub fn verify(
        &self,
        quote_bytes: &[u8],
        collateral: &Collateral,
        now: SystemTime,
        expected: &Expected,
    ) -> Result<VerifiedQuote, TdxError> {
        let quote = TdQuote::parse(quote_bytes)?;
        let pck = verify_signatures_in(quote_bytes, &quote, now, self.testing_root.as_deref())?;
        if pck.fmspc != collateral.fmspc {
            return Err(TdxError::FmspcMismatch {
                quote: to_hex(&pck.fmspc).to_uppercase(),
                collateral: to_hex(&collateral.fmspc).to_uppercase(),
            });
        }
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let report = QuoteVerifier::new(self.root_of(&pck))
            .allow_service_td(self.policy.allow_service_td)
            .verify(quote_bytes, &collateral.inner, now_secs)
            .map_err(|e| TdxError::Dcap {
                reason: format!("{e:#}"),
            })?;
        let status: TcbStatus = report.status.parse()?;
        self.policy.check_tcb(status, &report.advisory_ids)?;
        self.check_report(&quote, expected)?;
        tracing::debug!(%status, fmspc = %to_hex(&pck.fmspc), "tdx quote verified");
        Ok(VerifiedQuote {
            quote,
            pck,
            tcb: Some(TcbVerdict {
                status,
                advisory_ids: report.advisory_ids,
            }),
        })
    }

    /// Steps 1, 2 and 6–8 of [`Self::verify`], for evidence without collateral: proves the quote
    /// comes from a genuine Intel platform's QE and was not altered, but **not** that the
    /// platform's TCB is current or that its PCK is not revoked. Never release secrets on this.
    pub fn verify_signature_only(
        &self,
        quote_bytes: &[u8],
        now: SystemTime,
        expected: &Expected,
    ) -> Result<VerifiedQuote, TdxError> {
        let quote = TdQuote::parse(quote_bytes)?;
        let pck = verify_signatures_in(quote_bytes, &quote, now, self.testing_root.as_deref())?;
        self.check_report(&quote, expected)?;
        tracing::warn!(
            "tdx quote verified without collateral: TCB status and revocation unchecked"
        );
        Ok(VerifiedQuote {
            quote,
            pck,
            tcb: None,
        })
    }

    fn check_report(&self, quote: &TdQuote, expected: &Expected) -> Result<(), TdxError> {
        self.policy.check_attributes(&quote.report)?;
        self.policy.check_reference_values(&quote.report)?;
        check_expected(&quote.report, expected)
    }
}
