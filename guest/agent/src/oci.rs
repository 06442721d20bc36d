//! The OCI runtime, youki's `libcontainer`, always runs in a short-lived helper process: the agent
//! re-executes itself as `coffer-agent oci …`, the helper performs one libcontainer operation and
//! exits. libcontainer forks and clones; doing that from the multi-threaded agent would risk
//! deadlocks on locks held by other threads, and a helper also keeps libcontainer's state out of the
//! long-lived agent. Container processes end up reparented to the agent (PID 1 or subreaper), which
//! reaps them.
//!
//! The helper reports through a small JSON result file, so its stdio can be the container's.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::{Args, Subcommand};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::reaper::{Exit, Reaper};

/// Arguments of the hidden `oci` helper subcommand.
#[derive(Debug, Args)]
pub struct HelperArgs {
    /// libcontainer state root.
    #[arg(long)]
    root: PathBuf,
    /// Where to write the JSON result.
    #[arg(long)]
    result: PathBuf,
    #[command(subcommand)]
    op: HelperOp,
}

/// One libcontainer operation.
#[derive(Debug, Subcommand)]
enum HelperOp {
    /// Create a container from a bundle; its init waits for `start`.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: PathBuf,
        /// Unix socket to receive the pty master on (terminal processes).
        #[arg(long)]
        console_socket: Option<PathBuf>,
    },
    /// Start a created container.
    Start {
        #[arg(long)]
        id: String,
    },
    /// Run an extra process (an OCI process.json) in a running container.
    Exec {
        #[arg(long)]
        id: String,
        #[arg(long)]
        process: PathBuf,
        /// Unix socket to receive the pty master on (terminal processes).
        #[arg(long)]
        console_socket: Option<PathBuf>,
    },
    /// Signal every process of a container.
    KillAll {
        #[arg(long)]
        id: String,
        #[arg(long)]
        signal: i32,
    },
    /// Delete a container's runtime state and cgroup.
    Delete {
        #[arg(long)]
        id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum HelperResult {
    Pid(i32),
    Done,
    Error(String),
}

/// Entry point of the helper process. Returns the process exit code.
pub fn helper_main(args: HelperArgs) -> i32 {
    let result = match run_op(&args.root, args.op) {
        Ok(r) => r,
        Err(e) => HelperResult::Error(e),
    };
    let failed = matches!(result, HelperResult::Error(_));
    let written = serde_json::to_vec(&result)
        .map_err(|e| e.to_string())
        .and_then(|b| std::fs::write(&args.result, b).map_err(|e| e.to_string()));
    match (written, failed) {
        (Ok(()), false) => 0,
        _ => 1,
    }
}

fn stdio_fds() -> Result<(OwnedFd, OwnedFd, OwnedFd), String> {
    use std::os::fd::AsFd;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| e.to_string());
    Ok((
        dup(std::io::stdin().as_fd())?,
        dup(std::io::stdout().as_fd())?,
        dup(std::io::stderr().as_fd())?,
    ))
}

/// A builder for container `id` whose new process gets its stdio from here: terminal processes
/// get the console socket (libcontainer sends the pty master there); others get the helper's own
/// stdio, which the agent set to the process's pipes.
fn builder(
    root: &Path,
    id: String,
    console_socket: Option<PathBuf>,
) -> Result<ContainerBuilder, String> {
    let builder = ContainerBuilder::new(id, SyscallType::default())
        .with_root_path(root)
        .map_err(|e| e.to_string())?;
    Ok(match console_socket {
        Some(socket) => builder.with_console_socket(Some(socket)),
        None => {
            let (i, o, e) = stdio_fds()?;
            builder.with_stdin(i).with_stdout(o).with_stderr(e)
        }
    })
}

