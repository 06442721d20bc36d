//! Attested workload identity (issue #9): X.509 SPIFFE identities that `coffer-kbs` issues only to
//! attested guests.
//!
//! # Model
//!
//! The pod owner names the workload in the **measured initdata**: the `[data]` entry
//! [`INITDATA_KEY`] (`"workload-identity" = "ns/<namespace>/sa/<service-account>"`). After
//! attestation the guest generates a key inside the TEE, sends a PKCS#10 CSR to
//! `POST /kbs/v0/identity` (authenticated like resource requests: the attested session cookie or
//! the bearer token), and receives a short-lived leaf certificate whose only SAN is the URI
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. The broker takes the name from
//! the initdata the evidence bound (never from the CSR, whose subject and extensions are ignored:
//! only its key is certified).
//!
//! The certificate carries the attestation it was issued for in a non-critical extension
//! [`ATTESTATION_EXTENSION_OID`] ([`AttestationBinding`]): the SHA-256 of the JCS-canonical JSON of
//! the attestation token's claims (exactly the claims the broker signed into the token the guest
//! holds, so whoever holds the token can recompute it), the TEE and the EAR status.
//!
//! This module holds what both sides share: name validation, the extension's encoding and
//! reading a certificate's SPIFFE ID. The guest helper is [`guest`]; the issuing CA is
//! `kbs::server::identity` (feature `server`); rustls verifiers for relying parties are `mtls`
//! (feature `mtls`).

pub mod guest;
#[cfg(feature = "mtls")]
pub mod mtls;

use x509_cert::der::asn1::{ObjectIdentifier, OctetString, Utf8StringRef};
use x509_cert::der::{Decode, Encode, Reader, SliceReader};

/// The initdata `[data]` entry naming the workload: `ns/<namespace>/sa/<service-account>`.
pub const INITDATA_KEY: &str = "workload-identity";

/// The attestation-binding extension's OID, `1.3.6.1.3.2025.9.1`.
///
/// **Provisional.** Coffer has no registered arc (IANA Private Enterprise Number) yet; this one
/// sits under the Internet `experimental(3)` subtree (RFC 1155) and is not registered. Change it
/// here and in [`binding_oid`] (the only places) once Coffer registers an arc. (The X.660
/// `example` arc `2.999` would be collision-free but `const-oid` 0.9, hence `x509-cert`, cannot
/// decode a second arc above 39 under root 2: such certificates would not parse.)
pub const ATTESTATION_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 3, 2025, 9, 1];

/// Longest namespace (a Kubernetes DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest service account name (a Kubernetes DNS-1123 subdomain).
pub const MAX_SERVICE_ACCOUNT_LEN: usize = 253;
/// Longest trust domain (SPIFFE: 255 bytes).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Identity values that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The initdata entry is not `ns/<namespace>/sa/<service-account>`.
    #[error("{INITDATA_KEY} {value:?} is not ns/<namespace>/sa/<service-account>")]
    Shape {
        /// The value (not secret: it is part of the measured initdata).
        value: String,
    },
    /// The namespace is not a DNS-1123 label.
    #[error("namespace {0:?} is not a DNS-1123 label")]
    Namespace(String),
    /// The service account is not a DNS-1123 subdomain.
    #[error("service account {0:?} is not a DNS-1123 subdomain")]
    ServiceAccount(String),
    /// The trust domain is not a SPIFFE trust domain name.
    #[error("trust domain {0:?} is not lowercase letters, digits, '.', '-' and '_' (1..=255)")]
    TrustDomain(String),
    /// A certificate or extension does not decode.
    #[error("malformed certificate: {0}")]
    Der(String),
}

/// The workload a pod's initdata names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadName {
    namespace: String,
    service_account: String,
}

fn is_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

