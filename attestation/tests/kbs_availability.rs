//! Broker availability under hostile clients (catalogue KBS-10 "slow clients", "cookie flood";
//! issue #21 "broker availability"): idle connections, an `/auth` flood, headers or bodies sent
//! a byte at a time, stalled TLS handshakes and connection caps, each against the real broker
//! over loopback. The attackers use their own loopback addresses (127.0.0.2 and up), the
//! legitimate client 127.0.0.1, as distinct hosts would. Every loop here is bounded in count
//! and time.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod kbs_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coffer_attestation::attester::{Attester, SampleAttester};
use coffer_attestation::kbs::client::{AuthMode, KbsClient, KeyKind};
use coffer_attestation::kbs::path::ResourcePath;
use kbs_support::{Options, TestKbs, start};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &[u8] = b"availability-secret";

fn addr(kbs: &TestKbs) -> SocketAddr {
    kbs.url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .parse()
        .unwrap()
}

/// Lets this process hold a few thousand sockets (both ends of each connection are here).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let wanted = hard.min(16_384);
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).unwrap();
    }
    assert!(
        wanted >= 8192,
        "RLIMIT_NOFILE hard limit {hard} is too low for this test"
    );
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// How long until the server closes `stream` (reads and drops whatever it sends), or `None`
/// if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// One HTTP/1.1 response from `reader`: status and body.
async fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    for _ in 0..100 {
        line.clear();
        reader.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok((status, body))
}

/// `calls` unauthenticated `/auth` requests from `from` over `connections` keep-alive
/// connections (a new one when the server closes one); returns how many were answered 200.
async fn auth_flood(to: SocketAddr, from: [u8; 4], connections: usize, calls: usize) -> usize {
    let body = r#"{"version":"0.4.0","tee":"sample","extra-params":{}}"#;
    let request = format!(
        "POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let remaining = Arc::new(AtomicU64::new(calls as u64));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (request, remaining, ok) = (request.clone(), remaining.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<BufReader<TcpStream>> = None;
            // Each call either takes one of `calls` or the loop ends: bounded by `calls`.
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                if conn.is_none() {
                    conn = connect_from(from, to).await.ok().map(BufReader::new);
                }
                let Some(c) = conn.as_mut() else { continue };
                let answered = async {
                    c.get_mut().write_all(request.as_bytes()).await?;
                    read_response(c).await
                }
                .await;
                match answered {
                    Ok((200, body)) if body.starts_with(b"{\"nonce\"") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => conn = None,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ok.load(Ordering::Relaxed) as usize
}

/// `GET /health` on a new connection from 127.0.0.1: its status and how long it took.
async fn health(to: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = connect_from([127, 0, 0, 1], to).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: kbs\r\nConnection: close\r\n\r\n")
            .await?;
        read_response(&mut BufReader::new(s)).await
    })
    .await;
    match answered {
        Ok(Ok((status, _))) => (status, started.elapsed()),
        _ => (0, started.elapsed()),
    }
}

