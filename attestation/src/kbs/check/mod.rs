//! `coffer kbs check`: a conformance pass against any KBS 0.4.0 broker (`coffer-kbs`, Trustee's
//! KBS) and the hostile cases of the catalogue's KBS rows that a broker must refuse, sent as a
//! guest (or an attacker in its place) would send them: nothing is asked of the broker beyond
//! what a guest sends, except an admin token when the operator gives one.
//!
//! Every case ends in [`Outcome::Pass`], [`Outcome::Fail`] or [`Outcome::NotApplicable`] with the
//! reason. A refusal proves something only when the same request without the one hostile change
//! is accepted, so the hostile cases run only after the broker accepted the evidence the check
//! can produce (sample evidence unless a TEE attester is given); when it does not, they are not
//! applicable and say why. The cases, in order:
//!
//! | id | what passes |
//! |---|---|
//! | `protocol-version` | `/auth` at 0.4.0 gets a challenge; a client claiming 99.0.0 does not |
//! | `challenge-shape` | the nonce is base64 of at least 32 bytes, `extra-params` is present, a `kbs-session-id` cookie is set, and both are new on every `/auth` |
//! | `admin-with-token` | (with an admin token) the check's probe resource is written |
//! | `attest` | evidence for an EC P-256 TEE key gets a token (a JWT with `exp`) |
//! | `resource-cookie` | the resource is released with the session cookie, a JWE (`ECDH-ES+A256KW`, `A256GCM`) that decrypts (to what the check wrote, if it wrote it) |
//! | `resource-bearer` | the same with the token as `Authorization: Bearer` and no cookie |
//! | `rsa-key` | an RSA-3072 TEE key is attested and its JWE (`RSA-OAEP-256`) decrypts |
//! | `forged-token` | a resource request with the token's claims unsigned (`alg: none`) or signed by another key is refused (KBS-07) |
//! | `sample-evidence` | development-only sample evidence gets no resource (not applicable with `allow_sample`: a development broker) (KBS-04, INV-10) |
//! | `replayed-nonce` | a second `/attest` with the same evidence, on its session or a new one, is refused (KBS-01) |
//! | `other-session-nonce` | evidence for one session's nonce presented on another session, or on none, is refused (KBS-01) |
//! | `swapped-tee-key` | evidence binding one TEE key with another key in `runtime-data` is refused (KBS-02) |
//! | `report-data-mismatch` | evidence whose report_data is not the binding of nonce and key is refused (KBS-02) |
//! | `tee-switched` | evidence of this TEE on a session opened for another TEE is refused (KBS-04) |
//! | `resource-traversal` | dot segments (plain and `%2e`), empty, extra and hidden segments and a 10 KiB path get no resource, while the session still gets its own (KBS-09) |
//! | `oversized-body` | a 16 MiB `/attest` body and 100,000-deep JSON are refused and the broker still answers (KBS-10) |
//! | `admin-without-token` | admin writes without a token, with an unsigned one and with one from another key are refused with 401/403 (KBS-07) |
//!
//! Side effects on the broker: sessions and tokens like any guest's; with an admin token, the
//! resource `coffer-check/probe/1` is written (each run overwrites it). Nothing else is written
//! unless the broker wrongly accepts an unauthenticated admin write (then
//! `coffer-check/probe/unauthenticated`; the policy uploads the check sends are invalid Rego).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use rand_core::{OsRng, RngCore as _};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::jwe::{RSA_GENERATED_BITS, TeeKeyPair};
use super::jwt::TokenSigner;
use super::path::ResourcePath;
use super::probe::{self, Credential, Probe, ProbeError, Reply};
use super::types::{PROTOCOL_VERSION, ProtectedHeader, Response};
use crate::attester::{Attester, SampleAttester};

mod hostile;

/// The resource the check writes with an admin token.
pub const PROBE_RESOURCE: &str = "coffer-check/probe/1";
/// Where an unauthenticated admin write would land (it must be refused).
const UNAUTHENTICATED_PROBE: &str = "coffer-check/probe/unauthenticated";
/// Size of the oversized `/attest` body.
pub const OVERSIZED_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Nesting depth of the deeply nested JSON body.
const NESTING_DEPTH: usize = 100_000;
/// TEE names tried for a session opened for another TEE.
const TEES: [&str; 3] = ["snp", "tdx", "sample"];

