//! Initdata: the pod owner's measured configuration for one sandbox (policy, broker, image rules).
//!
//! This crate is the one parser of it: the guest agent, the runtime, the shim, the CLI and the key
//! broker all read initdata through [`Initdata`] (and the digest through [`Digest`]), so every
//! reader refuses the same documents. It depends on no policy engine: host tools that only carry
//! initdata do not link one.
//!
//! # Document
//!
//! A TOML document, compatible with the Confidential Containers initdata format:
//!
//! ```toml
//! version = "0.1.0"
//! algorithm = "sha384"          # sha256 | sha384 | sha512
//! [data]
//! "policy.rego" = '''package coffer.policy ...'''
//! ```
//!
//! Every `[data]` value is a string; the known entries are listed in [`Entry`]. Unknown top-level
//! keys, unknown entries, duplicate keys, another version or algorithm are refused: the document is
//! measured, so a typo must not silently drop a security setting.
//!
//! # Digest
//!
//! The digest is the document's `algorithm` over the **raw bytes** of the TOML document exactly as
//! delivered (never a re-serialization). Hardware binds it (catalogue INV-4, [`Binding`]):
//! SEV-SNP's 32-byte `HOSTDATA` holds a sha256 digest, TDX's 48-byte `MRCONFIGID` a sha384 digest.
//! The algorithm must fit the field exactly; nothing is padded or truncated.
//!
//! # Transport
//!
//! * Kata's annotation `io.katacontainers.config.hypervisor.cc_init_data` carries
//!   `base64(gzip(document))` ([`Initdata::from_annotation`]).
//! * The host hands the guest a read-only block device holding a [`device`] image.
//!
//! Decompression is bounded by [`MAX_INITDATA_BYTES`] (gzip bombs are refused).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::str::FromStr;

use base64::Engine as _;
use serde::Deserialize;
use sha2::Digest as _;
use thiserror::Error;

/// The only initdata format version understood.
pub const INITDATA_VERSION: &str = "0.1.0";

/// Largest initdata document, after any decompression (1 MiB).
pub const MAX_INITDATA_BYTES: usize = 1 << 20;

/// Kata's pod annotation carrying `base64(gzip(initdata))`; Coffer accepts the same name.
pub const KATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

/// Initdata failures. None of them is recoverable by falling back to a default.
#[derive(Debug, Error)]
pub enum InitdataError {
    /// Bigger than [`MAX_INITDATA_BYTES`] (possibly after decompression).
    #[error("initdata is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not UTF-8.
    #[error("initdata is not UTF-8")]
    NotUtf8,
    /// Not valid TOML, or a field has the wrong type, a key is duplicated or unknown.
    #[error("initdata is not a valid document: {0}")]
    Toml(String),
    /// `version` is not [`INITDATA_VERSION`].
    #[error("initdata version {0:?} is not supported (expected \"0.1.0\")")]
    Version(String),
    /// `algorithm` is not one Coffer accepts.
    #[error("initdata algorithm {0:?} is not supported (expected sha256, sha384 or sha512)")]
    Algorithm(String),
    /// A `[data]` entry has a value it cannot take.
    #[error("initdata entry {name}: {reason}")]
    InvalidEntry {
        /// The entry.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A `[data]` entry Coffer does not know.
    #[error("unknown initdata entry {name:?} (known: {known})")]
    UnknownEntry {
        /// The entry.
        name: String,
        /// The known names.
        known: String,
    },
    /// The annotation is not base64.
    #[error("initdata annotation is not base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// Gzip data is corrupt or truncated.
    #[error("initdata gzip stream is corrupt: {0}")]
    Gzip(#[source] std::io::Error),
    /// The device image is malformed.
    #[error("initdata device: {0}")]
    Device(String),
    /// Reading the device failed (INV-1: an I/O error is a refusal, never "no initdata").
    #[error("reading initdata: {0}")]
    Io(#[source] std::io::Error),
    /// The digest does not match the value the hardware (or the launch) measured.
    #[error("initdata digest {actual} does not match the measured {expected}")]
    DigestMismatch {
        /// The measured value (hex).
        expected: String,
        /// The document's digest.
        actual: String,
    },
    /// The document's algorithm cannot fill the hardware field exactly.
    #[error(
        "initdata algorithm {algorithm} yields {digest_len} bytes but {field} holds {field_len}: use {required}"
    )]
    AlgorithmForField {
        /// The document's algorithm.
        algorithm: Algorithm,
        /// Its digest length.
        digest_len: usize,
        /// The hardware field.
        field: &'static str,
        /// The field's length.
        field_len: usize,
        /// The algorithm the field needs.
        required: Algorithm,
    },
    /// A digest string is malformed.
    #[error("invalid digest {0:?} (expected sha256:HEX, sha384:HEX or sha512:HEX)")]
    DigestSyntax(String),
}

/// A digest algorithm for initdata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256 (32 bytes; SEV-SNP HOSTDATA).
    Sha256,
    /// SHA-384 (48 bytes; TDX MRCONFIGID).
    Sha384,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl Algorithm {
    /// The name used in documents and digest strings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let value = match self {
            Self::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(bytes).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(bytes).to_vec(),
        };
        Digest {
            algorithm: self,
            value,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = InitdataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Self::Sha256),
            "sha384" => Ok(Self::Sha384),
            "sha512" => Ok(Self::Sha512),
            other => Err(InitdataError::Algorithm(other.to_owned())),
        }
    }
}

