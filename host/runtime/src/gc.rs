//! Crash-only state: what a supervisor that died left under `state_root/sandboxes/`, found and
//! removed.
//!
//! Every sandbox directory holds, from the moment it exists under its name, an [`Owner`] record:
//! the pid of the process that supervises the sandbox, that process's start time (field 22 of
//! `/proc/PID/stat`, so a recycled pid is not taken for the owner) and the boot it ran in. The
//! directory is made under a staging name with the record inside and renamed into place
//! ([`claim`]), so no directory of a live sandbox is ever without one.
//!
//! A directory whose owner is gone is stale: the owner's VM processes died with it (they get
//! SIGKILL when their supervisor ends, see `crate::sys`), and so did everything the owner served
//! in-process (registry tunnels, published ports, the console copy). [`collect`] removes the rest:
//! it kills any process still naming the directory (a VMM from a runtime before parent-death
//! signals), removes the ingress qdiscs the pod network left on the CNI interfaces (from
//! `network.json`, unless a live sandbox has the namespace attached again), and removes the
//! directory with its sockets, logs and the accelerator probe's scratch directory. A directory
//! whose owner lives is never touched; one without a record (made by an older runtime) is left
//! alone and reported.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::network::{self, NetworkError, NetworkRecord, StaleNetwork};

/// Prefix of a directory being claimed (see [`claim`]).
const CLAIM_PREFIX: &str = ".claim-";
/// How old a staging directory without an owner record must be before it is taken for the
/// leftover of a claim that died between `mkdir` and writing the record.
const UNOWNED_CLAIM_AGE: Duration = Duration::from_secs(60);
/// How long [`kill_processes_of`] waits for the processes it killed to go.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Garbage-collection failures.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// A file or directory could not be read, written or removed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An owner record is not one this runtime writes.
    #[error("owner record {path}: {source}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A directory of that name exists already.
    #[error("{0} exists")]
    Exists(PathBuf),
    /// Processes of a stale sandbox survived SIGKILL.
    #[error("processes {pids:?} of {dir} did not exit")]
    Survivors {
        /// The sandbox directory.
        dir: PathBuf,
        /// Their pids.
        pids: Vec<i32>,
    },
    /// The pod network a stale sandbox left could not be collected.
    #[error("pod network of {dir}: {source}")]
    Network {
        /// The sandbox directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: NetworkError,
    },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> GcError {
    let path = path.to_path_buf();
    move |source| GcError::Io { op, path, source }
}

/// The process that supervises a sandbox, as recorded in its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// Its pid.
    pub pid: u32,
    /// When it started: clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// The boot it ran in (`/proc/sys/kernel/random/boot_id`): a state directory on a disk
    /// outlives a reboot, after which pid and start time may repeat.
    pub boot_id: String,
}

/// Reads `/proc/sys/kernel/random/boot_id`.
fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// The start time of process `pid` while it runs: `None` when there is no such process or it is
/// a zombie (it has exited; only its parent has not collected its status yet).
fn running_since(pid: u32) -> io::Result<Option<u64>> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // `pid (comm) state …`: comm may hold spaces and parentheses, the last `)` ends it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    if matches!(fields.first(), Some(&"Z" | &"X")) {
        return Ok(None);
    }
    // Field 22 overall; the state, field 3, is the first after the name.
    fields
        .get(22 - 3)
        .and_then(|f| f.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat has no start time"),
            )
        })
}

impl Owner {
    /// The record's file name in a sandbox directory.
    pub const FILE: &'static str = "owner.json";

    /// This process.
    pub fn current() -> Result<Self, GcError> {
        let pid = std::process::id();
        let start_time = running_since(pid)
            .map_err(io_error("read", Path::new("/proc/self/stat")))?
            .ok_or_else(|| GcError::Io {
                op: "read",
                path: "/proc/self/stat".into(),
                source: io::ErrorKind::NotFound.into(),
            })?;
        Ok(Self {
            pid,
            start_time,
            boot_id: boot_id().map_err(io_error(
                "read",
                Path::new("/proc/sys/kernel/random/boot_id"),
            ))?,
        })
    }

