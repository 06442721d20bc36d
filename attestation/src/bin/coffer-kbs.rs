//! `coffer-kbs --config FILE`: the Coffer key broker (KBS protocol 0.4.0).
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 on a configuration or startup error,
//! 2 on bad command-line usage (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use coffer_attestation::kbs::server::config::Config;
use coffer_attestation::kbs::server::{Broker, bind, serve, tls_config_from_pem};

/// Coffer key broker service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see attestation/coffer-kbs.toml for every key and default).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-kbs: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    raise_fd_limit(config.http.max_connections);
    let broker = Broker::from_config(&config).context("cannot build the broker")?;
    let tls = if config.http.insecure_http {
        None
    } else {
        let (cert, key) = config
            .http
            .tls_cert
            .as_ref()
            .zip(config.http.tls_key.as_ref())
            .context("https needs http.tls_cert and http.tls_key")?;
        let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        Some(tls_config_from_pem(&cert, &key)?)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = bind(&config.http)
            .with_context(|| format!("cannot listen on {}", config.http.listen))?;
        serve(listener, tls, broker, shutdown_signal())
            .await
            .context("server failed")
    })
}

/// File descriptors beyond the connections: the listener, resource and key files, the runtime.
const FD_RESERVE: u64 = 256;

/// Raises the soft open-file limit towards the hard one so that `max_connections` can be open;
/// warns when the hard limit is lower (connections beyond it fail at accept, which the server
/// survives).
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(FD_RESERVE);
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < wanted => {
            let target = wanted.min(hard);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
            } else if target < wanted {
                tracing::warn!(
                    limit = target,
                    wanted,
                    "open-file hard limit is below http.max_connections + {FD_RESERVE}"
                );
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down");
}
