//! Leaving nothing behind, also after a crash. The serving shim writes a [`Record`] into each
//! container's bundle before it boots anything. The pod VM's processes die with the shim however
//! it ends (they get SIGKILL when their supervisor does, see `coffer_runtime::gc`); containerd
//! runs `containerd-shim-coffer-v2 … delete` in the bundle when a shim died without deleting its
//! task (and again after its own restart), and [`cleanup_bundle`] then unmounts the snapshot and
//! — for the container that owns the pod VM — removes what the VM left with the runtime's
//! collector ([`coffer_runtime::gc::remove`]): processes still naming the sandbox directory, the
//! pod network's qdiscs, the directory.

use std::path::{Path, PathBuf};

use coffer_runtime::gc;
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
    /// What the pod VM left could not be removed.
    #[error(transparent)]
    Sandbox(#[from] gc::GcError),
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

/// Cleans what a dead shim left for the container whose bundle is `bundle`.
pub async fn cleanup_bundle(bundle: &Path) -> Result<(), CleanupError> {
    unmount_rootfs(&bundle.join("rootfs"))?;
    let Some(record) = read_record(bundle)? else {
        return Ok(());
    };
    if record.owns_vm {
        let removed = gc::remove(&record.sandbox_dir).await?;
        tracing::info!(sandbox_id = %record.pod_id, %removed, "removed what the pod VM left");
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

    #[tokio::test]
    async fn cleanup_removes_the_owned_sandbox_and_its_processes_only() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sandboxes/p1");
        std::fs::create_dir_all(&sandbox).unwrap();
        let log = sandbox.join("console.log");
        std::fs::write(&log, "").unwrap();
        let mut vm = std::process::Command::new("tail")
            .arg("-f")
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is still ours (the test's): wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gc::processes_of(&sandbox).is_empty() {
            assert!(std::time::Instant::now() < deadline, "tail never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let member = dir.path().join("member");
        let owner = dir.path().join("owner");
        for (bundle, owns_vm) in [(&member, false), (&owner, true)] {
            std::fs::create_dir_all(bundle).unwrap();
            write_record(
                bundle,
                &Record {
                    pod_id: "p1".into(),
                    sandbox_dir: sandbox.clone(),
                    owns_vm,
                },
            )
            .unwrap();
        }
        // A member's bundle leaves the pod VM alone.
        cleanup_bundle(&member).await.unwrap();
        assert!(sandbox.exists());
        assert!(vm.try_wait().unwrap().is_none());
        // The owner's takes it.
        cleanup_bundle(&owner).await.unwrap();
        assert!(!vm.wait().unwrap().success());
        assert!(!sandbox.exists());
        // A bundle the shim never wrote a record into has nothing of a VM.
        cleanup_bundle(dir.path()).await.unwrap();
    }
}
