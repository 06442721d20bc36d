//! The broker's HTTP/1.1 front (KBS-10, issue #21 "broker availability"): the listener, the
//! accept loop, connection caps and the timeouts that keep a slow or idle client from holding a
//! connection.
//!
//! - **Listener**: [`bind`] with a configurable backlog (`[http] backlog`, default 1024; the
//!   kernel caps it at `net.core.somaxconn`).
//! - **Accept loop**: only accepts, counts and spawns. Each connection, its TLS handshake
//!   included, runs in its own task, so a slow handshake never stalls accepts.
//! - **Caps**: `max_connections` open connections in all, `max_connections_per_ip` from one
//!   client address (an IPv4 address or an IPv6 /64). Beyond either, the connection is accepted
//!   and closed at once (the backlog never fills with connections we will not serve).
//! - **Timeouts**, per connection: the TLS handshake and the first request's headers must arrive
//!   within `header_read_timeout_secs` of the accept (each as long again); a later request's
//!   headers within it of their first byte; a connection with no request in progress (keep-alive
//!   idle, or its last response not yet taken) is closed after `idle_timeout_secs`; a request
//!   body must arrive within `body_timeout_secs` of its headers, else HTTP 408.
//! - **Memory**: request bodies are read whole (at most `max_body_bytes` each) against one budget
//!   for all connections, `max_body_memory_bytes`: a body's declared length (or `max_body_bytes`
//!   when it declares none) is reserved before it is read, waiting within the body timeout (then
//!   HTTP 503). A connection's header buffer is at most [`MAX_HEADER_BUFFER`].
//! - **Shutdown**: stop accepting, let each connection finish its request (graceful), then close
//!   whatever is left after [`DRAIN_TIMEOUT`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

use super::config::HttpConfig;
use super::metrics::Metrics;
use super::throttle::Throttle;

/// How long a shutdown waits for connections to finish their requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Connection-refusal and accept-error warnings: at most one a minute each.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Largest read buffer of a connection (request line and headers): room for a bearer token
/// whose claims carry a large initdata (the evidence's init-data is at most 256 KiB).
pub const MAX_HEADER_BUFFER: usize = 512 * 1024;

/// Transport limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// TLS handshake, and a request's headers.
    pub header_read_timeout: Duration,
    /// No request in progress.
    pub idle_timeout: Duration,
    /// A request body once its headers are in.
    pub body_timeout: Duration,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
    /// Largest request body.
    pub max_body: usize,
    /// Bytes of request bodies held at once, all connections together.
    pub max_body_memory: usize,
}

impl HttpLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &HttpConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            body_timeout: Duration::from_secs(config.body_timeout_secs),
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            max_body: config.max_body_bytes,
            max_body_memory: config.max_body_memory_bytes,
        }
    }
}

/// A TCP listener on `addr` with `backlog` (SO_REUSEADDR, as tokio's `bind`).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    if let Some(max) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && max < backlog
    {
        tracing::warn!(
            backlog,
            somaxconn = max,
            "http.backlog is above net.core.somaxconn: the kernel uses somaxconn"
        );
    }
    socket.listen(backlog)
}

/// What the per-address cap counts by: an IPv4 address, or an IPv6 /64 (one host's share of
/// address space; an attacker has a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(Ipv4Addr),
    V6(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Self::V6(u64::from_be_bytes(prefix))
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: std::collections::HashMap<ClientKey, usize>,
}

/// Open-connection counts against the caps; its map holds only clients with open connections.
#[derive(Debug)]
struct Limiter {
    max: usize,
    per_client: usize,
    counts: Mutex<Counts>,
    /// Signalled when the last connection closes.
    empty: Notify,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Global,
    PerClient,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
struct Permit {
    limiter: Arc<Limiter>,
    key: ClientKey,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let key = ClientKey::from(ip);
        let mut counts = self.lock();
        if counts.total >= self.max {
            return Err(Refusal::Global);
        }
        let mine = counts.per_client.entry(key).or_default();
        if *mine >= self.per_client {
            return Err(Refusal::PerClient);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Permit {
            limiter: self.clone(),
            key,
        })
    }

    fn open(&self) -> usize {
        self.lock().total
    }

    /// Waits until no connection is open.
    async fn drained(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&self.key);
            }
        }
        if counts.total == 0 {
            self.limiter.empty.notify_waiters();
        }
    }
}

const FRESH: u64 = 0;
const IDLE: u64 = 1;
const HEAD: u64 = 2;
const BUSY: u64 = 3;
const PHASE_SHIFT: u32 = 62;
const MS_MASK: u64 = (1 << PHASE_SHIFT) - 1;

