//! Containers: rootfs uploads, image pulls, creation (the closed spec rendered for the runtime),
//! start, exec and removal. Each runs with the reservation its decision took.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use coffer_agent_protocol::v1 as pb;
use coffer_policies as pol;

use super::state::{PrePulled, Reservation};
use super::stdio::{ChannelReader, PendingIo, next_console, receive_fd};
use super::{Agent, Container, Reply};
use crate::cgroup;
use crate::error::AgentError;
use crate::oci::ChildIo;
use crate::process::{Process, StdioPipes};
use crate::request::{Id, ProcessRef, RootfsSource};
use crate::rootfs;

impl Agent {
    /// `PullImage`: pulls in a task of its own, streaming its events; the host dropping the
    /// stream abandons the pull, which then leaves nothing.
    pub(super) async fn pull_image(
        &self,
        id: Id,
        reference: String,
        busy: Reservation,
    ) -> Result<Reply, AgentError> {
        let images =
            self.config.images.clone().ok_or_else(|| {
                AgentError::FailedPrecondition("guest pull is not configured".into())
            })?;
        self.discard_pulled(&id);
        let root = self.config.state_dir.join("pulls").join(id.as_str());
        let _ = std::fs::remove_dir_all(&root);
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _busy = busy;
            let events = tx.clone();
            let report = crate::pull_report::PullReport::new(Some(Box::new(move |event| {
                let _ = events.send(Ok(pb::PullEvent { event: Some(event) }));
            })));
            let outcome = tokio::select! {
                r = images.pull_into(id.as_str(), &reference, &root, Some(&report)) => r,
                () = tx.closed() => {
                    tracing::info!(container_id = %id, "pull abandoned by the host");
                    let _ = std::fs::remove_dir_all(&root);
                    return;
                }
            };
            match outcome {
                Ok(image) => {
                    let manifest_digest = image.manifest_digest.to_string();
                    let done = pb::PullDone {
                        manifest_digest: manifest_digest.clone(),
                        timings: Some(report.finish()),
                    };
                    state.lock().pulled.insert(
                        id,
                        PrePulled {
                            reference,
                            root,
                            manifest_digest,
                        },
                    );
                    let _ = tx.send(Ok(pb::PullEvent {
                        event: Some(pb::pull_event::Event::Done(done)),
                    }));
                }
                Err(err) => {
                    let _ = tx.send(Err(err));
                }
            }
        });
        Ok(Reply::Pull(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    fn upload_dir(&self, id: &Id) -> PathBuf {
        self.config.state_dir.join("uploads").join(id.as_str())
    }

    fn bundle_dir(&self, id: &Id) -> PathBuf {
        self.config.state_dir.join("containers").join(id.as_str())
    }

    pub(super) async fn upload_rootfs(
        &self,
        id: Id,
        first: Bytes,
        first_is_last: bool,
        mut body: Box<tonic::Streaming<pb::RootfsChunk>>,
        _busy: Reservation,
    ) -> Result<Reply, AgentError> {
        if self.upload_dir(&id).exists() {
            return Err(AgentError::AlreadyExists {
                kind: "rootfs upload",
                id: id.to_string(),
            });
        }
        let partial = self
            .config
            .state_dir
            .join("uploads")
            .join(format!("{id}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| AgentError::io("create", &partial, e))?;

        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let dest = partial.clone();
        let unpacker =
            tokio::task::spawn_blocking(move || rootfs::unpack(ChannelReader::new(rx), &dest));
        let max = self.config.max_rootfs_bytes;
        let mut total = first.len() as u64;
        let feed: Result<(), AgentError> = async {
            let mut last = first_is_last;
            if !first.is_empty() && tx.send(first).await.is_err() {
                return Ok(());
            }
            while let Some(chunk) = body.message().await.map_err(|s| {
                AgentError::InvalidArgument(format!("rootfs stream: {}", s.message()))
            })? {
                if last {
                    return Err(AgentError::InvalidArgument(
                        "rootfs stream continues after its last chunk".into(),
                    ));
                }
                last = chunk.last;
                total += chunk.data.len() as u64;
                if total > max {
                    return Err(AgentError::ResourceExhausted(format!(
                        "rootfs larger than {max} bytes"
                    )));
                }
                if tx.send(chunk.data.into()).await.is_err() {
                    // The unpacker stopped early; its error is reported below.
                    return Ok(());
                }
            }
            if last {
                Ok(())
            } else {
                Err(AgentError::InvalidArgument(
                    "rootfs stream ended without its last chunk (truncated)".into(),
                ))
            }
        }
        .await;
        drop(tx);
        let unpacked = unpacker
            .await
            .map_err(|e| AgentError::Internal(format!("unpack task: {e}")));
        let result = match (feed, unpacked) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(Err(reason))) => Err(AgentError::Rootfs {
                container_id: id.to_string(),
                reason,
            }),
            (Ok(()), Ok(Ok(done))) => Ok(done),
        };
        match result {
            Ok(done) => {
                let final_dir = self.upload_dir(&id);
                std::fs::rename(&partial, &final_dir)
                    .map_err(|e| AgentError::io("rename", &final_dir, e))?;
                tracing::info!(container_id = %id, bytes = total, entries = done.entries, "rootfs uploaded");
                Ok(Reply::Uploaded(pb::UploadRootfsResponse {
                    bytes: total,
                    entries: done.entries,
                }))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                Err(e)
            }
        }
    }

    pub(super) async fn create_container(
        &self,
        id: Id,
        mut spec: pol::CreateContainer,
        rootfs: RootfsSource,
        record: crate::policy::Record,
        _busy: Reservation,
    ) -> Result<Reply, AgentError> {
        if crate::network::holds_network_capabilities(&spec.process) {
            self.host.load_netfilter().await?;
        }
        let bundle = self.bundle_dir(&id);
        let result = self
            .build_container(&id, &mut spec, rootfs, &bundle, record)
            .await;
        match result {
            Ok(container) => {
                self.state
                    .lock()
                    .containers
                    .insert(id.clone(), Arc::new(container));
                tracing::info!(container_id = %id, "container created");
                Ok(Reply::Empty)
            }
            Err(err) => {
                // Leave nothing half-done: runtime state, cgroup, sealed files, identity files
                // and bundle go.
                let _ = self.oci.delete(id.as_str(), true).await;
                crate::secrets::release_files(&crate::secrets::files_dir(&bundle));
                self.identities
                    .release(&crate::identity::files_dir(&bundle));
                let _ = std::fs::remove_dir_all(&bundle);
                Err(err)
            }
        }
    }

    async fn build_container(
        &self,
        id: &Id,
        spec: &mut pol::CreateContainer,
        rootfs: RootfsSource,
        bundle: &Path,
        record: crate::policy::Record,
    ) -> Result<Container, AgentError> {
        let rootfs_dir = bundle.join("rootfs");
        // The digest of the image manifest the guest itself resolved, verified and unpacked (the
        // policy input's `state.containers[].image_digest`); none for an uploaded rootfs.
        let image_digest = match rootfs {
            RootfsSource::Uploaded => {
                let upload = self.upload_dir(id);
                if !upload.is_dir() {
                    return Err(AgentError::FailedPrecondition(format!(
                        "no rootfs was uploaded for container {id}"
                    )));
                }
                std::fs::create_dir_all(bundle).map_err(|e| AgentError::io("create", bundle, e))?;
                std::fs::rename(&upload, &rootfs_dir)
                    .map_err(|e| AgentError::io("rename", &rootfs_dir, e))?;
                None
            }
            RootfsSource::Image(reference) => {
                let images = self.config.images.as_ref().ok_or_else(|| {
                    AgentError::FailedPrecondition("guest pull is not configured".into())
                })?;
                std::fs::create_dir_all(bundle).map_err(|e| AgentError::io("create", bundle, e))?;
                let digest = match self.take_pulled(id, &reference) {
                    Some((root, digest)) => {
                        std::fs::rename(&root, &rootfs_dir).map_err(|e| {
                            let _ = std::fs::remove_dir_all(&root);
                            AgentError::io("rename", &rootfs_dir, e)
                        })?;
                        digest
                    }
                    None => images
                        .pull_into(id.as_str(), &reference, &rootfs_dir, None)
                        .await?
                        .manifest_digest
                        .to_string(),
                };
                Some(digest)
            }
        };
        // After the policy admitted the request as the host sent it: sealed references become
        // their secrets and the agent's typed mounts binds of the files it made, inside the guest
        // only. Everything else runs as authorized.
        let broker = self.config.images.as_ref().and_then(|i| i.broker());
        let owner = (spec.process.user.uid, spec.process.user.gid);
        crate::secrets::resolve_env(id.as_str(), &mut spec.process, broker.as_ref()).await?;
        crate::secrets::resolve_files(
            id.as_str(),
            &mut spec.mounts,
            owner,
            broker.as_ref(),
            &crate::secrets::files_dir(bundle),
        )
        .await?;
        self.identities
            .resolve(
                id.as_str(),
                &mut spec.mounts,
                owner,
                &crate::identity::files_dir(bundle),
            )
            .await?;
        crate::pod_files::resolve_mounts(
            &mut spec.mounts,
            &crate::pod_files::dir(&self.config.state_dir),
        )?;
        let config = bundle.join("config.json");
        let rendered = crate::spec::render_container(
            spec,
            &rootfs_dir.display().to_string(),
            &cgroup::relative_path(id.as_str()),
        );
        let json = serde_json::to_vec(&rendered)
            .map_err(|e| AgentError::Internal(format!("serialize spec: {e}")))?;
        std::fs::write(&config, json).map_err(|e| AgentError::io("write", &config, e))?;

        let terminal = spec.process.terminal;
        let (child, pending) = self.prepare_io(terminal)?;
        let pid = match self.oci.create(id.as_str(), bundle, child).await {
            Ok(pid) => pid,
            Err(err) => {
                pending.abandon();
                return Err(err);
            }
        };
        let exited = self.oci.watch(pid);
        // On failure the caller deletes the container, which kills the waiting init.
        let io = pending.ready().await?;
        Ok(Container {
            id: id.clone(),
            bundle: bundle.to_path_buf(),
            init: Process::new(pid, io, exited),
            started: false.into(),
            execs: StdMutex::new(HashMap::new()),
            record,
            image_digest,
        })
    }

    /// Stdio for a new process: pipes, or a console socket on which the runtime will hand over
    /// the master of a new pseudo-terminal.
    fn prepare_io(&self, terminal: bool) -> Result<(ChildIo, PendingIo), AgentError> {
        if !terminal {
            let pipes = StdioPipes::new()?;
            return Ok((ChildIo::Pipes(pipes.child), PendingIo::Pipes(pipes.io)));
        }
        let path = self
            .config
            .state_dir
            .join("scratch")
            .join(format!("console-{}.sock", next_console()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| AgentError::io("bind console socket", &path, e))?;
        let master = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            tokio::task::spawn_blocking(move || receive_fd(&stream))
                .await
                .map_err(std::io::Error::other)?
        });
        Ok((
            ChildIo::Console(path.clone()),
            PendingIo::Console { path, master },
        ))
    }

    /// `StartContainer`: the reservation checked that it was not started and noted the start
    /// with the decision (see [`state`](super::state)).
    pub(super) async fn start_container(
        &self,
        id: Id,
        _starting: Reservation,
    ) -> Result<Reply, AgentError> {
        let c = self.container(&id)?;
        self.oci.start(id.as_str()).await?;
        c.started.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(container_id = %id, pid = c.init.pid, "container started");
        Ok(Reply::Started(pb::StartContainerResponse {
            pid: c.init.pid,
        }))
    }

    pub(super) async fn exec_process(
        &self,
        r: ProcessRef,
        process: pol::Process,
    ) -> Result<Reply, AgentError> {
        let c = self.container(&r.container)?;
        let exec = r
            .exec
            .clone()
            .ok_or_else(|| AgentError::InvalidArgument("exec_id is required".into()))?;
        if !c.running() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        {
            let execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
            if execs.contains_key(&exec) {
                return Err(AgentError::AlreadyExists {
                    kind: "process",
                    id: r.to_string(),
                });
            }
        }
        let file = c.bundle.join(format!("exec-{exec}.json"));
        let json = serde_json::to_vec(&crate::spec::render_process(&process))
            .map_err(|e| AgentError::Internal(format!("serialize process: {e}")))?;
        std::fs::write(&file, json).map_err(|e| AgentError::io("write", &file, e))?;
        let (child, pending) = self.prepare_io(process.terminal)?;
        let pid = self.oci.exec(c.id.as_str(), &file, child).await;
        let _ = std::fs::remove_file(&file);
        let pid = match pid {
            Ok(pid) => pid,
            Err(err) => {
                pending.abandon();
                return Err(err);
            }
        };
        let exited = self.oci.watch(pid);
        let io = match pending.ready().await {
            Ok(io) => io,
            Err(err) => {
                let _ = self.oci.signal(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(err);
            }
        };
        let proc = Arc::new(Process::new(pid, io, exited));
        let mut execs = c.execs.lock().unwrap_or_else(PoisonError::into_inner);
        if execs.contains_key(&exec) {
            // Lost a race with an identical request: ours is already running, so stop it.
            let _ = proc.signal(self.oci.as_ref(), nix::sys::signal::Signal::SIGKILL);
            return Err(AgentError::AlreadyExists {
                kind: "process",
                id: r.to_string(),
            });
        }
        execs.insert(exec, proc);
        tracing::info!(process = %r, pid, "process started");
        Ok(Reply::Execed(pb::ExecProcessResponse { pid }))
    }

    pub(super) async fn remove_container(
        &self,
        id: Id,
        force: bool,
        _busy: Reservation,
    ) -> Result<Reply, AgentError> {
        let c = match self.container(&id) {
            Ok(c) => c,
            // Only an image pulled ahead exists for this id: removing it is the removal.
            Err(AgentError::ContainerNotFound(_)) if self.state.lock().pulled.contains_key(&id) => {
                self.discard_pulled(&id);
                return Ok(Reply::Empty);
            }
            Err(e) => return Err(e),
        };
        if c.init.exited().is_none() {
            if !force && c.started.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id} is running; stop it or remove with force"
                )));
            }
            self.oci
                .kill_all(id.as_str(), nix::sys::signal::Signal::SIGKILL as i32)
                .await
                .or_else(|e| match c.init.exited() {
                    Some(_) => Ok(()),
                    None => Err(e),
                })?;
            let rx = c.init.exit.clone();
            tokio::time::timeout(Duration::from_secs(10), Process::wait(rx))
                .await
                .map_err(|_| {
                    AgentError::Runtime(format!("container {id} did not die after SIGKILL"))
                })??;
        }
        self.oci.delete(id.as_str(), true).await?;
        crate::secrets::release_files(&crate::secrets::files_dir(&c.bundle));
        self.identities
            .release(&crate::identity::files_dir(&c.bundle));
        std::fs::remove_dir_all(&c.bundle)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| AgentError::io("remove", &c.bundle, e))?;
        self.state.lock().containers.remove(&id);
        tracing::info!(container_id = %id, "container removed");
        Ok(Reply::Empty)
    }
}
