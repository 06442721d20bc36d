//! The tonic service. Each handler is one line: decode into [`AgentRequest`], hand it to
//! [`Agent::handle`] (the authorization point), and unwrap the matching [`Reply`].

use std::pin::Pin;
use std::sync::Arc;

use coffer_agent_protocol::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::agent::{Agent, Reply};
use crate::request::{Decode, OutputKind, decode_read_output, decode_upload};

/// The gRPC face of an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentService {
    agent: Arc<Agent>,
}

impl AgentService {
    /// Wraps `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

/// A stream of output chunks, as sent to the host.
pub type OutputChunks = Pin<Box<dyn Stream<Item = Result<pb::OutputChunk, Status>> + Send>>;
/// A stream of pull events, as sent to the host.
pub type PullEventStream = Pin<Box<dyn Stream<Item = Result<pb::PullEvent, Status>> + Send>>;

fn mismatch(reply: &Reply) -> Status {
    tracing::error!(?reply, "dispatcher returned the wrong reply kind");
    Status::internal("internal error")
}

macro_rules! reply {
    ($reply:expr, Empty) => {
        match $reply {
            Reply::Empty => Ok(Response::new(pb::Empty {})),
            other => Err(mismatch(&other)),
        }
    };
    ($reply:expr, $variant:ident) => {
        match $reply {
            Reply::$variant(r) => Ok(Response::new(r)),
            other => Err(mismatch(&other)),
        }
    };
}

macro_rules! unary {
    ($self:ident, $req:ident, $variant:ident) => {{
        let request = $req.into_inner().decode()?;
        reply!($self.agent.handle(request).await?, $variant)
    }};
}

impl AgentService {
    async fn output(
        &self,
        req: pb::ReadOutputRequest,
        kind: OutputKind,
    ) -> Result<Response<OutputChunks>, Status> {
        match self.agent.handle(decode_read_output(req, kind)?).await? {
            Reply::Output(stream) => Ok(Response::new(Box::pin(stream.map(|chunk| {
                chunk
                    .map(|data| pb::OutputChunk { data: data.into() })
                    .map_err(|e| Status::internal(format!("reading output: {}", e.kind())))
            })))),
            other => Err(mismatch(&other)),
        }
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type ReadStdoutStream = OutputChunks;
    type ReadStderrStream = OutputChunks;
    type PullImageStream = PullEventStream;

    async fn create_sandbox(
        &self,
        r: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::CreateSandboxResponse>, Status> {
        unary!(self, r, Sandbox)
    }
    async fn destroy_sandbox(
        &self,
        r: Request<pb::DestroySandboxRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        unary!(self, r, Empty)
    }
    async fn upload_rootfs(
        &self,
        r: Request<Streaming<pb::RootfsChunk>>,
    ) -> Result<Response<pb::UploadRootfsResponse>, Status> {
        reply!(
            self.agent
                .handle(decode_upload(r.into_inner()).await?)
                .await?,
            Uploaded
        )
    }
    async fn pull_image(
        &self,
        r: Request<pb::PullImageRequest>,
    ) -> Result<Response<PullEventStream>, Status> {
        match self.agent.handle(r.into_inner().decode()?).await? {
            Reply::Pull(events) => Ok(Response::new(Box::pin(
                events.map(|e| e.map_err(Status::from)),
            ))),
            other => Err(mismatch(&other)),
        }
    }
    async fn create_container(
        &self,
        r: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        unary!(self, r, Empty)
    }
    async fn start_container(
        &self,
        r: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        unary!(self, r, Started)
    }
    async fn remove_container(
        &self,
        r: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        unary!(self, r, Empty)
    }
    async fn stats_container(
        &self,
        r: Request<pb::StatsContainerRequest>,
    ) -> Result<Response<pb::StatsContainerResponse>, Status> {
        unary!(self, r, Stats)
    }
    async fn exec_process(
        &self,
        r: Request<pb::ExecProcessRequest>,
    ) -> Result<Response<pb::ExecProcessResponse>, Status> {
        unary!(self, r, Execed)
    }
    async fn wait_process(
        &self,
        r: Request<pb::WaitProcessRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        unary!(self, r, Exited)
    }
    async fn signal_process(
        &self,
        r: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        unary!(self, r, Empty)
    }
    async fn write_stdin(
        &self,
        r: Request<pb::WriteStdinRequest>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        unary!(self, r, Written)
    }
    async fn close_stdin(
        &self,
        r: Request<pb::CloseStdinRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        unary!(self, r, Empty)
    }
    async fn read_stdout(
        &self,
        r: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<OutputChunks>, Status> {
        self.output(r.into_inner(), OutputKind::Stdout).await
    }
    async fn read_stderr(
        &self,
        r: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<OutputChunks>, Status> {
        self.output(r.into_inner(), OutputKind::Stderr).await
    }
    async fn tty_win_resize(
        &self,
        r: Request<pb::TtyWinResizeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        unary!(self, r, Empty)
    }
    async fn get_guest_details(
        &self,
        r: Request<pb::GetGuestDetailsRequest>,
    ) -> Result<Response<pb::GuestDetails>, Status> {
        unary!(self, r, Details)
    }
    async fn get_oom_event(
        &self,
        r: Request<pb::GetOomEventRequest>,
    ) -> Result<Response<pb::OomEvent>, Status> {
        unary!(self, r, Oom)
    }
}
