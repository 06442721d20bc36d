//! The host's connection to `coffer-agent`: gRPC over hybrid vsock, opened once the agent has
//! announced itself and retried until it answers or a deadline passes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use coffer_agent_protocol::v1 as pb;
use coffer_agent_protocol::{AGENT_VSOCK_PORT, HOST_READY_VSOCK_PORT};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::vsock::ReadyListener;

/// The generated client over a tonic channel.
pub type AgentClient = pb::agent_client::AgentClient<Channel>;

/// Largest message exchanged with the agent.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Interval between connection attempts while the guest boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The deadline passed; the last error says why.
    #[error("agent did not answer within {waited:?} (last error: {last})")]
    Timeout {
        /// How long we tried.
        waited: Duration,
        /// The last failure.
        last: String,
    },
}

fn endpoint() -> Endpoint {
    Endpoint::from_static("http://coffer-agent")
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
}

/// Builds a client whose connections go through the hybrid-vsock socket `uds`.
pub async fn connect_once(uds: PathBuf) -> Result<AgentClient, tonic::transport::Error> {
    let channel = endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let uds = uds.clone();
            async move {
                crate::vsock::connect(&uds, AGENT_VSOCK_PORT)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await?;
    Ok(pb::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// An agent that answered.
#[derive(Debug)]
pub struct Connected {
    /// The connection.
    pub client: AgentClient,
    /// Its first answer.
    pub details: pb::GuestDetails,
    /// When its start-up announcement arrived.
    pub announced: Instant,
}

/// Waits for the agent's start-up announcement on `ready`, then connects to it, retrying every
/// 50 ms until it answers `GetGuestDetails` or `deadline`. Nothing connects into the guest before
/// the announcement (see [`crate::vsock`] for why).
pub async fn connect(
    uds: PathBuf,
    ready: ReadyListener,
    deadline: Instant,
) -> Result<Connected, ConnectError> {
    let started = Instant::now();
    if tokio::time::timeout_at(deadline.into(), ready.announced())
        .await
        .is_err()
    {
        return Err(ConnectError::Timeout {
            waited: started.elapsed(),
            last: format!(
                "no start-up announcement from the agent on host vsock port {HOST_READY_VSOCK_PORT}"
            ),
        });
    }
    drop(ready);
    let announced = Instant::now();
    let mut last: String;
    loop {
        match connect_once(uds.clone()).await {
            Ok(mut client) => match client
                .get_guest_details(pb::GetGuestDetailsRequest {})
                .await
            {
                Ok(details) => {
                    return Ok(Connected {
                        client,
                        details: details.into_inner(),
                        announced,
                    });
                }
                Err(status) => last = format!("GetGuestDetails: {}", status.message()),
            },
            Err(err) => {
                last = std::error::Error::source(&err)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| err.to_string());
            }
        }
        if Instant::now() + RETRY_INTERVAL > deadline {
            return Err(ConnectError::Timeout {
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_agent_protocol::READY_ANNOUNCEMENT;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    /// A stand-in for the VM's hybrid-vsock socket that counts connections and refuses each.
    fn counting_backend(path: &std::path::Path) -> Arc<AtomicUsize> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        count
    }

    #[tokio::test]
    async fn nothing_connects_into_the_guest_before_the_announcement() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vm.vsock");
        let connections = counting_backend(&vsock);
        let ready = ReadyListener::bind(&vsock).unwrap();
        let announce_at = ready.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_millis(1500);
        let client = tokio::spawn(connect(vsock.clone(), ready, deadline));

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            connections.load(Ordering::SeqCst),
            0,
            "connected before the guest spoke"
        );

        let mut guest = tokio::net::UnixStream::connect(&announce_at).await.unwrap();
        guest.write_all(READY_ANNOUNCEMENT).await.unwrap();
        drop(guest);
        let Err(ConnectError::Timeout { last, .. }) = client.await.unwrap() else {
            panic!("the stand-in refuses every connection");
        };
        assert!(
            connections.load(Ordering::SeqCst) > 0,
            "never connected after it"
        );
        assert!(!last.contains("announcement"), "{last}");
    }

    #[tokio::test]
    async fn a_silent_guest_times_out_naming_the_announcement() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vm.vsock");
        let connections = counting_backend(&vsock);
        let ready = ReadyListener::bind(&vsock).unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        let Err(ConnectError::Timeout { last, .. }) = connect(vsock, ready, deadline).await else {
            panic!("nothing answers");
        };
        assert!(last.contains("no start-up announcement"), "{last}");
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }
}
