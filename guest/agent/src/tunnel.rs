//! Registry tunnels: the agent listens on a guest loopback address and carries each connection to
//! a host vsock port, where the runtime forwards it to one registry endpoint. Guest pull then
//! reaches a registry the host chose without the guest having a network interface, and the host
//! gains nothing it did not have: everything pulled through a tunnel is verified in the guest
//! (digests, signatures, MACs), exactly as over any untrusted network.

use std::net::SocketAddrV4;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_vsock::{VMADDR_CID_HOST, VsockAddr, VsockStream};

use crate::error::AgentError;

/// Most tunnels one sandbox may ask for.
pub const MAX_TUNNELS: usize = 8;

/// One tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// Guest loopback address to listen on.
    pub listen: SocketAddrV4,
    /// Host vsock port to connect to.
    pub host_port: u32,
}

impl Tunnel {
    /// Validates a tunnel from the host: a loopback address with a port, a usable vsock port.
    pub fn parse(listen: &str, host_port: u32) -> Result<Self, AgentError> {
        let bad = |why: &str| {
            AgentError::InvalidArgument(format!("registry tunnel {listen:?} → {host_port}: {why}"))
        };
        let addr: SocketAddrV4 = listen
            .parse()
            .map_err(|_| bad("listen must be IPv4 address:port"))?;
        if !addr.ip().is_loopback() || addr.port() == 0 {
            return Err(bad("listen must be a loopback address with a port"));
        }
        if host_port == 0 || host_port == u32::MAX {
            return Err(bad("host_port is not a usable vsock port"));
        }
        Ok(Self {
            listen: addr,
            host_port,
        })
    }
}

/// Binds every tunnel's listener (all or none) and serves them until the handles are aborted.
pub async fn open(tunnels: &[Tunnel]) -> Result<Vec<JoinHandle<()>>, AgentError> {
    let mut listeners = Vec::with_capacity(tunnels.len());
    for tunnel in tunnels {
        let listener = TcpListener::bind(tunnel.listen)
            .await
            .map_err(|e| AgentError::Internal(format!("listening on {}: {e}", tunnel.listen)))?;
        listeners.push((listener, *tunnel));
    }
    Ok(listeners
        .into_iter()
        .map(|(listener, tunnel)| tokio::spawn(serve(listener, tunnel)))
        .collect())
}

async fn serve(listener: TcpListener, tunnel: Tunnel) {
    tracing::info!(listen = %tunnel.listen, host_port = tunnel.host_port, "registry tunnel open");
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(listen = %tunnel.listen, %err, "tunnel accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let outbound =
                VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, tunnel.host_port)).await;
            match outbound {
                Ok(mut outbound) => {
                    if let Err(err) =
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                    {
                        tracing::debug!(listen = %tunnel.listen, %err, "tunnel connection ended");
                    }
                }
                Err(err) => {
                    tracing::warn!(host_port = tunnel.host_port, %err, "tunnel: host port unreachable");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listeners_and_real_ports() {
        assert!(Tunnel::parse("127.0.0.1:5000", 20000).is_ok());
        for (listen, port) in [
            ("0.0.0.0:5000", 20000),
            ("10.0.0.1:5000", 20000),
            ("127.0.0.1:0", 20000),
            ("localhost:5000", 20000),
            ("127.0.0.1:5000", 0),
        ] {
            assert!(
                Tunnel::parse(listen, port).is_err(),
                "{listen} → {port} accepted"
            );
        }
    }

    #[tokio::test]
    async fn listeners_bind_all_or_none() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let at = |port| Tunnel {
            listen: SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port),
            host_port: 1,
        };
        // The second listener cannot bind: the call fails and the first is closed again.
        let err = open(&[at(0), at(port)]).await.unwrap_err();
        assert!(
            matches!(&err, AgentError::Internal(detail) if detail.contains(&port.to_string())),
            "{err:?}"
        );
        let served = open(&[at(0)]).await.unwrap();
        assert_eq!(served.len(), 1);
        served.iter().for_each(JoinHandle::abort);
    }
}
