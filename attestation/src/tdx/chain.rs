//! The quote's own signatures and the PCK chain, checked without collateral:
//!
//! 1. the PCK chain in the quote (PCK → PCK Platform/Processor CA) ends at the **embedded**
//!    Intel SGX Root CA (a root carried by the quote must be byte-identical to it), each
//!    certificate valid at `now`, ECDSA P-256 / SHA-256 signatures, CA basic constraints;
//! 2. the QE report is signed by the PCK key;
//! 3. the QE report's report_data is SHA-256(attestation key || QE auth data) followed by 32
//!    zero bytes (the QE vouches for the attestation key);
//! 4. the quote (header and TD report body) is signed by the attestation key.
//!
//! Revocation (CRLs), TCB status and QE identity need collateral: see [`super::TdxVerifier`].
//!
//! The `_in` functions trust a test chain's root too (`coffer attestation testing-ca`), when the
//! caller passes one: the root is picked by the PCK CA's issuer, every check is the same, and
//! [`PckInfo::testing`] says which root it was.

use std::time::SystemTime;

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::BasicConstraints;

use super::error::{CertRole, TdxError};
use super::quote::TdQuote;

/// Intel SGX Root CA (DER), the only trust anchor of TDX verification.
pub const INTEL_ROOT_CA_DER: &[u8] = include_bytes!("dcap-qvl-TrustedRootCA.der");

const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// What the PCK chain says about the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PckInfo {
    /// FMSPC (family-model-stepping-platform-custom SKU) from the PCK certificate.
    pub fmspc: [u8; 6],
    /// Subject of the PCK CA (Platform CA or Processor CA).
    pub ca_subject: String,
    /// End of the PCK certificate's validity.
    pub pck_not_after: SystemTime,
    /// The chain ends at a test chain's root, not Intel's.
    pub testing: bool,
}

fn format_err(role: CertRole, reason: impl std::fmt::Display) -> TdxError {
    TdxError::CertificateFormat {
        role,
        reason: reason.to_string(),
    }
}

/// The embedded Intel root, checked to be self-signed and valid at `now`.
pub fn intel_root(now: SystemTime) -> Result<Certificate, TdxError> {
    trusted_root(INTEL_ROOT_CA_DER, now)
}

/// A root certificate (DER), checked to be a self-signed CA valid at `now`.
fn trusted_root(der: &[u8], now: SystemTime) -> Result<Certificate, TdxError> {
    let root = Certificate::from_der(der).map_err(|e| format_err(CertRole::Root, e))?;
    check_validity(&root, CertRole::Root, now)?;
    check_ca(&root, CertRole::Root)?;
    verify_signed_by(&root, CertRole::Root, &root, CertRole::Root)?;
    Ok(root)
}

/// Verifies the PCK chain carried by the quote up to the embedded Intel root at `now`.
pub fn verify_pck_chain(
    quote: &TdQuote,
    now: SystemTime,
) -> Result<(VerifyingKey, PckInfo), TdxError> {
    verify_pck_chain_in(quote, now, None)
}