/// An initdata digest: algorithm and value. Displays (and parses) as `sha384:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    value: Vec<u8>,
}

impl Digest {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The raw digest bytes.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, hex::encode(&self.value))
    }
}

impl FromStr for Digest {
    type Err = InitdataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InitdataError::DigestSyntax(s.to_owned());
        let (algorithm, hex_value) = s.split_once(':').ok_or_else(bad)?;
        let algorithm: Algorithm = algorithm.parse().map_err(|_| bad())?;
        let value = hex::decode(hex_value).map_err(|_| bad())?;
        if value.len() != algorithm.digest_len() {
            return Err(bad());
        }
        Ok(Self { algorithm, value })
    }
}

/// The `[data]` entries Coffer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    /// `policy.rego`: the agent policy (Rego, package `coffer.policy`).
    Policy,
    /// `policy-data.json`: the policy's `data` document (JSON object).
    PolicyData,
    /// `kbs-url`: the key broker's URL.
    KbsUrl,
    /// `kbs-ca.pem`: the CA certificate(s) the broker's TLS certificate must chain to.
    KbsCa,
    /// `image-policy.json`: the image signature policy (containers-policy.json).
    ImagePolicy,
    /// `registries.toml`: registry configuration (mirrors, insecure registries, CAs).
    Registries,
    /// `kbs-evidence`: what the guest attests with: `tee` (default: the hardware TEE) or
    /// `sample` (development only, and only in a guest with no TEE: a TEE guest given `sample`
    /// refuses to start). Measured like every entry, so the broker sees the choice.
    KbsEvidence,
    /// `workload-identity`: `ns/<namespace>/sa/<service-account>`, the workload whose SPIFFE
    /// identity (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`) the key broker
    /// issues to this attested guest. The broker reads it from the initdata the evidence bound and
    /// validates it (namespace a DNS-1123 label, service account a DNS-1123 subdomain:
    /// `coffer_attestation::identity::WorkloadName::parse`); absent, the pod gets no identity.
    WorkloadIdentity,
}

/// Values of [`Entry::KbsEvidence`].
pub const KBS_EVIDENCE_VALUES: [&str; 2] = ["tee", "sample"];

impl Entry {
    /// Every entry, in documentation order.
    pub const ALL: [Self; 8] = [
        Self::Policy,
        Self::PolicyData,
        Self::KbsUrl,
        Self::KbsCa,
        Self::ImagePolicy,
        Self::Registries,
        Self::KbsEvidence,
        Self::WorkloadIdentity,
    ];

    /// The key in `[data]`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Policy => "policy.rego",
            Self::PolicyData => "policy-data.json",
            Self::KbsUrl => "kbs-url",
            Self::KbsCa => "kbs-ca.pem",
            Self::ImagePolicy => "image-policy.json",
            Self::Registries => "registries.toml",
            Self::KbsEvidence => "kbs-evidence",
            Self::WorkloadIdentity => "workload-identity",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.key() == key)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// A parsed, validated initdata document together with its raw bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Initdata {
    raw: Vec<u8>,
    algorithm: Algorithm,
    entries: BTreeMap<Entry, String>,
}

