//! The pull pipeline: manifest → config → parallel bounded downloads into the blob store →
//! in-order apply (verify digest, decrypt + HMAC, decompress, diff_id, safe unpack) into a
//! staging root → commit.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::{Credentials, Limits, RegistriesConfig};
use crate::decrypt::{DecryptError, Decryptor, LayerKey, decrypt_error_in};
use crate::digest::{Digest, HashingReader, limit_in};
use crate::manifest::{
    Compression, ImageConfig, ImageManifest, LayerKind, ManifestDoc, ManifestError,
};
use crate::policy::{Policy, PolicyError};
use crate::registry::{Registry, RegistryError, Source, parse_reference};
use crate::store::BlobStore;
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
    /// Decryption failed mid-stream (HMAC or plaintext digest).
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

struct Resolved {
    source: Source,
    manifest: ImageManifest,
    digest: Digest,
}

async fn resolve(
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
            Ok((manifest, digest)) => {
                return Ok(Resolved {
                    source,
                    manifest,
                    digest,
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
) -> Result<(ImageManifest, Digest), PullError> {
    let (bytes, digest) = registry
        .manifest(source, &source.reference, pinned, limits.max_manifest_bytes)
        .await?;
    match ManifestDoc::parse(&bytes)? {
        ManifestDoc::Image(m) => Ok((m, digest)),
        ManifestDoc::Index(entries) => {
            let entry = crate::manifest::select_linux_amd64(&entries)?;
            let child = source.reference.clone_with_digest(entry.digest.to_string());
            let (bytes, digest) = registry
                .manifest(
                    source,
                    &child,
                    Some(&entry.digest),
                    limits.max_manifest_bytes,
                )
                .await?;
            match ManifestDoc::parse(&bytes)? {
                ManifestDoc::Image(m) => Ok((m, digest)),
                ManifestDoc::Index(_) => {
                    Err(ManifestError::MediaType("index nested in an index".to_owned()).into())
                }
            }
        }
    }
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
    let registry = Registry::new(options.registries.clone(), options.credentials.clone())?;
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
    } = resolve(&registry, &parsed, limits).await?;
    if manifest.layers.len() > limits.max_layers {
        return Err(ManifestError::TooManyLayers {
            count: manifest.layers.len(),
            limit: limits.max_layers,
        }
        .into());
    }
    let kinds = manifest
        .layers
        .iter()
        .map(|l| LayerKind::of(&l.media_type))
        .collect::<Result<Vec<_>, _>>()?;
    for layer in &manifest.layers {
        if layer.size > limits.max_layer_bytes {
            return Err(RegistryError::TooLarge {
                what: "layer",
                limit: limits.max_layer_bytes,
            }
            .into());
        }
    }
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
    let semaphore = Arc::new(Semaphore::new(limits.max_parallel_downloads.max(1)));
    let mut downloads = Vec::with_capacity(manifest.layers.len());
    for (index, layer) in manifest.layers.iter().cloned().enumerate() {
        let registry = registry.clone();
        let source = source.clone();
        let store = Arc::clone(&options.store);
        let semaphore = Arc::clone(&semaphore);
        let progress = options.progress.clone();
        downloads.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let total = layer.size;
            let report = move |bytes| {
                if let Some(sink) = &progress {
                    sink(ProgressEvent::Downloading {
                        index,
                        bytes,
                        total,
                    });
                }
            };
            registry.layer_blob(&source, &layer, &store, &report).await
        }));
    }
    let aborts: Vec<_> = downloads.iter().map(|h| h.abort_handle()).collect();
    let abort_all = || aborts.iter().for_each(|a| a.abort());

    let staging = Arc::new(staging);
    let mut quota = Quota::new(limits.max_unpacked_bytes);
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (index, ((handle, key), layer)) in downloads
        .into_iter()
        .zip(keys)
        .zip(&manifest.layers)
        .enumerate()
    {
        let fetched = match handle.await {
            Ok(Ok(fetched)) => fetched,
            Ok(Err(err)) => {
                abort_all();
                return Err(err.into());
            }
            Err(err) => {
                abort_all();
                return Err(PullError::Task(err));
            }
        };
        emit(ProgressEvent::Downloaded { index, fetched });
        let job = LayerJob {
            index,
            blob: options.store.blob_path(&layer.digest),
            digest: layer.digest.clone(),
            diff_id: config.rootfs.diff_ids[index].clone(),
            fresh: fetched,
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
                abort_all();
                return Err(PullError::Task(err));
            }
        };
        quota = returned;
        let stats = match outcome {
            Ok(stats) => stats,
            Err(err) => {
                abort_all();
                return Err(err);
            }
        };
        emit(ProgressEvent::Applied { index });
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

