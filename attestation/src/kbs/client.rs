//! The RCAR client: `auth` → challenge + `kbs-session-id` cookie → ephemeral TEE key → evidence
//! binding `{nonce, tee-pubkey}` → `attest` → token → `GET resource` → JWE decrypted with the
//! TEE key. Works against Trustee's KBS 0.4.0 and `coffer-kbs`. [`KbsClient::request_identity`] is
//! `coffer-kbs`'s extension: a workload identity certificate for a CSR (see [`crate::identity`]).
//!
//! The token (and its key) is cached until `exp`; a 401 other than a policy denial or a missing
//! resource triggers exactly one fresh handshake. Transport errors and 5xx replies are retried
//! [`ClientConfig::max_attempts`] times with exponential backoff. Handshakes are single-flight:
//! concurrent callers wait for one handshake instead of starting their own.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use rsa::traits::PublicKeyParts as _;
use serde::de::DeserializeOwned;
use serde_json::Value;
use zeroize::Zeroizing;

use super::binding;
use super::jwe::{JweError, RSA_GENERATED_BITS, TeeKeyPair};
use super::path::{PathError, ResourcePath};
use super::types::{
    Attestation, AttestationToken, Challenge, CompositeEvidence, ErrorInformation, IdentityReply,
    IdentityRequest, InitData, PROTOCOL_VERSION, Request, Response, RuntimeData, SESSION_COOKIE,
};
use crate::attester::{Attester, AttesterError, AttesterKind, attester_for};

/// Largest reply body the client reads.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// A cached token is dropped this many seconds before its `exp`.
const EXPIRY_MARGIN_SECS: u64 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Client failures; each keeps its root cause.
#[derive(Debug, thiserror::Error)]
pub enum KbsClientError {
    /// Bad client configuration (URL, CA certificate).
    #[error("kbs client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The HTTP exchange failed (after retries).
    #[error("kbs transport error during {stage}")]
    Transport {
        /// Protocol step.
        stage: &'static str,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The broker answered something the protocol does not allow.
    #[error("kbs protocol error during {stage}: {reason}")]
    Protocol {
        /// Protocol step.
        stage: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The broker refused the handshake (`auth` or `attest`).
    #[error("kbs refused {stage}: {} ({})", .info.detail, .info.kind())]
    AttestationRefused {
        /// Protocol step.
        stage: &'static str,
        /// The broker's problem JSON.
        info: ErrorInformation,
    },
    /// The resource policy denied the request.
    #[error("kbs policy denied {path}: {detail}")]
    PolicyDenied {
        /// Requested path.
        path: String,
        /// Broker detail.
        detail: String,
    },
    /// The resource does not exist.
    #[error("kbs resource {path} not found: {detail}")]
    NotFound {
        /// Requested path.
        path: String,
        /// Broker detail.
        detail: String,
    },
    /// Still unauthorized after one fresh handshake.
    #[error("kbs rejected the token for {path}: {} ({})", .info.detail, .info.kind())]
    Unauthorized {
        /// Requested path.
        path: String,
        /// The broker's problem JSON.
        info: ErrorInformation,
    },
    /// The resource path is invalid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Producing evidence failed.
    #[error("producing evidence failed")]
    Attester(#[source] AttesterError),
    /// Key generation or JWE decryption failed.
    #[error("resource decryption failed")]
    Jwe(#[source] JweError),
    /// The broker refused to issue an identity (not configured, initdata without a workload
    /// name, policy, CSR, lifetime), or still refused the token after one fresh handshake.
    #[error("kbs refused the identity: {} ({})", .info.detail, .info.kind())]
    IdentityRefused {
        /// The broker's problem JSON.
        info: ErrorInformation,
    },
    /// The issued certificate is not what was asked for (another key, no SPIFFE ID, or fields
    /// that contradict the reply).
    #[error("kbs issued an unusable identity: {reason}")]
    IdentityMismatch {
        /// What is wrong.
        reason: String,
    },
}

/// A broker-issued workload identity certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityBundle {
    /// The leaf followed by the CA chain, PEM: what a TLS stack presents.
    pub cert_chain_pem: String,
    /// The CA chain alone, PEM: the trust anchor for peers of the same trust domain.
    pub ca_bundle_pem: String,
    /// The SPIFFE ID (the leaf's SAN URI).
    pub spiffe_id: String,
    /// `notBefore`, Unix seconds.
    pub not_before: u64,
    /// `notAfter`, Unix seconds.
    pub not_after: u64,
}

/// TEE key type for the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// EC P-256 with `ECDH-ES+A256KW` (default).
    #[default]
    Ec,
    /// EC P-521 with `ECDH-ES+A256KW` (Trustee's brokers accept it too).
    EcP521,
    /// RSA-3072 with `RSA-OAEP-256`.
    Rsa,
}

/// How the client authenticates resource requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// The `kbs-session-id` cookie (default).
    #[default]
    Cookie,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker base URL (`https://host:port`).
    pub url: String,
    /// PEM CA certificate(s) to trust for HTTPS (no built-in roots are used).
    pub ca_cert_pem: Option<Vec<u8>>,
    /// TEE key type.
    pub key: KeyKind,
    /// Resource authentication mode.
    pub auth: AuthMode,
    /// Initdata to send in `attest`.
    pub init_data: Option<InitData>,
    /// Attempts per HTTP request (transport errors and 5xx), at least 1; also the attempts at a
    /// whole handshake: a handshake whose step failed that way starts again from `/auth` on a
    /// fresh connection (behind a Service, likely another replica). The abandoned attempt leaves
    /// no session on any broker (sessions are sealed in the cookie; at most its used challenge
    /// is remembered until it expires). Default 3.
    pub max_attempts: u32,
    /// First retry delay, doubled each retry up to 5 s. Default 200 ms.
    pub initial_backoff: Duration,
    /// Per-request timeout. Default 30 s.
    pub timeout: Duration,
    /// Send every request on a new connection (no keep-alive pool), so that behind a balancer
    /// each request may reach another replica. Default false.
    pub fresh_connections: bool,
    /// A TEE key generated ahead of time (e.g. in the background at boot, since RSA keygen is
    /// slow); used instead of generating one per handshake, and overrides `key`. Default none.
    pub pregenerated_key: Option<Arc<TeeKeyPair>>,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_cert_pem: None,
            key: KeyKind::Ec,
            auth: AuthMode::Cookie,
            init_data: None,
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
            fresh_connections: false,
            pregenerated_key: None,
        }
    }
}

