//! The single error type of Intel TDX verification.

use std::fmt;
use std::time::SystemTime;

use super::policy::TcbStatus;

/// Which certificate of the Intel PCK chain an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// Intel SGX Root CA (embedded, self-signed).
    Root,
    /// Intel SGX PCK Platform CA or PCK Processor CA.
    PckCa,
    /// The platform's PCK certificate.
    Pck,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Root => "Intel root CA",
            Self::PckCa => "PCK CA",
            Self::Pck => "PCK",
        })
    }
}

/// Why TDX evidence was rejected. Every variant names the check that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TdxError {
    /// The quote bytes do not decode as a DCAP quote.
    #[error("malformed quote: {reason}")]
    QuoteFormat {
        /// What the decoder said.
        reason: String,
    },
    /// The quote is larger than [`super::MAX_QUOTE_LEN`].
    #[error("quote has {found} bytes, more than the limit of {limit}")]
    QuoteTooLarge {
        /// The limit.
        limit: usize,
        /// Actual length.
        found: usize,
    },
    /// Quote version other than 4 or 5.
    #[error("unsupported quote version {found} (TD quotes are version 4 or 5)")]
    UnsupportedVersion {
        /// Version in the header.
        found: u16,
    },
    /// The quote is not a TD quote (e.g. an SGX enclave quote, TEE type 0).
    #[error("not a TD quote: tee_type {tee_type:#x} ({kind})")]
    NotTdQuote {
        /// TEE type in the header.
        tee_type: u32,
        /// What the body is.
        kind: &'static str,
    },
    /// The attestation key is not ECDSA P-256.
    #[error("unsupported attestation key type {found}")]
    AttestationKeyType {
        /// Value in the header.
        found: u16,
    },
    /// The QE vendor is not Intel.
    #[error("quoting enclave vendor {found} is not Intel")]
    QeVendor {
        /// Hex of the vendor id.
        found: String,
    },
    /// The certification data is not of the expected type.
    #[error("certification data type {found}, expected {expected}")]
    CertificationDataType {
        /// Type found.
        found: u16,
        /// Type required.
        expected: u16,
    },
    /// A certificate could not be parsed or has unexpected algorithms/extensions.
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
    /// The root certificate the quote carries is not a trusted root (the embedded Intel SGX
    /// Root CA, or a test chain's root where one is trusted).
    #[error("the quote's root CA {subject} is not a trusted root (the embedded Intel SGX Root CA)")]
    UntrustedRoot {
        /// The carried root's subject.
        subject: String,
    },
    /// A certificate was not issued by the next one in the chain.
    #[error("{role} certificate is not issued by the {issuer}")]
    CertificateIssuer {
        /// Which certificate.
        role: CertRole,
        /// Its expected issuer.
        issuer: CertRole,
    },
    /// A certificate's signature does not verify with its issuer's key.
    #[error("{role} certificate signature does not verify with the {issuer} key")]
    CertificateSignature {
        /// Which certificate.
        role: CertRole,
        /// Which key was used.
        issuer: CertRole,
    },
    /// The quote signature (attestation key over header and body) does not verify.
    #[error("quote signature does not verify with the attestation key")]
    QuoteSignature,
    /// The QE report signature does not verify with the PCK key.
    #[error("QE report signature does not verify with the PCK key")]
    QeReportSignature,
    /// The QE report's report_data is not SHA-256(attestation key || QE auth data) || zeros.
    #[error("QE report does not bind the attestation key")]
    QeReportBinding,
    /// The collateral could not be read or parsed.
    #[error("collateral is malformed: {reason}")]
    Collateral {
        /// What is wrong.
        reason: String,
    },
    /// The PCK certificate's FMSPC differs from the collateral TCB info's.
    #[error(
        "FMSPC mismatch: PCK certificate says {quote}, collateral TCB info is for {collateral}"
    )]
    FmspcMismatch {
        /// FMSPC of the quote's PCK certificate (hex).
        quote: String,
        /// FMSPC of the collateral (hex).
        collateral: String,
    },
    /// dcap-qvl refused the quote with the collateral (CRLs, TCB info, QE identity, dates).
    #[error("DCAP quote verification with collateral failed: {reason}")]
    Dcap {
        /// dcap-qvl's error chain.
        reason: String,
    },
    /// dcap-qvl returned a TCB status name this crate does not know.
    #[error("unknown TCB status {found:?}")]
    UnknownTcbStatus {
        /// The name.
        found: String,
    },
    /// The TCB status is not in the policy's allow-list.
    #[error("TCB status {status} is not allowed (allowed: {allowed:?})")]
    TcbStatusNotAllowed {
        /// Status of the platform and QE.
        status: TcbStatus,
        /// The policy's allow-list.
        allowed: Vec<TcbStatus>,
    },
    /// An advisory the policy denies applies to the platform.
    #[error("advisory {id} applies to this platform and is denied by policy")]
    AdvisoryDenied {
        /// Advisory id, e.g. `INTEL-SA-00615`.
        id: String,
    },
    /// A TD attribute is not acceptable (debug, TUD bits, migratable, SEPT_VE_DISABLE off).
    #[error("TD attributes {raw:#018x} rejected: {reason}")]
    TdAttributes {
        /// Which rule failed.
        reason: &'static str,
        /// The 64-bit attribute word.
        raw: u64,
    },
    /// A TDX 1.5 quote binds a service TD (MRSERVICETD non-zero) and the policy forbids it.
    #[error("service TD bound (mr_servicetd {found}) but not allowed by policy")]
    ServiceTd {
        /// Hex of MRSERVICETD.
        found: String,
    },
    /// A register is pinned in the reference values but has no accepted value.
    #[error("{register} is pinned but the reference values list no accepted value")]
    PinnedWithoutValue {
        /// Register name.
        register: &'static str,
    },
    /// A register differs from every accepted reference value.
    #[error("{register} {found} is not an accepted reference value")]
    ReferenceMismatch {
        /// Register name.
        register: &'static str,
        /// Hex of the register.
        found: String,
    },
    /// `report_data` differs from the expected 64 bytes.
    #[error("report_data mismatch: expected {expected}, found {found}")]
    ReportDataMismatch {
        /// Hex of the expected value.
        expected: String,
        /// Hex of the quote's value.
        found: String,
    },
    /// `mr_config_id` differs from the expected 48 bytes (init-data digest).
    #[error("mr_config_id mismatch: expected {expected}, found {found}")]
    MrConfigIdMismatch {
        /// Hex of the expected value.
        expected: String,
        /// Hex of the quote's value.
        found: String,
    },
    /// The CCEL event log is malformed.
    #[error("CCEL event log malformed at offset {offset}: {reason}")]
    EventLog {
        /// Byte offset of the bad record.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// Replaying the CCEL event log does not give the quote's RTMR.
    #[error("event log replay gives rtmr{index} {replayed}, the quote says {quoted}")]
    EventLogReplay {
        /// RTMR index 0..=3.
        index: usize,
        /// Hex of the replayed value.
        replayed: String,
        /// Hex of the quote's value.
        quoted: String,
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
