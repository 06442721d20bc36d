//! `coffer-agent` binary: parse → (PID 1: bring the guest up) → tracing → serve.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coffer_agent::boot_times::{self, Step};
use coffer_agent::initdata::{self, Tee};
use coffer_agent::policy::{Gate, RegoPolicy};
use coffer_agent::reaper::Reaper;
use coffer_agent::{Agent, AgentConfig, init, oci};
use coffer_initdata::{Entry, Initdata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    /// Rego policy file (package coffer.policy). Default: initdata's policy, else the built-in
    /// sandbox.rego (confidential.rego in a TEE).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Initdata disk or image file. Default (as PID 1): the disk with serial `coffer-initdata`.
    #[arg(long)]
    initdata: Option<PathBuf>,
    /// Expected initdata digest (`sha256:HEX`…). As PID 1 it comes from `coffer.initdata=` on
    /// the kernel command line; when given, initdata is required and must match.
    #[arg(long)]
    initdata_digest: Option<coffer_initdata::Digest>,
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
    // The console is the host's to read: dependencies' DEBUG/TRACE output is never let through,
    // whatever COFFER_LOG (which the kernel command line can set) asks for.
    let levels = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(levels.and(filter_fn(coffer_image::logging::may_log))),
        )
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
        // On vsock the listener is bound and the host told first, so that the host's side of
        // connecting (the hop through its vsock backend, the HTTP/2 preface, the first request)
        // overlaps the loading below: its connection waits in the listen backlog, and nothing
        // is accepted, let alone served, before the policy is in place. A unix socket (tools and
        // tests on the same machine) appears only once the agent can serve.
        let listen = cli.listen.clone();
        let early = match &listen {
            Listen::Vsock(_) => {
                let listener = Listener::bind(&listen).await?;
                boot_times::mark(Step::Listening);
                // The host connects only after this (PROTOCOL.md, "Start-up").
                tokio::spawn(async {
                    if coffer_agent::ready::announce().await {
                        boot_times::mark(Step::Announced);
                    }
                });
                Some(listener)
            }
            Listen::Unix(_) => None,
        };
        // Initdata and the policy are settled before anything is served: any failure means no
        // service, never a fallback policy. They load here, on block_on's own thread (not a
        // worker: the workers meanwhile announce, and the host's connection waits in the
        // backlog), rather than on a blocking-pool thread whose creation would be paid for
        // nothing (~10 ms of a TCG boot).
        let settled = settle(cli, is_init)?;
        let listener = match early {
            Some(listener) => listener,
            None => Listener::bind(&listen).await?,
        };
        let agent = Agent::new(
            settled.config,
            Gate::new(Box::new(settled.policy)),
            reaper,
            std::sync::Arc::new(coffer_agent::host::GuestHost::new(is_init)),
        )?;
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
        eprintln!("{} (uptime {})", init::READY_MARKER, init::uptime());
        match listener {
            Listener::Vsock(listener) => {
                coffer_agent::serve(agent, listener.incoming(), shutdown).await?;
            }
            Listener::Unix(listener) => {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                coffer_agent::serve(agent, incoming, shutdown).await?;
            }
        }
        Ok(())
    })
}

/// The agent's bound listener.
enum Listener {
    Vsock(tokio_vsock::VsockListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn bind(listen: &Listen) -> anyhow::Result<Self> {
        match listen {
            Listen::Vsock(port) => {
                let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
                let listener = tokio_vsock::VsockListener::bind(addr)
                    .with_context(|| format!("binding vsock port {port}"))?;
                tracing::info!(port, "listening on vsock");
                Ok(Self::Vsock(listener))
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let listener = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("binding {}", path.display()))?;
                tracing::info!(path = %path.display(), "listening on unix socket");
                Ok(Self::Unix(listener))
            }
        }
    }
}

/// What the agent serves with, settled from initdata and the command line.
struct Settled {
    config: AgentConfig,
    policy: RegoPolicy,
}

/// Loads initdata, the policy and the guest-pull configuration (blocking: the disk scan, the
/// policy's analysis).
fn settle(cli: Cli, is_init: bool) -> anyhow::Result<Settled> {
    let tee = detect_tee(is_init);
    let initdata = load_initdata(&cli, is_init, tee).context("initdata")?;
    boot_times::mark(Step::InitdataLoaded);
    let policy = select_policy(cli.policy.as_deref(), initdata.as_ref(), tee)
        .context("loading the agent policy")?;
    boot_times::mark(Step::PolicyLoaded);
    tracing::info!(policy = policy.name(), "policy loaded");
    // Guest pull takes its registries, signature policy and broker from initdata only; a
    // document whose entries do not load means the agent does not serve (INV-1).
    let images =
        coffer_agent::images::Images::from_initdata(&cli.state_dir, initdata.as_ref(), tee)
            .context("guest pull configuration")?;
    Ok(Settled {
        config: AgentConfig {
            state_dir: cli.state_dir,
            helper_exe: std::env::current_exe().context("locating the agent binary")?,
            is_init,
            max_rootfs_bytes: cli.max_rootfs_bytes,
            images: Some(std::sync::Arc::new(images)),
        },
        policy,
    })
}

/// The TEE this guest runs in; only PID 1 (a real guest) looks.
fn detect_tee(is_init: bool) -> Option<Tee> {
    if is_init { Tee::detect() } else { None }
}

fn load_initdata(cli: &Cli, is_init: bool, tee: Option<Tee>) -> anyhow::Result<Option<Initdata>> {
    let mut source = if is_init {
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        initdata::Source::from_cmdline(&cmdline)?
    } else {
        initdata::Source::default()
    };
    if cli.initdata.is_some() {
        source.path.clone_from(&cli.initdata);
    }
    if cli.initdata_digest.is_some() {
        source.expected.clone_from(&cli.initdata_digest);
    }
    if !is_init && source.path.is_none() {
        // Outside a guest there is no disk to scan; initdata is only what was named.
        if source.expected.is_some() {
            anyhow::bail!("--initdata-digest needs --initdata outside a guest");
        }
        return Ok(None);
    }
    Ok(initdata::load(&source, tee)?)
}

/// The one policy this agent enforces: initdata's, or an explicit file, or the mode's default.
fn select_policy(
    file: Option<&std::path::Path>,
    initdata: Option<&Initdata>,
    tee: Option<Tee>,
) -> anyhow::Result<RegoPolicy> {
    let from_initdata = initdata.and_then(|i| i.get(Entry::Policy).map(|p| (i, p)));
    match (from_initdata, file) {
        (Some(_), Some(file)) => anyhow::bail!(
            "both initdata and --policy {} carry a policy; the measured one must be the only one",
            file.display()
        ),
        (Some((init, source)), None) => Ok(RegoPolicy::load(
            &format!("initdata policy.rego ({})", init.digest()),
            source,
            init.get(Entry::PolicyData),
        )?),
        (None, Some(path)) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading policy {}", path.display()))?;
            Ok(RegoPolicy::load(
                &path.display().to_string(),
                &source,
                None,
            )?)
        }
        (None, None) if tee.is_some() => Ok(RegoPolicy::confidential_default()?),
        (None, None) => Ok(RegoPolicy::sandbox_default()?),
    }
}
