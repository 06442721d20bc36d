//! AMD's certificate revocation lists (catalogue KBS-05, "revoked VCEK").
//!
//! AMD's Key Distribution Service publishes two CRLs per product, each an X.509 v2 CRL issued
//! and signed by that product's ARK (RSASSA-PSS, SHA-384, MGF1-SHA-384, 48-byte salt, like every
//! AMD certificate), served DER-encoded (`application/pkix-crl`):
//!
//! - `https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/crl` ([`CrlKind::Vcek`]), the CRL
//!   distribution point the ARK and the ASK name: it revokes ASKs (and so every VCEK under them);
//! - `https://kdsintf.amd.com/vlek/v1/{Milan,Genoa,Turin}/crl` ([`CrlKind::Vlek`]), the one the
//!   ASVK names: it revokes ASVKs (and so every VLEK under them).
//!
//! A [`CrlSet`] holds the CRLs a verifier was given (the broker has no internet: an operator
//! fetches them, see the crate README) and whether one is required. For a verified chain
//! ARK → ASK → VCEK (ASVK → VLEK) it takes the CRLs of the chain's product and kind:
//!
//! 1. none configured: refused when the set is [`CrlSet::required`] ([`SnpError::CrlMissing`]),
//!    else the evidence passes without a revocation check;
//! 2. one issued by this chain's ARK (issuer name), else refused ([`SnpError::CrlIssuer`]:
//!    configured CRLs that are not this ARK's never silently count as "no CRL");
//! 3. its signature verifies with that ARK's key ([`SnpError::CrlSignature`]);
//! 4. `thisUpdate <= now <= nextUpdate` ([`SnpError::CrlValidity`]); a CRL without
//!    `nextUpdate` cannot be judged fresh and is refused;
//! 5. no critical extension this module does not understand, no delta CRL, no indirect-CRL
//!    entry (`certificateIssuer`) ([`SnpError::CrlFormat`]);
//! 6. neither the intermediate's (ASK/ASVK) nor the endorsement key's (VCEK/VLEK) serial is
//!    listed ([`SnpError::Revoked`], naming the certificate and the serial). The CRL's issuer is
//!    the ARK, so its entries name ARK-issued certificates; a VCEK/VLEK serial it lists is refused
//!    too (AMD signing that serial into its revocation list is never a reason to accept).
//!
//! [`CrlSet::insert`] checks that a CRL configured for a product names that product's ARK
//! (`CN=ARK-<Product>`, or a test chain's `CN=ARK-<Product>-…`): a Genoa CRL filed as Milan's is
//! refused when loaded ([`SnpError::CrlProduct`]), not discovered at the first Milan evidence.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::name::Name;

use super::certs::{AmdRoots, CertRole, PssFailure, verify_pss};
use super::error::{SnpError, to_hex};
use super::report::Generation;

/// Largest CRL accepted, in bytes (AMD's are a few KiB).
pub const MAX_CRL_LEN: u64 = 1024 * 1024;
/// The PEM label of a CRL (`openssl crl -outform PEM`).
pub const PEM_LABEL: &str = "X509 CRL";

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");
const OID_AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const OID_DELTA_CRL_INDICATOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.27");
const OID_REASON_CODE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.21");
const OID_INVALIDITY_DATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.24");
const OID_CERTIFICATE_ISSUER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.29");
/// Longest serial quoted in an error (RFC 5280 caps serials at 20 octets).
const MAX_QUOTED_SERIAL: usize = 20;
/// Longest prefix of a name quoted in an error.
const MAX_QUOTED_NAME: usize = 96;

/// Which of a product's two KDS CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrlKind {
    /// `/vcek/v1/{product}/crl`: revokes ASKs, checked for VCEK-signed evidence.
    Vcek,
    /// `/vlek/v1/{product}/crl`: revokes ASVKs, checked for VLEK-signed evidence.
    Vlek,
}

impl CrlKind {
    /// Both kinds.
    pub const ALL: [CrlKind; 2] = [CrlKind::Vcek, CrlKind::Vlek];

    /// The kind covering a chain through `intermediate` (ASK or ASVK).
    fn of(intermediate: CertRole) -> Result<Self, SnpError> {
        match intermediate {
            CertRole::Ask => Ok(Self::Vcek),
            CertRole::Asvk => Ok(Self::Vlek),
            other => Err(SnpError::CertificateFormat {
                role: other,
                reason: "not an AMD intermediate".to_owned(),
            }),
        }
    }

