//! Talking to registries through `oci-client`: source selection (mirrors, insecure hosts),
//! authentication, bounded manifest/config fetches and streamed blob downloads into the store.
//! Manifests are fetched with our own request (oci-client's token, our HTTP client) because
//! oci-client reads a manifest's whole body before anyone can check its size (REG-03); that client
//! follows at most five redirects and never one from HTTPS to plain HTTP (REG-07).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use oci_client::RegistryOperation;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::config::{Credential, Credentials, RegistriesConfig};
use crate::digest::Digest;
use crate::manifest::{ACCEPTED_MANIFESTS, Descriptor};
use crate::store::{BlobStore, FollowReader, Slot, StoreError};

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// The parser's complaint.
        #[source]
        source: oci_client::ParseError,
    },
    /// A CA file could not be read.
    #[error("reading CA file {path:?}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The registry request failed (network, HTTP status, auth).
    #[error("registry request for {what} of {reference} failed")]
    Request {
        /// What was fetched.
        what: &'static str,
        /// From where.
        reference: String,
        /// The client's error.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// The registry answered a manifest request with an error status.
    #[error("registry answered {status} for the {what} of {reference}")]
    Status {
        /// What was fetched.
        what: &'static str,
        /// From where.
        reference: String,
        /// The HTTP status.
        status: u16,
    },
    /// A manifest request failed in transport (connection, TLS, redirect, timeout).
    #[error("fetching the {what} of {reference} failed")]
    Transport {
        /// What was fetched.
        what: &'static str,
        /// From where.
        reference: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A download broke off mid-stream.
    #[error("download of {digest} broke off")]
    Stream {
        /// The blob.
        digest: Digest,
        /// The transport error.
        #[source]
        source: std::io::Error,
    },
    /// A document exceeded its size limit.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Which document.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The manifest's digest is not the pinned one (or the one the index names).
    #[error("manifest digest {actual} does not match {expected}")]
    ManifestDigest {
        /// Pinned or indexed digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A blob download made too little progress: fewer than [`Stall::min_bytes`] arrived within
    /// one [`Stall::window`] (a slow or silent registry, REG-07).
    #[error(
        "download of {digest} from {registry} stalled: fewer than {min_bytes} bytes in {window:?} \
         ({received} bytes received)"
    )]
    Stalled {
        /// The registry host (`host[:port]`) that served it.
        registry: String,
        /// The blob.
        digest: Digest,
        /// The stall window.
        window: Duration,
        /// The least progress per window.
        min_bytes: u64,
        /// Bytes of the blob received before the cut-off.
        received: u64,
    },
    /// Storing the blob failed (includes digest and size mismatches).
    #[error("storing blob")]
    Store(#[from] StoreError),
    /// Every source (mirrors, then the registry) failed; the last error is the source.
    #[error("no source could serve {reference}")]
    AllSourcesFailed {
        /// The reference.
        reference: String,
        /// The last failure.
        #[source]
        source: Box<RegistryError>,
    },
}

/// What a failed registry request most likely came from, for callers that explain failures to
/// people (the guest does not: it reports the error as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The registry wants credentials, or refused the ones given (HTTP 401).
    Unauthorized,
    /// A TLS handshake met a plain-HTTP answer: the registry does not speak HTTPS.
    PlainHttp,
}

impl RegistryError {
    /// The likely cause of this failure, when it is one of the common ones.
    pub fn cause(&self) -> Option<FailureCause> {
        use oci_client::errors::OciDistributionError as Oci;
        match self {
            Self::Status { status: 401, .. } => Some(FailureCause::Unauthorized),
            Self::Request { source, .. } => match source {
                Oci::UnauthorizedError { .. } | Oci::AuthenticationFailure(_) => {
                    Some(FailureCause::Unauthorized)
                }
                Oci::ServerError { code: 401, .. } => Some(FailureCause::Unauthorized),
                other => plain_http(other),
            },
            Self::Transport { source, .. } => plain_http(source),
            Self::AllSourcesFailed { source, .. } => source.cause(),
            _ => None,
        }
    }