fn run_op(root: &Path, op: HelperOp) -> Result<HelperResult, String> {
    let err = |e: libcontainer::error::LibcontainerError| e.to_string();
    let load = |id: &str| Container::load(root.join(id)).map_err(err);
    match op {
        HelperOp::Create {
            id,
            bundle,
            console_socket,
        } => {
            let container = builder(root, id, console_socket)?
                .validate_id()
                .map_err(err)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(err)?;
            let pid = container
                .pid()
                .ok_or_else(|| "container has no init pid".to_owned())?;
            Ok(HelperResult::Pid(pid.as_raw()))
        }
        HelperOp::Start { id } => {
            load(&id)?.start().map_err(err)?;
            Ok(HelperResult::Done)
        }
        HelperOp::Exec {
            id,
            process,
            console_socket,
        } => {
            let pid = builder(root, id, console_socket)?
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map_err(err)?;
            Ok(HelperResult::Pid(pid.as_raw()))
        }
        HelperOp::KillAll { id, signal } => {
            let signal =
                libcontainer::signal::Signal::try_from(signal).map_err(|e| e.to_string())?;
            load(&id)?.kill(signal, true).map_err(err)?;
            Ok(HelperResult::Done)
        }
        HelperOp::Delete { id, force } => {
            match Container::load(root.join(&id)) {
                Ok(mut c) => c.delete(force).map_err(err)?,
                // Never created, or already gone: nothing to delete.
                Err(_) if !root.join(&id).exists() => {}
                Err(e) => return Err(e.to_string()),
            }
            Ok(HelperResult::Done)
        }
    }
}

/// How a new container process gets its stdio.
#[derive(Debug)]
pub enum ChildIo {
    /// These pipe ends become its stdin, stdout and stderr.
    Pipes(ChildStdio),
    /// It gets a pseudo-terminal whose master is sent to this unix socket.
    Console(PathBuf),
}

/// Standard streams handed to a new container process.
#[derive(Debug)]
pub struct ChildStdio {
    /// Read end for the process's stdin.
    pub stdin: OwnedFd,
    /// Write end for stdout.
    pub stdout: OwnedFd,
    /// Write end for stderr.
    pub stderr: OwnedFd,
}

/// The container operations the agent core asks for, behind one small trait: [`OciRuntime`] is
/// the real one (libcontainer in a helper process); the core's unit tests use a fake that can fail
/// any call (`fake`), so every failure path is exercised without root.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug {
    /// Creates container `id` from `bundle`; returns the init pid (waiting for `start`).
    async fn create(&self, id: &str, bundle: &Path, stdio: ChildIo) -> Result<u32, AgentError>;
    /// Starts container `id`.
    async fn start(&self, id: &str) -> Result<(), AgentError>;
    /// Executes the process described by `process_json` in container `id`; returns its pid.
    async fn exec(&self, id: &str, process_json: &Path, stdio: ChildIo) -> Result<u32, AgentError>;
    /// Sends `signal` to every process of container `id`.
    async fn kill_all(&self, id: &str, signal: i32) -> Result<(), AgentError>;
    /// Deletes container `id`'s runtime state and cgroup.
    async fn delete(&self, id: &str, force: bool) -> Result<(), AgentError>;
    /// Registers for the exit of container process `pid` (one the runtime returned).
    fn watch(&self, pid: u32) -> tokio::sync::oneshot::Receiver<Exit>;
    /// Sends `signal` to the one process `pid`; a process already gone is no error.
    fn signal(&self, pid: u32, signal: nix::sys::signal::Signal) -> Result<(), AgentError>;
}

/// Runs helper operations from the agent.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    exe: PathBuf,
    root: PathBuf,
    scratch: PathBuf,
    reaper: Reaper,
}

impl OciRuntime {
    /// `exe` is the agent binary, `root` libcontainer's state root, `scratch` a directory for result
    /// files.
    pub fn new(exe: PathBuf, root: PathBuf, scratch: PathBuf, reaper: Reaper) -> Self {
        Self {
            exe,
            root,
            scratch,
            reaper,
        }
    }

