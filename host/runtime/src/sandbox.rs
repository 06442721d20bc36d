//! A sandbox: one VM, its agent connection, and the task that owns them.
//!
//! [`Sandbox::start`] launches the VM, waits for the agent (racing the VM's own exit, so a VM that
//! dies during boot fails fast), and sends `CreateSandbox`. From then on one supervisor task owns the
//! VM: it notices an unexpected VMM exit at once (publishing [`SandboxState::Failed`]) and performs
//! the ordered teardown on [`Sandbox::stop`] or when the handle is dropped. Every file of the
//! sandbox lives in `state_root/sandboxes/<id>` and is removed at the end; only the logs of a
//! failed sandbox are kept, in `state_root/logs/` (the console log, named in the error, and the
//! VMM's own beside it). The directory records its owner, this process, from the moment it exists
//! ([`gc::claim`]): when the process dies without a teardown (its VM dies with it), a collector
//! ([`gc::collect`]) tells the state left from a live sandbox's and removes it. A start that does
//! not finish, by an error or because its future was dropped (Ctrl-C during boot), removes what
//! it made.
//!
//! With a pod network ([`SandboxConfig::network`]) the sandbox attaches the namespace's network
//! before launching the VM ([`crate::network`]), records what it attached in `network.json` in its
//! directory (for a garbage collector after a crash), hands the taps to the VMM and closes its own
//! copies once the VMM runs, and tells the guest the network in `CreateSandbox`. Every teardown
//! (stop, failed start, the VM exiting on its own) detaches it once the VM is gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_agent_protocol::HOST_READY_VSOCK_PORT;
use coffer_agent_protocol::v1 as pb;
use coffer_initdata::{Digest, Initdata, device as initdata_device};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent_client::{self, AgentClient};
use crate::boot_phases::BootPhases;
use crate::gc;
use crate::hypervisor::{DiskSpec, Hypervisor, HypervisorError, NicSpec, Vm, VmSpec};
use crate::network::{self, AttachedNetwork, NetworkConfig, NetworkError};
use crate::publish::{self, PublishedPort};
use crate::tee::{TeeError, TeeLaunch};
use crate::tunnel::{self, RegistryTunnel};
use crate::vsock::{ReadyListener, host_socket};

/// How long the agent may take to answer after launch under hardware virtualization, unless
/// configured.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// The same under TCG emulation: a boot there takes several times longer, and its time grows with
/// the host's load (5–12 s on a 2-core box, with outliers past 30 s in CI).
pub const DEFAULT_EMULATED_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Sandbox id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
    pub id: String,
    /// Runtime state root (e.g. `/run/coffer`).
    pub state_root: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// How long the agent may take to answer after launch; `None`: [`DEFAULT_BOOT_TIMEOUT`], or
    /// [`DEFAULT_EMULATED_BOOT_TIMEOUT`] when the VM runs under emulation.
    pub boot_timeout: Option<Duration>,
    /// Initdata for the guest: attached as a read-only disk, its digest on the kernel command line.
    pub initdata: Option<InitdataDisk>,
    /// Extra guest kernel command-line parameters.
    pub kernel_params: Vec<String>,
    /// Launch in a TEE (`kernel` must then be a bzImage OVMF can boot); `None` is a plain VM.
    pub tee: Option<TeeLaunch>,
    /// Registry endpoints the guest may reach for guest pull (none by default).
    pub registry_tunnels: Vec<RegistryTunnel>,
    /// Guest ports reachable at host addresses (none by default).
    pub published_ports: Vec<PublishedPort>,
    /// The pod network to attach: a CNI-configured namespace and the pod's resolver and hosts
    /// entries. `None`: the guest has its loopback only.
    pub network: Option<NetworkConfig>,
    /// The guest's hostname, sent in `CreateSandbox`; `None`: the agent's default.
    pub hostname: Option<String>,
}

/// Initdata as the guest receives it: the disk image and the digest the guest must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitdataDisk {
    /// The disk image ([`coffer_initdata::device`] format).
    pub image: Vec<u8>,
    /// The digest the guest checks the document against (`coffer.initdata=` on its command line).
    pub digest: Digest,
}

