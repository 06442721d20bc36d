//! Typed, bounds-checked parsing of the raw SEV-SNP attestation report (SNP ABI spec, table
//! "ATTESTATION_REPORT Structure"). Parsing checks shape only; [`super::SnpVerifier`] decides trust.
//!
//! One 0x4A0-byte layout serves every version; later versions name bytes that were reserved:
//! - **v2**: the base layout (0x188..0x1A0 and 0x1F8..0x2A0 reserved).
//! - **v3** (ABI 1.56): `CPUID_FAM_ID`, `CPUID_MOD_ID`, `CPUID_STEP` at 0x188..0x18B; the
//!   generation they name fixes the TCB layout (Turin's differs).
//! - **v4**: the v3 layout (AMD has published no field change).
//! - **v5** (ABI 1.58): `LAUNCH_MIT_VECTOR` at 0x1F8 and `CURRENT_MIT_VECTOR` at 0x200.
//!
//! The signature stays at 0x2A0 over bytes 0x000..0x2A0 in every version. Reserved bytes of a
//! version are not read into fields.

use super::error::SnpError;

/// Size of an attestation report in bytes (0x4A0).
pub const REPORT_LEN: usize = 0x4A0;
/// The signature covers bytes `0x000..SIGNED_LEN`.
pub const SIGNED_LEN: usize = 0x2A0;
/// Report versions this parser understands.
pub const SUPPORTED_VERSIONS: core::ops::RangeInclusive<u32> = 2..=5;
/// First version carrying the CPUID family/model/stepping.
pub const VERSION_CPUID: u32 = 3;
/// First version carrying the launch and current mitigation vectors.
pub const VERSION_MIT_VECTORS: u32 = 5;
/// `SIGNATURE_ALGO` value for ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Processor generation, which fixes the TCB layout and the AMD root certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// EPYC 7003 (family 19h, models 00h–0Fh).
    Milan,
    /// EPYC 9004 (family 19h, models 10h–1Fh and A0h–AFh).
    Genoa,
    /// EPYC 9005 (family 1Ah, models 00h–11h).
    Turin,
}

impl Generation {
    /// All generations with embedded roots.
    pub const ALL: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

    /// Identifies the generation from the CPUID family/model carried in v3+ reports.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Self::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Self::Genoa),
            (0x1A, 0x00..=0x11) => Some(Self::Turin),
            _ => None,
        }
    }

    /// Lower-case name as used by AMD KDS (`milan`, `genoa`, `turin`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Milan => "milan",
            Self::Genoa => "genoa",
            Self::Turin => "turin",
        }
    }
}

/// The CPUID identification a v3+ report carries (`CPUID_FAM_ID`, `CPUID_MOD_ID`, `CPUID_STEP`):
/// the combined (extended + base) family and model, and the stepping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpuid {
    /// Family (e.g. 0x19 for Milan/Genoa, 0x1A for Turin).
    pub family: u8,
    /// Model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}

/// A TCB version (security patch levels), decoded per generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcbVersion {
    /// FMC SPL (Turin and later only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
    /// The raw 8 bytes as they appear in the report.
    pub raw: [u8; 8],
}

impl TcbVersion {
    /// Decodes the 8 raw bytes. Milan/Genoa: `[bl, tee, 0, 0, 0, 0, snp, ucode]`;
    /// Turin: `[fmc, bl, tee, snp, 0, 0, 0, ucode]`.
    pub fn decode(raw: [u8; 8], turin_layout: bool) -> Self {
        if turin_layout {
            Self {
                fmc: Some(raw[0]),
                bootloader: raw[1],
                tee: raw[2],
                snp: raw[3],
                microcode: raw[7],
                raw,
            }
        } else {
            Self {
                fmc: None,
                bootloader: raw[0],
                tee: raw[1],
                snp: raw[6],
                microcode: raw[7],
                raw,
            }
        }
    }

    /// Named components, for component-wise comparisons and error messages.
    pub fn components(&self) -> [(&'static str, Option<u8>); 5] {
        [
            ("fmc", self.fmc),
            ("bootloader", Some(self.bootloader)),
            ("tee", Some(self.tee)),
            ("snp", Some(self.snp)),
            ("microcode", Some(self.microcode)),
        ]
    }
}

/// The guest policy (`POLICY`, offset 0x08) decoded into its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPolicy {
    /// The raw 64-bit value.
    pub raw: u64,
    /// Minimum ABI minor version (bits 7:0).
    pub abi_minor: u8,
    /// Minimum ABI major version (bits 15:8).
    pub abi_major: u8,
    /// Bit 16: SMT allowed.
    pub smt_allowed: bool,
    /// Bit 18: association with a migration agent allowed.
    pub migrate_ma_allowed: bool,
    /// Bit 19: debugging allowed (host can read/write guest memory).
    pub debug_allowed: bool,
    /// Bit 20: guest restricted to a single socket.
    pub single_socket: bool,
}

