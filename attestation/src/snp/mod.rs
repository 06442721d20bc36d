//! AMD SEV-SNP evidence verification.
//!
//! [`SnpVerifier::verify`] takes the raw 1184-byte attestation report, the VCEK (or VLEK) in DER,
//! the time to check certificate validity at, and the values the relying party expects. It
//! enforces, in order (catalogue §1.6, test IDs KBS-05):
//!
//! 1. **Shape**: exactly 0x4A0 bytes, version 2 to 5 ([`Report::parse`]).
//! 2. **Version** `>=` [`SnpPolicy::min_report_version`] (default [`REPORT_VERSION_MIN`] = 2).
//! 3. **VMPL** is 0.
//! 4. **Guest policy**: DEBUG and MIGRATE_MA refused unless allowed; optional SMT / single-socket rules.
//! 5. **Chain**: the embedded ARK is self-signed and signs the ASK/ASVK; the ASK signs the VCEK
//!    (the ASVK signs a VLEK); every certificate is valid at `now`. Only the embedded roots are
//!    trusted, so a guest- or host-supplied ARK is never used. Then revocation, when CRLs are
//!    given (below).
//! 6. **Key kind**: the report's `KEY_INFO.SIGNING_KEY` matches the certificate (VCEK vs VLEK),
//!    VLEK only if allowed, and a v3 report's CPUID generation matches the chain's.
//! 7. **Signature**: ECDSA P-384 / SHA-384 over bytes 0x000..0x2A0 (r, s little-endian at 0x2A0).
//! 8. **TCB binding**: `reported_tcb` equals the certificate's TCB extensions; for a VCEK,
//!    `chip_id` is non-zero and equals the hwID extension.
//! 9. **Reference values**: optional minimum reported/launch TCB and measurement allow-list.
//! 10. **Expected data**: `report_data` (64 B) and, if given, `host_data` (32 B) match exactly.
//!
//! Step 5 trusts AMD's embedded roots and, only when the caller adds them
//! ([`SnpVerifier::trusting_testing_roots`]), a test chain's ([`AmdRoots::testing`], made by
//! `coffer attestation testing-ca`): every other step is the same for both.
//!
//! **Revocation** ([`crl`], step 5, KBS-05 "revoked VCEK"): with a [`CrlSet`]
//! ([`SnpVerifier::with_crls`]) the chain's ASK/ASVK and VCEK/VLEK must not be listed by the CRL
//! of its product (AMD KDS `/vcek/v1/{product}/crl`, `/vlek/v1/{product}/crl`), which must be
//! issued and signed by the chain's ARK and current at `now`. The CRLs are input (files an
//! operator fetches): without one for the product the evidence passes unchecked, unless the set
//! is [`CrlSet::required`], which production brokers should set.
//!
//! Not done here: fetching VCEKs or CRLs from AMD KDS (the broker has no internet).

mod certs;
pub mod crl;
mod error;
mod report;
mod verifier;

pub use certs::{
    AmdRoots, CertRole, CertTcb, EndorsementKey, oids, verify_endorsement_key,
    verify_endorsement_key_in, verify_endorsement_key_with,
};
pub use crl::{AmdCrl, CrlKind, CrlSet, MAX_CRL_LEN};
pub use error::SnpError;
pub use report::{
    Cpuid, Generation, GuestPolicy, REPORT_LEN, Report, SIG_ALGO_ECDSA_P384_SHA384, SIGNED_LEN,
    SUPPORTED_VERSIONS, SigningKey, TcbVersion, VERSION_CPUID, VERSION_MIT_VECTORS,
};
pub use verifier::{
    Expected, MinimumTcb, REPORT_VERSION_MIN, SnpPolicy, SnpVerifier, VerifiedReport,
    check_expected, check_tcb_binding, verify_report_signature,
};