    /// Whether the recorded process still runs: same boot, same pid, same start time, not a
    /// zombie. When that cannot be read, it is taken to run (nothing is collected on a guess).
    pub fn is_alive(&self) -> bool {
        match boot_id() {
            Ok(id) if id != self.boot_id => return false,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "reading the boot id; taking the owner for alive");
                return true;
            }
        }
        match running_since(self.pid) {
            Ok(Some(since)) => since == self.start_time,
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(pid = self.pid, %err, "reading the owner's stat; taking it for alive");
                true
            }
        }
    }

    /// Writes the record into `dir`.
    fn write(&self, dir: &Path) -> Result<(), GcError> {
        let path = dir.join(Self::FILE);
        let json = serde_json::to_vec(self).map_err(|source| GcError::Record {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, json).map_err(io_error("write", &path))
    }

    /// The record in `dir`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, GcError> {
        let path = dir.join(Self::FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(GcError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| GcError::Record { path, source })
    }
}

/// Creates the sandbox directory `dir` owned by this process: made under a staging name beside
/// it with the [`Owner`] record inside, then renamed to `dir` unless that exists
/// (`RENAME_NOREPLACE`). A collector therefore never sees the directory without its owner; a
/// staging directory left by a process that died is collected like a sandbox.
pub fn claim(dir: &Path) -> Result<(), GcError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    let owner = Owner::current()?;
    let staging = tempfile::Builder::new()
        .prefix(CLAIM_PREFIX)
        .tempdir_in(parent)
        .map_err(io_error("create a staging directory in", parent))?;
    owner.write(staging.path())?;
    match nix::fcntl::renameat2(
        None,
        staging.path(),
        None,
        dir,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {
            // Renamed: nothing is left at the staging path to remove.
            let _ = staging.keep();
            Ok(())
        }
        Err(nix::errno::Errno::EEXIST) => Err(GcError::Exists(dir.to_path_buf())),
        Err(errno) => Err(GcError::Io {
            op: "rename into place",
            path: dir.to_path_buf(),
            source: errno.into(),
        }),
    }
}

/// Pids of the processes whose command line names a file inside `dir` (QEMU and its vsock
/// backend name their sockets there, the probe its console log), other than this one.
pub fn processes_of(dir: &Path) -> Vec<i32> {
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

/// Kills the processes of `dir` ([`processes_of`]) with SIGKILL and waits (up to 5 s) until they
/// are gone (a zombie's command line is empty: it has released everything). Returns those it
/// killed. Blocking.
pub fn kill_processes_of(dir: &Path) -> Result<Vec<i32>, GcError> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let deadline = Instant::now() + KILL_WAIT;
    let mut killed = Vec::new();
    loop {
        let pids = processes_of(dir);
        if pids.is_empty() {
            return Ok(killed);
        }
        if Instant::now() > deadline {
            return Err(GcError::Survivors {
                dir: dir.to_path_buf(),
                pids,
            });
        }
        for pid in pids {
            tracing::warn!(pid, dir = %dir.display(), "killing an orphaned VM process");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What [`collect`] removed for one stale sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The directory, now gone.
    pub dir: PathBuf,
    /// Its owner, gone; `None` for the staging directory of a claim that died before writing it.
    pub owner: Option<Owner>,
    /// Processes that still named the directory and were killed.
    pub killed: Vec<i32>,
    /// The pod network the sandbox had attached, and what became of what it left.
    pub network: Option<(NetworkRecord, StaleNetwork)>,
}

impl std::fmt::Display for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dir.display())?;
        match &self.owner {
            Some(owner) => write!(f, " (owner pid {} gone", owner.pid)?,
            None => write!(f, " (an interrupted claim")?,
        }
        if !self.killed.is_empty() {
            write!(f, "; killed processes {:?}", self.killed)?;
        }
        if let Some((record, outcome)) = &self.network {
            let netns = record.netns.display();
            let interfaces = record.interfaces.join(", ");
            match outcome {
                StaleNetwork::Removed => {
                    write!(f, "; ingress qdiscs of {interfaces} in {netns} removed")?
                }
                StaleNetwork::InUse => write!(
                    f,
                    "; {netns} is attached by a live sandbox again, its qdiscs left to it"
                )?,
                StaleNetwork::Gone => write!(f, "; {netns} is gone")?,
            }
        }
        write!(f, ")")
    }
}

/// What [`collect`] found under a state directory.
#[derive(Debug, Default)]
pub struct Report {
    /// Stale sandboxes, removed.
    pub collected: Vec<Collected>,
    /// Directories of live sandboxes (and of claims being made), untouched.
    pub live: Vec<PathBuf>,
    /// Directories without an owner record (made by a runtime before owner records), untouched.
    pub unowned: Vec<PathBuf>,
    /// Stale sandboxes that could not be removed (all or in part).
    pub failed: Vec<(PathBuf, GcError)>,
}