/// Failures that stop the whole check (a broken configuration or no broker at all).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The URL or CA certificate is unusable.
    #[error("cannot set up the check")]
    Setup(#[source] ProbeError),
    /// The broker does not answer at all.
    #[error("the broker does not answer at {url}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// Cause.
        #[source]
        source: ProbeError,
    },
}

/// What to check and with what evidence.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Broker base URL.
    pub url: String,
    /// PEM CA certificate(s) for HTTPS (no system roots).
    pub ca_cert_pem: Option<Vec<u8>>,
    /// A resource the broker releases to the evidence the check produces.
    pub resource: Option<ResourcePath>,
    /// An admin token (the check then writes [`PROBE_RESOURCE`] and fetches it).
    pub admin_token: Option<Zeroizing<String>>,
    /// Where evidence comes from (sample evidence anywhere; SNP/TDX inside such a guest).
    pub attester: Arc<dyn Attester>,
    /// The broker is a development broker that accepts sample evidence on purpose: a release to
    /// sample evidence is then not a failure.
    pub allow_sample: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// A pre-generated RSA TEE key for `rsa-key` (generating RSA-3072 takes a moment).
    pub rsa_key: Option<Arc<TeeKeyPair>>,
}

impl CheckConfig {
    /// Defaults for `url` with `attester`.
    pub fn new(url: impl Into<String>, attester: Arc<dyn Attester>) -> Self {
        Self {
            url: url.into(),
            ca_cert_pem: None,
            resource: None,
            admin_token: None,
            attester,
            allow_sample: false,
            timeout: probe::DEFAULT_TIMEOUT,
            rsa_key: None,
        }
    }
}

/// A case's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The broker behaved as it must.
    Pass,
    /// It did not.
    Fail,
    /// The case could not be run meaningfully (the reason says why).
    NotApplicable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::NotApplicable => "n/a",
        }
    }
}

/// One case: its id, outcome and why.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Stable id (see the module table).
    pub id: &'static str,
    /// Outcome.
    pub outcome: Outcome,
    /// What was seen.
    pub reason: String,
}

/// The whole check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Broker URL.
    pub url: String,
    /// The TEE of the evidence used.
    pub tee: String,
    /// Every case, in order.
    pub cases: Vec<CaseResult>,
    /// Cases passed.
    pub passed: usize,
    /// Cases failed.
    pub failed: usize,
    /// Cases not applicable.
    pub not_applicable: usize,
}

impl CheckReport {
    /// The result of case `id`.
    pub fn case(&self, id: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.id == id)
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kbs check {} (evidence: {})", self.url, self.tee)?;
        for c in &self.cases {
            writeln!(f, "{:<4}  {:<21} {}", c.outcome.label(), c.id, c.reason)?;
        }
        writeln!(
            f,
            "{} passed, {} failed, {} not applicable ({} cases)",
            self.passed,
            self.failed,
            self.not_applicable,
            self.cases.len()
        )
    }
}

/// Why a case did not pass.
enum Stop {
    Fail(String),
    NotApplicable(String),
}

impl From<ProbeError> for Stop {
    fn from(e: ProbeError) -> Self {
        Self::Fail(format!("no reply: {}", chain(&e)))
    }
}

/// A case: the pass reason, or why not.
type Verdict = Result<String, Stop>;

fn fail<T>(reason: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Fail(reason.into()))
}

fn not_applicable<T>(reason: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::NotApplicable(reason.into()))
}

/// An error and its causes on one line, each once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    coffer_log::error_line(e)
}

/// An opened session: its nonce and cookie.
struct Challenge {
    nonce: String,
    cookie: Option<String>,
}

/// An attested session.
struct Attested {
    cookie: Option<String>,
    token: String,
    key: Arc<TeeKeyPair>,
}

/// What the cases share.
struct Checker {
    probe: Probe,
    config: CheckConfig,
    tee: String,
    /// A TEE the broker opens sessions for (`protocol-version` finds it).
    challenge_tee: Option<String>,
    /// The resource to fetch, with the plaintext the check wrote there.
    target: Option<(String, Option<Vec<u8>>)>,
    /// `Ok` once the broker accepted this evidence; else why the hostile cases do not apply.
    accepted: Result<Attested, String>,
    cases: Vec<CaseResult>,
}

