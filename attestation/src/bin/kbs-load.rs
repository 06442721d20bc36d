//! `kbs-load --url URL [-c N] (-n TOTAL | --duration SECS)`: drives a separate KBS 0.4.0 broker
//! (`coffer-kbs`, Trustee's KBS) with fresh clients, one handshake each (auth → attest with sample
//! evidence → one resource), and prints handshakes/s, latency percentiles, failures by kind, and
//! with `--server-pid` the broker's CPU per handshake and RSS, with `--nstat` the kernel's
//! listen-queue overflows. The broker must accept sample evidence and release `--resource` to it.
//!
//! Exit codes: 0 when every handshake succeeded, 3 when some failed, 1 on a usage or setup
//! error (2 on bad command-line syntax, clap).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use coffer_attestation::kbs::client::KeyKind;
use coffer_attestation::kbs::load::{LoadConfig, run};

/// Load generator for KBS 0.4.0 brokers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Broker base URL (http:// or https://).
    #[arg(long)]
    url: String,
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 64)]
    concurrency: usize,
    /// Handshakes to run in all.
    #[arg(short = 'n', long)]
    total: Option<u64>,
    /// Seconds to keep starting handshakes.
    #[arg(long)]
    duration: Option<u64>,
    /// Resource each handshake fetches.
    #[arg(long, default_value = "default/load/key")]
    resource: String,
    /// PEM CA certificate for HTTPS.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The broker's PID: report its CPU time per handshake and its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Report the kernel's ListenOverflows/ListenDrops delta (/proc/net/netstat).
    #[arg(long)]
    nstat: bool,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// TEE key type: ec or rsa.
    #[arg(long, default_value = "ec")]
    key: String,
    /// Print the report as JSON (progress lines still go to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run_load(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("kbs-load: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_load(args: &Args) -> anyhow::Result<bool> {
    let ca_cert_pem = args
        .cert
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let key = match args.key.as_str() {
        "ec" => KeyKind::Ec,
        "rsa" => KeyKind::Rsa,
        other => anyhow::bail!("--key {other:?}: ec or rsa"),
    };
    let config = LoadConfig {
        url: args.url.clone(),
        ca_cert_pem,
        resource: args
            .resource
            .parse()
            .with_context(|| format!("--resource {:?}", args.resource))?,
        concurrency: args.concurrency,
        total: args.total,
        duration: args.duration.map(Duration::from_secs),
        server_pid: args.server_pid,
        nstat: args.nstat,
        sample_every: Duration::from_secs(args.sample_secs.max(1)),
        timeout: Duration::from_secs(args.timeout.max(1)),
        key,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(run(config, |s| {
        let rss = s
            .server_rss_kib
            .map_or(String::new(), |r| format!(", server rss {r} KiB"));
        let cpu = s.server_cpu_ms_per_handshake.map_or(String::new(), |c| {
            format!(", server cpu {c:.3} ms/handshake")
        });
        let load = s
            .load_1m
            .map_or(String::new(), |l| format!(", load {l:.2}"));
        eprintln!(
            "{:>7.1} s: {} ok, {} failed, {:.1}/s{rss}{cpu}{load}",
            s.secs, s.ok, s.failed, s.rate
        );
    }))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{report}");
    }
    Ok(report.failed == 0)
}