/// Finds the stale sandboxes under `state_root` (their owner is gone) and removes them: kills
/// processes still naming their directory, collects the pod network they left, removes the
/// directory. A sandbox whose owner lives is never touched.
pub async fn collect(state_root: &Path) -> Result<Report, GcError> {
    let sandboxes = state_root.join("sandboxes");
    let entries = match std::fs::read_dir(&sandboxes) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Report::default()),
        Err(source) => {
            return Err(GcError::Io {
                op: "list",
                path: sandboxes,
                source,
            });
        }
    };
    let mut report = Report::default();
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        match collect_one(&dir).await {
            Ok(Verdict::Collected(collected)) => {
                tracing::info!(%collected, "collected a stale sandbox");
                report.collected.push(collected);
            }
            Ok(Verdict::Live) => report.live.push(dir),
            Ok(Verdict::Unowned) => report.unowned.push(dir),
            Ok(Verdict::Vanished) => {}
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "collecting a stale sandbox");
                report.failed.push((dir, err));
            }
        }
    }
    Ok(report)
}

enum Verdict {
    Collected(Collected),
    Live,
    Unowned,
    /// Another collector got there first.
    Vanished,
}

async fn collect_one(dir: &Path) -> Result<Verdict, GcError> {
    let owner = match Owner::read(dir) {
        Ok(owner) => owner,
        // Removed meanwhile, by another collector or its own owner.
        Err(GcError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Verdict::Vanished);
        }
        Err(err) => return Err(err),
    };
    match &owner {
        Some(owner) if owner.is_alive() => return Ok(Verdict::Live),
        Some(_) => {}
        None if !dir.exists() => return Ok(Verdict::Vanished),
        None if is_claim(dir) && age(dir).is_some_and(|age| age > UNOWNED_CLAIM_AGE) => {}
        // A claim being made: its record is on the way.
        None if is_claim(dir) => return Ok(Verdict::Live),
        None => return Ok(Verdict::Unowned),
    }
    remove(dir).await.map(Verdict::Collected)
}

