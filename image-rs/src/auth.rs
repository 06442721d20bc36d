//! Registry authentication, done here rather than by oci-client so that nothing a registry or its
//! token service says is read without a bound (REG-07).
//!
//! The distribution token protocol: a registry answers a request it wants credentials for with
//! 401 and `WWW-Authenticate: Bearer realm="URL",service="NAME"`; the client asks `realm` for a
//! token for `service` and `repository:NAME:pull` (with HTTP basic credentials when it has them),
//! gets `{"token": …}` or `{"access_token": …}` with an optional `expires_in` (seconds, 60 when
//! absent), and sends the request again with `Authorization: Bearer TOKEN`. A registry that uses
//! HTTP basic itself answers `WWW-Authenticate: Basic …`.
//!
//! Bounds: the token service's answer is read to at most [`MAX_TOKEN_BYTES`] and within the
//! pull's stall bound ([`crate::registry::Stall`]); a challenge is at most
//! [`MAX_CHALLENGE_BYTES`]; one request earns at most [`MAX_AUTH_ROUNDS`] fresh credentials
//! before it fails with [`AuthError::ChallengeLoop`]. A realm over plain HTTP is refused for a
//! registry reached over HTTPS (the basic credentials would cross the network in clear).

use std::time::Duration;

use zeroize::Zeroizing;

use crate::http::{self, HttpError, Stall};
use crate::unpack::quoted;

/// Largest token service answer read.
pub const MAX_TOKEN_BYTES: u64 = 64 << 10;

/// Largest `WWW-Authenticate` header parsed.
pub const MAX_CHALLENGE_BYTES: usize = 4096;

/// Fresh credentials (tokens, or the basic credentials) one request may be sent again with after
/// a 401; a registry that refuses each of them ends the request with
/// [`AuthError::ChallengeLoop`].
pub const MAX_AUTH_ROUNDS: usize = 2;

/// A token's life when the token service does not say (the token specification's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);

/// Longest token life believed (a token is asked for again after it).
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(3600);

/// Why authenticating to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The `WWW-Authenticate` header does not parse (quoted: a short escaped prefix).
    #[error("registry {registry} sent a malformed challenge \"{challenge}\": {reason}")]
    Challenge {
        /// The registry host (`host[:port]`).
        registry: String,
        /// A short escaped prefix of the header.
        challenge: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The registry is reached over HTTPS and names a token service over plain HTTP.
    #[error("registry {registry} names a token service over plain HTTP (\"{realm}\")")]
    InsecureRealm {
        /// The registry host.
        registry: String,
        /// A short escaped prefix of the realm.
        realm: String,
    },
    /// The token request failed in transport.
    #[error("token request to {service} failed")]
    Transport {
        /// The token service's host (`host[:port]`).
        service: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The token service refused (401: the credentials, or their absence).
    #[error("token service {service} answered {status}")]
    Status {
        /// The token service's host.
        service: String,
        /// The HTTP status.
        status: u16,
    },
    /// The token service's answer is beyond [`MAX_TOKEN_BYTES`].
    #[error("token service {service} answered more than {limit} bytes")]
    TooLarge {
        /// The token service's host.
        service: String,
        /// The limit.
        limit: u64,
    },
    /// The token service sent fewer than the stall bound's bytes within one window.
    #[error(
        "token service {service} stalled: fewer than {min_bytes} bytes in {window:?} \
         ({received} bytes received)"
    )]
    Stalled {
        /// The token service's host.
        service: String,
        /// The stall window.
        window: Duration,
        /// The least progress per window.
        min_bytes: u64,
        /// Bytes of the answer received before the cut-off.
        received: u64,
    },
    /// The answer holds no usable token.
    #[error("token service {service} answered no usable token: {reason}")]
    Malformed {
        /// The token service's host.
        service: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The registry answered 401 to each of [`MAX_AUTH_ROUNDS`] fresh credentials.
    #[error("registry {registry} refused {rounds} fresh credentials for {reference} in a row")]
    ChallengeLoop {
        /// The registry host.
        registry: String,
        /// What was requested.
        reference: String,
        /// Fresh credentials it refused.
        rounds: usize,
    },
}

