//! Bounded HTTP for everything a registry or its token service sends: response headers within
//! one stall window, bodies read no further than their size limit and cut off when they trickle
//! ([`Stall`]), redirects bounded and never from HTTPS down to plain HTTP (REG-03, REG-07).

use std::time::Duration;

/// When a download counts as stalled: fewer than `min_bytes` bytes arrive within `window`
/// (the response headers within one window too). A registry that sends nothing, or trickles a
/// byte now and then (each read on its own would meet a per-read timeout), is cut off after one
/// window; a download keeps going as long as every window brings `min_bytes`. It bounds layers,
/// configs, manifests, indexes and token services' answers alike.
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
pub(crate) struct StallWatch {
    stall: Stall,
    window_start: tokio::time::Instant,
    window_bytes: u64,
}

impl StallWatch {
    pub(crate) fn new(stall: Stall) -> Self {
        Self {
            stall,
            window_start: tokio::time::Instant::now(),
            window_bytes: 0,
        }
    }

    /// When the current window ends.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        self.window_start + self.stall.window
    }

    /// Counts `bytes`; a window that reached the minimum starts the next one.
    pub(crate) fn observe(&mut self, bytes: usize) {
        self.window_bytes = self.window_bytes.saturating_add(bytes as u64);
        if self.window_bytes >= self.stall.min_bytes {
            self.window_start = tokio::time::Instant::now();
            self.window_bytes = 0;
        }
    }
}

/// Why a bounded request or read failed; the caller names what and from where.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The body (or its announced `Content-Length`) is beyond the limit.
    #[error("larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Fewer than the stall bound's bytes arrived within one window (the headers: none).
    #[error("stalled after {received} bytes")]
    Stalled {
        /// Bytes of the body received before the cut-off.
        received: u64,
    },
    /// Connection, TLS, redirect or a broken body.
    #[error("transport")]
    Transport(#[source] reqwest::Error),
}

/// Sends `request`; its response headers must come within one stall window.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    stall: Stall,
) -> Result<reqwest::Response, HttpError> {
    tokio::time::timeout(stall.window, request.send())
        .await
        .map_err(|_| HttpError::Stalled { received: 0 })?
        .map_err(HttpError::Transport)
}

/// Reads `response`'s body: refused on an announced length over `limit`, cut off as soon as it
/// passes `limit` and when it stalls.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: u64,
    stall: Stall,
) -> Result<Vec<u8>, HttpError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(HttpError::TooLarge { limit });
    }
    let mut watch = StallWatch::new(stall);
    let mut bytes = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(watch.deadline(), response.chunk())
            .await
            .map_err(|_| HttpError::Stalled {
                received: bytes.len() as u64,
            })?
            .map_err(HttpError::Transport)?;
        let Some(chunk) = chunk else {
            return Ok(bytes);
        };
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(HttpError::TooLarge { limit });
        }
        watch.observe(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
}

/// Most redirects one request follows.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// Redirects are followed (registries send manifests and blobs to other hosts), but never from
/// HTTPS to plain HTTP and at most [`MAX_REDIRECTS`] times (REG-07). reqwest drops the
/// `Authorization` header when a redirect leaves the host.
pub(crate) fn redirect_policy() -> reqwest::redirect::Policy {
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