impl fmt::Debug for Initdata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Entries may be large (policies); show which are present, not their text.
        f.debug_struct("Initdata")
            .field("algorithm", &self.algorithm)
            .field("bytes", &self.raw.len())
            .field(
                "entries",
                &self.entries.keys().map(|e| e.key()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Initdata {
    /// Parses and validates the raw document bytes.
    pub fn parse(raw: Vec<u8>) -> Result<Self, InitdataError> {
        if raw.len() > MAX_INITDATA_BYTES {
            return Err(InitdataError::TooLarge {
                limit: MAX_INITDATA_BYTES,
            });
        }
        let text = std::str::from_utf8(&raw).map_err(|_| InitdataError::NotUtf8)?;
        let document: Document =
            toml::from_str(text).map_err(|e| InitdataError::Toml(e.message().to_owned()))?;
        if document.version != INITDATA_VERSION {
            return Err(InitdataError::Version(document.version));
        }
        let algorithm: Algorithm = document.algorithm.parse()?;
        let mut entries = BTreeMap::new();
        for (key, value) in document.data {
            let entry = Entry::from_key(&key).ok_or_else(|| InitdataError::UnknownEntry {
                name: key.clone(),
                known: Entry::ALL.map(Entry::key).join(", "),
            })?;
            if entry == Entry::KbsEvidence && !KBS_EVIDENCE_VALUES.contains(&value.trim()) {
                return Err(InitdataError::InvalidEntry {
                    name: entry.key(),
                    reason: format!(
                        "{:?} is not one of {}",
                        value,
                        KBS_EVIDENCE_VALUES.join(", ")
                    ),
                });
            }
            entries.insert(entry, value);
        }
        Ok(Self {
            raw,
            algorithm,
            entries,
        })
    }

    /// Builds a document from entries (for `coffer policy gen` and tests): the TOML text is
    /// rendered deterministically, then parsed back so the result is exactly what a guest sees.
    pub fn build(
        algorithm: Algorithm,
        entries: &BTreeMap<Entry, String>,
    ) -> Result<Self, InitdataError> {
        let data: toml::Table = entries
            .iter()
            .map(|(e, v)| (e.key().to_owned(), toml::Value::String(v.clone())))
            .collect();
        let mut root = toml::Table::new();
        root.insert("version".into(), INITDATA_VERSION.into());
        root.insert("algorithm".into(), algorithm.name().into());
        root.insert("data".into(), toml::Value::Table(data));
        let text = toml::to_string_pretty(&root).map_err(|e| InitdataError::Toml(e.to_string()))?;
        Self::parse(text.into_bytes())
    }

    /// Decodes Kata's annotation form, `base64(gzip(document))`. Plain base64 of an uncompressed
    /// document is accepted too.
    pub fn from_annotation(value: &str) -> Result<Self, InitdataError> {
        // base64 expands by 4/3; anything longer cannot hold an acceptable document even uncompressed.
        if value.len() > MAX_INITDATA_BYTES / 3 * 4 + 4 {
            return Err(InitdataError::TooLarge {
                limit: MAX_INITDATA_BYTES,
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(InitdataError::Base64)?;
        Self::parse(maybe_gunzip(bytes)?)
    }

    /// Kata's annotation form of this document, `base64(gzip(raw))`.
    pub fn to_annotation(&self) -> String {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing into a Vec cannot fail.
        let compressed = std::io::Write::write_all(&mut encoder, &self.raw)
            .and_then(|()| encoder.finish())
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(compressed)
    }

    /// The raw document bytes (what the digest covers).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The declared algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The digest of the raw document under its declared algorithm.
    pub fn digest(&self) -> Digest {
        self.algorithm.digest(&self.raw)
    }

    /// The value of `entry`, if present.
    pub fn get(&self, entry: Entry) -> Option<&str> {
        self.entries.get(&entry).map(String::as_str)
    }

    /// The entries present.
    pub fn entries(&self) -> &BTreeMap<Entry, String> {
        &self.entries
    }

    /// Checks the document against a measured value (catalogue INI-02). `binding` says which
    /// field it came from and therefore which algorithm must have produced it.
    pub fn verify(&self, binding: &Binding) -> Result<(), InitdataError> {
        let (field, required, measured) = match binding {
            Binding::SnpHostData(v) => ("SEV-SNP HOSTDATA", Algorithm::Sha256, &v[..]),
            Binding::TdxMrConfigId(v) => ("TDX MRCONFIGID", Algorithm::Sha384, &v[..]),
            Binding::Launch(digest) => ("the launch digest", digest.algorithm, digest.value()),
        };
        if self.algorithm != required {
            return Err(InitdataError::AlgorithmForField {
                algorithm: self.algorithm,
                digest_len: self.algorithm.digest_len(),
                field,
                field_len: required.digest_len(),
                required,
            });
        }
        let actual = self.digest();
        // Exact equality of the whole field: no padding, no truncation.
        if actual.value() != measured {
            return Err(InitdataError::DigestMismatch {
                expected: format!("{required}:{}", hex::encode(measured)),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

/// A measured value the initdata digest must equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// SEV-SNP `HOSTDATA` from a verified attestation report (sha256).
    SnpHostData([u8; 32]),
    /// TDX `MRCONFIGID` from a TD report (sha384).
    TdxMrConfigId([u8; 48]),
    /// A digest fixed at launch outside the hardware (the guest's kernel command line,
    /// `coffer.initdata=<alg>:<hex>`); in a TEE the command line is itself measured.
    Launch(Digest),
}

/// Gunzips `bytes` if they start with the gzip magic, refusing more than
/// [`MAX_INITDATA_BYTES`] of output.
fn maybe_gunzip(bytes: Vec<u8>) -> Result<Vec<u8>, InitdataError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    let limit = u64::try_from(MAX_INITDATA_BYTES).unwrap_or(u64::MAX) + 1;
    flate2::read::GzDecoder::new(&bytes[..])
        .take(limit)
        .read_to_end(&mut out)
        .map_err(InitdataError::Gzip)?;
    if out.len() > MAX_INITDATA_BYTES {
        return Err(InitdataError::TooLarge {
            limit: MAX_INITDATA_BYTES,
        });
    }
    Ok(out)
}

/// The block-device image the host attaches read-only and the guest reads before serving.
///
/// Layout: [`device::MAGIC`] (16 bytes), the payload length (u64 little-endian), the payload (the
/// document, raw or gzip-compressed), zero padding to a multiple of 512 bytes. The header is not
/// trusted: the digest over the decompressed document is what binds it.
pub mod device {
    use super::{InitdataError, MAX_INITDATA_BYTES, maybe_gunzip};
    use std::io::Read;

    /// Magic at offset 0, including the image format version (1).
    pub const MAGIC: [u8; 16] = *b"coffer-initdata1";
    /// The virtio-blk serial the host gives the device, so the guest finds exactly this disk.
    pub const SERIAL: &str = "coffer-initdata";
    /// Largest payload accepted.
    pub const MAX_PAYLOAD: u64 = MAX_INITDATA_BYTES as u64;
    const HEADER: usize = 24;
    const SECTOR: usize = 512;

    /// The device image for a raw document.
    pub fn encode(document: &[u8]) -> Vec<u8> {
        let mut image = Vec::with_capacity(HEADER + document.len() + SECTOR);
        image.extend_from_slice(&MAGIC);
        image.extend_from_slice(&(document.len() as u64).to_le_bytes());
        image.extend_from_slice(document);
        let padded = image.len().div_ceil(SECTOR) * SECTOR;
        image.resize(padded, 0);
        image
    }

    /// Whether `head` (the first bytes of a device) starts with the magic.
    pub fn has_magic(head: &[u8]) -> bool {
        head.starts_with(&MAGIC)
    }

    /// Reads a device image and returns the raw (decompressed) document.
    pub fn decode(mut device: impl Read) -> Result<Vec<u8>, InitdataError> {
        let mut header = [0u8; HEADER];
        read_exact(&mut device, &mut header, "header")?;
        if !has_magic(&header) {
            return Err(InitdataError::Device("no initdata magic".into()));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[16..]);
        let len = u64::from_le_bytes(len);
        if len > MAX_PAYLOAD {
            return Err(InitdataError::Device(format!(
                "payload length {len} exceeds {MAX_PAYLOAD} bytes"
            )));
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        read_exact(&mut device, &mut payload, "payload")?;
        maybe_gunzip(payload)
    }

    fn read_exact(device: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), InitdataError> {
        device.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                InitdataError::Device(format!("truncated {what}"))
            } else {
                InitdataError::Io(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"kbs-url\" = \"https://kbs.example:8080\"\n";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        e.finish().unwrap()
    }

    /// INI-01: an entry value outside its domain is refused like an unknown entry.
    #[test]
    fn kbs_evidence_takes_only_known_values() {
        let doc = |v: &str| {
            format!(
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"kbs-evidence\" = \"{v}\"\n"
            )
        };
        for ok in ["tee", "sample"] {
            let init = Initdata::parse(doc(ok).into_bytes()).unwrap();
            assert_eq!(init.get(Entry::KbsEvidence), Some(ok));
        }
        assert!(matches!(
            Initdata::parse(doc("none").into_bytes()),
            Err(InitdataError::InvalidEntry {
                name: "kbs-evidence",
                ..
            })
        ));
    }

    #[test]
    fn workload_identity_entry_is_known() {
        let doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"workload-identity\" = \"ns/prod/sa/frontend\"\n";
        let init = Initdata::parse(doc.as_bytes().to_vec()).unwrap();
        assert_eq!(
            init.get(Entry::WorkloadIdentity),
            Some("ns/prod/sa/frontend")
        );
    }

    #[test]
    fn parses_and_digests_the_raw_bytes() {
        let init = Initdata::parse(DOC.as_bytes().to_vec()).unwrap();
        assert_eq!(init.algorithm(), Algorithm::Sha384);
        assert_eq!(init.get(Entry::KbsUrl), Some("https://kbs.example:8080"));
        assert_eq!(init.digest(), Algorithm::Sha384.digest(DOC.as_bytes()));
        // A semantically equal document with other bytes has another digest.
        let spaced = DOC.replace("version = ", "version  = ");
        let other = Initdata::parse(spaced.into_bytes()).unwrap();
        assert_ne!(other.digest(), init.digest());
    }

    /// Known-answer digests for the three algorithms (computed independently with `sha*sum`).
    #[test]
    fn digest_vectors() {
        let vectors = [
            (
                Algorithm::Sha256,
                "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                Algorithm::Sha384,
                "sha384:cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
            ),
            (
                Algorithm::Sha512,
                "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
        ];
        for (algorithm, expected) in vectors {
            let digest = algorithm.digest(b"abc");
            assert_eq!(digest.to_string(), expected);
            assert_eq!(expected.parse::<Digest>().unwrap(), digest);
        }
        assert!("sha256:abcd".parse::<Digest>().is_err());
        assert!(
            "md5:900150983cd24fb0d6963f7d28e17f72"
                .parse::<Digest>()
                .is_err()
        );
    }

    /// INI-01: each malformed document is refused with its own error.
    #[test]
    fn malformed_documents_are_refused() {
        type Check = fn(&InitdataError) -> bool;
        let cases: [(&str, Check); 7] = [
            (
                "version = \"0.2.0\"\nalgorithm = \"sha256\"\n",
                |e| matches!(e, InitdataError::Version(v) if v == "0.2.0"),
            ),
            (
                "version = \"0.1.0\"\nalgorithm = \"md5\"\n",
                |e| matches!(e, InitdataError::Algorithm(a) if a == "md5"),
            ),
            (
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = \"x\"\n",
                |e| matches!(e, InitdataError::UnknownEntry { name, .. } if name == "aa.toml"),
            ),
            (
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\nextra = 1\n",
                |e| matches!(e, InitdataError::Toml(_)),
            ),
            (
                "version = \"0.1.0\"\nversion = \"0.1.0\"\nalgorithm = \"sha256\"\n",
                |e| matches!(e, InitdataError::Toml(_)),
            ),
            (
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"kbs-url\" = 3\n",
                |e| matches!(e, InitdataError::Toml(_)),
            ),
            ("version = [", |e| matches!(e, InitdataError::Toml(_))),
        ];
        for (doc, check) in cases {
            let err = Initdata::parse(doc.as_bytes().to_vec()).unwrap_err();
            assert!(check(&err), "{doc:?}: {err}");
        }
        assert!(matches!(
            Initdata::parse(vec![0xff, 0xfe]).unwrap_err(),
            InitdataError::NotUtf8
        ));
        assert!(matches!(
            Initdata::parse(vec![b' '; MAX_INITDATA_BYTES + 1]).unwrap_err(),
            InitdataError::TooLarge { .. }
        ));
    }

    #[test]
    fn annotation_round_trip_and_kata_form() {
        let init = Initdata::parse(DOC.as_bytes().to_vec()).unwrap();
        let back = Initdata::from_annotation(&init.to_annotation()).unwrap();
        assert_eq!(back, init);
        assert_eq!(back.digest(), init.digest());
        // Uncompressed base64 is accepted too.
        let plain = base64::engine::general_purpose::STANDARD.encode(DOC);
        assert_eq!(Initdata::from_annotation(&plain).unwrap(), init);
        assert!(matches!(
            Initdata::from_annotation("not base64!").unwrap_err(),
            InitdataError::Base64(_)
        ));
    }

    /// INI-01: a gzip bomb (small compressed, huge expanded) is refused without expanding it all.
    #[test]
    fn gzip_bomb_is_refused() {
        let bomb = gzip(&vec![b'a'; 16 << 20]);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let annotation = base64::engine::general_purpose::STANDARD.encode(&bomb);
        assert!(matches!(
            Initdata::from_annotation(&annotation).unwrap_err(),
            InitdataError::TooLarge { .. }
        ));
        let mut image = device::encode(&bomb);
        assert!(matches!(
            device::decode(&image[..]).unwrap_err(),
            InitdataError::TooLarge { .. }
        ));
        // A truncated gzip stream is corrupt, not "empty".
        let truncated = gzip(DOC.as_bytes());
        image = device::encode(&truncated[..truncated.len() - 4]);
        assert!(matches!(
            device::decode(&image[..]).unwrap_err(),
            InitdataError::Gzip(_)
        ));
    }

    #[test]
    fn device_image_round_trip_and_refusals() {
        let image = device::encode(DOC.as_bytes());
        assert_eq!(image.len() % 512, 0);
        assert_eq!(device::decode(&image[..]).unwrap(), DOC.as_bytes());
        let gz = device::encode(&gzip(DOC.as_bytes()));
        assert_eq!(device::decode(&gz[..]).unwrap(), DOC.as_bytes());

        // INI-01: truncated payload, huge length field, missing magic.
        let cut = &image[..30];
        assert!(
            matches!(device::decode(cut).unwrap_err(), InitdataError::Device(m) if m.contains("truncated payload"))
        );
        let mut huge = image.clone();
        huge[16..24].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(
            matches!(device::decode(&huge[..]).unwrap_err(), InitdataError::Device(m) if m.contains("exceeds"))
        );
        let mut nomagic = image.clone();
        nomagic[0] ^= 1;
        assert!(device::decode(&nomagic[..]).is_err());
        assert!(device::decode(&[][..]).is_err());
    }

    /// INI-02 / INV-4: exact binding, fixed algorithm per field, no padding or truncation.
    #[test]
    fn binding_is_exact() {
        let doc256 = DOC.replace("sha384", "sha256");
        let init256 = Initdata::parse(doc256.into_bytes()).unwrap();
        let init384 = Initdata::parse(DOC.as_bytes().to_vec()).unwrap();
        let mut host_data = [0u8; 32];
        host_data.copy_from_slice(init256.digest().value());
        init256.verify(&Binding::SnpHostData(host_data)).unwrap();
        let mut flipped = host_data;
        flipped[31] ^= 1;
        assert!(matches!(
            init256.verify(&Binding::SnpHostData(flipped)).unwrap_err(),
            InitdataError::DigestMismatch { .. }
        ));
        // A sha384 document cannot bind to the 32-byte HOSTDATA by truncation.
        let mut truncated = [0u8; 32];
        truncated.copy_from_slice(&init384.digest().value()[..32]);
        assert!(matches!(
            init384
                .verify(&Binding::SnpHostData(truncated))
                .unwrap_err(),
            InitdataError::AlgorithmForField { .. }
        ));
        let mut mrconfigid = [0u8; 48];
        mrconfigid.copy_from_slice(init384.digest().value());
        init384.verify(&Binding::TdxMrConfigId(mrconfigid)).unwrap();
        // A sha256 digest zero-padded into MRCONFIGID is refused.
        let mut padded = [0u8; 48];
        padded[..32].copy_from_slice(init256.digest().value());
        assert!(init256.verify(&Binding::TdxMrConfigId(padded)).is_err());
        init384.verify(&Binding::Launch(init384.digest())).unwrap();
        assert!(init384.verify(&Binding::Launch(init256.digest())).is_err());
    }

    #[test]
    fn build_renders_a_parsable_document() {
        let mut entries = BTreeMap::new();
        entries.insert(
            Entry::Policy,
            "package coffer.policy\n\ndecision := {\"allow\": true}\n".to_owned(),
        );
        entries.insert(Entry::KbsUrl, "https://kbs:8080".to_owned());
        let init = Initdata::build(Algorithm::Sha256, &entries).unwrap();
        assert_eq!(init.entries(), &entries);
        let again = Initdata::build(Algorithm::Sha256, &entries).unwrap();
        assert_eq!(again.raw(), init.raw(), "rendering is deterministic");
        // Multi-line entries stay readable (not one escaped line).
        let text = std::str::from_utf8(init.raw()).unwrap();
        assert!(text.contains("\npackage coffer.policy\n"), "{text}");
    }
}