    /// The registry host (`host[:port]`) of the request that failed, when the error names one.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::Request { reference, .. }
            | Self::Status { reference, .. }
            | Self::Transport { reference, .. } => reference.split('/').next(),
            Self::AllSourcesFailed { source, .. } => source.host(),
            _ => None,
        }
    }
}

/// [`FailureCause::PlainHttp`] when `err`'s chain holds rustls' complaint about a non-TLS record
/// (as the TLS stack reports it: inside one or more `io::Error`s, which hide it from `source()`).
fn plain_http(err: &(dyn std::error::Error + 'static)) -> Option<FailureCause> {
    fn not_tls(mut e: &(dyn std::error::Error + 'static)) -> bool {
        while let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            e = inner;
        }
        matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
        )
    }
    std::iter::successors(Some(err), |e| e.source())
        .any(not_tls)
        .then_some(FailureCause::PlainHttp)
}

/// A place an image can be fetched from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The reference, rewritten to a mirror host where applicable.
    pub reference: Reference,
    auth: RegistryAuth,
}

/// A configured registry client.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    lookaside: reqwest::Client,
    /// Hosts (`host[:port]`) reached over plain HTTP.
    insecure: Arc<Vec<String>>,
    /// [`Registry::pull_token`]'s answers, per `registry/repository`.
    tokens: Arc<Mutex<HashMap<String, Option<String>>>>,
    config: Arc<RegistriesConfig>,
    credentials: Arc<Credentials>,
    stall: Stall,
}

/// When a blob download counts as stalled: fewer than `min_bytes` bytes arrive within `window`
/// (the response headers within one window too). A registry that sends nothing, or trickles a
/// byte now and then (each read on its own would meet a per-read timeout), is cut off after one
/// window; a download keeps going as long as every window brings `min_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The window. Default 60 s.
    pub window: Duration,
    /// Least bytes per window. Default 1 KiB.
    pub min_bytes: u64,
}

impl Default for Stall {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            min_bytes: 1024,
        }
    }
}

/// The progress of one download against its [`Stall`] bound.
struct StallWatch {
    stall: Stall,
    window_start: tokio::time::Instant,
    window_bytes: u64,
}

impl StallWatch {
    fn new(stall: Stall) -> Self {
        Self {
            stall,
            window_start: tokio::time::Instant::now(),
            window_bytes: 0,
        }
    }

    /// When the current window ends.
    fn deadline(&self) -> tokio::time::Instant {
        self.window_start + self.stall.window
    }

