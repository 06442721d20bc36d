//! Every `unsafe` block of the runtime: the tap device ioctl and the set-up a VMM child runs
//! between `fork` and `exec`. Each block says why it is sound; everything else in the crate is
//! safe code (`#![deny(unsafe_code)]` at the crate root, allowed here only).
//!
//! Children of the runtime (QEMU, the vsock backend, the accelerator probe's QEMU) die with the
//! process that supervises them, whatever kills it: each gets `PR_SET_PDEATHSIG(SIGKILL)` before
//! exec. The kernel sends that signal when the *thread* that forked the child exits, not the
//! process, and tokio may run a spawn on a worker or blocking-pool thread that ends while the
//! process lives on. So every such child is forked by one thread made for it
//! ([`ChildSetup::spawn`]), which lives exactly as long as the process; and the child, having set
//! the signal, checks that its parent is still this process (a parent that died between the fork
//! and the `prctl` would never send it) and fails the spawn otherwise.
#![allow(unsafe_code)]

use std::ffi::c_short;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Longest interface name the kernel accepts (`IFNAMSIZ` less the terminating NUL).
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags as the first member of the
/// union, the rest of the union zero. Fully initialised, so no byte the kernel copies is
/// undefined.
#[repr(C)]
struct TunIfreq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: c_short,
    pad: [u8; std::mem::size_of::<libc::ifreq>() - libc::IFNAMSIZ - std::mem::size_of::<c_short>()],
}

const _: () = assert!(std::mem::size_of::<TunIfreq>() == std::mem::size_of::<libc::ifreq>());

/// Creates tap device `name` in the calling thread's network namespace and returns its queue:
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, not persistent (the device disappears when the last
/// descriptor of it closes). The descriptor is close-on-exec.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a valid interface name",
        ));
    }
    // The network namespace of a tap is the one of the task that opened /dev/net/tun.
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = TunIfreq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as c_short,
        pad: [0; std::mem::size_of::<libc::ifreq>()
            - libc::IFNAMSIZ
            - std::mem::size_of::<c_short>()],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `file` is an open /dev/net/tun; `req` is a fully initialised buffer of the size of
    // `struct ifreq`, with a NUL-terminated name (at most IFNAMSIZ - 1 bytes were copied into a
    // zeroed array), that lives until the call returns. TUNSETIFF reads it and writes the
    // resulting name back into it, and keeps no pointer to it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// What a VMM child gets between `fork` and `exec`, prepared before the spawn so that the code
/// running in the child only makes async-signal-safe system calls on numbers it was given.
///
/// Descriptors are handed over at the numbers of duplicates this value holds open until it is
/// dropped (after the spawn): a number held by us through the fork cannot be one the spawn itself
/// opens (the standard library's exec-error pipe, the stdio files), nor 0–2. The duplicates are
/// close-on-exec in this process, so no other child spawned meanwhile inherits them; only the
/// child this set-up is installed on clears the flag, on exactly these numbers.
#[derive(Debug, Default)]
pub struct ChildSetup {
    inherited: Vec<OwnedFd>,
}

impl ChildSetup {
    /// A set-up that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands `fd` to the child; returns the number the child will find it at.
    pub fn inherit(&mut self, fd: BorrowedFd<'_>) -> io::Result<RawFd> {
        // F_DUPFD_CLOEXEC from 3: a fresh number, above stdio, close-on-exec here.
        let dup = fd.try_clone_to_owned()?;
        let number = dup.as_raw_fd();
        if number < 3 {
            return Err(io::Error::other(format!(
                "duplicate descriptor {number} is a stdio number"
            )));
        }
        self.inherited.push(dup);
        Ok(number)
    }

