//! The AMD certificate chain: ARK (self-signed) → ASK / ASVK → VCEK / VLEK, with the AMD roots
//! embedded per processor generation. All AMD certificates are signed with RSASSA-PSS
//! (SHA-384, MGF1-SHA-384, 48-byte salt); the VCEK/VLEK carries an ECDSA P-384 key.

use std::fmt;
use std::time::SystemTime;

use p384::ecdsa::VerifyingKey as P384VerifyingKey;
use rsa::pkcs1::{DecodeRsaPublicKey, RsaPssParams};
use rsa::signature::Verifier;
use sha2::Sha384;
use x509_cert::Certificate;
use x509_cert::der::asn1::{BitString, ObjectIdentifier, OctetStringRef};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::crl::CrlSet;
use super::error::SnpError;
use super::report::Generation;

const MILAN_PEM: &[u8] = include_bytes!("roots/trustee-milan_ask_ark_asvk.pem");
const GENOA_PEM: &[u8] = include_bytes!("roots/trustee-genoa_ask_ark_asvk.pem");
const TURIN_PEM: &[u8] = include_bytes!("roots/trustee-turin_ask_ark_asvk.pem");

const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// AMD VCEK/VLEK extension OIDs (AMD "VCEK certificate and KDS interface specification").
pub mod oids {
    /// Boot loader SPL.
    pub const BOOTLOADER: &str = "1.3.6.1.4.1.3704.1.3.1";
    /// TEE SPL.
    pub const TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
    /// SNP firmware SPL.
    pub const SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
    /// Microcode SPL.
    pub const MICROCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
    /// FMC SPL (Turin).
    pub const FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
    /// Hardware ID (chip_id); VCEK only.
    pub const HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
}

/// The role of a certificate in the AMD chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// AMD Root Key (self-signed).
    Ark,
    /// AMD SEV Key (signs VCEKs).
    Ask,
    /// AMD SEV VLEK Key (signs VLEKs).
    Asvk,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ark => "ARK",
            Self::Ask => "ASK",
            Self::Asvk => "ASVK",
            Self::Vcek => "VCEK",
            Self::Vlek => "VLEK",
        })
    }
}

fn format_err(role: CertRole, reason: impl fmt::Display) -> SnpError {
    SnpError::CertificateFormat {
        role,
        reason: reason.to_string(),
    }
}

/// The ARK, ASK and ASVK of one generation: AMD's, embedded ([`AmdRoots::embedded`]), or a test
/// chain's ([`AmdRoots::testing`]) that a verifier trusts only when told to, in addition to AMD's.
#[derive(Debug, Clone)]
pub struct AmdRoots {
    /// The generation these roots belong to.
    pub generation: Generation,
    ark: Certificate,
    ask: Certificate,
    /// Absent from a test chain (which certifies VCEKs only).
    asvk: Option<Certificate>,
    testing: bool,
}

impl AmdRoots {
    /// Loads the embedded roots of `generation` (the files under `src/snp/roots/`).
    pub fn embedded(generation: Generation) -> Result<Self, SnpError> {
        let pem = match generation {
            Generation::Milan => MILAN_PEM,
            Generation::Genoa => GENOA_PEM,
            Generation::Turin => TURIN_PEM,
        };
        let certs = Certificate::load_pem_chain(pem).map_err(|e| format_err(CertRole::Ark, e))?;
        let (mut ark, mut ask, mut asvk) = (None, None, None);
        for cert in certs {
            let subject = cert.tbs_certificate.subject.to_string();
            let slot = if subject.contains("CN=ARK-") {
                &mut ark
            } else if subject.contains("CN=SEV-VLEK-") {
                &mut asvk
            } else if subject.contains("CN=SEV-") {
                &mut ask
            } else {
                return Err(format_err(
                    CertRole::Ark,
                    format!("unexpected embedded certificate {subject}"),
                ));
            };
            *slot = Some(cert);
        }
        let missing = |role| {
            format_err(
                role,
                format!("missing from embedded {} roots", generation.name()),
            )
        };
        Ok(Self {
            generation,
            ark: ark.ok_or_else(|| missing(CertRole::Ark))?,
            ask: ask.ok_or_else(|| missing(CertRole::Ask))?,
            asvk: Some(asvk.ok_or_else(|| missing(CertRole::Asvk))?),
            testing: false,
        })
    }