impl InitdataDisk {
    /// The disk for `initdata`, bound to its own digest.
    pub fn new(initdata: &Initdata) -> Self {
        Self {
            image: initdata_device::encode(initdata.raw()),
            digest: initdata.digest(),
        }
    }
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxState {
    /// The agent answers.
    Ready,
    /// The VM went away on its own; the message says how.
    Failed(String),
    /// Stopped on request.
    Stopped,
}

/// Sandbox failures.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The id is not acceptable.
    #[error("invalid sandbox id {0:?}")]
    InvalidId(String),
    /// A sandbox with this id exists.
    #[error("sandbox {0} already exists")]
    Exists(String),
    /// The sandbox directory could not be made.
    #[error("claiming the sandbox directory: {0}")]
    Claim(#[source] gc::GcError),
    /// Local state could not be written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A published port's host address could not be listened on.
    #[error(transparent)]
    Publish(#[from] publish::BindError),
    /// The pod network could not be attached.
    #[error("pod network: {0}")]
    Network(#[source] NetworkError),
    /// The VM could not be launched.
    #[error("launching the VM: {0}")]
    Launch(#[source] HypervisorError),
    /// The VM exited before the agent answered.
    #[error("the VM exited during boot ({status}); console log: {console}")]
    DiedDuringBoot {
        /// VMM exit status.
        status: String,
        /// Kept console log.
        console: PathBuf,
    },
    /// The agent did not answer in time.
    #[error(
        "the guest agent did not answer within {timeout:?} under {accel} ({last}); console log: {console}"
    )]
    AgentTimeout {
        /// The deadline.
        timeout: Duration,
        /// The accelerator the VM ran under (`TCG` or `KVM`): an emulated boot is many times slower.
        accel: &'static str,
        /// Last connection error.
        last: String,
        /// Kept console log.
        console: PathBuf,
    },
    /// An agent call failed.
    #[error("agent {call}: {message}")]
    Agent {
        /// The RPC.
        call: &'static str,
        /// gRPC status message.
        message: String,
    },
    /// The sandbox is gone.
    #[error("sandbox {id} is not running: {reason}")]
    NotRunning {
        /// Id.
        id: String,
        /// Why.
        reason: String,
    },
}

enum Command {
    Stop(oneshot::Sender<()>),
    Status(oneshot::Sender<Result<String, String>>),
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    agent: AgentClient,
    details: pb::GuestDetails,
    boot: BootPhases,
    state: watch::Receiver<SandboxState>,
    commands: mpsc::Sender<Command>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stop(_) => "Stop",
            Self::Status(_) => "Status",
        })
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The directory of sandbox `id` under `state_root`.
pub fn sandbox_dir(state_root: &Path, id: &str) -> PathBuf {
    state_root.join("sandboxes").join(id)
}

/// Keeps the logs of a failed sandbox in `state_root/logs/` and removes its directory.
fn retire(state_root: &Path, id: &str, dir: &Path, console: &Path, keep_console: bool) -> PathBuf {
    let logs = state_root.join("logs");
    let kept = logs.join(format!("{id}-console.log"));
    if keep_console {
        let _ = std::fs::create_dir_all(&logs);
        if std::fs::rename(console, &kept).is_err() {
            let _ = std::fs::copy(console, &kept);
        }
        keep_vmm_logs(dir, console, &logs, id);
    }
    if let Err(err) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %err, "removing sandbox directory");
    }
    kept
}

/// Keeps the non-empty logs the VMM and its helpers wrote in `dir` (`*.log`, `*.err`: QEMU's and
/// the vsock backend's stderr), other than `console`, as `<logs>/<id>-<name>` beside the console
/// log, so a boot that failed can be diagnosed after its directory is gone. Best effort, like the
/// console's.
fn keep_vmm_logs(dir: &Path, console: &Path, logs: &Path, id: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_log = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("log" | "err")
        );
        let non_empty = entry.metadata().is_ok_and(|m| m.is_file() && m.len() > 0);
        if is_log && non_empty && path != console {
            let _ = std::fs::copy(
                &path,
                logs.join(format!("{id}-{}", entry.file_name().to_string_lossy())),
            );
        }
    }
}