/// Runs every case against the broker of `config`.
pub async fn run(config: CheckConfig) -> Result<CheckReport, CheckError> {
    let probe = Probe::new(&config.url, config.ca_cert_pem.as_deref())
        .map_err(CheckError::Setup)?
        .with_timeout(config.timeout);
    let tee = config.attester.tee().as_str().to_owned();
    // One request first: a broker that does not answer at all is not a list of failures.
    if let Err(source) = probe.send("GET", "/", &[], Vec::new()).await
        && !matches!(source, ProbeError::Http(_) | ProbeError::Body { .. })
    {
        return Err(CheckError::Unreachable {
            url: config.url.clone(),
            source,
        });
    }
    let target = config
        .resource
        .as_ref()
        .map(|r| (r.to_string(), None::<Vec<u8>>));
    let mut c = Checker {
        probe,
        config,
        tee,
        challenge_tee: None,
        target,
        accepted: Err("not yet attested".into()),
        cases: Vec::new(),
    };
    let v = c.protocol_version().await;
    c.record("protocol-version", v);
    let v = c.challenge_shape().await;
    c.record("challenge-shape", v);
    let v = c.admin_with_token().await;
    c.record("admin-with-token", v);
    let v = c.attest().await;
    c.record("attest", v);
    let v = c.resource_cookie().await;
    c.record("resource-cookie", v);
    let v = c.resource_bearer().await;
    c.record("resource-bearer", v);
    let v = c.rsa_key().await;
    c.record("rsa-key", v);
    let v = c.forged_token().await;
    c.record("forged-token", v);
    let v = c.sample_evidence().await;
    c.record("sample-evidence", v);
    let v = c.replayed_nonce().await;
    c.record("replayed-nonce", v);
    let v = c.other_session_nonce().await;
    c.record("other-session-nonce", v);
    let v = c.swapped_tee_key().await;
    c.record("swapped-tee-key", v);
    let v = c.report_data_mismatch().await;
    c.record("report-data-mismatch", v);
    let v = c.tee_switched().await;
    c.record("tee-switched", v);
    let v = c.resource_traversal().await;
    c.record("resource-traversal", v);
    let v = c.oversized_body().await;
    c.record("oversized-body", v);
    let v = c.admin_without_token().await;
    c.record("admin-without-token", v);
    let count = |o: Outcome| c.cases.iter().filter(|r| r.outcome == o).count();
    Ok(CheckReport {
        url: c.config.url.clone(),
        tee: c.tee.clone(),
        passed: count(Outcome::Pass),
        failed: count(Outcome::Fail),
        not_applicable: count(Outcome::NotApplicable),
        cases: c.cases,
    })
}

impl Checker {
    fn record(&mut self, id: &'static str, verdict: Verdict) {
        let (outcome, reason) = match verdict {
            Ok(reason) => (Outcome::Pass, reason),
            Err(Stop::Fail(reason)) => (Outcome::Fail, reason),
            Err(Stop::NotApplicable(reason)) => (Outcome::NotApplicable, reason),
        };
        tracing::debug!(id, ?outcome, %reason, "kbs check case");
        self.cases.push(CaseResult {
            id,
            outcome,
            reason,
        });
    }

    /// `/auth` for `tee`: the challenge, or the refusal.
    async fn challenge(&self, tee: &str) -> Result<Result<Challenge, Reply>, ProbeError> {
        let reply = self.probe.auth(tee).await?;
        let nonce = reply.json()["nonce"].as_str().map(str::to_owned);
        Ok(match nonce {
            Some(nonce) if reply.status == 200 => Ok(Challenge {
                nonce,
                cookie: reply.cookie.clone(),
            }),
            _ => Err(reply),
        })
    }

    /// A session for this evidence's TEE, or not applicable.
    async fn open(&self) -> Result<Challenge, Stop> {
        match self.challenge(&self.tee).await? {
            Ok(c) => Ok(c),
            Err(reply) => fail(format!(
                "/auth for {} was refused although it was accepted before: {}",
                self.tee,
                reply.summary()
            )),
        }
    }

