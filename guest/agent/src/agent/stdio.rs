//! A new process's standard streams: pipes or a terminal whose master the runtime hands over, and
//! the reader feeding an upload's chunks to the tar unpacker.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Container;
use crate::error::AgentError;
use crate::process::{Process, ProcessIo};

/// A new process's stdio on the agent's side, before the process exists.
pub(super) enum PendingIo {
    Pipes(ProcessIo),
    Console {
        path: PathBuf,
        master: tokio::task::JoinHandle<std::io::Result<std::os::fd::OwnedFd>>,
    },
}

impl PendingIo {
    /// The process's stdio once it runs (for a terminal: once the master arrived).
    pub(super) async fn ready(self) -> Result<ProcessIo, AgentError> {
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
    pub(super) fn abandon(self) {
        if let Self::Console { path, master } = self {
            master.abort();
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(super) fn next_console() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Receives one file descriptor (SCM_RIGHTS) from `socket`.
pub(super) fn receive_fd(
    socket: &std::os::unix::net::UnixStream,
) -> std::io::Result<std::os::fd::OwnedFd> {
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
pub(super) enum ProcessHandle {
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

/// Adapts a channel of chunks into a blocking reader for the tar unpacker.
pub(super) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub(super) fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
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