    /// A test chain's ARK and ASK (PEM, as `coffer attestation testing-ca` writes them) for
    /// `generation`. Verified like AMD's (self-signed ARK signing the ASK, RSASSA-PSS, validity)
    /// wherever it is used; a verifier uses it only when configured to, and marks what it
    /// verifies as testing ([`EndorsementKey::testing`]).
    pub fn testing(
        generation: Generation,
        ark_pem: &[u8],
        ask_pem: &[u8],
    ) -> Result<Self, SnpError> {
        let ark = Certificate::from_pem(ark_pem).map_err(|e| format_err(CertRole::Ark, e))?;
        let ask = Certificate::from_pem(ask_pem).map_err(|e| format_err(CertRole::Ask, e))?;
        Ok(Self {
            generation,
            ark,
            ask,
            asvk: None,
            testing: true,
        })
    }

    /// The ARK (self-signed; checked by [`Self::verify_path`]).
    pub(super) fn ark(&self) -> &Certificate {
        &self.ark
    }

    /// Whether these are a test chain's roots.
    pub fn is_testing(&self) -> bool {
        self.testing
    }

    /// Checks that the ARK is self-signed and signs the ASK and ASVK, all valid at `now`.
    pub fn verify(&self, now: SystemTime) -> Result<(), SnpError> {
        self.verify_path(CertRole::Ask, now)?;
        self.verify_path(CertRole::Asvk, now)
    }

    /// Checks the ARK (self-signed) and one intermediate ([`CertRole::Ask`] or
    /// [`CertRole::Asvk`]) signed by it, both valid at `now`.
    pub fn verify_path(&self, intermediate: CertRole, now: SystemTime) -> Result<(), SnpError> {
        let cert = match intermediate {
            CertRole::Ask => &self.ask,
            CertRole::Asvk => self
                .asvk
                .as_ref()
                .ok_or_else(|| format_err(CertRole::Asvk, "this chain has no ASVK"))?,
            other => return Err(format_err(other, "not an AMD intermediate")),
        };
        if self.ark.tbs_certificate.subject != self.ark.tbs_certificate.issuer {
            return Err(format_err(CertRole::Ark, "ARK is not self-issued"));
        }
        check_validity(&self.ark, CertRole::Ark, now)?;
        verify_signed_by(&self.ark, CertRole::Ark, &self.ark, CertRole::Ark)?;
        check_validity(cert, intermediate, now)?;
        if cert.tbs_certificate.issuer != self.ark.tbs_certificate.subject {
            return Err(format_err(intermediate, "not issued by the ARK"));
        }
        verify_signed_by(cert, intermediate, &self.ark, CertRole::Ark)
    }
}

/// TCB values from the VCEK/VLEK extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertTcb {
    /// FMC SPL (Turin only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

/// A VCEK or VLEK whose chain to an embedded ARK was verified.
#[derive(Debug, Clone)]
pub struct EndorsementKey {
    /// [`CertRole::Vcek`] or [`CertRole::Vlek`].
    pub role: CertRole,
    /// Generation of the chain it verified against.
    pub generation: Generation,
    /// TCB extensions.
    pub tcb: CertTcb,
    /// hwID extension (64 bytes on Milan/Genoa, 8 on Turin); `None` for a VLEK.
    pub hw_id: Option<Vec<u8>>,
    /// The P-384 key that signs reports.
    pub key: P384VerifyingKey,
    /// The chain ends at a test chain's ARK ([`AmdRoots::testing`]), not AMD's.
    pub testing: bool,
}