    async fn run(&self, args: &[&str], stdio: Option<ChildIo>) -> Result<Option<u32>, AgentError> {
        let result =
            self.scratch
                .join(format!("helper-{}-{}.json", std::process::id(), next_seq()));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("oci")
            .arg("--root")
            .arg(&self.root)
            .arg("--result")
            .arg(&result)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        if let Some(ChildIo::Console(socket)) = &stdio {
            cmd.arg("--console-socket").arg(socket);
        }
        match stdio {
            Some(ChildIo::Pipes(s)) => {
                cmd.stdin(Stdio::from(s.stdin))
                    .stdout(Stdio::from(s.stdout))
                    .stderr(Stdio::from(s.stderr));
            }
            Some(ChildIo::Console(_)) | None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
        let (_pid, exited) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| AgentError::io("spawn oci helper", &self.exe, e))?;
        // Drop our copies of the child's stdio now, so EOF reaches readers when the process ends.
        drop(cmd);
        let exit = exited
            .await
            .map_err(|_| AgentError::Internal("reaper dropped helper exit".into()))?;
        let raw = tokio::fs::read(&result).await;
        let _ = tokio::fs::remove_file(&result).await;
        let parsed: Option<HelperResult> = raw.ok().and_then(|b| serde_json::from_slice(&b).ok());
        match (exit, parsed) {
            (Exit::Code(0), Some(HelperResult::Pid(pid))) => Ok(u32::try_from(pid).ok()),
            (Exit::Code(0), Some(HelperResult::Done)) => Ok(None),
            (_, Some(HelperResult::Error(msg))) => Err(AgentError::Runtime(msg)),
            (exit, _) => Err(AgentError::Runtime(format!(
                "oci helper ended with status {} and no result",
                exit.status()
            ))),
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for OciRuntime {
    async fn create(&self, id: &str, bundle: &Path, stdio: ChildIo) -> Result<u32, AgentError> {
        let bundle = bundle.to_string_lossy();
        self.run(&["create", "--id", id, "--bundle", &bundle], Some(stdio))
            .await?
            .ok_or_else(|| AgentError::Runtime("create returned no pid".into()))
    }

    async fn start(&self, id: &str) -> Result<(), AgentError> {
        self.run(&["start", "--id", id], None).await.map(|_| ())
    }

    async fn exec(&self, id: &str, process_json: &Path, stdio: ChildIo) -> Result<u32, AgentError> {
        let process = process_json.to_string_lossy();
        self.run(&["exec", "--id", id, "--process", &process], Some(stdio))
            .await?
            .ok_or_else(|| AgentError::Runtime("exec returned no pid".into()))
    }

    async fn kill_all(&self, id: &str, signal: i32) -> Result<(), AgentError> {
        let signal = signal.to_string();
        self.run(&["kill-all", "--id", id, "--signal", &signal], None)
            .await
            .map(|_| ())
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let mut args = vec!["delete", "--id", id];
        if force {
            args.push("--force");
        }
        self.run(&args, None).await.map(|_| ())
    }

    fn watch(&self, pid: u32) -> tokio::sync::oneshot::Receiver<Exit> {
        self.reaper.watch(pid)
    }

    fn signal(&self, pid: u32, signal: nix::sys::signal::Signal) -> Result<(), AgentError> {
        let target = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        match nix::sys::signal::kill(target, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(AgentError::io("signal", format!("pid {pid}"), e.into())),
        }
    }
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A [`ContainerRuntime`] that keeps its containers and processes in memory, for the core's unit
/// tests: no process runs, pids are above the kernel's `PID_MAX_LIMIT` (so no real process can
/// have one), and any call can be made to fail through [`Faults`].
#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, PoisonError};

    use nix::sys::signal::Signal;
    use tokio::sync::oneshot;

    use super::*;
    use crate::host::fake::{FaultKind, Faults};

    /// The first pid handed out: above `PID_MAX_LIMIT` (2^22).
    const FIRST_PID: u32 = 1 << 23;

    /// A container the fake runtime holds.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FakeContainer {
        /// Its init process.
        pub init: u32,
        /// Whether `start` ran.
        pub started: bool,
    }

    #[derive(Debug)]
    struct FakeProcess {
        container: String,
        /// Held until the process ends: its exit goes here.
        exit: Option<oneshot::Sender<Exit>>,
        /// Handed to the one [`ContainerRuntime::watch`] of the pid.
        watcher: Option<oneshot::Receiver<Exit>>,
        /// The process's ends of its stdio, closed when it ends.
        stdio: Option<ChildIo>,
        exited: Option<Exit>,
    }

    #[derive(Debug, Default)]
    struct World {
        containers: BTreeMap<String, FakeContainer>,
        processes: BTreeMap<u32, FakeProcess>,
        next_pid: u32,
    }

    impl World {
        fn spawn(&mut self, container: &str, stdio: ChildIo) -> u32 {
            let pid = FIRST_PID + self.next_pid;
            self.next_pid += 1;
            let (tx, rx) = oneshot::channel();
            self.processes.insert(
                pid,
                FakeProcess {
                    container: container.to_owned(),
                    exit: Some(tx),
                    watcher: Some(rx),
                    stdio: Some(stdio),
                    exited: None,
                },
            );
            pid
        }

        fn alive(&self, pid: u32) -> bool {
            self.processes.get(&pid).is_some_and(|p| p.exited.is_none())
        }

        /// Ends `pid` with `exit`; an init's end ends its container's other processes (its pid
        /// namespace goes with it).
        fn end(&mut self, pid: u32, exit: Exit) {
            let Some(process) = self.processes.get_mut(&pid) else {
                return;
            };
            if process.exited.is_some() {
                return;
            }
            process.exited = Some(exit);
            process.stdio = None;
            if let Some(tx) = process.exit.take() {
                let _ = tx.send(exit);
            }
            let container = process.container.clone();
            if self
                .containers
                .get(&container)
                .is_some_and(|c| c.init == pid)
            {
                for other in self.pids_of(&container) {
                    self.end(other, Exit::Signal(Signal::SIGKILL as i32));
                }
            }
        }

        fn pids_of(&self, container: &str) -> Vec<u32> {
            self.processes
                .iter()
                .filter(|(_, p)| p.container == container)
                .map(|(pid, _)| *pid)
                .collect()
        }

        fn deliver(&mut self, pid: u32, signal: Signal) {
            if terminates(signal) {
                self.end(pid, Exit::Signal(signal as i32));
            }
        }
    }

    /// Whether `signal` ends the fake's processes (they handle none).
    fn terminates(signal: Signal) -> bool {
        matches!(
            signal,
            Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT
        )
    }

    /// The fake runtime; `faults` is shared with the recording host.
    #[derive(Debug, Default)]
    pub struct FakeRuntime {
        faults: Arc<Faults>,
        world: Mutex<World>,
    }

    impl FakeRuntime {
        /// A runtime failing the calls `faults` is armed for.
        pub fn new(faults: Arc<Faults>) -> Self {
            Self {
                faults,
                world: Mutex::default(),
            }
        }

        fn world(&self) -> std::sync::MutexGuard<'_, World> {
            self.world.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn before(&self, what: &'static str) -> Result<Option<FaultKind>, AgentError> {
            match self.faults.next(what) {
                // Only a create or exec helper is modelled dying after it acted; the others fail
                // before they act.
                Some(FaultKind::After) if matches!(what, "create" | "exec") => {
                    Ok(Some(FaultKind::After))
                }
                Some(_) => Err(Faults::error(what)),
                None => Ok(None),
            }
        }

        fn after<T>(what: &'static str, fault: Option<FaultKind>, ok: T) -> Result<T, AgentError> {
            match fault {
                Some(_) => Err(Faults::error(what)),
                None => Ok(ok),
            }
        }

        /// The containers it holds.
        pub fn containers(&self) -> BTreeMap<String, FakeContainer> {
            self.world().containers.clone()
        }

        /// The processes that have not ended, with their containers.
        pub fn live_processes(&self) -> BTreeMap<u32, String> {
            self.world()
                .processes
                .iter()
                .filter(|(_, p)| p.exited.is_none())
                .map(|(pid, p)| (*pid, p.container.clone()))
                .collect()
        }

        /// How `pid` ended, if it did.
        pub fn exit_of(&self, pid: u32) -> Option<Exit> {
            self.world().processes.get(&pid).and_then(|p| p.exited)
        }

        /// Ends `pid` on its own with exit code `code` (the workload finishing).
        pub fn exit(&self, pid: u32, code: i32) {
            self.world().end(pid, Exit::Code(code));
        }
    }

    #[async_trait::async_trait]
    impl ContainerRuntime for FakeRuntime {
        async fn create(&self, id: &str, bundle: &Path, stdio: ChildIo) -> Result<u32, AgentError> {
            let fault = self.before("create")?;
            if !bundle.join("config.json").is_file() || !bundle.join("rootfs").is_dir() {
                return Err(AgentError::Runtime(format!("bundle of {id} is incomplete")));
            }
            let mut world = self.world();
            if world.containers.contains_key(id) {
                return Err(AgentError::Runtime(format!("container {id} exists")));
            }
            let init = world.spawn(id, stdio);
            world.containers.insert(
                id.to_owned(),
                FakeContainer {
                    init,
                    started: false,
                },
            );
            Self::after("create", fault, init)
        }

        async fn start(&self, id: &str) -> Result<(), AgentError> {
            self.before("start")?;
            let mut world = self.world();
            let init = match world.containers.get(id) {
                Some(c) if !c.started => c.init,
                Some(_) => return Err(AgentError::Runtime(format!("{id} already started"))),
                None => return Err(AgentError::Runtime(format!("no container {id}"))),
            };
            if !world.alive(init) {
                return Err(AgentError::Runtime(format!("the init of {id} is gone")));
            }
            if let Some(c) = world.containers.get_mut(id) {
                c.started = true;
            }
            Ok(())
        }

        async fn exec(
            &self,
            id: &str,
            process_json: &Path,
            stdio: ChildIo,
        ) -> Result<u32, AgentError> {
            let fault = self.before("exec")?;
            if !process_json.is_file() {
                return Err(AgentError::Runtime(format!("no process file for {id}")));
            }
            let mut world = self.world();
            match world.containers.get(id) {
                Some(c) if c.started && world.alive(c.init) => {}
                _ => return Err(AgentError::Runtime(format!("{id} is not running"))),
            }
            let pid = world.spawn(id, stdio);
            Self::after("exec", fault, pid)
        }

        async fn kill_all(&self, id: &str, signal: i32) -> Result<(), AgentError> {
            self.before("kill_all")?;
            let signal = Signal::try_from(signal)
                .map_err(|e| AgentError::Runtime(format!("signal {signal}: {e}")))?;
            let mut world = self.world();
            if !world.containers.contains_key(id) {
                return Err(AgentError::Runtime(format!("no container {id}")));
            }
            for pid in world.pids_of(id) {
                world.deliver(pid, signal);
            }
            Ok(())
        }

        async fn delete(&self, id: &str, force: bool) -> Result<(), AgentError> {
            self.before("delete")?;
            let mut world = self.world();
            let pids = world.pids_of(id);
            if !force && pids.iter().any(|pid| world.alive(*pid)) {
                return Err(AgentError::Runtime(format!("{id} is running")));
            }
            for pid in &pids {
                world.end(*pid, Exit::Signal(Signal::SIGKILL as i32));
            }
            for pid in pids {
                world.processes.remove(&pid);
            }
            world.containers.remove(id);
            Ok(())
        }

        fn watch(&self, pid: u32) -> oneshot::Receiver<Exit> {
            let taken = self
                .world()
                .processes
                .get_mut(&pid)
                .and_then(|p| p.watcher.take());
            taken.unwrap_or_else(|| {
                // Watched twice, or never spawned: no exit will come.
                let (_, rx) = oneshot::channel();
                rx
            })
        }

        fn signal(&self, pid: u32, signal: Signal) -> Result<(), AgentError> {
            if self.faults.next("signal").is_some() {
                return Err(Faults::error("signal"));
            }
            self.world().deliver(pid, signal);
            Ok(())
        }
    }
}
