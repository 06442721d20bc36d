//! A content-addressed store of verified blobs (`blobs/sha256/<hex>`), shared by concurrent pulls.
//!
//! A blob enters the store only after its size and digest were checked, by an atomic rename from
//! a private temporary file; a failed or cancelled download removes its temporary file, so
//! nothing a later pull reuses comes from a failed one. Within one process, concurrent pulls of
//! the same blob wait for a single download. The puller may read a blob while it downloads
//! ([`FollowReader`]), but such a reader reaches the blob's end only after its digest was
//! verified, so nothing unverified is ever taken for a complete blob.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest as _, Sha256};

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
    /// Opens (creating) a store at `dir`, removing temporary files left by processes that are
    /// gone (a crash, a kill): a temporary blob is named `<hex>.<pid>.<seq>` by its writer, so
    /// the downloads of live pulls sharing the store are left alone.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err("creating store", &blobs))?;
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io_err("creating store tmp", &tmp))?;
        for entry in std::fs::read_dir(&tmp).map_err(io_err("cleaning store tmp", &tmp))? {
            let entry = entry.map_err(io_err("cleaning store tmp", &tmp))?;
            let name = entry.file_name();
            let owner = name.to_str().and_then(|n| n.split('.').nth(1));
            if owner.is_none_or(owner_gone) {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(io_err("removing stale temporary blob", &path))?;
            }
        }
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
            .map_err(io_err("creating temporary blob", &tmp))?
            .into_std()
            .await;
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(Slot::Vacant(Box::new(BlobWriter {
            idle: Some((file, Sha256::new())),
            pending: None,
            batch: Vec::with_capacity(WRITE_BATCH * 2),
            tmp,
            dest: path,
            digest: digest.clone(),
            size,
            written: 0,
            growth: Arc::default(),
            _guard: guard,
        })))
    }
}

/// Bytes handed to the file system in one write (and hashed in one go), off the async threads.
const WRITE_BATCH: usize = 1 << 20;

/// Receives one blob's bytes; verifies them ([`verify`](Self::verify)) and publishes them
/// ([`publish`](Self::publish)), or both at once ([`finish`](Self::finish)).
///
/// Bytes are hashed and written in batches on the blocking pool while the next batch arrives.
/// A [`FollowReader`] can read the blob while it is written; it reaches the end only once the
/// whole blob has been verified.
#[derive(Debug)]
pub struct BlobWriter {
    /// The file and hasher, unless a batch is being written.
    idle: Option<(std::fs::File, Sha256)>,
    pending: Option<tokio::task::JoinHandle<io::Result<(std::fs::File, Sha256)>>>,
    batch: Vec<u8>,
    tmp: PathBuf,
    dest: PathBuf,
    digest: Digest,
    size: u64,
    written: u64,
    growth: Arc<Growth>,
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
        self.batch.extend_from_slice(chunk);
        if self.batch.len() >= WRITE_BATCH {
            self.flush_batch().await?;
        }
        Ok(())
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A reader of this blob that follows the download (see [`FollowReader`]).
    pub async fn follower(&self) -> Result<FollowReader, StoreError> {
        let file = tokio::fs::File::open(&self.tmp)
            .await
            .map_err(io_err("opening temporary blob", &self.tmp))?
            .into_std()
            .await;
        Ok(FollowReader {
            file,
            growth: Arc::clone(&self.growth),
            pos: 0,
        })
    }

    /// Waits for the batch being written, if any.
    async fn settle_pending(&mut self) -> Result<(), StoreError> {
        if let Some(pending) = self.pending.take() {
            let done = pending.await.map_err(|e| StoreError::Io {
                op: "writing temporary blob",
                path: self.tmp.clone(),
                source: io::Error::other(e),
            })?;
            self.idle = Some(done.map_err(io_err("writing temporary blob", &self.tmp))?);
        }
        Ok(())
    }