    /// The file [`CrlSet::load_dir`] reads for `generation`: `milan.crl` (the VCEK CRL),
    /// `milan-vlek.crl` (the VLEK CRL).
    pub fn file_name(self, generation: Generation) -> String {
        match self {
            Self::Vcek => format!("{}.crl", generation.name()),
            Self::Vlek => format!("{}-vlek.crl", generation.name()),
        }
    }
}

impl fmt::Display for CrlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vcek => "VCEK",
            Self::Vlek => "VLEK",
        })
    }
}

fn format_err(reason: impl fmt::Display) -> SnpError {
    SnpError::CrlFormat {
        reason: reason.to_string(),
    }
}

/// At most [`MAX_QUOTED_NAME`] characters of `text`, escaped (`char::escape_debug`), and `…`
/// when it was longer: names come from CRL files and certificates. (The host's
/// `coffer_log::escaped_prefix` does the same, but the guest builds this module, and guest builds
/// never depend on host crates.)
fn quoted(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_NAME)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > MAX_QUOTED_NAME {
        out.push('…');
    }
    out
}

/// Hex of at most [`MAX_QUOTED_SERIAL`] bytes of a serial.
fn serial_hex(serial: &[u8]) -> String {
    let head = serial.get(..MAX_QUOTED_SERIAL).unwrap_or(serial);
    let mut hex = to_hex(head);
    if serial.len() > MAX_QUOTED_SERIAL {
        hex.push('…');
    }
    hex
}

/// The common name of `name`, if it has one.
fn common_name(name: &Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == OID_CN)
        .and_then(|atv| atv.to_string().strip_prefix("CN=").map(str::to_owned))
}

/// One parsed CRL, as AMD KDS serves it (DER) or as `openssl crl` writes it (PEM). Parsing
/// checks only the encoding; what makes it count for a chain is [`CrlSet`]'s business.
#[derive(Debug, Clone)]
pub struct AmdCrl {
    list: CertificateList,
}

impl AmdCrl {
    /// A DER-encoded CRL (what `/vcek/v1/{product}/crl` returns), with nothing after it.
    pub fn from_der(der: &[u8]) -> Result<Self, SnpError> {
        if der.len() as u64 > MAX_CRL_LEN {
            return Err(format_err(format!(
                "{} bytes, more than {MAX_CRL_LEN}",
                der.len()
            )));
        }
        let list = CertificateList::from_der(der).map_err(format_err)?;
        Ok(Self { list })
    }