/// Detaches `network`, if any (after the VM that held its taps is gone); failures are logged.
async fn detach(network: Option<AttachedNetwork>, id: &str) {
    if let Some(network) = network
        && let Err(err) = network.detach().await
    {
        tracing::warn!(sandbox_id = %id, %err, "detaching the pod network");
    }
}

/// A sandbox directory from its claim until the supervisor task takes it over. Every way out of
/// [`Sandbox::start`] but success ends here, once: an error ([`abandon`](Self::abandon)), or the
/// start's future dropped (Ctrl-C during boot: `Drop`, after the VM's handles, declared later,
/// killed its processes). Either way the pod network is detached and the directory removed.
#[derive(Debug)]
struct Setup {
    state_root: PathBuf,
    id: String,
    dir: PathBuf,
    network: Option<AttachedNetwork>,
    armed: bool,
}

impl Setup {
    /// Undoes a start that failed: detaches the network, then [`retire`]s the directory. Returns
    /// where the console log was kept.
    async fn abandon(mut self, console: &Path, keep_console: bool) -> PathBuf {
        self.armed = false;
        detach(self.network.take(), &self.id).await;
        retire(&self.state_root, &self.id, &self.dir, console, keep_console)
    }

    /// The start succeeded: the supervisor owns the directory and the network from here.
    fn hand_over(mut self) -> Option<AttachedNetwork> {
        self.armed = false;
        self.network.take()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::info!(sandbox_id = %self.id, "sandbox start abandoned; removing what it made");
        if let Some(network) = self.network.take()
            && let Err(err) = network.detach_blocking()
        {
            tracing::warn!(sandbox_id = %self.id, %err, "detaching the pod network");
        }
        retire(
            &self.state_root,
            &self.id,
            &self.dir,
            &self.dir.join("console.log"),
            false,
        );
    }
}

/// Attaches `config`'s network and records it in `dir` (see [`network::NetworkRecord`]).
async fn attach_network(
    config: &NetworkConfig,
    dir: &Path,
) -> Result<AttachedNetwork, NetworkError> {
    let attached = network::attach(&config.netns).await?;
    if let Err(err) = attached.record().write(dir) {
        if let Err(undo) = attached.detach().await {
            tracing::warn!(%undo, "detaching the pod network after a failed record");
        }
        return Err(err);
    }
    Ok(attached)
}

