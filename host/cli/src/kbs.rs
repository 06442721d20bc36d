//! `coffer kbs …`: the key broker (KBS protocol 0.4.0) from a client's side.
//!
//! - `get-resource`: attest and print one resource. Runs where the evidence comes from: inside a
//!   TEE guest (`--tee snp|tdx`, or detection), or anywhere with development-only sample evidence
//!   (`--tee sample`, which a broker refuses unless it explicitly enables sample evidence and its
//!   policy admits it).
//! - `check`: the conformance and hostile-input check of any KBS 0.4.0 broker
//!   (`coffer_attestation::kbs::check`): one line per case, a summary; exit 1 when a case failed.
//! - `load`: the load generator `coffer_attestation::kbs::load` (the same code and command line
//!   as `kbs-load`); exit 1 when a handshake failed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use coffer_attestation::attester::{Attester, AttesterKind, attester_for};
use coffer_attestation::kbs::check::{self, CheckConfig};
use coffer_attestation::kbs::client::{AuthMode, ClientConfig, KbsClient, KeyKind, fetch_resource};
use coffer_attestation::kbs::load::{self, LoadArgs};
use zeroize::Zeroizing;

/// Exit code when what was checked failed: a `kbs check` case, a `kbs load` handshake.
pub const EXIT_FAILED: u8 = 1;