/// [`verify_pck_chain`] trusting `testing_root` (DER) too, after Intel's.
pub fn verify_pck_chain_in(
    quote: &TdQuote,
    now: SystemTime,
    testing_root: Option<&[u8]>,
) -> Result<(VerifyingKey, PckInfo), TdxError> {
    let certs = pck_chain(&quote.pck_chain_pem)?;
    let (leaf, ca, carried_root) = match certs.as_slice() {
        [leaf, ca] => (leaf, ca, None),
        [leaf, ca, root] => (leaf, ca, Some(root)),
        other => {
            return Err(format_err(
                CertRole::Pck,
                format!(
                    "PCK chain has {} certificates, expected 2 or 3",
                    other.len()
                ),
            ));
        }
    };
    // Intel's root, unless the PCK CA names the test chain's root as its issuer (and one is
    // trusted): the issuer check below refuses any other.
    let (root_der, testing) = match testing_root {
        Some(der)
            if Certificate::from_der(der)
                .is_ok_and(|t| t.tbs_certificate.subject == ca.tbs_certificate.issuer) =>
        {
            (der, true)
        }
        _ => (INTEL_ROOT_CA_DER, false),
    };
    let root = trusted_root(root_der, now)?;
    if let Some(carried) = carried_root {
        let der = carried
            .to_der()
            .map_err(|e| format_err(CertRole::Root, e))?;
        if der != root_der {
            return Err(TdxError::UntrustedRoot {
                subject: carried.tbs_certificate.subject.to_string(),
            });
        }
    }
    check_issued_by(ca, CertRole::PckCa, &root, CertRole::Root)?;
    check_validity(ca, CertRole::PckCa, now)?;
    check_ca(ca, CertRole::PckCa)?;
    verify_signed_by(ca, CertRole::PckCa, &root, CertRole::Root)?;
    check_issued_by(leaf, CertRole::Pck, ca, CertRole::PckCa)?;
    check_validity(leaf, CertRole::Pck, now)?;
    verify_signed_by(leaf, CertRole::Pck, ca, CertRole::PckCa)?;
    let key = p256_key(leaf, CertRole::Pck)?;
    let leaf_der = leaf.to_der().map_err(|e| format_err(CertRole::Pck, e))?;
    let ext = dcap_qvl::intel::parse_pck_extension(&leaf_der)
        .map_err(|e| format_err(CertRole::Pck, format!("SGX extension: {e:#}")))?;
    Ok((
        key,
        PckInfo {
            fmspc: ext.fmspc,
            ca_subject: ca.tbs_certificate.subject.to_string(),
            pck_not_after: leaf.tbs_certificate.validity.not_after.to_system_time(),
            testing,
        },
    ))
}

/// Runs checks 1–4 of this module on a parsed quote and its raw bytes.
pub fn verify_signatures(
    quote_bytes: &[u8],
    quote: &TdQuote,
    now: SystemTime,
) -> Result<PckInfo, TdxError> {
    verify_signatures_in(quote_bytes, quote, now, None)
}

/// [`verify_signatures`] trusting `testing_root` (DER) too, after Intel's.
pub fn verify_signatures_in(
    quote_bytes: &[u8],
    quote: &TdQuote,
    now: SystemTime,
    testing_root: Option<&[u8]>,
) -> Result<PckInfo, TdxError> {
    let (pck_key, info) = verify_pck_chain_in(quote, now, testing_root)?;
    let qe_sig = Signature::from_slice(&quote.qe_report_signature)
        .map_err(|_| TdxError::QeReportSignature)?;
    pck_key
        .verify(&quote.qe_report, &qe_sig)
        .map_err(|_| TdxError::QeReportSignature)?;
    check_qe_binding(quote)?;
    let mut sec1 = [0x04u8; 65];
    sec1[1..].copy_from_slice(&quote.attestation_key);
    let att_key = VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| TdxError::QuoteSignature)?;
    let signature =
        Signature::from_slice(&quote.signature).map_err(|_| TdxError::QuoteSignature)?;
    let signed = quote_bytes
        .get(..quote.signed_len)
        .ok_or(TdxError::QuoteSignature)?;
    att_key
        .verify(signed, &signature)
        .map_err(|_| TdxError::QuoteSignature)?;
    Ok(info)
}

/// QE report_data (offset 320 of the SGX report) = SHA-256(attestation key || QE auth data) || 0^32.
fn check_qe_binding(quote: &TdQuote) -> Result<(), TdxError> {
    const REPORT_DATA_OFFSET: usize = 320;
    let mut hasher = Sha256::new();
    hasher.update(quote.attestation_key);
    hasher.update(&quote.qe_auth_data);
    let digest = hasher.finalize();
    let report_data = quote
        .qe_report
        .get(REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64)
        .ok_or(TdxError::QeReportBinding)?;
    let (hash, zeros) = report_data.split_at(32);
    if hash != digest.as_slice() || zeros.iter().any(|&b| b != 0) {
        return Err(TdxError::QeReportBinding);
    }
    Ok(())
}

/// The PEM bytes without trailing NULs or whitespace (quotes pad the chain with a NUL).
/// The certificates of a quote's PEM PCK chain (NUL padding and trailing whitespace trimmed).
fn pck_chain(pem: &[u8]) -> Result<Vec<Certificate>, TdxError> {
    let pem = trim_pem(pem);
    // x509-cert 0.2's `load_pem_chain` computes `len - 1`: an empty chain would overflow there.
    if pem.is_empty() {
        return Err(format_err(CertRole::Pck, "the quote carries no PCK chain"));
    }
    Certificate::load_pem_chain(pem).map_err(|e| format_err(CertRole::Pck, e))
}