impl Sandbox {
    /// Boots a sandbox on `hypervisor` and waits for its agent.
    pub async fn start<H: Hypervisor>(
        hypervisor: &H,
        config: SandboxConfig,
    ) -> Result<Self, SandboxError> {
        if !valid_id(&config.id) {
            return Err(SandboxError::InvalidId(config.id));
        }
        // A confidential launch is bound to the pod's initdata before anything is created.
        let confidential = match &config.tee {
            None => None,
            Some(tee) => {
                hypervisor
                    .check_tee(tee.kind())
                    .map_err(SandboxError::Launch)?;
                let initdata = config
                    .initdata
                    .as_ref()
                    .ok_or(TeeError::InitdataRequired(tee.kind()))
                    .map_err(|e| SandboxError::Launch(e.into()))?;
                Some(
                    tee.bind(&initdata.digest)
                        .map_err(|e| SandboxError::Launch(e.into()))?,
                )
            }
        };
        let id = config.id.clone();
        let dir = sandbox_dir(&config.state_root, &id);
        if dir.exists() {
            return Err(SandboxError::Exists(id));
        }
        // A taken host address fails before anything is created.
        let published = publish::bind_all(&config.published_ports)?;
        // The directory exists only with this process recorded as its owner: a collector tells
        // a live sandbox's state from a crashed one's by it.
        gc::claim(&dir).map_err(|err| match err {
            gc::GcError::Exists(_) => SandboxError::Exists(id.clone()),
            err => SandboxError::Claim(err),
        })?;
        let mut setup = Setup {
            state_root: config.state_root.clone(),
            id: id.clone(),
            dir: dir.clone(),
            network: None,
            armed: true,
        };
        let mut kernel_params = config.kernel_params.clone();
        let mut disks = Vec::new();
        if let Some(initdata) = &config.initdata {
            let path = dir.join("initdata.img");
            if let Err(source) = std::fs::write(&path, &initdata.image) {
                setup.abandon(&dir.join("console.log"), false).await;
                return Err(SandboxError::Io {
                    op: "write",
                    path,
                    source,
                });
            }
            // In a TEE the hardware field carries the digest and the measured command line stays
            // the same for every pod; otherwise the command line carries it.
            if confidential.is_none() {
                kernel_params.push(format!("coffer.initdata={}", initdata.digest));
            }
            disks.push(DiskSpec {
                path,
                serial: initdata_device::SERIAL.to_owned(),
                read_only: true,
            });
        }
        if let Some(net) = &config.network {
            match attach_network(net, &dir).await {
                Ok(attached) => setup.network = Some(attached),
                Err(err) => {
                    setup.abandon(&dir.join("console.log"), false).await;
                    return Err(SandboxError::Network(err));
                }
            }
        }
        let nics = match &mut setup.network {
            None => Vec::new(),
            Some(attached) => {
                let taps = attached.take_taps();
                attached
                    .interfaces()
                    .iter()
                    .zip(taps)
                    .map(|(interface, tap)| NicSpec {
                        tap: Arc::new(tap),
                        mac: interface.mac,
                        mtu: interface.mtu,
                    })
                    .collect()
            }
        };
        let spec = VmSpec {
            id: id.clone(),
            dir: dir.clone(),
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            kernel_params,
            disks,
            nics,
            confidential,
        };
        let launch_started = Instant::now();
        let launched = hypervisor.launch(&spec).await;
        // The VMM has its copies of the taps (or failed): ours close now.
        drop(spec);
        let mut vm = match launched {
            Ok(vm) => vm,
            Err(err) => {
                setup.abandon(&dir.join("console.log"), false).await;
                return Err(SandboxError::Launch(err));
            }
        };
        // The boot deadline runs from the VMM's start: the accelerator probe a first launch may
        // run (up to its own deadline) is not the guest's boot time.
        let launched = Instant::now();
        let console = vm.console_log().to_path_buf();
        // Bound first: the agent announces itself here before anything connects into the guest.
        let ready = match ReadyListener::bind(vm.vsock_socket()) {
            Ok(ready) => ready,
            Err(source) => {
                vm.shutdown().await;
                setup.abandon(&console, false).await;
                return Err(SandboxError::Io {
                    op: "listen",
                    path: host_socket(vm.vsock_socket(), HOST_READY_VSOCK_PORT),
                    source,
                });
            }
        };
        let (tunnel_servers, tunnels) =
            match tunnel::serve_all(vm.vsock_socket(), &config.registry_tunnels) {
                Ok(served) => served,
                Err((path, source)) => {
                    vm.shutdown().await;
                    setup.abandon(&console, false).await;
                    return Err(SandboxError::Io {
                        op: "listen",
                        path,
                        source,
                    });
                }
            };
        let boot_timeout = config.boot_timeout.unwrap_or(if vm.emulated() {
            DEFAULT_EMULATED_BOOT_TIMEOUT
        } else {
            DEFAULT_BOOT_TIMEOUT
        });
        let deadline = launched + boot_timeout;
        let connected = tokio::select! {
            r = agent_client::connect(vm.vsock_socket().to_path_buf(), ready, deadline) => Some(r),
            _ = vm.wait_exit() => None,
        };
        let (mut agent, details, boot) = match connected {
            Some(Ok(c)) => {
                let times = vm.launch_times();
                // The guest's part runs from the VMM being up (the launch's end) to the
                // announcement.
                let vmm_up = launch_started + times.accel_probe + times.backend + times.vmm;
                let boot = BootPhases::new(
                    times,
                    c.announced.saturating_duration_since(vmm_up),
                    c.announced.elapsed(),
                    c.details.boot.as_ref(),
                );
                (c.client, c.details, boot)
            }
            Some(Err(agent_client::ConnectError::Timeout { last, .. })) => {
                vm.shutdown().await;
                let console = setup.abandon(&console, true).await;
                return Err(SandboxError::AgentTimeout {
                    timeout: boot_timeout,
                    accel: if vm.emulated() { "TCG" } else { "KVM" },
                    last,
                    console,
                });
            }
            None => {
                let exit = vm.wait_exit().await;
                let console = setup.abandon(&console, true).await;
                return Err(SandboxError::DiedDuringBoot {
                    status: exit.status,
                    console,
                });
            }
        };
        tracing::info!(sandbox_id = %id, ready_ms = boot.total().as_millis() as u64, kernel = %details.kernel_release, "agent ready");
        if let Err(status) = agent
            .create_sandbox(pb::CreateSandboxRequest {
                sandbox_id: id.clone(),
                hostname: config.hostname.clone().unwrap_or_default(),
                registry_tunnels: tunnels
                    .into_iter()
                    .map(|(listen, host_port)| pb::RegistryTunnel { listen, host_port })
                    .collect(),
                published_ports: published
                    .announced()
                    .into_iter()
                    .map(|(guest_port, vsock_port)| pb::PublishedPort {
                        guest_port: u32::from(guest_port),
                        vsock_port,
                    })
                    .collect(),
                network: config
                    .network
                    .as_ref()
                    .zip(setup.network.as_ref())
                    .map(|(settings, attached)| settings.pod_network(attached)),
            })
            .await
        {
            vm.shutdown().await;
            setup.abandon(&console, false).await;
            return Err(SandboxError::Agent {
                call: "CreateSandbox",
                message: status.message().to_owned(),
            });
        }

        // The agent listens on the published ports' vsock ports now.
        let published_servers = published.serve(vm.vsock_socket());
        let network = setup.hand_over();

        let (state_tx, state) = watch::channel(SandboxState::Ready);
        let (commands, mut rx) = mpsc::channel::<Command>(4);
        let state_root = config.state_root.clone();
        let task_id = id.clone();
        let task_dir = dir.clone();
        let task = tokio::spawn(async move {
            // The tunnels and published ports live exactly as long as the VM's supervisor.
            let _tunnel_servers = tunnel_servers;
            let _published_servers = published_servers;
            // So does the pod network, detached once the VM is gone.
            let mut network = network;
            loop {
                tokio::select! {
                    exit = vm.wait_exit() => {
                        detach(network.take(), &task_id).await;
                        let kept = retire(&state_root, &task_id, &task_dir, &console, true);
                        tracing::error!(sandbox_id = %task_id, status = %exit.status, "VM exited unexpectedly");
                        let _ = state_tx.send(SandboxState::Failed(format!(
                            "the VM exited unexpectedly ({}); console log: {}",
                            exit.status,
                            kept.display()
                        )));
                        // Answer until the handle goes away.
                        while let Some(cmd) = rx.recv().await {
                            match cmd {
                                Command::Stop(reply) => {
                                    let _ = reply.send(());
                                }
                                Command::Status(reply) => {
                                    let _ = reply.send(Err(format!("VM exited ({})", exit.status)));
                                }
                            }
                        }
                        return;
                    }
                    cmd = rx.recv() => {
                        let reply = match cmd {
                            Some(Command::Status(reply)) => {
                                let _ = reply.send(vm.status().await.map_err(|e| e.to_string()));
                                continue;
                            }
                            Some(Command::Stop(reply)) => Some(reply),
                            None => None,
                        };
                        let exit = vm.shutdown().await;
                        detach(network.take(), &task_id).await;
                        retire(&state_root, &task_id, &task_dir, &console, false);
                        tracing::info!(sandbox_id = %task_id, status = %exit.status, "sandbox stopped");
                        let _ = state_tx.send(SandboxState::Stopped);
                        if let Some(reply) = reply {
                            let _ = reply.send(());
                        }
                        return;
                    }
                }
            }
        });
        Ok(Self {
            id,
            dir,
            agent,
            details,
            boot,
            state,
            commands,
            task: Some(task),
        })
    }

