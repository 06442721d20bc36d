//! `coffer-escape-probe`: a container's attempt at one thing its spec forbids, for the `vm`
//! suite's enforcement cases. A static binary (like every binary here) that runs in the suite's
//! busybox container; each command makes one system call and prints one line, `<command>: ok` or
//! `<command>: <ERRNO>` (the errno's name, e.g. `EPERM`), so a case can ask for the exact errno.
//!
//! Commands: `open PATH r|w`, `mknod PATH c|b MAJOR MINOR`, `mkdir PATH`, `chown PATH UID GID`,
//! `read PATH` (prints the byte count), `write PATH BYTES` (run it with SIGXFSZ ignored, `trap ''
//! XFSZ` in the shell that execs it, and a file-size rlimit shows as `EFBIG` after the bytes the
//! limit let through), `euid` (the effective user id).

use std::io::{Read, Write};

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag};

fn outcome<T>(what: &str, result: Result<T, Errno>) {
    match result {
        Ok(_) => println!("{what}: ok"),
        Err(errno) => println!("{what}: {errno:?}"),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let number = |i: usize| arg(i).parse::<u64>().unwrap_or_default();
    match arg(0) {
        "open" => {
            let mut options = std::fs::OpenOptions::new();
            match arg(2) {
                "w" => options.write(true),
                _ => options.read(true),
            };
            outcome("open", options.open(arg(1)).map_err(|e| io_errno(&e)));
        }
        "mknod" => {
            let kind = if arg(2) == "b" {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFCHR
            };
            let dev = nix::sys::stat::makedev(number(3), number(4));
            outcome(
                "mknod",
                nix::sys::stat::mknod(arg(1), kind, Mode::from_bits_truncate(0o666), dev),
            );
        }
        "mkdir" => outcome(
            "mkdir",
            nix::unistd::mkdir(arg(1), Mode::from_bits_truncate(0o755)),
        ),
        "chown" => outcome(
            "chown",
            nix::unistd::chown(
                arg(1),
                Some(nix::unistd::Uid::from_raw(
                    u32::try_from(number(2)).unwrap_or_default(),
                )),
                Some(nix::unistd::Gid::from_raw(
                    u32::try_from(number(3)).unwrap_or_default(),
                )),
            ),
        ),
        "read" => match std::fs::File::open(arg(1)) {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                match file.read_to_end(&mut bytes) {
                    Ok(n) => println!("read: {n} bytes"),
                    Err(e) => println!("read: {:?}", io_errno(&e)),
                }
            }
            Err(e) => println!("read: {:?}", io_errno(&e)),
        },
        "write" => {
            let total = usize::try_from(number(2)).unwrap_or_default();
            let mut file = match std::fs::File::create(arg(1)) {
                Ok(file) => file,
                Err(e) => {
                    println!("write: {:?}", io_errno(&e));
                    return;
                }
            };
            let chunk = vec![0u8; 512];
            let mut written = 0;
            while written < total {
                match file.write(&chunk[..chunk.len().min(total - written)]) {
                    Ok(n) => written += n,
                    Err(e) => {
                        println!("write: {:?} after {written} bytes", io_errno(&e));
                        return;
                    }
                }
            }
            println!("write: ok, {written} bytes");
        }
        "euid" => println!("euid: {}", nix::unistd::geteuid()),
        other => {
            eprintln!("coffer-escape-probe: unknown command {other:?}");
            std::process::exit(2);
        }
    }
}
