//! Coffer attestation: verification of confidential-computing evidence.
//!
//! [`snp`] verifies **AMD SEV-SNP** reports (AMD chain to embedded roots, signature, TCB/chip
//! binding, policy); [`tdx`] verifies **Intel TDX** quotes (DCAP chain and collateral, TD
//! attributes, reference values, CCEL replay).
//!
//! [`attester`] produces evidence (configfs-tsm SNP/TDX, opt-in sample); [`kbs`] is the KBS protocol
//! v0.4.0: wire types, report_data binding, the RCAR client and the `coffer-kbs` broker (feature
//! `server`, on by default; the guest builds without it); [`identity`] is attested workload
//! identity (SPIFFE X.509 certificates the broker issues to attested guests); [`testing`] is test
//! evidence: a test chain standing in for AMD's and Intel's, and reports/quotes forged with it
//! (the forger only with the `testing` feature).
// One module (`attester::sev_guest`, the SNP_GET_REPORT ioctl) opts out, with its reasons.
#![deny(unsafe_code)]

pub mod attester;
pub mod identity;
pub mod kbs;
pub mod snp;
pub mod tdx;
pub mod testing;
