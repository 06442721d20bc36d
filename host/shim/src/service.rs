//! The Task API as containerd calls it: every handler is one line into [`Pod`], with errors mapped
//! once (`From<ShimError> for ttrpc::Error`).

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};

use crate::error::ShimError;
use crate::pod::Pod;

/// The task service of one shim.
#[derive(Debug, Clone)]
pub struct TaskService {
    pod: Arc<Pod>,
}

impl TaskService {
    /// Serves `pod`.
    pub fn new(pod: Arc<Pod>) -> Self {
        Self { pod }
    }
}

fn unsupported(call: &'static str, reason: &'static str) -> TtrpcResult<Empty> {
    Err(ShimError::Unimplemented { call, reason }.into())
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.pod.state(&req.id, &req.exec_id)?)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        Ok(self.pod.create(req).await?)
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.pod.start(&req.id, &req.exec_id).await?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.pod.delete(&req.id, &req.exec_id).await?)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        Ok(self.pod.pids(&req.id)?)
    }

    async fn pause(&self, _: &TtrpcContext, _: api::PauseRequest) -> TtrpcResult<Empty> {
        unsupported(
            "Pause",
            "pausing a container inside the pod VM is not implemented",
        )
    }

    async fn resume(&self, _: &TtrpcContext, _: api::ResumeRequest) -> TtrpcResult<Empty> {
        unsupported(
            "Resume",
            "pausing a container inside the pod VM is not implemented",
        )
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        unsupported("Checkpoint", "VM sandboxes cannot be checkpointed")
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        self.pod.kill(req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        self.pod.exec(req).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.pod.resize_pty(req).await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        self.pod.close_io(&req)?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, _: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        unsupported(
            "Update",
            "changing resources of a container inside the pod VM is not implemented",
        )
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        Ok(self.pod.wait(&req.id, &req.exec_id).await?)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Ok(self.pod.stats(&req.id).await?)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(self.pod.connect(&req.id)?)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<Empty> {
        self.pod.shutdown().await;
        Ok(Empty::new())
    }
}