/// Verifies a VCEK/VLEK (DER) against the embedded roots at `now`: the issuer picks the
/// generation and ASK (VCEK) or ASVK (VLEK); the whole chain must verify and be valid at `now`.
pub fn verify_endorsement_key(
    leaf_der: &[u8],
    now: SystemTime,
) -> Result<EndorsementKey, SnpError> {
    verify_endorsement_key_in(leaf_der, now, &[])
}

/// [`verify_endorsement_key`] trusting the test chains `testing` too, after AMD's roots: one
/// code path, only the set of roots differs. No revocation check: see
/// [`verify_endorsement_key_with`].
pub fn verify_endorsement_key_in(
    leaf_der: &[u8],
    now: SystemTime,
    testing: &[AmdRoots],
) -> Result<EndorsementKey, SnpError> {
    verify_endorsement_key_with(leaf_der, now, testing, &CrlSet::default())
}

/// [`verify_endorsement_key_in`] and then the chain's revocation status against `crls` at `now`
/// ([`CrlSet`]): the intermediate (ASK/ASVK) and the VCEK/VLEK must not be listed by the CRL of
/// the chain's product, issued and signed by the chain's ARK and current at `now`.
pub fn verify_endorsement_key_with(
    leaf_der: &[u8],
    now: SystemTime,
    testing: &[AmdRoots],
    crls: &CrlSet,
) -> Result<EndorsementKey, SnpError> {
    let leaf = Certificate::from_der(leaf_der).map_err(|e| format_err(CertRole::Vcek, e))?;
    let issuer = &leaf.tbs_certificate.issuer;
    let embedded = Generation::ALL
        .into_iter()
        .map(AmdRoots::embedded)
        .collect::<Result<Vec<_>, _>>()?;
    for roots in embedded.iter().chain(testing) {
        let asvk = roots.asvk.as_ref();
        let (role, intermediate, intermediate_role) =
            if *issuer == roots.ask.tbs_certificate.subject {
                (CertRole::Vcek, &roots.ask, CertRole::Ask)
            } else if let Some(asvk) = asvk.filter(|a| *issuer == a.tbs_certificate.subject) {
                (CertRole::Vlek, asvk, CertRole::Asvk)
            } else {
                continue;
            };
        roots.verify_path(intermediate_role, now)?;
        check_validity(&leaf, role, now)?;
        verify_signed_by(&leaf, role, intermediate, intermediate_role)?;
        crls.check(roots, (intermediate, intermediate_role), (&leaf, role), now)?;
        return endorsement_key(&leaf, role, roots.generation, roots.testing);
    }
    Err(SnpError::UnknownIssuer {
        issuer: issuer.to_string(),
    })
}

fn endorsement_key(
    leaf: &Certificate,
    role: CertRole,
    generation: Generation,
    testing: bool,
) -> Result<EndorsementKey, SnpError> {
    let spki = &leaf.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_SECP384R1) {
        return Err(format_err(role, "public key is not ECDSA P-384"));
    }
    let key = P384VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
        .map_err(|e| format_err(role, e))?;
    let ext = |oid: &'static str| -> Option<&[u8]> {
        let wanted = ObjectIdentifier::new(oid).ok()?;
        leaf.tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == wanted)
            .map(|e| e.extn_value.as_bytes())
    };
    let spl = |oid: &'static str| -> Result<u8, SnpError> {
        let value = ext(oid).ok_or(SnpError::MissingExtension { oid })?;
        u8::from_der(value).map_err(|e| format_err(role, format!("extension {oid}: {e}")))
    };
    let tcb = CertTcb {
        fmc: if generation == Generation::Turin {
            Some(spl(oids::FMC)?)
        } else {
            None
        },
        bootloader: spl(oids::BOOTLOADER)?,
        tee: spl(oids::TEE)?,
        snp: spl(oids::SNP)?,
        microcode: spl(oids::MICROCODE)?,
    };
    let hw_id = match role {
        CertRole::Vcek => {
            let raw = ext(oids::HW_ID).ok_or(SnpError::MissingExtension { oid: oids::HW_ID })?;
            // KDS encodes the value raw; some issuers wrap it in a DER OCTET STRING.
            let value = match raw.len() {
                8 | 64 => raw,
                _ => OctetStringRef::from_der(raw)
                    .map_err(|e| format_err(role, format!("hwID: {e}")))?
                    .as_bytes(),
            };
            if !matches!(value.len(), 8 | 64) {
                return Err(format_err(role, format!("hwID has {} bytes", value.len())));
            }
            Some(value.to_vec())
        }
        _ => None,
    };
    Ok(EndorsementKey {
        role,
        generation,
        tcb,
        hw_id,
        key,
        testing,
    })
}

