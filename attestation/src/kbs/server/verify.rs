//! Evidence verification for the broker: one entry point, [`EvidenceVerifier::verify`], picks
//! the verifier by the TEE the session was opened for (so a TEE switched between `/auth` and
//! `/attest` fails to verify, KBS-04) and returns an [`Appraisal`] for the token.
//!
//! - **sample**: only when enabled in the config; the binding must equal the evidence's
//!   `report_data`; status `warning` and `tee: sample` in the claims, which the default policy
//!   refuses (INV-10: the verifier refuses it outright when not enabled). Sample evidence may
//!   carry `init_data` (hex, the stand-in for HOSTDATA): then it must be exactly the init-data
//!   digest (or all zero without init-data); evidence without it leaves init-data unbound.
//! - **snp**: [`crate::snp::SnpVerifier`] with the VCEK/VLEK from the evidence's certificate table
//!   or the offline store (`<vcek_dir>/<chip_id hex>.der`) and the AMD CRLs of `[attestation.snp.crl]
//!   dir`, read for each evidence like TDX collateral (KBS-05); report_data = binding ‖ 16 zero
//!   bytes; HOSTDATA exactly the SHA-256 init-data digest, or all zero without init-data (KBS-03).
//! - **tdx**: [`crate::tdx::TdxVerifier`] with collateral from the configured file/directory;
//!   MRCONFIGID exactly the SHA-384 init-data digest, or zero without init-data.
//!
//! With `[testing] ca_dir` the SNP and TDX verifiers trust a test chain's roots too
//! ([`crate::testing::TestChainRoots`]): the same verifiers and checks, and the appraisal says
//! `testing_root` (the token's annotated evidence carries it).
//!
//! Status is `affirming` only when reference values pin the measurement (SNP measurement
//! allow-list, TDX reference registers); hardware-valid evidence without reference values is
//! `warning`.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::throttle::Throttle;
use crate::kbs::binding::BINDING_LEN;
use crate::kbs::types::{InitData, Tee};
use crate::snp::{
    AmdRoots, CrlSet, Expected as SnpExpected, Report, SnpError, SnpPolicy, SnpVerifier,
};
use crate::tdx::{
    Collateral, Expected as TdxExpected, ReferenceValues, TdQuote, TdxError, TdxPolicy,
    TdxVerifier, verify_signatures_in,
};

/// How often "accepting evidence certified by the test chain" may be logged.
const TESTING_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How often "accepting sample evidence" may be logged.
const SAMPLE_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Largest accepted init-data document.
pub const MAX_INIT_DATA_LEN: usize = 256 * 1024;
const VCEK_GUID: [u8; 16] = guid(
    0x63da758d,
    0xe664,
    0x4564,
    [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd],
);
const VLEK_GUID: [u8; 16] = guid(
    0xa8074bc2,
    0xa25a,
    0x483e,
    [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1],
);

/// The little-endian-mixed byte layout of a GUID as stored in the SNP certificate table.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Verification failures.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Sample evidence is not enabled on this broker.
    #[error("sample evidence is not accepted by this broker")]
    SampleDisabled,
    /// TDX verification is not configured (no collateral).
    #[error("tdx evidence is not accepted: no collateral configured")]
    TdxDisabled,
    /// The evidence JSON lacks a field or has the wrong shape.
    #[error("malformed {tee} evidence: {reason}")]
    Malformed {
        /// TEE.
        tee: Tee,
        /// What is wrong.
        reason: String,
    },
    /// Evidence report_data is not the binding of this session's nonce and key (KBS-02).
    #[error("report_data does not bind the nonce and tee-pubkey")]
    ReportData,
    /// No endorsement key for an SNP report.
    #[error("no vcek/vlek for chip {chip_id}")]
    NoEndorsementKey {
        /// Chip id hex.
        chip_id: String,
    },
    /// The evidence's init-data field is not the digest of the init-data sent (KBS-03).
    #[error("evidence init-data field does not match the init-data digest")]
    InitDataMismatch,
    /// The init-data digest length does not fit the TEE's field (KBS-03: no truncation).
    #[error("init-data algorithm {algorithm} does not fit {tee} (needs {needed})")]
    InitDataAlgorithm {
        /// Declared algorithm.
        algorithm: String,
        /// TEE.
        tee: Tee,
        /// Required algorithm.
        needed: &'static str,
    },
    /// SNP verification failed.
    #[error("snp evidence rejected")]
    Snp(#[source] SnpError),
    /// TDX verification failed.
    #[error("tdx evidence rejected")]
    Tdx(#[source] TdxError),
}

impl VerifyError {
    /// What the client is told: the check that failed and the values from its own evidence
    /// (so that a refusal names the field), but not the broker's files: a collateral problem
    /// is reported without its path.
    pub fn detail(&self) -> String {
        match self {
            Self::Tdx(TdxError::Collateral { .. }) => {
                "tdx evidence rejected: no usable collateral for this platform".to_owned()
            }
            Self::Snp(
                SnpError::CrlRead { .. } | SnpError::CrlTooLarge { .. } | SnpError::CrlFile { .. },
            ) => "snp evidence rejected: no usable CRL for this platform".to_owned(),
            other => super::error::error_chain(other),
        }
    }
}

/// EAR appraisal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarStatus {
    /// Verified and pinned by reference values.
    Affirming,
    /// Verified, but not pinned (or not hardware-backed: sample).
    Warning,
}