    /// Starts writing the collected batch (after the previous one finished).
    async fn flush_batch(&mut self) -> Result<(), StoreError> {
        self.settle_pending().await?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let Some((mut file, mut hasher)) = self.idle.take() else {
            return Err(StoreError::Io {
                op: "writing temporary blob",
                path: self.tmp.clone(),
                source: io::Error::other("the previous write failed"),
            });
        };
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(WRITE_BATCH * 2));
        let growth = Arc::clone(&self.growth);
        let written = self.written;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            hasher.update(&batch);
            file.write_all(&batch)?;
            growth.advance(written);
            Ok((file, hasher))
        }));
        Ok(())
    }

    /// Writes what is left and checks size and digest. Readers following the blob still wait
    /// for [`publish`](Self::publish).
    pub async fn verify(&mut self) -> Result<(), StoreError> {
        self.flush_batch().await?;
        self.settle_pending().await?;
        if self.written != self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        let hasher = match self.idle.as_mut() {
            Some((_, hasher)) => std::mem::take(hasher),
            None => {
                return Err(StoreError::Io {
                    op: "writing temporary blob",
                    path: self.tmp.clone(),
                    source: io::Error::other("the previous write failed"),
                });
            }
        };
        let actual = Digest::from_hasher(hasher);
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Releases following readers (the blob was verified), then makes the blob durable and
    /// atomically publishes it. Call only after [`verify`](Self::verify) succeeded.
    pub async fn publish(mut self) -> Result<PathBuf, StoreError> {
        self.growth.settle(true);
        if let Some((file, _)) = self.idle.take() {
            tokio::task::spawn_blocking(move || file.sync_all())
                .await
                .map_err(|e| StoreError::Io {
                    op: "syncing blob",
                    path: self.tmp.clone(),
                    source: io::Error::other(e),
                })?
                .map_err(io_err("syncing blob", &self.tmp))?;
        }
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(io_err("publishing blob", &self.dest))?;
        Ok(self.dest.clone())
    }

    /// [`verify`](Self::verify), then [`publish`](Self::publish).
    pub async fn finish(mut self) -> Result<PathBuf, StoreError> {
        self.verify().await?;
        self.publish().await
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Readers following an unverified blob fail; unpublished (failed, cancelled or already
        // renamed) blobs leave nothing in tmp.
        self.growth.settle(false);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// How far a blob being downloaded has got; shared by its writer and the readers following it.
#[derive(Debug, Default)]
struct Growth {
    state: Mutex<GrowthState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GrowthState {
    /// Bytes in the file.
    written: u64,
    /// Set once: whether the whole blob was verified.
    verified: Option<bool>,
}

impl Growth {
    fn advance(&self, written: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.written = written;
        }
        self.changed.notify_all();
    }

    /// Records the verdict (the first one counts).
    fn settle(&self, verified: bool) {
        if let Ok(mut state) = self.state.lock()
            && state.verified.is_none()
        {
            state.verified = Some(verified);
        }
        self.changed.notify_all();
    }

    /// Blocks until more than `pos` bytes are written or the verdict is in.
    fn wait(&self, pos: u64) -> io::Result<(u64, Option<bool>)> {
        let poisoned = |_| io::Error::other(StoreError::Poisoned);
        let mut state = self.state.lock().map_err(poisoned)?;
        while state.written <= pos && state.verified.is_none() {
            state = self.changed.wait(state).map_err(poisoned)?;
        }
        Ok((state.written, state.verified))
    }
}

/// The error a [`FollowReader`] returns when the download it follows failed; the download's own
/// error says why.
#[derive(Debug, thiserror::Error)]
#[error("the blob being downloaded failed verification or broke off")]
pub struct DownloadFailed;

/// Reads a blob while it is being downloaded (blocking until bytes arrive). It yields only
/// bytes already written and reaches its end only after the whole blob's size and digest were
/// verified; if the download fails it returns [`DownloadFailed`].
#[derive(Debug)]
pub struct FollowReader {
    file: std::fs::File,
    growth: Arc<Growth>,
    pos: u64,
}

impl io::Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (written, verified) = self.growth.wait(self.pos)?;
        if written > self.pos {
            let want = usize::try_from(written - self.pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = self.file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::other(DownloadFailed));
            }
            self.pos += n as u64;
            return Ok(n);
        }
        match verified {
            Some(true) => Ok(0),
            _ => Err(io::Error::other(DownloadFailed)),
        }
    }
}

/// Whether the process `pid` (decimal, as written in a temporary name) is gone, so what it left
/// behind can be removed. A pid that does not parse counts as gone; this process and a live
/// process (even one of another user, or an unrelated one that reused the pid) do not.
pub(crate) fn owner_gone(pid: &str) -> bool {
    let Some(pid) = pid
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return true;
    };
    if pid.as_raw_nonzero().get() == i32::try_from(std::process::id()).unwrap_or(0) {
        return false;
    }
    matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Whether an I/O error chain holds [`DownloadFailed`].
pub(crate) fn download_failed_in(err: &io::Error) -> bool {
    io_chain_holds::<DownloadFailed>(err)
}

/// Whether the error chain of `err`, looking through nested I/O errors, holds an `E`.
pub(crate) fn io_chain_holds<E: std::error::Error + 'static>(err: &io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            source = io.get_ref().map(|e| e as _);
            continue;
        }
        source = e.source();
    }
    false
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

    #[test]
    fn open_removes_temporary_blobs_of_processes_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let hex = "ab".repeat(32);
        let stale = tmp.join(format!("{hex}.{dead}.0"));
        let garbled = tmp.join("not-ours");
        let live = tmp.join(format!("{hex}.{}.7", std::process::id()));
        let init = tmp.join(format!("{hex}.1.3"));
        for path in [&stale, &garbled, &live, &init] {
            std::fs::write(path, b"partial").unwrap();
        }
        BlobStore::open(dir.path()).unwrap();
        assert!(!stale.exists(), "a dead process's blob was kept");
        assert!(!garbled.exists());
        assert!(live.exists(), "this process's blob was removed");
        assert!(init.exists(), "a live process's blob was removed");
    }
}
