//! A process of a task (a container's init or an exec) as the shim tracks it: its stdio and its
//! life as a [`watch`] channel, so waits, exits and the VM's death meet in one place
//! ([`Process::exit`]: the first report wins).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use containerd_shim::asynchronous::io::{IoTasks, Stdio};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Exit status reported for processes whose VM died (their real status is unknown).
pub const VM_DIED_STATUS: u32 = 255;
/// How long a finished process's output may take to reach its fifos before the exit is reported.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Created, not started.
    Created,
    /// Running with this (guest) pid.
    Running(u32),
    /// Exited.
    Exited {
        /// Its pid while it ran (0 if it never ran).
        pid: u32,
        /// Exit status (128 + signal when killed).
        status: u32,
        /// When.
        at: SystemTime,
    },
}

/// A container's init process or an exec'd process.
pub struct Process {
    pub(crate) container_id: String,
    /// Empty for the init process.
    pub(crate) exec_id: String,
    pub(crate) stdio: Stdio,
    /// The OCI `process` JSON of an exec.
    pub(crate) exec_spec: Option<Vec<u8>>,
    pub(crate) io: IoTasks,
    pub(crate) pumps: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) life: watch::Sender<Life>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("container_id", &self.container_id)
            .field("exec_id", &self.exec_id)
            .field("life", &self.life())
            .finish_non_exhaustive()
    }
}

impl Process {
    pub(crate) fn new(
        container_id: &str,
        exec_id: &str,
        stdio: Stdio,
        exec_spec: Option<Vec<u8>>,
    ) -> Self {
        Self {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            stdio,
            exec_spec,
            io: IoTasks::default(),
            pumps: Mutex::new(Vec::new()),
            life: watch::channel(Life::Created).0,
        }
    }

    pub(crate) fn life(&self) -> Life {
        *self.life.borrow()
    }

    pub(crate) fn pid(&self) -> u32 {
        match self.life() {
            Life::Created => 0,
            Life::Running(pid) | Life::Exited { pid, .. } => pid,
        }
    }

    /// The id containerd knows the process by in events.
    pub(crate) fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    /// Records the exit; false if it was recorded already (the first report wins).
    pub(crate) fn exit(&self, status: u32) -> bool {
        let mut changed = false;
        self.life.send_if_modified(|life| match *life {
            Life::Exited { .. } => false,
            Life::Created | Life::Running(_) => {
                let pid = match *life {
                    Life::Running(pid) => pid,
                    _ => 0,
                };
                *life = Life::Exited {
                    pid,
                    status,
                    at: SystemTime::now(),
                };
                changed = true;
                true
            }
        });
        changed
    }

    pub(crate) async fn exited(&self) -> (u32, SystemTime) {
        let mut rx = self.life.subscribe();
        loop {
            if let Life::Exited { status, at, .. } = *rx.borrow_and_update() {
                return (status, at);
            }
            if rx.changed().await.is_err() {
                return (VM_DIED_STATUS, SystemTime::now());
            }
        }
    }

    /// Lets the output pumps finish (bounded), so an exit is reported after the output.
    pub(crate) async fn drain_outputs(&self) {
        let pumps = std::mem::take(&mut *self.pumps.lock().unwrap_or_else(PoisonError::into_inner));
        let all = futures_join(pumps);
        if tokio::time::timeout(OUTPUT_DRAIN, all).await.is_err() {
            tracing::warn!(container_id = %self.container_id, exec_id = %self.exec_id, "output still open after the process exited");
        }
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// `at` as a protobuf timestamp.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}