impl EarStatus {
    /// The EAR wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Affirming => "affirming",
            Self::Warning => "warning",
        }
    }
}

/// A successful appraisal.
#[derive(Debug, Clone)]
pub struct Appraisal {
    /// EAR status.
    pub status: EarStatus,
    /// TEE-specific claims.
    pub tee_claims: Value,
    /// Whether the evidence's measured init-data field was compared with the init-data digest
    /// (always for SNP and TDX; for sample evidence only when it carries `init_data`).
    pub init_data_bound: bool,
    /// The evidence is certified by the configured test chain (`[testing]`), not AMD or Intel.
    pub testing_root: bool,
}

/// Init-data as measured: declared algorithm, digest of the raw body, parsed `[data]`.
#[derive(Debug, Clone)]
pub struct InitDataDigest {
    /// `sha256`, `sha384` or `sha512`.
    pub algorithm: String,
    /// Digest of the body bytes.
    pub digest: Vec<u8>,
    /// Claims for the token: `{format, algorithm, digest, data}`.
    pub claims: Value,
}

/// Parses and digests init-data with Coffer's one initdata parser (KBS-03, INI-01: bounded, strict
/// entries, known algorithms only): the broker accepts exactly the documents a guest accepts.
pub fn digest_init_data(init: &InitData) -> Result<InitDataDigest, String> {
    if init.format != "toml" {
        return Err(format!("format {:?} is not toml", init.format));
    }
    if init.body.len() > MAX_INIT_DATA_LEN {
        return Err("body too large".into());
    }
    let parsed = coffer_initdata::Initdata::parse(init.body.as_bytes().to_vec())
        .map_err(|e| e.to_string())?;
    let digest = parsed.digest();
    let algorithm = parsed.algorithm().name().to_owned();
    let data: serde_json::Map<String, Value> = parsed
        .entries()
        .iter()
        .map(|(entry, value)| (entry.key().to_owned(), Value::String(value.clone())))
        .collect();
    Ok(InitDataDigest {
        claims: json!({
            "format": "toml",
            "algorithm": algorithm,
            "digest": hex::encode(digest.value()),
            "data": data,
        }),
        algorithm,
        digest: digest.value().to_vec(),
    })
}

/// SNP settings.
#[derive(Debug, Clone, Default)]
pub struct SnpSettings {
    /// Verifier policy (the measurement allow-list is managed by [`EvidenceVerifier`]).
    pub policy: SnpPolicy,
    /// Offline VCEK store: `<dir>/<chip_id hex>.der`.
    pub vcek_dir: Option<PathBuf>,
    /// A test chain's roots trusted after AMD's (`[testing]`; development and CI only).
    pub testing_roots: Vec<AmdRoots>,
    /// AMD CRL directory (`[attestation.snp.crl] dir`), read for every evidence.
    pub crl_dir: Option<PathBuf>,
    /// Refuse evidence whose product has no CRL (`[attestation.snp.crl] require`).
    pub crl_required: bool,
}

