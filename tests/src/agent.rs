//! One container's lifecycle through the agent API, shared by the suites that drive a booted
//! sandbox's agent directly.

use anyhow::Context;
use coffer_agent_protocol::v1 as pb;
use coffer_runtime::agent_client::AgentClient;

/// `StartContainer` of `id`.
pub async fn start(agent: &AgentClient, id: &str) -> Result<(), tonic::Status> {
    agent
        .clone()
        .start_container(pb::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(drop)
}

/// Reads the whole stdout (or stderr) of process `exec` (`""`: the init process) of `id`, in a
/// task, so it can be attached before the process starts.
pub fn read_output(
    agent: &AgentClient,
    id: &str,
    exec: &str,
    stderr: bool,
) -> tokio::task::JoinHandle<anyhow::Result<String>> {
    let mut agent = agent.clone();
    let req = pb::ReadOutputRequest {
        container_id: id.into(),
        exec_id: exec.into(),
    };
    tokio::spawn(async move {
        let mut stream = if stderr {
            agent.read_stderr(req).await?.into_inner()
        } else {
            agent.read_stdout(req).await?.into_inner()
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            out.extend(chunk.data);
        }
        Ok(String::from_utf8(out)?)
    })
}

/// Waits for process `exec` (`""`: the init process) of `id`; its exit status.
pub async fn wait(agent: &AgentClient, id: &str, exec: &str) -> anyhow::Result<i32> {
    Ok(agent
        .clone()
        .wait_process(pb::WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
        })
        .await
        .context("WaitProcess")?
        .into_inner()
        .exit_status)
}

/// Removes `id`, killing it if it still runs.
pub async fn remove(agent: &AgentClient, id: &str) -> anyhow::Result<()> {
    agent
        .clone()
        .remove_container(pb::RemoveContainerRequest {
            container_id: id.into(),
            force: true,
        })
        .await
        .context("RemoveContainer")?;
    Ok(())
}