/// Removes the sandbox in `dir` whatever its owner: kills the processes still naming the
/// directory (and waits until they are gone), collects the pod network it left (see
/// [`network::collect_stale`]) and removes the directory. For a caller that knows the owner is
/// gone ([`collect`] checks; containerd runs the shim's `delete` only for a shim it lost).
pub async fn remove(dir: &Path) -> Result<Collected, GcError> {
    let owner = match Owner::read(dir) {
        Ok(owner) => owner,
        // A record that cannot be read does not keep the rest.
        Err(err) => {
            tracing::warn!(dir = %dir.display(), %err, "reading the owner record");
            None
        }
    };
    // The owner's VM processes went with it, unless they were started by a runtime without
    // parent-death signals. They are gone before the network is collected: QEMU holds the taps,
    // and a tap in the namespace means a live attachment.
    let killed = {
        let owned = dir.to_path_buf();
        tokio::task::spawn_blocking(move || kill_processes_of(&owned))
            .await
            .map_err(|e| GcError::Io {
                op: "kill the processes of",
                path: dir.to_path_buf(),
                source: io::Error::other(e),
            })??
    };
    let network = match NetworkRecord::read(dir) {
        Ok(Some(record)) => {
            let outcome = network::collect_stale(&record.netns, &record.interfaces)
                .await
                .map_err(|source| GcError::Network {
                    dir: dir.to_path_buf(),
                    source,
                })?;
            Some((record, outcome))
        }
        Ok(None) => None,
        Err(source) => {
            return Err(GcError::Network {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(GcError::Io {
                op: "remove",
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    Ok(Collected {
        dir: dir.to_path_buf(),
        owner,
        killed,
        network,
    })
}

/// Whether `dir` is the staging directory of a [`claim`]. Without an owner record it is a claim
/// being made or, once old, one that died between making it and writing the record.
fn is_claim(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(CLAIM_PREFIX))
}

/// How long ago `dir` was last modified.
fn age(dir: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    SystemTime::now().duration_since(modified).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_owner() -> Owner {
        // A child that has exited and been reaped: its pid names no process of that start time.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let start_time = running_since(pid).ok().flatten().unwrap_or(1);
        child.wait().expect("wait");
        Owner {
            pid,
            start_time,
            boot_id: boot_id().expect("boot id"),
        }
    }

    #[test]
    fn the_current_process_is_alive_and_a_recycled_pid_or_another_boot_is_not() {
        let me = Owner::current().expect("current");
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
        // The same pid with another start time: a process that reused the pid.
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive());
        let rebooted = Owner {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..me.clone()
        };
        assert!(!rebooted.is_alive());
        assert!(!dead_owner().is_alive());
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        // Not reaped yet: a zombie once it exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            if stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the child never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(running_since(pid).expect("stat"), None);
        child.wait().expect("wait");
    }

    #[test]
    fn a_claim_holds_its_owner_from_the_start_and_never_replaces_a_directory() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = state.path().join("sandboxes/s1");
        claim(&dir).expect("claim");
        assert_eq!(
            Owner::read(&dir).expect("read"),
            Some(Owner::current().expect("current"))
        );
        // An existing directory, even an empty one (which rename(2) would replace), is refused.
        let empty = state.path().join("sandboxes/s2");
        std::fs::create_dir(&empty).expect("mkdir");
        for taken in [&dir, &empty] {
            match claim(taken) {
                Err(GcError::Exists(path)) => assert_eq!(&path, taken),
                other => panic!("{other:?}"),
            }
        }
        // Nothing but the two directories: the staging directories went.
        let mut names: Vec<String> = std::fs::read_dir(state.path().join("sandboxes"))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["s1", "s2"]);
    }

    #[tokio::test]
    async fn only_sandboxes_whose_owner_is_gone_are_collected() {
        let state = tempfile::tempdir().expect("tempdir");
        let sandboxes = state.path().join("sandboxes");
        let live = sandboxes.join("live");
        claim(&live).expect("claim");
        std::fs::write(live.join("console.log"), "live\n").expect("write");
        let stale = sandboxes.join("stale");
        std::fs::create_dir_all(stale.join("kvm-probe")).expect("mkdir");
        dead_owner().write(&stale).expect("owner");
        std::fs::write(stale.join("console.log"), "stale\n").expect("write");
        let legacy = sandboxes.join("legacy");
        std::fs::create_dir_all(&legacy).expect("mkdir");
        // A claim interrupted before its record, recent (left alone) and old (collected).
        let fresh_claim = sandboxes.join(".claim-fresh");
        std::fs::create_dir_all(&fresh_claim).expect("mkdir");
        let old_claim = sandboxes.join(".claim-old");
        std::fs::create_dir_all(&old_claim).expect("mkdir");
        let old = SystemTime::now() - UNOWNED_CLAIM_AGE - Duration::from_secs(5);
        std::fs::File::open(&old_claim)
            .expect("open")
            .set_modified(old)
            .expect("age");

        let report = collect(state.path()).await.expect("collect");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let collected: Vec<&Path> = report.collected.iter().map(|c| c.dir.as_path()).collect();
        assert_eq!(collected, [old_claim.as_path(), stale.as_path()]);
        assert_eq!(report.live, [fresh_claim.clone(), live.clone()]);
        assert_eq!(report.unowned, [legacy]);
        assert!(!stale.exists() && !old_claim.exists());
        assert_eq!(
            std::fs::read_to_string(live.join("console.log")).expect("live untouched"),
            "live\n"
        );
        let line = report.collected[1].to_string();
        assert!(line.contains("stale") && line.contains("gone"), "{line}");
        // A state directory without sandboxes is nothing to collect.
        let empty = tempfile::tempdir().expect("tempdir");
        let report = collect(empty.path()).await.expect("collect");
        assert!(report.collected.is_empty() && report.failed.is_empty());
    }

    #[tokio::test]
    async fn processes_still_naming_a_stale_directory_are_killed() {
        let state = tempfile::tempdir().expect("tempdir");
        let stale = state.path().join("sandboxes/stale");
        std::fs::create_dir_all(&stale).expect("mkdir");
        dead_owner().write(&stale).expect("owner");
        let log = stale.join("console.log");
        std::fs::write(&log, "").expect("write");
        // An orphaned VMM of an older runtime, as far as the collector can tell.
        let mut orphan = std::process::Command::new("tail")
            .arg("-f")
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(orphan.id()).expect("pid");
        // Until it has exec'd, its command line is still ours.
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes_of(&stale).is_empty() {
            assert!(Instant::now() < deadline, "tail never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        // A sibling whose name extends the directory's is not its.
        assert!(processes_of(&state.path().join("sandboxes/stal")).is_empty());
        let report = collect(state.path()).await.expect("collect");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.collected.len(), 1);
        assert_eq!(report.collected[0].killed, [pid]);
        assert!(!orphan.wait().expect("wait").success());
        assert!(!stale.exists());
    }
}