fn check_validity(cert: &Certificate, role: CertRole, now: SystemTime) -> Result<(), SnpError> {
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    if now < not_before || now > not_after {
        return Err(SnpError::CertificateValidity {
            role,
            now,
            not_before,
            not_after,
        });
    }
    Ok(())
}

/// Verifies `cert`'s RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) signature with `issuer`'s RSA key.
fn verify_signed_by(
    cert: &Certificate,
    role: CertRole,
    issuer: &Certificate,
    issuer_role: CertRole,
) -> Result<(), SnpError> {
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| format_err(role, e))?;
    verify_pss(
        &tbs,
        &cert.signature_algorithm,
        &cert.tbs_certificate.signature,
        &cert.signature,
        issuer,
    )
    .map_err(|failure| match failure {
        PssFailure::Format(reason) => format_err(role, reason),
        PssFailure::IssuerKey(reason) => format_err(issuer_role, reason),
        PssFailure::Mismatch => SnpError::CertificateSignature {
            role,
            issuer: issuer_role,
        },
    })
}

/// Why [`verify_pss`] refused; each caller maps it to its own [`SnpError`] variant.
pub(super) enum PssFailure {
    /// The signed object's algorithm or signature encoding is not AMD's.
    Format(String),
    /// The issuer's key is not a usable RSA key.
    IssuerKey(String),
    /// The signature does not verify.
    Mismatch,
}

/// Verifies an RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) signature over `signed` (the DER of a
/// certificate's or CRL's to-be-signed part) with `issuer`'s RSA key. `outer` and `inner` are the
/// object's two algorithm identifiers (outside and inside the signed part), which must agree.
pub(super) fn verify_pss(
    signed: &[u8],
    outer: &AlgorithmIdentifierOwned,
    inner: &AlgorithmIdentifierOwned,
    signature: &BitString,
    issuer: &Certificate,
) -> Result<(), PssFailure> {
    let format = |reason: &dyn fmt::Display| PssFailure::Format(reason.to_string());
    if outer.oid != OID_RSASSA_PSS || outer != inner {
        return Err(format(&format_args!(
            "signature algorithm {} is not RSASSA-PSS",
            outer.oid
        )));
    }
    let params_der = outer
        .parameters
        .as_ref()
        .ok_or_else(|| format(&"RSASSA-PSS without parameters"))?
        .to_der()
        .map_err(|e| format(&e))?;
    let params = RsaPssParams::from_der(&params_der).map_err(|e| format(&e))?;
    let mgf_hash = params.mask_gen.parameters.map(|p| p.oid);
    if params.hash.oid != OID_SHA384
        || params.mask_gen.oid != OID_MGF1
        || mgf_hash != Some(OID_SHA384)
        || params.salt_len != 48
    {
        return Err(format(
            &"RSASSA-PSS parameters are not SHA-384/MGF1-SHA-384/48",
        ));
    }
    let spki = &issuer.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != OID_RSA_ENCRYPTION && spki.algorithm.oid != OID_RSASSA_PSS {
        return Err(PssFailure::IssuerKey("public key is not RSA".to_owned()));
    }
    let key = rsa::RsaPublicKey::from_pkcs1_der(spki.subject_public_key.raw_bytes())
        .map_err(|e| PssFailure::IssuerKey(e.to_string()))?;
    let verifier = rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key, 48);
    let signature_bytes = signature
        .as_bytes()
        .ok_or_else(|| format(&"signature has unused bits"))?;
    let parsed = rsa::pss::Signature::try_from(signature_bytes).map_err(|e| format(&e))?;
    let spki_der = spki
        .to_der()
        .map_err(|e| PssFailure::IssuerKey(e.to_string()))?;
    let memo_key = signature_memo_key(signed, signature_bytes, &spki_der);
    if VERIFIED_SIGNATURES.contains(&memo_key) {
        return Ok(());
    }
    verifier
        .verify(signed, &parsed)
        .map_err(|_| PssFailure::Mismatch)?;
    VERIFIED_SIGNATURES.insert(memo_key);
    Ok(())
}

