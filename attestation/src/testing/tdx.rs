//! The TDX test chain, its collateral, and forged quotes.
//!
//! The chain is shaped like Intel's DCAP chain (what [`crate::tdx::verify_pck_chain_in`] and
//! dcap-qvl check): a self-signed root CA (ECDSA P-256), a PCK CA it signs, a PCK certificate
//! with the Intel SGX extension (PPID, CPUSVN, PCESVN, PCE-ID, FMSPC, SGX type), and a TCB
//! signing certificate. The collateral (`QuoteCollateralV3` JSON) holds TCB info with an
//! `UpToDate` level at [`TEE_TCB_SVN_CURRENT`] and an `OutOfDate` one below it, a QE identity,
//! both signed by the TCB signing key, and CRLs of the root and the PCK CA (none revoked). A
//! forged quote is a version-4 TD quote: header, TD report 1.0 with the chosen fields, signed by
//! a fresh attestation key, which a QE report signed by the PCK key vouches for.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use rand_core::{OsRng, RngCore as _};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use x509_cert::der::Encode as _;
use x509_cert::der::asn1::ObjectIdentifier;

use super::{
    MARKER, MARKER_TEXT, TDX_COLLATERAL_DIR, TDX_PCK_CHAIN, TDX_PCK_KEY, TDX_ROOT_DER,
    TDX_ROOT_PEM, TestChainError, read, write,
};
use crate::tdx::{INTEL_QE_VENDOR_ID, TdAttributes};

/// TEE_TCB_SVN that the test collateral rates `UpToDate`.
pub const TEE_TCB_SVN_CURRENT: [u8; 16] = [5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// TEE_TCB_SVN that the test collateral rates `OutOfDate` (any component lower refuses).
pub const TEE_TCB_SVN_OUT_OF_DATE: [u8; 16] = [3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// The test platform's FMSPC.
pub const FMSPC: [u8; 6] = [0xC0, 0xFF, 0xE2, 0x00, 0x00, 0x00];
/// CPUSVN of the test PCK certificate and the SGX components of every TCB level.
const CPU_SVN: [u8; 16] = [2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
/// PCESVN of the test PCK certificate and of every TCB level.
const PCE_SVN: u16 = 11;
/// The test QE's MRSIGNER, ISVPRODID and ISVSVN (its identity in the collateral).
const QE_MRSIGNER: [u8; 32] = [0xC0; 32];
const QE_ISV_PROD_ID: u16 = 2;
const QE_ISV_SVN: u16 = 4;
/// The QE report's ATTRIBUTES (INIT, MODE64BIT; not DEBUG).
const QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const SGX_EXTENSION: &[u64] = &[1, 2, 840, 113741, 1, 13, 1];
const SGX_OID: &str = "1.2.840.113741.1.13.1";
const ORG: &str = "NOT INTEL - TESTING ONLY";

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> TestChainError {
    TestChainError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

/// The fields of a forged TD quote. `Default` is a TD every strict verifier accepts (no debug,
/// SEPT_VE_DISABLE set, not migratable, an `UpToDate` TCB) with zero measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxFields {
    /// MRTD (the TDVF measurement).
    pub mr_td: [u8; 48],
    /// RTMR0..RTMR3.
    pub rtmr: [[u8; 48]; 4],
    /// MRCONFIGID (Coffer: the init-data digest).
    pub mr_config_id: [u8; 48],
    /// REPORTDATA.
    pub report_data: [u8; 64],
    /// TDATTRIBUTES. Default SEPT_VE_DISABLE.
    pub td_attributes: u64,
    /// XFAM.
    pub xfam: [u8; 8],
    /// TEE_TCB_SVN, rated by the test collateral's TCB levels. Default [`TEE_TCB_SVN_CURRENT`].
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: [u8; 48],
}

impl Default for TdxFields {
    fn default() -> Self {
        Self {
            mr_td: [0; 48],
            rtmr: [[0; 48]; 4],
            mr_config_id: [0; 48],
            report_data: [0; 64],
            td_attributes: TdAttributes::SEPT_VE_DISABLE,
            xfam: [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0],
            tee_tcb_svn: TEE_TCB_SVN_CURRENT,
            mr_seam: [0; 48],
        }
    }
}

/// The TDX test chain: what forging needs (the PCK chain and key), and what
/// [`TdxTestChain::generate`] also made (root, collateral) for [`TdxTestChain::write`].
pub struct TdxTestChain {
    pck_chain_pem: String,
    pck_key: p256::ecdsa::SigningKey,
    made: Option<Made>,
}

struct Made {
    root_der: Vec<u8>,
    root_pem: String,
    collateral: String,
}

impl std::fmt::Debug for TdxTestChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdxTestChain").finish_non_exhaustive()
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORG);
    dn
}

/// DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn oid(text: &str) -> Result<Vec<u8>, TestChainError> {
    ObjectIdentifier::new(text)
        .map_err(|e| invalid("oid", e))?
        .to_der()
        .map_err(|e| invalid("oid", e))
}

