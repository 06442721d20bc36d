//! Test evidence for brokers and policies: a **test chain** standing in for AMD's and Intel's
//! (`coffer attestation testing-ca`) and SNP reports / TDX quotes with chosen fields signed by it
//! (`coffer attestation forge`, [`ForgingAttester`] for a KBS handshake).
//!
//! Development and CI only. Nothing here weakens a verifier by itself: the SNP and TDX verifiers
//! trust a test chain only when their caller adds its roots ([`crate::snp::SnpVerifier::trusting_testing_roots`],
//! [`crate::tdx::TdxVerifier::trusting_testing_root`]; for `coffer-kbs` the explicit `[testing]
//! ca_dir`), and then run every check they run on real evidence: the chain (only its root
//! differs), signatures, TCB binding, guest policy / TD attributes, TCB minimums and status,
//! reference values, report_data and host data. What a test chain verifies is marked
//! (`testing_root`).
//!
//! This module's loader of a test chain's *public* roots ([`TestChainRoots`]) is always built (the
//! broker needs it for `[testing]`); the generator and the forger, which hold private keys, only
//! with the `testing` feature, which the `coffer` CLI and the tests enable and `coffer-kbs` does
//! not need.
//!
//! A test chain directory:
//!
//! | file | what |
//! |---|---|
//! | `TESTING-ONLY` | what this directory is |
//! | `snp/ark.pem`, `snp/ask.pem` | the SNP test ARK (self-signed) and ASK, RSA-3072, RSASSA-PSS/SHA-384, shaped like AMD's Milan chain |
//! | `snp/ask-key.pem` | the ASK's private key (PKCS#8, mode 0600): issues a VCEK per forged report, for its TCB and chip id |
//! | `snp/ark-key.pem` | the ARK's private key (PKCS#8, mode 0600): signs CRLs shaped like AMD KDS's (tests of revocation, KBS-05) |
//! | `tdx/root.der`, `tdx/root.pem` | the TDX test root CA (P-256) |
//! | `tdx/pck-chain.pem`, `tdx/pck-key.pem` | a PCK certificate (with the Intel SGX extension: FMSPC, CPUSVN, PCESVN) and PCK CA, and the PCK key |
//! | `tdx/collateral/<FMSPC>.json` | collateral signed by the test chain: TCB info (an `UpToDate` and an `OutOfDate` level), QE identity, the root's and the PCK CA's CRLs |

use std::path::{Path, PathBuf};

use crate::snp::{AmdRoots, Generation, SnpError};

#[cfg(feature = "testing")]
mod attester;
#[cfg(feature = "testing")]
pub mod postgres;
#[cfg(feature = "testing")]
pub mod replicas;
#[cfg(feature = "testing")]
pub mod snp;
#[cfg(feature = "testing")]
pub mod tdx;

#[cfg(feature = "testing")]
pub use attester::ForgingAttester;

/// The marker file of a test chain directory.
pub const MARKER: &str = "TESTING-ONLY";
/// SNP test ARK (PEM), relative to the directory.
pub const SNP_ARK: &str = "snp/ark.pem";
/// SNP test ASK (PEM).
pub const SNP_ASK: &str = "snp/ask.pem";
/// SNP test ASK private key (PKCS#8 PEM).
pub const SNP_ASK_KEY: &str = "snp/ask-key.pem";
/// SNP test ARK private key (PKCS#8 PEM): signs CRLs ([`snp::SnpTestChain::issue_crl`]).
pub const SNP_ARK_KEY: &str = "snp/ark-key.pem";
/// TDX test root (DER).
pub const TDX_ROOT_DER: &str = "tdx/root.der";
/// TDX test root (PEM).
pub const TDX_ROOT_PEM: &str = "tdx/root.pem";
/// TDX PCK certificate, PCK CA and root (PEM).
pub const TDX_PCK_CHAIN: &str = "tdx/pck-chain.pem";
/// TDX PCK private key (PKCS#8 PEM).
pub const TDX_PCK_KEY: &str = "tdx/pck-key.pem";
/// TDX PCK CA private key (PKCS#8 PEM): signs the PCK CRL when collateral is renewed.
pub const TDX_PCK_CA_KEY: &str = "tdx/pck-ca-key.pem";
/// TDX root private key (PKCS#8 PEM): signs the root CRL and the TCB signing certificate.
pub const TDX_ROOT_KEY: &str = "tdx/root-key.pem";
/// TDX collateral directory (`<FMSPC>.json`), as `[attestation.tdx] collateral` names it.
pub const TDX_COLLATERAL_DIR: &str = "tdx/collateral";
/// The processor generation the SNP test chain stands in for.
pub const SNP_GENERATION: Generation = Generation::Milan;