/// A decrypted resource. `Debug` shows only its length; the bytes are zeroized on drop.
pub struct Resource(Zeroizing<Vec<u8>>);

impl Resource {
    /// The plaintext.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resource([REDACTED; {} bytes])", self.0.len())
    }
}

struct Session {
    key: Arc<TeeKeyPair>,
    token: Zeroizing<String>,
    cookie: Option<Zeroizing<String>>,
    expires_at: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A KBS client for one attester.
#[derive(Debug)]
pub struct KbsClient {
    http: reqwest::Client,
    base: String,
    config: ClientConfig,
    attester: Arc<dyn Attester>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

enum Fetch {
    Ok(Response),
    Refused(ErrorInformation),
}

impl KbsClient {
    /// A client for `config` producing evidence with `attester`.
    pub fn new(config: ClientConfig, attester: Arc<dyn Attester>) -> Result<Self, KbsClientError> {
        let base = config.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(KbsClientError::Config {
                reason: "url must start with https:// or http://".into(),
            });
        }
        if let Some(TeeKeyPair::Rsa(k)) = config.pregenerated_key.as_deref()
            && k.size() * 8 < RSA_GENERATED_BITS
        {
            return Err(KbsClientError::Config {
                reason: format!("rsa tee keys must have at least {RSA_GENERATED_BITS} bits"),
            });
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if config.fresh_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        if let Some(pem) = &config.ca_cert_pem {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| KbsClientError::Config {
                    reason: format!("ca certificate: {e}"),
                })?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| KbsClientError::Config {
            reason: format!("http client: {e}"),
        })?;
        Ok(Self {
            http,
            base,
            config,
            attester,
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// Makes sure a valid attestation token is held: attests now unless a cached token is still
    /// valid. [`Self::get_resource`] does this itself; calling it first only separates the
    /// attestation from the resource fetch (for timing).
    pub async fn attest(&self) -> Result<(), KbsClientError> {
        self.session(false).await.map(drop)
    }

    /// Fetches and decrypts `repo/type/tag`, attesting first when no valid token is cached.
    #[tracing::instrument(skip_all, fields(path = %path))]
    pub async fn get_resource(&self, path: &ResourcePath) -> Result<Resource, KbsClientError> {
        let mut fresh = false;
        loop {
            let session = self.session(fresh).await?;
            match self.fetch(&session, path).await? {
                Fetch::Ok(jwe) => {
                    return session
                        .key
                        .decrypt(&jwe)
                        .map(Resource)
                        .map_err(KbsClientError::Jwe);
                }
                Fetch::Refused(info)
                    if !fresh && !matches!(info.kind(), "PolicyDeny" | "ResourceNotFound") =>
                {
                    tracing::debug!(kind = info.kind(), "resource refused, attesting again once");
                    fresh = true;
                }
                Fetch::Refused(info) => return Err(refusal(path, info)),
            }
        }
    }

    /// Exactly one handshake and one fetch of `repo/type/tag`: no cached token, no second
    /// handshake on a refusal (requests are still retried up to [`ClientConfig::max_attempts`]).
    /// For load generators, which must see every failure as it happened.
    pub async fn handshake_and_fetch(
        &self,
        path: &ResourcePath,
    ) -> Result<Resource, KbsClientError> {
        let session = self.session(true).await?;
        match self.fetch(&session, path).await? {
            Fetch::Ok(jwe) => session
                .key
                .decrypt(&jwe)
                .map(Resource)
                .map_err(KbsClientError::Jwe),
            Fetch::Refused(info) => Err(refusal(path, info)),
        }
    }

    /// Asks the broker for an identity certificate for the key of `csr_der` (a DER PKCS#10 CSR),
    /// valid for the broker's default lifetime; attests first when no valid token is cached.
    pub async fn request_identity(&self, csr_der: &[u8]) -> Result<IdentityBundle, KbsClientError> {
        self.request_identity_for(csr_der, None).await
    }

    /// [`Self::request_identity`] asking for `lifetime` (the broker refuses one over its maximum).
    /// The certificate must certify the CSR's key and name one SPIFFE ID, else
    /// [`KbsClientError::IdentityMismatch`].
    #[tracing::instrument(skip_all)]
    pub async fn request_identity_for(
        &self,
        csr_der: &[u8],
        lifetime: Option<Duration>,
    ) -> Result<IdentityBundle, KbsClientError> {
        let request = IdentityRequest {
            csr: B64.encode(csr_der),
            lifetime_secs: lifetime.map(|d| d.as_secs()),
        };
        let body = to_json("identity", &request)?;
        let url = format!("{}/kbs/v0/identity", self.base);
        let mut fresh = false;
        loop {
            let session = self.session(fresh).await?;
            let reply = self
                .send("identity", false, || {
                    self.authorized(self.http.post(&url), &session)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone())
                })
                .await?;
            match reply.status() {
                StatusCode::OK => {
                    let reply = parse_json("identity", &read_body("identity", reply).await?)?;
                    return identity_bundle(csr_der, reply);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let body = read_body("identity", reply).await?;
                    let info: ErrorInformation = parse_json("identity", &body)?;
                    match info.kind() {
                        "TokenNotFound" | "JwtVerificationFailed" if !fresh => {
                            tracing::debug!(
                                kind = info.kind(),
                                "identity refused, attesting again once"
                            );
                            fresh = true;
                        }
                        _ => return Err(KbsClientError::IdentityRefused { info }),
                    }
                }
                other => {
                    return Err(KbsClientError::Protocol {
                        stage: "identity",
                        reason: format!("unexpected http status {other}"),
                    });
                }
            }
        }
    }

    /// `request` authenticated with the session: its cookie, or the bearer token.
    fn authorized(
        &self,
        request: reqwest::RequestBuilder,
        session: &Session,
    ) -> reqwest::RequestBuilder {
        match (self.config.auth, &session.cookie) {
            (AuthMode::Cookie, Some(c)) => {
                request.header(COOKIE, format!("{SESSION_COOKIE}={}", c.as_str()))
            }
            _ => request.header(AUTHORIZATION, format!("Bearer {}", session.token.as_str())),
        }
    }

    /// A valid cached session, or a new one (always new when `force`).
    async fn session(&self, force: bool) -> Result<Arc<Session>, KbsClientError> {
        let mut guard = self.session.lock().await;
        if !force
            && let Some(s) = guard.as_ref()
            && s.expires_at > now_unix()
        {
            return Ok(s.clone());
        }
        *guard = None;
        let session = Arc::new(self.handshake_retrying().await?);
        *guard = Some(session.clone());
        Ok(session)
    }

    /// [`Self::handshake`], started again from `/auth` when a step failed in transport or with
    /// a server error (bounded by `max_attempts`, with backoff); refusals are final.
    async fn handshake_retrying(&self) -> Result<Session, KbsClientError> {
        let attempts = self.config.max_attempts.max(1);
        let mut delay = self.config.initial_backoff;
        let mut attempt = 1;
        loop {
            match self.handshake().await {
                Err(e) if attempt < attempts && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "handshake failed, starting again");
                }
                other => return other,
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    async fn handshake(&self) -> Result<Session, KbsClientError> {
        let request = Request {
            version: PROTOCOL_VERSION.to_owned(),
            tee: self.attester.tee(),
            extra_params: Value::Object(Default::default()),
        };
        let url = format!("{}/kbs/v0/auth", self.base);
        let body = to_json("auth", &request)?;
        let reply = self
            .send("auth", true, || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let cookie = session_cookie(&reply);
        let challenge: Challenge = expect_json("auth", reply).await?;

        let key = match (&self.config.pregenerated_key, self.config.key) {
            (Some(key), _) => key.clone(),
            (None, KeyKind::Ec) => Arc::new(TeeKeyPair::generate_ec()),
            (None, KeyKind::EcP521) => Arc::new(TeeKeyPair::generate_ec_p521()),
            (None, KeyKind::Rsa) => Arc::new(
                tokio::task::spawn_blocking(|| TeeKeyPair::generate_rsa(RSA_GENERATED_BITS))
                    .await
                    .map_err(|e| KbsClientError::Protocol {
                        stage: "keygen",
                        reason: e.to_string(),
                    })?
                    .map_err(KbsClientError::Jwe)?,
            ),
        };
        let runtime_data = RuntimeData {
            nonce: challenge.nonce,
            tee_pubkey: key.public_jwk(),
        };
        let report_data = binding::report_data(&runtime_data, "");
        let attester = self.attester.clone();
        let primary_evidence = tokio::task::spawn_blocking(move || attester.evidence(&report_data))
            .await
            .map_err(|e| KbsClientError::Protocol {
                stage: "evidence",
                reason: e.to_string(),
            })?
            .map_err(KbsClientError::Attester)?;
        let attestation = Attestation {
            init_data: self.config.init_data.clone(),
            runtime_data,
            tee_evidence: CompositeEvidence {
                primary_evidence,
                additional_evidence: String::new(),
            },
        };
        let url = format!("{}/kbs/v0/attest", self.base);
        let body = to_json("attest", &attestation)?;
        let reply = self
            .send("attest", false, || {
                let mut req = self
                    .http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(c) = &cookie {
                    req = req.header(COOKIE, format!("{SESSION_COOKIE}={}", c.as_str()));
                }
                req
            })
            .await?;
        // The attested session's cookie (a broker that keeps sessions may answer the same value).
        let attested = session_cookie(&reply);
        let token: AttestationToken = expect_json("attest", reply).await?;
        let expires_at = token_expiry(&token.token).saturating_sub(EXPIRY_MARGIN_SECS);
        Ok(Session {
            key,
            token: Zeroizing::new(token.token),
            cookie: attested.or(cookie),
            expires_at,
        })
    }

    async fn fetch(&self, session: &Session, path: &ResourcePath) -> Result<Fetch, KbsClientError> {
        let url = format!("{}/kbs/v0/resource/{path}", self.base);
        let reply = self
            .send("resource", true, || {
                self.authorized(self.http.get(&url), session)
            })
            .await?;
        match reply.status() {
            StatusCode::OK => Ok(Fetch::Ok(parse_json(
                "resource",
                &read_body("resource", reply).await?,
            )?)),
            StatusCode::NOT_FOUND => Err(KbsClientError::NotFound {
                path: path.to_string(),
                detail: "http 404".into(),
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let body = read_body("resource", reply).await?;
                Ok(Fetch::Refused(parse_json("resource", &body)?))
            }
            other => Err(KbsClientError::Protocol {
                stage: "resource",
                reason: format!("unexpected http status {other}"),
            }),
        }
    }

    /// Sends with bounded retries on 5xx replies and transport errors: any, when the request
    /// is `idempotent`; else only those before the request was sent (connect) or timeouts.
    async fn send(
        &self,
        stage: &'static str,
        idempotent: bool,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, KbsClientError> {
        let attempts = self.config.max_attempts.max(1);
        let mut delay = self.config.initial_backoff;
        let mut attempt = 1;
        loop {
            match build().send().await {
                Ok(r) if r.status().is_server_error() && attempt < attempts => {
                    tracing::debug!(stage, status = %r.status(), attempt, "server error, retrying");
                }
                Ok(r) => return Ok(r),
                Err(e)
                    if attempt < attempts && (idempotent || e.is_connect() || e.is_timeout()) =>
                {
                    tracing::debug!(stage, error = %e, attempt, "transport error, retrying");
                }
                Err(source) => return Err(KbsClientError::Transport { stage, source }),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

/// Whether a failed handshake may be started again: transport failures and server errors (a
/// broker whose store is unreachable answers 503), never a refusal.
fn retryable(e: &KbsClientError) -> bool {
    match e {
        KbsClientError::Transport { .. } => true,
        KbsClientError::AttestationRefused { info, .. } => info.kind() == "InternalError",
        KbsClientError::Protocol { reason, .. } => reason.starts_with("http status 5"),
        _ => false,
    }
}

/// Fetches one resource with a fresh client: the library entry point for
/// `coffer kbs get-resource --kbs-url URL --path repo/type/tag [--kbs-evidence ...] [--kbs-ca CA]`.
pub async fn fetch_resource(
    config: ClientConfig,
    tee: AttesterKind,
    path: &str,
) -> Result<Resource, KbsClientError> {
    let path: ResourcePath = path.parse()?;
    let attester: Arc<dyn Attester> =
        Arc::from(attester_for(tee).map_err(KbsClientError::Attester)?);
    KbsClient::new(config, attester)?.get_resource(&path).await
}

/// Checks an identity reply against the CSR it answers: the leaf certifies the CSR's key, names
/// exactly one SPIFFE ID, the reply's; and its validity is the reply's.
fn identity_bundle(csr_der: &[u8], reply: IdentityReply) -> Result<IdentityBundle, KbsClientError> {
    use x509_cert::der::{Decode as _, Encode as _};
    let mismatch = |reason: String| KbsClientError::IdentityMismatch { reason };
    let requested = x509_cert::request::CertReq::from_der(csr_der)
        .and_then(|csr| csr.info.public_key.to_der())
        .map_err(|e| KbsClientError::Config {
            reason: format!("csr: {e}"),
        })?;
    let (label, leaf) = x509_cert::der::pem::decode_vec(reply.certificate.as_bytes())
        .map_err(|e| mismatch(format!("certificate pem: {e}")))?;
    if label != "CERTIFICATE" {
        return Err(mismatch(format!("certificate pem label {label:?}")));
    }
    let seen = crate::identity::inspect_certificate(&leaf).map_err(|e| mismatch(e.to_string()))?;
    if seen.spki_der != requested {
        return Err(mismatch("certificate is not for the csr's key".into()));
    }
    if seen.spiffe_id() != Some(reply.spiffe_id.as_str()) || seen.uris.len() != 1 {
        return Err(mismatch(format!(
            "certificate names {:?}, reply {:?}",
            seen.uris, reply.spiffe_id
        )));
    }
    if (seen.not_before, seen.not_after) != (reply.not_before, reply.not_after)
        || seen.not_after <= seen.not_before
    {
        return Err(mismatch("validity differs from the reply".into()));
    }
    if reply.ca_chain.trim().is_empty() {
        return Err(mismatch("no ca chain".into()));
    }
    let mut cert_chain_pem = reply.certificate.trim_end().to_owned();
    cert_chain_pem.push('\n');
    cert_chain_pem.push_str(reply.ca_chain.trim_start());
    Ok(IdentityBundle {
        cert_chain_pem,
        ca_bundle_pem: reply.ca_chain,
        spiffe_id: reply.spiffe_id,
        not_before: seen.not_before,
        not_after: seen.not_after,
    })
}

/// The typed error for a refused resource request.
fn refusal(path: &ResourcePath, info: ErrorInformation) -> KbsClientError {
    match info.kind() {
        "PolicyDeny" => KbsClientError::PolicyDenied {
            path: path.to_string(),
            detail: info.detail,
        },
        "ResourceNotFound" => KbsClientError::NotFound {
            path: path.to_string(),
            detail: info.detail,
        },
        _ => KbsClientError::Unauthorized {
            path: path.to_string(),
            info,
        },
    }
}

fn session_cookie(reply: &reqwest::Response) -> Option<Zeroizing<String>> {
    reply
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?.trim();
            let (name, value) = first.split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then(|| Zeroizing::new(value.to_owned()))
        })
}

async fn expect_json<T: DeserializeOwned>(
    stage: &'static str,
    reply: reqwest::Response,
) -> Result<T, KbsClientError> {
    let status = reply.status();
    let body = read_body(stage, reply).await?;
    if status == StatusCode::OK {
        return parse_json(stage, &body);
    }
    match serde_json::from_slice::<ErrorInformation>(&body) {
        Ok(info) => Err(KbsClientError::AttestationRefused { stage, info }),
        Err(_) => Err(KbsClientError::Protocol {
            stage,
            reason: format!("http status {status} without a problem json"),
        }),
    }
}

fn to_json<T: serde::Serialize>(stage: &'static str, value: &T) -> Result<Vec<u8>, KbsClientError> {
    serde_json::to_vec(value).map_err(|e| KbsClientError::Protocol {
        stage,
        reason: format!("cannot encode request: {e}"),
    })
}

fn parse_json<T: DeserializeOwned>(stage: &'static str, body: &[u8]) -> Result<T, KbsClientError> {
    serde_json::from_slice(body).map_err(|e| KbsClientError::Protocol {
        stage,
        reason: format!("malformed json reply: {e}"),
    })
}

async fn read_body(
    stage: &'static str,
    mut reply: reqwest::Response,
) -> Result<Vec<u8>, KbsClientError> {
    if reply
        .content_length()
        .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
    {
        return Err(KbsClientError::Protocol {
            stage,
            reason: "reply too large".into(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = reply
        .chunk()
        .await
        .map_err(|source| KbsClientError::Transport { stage, source })?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(KbsClientError::Protocol {
                stage,
                reason: "reply too large".into(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `exp` of a JWT (unverified: the client only uses it to decide when to re-attest); 0 (expired)
/// when absent or unreadable, so such a token is used once.
fn token_expiry(token: &str) -> u64 {
    token
        .split('.')
        .nth(1)
        .and_then(|p| B64URL.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("exp").and_then(Value::as_u64))
        .unwrap_or(0)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_expiry_reads_exp_or_zero() {
        let payload = B64URL.encode(br#"{"exp":1234}"#);
        assert_eq!(token_expiry(&format!("h.{payload}.s")), 1234);
        assert_eq!(token_expiry("garbage"), 0);
    }

    #[test]
    fn resource_debug_is_redacted() {
        let r = Resource(Zeroizing::new(b"top secret".to_vec()));
        assert_eq!(format!("{r:?}"), "Resource([REDACTED; 10 bytes])");
    }
}
