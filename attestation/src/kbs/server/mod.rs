//! `coffer-kbs`: a Trustee-compatible key broker (KBS protocol 0.4.0).
//!
//! Endpoints: `POST /kbs/v0/auth`, `POST /kbs/v0/attest`, `GET /kbs/v0/resource/<repo>/<type>/<tag>`,
//! `POST /kbs/v0/identity` (Coffer's extension: workload identity certificates, [`identity`]);
//! admin (an ES256 or EdDSA JWT against the configured key of that algorithm, or anonymous only
//! when explicitly enabled):
//! `POST /kbs/v0/resource/<repo>/<type>/<tag>` (raw bytes), `POST /kbs/v0/resource-policy`
//! (`{"policy": base64url(rego)}`, as Trustee's client sends), `POST /kbs/v0/reference-values`
//! (`{"snp_measurements": [hex]}`), `POST /kbs/v0/admin-keys` (Coffer's extension: `{"keys":
//! [SPKI PEM]}`, the P-256 and Ed25519 keys that verify admin tokens from then on, replacing the
//! configured ones); `GET /health` (liveness), `GET /ready` (readiness: the store
//! answers), `GET /metrics` (Prometheus).
//!
//! Replicas: sessions travel sealed in the cookie ([`seal`]) and, on the PostgreSQL store
//! ([`pg`]), resources, policy, reference values and used challenges live in the database, read
//! on each request: any replica serves any step of any handshake, and an admin write on one is
//! served by all at once.
//!
//! Request path: decode (bounded body) → validate into typed values → authenticate (session /
//! token / admin key) → authorize (verifier, resource policy) → act. Every refusal is one
//! [`KbsError`] → HTTP 401 problem JSON; internals are logged, not sent. Transport limits
//! (connection caps, header/idle/body timeouts, body sizes and memory: 408, 413, 503 or a closed
//! connection) are [`http`]'s; what sessions keep, and for how long, is [`session`]'s.

pub mod config;
pub mod error;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod pg;
mod pg_tls;
pub mod policy;
pub mod seal;
pub mod session;
pub mod store;
pub mod throttle;
pub mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use p256::ecdsa::VerifyingKey;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use self::config::{Config, HttpConfig, StoreBackend, parse_measurements};
use self::error::{KbsError, json_response};
use self::http::HttpLimits;
use self::metrics::Metrics;
use self::policy::ResourcePolicy;
use self::seal::SessionKeys;
use self::session::{Attested, LiveChallenge, Sessions};
use self::store::{ResourceStore, Store, StoreError};
use self::verify::{EvidenceVerifier, SnpSettings, TdxSettings, digest_init_data};
use super::binding;
use super::jwe;
use super::jwt::{self, TokenSigner, VerificationKey};
use super::path::ResourcePath;
use super::types::{
    Attestation, AttestationToken, Challenge, PROTOCOL_VERSION, Request, SESSION_COOKIE, TeePubKey,
};