impl WorkloadName {
    /// Validates a namespace (DNS-1123 label) and service account (DNS-1123 subdomain).
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        if !is_label(namespace, MAX_NAMESPACE_LEN) {
            return Err(IdentityError::Namespace(namespace.to_owned()));
        }
        if service_account.len() > MAX_SERVICE_ACCOUNT_LEN
            || !service_account
                .split('.')
                .all(|l| is_label(l, MAX_NAMESPACE_LEN))
        {
            return Err(IdentityError::ServiceAccount(service_account.to_owned()));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses the initdata value `ns/<namespace>/sa/<service-account>` (surrounding whitespace
    /// allowed, nothing else).
    pub fn parse(value: &str) -> Result<Self, IdentityError> {
        let shape = || IdentityError::Shape {
            value: value.to_owned(),
        };
        let mut parts = value.trim().split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Self::new(ns, sa),
            _ => Err(shape()),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service-account>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// Checks a SPIFFE trust domain name: 1..=255 of lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    let ok = !trust_domain.is_empty()
        && trust_domain.len() <= MAX_TRUST_DOMAIN_LEN
        && trust_domain.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::TrustDomain(trust_domain.to_owned()))
    }
}

/// The attestation an identity certificate was issued for (the value of the extension
/// [`ATTESTATION_EXTENSION_OID`]):
///
/// ```text
/// CofferAttestation ::= SEQUENCE {
///     version       INTEGER (1),
///     claimsSha256  OCTET STRING (SIZE (32)),  -- SHA-256 of the JCS JSON of the token claims
///     tee           UTF8String,                -- "snp" | "tdx" | "sample"
///     earStatus     UTF8String                 -- "affirming" | "warning"
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationBinding {
    /// SHA-256 over `kbs::binding::canonical_json(claims)`.
    pub claims_sha256: [u8; 32],
    /// The TEE the guest attested with.
    pub tee: String,
    /// The appraisal's EAR status.
    pub ear_status: String,
}

const BINDING_VERSION: u8 = 1;

impl AttestationBinding {
    /// The DER encoding (the extension's `extnValue` contents).
    pub fn to_der(&self) -> Result<Vec<u8>, IdentityError> {
        let der = |e: x509_cert::der::Error| IdentityError::Der(e.to_string());
        let fields = [
            BINDING_VERSION.to_der().map_err(der)?,
            OctetString::new(self.claims_sha256.to_vec())
                .map_err(der)?
                .to_der()
                .map_err(der)?,
            Utf8StringRef::new(&self.tee)
                .map_err(der)?
                .to_der()
                .map_err(der)?,
            Utf8StringRef::new(&self.ear_status)
                .map_err(der)?
                .to_der()
                .map_err(der)?,
        ];
        let body: Vec<u8> = fields.concat();
        let header = x509_cert::der::Header::new(
            x509_cert::der::Tag::Sequence,
            x509_cert::der::Length::try_from(body.len()).map_err(der)?,
        )
        .map_err(der)?;
        let mut out = header.to_der().map_err(der)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes the extension value; refuses another version, trailing bytes or a wrong length.
    pub fn from_der(bytes: &[u8]) -> Result<Self, IdentityError> {
        let der = |e: x509_cert::der::Error| IdentityError::Der(e.to_string());
        let mut reader = SliceReader::new(bytes).map_err(der)?;
        let binding = reader
            .sequence(|seq| {
                let version = u8::decode(seq)?;
                let digest = OctetString::decode(seq)?;
                let tee = Utf8StringRef::decode(seq)?;
                let status = Utf8StringRef::decode(seq)?;
                Ok((version, digest, tee.to_string(), status.to_string()))
            })
            .map_err(der)?;
        reader.finish(()).map_err(der)?;
        let (version, digest, tee, ear_status) = binding;
        if version != BINDING_VERSION {
            return Err(IdentityError::Der(format!(
                "attestation binding version {version}"
            )));
        }
        let claims_sha256 = <[u8; 32]>::try_from(digest.as_bytes())
            .map_err(|_| IdentityError::Der("claims digest is not 32 bytes".into()))?;
        Ok(Self {
            claims_sha256,
            tee,
            ear_status,
        })
    }
}

/// What a relying party reads from an identity certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The SAN URIs (a broker-issued certificate has exactly one, the SPIFFE ID).
    pub uris: Vec<String>,
    /// The attestation binding, when the extension is present.
    pub attestation: Option<AttestationBinding>,
    /// `notBefore`, Unix seconds.
    pub not_before: u64,
    /// `notAfter`, Unix seconds.
    pub not_after: u64,
    /// The DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

impl CertificateIdentity {
    /// The SPIFFE ID: the one `spiffe://` SAN URI, if the certificate has exactly one.
    pub fn spiffe_id(&self) -> Option<&str> {
        let mut spiffe = self.uris.iter().filter(|u| u.starts_with("spiffe://"));
        match (spiffe.next(), spiffe.next()) {
            (Some(id), None) => Some(id),
            _ => None,
        }
    }
}

/// Reads SAN URIs, the attestation binding, validity and key of a DER certificate. It does not
/// verify anything: use it on certificates a TLS stack has already verified.
pub fn inspect_certificate(der: &[u8]) -> Result<CertificateIdentity, IdentityError> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let err = |e: x509_cert::der::Error| IdentityError::Der(e.to_string());
    let cert = x509_cert::Certificate::from_der(der).map_err(err)?;
    let tbs = &cert.tbs_certificate;
    let binding_oid = binding_oid();
    let mut uris = Vec::new();
    let mut attestation = None;
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(err)?;
            for name in san.0 {
                if let GeneralName::UniformResourceIdentifier(uri) = name {
                    uris.push(uri.to_string());
                }
            }
        } else if ext.extn_id == binding_oid {
            attestation = Some(AttestationBinding::from_der(ext.extn_value.as_bytes())?);
        }
    }
    Ok(CertificateIdentity {
        uris,
        attestation,
        not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
        not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
        spki_der: tbs.subject_public_key_info.to_der().map_err(err)?,
    })
}

