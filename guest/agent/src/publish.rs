//! Published ports, the inbound direction of a tunnel: the agent accepts the host's connections on
//! a guest vsock port and carries each to a guest TCP port on [`PUBLISHED_ADDRESS`]. The host
//! (which publishes the port on one of its own addresses) thereby reaches a service in the guest
//! without the guest having a network interface.
//!
//! The host is the network. The agent connects to `127.0.0.2`, never to `127.0.0.1`: a service
//! that listens on the loopback address only (a sidecar's admin port, a debug endpoint) stays out
//! of the untrusted host's reach, and one that listens on all addresses is reachable exactly as it
//! would be from a network — which only the service's own authentication (mTLS with the workload
//! identity) makes safe. Connections per port are bounded; aborting a port's task closes its
//! listener and every connection it carries.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};

use crate::error::AgentError;

/// Most published ports one sandbox may ask for.
pub const MAX_PUBLISHED: usize = 8;

/// Most connections carried at once per published port; further ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// The guest address published connections reach: on the loopback interface, but not the
/// loopback address services bind when they mean "local only".
pub const PUBLISHED_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    /// Guest vsock port the host's connections arrive on.
    pub vsock_port: u32,
    /// Guest TCP port they are carried to, on [`PUBLISHED_ADDRESS`].
    pub guest_port: u16,
}

impl PublishedPort {
    /// Validates a published port from the host: a TCP port, a vsock port above the agent's own
    /// API port.
    pub fn parse(guest_port: u32, vsock_port: u32) -> Result<Self, AgentError> {
        let bad = |why: &str| {
            AgentError::InvalidArgument(format!(
                "published port vsock {vsock_port} → {guest_port}: {why}"
            ))
        };
        let guest_port = u16::try_from(guest_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("guest_port must be in 1..=65535"))?;
        if vsock_port <= coffer_agent_protocol::AGENT_VSOCK_PORT || vsock_port == u32::MAX {
            return Err(bad(
                "vsock_port must be above the agent's API port and below 2^32 - 1",
            ));
        }
        Ok(Self {
            vsock_port,
            guest_port,
        })
    }

    /// Where its connections go.
    pub fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(PUBLISHED_ADDRESS, self.guest_port)
    }
}

/// Binds every published port's vsock listener (all or none) and serves them until the handles
/// are aborted.
pub fn open(ports: &[PublishedPort]) -> Result<Vec<JoinHandle<()>>, AgentError> {
    let mut listeners = Vec::with_capacity(ports.len());
    for port in ports {
        let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port.vsock_port))
            .map_err(|e| {
                AgentError::Internal(format!("listening on vsock port {}: {e}", port.vsock_port))
            })?;
        listeners.push((listener, *port));
    }
    Ok(listeners
        .into_iter()
        .map(|(listener, port)| {
            tracing::info!(vsock_port = port.vsock_port, target = %port.target(), "published port open");
            tokio::spawn(forward(
                Vsock(listener),
                port.target(),
                MAX_CONNECTIONS,
            ))
        })
        .collect())
}

/// A listener the host's connections arrive on.
pub trait Accept: Send + 'static {
    /// One accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// The vsock listener of a published port.
#[derive(Debug)]
pub struct Vsock(pub VsockListener);

impl Accept for Vsock {
    type Stream = tokio_vsock::VsockStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        self.0.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Carries every connection `listener` accepts to `target`, at most `limit` at once (the next
/// is accepted only when one ended). Dropping (aborting) the future closes the listener and every
/// connection.
pub async fn forward<L: Accept>(listener: L, target: SocketAddrV4, limit: usize) {
    let slots = Arc::new(Semaphore::new(limit));
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set stays as small as the limit.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut inbound = match listener.accept().await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%target, %err, "published port accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.spawn(async move {
            let _slot = slot;
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    if let Err(err) =
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                    {
                        tracing::debug!(%target, %err, "published connection ended");
                    }
                }
                // Nothing listens there on all addresses: the host's connection is closed.
                Err(err) => tracing::debug!(%target, %err, "published port unreachable"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn real_ports_only_and_never_the_agent_port() {
        let p = PublishedPort::parse(8443, 30000).unwrap();
        assert_eq!(p.target().to_string(), "127.0.0.2:8443");
        for (guest, vsock) in [
            (0, 30000),
            (65536, 30000),
            (8443, 1024),
            (8443, 0),
            (8443, 80),
            (8443, u32::MAX),
        ] {
            assert!(
                PublishedPort::parse(guest, vsock).is_err(),
                "vsock {vsock} → {guest} accepted"
            );
        }
    }

    /// A "host" listener standing in for the vsock one, forwarding to `port` on 127.0.0.2.
    async fn published(port: u16, limit: usize) -> (SocketAddrV4, JoinHandle<()>) {
        let host = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = host.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        let target = SocketAddrV4::new(PUBLISHED_ADDRESS, port);
        (addr, tokio::spawn(forward(host, target, limit)))
    }

    async fn echo_once(listener: &TcpListener) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    }

    async fn round_trip(addr: SocketAddrV4) -> std::io::Result<[u8; 4]> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn reaches_services_on_all_addresses_only() {
        // Listening on all addresses: reachable, as from a network.
        let open = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let (addr, task) = published(open.local_addr().unwrap().port(), 4).await;
        let (back, ()) = tokio::join!(round_trip(addr), echo_once(&open));
        assert_eq!(&back.unwrap(), b"ping");
        task.abort();

        // Listening on 127.0.0.1 only: the host's connection is closed, nothing reaches it.
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, task) = published(local.local_addr().unwrap().port(), 4).await;
        let err = round_trip(addr).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{err:?}"
        );
        let reached = tokio::time::timeout(Duration::from_millis(200), local.accept()).await;
        assert!(reached.is_err(), "a loopback-only service was reached");
        task.abort();
    }

    #[tokio::test]
    async fn connections_are_bounded_and_closed_with_the_port() {
        let service = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let (addr, task) = published(service.local_addr().unwrap().port(), 1).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"1").await.unwrap();
        let (mut first_inside, _) = service.accept().await.unwrap();
        // The second waits while the first is carried.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"2").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), service.accept()).await;
        assert!(waited.is_err(), "the limit of one connection was exceeded");
        drop(first);
        let mut byte = [0u8; 1];
        first_inside.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"1");
        drop(first_inside);
        let (mut second_inside, _) = service.accept().await.unwrap();
        second_inside.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"2");
        // Closing the port closes the connection it carries, on both sides.
        task.abort();
        let _ = task.await;
        let mut rest = Vec::new();
        assert_eq!(second_inside.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(matches!(second.read(&mut byte).await, Ok(0) | Err(_)));
    }
}
