//! Child reaping. The agent is PID 1 in the guest (and a child subreaper on a host), so every
//! container process ends up as its child. One task reaps them all on SIGCHLD and hands each exit
//! status to whoever registered for that pid. Nothing else in the agent may call `wait`.

use std::collections::{HashMap, VecDeque};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// Shell-style status: the code, or 128 + signal.
    pub fn status(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }
}

/// Exit statuses nobody has asked for yet are kept for a late `watch` (a process may exit before
/// its pid reaches us), up to this many; older ones are orphans and are dropped.
const MAX_UNCLAIMED: usize = 1024;

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: VecDeque<(i32, Exit)>,
}

/// Handle to the reaper task.
#[derive(Debug, Clone)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts reaping. Must run inside a tokio runtime, before any
    /// child is spawned.
    pub fn start() -> std::io::Result<Self> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Self {
            state: Arc::new(Mutex::new(State::default())),
        };
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap_all();
                // A periodic sweep as well, in case a signal is lost while the handler is re-armed.
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), sigchld.recv()).await;
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reap_all(&self) {
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return;
                }
            };
            self.deliver(exit.0, exit.1);
        }
    }

    fn deliver(&self, pid: i32, exit: Exit) {
        let mut state = self.lock();
        match state.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                if state.unclaimed.len() == MAX_UNCLAIMED {
                    state.unclaimed.pop_front();
                }
                state.unclaimed.push_back((pid, exit));
            }
        }
    }

    /// Spawns `cmd` and registers for its exit atomically with respect to reaping.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(u32, oneshot::Receiver<Exit>)> {
        let mut state = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id();
        // The `Child` is dropped without waiting: the reaper owns the exit status.
        drop(child);
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(pid_i32(pid), tx);
        Ok((pid, rx))
    }

    /// Registers for the exit of a process this agent did not spawn directly (a container process
    /// reparented to us). If it already exited, the status is delivered at once.
    pub fn watch(&self, pid: u32) -> oneshot::Receiver<Exit> {
        let pid = pid_i32(pid);
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        if let Some(pos) = state.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, exit)) = state.unclaimed.remove(pos) {
                let _ = tx.send(exit);
            }
        } else {
            state.waiters.insert(pid, tx);
        }
        rx
    }
}

fn pid_i32(pid: u32) -> i32 {
    i32::try_from(pid).unwrap_or(i32::MAX)
}
