//! A process the agent started in a container: its stdio pipes and its exit status.

use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::error::AgentError;
use crate::oci::ChildStdio;
use crate::reaper::Exit;

/// Size of one output chunk sent to the host.
const OUTPUT_CHUNK: usize = 32 * 1024;

/// The agent's ends of a new process's stdio, plus the child's ends to hand to the runtime.
#[derive(Debug)]
pub struct StdioPipes {
    /// Agent side.
    pub io: ProcessIo,
    /// Child side.
    pub child: ChildStdio,
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), AgentError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::io("create pipe", "pipe", e.into()))
}

impl StdioPipes {
    /// Creates the three pipes.
    pub fn new() -> Result<Self, AgentError> {
        let (in_r, in_w) = pipe_pair()?;
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
        let wrap = |e: std::io::Error| AgentError::io("register pipe", "pipe", e);
        Ok(Self {
            io: ProcessIo {
                stdin: Mutex::new(Some(pipe::Sender::from_owned_fd(in_w).map_err(wrap)?)),
                stdout: OutputSlot::new(pipe::Receiver::from_owned_fd(out_r).map_err(wrap)?),
                stderr: OutputSlot::new(pipe::Receiver::from_owned_fd(err_r).map_err(wrap)?),
                terminal: None,
            },
            child: ChildStdio {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
        })
    }
}

/// The agent's side of a process's stdio.
#[derive(Debug)]
pub struct ProcessIo {
    stdin: Mutex<Option<pipe::Sender>>,
    stdout: OutputSlot,
    stderr: OutputSlot,
    /// The pseudo-terminal master, for processes with a terminal.
    terminal: Option<OwnedFd>,
}

impl ProcessIo {
    /// Stdio through a pseudo-terminal whose master the container runtime handed over: stdin and
    /// stdout are the terminal, stderr is empty (a terminal has one output stream).
    pub fn terminal(master: OwnedFd) -> Result<Self, AgentError> {
        let wrap = |e: std::io::Error| AgentError::io("register terminal", "pty", e);
        // O_NONBLOCK lives on the open file description, so the duplicates share it.
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .map_err(|e| wrap(e.into()))?;
        let writer = master.try_clone().map_err(wrap)?;
        let resize = master.try_clone().map_err(wrap)?;
        let (empty_r, empty_w) = pipe_pair()?;
        drop(empty_w);
        Ok(Self {
            // A pty master is not a FIFO; the unchecked constructors only need non-blocking mode.
            stdin: Mutex::new(Some(
                pipe::Sender::from_owned_fd_unchecked(writer).map_err(wrap)?,
            )),
            stdout: OutputSlot::new(pipe::Receiver::from_owned_fd_unchecked(master).map_err(wrap)?),
            stderr: OutputSlot::new(pipe::Receiver::from_owned_fd(empty_r).map_err(wrap)?),
            terminal: Some(resize),
        })
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), AgentError> {
        let fd = self
            .terminal
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("the process has no terminal".into()))?;
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(fd, size)
            .map_err(|e| AgentError::io("resize terminal", "pty", e.into()))
    }

    /// Writes `data` to the process's stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, AgentError> {
        // Take the sender out for the duration of the write so the std mutex is not held across
        // an await; concurrent writers are refused rather than interleaved.
        let mut sender = self
            .stdin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| AgentError::FailedPrecondition("stdin is closed or busy".into()))?;
        let result = sender.write_all(data).await;
        *self.stdin.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        match result {
            Ok(()) => Ok(data.len()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(
                AgentError::FailedPrecondition("the process closed its stdin".into()),
            ),
            Err(e) => Err(AgentError::io("write stdin", "pipe", e)),
        }
    }

    /// Closes stdin (the process sees EOF).
    pub fn close_stdin(&self) {
        self.stdin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// A stream of the process's stdout or stderr. One reader at a time; a reader that goes away
    /// hands the pipe back for the next one.
    pub fn output(&self, stderr: bool) -> Result<OutputStream, AgentError> {
        let slot = if stderr { &self.stderr } else { &self.stdout };
        slot.take()
    }
}

#[derive(Debug, Clone)]
struct OutputSlot(Arc<Mutex<Option<pipe::Receiver>>>);

impl OutputSlot {
    fn new(rx: pipe::Receiver) -> Self {
        Self(Arc::new(Mutex::new(Some(rx))))
    }

    fn take(&self) -> Result<OutputStream, AgentError> {
        let rx = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                AgentError::FailedPrecondition("another reader is attached to this stream".into())
            })?;
        let slot = self.clone();
        let stream =
            futures::stream::unfold(Some(ReadGuard { rx: Some(rx), slot }), |guard| async {
                let mut guard = guard?;
                let rx = guard.rx.as_mut()?;
                let mut buf = BytesMut::with_capacity(OUTPUT_CHUNK);
                match rx.read_buf(&mut buf).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok(buf.freeze()), Some(guard))),
                    // A pty master reads EIO once the last slave descriptor closed: its EOF.
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => None,
                    Err(e) => Some((Err(e), None)),
                }
            });
        Ok(OutputStream(Box::pin(stream)))
    }
}

/// Returns the pipe to its slot when the reading stream is dropped.
struct ReadGuard {
    rx: Option<pipe::Receiver>,
    slot: OutputSlot,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            *self.slot.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(rx);
        }
    }
}

/// Chunks of a process's output until EOF.
pub struct OutputStream(Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>);

impl std::fmt::Debug for OutputStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputStream")
    }
}

impl Stream for OutputStream {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// A running (or finished) process.
#[derive(Debug)]
pub struct Process {
    /// Its pid in the agent's pid namespace.
    pub pid: u32,
    /// Stdio.
    pub io: ProcessIo,
    /// `None` while running.
    pub exit: watch::Receiver<Option<Exit>>,
}

impl Process {
    /// Wraps a started process; `exited` resolves when the reaper collects it.
    pub fn new(pid: u32, io: ProcessIo, exited: tokio::sync::oneshot::Receiver<Exit>) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Ok(exit) = exited.await {
                let _ = tx.send(Some(exit));
            }
        });
        Self { pid, io, exit: rx }
    }

    /// The exit status if it has exited.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits for the exit status.
    pub async fn wait(mut rx: watch::Receiver<Option<Exit>>) -> Result<Exit, AgentError> {
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::Internal("process exit watcher ended".into()))?;
        (*exit).ok_or_else(|| AgentError::Internal("process exit missing".into()))
    }

    /// Sends `signal` through `runtime` unless the process has already exited.
    pub fn signal(
        &self,
        runtime: &dyn crate::oci::ContainerRuntime,
        signal: nix::sys::signal::Signal,
    ) -> Result<(), AgentError> {
        if self.exited().is_some() {
            return Err(AgentError::FailedPrecondition("process has exited".into()));
        }
        runtime.signal(self.pid, signal)
    }
}