struct LayerJob {
    index: usize,
    blob: PathBuf,
    digest: Digest,
    diff_id: Digest,
    kind: LayerKind,
    key: Option<LayerKey>,
    stream_limit: u64,
    policy: UnpackPolicy,
    /// Whether this pull downloaded (and so just verified) the blob; blobs taken from the
    /// store are re-hashed while they are applied.
    fresh: bool,
}

impl LayerJob {
    fn apply(mut self, staging: &Staging, quota: &mut Quota) -> Result<LayerStats, PullError> {
        let index = self.index;
        let digest = self.digest.clone();
        let decompress_err = |source: io::Error| -> PullError {
            if let Some(limit) = limit_in(&source) {
                return PullError::Bomb { index, limit };
            }
            if let Some(d) = decrypt_error_in(&source) {
                return PullError::Decrypt {
                    index,
                    digest: digest.clone(),
                    source: clone_decrypt(d),
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
                    if limit_in(&io).is_some() || decrypt_error_in(&io).is_some() =>
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
        let file = std::fs::File::open(&self.blob).map_err(|source| PullError::Decompress {
            index,
            digest: digest.clone(),
            source,
        })?;
        let buffered = io::BufReader::with_capacity(256 * 1024, file);
        let mut blob = if self.fresh {
            HashingReader::counting(buffered, u64::MAX)
        } else {
            HashingReader::new(buffered, u64::MAX)
        };
        let stats = {
            let mut plain: Box<dyn Read + '_> = match self.key.take() {
                Some(key) => Box::new(key.decrypting_reader(&mut blob)),
                None => Box::new(&mut blob),
            };
            let unpacked =
                self.unpack_stream(&mut plain, staging, quota, &decompress_err, &unpack_err);
            // Read the (decrypted) blob to its end so the HMAC is always checked, and checked
            // first: a tampered ciphertext reports as such even when it already broke the
            // decompressor or the tar parser.
            let drained = io::copy(&mut plain, &mut io::sink());
            match (unpacked, drained) {
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
        plain: &mut dyn Read,
        staging: &Staging,
        quota: &mut Quota,
        decompress_err: &dyn Fn(io::Error) -> PullError,
        unpack_err: &dyn Fn(UnpackError) -> PullError,
    ) -> Result<LayerStats, PullError> {
        let decoded: Box<dyn Read + '_> = match self.kind.compression {
            Compression::None => Box::new(plain),
            Compression::Gzip => {
                Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(plain)))
            }
            Compression::Zstd => {
                let mut decoder =
                    zstd::stream::read::Decoder::new(plain).map_err(decompress_err)?;
                decoder.window_log_max(27).map_err(decompress_err)?;
                Box::new(decoder)
            }
        };
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

fn clone_decrypt(err: &DecryptError) -> DecryptError {
    match err {
        DecryptError::MacMismatch => DecryptError::MacMismatch,
        DecryptError::PlaintextDigest { expected, actual } => DecryptError::PlaintextDigest {
            expected: expected.clone(),
            actual: actual.clone(),
        },
        other => DecryptError::Unwrapper(other.to_string()),
    }
}