fn entry(oid_text: &str, value: Vec<u8>) -> Result<Vec<u8>, TestChainError> {
    let mut content = oid(oid_text)?;
    content.extend(value);
    Ok(tlv(0x30, &content))
}

/// The Intel SGX extension of a PCK certificate (its value).
fn sgx_extension() -> Result<Vec<u8>, TestChainError> {
    let octets = |b: &[u8]| tlv(0x04, b);
    let mut tcb = Vec::new();
    for (i, svn) in CPU_SVN.iter().enumerate() {
        let value = svn.to_der().map_err(|e| invalid("sgx extension", e))?;
        tcb.extend(entry(&format!("{SGX_OID}.2.{}", i + 1), value)?);
    }
    let pce = PCE_SVN.to_der().map_err(|e| invalid("sgx extension", e))?;
    tcb.extend(entry(&format!("{SGX_OID}.2.17"), pce)?);
    tcb.extend(entry(&format!("{SGX_OID}.2.18"), octets(&CPU_SVN))?);
    let mut ppid = [0u8; 16];
    OsRng.fill_bytes(&mut ppid);
    let mut all = Vec::new();
    all.extend(entry(&format!("{SGX_OID}.1"), octets(&ppid))?);
    all.extend(entry(&format!("{SGX_OID}.2"), tlv(0x30, &tcb))?);
    all.extend(entry(&format!("{SGX_OID}.3"), octets(&[0, 0]))?);
    all.extend(entry(&format!("{SGX_OID}.4"), octets(&FMSPC))?);
    all.extend(entry(&format!("{SGX_OID}.5"), tlv(0x0A, &[0]))?);
    Ok(tlv(0x30, &all))
}

/// RFC 3339 UTC, seconds.
fn rfc3339(t: SystemTime) -> Result<String, TestChainError> {
    let dt = x509_cert::der::DateTime::from_system_time(t).map_err(|e| invalid("time", e))?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minutes(),
        dt.seconds()
    ))
}

fn components(svns: &[u8]) -> Value {
    Value::Array(svns.iter().map(|s| json!({"svn": s})).collect())
}

fn raw_signature(key: &p256::ecdsa::SigningKey, message: &[u8]) -> [u8; 64] {
    let signature: p256::ecdsa::Signature = key.sign(message);
    signature.to_bytes().into()
}

fn signing_key(pair: &KeyPair) -> Result<p256::ecdsa::SigningKey, TestChainError> {
    p256::ecdsa::SigningKey::from_pkcs8_der(&pair.serialize_der()).map_err(|e| invalid("key", e))
}

