//! `coffer attestation verify`: checks SEV-SNP or TDX evidence offline with the verifiers of
//! `coffer-attestation` and prints the verified claims as JSON (exit 0), or the reason for the
//! refusal (exit 1). Unreadable input files are failures of Coffer itself (exit 125). With
//! `--testing-ca DIR` the verifiers also trust that test chain (the same checks).
//!
//! `coffer attestation testing-ca` and `forge` make test evidence ([`crate::forge`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use coffer_attestation::snp::{self, SnpPolicy, SnpVerifier, TcbVersion};
use coffer_attestation::tdx::ccel::EventLog;
use coffer_attestation::tdx::{self, Collateral, TdQuote, TdxPolicy, TdxVerifier};
use coffer_attestation::testing::TestChainRoots;
use serde_json::{Value, json};

/// Exit code when the evidence is refused.
pub const EXIT_REFUSED: u8 = 1;
/// Largest evidence file read (a TDX quote is ~5 KiB; an SNP report in hex ~2.4 KiB).
const MAX_EVIDENCE_LEN: u64 = 256 * 1024;
/// Largest CCEL event log read (the ACPI CCEL area is typically 64 KiB .. 1 MiB).
const MAX_EVENT_LOG_LEN: u64 = 4 * 1024 * 1024;

/// `coffer attestation …`
#[derive(Debug, Subcommand)]
pub enum AttestationCommand {
    /// Verify TEE evidence offline; print the verified claims as JSON or the refusal reason.
    #[command(after_help = crate::examples::ATTESTATION_VERIFY)]
    Verify(VerifyArgs),
    /// Write a TEST chain standing in for AMD's (SNP ARK/ASK) and Intel's (TDX root, PCK chain,
    /// collateral), for forged evidence (development and CI only: whoever holds it can forge any
    /// measurement; a broker trusts it only when its [testing] section names it).
    #[command(after_help = crate::examples::ATTESTATION_TESTING_CA)]
    TestingCa(crate::forge::TestingCaArgs),
    /// Write an SNP report or TDX quote with chosen fields (measurement, policy bits, TCB, host
    /// data, report_data) signed by a test chain, and the evidence JSON a guest sends.
    #[command(after_help = crate::examples::ATTESTATION_FORGE)]
    Forge(crate::forge::ForgeArgs),
}

/// The TEE that produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Tee {
    /// AMD SEV-SNP attestation report (raw 1184 bytes or hex).
    Snp,
    /// Intel TDX DCAP quote (v4/v5).
    Tdx,
}

/// Arguments of `coffer attestation verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The TEE that produced the evidence.
    #[arg(long, value_enum)]
    pub tee: Tee,
    /// Evidence file: SNP report (raw or hex) or TDX quote.
    #[arg(long)]
    pub evidence: PathBuf,
    /// SNP: the VCEK or VLEK (DER) that signed the report.
    #[arg(long)]
    pub vcek: Option<PathBuf>,
    /// TDX: collateral JSON (QuoteCollateralV3), or a directory of `<FMSPC>.json` files.
    #[arg(long)]
    pub collateral: Option<PathBuf>,
    /// Check certificates and collateral at this Unix time instead of now.
    #[arg(long)]
    pub now: Option<u64>,
    /// Expected report_data / REPORTDATA (64 bytes hex; shorter values are not padded).
    #[arg(long)]
    pub report_data: Option<String>,
    /// Expected init-data digest: SNP HOSTDATA (32 bytes hex) or TDX MRCONFIGID (48 bytes hex).
    #[arg(long)]
    pub init_data_digest: Option<String>,
    /// SNP: accept a report signed by a VLEK (default: VCEK only).
    #[arg(long)]
    pub allow_vlek: bool,
    /// TDX: the CCEL event log; it must replay to the quote's RTMR0..3.
    #[arg(long)]
    pub event_log: Option<PathBuf>,
    /// TDX: check only the quote's signatures and PCK chain, without collateral (no TCB status,
    /// no revocation). The claims say so.
    #[arg(long, conflicts_with = "collateral")]
    pub signature_only: bool,
    /// Trust the test chain in DIR too (`coffer attestation testing-ca`); the claims say
    /// `testing_root` when it certified the evidence.
    #[arg(long, value_name = "DIR")]
    pub testing_ca: Option<PathBuf>,
}

