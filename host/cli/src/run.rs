//! `coffer sandbox run`: boot a sandbox, run one command in a container, stream its output, exit
//! with its status, and tear everything down — also when the VM dies or the user interrupts. When
//! it is killed outright, its VM dies with it and the next run (or `coffer sandbox gc`) removes
//! what it left.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use coffer_agent_protocol::v1 as pb;
use coffer_initdata::Initdata;
use coffer_runtime::agent_client::AgentClient;
use coffer_runtime::config::RuntimeConfig;
use coffer_runtime::hypervisor::qemu::{AccelMode, Machine, Qemu};
use coffer_runtime::network::{DnsConfig, HostEntry, NetworkConfig};
use coffer_runtime::publish::PublishedPort;
use coffer_runtime::rootfs::{self, ContainerRootfs};
use coffer_runtime::sandbox::{InitdataDisk, Sandbox};
use coffer_runtime::tee::TeeKind;
use coffer_runtime::tunnel::RegistryTunnel;
use coffer_runtime::{image, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::progress::{GuestPullView, guest_pull_steps};
use crate::{EXIT_COFFER_FAILED, EXIT_INTERRUPTED};

/// The container's id inside the sandbox.
const CONTAINER_ID: &str = "main";
/// The container's hostname unless `--hostname` names one.
const DEFAULT_HOSTNAME: &str = "coffer";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Root filesystem directory of the container (uploaded into the guest).
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    rootfs: Option<PathBuf>,
    /// Image the guest pulls, verifies and unpacks itself (registries, signature policy and
    /// broker from the initdata); the host never sees its content. `docker://REF` is accepted.
    #[arg(long, value_name = "REF", value_parser = crate::oci_image::image_reference)]
    image: Option<String>,
    /// A registry at this IPv4 loopback address (e.g. 127.0.0.1:5000) is reachable from the guest
    /// at the same address, through a vsock tunnel (repeatable). The guest has no other network.
    #[arg(long = "registry-tunnel", alias = "registry", value_name = "ADDR")]
    registries: Vec<std::net::SocketAddrV4>,
    /// Publish a guest port: connections to host address IPV4:HOSTPORT reach GUESTPORT in the
    /// guest on 127.0.0.2 — a service listening on all addresses, never one bound to 127.0.0.1
    /// only (repeatable) [config: guest.published_ports]. The host is the network: what it
    /// reaches must authenticate its peers (mTLS).
    #[arg(long = "publish", short = 'p', value_name = "IPV4:HOSTPORT:GUESTPORT")]
    published: Vec<PublishedPort>,
    /// Attach the network of this namespace (e.g. one CNI configured, /var/run/netns/NAME): each
    /// of its interfaces becomes a guest NIC with the interface's MAC, MTU and addresses, and its
    /// routes the guest's; the namespace's own stack stops seeing that traffic. The container
    /// gets the pod's /etc/resolv.conf, /etc/hosts and /etc/hostname.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// A name server for the pod's /etc/resolv.conf (repeatable).
    #[arg(long = "dns", value_name = "IP", requires = "netns")]
    dns_servers: Vec<std::net::IpAddr>,
    /// A search domain for the pod's /etc/resolv.conf (repeatable).
    #[arg(long = "dns-search", value_name = "DOMAIN", requires = "netns")]
    dns_searches: Vec<String>,
    /// A resolver option for the pod's /etc/resolv.conf, e.g. ndots:5 (repeatable).
    #[arg(long = "dns-option", value_name = "OPT", requires = "netns")]
    dns_options: Vec<String>,
    /// An extra /etc/hosts entry of the pod (repeatable).
    #[arg(long = "add-host", value_name = "NAME:IP", requires = "netns")]
    add_hosts: Vec<HostEntry>,
    /// The guest's and the container's hostname (default: coffer).
    #[arg(long, value_parser = parse_hostname)]
    hostname: Option<String>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A file at PATH in the container holding the key broker's resource REF
    /// (kbs:///<repo>/<type>/<tag>), fetched by the guest after attestation; the host sees only
    /// the reference (repeatable). The policy must list the mount and the secret.
    #[arg(long = "sealed-file", value_name = "PATH=REF", value_parser = parse_sealed_file)]
    sealed_files: Vec<(String, String)>,
    /// Give the container the pod's workload identity in directory PATH: svid.pem (certificate
    /// chain), svid_key.pem (its key, generated in the guest) and svid_bundle.pem (trust bundle),
    /// issued by the key broker to the attested guest for the initdata's workload-identity
    /// entry and renewed before expiry. The policy must list the mount.
    #[arg(long = "identity", value_name = "PATH", value_parser = parse_identity_dir)]
    identity_dir: Option<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w', default_value = "/")]
    workdir: String,
    /// User to run as: UID or UID:GID.
    #[arg(long, short = 'u', default_value = "0:0")]
    user: String,
    /// Forward this process's stdin to the command.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Runtime configuration (default /etc/coffer/runtime.toml when it exists, else the
    /// built-in defaults); the flags below override it.
    #[arg(long, env = "COFFER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Launch in a TEE: snp or tdx. Fails on a host that cannot (never falls back to a plain VM);
    /// needs --initdata with the TEE's digest algorithm (sha256 for snp, sha384 for tdx).
    #[arg(long)]
    tee: Option<TeeKind>,
    /// Guest image directory (from `coffer image build`) [config: guest.image_dir].
    #[arg(long, env = "COFFER_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// Runtime state directory [config: state_dir].
    #[arg(long, env = "COFFER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Guest memory in MiB [config: guest.memory_mib].
    #[arg(long)]
    memory: Option<u32>,
    /// Guest vCPUs [config: guest.vcpus].
    #[arg(long)]
    vcpus: Option<u32>,
    /// Accelerator: auto (KVM only if a probe boot succeeds), tcg or kvm [config: qemu.accel].
    #[arg(long, env = "COFFER_ACCEL", value_parser = parse_accel)]
    accel: Option<AccelMode>,
    /// Machine type: microvm or q35 [config: qemu.machine].
    #[arg(long, value_parser = parse_machine)]
    machine: Option<Machine>,
    /// Initdata document (TOML) for the guest: its policy replaces the default one, and the guest
    /// checks it against its digest before serving.
    #[arg(long, value_name = "FILE")]
    initdata: Option<PathBuf>,
    /// Seconds the guest agent may take to answer after launch [config: guest.boot_timeout_secs].
    #[arg(long)]
    boot_timeout: Option<u64>,
    /// Print how long each phase took on stderr: boot; for --image the guest's own timings of its
    /// pull (resolve, attestation, key release, download, decrypt + verify + unpack) and its
    /// progress; container creation; start; run.
    #[arg(long)]
    timings: bool,
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

fn parse_hostname(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.']);
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?}: 1 to 64 characters of [A-Za-z0-9.-], not starting with - or ."
        ))
    }
}