    /// The correct `/attest` body for `challenge` and `key`.
    fn body(&self, challenge: &Challenge, key: &TeeKeyPair) -> Result<Value, Stop> {
        probe::attestation(&challenge.nonce, key, self.config.attester.as_ref())
            .map_err(|e| Stop::Fail(format!("producing evidence: {}", chain(&e))))
    }

    /// A full handshake with `key`: the attested session, or the refusal.
    async fn handshake(&self, key: Arc<TeeKeyPair>) -> Result<Result<Attested, Reply>, Stop> {
        let challenge = match self.challenge(&self.tee).await? {
            Ok(c) => c,
            Err(reply) => return Ok(Err(reply)),
        };
        let body = self.body(&challenge, &key)?;
        let reply = self
            .probe
            .attest(challenge.cookie.as_deref(), body.to_string())
            .await?;
        if reply.status != 200 {
            return Ok(Err(reply));
        }
        let Some(token) = reply.json()["token"].as_str().map(str::to_owned) else {
            return fail("/attest answered 200 without a token");
        };
        Ok(Ok(Attested {
            cookie: reply.cookie.clone().or(challenge.cookie),
            token,
            key,
        }))
    }

    /// The hostile cases need evidence the broker accepts.
    fn require_accepted(&self) -> Result<&Attested, Stop> {
        match &self.accepted {
            Ok(a) => Ok(a),
            Err(why) => Err(Stop::NotApplicable(format!(
                "{why}: a refusal would prove nothing"
            ))),
        }
    }

    fn target(&self) -> Result<&(String, Option<Vec<u8>>), Stop> {
        self.target.as_ref().ok_or_else(|| {
            Stop::NotApplicable("no resource to fetch (give --resource or --admin-token)".into())
        })
    }

    async fn protocol_version(&mut self) -> Verdict {
        let mut refusals = Vec::new();
        let mut tees = vec![self.tee.clone()];
        tees.extend(
            TEES.iter()
                .map(|t| (*t).to_owned())
                .filter(|t| *t != self.tee),
        );
        for tee in tees {
            match self.challenge(&tee).await? {
                Ok(_) => {
                    self.challenge_tee = Some(tee.clone());
                    let other = self
                        .probe
                        .auth_raw(probe::auth_body("99.0.0", &tee))
                        .await?;
                    if other.success() {
                        return fail(format!(
                            "a client claiming protocol version 99.0.0 got a challenge ({})",
                            other.status
                        ));
                    }
                    return Ok(format!(
                        "{PROTOCOL_VERSION} accepted (tee {tee}); 99.0.0 refused ({})",
                        other.summary()
                    ));
                }
                Err(reply) => refusals.push(format!("{tee}: {}", reply.summary())),
            }
        }
        fail(format!(
            "no /auth at version {PROTOCOL_VERSION} was accepted ({})",
            refusals.join("; ")
        ))
    }

    async fn challenge_shape(&self) -> Verdict {
        let Some(tee) = &self.challenge_tee else {
            return not_applicable("the broker opens no session");
        };
        let mut seen = Vec::new();
        for _ in 0..2 {
            let reply = self.probe.auth(tee).await?;
            let body = reply.json();
            let Some(nonce) = body["nonce"].as_str() else {
                return fail(format!(
                    "the challenge has no nonce string: {}",
                    reply.summary()
                ));
            };
            let bytes = B64
                .decode(nonce)
                .or_else(|_| B64URL.decode(nonce.trim_end_matches('=')));
            match bytes {
                Ok(b) if b.len() >= 32 => {}
                Ok(b) => return fail(format!("the nonce has {} bytes, fewer than 32", b.len())),
                Err(_) => return fail(format!("the nonce {nonce:?} is not base64")),
            }
            if body.get("extra-params").is_none() {
                return fail("the challenge has no extra-params");
            }
            let Some(cookie) = reply.cookie.clone() else {
                return fail("no kbs-session-id cookie is set");
            };
            seen.push((nonce.to_owned(), cookie));
        }
        if seen[0].0 == seen[1].0 {
            return fail("two /auth calls got the same nonce");
        }
        if seen[0].1 == seen[1].1 {
            return fail("two /auth calls got the same session cookie");
        }
        Ok("nonce is base64 of >= 32 bytes, extra-params present, kbs-session-id set; both new on every /auth".into())
    }