#[derive(Debug, Subcommand)]
pub enum KbsCommand {
    /// Attest and print the resource at repo/type/tag to stdout.
    #[command(after_help = crate::examples::KBS_GET_RESOURCE)]
    GetResource(GetResourceArgs),
    /// Check a KBS 0.4.0 broker (coffer-kbs, Trustee): protocol conformance, and the hostile
    /// requests it must refuse (replays, crossed sessions, swapped keys, report_data mismatch,
    /// a switched TEE, path traversal, oversized bodies, admin writes without a token). One line
    /// per case (pass, FAIL, n/a with the reason) and a summary; exit 0 when no case failed, 1
    /// when one did.
    #[command(after_help = crate::examples::KBS_CHECK)]
    Check(CheckArgs),
    /// Drive a KBS 0.4.0 broker with `-c` concurrent clients, one fresh handshake each (auth,
    /// attest with sample evidence, one resource), until `-n` handshakes or `--duration`: prints
    /// handshakes/s, latency percentiles and failures by kind; with `--server-pid` the broker's
    /// CPU per handshake and RSS. The broker must accept sample evidence and release
    /// `--resource` to it. Exit 1 when a handshake failed. (The same as `kbs-load`.)
    #[command(after_help = crate::examples::KBS_LOAD)]
    Load(LoadArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TeeArg {
    /// This machine's TEE, detected (an error when there is none).
    #[value(name = "tee", alias = "detect")]
    Detect,
    /// SEV-SNP (configfs-tsm).
    Snp,
    /// TDX (configfs-tsm).
    Tdx,
    /// Development-only sample evidence.
    Sample,
}

#[derive(Debug, Args)]
pub struct GetResourceArgs {
    /// Broker URL, e.g. https://kbs.example:8080.
    #[arg(long = "kbs-url", alias = "url", value_name = "URL")]
    url: String,
    /// Resource path repo/type/tag.
    #[arg(long)]
    path: String,
    /// Evidence for the broker: tee (this machine's TEE, an error if none), snp, tdx, or
    /// development-only sample.
    #[arg(
        long = "kbs-evidence",
        alias = "tee",
        value_enum,
        default_value = "tee"
    )]
    tee: TeeArg,
    /// PEM CA certificate(s) for the broker's HTTPS certificate (no system roots are used).
    #[arg(long = "kbs-ca", alias = "cert", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// Use an RSA-3072 TEE key (RSA-OAEP-256) instead of EC P-256 (ECDH-ES+A256KW).
    #[arg(long)]
    rsa: bool,
    /// Send the token as `Authorization: Bearer` instead of the session cookie.
    #[arg(long)]
    bearer: bool,
    /// Forge the `--kbs-evidence snp|tdx` evidence with the test chain in DIR (`coffer attestation
    /// testing-ca`), with the fields below: for a broker whose [testing] section trusts it
    /// (development and CI only).
    #[arg(long, value_name = "DIR")]
    testing_ca: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Forged evidence (with --testing-ca)")]
    fields: crate::forge::FieldArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CheckTeeArg {
    /// Development-only sample evidence (works anywhere; the broker must accept it for the
    /// cases that need accepted evidence).
    Sample,
    /// SEV-SNP evidence (inside an SNP guest).
    Snp,
    /// TDX evidence (inside a TDX guest).
    Tdx,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Broker URL, e.g. https://kbs.example:8080.
    #[arg(long = "kbs-url", alias = "url", value_name = "URL")]
    url: String,
    /// PEM CA certificate(s) for the broker's HTTPS certificate (no system roots are used).
    #[arg(long = "kbs-ca", alias = "cert", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// A resource repo/type/tag the broker releases to the evidence used: the JWE cases fetch
    /// and decrypt it.
    #[arg(long)]
    resource: Option<String>,
    /// File holding an admin token (a JWT the broker's admin key verifies): the check then writes
    /// the resource coffer-check/probe/1 and fetches it (and decrypts it to what it wrote).
    #[arg(long, value_name = "FILE")]
    admin_token: Option<PathBuf>,
    /// Evidence for the broker.
    #[arg(
        long = "kbs-evidence",
        alias = "tee",
        value_enum,
        default_value = "sample"
    )]
    tee: CheckTeeArg,
    /// Forge the `--kbs-evidence snp|tdx` evidence with the test chain in DIR (`coffer attestation
    /// testing-ca`), with the fields below: checks a broker configured as in production plus a
    /// [testing] section trusting that chain, hostile cases included, without TEE hardware.
    #[arg(long, value_name = "DIR")]
    testing_ca: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Forged evidence (with --testing-ca)")]
    fields: crate::forge::FieldArgs,
    /// The broker is a development broker that accepts sample evidence on purpose: a resource
    /// released to sample evidence is then not a failure.
    #[arg(long)]
    allow_sample: bool,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: KbsCommand) -> anyhow::Result<u8> {
    match command {
        KbsCommand::GetResource(args) => get_resource(args).await,
        KbsCommand::Check(args) => check(args).await,
        KbsCommand::Load(args) => {
            let report = load::command(&args)
                .await
                .with_context(|| format!("load on {}", args.url))?;
            Ok(if report.failed == 0 { 0 } else { EXIT_FAILED })
        }
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let attester: Arc<dyn Attester> = match (&args.testing_ca, args.tee) {
        (Some(ca), CheckTeeArg::Snp) => {
            Arc::new(args.fields.attester(crate::attestation::Tee::Snp, ca)?)
        }
        (Some(ca), CheckTeeArg::Tdx) => {
            Arc::new(args.fields.attester(crate::attestation::Tee::Tdx, ca)?)
        }
        (Some(_), CheckTeeArg::Sample) => {
            anyhow::bail!("--testing-ca forges --tee snp or --tee tdx evidence")
        }
        (None, tee) => {
            if args.fields != crate::forge::FieldArgs::default() {
                anyhow::bail!("the evidence fields need --testing-ca");
            }
            Arc::from(
                attester_for(match tee {
                    CheckTeeArg::Sample => AttesterKind::Sample,
                    CheckTeeArg::Snp => AttesterKind::Snp,
                    CheckTeeArg::Tdx => AttesterKind::Tdx,
                })
                .context("the evidence source")?,
            )
        }
    };
    let mut config = CheckConfig::new(args.url.clone(), attester);
    if let Some(path) = &args.cert {
        config.ca_cert_pem =
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    if let Some(resource) = &args.resource {
        config.resource = Some(
            resource
                .parse()
                .with_context(|| format!("--resource {resource:?}"))?,
        );
    }
    if let Some(path) = &args.admin_token {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        config.admin_token = Some(Zeroizing::new(text.trim().to_owned()));
    }
    config.allow_sample = args.allow_sample;
    config.timeout = Duration::from_secs(args.timeout.max(1));
    let report = check::run(config)
        .await
        .with_context(|| format!("checking {}", args.url))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.failed == 0 { 0 } else { EXIT_FAILED })
}

async fn get_resource(args: GetResourceArgs) -> anyhow::Result<u8> {
    let mut config = ClientConfig::new(args.url.clone());
    if let Some(path) = &args.cert {
        config.ca_cert_pem =
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    if args.rsa {
        config.key = KeyKind::Rsa;
    }
    if args.bearer {
        config.auth = AuthMode::Bearer;
    }
    let resource = match &args.testing_ca {
        Some(ca) => {
            let tee = match args.tee {
                TeeArg::Snp => crate::attestation::Tee::Snp,
                TeeArg::Tdx => crate::attestation::Tee::Tdx,
                TeeArg::Detect | TeeArg::Sample => {
                    anyhow::bail!("--testing-ca forges --tee snp or --tee tdx evidence")
                }
            };
            let attester: Arc<dyn Attester> = Arc::new(args.fields.attester(tee, ca)?);
            let path = args
                .path
                .parse()
                .with_context(|| format!("--path {:?}", args.path))?;
            KbsClient::new(config, attester)?.get_resource(&path).await
        }
        None => {
            if args.fields != crate::forge::FieldArgs::default() {
                anyhow::bail!("the evidence fields need --testing-ca");
            }
            let tee = match args.tee {
                TeeArg::Detect => AttesterKind::Detect,
                TeeArg::Snp => AttesterKind::Snp,
                TeeArg::Tdx => AttesterKind::Tdx,
                TeeArg::Sample => AttesterKind::Sample,
            };
            fetch_resource(config, tee, &args.path).await
        }
    }
    .with_context(|| format!("fetching {} from {}", args.path, args.url))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(resource.expose())
        .and_then(|()| stdout.flush())
        .context("writing the resource to stdout")?;
    Ok(0)
}
