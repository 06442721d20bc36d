//! The guest's console (kernel and agent log lines) forwarded into the shim's log, and so into
//! containerd's log, tagged with the sandbox id. The console is guest output: in sandbox mode the
//! guest is the untrusted side, so every line is escaped (no control characters, no forged log
//! lines) and cut at [`MAX_LINE`] bytes. The runtime bounds the console file itself.

use std::path::PathBuf;
use std::time::Duration;

use coffer_runtime::sandbox::SandboxState;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// Longest console line forwarded; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 4096;
const POLL: Duration = Duration::from_millis(250);

/// Escapes one console line for the host log.
pub fn sanitize(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
    text.trim_end_matches('\r').escape_debug().to_string()
}

/// Follows `console` (the VM's `console.log`) until the VM is gone and the file is read.
pub async fn forward(console: PathBuf, sandbox_id: String, state: watch::Receiver<SandboxState>) {
    let mut file = match tokio::fs::File::open(&console).await {
        Ok(f) => f,
        Err(err) => {
            tracing::debug!(sandbox_id = %sandbox_id, %err, "guest console not forwarded");
            return;
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = file.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            if *state.borrow() != SandboxState::Ready {
                break;
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = sanitize(&line[..line.len() - 1]);
            if !line.is_empty() {
                tracing::info!(target: "guest", sandbox_id = %sandbox_id, "{line}");
            }
        }
        if pending.len() > MAX_LINE {
            tracing::info!(target: "guest", sandbox_id = %sandbox_id, "{}", sanitize(&pending));
            pending.clear();
        }
    }
    if !pending.is_empty() {
        tracing::info!(target: "guest", sandbox_id = %sandbox_id, "{}", sanitize(&pending));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_lines_cannot_forge_log_lines() {
        assert_eq!(
            sanitize(b"ok\r"),
            "ok",
            "a trailing carriage return is dropped"
        );
        let forged = sanitize(b"x\nlevel=error msg=\"fake\"\x1b[31m");
        assert!(
            !forged.contains('\n') && !forged.contains('\x1b'),
            "{forged}"
        );
        assert_eq!(sanitize(&vec![b'a'; MAX_LINE * 2]).len(), MAX_LINE);
    }
}
