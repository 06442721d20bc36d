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

/// Endpoints and examples, for `--help`.
const AFTER_HELP: &str = "\
Endpoints (KBS protocol 0.4.0, HTTPS unless http.insecure_http):
  POST /kbs/v0/auth, POST /kbs/v0/attest    the attestation handshake (RCAR)
  GET  /kbs/v0/resource/REPO/TYPE/TAG       a resource, to an attested client its policy admits
  POST /kbs/v0/identity                     a workload identity certificate ([identity])
  POST /kbs/v0/resource/REPO/TYPE/TAG       admin: store a resource (raw bytes)
  POST /kbs/v0/resource-policy              admin: replace the resource policy
  POST /kbs/v0/reference-values             admin: set the SNP reference measurements
  GET  /health                              {\"status\": \"ok\"} while serving
  GET  /metrics                             Prometheus text: handshakes, releases, refusals,
                                            sessions, connections (coffer_kbs_*)

Logging: COFFER_LOG (RUST_LOG when unset), e.g. COFFER_LOG=debug; default info.

Examples:
  coffer-kbs --config /etc/coffer/kbs.toml
  curl --cacert ca.pem https://127.0.0.1:8080/health
  coffer kbs get-resource --kbs-url https://127.0.0.1:8080 --kbs-ca ca.pem --path default/key/1
";

/// The Coffer key broker: releases secrets (keys, registry credentials, workload identities) to
/// guests that attest with SEV-SNP or TDX evidence its policy admits (KBS protocol 0.4.0).
#[derive(Debug, Parser)]
#[command(name = "coffer-kbs", version, after_help = AFTER_HELP)]
struct Args {
    /// TOML configuration file (see attestation/coffer-kbs.toml for every key and default).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match coffer_log::filter("info") {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("coffer-kbs: {}", coffer_log::error_line(&e));
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(coffer_log::ansi_on_stderr())
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-kbs: {}", coffer_log::error_line(e.as_ref()));
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
