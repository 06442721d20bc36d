//! The SEV-SNP test chain and forged reports.
//!
//! The chain is shaped like AMD's (what [`crate::snp::verify_endorsement_key_in`] checks): a
//! self-signed ARK and an ASK it signs, RSA keys, RSASSA-PSS with SHA-384, MGF1-SHA-384 and a
//! 48-byte salt; each forged report gets a VCEK the ASK issues for the report's reported TCB and
//! chip id (the TCB extensions and hwID a real VCEK carries, as AMD's KDS issues one per TCB), an
//! ECDSA P-384 key that signs the report. The report is the 0x4A0-byte ABI layout, version 3
//! with a Milan CPUID, signed over bytes 0x000..0x2A0.
//!
//! The VCEK's serial is derived from the chip id and TCB ([`SnpTestChain::vcek_serial`]: one
//! VCEK per chip and TCB, as KDS issues them), so a test can revoke the VCEK of evidence before
//! forging it; [`SnpTestChain::issue_crl`] signs a CRL with the ARK, shaped like the ones AMD KDS
//! serves (`/vcek/v1/{product}/crl`: X.509 v2, issuer the ARK, RSASSA-PSS/SHA-384, DER).

use std::path::Path;
use std::str::FromStr as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p384::ecdsa::signature::Signer as _;
use rand_core::{OsRng, RngCore as _};
use rsa::RsaPrivateKey;
use rsa::pkcs1::RsaPssParams;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _};
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
use serde_json::{Value, json};
use sha2::Sha384;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::der::asn1::{BitString, ObjectIdentifier, OctetString, UtcTime};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{Any, Decode as _, DecodePem as _, Encode as _, EncodePem as _};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};

use super::{
    MARKER, MARKER_TEXT, SNP_ARK, SNP_ARK_KEY, SNP_ASK, SNP_ASK_KEY, TestChainError, read, write,
};
use crate::snp::{REPORT_LEN, SIGNED_LEN, oids};

/// RSA modulus size of the test ARK and ASK (AMD's are 4096 bits; the verifier accepts any).
pub const RSA_BITS: usize = 3072;
const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");
/// GUID of the VCEK entry in an extended report's certificate table (63da758d-e664-4564-adc5-f4b93be8accd).
const VCEK_GUID: [u8; 16] = [
    0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
const ARK_NAME: &str =
    "CN=ARK-Milan-TESTING,OU=coffer attestation testing-ca,O=NOT AMD - TESTING ONLY";
const ASK_NAME: &str =
    "CN=SEV-Milan-TESTING,OU=coffer attestation testing-ca,O=NOT AMD - TESTING ONLY";
const VCEK_NAME: &str =
    "CN=SEV-VCEK-TESTING,OU=coffer attestation testing-ca,O=NOT AMD - TESTING ONLY";

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> TestChainError {
    TestChainError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

/// Security patch levels of a Milan/Genoa TCB_VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcb {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl Default for Tcb {
    fn default() -> Self {
        Self {
            bootloader: 4,
            tee: 0,
            snp: 22,
            microcode: 213,
        }
    }
}

impl Tcb {
    /// The 8 report bytes (Milan/Genoa layout: `[bl, tee, 0, 0, 0, 0, snp, ucode]`).
    pub fn raw(self) -> [u8; 8] {
        [
            self.bootloader,
            self.tee,
            0,
            0,
            0,
            0,
            self.snp,
            self.microcode,
        ]
    }
}

impl std::str::FromStr for Tcb {
    type Err = String;

    /// `bootloader=4,tee=0,snp=22,microcode=213`; components not named keep their defaults.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut tcb = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not NAME=VALUE"))?;
            let value: u8 = value
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the value is not 0..=255"))?;
            match name.trim() {
                "bootloader" => tcb.bootloader = value,
                "tee" => tcb.tee = value,
                "snp" => tcb.snp = value,
                "microcode" => tcb.microcode = value,
                other => {
                    return Err(format!(
                        "unknown TCB component {other:?} (bootloader, tee, snp, microcode)"
                    ));
                }
            }
        }
        Ok(tcb)
    }
}

