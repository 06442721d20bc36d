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

    /// The reaper the helper processes are registered with.
    pub fn reaper(&self) -> &Reaper {
        &self.reaper
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

    /// Creates container `id` from `bundle`; returns the init pid (waiting for `start`).
    pub async fn create(&self, id: &str, bundle: &Path, stdio: ChildIo) -> Result<u32, AgentError> {
        let bundle = bundle.to_string_lossy();
        self.run(&["create", "--id", id, "--bundle", &bundle], Some(stdio))
            .await?
            .ok_or_else(|| AgentError::Runtime("create returned no pid".into()))
    }

    /// Starts container `id`.
    pub async fn start(&self, id: &str) -> Result<(), AgentError> {
        self.run(&["start", "--id", id], None).await.map(|_| ())
    }

    /// Executes the process described by `process_json` in container `id`; returns its pid.
    pub async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        stdio: ChildIo,
    ) -> Result<u32, AgentError> {
        let process = process_json.to_string_lossy();
        self.run(&["exec", "--id", id, "--process", &process], Some(stdio))
            .await?
            .ok_or_else(|| AgentError::Runtime("exec returned no pid".into()))
    }

    /// Sends `signal` to every process of container `id`.
    pub async fn kill_all(&self, id: &str, signal: i32) -> Result<(), AgentError> {
        let signal = signal.to_string();
        self.run(&["kill-all", "--id", id, "--signal", &signal], None)
            .await
            .map(|_| ())
    }

    /// Deletes container `id`'s runtime state and cgroup.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let mut args = vec!["delete", "--id", id];
        if force {
            args.push("--force");
        }
        self.run(&args, None).await.map(|_| ())
    }
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}
