//! The broker's store: [`Store::Directory`], resources as files on one machine (the embedded
//! default: the resource policy and reference values then live in the broker's memory, set from
//! its configuration and the admin API), or [`Store::Postgres`], everything replicas share
//! ([`super::pg`]).
//!
//! Directory: resources stored as files `<dir>/<repo>/<type>/<tag>`. Paths are [`ResourcePath`]s (three
//! validated segments, no dot-leading names), so nothing resolves outside `dir` (KBS-09).
//! Writes are atomic: a dot-named temporary file in the target directory, fsync, rename.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::kbs::path::ResourcePath;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on a resource file.
    #[error("resource store {op} {path}")]
    Io {
        /// Operation.
        op: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A database request failed (connection, query, schema).
    #[error("store {op}")]
    Database {
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The TLS configuration for the database is unusable.
    #[error("store tls: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// A database request did not finish within `timeout_ms`.
    #[error("store {op} timed out")]
    Timeout {
        /// Operation.
        op: &'static str,
    },
    /// A statement that returns a row returned none.
    #[error("store {op} returned no row")]
    NoRow {
        /// Operation.
        op: &'static str,
    },
    /// The resource is larger than allowed.
    #[error("resource {path} is larger than {limit} bytes")]
    TooLarge {
        /// Resource path.
        path: String,
        /// Limit.
        limit: usize,
    },
}

/// Where the broker's state lives.
#[derive(Debug)]
pub enum Store {
    /// Resource files in one directory (one machine).
    Directory(ResourceStore),
    /// PostgreSQL, shared by replicas.
    Postgres(Box<super::pg::PgStore>),
}

impl Store {
    /// Reads a resource; `Ok(None)` when it does not exist.
    pub async fn read(
        &self,
        path: &ResourcePath,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match self {
            Self::Directory(d) => d.read(path),
            Self::Postgres(pg) => pg.read(path).await,
        }
    }

    /// Writes a resource (atomically).
    pub async fn write(&self, path: &ResourcePath, bytes: &[u8]) -> Result<(), StoreError> {
        match self {
            Self::Directory(d) => d.write(path, bytes),
            Self::Postgres(pg) => pg.write(path, bytes).await,
        }
    }

    /// The shared store, if this is one.
    pub fn shared(&self) -> Option<&super::pg::PgStore> {
        match self {
            Self::Directory(_) => None,
            Self::Postgres(pg) => Some(pg),
        }
    }
}

/// The resource directory.
#[derive(Debug, Clone)]
pub struct ResourceStore {
    dir: PathBuf,
    max_len: usize,
}

impl ResourceStore {
    /// Resources under `dir`, each at most `max_len` bytes.
    pub fn new(dir: impl Into<PathBuf>, max_len: usize) -> Self {
        Self {
            dir: dir.into(),
            max_len,
        }
    }

    fn file(&self, path: &ResourcePath) -> PathBuf {
        let [repo, kind, tag] = path.segments();
        self.dir.join(repo).join(kind).join(tag)
    }

    /// Reads a resource; `Ok(None)` when it does not exist.
    pub fn read(&self, path: &ResourcePath) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let file = self.file(path);
        match std::fs::metadata(&file) {
            Ok(m) if !m.is_file() => return Ok(None),
            Ok(m) if m.len() > self.max_len as u64 => {
                return Err(StoreError::TooLarge {
                    path: path.to_string(),
                    limit: self.max_len,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "stat",
                    path: file,
                    source,
                });
            }
        }
        std::fs::read(&file)
            .map(|b| Some(Zeroizing::new(b)))
            .map_err(|source| StoreError::Io {
                op: "read",
                path: file,
                source,
            })
    }

    /// Writes a resource atomically.
    pub fn write(&self, path: &ResourcePath, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > self.max_len {
            return Err(StoreError::TooLarge {
                path: path.to_string(),
                limit: self.max_len,
            });
        }
        let file = self.file(path);
        let parent = file.parent().unwrap_or(Path::new(&self.dir)).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|source| StoreError::Io {
            op: "create directory",
            path: parent.clone(),
            source,
        })?;
        let mut suffix = [0u8; 8];
        OsRng.fill_bytes(&mut suffix);
        let tmp = parent.join(format!(".tmp-{}", hex::encode(suffix)));
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(bytes).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("sync", &tmp))?;
            std::fs::rename(&tmp, &file).map_err(io("rename", &file))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResourceStore::new(dir.path(), 16);
        let p: ResourcePath = "default/key/1".parse().unwrap();
        assert!(store.read(&p).unwrap().is_none());
        store.write(&p, b"abc").unwrap();
        store.write(&p, b"abcd").unwrap();
        assert_eq!(store.read(&p).unwrap().unwrap().as_slice(), b"abcd");
        assert!(store.write(&p, &[0u8; 17]).is_err());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("default/key"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("1")]);
    }
}