/// The fields of a forged report. `Default` is a report every strict verifier accepts (no
/// debug, no migration agent, VMPL 0) with a zero measurement and host data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpFields {
    /// MEASUREMENT (the launch digest).
    pub measurement: [u8; 48],
    /// HOST_DATA (Coffer: the init-data digest).
    pub host_data: [u8; 32],
    /// REPORT_DATA.
    pub report_data: [u8; 64],
    /// The guest policy word (bit 16 SMT, 17 reserved-one, 18 MIGRATE_MA, 19 DEBUG, 20
    /// SINGLE_SOCKET). Default 0x30000.
    pub policy: u64,
    /// VMPL of the request. Default 0.
    pub vmpl: u32,
    /// REPORTED_TCB, also CURRENT_TCB, COMMITTED_TCB and LAUNCH_TCB; the VCEK certifies it.
    pub tcb: Tcb,
    /// CHIP_ID; the VCEK's hwID. Default: 64 bytes of 0xC0 (non-zero, as a verifier requires).
    pub chip_id: [u8; 64],
    /// GUEST_SVN.
    pub guest_svn: u32,
}

impl Default for SnpFields {
    fn default() -> Self {
        Self {
            measurement: [0; 48],
            host_data: [0; 32],
            report_data: [0; 64],
            policy: POLICY_DEFAULT,
            vmpl: 0,
            tcb: Tcb::default(),
            chip_id: [0xC0; 64],
            guest_svn: 0,
        }
    }
}

/// Guest policy: SMT allowed, the reserved bit 17 set.
pub const POLICY_DEFAULT: u64 = 0x3_0000;
/// Guest policy bit 18: a migration agent may be associated.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Guest policy bit 19: debugging allowed.
pub const POLICY_DEBUG: u64 = 1 << 19;

/// A forged report and the VCEK that signed it.
#[derive(Debug, Clone)]
pub struct ForgedSnp {
    /// The 0x4A0-byte report.
    pub report: Vec<u8>,
    /// The VCEK (DER), issued by the test ASK for the report's TCB and chip id.
    pub vcek_der: Vec<u8>,
}

impl ForgedSnp {
    /// The evidence JSON an SNP guest sends (`primary_evidence`): the report and an extended
    /// report's certificate table holding the VCEK.
    pub fn evidence(&self) -> Value {
        let mut table = Vec::with_capacity(48 + self.vcek_der.len());
        table.extend_from_slice(&VCEK_GUID);
        table.extend_from_slice(&48u32.to_le_bytes());
        table.extend_from_slice(&(self.vcek_der.len() as u32).to_le_bytes());
        table.extend_from_slice(&[0u8; 24]);
        table.extend_from_slice(&self.vcek_der);
        json!({"report": B64.encode(&self.report), "cert_table": B64.encode(table)})
    }
}

/// A CRL for [`SnpTestChain::issue_crl`]. `Default`: nothing revoked, issued an hour ago, next
/// update in a week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSpec {
    /// Serial numbers revoked (as [`SnpTestChain::vcek_serial`] and [`SnpTestChain::ask_serial`]
    /// return them).
    pub revoked: Vec<Vec<u8>>,
    /// `thisUpdate`.
    pub this_update: SystemTime,
    /// `nextUpdate`; `None` leaves it out.
    pub next_update: Option<SystemTime>,
}

impl Default for CrlSpec {
    fn default() -> Self {
        let now = SystemTime::now();
        Self {
            revoked: Vec::new(),
            this_update: now - Duration::from_secs(3600),
            next_update: Some(now + Duration::from_secs(7 * 86_400)),
        }
    }
}

/// The SNP test chain: ARK and ASK certificates, the ASK's key and the ARK's (which signs CRLs).
pub struct SnpTestChain {
    ark: Certificate,
    ask: Certificate,
    ask_key: RsaPrivateKey,
    /// Absent from a chain written before the ARK key was kept: it cannot issue CRLs.
    ark_key: Option<RsaPrivateKey>,
}

impl std::fmt::Debug for SnpTestChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpTestChain").finish_non_exhaustive()
    }
}

fn name(text: &str) -> Result<Name, TestChainError> {
    Name::from_str(text).map_err(|e| invalid("name", e))
}

fn at(t: SystemTime) -> Result<Time, TestChainError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| invalid("time", e))?;
    UtcTime::from_system_time(UNIX_EPOCH + Duration::from_secs(secs.as_secs()))
        .map(Time::UtcTime)
        .map_err(|e| invalid("time", e))
}

fn validity(days: u32) -> Result<Validity, TestChainError> {
    let now = SystemTime::now();
    Ok(Validity {
        not_before: at(now - Duration::from_secs(86_400))?,
        not_after: at(now + Duration::from_secs(86_400 * u64::from(days)))?,
    })
}

fn serial() -> Result<SerialNumber, TestChainError> {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::new(&bytes).map_err(|e| invalid("serial", e))
}

fn pss() -> Result<AlgorithmIdentifierOwned, TestChainError> {
    let params = RsaPssParams::new::<Sha384>(48)
        .to_der()
        .map_err(|e| invalid("pss parameters", e))?;
    Ok(AlgorithmIdentifierOwned {
        oid: OID_RSASSA_PSS,
        parameters: Some(Any::from_der(&params).map_err(|e| invalid("pss parameters", e))?),
    })
}

fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: Vec<u8>,
) -> Result<Extension, TestChainError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value).map_err(|e| invalid("extension", e))?,
    })
}

/// A certificate over `spki` signed with RSASSA-PSS/SHA-384 by `issuer_key`.
fn sign_certificate(
    subject: &str,
    issuer: &str,
    serial_number: Option<SerialNumber>,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
    days: u32,
    issuer_key: &RsaPrivateKey,
) -> Result<Certificate, TestChainError> {
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: match serial_number {
            Some(serial) => serial,
            None => serial()?,
        },
        signature: pss()?,
        issuer: name(issuer)?,
        validity: validity(days)?,
        subject: name(subject)?,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(|e| invalid("certificate", e))?;
    let signer = rsa::pss::SigningKey::<Sha384>::new_with_salt_len(issuer_key.clone(), 48);
    let signature = signer.sign_with_rng(&mut OsRng, &tbs_der).to_vec();
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: pss()?,
        signature: BitString::from_bytes(&signature).map_err(|e| invalid("certificate", e))?,
    })
}

fn rsa_spki(key: &RsaPrivateKey) -> Result<SubjectPublicKeyInfoOwned, TestChainError> {
    let der = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| invalid("rsa key", e))?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| invalid("rsa key", e))
}

fn ca_extensions() -> Result<Vec<Extension>, TestChainError> {
    let bc = BasicConstraints {
        ca: true,
        path_len_constraint: None,
    }
    .to_der()
    .map_err(|e| invalid("extension", e))?;
    Ok(vec![extension(OID_BASIC_CONSTRAINTS, true, bc)?])
}

impl SnpTestChain {
    /// A new ARK and ASK, valid from a day ago for `days`.
    pub fn generate(days: u32) -> Result<Self, TestChainError> {
        let keygen = || RsaPrivateKey::new(&mut OsRng, RSA_BITS).map_err(|e| invalid("rsa key", e));
        let ark_key = keygen()?;
        let ask_key = keygen()?;
        let ark = sign_certificate(
            ARK_NAME,
            ARK_NAME,
            None,
            rsa_spki(&ark_key)?,
            ca_extensions()?,
            days,
            &ark_key,
        )?;
        let ask = sign_certificate(
            ASK_NAME,
            ARK_NAME,
            None,
            rsa_spki(&ask_key)?,
            ca_extensions()?,
            days,
            &ark_key,
        )?;
        Ok(Self {
            ark,
            ask,
            ask_key,
            ark_key: Some(ark_key),
        })
    }

