//! Published ports, host side: the runtime listens on a host address and carries each connection
//! over hybrid vsock into the guest (`CONNECT <vsock port>\n` on the VM's socket), where the agent
//! forwards it to a guest TCP port on `127.0.0.2` — never `127.0.0.1`, so services the guest binds
//! to loopback only stay unreachable. The host is the network: what it reaches is what a network
//! interface would, and only the service's own authentication (mTLS) makes that safe.
//!
//! Connections per port are bounded; dropping the [`Servers`] closes the listeners and every
//! connection they carry.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::tunnel::Servers;

/// Most published ports one sandbox may have (the agent refuses more).
pub const MAX_PORTS: usize = 8;

/// First guest vsock port given to published ports; port `i` uses `FIRST_VSOCK_PORT + i`.
pub const FIRST_VSOCK_PORT: u32 = 30000;

/// Most connections carried at once per published port (the agent's limit too); further ones
/// wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// One published port, `ADDR:HOSTPORT:GUESTPORT`: the runtime listens on `host`, the guest's
/// service listens on `guest_port` (on all addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublishedPort {
    /// Host address the runtime listens on.
    pub host: SocketAddrV4,
    /// Guest TCP port the connections reach.
    pub guest_port: u16,
}

/// A published port that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("published port {spec:?}: {reason} (expected IPV4:HOSTPORT:GUESTPORT, ports 1..=65535)")]
pub struct ParsePublishedPortError {
    spec: String,
    reason: &'static str,
}

impl FromStr for PublishedPort {
    type Err = ParsePublishedPortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePublishedPortError {
            spec: s.to_owned(),
            reason,
        };
        let mut parts = s.split(':');
        let (Some(ip), Some(host_port), Some(guest_port), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("not three fields"));
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| err("not an IPv4 address"))?;
        let port = |p: &str, what| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(err(what)),
            Ok(p) => Ok(p),
        };
        Ok(Self {
            host: SocketAddrV4::new(ip, port(host_port, "bad host port")?),
            guest_port: port(guest_port, "bad guest port")?,
        })
    }
}

impl TryFrom<String> for PublishedPort {
    type Error = ParsePublishedPortError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PublishedPort> for String {
    fn from(p: PublishedPort) -> Self {
        p.to_string()
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.guest_port)
    }
}

/// A host address that could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("publishing {address}: {source}")]
pub struct BindError {
    /// The address.
    pub address: SocketAddrV4,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Host listeners bound ahead of the VM's launch, so a taken address fails before anything starts.
#[derive(Debug)]
pub struct Bound(Vec<(TcpListener, PublishedPort)>);

/// Binds every port's host address (all or none). Needs a tokio runtime.
pub fn bind_all(ports: &[PublishedPort]) -> Result<Bound, BindError> {
    let mut bound = Vec::with_capacity(ports.len());
    for port in ports {
        let listener = std::net::TcpListener::bind(port.host)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .map_err(|source| BindError {
                address: port.host,
                source,
            })?;
        bound.push((listener, *port));
    }
    Ok(Bound(bound))
}

/// What the agent is told of one port: its guest TCP port and guest vsock port.
pub type Announced = (u16, u32);

impl Bound {
    /// The vsock port each published port is carried on (from [`FIRST_VSOCK_PORT`]), to announce
    /// in `CreateSandbox`.
    pub fn announced(&self) -> Vec<Announced> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (p.guest_port, FIRST_VSOCK_PORT + i as u32))
            .collect()
    }

    /// Starts carrying connections into the VM whose hybrid-vsock socket is `vsock_socket`; call
    /// once the agent listens (after `CreateSandbox`).
    /// Dropping the result closes the listeners and every connection they carry.
    pub fn serve(self, vsock_socket: &Path) -> Servers {
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, (listener, port))| {
                let vsock_port = FIRST_VSOCK_PORT + i as u32;
                tracing::info!(published = %port, vsock_port, "published port open");
                tokio::spawn(forward(
                    listener,
                    vsock_socket.to_path_buf(),
                    vsock_port,
                    MAX_CONNECTIONS,
                ))
            })
            .collect()
    }
}

