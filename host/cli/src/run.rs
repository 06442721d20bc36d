//! `coffer sandbox run`: boot a sandbox, run one command in a container, stream its output, exit
//! with its status, and tear everything down — also when the VM dies or the user interrupts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use coffer_agent_protocol::v1 as pb;
use coffer_policies::initdata::Initdata;
use coffer_runtime::agent_client::AgentClient;
use coffer_runtime::hypervisor::qemu::{AccelMode, Machine, Qemu, QemuConfig};
use coffer_runtime::rootfs::{self, ContainerRootfs};
use coffer_runtime::sandbox::{InitdataDisk, Sandbox, SandboxConfig};
use coffer_runtime::{image, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::image::DEFAULT_IMAGE_DIR;
use crate::{EXIT_COFFER_FAILED, EXIT_INTERRUPTED};

/// The container's id inside the sandbox.
const CONTAINER_ID: &str = "main";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Root filesystem directory of the container.
    #[arg(long)]
    rootfs: PathBuf,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w', default_value = "/")]
    workdir: String,
    /// User to run as: UID or UID:GID.
    #[arg(long, short = 'u', default_value = "0:0")]
    user: String,
    /// Forward this process's stdin to the command.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Guest image directory (from `coffer image build`).
    #[arg(long, env = "COFFER_IMAGE_DIR", default_value = DEFAULT_IMAGE_DIR)]
    image_dir: PathBuf,
    /// Runtime state directory.
    #[arg(long, env = "COFFER_STATE_DIR", default_value = "/run/coffer")]
    state_dir: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Accelerator: auto (KVM only if a probe boot succeeds), tcg or kvm.
    #[arg(long, env = "COFFER_ACCEL", default_value = "auto", value_parser = parse_accel)]
    accel: AccelMode,
    /// Machine type: microvm or q35.
    #[arg(long, default_value = "microvm", value_parser = parse_machine)]
    machine: Machine,
    /// Initdata document (TOML) for the guest: its policy replaces the default one, and the guest
    /// checks it against its digest before serving.
    #[arg(long, value_name = "FILE")]
    initdata: Option<PathBuf>,
    /// Seconds the guest agent may take to answer after launch.
    #[arg(long, default_value_t = 30)]
    boot_timeout: u64,
    /// Sandbox id (default: generated).
    #[arg(long)]
    id: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_accel(s: &str) -> Result<AccelMode, String> {
    match s {
        "auto" => Ok(AccelMode::Auto),
        "tcg" => Ok(AccelMode::Tcg),
        "kvm" => Ok(AccelMode::Kvm),
        _ => Err("expected auto, tcg or kvm".into()),
    }
}

fn parse_machine(s: &str) -> Result<Machine, String> {
    match s {
        "microvm" => Ok(Machine::Microvm),
        "q35" => Ok(Machine::Q35),
        _ => Err("expected microvm or q35".into()),
    }
}

fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = s.split_once(':').unwrap_or((s, s));
    Ok((
        uid.parse().with_context(|| format!("user {s:?}: uid"))?,
        gid.parse().with_context(|| format!("user {s:?}: gid"))?,
    ))
}