    async fn admin_with_token(&mut self) -> Verdict {
        let Some(token) = self.config.admin_token.clone() else {
            return not_applicable("no --admin-token given");
        };
        let mut content = [0u8; 16];
        OsRng.fill_bytes(&mut content);
        let content = format!("coffer kbs check probe {}", hex::encode(content)).into_bytes();
        let reply = self
            .probe
            .admin_post(
                &format!("/kbs/v0/resource/{PROBE_RESOURCE}"),
                Some(token.as_str()),
                content.clone(),
            )
            .await?;
        if !reply.success() {
            return fail(format!(
                "writing {PROBE_RESOURCE} with the given admin token was refused: {}",
                reply.summary()
            ));
        }
        if self.target.is_none() {
            self.target = Some((PROBE_RESOURCE.to_owned(), Some(content)));
            Ok(format!(
                "wrote {PROBE_RESOURCE}; the resource cases fetch it"
            ))
        } else {
            Ok(format!("wrote {PROBE_RESOURCE}"))
        }
    }

    async fn attest(&mut self) -> Verdict {
        let key = Arc::new(TeeKeyPair::generate_ec());
        match self.handshake(key).await? {
            Ok(attested) => {
                let claims = probe::token_claims(&attested.token);
                if claims.get("exp").and_then(Value::as_u64).is_none() {
                    return fail("the token is not a JWT with an exp claim");
                }
                self.accepted = Ok(attested);
                Ok(format!(
                    "{} evidence for an EC P-256 key got a token (JWT with exp)",
                    self.tee
                ))
            }
            Err(reply) => {
                let why = format!(
                    "the broker refuses {} evidence ({})",
                    self.tee,
                    reply.summary()
                );
                self.accepted = Err(why.clone());
                if reply.status >= 500 {
                    return fail(why);
                }
                not_applicable(why)
            }
        }
    }

