//! The DCAP quote as typed values: header, TD report body (TDX 1.0 or 1.5) and the ECDSA
//! authentication data. Decoding is done by `dcap-qvl`; this module checks the shape a TD quote
//! must have and copies the fields out.

use dcap_qvl::quote::{AuthData, Quote, Report};

use super::error::{TdxError, to_hex};

/// Largest quote accepted (a real one is about 5 KiB; the PEM chain dominates).
pub const MAX_QUOTE_LEN: usize = 64 * 1024;
/// TEE type of a TD quote.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// TEE type of an SGX enclave quote.
pub const TEE_TYPE_SGX: u32 = 0x00;
/// Attestation key type ECDSA-256-with-P-256.
pub const ATTESTATION_KEY_ECDSA_P256: u16 = 2;
/// Intel's QE vendor id.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = dcap_qvl::INTEL_QE_VENDOR_ID;
/// Certification data type: PCK leaf, intermediate and root in PEM.
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type: QE report certification data (v4/v5 outer type).
pub const CERT_TYPE_QE_REPORT: u16 = 6;
/// Header length.
const HEADER_LEN: usize = 48;
/// v5 body descriptor (type u16 + size u32).
const BODY_DESCRIPTOR_LEN: usize = 6;
/// TD report 1.0 length.
const TD_REPORT10_LEN: usize = 584;
/// TD report 1.5 length.
const TD_REPORT15_LEN: usize = 648;

/// `TDATTRIBUTES` (Intel TDX module ABI; names as in Linux `arch/x86/coco/tdx/debug.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdAttributes {
    /// The 64-bit little-endian attribute word.
    pub raw: u64,
}

impl TdAttributes {
    /// Bit 0: the TD runs in debug mode (host can read its memory and state).
    pub const DEBUG: u64 = 1 << 0;
    /// Bits 7:0: "TD under debug" group; any bit set makes the TD untrusted.
    pub const TUD_MASK: u64 = 0xff;
    /// Bit 28: EPT violations on pending pages do not become #VE.
    pub const SEPT_VE_DISABLE: u64 = 1 << 28;
    /// Bit 29: the TD may be migrated (a migration TD can export its state).
    pub const MIGRATABLE: u64 = 1 << 29;

    /// From the 8 bytes of the report.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self {
            raw: u64::from_le_bytes(bytes),
        }
    }

    /// DEBUG set.
    pub fn debug(self) -> bool {
        self.raw & Self::DEBUG != 0
    }

    /// The TUD byte (bits 7:0).
    pub fn tud(self) -> u8 {
        (self.raw & Self::TUD_MASK) as u8
    }

    /// SEPT_VE_DISABLE set.
    pub fn sept_ve_disable(self) -> bool {
        self.raw & Self::SEPT_VE_DISABLE != 0
    }

    /// MIGRATABLE set.
    pub fn migratable(self) -> bool {
        self.raw & Self::MIGRATABLE != 0
    }
}

/// The TD report body of a TD quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// MRSIGNER_SEAM (zero for Intel's module).
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES.
    pub td_attributes: TdAttributes,
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRTD: the initial TD memory (TDVF) measurement.
    pub mr_td: [u8; 48],
    /// MRCONFIGID (Coffer: the init-data digest, SHA-384).
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..RTMR3.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
    /// TDX 1.5 only: TEE_TCB_SVN2.
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TDX 1.5 only: MRSERVICETD.
    pub mr_service_td: Option<[u8; 48]>,
}

/// A decoded TD quote (version 4 or 5, TEE type 0x81, ECDSA P-256, Intel QE).
#[derive(Debug, Clone)]
pub struct TdQuote {
    /// Quote version (4 or 5).
    pub version: u16,
    /// QE security version.
    pub qe_svn: u16,
    /// PCE security version.
    pub pce_svn: u16,
    /// The TD report body.
    pub report: TdReport,
    /// Number of leading bytes covered by the quote signature (header and body).
    pub signed_len: usize,
    /// Quote signature r || s (big-endian).
    pub signature: [u8; 64],
    /// Attestation public key x || y.
    pub attestation_key: [u8; 64],
    /// The QE's SGX report (384 bytes), signed by the PCK key.
    pub qe_report: [u8; 384],
    /// QE report signature r || s.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data, hashed with the attestation key into the QE report.
    pub qe_auth_data: Vec<u8>,
    /// PEM PCK leaf, intermediate and root certificates.
    pub pck_chain_pem: Vec<u8>,
}

