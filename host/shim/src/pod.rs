//! One pod: the VM (booted by the pod's first container, stopped with the container that owns it)
//! and the processes of its containers ([`Process`]). Each Task API call of [`crate::service`]
//! lands in one method here. Locks guard only the maps and are never held across an `.await`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use coffer_agent_protocol::v1 as pb;
use coffer_initdata::Initdata;
use coffer_runtime::agent_client::AgentClient;
use coffer_runtime::hypervisor::qemu::{Qemu, VmPaths};
use coffer_runtime::rootfs::{self, ContainerRootfs};
use coffer_runtime::sandbox::{self, InitdataDisk, Sandbox, SandboxState};
use containerd_shim::api::{self, Status};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::asynchronous::io::Stdio;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::topics;
use tokio::sync::{OnceCell, watch};

use crate::cleanup::{self, Record};
use crate::error::ShimError;
use crate::events::Events;
use crate::logs::LogSink;
use crate::process::{Life, Process, VM_DIED_STATUS, timestamp};
use crate::spec::{self, Membership, Role};
use crate::{config, io};

/// A container of the pod.
#[derive(Debug)]
struct Container {
    id: String,
    bundle: PathBuf,
    role: Role,
    owns_vm: bool,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<Arc<Process>, ShimError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound {
                kind: "process",
                id: format!("{}/{exec_id}", self.id),
            })
    }

    fn processes(&self) -> Vec<Arc<Process>> {
        let mut all = vec![self.init.clone()];
        all.extend(
            self.execs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned(),
        );
        all
    }
}

/// The pod VM.
#[derive(Debug)]
struct PodVm {
    agent: AgentClient,
    state: watch::Receiver<SandboxState>,
    /// Boot and pull timings for a node exporter (`metrics_dir`).
    metrics: crate::metrics::PodMetrics,
    /// Taken by the one teardown.
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
}

impl PodVm {
    fn gone(&self) -> Option<String> {
        match &*self.state.borrow() {
            SandboxState::Ready => None,
            SandboxState::Failed(msg) => Some(msg.clone()),
            SandboxState::Stopped => Some("the pod VM was stopped".into()),
        }
    }
}

/// A pod: what one shim serves.
pub struct Pod {
    events: Events,
    logs: Arc<LogSink>,
    vm: OnceCell<Arc<PodVm>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("events", &self.events)
            .field("containers", &self.containers)
            .finish_non_exhaustive()
    }
}

/// The `ConfigPath` of the runtime options containerd passes with a task:
/// `runtimeoptions.v1.Options { type_url = 1; config_path = 2; }`, what `ctr run
/// --runtime-config-path FILE` and CRI's `[...runtimes.coffer.options] ConfigPath` send for a
/// runtime other than runc. Decoded by hand: the message is not in `containerd-shim-protos`.
fn options_config_path(
    options: &containerd_shim::protos::protobuf::MessageField<
        containerd_shim::protos::protobuf::well_known_types::any::Any,
    >,
) -> Option<PathBuf> {
    use containerd_shim::protos::protobuf::CodedInputStream;
    use containerd_shim::protos::protobuf::rt::WireType;
    let any = options.as_ref()?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, WireType::new(tag & 7)?);
        if field == 2 && wire == WireType::LengthDelimited {
            let path = input.read_string().ok()?;
            return (!path.is_empty()).then(|| PathBuf::from(path));
        }
        input.skip_field(wire).ok()?;
    }
    None
}