    /// Counts `bytes`; a window that reached the minimum starts the next one.
    fn observe(&mut self, bytes: usize) {
        self.window_bytes = self.window_bytes.saturating_add(bytes as u64);
        if self.window_bytes >= self.stall.min_bytes {
            self.window_start = tokio::time::Instant::now();
            self.window_bytes = 0;
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Parses a Docker-style reference (`alpine` → `docker.io/library/alpine:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    reference
        .parse::<Reference>()
        .map_err(|source| RegistryError::Reference {
            reference: reference.to_owned(),
            source,
        })
}

impl Registry {
    /// Builds a client: HTTPS with the extra CAs, plain HTTP only for hosts marked insecure.
    pub fn new(config: RegistriesConfig, credentials: Credentials) -> Result<Self, RegistryError> {
        let mut extra = Vec::new();
        let mut lookaside = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(60))
            .redirect(redirect_policy());
        for path in &config.ca_files {
            let data = std::fs::read(path).map_err(|source| RegistryError::CaFile {
                path: path.clone(),
                source,
            })?;
            let cert =
                reqwest::Certificate::from_pem(&data).map_err(|e| RegistryError::CaFile {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
            lookaside = lookaside.add_root_certificate(cert);
            extra.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let insecure = config.insecure_hosts();
        for host in &insecure {
            tracing::warn!(registry = %host, "INSECURE: plain HTTP enabled for this registry");
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure.clone()),
            extra_root_certificates: extra,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        let lookaside = lookaside.build().map_err(|e| RegistryError::CaFile {
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(e),
        })?;
        Ok(Self {
            client,
            lookaside,
            insecure: Arc::new(insecure),
            tokens: Arc::default(),
            config: Arc::new(config),
            credentials: Arc::new(credentials),
            stall: Stall::default(),
        })
    }

    /// Replaces the blob downloads' stall bound.
    pub fn with_stall(mut self, stall: Stall) -> Self {
        self.stall = stall;
        self
    }

    fn stalled(&self, source: &Source, digest: &Digest, received: u64) -> RegistryError {
        RegistryError::Stalled {
            registry: source.reference.resolve_registry().to_owned(),
            digest: digest.clone(),
            window: self.stall.window,
            min_bytes: self.stall.min_bytes,
            received,
        }
    }

    /// The next chunk of a blob download, or [`RegistryError::Stalled`] when `watch`'s window
    /// ends first.
    async fn next_chunk<S, B>(
        &self,
        stream: &mut S,
        watch: &mut StallWatch,
        source: &Source,
        digest: &Digest,
        received: u64,
    ) -> Result<Option<B>, RegistryError>
    where
        S: futures::Stream<Item = Result<B, std::io::Error>> + Unpin,
        B: AsRef<[u8]>,
    {
        let next = tokio::time::timeout_at(watch.deadline(), stream.next())
            .await
            .map_err(|_| self.stalled(source, digest, received))?;
        match next {
            None => Ok(None),
            Some(chunk) => {
                let chunk = chunk.map_err(|source| stream_error(digest, source))?;
                watch.observe(chunk.as_ref().len());
                Ok(Some(chunk))
            }
        }
    }

    /// The HTTP client for manifests and lookaside signature storage (same extra CAs).
    pub(crate) fn lookaside_client(&self) -> &reqwest::Client {
        &self.lookaside
    }

    /// The bearer token, if the registry wants one, for pulling from `reference`'s repository.
    /// `Client::auth` goes back to the registry on every call, so its answer is kept per
    /// repository for this client's life (one pull, signing or encryption: minutes at most).
    async fn pull_token(
        &self,
        source: &Source,
        reference: &Reference,
    ) -> Result<Option<String>, oci_client::errors::OciDistributionError> {
        let key = format!(
            "{}/{}",
            reference.resolve_registry(),
            reference.repository()
        );
        if let Some(token) = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned()) {
            return Ok(token);
        }
        let token = self
            .client
            .auth(reference, &source.auth, RegistryOperation::Pull)
            .await?;
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key, token.clone());
        }
        Ok(token)
    }

    /// The URL of `reference`'s manifest: HTTPS unless its host is configured insecure.
    fn manifest_url(&self, reference: &Reference) -> String {
        let host = reference.resolve_registry();
        let scheme = if self.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        let tag_or_digest = reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest"));
        let ns = reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!(
            "{scheme}://{host}/v2/{}/manifests/{tag_or_digest}{ns}",
            reference.repository()
        )
    }

    /// The lookaside base configured for `host`.
    pub(crate) fn lookaside_for(&self, host: &str) -> Option<&str> {
        self.config.entry(host).and_then(|e| e.lookaside.as_deref())
    }

    fn auth_for(&self, host: &str) -> RegistryAuth {
        match self.credentials.get(host) {
            Some(Credential::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.as_str().to_owned())
            }
            Some(Credential::Bearer(token)) => RegistryAuth::Bearer(token.as_str().to_owned()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// The sources for `reference`: configured mirrors in order, then the registry itself.
    pub fn sources(&self, reference: &Reference) -> Vec<Source> {
        let mut out = Vec::new();
        if let Some(entry) = self.config.entry(reference.registry()) {
            for mirror in &entry.mirrors {
                let rewritten = match reference.digest() {
                    Some(d) => Reference::with_digest(
                        mirror.host.clone(),
                        reference.repository().to_owned(),
                        d.to_owned(),
                    ),
                    None => Reference::with_tag(
                        mirror.host.clone(),
                        reference.repository().to_owned(),
                        reference.tag().unwrap_or("latest").to_owned(),
                    ),
                };
                out.push(Source {
                    auth: self.auth_for(&mirror.host),
                    reference: rewritten,
                });
            }
        }
        out.push(Source {
            auth: self.auth_for(reference.registry()),
            reference: reference.clone(),
        });
        out
    }

    /// Fetches the manifest bytes of `reference` from `source` (bounded), checks them against
    /// `expected` (a pinned or indexed digest) and returns them with their digest.
    pub async fn manifest(
        &self,
        source: &Source,
        reference: &Reference,
        expected: Option<&Digest>,
        limit: u64,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        const WHAT: &str = "manifest";
        let transport = |source| RegistryError::Transport {
            what: WHAT,
            reference: reference.whole(),
            source,
        };
        // oci-client does the token dance (and keeps the token for the blob requests); the
        // manifest itself is fetched here so that its body is read only up to `limit`.
        let token =
            self.pull_token(source, reference)
                .await
                .map_err(|err| RegistryError::Request {
                    what: WHAT,
                    reference: reference.whole(),
                    source: err,
                })?;
        let mut request = self
            .lookaside
            .get(self.manifest_url(reference))
            .header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        request = match (&token, &source.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(RegistryError::Status {
                what: WHAT,
                reference: reference.whole(),
                status: status.as_u16(),
            });
        }
        let too_large = RegistryError::TooLarge { what: WHAT, limit };
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large);
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(too_large);
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(RegistryError::ManifestDigest {
                expected: expected.clone(),
                actual,
            });
        }
        Ok((bytes, actual))
    }

    /// Downloads a small blob (the config) into memory, verified and bounded.
    pub async fn small_blob(
        &self,
        source: &Source,
        descriptor: &Descriptor,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, RegistryError> {
        if descriptor.size > limit {
            return Err(RegistryError::TooLarge { what, limit });
        }
        let mut watch = StallWatch::new(self.stall);
        let mut stream = self.blob_stream(source, descriptor, what).await?;
        let mut out = Vec::new();
        while let Some(chunk) = self
            .next_chunk(
                &mut stream,
                &mut watch,
                source,
                &descriptor.digest,
                out.len() as u64,
            )
            .await?
        {
            if (out.len() + chunk.len()) as u64 > descriptor.size {
                return Err(StoreError::SizeMismatch {
                    digest: descriptor.digest.clone(),
                    expected: descriptor.size,
                    actual: (out.len() + chunk.len()) as u64,
                }
                .into());
            }
            out.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&out);
        if actual != descriptor.digest || out.len() as u64 != descriptor.size {
            return Err(StoreError::DigestMismatch {
                expected: descriptor.digest.clone(),
                actual,
            }
            .into());
        }
        Ok(out)
    }

    async fn blob_stream(
        &self,
        source: &Source,
        descriptor: &Descriptor,
        what: &'static str,
    ) -> Result<oci_client::client::SizedStream, RegistryError> {
        let desc = OciDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.to_string(),
            size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        // Make sure a token exists for this repository before the blob request.
        self.client
            .store_auth_if_needed(source.reference.resolve_registry(), &source.auth)
            .await;
        // The response headers, too, must come within one stall window.
        tokio::time::timeout(
            self.stall.window,
            self.client.pull_blob_stream(&source.reference, &desc),
        )
        .await
        .map_err(|_| self.stalled(source, &descriptor.digest, 0))?
        .map_err(|err| RegistryError::Request {
            what,
            reference: source.reference.whole(),
            source: err,
        })
    }

    /// Uploads one blob to `target`'s repository (its digest is sent for the registry to check).
    pub async fn push_blob(
        &self,
        target: &Reference,
        digest: &Digest,
        data: &[u8],
    ) -> Result<(), RegistryError> {
        self.client
            .store_auth_if_needed(target.resolve_registry(), &self.auth_for(target.registry()))
            .await;
        self.client
            .push_blob(target, data, &digest.to_string())
            .await
            .map(drop)
            .map_err(|source| RegistryError::Request {
                what: "blob upload",
                reference: target.whole(),
                source,
            })
    }

    /// Uploads a manifest under `target`'s tag. Its blobs must have been pushed first.
    pub async fn push_manifest(
        &self,
        target: &Reference,
        bytes: Vec<u8>,
        media_type: &'static str,
    ) -> Result<(), RegistryError> {
        let content_type = reqwest::header::HeaderValue::from_static(media_type);
        self.client
            .store_auth_if_needed(target.resolve_registry(), &self.auth_for(target.registry()))
            .await;
        self.client
            .push_manifest_raw(target, bytes, content_type)
            .await
            .map(drop)
            .map_err(|source| RegistryError::Request {
                what: "manifest upload",
                reference: target.whole(),
                source,
            })
    }

    /// Makes sure the layer blob is in `store`, downloading it at most once per store.
    /// Returns whether this call downloaded it.
    ///
    /// `ready` (if given) receives, as soon as it is known, where the blob can be read: the
    /// stored blob, or a reader that follows this download and ends only once it is verified.
    /// `progress` gets the bytes received and then the verification.
    pub async fn layer_blob(
        &self,
        source: &Source,
        descriptor: &Descriptor,
        store: &BlobStore,
        ready: Option<tokio::sync::oneshot::Sender<LayerBlob>>,
        progress: &(dyn Fn(BlobProgress) + Send + Sync),
    ) -> Result<bool, RegistryError> {
        let mut writer = match store.slot(&descriptor.digest, descriptor.size).await? {
            Slot::Present(path) => {
                if let Some(ready) = ready {
                    // The receiver may be gone (the caller gave up); nothing to do then.
                    let _ = ready.send(LayerBlob::Stored(path));
                }
                return Ok(false);
            }
            Slot::Vacant(writer) => writer,
        };
        let mut watch = StallWatch::new(self.stall);
        let mut stream = self.blob_stream(source, descriptor, "layer").await?;
        if let Some(ready) = ready {
            let _ = ready.send(LayerBlob::Downloading(writer.follower().await?));
        }
        while let Some(chunk) = self
            .next_chunk(
                &mut stream,
                &mut watch,
                source,
                &descriptor.digest,
                writer.written(),
            )
            .await?
        {
            writer.write(&chunk).await?;
            progress(BlobProgress::Received(writer.written()));
        }
        writer.verify().await?;
        progress(BlobProgress::Verified);
        writer.publish().await?;
        Ok(true)
    }
}

/// Most redirects one manifest or signature request follows.
const MAX_REDIRECTS: usize = 5;

/// Redirects are followed (registries send manifests and blobs to other hosts), but never from
/// HTTPS to plain HTTP and at most [`MAX_REDIRECTS`] times (REG-07).
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error("refusing a redirect from HTTPS to plain HTTP")
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// A broken blob stream; the client's own digest check at the end of the stream becomes a
/// digest mismatch.
fn stream_error(digest: &Digest, source: std::io::Error) -> RegistryError {
    use oci_client::errors::DigestError;
    if let Some(DigestError::VerificationError { actual, .. }) = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<DigestError>())
        && let Ok(actual) = Digest::parse(actual)
    {
        return StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        }
        .into();
    }
    RegistryError::Stream {
        digest: digest.clone(),
        source,
    }
}

/// Where a layer blob can be read from.
#[derive(Debug)]
pub enum LayerBlob {
    /// Verified and in the store (read it again with its digest checked).
    Stored(std::path::PathBuf),
    /// Being downloaded by this pull; the reader ends only once the blob is verified.
    Downloading(FollowReader),
}

/// Progress of one blob download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobProgress {
    /// Bytes received so far.
    Received(u64),
    /// All bytes received; size and digest verified.
    Verified,
}
