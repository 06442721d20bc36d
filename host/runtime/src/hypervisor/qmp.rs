//! A minimal QMP client: capabilities negotiation, `query-status`, `quit`.

use std::path::Path;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest QMP line we read (QEMU's replies here are small).
const MAX_LINE: usize = 1 << 20;

/// A QMP connection.
#[derive(Debug)]
pub struct Qmp {
    stream: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path) -> std::io::Result<Self> {
        let stream = connect_listening(path).await?;
        let mut qmp = Self {
            stream: BufReader::new(stream),
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(invalid("no QMP greeting"));
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        let n = self.stream.read_line(&mut line).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "QMP connection closed",
            ));
        }
        if line.len() > MAX_LINE {
            return Err(invalid("QMP line too long"));
        }
        serde_json::from_str(&line).map_err(|e| invalid(&format!("QMP: {e}")))
    }

    /// Runs a command and returns its `return` value (events in between are skipped).
    pub async fn execute(&mut self, command: &str) -> std::io::Result<Value> {
        let mut msg = json!({ "execute": command }).to_string();
        msg.push('\n');
        self.stream.get_mut().write_all(msg.as_bytes()).await?;
        loop {
            let reply = self.read_message().await?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(std::io::Error::other(format!("QMP {command}: {err}")));
            }
        }
    }

    /// `query-status`: the VM run state, e.g. `running`.
    pub async fn status(&mut self) -> std::io::Result<String> {
        let ret = self.execute("query-status").await?;
        Ok(ret
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

/// Connects to the unix socket a just-started QEMU serves at `path`. QEMU creates the socket file
/// (`bind`) a moment before it listens on it: a connection in between is refused, so a refusal is
/// retried every 10 ms (the caller bounds the whole wait); any other error is returned.
pub async fn connect_listening(path: &Path) -> std::io::Result<UnixStream> {
    loop {
        match UnixStream::connect(path).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_bound_but_not_yet_listening_is_waited_for() {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
        };
        use std::os::fd::AsRawFd as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        // What QEMU has between its bind and its listen: the file exists, connections are refused.
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        assert_eq!(
            std::os::unix::net::UnixStream::connect(&path)
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        let listening = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            listen(&fd, Backlog::new(1).unwrap()).unwrap();
            fd
        });
        let connected =
            tokio::time::timeout(std::time::Duration::from_secs(5), connect_listening(&path)).await;
        let _fd = listening.await.unwrap();
        assert!(matches!(connected, Ok(Ok(_))), "{connected:?}");
        // Anything but a refusal is not retried.
        let missing = connect_listening(&dir.path().join("absent")).await;
        assert_eq!(missing.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }
}