/// [`ATTESTATION_EXTENSION_OID`] as an [`ObjectIdentifier`].
pub fn binding_oid() -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap("1.3.6.1.3.2025.9.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_the_initdata_parsers() {
        assert_eq!(INITDATA_KEY, coffer_initdata::Entry::WorkloadIdentity.key());
    }

    #[test]
    fn workload_names_parse_and_refuse() {
        let w = WorkloadName::parse(" ns/prod/sa/frontend.v2 ").unwrap();
        assert_eq!(
            w.spiffe_id("coffer.test"),
            "spiffe://coffer.test/ns/prod/sa/frontend.v2"
        );
        for bad in [
            "",
            "ns/prod",
            "ns/prod/sa/",
            "ns//sa/x",
            "sa/x/ns/y",
            "ns/prod/sa/x/extra",
            "ns/Prod/sa/x",
            "ns/prod/sa/x y",
            "ns/-a/sa/x",
            "ns/a/sa/x..y",
            "ns/../sa/x",
            "ns/a%2f/sa/x",
        ] {
            assert!(WorkloadName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(WorkloadName::new(&"a".repeat(64), "x").is_err());
        assert!(WorkloadName::new(&"a".repeat(63), "x").is_ok());
    }

    #[test]
    fn trust_domains() {
        validate_trust_domain("coffer.test").unwrap();
        for bad in [
            "",
            "Coffer.test",
            "a/b",
            "a:1",
            "spiffe://x",
            &"a".repeat(256),
        ] {
            assert!(validate_trust_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn binding_round_trips_and_refuses_garbage() {
        let b = AttestationBinding {
            claims_sha256: [7; 32],
            tee: "snp".into(),
            ear_status: "affirming".into(),
        };
        let der = b.to_der().unwrap();
        assert_eq!(AttestationBinding::from_der(&der).unwrap(), b);
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(AttestationBinding::from_der(&trailing).is_err());
        assert!(AttestationBinding::from_der(&der[..der.len() - 1]).is_err());
        assert_eq!(
            binding_oid().arcs().map(u64::from).collect::<Vec<_>>(),
            ATTESTATION_EXTENSION_OID
        );
    }
}