/// Loads `[attestation.snp.crl] dir` once at start, so that a malformed or misfiled CRL refuses
/// the start rather than the first evidence, and says what it found: how many CRLs, which are
/// already stale at `now` (their evidence will be refused until they are refreshed).
pub fn check_crl_dir(
    dir: &std::path::Path,
    required: bool,
    now: SystemTime,
) -> Result<(), SnpError> {
    let crls = CrlSet::load_dir(dir, required)?;
    if crls.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            required,
            "no AMD CRL in [attestation.snp.crl] dir (<product>.crl, <product>-vlek.crl)"
        );
    }
    for (generation, kind, crl) in crls.iter() {
        let stale = crl.next_update().is_none_or(|next| now > next);
        if stale {
            tracing::warn!(
                generation = generation.name(),
                %kind,
                "AMD CRL is past its nextUpdate: evidence of this product is refused until it is refreshed"
            );
        } else {
            tracing::info!(generation = generation.name(), %kind, "AMD CRL loaded");
        }
    }
    Ok(())
}

/// TDX settings.
#[derive(Debug, Clone, Default)]
pub struct TdxSettings {
    /// Verifier policy, including reference values.
    pub policy: TdxPolicy,
    /// Collateral file or directory (`<FMSPC>.json`).
    pub collateral: Option<PathBuf>,
    /// A test chain's root (DER) trusted after Intel's (`[testing]`; development and CI only).
    pub testing_root: Option<Vec<u8>>,
}

/// The broker's verifiers.
#[derive(Debug)]
pub struct EvidenceVerifier {
    allow_sample: bool,
    snp: SnpSettings,
    snp_measurements: RwLock<Vec<[u8; 48]>>,
    tdx: TdxSettings,
    /// Accepted MRTD values; `None` leaves MRTD unpinned.
    tdx_mr_td: RwLock<Option<Vec<[u8; 48]>>>,
    /// "accepting sample evidence", at most once a minute.
    sample_warning: Throttle,
    /// "accepting evidence certified by the test chain", at most once a minute.
    testing_warning: Throttle,
}

impl EvidenceVerifier {
    /// Verifiers from settings; `allow_sample` enables development-only sample evidence.
    pub fn new(allow_sample: bool, snp: SnpSettings, tdx: TdxSettings) -> Self {
        if allow_sample {
            tracing::warn!("sample evidence is ENABLED: tokens for it are marked tee=sample");
        }
        if !snp.testing_roots.is_empty() || tdx.testing_root.is_some() {
            tracing::warn!(
                snp = !snp.testing_roots.is_empty(),
                tdx = tdx.testing_root.is_some(),
                "TESTING CHAIN TRUSTED ([testing]): evidence signed by a test chain's keys is \
                 accepted as SNP/TDX evidence (tokens say testing_root: true); development and \
                 CI only, never on a production broker"
            );
        }
        let measurements = snp.policy.allowed_measurements.clone();
        let mr_td = tdx.policy.reference.mr_td.clone();
        Self {
            allow_sample,
            snp,
            snp_measurements: RwLock::new(measurements),
            tdx,
            tdx_mr_td: RwLock::new(mr_td),
            sample_warning: Throttle::new(SAMPLE_WARNING_EVERY),
            testing_warning: Throttle::new(TESTING_WARNING_EVERY),
        }
    }

    /// Whether `tee` can be verified at all.
    pub fn enabled(&self, tee: Tee) -> bool {
        match tee {
            Tee::Sample => self.allow_sample,
            Tee::Snp => true,
            Tee::Tdx => self.tdx.collateral.is_some(),
        }
    }

    /// Replaces the SNP measurement allow-list (admin "set reference values").
    pub fn set_snp_measurements(&self, measurements: Vec<[u8; 48]>) {
        *self
            .snp_measurements
            .write()
            .unwrap_or_else(|p| p.into_inner()) = measurements;
    }

    /// Replaces the TDX MRTD allow-list (admin "set reference values"); empty unpins MRTD.
    pub fn set_tdx_mr_td(&self, mr_td: Vec<[u8; 48]>) {
        *self.tdx_mr_td.write().unwrap_or_else(|p| p.into_inner()) =
            (!mr_td.is_empty()).then_some(mr_td);
    }

