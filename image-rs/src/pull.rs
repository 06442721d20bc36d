//! The pull pipeline: manifest → config → parallel bounded downloads into the blob store →
//! in-order apply (verify digest, decrypt + HMAC, decompress, diff_id, safe unpack) into a
//! staging root → commit.

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Semaphore, oneshot};

use crate::config::{Credentials, Limits, RegistriesConfig};
use crate::decode::{
    BLOB_BUFFER, chunk_channel, decode_failed_in, decompress_stage, decrypt_stage,
};
use crate::decrypt::{DecryptError, Decryptor, LayerKey, decrypt_error_in};
use crate::digest::{Digest, HashingReader, limit_in};
use crate::manifest::{
    Descriptor, ImageConfig, ImageManifest, LayerKind, ManifestDoc, ManifestError,
};
use crate::policy::{Policy, PolicyError};
use crate::registry::{BlobProgress, LayerBlob, Registry, RegistryError, Source, parse_reference};
use crate::store::{BlobStore, download_failed_in};
use crate::unpack::{LayerStats, Quota, Staging, UnpackError, UnpackPolicy, apply_layer};

/// Why a pull failed. Nothing is left at the destination, and nothing unverified in the store.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Registry access or a download failed (includes blob digest/size mismatches).
    #[error("registry")]
    Registry(#[from] RegistryError),
    /// The manifest, index or config was refused.
    #[error("manifest")]
    Manifest(#[from] ManifestError),
    /// A layer key could not be obtained.
    #[error("layer {index} ({digest}) key")]
    LayerKey {
        /// Layer position, bottom = 0.
        index: usize,
        /// Layer digest.
        digest: Digest,
        /// Why.
        #[source]
        source: DecryptError,
    },
    /// The layer's uncompressed digest differs from the config's diff_id.
    #[error("layer {index} diff_id {actual} does not match the config's {expected}")]
    DiffId {
        /// Layer position.
        index: usize,
        /// From the config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// The stored blob no longer hashes to its digest.
    #[error("layer {index} blob digest {actual} does not match {expected}")]
    BlobDigest {
        /// Layer position.
        index: usize,
        /// From the manifest.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// Decryption failed mid-stream (the HMAC over the ciphertext).
    #[error("layer {index} ({digest}) decryption")]
    Decrypt {
        /// Layer position.
        index: usize,
        /// Layer digest.
        digest: Digest,
        /// Why.
        #[source]
        source: DecryptError,
    },
    /// The layer decompresses beyond the ratio/size bound (decompression bomb).
    #[error("layer {index} decompresses beyond {limit} bytes")]
    Bomb {
        /// Layer position.
        index: usize,
        /// The bound.
        limit: u64,
    },
    /// Decompression failed.
    #[error("layer {index} ({digest}) decompression")]
    Decompress {
        /// Layer position.
        index: usize,
        /// Layer digest.
        digest: Digest,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// The layer's tar was refused.
    #[error("layer {index} ({digest}) unpack")]
    Unpack {
        /// Layer position.
        index: usize,
        /// Layer digest.
        digest: Digest,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// Preparing or committing the destination failed.
    #[error("destination")]
    Destination(#[source] UnpackError),
    /// The image policy does not admit the image (nothing past the manifest was downloaded).
    #[error("image policy")]
    Policy(#[from] PolicyError),
    /// The download of a layer being applied failed; the pull reports the download's own
    /// error instead whenever it is known.
    #[error("layer {index} download failed")]
    Download {
        /// Layer position.
        index: usize,
    },
    /// A worker task failed.
    #[error("pull task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// The manifest was resolved.
    Manifest {
        /// Manifest digest.
        digest: Digest,
        /// Number of layers.
        layers: usize,
        /// Sum of compressed layer sizes.
        total_bytes: u64,
    },
    /// Bytes of one layer downloaded so far.
    Downloading {
        /// Layer position.
        index: usize,
        /// Bytes so far.
        bytes: u64,
        /// Layer size.
        total: u64,
    },
    /// A layer blob is in the store (`fetched` false if it was already there).
    Downloaded {
        /// Layer position.
        index: usize,
        /// Whether this pull downloaded it.
        fetched: bool,
    },
    /// A layer was verified and unpacked into the staging root.
    Applied {
        /// Layer position.
        index: usize,
    },
    /// The root was committed.
    Done,
}

/// Receives progress events (from several tasks; keep it cheap).
pub type ProgressSink = Arc<dyn Fn(ProgressEvent) + Send + Sync>;

/// Everything a pull needs besides the reference and destination.
#[derive(Clone)]
pub struct PullOptions {
    /// Registries config (mirrors, insecure hosts, CAs).
    pub registries: RegistriesConfig,
    /// Registry credentials.
    pub credentials: Credentials,
    /// The shared blob store.
    pub store: Arc<BlobStore>,
    /// Layer key sources for encrypted images.
    pub decryptor: Decryptor,
    /// Size and count bounds.
    pub limits: Limits,
    /// Unpack policy.
    pub unpack: UnpackPolicy,
    /// Progress events, if wanted.
    pub progress: Option<ProgressSink>,
    /// Signature policy; `None` admits every image (logged as a warning) unless
    /// `require_policy` is set.
    pub policy: Option<Arc<Policy>>,
    /// Refuse every pull when no policy is configured. Default false.
    pub require_policy: bool,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("registries", &self.registries)
            .field("limits", &self.limits)
            .field("unpack", &self.unpack)
            .finish_non_exhaustive()
    }
}

impl PullOptions {
    /// Options with defaults around `store`.
    pub fn new(store: Arc<BlobStore>) -> Self {
        Self {
            registries: RegistriesConfig::default(),
            credentials: Credentials::default(),
            store,
            decryptor: Decryptor::default(),
            limits: Limits::default(),
            unpack: UnpackPolicy::default(),
            progress: None,
            policy: None,
            require_policy: false,
        }
    }

    /// Replaces the registries configuration.
    pub fn with_registries(mut self, registries: RegistriesConfig) -> Self {
        self.registries = registries;
        self
    }
}

/// One layer of a pulled image.
#[derive(Debug, Clone)]
pub struct PulledLayer {
    /// Compressed (possibly encrypted) digest.
    pub digest: Digest,
    /// Uncompressed digest.
    pub diff_id: Digest,
    /// Media type.
    pub media_type: String,
    /// Whether it was encrypted.
    pub encrypted: bool,
    /// Whether this pull downloaded it (false: it was in the store).
    pub fetched: bool,
    /// What unpacking did.
    pub stats: LayerStats,
}

/// A successfully pulled image.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference as resolved (Docker defaults applied).
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: Digest,
    /// The image config JSON (verified).
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<PulledLayer>,
    /// The committed root filesystem.
    pub root: PathBuf,
}

/// An image manifest found through a reference's sources, digest-checked.
pub(crate) struct Resolved {
    /// The source that served it.
    pub(crate) source: Source,
    /// The linux/amd64 image manifest.
    pub(crate) manifest: ImageManifest,
    /// Digest of the image manifest.
    pub(crate) digest: Digest,
    /// The image manifest's bytes.
    pub(crate) bytes: Vec<u8>,
}

/// Finds `reference`'s image manifest (mirrors first, index → linux/amd64, pinned digests
/// checked) and applies the layer count and size limits.
pub(crate) async fn resolve(
    registry: &Registry,
    reference: &oci_client::Reference,
    limits: &Limits,
) -> Result<Resolved, PullError> {
    let pinned = reference
        .digest()
        .map(Digest::parse)
        .transpose()
        .map_err(|_| ManifestError::MediaType("non-sha256 pinned digest".to_owned()))?;
    let mut last = None;
    for source in registry.sources(reference) {
        match resolve_from(registry, &source, pinned.as_ref(), limits).await {
            Ok((manifest, digest, bytes)) => {
                check_limits(&manifest, limits)?;
                return Ok(Resolved {
                    source,
                    manifest,
                    digest,
                    bytes,
                });
            }
            Err(PullError::Registry(err)) => {
                tracing::warn!(source = %source.reference, error = %err, "source failed");
                last = Some(err);
            }
            Err(other) => return Err(other),
        }
    }
    Err(match last {
        Some(err) => RegistryError::AllSourcesFailed {
            reference: reference.whole(),
            source: Box::new(err),
        }
        .into(),
        None => ManifestError::NoPlatform.into(),
    })
}

async fn resolve_from(
    registry: &Registry,
    source: &Source,
    pinned: Option<&Digest>,
    limits: &Limits,
) -> Result<(ImageManifest, Digest, Vec<u8>), PullError> {
    let (bytes, digest) = registry
        .manifest(source, &source.reference, pinned, limits.max_manifest_bytes)
        .await?;
    match ManifestDoc::parse(&bytes)? {
        ManifestDoc::Image(m) => Ok((m, digest, bytes)),
        ManifestDoc::Index(entries) => {
            let entry = crate::manifest::select_linux_amd64(&entries)?;
            let child = source.reference.clone_with_digest(entry.digest.to_string());
            let (child_bytes, child_digest) = registry
                .manifest(
                    source,
                    &child,
                    Some(&entry.digest),
                    limits.max_manifest_bytes,
                )
                .await?;
            match ManifestDoc::parse(&child_bytes)? {
                ManifestDoc::Image(m) => Ok((m, child_digest, child_bytes)),
                ManifestDoc::Index(_) => {
                    Err(ManifestError::MediaType("index nested in an index".to_owned()).into())
                }
            }
        }
    }
}

fn check_limits(manifest: &ImageManifest, limits: &Limits) -> Result<(), PullError> {
    if manifest.layers.len() > limits.max_layers {
        return Err(ManifestError::TooManyLayers {
            count: manifest.layers.len(),
            limit: limits.max_layers,
        }
        .into());
    }
    for layer in &manifest.layers {
        if layer.size > limits.max_layer_bytes {
            return Err(RegistryError::TooLarge {
                what: "layer",
                limit: limits.max_layer_bytes,
            }
            .into());
        }
    }
    Ok(())
}

/// A layer download running as a task: whether it fetched the blob (false: already stored).
pub(crate) type Download = tokio::task::JoinHandle<Result<bool, RegistryError>>;

/// One layer's download task and where its blob can be read as soon as that is known.
pub(crate) struct LayerDownload {
    pub(crate) task: Download,
    pub(crate) ready: oneshot::Receiver<LayerBlob>,
}

/// Starts one download task per layer into `store`, at most `parallel` at a time, in order.
pub(crate) fn spawn_downloads(
    registry: &Registry,
    source: &Source,
    layers: &[Descriptor],
    store: &Arc<BlobStore>,
    parallel: usize,
    progress: Option<ProgressSink>,
) -> Vec<LayerDownload> {
    let semaphore = Arc::new(Semaphore::new(parallel.max(1)));
    let mut downloads = Vec::with_capacity(layers.len());
    for (index, layer) in layers.iter().cloned().enumerate() {
        let registry = registry.clone();
        let source = source.clone();
        let store = Arc::clone(store);
        let semaphore = Arc::clone(&semaphore);
        let progress = progress.clone();
        let (tx, ready) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let total = layer.size;
            let emit = |event| {
                if let Some(sink) = &progress {
                    sink(event);
                }
            };
            let report = |step| match step {
                BlobProgress::Received(bytes) => emit(ProgressEvent::Downloading {
                    index,
                    bytes,
                    total,
                }),
                BlobProgress::Verified => emit(ProgressEvent::Downloaded {
                    index,
                    fetched: true,
                }),
            };
            let fetched = registry
                .layer_blob(&source, &layer, &store, Some(tx), &report)
                .await?;
            if !fetched {
                emit(ProgressEvent::Downloaded {
                    index,
                    fetched: false,
                });
            }
            Ok(fetched)
        });
        downloads.push(LayerDownload { task, ready });
    }
    downloads
}

/// Pulls `reference` into `dest` (which must not exist or be an empty directory).
pub async fn pull(
    reference: &str,
    dest: &Path,
    options: &PullOptions,
) -> Result<PulledImage, PullError> {
    if options.require_policy && options.policy.is_none() {
        return Err(PolicyError::Missing.into());
    }
    let parsed = parse_reference(reference)?;
    let registry = Registry::new(options.registries.clone(), options.credentials.clone())?
        .with_stall(options.limits.stall);
    let limits = &options.limits;
    let emit = |event: ProgressEvent| {
        if let Some(sink) = &options.progress {
            sink(event);
        }
    };

    let Resolved {
        source,
        manifest,
        digest: manifest_digest,
        ..
    } = resolve(&registry, &parsed, limits).await?;
    let kinds = manifest
        .layers
        .iter()
        .map(|l| LayerKind::of(&l.media_type))
        .collect::<Result<Vec<_>, _>>()?;
    match &options.policy {
        Some(policy) => {
            policy
                .admit(&registry, &source, &parsed, &manifest_digest)
                .await?
        }
        None => {
            tracing::warn!(reference = %parsed, "no image policy configured: signatures not checked")
        }
    }
    emit(ProgressEvent::Manifest {
        digest: manifest_digest.clone(),
        layers: manifest.layers.len(),
        total_bytes: manifest.layers.iter().map(|l| l.size).sum(),
    });

    let config_bytes = registry
        .small_blob(&source, &manifest.config, limits.max_config_bytes, "config")
        .await?;
    let config = ImageConfig::parse(&config_bytes, manifest.layers.len())?;

    // Keys first: a missing key fails before any layer is downloaded.
    let mut keys = Vec::with_capacity(manifest.layers.len());
    for (index, (layer, kind)) in manifest.layers.iter().zip(&kinds).enumerate() {
        keys.push(if kind.encrypted {
            Some(
                options
                    .decryptor
                    .layer_key(&layer.annotations)
                    .await
                    .map_err(|source| PullError::LayerKey {
                        index,
                        digest: layer.digest.clone(),
                        source,
                    })?,
            )
        } else {
            None
        });
    }

    let staging = Staging::new(dest).map_err(PullError::Destination)?;

    // Downloads run as tasks (bounded); layers are applied in order as they arrive.
    let downloads = spawn_downloads(
        &registry,
        &source,
        &manifest.layers,
        &options.store,
        limits.max_parallel_downloads,
        options.progress.clone(),
    );
    let (tasks, readies): (Vec<_>, Vec<_>) = downloads
        .into_iter()
        .map(|d| (Some(d.task), d.ready))
        .unzip();
    // A pull dropped mid-way (cancelled, e.g. by a signal) aborts its downloads: each removes
    // its temporary blob, and the layer being applied then fails and drops the staging root.
    let mut tasks = AbortOnDrop(tasks);

    // Layer i is applied while it downloads (from a reader that ends only once the blob is
    // verified) or from the store, after layer i-1; syncing blobs to disk overlaps the next
    // layers. Everything lands in the staging root, which becomes visible only at commit.
    let staging = Arc::new(staging);
    let mut quota = Quota::new(limits.max_unpacked_bytes);
    let mut applied = Vec::with_capacity(manifest.layers.len());
    for (index, ((ready, key), layer)) in readies
        .into_iter()
        .zip(keys)
        .zip(&manifest.layers)
        .enumerate()
    {
        let blob = match ready.await {
            Ok(blob) => blob,
            // The task ended before the blob could be read: its error says why.
            Err(_) => {
                let err = download_error(&mut tasks, index).await;
                cancel(&mut tasks).await;
                return Err(err);
            }
        };
        let job = LayerJob {
            index,
            digest: layer.digest.clone(),
            diff_id: config.rootfs.diff_ids[index].clone(),
            blob: Some(blob),
            kind: kinds[index],
            key,
            stream_limit: layer
                .size
                .saturating_mul(limits.max_ratio)
                .max(limits.ratio_floor_bytes),
            policy: options.unpack.clone(),
        };
        let staging_ref = Arc::clone(&staging);
        let result = tokio::task::spawn_blocking(move || {
            let outcome = job.apply(&staging_ref, &mut quota);
            (outcome, quota)
        })
        .await;
        let (outcome, returned) = match result {
            Ok(pair) => pair,
            Err(err) => {
                cancel(&mut tasks).await;
                return Err(PullError::Task(err));
            }
        };
        quota = returned;
        match outcome {
            Ok(stats) => applied.push(stats),
            Err(err) => {
                // When the reader saw the download fail, report the download's own error.
                let err = match err {
                    PullError::Download { .. } => download_error(&mut tasks, index).await,
                    other => other,
                };
                cancel(&mut tasks).await;
                return Err(err);
            }
        }
        emit(ProgressEvent::Applied { index });
    }
    // Every blob this pull downloaded must also be durably in the store.
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (index, stats) in applied.into_iter().enumerate() {
        let fetched = match tasks[index].take() {
            Some(task) => match task.await {
                Ok(Ok(fetched)) => fetched,
                Ok(Err(err)) => {
                    cancel(&mut tasks).await;
                    return Err(err.into());
                }
                Err(err) => {
                    cancel(&mut tasks).await;
                    return Err(PullError::Task(err));
                }
            },
            None => return Err(PullError::Download { index }),
        };
        let layer = &manifest.layers[index];
        layers.push(PulledLayer {
            digest: layer.digest.clone(),
            diff_id: config.rootfs.diff_ids[index].clone(),
            media_type: layer.media_type.clone(),
            encrypted: kinds[index].encrypted,
            fetched,
            stats,
        });
    }
    let staging = Arc::into_inner(staging)
        .ok_or_else(|| PullError::Destination(UnpackError::DestinationExists(dest.to_owned())))?;
    tokio::task::spawn_blocking(move || staging.commit())
        .await
        .map_err(PullError::Task)?
        .map_err(PullError::Destination)?;
    emit(ProgressEvent::Done);
    tracing::info!(reference = %parsed, manifest = %manifest_digest, "image pulled");
    Ok(PulledImage {
        reference: parsed.whole(),
        manifest_digest,
        config: config_bytes,
        layers,
        root: dest.to_owned(),
    })
}

/// Download tasks aborted when dropped (a `JoinHandle` alone would let them run on).
struct AbortOnDrop(Vec<Option<Download>>);

impl std::ops::Deref for AbortOnDrop {
    type Target = Vec<Option<Download>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for AbortOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in self.0.iter().flatten() {
            task.abort();
        }
    }
}

/// The error of layer `index`'s download task, which failed (or [`PullError::Download`] if it
/// did not).
async fn download_error(tasks: &mut [Option<Download>], index: usize) -> PullError {
    match tasks.get_mut(index).and_then(Option::take) {
        Some(task) => match task.await {
            Ok(Err(err)) => err.into(),
            Err(err) => PullError::Task(err),
            Ok(Ok(_)) => PullError::Download { index },
        },
        None => PullError::Download { index },
    }
}

/// Cancels the downloads still running and waits until they are gone, so a cancelled download's
/// temporary file is removed before the pull returns.
pub(crate) async fn cancel(tasks: &mut [Option<Download>]) {
    for task in tasks.iter().flatten() {
        task.abort();
    }
    for task in tasks.iter_mut() {
        if let Some(task) = task.take() {
            // Cancelled or finished: either way it is gone.
            let _ = task.await;
        }
    }
}

struct LayerJob {
    index: usize,
    blob: Option<LayerBlob>,
    digest: Digest,
    diff_id: Digest,
    kind: LayerKind,
    key: Option<LayerKey>,
    stream_limit: u64,
    policy: UnpackPolicy,
}

impl LayerJob {
    fn apply(mut self, staging: &Staging, quota: &mut Quota) -> Result<LayerStats, PullError> {
        let index = self.index;
        let digest = self.digest.clone();
        let decompress_err = |source: io::Error| -> PullError {
            if download_failed_in(&source) {
                return PullError::Download { index };
            }
            if let Some(limit) = limit_in(&source) {
                return PullError::Bomb { index, limit };
            }
            if let Some(d) = decrypt_error_in(&source) {
                return PullError::Decrypt {
                    index,
                    digest: digest.clone(),
                    source: d.duplicate(),
                };
            }
            PullError::Decompress {
                index,
                digest: digest.clone(),
                source,
            }
        };
        let unpack_err = |source: UnpackError| -> PullError {
            match source {
                UnpackError::Archive(io)
                    if limit_in(&io).is_some()
                        || decrypt_error_in(&io).is_some()
                        || download_failed_in(&io)
                        || decode_failed_in(&io) =>
                {
                    decompress_err(io)
                }
                source => PullError::Unpack {
                    index,
                    digest: digest.clone(),
                    source,
                },
            }
        };
        // A blob this pull is downloading was verified by the download when the reader ends;
        // a blob from the store is hashed again while it is read.
        let mut blob = match self.blob.take() {
            Some(LayerBlob::Downloading(reader)) => HashingReader::counting(
                Box::new(io::BufReader::with_capacity(BLOB_BUFFER, reader)) as Box<dyn Read + Send>,
                u64::MAX,
            ),
            Some(LayerBlob::Stored(path)) => {
                let file = std::fs::File::open(&path).map_err(|source| PullError::Decompress {
                    index,
                    digest: digest.clone(),
                    source,
                })?;
                HashingReader::new(
                    Box::new(io::BufReader::with_capacity(BLOB_BUFFER, file))
                        as Box<dyn Read + Send>,
                    u64::MAX,
                )
            }
            None => return Err(PullError::Download { index }),
        };
        let stats = {
            // blob → decrypt (encrypted layers) → decompress → unpack: the first two stages run
            // on threads of their own, concurrently with hashing and unpacking the tar stream on
            // this one.
            let key = self.key.take();
            let compression = self.kind.compression;
            let (unpacked, decompressed, decrypted) = std::thread::scope(|scope| {
                let (decrypter, plain): (_, Box<dyn BufRead + Send + '_>) = match key {
                    Some(key) => {
                        let (out, plain) = chunk_channel();
                        let ciphertext = &mut blob;
                        (
                            Some(scope.spawn(move || decrypt_stage(ciphertext, key, out))),
                            Box::new(plain),
                        )
                    }
                    None => (
                        None,
                        Box::new(io::BufReader::with_capacity(BLOB_BUFFER, &mut blob)),
                    ),
                };
                let (out, mut decoded) = chunk_channel();
                let decoder = scope.spawn(move || decompress_stage(plain, compression, out));
                let unpacked =
                    self.unpack_stream(&mut decoded, staging, quota, &decompress_err, &unpack_err);
                // Stops the decoder if the unpacker gave up early; the blob is still drained.
                drop(decoded);
                let stage = |joined: std::thread::Result<io::Result<()>>, what: &str| {
                    joined.unwrap_or_else(|_| {
                        Err(io::Error::other(format!("{what} thread panicked")))
                    })
                };
                let decompressed = stage(decoder.join(), "decompress");
                let decrypted = decrypter.map(|t| stage(t.join(), "decrypt"));
                (unpacked, decompressed, decrypted)
            });
            // The blob was read to its end (by the decrypt stage, or by the decompress stage's
            // drain), so the HMAC is always checked, and checked first: a tampered ciphertext
            // reports as such even when it already broke the decompressor or the tar parser.
            // The blob not being the manifest's (the download failed verification) comes before
            // that.
            let download_failed = |r: &io::Result<()>| matches!(r, Err(e) if download_failed_in(e));
            if download_failed(&decompressed) || decrypted.as_ref().is_some_and(download_failed) {
                return Err(PullError::Download { index });
            }
            if let Some(Err(e)) = decrypted {
                return Err(decompress_err(e));
            }
            match (unpacked, decompressed) {
                (_, Err(e)) if decrypt_error_in(&e).is_some() => return Err(decompress_err(e)),
                (Err(e), _) => return Err(e),
                (Ok(_), Err(e)) => return Err(decompress_err(e)),
                (Ok(stats), Ok(_)) => stats,
            }
        };
        let (actual, _, _) = blob.finish().map_err(decompress_err)?;
        if let Some(actual) = actual
            && actual != self.digest
        {
            return Err(PullError::BlobDigest {
                index,
                expected: self.digest,
                actual,
            });
        }
        Ok(stats)
    }
}

impl LayerJob {
    fn unpack_stream(
        &self,
        decoded: &mut dyn Read,
        staging: &Staging,
        quota: &mut Quota,
        decompress_err: &dyn Fn(io::Error) -> PullError,
        unpack_err: &dyn Fn(UnpackError) -> PullError,
    ) -> Result<LayerStats, PullError> {
        let mut tar_stream = HashingReader::new(decoded, self.stream_limit);
        let stats = apply_layer(staging.root(), &mut tar_stream, &self.policy, quota)
            .map_err(unpack_err)?;
        let (actual, _, nonzero) = tar_stream.finish().map_err(decompress_err)?;
        if nonzero {
            return Err(unpack_err(UnpackError::TrailingData));
        }
        let Some(actual) = actual else {
            return Err(decompress_err(io::Error::other(
                "layer stream was not hashed",
            )));
        };
        if actual != self.diff_id {
            return Err(PullError::DiffId {
                index: self.index,
                expected: self.diff_id.clone(),
                actual,
            });
        }
        Ok(stats)
    }
}