    /// The numbers the child will find inherited descriptors at, in [`inherit`](Self::inherit)
    /// order.
    pub fn numbers(&self) -> Vec<RawFd> {
        self.inherited.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Spawns `cmd` as a supervised child with this set-up: on the process's spawner thread
    /// (see the module docs), so the child gets SIGKILL when this process ends, however it ends,
    /// and never earlier. The descriptors handed over are closed here once the child runs (or
    /// the spawn failed). Give `cmd` `kill_on_drop(true)`: if the caller stops waiting (its future
    /// is dropped), the child is dropped and so killed.
    pub async fn spawn(
        self,
        mut cmd: tokio::process::Command,
    ) -> io::Result<tokio::process::Child> {
        // The child registers with this runtime's process driver, wherever it is forked.
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let parent = std::process::id();
        let (tx, rx) = tokio::sync::oneshot::channel();
        on_spawner_thread(Box::new(move || {
            self.install(&mut cmd, parent);
            let _entered = runtime.enter();
            let spawned = cmd.spawn();
            // The child has its copies (or failed): ours close now.
            drop(self);
            // A caller that stopped waiting drops the child here, which kills it.
            let _ = tx.send(spawned);
        }))?;
        rx.await
            .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
    }

    /// Installs the set-up on `cmd`, for a child forked by a thread of process `parent`; `self`
    /// must outlive the spawn.
    fn install(&self, cmd: &mut tokio::process::Command, parent: u32) {
        let numbers = self.numbers();
        let parent = libc::pid_t::try_from(parent).unwrap_or(libc::pid_t::MAX);
        let child = move || -> io::Result<()> {
            set_parent_death_signal(parent)?;
            for &fd in &numbers {
                clear_cloexec(fd)?;
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec. It only calls prctl(2),
        // getppid(2) and fcntl(2), which are async-signal-safe, on values copied into it before
        // the fork; it allocates nothing (its errors are raw OS errors), takes no lock and
        // touches no state shared with the parent.
        unsafe {
            cmd.pre_exec(child);
        }
    }
}

/// A unit of work for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's queue; the thread is started on first use and never ends (its sender
/// lives here, in a static, until the process exits).
static SPAWNER: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>> =
    std::sync::Mutex::new(None);

/// Runs `job` on the spawner thread: the one thread of the process that forks supervised
/// children, alive as long as the process, so their parent-death signal fires when the process
/// ends and not when some other thread does.
fn on_spawner_thread(job: Job) -> io::Result<()> {
    let mut queue = SPAWNER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let job = match queue.as_ref() {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            // Unreachable while the thread catches every panic; start a new one if it happens.
            Err(std::sync::mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("coffer-spawner".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                // A panicking job must not end the thread: its children would all get SIGKILL.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a spawn on the spawner thread panicked");
                }
            }
        })?;
    tx.send(job)
        .map_err(|_| io::Error::other("the spawner thread did not start"))?;
    *queue = Some(tx);
    Ok(())
}

/// In a forked child: asks for SIGKILL when the thread that forked it exits, then checks that
/// the parent is still `parent` (async-signal-safe: only prctl(2) and getppid(2)). A parent that
/// died before the `prctl` never sends the signal; the child then fails with ESRCH instead of
/// running unsupervised.
fn set_parent_death_signal(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes the signal number as an integer and no pointer;
    // the unused arguments are passed as zero, as prctl(2) asks.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid takes nothing and cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Clears FD_CLOEXEC on `fd` (async-signal-safe: only fcntl(2)).
fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFD/F_SETFD takes and returns integers only; an invalid number
    // fails with EBADF, which is reported.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::process::Stdio;

    /// The descriptors a `sh -c` child holds after running `script`, spawned with `setup` if
    /// given (else as a plain tokio child): what `ls /proc/$$/fd` lists for the shell itself.
    async fn child_fds(setup: Option<ChildSetup>, script: &str) -> Vec<RawFd> {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("{script}; ls /proc/$$/fd"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let child = match setup {
            Some(setup) => setup.spawn(cmd).await.expect("spawn sh"),
            None => cmd.spawn().expect("spawn sh"),
        };
        let out = child.wait_with_output().await.expect("wait for sh");
        assert!(out.status.success(), "{out:?}");
        let mut fds: Vec<RawFd> = String::from_utf8(out.stdout)
            .expect("utf-8")
            .split_whitespace()
            .map(|n| n.parse().expect("fd number"))
            .collect();
        fds.sort();
        fds
    }

    #[tokio::test]
    async fn inherited_descriptors_reach_the_child_at_the_numbers_given_and_nothing_else_does() {
        // What any child gets here (stdio, and whatever the test harness leaves inheritable).
        let baseline = child_fds(None, "true").await;
        let (mut read_a, write_a) = std::io::pipe().expect("pipe");
        let (mut read_b, write_b) = std::io::pipe().expect("pipe");
        let mut setup = ChildSetup::new();
        let a = setup.inherit(write_a.as_fd()).expect("inherit");
        let b = setup.inherit(write_b.as_fd()).expect("inherit");
        assert_eq!(setup.numbers(), [a, b]);
        assert!(a >= 3 && b >= 3 && a != b);
        let sources = [write_a.as_raw_fd(), write_b.as_raw_fd()];
        assert!(!sources.contains(&a) && !sources.contains(&b));
        let seen = child_fds(
            Some(setup),
            &format!("echo to-a >/proc/self/fd/{a}; echo to-b >/proc/self/fd/{b}"),
        )
        .await;
        drop((write_a, write_b));
        // The pipes reached the child at `a` and `b` (and the spawn closed our duplicates: the
        // reads end)...
        let mut got = String::new();
        read_a.read_to_string(&mut got).expect("read a");
        assert_eq!(got, "to-a\n");
        got.clear();
        read_b.read_to_string(&mut got).expect("read b");
        assert_eq!(got, "to-b\n");
        // ...and nothing else did: not the sources, the read ends or the duplicates' other
        // descriptors.
        let mut want = baseline.clone();
        want.extend([a, b]);
        want.sort();
        assert_eq!(seen, want, "baseline {baseline:?}");
    }

    #[tokio::test]
    async fn an_empty_set_up_passes_nothing() {
        let baseline = child_fds(None, "true").await;
        assert_eq!(child_fds(Some(ChildSetup::new()), "true").await, baseline);
    }

    /// `sleep 600`, killed if dropped.
    fn sleeper() -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// How `child` ended, waiting at most 10 s; `None` if it still runs.
    async fn ended(child: &mut tokio::process::Child) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait"))
    }

    /// The hazard the spawner thread exists for: the parent-death signal follows the thread that
    /// forked, so a child forked by a thread that then ends is killed while the process lives on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_parent_death_signal_follows_the_thread_that_forked() {
        use std::os::unix::process::ExitStatusExt;
        let runtime = tokio::runtime::Handle::current();
        let mut child = std::thread::spawn(move || {
            let _entered = runtime.enter();
            let mut cmd = sleeper();
            ChildSetup::new().install(&mut cmd, std::process::id());
            cmd.spawn().expect("spawn")
        })
        .join()
        .expect("the short-lived thread");
        let status = ended(&mut child)
            .await
            .expect("killed when its thread ended");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    /// The same spawn asked for by a thread that ends: forked by the spawner thread, the child
    /// lives on with the process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_supervised_child_outlives_the_thread_that_asked_for_it() {
        let runtime = tokio::runtime::Handle::current();
        let mut child = std::thread::spawn(move || {
            runtime
                .block_on(ChildSetup::new().spawn(sleeper()))
                .expect("spawn")
        })
        .join()
        .expect("the short-lived thread");
        // Also when the blocking pool's threads come and go.
        tokio::task::spawn_blocking(|| std::thread::sleep(std::time::Duration::from_millis(10)))
            .await
            .expect("blocking task");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the child died with the thread that asked for it"
        );
        child.kill().await.expect("kill");
    }