/// Where a connection is, and since when: one word (phase, milliseconds since `base`) written
/// by the IO wrapper and the service, read by the connection's watchdog.
#[derive(Debug)]
struct Activity {
    base: Instant,
    state: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            state: AtomicU64::new(FRESH << PHASE_SHIFT),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(MS_MASK) & MS_MASK
    }

    fn set(&self, phase: u64) {
        self.state
            .store((phase << PHASE_SHIFT) | self.now_ms(), Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts a request's headers (a fresh one's headers
    /// count from the accept).
    fn read_progress(&self) {
        let current = self.state.load(Ordering::Acquire);
        if current >> PHASE_SHIFT == IDLE {
            let next = (HEAD << PHASE_SHIFT) | self.now_ms();
            if self
                .state
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.changed.notify_one();
            }
        }
    }

    /// When the connection is to be closed unless something happens; `None` while a request is
    /// in progress.
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        let state = self.state.load(Ordering::Acquire);
        let since = self.base + Duration::from_millis(state & MS_MASK);
        match state >> PHASE_SHIFT {
            FRESH | HEAD => Some(since + limits.header_read_timeout),
            IDLE => Some(since + limits.idle_timeout),
            _ => None,
        }
    }
}

/// The connection's IO, reporting read progress to its [`Activity`].
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_progress();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Shutdown stages sent to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Serve,
    Drain,
    Close,
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    router: Router,
    limits: HttpLimits,
    /// Body bytes that may still be reserved (`max_body_memory`).
    body_budget: Arc<tokio::sync::Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    stage: watch::Receiver<Stage>,
}

/// A bare status reply that closes the connection.
fn closing(status: StatusCode) -> Response<Body> {
    let mut reply = Response::new(Body::empty());
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    reply
}

/// Reads the body (bounded in size and time), then routes the request.
async fn respond(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let max = shared.limits.max_body;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return closing(StatusCode::PAYLOAD_TOO_LARGE);
    }
    // What this body may take of the budget: its exact size when known, else the most it may be.
    let reserve = match body.size_hint().exact() {
        Some(n) => n.min(max as u64),
        None => declared.unwrap_or(max as u64).min(max as u64),
    };
    let read = async {
        let permit = match u32::try_from(reserve) {
            Ok(0) => None,
            Ok(n) => Some(
                shared
                    .body_budget
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| None)?,
            ),
            Err(_) => return Err(None),
        };
        Limited::new(body, max)
            .collect()
            .await
            .map(|c| (c.to_bytes(), permit))
            .map_err(Some)
    };
    let (body, _permit) = match tokio::time::timeout(shared.limits.body_timeout, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(None)) => return closing(StatusCode::SERVICE_UNAVAILABLE),
        Ok(Err(Some(e))) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(StatusCode::PAYLOAD_TOO_LARGE);
        }
        Ok(Err(Some(e))) => {
            tracing::debug!(error = %e, "request body failed");
            return closing(StatusCode::BAD_REQUEST);
        }
        Err(_) => {
            Metrics::inc(&shared.metrics.body_timeouts);
            tracing::debug!(path = %parts.uri.path(), "request body timed out");
            return closing(StatusCode::REQUEST_TIMEOUT);
        }
    };
    let request = Request::from_parts(parts, Body::from(body));
    match shared.router.clone().oneshot(request).await {
        Ok(reply) => reply,
        Err(never) => match never {},
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client or hyper closed it.
    Closed,
    /// A header, idle or TLS deadline passed.
    TimedOut,
    /// Shutdown.
    ShutDown,
}

