//! The SEV-SNP evidence verifier: policy, expected values and the ordered checks.

use std::time::SystemTime;

use p384::ecdsa::Signature;
use ring::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};

use super::certs::{AmdRoots, CertRole, EndorsementKey, verify_endorsement_key_with};
use super::crl::CrlSet;
use super::error::{SnpError, to_hex};
use super::report::{
    Generation, Report, SIG_ALGO_ECDSA_P384_SHA384, SIGNED_LEN, SigningKey, TcbVersion,
};

/// Default minimum report version. The catalogue (§1.6.1) asks for 3, but version-2 reports are
/// still produced by deployed firmware (and the Trustee vector is v2), so the default is 2.
pub const REPORT_VERSION_MIN: u32 = 2;

/// Minimum security patch levels; each present component must be `>=` the minimum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinimumTcb {
    /// FMC (compared only where the report has one, i.e. Turin).
    pub fmc: u8,
    /// Boot loader.
    pub bootloader: u8,
    /// TEE.
    pub tee: u8,
    /// SNP firmware.
    pub snp: u8,
    /// Microcode.
    pub microcode: u8,
}

impl MinimumTcb {
    fn check(&self, which: &'static str, tcb: &TcbVersion) -> Result<(), SnpError> {
        let minimums = [
            self.fmc,
            self.bootloader,
            self.tee,
            self.snp,
            self.microcode,
        ];
        for ((component, found), minimum) in tcb.components().into_iter().zip(minimums) {
            if let Some(found) = found
                && found < minimum
            {
                return Err(SnpError::TcbBelowMinimum {
                    which,
                    component,
                    minimum,
                    found,
                });
            }
        }
        Ok(())
    }
}

/// What the verifier accepts. `Default` is the strict policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpPolicy {
    /// Minimum report version (default [`REPORT_VERSION_MIN`]).
    pub min_report_version: u32,
    /// Accept a guest policy with the DEBUG bit set (default false).
    pub allow_debug: bool,
    /// Accept a guest policy with MIGRATE_MA set (default false).
    pub allow_migrate_ma: bool,
    /// Accept a guest policy that allows SMT (default true).
    pub allow_smt: bool,
    /// Require the SINGLE_SOCKET policy bit (default false).
    pub require_single_socket: bool,
    /// Accept reports signed by a VLEK (default false: VCEK only).
    pub allow_vlek: bool,
    /// Minimum reported TCB (default none).
    pub min_reported_tcb: Option<MinimumTcb>,
    /// Minimum launch TCB (default none).
    pub min_launch_tcb: Option<MinimumTcb>,
    /// Allowed launch measurements; empty accepts any (leave reference values to the caller).
    pub allowed_measurements: Vec<[u8; 48]>,
}

impl Default for SnpPolicy {
    fn default() -> Self {
        Self {
            min_report_version: REPORT_VERSION_MIN,
            allow_debug: false,
            allow_migrate_ma: false,
            allow_smt: true,
            require_single_socket: false,
            allow_vlek: false,
            min_reported_tcb: None,
            min_launch_tcb: None,
            allowed_measurements: Vec::new(),
        }
    }
}

/// Values the relying party expects to find in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Exact `report_data` (e.g. hash of the KBS nonce and TEE public key).
    pub report_data: [u8; 64],
    /// Exact `host_data` (init-data digest), if one is required.
    pub host_data: Option<[u8; 32]>,
}

/// A report that passed every check, with the key that signed it.
#[derive(Debug, Clone)]
pub struct VerifiedReport {
    /// The parsed report.
    pub report: Report,
    /// VCEK or VLEK.
    pub signer: CertRole,
    /// Processor generation of the certificate chain.
    pub generation: Generation,
    /// The chain ends at a test chain's ARK, not AMD's.
    pub testing: bool,
}

/// Verifies SEV-SNP evidence against the embedded AMD roots and a [`SnpPolicy`].
#[derive(Debug, Clone, Default)]
pub struct SnpVerifier {
    policy: SnpPolicy,
    testing_roots: Vec<AmdRoots>,
    crls: CrlSet,
}

