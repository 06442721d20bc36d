//! The agent's request path: decode (in `request`) → [`Gate::authorize`] → one exhaustive
//! dispatch. Sandbox and container state live here.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use coffer_agent_protocol::v1 as pb;
use coffer_policies as pol;
use tokio::sync::{Mutex, broadcast};

use crate::cgroup;
use crate::error::AgentError;
use crate::oci::{ChildIo, OciRuntime};
use crate::policy::{Gate, Permit};
use crate::process::{OutputStream, Process, ProcessIo, StdioPipes};
use crate::reaper::Reaper;
use crate::request::{AgentRequest, Id, OutputKind, ProcessRef, RootfsSource};
use crate::rootfs;

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

/// An image pulled by `PullImage`, waiting for its container's `CreateContainer`.
#[derive(Debug)]
struct PrePulled {
    reference: String,
    root: PathBuf,
}

#[derive(Debug)]
struct Container {
    id: Id,
    bundle: PathBuf,
    init: Process,
    started: std::sync::atomic::AtomicBool,
    execs: StdMutex<HashMap<Id, Arc<Process>>>,
    /// What the policy recorded when it admitted the container.
    record: crate::policy::Record,
}

impl Container {
    fn running(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::SeqCst) && self.init.exited().is_none()
    }
}

#[derive(Debug, Default)]
struct State {
    sandbox: Option<Id>,
    containers: HashMap<Id, Arc<Container>>,
    /// The containers this sandbox has started, removed ones included (the policy input's
    /// `state.ever_started`): removing the started containers must not reopen network set-up.
    ever_started: Vec<String>,
    /// Registry tunnel and published port servers, closed with the sandbox.
    tunnels: Vec<tokio::task::JoinHandle<()>>,
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    gate: Gate,
    oci: OciRuntime,
    state: Mutex<State>,
    /// Ids being created, uploaded, pulled or removed right now (never held across an await).
    busy: Arc<StdMutex<HashSet<Id>>>,
    /// Images pulled ahead of their container, by container id.
    pulled: Arc<StdMutex<HashMap<Id, PrePulled>>>,
    oom: broadcast::Sender<Id>,
    /// The workload identity, for containers whose identity mount the policy admitted.
    identities: Arc<crate::identity::Identities>,
    /// Held from a StartContainer's (or ExecProcess's) decision until it is done, so no start or
    /// exec is decided as coming before a start that is already under way (the policy admits
    /// network set-up only before the first start).
    starting: Mutex<()>,
    /// The netfilter modules, loaded for the first container that may change the pod's network.
    netfilter: crate::network::Netfilter,
    /// The pod's network, applied once.
    network_setup: crate::network_setup::NetworkSetup,
}

/// Removes an id from the busy set when dropped.
struct BusyGuard {
    busy: Arc<StdMutex<HashSet<Id>>>,
    id: Id,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Agent {
    /// Builds the agent; `reaper` must already be running.
    pub fn new(config: AgentConfig, gate: Gate, reaper: Reaper) -> Result<Arc<Self>, AgentError> {
        for dir in ["containers", "uploads", "pulls", "oci", "scratch"] {
            let path = config.state_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| AgentError::io("create", &path, e))?;
        }
        let oci = OciRuntime::new(
            config.helper_exe.clone(),
            config.state_dir.join("oci"),
            config.state_dir.join("scratch"),
            reaper,
        );
        let (oom, _) = broadcast::channel(64);
        let identities =
            crate::identity::Identities::new(config.images.as_ref().and_then(|i| i.broker()));
        let agent = Arc::new(Self {
            config,
            gate,
            oci,
            state: Mutex::new(State::default()),
            busy: Arc::new(StdMutex::new(HashSet::new())),
            pulled: Arc::new(StdMutex::new(HashMap::new())),
            oom,
            identities,
            starting: Mutex::new(()),
            netfilter: crate::network::Netfilter::default(),
            network_setup: crate::network_setup::NetworkSetup::default(),
        });
        tokio::spawn(watch_oom(Arc::downgrade(&agent)));
        Ok(agent)
    }

