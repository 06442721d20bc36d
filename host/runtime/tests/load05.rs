//! LOAD-05 (host runtime): seeded fault injection into [`Sandbox`]'s start, its life and its stop,
//! without root or a VM. A fake hypervisor runs a stand-in VMM process (`tail -f` on the console
//! log, so [`gc::processes_of`] finds it as it finds QEMU), serves hybrid vsock on the VM's socket
//! and a fake agent behind it (the real gRPC protocol), and fails the phase a step chose: the
//! launch, the VM dying during boot or after, the announcement, the connection, `GetGuestDetails`,
//! `CreateSandbox`, container RPCs, `DestroySandbox`; the state directory's claim and the pod
//! network's attach fail on their own inputs (a file where the `sandboxes` directory goes, a
//! namespace that does not exist: attaching a real one needs root, see `tests/network.rs`).
//!
//! After every step: a failed start reports its phase's typed error naming the injected cause,
//! keeps the console log of a boot that failed in the guest, and leaves no sandbox directory, no
//! process naming it, nothing for the GC; a live sandbox answers and keeps its directory; a stop
//! (also of a sandbox whose VM died, and whose `DestroySandbox` failed) leaves nothing. A run of at
//! least the default size fails unless every fault was injected at least once.
//!
//! 30 seeds × 40 steps by default (about 9 s here: the guest-timeout faults wait out a 150 ms boot
//! deadline; a start meant to come up gets 10 s, which it does not wait out).
//! `COFFER_LOAD05_HOST_SEEDS` / `COFFER_LOAD05_HOST_OPS` raise the counts (200 × 40 passes in
//! 60 s); `COFFER_LOAD05_HOST_SEED` replays one seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_agent_protocol::v1 as pb;
use coffer_agent_protocol::{AGENT_VSOCK_PORT, HOST_READY_VSOCK_PORT, READY_ANNOUNCEMENT};
use coffer_runtime::gc;
use coffer_runtime::hypervisor::{Hypervisor, HypervisorError, Vm, VmExit, VmSpec};
use coffer_runtime::network::NetworkConfig;
use coffer_runtime::sandbox::{Sandbox, SandboxConfig, SandboxError, SandboxState, sandbox_dir};
use coffer_runtime::tee::TeeKind;
use coffer_runtime::vsock::host_socket;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::{Request, Response, Status, Streaming};

const DEFAULT_SEEDS: u64 = 30;
const DEFAULT_OPS: usize = 40;
/// The boot deadline of a start that is meant to come up: generous, a success does not wait it out.
const BOOT_TIMEOUT: Duration = Duration::from_secs(10);
/// The boot deadline of a start whose guest never answers (it is waited out): long enough for the
/// announcement and a first connection to arrive, so the timeout names the injected cause.
const FAILING_BOOT_TIMEOUT: Duration = Duration::from_millis(150);
const SLOTS: [&str; 2] = ["s0", "s1"];
const CONTAINERS: [&str; 2] = ["c0", "c1"];

