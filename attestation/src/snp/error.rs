//! The single error type of SEV-SNP verification.

use std::path::PathBuf;
use std::time::SystemTime;

use super::certs::CertRole;
use super::crl::CrlKind;
use super::report::{Generation, SigningKey};

/// Why SEV-SNP evidence was rejected. Every variant names the check that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnpError {
    /// The report is not exactly 0x4A0 bytes.
    #[error("attestation report has {found} bytes, expected {expected}")]
    ReportLength {
        /// Required length.
        expected: usize,
        /// Actual length.
        found: usize,
    },
    /// The report version is not one this parser understands.
    #[error("unsupported attestation report version {found}")]
    UnsupportedVersion {
        /// Version in the report.
        found: u32,
    },
    /// The report version is below the policy minimum.
    #[error("attestation report version {found} is below the minimum {minimum}")]
    VersionBelowMinimum {
        /// Policy minimum.
        minimum: u32,
        /// Version in the report.
        found: u32,
    },
    /// The report was not requested from VMPL 0.
    #[error("report requested from VMPL {found}, expected VMPL 0")]
    Vmpl {
        /// VMPL in the report.
        found: u32,
    },
    /// A guest policy bit is not acceptable (e.g. debug or MIGRATE_MA allowed).
    #[error("guest policy {raw:#x} rejected: {bit}")]
    GuestPolicy {
        /// Which bit failed.
        bit: &'static str,
        /// Raw policy word.
        raw: u64,
    },
    /// The signature algorithm is not ECDSA P-384 / SHA-384.
    #[error("unsupported report signature algorithm {found}")]
    SignatureAlgorithm {
        /// Value in the report.
        found: u32,
    },
    /// The signature fields are not a valid encoding.
    #[error("malformed report signature: {reason}")]
    MalformedSignature {
        /// What is wrong.
        reason: String,
    },
    /// The ECDSA signature over bytes 0x000..0x2A0 does not verify.
    #[error("report signature does not verify with the {key:?}")]
    Signature {
        /// The key kind used.
        key: SigningKey,
    },
    /// A certificate could not be parsed or has unexpected algorithms.
    #[error("{role} certificate is malformed: {reason}")]
    CertificateFormat {
        /// Which certificate.
        role: CertRole,
        /// What is wrong.
        reason: String,
    },
    /// A certificate is not valid at the given time.
    #[error("{role} certificate is not valid at {now:?} (valid {not_before:?} .. {not_after:?})")]
    CertificateValidity {
        /// Which certificate.
        role: CertRole,
        /// Time checked.
        now: SystemTime,
        /// Start of validity.
        not_before: SystemTime,
        /// End of validity.
        not_after: SystemTime,
    },
    /// A certificate's signature does not verify with its issuer's key.
    #[error("{role} certificate signature does not verify with the {issuer} key")]
    CertificateSignature {
        /// Which certificate.
        role: CertRole,
        /// Which key was used.
        issuer: CertRole,
    },
    /// The VCEK/VLEK issuer is none of the embedded ASK/ASVK certificates.
    #[error("endorsement key issuer {issuer} is not an embedded AMD ASK or ASVK")]
    UnknownIssuer {
        /// The issuer name.
        issuer: String,
    },
    /// The report's key kind does not match the certificate (e.g. VLEK where VCEK expected).
    #[error("report says it was signed by {report:?} but the certificate is a {certificate}")]
    SigningKeyMismatch {
        /// Key named by the report.
        report: SigningKey,
        /// Key kind of the certificate.
        certificate: CertRole,
    },
    /// A VLEK was presented but the policy only accepts VCEKs.
    #[error("VLEK-signed evidence not allowed by policy")]
    VlekNotAllowed,
    /// The report's CPUID names another generation than the certificate chain.
    #[error("report is from {report:?} but the certificate chain is {chain:?}")]
    GenerationMismatch {
        /// Generation from the report CPUID.
        report: Generation,
        /// Generation of the chain.
        chain: Generation,
    },
    /// An AMD extension is missing from the VCEK/VLEK.
    #[error("endorsement key certificate lacks extension {oid}")]
    MissingExtension {
        /// The OID.
        oid: &'static str,
    },
    /// `reported_tcb` differs from the VCEK/VLEK TCB extensions.
    #[error("reported TCB {component} is {report}, certificate says {certificate}")]
    TcbMismatch {
        /// TCB component.
        component: &'static str,
        /// Value in the report.
        report: u8,
        /// Value in the certificate.
        certificate: u8,
    },
    /// `chip_id` is all zero (MASK_CHIP_ID set): cannot bind to a VCEK.
    #[error("chip_id is zero (MASK_CHIP_ID), cannot bind the report to a VCEK")]
    ChipIdZero,
    /// `chip_id` differs from the VCEK hwID extension.
    #[error("chip_id does not match the VCEK hwID extension")]
    ChipIdMismatch,
    /// A TCB component is below the policy minimum.
    #[error("{which} TCB {component} is {found}, below minimum {minimum}")]
    TcbBelowMinimum {
        /// `reported` or `launch`.
        which: &'static str,
        /// TCB component.
        component: &'static str,
        /// Policy minimum.
        minimum: u8,
        /// Value found.
        found: u8,
    },
    /// The launch measurement is not in the policy's allow-list.
    #[error("measurement {found} is not an allowed reference value")]
    MeasurementNotAllowed {
        /// Hex of the measurement.
        found: String,
    },
    /// A certificate of the chain is listed by its product's CRL.
    #[error("{role} certificate serial {serial} is revoked by the {generation:?} {kind} CRL")]
    Revoked {
        /// Which certificate (ASK, ASVK, VCEK or VLEK).
        role: CertRole,
        /// Hex of its serial number (at most 20 bytes quoted).
        serial: String,
        /// The chain's product.
        generation: Generation,
        /// Which of the product's CRLs.
        kind: CrlKind,
    },
    /// A CRL is required but none is configured for the chain's product and kind.
    #[error("no {generation:?} {kind} CRL configured, and one is required")]
    CrlMissing {
        /// The chain's product.
        generation: Generation,
        /// Which of the product's CRLs.
        kind: CrlKind,
    },
    /// The product's configured CRLs are none of them issued by the chain's ARK.
    #[error("the {generation:?} {kind} CRL is issued by {issuer}, not by this chain's ARK {ark}")]
    CrlIssuer {
        /// The chain's product.
        generation: Generation,
        /// Which of the product's CRLs.
        kind: CrlKind,
        /// The configured CRL's issuer (escaped, bounded).
        issuer: String,
        /// The chain's ARK (escaped, bounded).
        ark: String,
    },
    /// A CRL configured for a product does not name that product's ARK as its issuer.
    #[error(
        "a CRL configured as the {generation:?} {kind} CRL is issued by {issuer}, not a {generation:?} ARK"
    )]
    CrlProduct {
        /// The product it was configured for.
        generation: Generation,
        /// Which of the product's CRLs.
        kind: CrlKind,
        /// Its issuer (escaped, bounded).
        issuer: String,
    },
    /// The CRL's signature does not verify with the chain's ARK key.
    #[error("the {generation:?} {kind} CRL signature does not verify with the ARK key")]
    CrlSignature {
        /// The chain's product.
        generation: Generation,
        /// Which of the product's CRLs.
        kind: CrlKind,
    },
    /// The CRL is not current at the given time (before `thisUpdate` or after `nextUpdate`).
    #[error(
        "the {generation:?} {kind} CRL is not current at {now:?} (this update {this_update:?}, next update {next_update:?})"
    )]
    CrlValidity {
        /// The chain's product.
        generation: Generation,
        /// Which of the product's CRLs.
        kind: CrlKind,
        /// Time checked.
        now: SystemTime,
        /// `thisUpdate`.
        this_update: SystemTime,
        /// `nextUpdate`.
        next_update: SystemTime,
    },
    /// A CRL could not be parsed or uses what this verifier does not support.
    #[error("CRL is malformed: {reason}")]
    CrlFormat {
        /// What is wrong.
        reason: String,
    },
    /// A CRL file could not be read.
    #[error("cannot read CRL {path}")]
    CrlRead {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A CRL file is larger than [`super::MAX_CRL_LEN`].
    #[error("CRL {path} has {len} bytes, more than {limit}")]
    CrlTooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A CRL file is malformed or another product's.
    #[error("CRL {path} is unusable")]
    CrlFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<SnpError>,
    },
    /// `report_data` differs from the expected 64 bytes.
    #[error("report_data mismatch: expected {expected}, found {found}")]
    ReportDataMismatch {
        /// Hex of the expected value.
        expected: String,
        /// Hex of the report's value.
        found: String,
    },
    /// `host_data` differs from the expected 32 bytes.
    #[error("host_data mismatch: expected {expected}, found {found}")]
    HostDataMismatch {
        /// Hex of the expected value.
        expected: String,
        /// Hex of the report's value.
        found: String,
    },
}

/// Lower-case hex of `bytes`, for error context.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