    /// The single entry point for every request: authorize, then dispatch.
    pub async fn handle(&self, request: AgentRequest) -> Result<Reply, AgentError> {
        // A start or exec is decided and done under one lock (both are short: the container
        // already exists), so the policy's "before the first start" holds for each of them.
        let _starting = match request {
            AgentRequest::StartContainer { .. } | AgentRequest::ExecProcess { .. } => {
                Some(self.starting.lock().await)
            }
            _ => None,
        };
        let state = self.policy_state().await;
        let permit = self.gate.authorize(&request, &state)?;
        self.dispatch(permit, request).await
    }

    /// What the policy knows about the sandbox: its containers, in id order.
    async fn policy_state(&self) -> coffer_policies::SandboxState {
        let state = self.state.lock().await;
        let mut containers: Vec<_> = state
            .containers
            .values()
            .map(|c| coffer_policies::ContainerState {
                id: c.id.to_string(),
                image_digest: None,
                started: c.started.load(std::sync::atomic::Ordering::SeqCst),
                record: c.record.clone(),
            })
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        coffer_policies::SandboxState {
            containers,
            ever_started: state.ever_started.clone(),
        }
    }

    async fn dispatch(&self, permit: Permit, request: AgentRequest) -> Result<Reply, AgentError> {
        match request {
            AgentRequest::CreateSandbox {
                sandbox_id,
                hostname,
                tunnels,
                published,
                network,
            } => {
                self.create_sandbox(sandbox_id, hostname, tunnels, published, network)
                    .await
            }
            AgentRequest::DestroySandbox { power_off } => self.destroy_sandbox(power_off).await,
            AgentRequest::UploadRootfs {
                container,
                first,
                first_is_last,
                body,
            } => {
                self.upload_rootfs(container, first, first_is_last, body)
                    .await
            }
            AgentRequest::PullImage {
                container,
                reference,
            } => self.pull_image(container, reference).await,
            AgentRequest::CreateContainer {
                container,
                spec,
                rootfs,
            } => {
                self.create_container(container, *spec, rootfs, permit.into_record())
                    .await
            }
            AgentRequest::StartContainer { container } => self.start_container(container).await,
            AgentRequest::RemoveContainer { container, force } => {
                self.remove_container(container, force).await
            }
            AgentRequest::StatsContainer { container } => {
                let c = self.container(&container).await?;
                let s = cgroup::stats(c.id.as_str());
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
                let rx = self.process(&process).await?.exit.clone();
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
                    let c = self.container(&process.container).await?;
                    self.oci.kill_all(c.id.as_str(), signal as i32).await?;
                } else {
                    self.process(&process).await?.signal(signal)?;
                }
                Ok(Reply::Empty)
            }
            AgentRequest::WriteStdin { process, data } => {
                let p = self.process(&process).await?;
                let written = p.io.write_stdin(&data).await?;
                Ok(Reply::Written(pb::WriteStdinResponse {
                    written: written as u64,
                }))
            }
            AgentRequest::CloseStdin { process } => {
                self.process(&process).await?.io.close_stdin();
                Ok(Reply::Empty)
            }
            AgentRequest::ReadOutput { process, kind } => {
                let p = self.process(&process).await?;
                Ok(Reply::Output(p.io.output(kind == OutputKind::Stderr)?))
            }
            AgentRequest::TtyWinResize {
                process,
                rows,
                columns,
            } => {
                self.process(&process).await?.io.resize(rows, columns)?;
                Ok(Reply::Empty)
            }
            AgentRequest::GetGuestDetails => Ok(Reply::Details(self.guest_details().await)),
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

    async fn require_sandbox(&self) -> Result<(), AgentError> {
        if self.state.lock().await.sandbox.is_some() {
            Ok(())
        } else {
            Err(AgentError::NoSandbox)
        }
    }

    async fn container(&self, id: &Id) -> Result<Arc<Container>, AgentError> {
        let state = self.state.lock().await;
        if state.sandbox.is_none() {
            return Err(AgentError::NoSandbox);
        }
        state
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_string()))
    }

    /// Looks a process up; the init process is borrowed through its container.
    async fn process(&self, r: &ProcessRef) -> Result<ProcessHandle, AgentError> {
        let c = self.container(&r.container).await?;
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

    /// Marks `id` busy (being created/uploaded/removed); refuses if it already is.
    async fn claim(&self, id: &Id, kind: &'static str) -> Result<BusyGuard, AgentError> {
        self.require_sandbox().await?;
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(id.clone()) {
            return Err(AgentError::FailedPrecondition(format!(
                "{kind} {id} has another operation in progress"
            )));
        }
        Ok(BusyGuard {
            busy: Arc::clone(&self.busy),
            id: id.clone(),
        })
    }

    async fn create_sandbox(
        &self,
        id: Id,
        hostname: Option<String>,
        tunnels: Vec<crate::tunnel::Tunnel>,
        published: Vec<crate::publish::PublishedPort>,
        network: Option<crate::pod_network::PodNetwork>,
    ) -> Result<Reply, AgentError> {
        let mut state = self.state.lock().await;
        if let Some(existing) = &state.sandbox {
            return Err(AgentError::SandboxExists(existing.to_string()));
        }
        let name = hostname.as_deref().unwrap_or("coffer");
        if self.config.is_init {
            nix::unistd::sethostname(name)
                .map_err(|e| AgentError::io("sethostname", name, e.into()))?;
            // The pod's loopback (its containers share the guest's network namespace and talk
            // over it; the tunnels' guest ends listen on it) and its network, before any
            // container exists.
            self.network_setup.apply(network.as_ref()).await?;
        }
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
        state.tunnels = servers;
        tracing::info!(sandbox_id = %id, tunnels = tunnels.len(), published = published.len(), "sandbox created");
        state.sandbox = Some(id);
        Ok(Reply::Sandbox(pb::CreateSandboxResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn destroy_sandbox(&self, power_off: bool) -> Result<Reply, AgentError> {
        let ids: Vec<Id> = {
            let state = self.state.lock().await;
            if state.sandbox.is_none() {
                return Err(AgentError::NoSandbox);
            }
            state.containers.keys().cloned().collect()
        };
        for id in ids {
            if let Err(err) = self.remove_container(id.clone(), true).await {
                tracing::warn!(container_id = %id, %err, "removing container during destroy");
            }
        }
        // Pulled images and rootfs uploads never claimed by a container go too.
        let pulled: Vec<Id> = self
            .pulled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
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
            let mut state = self.state.lock().await;
            state.sandbox = None;
            for tunnel in state.tunnels.drain(..) {
                tunnel.abort();
            }
        }
        tracing::info!("sandbox destroyed");
        if power_off && self.config.is_init {
            tokio::spawn(async {
                // Let the reply reach the host first.
                tokio::time::sleep(Duration::from_millis(100)).await;
                crate::init::power_off();
            });
        }
        Ok(Reply::Empty)
    }

    /// Removes the image pulled ahead for `id`, if any.
    fn discard_pulled(&self, id: &Id) {
        let removed = self
            .pulled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Some(pre) = removed
            && let Err(err) = std::fs::remove_dir_all(&pre.root)
        {
            tracing::warn!(container_id = %id, %err, "removing a pulled image");
        }
    }

    /// The image pulled ahead for `id`, when it was pulled from exactly `reference`; a pull of
    /// another reference is discarded.
    fn take_pulled(&self, id: &Id, reference: &str) -> Option<PathBuf> {
        let mut pulled = self.pulled.lock().unwrap_or_else(PoisonError::into_inner);
        match pulled.remove(id) {
            Some(pre) if pre.reference == reference => Some(pre.root),
            Some(pre) => {
                drop(pulled);
                let _ = std::fs::remove_dir_all(&pre.root);
                None
            }
            None => None,
        }
    }

    /// `PullImage`: pulls in a task of its own, streaming its events; the host dropping the
    /// stream abandons the pull, which then leaves nothing.
    async fn pull_image(&self, id: Id, reference: String) -> Result<Reply, AgentError> {
        let images =
            self.config.images.clone().ok_or_else(|| {
                AgentError::FailedPrecondition("guest pull is not configured".into())
            })?;
        let busy = self.claim(&id, "container").await?;
        if self.state.lock().await.containers.contains_key(&id) {
            return Err(AgentError::AlreadyExists {
                kind: "container",
                id: id.to_string(),
            });
        }
        self.discard_pulled(&id);
        let root = self.config.state_dir.join("pulls").join(id.as_str());
        let _ = std::fs::remove_dir_all(&root);
        let pulled = Arc::clone(&self.pulled);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _busy = busy;
            let events = tx.clone();
            let report = crate::pull_report::PullReport::new(Some(Box::new(move |event| {
                let _ = events.send(Ok(pb::PullEvent { event: Some(event) }));
            })));
            let outcome = tokio::select! {
                r = images.pull_into(id.as_str(), &reference, &root, Some(&report)) => r,
                () = tx.closed() => {
                    tracing::info!(container_id = %id, "pull abandoned by the host");
                    let _ = std::fs::remove_dir_all(&root);
                    return;
                }
            };
            match outcome {
                Ok(image) => {
                    let done = pb::PullDone {
                        manifest_digest: image.manifest_digest.to_string(),
                        timings: Some(report.finish()),
                    };
                    pulled
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, PrePulled { reference, root });
                    let _ = tx.send(Ok(pb::PullEvent {
                        event: Some(pb::pull_event::Event::Done(done)),
                    }));
                }
                Err(err) => {
                    let _ = tx.send(Err(err));
                }
            }
        });
        Ok(Reply::Pull(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    fn upload_dir(&self, id: &Id) -> PathBuf {
        self.config.state_dir.join("uploads").join(id.as_str())
    }

    fn bundle_dir(&self, id: &Id) -> PathBuf {
        self.config.state_dir.join("containers").join(id.as_str())
    }

    async fn upload_rootfs(
        &self,
        id: Id,
        first: Bytes,
        first_is_last: bool,
        mut body: Box<tonic::Streaming<pb::RootfsChunk>>,
    ) -> Result<Reply, AgentError> {
        let _busy = self.claim(&id, "container").await?;
        if self.state.lock().await.containers.contains_key(&id) || self.upload_dir(&id).exists() {
            return Err(AgentError::AlreadyExists {
                kind: "rootfs upload",
                id: id.to_string(),
            });
        }
        let partial = self
            .config
            .state_dir
            .join("uploads")
            .join(format!("{id}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| AgentError::io("create", &partial, e))?;

        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let dest = partial.clone();
        let unpacker =
            tokio::task::spawn_blocking(move || rootfs::unpack(ChannelReader::new(rx), &dest));
        let max = self.config.max_rootfs_bytes;
        let mut total = first.len() as u64;
        let feed: Result<(), AgentError> = async {
            let mut last = first_is_last;
            if !first.is_empty() && tx.send(first).await.is_err() {
                return Ok(());
            }
            while let Some(chunk) = body.message().await.map_err(|s| {
                AgentError::InvalidArgument(format!("rootfs stream: {}", s.message()))
            })? {
                if last {
                    return Err(AgentError::InvalidArgument(
                        "rootfs stream continues after its last chunk".into(),
                    ));
                }
                last = chunk.last;
                total += chunk.data.len() as u64;
                if total > max {
                    return Err(AgentError::ResourceExhausted(format!(
                        "rootfs larger than {max} bytes"
                    )));
                }
                if tx.send(chunk.data.into()).await.is_err() {
                    // The unpacker stopped early; its error is reported below.
                    return Ok(());
                }
            }
            if last {
                Ok(())
            } else {
                Err(AgentError::InvalidArgument(
                    "rootfs stream ended without its last chunk (truncated)".into(),
                ))
            }
        }
        .await;
        drop(tx);
        let unpacked = unpacker
            .await
            .map_err(|e| AgentError::Internal(format!("unpack task: {e}")));
        let result = match (feed, unpacked) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(Err(reason))) => Err(AgentError::Rootfs {
                container_id: id.to_string(),
                reason,
            }),
            (Ok(()), Ok(Ok(done))) => Ok(done),
        };
        match result {
            Ok(done) => {
                let final_dir = self.upload_dir(&id);
                std::fs::rename(&partial, &final_dir)
                    .map_err(|e| AgentError::io("rename", &final_dir, e))?;
                tracing::info!(container_id = %id, bytes = total, entries = done.entries, "rootfs uploaded");
                Ok(Reply::Uploaded(pb::UploadRootfsResponse {
                    bytes: total,
                    entries: done.entries,
                }))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                Err(e)
            }
        }
    }

    async fn create_container(
        &self,
        id: Id,
        mut spec: pol::CreateContainer,
        rootfs: RootfsSource,
        record: crate::policy::Record,
    ) -> Result<Reply, AgentError> {
        let _busy = self.claim(&id, "container").await?;
        if self.state.lock().await.containers.contains_key(&id) {
            return Err(AgentError::AlreadyExists {
                kind: "container",
                id: id.to_string(),
            });
        }
        if crate::network::holds_network_capabilities(&spec.process) && self.config.is_init {
            self.netfilter.load().await?;
        }
        let bundle = self.bundle_dir(&id);
        let result = self
            .build_container(&id, &mut spec, rootfs, &bundle, record)
            .await;
        match result {
            Ok(container) => {
                self.state
                    .lock()
                    .await
                    .containers
                    .insert(id.clone(), Arc::new(container));
                tracing::info!(container_id = %id, "container created");
                Ok(Reply::Empty)
            }
            Err(err) => {
                // Leave nothing half-done: runtime state, cgroup, sealed files, identity files
                // and bundle go.
                let _ = self.oci.delete(id.as_str(), true).await;
                crate::secrets::release_files(&crate::secrets::files_dir(&bundle));
                self.identities
                    .release(&crate::identity::files_dir(&bundle));
                let _ = std::fs::remove_dir_all(&bundle);
                Err(err)
            }
        }
    }

    async fn build_container(
        &self,
        id: &Id,
        spec: &mut pol::CreateContainer,
        rootfs: RootfsSource,
        bundle: &Path,
        record: crate::policy::Record,
    ) -> Result<Container, AgentError> {
        let rootfs_dir = bundle.join("rootfs");
        match rootfs {
            RootfsSource::Uploaded => {
                let upload = self.upload_dir(id);
                if !upload.is_dir() {
                    return Err(AgentError::FailedPrecondition(format!(
                        "no rootfs was uploaded for container {id}"
                    )));
                }
                std::fs::create_dir_all(bundle).map_err(|e| AgentError::io("create", bundle, e))?;
                std::fs::rename(&upload, &rootfs_dir)
                    .map_err(|e| AgentError::io("rename", &rootfs_dir, e))?;
            }
            RootfsSource::Image(reference) => {
                let images = self.config.images.as_ref().ok_or_else(|| {
                    AgentError::FailedPrecondition("guest pull is not configured".into())
                })?;
                std::fs::create_dir_all(bundle).map_err(|e| AgentError::io("create", bundle, e))?;
                match self.take_pulled(id, &reference) {
                    Some(root) => std::fs::rename(&root, &rootfs_dir).map_err(|e| {
                        let _ = std::fs::remove_dir_all(&root);
                        AgentError::io("rename", &rootfs_dir, e)
                    })?,
                    None => {
                        images
                            .pull_into(id.as_str(), &reference, &rootfs_dir, None)
                            .await?;
                    }
                }
            }
        }
        // After the policy admitted the request as the host sent it: sealed references become
        // their secrets and the agent's typed mounts binds of the files it made, inside the guest
        // only. Everything else runs as authorized.
        let broker = self.config.images.as_ref().and_then(|i| i.broker());
        let owner = (spec.process.user.uid, spec.process.user.gid);
        crate::secrets::resolve_env(id.as_str(), &mut spec.process, broker.as_ref()).await?;
        crate::secrets::resolve_files(
            id.as_str(),
            &mut spec.mounts,
            owner,
            broker.as_ref(),
            &crate::secrets::files_dir(bundle),
        )
        .await?;
        self.identities
            .resolve(
                id.as_str(),
                &mut spec.mounts,
                owner,
                &crate::identity::files_dir(bundle),
            )
            .await?;
        crate::pod_files::resolve_mounts(
            &mut spec.mounts,
            &crate::pod_files::dir(&self.config.state_dir),
        )?;
        let config = bundle.join("config.json");
        let rendered = crate::spec::render_container(
            spec,
            &rootfs_dir.display().to_string(),
            &cgroup::relative_path(id.as_str()),
        );
        let json = serde_json::to_vec(&rendered)
            .map_err(|e| AgentError::Internal(format!("serialize spec: {e}")))?;
        std::fs::write(&config, json).map_err(|e| AgentError::io("write", &config, e))?;

        let terminal = spec.process.terminal;
        let (child, pending) = self.prepare_io(terminal)?;
        let pid = match self.oci.create(id.as_str(), bundle, child).await {
            Ok(pid) => pid,
            Err(err) => {
                pending.abandon();
                return Err(err);
            }
        };
        let exited = self.oci_reaper_watch(pid);
        // On failure the caller deletes the container, which kills the waiting init.
        let io = pending.ready().await?;
        Ok(Container {
            id: id.clone(),
            bundle: bundle.to_path_buf(),
            init: Process::new(pid, io, exited),
            started: false.into(),
            execs: StdMutex::new(HashMap::new()),
            record,
        })
    }

    /// Stdio for a new process: pipes, or a console socket on which the runtime will hand over
    /// the master of a new pseudo-terminal.
    fn prepare_io(&self, terminal: bool) -> Result<(ChildIo, PendingIo), AgentError> {
        if !terminal {
            let pipes = StdioPipes::new()?;
            return Ok((ChildIo::Pipes(pipes.child), PendingIo::Pipes(pipes.io)));
        }
        let path = self
            .config
            .state_dir
            .join("scratch")
            .join(format!("console-{}.sock", next_console()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| AgentError::io("bind console socket", &path, e))?;
        let master = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            tokio::task::spawn_blocking(move || receive_fd(&stream))
                .await
                .map_err(std::io::Error::other)?
        });
        Ok((
            ChildIo::Console(path.clone()),
            PendingIo::Console { path, master },
        ))
    }

    fn oci_reaper_watch(&self, pid: u32) -> tokio::sync::oneshot::Receiver<crate::reaper::Exit> {
        self.oci.reaper().watch(pid)
    }

    async fn start_container(&self, id: Id) -> Result<Reply, AgentError> {
        let c = self.container(&id).await?;
        if c.started.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id} was already started"
            )));
        }
        // Noted before the start: one that fails half-way may still have run the process.
        coffer_policies::note_started(&mut self.state.lock().await.ever_started, id.as_str());
        self.oci.start(id.as_str()).await?;
        c.started.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(container_id = %id, pid = c.init.pid, "container started");
        Ok(Reply::Started(pb::StartContainerResponse {
            pid: c.init.pid,
        }))
    }

    async fn exec_process(
        &self,
        r: ProcessRef,
        process: pol::Process,
    ) -> Result<Reply, AgentError> {
        let c = self.container(&r.container).await?;
        let exec = r
            .exec
            .clone()
            .ok_or_else(|| AgentError::InvalidArgument("exec_id is required".into()))?;
        if !c.running() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        {
            let execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
            if execs.contains_key(&exec) {
                return Err(AgentError::AlreadyExists {
                    kind: "process",
                    id: r.to_string(),
                });
            }
        }
        let file = c.bundle.join(format!("exec-{exec}.json"));
        let json = serde_json::to_vec(&crate::spec::render_process(&process))
            .map_err(|e| AgentError::Internal(format!("serialize process: {e}")))?;
        std::fs::write(&file, json).map_err(|e| AgentError::io("write", &file, e))?;
        let (child, pending) = self.prepare_io(process.terminal)?;
        let pid = self.oci.exec(c.id.as_str(), &file, child).await;
        let _ = std::fs::remove_file(&file);
        let pid = match pid {
            Ok(pid) => pid,
            Err(err) => {
                pending.abandon();
                return Err(err);
            }
        };
        let exited = self.oci_reaper_watch(pid);
        let io = match pending.ready().await {
            Ok(io) => io,
            Err(err) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(err);
            }
        };
        let proc = Arc::new(Process::new(pid, io, exited));
        let mut execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
        if execs.contains_key(&exec) {
            // Lost a race with an identical request: ours is already running, so stop it.
            let _ = proc.signal(nix::sys::signal::Signal::SIGKILL);
            return Err(AgentError::AlreadyExists {
                kind: "process",
                id: r.to_string(),
            });
        }
        execs.insert(exec, proc);
        tracing::info!(process = %r, pid, "process started");
        Ok(Reply::Execed(pb::ExecProcessResponse { pid }))
    }

    async fn remove_container(&self, id: Id, force: bool) -> Result<Reply, AgentError> {
        let c = match self.container(&id).await {
            Ok(c) => c,
            // Only an image pulled ahead exists for this id: removing it is the removal.
            Err(AgentError::ContainerNotFound(_))
                if self
                    .pulled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(&id) =>
            {
                let _busy = self.claim(&id, "container").await?;
                self.discard_pulled(&id);
                return Ok(Reply::Empty);
            }
            Err(e) => return Err(e),
        };
        let _busy = self.claim(&id, "container").await?;
        if c.init.exited().is_none() {
            if !force && c.started.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id} is running; stop it or remove with force"
                )));
            }
            self.oci
                .kill_all(id.as_str(), nix::sys::signal::Signal::SIGKILL as i32)
                .await
                .or_else(|e| match c.init.exited() {
                    Some(_) => Ok(()),
                    None => Err(e),
                })?;
            let rx = c.init.exit.clone();
            tokio::time::timeout(Duration::from_secs(10), Process::wait(rx))
                .await
                .map_err(|_| {
                    AgentError::Runtime(format!("container {id} did not die after SIGKILL"))
                })??;
        }
        self.oci.delete(id.as_str(), true).await?;
        crate::secrets::release_files(&crate::secrets::files_dir(&c.bundle));
        self.identities
            .release(&crate::identity::files_dir(&c.bundle));
        std::fs::remove_dir_all(&c.bundle)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| AgentError::io("remove", &c.bundle, e))?;
        self.state.lock().await.containers.remove(&id);
        tracing::info!(container_id = %id, "container removed");
        Ok(Reply::Empty)
    }

    async fn guest_details(&self) -> pb::GuestDetails {
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
            cgroup_version: cgroup::version().into(),
            sandbox_id: self
                .state
                .lock()
                .await
                .sandbox
                .as_ref()
                .map(Id::to_string)
                .unwrap_or_default(),
        }
    }
}

