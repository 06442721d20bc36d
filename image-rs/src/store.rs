//! A content-addressed store of verified blobs (`blobs/sha256/<hex>`), shared by concurrent pulls.
//!
//! A blob enters the store only after its size and digest were checked, by an atomic rename from
//! a private temporary file; a failed or cancelled download removes its temporary file, so
//! nothing a later pull reuses comes from a failed one. Within one process, concurrent pulls of
//! the same blob wait for a single download.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The downloaded bytes do not hash to the expected digest.
    #[error("blob digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The descriptor's digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The blob is not the size its descriptor states.
    #[error("blob {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// Bytes received (so far).
        actual: u64,
    },
    /// The store lock was poisoned by a panicking thread.
    #[error("blob store lock poisoned")]
    Poisoned,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The blob store. Open one per directory and process, and share it (it is `Arc`-friendly).
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    fetches: AtomicU64,
    seq: AtomicU64,
}

/// Either the verified blob is present, or the caller must download it through the writer.
#[derive(Debug)]
pub enum Slot {
    /// Path of the verified blob.
    Present(PathBuf),
    /// Write the blob here, then [`BlobWriter::finish`].
    Vacant(Box<BlobWriter>),
}

impl BlobStore {
    /// Opens (creating) a store at `dir`, removing temporary files left by an earlier crash.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err("creating store", &blobs))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("cleaning store tmp", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err("creating store tmp", &tmp))?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            locks: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        }))
    }

    /// Where the blob `digest` lives when present.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// How many downloads this store has handed out (for tests and metrics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Returns the blob if present, or a writer holding the per-digest lock.
    pub async fn slot(&self, digest: &Digest, size: u64) -> Result<Slot, StoreError> {
        let lock = {
            let mut locks = self.locks.lock().map_err(|_| StoreError::Poisoned)?;
            Arc::clone(locks.entry(digest.clone()).or_default())
        };
        let guard = lock.lock_owned().await;
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.len() == size => return Ok(Slot::Present(path)),
            Ok(_) => {
                // A blob of the wrong size cannot have come through `finish`; drop it.
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(io_err("removing bad blob", &path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting blob", &path)(e)),
        }
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}.{}",
            digest.hex(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_err("creating temporary blob", &tmp))?;
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(Slot::Vacant(Box::new(BlobWriter {
            file: Some(file),
            tmp,
            dest: path,
            digest: digest.clone(),
            size,
            written: 0,
            hasher: Sha256::new(),
            _guard: guard,
        })))
    }
}

/// Receives one blob's bytes; verifies and publishes them on [`finish`](Self::finish).
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    digest: Digest,
    size: u64,
    written: u64,
    hasher: Sha256,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl BlobWriter {
    /// Appends `chunk`, refusing to grow past the descriptor's size.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        match self.file.as_mut() {
            Some(file) => file
                .write_all(chunk)
                .await
                .map_err(io_err("writing temporary blob", &self.tmp)),
            None => Ok(()),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size and digest, then atomically publishes the blob.
    pub async fn finish(mut self) -> Result<PathBuf, StoreError> {
        if self.written != self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        if let Some(mut file) = self.file.take() {
            file.flush()
                .await
                .map_err(io_err("flushing blob", &self.tmp))?;
            file.sync_all()
                .await
                .map_err(io_err("syncing blob", &self.tmp))?;
        }
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(io_err("publishing blob", &self.dest))?;
        Ok(self.dest.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Unpublished (failed, cancelled or already renamed): nothing stays in tmp.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verified_blob_is_published_once_and_bad_blob_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"layer bytes";
        let digest = Digest::of(data);
        let Slot::Vacant(mut w) = store.slot(&digest, data.len() as u64).await.unwrap() else {
            panic!("empty store has the blob")
        };
        w.write(data).await.unwrap();
        let path = w.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(matches!(
            store.slot(&digest, data.len() as u64).await.unwrap(),
            Slot::Present(_)
        ));
        assert_eq!(store.fetches(), 1);

        let wrong = Digest::of(b"other");
        let Slot::Vacant(mut w) = store.slot(&wrong, data.len() as u64).await.unwrap() else {
            panic!("blob present")
        };
        w.write(data).await.unwrap();
        assert!(matches!(
            w.finish().await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!store.blob_path(&wrong).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
