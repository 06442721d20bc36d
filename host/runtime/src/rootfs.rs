//! Getting a container's root filesystem to the guest — one interface, so confidential mode can
//! swap the sandbox-mode upload for a guest pull.
//!
//! A guest pull sends only the image reference (optionally pulled ahead with [`pull_in_guest`],
//! which streams progress and the guest's phase timings). Sandbox mode can also stream a host
//! directory as a tar over the agent connection (`UploadRootfs`):
//! it needs no extra guest kernel support (no virtio-blk/ext4, 9p or virtiofsd), works on every
//! vsock transport, and gives the guest a private copy the host cannot change afterwards. The cost
//! is a copy at ~65 MiB/s and guest memory for the tmpfs; large images belong to guest pull.

use std::io::Write;
use std::path::{Path, PathBuf};

use coffer_agent_protocol::v1 as pb;
use tokio::sync::mpsc;

use crate::agent_client::AgentClient;

/// Size of one upload chunk.
const CHUNK: usize = 256 * 1024;

/// Where a container's rootfs comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRootfs {
    /// A directory on the host, uploaded as a tar stream.
    HostDirectory(PathBuf),
    /// An image reference the guest pulls, verifies and unpacks itself (the host never sees the
    /// content): the confidential path.
    GuestPull(String),
}

/// Rootfs delivery failures.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The directory is not usable.
    #[error("rootfs {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused or failed the upload.
    #[error("uploading rootfs: {0}")]
    Upload(String),
    /// The guest refused or failed the pull (its message: the policy's reason or the pull's
    /// error).
    #[error("pulling {reference} in the guest: {message}")]
    Pull {
        /// The image.
        reference: String,
        /// The guest's message.
        message: String,
    },
}

/// Asks the guest to pull `reference` for container `id` ahead of its `CreateContainer`
/// (`PullImage`), handing every progress event to `on_event`; returns the final `done`, with the
/// guest's phase timings. A later [`deliver`] of [`ContainerRootfs::GuestPull`] with the same
/// reference then uses the pulled image.
pub async fn pull_in_guest(
    agent: &mut AgentClient,
    id: &str,
    reference: &str,
    mut on_event: impl FnMut(&pb::pull_event::Event),
) -> Result<pb::PullDone, RootfsError> {
    let failed = |message: String| RootfsError::Pull {
        reference: reference.to_owned(),
        message,
    };
    let mut events = agent
        .pull_image(pb::PullImageRequest {
            container_id: id.to_owned(),
            reference: reference.to_owned(),
        })
        .await
        .map_err(|s| failed(s.message().to_owned()))?
        .into_inner();
    while let Some(event) = events
        .message()
        .await
        .map_err(|s| failed(s.message().to_owned()))?
    {
        match event.event {
            Some(pb::pull_event::Event::Done(done)) => return Ok(done),
            Some(other) => on_event(&other),
            None => {}
        }
    }
    Err(failed(
        "the guest ended the pull without finishing it".into(),
    ))
}

/// Delivers `rootfs` for container `id`; returns the source to name in `CreateContainer`.
pub async fn deliver(
    agent: &mut AgentClient,
    id: &str,
    rootfs: &ContainerRootfs,
) -> Result<pb::create_container_request::Rootfs, RootfsError> {
    match rootfs {
        ContainerRootfs::HostDirectory(dir) => {
            let meta = std::fs::metadata(dir).map_err(|source| RootfsError::Read {
                path: dir.clone(),
                source,
            })?;
            if !meta.is_dir() {
                return Err(RootfsError::Read {
                    path: dir.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        "not a directory",
                    ),
                });
            }
            upload_dir(agent, id, dir).await?;
            Ok(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            ))
        }
        ContainerRootfs::GuestPull(reference) => Ok(pb::create_container_request::Rootfs::Image(
            pb::PulledImage {
                reference: reference.clone(),
            },
        )),
    }
}

struct ChunkWriter {
    tx: mpsc::Sender<pb::RootfsChunk>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(pb::RootfsChunk {
                container_id: String::new(),
                data,
                last: false,
            })
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

fn append_tree(b: &mut tar::Builder<ChunkWriter>, root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            b.append_path_with_name(entry.path(), &rel_path)?;
            append_tree(b, root, &rel_path)?;
        } else if ft.is_file() || ft.is_symlink() {
            b.append_path_with_name(entry.path(), &rel_path)?;
        } else {
            tracing::debug!(path = %rel_path.display(), "skipping special file in rootfs");
        }
    }
    Ok(())
}

async fn upload_dir(agent: &mut AgentClient, id: &str, dir: &Path) -> Result<(), RootfsError> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::RootfsChunk {
        container_id: id.to_owned(),
        data: Vec::new(),
        last: false,
    })
    .await
    .map_err(|_| RootfsError::Upload("channel closed".into()))?;
    let root = dir.to_path_buf();
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut b = tar::Builder::new(ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        });
        b.follow_symlinks(false);
        append_tree(&mut b, &root, Path::new(""))?;
        let mut w = b.into_inner()?;
        w.flush()?;
        w.tx.blocking_send(pb::RootfsChunk {
            container_id: String::new(),
            data: Vec::new(),
            last: true,
        })
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended"))
    });
    let upload = agent
        .upload_rootfs(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let produced = producer
        .await
        .map_err(|e| RootfsError::Upload(format!("tar task: {e}")))?;
    match (upload, produced) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(status), _) => Err(RootfsError::Upload(status.message().to_owned())),
        (Ok(_), Err(source)) => Err(RootfsError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
