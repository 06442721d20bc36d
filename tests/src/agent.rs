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

/// Uploads the host directory `rootfs` for container `id` and creates it from `spec`.
pub async fn create(
    agent: &AgentClient,
    rootfs: &std::path::Path,
    id: &str,
    spec: &oci_spec::runtime::Spec,
) -> anyhow::Result<()> {
    use coffer_runtime::rootfs::{self, ContainerRootfs};
    let mut agent = agent.clone();
    let source = rootfs::deliver(
        &mut agent,
        id,
        &ContainerRootfs::HostDirectory(rootfs.to_path_buf()),
    )
    .await?;
    agent
        .create_container(pb::CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(spec)?,
            rootfs: Some(source),
        })
        .await
        .context("CreateContainer")?;
    Ok(())
}

/// Creates container `id` from `spec` on the host directory `rootfs`, starts it, waits for it
/// and removes it; its stdout and exit status.
pub async fn run(
    agent: &AgentClient,
    rootfs: &std::path::Path,
    id: &str,
    spec: &oci_spec::runtime::Spec,
) -> anyhow::Result<(String, i32)> {
    create(agent, rootfs, id, spec).await?;
    let out = read_output(agent, id, "", false);
    start(agent, id).await.context("StartContainer")?;
    let status = wait(agent, id, "").await?;
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), out).await???;
    remove(agent, id).await?;
    Ok((out, status))
}

/// Runs `args` as exec `exec` in the running container `id` (no terminal, the container's user);
/// its stdout and exit status.
pub async fn exec(
    agent: &AgentClient,
    id: &str,
    exec: &str,
    args: &[&str],
) -> anyhow::Result<(String, i32)> {
    let opts = coffer_runtime::spec::ProcessOptions {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    agent
        .clone()
        .exec_process(pb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            oci_process_json: serde_json::to_vec(&coffer_runtime::spec::process(&opts))?,
        })
        .await
        .context("ExecProcess")?;
    let out = read_output(agent, id, exec, false);
    let status = wait(agent, id, exec).await?;
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), out).await???;
    Ok((out, status))
}
