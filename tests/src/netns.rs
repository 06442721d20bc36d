//! Network namespaces a suite makes for itself: the "node" a containerd and its CNI bridge live in,
//! or a pod namespace with a veth to such a node, so that every packet a test sends stays between
//! namespaces the test created (never on the machine's own interfaces). Addresses come from the
//! benchmarking range 198.18.0.0/15 (RFC 2544), which no real network routes.
//!
//! Namespaces are created with `ip netns add` (bind-mounted at `/run/netns/<name>`) and deleted
//! when their [`NetNs`] drops; their names carry the test process id, so suites running side by
//! side never share one.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::require_tool;

/// A network namespace owned by the test.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `<prefix>-<pid>` (at most 15 characters of prefix) with its loopback up.
    pub fn create(prefix: &str) -> anyhow::Result<Self> {
        require_tool("ip");
        let name = format!("{prefix}-{}", std::process::id());
        // A namespace of the same name left by a crashed earlier run of this pid is stale.
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (`ip netns` and `ip -n` know it by it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file a process can join (`setns`) or a runtime can be given.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace (through `nsenter --net`, which joins
    /// only the network namespace: mounts and everything else stay the caller's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread of this process that joined the namespace (sockets `f` opens live
    /// there); the rest of the process stays where it is.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("joining {}", path.display()))?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread in {} panicked", self.name))?
        })
    }

    /// The inode of the namespace, by which processes' `/proc/<pid>/ns/net` and open namespace
    /// files name it.
    pub fn inode(&self) -> anyhow::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(std::fs::metadata(self.path())?.ino())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// A pod-like namespace wired to a node-like one: `eth0` in `pod` (address `pod_ip/24`, default
/// route via `node_ip`) paired with `peer` in `node` (address `node_ip/24`).
pub fn veth_pair(
    node: &NetNs,
    peer: &str,
    node_ip: Ipv4Addr,
    pod: &NetNs,
    pod_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    node.ip(&[
        "link",
        "add",
        peer,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    node.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", peer])?;
    node.ip(&["link", "set", peer, "up"])?;
    pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "default", "via", &node_ip.to_string()])?;
    Ok(())
}

/// The processes (pid, command line) holding namespace `inode` — as their own namespace or
/// through an open file: after a pod is gone, nothing may still hold its network namespace.
pub fn holders(inode: u64) -> Vec<(u32, String)> {
    let needle = format!("net:[{inode}]");
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let own =
            std::fs::read_link(dir.join("ns/net")).is_ok_and(|l| l.to_string_lossy() == needle);
        let by_fd = std::fs::read_dir(dir.join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle)
            })
        });
        if own || by_fd {
            let cmd = std::fs::read(dir.join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            found.push((pid, cmd));
        }
    }
    found
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("non-UTF-8 output")?;
    ensure!(text.len() < 1 << 20, "{program} printed more than 1 MiB");
    Ok(text)
}

/// A busybox shell command printing the body of `GET http://addr/` (with `nc`: busybox-static's
/// `wget` crashes on the name-service lookups a static glibc cannot do).
pub fn http_get_script(addr: std::net::SocketAddr) -> String {
    format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} {} | sed '1,/^\\r$/d'",
        addr.ip(),
        addr.port()
    )
}

/// Most connections a [`Forwarder`] carries at once; more wait in its listen backlog.
const FORWARDER_CONNECTIONS: usize = 64;

type OpenPairs =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, [std::net::TcpStream; 2]>>>;

/// A TCP forwarder of the test: it listens on `listen` inside a namespace the test made (the
/// "node" of a pod network) and carries each connection to `target` in the test process's own
/// namespace (a registry or key broker on loopback), so a guest reaches them over its pod network
/// as it would reach a service of the cluster. At most [`FORWARDER_CONNECTIONS`] at once; every
/// connection is shut down when it drops.
#[derive(Debug)]
pub struct Forwarder {
    /// The address it listens on, inside the namespace.
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: OpenPairs,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `listen` (port 0: any) in `ns` and forwards to `target`.
    pub fn start(
        ns: &NetNs,
        listen: std::net::SocketAddr,
        target: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
        use std::sync::{Arc, Mutex};
        // The socket belongs to the namespace of the thread that made it, whichever thread uses it.
        let listener = ns.run(|| std::net::TcpListener::bind(listen))??;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let open: OpenPairs = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let (stop_flag, pairs) = (stop.clone(), open.clone());
        let thread = std::thread::spawn(move || {
            let mut next_id = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let busy = pairs.lock().map(|p| p.len()).unwrap_or(0);
                let accepted = if busy < FORWARDER_CONNECTIONS {
                    listener.accept().ok()
                } else {
                    None
                };
                let Some((inbound, _)) = accepted else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) = std::net::TcpStream::connect_timeout(
                    &target,
                    std::time::Duration::from_secs(5),
                ) else {
                    continue;
                };
                let (Ok(in2), Ok(out2), Ok(in3), Ok(out3)) = (
                    inbound.try_clone(),
                    outbound.try_clone(),
                    inbound.try_clone(),
                    outbound.try_clone(),
                ) else {
                    continue;
                };
                next_id += 1;
                let id = next_id;
                if let Ok(mut map) = pairs.lock() {
                    map.insert(id, [in3, out3]);
                }
                let finished = Arc::new(AtomicU8::new(0));
                for (mut from, mut to) in [(inbound, out2), (outbound, in2)] {
                    let (pairs, finished) = (pairs.clone(), finished.clone());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                        // The second direction to end forgets the connection.
                        if finished.fetch_add(1, Ordering::SeqCst) == 1
                            && let Ok(mut map) = pairs.lock()
                        {
                            map.remove(&id);
                        }
                    });
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            open,
            thread: Some(thread),
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Ok(map) = self.open.lock() {
            for stream in map.values().flatten() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
