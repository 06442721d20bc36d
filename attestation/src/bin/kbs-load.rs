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
    name = "kbs-load",
    version,
    about = "Load generator for KBS 0.4.0 brokers (the same as `coffer kbs load`)"
)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match coffer_log::filter("error") {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("kbs-load: {}", coffer_log::error_line(&e));
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(coffer_log::ansi_on_stderr())
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
            eprintln!("kbs-load: {}", coffer_log::error_line(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