impl Pod {
    /// A pod with no containers yet; the shim logs to `logs`; `exit` ends the shim.
    pub fn new(events: Events, logs: Arc<LogSink>, exit: Arc<ExitSignal>) -> Self {
        Self {
            events,
            logs,
            vm: OnceCell::new(),
            containers: Mutex::new(HashMap::new()),
            exit,
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound {
                kind: "task",
                id: id.to_owned(),
            })
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, ShimError> {
        self.container(id)?.process(exec_id)
    }

    fn live_vm(&self) -> Result<Arc<PodVm>, ShimError> {
        let vm = self
            .vm
            .get()
            .cloned()
            .ok_or_else(|| ShimError::FailedPrecondition("the pod VM is not running".into()))?;
        match vm.gone() {
            Some(msg) => Err(ShimError::VmGone(msg)),
            None => Ok(vm),
        }
    }

    /// Boots the pod VM on first use.
    async fn ensure_vm(
        self: &Arc<Self>,
        pod_id: &str,
        settings: &coffer_runtime::config::RuntimeConfig,
        initdata: Option<InitdataDisk>,
        network: &crate::network::PodNetworkSource,
    ) -> Result<Arc<PodVm>, ShimError> {
        let vm = self
            .vm
            .get_or_try_init(|| async {
                let image = settings.guest.image_dir.clone();
                for file in [settings.kernel(), settings.initrd()] {
                    if !file.is_file() {
                        return Err(ShimError::GuestImage {
                            dir: image.clone(),
                            message: format!(
                                "{} is missing (build it with `coffer image build --out {}`)",
                                file.display(),
                                image.display()
                            ),
                        });
                    }
                }
                std::fs::create_dir_all(&settings.state_dir).map_err(|source| ShimError::Io {
                    op: "create",
                    path: settings.state_dir.clone(),
                    source,
                })?;
                check_socket_paths(&sandbox::sandbox_dir(&settings.state_dir, pod_id))?;
                let qemu = Qemu::new(settings.qemu_backend());
                let mut config = settings.sandbox(pod_id.to_owned(), settings.tee, initdata);
                // The pod's network namespace (CNI's) is wired into the VM; its resolver settings
                // and hostname travel to the guest as content.
                config.network = network.config().map_err(|e| {
                    ShimError::InvalidArgument(format!("the pod's resolver configuration: {e}"))
                })?;
                config.hostname.clone_from(&network.hostname);
                tracing::info!(sandbox_id = %pod_id, "booting the pod VM");
                let booting = std::time::Instant::now();
                let sandbox = Sandbox::start(&qemu, config).await?;
                let metrics =
                    crate::metrics::PodMetrics::new(settings.metrics_dir.as_deref(), pod_id);
                metrics.booted(booting.elapsed());
                tokio::spawn(crate::console::forward(
                    VmPaths::new(sandbox.dir()).console_log,
                    pod_id.to_owned(),
                    sandbox.state(),
                ));
                let vm = Arc::new(PodVm {
                    agent: sandbox.agent(),
                    state: sandbox.state(),
                    metrics,
                    sandbox: tokio::sync::Mutex::new(Some(sandbox)),
                });
                tokio::spawn(self.clone().watch_vm(vm.state.clone()));
                tokio::spawn(self.clone().watch_oom(vm.agent.clone(), vm.state.clone()));
                Ok(vm)
            })
            .await?;
        match vm.gone() {
            Some(msg) => Err(ShimError::VmGone(msg)),
            None => Ok(vm.clone()),
        }
    }

    /// Marks every process exited when the VM dies on its own.
    async fn watch_vm(self: Arc<Self>, mut state: watch::Receiver<SandboxState>) {
        let msg = loop {
            match &*state.borrow_and_update() {
                SandboxState::Failed(msg) => break msg.clone(),
                SandboxState::Stopped => return,
                SandboxState::Ready => {}
            }
            if state.changed().await.is_err() {
                return;
            }
        };
        tracing::error!(reason = %msg, "the pod VM died; marking its tasks exited");
        self.exit_all().await;
    }

    /// Publishes the guest's OOM kills (`GetOOMEvent` blocks until one happens) until the VM is
    /// gone. The guest names the container: only ids of this pod's tasks are published.
    async fn watch_oom(
        self: Arc<Self>,
        mut agent: AgentClient,
        state: watch::Receiver<SandboxState>,
    ) {
        loop {
            match agent.get_oom_event(pb::GetOomEventRequest {}).await {
                Ok(event) => {
                    let id = event.into_inner().container_id;
                    let known = self
                        .containers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains_key(&id);
                    if !known {
                        tracing::warn!(container_id = %id.escape_debug(), "OOM event for an unknown container");
                        continue;
                    }
                    tracing::warn!(container_id = %id, "container hit its memory limit");
                    self.events
                        .publish(
                            topics::TASK_OOM_EVENT_TOPIC,
                            Box::new(ev::TaskOOM {
                                container_id: id,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
                Err(_) if *state.borrow() != SandboxState::Ready => return,
                Err(status) => {
                    tracing::debug!(message = status.message(), "GetOOMEvent");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Reports every process of the pod exited with [`VM_DIED_STATUS`] (the VM is gone).
    async fn exit_all(&self) {
        let containers: Vec<_> = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for c in containers {
            for p in c.processes() {
                self.report_exit(&p, VM_DIED_STATUS).await;
            }
        }
    }

    async fn report_exit(&self, p: &Process, status: u32) {
        if !p.exit(status) {
            return;
        }
        let (status, at) = p.exited().await;
        tracing::info!(container_id = %p.container_id, exec_id = %p.exec_id, status, "process exited");
        self.events
            .publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(ev::TaskExit {
                    container_id: p.container_id.clone(),
                    id: p.event_id().to_owned(),
                    pid: p.pid(),
                    exit_status: status,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                }),
            )
            .await;
    }

    /// `Create`: boots the pod VM if this is the pod's first container, delivers the rootfs and
    /// creates the container in the guest.
    pub async fn create(
        self: &Arc<Self>,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, ShimError> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unimplemented {
                call: "Create from a checkpoint",
                reason: "VM sandboxes cannot be checkpointed",
            });
        }
        if self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&req.id)
        {
            return Err(ShimError::AlreadyExists {
                kind: "task",
                id: req.id,
            });
        }
        let bundle = PathBuf::from(&req.bundle);
        // containerd reads this task's log fifo too: the pod's lines may go there.
        self.logs.add(&req.id, &bundle);
        let config_json = bundle.join("config.json");
        let raw = std::fs::read(&config_json).map_err(|source| ShimError::Io {
            op: "read",
            path: config_json.clone(),
            source,
        })?;
        let spec: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| ShimError::InvalidArgument(format!("{}: {e}", config_json.display())))?;
        let Membership { pod_id, role } = spec::membership(&spec, &req.id);
        let owns_vm = pod_id == req.id;
        if !owns_vm && self.vm.get().is_none() {
            return Err(ShimError::FailedPrecondition(format!(
                "pod {pod_id} has no VM: its sandbox container must be created first"
            )));
        }
        let settings = config::settings(options_config_path(&req.options).as_deref())?;
        cleanup::write_record(
            &bundle,
            &Record {
                pod_id: pod_id.clone(),
                sandbox_dir: sandbox::sandbox_dir(&settings.state_dir, &pod_id),
                owns_vm,
            },
        )
        .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        let (initdata, network) = if owns_vm {
            (
                pod_initdata(&spec, &settings)?,
                crate::network::source(&spec),
            )
        } else {
            (None, crate::network::PodNetworkSource::default())
        };
        let vm = self
            .ensure_vm(&pod_id, &settings, initdata, &network)
            .await?;

        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        if role == Role::Workload {
            // In a TEE the guest pulls the image itself and the host's snapshot never enters the
            // VM; sandbox mode may ask for the same (`guest.guest_pull`).
            let source = if settings.tee.is_some() || settings.guest.guest_pull {
                let reference = spec::annotation(&spec, spec::IMAGE_NAME).ok_or_else(|| {
                    ShimError::InvalidArgument(format!(
                        "guest pull needs the image reference (annotation {})",
                        spec::IMAGE_NAME
                    ))
                })?;
                // Pulled ahead (PullImage) for the guest's phase timings.
                let mut agent = vm.agent.clone();
                let done = rootfs::pull_in_guest(&mut agent, &req.id, reference, |_| {}).await?;
                if let Some(timings) = &done.timings {
                    vm.metrics.pulled(&req.id, timings);
                }
                tracing::info!(
                    container_id = %req.id,
                    manifest = %done.manifest_digest,
                    "image pulled in the guest"
                );
                rootfs::deliver(
                    &mut agent,
                    &req.id,
                    &ContainerRootfs::GuestPull(reference.to_owned()),
                )
                .await?
            } else {
                deliver_rootfs(&vm.agent, &req.id, &bundle, &req.rootfs).await?
            };
            let guest_spec = serde_json::to_vec(&spec::for_guest(spec, &pod_id))
                .map_err(|e| ShimError::InvalidArgument(format!("spec: {e}")))?;
            vm.agent
                .clone()
                .create_container(pb::CreateContainerRequest {
                    container_id: req.id.clone(),
                    oci_spec_json: guest_spec,
                    rootfs: Some(source),
                })
                .await
                .map_err(ShimError::agent("CreateContainer"))?;
        }
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            role,
            owns_vm,
            init: Arc::new(Process::new(&req.id, "", stdio, None)),
            execs: Mutex::new(HashMap::new()),
        });
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(req.id.clone(), container);
        tracing::info!(sandbox_id = %pod_id, container_id = %req.id, "task created");
        self.events
            .publish(
                topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(ev::TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: Some(ev::TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::CreateTaskResponse::default())
    }

    /// `Start`: starts the init process or an exec'd process.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if p.life() != Life::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "process {} of task {id} was already started",
                p.event_id()
            )));
        }
        if c.role == Role::PodSandbox {
            // The pause container runs nothing: the VM is the pod's sandbox, and the shim stands for
            // its process.
            let pid = std::process::id();
            p.life.send_replace(Life::Running(pid));
            self.publish_started(&p, pid).await;
            return Ok(pid);
        }
        let vm = self.live_vm()?;
        let mut agent = vm.agent.clone();
        let pid = if exec_id.is_empty() {
            let pumps = io::attach_outputs(&agent, id, "", &p.stdio, &p.io)?;
            *p.pumps.lock().unwrap_or_else(PoisonError::into_inner) = pumps;
            agent
                .start_container(pb::StartContainerRequest {
                    container_id: id.to_owned(),
                })
                .await
                .map_err(ShimError::agent("StartContainer"))?
                .into_inner()
                .pid
        } else {
            let pid = agent
                .exec_process(pb::ExecProcessRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    oci_process_json: p.exec_spec.clone().unwrap_or_default(),
                })
                .await
                .map_err(ShimError::agent("ExecProcess"))?
                .into_inner()
                .pid;
            let pumps = io::attach_outputs(&agent, id, exec_id, &p.stdio, &p.io)?;
            *p.pumps.lock().unwrap_or_else(PoisonError::into_inner) = pumps;
            pid
        };
        p.life.send_replace(Life::Running(pid));
        if let Err(err) = io::attach_stdin(&agent, id, exec_id, &p.stdio, &p.io).await {
            tracing::warn!(container_id = %id, exec_id, %err, "stdin");
        }
        tokio::spawn(self.clone().wait_in_guest(agent, p.clone()));
        self.publish_started(&p, pid).await;
        Ok(pid)
    }

    async fn publish_started(&self, p: &Process, pid: u32) {
        tracing::info!(container_id = %p.container_id, exec_id = %p.exec_id, pid, "process started");
        if p.exec_id.is_empty() {
            self.events
                .publish(
                    topics::TASK_START_EVENT_TOPIC,
                    Box::new(ev::TaskStart {
                        container_id: p.container_id.clone(),
                        pid,
                        ..Default::default()
                    }),
                )
                .await;
        } else {
            self.events
                .publish(
                    topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                    Box::new(ev::TaskExecStarted {
                        container_id: p.container_id.clone(),
                        exec_id: p.exec_id.clone(),
                        pid,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }

    async fn wait_in_guest(self: Arc<Self>, mut agent: AgentClient, p: Arc<Process>) {
        let status = match agent
            .wait_process(pb::WaitProcessRequest {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
            })
            .await
        {
            Ok(r) => u32::try_from(r.into_inner().exit_status).unwrap_or(VM_DIED_STATUS),
            Err(status) => {
                tracing::warn!(container_id = %p.container_id, exec_id = %p.exec_id, message = status.message(), "WaitProcess failed");
                VM_DIED_STATUS
            }
        };
        p.drain_outputs().await;
        self.report_exit(&p, status).await;
    }

    /// `Exec`: records a process to start with `Start`.
    pub async fn exec(&self, req: api::ExecProcessRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        if c.role == Role::PodSandbox {
            return Err(ShimError::FailedPrecondition(format!(
                "task {} is the pod's sandbox; it runs no processes",
                req.id
            )));
        }
        if !matches!(c.init.life(), Life::Running(_)) {
            return Err(ShimError::FailedPrecondition(format!(
                "task {} is not running",
                req.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        let p = Arc::new(Process::new(
            &req.id,
            &req.exec_id,
            Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            Some(spec),
        ));
        {
            let mut execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists {
                    kind: "process",
                    id: format!("{}/{}", req.id, req.exec_id),
                });
            }
            execs.insert(req.exec_id.clone(), p);
        }
        self.events
            .publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(ev::TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(())
    }

    /// `Kill`.
    pub async fn kill(&self, req: api::KillRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        match p.life() {
            Life::Exited { .. } => {
                return Err(ShimError::NotFound {
                    kind: "process",
                    id: format!("{} (already finished)", p.event_id()),
                });
            }
            // Nothing runs yet (or ever, for the pod sandbox): the process ends here.
            Life::Created => {
                self.report_exit(&p, 128 + req.signal).await;
                return Ok(());
            }
            Life::Running(_) if c.role == Role::PodSandbox => {
                self.report_exit(&p, 128 + req.signal).await;
                return Ok(());
            }
            Life::Running(_) => {}
        }
        let vm = self.live_vm()?;
        vm.agent
            .clone()
            .signal_process(pb::SignalProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                signal: req.signal,
                all: req.all,
            })
            .await
            .map_err(ShimError::agent("SignalProcess"))?;
        Ok(())
    }

    /// `Wait`.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, ShimError> {
        let p = self.process(id, exec_id)?;
        let (status, at) = p.exited().await;
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    /// `State`.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let (status, exit_status, exited_at) = match p.life() {
            Life::Created => (Status::CREATED, 0, None),
            Life::Running(_) => (Status::RUNNING, 0, None),
            Life::Exited { status, at, .. } => (Status::STOPPED, status, Some(timestamp(at))),
        };
        Ok(api::StateResponse {
            id: id.to_owned(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid(),
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        })
    }

    /// `Delete`: removes an exited exec, or a task (its container in the guest; the VM too when
    /// the task owns it).
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let (pid, status, at) = match p.life() {
            Life::Running(_) => {
                return Err(ShimError::FailedPrecondition(format!(
                    "process {} of task {id} is running; kill it first",
                    p.event_id()
                )));
            }
            Life::Created => (0, 0, SystemTime::now()),
            Life::Exited { pid, status, at } => (pid, status, at),
        };
        if !exec_id.is_empty() {
            c.execs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(exec_id);
            p.io.shutdown().await;
        } else {
            if c.role == Role::Workload
                && let Ok(vm) = self.live_vm()
            {
                let removed = vm
                    .agent
                    .clone()
                    .remove_container(pb::RemoveContainerRequest {
                        container_id: id.to_owned(),
                        force: true,
                    })
                    .await;
                if let Err(status) = removed {
                    tracing::warn!(container_id = %id, message = status.message(), "RemoveContainer");
                }
            }
            for proc in c.processes() {
                proc.io.shutdown().await;
            }
            self.containers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
            // The snapshot is unmounted right after the upload; this catches an interrupted one.
            if let Err(err) = cleanup::unmount_rootfs(&c.bundle.join("rootfs")) {
                tracing::warn!(container_id = %id, %err, "unmounting the rootfs");
            }
            if c.owns_vm {
                self.stop_vm().await;
            }
            self.events
                .publish(
                    topics::TASK_DELETE_EVENT_TOPIC,
                    Box::new(ev::TaskDelete {
                        container_id: id.to_owned(),
                        pid,
                        exit_status: status,
                        exited_at: Some(timestamp(at)).into(),
                        id: id.to_owned(),
                        ..Default::default()
                    }),
                )
                .await;
            tracing::info!(container_id = %id, "task deleted");
            self.logs.remove(id);
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    /// Stops the pod VM (once) and removes its files. Processes of containers still in the pod
    /// (their owner went first) end with it and are reported exited.
    pub async fn stop_vm(&self) {
        let Some(vm) = self.vm.get() else {
            return;
        };
        let sandbox = vm.sandbox.lock().await.take();
        if let Some(sandbox) = sandbox {
            let id = sandbox.id().to_owned();
            sandbox.stop().await;
            vm.metrics.remove();
            tracing::info!(sandbox_id = %id, "pod VM stopped");
            self.exit_all().await;
        }
    }

    /// `Pids`: the processes containerd knows of, with their guest pids.
    pub fn pids(&self, id: &str) -> Result<api::PidsResponse, ShimError> {
        let c = self.container(id)?;
        let processes = c
            .processes()
            .iter()
            .filter(|p| matches!(p.life(), Life::Running(pid) if pid != 0))
            .map(|p| containerd_shim::protos::types::task::ProcessInfo {
                pid: p.pid(),
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// `Stats`: the container's cgroup counters in the guest, as cgroup v2 metrics.
    pub async fn stats(&self, id: &str) -> Result<api::StatsResponse, ShimError> {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, MemoryStat, Metrics, PidsStat,
        };
        use containerd_shim::protos::protobuf::Message;
        let c = self.container(id)?;
        if c.role == Role::PodSandbox {
            return Err(ShimError::FailedPrecondition(format!(
                "task {id} is the pod's sandbox; it has no cgroup"
            )));
        }
        let vm = self.live_vm()?;
        let s = vm
            .agent
            .clone()
            .stats_container(pb::StatsContainerRequest {
                container_id: id.to_owned(),
            })
            .await
            .map_err(ShimError::agent("StatsContainer"))?
            .into_inner();
        let metrics = Metrics {
            pids: Some(PidsStat {
                current: s.pids_current,
                ..Default::default()
            })
            .into(),
            cpu: Some(CPUStat {
                usage_usec: s.cpu_usage_ns / 1000,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                usage: s.memory_usage_bytes,
                usage_limit: s.memory_limit_bytes,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let value = metrics
            .write_to_bytes()
            .map_err(|e| ShimError::FailedPrecondition(format!("encoding metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: Some(
                containerd_shim::protos::protobuf::well_known_types::any::Any {
                    type_url: "io.containerd.cgroups.v2.Metrics".into(),
                    value,
                    ..Default::default()
                },
            )
            .into(),
            ..Default::default()
        })
    }

    /// `ResizePty`.
    pub async fn resize_pty(&self, req: api::ResizePtyRequest) -> Result<(), ShimError> {
        self.process(&req.id, &req.exec_id)?;
        if req.width == 0 || req.height == 0 {
            // A client without a terminal of its own reports 0x0: there is nothing to apply.
            return Ok(());
        }
        self.live_vm()?
            .agent
            .clone()
            .tty_win_resize(pb::TtyWinResizeRequest {
                container_id: req.id,
                exec_id: req.exec_id,
                rows: req.height,
                columns: req.width,
            })
            .await
            .map_err(ShimError::agent("TtyWinResize"))?;
        Ok(())
    }

    /// `CloseIO`.
    pub fn close_io(&self, req: &api::CloseIORequest) -> Result<(), ShimError> {
        let p = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.io.close_input();
        }
        Ok(())
    }

    /// `Connect`.
    pub fn connect(&self, id: &str) -> Result<api::ConnectResponse, ShimError> {
        let task_pid = self.container(id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    /// `Shutdown`: ends the shim once it serves no task.
    pub async fn shutdown(&self) {
        if !self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            return;
        }
        self.stop_vm().await;
        self.exit.signal();
    }

    /// Tears everything down (SIGTERM): the VM and the shim.
    pub async fn terminate(&self) {
        self.stop_vm().await;
        self.exit.signal();
    }
}

/// The longest path a unix socket address holds (`sun_path` less its terminating NUL).
const SOCKET_PATH_MAX: usize = 107;

/// Fails unless every socket of a pod VM in `dir` fits a unix socket address. Said up front: the
/// VM's backends would fail on it with no better message than a timeout.
fn check_socket_paths(dir: &Path) -> Result<(), ShimError> {
    use std::os::unix::ffi::OsStrExt;
    let paths = VmPaths::new(dir);
    let longest = [
        paths.vhost_socket,
        paths.qmp_socket,
        paths.console_socket,
        // The host ends of guest-initiated vsock connections: the agent's start-up
        // announcement's and the tunnels' ports (from `tunnel::FIRST_HOST_PORT`) have at most
        // five digits.
        coffer_runtime::vsock::host_socket(&paths.vsock_socket, u32::from(u16::MAX)),
    ]
    .into_iter()
    .max_by_key(|p| p.as_os_str().len())
    .unwrap_or_default();
    let len = longest.as_os_str().as_bytes().len();
    if len > SOCKET_PATH_MAX {
        return Err(ShimError::SocketPathTooLong {
            path: longest,
            len,
            max: SOCKET_PATH_MAX,
        });
    }
    Ok(())
}

/// The pod's initdata: its annotation (Kata's name or Coffer's), else the handler's default file.
fn pod_initdata(
    spec: &serde_json::Value,
    settings: &coffer_runtime::config::RuntimeConfig,
) -> Result<Option<InitdataDisk>, ShimError> {
    let bad = |what: String| ShimError::InvalidArgument(format!("initdata: {what}"));
    let annotated = spec::annotation(spec, spec::COFFER_INITDATA)
        .or_else(|| spec::annotation(spec, spec::KATA_INITDATA));
    let initdata = match (annotated, &settings.initdata) {
        (Some(value), _) => Initdata::from_annotation(value).map_err(|e| bad(e.to_string()))?,
        (None, Some(path)) => {
            let raw = std::fs::read(path).map_err(|source| ShimError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
            Initdata::parse(raw).map_err(|e| bad(format!("{}: {e}", path.display())))?
        }
        (None, None) => return Ok(None),
    };
    tracing::info!(digest = %initdata.digest(), "pod initdata");
    Ok(Some(InitdataDisk::new(&initdata)))
}

/// Mounts the snapshot on the bundle's `rootfs` (a directory private to this container), uploads
/// it to the guest and unmounts it again. The guest gets its own copy: nothing the host changes
/// in the snapshot afterwards reaches the container, and no host filesystem is shared with the
/// VM. (In a TEE, or with `guest.guest_pull`, the shim sends the image reference instead and the
/// guest pulls.)
async fn deliver_rootfs(
    agent: &AgentClient,
    id: &str,
    bundle: &Path,
    mounts: &[containerd_shim::protos::types::mount::Mount],
) -> Result<pb::create_container_request::Rootfs, ShimError> {
    let target = bundle.join("rootfs");
    if !mounts.is_empty() {
        std::fs::create_dir_all(&target).map_err(|source| ShimError::Io {
            op: "create",
            path: target.clone(),
            source,
        })?;
        for m in mounts {
            containerd_shim::asynchronous::util::mount_rootfs(m, &target)
                .await
                .map_err(|e| ShimError::Mount {
                    op: "mount",
                    path: target.clone(),
                    message: e.to_string(),
                })?;
        }
    }
    let mut agent = agent.clone();
    let delivered = rootfs::deliver(
        &mut agent,
        id,
        &ContainerRootfs::HostDirectory(target.clone()),
    )
    .await;
    if !mounts.is_empty() {
        let unmount_target = target.clone();
        let unmounted =
            tokio::task::spawn_blocking(move || cleanup::unmount_rootfs(&unmount_target))
                .await
                .map_err(|e| ShimError::Mount {
                    op: "unmount",
                    path: target.clone(),
                    message: e.to_string(),
                })?;
        unmounted.map_err(|e| ShimError::Mount {
            op: "unmount",
            path: target.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(delivered?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::MessageField;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;

    fn options(type_url: &str, value: Vec<u8>) -> MessageField<Any> {
        Some(Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        })
        .into()
    }

    #[test]
    fn socket_paths_must_fit_a_unix_address() {
        let id = "a".repeat(64);
        // The default state_dir fits CRI's 64-character ids.
        assert!(check_socket_paths(&sandbox::sandbox_dir(Path::new("/run/coffer"), &id)).is_ok());
        let long = sandbox::sandbox_dir(Path::new("/tmp/.tmpAbCdEf/coffer"), &id);
        match check_socket_paths(&long) {
            Err(ShimError::SocketPathTooLong { path, len, max }) => {
                assert!(path.starts_with(&long), "{}", path.display());
                assert!(len > max);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_path_comes_from_runtimeoptions() {
        // runtimeoptions.v1.Options { type_url: "x", config_path: "/etc/c.toml" }
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/c.toml");
        assert_eq!(
            options_config_path(&options("runtimeoptions.v1.Options", value.clone())),
            Some(PathBuf::from("/etc/c.toml"))
        );
        assert_eq!(
            options_config_path(&options("containerd.runc.v1.Options", value)),
            None
        );
        assert_eq!(options_config_path(&MessageField::none()), None);
        // Truncated bytes are no path.
        assert_eq!(
            options_config_path(&options("runtimeoptions.v1.Options", vec![0x12, 40, b'/'])),
            None
        );
    }
}