/// What a registry's 401 asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// A token from `realm` for `service`.
    Bearer {
        /// The token service's URL.
        realm: reqwest::Url,
        /// The `service` parameter to pass on.
        service: Option<String>,
    },
    /// HTTP basic credentials.
    Basic,
    /// A scheme this client does not speak.
    Other,
}

/// Parses the first challenge of a `WWW-Authenticate` header (RFC 7235: a scheme, then
/// comma-separated `name=token` or `name="quoted string"` parameters).
pub(crate) fn parse_challenge(registry: &str, header: &[u8]) -> Result<Challenge, AuthError> {
    let malformed = |reason| AuthError::Challenge {
        registry: registry.to_owned(),
        challenge: quoted(header),
        reason,
    };
    if header.len() > MAX_CHALLENGE_BYTES {
        return Err(malformed("too long"));
    }
    let text = std::str::from_utf8(header).map_err(|_| malformed("not UTF-8"))?;
    let text = text.trim_start_matches([' ', '\t']);
    let (scheme, mut rest) = text.split_once([' ', '\t']).unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Challenge::Other);
    }
    let (mut realm, mut service) = (None, None);
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let Some((name, after)) = rest.split_once('=') else {
            // A second challenge's scheme: this one ends here.
            break;
        };
        let name = name.trim_end_matches([' ', '\t']);
        if name.contains([' ', '\t', ',']) {
            break;
        }
        let after = after.trim_start_matches([' ', '\t']);
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => quoted_string(quoted).ok_or_else(|| malformed("unterminated quote"))?,
            None => {
                let end = after.find([',', ' ', '\t']).unwrap_or(after.len());
                (after[..end].to_owned(), &after[end..])
            }
        };
        if name.eq_ignore_ascii_case("realm") {
            realm = Some(value);
        } else if name.eq_ignore_ascii_case("service") {
            service = Some(value);
        }
        rest = tail;
    }
    let realm = realm.ok_or_else(|| malformed("no realm"))?;
    let realm = reqwest::Url::parse(&realm).map_err(|_| malformed("the realm is not a URL"))?;
    if !matches!(realm.scheme(), "http" | "https") || realm.host_str().is_none() {
        return Err(malformed("the realm is not an HTTP URL"));
    }
    Ok(Challenge::Bearer { realm, service })
}

