//! The workload identity CA and `POST /kbs/v0/identity` (see [`crate::identity`] for the model).
//!
//! Request path: the identity CA must be configured → the requester is authenticated exactly as
//! for resources ([`Broker::requester`]: attested session cookie, else a bearer token this broker
//! signed and that has not expired) → the workload name comes from the initdata the evidence
//! bound (`init_data_bound` in the token's claims, the `workload-identity` entry) → the resource
//! policy decides with `data.plugin == "identity"` and `data["resource-path"]` = the SPIFFE ID →
//! the CSR is decoded, its key type checked and its self-signature verified → the lifetime is
//! checked → the certificate is signed. Nothing secret is logged; the CA key never leaves
//! [`IdentityCa`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use x509_cert::der::asn1::{AnyRef, Ia5String};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, DecodePem, Encode, Reader, SliceReader, Tag, Tagged};

use super::config::IdentityConfig;
use super::error::{KbsError, json_response};
use super::metrics::Metrics;
use super::{Broker, parse};
use crate::identity::{
    ATTESTATION_EXTENSION_OID, AttestationBinding, INITDATA_KEY, IdentityError, WorkloadName,
};
use crate::kbs::binding::canonical_json;
use crate::kbs::types::{IdentityReply, IdentityRequest};

/// Largest accepted CSR (DER).
pub const MAX_CSR_LEN: usize = 16 * 1024;
/// Issued certificates start this long before the request (clock skew between peers).
const BACKDATE: Duration = Duration::from_secs(60);
/// The `resource-path` plugin name the policy sees for identity requests.
pub const POLICY_PLUGIN: &str = "identity";

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_SAN: [u64; 4] = [2, 5, 29, 17];
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// CSR refusals.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Not PEM `CERTIFICATE REQUEST` nor base64 DER, or not a PKCS#10 structure.
    #[error("csr is not a pkcs#10 request: {reason}")]
    Malformed {
        /// Decoder detail.
        reason: String,
    },
    /// Larger than [`MAX_CSR_LEN`].
    #[error("csr is larger than {MAX_CSR_LEN} bytes")]
    TooLarge,
    /// The key is not P-256, P-384, Ed25519 or RSA 2048..=8192.
    #[error("csr key is not accepted: {reason}")]
    UnsupportedKey {
        /// What the key is.
        reason: String,
    },
    /// The signature algorithm does not fit the key.
    #[error("csr signature algorithm {oid} is not accepted for this key")]
    UnsupportedSignature {
        /// The algorithm.
        oid: String,
    },
    /// The self-signature does not verify.
    #[error("csr signature does not verify")]
    BadSignature,
}

/// Why an identity request was refused (after authentication).
#[derive(Debug, thiserror::Error)]
pub enum IdentityRefusal {
    /// The token's attestation carried no initdata.
    #[error("attestation carried no init-data")]
    NoInitData,
    /// The initdata was sent but the evidence did not bind its digest (legacy sample evidence).
    #[error("init-data is not bound by the evidence")]
    InitDataUnbound,
    /// The initdata has no `workload-identity` entry.
    #[error("init-data has no {INITDATA_KEY} entry")]
    NoWorkloadEntry,
    /// The entry is not a valid workload name.
    #[error("init-data {INITDATA_KEY} entry is invalid")]
    Workload(#[source] IdentityError),
    /// The CSR was refused.
    #[error("certificate request refused")]
    Csr(#[source] CsrError),
    /// The requested lifetime is over the maximum (or zero).
    #[error("requested lifetime {requested}s is not in 1..={max}s")]
    Lifetime {
        /// Requested seconds.
        requested: u64,
        /// Allowed maximum.
        max: u64,
    },
}

/// Failures loading or creating the CA at start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Only one of key and certificate exists.
    #[error("identity CA needs both {key} and {cert} (or neither, to generate them)")]
    Incomplete {
        /// Key path.
        key: PathBuf,
        /// Certificate path.
        cert: PathBuf,
    },
    /// Reading or writing a CA file failed.
    #[error("identity CA file {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key or certificate is unusable.
    #[error("identity CA {what}: {reason}")]
    Invalid {
        /// Which part.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// A CSR's verified public key, in the form rcgen certifies.
#[derive(Debug)]
pub struct CsrKey {
    alg: &'static rcgen::SignatureAlgorithm,
    raw: Vec<u8>,
    spki_der: Vec<u8>,
}

impl CsrKey {
    /// The DER SubjectPublicKeyInfo from the CSR.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        self.alg
    }
}

fn malformed(e: impl std::fmt::Display) -> CsrError {
    CsrError::Malformed {
        reason: e.to_string(),
    }
}

/// Decodes a CSR given as PEM or base64 DER.
fn csr_der(text: &str) -> Result<Vec<u8>, CsrError> {
    let text = text.trim();
    if text.len() > MAX_CSR_LEN * 2 {
        return Err(CsrError::TooLarge);
    }
    let der = if text.starts_with("-----BEGIN") {
        let (label, der) = x509_cert::der::pem::decode_vec(text.as_bytes()).map_err(malformed)?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(malformed(format!("pem label {label:?}")));
        }
        der
    } else {
        B64.decode(text).map_err(malformed)?
    };
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge);
    }
    Ok(der)
}