/// Serves HTTP/1.1 on `io` until the client leaves, a deadline passes or shutdown ends it.
async fn drive<I>(io: I, shared: Shared, activity: Arc<Activity>) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let shared = shared.clone();
            let activity = activity.clone();
            async move {
                activity.set(BUSY);
                let reply = respond(&shared, request).await;
                activity.set(IDLE);
                Ok::<_, Infallible>(reply)
            }
        })
    };
    let watched = Watched {
        io,
        activity: activity.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Our own watchdog below times headers and idleness (hyper's needs a timer and would
        // count idle time as header time).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BUFFER)
        .serve_connection(TokioIo::new(watched), service);
    tokio::pin!(conn);
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let sleep = tokio::time::sleep_until(far.into());
    tokio::pin!(sleep);
    let mut stage_rx = shared.stage.clone();
    let mut draining = false;
    loop {
        let deadline = activity.deadline(&shared.limits).unwrap_or(far);
        sleep.as_mut().reset(deadline.into());
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                return Ended::Closed;
            }
            () = activity.changed.notified() => {}
            () = &mut sleep => {
                if activity.deadline(&shared.limits).is_some_and(|d| d <= Instant::now()) {
                    return Ended::TimedOut;
                }
            }
            changed = stage_rx.changed() => {
                let stage = *stage_rx.borrow_and_update();
                if changed.is_err() || stage == Stage::Close {
                    return Ended::ShutDown;
                }
                if stage == Stage::Drain && !draining {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One accepted connection: TLS handshake (bounded), then HTTP.
async fn connection(stream: TcpStream, peer: SocketAddr, shared: Shared, _permit: Permit) {
    let metrics = shared.metrics.clone();
    Metrics::inc(&metrics.connections_open);
    let ended = match shared.tls.clone() {
        Some(acceptor) => {
            match tokio::time::timeout(shared.limits.header_read_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => drive(tls, shared, Arc::new(Activity::new())).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    Ended::Closed
                }
                Err(_) => {
                    tracing::debug!(%peer, "tls handshake timed out");
                    Ended::TimedOut
                }
            }
        }
        None => drive(stream, shared, Arc::new(Activity::new())).await,
    };
    if ended == Ended::TimedOut {
        Metrics::inc(&metrics.connections_timed_out);
        tracing::debug!(%peer, "connection timed out");
    }
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
}

/// Accepts on `listener` until `shutdown`, serving `router` under `limits`, then drains.
pub(super) async fn run(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limiter = Arc::new(Limiter {
        max: limits.max_connections,
        per_client: limits.max_connections_per_ip,
        counts: Mutex::new(Counts::default()),
        empty: Notify::new(),
    });
    let (stage_tx, stage_rx) = watch::channel(Stage::Serve);
    let shared = Shared {
        router,
        limits,
        body_budget: Arc::new(tokio::sync::Semaphore::new(limits.max_body_memory)),
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        metrics: metrics.clone(),
        stage: stage_rx,
    };
    let refused_warning = Throttle::new(WARN_EVERY);
    let accept_warning = Throttle::new(WARN_EVERY);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(count) = accept_warning.due() {
                    tracing::warn!(error = %e, count, "accept failed");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        match limiter.admit(peer.ip()) {
            Ok(permit) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                tokio::spawn(connection(stream, peer, shared.clone(), permit));
            }
            Err(refusal) => {
                Metrics::inc(&metrics.connections_refused);
                if let Some(count) = refused_warning.due() {
                    tracing::warn!(
                        %peer,
                        cap = match refusal {
                            Refusal::Global => "http.max_connections",
                            Refusal::PerClient => "http.max_connections_per_ip",
                        },
                        count,
                        "connection refused: cap reached"
                    );
                }
                drop(stream);
            }
        }
    }
    drop(listener);
    let _ = stage_tx.send(Stage::Drain);
    if tokio::time::timeout(DRAIN_TIMEOUT, limiter.drained())
        .await
        .is_err()
    {
        tracing::info!(
            open = limiter.open(),
            "connections still open after the drain timeout: closing them"
        );
        let _ = stage_tx.send(Stage::Close);
        let _ = tokio::time::timeout(Duration::from_secs(1), limiter.drained()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize, per_client: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            max,
            per_client,
            counts: Mutex::new(Counts::default()),
            empty: Notify::new(),
        })
    }

    #[test]
    fn caps_count_per_address_and_in_all_and_free_on_drop() {
        let l = limiter(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::PerClient);
        let _p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::Global);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.admit(a).unwrap();
        // IPv4-mapped IPv6 counts as the IPv4 address.
        assert_eq!(
            l.admit("::ffff:192.0.2.1".parse().unwrap()).unwrap_err(),
            Refusal::Global
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let same = ClientKey::from("2001:db8:1:2::1".parse::<IpAddr>().unwrap());
        let also = ClientKey::from("2001:db8:1:2:ffff::9".parse::<IpAddr>().unwrap());
        let other = ClientKey::from("2001:db8:1:3::1".parse::<IpAddr>().unwrap());
        assert_eq!(same, also);
        assert_ne!(same, other);
        let mapped = ClientKey::from("::ffff:10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(mapped, ClientKey::V4(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn map_holds_only_clients_with_open_connections() {
        let l = limiter(100, 100);
        let permits: Vec<_> = (0..50u8)
            .map(|i| l.admit(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(l.lock().per_client.len(), 50);
        drop(permits);
        assert_eq!(l.lock().per_client.len(), 0);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_connections: 1,
            max_connections_per_ip: 1,
            max_body: 1,
            max_body_memory: 1,
        };
        let a = Activity::new();
        let fresh = a.deadline(&limits).unwrap();
        assert!(fresh <= a.base + Duration::from_secs(11));
        // Bytes on a fresh connection do not restart its header clock.
        a.read_progress();
        assert_eq!(a.deadline(&limits), Some(fresh));
        a.set(BUSY);
        assert_eq!(a.deadline(&limits), None);
        a.read_progress();
        assert_eq!(a.deadline(&limits), None);
        a.set(IDLE);
        let idle = a.deadline(&limits).unwrap();
        assert!(idle >= a.base + Duration::from_secs(30));
        a.read_progress();
        let head = a.deadline(&limits).unwrap();
        assert!(head < idle);
    }
}
