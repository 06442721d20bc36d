//! Encrypting whole images, from an OCI layout or a registry to an OCI layout or a registry, so
//! users need no other tool to make images for `coffer image pull` and skopeo.
//!
//! A registry source goes through the pull code: reference resolution (mirrors, index →
//! linux/amd64, pinned digests), the bounded manifest and config, and every layer downloaded into
//! the [`BlobStore`] with its digest and size verified. All of a registry source's blobs are
//! fetched and verified before anything is written to the destination, and every blob is checked
//! against its digest again when it is read for encryption. The destination's manifest (and so
//! its tag) is written last: a failure leaves no tag pointing at a partial image.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Credentials, Limits, RegistriesConfig};
use crate::decrypt::{
    EncryptError, EncryptedManifest, LayoutWriter, Recipients, encrypt_manifest,
    read_layout_manifest,
};
use crate::digest::Digest;
use crate::pull::{PullError, Resolved, cancel, resolve, spawn_downloads};
use crate::registry::{Registry, RegistryError, parse_reference};
use crate::store::BlobStore;

/// Where an image is read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLocation {
    /// An OCI image layout directory and the tag (`org.opencontainers.image.ref.name`) in it.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The image's tag in `index.json`.
        tag: String,
    },
    /// A registry reference (`host/repo:tag`; as a destination it must name a tag).
    Registry(String),
}

impl std::fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Layout { dir, tag } => write!(f, "oci:{}:{tag}", dir.display()),
            Self::Registry(reference) => write!(f, "docker://{reference}"),
        }
    }
}

