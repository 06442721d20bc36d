//! A process's stdio between containerd's fifos and the guest agent's streams. The fifo side is
//! the `containerd-shim` crate's [`IoTasks`] (it holds the fifos as containerd expects); this
//! module pumps bytes between it and the agent: `ReadStdout`/`ReadStderr` streams into the output
//! fifos, the stdin fifo into `WriteStdin` calls ending with `CloseStdin`.

use coffer_agent_protocol::v1 as pb;
use coffer_runtime::agent_client::AgentClient;
use containerd_shim::asynchronous::io::{IoTasks, Stdio};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::error::ShimError;

/// Buffer between an agent stream and a fifo copy.
const PIPE_BYTES: usize = 64 * 1024;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Stdout,
    Stderr,
}

/// Starts copying the process's output to the fifos in `stdio` (to nowhere when containerd gave no
/// fifo: the guest process must never block on a full pipe). Returns the pump tasks; they end when
/// the process's output ends.
pub fn attach_outputs(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    stdio: &Stdio,
    io: &IoTasks,
) -> Result<Vec<JoinHandle<()>>, ShimError> {
    let mut pumps = vec![attach_output(
        agent,
        container_id,
        exec_id,
        Output::Stdout,
        &stdio.stdout,
        io,
    )?];
    // A terminal has one output stream.
    if !stdio.terminal {
        pumps.push(attach_output(
            agent,
            container_id,
            exec_id,
            Output::Stderr,
            &stdio.stderr,
            io,
        )?);
    }
    Ok(pumps)
}

fn attach_output(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    which: Output,
    fifo: &str,
    io: &IoTasks,
) -> Result<JoinHandle<()>, ShimError> {
    let req = pb::ReadOutputRequest {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
    };
    let mut agent = agent.clone();
    if fifo.is_empty() {
        return Ok(tokio::spawn(async move {
            pump(&mut agent, req, which, tokio::io::sink()).await;
        }));
    }
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    io.copy_to_fifo(reader, fifo)
        .map_err(|e| ShimError::FailedPrecondition(format!("opening {fifo}: {e}")))?;
    Ok(tokio::spawn(async move {
        pump(&mut agent, req, which, writer).await;
    }))
}

async fn pump<W: AsyncWrite + Unpin>(
    agent: &mut AgentClient,
    req: pb::ReadOutputRequest,
    which: Output,
    mut to: W,
) {
    let ids = format!("{}/{}", req.container_id, req.exec_id);
    let stream = match which {
        Output::Stdout => agent.read_stdout(req).await,
        Output::Stderr => agent.read_stderr(req).await,
    };
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(status) => {
            tracing::warn!(process = %ids, ?which, message = status.message(), "opening output stream");
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if to.write_all(&chunk.data).await.is_err() {
                    // The fifo copy ended (task deleted): drain the rest so the guest never blocks.
                    while let Ok(Some(_)) = stream.message().await {}
                    break;
                }
            }
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(process = %ids, ?which, message = status.message(), "output stream ended");
                break;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Forwards the stdin fifo in `stdio` to the process, then closes its stdin; without a stdin
/// fifo the process's stdin is closed at once.
pub async fn attach_stdin(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    stdio: &Stdio,
    io: &IoTasks,
) -> Result<(), ShimError> {
    let mut agent = agent.clone();
    let close = pb::CloseStdinRequest {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
    };
    if stdio.stdin.is_empty() {
        agent
            .close_stdin(close)
            .await
            .map_err(ShimError::agent("CloseStdin"))?;
        return Ok(());
    }
    let (mut reader, writer) = tokio::io::duplex(PIPE_BYTES);
    io.copy_from_fifo(&stdio.stdin, writer)
        .map_err(|e| ShimError::FailedPrecondition(format!("opening {}: {e}", stdio.stdin)))?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; PIPE_BYTES];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let write = agent
                .write_stdin(pb::WriteStdinRequest {
                    container_id: close.container_id.clone(),
                    exec_id: close.exec_id.clone(),
                    data: buf[..n].to_vec(),
                })
                .await;
            if write.is_err() {
                // The process stopped reading; drop the rest.
                return;
            }
        }
        if let Err(status) = agent.close_stdin(close).await {
            tracing::debug!(message = status.message(), "closing stdin");
        }
    });
    Ok(())
}
