//! `coffer kbs get-resource`: attest to a key broker (KBS protocol 0.4.0) and print one resource.
//!
//! Runs where the evidence comes from: inside a TEE guest (`--tee snp|tdx`, or detection), or
//! anywhere with development-only sample evidence (`--tee sample`, which a broker refuses unless it
//! explicitly enables sample evidence and its policy admits it).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use coffer_attestation::attester::AttesterKind;
use coffer_attestation::kbs::client::{AuthMode, ClientConfig, KeyKind, fetch_resource};

#[derive(Debug, Subcommand)]
pub enum KbsCommand {
    /// Attest and print the resource at repo/type/tag to stdout.
    GetResource(GetResourceArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TeeArg {
    /// Detect the hardware TEE (an error when there is none).
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
    #[arg(long)]
    url: String,
    /// Resource path repo/type/tag.
    #[arg(long)]
    path: String,
    /// Evidence source.
    #[arg(long, value_enum, default_value = "detect")]
    tee: TeeArg,
    /// PEM CA certificate(s) for the broker's HTTPS certificate (no system roots are used).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Use an RSA-3072 TEE key (RSA-OAEP-256) instead of EC P-256 (ECDH-ES+A256KW).
    #[arg(long)]
    rsa: bool,
    /// Send the token as `Authorization: Bearer` instead of the session cookie.
    #[arg(long)]
    bearer: bool,
}

pub async fn run(command: KbsCommand) -> anyhow::Result<u8> {
    let KbsCommand::GetResource(args) = command;
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
    let tee = match args.tee {
        TeeArg::Detect => AttesterKind::Detect,
        TeeArg::Snp => AttesterKind::Snp,
        TeeArg::Tdx => AttesterKind::Tdx,
        TeeArg::Sample => AttesterKind::Sample,
    };
    let resource = fetch_resource(config, tee, &args.path)
        .await
        .with_context(|| format!("fetching {} from {}", args.path, args.url))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(resource.expose())
        .and_then(|()| stdout.flush())
        .context("writing the resource to stdout")?;
    Ok(0)
}
