//! Requests to a KBS 0.4.0 broker exactly as written, well-formed or hostile: the request-crafting
//! shared by `coffer kbs check` ([`super::check`]) and the broker's own hostile-input tests
//! (`tests/kbs_security.rs`).
//!
//! [`Probe`] sends one HTTP/1.1 request per connection (plain TCP or TLS against the given CA
//! only) and hands back status, session cookie and body, with nothing normalized: a path such as
//! `default/../../x` or `%2e%2e/x` reaches the broker byte for byte (an HTTP client library would
//! resolve the dot segments first), bodies of any size or shape are sent as given, and no
//! request is retried. [`auth_body`] and [`attestation`] build the protocol's messages; a hostile
//! case changes one field of a correct one.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::binding;
use super::jwe::TeeKeyPair;
use super::types::{
    Attestation, CompositeEvidence, ErrorInformation, PROTOCOL_VERSION, Response, RuntimeData,
    SESSION_COOKIE,
};
use crate::attester::{Attester, AttesterError};

/// Largest reply body read.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Default time one request (connect, TLS, send, reply) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no HTTP reply.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("broker url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA certificate(s) for HTTPS are unusable.
    #[error("ca certificate: {reason}")]
    Ca {
        /// What is wrong.
        reason: String,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// host:port.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("tls handshake with {addr} failed")]
    Tls {
        /// host:port.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The request is not valid HTTP (a header value or path the HTTP layer refuses).
    #[error("cannot build the request: {reason}")]
    Request {
        /// What is wrong.
        reason: String,
    },
    /// The exchange broke off (connection closed or reset before a complete reply).
    #[error("http exchange failed")]
    Http(#[source] hyper::Error),
    /// The reply body is larger than [`MAX_REPLY_BYTES`] or broke off.
    #[error("reply body: {reason}")]
    Body {
        /// What happened.
        reason: String,
    },
    /// No complete reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

impl ProbeError {
    /// Whether the broker closed or reset the connection instead of replying (how a server may
    /// refuse a body it will not read).
    pub fn closed_by_peer(&self) -> bool {
        matches!(self, Self::Http(e) if e.is_closed() || e.is_incomplete_message() || e.is_canceled())
            || matches!(self, Self::Http(e) if std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| matches!(io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof)))
    }
}

/// A reply as received.
#[derive(Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The `kbs-session-id` value of a `Set-Cookie` header, if any.
    pub cookie: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may be a token or a JWE: show only its length and, for a refusal, the kind.
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("kind", &self.kind())
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem JSON of a refusal, when the body is one.
    pub fn problem(&self) -> Option<ErrorInformation> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The problem kind (`AttestationError`, `PolicyDeny`, ...) when the body is a problem JSON.
    pub fn kind(&self) -> Option<String> {
        self.problem().map(|p| p.kind().to_owned())
    }

    /// Whether the body is a JWE resource reply: something was released.
    pub fn is_jwe(&self) -> bool {
        serde_json::from_slice::<Response>(&self.body).is_ok()
    }

    /// `401 AttestationError: <detail>`, `413`, `200`: for messages.
    pub fn summary(&self) -> String {
        match self.problem() {
            Some(p) => format!("{} {}: {}", self.status, p.kind(), p.detail),
            None => self.status.to_string(),
        }
    }

    /// A 2xx status.
    pub fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How a resource request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// Nothing.
    None,
    /// The `kbs-session-id` cookie.
    Cookie(&'a str),
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
}

/// One broker, addressed by URL; every request on a new connection.
#[derive(Clone)]
pub struct Probe {
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    base_path: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    timeout: Duration,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// A probe for `url` (`http://` or `https://`, optionally with a path prefix); HTTPS trusts
    /// only the PEM certificate(s) in `ca_pem` (no system roots, like [`super::client`]).
    pub fn new(url: &str, ca_pem: Option<&[u8]>) -> Result<Self, ProbeError> {
        let bad = |reason: &str| ProbeError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host_str = parsed.host_str().ok_or_else(|| bad("no host"))?;
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| bad("no port"))?;
        let authority = format!("{host_str}:{port}");
        // An IPv6 literal is bracketed in the URL, not in a socket address or a server name.
        let host = host_str
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host_str)
            .to_owned();
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(pem) = ca_pem {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject as _;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| ProbeError::Ca {
                        reason: e.to_string(),
                    })?;
                    roots.add(cert).map_err(|e| ProbeError::Ca {
                        reason: e.to_string(),
                    })?;
                }
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeError::Ca {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| bad(&e.to_string()))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            authority,
            base_path: parsed.path().trim_end_matches('/').to_owned(),
            tls,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same probe with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends `method path` (appended to the URL's path as given: nothing is resolved or
    /// escaped) with `headers` and `body`; one connection, closed afterwards.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, ProbeError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, headers, body))
            .await
            .map_err(|_| ProbeError::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, ProbeError> {
        let request_err = |e: &dyn std::fmt::Display| ProbeError::Request {
            reason: e.to_string(),
        };
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| request_err(&e))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProbeError::Connect {
                addr: self.authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => send_on(TokioIo::new(tcp), request).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| ProbeError::Tls {
                        addr: self.authority.clone(),
                        source,
                    })?;
                send_on(TokioIo::new(stream), request).await
            }
        }
    }

    /// `POST /kbs/v0/auth` with `body`.
    pub async fn auth_raw(&self, body: Vec<u8>) -> Result<Reply, ProbeError> {
        self.send("POST", "/kbs/v0/auth", &json_headers(None), body)
            .await
    }

    /// `POST /kbs/v0/auth` for `tee` at protocol version 0.4.0.
    pub async fn auth(&self, tee: &str) -> Result<Reply, ProbeError> {
        self.auth_raw(auth_body(PROTOCOL_VERSION, tee)).await
    }

    /// `POST /kbs/v0/attest` with `body`, presenting `cookie` when given.
    pub async fn attest(
        &self,
        cookie: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Result<Reply, ProbeError> {
        self.send("POST", "/kbs/v0/attest", &json_headers(cookie), body.into())
            .await
    }

    /// `GET /kbs/v0/resource/<path>`, `path` sent as written.
    pub async fn resource(
        &self,
        path: &str,
        credential: Credential<'_>,
    ) -> Result<Reply, ProbeError> {
        let headers = match credential {
            Credential::None => Vec::new(),
            Credential::Cookie(c) => vec![("cookie", format!("{SESSION_COOKIE}={c}"))],
            Credential::Bearer(t) => vec![("authorization", format!("Bearer {t}"))],
        };
        self.send(
            "GET",
            &format!("/kbs/v0/resource/{path}"),
            &headers,
            Vec::new(),
        )
        .await
    }

    /// `POST <path>` (an admin endpoint) with `body`, with `Authorization: Bearer <token>` when
    /// a token is given.
    pub async fn admin_post(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Result<Reply, ProbeError> {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        self.send("POST", path, &headers, body.into()).await
    }
}

fn json_headers(cookie: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(c) = cookie {
        headers.push(("cookie", format!("{SESSION_COOKIE}={c}")));
    }
    headers
}

async fn send_on<I>(io: I, request: hyper::Request<Full<Bytes>>) -> Result<Reply, ProbeError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(ProbeError::Http)?;
    // The connection task ends with the exchange (Connection: close) or with this function's
    // timeout dropping it.
    let driver = tokio::spawn(connection);
    let result = async {
        let reply = sender
            .send_request(request)
            .await
            .map_err(ProbeError::Http)?;
        let status = reply.status().as_u16();
        let cookie = reply
            .headers()
            .get_all(hyper::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session_cookie);
        let body = Limited::new(reply.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| ProbeError::Body {
                reason: e.to_string(),
            })?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            cookie,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

fn session_cookie(header: &str) -> Option<String> {
    let first = header.split(';').next()?.trim();
    let (name, value) = first.split_once('=')?;
    (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_owned())
}

/// The `/auth` body: `{version, tee, extra-params: {}}`.
pub fn auth_body(version: &str, tee: &str) -> Vec<u8> {
    json!({"version": version, "tee": tee, "extra-params": {}})
        .to_string()
        .into_bytes()
}

/// A correct `/attest` body for `nonce` and `key`, with evidence from `attester` binding them
/// (report_data = [`binding::report_data`] of the runtime data, no additional evidence, no
/// init-data).
pub fn attestation(
    nonce: &str,
    key: &TeeKeyPair,
    attester: &dyn Attester,
) -> Result<Value, AttesterError> {
    let runtime_data = RuntimeData {
        nonce: nonce.to_owned(),
        tee_pubkey: key.public_jwk(),
    };
    let report_data = binding::report_data(&runtime_data, "");
    let evidence = attester.evidence(&report_data)?;
    Ok(attestation_with_evidence(runtime_data, evidence))
}

/// The `/attest` body carrying `evidence` for `runtime_data` as given (the evidence need not bind
/// it: that is what hostile cases vary).
pub fn attestation_with_evidence(runtime_data: RuntimeData, evidence: Value) -> Value {
    let attestation = Attestation {
        init_data: None,
        runtime_data,
        tee_evidence: CompositeEvidence {
            primary_evidence: evidence,
            additional_evidence: String::new(),
        },
    };
    serde_json::to_value(attestation).unwrap_or(Value::Null)
}

/// The claims of a JWT, unverified (`Null` when unreadable): to copy them into a forged token.
pub fn token_claims(token: &str) -> Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| B64URL.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// An unsigned JWT (`alg: none`) over `claims`: what a broker must never accept (KBS-07).
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64URL.encode(claims.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_cookies() {
        let p = Probe::new("http://127.0.0.1:8080/", None).unwrap();
        assert_eq!(p.authority(), "127.0.0.1:8080");
        assert_eq!(p.base_path, "");
        let p = Probe::new("https://kbs.example/prefix", None).unwrap();
        assert_eq!(p.authority(), "kbs.example:443");
        assert_eq!(p.base_path, "/prefix");
        assert!(p.tls.is_some());
        let p = Probe::new("http://[::1]:9/", None).unwrap();
        assert_eq!(p.authority(), "[::1]:9");
        assert!(Probe::new("ftp://x/", None).is_err());
        assert!(Probe::new("not a url", None).is_err());
        assert_eq!(
            session_cookie("kbs-session-id=abc; Expires=x").as_deref(),
            Some("abc")
        );
        assert_eq!(session_cookie("other=abc"), None);
        assert_eq!(session_cookie("kbs-session-id=; x"), None);
    }

    #[test]
    fn unsigned_token_keeps_claims() {
        let t = unsigned_token(&json!({"exp": 1}));
        assert!(t.ends_with('.'));
        assert_eq!(token_claims(&t)["exp"], 1);
        assert_eq!(token_claims("garbage"), Value::Null);
    }
}
