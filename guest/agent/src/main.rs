//! `coffer-agent` binary: parse → (PID 1: bring the guest up) → tracing → serve.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coffer_agent::policy::{Gate, RegoPolicy};
use coffer_agent::reaper::Reaper;
use coffer_agent::{Agent, AgentConfig, init, oci};

/// Where to listen.
#[derive(Debug, Clone)]
enum Listen {
    Vsock(u32),
    Unix(PathBuf),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(port) = s.strip_prefix("vsock:") {
        port.parse()
            .map(Listen::Vsock)
            .map_err(|e| format!("vsock port: {e}"))
    } else if let Some(path) = s.strip_prefix("unix:") {
        Ok(Listen::Unix(PathBuf::from(path)))
    } else {
        Err("expected vsock:PORT or unix:PATH".into())
    }
}

#[derive(Debug, Parser)]
#[command(name = "coffer-agent", version, about = "Coffer guest agent")]
struct Cli {
    /// vsock:PORT or unix:PATH.
    #[arg(long, value_parser = parse_listen, default_value = "vsock:1024")]
    listen: Listen,
    /// State directory (containers, uploads, runtime state).
    #[arg(long, default_value = "/run/coffer")]
    state_dir: PathBuf,
    /// Rego policy file (package coffer.policy). Default: the built-in sandbox.rego.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Largest rootfs upload, bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_rootfs_bytes: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: run one OCI runtime operation (used by the agent itself).
    #[command(hide = true)]
    Oci(oci::HelperArgs),
}

fn main() -> ExitCode {
    let is_init = std::process::id() == 1;
    let cli = Cli::parse();
    if let Some(Command::Oci(args)) = cli.command {
        return ExitCode::from(u8::try_from(oci::helper_main(args)).unwrap_or(1));
    }
    if is_init {
        eprintln!("{} (uptime {})", init::INIT_MARKER, init::uptime());
        if let Err(err) = init::boot() {
            eprintln!("coffer-agent: guest init failed: {err}");
            init::power_off();
        }
        eprintln!("coffer-agent: guest up (uptime {})", init::uptime());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let result = run(cli, is_init);
    if let Err(err) = &result {
        tracing::error!("{err:#}");
    }
    if is_init {
        // PID 1 must never exit: the kernel would panic. Power off instead.
        init::power_off();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn run(cli: Cli, is_init: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let reaper = Reaper::start().context("installing the SIGCHLD handler")?;
        if !is_init {
            nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
        }
        // A policy that cannot be loaded means no service: never a fallback policy.
        let policy = match &cli.policy {
            Some(path) => {
                let source = std::fs::read_to_string(path)
                    .with_context(|| format!("reading policy {}", path.display()))?;
                RegoPolicy::load(&path.display().to_string(), &source, None)
            }
            None => RegoPolicy::sandbox_default(),
        }
        .context("loading the agent policy")?;
        tracing::info!(policy = policy.name(), "policy loaded");
        let config = AgentConfig {
            state_dir: cli.state_dir,
            helper_exe: std::env::current_exe().context("locating the agent binary")?,
            is_init,
            max_rootfs_bytes: cli.max_rootfs_bytes,
        };
        let agent = Agent::new(config, Gate::new(Box::new(policy)), reaper)?;
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
        };
        match cli.listen {
            Listen::Vsock(port) => {
                let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
                let listener = tokio_vsock::VsockListener::bind(addr)
                    .with_context(|| format!("binding vsock port {port}"))?;
                tracing::info!(port, "listening on vsock");
                eprintln!("{} (uptime {})", init::READY_MARKER, init::uptime());
                coffer_agent::serve(agent, listener.incoming(), shutdown).await?;
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path)
                    .with_context(|| format!("binding {}", path.display()))?;
                tracing::info!(path = %path.display(), "listening on unix socket");
                eprintln!("{} (uptime {})", init::READY_MARKER, init::uptime());
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                coffer_agent::serve(agent, incoming, shutdown).await?;
            }
        }
        Ok(())
    })
}