impl TdxTestChain {
    /// A new root, PCK CA, PCK certificate, TCB signing certificate and collateral, valid from
    /// a day ago for `days`.
    pub fn generate(days: u32) -> Result<Self, TestChainError> {
        let rc = |e: rcgen::Error| invalid("certificate", e);
        let now = SystemTime::now();
        let not_before = now - Duration::from_secs(86_400);
        let not_after = now + Duration::from_secs(86_400 * u64::from(days));
        let params =
            |cn: &str, ca: Option<BasicConstraints>| -> Result<CertificateParams, TestChainError> {
                let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
                p.distinguished_name = dn(cn);
                p.not_before = not_before.into();
                p.not_after = not_after.into();
                match ca {
                    Some(bc) => {
                        p.is_ca = IsCa::Ca(bc);
                        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                    }
                    None => {
                        p.key_usages = vec![
                            KeyUsagePurpose::DigitalSignature,
                            KeyUsagePurpose::ContentCommitment,
                        ];
                    }
                }
                Ok(p)
            };
        let root_key = KeyPair::generate().map_err(rc)?;
        let root = params(
            "Coffer TESTING SGX Root CA",
            Some(BasicConstraints::Unconstrained),
        )?
        .self_signed(&root_key)
        .map_err(rc)?;
        let ca_key = KeyPair::generate().map_err(rc)?;
        let ca = params(
            "Coffer TESTING SGX PCK Platform CA",
            Some(BasicConstraints::Constrained(0)),
        )?
        .signed_by(&ca_key, &root, &root_key)
        .map_err(rc)?;
        let pck_key = KeyPair::generate().map_err(rc)?;
        let mut pck_params = params("Coffer TESTING SGX PCK Certificate", None)?;
        pck_params.custom_extensions = vec![CustomExtension::from_oid_content(
            SGX_EXTENSION,
            sgx_extension()?,
        )];
        let pck = pck_params.signed_by(&pck_key, &ca, &ca_key).map_err(rc)?;
        let tcb_key = KeyPair::generate().map_err(rc)?;
        let tcb_cert = params("Coffer TESTING SGX TCB Signing", None)?
            .signed_by(&tcb_key, &root, &root_key)
            .map_err(rc)?;
        let crl = |issuer: &rcgen::Certificate, key: &KeyPair| {
            CertificateRevocationListParams {
                this_update: not_before.into(),
                next_update: not_after.into(),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: Vec::new(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(issuer, key)
            .map(|c| c.der().to_vec())
            .map_err(rc)
        };
        let root_crl = crl(&root, &root_key)?;
        let pck_crl = crl(&ca, &ca_key)?;

        let (issued, next) = (
            rfc3339(now - Duration::from_secs(3600))?,
            rfc3339(not_after)?,
        );
        let level = |svn: &[u8; 16], status: &str| {
            json!({
                "tcb": {
                    "sgxtcbcomponents": components(&CPU_SVN),
                    "pcesvn": PCE_SVN,
                    "tdxtcbcomponents": components(svn),
                },
                "tcbDate": issued,
                "tcbStatus": status,
            })
        };
        let tcb_info = json!({
            "id": "TDX",
            "version": 3,
            "issueDate": issued,
            "nextUpdate": next,
            "fmspc": hex::encode_upper(FMSPC),
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 1,
            "tdxModule": {
                "mrsigner": hex::encode_upper([0u8; 48]),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tcbLevels": [
                level(&TEE_TCB_SVN_CURRENT, "UpToDate"),
                level(&TEE_TCB_SVN_OUT_OF_DATE, "OutOfDate"),
            ],
        })
        .to_string();
        let qe_identity = json!({
            "id": "TD_QE",
            "version": 2,
            "issueDate": issued,
            "nextUpdate": next,
            "tcbEvaluationDataNumber": 1,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": hex::encode_upper(QE_ATTRIBUTES),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": hex::encode_upper(QE_MRSIGNER),
            "isvprodid": QE_ISV_PROD_ID,
            "tcbLevels": [{"tcb": {"isvsvn": QE_ISV_SVN}, "tcbDate": issued, "tcbStatus": "UpToDate"}],
        })
        .to_string();
        let tcb_signer = signing_key(&tcb_key)?;
        let tcb_chain = format!("{}{}", tcb_cert.pem(), root.pem());
        let collateral = json!({
            "pck_crl_issuer_chain": format!("{}{}", ca.pem(), root.pem()),
            "root_ca_crl": hex::encode(&root_crl),
            "pck_crl": hex::encode(&pck_crl),
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info_signature": hex::encode(raw_signature(&tcb_signer, tcb_info.as_bytes())),
            "tcb_info": tcb_info,
            "qe_identity_issuer_chain": tcb_chain,
            "qe_identity_signature": hex::encode(raw_signature(&tcb_signer, qe_identity.as_bytes())),
            "qe_identity": qe_identity,
        });
        Ok(Self {
            pck_chain_pem: format!("{}{}{}", pck.pem(), ca.pem(), root.pem()),
            pck_key: signing_key(&pck_key)?,
            made: Some(Made {
                root_der: root.der().to_vec(),
                root_pem: root.pem(),
                collateral: serde_json::to_string_pretty(&collateral)
                    .map_err(|e| invalid("collateral", e))?,
            }),
        })
    }

    /// Writes the chain under `dir`: `tdx/root.der`, `tdx/root.pem`, `tdx/pck-chain.pem`,
    /// `tdx/pck-key.pem` (0600), `tdx/collateral/<FMSPC>.json`.
    pub fn write(&self, dir: &Path) -> Result<(), TestChainError> {
        let made = self
            .made
            .as_ref()
            .ok_or_else(|| invalid("chain", "only a generated chain can be written"))?;
        write(dir, MARKER, MARKER_TEXT.as_bytes(), false)?;
        write(dir, TDX_ROOT_DER, &made.root_der, false)?;
        write(dir, TDX_ROOT_PEM, made.root_pem.as_bytes(), false)?;
        write(dir, TDX_PCK_CHAIN, self.pck_chain_pem.as_bytes(), false)?;
        let key =
            p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&self.pck_key, p256::pkcs8::LineEnding::LF)
                .map_err(|e| invalid("pck key", e))?;
        write(dir, TDX_PCK_KEY, key.as_bytes(), true)?;
        let collateral = format!("{TDX_COLLATERAL_DIR}/{}.json", hex::encode_upper(FMSPC));
        write(dir, &collateral, made.collateral.as_bytes(), false)
    }

    /// Loads what forging needs from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TestChainError> {
        let pem =
            String::from_utf8(read(dir, TDX_PCK_CHAIN)?).map_err(|e| invalid("pck chain", e))?;
        let key = String::from_utf8(read(dir, TDX_PCK_KEY)?).map_err(|e| invalid("pck key", e))?;
        Ok(Self {
            pck_chain_pem: pem,
            pck_key: p256::ecdsa::SigningKey::from_pkcs8_pem(&key)
                .map_err(|e| invalid("pck key", e))?,
            made: None,
        })
    }