    /// Verifies `evidence` for `tee` against the binding and init-data digest at `now`.
    pub fn verify(
        &self,
        tee: Tee,
        evidence: &Value,
        binding: &[u8; BINDING_LEN],
        init_data: Option<&InitDataDigest>,
        now: SystemTime,
    ) -> Result<Appraisal, VerifyError> {
        match tee {
            Tee::Sample => self.verify_sample(evidence, binding, init_data),
            Tee::Snp => self.verify_snp(evidence, binding, init_data, now),
            Tee::Tdx => self.verify_tdx(evidence, binding, init_data, now),
        }
    }

    fn verify_sample(
        &self,
        evidence: &Value,
        binding: &[u8; BINDING_LEN],
        init_data: Option<&InitDataDigest>,
    ) -> Result<Appraisal, VerifyError> {
        if !self.allow_sample {
            return Err(VerifyError::SampleDisabled);
        }
        let report_data = b64_field(Tee::Sample, evidence, "report_data")?;
        if report_data != binding.as_slice() {
            return Err(VerifyError::ReportData);
        }
        let init_data_bound = match evidence.get("init_data") {
            None => false,
            Some(field) => {
                let measured = field
                    .as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| VerifyError::Malformed {
                        tee: Tee::Sample,
                        reason: "init_data is not hex".into(),
                    })?;
                let matches = match init_data {
                    Some(d) => measured == d.digest,
                    None => measured.iter().all(|&b| b == 0),
                };
                if !matches {
                    return Err(VerifyError::InitDataMismatch);
                }
                true
            }
        };
        if let Some(count) = self.sample_warning.due() {
            tracing::warn!(
                count,
                "accepting sample evidence (development only; logged at most once a minute, count since the last line)"
            );
        }
        Ok(Appraisal {
            status: EarStatus::Warning,
            tee_claims: json!({
                "svn": evidence.get("svn").cloned().unwrap_or(Value::Null),
                "report_data": B64.encode(binding),
                "development_only": true,
            }),
            init_data_bound,
            testing_root: false,
        })
    }

    fn verify_snp(
        &self,
        evidence: &Value,
        binding: &[u8; BINDING_LEN],
        init_data: Option<&InitDataDigest>,
        now: SystemTime,
    ) -> Result<Appraisal, VerifyError> {
        let report_bytes = b64_field(Tee::Snp, evidence, "report")?;
        let report = Report::parse(&report_bytes).map_err(VerifyError::Snp)?;
        let key_der = match evidence.get("cert_table") {
            Some(_) => find_endorsement_key(&b64_field(Tee::Snp, evidence, "cert_table")?),
            None => None,
        };
        let key_der = match key_der {
            Some(k) => k,
            None => self.offline_vcek(&report.chip_id)?,
        };
        let host_data: [u8; 32] = init_data_field(init_data, Tee::Snp, "sha256")?;
        let report_data = padded_report_data(binding);
        let mut policy = self.snp.policy.clone();
        policy.allowed_measurements = self
            .snp_measurements
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let pinned = !policy.allowed_measurements.is_empty();
        let crls = match &self.snp.crl_dir {
            Some(dir) => CrlSet::load_dir(dir, self.snp.crl_required).map_err(VerifyError::Snp)?,
            None => CrlSet::new(self.snp.crl_required),
        };
        let verified = SnpVerifier::new(policy)
            .trusting_testing_roots(self.snp.testing_roots.clone())
            .with_crls(crls)
            .verify(
                &report_bytes,
                &key_der,
                now,
                &SnpExpected {
                    report_data,
                    host_data: Some(host_data),
                },
            )
            .map_err(VerifyError::Snp)?;
        self.warn_if_testing(verified.testing);
        let r = &verified.report;
        Ok(Appraisal {
            status: if pinned {
                EarStatus::Affirming
            } else {
                EarStatus::Warning
            },
            testing_root: verified.testing,
            tee_claims: json!({
                "version": r.version,
                "generation": verified.generation.name(),
                "signer": format!("{:?}", verified.signer).to_lowercase(),
                "measurement": hex::encode(r.measurement),
                "host_data": hex::encode(r.host_data),
                "report_data": hex::encode(r.report_data),
                "chip_id": hex::encode(r.chip_id),
                "vmpl": r.vmpl,
                "guest_svn": r.guest_svn,
                "policy_debug_allowed": r.policy.debug_allowed,
                "policy_migrate_ma_allowed": r.policy.migrate_ma_allowed,
                "policy_smt_allowed": r.policy.smt_allowed,
                "reported_tcb": hex::encode(r.reported_tcb.raw),
                "launch_tcb": hex::encode(r.launch_tcb.raw),
                "launch_mit_vector": r.launch_mit_vector,
                "current_mit_vector": r.current_mit_vector,
            }),
            init_data_bound: true,
        })
    }

    fn offline_vcek(&self, chip_id: &[u8; 64]) -> Result<Vec<u8>, VerifyError> {
        let chip = hex::encode(chip_id);
        self.snp
            .vcek_dir
            .as_ref()
            .and_then(|dir| std::fs::read(dir.join(format!("{chip}.der"))).ok())
            .ok_or(VerifyError::NoEndorsementKey { chip_id: chip })
    }

    fn verify_tdx(
        &self,
        evidence: &Value,
        binding: &[u8; BINDING_LEN],
        init_data: Option<&InitDataDigest>,
        now: SystemTime,
    ) -> Result<Appraisal, VerifyError> {
        let collateral_path = self
            .tdx
            .collateral
            .as_ref()
            .ok_or(VerifyError::TdxDisabled)?;
        let quote_bytes = b64_field(Tee::Tdx, evidence, "quote")?;
        let quote = TdQuote::parse(&quote_bytes).map_err(VerifyError::Tdx)?;
        let pck = verify_signatures_in(&quote_bytes, &quote, now, self.tdx.testing_root.as_deref())
            .map_err(VerifyError::Tdx)?;
        let collateral = Collateral::load(collateral_path, &pck.fmspc).map_err(VerifyError::Tdx)?;
        let mr_config_id: [u8; 48] = init_data_field(init_data, Tee::Tdx, "sha384")?;
        let report_data = padded_report_data(binding);
        let mut policy = self.tdx.policy.clone();
        policy.reference.mr_td = self
            .tdx_mr_td
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let pinned = policy.reference != ReferenceValues::default();
        let mut verifier = TdxVerifier::new(policy);
        if let Some(root) = &self.tdx.testing_root {
            verifier = verifier.trusting_testing_root(root.clone());
        }
        let verified = verifier
            .verify(
                &quote_bytes,
                &collateral,
                now,
                &TdxExpected {
                    report_data,
                    mr_config_id: Some(mr_config_id),
                },
            )
            .map_err(VerifyError::Tdx)?;
        self.warn_if_testing(verified.pck.testing);
        let r = &verified.quote.report;
        Ok(Appraisal {
            status: if pinned {
                EarStatus::Affirming
            } else {
                EarStatus::Warning
            },
            testing_root: verified.pck.testing,
            tee_claims: json!({
                "quote_version": verified.quote.version,
                "tcb_status": verified.tcb.as_ref().map(|t| t.status.as_str()),
                "fmspc": hex::encode(verified.pck.fmspc),
                "mr_td": hex::encode(r.mr_td),
                "mr_seam": hex::encode(r.mr_seam),
                "mr_config_id": hex::encode(r.mr_config_id),
                "rtmr0": hex::encode(r.rtmr[0]),
                "rtmr1": hex::encode(r.rtmr[1]),
                "rtmr2": hex::encode(r.rtmr[2]),
                "rtmr3": hex::encode(r.rtmr[3]),
                "report_data": hex::encode(r.report_data),
            }),
            init_data_bound: true,
        })
    }
}

