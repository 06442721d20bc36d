//! Registry tunnels, host side: the guest agent listens on a loopback address and carries each
//! connection over vsock to a host port; here each such port is served on the hybrid-vsock unix
//! socket `<vm.vsock>_<port>` and forwarded to one registry endpoint the operator chose. The guest
//! gets exactly these endpoints and nothing else of the host's network; what it pulls through
//! them it verifies itself.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinHandle;

use crate::vsock::host_socket;

/// First host vsock port given to tunnels; tunnel `i` uses `FIRST_HOST_PORT + i`.
pub const FIRST_HOST_PORT: u32 = 20000;

/// One tunnel: what the guest listens on, and the endpoint its connections reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTunnel {
    /// Guest loopback address (`127.0.0.1:<port>`).
    pub guest_listen: SocketAddrV4,
    /// `host:port` the runtime connects to for each guest connection.
    pub target: String,
}

impl RegistryTunnel {
    /// The usual case: the guest sees the registry at the same loopback address as the host,
    /// so image references need no rewriting (`127.0.0.1:5000/app@sha256:…` works on both).
    pub fn same_address(endpoint: SocketAddrV4) -> Self {
        Self {
            guest_listen: endpoint,
            target: endpoint.to_string(),
        }
    }
}

/// Running tunnel (or published port) servers; dropping this closes them.
#[derive(Debug, Default)]
pub struct Servers(Vec<JoinHandle<()>>);

impl FromIterator<JoinHandle<()>> for Servers {
    fn from_iter<I: IntoIterator<Item = JoinHandle<()>>>(servers: I) -> Self {
        Self(servers.into_iter().collect())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for server in &self.0 {
            server.abort();
        }
    }
}

/// What the agent is told of one tunnel: its guest listen address and host vsock port.
pub type Announced = (String, u32);

/// A tunnel socket that could not be served.
pub type ServeError = (PathBuf, std::io::Error);

/// Serves every tunnel of a VM (ports from [`FIRST_HOST_PORT`]); returns the servers and what
/// to tell the agent. All or nothing.
pub fn serve_all(
    vsock_socket: &Path,
    tunnels: &[RegistryTunnel],
) -> Result<(Servers, Vec<Announced>), ServeError> {
    let mut servers = Servers::default();
    let mut announced = Vec::with_capacity(tunnels.len());
    for (i, t) in tunnels.iter().enumerate() {
        let port = FIRST_HOST_PORT + i as u32;
        let server = serve(vsock_socket, port, t.target.clone())
            .map_err(|e| (host_socket(vsock_socket, port), e))?;
        servers.0.push(server);
        announced.push((t.guest_listen.to_string(), port));
    }
    Ok((servers, announced))
}

/// Serves `port` of the VM whose hybrid-vsock socket is `vsock_socket`, forwarding to `target`.
pub fn serve(vsock_socket: &Path, port: u32, target: String) -> std::io::Result<JoinHandle<()>> {
    let path = host_socket(vsock_socket, port);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guest = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, port, "tunnel accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let target = target.clone();
            tokio::spawn(async move {
                match TcpStream::connect(&target).await {
                    Ok(mut registry) => {
                        if let Err(err) =
                            tokio::io::copy_bidirectional(&mut guest, &mut registry).await
                        {
                            tracing::debug!(%err, %target, "tunnel connection ended");
                        }
                    }
                    Err(err) => tracing::warn!(%err, %target, "tunnel target unreachable"),
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn guest_connections_reach_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vm.vsock");
        let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = registry.local_addr().unwrap().to_string();
        let server = serve(&vsock, FIRST_HOST_PORT, target).unwrap();
        assert_eq!(
            host_socket(&vsock, 20000),
            dir.path().join("vm.vsock_20000")
        );
        let echo = tokio::spawn(async move {
            let (mut s, _) = registry.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut guest = tokio::net::UnixStream::connect(host_socket(&vsock, FIRST_HOST_PORT))
            .await
            .unwrap();
        guest.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        guest.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        echo.await.unwrap();
        server.abort();
    }
}
