//! Safe layer unpacking.
//!
//! Every entry's *parent* directory is resolved inside the root with `openat2(RESOLVE_IN_ROOT)`
//! semantics through `pathrs` (symlinks, absolute or relative, can never lead outside the root,
//! in this layer or a later one). The final component is then created, replaced or changed with
//! `*at` system calls relative to that parent and `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, so metadata
//! is never applied through a symlink. Names with `..`, NUL, or beyond the length/depth limits
//! are refused; absolute names are anchored at the root. Device nodes, FIFOs and sockets are
//! refused (or skipped by policy); setuid/setgid bits and all extended attributes are stripped.
//! Hard links must point at a file created earlier in the same layer. Whiteouts (`.wh.NAME`) and
//! opaque markers (`.wh..wh..opq`) remove only what lower layers left.
//!
//! Layers are applied into a [`Staging`] directory that becomes the destination only on
//! [`Staging::commit`]; dropping it removes everything, so a refused layer leaves nothing behind.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use pathrs::{Handle, Root};

use crate::tar_headers::{HeaderGuard, HeaderRefusal, refusal_in};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::fs::{Gid, Uid};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Longest path accepted (Linux `PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// Longest single name accepted (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;

/// What to do with device nodes, FIFOs and sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DevicePolicy {
    /// Refuse the layer (default).
    Reject,
    /// Leave the entry out and carry on.
    Skip,
}

/// Unpacking policy and limits.
#[derive(Debug, Clone)]
pub struct UnpackPolicy {
    /// Device nodes, FIFOs and sockets. Default: reject.
    pub devices: DevicePolicy,
    /// Keep setuid/setgid bits. Default: false (stripped).
    pub keep_setid_bits: bool,
    /// Apply the archive's uid/gid when running as root. Default: true.
    pub preserve_ownership: bool,
    /// Most entries in one layer. Default: 1,000,000.
    pub max_entries: u64,
    /// Most path components in one name. Default: 256.
    pub max_depth: usize,
}

impl Default for UnpackPolicy {
    fn default() -> Self {
        Self {
            devices: DevicePolicy::Reject,
            keep_setid_bits: false,
            preserve_ownership: true,
            max_entries: 1_000_000,
            max_depth: 256,
        }
    }
}

/// Why a layer was refused. The root it was being unpacked into must be thrown away.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream is malformed (bad checksum, bad header, short read).
    #[error("malformed tar stream")]
    Archive(#[source] io::Error),
    /// The stream ended without the end-of-archive marker.
    #[error("tar stream is truncated (no end-of-archive marker)")]
    Truncated,
    /// Non-zero bytes follow the end-of-archive marker.
    #[error("non-zero data after the end-of-archive marker")]
    TrailingData,
    /// An extension header (GNU long name or link, PAX) declared more than its limit, or a GNU
    /// sparse member: refused before its body was read.
    #[error("tar header refused")]
    Header(#[source] HeaderRefusal),
    /// A name that cannot be placed safely.
    #[error("illegal entry name \"{name}\": {reason}")]
    IllegalName {
        /// An escaped prefix of the raw name ([`quoted`]).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More entries than the policy allows.
    #[error("more than {limit} entries in one layer")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The layer names more distinct paths, with their parent directories, than the per-layer
    /// bookkeeping holds (`2 × UnpackPolicy::max_entries`).
    #[error("more than {limit} distinct paths and parent directories in one layer")]
    TooManyPaths {
        /// The limit.
        limit: usize,
    },
    /// A device node, FIFO or socket under [`DevicePolicy::Reject`].
    #[error("device node, fifo or socket \"{}\" refused", quoted_path(.path))]
    Device {
        /// Entry path.
        path: PathBuf,
    },
    /// A GNU sparse file.
    #[error("sparse file \"{}\" refused", quoted_path(.path))]
    Sparse {
        /// Entry path.
        path: PathBuf,
    },
    /// An entry type this unpacker does not know.
    #[error("unsupported entry type {kind:#x} for \"{}\"", quoted_path(.path))]
    UnsupportedType {
        /// Entry path.
        path: PathBuf,
        /// The tar type flag.
        kind: u8,
    },
    /// A uid/gid outside the 32-bit range.
    #[error("owner id {id} of \"{}\" is out of range", quoted_path(.path))]
    IdOutOfRange {
        /// Entry path.
        path: PathBuf,
        /// The id.
        id: u64,
    },
    /// A PAX record that does not parse.
    #[error("malformed pax header on \"{}\"", quoted_path(.path))]
    Pax {
        /// Entry path (as far as known).
        path: PathBuf,
    },
    /// A hard link whose target is not a file of this layer.
    #[error(
        "hard link \"{}\" -> \"{}\" refused: {reason}",
        quoted_path(.path),
        quoted_path(.target)
    )]
    HardLink {
        /// Entry path.
        path: PathBuf,
        /// The link target.
        target: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The image's unpacked size passes the quota.
    #[error("unpacked content exceeds the quota of {limit} bytes")]
    Quota {
        /// The quota.
        limit: u64,
    },
    /// A path could not be resolved inside the root.
    #[error("resolving \"{}\" inside the root", quoted_path(.path))]
    Resolve {
        /// The path.
        path: PathBuf,
        /// pathrs' error.
        #[source]
        source: pathrs::error::Error,
    },
    /// A filesystem operation failed.
    #[error("{op} \"{}\"", quoted_path(.path))]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The destination exists and is not an empty directory.
    #[error("destination {0:?} exists and is not empty")]
    DestinationExists(PathBuf),
}

/// Most bytes of an attacker-controlled name an error quotes.
pub const QUOTED_BYTES: usize = 96;

/// An escaped prefix of the raw bytes `raw`, as errors quote names from an archive: at most
/// [`QUOTED_BYTES`] bytes of it (`<[u8]>::escape_ascii`), and `…` when it was longer. (The host's
/// `coffer_log::escaped_prefix` does the same for `&str`, but this crate is part of the guest and
/// never depends on host crates; names here are bytes, not text.)
pub fn quoted(raw: &[u8]) -> String {
    let mut out = raw[..raw.len().min(QUOTED_BYTES)]
        .escape_ascii()
        .to_string();
    if raw.len() > QUOTED_BYTES {
        out.push('…');
    }
    out
}

fn quoted_path(path: &Path) -> String {
    quoted(path.as_os_str().as_bytes())
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn sys_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> UnpackError + 'a {
    move |errno| UnpackError::Io {
        op,
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// What one layer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries created or changed.
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Entries left out by policy (devices under [`DevicePolicy::Skip`]).
    pub skipped: u64,
    /// Regular-file bytes written.
    pub bytes: u64,
}

/// The remaining unpacked-bytes quota of one image.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    limit: u64,
    used: u64,
}

impl Quota {
    /// A quota of `limit` bytes of file content.
    pub fn new(limit: u64) -> Self {
        Self { limit, used: 0 }
    }

    fn take(&mut self, bytes: u64) -> Result<(), UnpackError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            return Err(UnpackError::Quota { limit: self.limit });
        }
        Ok(())
    }
}

/// A root being assembled next to its destination; removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    dest: PathBuf,
    root: Root,
    committed: bool,
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

impl Staging {
    /// Creates a staging directory beside `dest`, which must not exist or be an empty directory.
    pub fn new(dest: &Path) -> Result<Self, UnpackError> {
        check_dest(dest)?;
        let name = dest
            .file_name()
            .ok_or_else(|| UnpackError::DestinationExists(dest.to_owned()))?;
        let parent = dest.parent().unwrap_or(Path::new("."));
        let mut prefix = OsString::from(".");
        prefix.push(name);
        prefix.push(".partial-");
        sweep_staging(parent, &prefix);
        let mut staged = prefix;
        staged.push(format!(
            "{}-{}",
            std::process::id(),
            STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = parent.join(staged);
        std::fs::create_dir(&dir).map_err(io_err("creating staging directory", &dir))?;
        let root = match Root::open(&dir) {
            Ok(root) => root,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(UnpackError::Resolve { path: dir, source });
            }
        };
        Ok(Self {
            dir,
            dest: dest.to_owned(),
            root,
            committed: false,
        })
    }

    /// The staging root, for [`apply_layer`].
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The staging directory's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves the staged root to the destination.
    pub fn commit(mut self) -> Result<(), UnpackError> {
        std::fs::set_permissions(&self.dir, Permissions::from_mode(0o755))
            .map_err(io_err("setting root permissions", &self.dir))?;
        check_dest(&self.dest)?;
        if self.dest.is_dir() {
            std::fs::remove_dir(&self.dest)
                .map_err(io_err("replacing empty destination", &self.dest))?;
        }
        std::fs::rename(&self.dir, &self.dest).map_err(io_err("committing root", &self.dest))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed
            && let Err(err) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), error = %err, "removing staging directory");
        }
    }
}

/// Removes the staging directories `<parent>/<prefix><pid>-<seq>` of processes that are gone
/// (killed or crashed mid-pull); those of live processes are left alone. Best effort: a failure
/// is logged, and the new staging directory has a name of its own anyway.
fn sweep_staging(parent: &Path, prefix: &OsStr) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_bytes().strip_prefix(prefix.as_bytes()) else {
            continue;
        };
        let pid = rest.split(|b| *b == b'-').next().unwrap_or_default();
        let pid = std::str::from_utf8(pid).unwrap_or_default();
        if crate::store::owner_gone(pid) {
            let path = entry.path();
            if let Err(err) = std::fs::remove_dir_all(&path) {
                tracing::warn!(dir = %path.display(), error = %err, "removing a stale staging directory");
            }
        }
    }
}

fn check_dest(dest: &Path) -> Result<(), UnpackError> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspecting destination", dest)(e)),
        Ok(meta) if meta.is_dir() => {
            let mut entries =
                std::fs::read_dir(dest).map_err(io_err("reading destination", dest))?;
            if entries.next().is_some() {
                Err(UnpackError::DestinationExists(dest.to_owned()))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(UnpackError::DestinationExists(dest.to_owned())),
    }
}

/// Unpacks uncompressed tar `layers` in order into `dest` through a [`Staging`] directory.
/// On any error nothing is left at `dest` or beside it.
pub fn unpack_layers<R: Read>(
    layers: impl IntoIterator<Item = R>,
    dest: &Path,
    policy: &UnpackPolicy,
    quota_bytes: u64,
) -> Result<Vec<LayerStats>, UnpackError> {
    let staging = Staging::new(dest)?;
    let mut quota = Quota::new(quota_bytes);
    let mut stats = Vec::new();
    for layer in layers {
        let mut reader = crate::digest::HashingReader::new(layer, u64::MAX);
        stats.push(apply_layer(
            staging.root(),
            &mut reader,
            policy,
            &mut quota,
        )?);
        let (_, _, nonzero) = reader.finish().map_err(UnpackError::Archive)?;
        if nonzero {
            return Err(UnpackError::TrailingData);
        }
    }
    staging.commit()?;
    Ok(stats)
}

/// Bytes copied per read/write of file contents.
const COPY_BUFFER: usize = 256 * 1024;

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `reader` to `file` through `buf`, filling it before each write.
fn copy_contents<R: Read>(
    reader: &mut R,
    file: &mut File,
    buf: &mut [u8],
) -> Result<u64, CopyError> {
    use std::io::Write as _;
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        file.write_all(&buf[..filled]).map_err(CopyError::Write)?;
        total += filled as u64;
    }
}

/// Counts the bytes the tar parser consumes, to detect a missing end-of-archive marker.
struct Counting<'a, R> {
    inner: &'a mut R,
    count: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A validated entry name: root-relative, normal components only.
fn normalize(raw: &[u8], max_depth: usize) -> Result<PathBuf, UnpackError> {
    let bad = |reason| UnpackError::IllegalName {
        name: quoted(raw),
        reason,
    };
    if raw.contains(&0) {
        return Err(bad("contains NUL"));
    }
    if raw.len() > PATH_MAX {
        return Err(bad("longer than PATH_MAX"));
    }
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err(bad("contains a '..' component")),
            _ if part.len() > NAME_MAX => return Err(bad("component longer than NAME_MAX")),
            _ => {
                depth += 1;
                if depth > max_depth {
                    return Err(bad("too many path components"));
                }
                out.push(OsStr::from_bytes(part));
            }
        }
    }
    Ok(out)
}

fn split_leaf(path: &Path) -> (&Path, &OsStr) {
    // `normalize` guarantees at least one normal component.
    let parent = path.parent().unwrap_or(Path::new(""));
    let name = path.file_name().unwrap_or(OsStr::new("."));
    (parent, name)
}

/// A path as the per-layer sets hold it: the first 128 bits of its SHA-256, so a set's memory
/// per path is fixed ([`TRACKED_PATH_BYTES`]) whatever the names' lengths. A collision (2^64 work
/// to find one) could only make a whiteout spare a path or let a hard link name one of a lower
/// layer, which stays inside the root either way.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PathKey([u8; 16]);

impl PathKey {
    fn of(path: &Path) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(path.as_os_str().as_bytes());
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

/// Upper bound of the memory one tracked path costs in the per-layer sets (16-byte key, control
/// byte, load factor and a table being resized next to its successor). At most
/// `2 × UnpackPolicy::max_entries` paths are tracked per layer: 96 MiB at the defaults.
pub const TRACKED_PATH_BYTES: u64 = 48;

/// Per-layer bookkeeping for whiteouts and hard links.
struct LayerState<'r> {
    root: &'r Root,
    /// Paths this layer created (whiteouts never remove them; hard links may point only here).
    created: HashSet<PathKey>,
    /// Ancestors of created paths (opaque markers keep them).
    ancestors: HashSet<PathKey>,
    /// Most paths `created` and `ancestors` may hold together.
    max_tracked: usize,
    /// Last resolved parent; dropped whenever something is removed or a symlink appears.
    parent_cache: Option<(PathBuf, Handle)>,
    is_root: bool,
    /// Buffer for copying file contents (large, so the decoder and `write` see big chunks).
    copy_buf: Vec<u8>,
}

impl LayerState<'_> {
    fn parent(&mut self, parent: &Path) -> Result<&Handle, UnpackError> {
        let hit = self.parent_cache.as_ref().is_some_and(|(p, _)| p == parent);
        if !hit {
            let handle = self
                .root
                .mkdir_all(parent, &Permissions::from_mode(0o755))
                .map_err(|source| UnpackError::Resolve {
                    path: parent.to_owned(),
                    source,
                })?;
            self.parent_cache = Some((parent.to_owned(), handle));
        }
        match &self.parent_cache {
            Some((_, handle)) => Ok(handle),
            None => Err(UnpackError::Io {
                op: "resolving parent",
                path: parent.to_owned(),
                source: io::Error::other("parent cache empty"),
            }),
        }
    }

    fn mark_created(&mut self, path: &Path) -> Result<(), UnpackError> {
        // Bounded by the path's depth (`UnpackPolicy::max_depth`).
        let mut ancestor = path.parent();
        while let Some(a) = ancestor {
            if a.as_os_str().is_empty() || !self.ancestors.insert(PathKey::of(a)) {
                break;
            }
            ancestor = a.parent();
        }
        self.created.insert(PathKey::of(path));
        if self.created.len() + self.ancestors.len() > self.max_tracked {
            return Err(UnpackError::TooManyPaths {
                limit: self.max_tracked,
            });
        }
        Ok(())
    }

    fn kept(&self, path: &Path) -> bool {
        let key = PathKey::of(path);
        self.created.contains(&key) || self.ancestors.contains(&key)
    }

    /// Removes `parent/name` (recursively for directories) if it exists, without following it.
    fn remove_existing(&mut self, path: &Path) -> Result<Option<FileType>, UnpackError> {
        let (parent, name) = split_leaf(path);
        let handle = self.parent(parent)?;
        let kind = match rustix::fs::statat(handle, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => FileType::from_raw_mode(stat.st_mode),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(sys_err("inspecting", path)(e)),
        };
        if kind == FileType::Directory {
            self.parent_cache = None;
            self.root
                .remove_all(path)
                .map_err(|source| UnpackError::Resolve {
                    path: path.to_owned(),
                    source,
                })?;
        } else {
            rustix::fs::unlinkat(handle, name, AtFlags::empty())
                .map_err(sys_err("removing", path))?;
            self.parent_cache = None;
        }
        Ok(Some(kind))
    }

    fn whiteout(&mut self, dir: &Path, name: &[u8]) -> Result<(), UnpackError> {
        if name == OPAQUE_MARKER {
            let handle = self.parent(dir)?;
            let fd = rustix::fs::openat(
                handle,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys_err("opening opaque directory", dir))?;
            let mut children = Vec::new();
            for entry in rustix::fs::Dir::new(fd).map_err(sys_err("listing", dir))? {
                let entry = entry.map_err(sys_err("listing", dir))?;
                let child = entry.file_name().to_bytes();
                if child != b"." && child != b".." {
                    children.push(dir.join(OsStr::from_bytes(child)));
                }
            }
            for child in children {
                if !self.kept(&child) {
                    self.remove_existing(&child)?;
                }
            }
            return Ok(());
        }
        let target = name.strip_prefix(WHITEOUT_PREFIX).unwrap_or(name);
        if target.is_empty() || target == b"." || target == b".." {
            return Err(UnpackError::IllegalName {
                name: quoted(name),
                reason: "whiteout of an invalid name",
            });
        }
        let path = dir.join(OsStr::from_bytes(target));
        // Nothing to hide unless the path resolves (a whiteout never creates directories).
        if !self.kept(&path) && self.root.resolve_nofollow(&path).is_ok() {
            self.remove_existing(&path)?;
        }
        Ok(())
    }
}

/// Owner and mode of an entry after policy.
struct Meta {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
    mtime: i64,
}

fn entry_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    policy: &UnpackPolicy,
    is_root: bool,
) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let mut uid = header.uid().map_err(UnpackError::Archive)?;
    let mut gid = header.gid().map_err(UnpackError::Archive)?;
    let mode = header.mode().map_err(UnpackError::Archive)?;
    let mtime = header.mtime().map_err(UnpackError::Archive)?;
    let pax_err = || UnpackError::Pax {
        path: path.to_owned(),
    };
    if let Some(records) = entry.pax_extensions().map_err(UnpackError::Archive)? {
        for record in records {
            let record = record.map_err(|_| pax_err())?;
            let key = record.key().map_err(|_| pax_err())?;
            // Values of other keys (xattrs) may be binary; they are never applied.
            if !matches!(
                key,
                "uid" | "gid" | "size" | "mtime" | "atime" | "ctime" | "path" | "linkpath"
            ) {
                continue;
            }
            let value = record.value().map_err(|_| pax_err())?;
            match key {
                "uid" => uid = value.parse().map_err(|_| pax_err())?,
                "gid" => gid = value.parse().map_err(|_| pax_err())?,
                _ if value.is_empty() => return Err(pax_err()),
                _ => {}
            }
        }
    }
    let id = |id: u64| {
        u32::try_from(id)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or(UnpackError::IdOutOfRange {
                path: path.to_owned(),
                id,
            })
    };
    let (uid, gid) = (id(uid)?, id(gid)?);
    let mut mode = mode & 0o7777;
    if !policy.keep_setid_bits {
        mode &= !0o6000;
    }
    let chown = policy.preserve_ownership && is_root;
    Ok(Meta {
        uid: chown.then_some(uid),
        gid: chown.then_some(gid),
        mode,
        mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
    })
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn ids(meta: &Meta) -> (Option<Uid>, Option<Gid>) {
    (
        meta.uid.map(Uid::from_raw_unchecked),
        meta.gid.map(Gid::from_raw_unchecked),
    )
}

/// Applies `meta` to an open file or directory.
fn apply_meta_fd(fd: &File, meta: &Meta, path: &Path) -> Result<(), UnpackError> {
    let (uid, gid) = ids(meta);
    if uid.is_some() || gid.is_some() {
        rustix::fs::fchown(fd, uid, gid).map_err(sys_err("chown", path))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(sys_err("chmod", path))?;
    rustix::fs::futimens(fd, &timestamps(meta.mtime)).map_err(sys_err("setting times", path))
}

/// Unpacks one uncompressed tar layer from `reader` on top of `root`.
///
/// `reader` is left positioned after the end-of-archive marker; the caller drains it (to finish
/// its digest) and refuses trailing non-zero data.
pub fn apply_layer<R: Read>(
    root: &Root,
    reader: &mut R,
    policy: &UnpackPolicy,
    quota: &mut Quota,
) -> Result<LayerStats, UnpackError> {
    let mut counting = Counting {
        inner: reader,
        count: 0,
    };
    let archive_err = |e: io::Error| match refusal_in(&e) {
        Some(refusal) => UnpackError::Header(refusal),
        None => UnpackError::Archive(e),
    };
    let mut state = LayerState {
        root,
        created: HashSet::new(),
        ancestors: HashSet::new(),
        max_tracked: usize::try_from(policy.max_entries.saturating_mul(2)).unwrap_or(usize::MAX),
        parent_cache: None,
        is_root: rustix::process::geteuid().is_root(),
        copy_buf: vec![0; COPY_BUFFER],
    };
    let mut stats = LayerStats::default();
    let mut end_of_last = 0u64;
    let mut seen = 0u64;
    {
        // Extension headers are held to their limits before `tar` reads their bodies.
        let mut archive = tar::Archive::new(HeaderGuard::new(&mut counting));
        for entry in archive.entries().map_err(archive_err)? {
            let mut entry = entry.map_err(archive_err)?;
            seen += 1;
            if seen > policy.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: policy.max_entries,
                });
            }
            let size = entry.size();
            end_of_last = entry
                .raw_file_position()
                .saturating_add(size.div_ceil(512).saturating_mul(512));
            apply_entry(&mut state, &mut entry, policy, quota, &mut stats)?;
        }
    }
    if counting.count <= end_of_last {
        return Err(UnpackError::Truncated);
    }
    Ok(stats)
}

fn apply_entry<R: Read>(
    state: &mut LayerState<'_>,
    entry: &mut tar::Entry<'_, R>,
    policy: &UnpackPolicy,
    quota: &mut Quota,
    stats: &mut LayerStats,
) -> Result<(), UnpackError> {
    let kind = entry.header().entry_type();
    if kind == tar::EntryType::XGlobalHeader {
        return Ok(());
    }
    let raw = entry.path_bytes().into_owned();
    if raw.is_empty() {
        // Also an empty PAX `path` record, which `tar` takes as the name.
        return Err(UnpackError::IllegalName {
            name: String::new(),
            reason: "empty name",
        });
    }
    let path = normalize(&raw, policy.max_depth)?;
    if path.as_os_str().is_empty() {
        // The root itself ("./"): its metadata stays ours.
        return Ok(());
    }
    let (parent, name) = split_leaf(&path);
    let parent = parent.to_owned();
    let name = name.to_owned();
    if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
        state.whiteout(&parent, name.as_bytes())?;
        stats.whiteouts += 1;
        return Ok(());
    }
    match kind {
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            return match policy.devices {
                DevicePolicy::Reject => Err(UnpackError::Device { path }),
                DevicePolicy::Skip => {
                    stats.skipped += 1;
                    Ok(())
                }
            };
        }
        tar::EntryType::GNUSparse => return Err(UnpackError::Sparse { path }),
        tar::EntryType::Regular
        | tar::EntryType::Continuous
        | tar::EntryType::Directory
        | tar::EntryType::Symlink
        | tar::EntryType::Link => {}
        other => {
            return Err(UnpackError::UnsupportedType {
                path,
                kind: other.as_byte(),
            });
        }
    }
    let meta = entry_meta(entry, &path, policy, state.is_root)?;
    match kind {
        tar::EntryType::Directory => {
            let existing = {
                let handle = state.parent(&parent)?;
                match rustix::fs::statat(handle, &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => Some(FileType::from_raw_mode(stat.st_mode)),
                    Err(rustix::io::Errno::NOENT) => None,
                    Err(e) => return Err(sys_err("inspecting", &path)(e)),
                }
            };
            if existing.is_some_and(|k| k != FileType::Directory) {
                state.remove_existing(&path)?;
            }
            let handle = state.parent(&parent)?;
            if existing != Some(FileType::Directory) {
                rustix::fs::mkdirat(handle, &name, Mode::from_raw_mode(0o700))
                    .map_err(sys_err("creating directory", &path))?;
            }
            let fd = rustix::fs::openat(
                handle,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys_err("opening directory", &path))?;
            apply_meta_fd(&File::from(fd), &meta, &path)?;
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            quota.take(entry.size())?;
            state.remove_existing(&path)?;
            let handle = state.parent(&parent)?;
            let fd = rustix::fs::openat(
                handle,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(sys_err("creating file", &path))?;
            let mut file = File::from(fd);
            let written =
                copy_contents(entry, &mut file, &mut state.copy_buf).map_err(|e| match e {
                    CopyError::Read(e) => UnpackError::Archive(e),
                    CopyError::Write(e) => io_err("writing file", &path)(e),
                })?;
            stats.bytes += written;
            apply_meta_fd(&file, &meta, &path)?;
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| UnpackError::IllegalName {
                    name: quoted(&raw),
                    reason: "symlink without a target",
                })?
                .into_owned();
            if target.is_empty() || target.contains(&0) || target.len() > PATH_MAX {
                return Err(UnpackError::IllegalName {
                    name: quoted(&raw),
                    reason: "invalid symlink target",
                });
            }
            state.remove_existing(&path)?;
            let handle = state.parent(&parent)?;
            rustix::fs::symlinkat(OsStr::from_bytes(&target), handle, &name)
                .map_err(sys_err("creating symlink", &path))?;
            let (uid, gid) = ids(&meta);
            if uid.is_some() || gid.is_some() {
                rustix::fs::chownat(handle, &name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(sys_err("chown", &path))?;
            }
            rustix::fs::utimensat(
                handle,
                &name,
                &timestamps(meta.mtime),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(sys_err("setting times", &path))?;
            state.parent_cache = None;
        }
        tar::EntryType::Link => {
            let raw_target = entry
                .link_name_bytes()
                .ok_or_else(|| UnpackError::IllegalName {
                    name: quoted(&raw),
                    reason: "hard link without a target",
                })?
                .into_owned();
            let target = normalize(&raw_target, policy.max_depth)?;
            let refuse = |reason| UnpackError::HardLink {
                path: path.clone(),
                target: target.clone(),
                reason,
            };
            if target.as_os_str().is_empty() || target == path {
                return Err(refuse("target is the root or the link itself"));
            }
            if !state.created.contains(&PathKey::of(&target)) {
                return Err(refuse("target is not a file created earlier in this layer"));
            }
            state.remove_existing(&path)?;
            let (tparent, tname) = split_leaf(&target);
            let tparent = if tparent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                tparent
            };
            let tparent = state
                .root
                .resolve(tparent)
                .map_err(|source| UnpackError::Resolve {
                    path: tparent.to_owned(),
                    source,
                })?;
            let handle = state.parent(&parent)?;
            rustix::fs::linkat(&tparent, tname, handle, &name, AtFlags::empty())
                .map_err(|_| refuse("the target cannot be linked"))?;
        }
        _ => {}
    }
    state.mark_created(&path)?;
    stats.entries += 1;
    Ok(())
}