/// Parses a DER CSR, checks its key type and verifies its self-signature.
pub fn verify_csr(der: &[u8]) -> Result<CsrKey, CsrError> {
    use ring::signature as sig;
    let csr = x509_cert::request::CertReq::from_der(der).map_err(malformed)?;
    // The signature covers the CertificationRequestInfo bytes as received (a re-encoding could
    // differ: the decoder sorts SET OF members).
    let signed = {
        let outer = AnyRef::from_der(der).map_err(malformed)?;
        let mut reader = SliceReader::new(outer.value()).map_err(malformed)?;
        reader.tlv_bytes().map_err(malformed)?.to_vec()
    };
    let spki = &csr.info.public_key;
    let raw = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| malformed("public key bit string has unused bits"))?
        .to_vec();
    let unsupported = |reason: String| CsrError::UnsupportedKey { reason };
    let signature_oid = csr.algorithm.oid;
    let bad_sig_alg = || CsrError::UnsupportedSignature {
        oid: signature_oid.to_string(),
    };
    let (alg, verify): (
        &'static rcgen::SignatureAlgorithm,
        &'static dyn sig::VerificationAlgorithm,
    ) = match spki.algorithm.oid {
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or_else(|| unsupported("ec key without a named curve".into()))?;
            let (len, rc) = match curve {
                OID_P256 => (65, &rcgen::PKCS_ECDSA_P256_SHA256),
                OID_P384 => (97, &rcgen::PKCS_ECDSA_P384_SHA384),
                other => return Err(unsupported(format!("ec curve {other}"))),
            };
            if raw.len() != len || raw.first() != Some(&4) {
                return Err(unsupported("ec point is not uncompressed".into()));
            }
            let v: &'static dyn sig::VerificationAlgorithm = match (curve, signature_oid) {
                (OID_P256, OID_ECDSA_SHA256) => &sig::ECDSA_P256_SHA256_ASN1,
                (OID_P256, OID_ECDSA_SHA384) => &sig::ECDSA_P256_SHA384_ASN1,
                (OID_P384, OID_ECDSA_SHA256) => &sig::ECDSA_P384_SHA256_ASN1,
                (OID_P384, OID_ECDSA_SHA384) => &sig::ECDSA_P384_SHA384_ASN1,
                _ => return Err(bad_sig_alg()),
            };
            (rc, v)
        }
        OID_ED25519 => {
            if raw.len() != 32 || spki.algorithm.parameters.is_some() {
                return Err(unsupported("malformed ed25519 key".into()));
            }
            if signature_oid != OID_ED25519 {
                return Err(bad_sig_alg());
            }
            (&rcgen::PKCS_ED25519, &sig::ED25519)
        }
        OID_RSA => {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            use rsa::traits::PublicKeyParts as _;
            let key = rsa::RsaPublicKey::from_pkcs1_der(&raw)
                .map_err(|e| unsupported(format!("rsa key: {e}")))?;
            let bits = key.n().bits();
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(unsupported(format!(
                    "rsa-{bits} (need {MIN_RSA_BITS}..={MAX_RSA_BITS} bits)"
                )));
            }
            let v: &'static dyn sig::VerificationAlgorithm = match signature_oid {
                OID_RSA_SHA256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                OID_RSA_SHA384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                OID_RSA_SHA512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                _ => return Err(bad_sig_alg()),
            };
            (&rcgen::PKCS_RSA_SHA256, v)
        }
        other => return Err(unsupported(format!("key algorithm {other}"))),
    };
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| malformed("signature bit string has unused bits"))?;
    sig::UnparsedPublicKey::new(verify, &raw)
        .verify(&signed, signature)
        .map_err(|_| CsrError::BadSignature)?;
    Ok(CsrKey {
        alg,
        raw,
        spki_der: spki.to_der().map_err(malformed)?,
    })
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf certificate, PEM.
    pub certificate_pem: String,
    /// `notBefore`, Unix seconds.
    pub not_before: u64,
    /// `notAfter`, Unix seconds.
    pub not_after: u64,
}