impl EvidenceVerifier {
    fn warn_if_testing(&self, testing: bool) {
        if testing && let Some(count) = self.testing_warning.due() {
            tracing::warn!(
                count,
                "accepting evidence certified by the TESTING chain ([testing]; logged at most once a minute, count since the last line)"
            );
        }
    }
}

fn b64_field(tee: Tee, evidence: &Value, field: &str) -> Result<Vec<u8>, VerifyError> {
    let text =
        evidence
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| VerifyError::Malformed {
                tee,
                reason: format!("missing string field {field}"),
            })?;
    B64.decode(text).map_err(|e| VerifyError::Malformed {
        tee,
        reason: format!("{field}: {e}"),
    })
}

/// Finds the VCEK (or VLEK) in an SNP extended-report certificate table: 24-byte entries
/// `(guid, offset u32 le, length u32 le)` ended by an all-zero entry.
pub fn find_endorsement_key(table: &[u8]) -> Option<Vec<u8>> {
    let mut fallback = None;
    for entry in table.chunks_exact(24) {
        let (guid_bytes, rest) = entry.split_at(16);
        if guid_bytes.iter().all(|&b| b == 0) {
            break;
        }
        let offset = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let length = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
        let cert = table.get(offset..offset.checked_add(length)?)?.to_vec();
        if guid_bytes == VCEK_GUID {
            return Some(cert);
        }
        if guid_bytes == VLEK_GUID {
            fallback = Some(cert);
        }
    }
    fallback
}