/// Certificate signatures already verified in this process, keyed by a hash of exactly what was
/// verified (to-be-signed bytes, signature, issuer key). A certificate's signature either verifies
/// under a key or not, forever, so repeating the RSA-4096 checks for every report (the AMD chain
/// has three) is wasted work; validity periods are still checked on every call. Only successes are
/// remembered, so a refusal is never cached into an acceptance. Bounded: cleared when full.
static VERIFIED_SIGNATURES: SignatureMemo = SignatureMemo::new();

/// Most remembered signatures.
const SIGNATURE_MEMO_CAPACITY: usize = 4096;

struct SignatureMemo(std::sync::Mutex<Option<std::collections::HashSet<[u8; 48]>>>);

impl SignatureMemo {
    const fn new() -> Self {
        Self(std::sync::Mutex::new(None))
    }

    fn contains(&self, key: &[u8; 48]) -> bool {
        self.0
            .lock()
            .is_ok_and(|set| set.as_ref().is_some_and(|s| s.contains(key)))
    }

    fn insert(&self, key: [u8; 48]) {
        if let Ok(mut set) = self.0.lock() {
            let set = set.get_or_insert_with(std::collections::HashSet::new);
            if set.len() >= SIGNATURE_MEMO_CAPACITY {
                set.clear();
            }
            set.insert(key);
        }
    }
}

fn signature_memo_key(tbs: &[u8], signature: &[u8], issuer_spki: &[u8]) -> [u8; 48] {
    use sha2::Digest as _;
    let mut hasher = Sha384::new();
    for part in [tbs, signature, issuer_spki] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn kbs05_embedded_roots_verify_for_every_generation() {
        for generation in Generation::ALL {
            let roots = AmdRoots::embedded(generation).unwrap();
            roots.verify(at(1_767_225_600)).unwrap(); // 2026-01-01
        }
    }

    #[test]
    fn kbs05_ask_from_other_generation_rejected() {
        let mut milan = AmdRoots::embedded(Generation::Milan).unwrap();
        let genoa = AmdRoots::embedded(Generation::Genoa).unwrap();
        milan.ask = genoa.ask;
        assert!(milan.verify(at(1_767_225_600)).is_err());
    }

    #[test]
    fn roots_rejected_before_validity() {
        let roots = AmdRoots::embedded(Generation::Milan).unwrap();
        let err = roots.verify(at(0)).unwrap_err();
        assert!(matches!(err, SnpError::CertificateValidity { .. }), "{err}");
    }

    #[test]
    fn garbage_leaf_is_a_format_error() {
        let err = verify_endorsement_key(b"not a certificate", SystemTime::now()).unwrap_err();
        assert!(
            matches!(
                err,
                SnpError::CertificateFormat {
                    role: CertRole::Vcek,
                    ..
                }
            ),
            "{err}"
        );
    }
}