impl GuestPolicy {
    /// Decodes the raw policy word.
    pub fn from_raw(raw: u64) -> Self {
        let bit = |n: u32| raw & (1u64 << n) != 0;
        Self {
            raw,
            abi_minor: (raw & 0xFF) as u8,
            abi_major: ((raw >> 8) & 0xFF) as u8,
            smt_allowed: bit(16),
            migrate_ma_allowed: bit(18),
            debug_allowed: bit(19),
            single_socket: bit(20),
        }
    }
}

/// Which key signed the report (`KEY_INFO.SIGNING_KEY`, bits 4:2 at 0x48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// Report not signed (all-zero signature).
    None,
    /// A reserved encoding.
    Reserved(u8),
}

/// A parsed SEV-SNP attestation report. Field names follow the SNP ABI specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Report format version (one of [`SUPPORTED_VERSIONS`]).
    pub version: u32,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: GuestPolicy,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// VMPL that requested the report.
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384 / SHA-384).
    pub sig_algo: u32,
    /// Current TCB.
    pub current_tcb: TcbVersion,
    /// Platform info bits.
    pub plat_info: u64,
    /// Whether the author key digest is present (`KEY_INFO` bit 0).
    pub author_key_en: bool,
    /// Whether the chip id is masked (`KEY_INFO` bit 1).
    pub mask_chip_key: bool,
    /// Which key signed this report.
    pub signing_key: SigningKey,
    /// Guest-provided data (64 bytes).
    pub report_data: [u8; 64],
    /// Launch measurement (48 bytes).
    pub measurement: [u8; 48],
    /// Host-provided data at launch (32 bytes; the init-data digest).
    pub host_data: [u8; 32],
    /// SHA-384 of the ID public key.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author public key.
    pub author_key_digest: [u8; 48],
    /// Report ID of this guest.
    pub report_id: [u8; 32],
    /// Report ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// Reported TCB (the one the VCEK was derived from).
    pub reported_tcb: TcbVersion,
    /// CPUID family/model/stepping (v3+; `None` in v2, where the bytes are reserved).
    pub cpuid: Option<Cpuid>,
    /// Chip identifier (64 bytes; zero if masked).
    pub chip_id: [u8; 64],
    /// Committed TCB.
    pub committed_tcb: TcbVersion,
    /// Current firmware build, minor, major.
    pub current_build_minor_major: [u8; 3],
    /// Committed firmware build, minor, major.
    pub committed_build_minor_major: [u8; 3],
    /// TCB at launch.
    pub launch_tcb: TcbVersion,
    /// Verified mitigation vector at launch (v5+; `None` before).
    pub launch_mit_vector: Option<u64>,
    /// Verified mitigation vector now (v5+; `None` before).
    pub current_mit_vector: Option<u64>,
    /// Signature `r` as a big-endian P-384 scalar.
    pub signature_r: [u8; 48],
    /// Signature `s` as a big-endian P-384 scalar.
    pub signature_s: [u8; 48],
}

fn array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(array(bytes, offset))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(array(bytes, offset))
}

/// Converts a 72-byte little-endian signature component to a 48-byte big-endian scalar;
/// the 24 high-order bytes must be zero.
fn le72_to_be48(
    bytes: &[u8],
    offset: usize,
    component: &'static str,
) -> Result<[u8; 48], SnpError> {
    let field: [u8; 72] = array(bytes, offset);
    if field[48..].iter().any(|&b| b != 0) {
        return Err(SnpError::MalformedSignature {
            reason: format!("{component} exceeds 48 bytes"),
        });
    }
    let mut out: [u8; 48] = array(&field, 0);
    out.reverse();
    Ok(out)
}