/// A new process's stdio on the agent's side, before the process exists.
enum PendingIo {
    Pipes(ProcessIo),
    Console {
        path: PathBuf,
        master: tokio::task::JoinHandle<std::io::Result<std::os::fd::OwnedFd>>,
    },
}

impl PendingIo {
    /// The process's stdio once it runs (for a terminal: once the master arrived).
    async fn ready(self) -> Result<ProcessIo, AgentError> {
        match self {
            Self::Pipes(io) => Ok(io),
            Self::Console { path, master } => {
                let got = tokio::time::timeout(Duration::from_secs(10), master).await;
                let _ = std::fs::remove_file(&path);
                let fd = match got {
                    Ok(Ok(Ok(fd))) => fd,
                    Ok(Ok(Err(e))) => return Err(AgentError::io("receive terminal", &path, e)),
                    Ok(Err(e)) => return Err(AgentError::Internal(format!("console task: {e}"))),
                    Err(_) => {
                        return Err(AgentError::Runtime(
                            "the container runtime never sent the terminal".into(),
                        ));
                    }
                };
                ProcessIo::terminal(fd)
            }
        }
    }

    /// Gives up on a process that was never created.
    fn abandon(self) {
        if let Self::Console { path, master } = self {
            master.abort();
            let _ = std::fs::remove_file(path);
        }
    }
}