/// The identity CA of one trust domain.
pub struct IdentityCa {
    trust_domain: String,
    key: rcgen::KeyPair,
    /// The issuer as rcgen signs with it (subject and key identifier of the CA certificate).
    issuer: rcgen::Certificate,
    /// The CA certificate exactly as stored (sent as the chain).
    ca_pem: String,
    ca_not_after: SystemTime,
    default_lifetime: u64,
    max_lifetime: u64,
}

impl std::fmt::Debug for IdentityCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> CaError {
    move |e| CaError::Invalid {
        what,
        reason: e.to_string(),
    }
}

fn random_serial() -> rcgen::SerialNumber {
    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&serial)
}

/// Writes `bytes` to a new file `path` with `mode` (refusing to overwrite), then syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Converts a certificate subject into an rcgen name (single-attribute RDNs with UTF8, Printable
/// or IA5 strings; anything else is refused).
fn rcgen_name(name: &x509_cert::name::Name) -> Result<rcgen::DistinguishedName, CaError> {
    let bad = invalid("certificate subject");
    let mut dn = rcgen::DistinguishedName::new();
    for rdn in name.0.iter() {
        let [attr] = rdn.0.as_slice() else {
            return Err(bad(&"multi-valued RDN"));
        };
        let arcs: Vec<u64> = attr.oid.arcs().map(u64::from).collect();
        let text = std::str::from_utf8(attr.value.value()).map_err(|e| bad(&e))?;
        let value = match attr.value.tag() {
            Tag::Utf8String => rcgen::DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => rcgen::DnValue::PrintableString(
                rcgen::PrintableString::try_from(text).map_err(|e| bad(&e))?,
            ),
            Tag::Ia5String => {
                rcgen::DnValue::Ia5String(rcgen::Ia5String::try_from(text).map_err(|e| bad(&e))?)
            }
            other => return Err(bad(&format!("attribute string type {other}"))),
        };
        dn.push(rcgen::DnType::from_oid(&arcs), value);
    }
    Ok(dn)
}

