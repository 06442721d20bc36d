//! Intel TDX evidence verification.
//!
//! [`TdxVerifier::verify`] takes a DCAP quote (version 4, or 5 with a TDX 1.0/1.5 body), Intel
//! collateral ([`Collateral`], the `QuoteCollateralV3` JSON), the time to check validity at and
//! the values the relying party expects. It enforces, in order (catalogue §1.7, test IDs KBS-06):
//!
//! 1. **Shape**: a TD quote (TEE type 0x81; SGX quotes are refused), ECDSA P-256, Intel QE.
//! 2. **Signatures**: PCK chain to the embedded Intel SGX Root CA at `now`, QE report signed by
//!    the PCK key and binding the attestation key, quote signed by the attestation key
//!    ([`chain`], no collateral needed).
//! 3. **Collateral** (via `dcap-qvl`): FMSPC, CRLs and their expiry, TCB info and QE identity
//!    signatures and dates, TCB level.
//! 4. **TCB status** in the policy's allow-list (default: `UpToDate` only), no denied advisory.
//! 5. **TD attributes**: no DEBUG or other TUD bit, SEPT_VE_DISABLE set, MIGRATABLE and a bound
//!    service TD refused unless allowed.
//! 6. **Reference values**: MRTD, RTMR0–3, MRSEAM, XFAM when pinned; a pinned register with no
//!    accepted value refuses.
//! 7. **Expected data**: REPORTDATA (64 B) and MRCONFIGID (48 B, init-data digest) exact.
//!
//! Step 2 and 3 trust Intel's embedded root and, only when the caller adds one
//! ([`TdxVerifier::trusting_testing_root`]), a test chain's root (made by `coffer attestation
//! testing-ca`, with its own collateral): every other step is the same for both.
//!
//! [`ccel`] parses the CCEL event log and replays it into RTMR values to compare with a quote.
//! Not done here: fetching collateral from Intel PCS / a PCCS.

pub mod ccel;
mod chain;
mod error;
mod policy;
mod quote;
mod verifier;

pub use chain::{
    INTEL_ROOT_CA_DER, PckInfo, intel_root, verify_pck_chain, verify_pck_chain_in,
    verify_signatures, verify_signatures_in,
};
pub use error::{CertRole, TdxError};
pub use policy::{Expected, Pinned, ReferenceValues, TcbStatus, TdxPolicy, check_expected};
pub use quote::{
    ATTESTATION_KEY_ECDSA_P256, CERT_TYPE_PCK_CHAIN, CERT_TYPE_QE_REPORT, INTEL_QE_VENDOR_ID,
    MAX_QUOTE_LEN, TEE_TYPE_SGX, TEE_TYPE_TDX, TdAttributes, TdQuote, TdReport,
};
pub use verifier::{Collateral, MAX_COLLATERAL_LEN, TcbVerdict, TdxVerifier, VerifiedQuote};
