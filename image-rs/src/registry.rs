//! Talking to registries: source selection (mirrors, insecure hosts), authentication, bounded
//! manifest/config fetches and streamed blob downloads into the store.
//!
//! Pulls use our own HTTP client for every request — manifests, blobs and the token exchange
//! ([`crate::auth`]) — because oci-client reads a manifest's whole body, and a token service's
//! whole answer, before anyone can check its size (REG-03, REG-07). Every response's headers must
//! come within one stall window and every body is cut off when it stalls ([`Stall`]); redirects
//! are followed at most five times and never from HTTPS to plain HTTP. oci-client still uploads
//! (signatures, encrypted images), with a push token obtained here and handed to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use oci_client::RegistryOperation;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::auth::{AuthError, Challenge, MAX_AUTH_ROUNDS, Token, fetch_token, parse_challenge};
use crate::config::{Credential, Credentials, RegistriesConfig};
use crate::digest::Digest;
use crate::http::{HttpError, StallWatch, read_body, redirect_policy, send};
use crate::manifest::{ACCEPTED_MANIFESTS, Descriptor};
use crate::store::{BlobStore, FollowReader, Slot, StoreError};

pub use crate::http::Stall;

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
    /// The registry answered a manifest or blob request with an error status.
    #[error("registry answered {status} for the {what} of {reference}")]
    Status {
        /// What was fetched.
        what: &'static str,
        /// From where.
        reference: String,
        /// The HTTP status.
        status: u16,
    },
    /// A manifest or blob request failed in transport (connection, TLS, redirect).
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
    /// A download made too little progress: fewer than [`Stall::min_bytes`] arrived within one
    /// [`Stall::window`], or no response headers did (a slow or silent registry, REG-07).
    #[error(
        "the {what} of {reference} from {registry} stalled: fewer than {min_bytes} bytes in \
         {window:?} ({received} bytes received)"
    )]
    Stalled {
        /// The registry host (`host[:port]`) that served it.
        registry: String,
        /// What was fetched (`manifest`, `config`, `layer`, …).
        what: &'static str,
        /// From where: the reference, or `registry/repository@digest` for a blob.
        reference: String,
        /// The blob's or the pinned manifest's digest, when known.
        digest: Option<Digest>,
        /// The stall window.
        window: Duration,
        /// The least progress per window.
        min_bytes: u64,
        /// Bytes of the body received before the cut-off.
        received: u64,
    },
    /// Authenticating to the registry failed (token service, challenge, challenge loop).
    #[error("authenticating for {reference}")]
    Auth {
        /// What was requested.
        reference: String,
        /// Why.
        #[source]
        source: AuthError,
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
            Self::Auth { source, .. } => match source {
                AuthError::Status { status: 401, .. } | AuthError::ChallengeLoop { .. } => {
                    Some(FailureCause::Unauthorized)
                }
                AuthError::Transport { source, .. } => plain_http(source),
                _ => None,
            },
            Self::AllSourcesFailed { source, .. } => source.cause(),
            _ => None,
        }
    }

    /// The registry host (`host[:port]`) of the request that failed, when the error names one.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::Request { reference, .. }
            | Self::Status { reference, .. }
            | Self::Transport { reference, .. }
            | Self::Auth { reference, .. } => reference.split('/').next(),
            Self::Stalled { registry, .. } => Some(registry),
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
    /// Uploads only.
    client: Client,
    /// Manifests, blobs and token services: no total timeout (a layer takes as long as it
    /// takes), every read bounded by [`Stall`].
    http: reqwest::Client,
    /// Lookaside signature storage (small documents): a 60 s total timeout.
    lookaside: reqwest::Client,
    /// Hosts (`host[:port]`) reached over plain HTTP.
    insecure: Arc<Vec<String>>,
    /// Credentials that worked, per `registry/repository` and operation (`pull`, `pull,push`).
    granted: Arc<Mutex<HashMap<String, Granted>>>,
    config: Arc<RegistriesConfig>,
    credentials: Arc<Credentials>,
    stall: Stall,
}