impl IdentityCa {
    /// Loads the CA from `config` (key and certificate), or generates and stores both when
    /// neither file exists. `trust_domain` must already be validated.
    pub fn load_or_create(config: &IdentityConfig, trust_domain: &str) -> Result<Self, CaError> {
        let (key_path, cert_path) = (&config.ca_key, &config.ca_cert);
        let (key_pem, cert_pem) = match (key_path.exists(), cert_path.exists()) {
            (true, true) => (
                std::fs::read_to_string(key_path).map_err(io_err(key_path))?,
                std::fs::read_to_string(cert_path).map_err(io_err(cert_path))?,
            ),
            (false, false) => Self::generate(config, trust_domain)?,
            _ => {
                return Err(CaError::Incomplete {
                    key: key_path.clone(),
                    cert: cert_path.clone(),
                });
            }
        };
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| invalid("key")(&e))?;
        let cert = x509_cert::Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| invalid("certificate")(&e))?;
        let tbs = &cert.tbs_certificate;
        let bad = invalid("certificate");
        let spki = tbs.subject_public_key_info.to_der().map_err(|e| bad(&e))?;
        if spki != key.public_key_der() {
            return Err(bad(&"does not hold the public key of identity.ca_key"));
        }
        let mut is_ca = false;
        let mut ski = None;
        for ext in tbs.extensions.iter().flatten() {
            let value = ext.extn_value.as_bytes();
            if ext.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS {
                is_ca = x509_cert::ext::pkix::BasicConstraints::from_der(value)
                    .map_err(|e| bad(&e))?
                    .ca;
            } else if ext.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER
            {
                ski = Some(
                    x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(value)
                        .map_err(|e| bad(&e))?
                        .0
                        .as_bytes()
                        .to_vec(),
                );
            }
        }
        if !is_ca {
            return Err(bad(&"basicConstraints CA is not set"));
        }
        let ca_not_after = tbs.validity.not_after.to_system_time();
        if ca_not_after <= SystemTime::now() {
            return Err(bad(&"expired"));
        }
        // The issuer as rcgen sees it: the CA's subject and key identifier. Its re-encoded
        // subject must be byte-identical to the stored certificate's, or relying parties would
        // not chain the leaves to it.
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen_name(&tbs.subject)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        if let Some(ski) = ski {
            params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ski);
        }
        let issuer = params.self_signed(&key).map_err(|e| bad(&e))?;
        let rebuilt = x509_cert::Certificate::from_der(issuer.der()).map_err(|e| bad(&e))?;
        if rebuilt
            .tbs_certificate
            .subject
            .to_der()
            .map_err(|e| bad(&e))?
            != tbs.subject.to_der().map_err(|e| bad(&e))?
        {
            return Err(bad(&"subject uses an encoding the issuer cannot reproduce"));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            key,
            issuer,
            ca_pem: cert_pem,
            ca_not_after,
            default_lifetime: config.default_lifetime_secs,
            max_lifetime: config.max_lifetime_secs,
        })
    }

    /// Generates a P-256 CA for `trust_domain` and stores it; returns (key PEM, cert PEM).
    fn generate(config: &IdentityConfig, trust_domain: &str) -> Result<(String, String), CaError> {
        let gen_err = invalid("generation");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| gen_err(&e))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, trust_domain);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "coffer-kbs workload identity CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after =
            (now + Duration::from_secs(config.ca_lifetime_days.saturating_mul(86400))).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(|e| gen_err(&e))?;
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        for path in [&config.ca_key, &config.ca_cert] {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err(dir))?;
            }
        }
        write_new(&config.ca_key, key_pem.as_bytes(), 0o600)?;
        if let Err(e) = write_new(&config.ca_cert, cert.pem().as_bytes(), 0o644) {
            // Leave neither file, so the next start generates again instead of failing on a
            // lone key.
            let _ = std::fs::remove_file(&config.ca_key);
            return Err(e);
        }
        tracing::info!(
            trust_domain,
            cert = %config.ca_cert.display(),
            "identity CA generated (key stored with mode 0600)"
        );
        Ok((key_pem.to_string(), cert.pem()))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, PEM (the trust anchor relying parties configure).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The lifetime for a request asking for `requested` seconds (default when `None`).
    pub fn lifetime(&self, requested: Option<u64>) -> Result<u64, IdentityRefusal> {
        let lifetime = requested.unwrap_or(self.default_lifetime);
        if lifetime == 0 || lifetime > self.max_lifetime {
            return Err(IdentityRefusal::Lifetime {
                requested: lifetime,
                max: self.max_lifetime,
            });
        }
        Ok(lifetime)
    }

    /// Signs a leaf for `key` with the single SAN URI `spiffe_id`, valid from `now` - 60 s for
    /// `lifetime` seconds (cut at the CA's own expiry), carrying `binding`.
    pub fn issue(
        &self,
        key: &CsrKey,
        spiffe_id: &str,
        binding: &AttestationBinding,
        lifetime: u64,
        now: SystemTime,
    ) -> Result<Issued, String> {
        let not_before = now - BACKDATE;
        let not_after = (now + Duration::from_secs(lifetime)).min(self.ca_not_after);
        if not_after <= now {
            return Err("the identity CA certificate has expired".into());
        }
        let mut params = rcgen::CertificateParams::default();
        // Empty subject: the identity is the SAN, which is then critical (RFC 5280 4.2.1.6).
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = Ia5String::new(spiffe_id).map_err(|e| e.to_string())?;
        let san = x509_cert::ext::pkix::SubjectAltName(vec![
            x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(uri),
        ])
        .to_der()
        .map_err(|e| e.to_string())?;
        let mut san = rcgen::CustomExtension::from_oid_content(&OID_SAN, san);
        san.set_criticality(true);
        let attestation = rcgen::CustomExtension::from_oid_content(
            ATTESTATION_EXTENSION_OID,
            binding.to_der().map_err(|e| e.to_string())?,
        );
        params.custom_extensions = vec![san, attestation];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(key, &self.issuer, &self.key)
            .map_err(|e| e.to_string())?;
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Issued {
            certificate_pem: cert.pem(),
            not_before: unix(not_before),
            not_after: unix(not_after),
        })
    }
}

fn annotated(claims: &Map<String, Value>) -> Option<&Value> {
    claims
        .get("submods")?
        .get("cpu0")?
        .get("ear.veraison.annotated-evidence")
}