impl SnpVerifier {
    /// A verifier enforcing `policy`, trusting AMD's roots.
    pub fn new(policy: SnpPolicy) -> Self {
        Self {
            policy,
            testing_roots: Vec::new(),
            crls: CrlSet::default(),
        }
    }

    /// The same verifier checking every chain's revocation status against `crls` (after the
    /// chain, before the key kind): see [`super::crl`]. Without it (an empty, not required set)
    /// revocation is not checked.
    pub fn with_crls(mut self, crls: CrlSet) -> Self {
        self.crls = crls;
        self
    }

    /// The same verifier trusting the test chains `roots` too (development and CI only): reports
    /// they certify pass the same checks as AMD-certified ones and are marked
    /// [`VerifiedReport::testing`].
    pub fn trusting_testing_roots(mut self, roots: Vec<AmdRoots>) -> Self {
        self.testing_roots = roots;
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &SnpPolicy {
        &self.policy
    }

    /// Runs every check, in this order: parse; version; VMPL; guest policy; certificate chain at
    /// `now`; revocation (when CRLs are given); key kind and generation; report signature; TCB and chip_id binding; minimum TCB;
    /// measurement; report_data; host_data. The first failure is returned.
    pub fn verify(
        &self,
        report_bytes: &[u8],
        endorsement_key_der: &[u8],
        now: SystemTime,
        expected: &Expected,
    ) -> Result<VerifiedReport, SnpError> {
        let report = Report::parse(report_bytes)?;
        self.check_fields(&report)?;
        let key =
            verify_endorsement_key_with(endorsement_key_der, now, &self.testing_roots, &self.crls)?;
        self.check_key_kind(&report, &key)?;
        verify_report_signature(report_bytes, &report, &key)?;
        check_tcb_binding(&report, &key)?;
        self.check_reference_values(&report, &key)?;
        check_expected(&report, expected)?;
        Ok(VerifiedReport {
            report,
            signer: key.role,
            generation: key.generation,
            testing: key.testing,
        })
    }

    /// Checks that need only the report: version, VMPL and guest-policy bits.
    pub fn check_fields(&self, report: &Report) -> Result<(), SnpError> {
        if report.version < self.policy.min_report_version {
            return Err(SnpError::VersionBelowMinimum {
                minimum: self.policy.min_report_version,
                found: report.version,
            });
        }
        if report.vmpl != 0 {
            return Err(SnpError::Vmpl { found: report.vmpl });
        }
        let p = &report.policy;
        let violated = if p.debug_allowed && !self.policy.allow_debug {
            Some("debug allowed")
        } else if p.migrate_ma_allowed && !self.policy.allow_migrate_ma {
            Some("migration agent allowed")
        } else if p.smt_allowed && !self.policy.allow_smt {
            Some("SMT allowed")
        } else if !p.single_socket && self.policy.require_single_socket {
            Some("single socket not required")
        } else {
            None
        };
        match violated {
            Some(bit) => Err(SnpError::GuestPolicy { bit, raw: p.raw }),
            None => Ok(()),
        }
    }

    fn check_key_kind(&self, report: &Report, key: &EndorsementKey) -> Result<(), SnpError> {
        let consistent = matches!(
            (report.signing_key, key.role),
            (SigningKey::Vcek, CertRole::Vcek) | (SigningKey::Vlek, CertRole::Vlek)
        );
        if !consistent {
            return Err(SnpError::SigningKeyMismatch {
                report: report.signing_key,
                certificate: key.role,
            });
        }
        if key.role == CertRole::Vlek && !self.policy.allow_vlek {
            return Err(SnpError::VlekNotAllowed);
        }
        if let Some(generation) = report.generation()
            && generation != key.generation
        {
            return Err(SnpError::GenerationMismatch {
                report: generation,
                chain: key.generation,
            });
        }
        Ok(())
    }

    fn check_reference_values(
        &self,
        report: &Report,
        key: &EndorsementKey,
    ) -> Result<(), SnpError> {
        let turin = key.generation == Generation::Turin;
        if let Some(min) = &self.policy.min_reported_tcb {
            min.check(
                "reported",
                &TcbVersion::decode(report.reported_tcb.raw, turin),
            )?;
        }
        if let Some(min) = &self.policy.min_launch_tcb {
            min.check("launch", &TcbVersion::decode(report.launch_tcb.raw, turin))?;
        }
        self.check_measurement(report)
    }

    /// The launch measurement against the policy's allow-list (an empty list accepts any).
    /// Part of [`Self::verify`]; public so that reference values (e.g. from `coffer measure`)
    /// can be checked against a report without a signed one.
    pub fn check_measurement(&self, report: &Report) -> Result<(), SnpError> {
        if !self.policy.allowed_measurements.is_empty()
            && !self
                .policy
                .allowed_measurements
                .contains(&report.measurement)
        {
            return Err(SnpError::MeasurementNotAllowed {
                found: to_hex(&report.measurement),
            });
        }
        Ok(())
    }
}

/// Verifies the ECDSA P-384 / SHA-384 signature over bytes `0x000..0x2A0` with the endorsement key.
pub fn verify_report_signature(
    report_bytes: &[u8],
    report: &Report,
    key: &EndorsementKey,
) -> Result<(), SnpError> {
    if report.sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(SnpError::SignatureAlgorithm {
            found: report.sig_algo,
        });
    }
    let signed = report_bytes
        .get(..SIGNED_LEN)
        .ok_or(SnpError::ReportLength {
            expected: super::report::REPORT_LEN,
            found: report_bytes.len(),
        })?;
    // r and s must be valid P-384 scalars (a typed error when not); ring then verifies the
    // fixed-width big-endian r || s.
    Signature::from_scalars(report.signature_r, report.signature_s).map_err(|e| {
        SnpError::MalformedSignature {
            reason: e.to_string(),
        }
    })?;
    let mut signature = [0u8; 96];
    signature[..48].copy_from_slice(&report.signature_r);
    signature[48..].copy_from_slice(&report.signature_s);
    let point = key.key.to_encoded_point(false);
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point.as_bytes())
        .verify(signed, &signature)
        .map_err(|_| SnpError::Signature {
            key: report.signing_key,
        })
}