impl TdQuote {
    /// Decodes `bytes` and checks it is a TD quote: version 4 or 5, TEE type 0x81 with a TD
    /// body, ECDSA P-256 attestation key, Intel QE, PCK chain certification data. An SGX quote
    /// is refused with [`TdxError::NotTdQuote`].
    pub fn parse(bytes: &[u8]) -> Result<Self, TdxError> {
        if bytes.len() > MAX_QUOTE_LEN {
            return Err(TdxError::QuoteTooLarge {
                limit: MAX_QUOTE_LEN,
                found: bytes.len(),
            });
        }
        let quote = Quote::parse(bytes).map_err(|e| TdxError::QuoteFormat {
            reason: format!("{e:#}"),
        })?;
        let header = &quote.header;
        if header.tee_type != TEE_TYPE_TDX || quote.report.is_sgx() {
            let kind = if header.tee_type == TEE_TYPE_SGX || quote.report.is_sgx() {
                "SGX enclave quote"
            } else {
                "unknown TEE"
            };
            return Err(TdxError::NotTdQuote {
                tee_type: header.tee_type,
                kind,
            });
        }
        if !(4..=5).contains(&header.version) {
            return Err(TdxError::UnsupportedVersion {
                found: header.version,
            });
        }
        if header.attestation_key_type != ATTESTATION_KEY_ECDSA_P256 {
            return Err(TdxError::AttestationKeyType {
                found: header.attestation_key_type,
            });
        }
        if header.qe_vendor_id != INTEL_QE_VENDOR_ID {
            return Err(TdxError::QeVendor {
                found: to_hex(&header.qe_vendor_id),
            });
        }
        let (report, body_len) = match &quote.report {
            Report::TD10(r) => (td_report(r, None), TD_REPORT10_LEN),
            Report::TD15(r) => (
                td_report(&r.base, Some((r.tee_tcb_svn2, r.mr_service_td))),
                TD_REPORT15_LEN,
            ),
            Report::SgxEnclave(_) => {
                return Err(TdxError::NotTdQuote {
                    tee_type: header.tee_type,
                    kind: "SGX enclave quote",
                });
            }
        };
        if header.version == 5 {
            let size = bytes
                .get(HEADER_LEN + 2..HEADER_LEN + BODY_DESCRIPTOR_LEN)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes);
            if size != u32::try_from(body_len).ok() {
                return Err(TdxError::QuoteFormat {
                    reason: format!("v5 body size {size:?} does not match its type ({body_len})"),
                });
            }
        }
        let signed_len = HEADER_LEN
            + body_len
            + if header.version == 5 {
                BODY_DESCRIPTOR_LEN
            } else {
                0
            };
        let AuthData::V4(auth) = &quote.auth_data else {
            return Err(TdxError::QuoteFormat {
                reason: "TD quote without v4 authentication data".to_owned(),
            });
        };
        if auth.certification_data.cert_type != CERT_TYPE_QE_REPORT {
            return Err(TdxError::CertificationDataType {
                found: auth.certification_data.cert_type,
                expected: CERT_TYPE_QE_REPORT,
            });
        }
        let qe = &auth.qe_report_data;
        if qe.certification_data.cert_type != CERT_TYPE_PCK_CHAIN {
            return Err(TdxError::CertificationDataType {
                found: qe.certification_data.cert_type,
                expected: CERT_TYPE_PCK_CHAIN,
            });
        }
        Ok(Self {
            version: header.version,
            qe_svn: header.qe_svn,
            pce_svn: header.pce_svn,
            report,
            signed_len,
            signature: auth.ecdsa_signature,
            attestation_key: auth.ecdsa_attestation_key,
            qe_report: qe.qe_report,
            qe_report_signature: qe.qe_report_signature,
            qe_auth_data: qe.qe_auth_data.data.clone(),
            pck_chain_pem: qe.certification_data.body.data.clone(),
        })
    }
}

fn td_report(r: &dcap_qvl::quote::TDReport10, v15: Option<([u8; 16], [u8; 48])>) -> TdReport {
    TdReport {
        tee_tcb_svn: r.tee_tcb_svn,
        mr_seam: r.mr_seam,
        mr_signer_seam: r.mr_signer_seam,
        seam_attributes: r.seam_attributes,
        td_attributes: TdAttributes::from_bytes(r.td_attributes),
        xfam: r.xfam,
        mr_td: r.mr_td,
        mr_config_id: r.mr_config_id,
        mr_owner: r.mr_owner,
        mr_owner_config: r.mr_owner_config,
        rtmr: [r.rt_mr0, r.rt_mr1, r.rt_mr2, r.rt_mr3],
        report_data: r.report_data,
        tee_tcb_svn2: v15.map(|(svn2, _)| svn2),
        mr_service_td: v15.map(|(_, service)| service),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_bits_decode_little_endian() {
        // td_attributes of trustee-tdx_quote_4.dat: DEBUG and SEPT_VE_DISABLE.
        let a = TdAttributes::from_bytes([0x01, 0, 0, 0x10, 0, 0, 0, 0]);
        assert!(a.debug());
        assert_eq!(a.tud(), 0x01);
        assert!(a.sept_ve_disable());
        assert!(!a.migratable());
        let m = TdAttributes::from_bytes([0, 0, 0, 0x30, 0, 0, 0, 0]);
        assert!(m.migratable() && m.sept_ve_disable() && !m.debug());
    }

    #[test]
    fn garbage_and_oversized_input_are_typed_errors() {
        assert!(matches!(
            TdQuote::parse(&[0u8; 10]),
            Err(TdxError::QuoteFormat { .. })
        ));
        assert!(matches!(
            TdQuote::parse(&vec![0u8; MAX_QUOTE_LEN + 1]),
            Err(TdxError::QuoteTooLarge { .. })
        ));
    }
}