/// The workload named by the bound initdata in `claims`.
pub fn workload_from_claims(claims: &Map<String, Value>) -> Result<WorkloadName, IdentityRefusal> {
    let evidence = annotated(claims).ok_or(IdentityRefusal::NoInitData)?;
    let data = evidence
        .get("init_data_claims")
        .and_then(|c| c.get("data"))
        .ok_or(IdentityRefusal::NoInitData)?;
    if evidence.get("init_data_bound") != Some(&Value::Bool(true)) {
        return Err(IdentityRefusal::InitDataUnbound);
    }
    let value = data
        .get(INITDATA_KEY)
        .and_then(Value::as_str)
        .ok_or(IdentityRefusal::NoWorkloadEntry)?;
    WorkloadName::parse(value).map_err(IdentityRefusal::Workload)
}

/// The [`AttestationBinding`] of `claims`.
pub fn binding_of(claims: &Map<String, Value>) -> AttestationBinding {
    let claims_value = Value::Object(claims.clone());
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let cpu = claims.get("submods").and_then(|s| s.get("cpu0"));
    AttestationBinding {
        claims_sha256: Sha256::digest(canonical_json(&claims_value)).into(),
        tee: text(annotated(claims).and_then(|a| a.get("tee"))),
        ear_status: text(cpu.and_then(|c| c.get("ear.status"))),
    }
}

