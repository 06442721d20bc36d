//! Leaving nothing behind, also after a crash. The serving shim writes a [`Record`] into each
//! container's bundle before it boots anything; containerd runs `containerd-shim-coffer-v2 …
//! delete` in that bundle when a shim died without deleting its task (and again after its own
//! restart), and [`cleanup_bundle`] then unmounts the snapshot and — for the container that owns
//! the pod VM — kills the VM's processes (found by their working directory on their command line)
//! and removes the sandbox directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The record's file name inside a bundle.
pub const RECORD: &str = "coffer-shim.json";

/// What a crashed shim left to clean, as written into the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The pod (VM sandbox) id.
    pub pod_id: String,
    /// The VM's private directory on the host.
    pub sandbox_dir: PathBuf,
    /// Whether this container owns the VM (its deletion ends the pod).
    pub owns_vm: bool,
}

/// Cleanup failures.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Reading or writing the record failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The record is not ours.
    #[error("{path}: {source}")]
    Record {
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Unmounting the snapshot failed.
    #[error("unmounting {path}: {message}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// VM processes survived SIGKILL.
    #[error("VM processes {pids:?} of {dir} did not exit")]
    Survivors {
        /// The sandbox directory.
        dir: PathBuf,
        /// Their pids.
        pids: Vec<i32>,
    },
}

/// Writes `record` into `bundle`.
pub fn write_record(bundle: &Path, record: &Record) -> Result<(), CleanupError> {
    let path = bundle.join(RECORD);
    let bytes = serde_json::to_vec(record).map_err(|source| CleanupError::Record {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, bytes).map_err(|source| CleanupError::Io {
        op: "write",
        path,
        source,
    })
}

/// Reads the record in `bundle`, if the shim got as far as writing one.
pub fn read_record(bundle: &Path) -> Result<Option<Record>, CleanupError> {
    let path = bundle.join(RECORD);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CleanupError::Record { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CleanupError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Unmounts whatever is mounted at or below `target` (the container's snapshot).
pub fn unmount_rootfs(target: &Path) -> Result<(), CleanupError> {
    let path = target.to_string_lossy().into_owned();
    containerd_shim::mount::umount_recursive(Some(&path), 0).map_err(|e| CleanupError::Unmount {
        path: target.to_path_buf(),
        message: e.to_string(),
    })
}

/// Pids of the processes whose command line names a file inside `dir` (QEMU and its vsock
/// backend name their sockets there).
pub fn vm_processes(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    String::from_utf8_lossy(&raw)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Kills the VM processes of `dir` and waits (up to 5 s) until they are gone.
pub fn kill_vm_processes(dir: &Path) -> Result<(), CleanupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = vm_processes(dir);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CleanupError::Survivors {
                dir: dir.to_path_buf(),
                pids,
            });
        }
        for pid in pids {
            tracing::warn!(pid, dir = %dir.display(), "killing orphaned VM process");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cleans what a dead shim left for the container whose bundle is `bundle`.
pub fn cleanup_bundle(bundle: &Path) -> Result<(), CleanupError> {
    unmount_rootfs(&bundle.join("rootfs"))?;
    let Some(record) = read_record(bundle)? else {
        return Ok(());
    };
    if record.owns_vm {
        kill_vm_processes(&record.sandbox_dir)?;
        match std::fs::remove_dir_all(&record.sandbox_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CleanupError::Io {
                    op: "remove",
                    path: record.sandbox_dir,
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), None);
        let record = Record {
            pod_id: "p".into(),
            sandbox_dir: "/run/coffer/sandboxes/p".into(),
            owns_vm: true,
        };
        write_record(dir.path(), &record).unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), Some(record));
    }

    #[test]
    fn processes_are_found_by_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sandboxes/p1");
        std::fs::create_dir_all(&sandbox).unwrap();
        let log = sandbox.join("console.log");
        std::fs::write(&log, "").unwrap();
        let mut child = std::process::Command::new("tail")
            .arg("-f")
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is still ours (the test's): wait for it.
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found = vm_processes(&sandbox);
            if !found.is_empty() || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(found, vec![pid]);
        // A sibling whose name extends ours is not ours.
        assert!(vm_processes(&dir.path().join("sandboxes/p")).is_empty());
        // A killed child is a zombie until reaped; its empty command line no longer matches.
        kill_vm_processes(&sandbox).unwrap();
        assert!(!child.wait().unwrap().success());
        assert!(vm_processes(&sandbox).is_empty());
    }
}
