//! `kbs-load --url URL [-c N] (-n TOTAL | --duration SECS)`: the load generator of
//! `coffer_attestation::kbs::load` (the same command line and output as `coffer kbs load`, which
//! is the same code) without the rest of the `coffer` CLI, for a machine that only drives load.
//!
//! Exit codes: 0 when every handshake succeeded, 3 when some failed, 1 on a usage or setup
//! error (2 on bad command-line syntax, clap).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use coffer_attestation::kbs::load::{LoadArgs, command};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load generator for KBS 0.4.0 brokers (the same as `coffer kbs load`)"
)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
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
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| Ok(runtime.block_on(command(&args.load))?));
    match outcome {
        Ok(report) if report.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("kbs-load: {e:#}");
            ExitCode::from(1)
        }
    }
}
