//! Every `unsafe` block of the runtime: the tap device ioctl. Each block says why it is sound;
//! everything else in the crate is safe code (`#![deny(unsafe_code)]` at the crate root, allowed
//! here only).
#![allow(unsafe_code)]

use std::ffi::c_short;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_checked_before_any_system_call() {
        for bad in ["", "a/b", "0123456789abcdef", "nul\0"] {
            let err = open_tap(bad).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
