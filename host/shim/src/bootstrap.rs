//! The shim's actions as containerd runs them (runtime v2 shim protocol).
//!
//! * `start` (in the bundle): finds the pod the container belongs to; if the pod's shim already
//!   listens on the pod's socket, answers that address (the container joins the pod's VM);
//!   otherwise starts the serving shim and answers its address once it listens. The reply is the
//!   plain address, which every containerd since 1.6 accepts (1.7 and 2.x treat it as task API
//!   version 2).
//! * serve (`-socket ADDR`, no action): serves the Task API until the pod is gone. The service
//!   is registered both as `containerd.task.v2.Task` (containerd 1.6/1.7) and
//!   `containerd.task.v3.Task` (2.x): the two are the same API under two names.
//! * `delete` (in the bundle): cleans what a dead shim left (see `coffer_shim::cleanup`) and
//!   answers a `DeleteResponse`.
//! * `-info`: the runtime's name for containerd's introspection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use coffer_shim::events::Events;
use coffer_shim::logs::{LogSink, MakeLineWriter};
use coffer_shim::pod::Pod;
use coffer_shim::service::TaskService;
use coffer_shim::{cleanup, spec};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::{Flags, api};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The runtime name containerd knows this shim by.
const RUNTIME_NAME: &str = "io.containerd.coffer.v2";
/// The file in the bundle that names the shim's socket.
const ADDRESS_FILE: &str = "address";
/// How long the serving shim may take to listen.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the action `flags` ask for.
pub async fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.info {
        return info().await;
    }
    match flags.action.as_str() {
        "start" => {
            // containerd 1.6 reads `start`'s stdout and stderr together as the address: log to
            // the fifo only.
            init_tracing(Some(bundle_logs(&flags)), flags.debug, false)?;
            let address = start(&flags).await?;
            let mut stdout = tokio::io::stdout();
            stdout.write_all(address.as_bytes()).await?;
            stdout.flush().await?;
            Ok(())
        }
        "delete" => {
            init_tracing(None, flags.debug, true)?;
            let response = delete(&flags).await?;
            let mut stdout = tokio::io::stdout();
            stdout.write_all(&response.write_to_bytes()?).await?;
            stdout.flush().await?;
            Ok(())
        }
        "" if !flags.socket.is_empty() => {
            let logs = bundle_logs(&flags);
            init_tracing(Some(logs.clone()), flags.debug, true)?;
            serve(flags, logs).await
        }
        "" => bail!("no action given and no -socket to serve on"),
        other => bail!("unknown action {other:?}"),
    }
}

/// The log sink of a shim started in a task's bundle: that task's fifo.
fn bundle_logs(flags: &Flags) -> Arc<LogSink> {
    let logs = LogSink::new();
    if let Ok(bundle) = bundle_dir(flags) {
        logs.add(&flags.id, &bundle);
    }
    logs
}

/// Logs go to containerd's log fifos (`logs`, see [`LogSink`]) when given, else to stderr if
/// `stderr` allows, else nowhere. Writes never block: a line containerd does not read in time is
/// dropped.
fn init_tracing(logs: Option<Arc<LogSink>>, debug: bool, stderr: bool) -> anyhow::Result<()> {
    let level = if debug { "debug" } else { "info" };
    // The gRPC stack's own debug lines would drown the shim's.
    let filter = coffer_log::filter(&format!(
        "{level},h2=info,hyper=info,hyper_util=info,tower=info,tonic=info"
    ))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match logs {
        Some(logs) if logs.is_open() => builder
            .with_ansi(false)
            .with_writer(MakeLineWriter(logs))
            .init(),
        _ if stderr => builder
            .with_ansi(coffer_log::ansi_on_stderr())
            .with_writer(std::io::stderr)
            .init(),
        _ => {}
    }
    Ok(())
}

async fn info() -> anyhow::Result<()> {
    let info = containerd_shim::protos::types::introspection::RuntimeInfo {
        name: RUNTIME_NAME.into(),
        ..Default::default()
    };
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&info.write_to_bytes()?).await?;
    stdout.flush().await?;
    Ok(())
}

fn bundle_dir(flags: &Flags) -> anyhow::Result<PathBuf> {
    if flags.bundle.is_empty() {
        std::env::current_dir().context("the bundle is the working directory")
    } else {
        Ok(PathBuf::from(&flags.bundle))
    }
}