    /// Writes `snp/ark.pem`, `snp/ask.pem`, `snp/ask-key.pem` and `snp/ark-key.pem` (0600)
    /// under `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TestChainError> {
        let pem = |c: &Certificate| {
            c.to_pem(LineEnding::LF)
                .map_err(|e| invalid("certificate", e))
        };
        write(dir, MARKER, MARKER_TEXT.as_bytes(), false)?;
        write(dir, SNP_ARK, pem(&self.ark)?.as_bytes(), false)?;
        write(dir, SNP_ASK, pem(&self.ask)?.as_bytes(), false)?;
        let key_pem = |key: &RsaPrivateKey| {
            let der = key.to_pkcs8_der().map_err(|e| invalid("rsa key", e))?;
            x509_cert::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, der.as_bytes())
                .map_err(|e| invalid("rsa key", e))
        };
        write(dir, SNP_ASK_KEY, key_pem(&self.ask_key)?.as_bytes(), true)?;
        if let Some(ark_key) = &self.ark_key {
            write(dir, SNP_ARK_KEY, key_pem(ark_key)?.as_bytes(), true)?;
        }
        Ok(())
    }

    /// Loads the chain `write` wrote.
    pub fn load(dir: &Path) -> Result<Self, TestChainError> {
        let cert =
            |file| Certificate::from_pem(read(dir, file)?).map_err(|e| invalid("certificate", e));
        let key = |file, what| -> Result<RsaPrivateKey, TestChainError> {
            let (_, der) =
                x509_cert::der::pem::decode_vec(&read(dir, file)?).map_err(|e| invalid(what, e))?;
            RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| invalid(what, e))
        };
        let ark_key = if dir.join(SNP_ARK_KEY).exists() {
            Some(key(SNP_ARK_KEY, "ark key")?)
        } else {
            None
        };
        Ok(Self {
            ark: cert(SNP_ARK)?,
            ask: cert(SNP_ASK)?,
            ask_key: key(SNP_ASK_KEY, "ask key")?,
            ark_key,
        })
    }

    /// The ASK's serial number (what a CRL lists to revoke it).
    pub fn ask_serial(&self) -> Vec<u8> {
        self.ask.tbs_certificate.serial_number.as_bytes().to_vec()
    }

    /// The serial number of the VCEK [`Self::forge`] issues for `fields`: derived from the chip id
    /// and TCB, so the same for every report of that chip and TCB (what a CRL lists to revoke it).
    pub fn vcek_serial(fields: &SnpFields) -> Vec<u8> {
        use sha2::Digest as _;
        let mut hasher = Sha384::new();
        hasher.update(b"coffer test VCEK serial");
        hasher.update(fields.chip_id);
        hasher.update(fields.tcb.raw());
        let digest = hasher.finalize();
        let mut serial = digest[..16].to_vec();
        // Positive and without a leading zero byte: the DER INTEGER is these 16 bytes as they are.
        serial[0] = (serial[0] & 0x7f) | 0x01;
        serial
    }

    /// A CRL issued and signed (RSASSA-PSS/SHA-384) by this chain's ARK, DER-encoded like AMD
    /// KDS's: X.509 v2, a CRL number, the revoked serials of `spec`.
    pub fn issue_crl(&self, spec: &CrlSpec) -> Result<Vec<u8>, TestChainError> {
        let ark_key = self.ark_key.as_ref().ok_or_else(|| {
            invalid(
                "crl",
                "this test chain has no ARK key (snp/ark-key.pem): recreate it with testing-ca",
            )
        })?;
        let revoked = spec
            .revoked
            .iter()
            .map(|serial| {
                Ok(RevokedCert {
                    serial_number: SerialNumber::new(serial).map_err(|e| invalid("crl", e))?,
                    revocation_date: at(spec.this_update)?,
                    crl_entry_extensions: None,
                })
            })
            .collect::<Result<Vec<_>, TestChainError>>()?;
        let crl_number = 1u32.to_der().map_err(|e| invalid("crl", e))?;
        let tbs = TbsCertList {
            version: Version::V2,
            signature: pss()?,
            issuer: self.ark.tbs_certificate.subject.clone(),
            this_update: at(spec.this_update)?,
            next_update: spec.next_update.map(at).transpose()?,
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: Some(vec![extension(OID_CRL_NUMBER, false, crl_number)?]),
        };
        let tbs_der = tbs.to_der().map_err(|e| invalid("crl", e))?;
        let signer = rsa::pss::SigningKey::<Sha384>::new_with_salt_len(ark_key.clone(), 48);
        let signature = signer.sign_with_rng(&mut OsRng, &tbs_der).to_vec();
        CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: pss()?,
            signature: BitString::from_bytes(&signature).map_err(|e| invalid("crl", e))?,
        }
        .to_der()
        .map_err(|e| invalid("crl", e))
    }

    /// The ARK and ASK (PEM), what a verifier trusts ([`crate::snp::AmdRoots::testing`]).
    pub fn roots_pem(&self) -> Result<(String, String), TestChainError> {
        let pem = |c: &Certificate| {
            c.to_pem(LineEnding::LF)
                .map_err(|e| invalid("certificate", e))
        };
        Ok((pem(&self.ark)?, pem(&self.ask)?))
    }

    /// A VCEK for `tcb` and `chip_id`, and its signing key.
    fn issue_vcek(
        &self,
        fields: &SnpFields,
    ) -> Result<(Vec<u8>, p384::ecdsa::SigningKey), TestChainError> {
        let (tcb, chip_id) = (fields.tcb, &fields.chip_id);
        let key = p384::ecdsa::SigningKey::random(&mut OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(Any::encode_from(&OID_SECP384R1).map_err(|e| invalid("vcek", e))?),
            },
            subject_public_key: BitString::from_bytes(point.as_bytes())
                .map_err(|e| invalid("vcek", e))?,
        };
        let spl = |oid: &'static str, value: u8| -> Result<Extension, TestChainError> {
            let oid = ObjectIdentifier::new(oid).map_err(|e| invalid("vcek", e))?;
            extension(oid, false, value.to_der().map_err(|e| invalid("vcek", e))?)
        };
        let hw_id = ObjectIdentifier::new(oids::HW_ID).map_err(|e| invalid("vcek", e))?;
        let extensions = vec![
            spl(oids::BOOTLOADER, tcb.bootloader)?,
            spl(oids::TEE, tcb.tee)?,
            spl(oids::SNP, tcb.snp)?,
            spl(oids::MICROCODE, tcb.microcode)?,
            // KDS puts the 64 raw bytes in the extension value.
            extension(hw_id, false, chip_id.to_vec())?,
        ];
        let cert = sign_certificate(
            VCEK_NAME,
            ASK_NAME,
            Some(SerialNumber::new(&Self::vcek_serial(fields)).map_err(|e| invalid("vcek", e))?),
            spki,
            extensions,
            365,
            &self.ask_key,
        )?;
        let der = cert.to_der().map_err(|e| invalid("vcek", e))?;
        Ok((der, key))
    }

    /// A report with `fields`, signed by a VCEK this chain issues for them.
    pub fn forge(&self, fields: &SnpFields) -> Result<ForgedSnp, TestChainError> {
        let (vcek_der, key) = self.issue_vcek(fields)?;
        let mut r = vec![0u8; REPORT_LEN];
        let mut put =
            |offset: usize, bytes: &[u8]| r[offset..offset + bytes.len()].copy_from_slice(bytes);
        let tcb = fields.tcb.raw();
        put(0x00, &3u32.to_le_bytes()); // version 3: carries the CPUID
        put(0x04, &fields.guest_svn.to_le_bytes());
        put(0x08, &fields.policy.to_le_bytes());
        put(0x30, &fields.vmpl.to_le_bytes());
        put(0x34, &1u32.to_le_bytes()); // ECDSA P-384 with SHA-384
        put(0x38, &tcb); // current
        put(0x48, &0u32.to_le_bytes()); // signed by the VCEK, chip id not masked
        put(0x50, &fields.report_data);
        put(0x90, &fields.measurement);
        put(0xC0, &fields.host_data);
        put(0x180, &tcb); // reported
        put(0x188, &[0x19, 0x01, 0x01]); // Milan: family 19h, model 01h, stepping 1
        put(0x1A0, &fields.chip_id);
        put(0x1E0, &tcb); // committed
        put(0x1F0, &tcb); // launch
        let signature: p384::ecdsa::Signature = key.sign(&r[..SIGNED_LEN]);
        let (sig_r, sig_s) = signature.split_bytes();
        // r and s: little-endian in 72-byte fields.
        let mut le = |offset: usize, big_endian: &[u8]| {
            for (i, b) in big_endian.iter().rev().enumerate() {
                r[offset + i] = *b;
            }
        };
        le(0x2A0, &sig_r);
        le(0x2E8, &sig_s);
        Ok(ForgedSnp {
            report: r,
            vcek_der,
        })
    }
}