/// `POST /kbs/v0/identity`.
pub(super) async fn issue_identity(
    State(broker): State<Broker>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, KbsError> {
    let m = &broker.inner.metrics;
    let result = match broker.sync_settings().await {
        Ok(()) => broker.identity(&headers, &body),
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        m.refused("identity", e.reason());
    }
    Metrics::outcome(result, &m.identity_issued, &m.identity_refused)
}

impl Broker {
    fn identity(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response, KbsError> {
        let b = &self.inner;
        let ca = b.identity.as_ref().ok_or(KbsError::IdentityDisabled)?;
        let requester = self.requester(headers)?;
        let request: IdentityRequest = parse("identity", body)?;
        let refuse = KbsError::Identity;
        let workload = workload_from_claims(&requester.claims).map_err(refuse)?;
        let spiffe_id = workload.spiffe_id(ca.trust_domain());
        let allowed = b.policy.read().unwrap_or_else(|p| p.into_inner()).decide(
            &requester.claims,
            POLICY_PLUGIN,
            &spiffe_id,
        );
        if !allowed {
            return Err(KbsError::PolicyDeny);
        }
        let der = csr_der(&request.csr).map_err(|e| refuse(IdentityRefusal::Csr(e)))?;
        let key = verify_csr(&der).map_err(|e| refuse(IdentityRefusal::Csr(e)))?;
        let lifetime = ca.lifetime(request.lifetime_secs).map_err(refuse)?;
        let binding = binding_of(&requester.claims);
        let issued = ca
            .issue(&key, &spiffe_id, &binding, lifetime, SystemTime::now())
            .map_err(|reason| KbsError::Internal {
                reason: format!("identity signing: {reason}"),
            })?;
        tracing::info!(%spiffe_id, not_after = issued.not_after, tee = %binding.tee, "identity issued");
        Ok(json_response(
            StatusCode::OK,
            &IdentityReply {
                certificate: issued.certificate_pem,
                ca_chain: ca.ca_pem().to_owned(),
                spiffe_id,
                not_before: issued.not_before,
                not_after: issued.not_after,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(key: &rcgen::KeyPair) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn csr_keys_accepted_and_signature_checked() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let der = csr_for(&key);
            let verified = verify_csr(&der).unwrap();
            assert_eq!(verified.raw, key.public_key_raw());
            let mut bad = der.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(matches!(verify_csr(&bad), Err(CsrError::BadSignature)));
        }
        assert!(matches!(
            verify_csr(b"\x30\x03\x02\x01\x00"),
            Err(CsrError::Malformed { .. })
        ));
    }

    /// Every single-bit flip and every truncation of a valid CSR is refused with a typed error
    /// (no panic): the signature covers every byte that is not structure.
    #[test]
    fn mutated_csrs_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = csr_for(&key);
        for i in 0..der.len() {
            for bit in 0..8 {
                let mut m = der.clone();
                m[i] ^= 1 << bit;
                assert!(
                    verify_csr(&m).is_err(),
                    "flip of bit {bit} in byte {i} accepted"
                );
            }
            assert!(verify_csr(&der[..i]).is_err());
        }
        verify_csr(&der).unwrap();
    }

    #[test]
    fn csr_text_forms() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap();
        let der = csr.der().to_vec();
        assert_eq!(csr_der(&csr.pem().unwrap()).unwrap(), der);
        assert_eq!(csr_der(&B64.encode(&der)).unwrap(), der);
        let cert_pem = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(csr_der(cert_pem).is_err());
        assert!(matches!(
            csr_der(&B64.encode(vec![0u8; MAX_CSR_LEN + 1])),
            Err(CsrError::TooLarge)
        ));
    }

    fn ca_config(dir: &Path) -> IdentityConfig {
        IdentityConfig {
            trust_domain: Some("coffer.test".into()),
            ca_key: dir.join("id/ca.key"),
            ca_cert: dir.join("id/ca.crt"),
            ..IdentityConfig::default()
        }
    }

    #[test]
    fn ca_generated_then_reloaded_with_private_key_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let config = ca_config(dir.path());
        let first = IdentityCa::load_or_create(&config, "coffer.test").unwrap();
        let mode = std::fs::metadata(&config.ca_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{first:?}").contains("PRIVATE"));
        let second = IdentityCa::load_or_create(&config, "coffer.test").unwrap();
        assert_eq!(first.ca_pem(), second.ca_pem());
        std::fs::remove_file(&config.ca_cert).unwrap();
        assert!(matches!(
            IdentityCa::load_or_create(&config, "coffer.test"),
            Err(CaError::Incomplete { .. })
        ));
    }

    #[test]
    fn operator_supplied_ca_issues_leaves_that_chain_to_it() {
        use x509_cert::der::DecodePem as _;
        let dir = tempfile::tempdir().unwrap();
        let config = ca_config(dir.path());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Corp");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mesh issuing CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let ca_cert = params.self_signed(&key).unwrap();
        std::fs::create_dir_all(dir.path().join("id")).unwrap();
        std::fs::write(&config.ca_key, key.serialize_pem()).unwrap();
        std::fs::write(&config.ca_cert, ca_cert.pem()).unwrap();
        let ca = IdentityCa::load_or_create(&config, "coffer.test").unwrap();
        assert_eq!(ca.ca_pem(), ca_cert.pem());

        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let csr = verify_csr(&csr_for(&leaf_key)).unwrap();
        let binding = AttestationBinding {
            claims_sha256: [1; 32],
            tee: "snp".into(),
            ear_status: "affirming".into(),
        };
        let issued = ca
            .issue(
                &csr,
                "spiffe://coffer.test/ns/a/sa/b",
                &binding,
                600,
                SystemTime::now(),
            )
            .unwrap();
        let leaf = x509_cert::Certificate::from_pem(issued.certificate_pem.as_bytes()).unwrap();
        let root = x509_cert::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap();
        assert_eq!(leaf.tbs_certificate.issuer, root.tbs_certificate.subject);
        let seen = crate::identity::inspect_certificate(&leaf.to_der().unwrap()).unwrap();
        assert_eq!(seen.attestation, Some(binding));
        assert_eq!(seen.not_after - seen.not_before, 660);

        // A certificate that does not hold the key is refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        std::fs::write(&config.ca_key, other.serialize_pem()).unwrap();
        assert!(matches!(
            IdentityCa::load_or_create(&config, "coffer.test"),
            Err(CaError::Invalid { .. })
        ));
        // A certificate that is not a CA is refused.
        let mut leafy = rcgen::CertificateParams::default();
        leafy.is_ca = rcgen::IsCa::ExplicitNoCa;
        std::fs::write(&config.ca_key, key.serialize_pem()).unwrap();
        std::fs::write(&config.ca_cert, leafy.self_signed(&key).unwrap().pem()).unwrap();
        assert!(matches!(
            IdentityCa::load_or_create(&config, "coffer.test"),
            Err(CaError::Invalid { .. })
        ));
    }

    #[test]
    fn lifetimes_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let config = IdentityConfig {
            max_lifetime_secs: 7200,
            ..ca_config(dir.path())
        };
        let ca = IdentityCa::load_or_create(&config, "coffer.test").unwrap();
        assert_eq!(ca.lifetime(None).unwrap(), 3600);
        assert_eq!(ca.lifetime(Some(7200)).unwrap(), 7200);
        assert!(ca.lifetime(Some(7201)).is_err());
        assert!(ca.lifetime(Some(0)).is_err());
    }
}