    /// A child whose parent is not the process it was made for (as when the supervisor died
    /// between the fork and the `prctl`) refuses to run.
    #[tokio::test]
    async fn a_child_whose_supervisor_is_gone_does_not_run() {
        let mut cmd = sleeper();
        // Not our pid: what `getppid` says after the supervisor died and the child was
        // re-parented.
        ChildSetup::new().install(&mut cmd, std::process::id().wrapping_add(1));
        let err = cmd.spawn().expect_err("the child refused to run");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }

    /// Set in the environment of this test binary when it runs as the supervisor of
    /// [`supervised_children_die_with_their_process`]: where it writes its child's pid.
    const SUPERVISOR_PIDFILE: &str = "COFFER_SYS_TEST_SUPERVISOR_PIDFILE";

    /// The start time (`/proc/PID/stat` field 22) of `pid` while it runs and is not a zombie.
    fn running_since(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        if matches!(fields.first(), Some(&"Z" | &"X")) {
            return None;
        }
        fields.get(19)?.parse().ok()
    }

    /// This binary, re-run as a supervisor, spawns a child and is killed with SIGKILL: the child
    /// dies with it.
    #[test]
    fn supervised_children_die_with_their_process() {
        let deadline = |secs| std::time::Instant::now() + std::time::Duration::from_secs(secs);
        if let Some(pidfile) = std::env::var_os(SUPERVISOR_PIDFILE) {
            // The supervisor: spawn, say who, and wait (bounded) to be killed.
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let child = runtime
                .block_on(ChildSetup::new().spawn(sleeper()))
                .expect("spawn");
            let pid = child.id().expect("pid");
            std::fs::write(&pidfile, pid.to_string()).expect("write the pid");
            std::thread::sleep(std::time::Duration::from_secs(60));
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let mut supervisor = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "sys::tests::supervised_children_die_with_their_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SUPERVISOR_PIDFILE, &pidfile)
            .stdout(Stdio::null())
            .spawn()
            .expect("re-run the test binary");
        let until = deadline(30);
        let pid: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.parse().ok())
            {
                break pid;
            }
            assert!(
                std::time::Instant::now() < until,
                "the supervisor never spawned"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let since = running_since(pid).expect("the child runs");
        supervisor.kill().expect("SIGKILL the supervisor");
        supervisor.wait().expect("reap the supervisor");
        let until = deadline(10);
        while running_since(pid) == Some(since) {
            assert!(
                std::time::Instant::now() < until,
                "child {pid} outlived its supervisor"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn tap_names_are_checked_before_any_system_call() {
        for bad in ["", "a/b", "0123456789abcdef", "nul\0"] {
            let err = open_tap(bad).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
