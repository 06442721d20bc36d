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
        let stream = UnixStream::connect(path).await?;
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
