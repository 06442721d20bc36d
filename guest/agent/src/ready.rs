//! The agent's start-up announcement. Once the agent listens, it connects to host vsock port
//! [`HOST_READY_VSOCK_PORT`], writes [`READY_ANNOUNCEMENT`] and closes the connection. The host
//! runtime opens no connection into the guest before it hears this (`PROTOCOL.md`, "Start-up").
//!
//! Nothing is read from the host here and nothing in the guest depends on the outcome: the host
//! learns only when to connect, which it could also find out by trying.

use std::future::Future;
use std::time::Duration;

use coffer_agent_protocol::{HOST_READY_VSOCK_PORT, READY_ANNOUNCEMENT};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_vsock::{VMADDR_CID_HOST, VsockAddr, VsockStream};

/// How long the agent keeps trying: the host binds its listener as soon as the VMM runs, so a
/// refusal beyond this means nobody listens (e.g. a runtime that does not wait for it).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// First pause between attempts; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(50);
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// Announces readiness over vsock to the host (CID 2); returns whether the host took it.
pub async fn announce() -> bool {
    announce_with(
        || VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, HOST_READY_VSOCK_PORT)),
        GIVE_UP_AFTER,
    )
    .await
}

/// Connects with `connect` until one connection takes the whole announcement, or `give_up_after`
/// has passed.
pub async fn announce_with<S, F, Fut>(mut connect: F, give_up_after: Duration) -> bool
where
    S: AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let deadline = Instant::now() + give_up_after;
    let mut interval = FIRST_INTERVAL;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let sent = async {
            let mut stream = connect().await?;
            stream.write_all(READY_ANNOUNCEMENT).await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(MAX_INTERVAL, sent).await {
            Ok(Ok(())) => {
                tracing::info!(
                    port = HOST_READY_VSOCK_PORT,
                    attempts,
                    "announced to the host"
                );
                return true;
            }
            Ok(Err(err)) => {
                tracing::debug!(attempts, error = %err, "announcing to the host");
            }
            Err(_) => tracing::debug!(attempts, "announcing to the host: timed out"),
        }
        if Instant::now() + interval > deadline {
            tracing::warn!(
                port = HOST_READY_VSOCK_PORT,
                attempts,
                "no host listener took the start-up announcement; serving anyway"
            );
            return false;
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncReadExt;
    use tokio::net::{UnixListener, UnixStream};

    #[tokio::test]
    async fn retries_until_the_host_listens_then_sends_the_announcement_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock_1023");
        let tries = Arc::new(AtomicU32::new(0));
        let (p, t) = (path.clone(), tries.clone());
        let agent = tokio::spawn(announce_with(
            move || {
                t.fetch_add(1, Ordering::SeqCst);
                UnixStream::connect(p.clone())
            },
            Duration::from_secs(10),
        ));
        // Nobody listens for the first attempts, as before the runtime binds its socket.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(tries.load(Ordering::SeqCst) >= 2);
        let listener = UnixListener::bind(&path).unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, READY_ANNOUNCEMENT);
        assert!(agent.await.unwrap());
        let after = tries.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            tries.load(Ordering::SeqCst),
            after,
            "no attempt after success"
        );
    }

    #[tokio::test]
    async fn gives_up_when_nobody_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        let started = Instant::now();
        let took = announce_with(
            move || UnixStream::connect(path.clone()),
            Duration::from_millis(400),
        )
        .await;
        assert!(!took);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