fn validate_env(env: &[String]) -> anyhow::Result<()> {
    for e in env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => bail!("--env {e:?}: expected KEY=VALUE"),
        }
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let (uid, gid) = parse_user(&args.user)?;
    validate_env(&args.env)?;
    if !args.workdir.starts_with('/') {
        bail!("--workdir must be absolute");
    }
    if !args.rootfs.is_dir() {
        bail!("--rootfs {} is not a directory", args.rootfs.display());
    }
    let image = image::load(&args.image_dir).with_context(|| {
        format!(
            "no guest image in {} (run `coffer image build` first)",
            args.image_dir.display()
        )
    })?;
    let initdata = match &args.initdata {
        Some(path) => {
            let raw = std::fs::read(path)
                .with_context(|| format!("reading initdata {}", path.display()))?;
            let initdata =
                Initdata::parse(raw).with_context(|| format!("initdata {}", path.display()))?;
            Some(InitdataDisk::new(&initdata))
        }
        None => None,
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let qemu = Qemu::new(QemuConfig {
        machine: args.machine,
        accel: args.accel,
        probe_cache: Some(args.state_dir.join("accel-probe")),
        ..QemuConfig::default()
    });
    let config = SandboxConfig {
        id,
        state_root: args.state_dir.clone(),
        kernel: image.vmlinux.clone(),
        initrd: image.initramfs.clone(),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        initdata,
        kernel_params: Vec::new(),
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let interrupted = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    tokio::pin!(interrupted);

    let sandbox = tokio::select! {
        s = Sandbox::start(&qemu, config) => s.context("starting the sandbox")?,
        _ = &mut interrupted => {
            eprintln!("coffer: interrupted during boot");
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let opts = spec::ProcessOptions {
        args: args.command.clone(),
        env: args.env.clone(),
        cwd: args.workdir.clone(),
        uid,
        gid,
    };
    let outcome = tokio::select! {
        r = run_container(sandbox.agent(), &args.rootfs, &opts, args.interactive) => match r {
            Ok(status) => Ok(status),
            // An RPC failing because the VM died is reported as the VM's death, which the
            // supervisor notices within moments of the RPC.
            Err(err) => match tokio::time::timeout(Duration::from_secs(2), sandbox.failed()).await {
                Ok(msg) => Err(anyhow::anyhow!(msg)),
                Err(_) => Err(err),
            },
        },
        msg = sandbox.failed() => Err(anyhow::anyhow!(msg)),
        _ = &mut interrupted => {
            eprintln!("coffer: interrupted, tearing the sandbox down");
            sandbox.stop().await;
            return Ok(EXIT_INTERRUPTED);
        }
    };
    sandbox.stop().await;
    match outcome {
        Ok(status) => Ok(u8::try_from(status & 0xff).unwrap_or(EXIT_COFFER_FAILED)),
        Err(err) => Err(err),
    }
}

async fn copy_output(mut agent: AgentClient, stderr: bool) -> anyhow::Result<()> {
    let req = pb::ReadOutputRequest {
        container_id: CONTAINER_ID.into(),
        exec_id: String::new(),
    };
    let mut stream = if stderr {
        agent.read_stderr(req).await?.into_inner()
    } else {
        agent.read_stdout(req).await?.into_inner()
    };
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if stderr {
        Box::new(tokio::io::stderr())
    } else {
        Box::new(tokio::io::stdout())
    };
    while let Some(chunk) = stream.message().await? {
        out.write_all(&chunk.data).await?;
        out.flush().await?;
    }
    Ok(())
}

async fn forward_stdin(mut agent: AgentClient) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdin.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let write = agent
            .write_stdin(pb::WriteStdinRequest {
                container_id: CONTAINER_ID.into(),
                exec_id: String::new(),
                data: buf[..n].to_vec(),
            })
            .await;
        if write.is_err() {
            // The command stopped reading; drop the rest.
            return Ok(());
        }
    }
    agent
        .close_stdin(pb::CloseStdinRequest {
            container_id: CONTAINER_ID.into(),
            exec_id: String::new(),
        })
        .await?;
    Ok(())
}

async fn run_container(
    mut agent: AgentClient,
    rootfs_dir: &std::path::Path,
    opts: &spec::ProcessOptions,
    interactive: bool,
) -> anyhow::Result<i32> {
    let source = rootfs::deliver(
        &mut agent,
        CONTAINER_ID,
        &ContainerRootfs::HostDirectory(rootfs_dir.to_path_buf()),
    )
    .await?;
    let spec = spec::container(opts, "coffer");
    agent
        .create_container(pb::CreateContainerRequest {
            container_id: CONTAINER_ID.into(),
            oci_spec_json: serde_json::to_vec(&spec)?,
            rootfs: Some(source),
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating the container: {}", s.message()))?;
    let stdout = tokio::spawn(copy_output(agent.clone(), false));
    let stderr = tokio::spawn(copy_output(agent.clone(), true));
    agent
        .start_container(pb::StartContainerRequest {
            container_id: CONTAINER_ID.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("starting the container: {}", s.message()))?;
    if interactive {
        tokio::spawn(forward_stdin(agent.clone()));
    } else {
        let _ = agent
            .close_stdin(pb::CloseStdinRequest {
                container_id: CONTAINER_ID.into(),
                exec_id: String::new(),
            })
            .await;
    }
    let exit = agent
        .wait_process(pb::WaitProcessRequest {
            container_id: CONTAINER_ID.into(),
            exec_id: String::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("waiting for the command: {}", s.message()))?
        .into_inner();
    stdout.await??;
    stderr.await??;
    agent
        .remove_container(pb::RemoveContainerRequest {
            container_id: CONTAINER_ID.into(),
            force: true,
        })
        .await
        .map_err(|s| anyhow::anyhow!("removing the container: {}", s.message()))?;
    Ok(exit.exit_status)
}
