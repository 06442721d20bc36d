//! The agent's request path: decode (in `request`) → [`Gate::authorize`] and reservation, under
//! one lock → one exhaustive dispatch.
//!
//! - [`state`]: the sandbox state and its one owner; a request's decision and what it reserves
//!   (an id, the sandbox's creation, a start the policy must remember) are atomic with respect to
//!   every other request.
//! - `containers`: uploads, pulls, container creation, start, exec and removal.
//! - `stdio`: a new process's standard streams and terminals.
//! - the guest machine's own operations go through [`Host`](crate::host::Host), so this core is
//!   unit-tested with a recording fake (`tests`).

mod containers;
mod state;
mod stdio;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use coffer_agent_protocol::v1 as pb;
use tokio::sync::{Mutex, broadcast};

use self::state::{Phase, Reservation, Shared};
use self::stdio::ProcessHandle;
use crate::error::AgentError;
use crate::host::Host;
use crate::oci::{ContainerRuntime, OciRuntime};
use crate::policy::{Gate, Permit};
use crate::process::{OutputStream, Process};
use crate::reaper::Reaper;
use crate::request::{AgentRequest, Id, OutputKind, ProcessRef};

/// Agent configuration, fixed at start-up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where containers, uploads and runtime state live.
    pub state_dir: PathBuf,
    /// The agent binary, re-executed for OCI runtime operations.
    pub helper_exe: PathBuf,
    /// Running as the guest's PID 1 (may set the hostname and power off).
    pub is_init: bool,
    /// Largest accepted rootfs upload, bytes.
    pub max_rootfs_bytes: u64,
    /// Guest pull, configured from initdata; `None` refuses image rootfs sources.
    pub images: Option<Arc<crate::images::Images>>,
}

/// What a dispatched request produced; the service layer turns it into the RPC's response type.
#[derive(Debug)]
pub enum Reply {
    /// No payload.
    Empty,
    /// `CreateSandbox`.
    Sandbox(pb::CreateSandboxResponse),
    /// `UploadRootfs`.
    Uploaded(pb::UploadRootfsResponse),
    /// `StartContainer`.
    Started(pb::StartContainerResponse),
    /// `ExecProcess`.
    Execed(pb::ExecProcessResponse),
    /// `StatsContainer`.
    Stats(pb::StatsContainerResponse),
    /// `WaitProcess`.
    Exited(pb::WaitProcessResponse),
    /// `WriteStdin`.
    Written(pb::WriteStdinResponse),
    /// `ReadStdout`/`ReadStderr`.
    Output(OutputStream),
    /// `PullImage`: events until the pull ends.
    Pull(PullEvents),
    /// `GetGuestDetails`.
    Details(pb::GuestDetails),
    /// `GetOOMEvent`.
    Oom(pb::OomEvent),
}

/// The events of one `PullImage`, ending with `done` or the pull's error.
pub type PullEvents =
    tokio_stream::wrappers::UnboundedReceiverStream<Result<pb::PullEvent, AgentError>>;

#[derive(Debug)]
pub(crate) struct Container {
    pub(crate) id: Id,
    pub(crate) bundle: PathBuf,
    pub(crate) init: Process,
    pub(crate) started: std::sync::atomic::AtomicBool,
    pub(crate) execs: StdMutex<HashMap<Id, Arc<Process>>>,
    /// What the policy recorded when it admitted the container.
    pub(crate) record: crate::policy::Record,
    /// The manifest digest of the image the guest pulled and verified for it (`sha256:…`);
    /// `None` for an uploaded rootfs.
    pub(crate) image_digest: Option<String>,
}

impl Container {
    fn running(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::SeqCst) && self.init.exited().is_none()
    }
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    gate: Gate,
    /// The container runtime.
    oci: Arc<dyn ContainerRuntime>,
    /// The guest machine's operations.
    host: Arc<dyn Host>,
    /// The sandbox state, its one owner.
    state: Shared,
    /// Held from a StartContainer's (or ExecProcess's) decision until it is done, so no start or
    /// exec is decided as coming before a start or exec that is still under way (the policy
    /// admits network set-up only before the first start).
    starting: Mutex<()>,
    oom: broadcast::Sender<Id>,
    /// The workload identity, for containers whose identity mount the policy admitted.
    identities: Arc<crate::identity::Identities>,
}