/// Checks that `reported_tcb` equals the certificate's TCB extensions and, for a VCEK, that
/// `chip_id` is non-zero and equals the hwID extension.
pub fn check_tcb_binding(report: &Report, key: &EndorsementKey) -> Result<(), SnpError> {
    let tcb = TcbVersion::decode(report.reported_tcb.raw, key.generation == Generation::Turin);
    let pairs = [
        ("fmc", tcb.fmc, key.tcb.fmc),
        ("bootloader", Some(tcb.bootloader), Some(key.tcb.bootloader)),
        ("tee", Some(tcb.tee), Some(key.tcb.tee)),
        ("snp", Some(tcb.snp), Some(key.tcb.snp)),
        ("microcode", Some(tcb.microcode), Some(key.tcb.microcode)),
    ];
    for (component, in_report, in_cert) in pairs {
        if in_report != in_cert {
            return Err(SnpError::TcbMismatch {
                component,
                report: in_report.unwrap_or_default(),
                certificate: in_cert.unwrap_or_default(),
            });
        }
    }
    if let Some(hw_id) = &key.hw_id {
        if report.chip_id.iter().all(|&b| b == 0) {
            return Err(SnpError::ChipIdZero);
        }
        let (head, tail) = report.chip_id.split_at(hw_id.len());
        if head != hw_id.as_slice() || tail.iter().any(|&b| b != 0) {
            return Err(SnpError::ChipIdMismatch);
        }
    }
    Ok(())
}

/// Checks `report_data` (64 bytes) and, if expected, `host_data` (32 bytes) for exact equality.
pub fn check_expected(report: &Report, expected: &Expected) -> Result<(), SnpError> {
    if report.report_data != expected.report_data {
        return Err(SnpError::ReportDataMismatch {
            expected: to_hex(&expected.report_data),
            found: to_hex(&report.report_data),
        });
    }
    if let Some(host_data) = &expected.host_data
        && report.host_data != *host_data
    {
        return Err(SnpError::HostDataMismatch {
            expected: to_hex(host_data),
            found: to_hex(&report.host_data),
        });
    }
    Ok(())
}