/// Runs the command; `Ok(exit code)`.
pub fn run(command: AttestationCommand) -> anyhow::Result<u8> {
    match command {
        AttestationCommand::Verify(args) => verify(&args),
        AttestationCommand::TestingCa(args) => crate::forge::testing_ca(&args),
        AttestationCommand::Forge(args) => crate::forge::forge(&args),
    }
}

fn testing_roots(args: &VerifyArgs) -> anyhow::Result<Option<TestChainRoots>> {
    args.testing_ca
        .as_deref()
        .map(|dir| {
            TestChainRoots::load(dir)
                .with_context(|| format!("the test chain in {}", dir.display()))
        })
        .transpose()
}

fn verify(args: &VerifyArgs) -> anyhow::Result<u8> {
    let now = match args.now {
        Some(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        None => SystemTime::now(),
    };
    let evidence = read_bounded(&args.evidence, MAX_EVIDENCE_LEN)?;
    let outcome = match args.tee {
        Tee::Snp => verify_snp(args, &evidence, now)?,
        Tee::Tdx => verify_tdx(args, &evidence, now)?,
    };
    match outcome {
        Ok(mut claims) => {
            claims["now"] = json!(unix(now));
            println!("{}", serde_json::to_string_pretty(&claims)?);
            Ok(0)
        }
        Err(refusal) => {
            eprintln!("coffer: attestation refused: {refusal:#}");
            Ok(EXIT_REFUSED)
        }
    }
}

/// The verdict: claims, or the refusal (the outer `Result` is for Coffer's own failures).
type Verdict = Result<Value, anyhow::Error>;

fn verify_snp(args: &VerifyArgs, evidence: &[u8], now: SystemTime) -> anyhow::Result<Verdict> {
    if args.collateral.is_some() || args.signature_only || args.event_log.is_some() {
        bail!("--collateral, --signature-only and --event-log are for --tee tdx");
    }
    let vcek_path = args
        .vcek
        .as_deref()
        .context("--tee snp needs --vcek FILE (the VCEK or VLEK in DER)")?;
    let vcek = read_bounded(vcek_path, MAX_EVIDENCE_LEN)?;
    let testing: Vec<_> = testing_roots(args)?
        .and_then(|t| t.snp)
        .into_iter()
        .collect();
    // The endorsement key first, so that an expired or foreign VCEK/VLEK is the reason given.
    if let Err(e) = snp::verify_endorsement_key_in(&vcek, now, &testing) {
        return Ok(Err(anyhow!(e).context("snp endorsement key")));
    }
    let report_bytes = match snp_report_bytes(evidence) {
        Ok(bytes) => bytes,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let report = match snp::Report::parse(&report_bytes) {
        Ok(report) => report,
        Err(e) => return Ok(Err(anyhow!(e).context("snp evidence"))),
    };
    let expected = snp::Expected {
        report_data: match hex_arg::<64>("--report-data", args.report_data.as_deref()) {
            Ok(v) => v.unwrap_or(report.report_data),
            Err(refusal) => return Ok(Err(refusal)),
        },
        host_data: match hex_arg::<32>("--init-data-digest", args.init_data_digest.as_deref()) {
            Ok(v) => v,
            Err(refusal) => return Ok(Err(refusal)),
        },
    };
    let policy = SnpPolicy {
        allow_vlek: args.allow_vlek,
        ..SnpPolicy::default()
    };
    let verifier = SnpVerifier::new(policy).trusting_testing_roots(testing);
    let verified = match verifier.verify(&report_bytes, &vcek, now, &expected) {
        Ok(v) => v,
        Err(e) => return Ok(Err(anyhow!(e).context("snp evidence"))),
    };
    let r = &verified.report;
    let turin = verified.generation == snp::Generation::Turin;
    Ok(Ok(json!({
        "tee": "snp",
        "verified": true,
        "report_version": r.version,
        "generation": verified.generation.name(),
        "signer": verified.signer.to_string(),
        "testing_root": verified.testing,
        "measurement": hex::encode(r.measurement),
        "report_data": hex::encode(r.report_data),
        "report_data_checked": args.report_data.is_some(),
        "host_data": hex::encode(r.host_data),
        "init_data_checked": args.init_data_digest.is_some(),
        "policy": format!("{:#x}", r.policy.raw),
        "debug_allowed": r.policy.debug_allowed,
        "migrate_ma_allowed": r.policy.migrate_ma_allowed,
        "vmpl": r.vmpl,
        "guest_svn": r.guest_svn,
        "reported_tcb": tcb_json(&TcbVersion::decode(r.reported_tcb.raw, turin)),
        "launch_tcb": tcb_json(&TcbVersion::decode(r.launch_tcb.raw, turin)),
        "chip_id": hex::encode(r.chip_id),
    })))
}

fn tcb_json(tcb: &TcbVersion) -> Value {
    json!({
        "fmc": tcb.fmc,
        "bootloader": tcb.bootloader,
        "tee": tcb.tee,
        "snp": tcb.snp,
        "microcode": tcb.microcode,
    })
}

/// The raw report: exactly 1184 bytes as given, or hex text (whitespace ignored).
fn snp_report_bytes(evidence: &[u8]) -> Result<Vec<u8>, anyhow::Error> {
    if evidence.len() == snp::REPORT_LEN {
        return Ok(evidence.to_vec());
    }
    let text: String = std::str::from_utf8(evidence)
        .map_err(|_| {
            anyhow!(
                "snp evidence is neither a {}-byte report nor hex text",
                snp::REPORT_LEN
            )
        })?
        .split_whitespace()
        .collect();
    hex::decode(text).context("snp evidence is neither a raw report nor valid hex")
}

fn verify_tdx(args: &VerifyArgs, quote: &[u8], now: SystemTime) -> anyhow::Result<Verdict> {
    if args.vcek.is_some() || args.allow_vlek {
        bail!("--vcek and --allow-vlek are for --tee snp");
    }
    let event_log = match &args.event_log {
        Some(path) => Some(read_bounded(path, MAX_EVENT_LOG_LEN)?),
        None => None,
    };
    let parsed = match TdQuote::parse(quote) {
        Ok(parsed) => parsed,
        Err(e) => return Ok(Err(anyhow!(e).context("tdx evidence"))),
    };
    let expected = tdx::Expected {
        report_data: match hex_arg::<64>("--report-data", args.report_data.as_deref()) {
            Ok(v) => v.unwrap_or(parsed.report.report_data),
            Err(refusal) => return Ok(Err(refusal)),
        },
        mr_config_id: match hex_arg::<48>("--init-data-digest", args.init_data_digest.as_deref()) {
            Ok(v) => v,
            Err(refusal) => return Ok(Err(refusal)),
        },
    };
    let testing_root = testing_roots(args)?.and_then(|t| t.tdx_root_der);
    let mut verifier = TdxVerifier::new(TdxPolicy::default());
    if let Some(root) = &testing_root {
        verifier = verifier.trusting_testing_root(root.clone());
    }
    let result = match (&args.collateral, args.signature_only) {
        (Some(path), _) => {
            let fmspc = match tdx::verify_pck_chain_in(&parsed, now, testing_root.as_deref()) {
                Ok((_, pck)) => pck.fmspc,
                Err(e) => return Ok(Err(anyhow!(e).context("tdx evidence"))),
            };
            let collateral = match Collateral::load(path, &fmspc) {
                Ok(c) => c,
                Err(e) => return Ok(Err(anyhow!(e).context("tdx collateral"))),
            };
            verifier.verify(quote, &collateral, now, &expected)
        }
        (None, true) => verifier.verify_signature_only(quote, now, &expected),
        (None, false) => {
            bail!(
                "--tee tdx needs --collateral FILE|DIR (or --signature-only to check only the \
                 quote's signatures and PCK chain)"
            )
        }
    };
    let verified = match result {
        Ok(v) => v,
        Err(e) => return Ok(Err(anyhow!(e).context("tdx evidence"))),
    };
    let r = &verified.quote.report;
    let events = match event_log.as_deref().map(EventLog::parse) {
        None => None,
        Some(Ok(log)) => match log.check_against(r) {
            Ok(()) => Some(log.events.len()),
            Err(e) => return Ok(Err(anyhow!(e).context("tdx event log"))),
        },
        Some(Err(e)) => return Ok(Err(anyhow!(e).context("tdx event log"))),
    };
    let (verification, tcb_status, advisories) = match &verified.tcb {
        Some(tcb) => (
            "collateral",
            Value::from(tcb.status.as_str()),
            json!(tcb.advisory_ids),
        ),
        None => ("signature-only", Value::Null, Value::Null),
    };
    Ok(Ok(json!({
        "tee": "tdx",
        "verified": true,
        "verification": verification,
        "testing_root": verified.pck.testing,
        "quote_version": verified.quote.version,
        "tcb_status": tcb_status,
        "advisory_ids": advisories,
        "fmspc": hex::encode_upper(verified.pck.fmspc),
        "mr_td": hex::encode(r.mr_td),
        "rtmr": r.rtmr.iter().map(hex::encode).collect::<Vec<_>>(),
        "mr_seam": hex::encode(r.mr_seam),
        "mr_config_id": hex::encode(r.mr_config_id),
        "init_data_checked": args.init_data_digest.is_some(),
        "report_data": hex::encode(r.report_data),
        "report_data_checked": args.report_data.is_some(),
        "td_attributes": format!("{:#018x}", r.td_attributes.raw),
        "xfam": hex::encode(r.xfam),
        "tee_tcb_svn": hex::encode(r.tee_tcb_svn),
        "mr_service_td": r.mr_service_td.map(hex::encode),
        "event_log_events_replayed": events,
    })))
}

/// Parses an optional hex argument of exactly `N` bytes (no padding, no truncation).
fn hex_arg<const N: usize>(
    flag: &str,
    value: Option<&str>,
) -> Result<Option<[u8; N]>, anyhow::Error> {
    let Some(text) = value else {
        return Ok(None);
    };
    let bytes = hex::decode(text.trim()).with_context(|| format!("{flag} is not hex"))?;
    let found = bytes.len();
    <[u8; N]>::try_from(bytes)
        .map(Some)
        .map_err(|_| anyhow!("{flag} has {found} bytes, expected exactly {N}"))
}

fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > limit {
        bail!(
            "{} has {len} bytes, more than the limit of {limit}",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_args_are_exact_length() {
        assert_eq!(hex_arg::<2>("--x", None).ok(), Some(None));
        assert_eq!(
            hex_arg::<2>("--x", Some("abcd")).ok(),
            Some(Some([0xab, 0xcd]))
        );
        assert!(hex_arg::<2>("--x", Some("ab")).is_err());
        assert!(hex_arg::<2>("--x", Some("abcdef")).is_err());
        assert!(hex_arg::<2>("--x", Some("zz")).is_err());
    }

    #[test]
    fn snp_evidence_raw_or_hex() {
        let raw = vec![7u8; snp::REPORT_LEN];
        assert_eq!(snp_report_bytes(&raw).ok(), Some(raw.clone()));
        let text = format!("{}\n", hex::encode(&raw));
        assert_eq!(snp_report_bytes(text.as_bytes()).ok(), Some(raw));
        assert!(snp_report_bytes(b"\xff\xfe").is_err());
    }
}