    /// The root (DER) a verifier trusts, and the collateral (JSON), of a generated chain.
    pub fn root_and_collateral(&self) -> Option<(&[u8], &str)> {
        self.made
            .as_ref()
            .map(|m| (m.root_der.as_slice(), m.collateral.as_str()))
    }

    /// A version-4 TD quote with `fields`.
    pub fn forge(&self, fields: &TdxFields) -> Vec<u8> {
        let attestation_key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let point = attestation_key.verifying_key().to_encoded_point(false);
        let att_pub = &point.as_bytes()[1..];
        let mut q = Vec::with_capacity(8 * 1024);
        // Header.
        q.extend(4u16.to_le_bytes());
        q.extend(2u16.to_le_bytes()); // ECDSA-256-with-P-256
        q.extend(0x81u32.to_le_bytes()); // TDX
        q.extend(QE_ISV_SVN.to_le_bytes());
        q.extend(PCE_SVN.to_le_bytes());
        q.extend(INTEL_QE_VENDOR_ID);
        q.extend([0u8; 20]);
        // TD report 1.0.
        q.extend(fields.tee_tcb_svn);
        q.extend(fields.mr_seam);
        q.extend([0u8; 48]); // MRSIGNER_SEAM: Intel's module
        q.extend([0u8; 8]); // SEAMATTRIBUTES
        q.extend(fields.td_attributes.to_le_bytes());
        q.extend(fields.xfam);
        q.extend(fields.mr_td);
        q.extend(fields.mr_config_id);
        q.extend([0u8; 48]); // MROWNER
        q.extend([0u8; 48]); // MROWNERCONFIG
        for rtmr in &fields.rtmr {
            q.extend(rtmr);
        }
        q.extend(fields.report_data);
        let signature = raw_signature(&attestation_key, &q);
        // The QE report: the QE vouches for the attestation key.
        let qe_auth_data: Vec<u8> = (0u8..32).collect();
        let mut qe = [0u8; 384];
        qe[..16].copy_from_slice(&CPU_SVN);
        qe[48..64].copy_from_slice(&QE_ATTRIBUTES);
        qe[128..160].copy_from_slice(&QE_MRSIGNER);
        qe[256..258].copy_from_slice(&QE_ISV_PROD_ID.to_le_bytes());
        qe[258..260].copy_from_slice(&QE_ISV_SVN.to_le_bytes());
        let mut hasher = Sha256::new();
        hasher.update(att_pub);
        hasher.update(&qe_auth_data);
        qe[320..352].copy_from_slice(&hasher.finalize());
        let qe_signature = raw_signature(&self.pck_key, &qe);
        let mut qe_data = Vec::new();
        qe_data.extend(qe);
        qe_data.extend(qe_signature);
        qe_data.extend((qe_auth_data.len() as u16).to_le_bytes());
        qe_data.extend(&qe_auth_data);
        qe_data.extend(5u16.to_le_bytes()); // PCK certificate chain
        qe_data.extend((self.pck_chain_pem.len() as u32).to_le_bytes());
        qe_data.extend(self.pck_chain_pem.as_bytes());
        let mut auth = Vec::new();
        auth.extend(signature);
        auth.extend(att_pub);
        auth.extend(6u16.to_le_bytes()); // QE report certification data
        auth.extend((qe_data.len() as u32).to_le_bytes());
        auth.extend(qe_data);
        q.extend((auth.len() as u32).to_le_bytes());
        q.extend(auth);
        q
    }
}