    /// Fetches the target with `credential` and opens the JWE with `key`.
    async fn fetch_and_open(&self, credential: Credential<'_>, key: &TeeKeyPair) -> Verdict {
        let (path, expected) = self.target()?;
        let reply = self.probe.resource(path, credential).await?;
        match (reply.status, reply.kind().as_deref()) {
            (200, _) => {}
            (_, Some("PolicyDeny")) => {
                return not_applicable(format!(
                    "the policy does not release {path} to this evidence ({})",
                    reply.summary()
                ));
            }
            (404, _) | (_, Some("ResourceNotFound")) => {
                return not_applicable(format!("{path} does not exist ({})", reply.summary()));
            }
            _ => return fail(format!("{path}: {}", reply.summary())),
        }
        let jwe: Response = serde_json::from_slice(&reply.body)
            .map_err(|e| Stop::Fail(format!("{path}: the reply is not a flattened JWE: {e}")))?;
        let header: Option<ProtectedHeader> = B64URL
            .decode(&jwe.protected)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok());
        let Some(header) = header else {
            return fail(format!("{path}: the JWE's protected header is unreadable"));
        };
        let plaintext = key.decrypt(&jwe).map_err(|e| {
            Stop::Fail(format!(
                "{path}: the JWE ({} {}) does not decrypt: {}",
                header.alg,
                header.enc,
                chain(&e)
            ))
        })?;
        if let Some(expected) = expected
            && plaintext.as_slice() != expected.as_slice()
        {
            return fail(format!(
                "{path}: decrypted, but not to what the check wrote"
            ));
        }
        Ok(format!(
            "{path}: JWE {}/{} decrypted, {} bytes{}",
            header.alg,
            header.enc,
            plaintext.len(),
            if expected.is_some() {
                ", as written"
            } else {
                ""
            }
        ))
    }

    async fn resource_cookie(&self) -> Verdict {
        let a = self.require_accepted()?;
        self.target()?;
        let Some(cookie) = &a.cookie else {
            return fail("the attested session has no kbs-session-id cookie");
        };
        self.fetch_and_open(Credential::Cookie(cookie), &a.key)
            .await
    }

    async fn resource_bearer(&self) -> Verdict {
        let a = self.require_accepted()?;
        self.target()?;
        self.fetch_and_open(Credential::Bearer(&a.token), &a.key)
            .await
    }

    async fn rsa_key(&self) -> Verdict {
        self.require_accepted()?;
        let key = match &self.config.rsa_key {
            Some(k) => k.clone(),
            None => Arc::new(
                tokio::task::spawn_blocking(|| TeeKeyPair::generate_rsa(RSA_GENERATED_BITS))
                    .await
                    .map_err(|e| Stop::Fail(format!("rsa key generation: {e}")))?
                    .map_err(|e| Stop::Fail(format!("rsa key generation: {e}")))?,
            ),
        };
        let attested = match self.handshake(key.clone()).await? {
            Ok(a) => a,
            Err(reply) => {
                return fail(format!(
                    "evidence accepted for an EC key was refused for an RSA key: {}",
                    reply.summary()
                ));
            }
        };
        if self.target.is_none() {
            return Ok("an RSA-3072 key was attested (no resource to decrypt)".into());
        }
        let credential = match &attested.cookie {
            Some(c) => Credential::Cookie(c),
            None => Credential::Bearer(&attested.token),
        };
        self.fetch_and_open(credential, &key)
            .await
            .map(|r| format!("RSA-3072 key: {r}"))
    }

    async fn forged_token(&self) -> Verdict {
        let a = self.require_accepted()?;
        let claims = probe::token_claims(&a.token);
        let other = TokenSigner::generate()
            .and_then(|s| s.sign(&claims))
            .map_err(|e| Stop::Fail(format!("signing the forged token: {e}")))?;
        let path = self
            .target
            .as_ref()
            .map_or_else(|| "default/key/1".to_owned(), |(p, _)| p.clone());
        let mut seen = Vec::new();
        for (what, token) in [
            ("unsigned (alg none)", probe::unsigned_token(&claims)),
            ("signed by another key", other),
        ] {
            let reply = self
                .probe
                .resource(&path, Credential::Bearer(&token))
                .await?;
            let accepted = reply.success()
                || reply.is_jwe()
                || reply.status == 404
                || matches!(
                    reply.kind().as_deref(),
                    Some("PolicyDeny" | "ResourceNotFound")
                );
            if accepted {
                return fail(format!(
                    "a token {what} with the real token's claims was accepted ({})",
                    reply.summary()
                ));
            }
            seen.push(format!("{what}: {}", reply.status));
        }
        Ok(format!("refused: {}", seen.join(", ")))
    }

    async fn sample_evidence(&self) -> Verdict {
        let sample = SampleAttester::new();
        let challenge = match self.challenge("sample").await? {
            Ok(c) => c,
            Err(reply) => {
                return Ok(format!(
                    "sample sessions refused at /auth ({})",
                    reply.summary()
                ));
            }
        };
        let key = TeeKeyPair::generate_ec();
        let body = probe::attestation(&challenge.nonce, &key, &sample)
            .map_err(|e| Stop::Fail(format!("producing sample evidence: {e}")))?;
        let reply = self
            .probe
            .attest(challenge.cookie.as_deref(), body.to_string())
            .await?;
        if reply.status != 200 {
            return Ok(format!(
                "sample evidence refused at /attest ({})",
                reply.summary()
            ));
        }
        let cookie = reply.cookie.clone().or(challenge.cookie);
        let Some((path, _)) = &self.target else {
            return not_applicable(
                "sample evidence gets a token; give --resource to see whether anything is released to it",
            );
        };
        let credential = match &cookie {
            Some(c) => Credential::Cookie(c),
            None => return fail("the sample session has no cookie"),
        };
        let reply = self.probe.resource(path, credential).await?;
        if reply.is_jwe() {
            if self.config.allow_sample {
                return not_applicable(format!(
                    "{path} is released to sample evidence, as on a development broker (--allow-sample)"
                ));
            }
            return fail(format!(
                "{path} is released to development-only sample evidence, which proves no TEE"
            ));
        }
        Ok(format!(
            "sample evidence gets a token but not {path} ({})",
            reply.summary()
        ))
    }
}