    /// A PEM-encoded CRL (`-----BEGIN X509 CRL-----`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, SnpError> {
        if pem.len() as u64 > MAX_CRL_LEN {
            return Err(format_err(format!(
                "{} bytes, more than {MAX_CRL_LEN}",
                pem.len()
            )));
        }
        let (label, der) = x509_cert::der::pem::decode_vec(pem).map_err(format_err)?;
        if label != PEM_LABEL {
            return Err(format_err(format!(
                "PEM label {:?} is not {PEM_LABEL:?}",
                quoted(label)
            )));
        }
        Self::from_der(&der)
    }

    /// DER or PEM, told apart by the PEM armour.
    pub fn parse(bytes: &[u8]) -> Result<Self, SnpError> {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        if bytes
            .get(start..)
            .is_some_and(|b| b.starts_with(b"-----BEGIN"))
        {
            Self::from_pem(bytes)
        } else {
            Self::from_der(bytes)
        }
    }

    /// Reads and parses a CRL file (at most [`MAX_CRL_LEN`] bytes, DER or PEM).
    pub fn load(path: &Path) -> Result<Self, SnpError> {
        let read = |source| SnpError::CrlRead {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_CRL_LEN {
            return Err(SnpError::CrlTooLarge {
                path: path.to_path_buf(),
                len,
                limit: MAX_CRL_LEN,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        Self::parse(&bytes).map_err(|e| SnpError::CrlFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// The issuer's name (an ARK's), for logs.
    pub fn issuer(&self) -> String {
        self.list.tbs_cert_list.issuer.to_string()
    }

    /// `thisUpdate`.
    pub fn this_update(&self) -> SystemTime {
        self.list.tbs_cert_list.this_update.to_system_time()
    }

    /// `nextUpdate`, when the CRL has one.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.list
            .tbs_cert_list
            .next_update
            .map(|t| t.to_system_time())
    }

    /// The serial numbers it revokes (big-endian two's complement, as encoded).
    pub fn revoked_serials(&self) -> impl Iterator<Item = &[u8]> {
        self.list
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .map(|entry| entry.serial_number.as_bytes())
    }

    fn lists(&self, serial: &[u8]) -> bool {
        self.revoked_serials().any(|s| s == serial)
    }

    /// Steps 3–5 of the module docs against `ark` at `now`.
    fn verify(
        &self,
        generation: Generation,
        kind: CrlKind,
        ark: &Certificate,
        now: SystemTime,
    ) -> Result<(), SnpError> {
        let tbs = &self.list.tbs_cert_list;
        let tbs_der = tbs.to_der().map_err(format_err)?;
        verify_pss(
            &tbs_der,
            &self.list.signature_algorithm,
            &tbs.signature,
            &self.list.signature,
            ark,
        )
        .map_err(|failure| match failure {
            PssFailure::Format(reason) => format_err(reason),
            PssFailure::IssuerKey(reason) => SnpError::CertificateFormat {
                role: CertRole::Ark,
                reason,
            },
            PssFailure::Mismatch => SnpError::CrlSignature { generation, kind },
        })?;
        let this_update = self.this_update();
        let next_update = self
            .next_update()
            .ok_or_else(|| format_err("no nextUpdate: the CRL's freshness cannot be judged"))?;
        if now < this_update || now > next_update {
            return Err(SnpError::CrlValidity {
                generation,
                kind,
                now,
                this_update,
                next_update,
            });
        }
        self.check_extensions()
    }

    /// No delta CRL, no critical extension other than the CRL number and authority key id, no
    /// indirect entries, no critical entry extension other than the reason and invalidity date.
    fn check_extensions(&self) -> Result<(), SnpError> {
        let tbs = &self.list.tbs_cert_list;
        let unknown_critical = |ext: &Extension, known: &[ObjectIdentifier]| {
            ext.critical && !known.contains(&ext.extn_id)
        };
        for ext in tbs.crl_extensions.iter().flatten() {
            if ext.extn_id == OID_DELTA_CRL_INDICATOR {
                return Err(format_err("a delta CRL (only complete CRLs are supported)"));
            }
            if unknown_critical(ext, &[OID_CRL_NUMBER, OID_AUTHORITY_KEY_ID]) {
                return Err(format_err(format!(
                    "unsupported critical extension {}",
                    ext.extn_id
                )));
            }
        }
        for ext in tbs
            .revoked_certificates
            .iter()
            .flatten()
            .flat_map(|entry| entry.crl_entry_extensions.iter().flatten())
        {
            if ext.extn_id == OID_CERTIFICATE_ISSUER {
                return Err(format_err(
                    "an indirect CRL entry (certificateIssuer) is not supported",
                ));
            }
            if unknown_critical(ext, &[OID_REASON_CODE, OID_INVALIDITY_DATE]) {
                return Err(format_err(format!(
                    "unsupported critical entry extension {}",
                    ext.extn_id
                )));
            }
        }
        Ok(())
    }
}

/// The CRLs a verifier checks chains against, by product and kind, and whether a chain whose
/// product and kind has none is refused. `Default`: empty, not required (no revocation check).
#[derive(Debug, Clone, Default)]
pub struct CrlSet {
    crls: Vec<(Generation, CrlKind, AmdCrl)>,
    required: bool,
}

impl CrlSet {
    /// An empty set; `required` refuses evidence whose product and kind has no CRL in it.
    pub fn new(required: bool) -> Self {
        Self {
            crls: Vec::new(),
            required,
        }
    }

    /// Whether evidence without a CRL for its product and kind is refused.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Number of CRLs held.
    pub fn len(&self) -> usize {
        self.crls.len()
    }

    /// Whether no CRL is held.
    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The CRLs held, with the product and kind each was added as.
    pub fn iter(&self) -> impl Iterator<Item = (Generation, CrlKind, &AmdCrl)> {
        self.crls.iter().map(|(g, k, crl)| (*g, *k, crl))
    }

    /// Adds `crl` as `generation`'s `kind` CRL. Refused when its issuer is not named as that
    /// product's ARK (`CN=ARK-<Product>` or `CN=ARK-<Product>-…`); its signature and dates are
    /// checked against the chain's ARK with every evidence.
    pub fn insert(
        &mut self,
        generation: Generation,
        kind: CrlKind,
        crl: AmdCrl,
    ) -> Result<(), SnpError> {
        let ark = format!("ark-{}", generation.name());
        let names_product = common_name(&crl.list.tbs_cert_list.issuer).is_some_and(|cn| {
            let cn = cn.to_ascii_lowercase();
            cn == ark || cn.starts_with(&format!("{ark}-"))
        });
        if !names_product {
            return Err(SnpError::CrlProduct {
                generation,
                kind,
                issuer: quoted(&crl.issuer()),
            });
        }
        self.crls.push((generation, kind, crl));
        Ok(())
    }

    /// The CRLs under `dir`: for each product, `<product>.crl` (its VCEK CRL, from
    /// `/vcek/v1/<Product>/crl`) and `<product>-vlek.crl` (its VLEK CRL), lower-case product
    /// names (`milan`, `genoa`, `turin`), DER or PEM; absent files are skipped. A file that cannot
    /// be read or parsed, or that is another product's, is an error naming it.
    pub fn load_dir(dir: &Path, required: bool) -> Result<Self, SnpError> {
        let mut set = Self::new(required);
        for generation in Generation::ALL {
            for kind in CrlKind::ALL {
                let path: PathBuf = dir.join(kind.file_name(generation));
                if !path.exists() {
                    continue;
                }
                let crl = AmdCrl::load(&path)?;
                set.insert(generation, kind, crl)
                    .map_err(|e| SnpError::CrlFile {
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
            }
        }
        Ok(set)
    }

    /// Checks a verified chain (module docs, steps 1–6): `roots` and the `intermediate` (ASK or
    /// ASVK) that issued `leaf` (VCEK or VLEK).
    pub(super) fn check(
        &self,
        roots: &AmdRoots,
        intermediate: (&Certificate, CertRole),
        leaf: (&Certificate, CertRole),
        now: SystemTime,
    ) -> Result<(), SnpError> {
        let generation = roots.generation;
        let kind = CrlKind::of(intermediate.1)?;
        let mut configured = self
            .crls
            .iter()
            .filter(|(g, k, _)| *g == generation && *k == kind)
            .map(|(_, _, crl)| crl)
            .peekable();
        let Some(first) = configured.peek().copied() else {
            if self.required {
                return Err(SnpError::CrlMissing { generation, kind });
            }
            tracing::debug!(
                generation = generation.name(),
                %kind,
                "no CRL configured: revocation not checked"
            );
            return Ok(());
        };
        let ark = roots.ark();
        let crl = configured
            .find(|crl| crl.list.tbs_cert_list.issuer == ark.tbs_certificate.subject)
            .ok_or_else(|| SnpError::CrlIssuer {
                generation,
                kind,
                issuer: quoted(&first.issuer()),
                ark: quoted(&ark.tbs_certificate.subject.to_string()),
            })?;
        crl.verify(generation, kind, ark, now)?;
        for (cert, role) in [intermediate, leaf] {
            let serial = cert.tbs_certificate.serial_number.as_bytes();
            if crl.lists(serial) {
                return Err(SnpError::Revoked {
                    role,
                    serial: serial_hex(serial),
                    generation,
                    kind,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_format_error_in_either_encoding() {
        for bytes in [
            &b""[..],
            b"not a crl",
            b"\x30\x03\x02\x01\x01",
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
            b"  -----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        ] {
            let err = AmdCrl::parse(bytes).unwrap_err();
            assert!(matches!(err, SnpError::CrlFormat { .. }), "{err}");
        }
    }

    #[test]
    fn quoted_names_and_serials_are_bounded_and_escaped() {
        let long = "A\n".repeat(200);
        let q = quoted(&long);
        assert!(!q.contains('\n'));
        assert!(q.ends_with('…'));
        assert!(q.chars().count() <= 2 * MAX_QUOTED_NAME + 1);
        assert_eq!(serial_hex(&[0xab; 4]), "abababab");
        assert_eq!(
            serial_hex(&[1; 40]).len(),
            2 * MAX_QUOTED_SERIAL + '…'.len_utf8()
        );
    }

    #[test]
    fn file_names_follow_the_kds_products() {
        assert_eq!(CrlKind::Vcek.file_name(Generation::Milan), "milan.crl");
        assert_eq!(CrlKind::Vlek.file_name(Generation::Turin), "turin-vlek.crl");
    }
}