/// The evidence JSON a TDX guest sends (`primary_evidence`) for `quote`.
pub fn evidence(quote: &[u8]) -> Value {
    json!({"quote": B64.encode(quote)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdx::{Collateral, Expected, TdQuote, TdxError, TdxPolicy, TdxVerifier};

    #[test]
    fn forged_quotes_verify_with_collateral_only_against_the_test_root() {
        let chain = TdxTestChain::generate(30).unwrap();
        let (root, collateral) = chain.root_and_collateral().unwrap();
        let collateral = Collateral::from_json(collateral.as_bytes()).unwrap();
        let fields = TdxFields {
            mr_td: [7; 48],
            report_data: [9; 64],
            ..TdxFields::default()
        };
        let quote = chain.forge(&fields);
        let parsed = TdQuote::parse(&quote).unwrap();
        assert_eq!(parsed.report.mr_td, [7; 48]);
        let expected = Expected {
            report_data: [9; 64],
            mr_config_id: Some([0; 48]),
        };
        let now = SystemTime::now();
        let verified = TdxVerifier::new(TdxPolicy::default())
            .trusting_testing_root(root.to_vec())
            .verify(&quote, &collateral, now, &expected)
            .unwrap();
        assert!(verified.pck.testing);
        assert_eq!(verified.tcb.map(|t| t.status.as_str()), Some("UpToDate"));
        // Intel's root alone: the quote's root is not Intel's.
        let err = TdxVerifier::new(TdxPolicy::default())
            .verify(&quote, &collateral, now, &expected)
            .unwrap_err();
        assert!(matches!(err, TdxError::UntrustedRoot { .. }), "{err}");
        // An older TEE TCB is OutOfDate, which the default policy refuses.
        let old = chain.forge(&TdxFields {
            tee_tcb_svn: TEE_TCB_SVN_OUT_OF_DATE,
            ..fields
        });
        let err = TdxVerifier::new(TdxPolicy::default())
            .trusting_testing_root(root.to_vec())
            .verify(&old, &collateral, now, &expected)
            .unwrap_err();
        assert!(err.to_string().contains("OutOfDate"), "{err}");
    }
}