/// Carries each connection `listener` accepts to guest vsock `vsock_port`, at most `limit` at
/// once (the next is accepted only when one ended). Aborting it closes everything.
async fn forward(listener: TcpListener, vsock_socket: PathBuf, vsock_port: u32, limit: usize) {
    let slots = Arc::new(Semaphore::new(limit));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (mut client, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(%err, vsock_port, "published port accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let vsock_socket = vsock_socket.clone();
        connections.spawn(async move {
            let _slot = slot;
            match crate::vsock::connect(&vsock_socket, vsock_port).await {
                Ok(mut guest) => {
                    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut guest).await {
                        tracing::debug!(%err, %peer, vsock_port, "published connection ended");
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, %peer, vsock_port, "guest refused a published connection")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpStream, UnixListener};

    use super::*;

    #[test]
    fn parses_and_prints_addr_host_port_guest_port() {
        let p: PublishedPort = "127.0.0.1:18443:8443".parse().unwrap();
        assert_eq!(p.host, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18443));
        assert_eq!(p.guest_port, 8443);
        assert_eq!(p.to_string(), "127.0.0.1:18443:8443");
        for bad in [
            "18443:8443",
            "localhost:18443:8443",
            "127.0.0.1:0:8443",
            "127.0.0.1:18443:0",
            "127.0.0.1:18443:70000",
            "127.0.0.1:18443:8443:1",
            "[::1]:18443:8443",
        ] {
            assert!(bad.parse::<PublishedPort>().is_err(), "{bad} accepted");
        }
    }

    fn free_address() -> SocketAddrV4 {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        match free.local_addr().unwrap() {
            std::net::SocketAddr::V4(addr) => addr,
            std::net::SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        }
    }

    /// A stand-in for the VM's hybrid-vsock socket: accepts `CONNECT 30000` and hands each
    /// connection's guest end to the test.
    async fn fake_guest(
        path: &Path,
    ) -> tokio::sync::mpsc::UnboundedReceiver<tokio::net::UnixStream> {
        let listener = UnixListener::bind(path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let mut s = tokio::io::BufReader::new(s);
                let mut line = String::new();
                s.read_line(&mut line).await.unwrap();
                assert_eq!(line, format!("CONNECT {FIRST_VSOCK_PORT}\n"));
                s.get_mut().write_all(b"OK 1073741824\n").await.unwrap();
                if tx.send(s.into_inner()).is_err() {
                    return;
                }
            }
        });
        rx
    }

    #[tokio::test]
    async fn host_connections_reach_the_guest_bounded_and_closed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vm.vsock");
        let mut guest = fake_guest(&vsock).await;
        let host = free_address();
        let port = PublishedPort {
            host,
            guest_port: 8443,
        };
        let bound = bind_all(&[port]).unwrap();
        assert_eq!(bound.announced(), [(8443, FIRST_VSOCK_PORT)]);
        // The address is taken now: binding it again fails, naming it.
        let err = bind_all(&[port]).unwrap_err();
        assert_eq!(err.address, host);
        let Bound(mut listeners) = bound;
        let (listener, _) = listeners.remove(0);
        let server = tokio::spawn(forward(listener, vsock.clone(), FIRST_VSOCK_PORT, 1));

        let mut first = TcpStream::connect(host).await.unwrap();
        first.write_all(b"ping").await.unwrap();
        let mut inside = guest.recv().await.unwrap();
        let mut buf = [0u8; 4];
        inside.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        inside.write_all(b"pong").await.unwrap();
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // A second connection waits while the first is carried (limit 1).
        let mut second = TcpStream::connect(host).await.unwrap();
        second.write_all(b"2").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), guest.recv()).await;
        assert!(waited.is_err(), "the limit of one connection was exceeded");
        drop(first);
        drop(inside);
        let mut inside = guest.recv().await.unwrap();
        let mut byte = [0u8; 1];
        inside.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"2");

        // Teardown closes the listener and the connection it carries.
        server.abort();
        let _ = server.await;
        let mut rest = Vec::new();
        assert_eq!(inside.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(matches!(second.read(&mut byte).await, Ok(0) | Err(_)));
        assert!(TcpStream::connect(host).await.is_err(), "still listening");
    }

    #[tokio::test]
    async fn servers_drop_closes_the_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let host = free_address();
        let bound = bind_all(&[PublishedPort {
            host,
            guest_port: 80,
        }])
        .unwrap();
        let servers = bound.serve(&dir.path().join("vm.vsock"));
        // Nothing answers on the vsock socket: the connection is accepted, then closed.
        let mut c = TcpStream::connect(host).await.unwrap();
        let mut byte = [0u8; 1];
        assert!(matches!(c.read(&mut byte).await, Ok(0) | Err(_)));
        drop(servers);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(host).await.is_err(), "still listening");
    }
}