fn trim_pem(pem: &[u8]) -> &[u8] {
    let end = pem
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    pem.get(..end).unwrap_or_default()
}

fn check_validity(cert: &Certificate, role: CertRole, now: SystemTime) -> Result<(), TdxError> {
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    if now < not_before || now > not_after {
        return Err(TdxError::CertificateValidity {
            role,
            now,
            not_before,
            not_after,
        });
    }
    Ok(())
}

fn check_issued_by(
    cert: &Certificate,
    role: CertRole,
    issuer: &Certificate,
    issuer_role: CertRole,
) -> Result<(), TdxError> {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(TdxError::CertificateIssuer {
            role,
            issuer: issuer_role,
        });
    }
    Ok(())
}

fn check_ca(cert: &Certificate, role: CertRole) -> Result<(), TdxError> {
    let ext = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == OID_BASIC_CONSTRAINTS)
        .ok_or_else(|| format_err(role, "no basic constraints"))?;
    let bc =
        BasicConstraints::from_der(ext.extn_value.as_bytes()).map_err(|e| format_err(role, e))?;
    if !bc.ca {
        return Err(format_err(role, "not a CA certificate"));
    }
    Ok(())
}

fn p256_key(cert: &Certificate, role: CertRole) -> Result<VerifyingKey, TdxError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_PRIME256V1) {
        return Err(format_err(role, "public key is not ECDSA P-256"));
    }
    VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
        .map_err(|e| format_err(role, e))
}

/// Verifies `cert`'s ECDSA P-256 / SHA-256 signature with `issuer`'s key.
fn verify_signed_by(
    cert: &Certificate,
    role: CertRole,
    issuer: &Certificate,
    issuer_role: CertRole,
) -> Result<(), TdxError> {
    let alg = &cert.signature_algorithm;
    if alg.oid != OID_ECDSA_SHA256 || *alg != cert.tbs_certificate.signature {
        return Err(format_err(
            role,
            format!("signature algorithm {} is not ecdsa-with-SHA256", alg.oid),
        ));
    }
    let key = p256_key(issuer, issuer_role)?;
    let sig_der = cert
        .signature
        .as_bytes()
        .ok_or_else(|| format_err(role, "signature has unused bits"))?;
    let signature = Signature::from_der(sig_der).map_err(|e| format_err(role, e))?;
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| format_err(role, e))?;
    key.verify(&tbs, &signature)
        .map_err(|_| TdxError::CertificateSignature {
            role,
            issuer: issuer_role,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn kbs06_embedded_intel_root_is_self_signed_and_pinned() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_866_000);
        assert!(intel_root(now).is_ok());
        let digest = Sha256::digest(INTEL_ROOT_CA_DER);
        assert_eq!(
            super::super::error::to_hex(&digest),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
    }

    #[test]
    fn root_rejected_outside_validity() {
        // The root is valid 2018-05-21 .. 2049-12-31.
        let before = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        assert!(matches!(
            intel_root(before),
            Err(TdxError::CertificateValidity {
                role: CertRole::Root,
                ..
            })
        ));
    }

    #[test]
    fn pem_padding_is_trimmed() {
        assert_eq!(trim_pem(b"abc\n\0\0"), b"abc");
        assert_eq!(trim_pem(b"\0"), b"");
    }

    /// Found by the `tdx_quote` fuzz target: a quote whose PCK chain is only padding or
    /// whitespace reached x509-cert's `load_pem_chain` empty, which overflows (`len - 1`; a panic
    /// with overflow checks, as in tests and fuzzing) instead of refusing the quote.
    #[test]
    fn empty_pck_chain_is_a_format_error_not_a_panic() {
        for pem in [&b""[..], b"\0\0\0", b"\n\r\n", b" \0\n"] {
            assert!(matches!(
                pck_chain(pem),
                Err(TdxError::CertificateFormat {
                    role: CertRole::Pck,
                    ..
                })
            ));
        }
    }
}