    /// Sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sandbox's private directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client for the sandbox's agent (cheap to clone).
    pub fn agent(&self) -> AgentClient {
        self.agent.clone()
    }

    /// What the agent reported when it came up.
    pub fn guest_details(&self) -> &pb::GuestDetails {
        &self.details
    }

    /// How the launch's time was spent, phase by phase (`--timings`, the boot benchmark).
    pub fn boot_phases(&self) -> &BootPhases {
        &self.boot
    }

    /// Watches the sandbox state (changes to `Failed` the moment the VM dies).
    pub fn state(&self) -> watch::Receiver<SandboxState> {
        self.state.clone()
    }

    /// The VMM's view of the VM (QMP `query-status`), e.g. `running`.
    pub async fn vm_status(&self) -> Result<String, SandboxError> {
        let not_running = |reason: String| SandboxError::NotRunning {
            id: self.id.clone(),
            reason,
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Status(tx))
            .await
            .map_err(|_| not_running("supervisor ended".into()))?;
        rx.await
            .map_err(|_| not_running("supervisor ended".into()))?
            .map_err(not_running)
    }

    /// Resolves with the failure message when the VM dies unexpectedly.
    pub async fn failed(&self) -> String {
        let mut state = self.state.clone();
        loop {
            if let SandboxState::Failed(msg) = &*state.borrow_and_update() {
                return msg.clone();
            }
            if state.changed().await.is_err() {
                return "sandbox supervisor ended".into();
            }
        }
    }