/// The hardware field the init-data digest must fill exactly (SNP HOSTDATA, TDX MRCONFIGID); all
/// zero without init-data.
fn init_data_field<const N: usize>(
    init_data: Option<&InitDataDigest>,
    tee: Tee,
    needed: &'static str,
) -> Result<[u8; N], VerifyError> {
    match init_data {
        None => Ok([0u8; N]),
        Some(d) => {
            <[u8; N]>::try_from(d.digest.as_slice()).map_err(|_| VerifyError::InitDataAlgorithm {
                algorithm: d.algorithm.clone(),
                tee,
                needed,
            })
        }
    }
}

/// REPORT_DATA as the binding rule fixes it: the binding, then zeros.
fn padded_report_data(binding: &[u8; BINDING_LEN]) -> [u8; 64] {
    let mut report_data = [0u8; 64];
    report_data[..BINDING_LEN].copy_from_slice(binding);
    report_data
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn kbs05_crl_dir_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        // Empty: the start goes on (warned), required or not.
        check_crl_dir(dir.path(), true, SystemTime::now()).unwrap();
        std::fs::write(dir.path().join("turin-vlek.crl"), b"garbage").unwrap();
        let err = check_crl_dir(dir.path(), false, SystemTime::now()).unwrap_err();
        assert!(
            matches!(&err, SnpError::CrlFile { path, .. } if path.ends_with("turin-vlek.crl")),
            "{err}"
        );
    }

    #[test]
    fn init_data_digest_and_refusals_kbs03() {
        let body = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = \"x\"\n";
        let d = digest_init_data(&InitData {
            format: "toml".into(),
            body: body.into(),
        })
        .unwrap();
        assert_eq!(d.digest, Sha256::digest(body.as_bytes()).to_vec());
        for (format, body) in [
            ("json", body),
            ("toml", "version = \"0.1.0\"\nalgorithm = \"md5\"\n"),
            ("toml", "not toml ="),
            ("toml", "version = \"9\"\nalgorithm = \"sha256\"\n"),
            // Strict, as in the guest: an entry Coffer does not know, a value that is not a
            // string, a key outside the document's schema.
            (
                "toml",
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"polcy.rego\" = \"x\"\n",
            ),
            (
                "toml",
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = 1\n",
            ),
            (
                "toml",
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\nextra = 1\n",
            ),
        ] {
            assert!(
                digest_init_data(&InitData {
                    format: format.into(),
                    body: body.into()
                })
                .is_err()
            );
        }
    }

    #[test]
    fn cert_table_lookup() {
        let mut table = Vec::new();
        table.extend_from_slice(&VCEK_GUID);
        table.extend_from_slice(&48u32.to_le_bytes());
        table.extend_from_slice(&3u32.to_le_bytes());
        table.extend_from_slice(&[0u8; 24]);
        table.extend_from_slice(b"DER");
        assert_eq!(find_endorsement_key(&table).as_deref(), Some(&b"DER"[..]));
        assert_eq!(find_endorsement_key(&[0u8; 24]), None);
    }

    #[test]
    fn sample_disabled_is_refused_kbs04() {
        let v = EvidenceVerifier::new(false, SnpSettings::default(), TdxSettings::default());
        let r = v.verify(
            Tee::Sample,
            &json!({"report_data": B64.encode([0u8; 48])}),
            &[0u8; 48],
            None,
            SystemTime::now(),
        );
        assert!(matches!(r, Err(VerifyError::SampleDisabled)));
        assert!(matches!(
            v.verify(Tee::Tdx, &json!({}), &[0u8; 48], None, SystemTime::now()),
            Err(VerifyError::TdxDisabled)
        ));
    }
}