/// The value of a quoted string whose opening quote is gone, and what follows its closing quote.
fn quoted_string(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// A bearer token and when to stop using it. Never logged: `Debug` says only that it exists.
pub(crate) struct Token {
    value: Zeroizing<String>,
    expires: tokio::time::Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token itself, for an `Authorization` header.
    pub(crate) fn value(&self) -> &str {
        &self.value
    }

    /// Whether it is still to be used.
    pub(crate) fn live(&self) -> bool {
        tokio::time::Instant::now() < self.expires
    }
}

/// What a token service answers (the fields read; others are ignored).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Asks the token service at `realm` for a token for `scope`, with HTTP basic credentials when
/// given. The answer is read to at most [`MAX_TOKEN_BYTES`] and within `stall`.
pub(crate) async fn fetch_token(
    http: &reqwest::Client,
    realm: &reqwest::Url,
    service: Option<&str>,
    scope: &str,
    basic: Option<(&str, &str)>,
    stall: Stall,
) -> Result<Token, AuthError> {
    let host = match realm.port() {
        Some(port) => format!("{}:{port}", realm.host_str().unwrap_or_default()),
        None => realm.host_str().unwrap_or_default().to_owned(),
    };
    let mut url = realm.clone();
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", scope);
    }
    let mut request = http.get(url);
    if let Some((user, password)) = basic {
        request = request.basic_auth(user, Some(password));
    }
    let failed = |err: HttpError| match err {
        HttpError::TooLarge { limit } => AuthError::TooLarge {
            service: host.clone(),
            limit,
        },
        HttpError::Stalled { received } => AuthError::Stalled {
            service: host.clone(),
            window: stall.window,
            min_bytes: stall.min_bytes,
            received,
        },
        HttpError::Transport(source) => AuthError::Transport {
            service: host.clone(),
            source,
        },
    };
    let started = tokio::time::Instant::now();
    let response = http::send(request, stall).await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(AuthError::Status {
            service: host.clone(),
            status: status.as_u16(),
        });
    }
    let body = Zeroizing::new(
        http::read_body(response, MAX_TOKEN_BYTES, stall)
            .await
            .map_err(failed)?,
    );
    let malformed = |reason| AuthError::Malformed {
        service: host.clone(),
        reason,
    };
    let answer: TokenAnswer =
        serde_json::from_slice(&body).map_err(|_| malformed("not a JSON token answer"))?;
    let (token, access_token) = (
        answer.token.map(Zeroizing::new),
        answer.access_token.map(Zeroizing::new),
    );
    let value = token
        .filter(|t| !t.is_empty())
        .or(access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| malformed("neither token nor access_token"))?;
    // It goes into an `Authorization` header: visible ASCII only.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed("the token has characters a header cannot carry"));
    }
    let life = answer
        .expires_in
        .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs)
        .min(MAX_TOKEN_LIFE);
    // Used until a little before it ends, counted from the request.
    let expires = started + life.saturating_sub(life / 10);
    Ok(Token { value, expires })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: reqwest::Url::parse(realm).unwrap(),
            service: service.map(str::to_owned),
        }
    }

    #[test]
    fn challenges_parse_as_registries_send_them() {
        let parse = |h: &str| parse_challenge("r", h.as_bytes()).unwrap();
        assert_eq!(
            parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            bearer("https://auth.example/token", Some("registry.example"))
        );
        assert_eq!(
            parse(r#"bearer  service=reg , realm="http://127.0.0.1:5/t?x=1""#),
            bearer("http://127.0.0.1:5/t?x=1", Some("reg"))
        );
        assert_eq!(
            parse(r#"Bearer realm="https://a.example/t\"q""#),
            bearer("https://a.example/t%22q", None)
        );
        assert_eq!(parse(r#"Basic realm="registry""#), Challenge::Basic);
        assert_eq!(parse("Negotiate"), Challenge::Other);
    }

    #[test]
    fn malformed_challenges_are_refused_quoting_a_short_prefix() {
        let long = format!(r#"Bearer realm="https://a.example/{}""#, "a".repeat(5000));
        for (header, reason) in [
            (r#"Bearer service="x""#.to_owned(), "no realm"),
            (
                r#"Bearer realm="https://a.example"#.to_owned(),
                "unterminated quote",
            ),
            (
                r#"Bearer realm="file:///etc/passwd""#.to_owned(),
                "the realm is not an HTTP URL",
            ),
            (
                r#"Bearer realm="not a url""#.to_owned(),
                "the realm is not a URL",
            ),
            (long, "too long"),
        ] {
            let err = parse_challenge("reg", header.as_bytes()).unwrap_err();
            let AuthError::Challenge {
                reason: got,
                challenge,
                ..
            } = &err
            else {
                panic!("{err:?}");
            };
            assert_eq!(*got, reason, "{header}");
            assert!(challenge.len() <= crate::unpack::QUOTED_BYTES * 4 + 3);
        }
        let err = parse_challenge("reg", b"Bearer realm=\"\xff\x1b[31m\"").unwrap_err();
        assert!(err.to_string().contains("\\xff\\x1b"), "{err}");
    }

    #[test]
    fn a_token_never_shows_in_debug() {
        let token = Token {
            value: Zeroizing::new("s3cret-token".to_owned()),
            expires: tokio::time::Instant::now(),
        };
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