impl Agent {
    /// Builds the agent on the OCI runtime helper; `reaper` must already be running.
    pub fn new(
        config: AgentConfig,
        gate: Gate,
        reaper: Reaper,
        host: Arc<dyn Host>,
    ) -> Result<Arc<Self>, AgentError> {
        let oci = Arc::new(OciRuntime::new(
            config.helper_exe.clone(),
            config.state_dir.join("oci"),
            config.state_dir.join("scratch"),
            reaper,
        ));
        Self::with_runtime(config, gate, oci, host)
    }

    /// Builds the agent on the container runtime `oci`.
    pub fn with_runtime(
        config: AgentConfig,
        gate: Gate,
        oci: Arc<dyn ContainerRuntime>,
        host: Arc<dyn Host>,
    ) -> Result<Arc<Self>, AgentError> {
        for dir in ["containers", "uploads", "pulls", "oci", "scratch"] {
            let path = config.state_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| AgentError::io("create", &path, e))?;
        }
        let (oom, _) = broadcast::channel(64);
        let identities =
            crate::identity::Identities::new(config.images.as_ref().and_then(|i| i.broker()));
        let agent = Arc::new(Self {
            config,
            gate,
            oci,
            host,
            state: Shared::default(),
            starting: Mutex::new(()),
            oom,
            identities,
        });
        tokio::spawn(watch_oom(Arc::downgrade(&agent)));
        Ok(agent)
    }

    /// The single entry point for every request: authorize and reserve (atomically with respect
    /// to every other request), then dispatch.
    pub async fn handle(&self, request: AgentRequest) -> Result<Reply, AgentError> {
        // A start or exec is decided and done under one lock (both are short: the container
        // already exists), so the policy's "before the first start" holds for each of them.
        let _starting = match request {
            AgentRequest::StartContainer { .. } | AgentRequest::ExecProcess { .. } => {
                Some(self.starting.lock().await)
            }
            _ => None,
        };
        let (permit, reservation) = {
            let mut state = self.state.lock();
            let permit = self.gate.authorize(&request, &state.policy_view())?;
            let reservation = self.state.reserve(&mut state, &request)?;
            (permit, reservation)
        };
        self.dispatch(permit, request, reservation).await
    }

    async fn dispatch(
        &self,
        permit: Permit,
        request: AgentRequest,
        reservation: Reservation,
    ) -> Result<Reply, AgentError> {
        match request {
            AgentRequest::CreateSandbox {
                sandbox_id,
                hostname,
                tunnels,
                published,
                network,
            } => {
                self.create_sandbox(
                    sandbox_id,
                    hostname,
                    tunnels,
                    published,
                    network,
                    reservation,
                )
                .await
            }
            AgentRequest::DestroySandbox { power_off } => self.destroy_sandbox(power_off).await,
            AgentRequest::UploadRootfs {
                container,
                first,
                first_is_last,
                body,
            } => {
                self.upload_rootfs(container, first, first_is_last, body, reservation)
                    .await
            }
            AgentRequest::PullImage {
                container,
                reference,
            } => self.pull_image(container, reference, reservation).await,
            AgentRequest::CreateContainer {
                container,
                spec,
                rootfs,
            } => {
                self.create_container(container, *spec, rootfs, permit.into_record(), reservation)
                    .await
            }
            AgentRequest::StartContainer { container } => {
                self.start_container(container, reservation).await
            }
            AgentRequest::RemoveContainer { container, force } => {
                self.remove_container(container, force, reservation).await
            }
            AgentRequest::StatsContainer { container } => {
                let c = self.container(&container)?;
                let s = self.host.container_stats(c.id.as_str());
                Ok(Reply::Stats(pb::StatsContainerResponse {
                    cpu_usage_ns: s.cpu_usage_ns,
                    memory_usage_bytes: s.memory_usage_bytes,
                    memory_limit_bytes: s.memory_limit_bytes,
                    pids_current: s.pids_current,
                    oom_kills: s.oom_kills,
                }))
            }
            AgentRequest::ExecProcess { process, spec } => self.exec_process(process, *spec).await,
            AgentRequest::WaitProcess { process } => {
                let rx = self.process(&process)?.exit.clone();
                let exit = Process::wait(rx).await?;
                Ok(Reply::Exited(pb::WaitProcessResponse {
                    exit_status: exit.status(),
                    signal: match exit {
                        crate::reaper::Exit::Signal(s) => s,
                        crate::reaper::Exit::Code(_) => 0,
                    },
                }))
            }
            AgentRequest::SignalProcess {
                process,
                signal,
                all,
            } => {
                if all {
                    let c = self.container(&process.container)?;
                    self.oci.kill_all(c.id.as_str(), signal as i32).await?;
                } else {
                    self.process(&process)?.signal(self.oci.as_ref(), signal)?;
                }
                Ok(Reply::Empty)
            }
            AgentRequest::WriteStdin { process, data } => {
                let p = self.process(&process)?;
                let written = p.io.write_stdin(&data).await?;
                Ok(Reply::Written(pb::WriteStdinResponse {
                    written: written as u64,
                }))
            }
            AgentRequest::CloseStdin { process } => {
                self.process(&process)?.io.close_stdin();
                Ok(Reply::Empty)
            }
            AgentRequest::ReadOutput { process, kind } => {
                let p = self.process(&process)?;
                Ok(Reply::Output(p.io.output(kind == OutputKind::Stderr)?))
            }
            AgentRequest::TtyWinResize {
                process,
                rows,
                columns,
            } => {
                self.process(&process)?.io.resize(rows, columns)?;
                Ok(Reply::Empty)
            }
            AgentRequest::GetGuestDetails => Ok(Reply::Details(self.guest_details())),
            AgentRequest::GetOomEvent => {
                let mut rx = self.oom.subscribe();
                let id = rx
                    .recv()
                    .await
                    .map_err(|e| AgentError::Internal(format!("oom channel: {e}")))?;
                Ok(Reply::Oom(pb::OomEvent {
                    container_id: id.to_string(),
                }))
            }
        }
    }

    fn container(&self, id: &Id) -> Result<Arc<Container>, AgentError> {
        let state = self.state.lock();
        if !state.has_sandbox() {
            return Err(AgentError::NoSandbox);
        }
        state
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_string()))
    }

    /// Looks a process up; the init process is borrowed through its container.
    fn process(&self, r: &ProcessRef) -> Result<ProcessHandle, AgentError> {
        let c = self.container(&r.container)?;
        match &r.exec {
            None => Ok(ProcessHandle::Init(c)),
            Some(exec) => c
                .execs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(exec)
                .cloned()
                .map(ProcessHandle::Exec)
                .ok_or_else(|| AgentError::ProcessNotFound {
                    container_id: r.container.to_string(),
                    exec_id: exec.to_string(),
                }),
        }
    }

    async fn create_sandbox(
        &self,
        id: Id,
        hostname: Option<String>,
        tunnels: Vec<crate::tunnel::Tunnel>,
        published: Vec<crate::publish::PublishedPort>,
        network: Option<crate::pod_network::PodNetwork>,
        // Holds the sandbox in `Creating` until it exists (or gives it back on failure).
        _creating: Reservation,
    ) -> Result<Reply, AgentError> {
        let name = hostname.as_deref().unwrap_or("coffer");
        self.host.set_hostname(name)?;
        // The pod's loopback (its containers share the guest's network namespace and talk over
        // it; the tunnels' guest ends listen on it) and its network, before any container exists.
        self.host.apply_network(network.as_ref()).await?;
        // Always, so a container can always mount them (PROTOCOL.md, "Pod files").
        crate::pod_files::write(
            &crate::pod_files::dir(&self.config.state_dir),
            name,
            network.as_ref(),
        )?;
        let mut servers = crate::tunnel::open(&tunnels).await?;
        match crate::publish::open(&published) {
            Ok(more) => servers.extend(more),
            Err(err) => {
                servers.iter().for_each(tokio::task::JoinHandle::abort);
                return Err(err);
            }
        }
        {
            let mut state = self.state.lock();
            state.servers = servers;
            state.phase = Phase::Created(id.clone());
        }
        tracing::info!(sandbox_id = %id, tunnels = tunnels.len(), published = published.len(), "sandbox created");
        Ok(Reply::Sandbox(pb::CreateSandboxResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn destroy_sandbox(&self, power_off: bool) -> Result<Reply, AgentError> {
        let mut ids: Vec<Id> = {
            let state = self.state.lock();
            if !state.has_sandbox() {
                return Err(AgentError::NoSandbox);
            }
            state.containers.keys().cloned().collect()
        };
        // In id order, not the map's (random) one: the same state tears down the same way.
        ids.sort();
        let mut kept = Vec::new();
        for id in ids {
            let removed = match self.state.claim(&id) {
                Ok(reservation) => self.remove_container(id.clone(), true, reservation).await,
                Err(err) => Err(err),
            };
            if let Err(err) = removed {
                tracing::warn!(container_id = %id, %err, "removing container during destroy");
                kept.push(id.to_string());
            }
        }
        // The sandbox stays with what could not be removed, so the host can try again: a
        // destroyed sandbox never leaves a container running into the next one.
        if !kept.is_empty() {
            return Err(AgentError::DestroyIncomplete { containers: kept });
        }
        // Pulled images and rootfs uploads never claimed by a container go too.
        let pulled: Vec<Id> = self.state.lock().pulled.keys().cloned().collect();
        for id in pulled {
            self.discard_pulled(&id);
        }
        let uploads = self.config.state_dir.join("uploads");
        if let Ok(entries) = std::fs::read_dir(&uploads) {
            for entry in entries.flatten() {
                if let Err(err) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), %err, "removing unused upload");
                }
            }
        }
        {
            let mut state = self.state.lock();
            state.phase = Phase::None;
            for server in state.servers.drain(..) {
                server.abort();
            }
        }
        tracing::info!("sandbox destroyed");
        if power_off {
            let host = Arc::clone(&self.host);
            tokio::spawn(async move {
                // Let the reply reach the host first.
                tokio::time::sleep(Duration::from_millis(100)).await;
                host.power_off();
            });
        }
        Ok(Reply::Empty)
    }

    /// Removes the image pulled ahead for `id`, if any.
    fn discard_pulled(&self, id: &Id) {
        let removed = self.state.lock().pulled.remove(id);
        if let Some(pre) = removed
            && let Err(err) = std::fs::remove_dir_all(&pre.root)
        {
            tracing::warn!(container_id = %id, %err, "removing a pulled image");
        }
    }

    /// The image pulled ahead for `id` and its manifest digest, when it was pulled from exactly
    /// `reference`; a pull of another reference is discarded.
    fn take_pulled(&self, id: &Id, reference: &str) -> Option<(PathBuf, String)> {
        let removed = self.state.lock().pulled.remove(id);
        match removed {
            Some(pre) if pre.reference == reference => Some((pre.root, pre.manifest_digest)),
            Some(pre) => {
                let _ = std::fs::remove_dir_all(&pre.root);
                None
            }
            None => None,
        }
    }

    fn guest_details(&self) -> pb::GuestDetails {
        let uts = nix::sys::utsname::uname().ok();
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    let rest = l.strip_prefix("MemTotal:")?;
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
            })
            .unwrap_or(0);
        pb::GuestDetails {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: uts
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            memory_total_bytes: mem * 1024,
            online_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            cgroup_version: self.host.cgroup_version().into(),
            sandbox_id: match &self.state.lock().phase {
                Phase::Created(id) => id.to_string(),
                Phase::None | Phase::Creating => String::new(),
            },
            boot: self.config.is_init.then(crate::boot_times::snapshot),
        }
    }
}

/// Polls the OOM counters of live containers and broadcasts increments.
async fn watch_oom(agent: std::sync::Weak<Agent>) {
    let mut seen: HashMap<Id, u64> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(agent) = agent.upgrade() else { return };
        let ids: Vec<Id> = agent.state.lock().containers.keys().cloned().collect();
        seen.retain(|id, _| ids.contains(id));
        for id in ids {
            let Some(count) = agent.host.oom_kills(id.as_str()) else {
                continue;
            };
            let last = seen.insert(id.clone(), count).unwrap_or(0);
            if count > last {
                tracing::warn!(container_id = %id, oom_kills = count, "container hit its memory limit");
                let _ = agent.oom.send(id);
            }
        }
    }
}