/// What a registry accepted for a repository.
#[derive(Debug)]
enum Granted {
    /// A token from its token service, until it expires.
    Bearer(Arc<Token>),
    /// The configured HTTP basic credentials.
    Basic,
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
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .redirect(redirect_policy());
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
            http = http.add_root_certificate(cert.clone());
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
        let built = |builder: reqwest::ClientBuilder| {
            builder.build().map_err(|e| RegistryError::CaFile {
                path: std::path::PathBuf::new(),
                source: std::io::Error::other(e),
            })
        };
        Ok(Self {
            client,
            http: built(http)?,
            lookaside: built(lookaside)?,
            insecure: Arc::new(insecure),
            granted: Arc::default(),
            config: Arc::new(config),
            credentials: Arc::new(credentials),
            stall: Stall::default(),
        })
    }

    /// Replaces the stall bound of downloads (manifests, configs, layers, token answers).
    pub fn with_stall(mut self, stall: Stall) -> Self {
        self.stall = stall;
        self
    }

    /// `what` stalled. `blob`: the blob's digest (named `registry/repository@digest`), else
    /// `reference` itself is what was fetched.
    fn stalled(
        &self,
        what: &'static str,
        reference: &Reference,
        blob: Option<&Digest>,
        received: u64,
    ) -> RegistryError {
        RegistryError::Stalled {
            registry: reference.resolve_registry().to_owned(),
            what,
            reference: match blob {
                Some(digest) => blob_name(reference, digest),
                None => reference.whole(),
            },
            digest: blob
                .cloned()
                .or_else(|| reference.digest().and_then(|d| Digest::parse(d).ok())),
            window: self.stall.window,
            min_bytes: self.stall.min_bytes,
            received,
        }
    }

    /// A failed bounded request or read of the `what` of `reference` (or of its `blob`) as a
    /// [`RegistryError`].
    fn http_error(
        &self,
        err: HttpError,
        what: &'static str,
        reference: &Reference,
        blob: Option<&Digest>,
    ) -> RegistryError {
        match err {
            HttpError::TooLarge { limit } => RegistryError::TooLarge { what, limit },
            HttpError::Stalled { received } => self.stalled(what, reference, blob, received),
            HttpError::Transport(source) => RegistryError::Transport {
                what,
                reference: match blob {
                    Some(digest) => blob_name(reference, digest),
                    None => reference.whole(),
                },
                source,
            },
        }
    }

    /// The next chunk of a blob download, or [`RegistryError::Stalled`] when `watch`'s window
    /// ends first.
    async fn next_chunk(
        &self,
        stream: &mut BlobStream,
        watch: &mut StallWatch,
        what: &'static str,
        source: &Source,
        digest: &Digest,
        received: u64,
    ) -> Result<Option<bytes::Bytes>, RegistryError> {
        let next = tokio::time::timeout_at(watch.deadline(), stream.next())
            .await
            .map_err(|_| self.stalled(what, &source.reference, Some(digest), received))?;
        match next {
            None => Ok(None),
            Some(chunk) => {
                let chunk = chunk.map_err(|source| RegistryError::Stream {
                    digest: digest.clone(),
                    source: std::io::Error::other(source),
                })?;
                watch.observe(chunk.len());
                Ok(Some(chunk))
            }
        }
    }

    /// The HTTP client for manifests and lookaside signature storage (same extra CAs).
    pub(crate) fn lookaside_client(&self) -> &reqwest::Client {
        &self.lookaside
    }

    /// `http` or `https` for `host`: HTTPS unless it is configured insecure.
    fn scheme(&self, host: &str) -> &'static str {
        if self.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        }
    }

    /// The URL of `path` under `reference`'s repository (`manifests/…`, `blobs/…`).
    fn repository_url(&self, reference: &Reference, path: &str) -> String {
        let host = reference.resolve_registry();
        let ns = reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!(
            "{}://{host}/v2/{}/{path}{ns}",
            self.scheme(host),
            reference.repository()
        )
    }

    /// The URL of `reference`'s manifest.
    fn manifest_url(&self, reference: &Reference) -> String {
        let tag_or_digest = reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest"));
        self.repository_url(reference, &format!("manifests/{tag_or_digest}"))
    }

    /// The configured basic credentials for `auth`, if any.
    fn basic(auth: &RegistryAuth) -> Option<(&str, &str)> {
        match auth {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        }
    }

    /// What `key` was granted, if it is still good.
    fn granted(&self, key: &str) -> Option<Granted> {
        let granted = self.granted.lock().ok()?;
        match granted.get(key)? {
            Granted::Bearer(token) if token.live() => Some(Granted::Bearer(Arc::clone(token))),
            Granted::Bearer(_) => None,
            Granted::Basic => Some(Granted::Basic),
        }
    }

    fn grant(&self, key: String, granted: Granted) {
        if let Ok(mut map) = self.granted.lock() {
            map.insert(key, granted);
        }
    }

    /// Answers the challenge of a 401 for `reference` and `scope` (`pull` or `pull,push`):
    /// fetches a token or takes up the basic credentials. `None` when there is nothing new to
    /// offer (no or an unknown challenge, a configured bearer token, basic credentials already
    /// refused): the 401 stands.
    async fn answer_challenge(
        &self,
        response: &reqwest::Response,
        auth: &RegistryAuth,
        reference: &Reference,
        actions: &str,
        sent_basic: bool,
    ) -> Result<Option<Granted>, RegistryError> {
        let registry = reference.resolve_registry();
        let auth_error = |source| RegistryError::Auth {
            reference: reference.whole(),
            source,
        };
        let Some(header) = response.headers().get(reqwest::header::WWW_AUTHENTICATE) else {
            return Ok(None);
        };
        if matches!(auth, RegistryAuth::Bearer(_)) {
            return Ok(None);
        }
        match parse_challenge(registry, header.as_bytes()).map_err(auth_error)? {
            Challenge::Bearer { realm, service } => {
                if realm.scheme() == "http" && self.scheme(registry) == "https" {
                    return Err(auth_error(AuthError::InsecureRealm {
                        registry: registry.to_owned(),
                        realm: crate::unpack::quoted(realm.as_str().as_bytes()),
                    }));
                }
                let scope = format!("repository:{}:{actions}", reference.repository());
                let token = fetch_token(
                    &self.http,
                    &realm,
                    service.as_deref(),
                    &scope,
                    Self::basic(auth),
                    self.stall,
                )
                .await
                .map_err(auth_error)?;
                Ok(Some(Granted::Bearer(Arc::new(token))))
            }
            Challenge::Basic if Self::basic(auth).is_some() && !sent_basic => {
                Ok(Some(Granted::Basic))
            }
            Challenge::Basic | Challenge::Other => Ok(None),
        }
    }

    /// GETs `url` (the `what` of `reference`) with the credentials the registry wants: sent
    /// anonymously (or with what the repository was granted before), then again after each 401
    /// that earns fresh credentials, at most [`MAX_AUTH_ROUNDS`] times. The response's headers
    /// come within one stall window; its status is the caller's to judge.
    async fn get(
        &self,
        source: &Source,
        reference: &Reference,
        url: &str,
        accept: Option<&str>,
        what: &'static str,
        blob: Option<&Digest>,
    ) -> Result<reqwest::Response, RegistryError> {
        let key = format!(
            "{}/{}:pull",
            reference.resolve_registry(),
            reference.repository()
        );
        let mut rounds = 0;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            let granted = self.granted(&key);
            request = match (&granted, &source.auth) {
                (_, RegistryAuth::Bearer(token)) => request.bearer_auth(token),
                (Some(Granted::Bearer(token)), _) => request.bearer_auth(token.value()),
                (Some(Granted::Basic), RegistryAuth::Basic(user, password)) => {
                    request.basic_auth(user, Some(password))
                }
                _ => request,
            };
            let response = send(request, self.stall)
                .await
                .map_err(|err| self.http_error(err, what, reference, blob))?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if rounds == MAX_AUTH_ROUNDS {
                return Err(RegistryError::Auth {
                    reference: reference.whole(),
                    source: AuthError::ChallengeLoop {
                        registry: reference.resolve_registry().to_owned(),
                        reference: reference.whole(),
                        rounds,
                    },
                });
            }
            let sent_basic = matches!(granted, Some(Granted::Basic));
            let Some(fresh) = self
                .answer_challenge(&response, &source.auth, reference, "pull", sent_basic)
                .await?
            else {
                return Ok(response);
            };
            rounds += 1;
            self.grant(key.clone(), fresh);
        }
    }

    /// Hands oci-client the credentials for uploading to `target`: a push token obtained here
    /// (bounded, like every token) when the registry asks for one, else the configured ones.
    async fn push_auth(&self, target: &Reference) -> Result<(), RegistryError> {
        let registry = target.resolve_registry();
        let configured = self.auth_for(target.registry());
        let key = format!("{registry}/{}:pull,push", target.repository());
        let token = match self.granted(&key) {
            Some(Granted::Bearer(token)) => Some(token),
            _ => {
                let url = format!("{}://{registry}/v2/", self.scheme(registry));
                let response = send(self.http.get(url), self.stall)
                    .await
                    .map_err(|err| self.http_error(err, "upload", target, None))?;
                match self
                    .answer_challenge(&response, &configured, target, "pull,push", true)
                    .await?
                {
                    Some(Granted::Bearer(token)) => {
                        self.grant(key, Granted::Bearer(Arc::clone(&token)));
                        Some(token)
                    }
                    _ => None,
                }
            }
        };
        match token {
            Some(token) => {
                let auth = RegistryAuth::Bearer(token.value().to_owned());
                // oci-client keeps the first credentials given per registry, and a token per
                // repository: with a bearer token it never goes to the network to authenticate.
                self.client.store_auth_if_needed(registry, &auth).await;
                self.client
                    .auth(target, &auth, RegistryOperation::Push)
                    .await
                    .map(drop)
                    .map_err(|source| RegistryError::Request {
                        what: "upload",
                        reference: target.whole(),
                        source,
                    })
            }
            None => {
                self.client
                    .store_auth_if_needed(registry, &configured)
                    .await;
                Ok(())
            }
        }
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
        let response = self
            .get(
                source,
                reference,
                &self.manifest_url(reference),
                Some(&ACCEPTED_MANIFESTS.join(", ")),
                WHAT,
                None,
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(RegistryError::Status {
                what: WHAT,
                reference: reference.whole(),
                status: status.as_u16(),
            });
        }
        let bytes = read_body(response, limit, self.stall)
            .await
            .map_err(|err| self.http_error(err, WHAT, reference, None))?;
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
                what,
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

    /// The body of `descriptor`'s blob, its response headers within one stall window.
    async fn blob_stream(
        &self,
        source: &Source,
        descriptor: &Descriptor,
        what: &'static str,
    ) -> Result<BlobStream, RegistryError> {
        let reference = &source.reference;
        let digest = &descriptor.digest;
        let url = self.repository_url(reference, &format!("blobs/{digest}"));
        let response = self
            .get(source, reference, &url, None, what, Some(digest))
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(RegistryError::Status {
                what,
                reference: blob_name(reference, digest),
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > descriptor.size)
        {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: descriptor.size,
                actual: response.content_length().unwrap_or_default(),
            }
            .into());
        }
        Ok(Box::pin(response.bytes_stream()))
    }

    /// Uploads one blob to `target`'s repository (its digest is sent for the registry to check).
    pub async fn push_blob(
        &self,
        target: &Reference,
        digest: &Digest,
        data: &[u8],
    ) -> Result<(), RegistryError> {
        self.push_auth(target).await?;
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
        self.push_auth(target).await?;
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
                "layer",
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

/// How errors name a blob: `registry/repository@digest`.
fn blob_name(reference: &Reference, digest: &Digest) -> String {
    format!(
        "{}/{}@{digest}",
        reference.resolve_registry(),
        reference.repository()
    )
}

/// A blob's body as it arrives.
type BlobStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

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