impl Report {
    /// Parses a raw report. The length must be exactly [`REPORT_LEN`] and the version in
    /// [`SUPPORTED_VERSIONS`].
    pub fn parse(bytes: &[u8]) -> Result<Self, SnpError> {
        if bytes.len() != REPORT_LEN {
            return Err(SnpError::ReportLength {
                expected: REPORT_LEN,
                found: bytes.len(),
            });
        }
        let version = u32_at(bytes, 0x00);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(SnpError::UnsupportedVersion { found: version });
        }
        let cpuid = (version >= VERSION_CPUID).then(|| Cpuid {
            family: bytes[0x188],
            model: bytes[0x189],
            stepping: bytes[0x18A],
        });
        let turin_layout = cpuid.and_then(|c| Generation::from_cpuid(c.family, c.model))
            == Some(Generation::Turin);
        let mit_vector =
            |offset: usize| (version >= VERSION_MIT_VECTORS).then(|| u64_at(bytes, offset));
        let tcb = |offset: usize| TcbVersion::decode(array(bytes, offset), turin_layout);
        let key_info = u32_at(bytes, 0x48);
        let signing_key = match ((key_info >> 2) & 0x7) as u8 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            other => SigningKey::Reserved(other),
        };
        Ok(Self {
            version,
            guest_svn: u32_at(bytes, 0x04),
            policy: GuestPolicy::from_raw(u64_at(bytes, 0x08)),
            family_id: array(bytes, 0x10),
            image_id: array(bytes, 0x20),
            vmpl: u32_at(bytes, 0x30),
            sig_algo: u32_at(bytes, 0x34),
            current_tcb: tcb(0x38),
            plat_info: u64_at(bytes, 0x40),
            author_key_en: key_info & 1 != 0,
            mask_chip_key: key_info & 2 != 0,
            signing_key,
            report_data: array(bytes, 0x50),
            measurement: array(bytes, 0x90),
            host_data: array(bytes, 0xC0),
            id_key_digest: array(bytes, 0xE0),
            author_key_digest: array(bytes, 0x110),
            report_id: array(bytes, 0x140),
            report_id_ma: array(bytes, 0x160),
            reported_tcb: tcb(0x180),
            cpuid,
            chip_id: array(bytes, 0x1A0),
            committed_tcb: tcb(0x1E0),
            current_build_minor_major: array(bytes, 0x1E8),
            committed_build_minor_major: array(bytes, 0x1EC),
            launch_tcb: tcb(0x1F0),
            launch_mit_vector: mit_vector(0x1F8),
            current_mit_vector: mit_vector(0x200),
            signature_r: le72_to_be48(bytes, 0x2A0, "r")?,
            signature_s: le72_to_be48(bytes, 0x2E8, "s")?,
        })
    }

    /// The processor generation named by the report's CPUID fields (v3+ only).
    pub fn generation(&self) -> Option<Generation> {
        self.cpuid
            .and_then(|c| Generation::from_cpuid(c.family, c.model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        b[0..4].copy_from_slice(&version.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&0x000b_0203u64.to_le_bytes());
        b[0x30] = 2;
        b[0x48] = 1 << 2;
        b[0x180..0x188].copy_from_slice(&[1, 2, 0, 0, 0, 0, 3, 4]);
        b[0x2A0] = 7; // r = 7
        b[0x2E8 + 1] = 1; // s = 256
        b
    }

    #[test]
    fn parses_fields_and_policy_bits() {
        let r = Report::parse(&synthetic(2)).unwrap();
        assert_eq!((r.policy.abi_major, r.policy.abi_minor), (2, 3));
        assert!(r.policy.smt_allowed && r.policy.debug_allowed && !r.policy.migrate_ma_allowed);
        assert!(!r.policy.single_socket);
        assert_eq!(r.vmpl, 2);
        assert_eq!(r.signing_key, SigningKey::Vlek);
        assert_eq!(
            (
                r.reported_tcb.bootloader,
                r.reported_tcb.tee,
                r.reported_tcb.snp
            ),
            (1, 2, 3)
        );
        assert_eq!(r.reported_tcb.microcode, 4);
        assert_eq!(r.signature_r[47], 7);
        assert_eq!(r.signature_s[46], 1);
        assert_eq!(r.generation(), None);
    }

    #[test]
    fn turin_v3_uses_turin_tcb_layout() {
        let mut b = synthetic(3);
        b[0x188] = 0x1A;
        b[0x180..0x188].copy_from_slice(&[9, 1, 2, 3, 0, 0, 0, 4]);
        let r = Report::parse(&b).unwrap();
        assert_eq!(r.generation(), Some(Generation::Turin));
        assert_eq!(r.reported_tcb.fmc, Some(9));
        assert_eq!(
            (
                r.reported_tcb.bootloader,
                r.reported_tcb.snp,
                r.reported_tcb.microcode
            ),
            (1, 3, 4)
        );
    }

    #[test]
    fn wrong_length_is_a_typed_error() {
        for len in [0, REPORT_LEN - 1, REPORT_LEN + 1] {
            let err = Report::parse(&vec![0u8; len]).unwrap_err();
            assert!(
                matches!(err, SnpError::ReportLength { expected: REPORT_LEN, found } if found == len)
            );
        }
    }

    #[test]
    fn kbs05_unsupported_versions_rejected() {
        for v in [0, 1, 6, 255, u32::MAX] {
            assert!(
                matches!(Report::parse(&synthetic(v)), Err(SnpError::UnsupportedVersion { found }) if found == v)
            );
        }
    }

    #[test]
    fn oversized_signature_component_rejected() {
        let mut b = synthetic(2);
        b[0x2A0 + 60] = 1;
        assert!(matches!(
            Report::parse(&b),
            Err(SnpError::MalformedSignature { .. })
        ));
    }
}