fn socket_path(address: &str) -> &Path {
    Path::new(address.strip_prefix("unix://").unwrap_or(address))
}

async fn alive(address: &str) -> bool {
    tokio::net::UnixStream::connect(socket_path(address))
        .await
        .is_ok()
}

async fn start(flags: &Flags) -> anyhow::Result<String> {
    let bundle = bundle_dir(flags)?;
    let config = bundle.join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?,
    )
    .with_context(|| format!("parsing {}", config.display()))?;
    let membership = spec::membership(&spec, &flags.id);
    let address =
        containerd_shim::socket_address(&flags.address, &flags.namespace, &membership.pod_id);
    if !alive(&address).await {
        spawn_server(flags, &bundle, &address).await?;
    } else {
        tracing::info!(sandbox_id = %membership.pod_id, container_id = %flags.id, "joining the pod's shim");
    }
    let file = bundle.join(ADDRESS_FILE);
    std::fs::write(&file, &address).with_context(|| format!("writing {}", file.display()))?;
    Ok(address)
}

/// Starts the serving shim and returns once it listens on `address`.
async fn spawn_server(flags: &Flags, bundle: &Path, address: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the shim binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.current_dir(bundle)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: signals to containerd's group do not reach the pod.
        .process_group(0);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd.spawn().context("starting the serving shim")?;
    // The server closes its stdout once it listens (or by exiting).
    if let Some(mut out) = child.stdout.take() {
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(SERVE_TIMEOUT, out.read_to_end(&mut sink)).await;
    }
    if alive(address).await {
        return Ok(());
    }
    let status = match child.try_wait() {
        Ok(Some(status)) => status.to_string(),
        _ => {
            let _ = child.start_kill();
            "killed after not listening in time".to_owned()
        }
    };
    bail!("the serving shim did not listen on {address} ({status}); see containerd's log")
}

async fn serve(flags: Flags, logs: Arc<LogSink>) -> anyhow::Result<()> {
    let path = socket_path(&flags.socket).to_path_buf();
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && alive(&flags.socket).await => {
            // Another shim of this pod won the race; it serves.
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
            bind(&path).with_context(|| format!("listening on {}", path.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("listening on {}", path.display())),
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .context("TTRPC_ADDRESS (containerd's event address) is not set")?;
    let events = Events::connect(&ttrpc_address, flags.namespace.clone())
        .await
        .with_context(|| format!("connecting to containerd at {ttrpc_address}"))?;
    let exit = Arc::new(ExitSignal::default());
    let pod = Arc::new(Pod::new(events, logs, exit.clone()));
    let mut services = create_task(Arc::new(TaskService::new(pod.clone())));
    for (name, service) in create_task(Arc::new(TaskService::new(pod.clone()))) {
        services.insert(name.replace(".task.v3.", ".task.v2."), service);
    }
    let mut server = Server::new()
        .add_listener(Listener::try_from(listener).context("ttrpc listener")?)
        .register_service(services);
    server.start().await.context("starting the ttrpc server")?;
    // Tell `start` we listen: close the pipe it reads.
    nix::unistd::dup2(2, 1).context("closing stdout")?;
    tracing::info!(container_id = %flags.id, namespace = %flags.namespace, socket = %path.display(), "shim serving");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = exit.wait() => {}
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM: tearing the pod down");
            pod.terminate().await;
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT: tearing the pod down");
            pod.terminate().await;
        }
    }
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    tracing::info!(container_id = %flags.id, "shim exiting");
    Ok(())
}

fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::os::unix::net::UnixListener::bind(path)
}

async fn delete(flags: &Flags) -> anyhow::Result<api::DeleteResponse> {
    let bundle = bundle_dir(flags)?;
    cleanup::cleanup_bundle(&bundle)
        .await
        .with_context(|| format!("cleaning up after the shim of {}", flags.id))?;
    // The dead shim's socket.
    if let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE))
        && !alive(&address).await
    {
        let _ = std::fs::remove_file(socket_path(&address));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(api::DeleteResponse {
        pid: 0,
        // Killed: 128 + SIGKILL, as containerd's own shims report a dead shim's task.
        exit_status: 137,
        exited_at: Some(Timestamp {
            seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
}