fn from_env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Where a start fails (or `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartFault {
    None,
    Launch,
    DiesDuringBoot,
    NoAnnouncement,
    ConnectRefused,
    DetailsFail,
    CreateSandboxFails,
    Claim,
    Network,
}

const START_FAULTS: [StartFault; 9] = [
    StartFault::None,
    StartFault::Launch,
    StartFault::DiesDuringBoot,
    StartFault::NoAnnouncement,
    StartFault::ConnectRefused,
    StartFault::DetailsFail,
    StartFault::CreateSandboxFails,
    StartFault::Claim,
    StartFault::Network,
];

/// What the fake agent does and has.
#[derive(Debug, Default)]
struct Guest {
    fault: Option<StartFault>,
    /// The next container or teardown RPC fails.
    fail_next: bool,
    sandbox: bool,
    containers: BTreeSet<String>,
}

type Shared = Arc<Mutex<Guest>>;

#[derive(Debug, Clone)]
struct FakeAgent(Shared);

type Chunks = Pin<Box<dyn futures::Stream<Item = Result<pb::OutputChunk, Status>> + Send>>;
type Events = Pin<Box<dyn futures::Stream<Item = Result<pb::PullEvent, Status>> + Send>>;

impl FakeAgent {
    fn guest(&self) -> std::sync::MutexGuard<'_, Guest> {
        self.0.lock().unwrap()
    }

    /// Fails the call when a fault is armed for it.
    fn injected(&self) -> Result<(), Status> {
        let mut guest = self.guest();
        if std::mem::take(&mut guest.fail_next) {
            return Err(Status::unavailable("injected failure"));
        }
        Ok(())
    }

    fn not_here<T>(call: &str) -> Result<T, Status> {
        Err(Status::unimplemented(format!(
            "the fake agent has no {call}"
        )))
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for FakeAgent {
    type ReadStdoutStream = Chunks;
    type ReadStderrStream = Chunks;
    type PullImageStream = Events;

    async fn create_sandbox(
        &self,
        _: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::CreateSandboxResponse>, Status> {
        let mut guest = self.guest();
        if guest.fault == Some(StartFault::CreateSandboxFails) {
            return Err(Status::internal("injected CreateSandbox failure"));
        }
        if guest.sandbox {
            return Err(Status::already_exists("sandbox exists"));
        }
        guest.sandbox = true;
        Ok(Response::new(pb::CreateSandboxResponse::default()))
    }

    async fn destroy_sandbox(
        &self,
        _: Request<pb::DestroySandboxRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.injected()?;
        let mut guest = self.guest();
        guest.sandbox = false;
        guest.containers.clear();
        Ok(Response::new(pb::Empty {}))
    }

    async fn upload_rootfs(
        &self,
        _: Request<Streaming<pb::RootfsChunk>>,
    ) -> Result<Response<pb::UploadRootfsResponse>, Status> {
        Self::not_here("UploadRootfs")
    }

    async fn pull_image(
        &self,
        _: Request<pb::PullImageRequest>,
    ) -> Result<Response<Events>, Status> {
        Self::not_here("PullImage")
    }

    async fn create_container(
        &self,
        r: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.injected()?;
        let id = r.into_inner().container_id;
        if !self.guest().containers.insert(id.clone()) {
            return Err(Status::already_exists(id));
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn start_container(
        &self,
        _: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        Self::not_here("StartContainer")
    }

    async fn remove_container(
        &self,
        r: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.injected()?;
        let id = r.into_inner().container_id;
        if !self.guest().containers.remove(&id) {
            return Err(Status::not_found(id));
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn stats_container(
        &self,
        _: Request<pb::StatsContainerRequest>,
    ) -> Result<Response<pb::StatsContainerResponse>, Status> {
        Self::not_here("StatsContainer")
    }

    async fn exec_process(
        &self,
        _: Request<pb::ExecProcessRequest>,
    ) -> Result<Response<pb::ExecProcessResponse>, Status> {
        Self::not_here("ExecProcess")
    }

    async fn wait_process(
        &self,
        _: Request<pb::WaitProcessRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        Self::not_here("WaitProcess")
    }

    async fn signal_process(
        &self,
        _: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        Self::not_here("SignalProcess")
    }

    async fn write_stdin(
        &self,
        _: Request<pb::WriteStdinRequest>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        Self::not_here("WriteStdin")
    }

    async fn close_stdin(
        &self,
        _: Request<pb::CloseStdinRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        Self::not_here("CloseStdin")
    }

    async fn read_stdout(
        &self,
        _: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<Chunks>, Status> {
        Self::not_here("ReadStdout")
    }

    async fn read_stderr(
        &self,
        _: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<Chunks>, Status> {
        Self::not_here("ReadStderr")
    }

    async fn tty_win_resize(
        &self,
        _: Request<pb::TtyWinResizeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        Self::not_here("TtyWinResize")
    }

    async fn get_guest_details(
        &self,
        _: Request<pb::GetGuestDetailsRequest>,
    ) -> Result<Response<pb::GuestDetails>, Status> {
        if self.guest().fault == Some(StartFault::DetailsFail) {
            return Err(Status::internal("injected GetGuestDetails failure"));
        }
        Ok(Response::new(pb::GuestDetails::default()))
    }

    async fn get_oom_event(
        &self,
        _: Request<pb::GetOomEventRequest>,
    ) -> Result<Response<pb::OomEvent>, Status> {
        Self::not_here("GetOOMEvent")
    }
}

/// The hypervisor whose next launch fails as its guest's fault says.
#[derive(Debug, Default)]
struct FaultyHypervisor {
    /// The guest of the next launch.
    next: Mutex<Option<Shared>>,
    launches: Mutex<usize>,
}

/// A VM: the stand-in VMM process and the tasks playing the vsock backend and the guest.
#[derive(Debug)]
struct FakeVm {
    vmm: tokio::process::Child,
    vsock: PathBuf,
    console: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl Vm for FakeVm {
    fn vsock_socket(&self) -> &Path {
        &self.vsock
    }

    fn console_log(&self) -> &Path {
        &self.console
    }

    fn emulated(&self) -> bool {
        false
    }

    async fn wait_exit(&mut self) -> VmExit {
        let status = self.vmm.wait().await;
        VmExit {
            status: format!("{status:?}"),
            requested: false,
        }
    }

    async fn status(&mut self) -> Result<String, HypervisorError> {
        Ok("running".into())
    }

    async fn shutdown(&mut self) -> VmExit {
        let _ = self.vmm.start_kill();
        let status = self.vmm.wait().await;
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
        VmExit {
            status: format!("{status:?}"),
            requested: true,
        }
    }
}

/// Serves hybrid vsock on `vsock`: `CONNECT <agent port>` reaches the fake agent (unless the
/// fault refuses it).
async fn backend(listener: tokio::net::UnixListener, guest: Shared) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<tokio::net::UnixStream>>(4);
    let agent = FakeAgent(Arc::clone(&guest));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_server::AgentServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
    );
    while let Ok((stream, _)) = listener.accept().await {
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        if stream.read_line(&mut line).await.is_err() {
            continue;
        }
        let mut stream = stream.into_inner();
        let refused = guest.lock().unwrap().fault == Some(StartFault::ConnectRefused);
        if refused || line.trim() != format!("CONNECT {AGENT_VSOCK_PORT}") {
            let _ = stream.write_all(b"ERR refused\n").await;
            continue;
        }
        if stream.write_all(b"OK 1\n").await.is_ok() && tx.send(Ok(stream)).await.is_err() {
            return;
        }
    }
}

/// The guest's start-up announcement, once the host listens for it.
async fn announce(vsock: PathBuf) {
    let path = host_socket(&vsock, HOST_READY_VSOCK_PORT);
    loop {
        if let Ok(mut s) = tokio::net::UnixStream::connect(&path).await {
            let _ = s.write_all(READY_ANNOUNCEMENT).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Hypervisor for FaultyHypervisor {
    type Vm = FakeVm;

    fn check_tee(&self, _tee: TeeKind) -> Result<(), HypervisorError> {
        Ok(())
    }

    async fn launch(&self, spec: &VmSpec) -> Result<FakeVm, HypervisorError> {
        *self.launches.lock().unwrap() += 1;
        let guest = self
            .next
            .lock()
            .unwrap()
            .take()
            .expect("a guest for the launch");
        let fault = guest.lock().unwrap().fault;
        if fault == Some(StartFault::Launch) {
            return Err(HypervisorError::Timeout("the fake VMM (injected)"));
        }
        let console = spec.dir.join("console.log");
        let io = |e| HypervisorError::Io {
            op: "fake launch",
            path: spec.dir.clone(),
            source: e,
        };
        std::fs::write(&console, "").map_err(io)?;
        let mut vmm = tokio::process::Command::new("tail")
            .arg("-f")
            .arg(&console)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HypervisorError::Spawn {
                binary: "tail".into(),
                source,
            })?;
        let vsock = spec.dir.join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&vsock).map_err(io)?;
        let mut tasks = vec![tokio::spawn(backend(listener, guest))];
        match fault {
            Some(StartFault::DiesDuringBoot) => {
                let _ = vmm.start_kill();
            }
            Some(StartFault::NoAnnouncement) => {}
            _ => tasks.push(tokio::spawn(announce(vsock.clone()))),
        }
        Ok(FakeVm {
            vmm,
            vsock,
            console,
            tasks,
        })
    }
}

/// How often each kind of step did something (a step on an empty slot does nothing), so the run
/// can show that every fault it claims to inject was injected.
#[derive(Debug, Default)]
struct Tally(BTreeMap<String, usize>);

impl Tally {
    fn saw(&mut self, kind: String) {
        *self.0.entry(kind).or_default() += 1;
    }

    fn add(&mut self, other: Tally) {
        for (kind, n) in other.0 {
            *self.0.entry(kind).or_default() += n;
        }
    }

    /// The kinds every default run must have exercised.
    fn required() -> Vec<String> {
        let mut kinds: Vec<String> = START_FAULTS
            .iter()
            .map(|f| format!("start {f:?}"))
            .collect();
        for call in ["create", "remove"] {
            kinds.push(format!("{call} ok"));
            kinds.push(format!("{call} injected failure"));
        }
        kinds.extend(
            [
                "VMM dies",
                "stop",
                "stop, DestroySandbox fails",
                "stop after the VMM died",
            ]
            .map(String::from),
        );
        kinds
    }
}

/// A sandbox the run holds, with its guest.
struct Live {
    sandbox: Sandbox,
    guest: Shared,
    /// Containers the host created and did not remove, as the host saw its calls end.
    containers: BTreeSet<String>,
}

struct Run {
    hypervisor: FaultyHypervisor,
    root: tempfile::TempDir,
    live: [Option<Live>; 2],
    steps: Vec<String>,
    tally: Tally,
}

impl Run {
    fn config(&self, id: &str, timeout_fault: bool) -> SandboxConfig {
        SandboxConfig {
            id: id.into(),
            state_root: self.root.path().to_path_buf(),
            kernel: "/nonexistent/vmlinux".into(),
            initrd: "/nonexistent/initrd".into(),
            vcpus: 1,
            memory_mib: 128,
            boot_timeout: Some(if timeout_fault {
                FAILING_BOOT_TIMEOUT
            } else {
                BOOT_TIMEOUT
            }),
            initdata: None,
            kernel_params: Vec::new(),
            tee: None,
            registry_tunnels: Vec::new(),
            published_ports: Vec::new(),
            network: None,
            hostname: None,
        }
    }

    /// Where a sandbox that failed in the guest keeps its console log; removed before a step that
    /// may keep one, so an older one does not stand in for it.
    fn kept_console(&self, id: &str) -> PathBuf {
        self.root
            .path()
            .join("logs")
            .join(format!("{id}-console.log"))
    }

    /// Nothing of sandbox `id` is left: no directory, no process naming it, nothing to collect.
    async fn nothing_left(&self, id: &str) -> Result<(), String> {
        let dir = sandbox_dir(self.root.path(), id);
        if dir.exists() {
            return Err(format!("{} is left", dir.display()));
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = gc::processes_of(&dir);
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("processes {left:?} of {id} are left"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = gc::collect(self.root.path())
            .await
            .map_err(|e| e.to_string())?;
        if !report.collected.is_empty() || !report.failed.is_empty() {
            return Err(format!(
                "the GC found {:?} / {:?}",
                report.collected, report.failed
            ));
        }
        Ok(())
    }

    async fn start(&mut self, slot: usize, fault: StartFault) -> Result<(), String> {
        let id = SLOTS[slot];
        if self.live[slot].is_some() {
            return Ok(());
        }
        let guest = Shared::default();
        guest.lock().unwrap().fault = Some(fault);
        let _ = std::fs::remove_file(self.kept_console(id));
        let timeout_fault = matches!(
            fault,
            StartFault::NoAnnouncement | StartFault::ConnectRefused | StartFault::DetailsFail
        );
        let mut config = self.config(id, timeout_fault);
        let launches = *self.hypervisor.launches.lock().unwrap();
        let claim_blocker = tempfile::tempdir().map_err(|e| e.to_string())?;
        match fault {
            StartFault::Claim => {
                // The state directory's `sandboxes` cannot be made: a file stands there.
                std::fs::write(claim_blocker.path().join("sandboxes"), "")
                    .map_err(|e| e.to_string())?;
                config.state_root = claim_blocker.path().to_path_buf();
            }
            StartFault::Network => {
                config.network = Some(NetworkConfig::new(self.root.path().join("no-such-netns")));
            }
            _ => {}
        }
        *self.hypervisor.next.lock().unwrap() = Some(Arc::clone(&guest));
        let started = Sandbox::start(&self.hypervisor, config).await;
        self.hypervisor.next.lock().unwrap().take();
        let launched = *self.hypervisor.launches.lock().unwrap() > launches;
        let outcome = match &started {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        self.steps
            .push(format!("start {id} {fault:?} -> {outcome}"));
        // The phase's typed error, naming the injected cause where the error carries one.
        let expected = match (fault, &started) {
            (StartFault::None, Ok(_))
            | (StartFault::Launch, Err(SandboxError::Launch(_)))
            | (StartFault::DiesDuringBoot, Err(SandboxError::DiedDuringBoot { .. })) => true,
            (StartFault::NoAnnouncement, Err(SandboxError::AgentTimeout { last, .. })) => {
                last.contains("no start-up announcement")
            }
            (StartFault::ConnectRefused, Err(SandboxError::AgentTimeout { last, .. })) => {
                last.contains("refused")
            }
            (StartFault::DetailsFail, Err(SandboxError::AgentTimeout { last, .. })) => {
                last.contains("injected GetGuestDetails failure")
            }
            (StartFault::CreateSandboxFails, Err(SandboxError::Agent { call, message })) => {
                *call == "CreateSandbox" && message.contains("injected")
            }
            (StartFault::Claim, Err(SandboxError::Claim(_)))
            | (StartFault::Network, Err(SandboxError::Network(_))) => !launched,
            _ => false,
        };
        if !expected {
            return Err(format!("a start with {fault:?} ended {outcome}"));
        }
        // A boot that failed in the guest keeps its console log for the diagnosis.
        if let Err(
            SandboxError::DiedDuringBoot { console, .. }
            | SandboxError::AgentTimeout { console, .. },
        ) = &started
            && !console.is_file()
        {
            return Err(format!("{} was not kept", console.display()));
        }
        self.tally.saw(format!("start {fault:?}"));
        match started {
            Ok(sandbox) => {
                if !sandbox.dir().join("vm.vsock").exists() || !guest.lock().unwrap().sandbox {
                    return Err("a started sandbox has no socket or no guest sandbox".into());
                }
                self.live[slot] = Some(Live {
                    sandbox,
                    guest,
                    containers: BTreeSet::new(),
                });
                Ok(())
            }
            Err(_) => {
                if claim_blocker.path().join("sandboxes").is_dir() {
                    return Err("a failed claim made the sandboxes directory".into());
                }
                self.nothing_left(id).await
            }
        }
    }

    async fn container(
        &mut self,
        slot: usize,
        create: bool,
        fail: bool,
        cid: &str,
    ) -> Result<(), String> {
        let Some(live) = self.live[slot].as_mut() else {
            return Ok(());
        };
        live.guest.lock().unwrap().fail_next = fail;
        let mut agent = live.sandbox.agent();
        let result = if create {
            agent
                .create_container(pb::CreateContainerRequest {
                    container_id: cid.into(),
                    ..Default::default()
                })
                .await
        } else {
            agent
                .remove_container(pb::RemoveContainerRequest {
                    container_id: cid.into(),
                    force: true,
                })
                .await
        };
        live.guest.lock().unwrap().fail_next = false;
        self.steps.push(format!(
            "{} {cid} in {} fail={fail} -> {:?}",
            if create { "create" } else { "remove" },
            SLOTS[slot],
            result.as_ref().map(drop).map_err(|s| s.code())
        ));
        let ready = *live.sandbox.state().borrow() == SandboxState::Ready;
        if ready {
            let call = if create { "create" } else { "remove" };
            let how = if fail { "injected failure" } else { "ok" };
            self.tally.saw(format!("{call} {how}"));
        }
        if result.is_ok() {
            if fail {
                return Err("an injected RPC failure reached the host as success".into());
            }
            if create {
                live.containers.insert(cid.to_owned());
            } else {
                live.containers.remove(cid);
            }
        }
        // The guest holds what the host saw created, unless the VM died under it.
        if ready && live.guest.lock().unwrap().containers != live.containers {
            return Err(format!(
                "the guest has {:?}, the host created {:?}",
                live.guest.lock().unwrap().containers,
                live.containers
            ));
        }
        if ready && !live.sandbox.dir().exists() {
            return Err("a live sandbox lost its directory".into());
        }
        Ok(())
    }

    /// The stand-in VMM dies on its own: the sandbox turns `Failed` and its directory goes.
    async fn vm_dies(&mut self, slot: usize) -> Result<(), String> {
        let Some(live) = self.live[slot].as_ref() else {
            return Ok(());
        };
        if *live.sandbox.state().borrow() != SandboxState::Ready {
            return Ok(());
        }
        let dir = live.sandbox.dir().to_path_buf();
        let kept = self.kept_console(SLOTS[slot]);
        let _ = std::fs::remove_file(&kept);
        let vmm = gc::processes_of(&dir);
        if vmm.is_empty() {
            return Err("a ready sandbox has no VMM process".into());
        }
        for pid in vmm {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.steps.push(format!("VMM of {} killed", SLOTS[slot]));
        let failed = tokio::time::timeout(Duration::from_secs(5), live.sandbox.failed()).await;
        if failed.is_err() {
            return Err("the sandbox did not notice its VMM died".into());
        }
        if dir.exists() {
            return Err("a failed sandbox kept its directory".into());
        }
        if !kept.is_file() {
            return Err("a failed sandbox kept no console log".into());
        }
        self.tally.saw("VMM dies".into());
        Ok(())
    }

    async fn stop(&mut self, slot: usize, fail_destroy: bool) -> Result<(), String> {
        let Some(live) = self.live[slot].take() else {
            return Ok(());
        };
        live.guest.lock().unwrap().fail_next = fail_destroy;
        let ready = *live.sandbox.state().borrow() == SandboxState::Ready;
        live.sandbox.stop().await;
        self.steps.push(format!(
            "stop {} fail_destroy={fail_destroy} ready={ready}",
            SLOTS[slot]
        ));
        let guest_sandbox = live.guest.lock().unwrap().sandbox;
        if ready && !fail_destroy && guest_sandbox {
            return Err("stop did not destroy the guest's sandbox".into());
        }
        self.tally.saw(
            match (ready, fail_destroy) {
                (false, _) => "stop after the VMM died",
                (true, false) => "stop",
                (true, true) => "stop, DestroySandbox fails",
            }
            .into(),
        );
        self.nothing_left(SLOTS[slot]).await
    }
}

async fn run_seed(seed: u64, ops: usize) -> Result<Tally, (Vec<String>, String)> {
    let mut rng = Rng(seed);
    let mut run = Run {
        hypervisor: FaultyHypervisor::default(),
        root: tempfile::tempdir().expect("tempdir"),
        live: [None, None],
        steps: Vec::new(),
        tally: Tally::default(),
    };
    for _ in 0..ops {
        let slot = rng.below(SLOTS.len());
        let cid = CONTAINERS[rng.below(CONTAINERS.len())];
        let fail = rng.below(100) < 30;
        let outcome = match rng.below(10) {
            0..=2 => {
                // Half the starts come up, so the steps after them have sandboxes to act on.
                let fault = if rng.below(2) == 0 {
                    StartFault::None
                } else {
                    START_FAULTS[1 + rng.below(START_FAULTS.len() - 1)]
                };
                run.start(slot, fault).await
            }
            3..=4 => run.container(slot, true, fail, cid).await,
            5..=6 => run.container(slot, false, fail, cid).await,
            7 => run.vm_dies(slot).await,
            _ => run.stop(slot, fail).await,
        };
        outcome.map_err(|e| (run.steps.clone(), e))?;
    }
    for slot in 0..SLOTS.len() {
        run.stop(slot, false)
            .await
            .map_err(|e| (run.steps.clone(), e))?;
    }
    let left: Vec<_> = std::fs::read_dir(run.root.path().join("sandboxes"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !left.is_empty() {
        return Err((run.steps.clone(), format!("left after the run: {left:?}")));
    }
    Ok(run.tally)
}

/// LOAD-05 (host runtime): seeds × steps of starts with a fault in one phase, container RPCs that
/// fail, VMMs that die, stops whose `DestroySandbox` fails; nothing of a failed or stopped
/// sandbox is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load05_sandbox_faults_leave_nothing_behind() {
    let seeds: Vec<u64> = match from_env::<u64>("COFFER_LOAD05_HOST_SEED") {
        Some(seed) => vec![seed],
        None => (0..from_env("COFFER_LOAD05_HOST_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let ops = from_env("COFFER_LOAD05_HOST_OPS").unwrap_or(DEFAULT_OPS);
    let started = Instant::now();
    let mut tally = Tally::default();
    for seed in &seeds {
        match run_seed(*seed, ops).await {
            Ok(seen) => tally.add(seen),
            Err((steps, violation)) => panic!(
                "seed {seed} (replay: COFFER_LOAD05_HOST_SEED={seed} COFFER_LOAD05_HOST_OPS={ops}) broke an invariant at step {}: {violation}\n{}",
                steps.len(),
                steps.join("\n")
            ),
        }
    }
    eprintln!(
        "load05 host: {} seeds × {ops} steps in {:?}; steps that acted: {:?}",
        seeds.len(),
        started.elapsed(),
        tally.0
    );
    // A run of at least the default size injects every fault (a replay of one seed need not).
    if seeds.len() as u64 * ops as u64 >= DEFAULT_SEEDS * DEFAULT_OPS as u64 {
        let missing: Vec<_> = Tally::required()
            .into_iter()
            .filter(|kind| !tally.0.contains_key(kind))
            .collect();
        assert!(
            missing.is_empty(),
            "the run never exercised {missing:?}: the faults it claims are not injected"
        );
    }
}