    /// Tears the sandbox down: asks the agent to remove its containers, stops the VM and every
    /// helper process, and removes the sandbox's files.
    pub async fn stop(self) {
        let Self {
            id,
            mut agent,
            state,
            commands,
            task,
            ..
        } = self;
        if *state.borrow() == SandboxState::Ready {
            let destroy = agent.destroy_sandbox(pb::DestroySandboxRequest { power_off: false });
            if let Err(err) = tokio::time::timeout(Duration::from_secs(5), destroy).await {
                tracing::warn!(sandbox_id = %id, %err, "DestroySandbox timed out");
            }
        }
        let (tx, rx) = oneshot::channel();
        if commands.send(Command::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        // Closing the command channel ends the supervisor.
        drop(commands);
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sandbox_keeps_its_console_and_vmm_logs_and_nothing_else() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = state.path().join("sandboxes/s1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let console = dir.join("console.log");
        std::fs::write(&console, "guest says\n").expect("write");
        std::fs::write(dir.join("vhost.err"), "backend error\n").expect("write");
        std::fs::write(dir.join("qemu.log"), "").expect("write");
        std::fs::write(dir.join("vm.vsock"), "not a log").expect("write");

        let kept = retire(state.path(), "s1", &dir, &console, true);
        assert_eq!(kept, state.path().join("logs/s1-console.log"));
        assert_eq!(
            std::fs::read_to_string(&kept).expect("read"),
            "guest says\n"
        );
        let mut names: Vec<String> = std::fs::read_dir(state.path().join("logs"))
            .expect("logs")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // The empty QEMU log and the socket are not kept.
        assert_eq!(names, ["s1-console.log", "s1-vhost.err"]);
        assert!(!dir.exists());
    }

    #[test]
    fn a_sandbox_retired_without_keeping_leaves_no_logs() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = state.path().join("sandboxes/s2");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let console = dir.join("console.log");
        std::fs::write(&console, "guest says\n").expect("write");
        std::fs::write(dir.join("vhost.err"), "backend error\n").expect("write");

        retire(state.path(), "s2", &dir, &console, false);
        assert!(!dir.exists());
        assert!(!state.path().join("logs").exists());
    }
}