/// The pod network `args` ask for, if any.
fn network_config(args: &RunArgs) -> Option<NetworkConfig> {
    let netns = args.netns.as_ref()?;
    Some(NetworkConfig {
        netns: netns.clone(),
        dns: DnsConfig {
            servers: args.dns_servers.clone(),
            searches: args.dns_searches.clone(),
            options: args.dns_options.clone(),
        },
        hosts: args.add_hosts.clone(),
    })
}

fn parse_identity_dir(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.len() < 2 {
        return Err(format!("{s:?}: the path must be absolute and not /"));
    }
    Ok(s.to_owned())
}

fn parse_sealed_file(s: &str) -> Result<(String, String), String> {
    let (path, reference) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected PATH=kbs:///<repo>/<type>/<tag>"))?;
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!("{path:?}: the path must be absolute"));
    }
    let resource = reference
        .strip_prefix("kbs:///")
        .ok_or_else(|| format!("{reference:?}: expected kbs:///<repo>/<type>/<tag>"))?;
    resource
        .parse::<coffer_attestation::kbs::path::ResourcePath>()
        .map_err(|e| format!("{reference:?}: {e}"))?;
    Ok((path.to_owned(), reference.to_owned()))
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

/// Applies the command-line overrides to the loaded configuration.
fn override_config(runtime: &mut RuntimeConfig, args: &RunArgs) {
    if let Some(dir) = &args.image_dir {
        runtime.guest.image_dir = dir.clone();
    }
    if let Some(dir) = &args.state_dir {
        runtime.state_dir = dir.clone();
    }
    if let Some(memory) = args.memory {
        runtime.guest.memory_mib = memory;
    }
    if let Some(vcpus) = args.vcpus {
        runtime.guest.vcpus = vcpus;
    }
    if let Some(accel) = args.accel {
        runtime.qemu.accel = accel;
    }
    if let Some(machine) = args.machine {
        runtime.qemu.machine = machine;
    }
    if let Some(secs) = args.boot_timeout {
        runtime.guest.boot_timeout_secs = Some(secs);
    }
    runtime
        .guest
        .published_ports
        .extend(args.published.iter().copied());
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let (uid, gid) = parse_user(&args.user)?;
    validate_env(&args.env)?;
    if !args.workdir.starts_with('/') {
        bail!("--workdir must be absolute");
    }
    let rootfs = match (&args.rootfs, &args.image) {
        (Some(dir), None) => {
            if !dir.is_dir() {
                bail!("--rootfs {} is not a directory", dir.display());
            }
            ContainerRootfs::HostDirectory(dir.clone())
        }
        (None, Some(reference)) => ContainerRootfs::GuestPull(reference.clone()),
        _ => bail!("give exactly one of --rootfs and --image"),
    };
    for addr in &args.registries {
        if !addr.ip().is_loopback() {
            bail!("--registry-tunnel {addr}: only loopback addresses are tunnelled into the guest");
        }
    }
    let mut runtime = RuntimeConfig::load_or_default(args.config.as_deref())?;
    override_config(&mut runtime, &args);
    runtime.validate(std::path::Path::new(
        "(configuration with command-line overrides)",
    ))?;
    image::load(&runtime.guest.image_dir).with_context(|| {
        format!(
            "no guest image in {} (run `coffer image build` first)",
            runtime.guest.image_dir.display()
        )
    })?;
    let initdata = match args.initdata.as_ref().or(runtime.initdata.as_ref()) {
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
    let state_dir = runtime.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    // What runs killed before us left (their VMs died with them) goes first.
    crate::gc::before_run(&state_dir).await;
    let qemu = Qemu::new(runtime.qemu_backend());
    let mut config = runtime.sandbox(id, args.tee.or(runtime.tee), initdata);
    config.registry_tunnels.extend(
        args.registries
            .iter()
            .map(|addr| RegistryTunnel::same_address(*addr)),
    );
    config.network = network_config(&args);
    config.hostname = args.hostname.clone();

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let interrupted = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    tokio::pin!(interrupted);

    let timings = Timings::new(args.timings);
    let sandbox = tokio::select! {
        s = Sandbox::start(&qemu, config) => {
            let sandbox = s.context("starting the sandbox")?;
            timings.phase("boot (VM launch to agent ready)");
            for line in sandbox.boot_phases().lines() {
                timings.detail(&line);
            }
            sandbox
        }
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
        sealed_files: args.sealed_files.clone(),
        identity_dir: args.identity_dir.clone(),
        pod_files: args.netns.is_some(),
    };
    let hostname = args.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
    let outcome = tokio::select! {
        r = run_container(sandbox.agent(), &rootfs, &opts, hostname, args.interactive, &timings) => match r {
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

/// Phase durations for `--timings`.
struct Timings {
    enabled: bool,
    last: std::sync::Mutex<std::time::Instant>,
}

impl Timings {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            last: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Prints a duration measured elsewhere (the guest), without ending a phase.
    fn report(&self, what: &str, ms: u64) {
        if self.enabled {
            eprintln!("coffer: {what}: {ms} ms");
        }
    }

    /// Prints one line of a phase's breakdown, indented under it.
    fn detail(&self, line: &str) {
        if self.enabled {
            eprintln!("coffer:   {line}");
        }
    }

    /// Prints the time since the previous phase ended.
    fn phase(&self, what: &str) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.enabled {
            eprintln!("coffer: {what}: {} ms", last.elapsed().as_millis());
        }
        *last = std::time::Instant::now();
    }
}

async fn run_container(
    mut agent: AgentClient,
    rootfs: &ContainerRootfs,
    opts: &spec::ProcessOptions,
    hostname: &str,
    interactive: bool,
    timings: &Timings,
) -> anyhow::Result<i32> {
    if let ContainerRootfs::GuestPull(reference) = rootfs {
        // Pulled ahead so the guest can report progress and its phase timings.
        let mut view = GuestPullView::new(std::io::stderr().is_terminal(), timings.enabled);
        let pulled =
            rootfs::pull_in_guest(&mut agent, CONTAINER_ID, reference, |e| view.event(e)).await;
        view.finish();
        let done = pulled.map_err(anyhow::Error::new).map_err(|err| {
            // The confidential policy's refusal of a tag (confidential.rego, PullImage).
            if reference.contains('@') || !format!("{err:#}").contains("not pinned by digest") {
                err
            } else {
                err.context(crate::report::Hint(format!(
                    "a confidential policy admits images pinned by digest only: run with --image \
                     {}@sha256:…, the reference `coffer policy gen` printed for the container",
                    reference
                        .rsplit_once(':')
                        .filter(|(_, tag)| !tag.contains('/'))
                        .map_or(reference.as_str(), |(repo, _)| repo)
                )))
            }
        })?;
        if let Some(t) = &done.timings {
            for (step, ms) in guest_pull_steps(t) {
                timings.report(&step, ms);
            }
        }
        timings.phase(&format!(
            "pull ({}; PullImage round trip)",
            done.manifest_digest
        ));
    }
    let source = rootfs::deliver(&mut agent, CONTAINER_ID, rootfs).await?;
    let spec = spec::container(opts, hostname);
    agent
        .create_container(pb::CreateContainerRequest {
            container_id: CONTAINER_ID.into(),
            oci_spec_json: serde_json::to_vec(&spec)?,
            rootfs: Some(source),
        })
        .await
        .map_err(|s| anyhow::anyhow!("creating the container: {}", s.message()))?;
    timings.phase(match rootfs {
        ContainerRootfs::GuestPull(_) => "create (container from the pulled image)",
        ContainerRootfs::HostDirectory(_) => "create (rootfs upload)",
    });
    let stdout = tokio::spawn(copy_output(agent.clone(), false));
    let stderr = tokio::spawn(copy_output(agent.clone(), true));
    agent
        .start_container(pb::StartContainerRequest {
            container_id: CONTAINER_ID.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("starting the container: {}", s.message()))?;
    timings.phase("start");
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
    timings.phase("run (to exit, output drained)");
    agent
        .remove_container(pb::RemoveContainerRequest {
            container_id: CONTAINER_ID.into(),
            force: true,
        })
        .await
        .map_err(|s| anyhow::anyhow!("removing the container: {}", s.message()))?;
    Ok(exit.exit_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(["coffer"].iter().chain(args)).map(|c| c.run)
    }

    #[test]
    fn the_network_flags_make_the_pod_network() {
        let args = parse(&[
            "--rootfs",
            "/r",
            "--netns",
            "/var/run/netns/pod",
            "--dns",
            "198.18.0.53",
            "--dns",
            "2001:2::53",
            "--dns-search",
            "svc.cluster.local",
            "--dns-option",
            "ndots:5",
            "--add-host",
            "db:198.18.0.9",
            "--hostname",
            "web-0",
            "--",
            "true",
        ])
        .expect("parse");
        assert_eq!(args.hostname.as_deref(), Some("web-0"));
        assert_eq!(
            network_config(&args),
            Some(NetworkConfig {
                netns: "/var/run/netns/pod".into(),
                dns: DnsConfig {
                    servers: vec![
                        "198.18.0.53".parse().expect("ip"),
                        "2001:2::53".parse().expect("ip")
                    ],
                    searches: vec!["svc.cluster.local".into()],
                    options: vec!["ndots:5".into()],
                },
                hosts: vec!["db:198.18.0.9".parse().expect("host")],
            })
        );
        let plain = parse(&["--rootfs", "/r", "--", "true"]).expect("parse");
        assert_eq!(network_config(&plain), None);
    }

    #[test]
    fn resolver_and_hosts_flags_need_a_namespace_and_hostnames_are_checked() {
        for flags in [
            ["--dns", "198.18.0.53"],
            ["--dns-search", "a.example"],
            ["--dns-option", "ndots:1"],
            ["--add-host", "db:198.18.0.9"],
        ] {
            let err = parse(&["--rootfs", "/r", flags[0], flags[1], "--", "true"])
                .expect_err(flags[0])
                .to_string();
            assert!(err.contains("--netns"), "{err}");
        }
        let err = parse(&["--rootfs", "/r", "--hostname=-bad", "--", "true"])
            .expect_err("hostname")
            .to_string();
        assert!(err.contains("[A-Za-z0-9.-]"), "{err}");
        let err = parse(&[
            "--rootfs",
            "/r",
            "--netns",
            "/n",
            "--add-host",
            "nocolon",
            "--",
            "true",
        ])
        .expect_err("add-host")
        .to_string();
        assert!(err.contains("expected NAME:IP"), "{err}");
    }
}
