//! `coffer-agent`: the Coffer guest agent.
//!
//! It is PID 1 of the guest VM (see [`init`]) and serves the `coffer.agent.v1` gRPC API on vsock
//! port 1024 — or on a unix socket for tests, through the same code. The request path is
//! decode ([`request`]) → authorize ([`policy::Gate`], the single decision point) → dispatch
//! ([`agent::Agent`]); containers run under youki's `libcontainer` in a helper process ([`oci`]).
//!
//! Trust model: in confidential mode the host sending these requests is untrusted. Nothing here
//! acts on a request before it validated into a typed value and passed the gate.
#![forbid(unsafe_code)]

pub mod agent;
pub mod boot_times;
pub mod cgroup;
pub mod error;
pub mod host;
pub mod identity;
pub mod images;
pub mod init;
pub mod initdata;
pub mod network;
pub mod network_setup;
pub mod oci;
pub mod pod_files;
pub mod pod_network;
pub mod policy;
pub mod policy_input;
pub mod process;
pub mod publish;
pub mod pull_report;
pub mod ready;
pub mod reaper;
pub mod request;
pub mod rootfs;
pub mod secrets;
pub mod service;
pub mod spec;
pub mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use coffer_agent_protocol::v1::agent_server::AgentServer;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

pub use agent::{Agent, AgentConfig};
pub use service::AgentService;

/// Largest gRPC message the agent accepts (rootfs chunks, stdin writes, specs).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Most concurrent RPCs on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// A connection accepted on any transport (vsock or unix).
#[derive(Debug)]
pub struct Conn<T>(pub T);

impl<T> Connected for Conn<T> {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl<T: AsyncRead + Unpin> AsyncRead for Conn<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Conn<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Serves `agent` on the connections `incoming` yields until `shutdown` resolves, then drains.
pub async fn serve<S, T>(
    agent: std::sync::Arc<Agent>,
    incoming: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    S: Stream<Item = std::io::Result<T>> + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use futures::StreamExt;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<AgentService>>().await;
    let service = AgentServer::new(AgentService::new(agent))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        // Bounded: the peer is untrusted (AGT-00). Long-lived streams (output, waits, OOM events)
        // count against the stream limit, hence its generous size.
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming.map(|c| c.map(Conn)), shutdown)
        .await
}