/// Loads the SNP part of the test chain at `dir` if it is there.
pub fn load_if_present(dir: &Path) -> Result<Option<SnpTestChain>, TestChainError> {
    if dir.join(SNP_ASK_KEY).exists() {
        SnpTestChain::load(dir).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snp::{
        AmdRoots, Expected, SnpError, SnpPolicy, SnpVerifier, verify_endorsement_key,
    };

    #[test]
    fn forged_reports_verify_only_against_the_test_roots() {
        let chain = SnpTestChain::generate(30).unwrap();
        let fields = SnpFields {
            measurement: [7; 48],
            report_data: [9; 64],
            ..SnpFields::default()
        };
        let forged = chain.forge(&fields).unwrap();
        let (ark, ask) = chain.roots_pem().unwrap();
        let roots = AmdRoots::testing(super::super::SNP_GENERATION, ark.as_bytes(), ask.as_bytes())
            .unwrap();
        let expected = Expected {
            report_data: [9; 64],
            host_data: Some([0; 32]),
        };
        let now = SystemTime::now();
        let verified = SnpVerifier::new(SnpPolicy::default())
            .trusting_testing_roots(vec![roots])
            .verify(&forged.report, &forged.vcek_der, now, &expected)
            .unwrap();
        assert!(verified.testing);
        assert_eq!(verified.report.measurement, [7; 48]);
        // AMD's roots alone do not know the test ASK.
        let err = verify_endorsement_key(&forged.vcek_der, now).unwrap_err();
        assert!(matches!(err, SnpError::UnknownIssuer { .. }), "{err}");
        let err = SnpVerifier::new(SnpPolicy::default())
            .verify(&forged.report, &forged.vcek_der, now, &expected)
            .unwrap_err();
        assert!(matches!(err, SnpError::UnknownIssuer { .. }), "{err}");
    }

    #[test]
    fn tcb_spec_parses() {
        let t: Tcb = "bootloader=1, microcode=9".parse().unwrap();
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode), (1, 0, 22, 9));
        assert!("bl=1".parse::<Tcb>().is_err());
        assert!("snp=300".parse::<Tcb>().is_err());
    }
}