const RESOURCE_PREFIX: &str = "/kbs/v0/resource/";
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Failures building the broker or its TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A key or certificate file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A key is not usable.
    #[error("key {what} is invalid")]
    Key {
        /// Which key.
        what: &'static str,
        /// Cause.
        #[source]
        source: jwt::JwtError,
    },
    /// The resource policy does not compile.
    #[error("resource policy is invalid")]
    Policy(#[source] policy::PolicyError),
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The identity CA cannot be loaded or created.
    #[error("identity CA")]
    IdentityCa(#[from] identity::CaError),
    /// The session keys cannot be loaded.
    #[error("sessions.keys")]
    SessionKeys(#[from] seal::KeyError),
    /// The `[testing]` test chain cannot be loaded.
    #[error("[testing] ca_dir")]
    Testing(#[source] crate::testing::TestChainError),
    /// A CRL in `[attestation.snp.crl] dir` is unusable.
    #[error("[attestation.snp.crl] dir")]
    SnpCrl(#[source] crate::snp::SnpError),
    /// The store cannot be set up.
    #[error("store")]
    Store(#[from] StoreError),
    /// TLS certificate or key rejected.
    #[error("tls configuration: {reason}")]
    Tls {
        /// Cause.
        reason: String,
    },
}

struct Inner {
    sessions: Sessions,
    verifier: EvidenceVerifier,
    signer: TokenSigner,
    /// The one key that verifies this broker's bearer tokens.
    token_keys: [VerificationKey; 1],
    issuer: String,
    token_lifetime: u64,
    policy: RwLock<ResourcePolicy>,
    store: Store,
    /// The revision of each shared setting this broker applied (PostgreSQL store).
    applied: Mutex<HashMap<String, i64>>,
    /// Keys that verify admin tokens (none: admin disabled unless anonymous): the configured
    /// ones until an admin key set is stored (`POST /kbs/v0/admin-keys`).
    admin_keys: RwLock<Vec<VerificationKey>>,
    admin_anonymous: bool,
    metrics: Arc<Metrics>,
    max_body: usize,
    http: HttpLimits,
    /// The workload identity CA, when `[identity] trust_domain` is set.
    identity: Option<identity::IdentityCa>,
}

/// The broker state; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &std::path::Path) -> Result<String, BrokerError> {
    std::fs::read_to_string(path).map_err(|source| BrokerError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Broker {
    /// Builds the broker from a validated configuration.
    pub fn from_config(config: &Config) -> Result<Self, BrokerError> {
        config.validate()?;
        let signer = match &config.token.signing_key {
            Some(path) => TokenSigner::from_pkcs8_pem(&read_file(path)?).map_err(|source| {
                BrokerError::Key {
                    what: "token.signing_key",
                    source,
                }
            })?,
            None => TokenSigner::generate().map_err(|source| BrokerError::Key {
                what: "token.signing_key (generated)",
                source,
            })?,
        };
        let mut admin_keys = Vec::new();
        if let Some(path) = &config.admin.public_key {
            admin_keys.push(VerificationKey::es256_from_pem(&read_file(path)?).map_err(
                |source| BrokerError::Key {
                    what: "admin.public_key",
                    source,
                },
            )?);
        }
        if let Some(path) = &config.admin.ed25519_public_key {
            admin_keys.push(
                VerificationKey::ed25519_from_pem(&read_file(path)?).map_err(|source| {
                    BrokerError::Key {
                        what: "admin.ed25519_public_key",
                        source,
                    }
                })?,
            );
        }
        if config.admin.insecure_allow_anonymous {
            tracing::warn!("admin API accepts ANONYMOUS requests (insecure_allow_anonymous)");
        }
        for key in config.sessions.removed_keys() {
            tracing::warn!(
                key,
                "ignored: attested sessions travel sealed in their cookie, the broker keeps no \
                 session table; remove the key (it will be refused in the next release)"
            );
        }
        let policy = match &config.policy.file {
            Some(path) => ResourcePolicy::new(&read_file(path)?),
            None => ResourcePolicy::default_policy(),
        }
        .map_err(BrokerError::Policy)?;
        let testing = config
            .testing
            .ca_dir
            .as_deref()
            .map(crate::testing::TestChainRoots::load)
            .transpose()
            .map_err(BrokerError::Testing)?;
        let snp = &config.attestation.snp;
        if let Some(dir) = &snp.crl.dir {
            verify::check_crl_dir(dir, snp.crl.require, SystemTime::now())
                .map_err(BrokerError::SnpCrl)?;
        }
        let snp_settings = SnpSettings {
            policy: crate::snp::SnpPolicy {
                min_report_version: snp.min_report_version,
                allow_debug: snp.allow_debug,
                allow_migrate_ma: snp.allow_migrate_ma,
                allow_vlek: snp.allow_vlek,
                allowed_measurements: config.snp_measurements()?,
                min_reported_tcb: snp.min_reported_tcb.map(Into::into),
                ..crate::snp::SnpPolicy::default()
            },
            vcek_dir: snp.vcek_dir.clone(),
            crl_dir: snp.crl.dir.clone(),
            crl_required: snp.crl.require,
            testing_roots: testing
                .as_ref()
                .and_then(|t| t.snp.clone())
                .into_iter()
                .collect(),
        };
        let tdx_settings = TdxSettings {
            policy: {
                let mut policy = crate::tdx::TdxPolicy {
                    allow_migratable: config.attestation.tdx.allow_migratable,
                    ..crate::tdx::TdxPolicy::default()
                };
                let mr_td = config.tdx_mr_td()?;
                policy.reference.mr_td = (!mr_td.is_empty()).then_some(mr_td);
                policy
            },
            collateral: config.attestation.tdx.collateral.clone(),
            testing_root: testing.as_ref().and_then(|t| t.tdx_root_der.clone()),
        };
        let token_keys = [signer.verification_key()];
        let identity = config
            .identity
            .trust_domain
            .as_deref()
            .map(|td| identity::IdentityCa::load_or_create(&config.identity, td))
            .transpose()?;
        let s = &config.sessions;
        let sessions = Sessions::new(
            SessionKeys::load(&s.keys)?,
            session::Limits {
                // A challenge never outlives the session it opens.
                challenge_ttl: Duration::from_secs(s.challenge_ttl_secs.min(s.ttl_secs)),
                session_ttl: Duration::from_secs(s.ttl_secs),
                max_used: s.max_used_challenges,
            },
        );
        let metrics = Arc::new(Metrics::default());
        let store = match config.store.backend {
            StoreBackend::Directory => Store::Directory(ResourceStore::new(
                &config.resources.dir,
                config.http.max_body_bytes,
            )),
            StoreBackend::Postgres => Store::Postgres(Box::new(pg::PgStore::new(
                &config.store.postgres,
                config.http.max_body_bytes,
                metrics.clone(),
            )?)),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                sessions,
                verifier: EvidenceVerifier::new(
                    config.attestation.allow_sample,
                    snp_settings,
                    tdx_settings,
                ),
                signer,
                token_keys,
                issuer: config.token.issuer.clone(),
                token_lifetime: config.token.lifetime_secs,
                policy: RwLock::new(policy),
                store,
                applied: Mutex::new(HashMap::new()),
                admin_keys: RwLock::new(admin_keys),
                admin_anonymous: config.admin.insecure_allow_anonymous,
                metrics,
                max_body: config.http.max_body_bytes,
                http: HttpLimits::from_config(&config.http),
                identity,
            }),
        })
    }

    /// The key that verifies this broker's tokens.
    pub fn token_verifying_key(&self) -> VerifyingKey {
        self.inner.signer.verifying_key()
    }

    /// The identity CA certificate (PEM), when identity issuance is configured.
    pub fn identity_ca_pem(&self) -> Option<&str> {
        self.inner
            .identity
            .as_ref()
            .map(identity::IdentityCa::ca_pem)
    }

    /// Session counts (used challenges remembered and forgotten).
    pub fn session_stats(&self) -> session::Stats {
        self.inner.sessions.stats()
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/kbs/v0/auth", post(auth))
            .route("/kbs/v0/attest", post(attest))
            .route(
                "/kbs/v0/resource/{*path}",
                get(get_resource).post(set_resource),
            )
            .route("/kbs/v0/identity", post(identity::issue_identity))
            .route("/kbs/v0/resource-policy", post(set_policy))
            .route("/kbs/v0/reference-values", post(set_reference_values))
            .route("/kbs/v0/admin-keys", post(set_admin_keys))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::max(self.inner.max_body))
            .with_state(self.clone())
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find_map(|(k, v)| (k == SESSION_COOKIE).then_some(v))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn set_cookie(value: &str, expires: SystemTime) -> Option<HeaderValue> {
    let expires = httpdate::fmt_http_date(expires);
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={value}; Expires={expires}")).ok()
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, KbsError> {
    serde_json::from_slice(body).map_err(|source| KbsError::BadRequest { what, source })
}

async fn auth(State(broker): State<Broker>, body: Bytes) -> Result<Response, KbsError> {
    let b = &broker.inner;
    let request: Request = parse("auth", &body)?;
    if request.version != PROTOCOL_VERSION {
        return Err(KbsError::Version {
            found: request.version,
        });
    }
    if !b.verifier.enabled(request.tee) {
        return Err(KbsError::TeeDisabled {
            tee: request.tee.as_str(),
        });
    }
    let challenge = b.sessions.challenge(request.tee)?;
    Metrics::inc(&b.metrics.auth);
    tracing::debug!(tee = %request.tee, "challenge issued");
    let mut reply = json_response(
        StatusCode::OK,
        &Challenge {
            nonce: challenge.nonce,
            extra_params: Value::String(String::new()),
        },
    );
    if let Some(v) = set_cookie(&challenge.cookie, challenge.expires) {
        reply.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(reply)
}

async fn attest(
    State(broker): State<Broker>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, KbsError> {
    let b = &broker.inner;
    match broker.attest(&headers, &body).await {
        Ok((value, token, expires)) => {
            Metrics::inc(&b.metrics.attest_ok);
            let mut reply = json_response(StatusCode::OK, &AttestationToken { token });
            // The attested session, sealed: it authenticates resource requests on any replica.
            if let Some(v) = set_cookie(&value, expires) {
                reply.headers_mut().insert(SET_COOKIE, v);
            }
            Ok(reply)
        }
        Err(e) => {
            Metrics::inc(&b.metrics.attest_refused);
            b.metrics.refused("attest", e.reason());
            Err(e)
        }
    }
}

impl Broker {
    /// One `/attest`: the live challenge → appraisal → the single-use claim → the sealed session
    /// (its cookie value), the token and the session's expiry.
    async fn attest(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(String, String, SystemTime), KbsError> {
        let b = &self.inner;
        let value = cookie(headers).ok_or(KbsError::NoChallenge)?;
        let challenge = b.sessions.live_challenge(value)?;
        self.sync_settings().await?;
        let appraised = self.appraise(&challenge, body)?;
        // The atomic single-use check: of two attests racing on one challenge, one wins — in this
        // process, and across replicas in the shared store.
        if let Some(pg) = b.store.shared() {
            let claimed = pg
                .claim_challenge(&challenge.id(), challenge.expires_ms())
                .await
                .map_err(|source| KbsError::StoreUnavailable { source })?;
            if !claimed {
                return Err(KbsError::NoChallenge);
            }
        }
        if !b.sessions.claim_local(&challenge) {
            return Err(KbsError::NoChallenge);
        }
        let (sealed, expires) = b.sessions.seal_attested(
            &challenge,
            appraised.claims,
            appraised.tee_pubkey,
            appraised.expires,
        )?;
        tracing::debug!(tee = %challenge.tee(), status = appraised.status, "attested");
        Ok((sealed, appraised.token, expires))
    }

    /// Applies the shared settings (resource policy, reference values) another replica changed
    /// since this one last looked; a no-op on the directory store. Fails, serving nothing stale,
    /// when the store does not answer.
    pub(crate) async fn sync_settings(&self) -> Result<(), KbsError> {
        let b = &self.inner;
        let Some(pg) = b.store.shared() else {
            return Ok(());
        };
        let unavailable = |source| KbsError::StoreUnavailable { source };
        let revisions = pg.revisions().await.map_err(unavailable)?;
        for (name, rev) in revisions {
            if self.applied_rev(&name) >= Some(rev) {
                continue;
            }
            if let Some((value, rev)) = pg.setting(&name).await.map_err(unavailable)? {
                self.apply_setting(&name, &value, rev);
            }
        }
        Ok(())
    }

    fn applied_rev(&self, name: &str) -> Option<i64> {
        let applied = self.inner.applied.lock().unwrap_or_else(|p| p.into_inner());
        applied.get(name).copied()
    }

    /// Applies revision `rev` of a shared setting unless a later one is applied already.
    fn apply_setting(&self, name: &str, value: &str, rev: i64) {
        let b = &self.inner;
        let mut applied = b.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.get(name).is_some_and(|&have| have >= rev) {
            return;
        }
        let measurements = || {
            serde_json::from_str::<Vec<String>>(value)
                .map_err(|e| e.to_string())
                .and_then(|list| parse_measurements(&list))
        };
        let outcome = match name {
            SETTING_POLICY => ResourcePolicy::new(value)
                .map(|policy| {
                    *b.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
                })
                .map_err(|e| e.to_string()),
            SETTING_SNP => measurements().map(|m| b.verifier.set_snp_measurements(m)),
            SETTING_TDX => measurements().map(|m| b.verifier.set_tdx_mr_td(m)),
            SETTING_ADMIN_KEYS => serde_json::from_str::<Vec<String>>(value)
                .map_err(|e| e.to_string())
                .and_then(|pems| admin_key_set(&pems))
                .map(|keys| {
                    *b.admin_keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
                }),
            _ => Ok(()),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(setting = name, rev, "shared setting applied");
                applied.insert(name.to_owned(), rev);
            }
            // Validated before it was stored; a bad row keeps the previous value and says so.
            Err(reason) => tracing::error!(setting = name, rev, %reason, "shared setting invalid"),
        }
    }

    /// Stores a setting (shared store) and applies it here; on the directory store only applies.
    async fn put_setting(&self, name: &str, value: &str) -> Result<(), KbsError> {
        match self.inner.store.shared() {
            Some(pg) => {
                let rev = pg
                    .put_setting(name, value)
                    .await
                    .map_err(|source| KbsError::StoreUnavailable { source })?;
                self.apply_setting(name, value, rev);
            }
            None => {
                let next = self.applied_rev(name).unwrap_or(0).saturating_add(1);
                self.apply_setting(name, value, next);
            }
        }
        Ok(())
    }
}

/// Shared setting names (the `kbs_settings` rows).
const SETTING_POLICY: &str = "resource-policy";
const SETTING_SNP: &str = "snp-measurements";
const SETTING_TDX: &str = "tdx-mr-td";
const SETTING_ADMIN_KEYS: &str = "admin-keys";
/// Admin keys in one set at most.
const MAX_ADMIN_KEYS: usize = 16;

/// Parses an admin key set: 1 to [`MAX_ADMIN_KEYS`] SPKI PEM keys, each P-256 (ES256) or
/// Ed25519 (EdDSA).
fn admin_key_set(pems: &[String]) -> Result<Vec<VerificationKey>, String> {
    if pems.is_empty() || pems.len() > MAX_ADMIN_KEYS {
        return Err(format!("1 to {MAX_ADMIN_KEYS} admin keys"));
    }
    pems.iter()
        .enumerate()
        .map(|(i, pem)| {
            VerificationKey::es256_from_pem(pem)
                .or_else(|_| VerificationKey::ed25519_from_pem(pem))
                .map_err(|_| format!("key {i} is not a P-256 or Ed25519 SPKI PEM key"))
        })
        .collect()
}

/// A successful appraisal, before the session is recorded.
struct Appraised {
    token: String,
    claims: Map<String, Value>,
    tee_pubkey: TeePubKey,
    status: &'static str,
    expires: SystemTime,
}

impl Broker {
    /// Verifies one `/attest` body answering `challenge`; returns the signed token and what the
    /// attested session keeps.
    fn appraise(&self, challenge: &LiveChallenge, body: &[u8]) -> Result<Appraised, KbsError> {
        let b = &self.inner;
        let tee = challenge.tee();
        let attestation: Attestation = parse("attest", body)?;
        if attestation.runtime_data.nonce != challenge.nonce() {
            return Err(KbsError::NonceMismatch);
        }
        jwe::validate_tee_pubkey(&attestation.runtime_data.tee_pubkey).map_err(KbsError::TeeKey)?;
        let additional = &attestation.tee_evidence.additional_evidence;
        let binding = binding::report_data(&attestation.runtime_data, additional);
        let init = attestation
            .init_data
            .as_ref()
            .map(digest_init_data)
            .transpose()
            .map_err(|reason| KbsError::InitData { reason })?;
        let appraisal = b
            .verifier
            .verify(
                tee,
                &attestation.tee_evidence.primary_evidence,
                &binding,
                init.as_ref(),
                SystemTime::now(),
            )
            .map_err(KbsError::Verify)?;
        let now = now_unix();
        let mut annotated = Map::new();
        annotated.insert("tee".into(), json!(tee.as_str()));
        annotated.insert(tee.as_str().into(), appraisal.tee_claims);
        annotated.insert("report_data".into(), json!(B64.encode(binding)));
        annotated.insert(
            "runtime_data_claims".into(),
            binding::runtime_data_claims(&attestation.runtime_data, additional),
        );
        annotated.insert(
            "init_data".into(),
            init.as_ref()
                .map_or(Value::Null, |d| json!(hex::encode(&d.digest))),
        );
        // Whether the evidence's measured field (SNP HOSTDATA, TDX MRCONFIGID, the sample
        // evidence's `init_data`) was checked against this initdata: only then may the broker act
        // on its contents (workload identity).
        annotated.insert(
            "init_data_bound".into(),
            json!(init.is_some() && appraisal.init_data_bound),
        );
        annotated.insert(
            "init_data_claims".into(),
            init.map_or(Value::Null, |d| d.claims),
        );
        // Evidence certified by the configured test chain (`[testing]`), not AMD or Intel.
        annotated.insert("testing_root".into(), json!(appraisal.testing_root));
        let claims = json!({
            "iss": b.issuer,
            "iat": now,
            "exp": now + b.token_lifetime,
            "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
            "ear.verifier-id": {
                "developer": "coffer",
                "build": concat!("coffer-kbs ", env!("CARGO_PKG_VERSION")),
            },
            "submods": {"cpu0": {
                "ear.status": appraisal.status.as_str(),
                "ear.appraisal-policy-id": "coffer",
                "ear.veraison.annotated-evidence": annotated,
            }},
        });
        let token = b.signer.sign(&claims).map_err(|e| KbsError::Internal {
            reason: format!("token signing: {e}"),
        })?;
        let claims = match claims {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Ok(Appraised {
            token,
            claims,
            tee_pubkey: attestation.runtime_data.tee_pubkey,
            status: appraisal.status.as_str(),
            expires: UNIX_EPOCH + Duration::from_secs(now + b.token_lifetime),
        })
    }

    /// Claims and TEE key of the requester: an attested cookie session, else a bearer token.
    fn requester(&self, headers: &HeaderMap) -> Result<Attested, KbsError> {
        let b = &self.inner;
        if let Some(attested) = cookie(headers).and_then(|id| b.sessions.attested(id)) {
            return Ok(attested);
        }
        let token = bearer(headers).ok_or(KbsError::TokenNotFound)?;
        let claims = jwt::verify(token, &b.token_keys, now_unix(), Some(&b.issuer))
            .map_err(KbsError::Token)?;
        let tee_pubkey: TeePubKey = claims
            .get("submods")
            .and_then(|s| s.get("cpu0"))
            .and_then(|c| c.get("ear.veraison.annotated-evidence"))
            .and_then(|a| a.get("runtime_data_claims"))
            .and_then(|r| r.get("tee-pubkey"))
            .cloned()
            .and_then(|k| serde_json::from_value(k).ok())
            .ok_or(KbsError::TokenNotFound)?;
        Ok(Attested {
            claims: Arc::new(claims),
            tee_pubkey,
        })
    }

    /// Authenticates an admin request against the current admin key set (the shared one, on the
    /// PostgreSQL store, read first).
    async fn admin(&self, headers: &HeaderMap) -> Result<(), KbsError> {
        self.sync_settings().await?;
        let b = &self.inner;
        let keys = b
            .admin_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let result = match (bearer(headers), keys.as_slice()) {
            (Some(token), keys @ [_, ..]) => jwt::verify(token, keys, now_unix(), None)
                .map(|_| ())
                .map_err(|e| KbsError::AdminAuth {
                    reason: e.to_string(),
                }),
            (None, _) if b.admin_anonymous => {
                tracing::warn!("anonymous admin request accepted (insecure_allow_anonymous)");
                Ok(())
            }
            (Some(_), []) => Err(KbsError::AdminAuth {
                reason: "no admin key configured".into(),
            }),
            (None, _) => Err(KbsError::AdminAuth {
                reason: "no admin token".into(),
            }),
        };
        Metrics::outcome(result, &b.metrics.admin_ok, &b.metrics.admin_refused)
    }
}

fn resource_path(uri: &Uri) -> Result<ResourcePath, KbsError> {
    uri.path()
        .strip_prefix(RESOURCE_PREFIX)
        .ok_or(KbsError::ResourceNotFound)?
        .parse()
        .map_err(KbsError::Path)
}

async fn get_resource(
    State(broker): State<Broker>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, KbsError> {
    let m = &broker.inner.metrics;
    let result = broker.release(&headers, &uri).await;
    if let Err(e) = &result {
        m.refused("resource", e.reason());
    }
    Metrics::outcome(result, &m.resource_released, &m.resource_refused)
}

impl Broker {
    async fn release(&self, headers: &HeaderMap, uri: &Uri) -> Result<Response, KbsError> {
        let b = &self.inner;
        let path = resource_path(uri)?;
        let requester = self.requester(headers)?;
        self.sync_settings().await?;
        let allowed = b
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .allows(&requester.claims, &path.to_string());
        if !allowed {
            return Err(KbsError::PolicyDeny);
        }
        tracing::debug!(%path, "resource released");
        let plaintext = b
            .store
            .read(&path)
            .await
            .map_err(|source| match source {
                StoreError::TooLarge { .. } | StoreError::Io { .. } | StoreError::Tls { .. } => {
                    KbsError::Internal {
                        reason: source.to_string(),
                    }
                }
                source => KbsError::StoreUnavailable { source },
            })?
            .ok_or(KbsError::ResourceNotFound)?;
        let jwe =
            jwe::encrypt(&requester.tee_pubkey, &plaintext).map_err(|e| KbsError::Internal {
                reason: format!("jwe: {e}"),
            })?;
        Ok(json_response(StatusCode::OK, &jwe))
    }
}

async fn set_resource(
    State(broker): State<Broker>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, KbsError> {
    broker.admin(&headers).await?;
    let path = resource_path(&uri)?;
    broker
        .inner
        .store
        .write(&path, &body)
        .await
        .map_err(|source| match source {
            StoreError::TooLarge { .. } | StoreError::Io { .. } => KbsError::AdminRequest {
                reason: source.to_string(),
            },
            source => KbsError::StoreUnavailable { source },
        })?;
    tracing::info!(%path, "resource set");
    Ok(StatusCode::OK.into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyUpload {
    policy: String,
}

async fn set_policy(
    State(broker): State<Broker>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, KbsError> {
    broker.admin(&headers).await?;
    let upload: PolicyUpload = parse("resource-policy", &body)?;
    let source = B64URL
        .decode(upload.policy.trim_end_matches('='))
        .or_else(|_| B64.decode(&upload.policy))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| KbsError::AdminRequest {
            reason: "policy is not base64 of utf-8 rego".into(),
        })?;
    // Compiled before it is stored: a bad policy changes nothing on any replica.
    ResourcePolicy::new(&source).map_err(|e| KbsError::AdminRequest {
        reason: e.to_string(),
    })?;
    broker.put_setting(SETTING_POLICY, &source).await?;
    tracing::info!("resource policy replaced");
    Ok(StatusCode::OK.into_response())
}

/// `POST /kbs/v0/reference-values` (the file `coffer measure --emit-reference-values` writes):
/// each list present replaces the broker's list for that TEE; an absent one leaves it alone.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceValuesUpload {
    #[serde(default)]
    snp_measurements: Option<Vec<String>>,
    #[serde(default)]
    tdx_mr_td: Option<Vec<String>>,
}

async fn set_reference_values(
    State(broker): State<Broker>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, KbsError> {
    broker.admin(&headers).await?;
    let upload: ReferenceValuesUpload = parse("reference-values", &body)?;
    let decode = |list: &Option<Vec<String>>, name: &str| {
        list.as_ref()
            .map(|values| parse_measurements(values))
            .transpose()
            .map_err(|reason| KbsError::AdminRequest {
                reason: format!("{name}: {reason}"),
            })
    };
    // Both lists are decoded before either is applied: a bad upload changes nothing.
    let snp = decode(&upload.snp_measurements, "snp_measurements")?;
    let tdx = decode(&upload.tdx_mr_td, "tdx_mr_td")?;
    if snp.is_none() && tdx.is_none() {
        return Err(KbsError::AdminRequest {
            reason: "no reference values (snp_measurements, tdx_mr_td)".into(),
        });
    }
    for (name, list, parsed) in [
        (SETTING_SNP, &upload.snp_measurements, snp),
        (SETTING_TDX, &upload.tdx_mr_td, tdx),
    ] {
        if let (Some(list), Some(parsed)) = (list, parsed) {
            let text = serde_json::to_string(list).map_err(|e| KbsError::Internal {
                reason: format!("reference values: {e}"),
            })?;
            broker.put_setting(name, &text).await?;
            tracing::info!(
                setting = name,
                count = parsed.len(),
                "reference values replaced"
            );
        }
    }
    Ok(StatusCode::OK.into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminKeysUpload {
    keys: Vec<String>,
}

/// `POST /kbs/v0/admin-keys`: replaces the admin key set (every replica, on the PostgreSQL store).
/// Checked before it is stored; a set without the caller's own key locks that key out at once.
async fn set_admin_keys(
    State(broker): State<Broker>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, KbsError> {
    broker.admin(&headers).await?;
    let upload: AdminKeysUpload = parse("admin-keys", &body)?;
    let count = admin_key_set(&upload.keys)
        .map_err(|reason| KbsError::AdminRequest { reason })?
        .len();
    let text = serde_json::to_string(&upload.keys).map_err(|e| KbsError::Internal {
        reason: format!("admin keys: {e}"),
    })?;
    broker.put_setting(SETTING_ADMIN_KEYS, &text).await?;
    tracing::info!(count, "admin key set replaced");
    Ok(StatusCode::OK.into_response())
}

/// Liveness: the process serves requests.
async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Readiness: the store answers and this broker has applied its shared settings; 503 otherwise,
/// so a load balancer sends no handshake to a broker that could only fail it or answer stale.
async fn ready(State(broker): State<Broker>) -> Response {
    let checked = match broker.inner.store.shared() {
        Some(pg) => match pg.ping().await {
            Ok(()) => broker.sync_settings().await,
            Err(source) => Err(KbsError::StoreUnavailable { source }),
        },
        None => Ok(()),
    };
    match checked {
        Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Err(e) => {
            tracing::warn!(error = %error::error_chain(&e), "not ready");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "unavailable", "reason": e.reason()}),
            )
        }
    }
}

async fn metrics(State(broker): State<Broker>) -> Response {
    let text = broker.inner.metrics.render(&broker.inner.sessions.stats());
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// Builds a rustls server configuration from PEM files (certificate chain, private key).
pub fn tls_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, BrokerError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display| BrokerError::Tls {
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls(&e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(&e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| tls(&e))?;
    Ok(Arc::new(config))
}

/// A listener for `[http]`: its address and backlog.
pub fn bind(config: &HttpConfig) -> std::io::Result<TcpListener> {
    http::bind(config.listen, config.backlog)
}

/// Serves `broker` on `listener` until `shutdown` completes, then drains in-flight requests
/// ([`http`]: connection caps and timeouts from the broker's `[http]`). HTTPS when `tls` is
/// given; plain HTTP only when the caller passes `None` explicitly.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                let stats = broker.inner.sessions.sweep();
                if let Some(pg) = broker.inner.store.shared() {
                    let now_ms = u64::try_from(
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis(),
                    )
                    .unwrap_or(u64::MAX);
                    match pg.prune(now_ms).await {
                        Ok(pruned) => tracing::debug!(pruned, "expired shared challenges pruned"),
                        Err(e) => tracing::warn!(error = %error::error_chain(&e), "prune failed"),
                    }
                }
                tracing::debug!(used = stats.used, "expired sessions swept");
            }
        })
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
    if tls.is_some() {
        tracing::info!(%addr, "coffer-kbs serving https");
    } else {
        tracing::warn!(%addr, "coffer-kbs serving PLAIN HTTP");
    }
    let result = http::run(
        listener,
        tls,
        broker.router(),
        broker.inner.http,
        broker.inner.metrics.clone(),
        shutdown,
    )
    .await;
    sweeper.abort();
    result
}