/// Checks `/health` every 250 ms until `stop` (at most `limit`): (checks, failures, slowest).
async fn watch_health(
    to: SocketAddr,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> (u32, u32, Duration) {
    let (mut checks, mut failures, mut slowest) = (0, 0, Duration::ZERO);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        let (status, took) = health(to).await;
        checks += 1;
        if status != 200 {
            failures += 1;
        }
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (checks, failures, slowest)
}

/// Holds `per_source` idle connections from each of `sources` (never sending a byte), opening
/// a new one whenever the server closes one, until `stop` (at most `limit`); returns how many
/// the server closed.
async fn hold_idle(
    to: SocketAddr,
    sources: Vec<[u8; 4]>,
    per_source: usize,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    limit: Duration,
) -> u64 {
    let mut conns: Vec<([u8; 4], Option<TcpStream>)> = Vec::new();
    for from in &sources {
        for _ in 0..per_source {
            let c = connect_from(*from, to).await.unwrap();
            conns.push((*from, Some(c)));
            opened.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut closed_by_server = 0;
    let started = Instant::now();
    let mut probe = [0u8; 1];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        for (from, slot) in conns.iter_mut() {
            let gone = match slot {
                Some(c) => match c.try_read(&mut probe) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                },
                None => true,
            };
            if gone {
                if slot.is_some() {
                    closed_by_server += 1;
                }
                *slot = connect_from(*from, to).await.ok();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    closed_by_server
}

/// Issue #21's availability test: 2,000 idle connections (from two addresses) and a
/// 50,000-call `/auth` flood (from a third) while a legitimate client completes 100
/// attestations and resource fetches, each a new client with no retry; `/health` answers
/// throughout; the idle connections are cut at the header timeout; the flood stores nothing.
/// Runs on the broker's defaults (caps, timeouts, sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kbs10_idle_connections_and_an_auth_flood_lock_no_client_out() {
    raise_fd_limit();
    let kbs = start(Options::default()).await;
    kbs.put("default/key/1", SECRET);
    let to = addr(&kbs);
    let stop = Arc::new(AtomicBool::new(false));
    let limit = Duration::from_secs(600);

    let health_watch = tokio::spawn(watch_health(to, stop.clone(), limit));
    let opened = Arc::new(AtomicU64::new(0));
    let idle = tokio::spawn(hold_idle(
        to,
        vec![[127, 0, 0, 2], [127, 0, 0, 3]],
        1000,
        stop.clone(),
        opened.clone(),
        limit,
    ));
    // Wait (bounded) until the 2,000 idle connections are open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) < 2000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(opened.load(Ordering::Relaxed), 2000);
    let (status, _) = health(to).await;
    assert_eq!(status, 200, "health with 2,000 idle connections open");

    let flood_started = Instant::now();
    let flood = tokio::spawn(auth_flood(to, [127, 0, 0, 4], 32, 50_000));

    let attester: Arc<dyn Attester> = Arc::new(SampleAttester::new());
    let mut config = kbs.client_config(KeyKind::Ec, AuthMode::Cookie);
    config.max_attempts = 1;
    let path: ResourcePath = "default/key/1".parse().unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let started = Instant::now();
        let client = KbsClient::new(config.clone(), attester.clone()).unwrap();
        let resource = client
            .handshake_and_fetch(&path)
            .await
            .unwrap_or_else(|e| panic!("legitimate handshake {i} failed: {e}"));
        assert_eq!(resource.expose(), SECRET);
        slowest = slowest.max(started.elapsed());
    }
    let legit_done = flood_started.elapsed();

    let answered = tokio::time::timeout(Duration::from_secs(300), flood)
        .await
        .expect("the flood ends within 300 s")
        .unwrap();
    let flood_took = flood_started.elapsed();
    assert_eq!(answered, 50_000, "every /auth call of the flood answered");
    // The flood stored nothing: only the legitimate client's challenges are remembered.
    let stats = kbs.broker.session_stats();
    assert_eq!(stats.used, 100, "{stats:?}");

    // Every idle connection is cut at the header timeout (10 s by default).
    let header_timeout = Duration::from_secs(10);
    tokio::time::sleep(
        header_timeout.saturating_sub(flood_started.elapsed()) + Duration::from_secs(3),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let closed = idle.await.unwrap();
    let (checks, failures, slowest_health) = health_watch.await.unwrap();
    eprintln!(
        "flood: 50,000 /auth in {flood_took:?}; legitimate: 100 handshakes done after {legit_done:?}, \
         slowest {slowest:?}; health: {checks} checks, slowest {slowest_health:?}; \
         idle connections cut by the server: {closed}"
    );
    assert!(closed >= 2000, "only {closed} idle connections were cut");
    assert_eq!(failures, 0, "/health failed {failures} of {checks} times");
    assert!(checks >= 4, "{checks} health checks");
}

/// A slowloris client, headers one byte every 100 ms, is cut off at the header timeout, and
/// the broker keeps serving others meanwhile.
#[tokio::test]
async fn kbs10_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_timeout() {
    let kbs = start(Options {
        http_lines: "header_read_timeout_secs = 2\n",
        ..Options::default()
    })
    .await;
    let to = addr(&kbs);
    let mut slow = connect_from([127, 0, 0, 2], to).await.unwrap();
    let started = Instant::now();
    let headers = format!(
        "GET /health HTTP/1.1\r\nHost: kbs\r\nX-Pad: {}",
        "a".repeat(200)
    );
    let mut cut_after = None;
    for byte in headers.bytes() {
        if slow.write_all(&[byte]).await.is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        if let Some(closed) = closed_within(&mut slow, Duration::from_millis(100)).await {
            cut_after = Some(started.elapsed() - Duration::from_millis(100) + closed);
            break;
        }
        if started.elapsed() > Duration::from_secs(1) && started.elapsed() < Duration::from_secs(2)
        {
            let (status, _) = health(to).await;
            assert_eq!(status, 200);
        }
    }
    let cut_after = cut_after.expect("the slow client was never cut off");
    assert!(
        cut_after >= Duration::from_millis(1900) && cut_after < Duration::from_secs(5),
        "cut off after {cut_after:?}, header timeout 2 s"
    );
    assert_eq!(health(to).await.0, 200);
    assert!(
        kbs.metrics_text()
            .await
            .contains("coffer_kbs_connections_timed_out_total 1")
    );
}

/// A connection that never sends a request is closed at the header timeout; a keep-alive
/// connection after its response at the idle timeout; one that keeps requesting stays open.
#[tokio::test]
async fn kbs10_silent_and_idle_keepalive_connections_are_closed() {
    let kbs = start(Options {
        http_lines: "header_read_timeout_secs = 2\nidle_timeout_secs = 1\n",
        ..Options::default()
    })
    .await;
    let to = addr(&kbs);
    let mut silent = connect_from([127, 0, 0, 2], to).await.unwrap();
    let mut keepalive = BufReader::new(connect_from([127, 0, 0, 3], to).await.unwrap());
    let request = b"GET /health HTTP/1.1\r\nHost: kbs\r\n\r\n";
    // Requests every 500 ms keep a connection open past both timeouts.
    for _ in 0..6 {
        keepalive.get_mut().write_all(request).await.unwrap();
        assert_eq!(read_response(&mut keepalive).await.unwrap().0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let silent_closed = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(silent_closed.is_some(), "silent connection still open");
    let idle_closed = closed_within(keepalive.get_mut(), Duration::from_secs(5))
        .await
        .expect("idle keep-alive connection still open");
    assert!(
        idle_closed >= Duration::from_millis(400) && idle_closed < Duration::from_millis(2500),
        "idle connection closed {idle_closed:?} after its last request's sleep"
    );
}

/// A body trickling in slower than the body timeout gets 408 and the connection is closed; an
/// oversized declared body gets 413 at once.
#[tokio::test]
async fn kbs10_slow_and_oversized_bodies_are_refused() {
    let kbs = start(Options {
        max_body: 4096,
        http_lines: "body_timeout_secs = 1\n",
        ..Options::default()
    })
    .await;
    let to = addr(&kbs);
    let mut slow = BufReader::new(connect_from([127, 0, 0, 2], to).await.unwrap());
    slow.get_mut()
        .write_all(
            b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"vers",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut slow))
        .await
        .expect("no reply to the slow body")
        .unwrap();
    assert_eq!(status, 408);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        closed_within(slow.get_mut(), Duration::from_secs(2))
            .await
            .is_some()
    );

    let mut big = BufReader::new(connect_from([127, 0, 0, 2], to).await.unwrap());
    big.get_mut()
        .write_all(b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), read_response(&mut big))
        .await
        .expect("no reply to the oversized body")
        .unwrap();
    assert_eq!(status, 413);
    assert!(
        kbs.metrics_text()
            .await
            .contains("coffer_kbs_body_timeouts_total 1")
    );
}

/// Bodies being read share one memory budget: two slow uploads holding it make a third body
/// wait until they are cut off at the body timeout (408), while requests without a body are
/// served at once.
#[tokio::test]
async fn kbs10_request_bodies_share_one_memory_budget() {
    let kbs = start(Options {
        max_body: 4096,
        http_lines: "max_body_memory_bytes = 8192\nbody_timeout_secs = 2\n",
        ..Options::default()
    })
    .await;
    let to = addr(&kbs);
    let mut hogs = Vec::new();
    for from in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        let mut c = connect_from(from, to).await.unwrap();
        c.write_all(b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Length: 4096\r\n\r\n{")
            .await
            .unwrap();
        hogs.push(BufReader::new(c));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let auth = |from| async move {
        let body = r#"{"version":"0.4.0","tee":"sample","extra-params":{}}"#;
        let mut c = BufReader::new(connect_from(from, to).await.unwrap());
        c.get_mut()
            .write_all(
                format!(
                    "POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let started = Instant::now();
        let (status, _) = read_response(&mut c).await.unwrap();
        (status, started.elapsed())
    };
    let waiting = tokio::spawn(auth([127, 0, 0, 4]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No body, no reservation: served at once.
    let (status, took) = health(to).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    for hog in hogs.iter_mut() {
        assert_eq!(read_response(hog).await.unwrap().0, 408);
    }
    // The hogs held the budget for 2 s from t = 0; the third body, sent at t = 0.3 s, was read
    // only once they were cut off.
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(1400),
        "a body beyond the budget was read after {waited:?}"
    );
}

/// Beyond `max_connections_per_ip` from one address, or `max_connections` in all, a connection
/// is closed at once; others are served; closing connections frees their places.
#[tokio::test]
async fn kbs10_connection_caps_per_address_and_in_all() {
    let kbs = start(Options {
        http_lines: "max_connections = 8\nmax_connections_per_ip = 3\n",
        ..Options::default()
    })
    .await;
    let to = addr(&kbs);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 2], to).await.unwrap());
    }
    // Give the accept loop the three connections before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect_from([127, 0, 0, 2], to).await.unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2))
            .await
            .is_some(),
        "a fourth connection from 127.0.0.2 was kept"
    );
    assert_eq!(health(to).await.0, 200, "another address is served");
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 3], to).await.unwrap());
    }
    for _ in 0..2 {
        held.push(connect_from([127, 0, 0, 4], to).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Eight open: the global cap turns everyone away, 127.0.0.1 included.
    assert_eq!(health(to).await.0, 0);
    held.truncate(5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health(to).await.0, 200, "freed places serve again");
    let metrics = kbs.metrics_text().await;
    assert!(
        metrics.contains("coffer_kbs_connections_refused_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("coffer_kbs_connections 6"), "{metrics}");
}

/// HTTPS: 200 connections that never start their TLS handshake neither stall the accept loop
/// nor a legitimate HTTPS client, and are closed at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kbs10_stalled_tls_handshakes_do_not_stall_accepts() {
    let kbs = start(Options {
        tls: true,
        http_lines: "header_read_timeout_secs = 2\n",
        ..Options::default()
    })
    .await;
    kbs.put("default/key/1", SECRET);
    let to = addr(&kbs);
    let mut stalled = Vec::new();
    for _ in 0..200 {
        stalled.push(connect_from([127, 0, 0, 2], to).await.unwrap());
    }
    let started = Instant::now();
    let client = kbs.sample_client(KeyKind::Ec, AuthMode::Cookie);
    let path: ResourcePath = "default/key/1".parse().unwrap();
    assert_eq!(client.get_resource(&path).await.unwrap().expose(), SECRET);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "handshake took {:?} behind stalled TLS handshakes",
        started.elapsed()
    );
    for s in stalled.iter_mut() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await.is_some(),
            "a stalled TLS connection is still open"
        );
    }
}