fn next_console() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Receives one file descriptor (SCM_RIGHTS) from `socket`.
fn receive_fd(socket: &std::os::unix::net::UnixStream) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut data = [0u8; 4096];
    rustix::net::recvmsg(
        socket,
        &mut [std::io::IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(std::io::Error::other("no file descriptor received"))
}

/// Either a container's init process or one of its exec'd processes.
enum ProcessHandle {
    Init(Arc<Container>),
    Exec(Arc<Process>),
}

impl std::ops::Deref for ProcessHandle {
    type Target = Process;
    fn deref(&self) -> &Process {
        match self {
            Self::Init(c) => &c.init,
            Self::Exec(p) => p,
        }
    }
}

/// Polls the OOM counters of live containers and broadcasts increments.
async fn watch_oom(agent: std::sync::Weak<Agent>) {
    let mut seen: HashMap<Id, u64> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(agent) = agent.upgrade() else { return };
        let ids: Vec<Id> = agent
            .state
            .lock()
            .await
            .containers
            .keys()
            .cloned()
            .collect();
        seen.retain(|id, _| ids.contains(id));
        for id in ids {
            let Some(count) = cgroup::oom_kills(id.as_str()) else {
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

/// Adapts a channel of chunks into a blocking reader for the tar unpacker.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
