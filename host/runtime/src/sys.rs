//! Every `unsafe` block of the runtime: the tap device ioctl and the set-up a VMM child runs
//! between `fork` and `exec`. Each block says why it is sound; everything else in the crate is
//! safe code (`#![deny(unsafe_code)]` at the crate root, allowed here only).
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

    /// Installs the set-up on `cmd`; `self` must outlive the spawn. A set-up with nothing to do
    /// installs nothing, so the spawn stays as it would be without it.
    pub fn install(&self, cmd: &mut tokio::process::Command) {
        let numbers = self.numbers();
        if numbers.is_empty() {
            return;
        }
        let child = move || -> io::Result<()> {
            for &fd in &numbers {
                clear_cloexec(fd)?;
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec. It only calls fcntl(2),
        // which is async-signal-safe, on descriptor numbers copied into it before the fork; it
        // allocates nothing, takes no lock and touches no state shared with the parent.
        unsafe {
            cmd.pre_exec(child);
        }
    }
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

    /// The descriptors a `sh -c` child holds after running `script` with `setup` installed (if
    /// any): what `ls /proc/$$/fd` lists for the shell itself.
    async fn child_fds(setup: Option<&ChildSetup>, script: &str) -> Vec<RawFd> {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("{script}; ls /proc/$$/fd"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(setup) = setup {
            setup.install(&mut cmd);
        }
        let out = cmd.output().await.expect("spawn sh");
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
            Some(&setup),
            &format!("echo to-a >/proc/self/fd/{a}; echo to-b >/proc/self/fd/{b}"),
        )
        .await;
        drop(setup);
        drop((write_a, write_b));
        // The pipes reached the child at `a` and `b`...
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
        let setup = ChildSetup::new();
        assert_eq!(child_fds(Some(&setup), "true").await, baseline);
    }

    #[test]
    fn tap_names_are_checked_before_any_system_call() {
        for bad in ["", "a/b", "0123456789abcdef", "nul\0"] {
            let err = open_tap(bad).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