/// A test chain that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TestChainError {
    /// A file could not be read or written.
    #[error("test chain file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds neither an SNP nor a TDX test chain.
    #[error("{dir} holds no test chain ({SNP_ARK}, {TDX_ROOT_DER})")]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
    /// The SNP certificates are unusable.
    #[error("snp test chain")]
    Snp(#[source] SnpError),
    /// A key, certificate or collateral could not be made or read.
    #[error("test chain {what}: {reason}")]
    Invalid {
        /// Which part.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) fn read(dir: &Path, file: &str) -> Result<Vec<u8>, TestChainError> {
    let path = dir.join(file);
    std::fs::read(&path).map_err(|source| TestChainError::Io { path, source })
}

/// The public roots of a test chain directory: what a verifier configured to trust it adds to
/// AMD's and Intel's. No private key is read.
#[derive(Debug, Clone)]
pub struct TestChainRoots {
    /// The directory.
    pub dir: PathBuf,
    /// The SNP test ARK and ASK, when the directory has them.
    pub snp: Option<AmdRoots>,
    /// The TDX test root (DER), when the directory has it.
    pub tdx_root_der: Option<Vec<u8>>,
}

impl TestChainRoots {
    /// Loads `dir`'s roots; at least one TEE's must be there.
    pub fn load(dir: &Path) -> Result<Self, TestChainError> {
        let snp = if dir.join(SNP_ARK).exists() {
            Some(
                AmdRoots::testing(SNP_GENERATION, &read(dir, SNP_ARK)?, &read(dir, SNP_ASK)?)
                    .map_err(TestChainError::Snp)?,
            )
        } else {
            None
        };
        let tdx_root_der = if dir.join(TDX_ROOT_DER).exists() {
            Some(read(dir, TDX_ROOT_DER)?)
        } else {
            None
        };
        if snp.is_none() && tdx_root_der.is_none() {
            return Err(TestChainError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            snp,
            tdx_root_der,
        })
    }
}

/// Writes `bytes` to `dir/file` (creating parents); `secret` files get mode 0600 from creation.
#[cfg(feature = "testing")]
pub(crate) fn write(
    dir: &Path,
    file: &str,
    bytes: &[u8],
    secret: bool,
) -> Result<(), TestChainError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(file);
    let io = |source| TestChainError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    options
        .open(&path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io)
}

/// The text of [`MARKER`].
#[cfg(feature = "testing")]
pub(crate) const MARKER_TEXT: &str = "This directory holds a TEST CHAIN made by `coffer attestation testing-ca`: \
certificates and private keys standing in for AMD's SEV-SNP and Intel's TDX roots, so that \
`coffer attestation forge` can sign reports and quotes with any measurement, policy or TCB.\n\
A broker trusts it only when its configuration names this directory under [testing]; whoever \
holds these keys can then forge evidence for any measurement. Development and CI only: never \
configure it on a production broker, never ship these keys.\n";

/// Creates a test chain for both TEEs in `dir` (valid from now for `days`).
#[cfg(feature = "testing")]
pub fn create(dir: &Path, days: u32) -> Result<(), TestChainError> {
    write(dir, MARKER, MARKER_TEXT.as_bytes(), false)?;
    snp::SnpTestChain::generate(days)?.write(dir)?;
    tdx::TdxTestChain::generate(days)?.write(dir)?;
    Ok(())
}