/// Why an image could not be encrypted. Nothing was tagged at the destination.
#[derive(Debug, thiserror::Error)]
pub enum EncryptImageError {
    /// The source image could not be fetched and verified (the pull's typed error).
    #[error("source image")]
    Source(#[source] PullError),
    /// Reading, checking, encrypting or writing blobs failed.
    #[error("encrypting")]
    Encrypt(#[from] EncryptError),
    /// The destination registry refused an upload.
    #[error("pushing to {reference}")]
    Push {
        /// The destination.
        reference: String,
        /// The registry's error.
        #[source]
        source: RegistryError,
    },
    /// A destination reference that names a digest cannot be written.
    #[error("destination {0:?} must name a tag, not a digest")]
    DigestDestination(String),
    /// The destination reference does not parse.
    #[error("destination")]
    Destination(#[source] RegistryError),
    /// A registry source needs a blob store to download into.
    #[error("no blob store configured for a registry source")]
    NoStore,
    /// The encryption worker failed.
    #[error("encryption task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Registry access and bounds for [`encrypt_image`].
#[derive(Clone, Default)]
pub struct EncryptOptions {
    /// Registries config (mirrors, insecure hosts, CAs), for the source and the destination.
    pub registries: RegistriesConfig,
    /// Registry credentials, for the source and the destination.
    pub credentials: Credentials,
    /// Where a registry source's layers are downloaded (and verified) first; required for a
    /// registry source.
    pub store: Option<Arc<BlobStore>>,
    /// Bounds on the source image (manifest, config, layer count and sizes).
    pub limits: Limits,
}

impl std::fmt::Debug for EncryptOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptOptions")
            .field("registries", &self.registries)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl EncryptOptions {
    /// Sets the registries config.
    pub fn with_registries(mut self, registries: RegistriesConfig) -> Self {
        self.registries = registries;
        self
    }

    /// Sets the blob store a registry source is downloaded into.
    pub fn with_store(mut self, store: Arc<BlobStore>) -> Self {
        self.store = Some(store);
        self
    }
}

/// Where the source image's blobs are read from (each is checked against its digest on read).
enum Blobs {
    Layout(PathBuf),
    Store {
        store: Arc<BlobStore>,
        config: (Digest, Vec<u8>),
    },
}

impl Blobs {
    fn read(&self, digest: &Digest) -> Result<Vec<u8>, EncryptError> {
        let path = match self {
            Self::Store { config, .. } if config.0 == *digest => return Ok(config.1.clone()),
            Self::Store { store, .. } => store.blob_path(digest),
            Self::Layout(dir) => dir.join("blobs/sha256").join(digest.hex()),
        };
        std::fs::read(&path).map_err(|source| EncryptError::Io {
            op: "reading",
            path,
            source,
        })
    }
}

enum Dest {
    Layout {
        dir: PathBuf,
        tag: String,
    },
    Registry {
        reference: String,
        target: oci_client::Reference,
    },
}

/// Encrypts every layer of the image at `from` that is not encrypted yet (a fresh key per layer,
/// wrapped for `recipients`) and writes the result to `to` as an OCI image manifest. Returns the
/// new manifest's digest.
pub async fn encrypt_image(
    from: &ImageLocation,
    to: &ImageLocation,
    recipients: Recipients,
    options: &EncryptOptions,
) -> Result<Digest, EncryptImageError> {
    if recipients.public_keys.is_empty() && recipients.kek.is_none() {
        return Err(EncryptError::NoRecipients.into());
    }
    let registry = Registry::new(options.registries.clone(), options.credentials.clone())
        .map_err(|e| EncryptImageError::Source(e.into()))?
        .with_stall(options.limits.stall);
    // The destination is checked before anything is fetched.
    let target = match to {
        ImageLocation::Registry(reference) => {
            let parsed = parse_reference(reference).map_err(EncryptImageError::Destination)?;
            if parsed.digest().is_some() {
                return Err(EncryptImageError::DigestDestination(reference.clone()));
            }
            Dest::Registry {
                reference: reference.clone(),
                target: parsed,
            }
        }
        ImageLocation::Layout { dir, tag } => Dest::Layout {
            dir: dir.clone(),
            tag: tag.clone(),
        },
    };

    let (manifest, blobs) = match from {
        ImageLocation::Layout { dir, tag } => {
            (read_layout_manifest(dir, tag)?, Blobs::Layout(dir.clone()))
        }
        ImageLocation::Registry(reference) => {
            let store = options.store.as_ref().ok_or(EncryptImageError::NoStore)?;
            fetch_source(&registry, reference, store, &options.limits)
                .await
                .map_err(EncryptImageError::Source)?
        }
    };
    let mut source = move |digest: &Digest| blobs.read(digest);

    let encrypted = match target {
        Dest::Layout { dir, tag } => tokio::task::spawn_blocking(move || {
            let mut out = LayoutWriter::create(&dir)?;
            let encrypted =
                encrypt_manifest(&manifest, &recipients, &mut source, &mut |digest, data| {
                    out.put(digest, &data)
                })?;
            out.finish(&encrypted, &tag)?;
            Ok::<_, EncryptError>(encrypted)
        })
        .await
        .map_err(EncryptImageError::Task)??,
        Dest::Registry { reference, target } => {
            let push_err = |source| EncryptImageError::Push {
                reference: reference.clone(),
                source,
            };
            // Encryption runs on a blocking thread and hands each finished blob to this task,
            // which uploads it while the next layer is encrypted.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(Digest, Vec<u8>)>(1);
            let worker = tokio::task::spawn_blocking(move || {
                encrypt_manifest(&manifest, &recipients, &mut source, &mut |digest, data| {
                    tx.blocking_send((digest.clone(), data))
                        .map_err(|_| EncryptError::SinkClosed)
                })
            });
            let pusher = async {
                while let Some((digest, data)) = rx.recv().await {
                    registry.push_blob(&target, &digest, &data).await?;
                    tracing::debug!(blob = %digest, "pushed");
                }
                Ok::<_, RegistryError>(())
            };
            let (pushed, encrypted) = tokio::join!(pusher, worker);
            // An upload failure closes the channel, which fails the worker: report the cause.
            pushed.map_err(push_err)?;
            let encrypted: EncryptedManifest = encrypted.map_err(EncryptImageError::Task)??;
            registry
                .push_manifest(&target, encrypted.bytes.clone(), encrypted.media_type)
                .await
                .map_err(push_err)?;
            encrypted
        }
    };
    tracing::info!(from = %from, to = %to, manifest = %encrypted.digest, "image encrypted");
    Ok(encrypted.digest)
}

/// Resolves `reference`, fetches its config and downloads every layer into the store (verified),
/// before any of it is used.
async fn fetch_source(
    registry: &Registry,
    reference: &str,
    store: &Arc<BlobStore>,
    limits: &Limits,
) -> Result<(Vec<u8>, Blobs), PullError> {
    let parsed = parse_reference(reference)?;
    let Resolved {
        source,
        manifest,
        bytes,
        ..
    } = resolve(registry, &parsed, limits).await?;
    let config = registry
        .small_blob(&source, &manifest.config, limits.max_config_bytes, "config")
        .await?;
    let downloads = spawn_downloads(
        registry,
        &source,
        &manifest.layers,
        store,
        limits.max_parallel_downloads,
        None,
    );
    let mut tasks: Vec<_> = downloads.into_iter().map(|d| Some(d.task)).collect();
    for index in 0..tasks.len() {
        let outcome = match tasks[index].take() {
            Some(task) => match task.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(PullError::Registry(err)),
                Err(err) => Err(PullError::Task(err)),
            },
            None => Ok(()),
        };
        if let Err(err) = outcome {
            cancel(&mut tasks).await;
            return Err(err);
        }
    }
    Ok((
        bytes,
        Blobs::Store {
            store: Arc::clone(store),
            config: (manifest.config.digest.clone(), config),
        },
    ))
}
