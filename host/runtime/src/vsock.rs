//! Hybrid vsock (the Firecracker / Cloud Hypervisor / vhost-device-vsock protocol): the host
//! connects to the backend's unix socket, writes `CONNECT <port>\n` and reads `OK <host port>\n`;
//! the stream then carries the guest connection.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest handshake reply we accept.
const MAX_REPLY: usize = 64;

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
    async fn refusal_is_an_error() {
        let (_dir, path) = backend("ERR no listener\n").await;
        let err = connect(&path, 1024).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
