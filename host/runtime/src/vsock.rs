//! Hybrid vsock (the Firecracker / Cloud Hypervisor / vhost-device-vsock protocol): the host
//! connects to the backend's unix socket, writes `CONNECT <port>\n` and reads `OK <host port>\n`;
//! the stream then carries the guest connection. A guest connection to host port `P` arrives on
//! the unix socket `<socket>_P` ([`host_socket`]).
//!
//! The host opens no connection into a guest before the agent announced itself
//! ([`ReadyListener`]): vhost-device-vsock 0.3 stops serving the VM for good when a host
//! connection arrives between the guest driver's memory table and its virtqueues (its queue
//! worker thread ends on the "queue not ready" error), and a host polling the socket during boot
//! hits that window now and then.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_agent_protocol::{HOST_READY_VSOCK_PORT, READY_ANNOUNCEMENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Longest handshake reply we accept.
const MAX_REPLY: usize = 64;

/// How long an announcing connection may take to deliver its line.
const ANNOUNCEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The unix socket hybrid vsock delivers guest connections to host `port` on.
pub fn host_socket(vsock_socket: &Path, port: u32) -> PathBuf {
    let mut name = vsock_socket.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// The host end of the agent's start-up announcement: a listener on host vsock port
/// [`HOST_READY_VSOCK_PORT`], bound before the guest can get there. Removes its socket when
/// dropped.
#[derive(Debug)]
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Listens for the announcement of the VM whose hybrid-vsock socket is `vsock_socket`.
    pub fn bind(vsock_socket: &Path) -> std::io::Result<Self> {
        let path = host_socket(vsock_socket, HOST_READY_VSOCK_PORT);
        let listener = UnixListener::bind(&path)?;
        Ok(Self { listener, path })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves once a connection has delivered exactly [`READY_ANNOUNCEMENT`]. Anything else
    /// (another line, a stall, an error) is logged and waited past: the announcement only says
    /// when to connect, and the agent is believed for nothing else.
    pub async fn announced(&self) {
        loop {
            let conn = match self.listener.accept().await {
                Ok((conn, _)) => conn,
                Err(err) => {
                    tracing::warn!(path = %self.path.display(), error = %err, "accepting the agent's announcement");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mut line = Vec::with_capacity(READY_ANNOUNCEMENT.len());
            let mut limited = conn.take(READY_ANNOUNCEMENT.len() as u64 + 1);
            let read = limited.read_to_end(&mut line);
            match tokio::time::timeout(ANNOUNCEMENT_TIMEOUT, read).await {
                Ok(Ok(_)) if line == READY_ANNOUNCEMENT => return,
                Ok(Ok(_)) => tracing::warn!(
                    got = %String::from_utf8_lossy(&line).escape_debug(),
                    "ignoring an unexpected start-up announcement"
                ),
                Ok(Err(err)) => tracing::warn!(error = %err, "reading the agent's announcement"),
                Err(_) => tracing::warn!("an announcing connection stalled; ignored"),
            }
        }
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Opens a stream to guest vsock `port` through the hybrid-vsock socket `uds`.
pub async fn connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Read the reply byte by byte: anything after the newline already belongs to the guest.
    let mut reply = Vec::with_capacity(16);
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        reply.push(byte);
        if reply.len() > MAX_REPLY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "hybrid vsock reply too long",
            ));
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    if reply.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("hybrid vsock refused port {port}: {reply}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    async fn backend(reply: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = tokio::io::BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            s.get_mut().write_all(reply.as_bytes()).await.unwrap();
            s.get_mut().write_all(b"payload").await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn handshake_leaves_payload_unread() {
        let (_dir, path) = backend("OK 1073741824\n").await;
        let mut s = connect(&path, 1024).await.unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"payload");
    }

    #[tokio::test]
    async fn announcement_resolves_only_on_the_exact_line() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vm.vsock");
        let ready = ReadyListener::bind(&vsock).unwrap();
        assert_eq!(ready.path(), dir.path().join("vm.vsock_1023"));
        let path = ready.path().to_path_buf();
        let waiting = tokio::spawn(async move {
            ready.announced().await;
            ready
        });
        // Wrong words, a line too long and an empty connection are waited past.
        for wrong in [
            &b"hello\n"[..],
            b"coffer-agent ready\nand more",
            b"",
            b"coffer-agent ready",
        ] {
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(wrong).await.unwrap();
            drop(s);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "resolved on {wrong:?}");
        }
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(READY_ANNOUNCEMENT).await.unwrap();
        drop(s);
        let ready = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the announcement was taken")
            .unwrap();
        drop(ready);
        assert!(!path.exists(), "the socket is removed with the listener");
    }

    #[tokio::test]
    async fn refusal_is_an_error() {
        let (_dir, path) = backend("ERR no listener\n").await;
        let err = connect(&path, 1024).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
