//! A hostile registry (REG-03, REG-07): a manifest that never ends, one whose `Content-Length`
//! is beyond the limit, a redirect loop, a redirect from HTTPS down to plain HTTP, a layer and a
//! manifest trickled a byte at a time (slowloris) or never answered, and a token service whose
//! answer is 10 MB, endless or trickled, that refuses every request, or whose every token the
//! registry refuses with a fresh challenge. The
//! registry is a raw HTTP/1.1 server in this file; its HTTPS face is socat with a certificate from
//! a test CA. Each pull fails with a typed error, reads no more than it must, and leaves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use coffer_image::auth::{AuthError, MAX_AUTH_ROUNDS, MAX_TOKEN_BYTES};
use coffer_image::registry::RegistryError;
use coffer_image::registry::Stall;
use coffer_image::{BlobStore, Digest, PullError, PullOptions, RegistriesConfig, pull};
use common::registry::make_certs;
use common::require_tool;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CHUNK: usize = 64 << 10;

/// An image whose one layer the registry trickles (`/v2/slow/...`).
struct SlowImage {
    manifest: Vec<u8>,
    config: Vec<u8>,
    config_digest: Digest,
    layer: Vec<u8>,
    layer_digest: Digest,
}

/// Between two bytes of the trickled layer.
const TRICKLE: Duration = Duration::from_millis(100);

static SLOW: LazyLock<SlowImage> = LazyLock::new(|| {
    // 8 KiB of noise in a gzip'd tar: too much to trickle within the test's stall window.
    let mut noise = Vec::with_capacity(8192);
    let mut x = 0x2545_f491_u32;
    for _ in 0..8192 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(noise.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "noise", &noise[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = Digest::of(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{}}}}"#,
        Digest::of(&tar)
    )
    .into_bytes();
    let config_digest = Digest::of(&config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    )
    .into_bytes();
    SlowImage {
        manifest,
        config,
        config_digest,
        layer,
        layer_digest,
    }
});

/// What the hostile registry saw and sent.
#[derive(Default)]
struct Seen {
    body_bytes: AtomicU64,
    loop_hits: AtomicUsize,
    plain_hits: AtomicUsize,
    /// Requests for `/v2/tok-*` manifests.
    challenged: AtomicUsize,
    /// Requests to the token service, any path.
    token_requests: AtomicUsize,
}

/// The longest the server holds a connection it never answers.
const SILENCE: Duration = Duration::from_secs(20);

struct Hostile {
    port: u16,
    seen: Arc<Seen>,
}

impl Hostile {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let shared = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = shared.clone();
                std::thread::spawn(move || serve(stream, port, &seen));
            }
        });
        Self { port, seen }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Answers one connection's requests (keep-alive) until the client goes away.
fn serve(stream: TcpStream, port: u16, seen: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let chunk = vec![b' '; CHUNK];
        let token_path = path.split('?').next().unwrap_or_default().to_owned();
        let sent = match path.as_str() {
            // Every `tok-KIND` repository wants a token from the service's `/token/KIND`.
            p if p.starts_with("/v2/tok-") && p.contains("/manifests/") => {
                seen.challenged.fetch_add(1, Ordering::SeqCst);
                let kind = p["/v2/tok-".len()..].split('/').next().unwrap_or_default();
                out.write_all(
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token/{kind}\",service=\"hostile\"\r\nContent-Length: 0\r\n\r\n"
                    )
                    .as_bytes(),
                )
            }
            p if p.starts_with("/token/") => {
                seen.token_requests.fetch_add(1, Ordering::SeqCst);
                match token_path.as_str() {
                    // A valid answer, with a token the registry never accepts.
                    "/token/loop" | "/token/plain" => {
                        let body = format!(
                            r#"{{"token":"t-{}","expires_in":300}}"#,
                            seen.token_requests.load(Ordering::SeqCst)
                        );
                        out.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                    }
                    "/token/refuse" => out.write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                    ),
                    // 10 MB announced and sent.
                    "/token/big" => {
                        let total: u64 = 10 << 20;
                        let mut result = out.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        let mut sent = 0;
                        while result.is_ok() && sent < total {
                            result = out.write_all(&chunk);
                            if result.is_ok() {
                                sent += CHUNK as u64;
                                seen.body_bytes.fetch_add(CHUNK as u64, Ordering::SeqCst);
                            }
                        }
                        return;
                    }
                    // No length and no end.
                    "/token/endless" => {
                        endless(&mut out, "application/json", seen);
                        return;
                    }
                    // A short answer, one byte per `TRICKLE`.
                    "/token/trickle" => {
                        let body = format!(r#"{{"token":"{}"}}"#, "t".repeat(200));
                        let mut result = out.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        );
                        trickle(&mut out, body.as_bytes(), &mut result, seen);
                        return;
                    }
                    _ => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                }
            }
            // The image's manifest, one byte per `TRICKLE`.
            "/v2/slowmanifest/manifests/v1" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST_TYPE}\r\nContent-Length: {}\r\n\r\n",
                    SLOW.manifest.len()
                );
                let mut result = out.write_all(head.as_bytes());
                trickle(&mut out, &SLOW.manifest, &mut result, seen);
                return;
            }
            // The request is read and never answered.
            "/v2/silent/manifests/v1" => {
                std::thread::sleep(SILENCE);
                return;
            }
            "/v2/" => out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            ),
            // A manifest with no end, sent chunked: a client that reads it all never returns.
            "/v2/endless/manifests/v1" => {
                endless(&mut out, MANIFEST_TYPE, seen);
                return;
            }
            // A gigabyte announced up front.
            "/v2/announced/manifests/v1" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST_TYPE}\r\nContent-Length: {}\r\n\r\n",
                    1u64 << 30
                );
                let mut result = out.write_all(head.as_bytes());
                while result.is_ok() {
                    result = out.write_all(&chunk);
                    if result.is_ok() {
                        seen.body_bytes.fetch_add(CHUNK as u64, Ordering::SeqCst);
                    }
                }
                return;
            }
            "/v2/loop/manifests/v1" => {
                seen.loop_hits.fetch_add(1, Ordering::SeqCst);
                out.write_all(
                    b"HTTP/1.1 302 Found\r\nLocation: /v2/loop/manifests/v1\r\nContent-Length: 0\r\n\r\n",
                )
            }
            // Reached over HTTPS (through socat): sends the client to plain HTTP.
            "/v2/downgrade/manifests/v1" => out.write_all(
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/v2/plain/manifests/v1\r\nContent-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            ),
            "/v2/slow/manifests/v1" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST_TYPE}\r\nContent-Length: {}\r\n\r\n",
                    SLOW.manifest.len()
                );
                out.write_all(head.as_bytes())
                    .and_then(|()| out.write_all(&SLOW.manifest))
            }
            p if p == format!("/v2/slow/blobs/{}", SLOW.config_digest) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    SLOW.config.len()
                );
                out.write_all(head.as_bytes())
                    .and_then(|()| out.write_all(&SLOW.config))
            }
            // The layer, one byte per `TRICKLE`: every read sees progress, the download never
            // ends in reasonable time.
            p if p == format!("/v2/slow/blobs/{}", SLOW.layer_digest) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    SLOW.layer.len()
                );
                let mut result = out.write_all(head.as_bytes());
                for byte in &SLOW.layer {
                    if result.is_err() {
                        break;
                    }
                    result = out.write_all(&[*byte]).and_then(|()| out.flush());
                    if result.is_ok() {
                        seen.body_bytes.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(TRICKLE);
                }
                return;
            }
            "/v2/plain/manifests/v1" => {
                seen.plain_hits.fetch_add(1, Ordering::SeqCst);
                out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            }
            _ => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Sends a chunked body of `content_type` with no end, while the client takes it.
fn endless(out: &mut TcpStream, content_type: &str, seen: &Seen) {
    let chunk = vec![b' '; CHUNK];
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut result = out.write_all(head.as_bytes());
    while result.is_ok() {
        result = out
            .write_all(format!("{CHUNK:x}\r\n").as_bytes())
            .and_then(|()| out.write_all(&chunk))
            .and_then(|()| out.write_all(b"\r\n"));
        if result.is_ok() {
            seen.body_bytes.fetch_add(CHUNK as u64, Ordering::SeqCst);
        }
    }
}

/// Sends `bytes` one at a time, `TRICKLE` apart, while the client takes them.
fn trickle(out: &mut TcpStream, bytes: &[u8], result: &mut std::io::Result<()>, seen: &Seen) {
    for byte in bytes {
        if result.is_err() {
            return;
        }
        *result = out.write_all(&[*byte]).and_then(|()| out.flush());
        if result.is_ok() {
            seen.body_bytes.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(TRICKLE);
    }
}

/// socat terminating TLS (a leaf for 127.0.0.1 from a fresh CA) in front of the hostile server.
struct TlsFront {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsFront {
    fn start(backend: u16) -> Self {
        require_tool("socat", "socat");
        let dir = tempfile::tempdir().unwrap();
        make_certs(dir.path());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={d}/leaf.pem,key={d}/leaf.key"
            ))
            .arg(format!("TCP:127.0.0.1:{backend}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "socat did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }
}

impl TlsFront {
    /// A configuration trusting the front's CA.
    fn registries(&self) -> RegistriesConfig {
        RegistriesConfig::from_toml(&format!(
            "ca_files = [{:?}]\n",
            self.dir.path().join("ca.pem")
        ))
        .unwrap()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry error under the pull's "no source could serve" wrapper.
fn registry_error(err: PullError) -> RegistryError {
    let PullError::Registry(err) = err else {
        panic!("expected a registry error, got {err:?}");
    };
    match err {
        RegistryError::AllSourcesFailed { source, .. } => *source,
        other => other,
    }
}

async fn pull_fails(reference: &str, registries: RegistriesConfig) -> RegistryError {
    pull_fails_with(reference, registries, Stall::default())
        .await
        .0
}

/// A pull of `reference` with the stall bound `stall` that fails and leaves nothing: its
/// registry error and how long it took.
async fn pull_fails_with(
    reference: &str,
    registries: RegistriesConfig,
    stall: Stall,
) -> (RegistryError, Duration) {
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&work.path().join("store")).unwrap();
    let dest = work.path().join("root");
    let mut options = PullOptions::new(store).with_registries(registries);
    options.limits.stall = stall;
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), pull(reference, &dest, &options))
        .await
        .expect("the pull ends")
        .unwrap_err();
    let took = started.elapsed();
    assert!(!dest.exists(), "{reference}: a destination was left");
    // Nothing but the store's empty directories: no blob, no staging root.
    let left: Vec<_> = common::tree(work.path())
        .into_iter()
        .filter(|(_, node)| !matches!(node, common::Node::Dir { .. }))
        .collect();
    assert!(left.is_empty(), "{reference}: left {left:?}");
    (registry_error(err), took)
}

/// The manifest request failed in transport (here: a redirect the client would not follow).
fn is_manifest_transport(err: &RegistryError) -> bool {
    matches!(
        err,
        RegistryError::Transport {
            what: "manifest",
            ..
        }
    )
}

fn insecure(host: &str) -> RegistriesConfig {
    let mut registries = RegistriesConfig::default();
    registries.add_insecure(host).unwrap();
    registries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg03_a_manifest_is_read_no_further_than_its_limit() {
    let registry = Hostile::start();
    let limit = coffer_image::Limits::default().max_manifest_bytes;

    let err = pull_fails(
        &format!("{}/endless:v1", registry.host()),
        insecure(&registry.host()),
    )
    .await;
    assert!(
        matches!(err, RegistryError::TooLarge { what: "manifest", limit: l } if l == limit),
        "{err:?}"
    );
    // What the client read, plus what the sockets' buffers held when it stopped.
    let sent = registry.seen.body_bytes.load(Ordering::SeqCst);
    assert!(sent < limit + (32 << 20), "the client read {sent} bytes");

    registry.seen.body_bytes.store(0, Ordering::SeqCst);
    let err = pull_fails(
        &format!("{}/announced:v1", registry.host()),
        insecure(&registry.host()),
    )
    .await;
    assert!(
        matches!(
            err,
            RegistryError::TooLarge {
                what: "manifest",
                ..
            }
        ),
        "{err:?}"
    );
    let sent = registry.seen.body_bytes.load(Ordering::SeqCst);
    assert!(
        sent < 32 << 20,
        "refused on the header, yet {sent} bytes were taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg07_redirect_loops_and_https_downgrades_are_refused() {
    let registry = Hostile::start();

    let err = pull_fails(
        &format!("{}/loop:v1", registry.host()),
        insecure(&registry.host()),
    )
    .await;
    assert!(is_manifest_transport(&err), "{err:?}");
    let hits = registry.seen.loop_hits.load(Ordering::SeqCst);
    assert!((2..=6).contains(&hits), "followed the loop {hits} times");

    let front = TlsFront::start(registry.port);
    let registries = front.registries();
    let err = pull_fails(
        &format!("127.0.0.1:{}/downgrade:v1", front.port),
        registries,
    )
    .await;
    assert!(is_manifest_transport(&err), "{err:?}");
    assert_eq!(
        registry.seen.plain_hits.load(Ordering::SeqCst),
        0,
        "followed the redirect to plain HTTP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg07_a_trickled_layer_is_cut_off_after_the_stall_window() {
    let registry = Hostile::start();
    let reference = format!("{}/slow:v1", registry.host());
    let (err, took) = pull_fails_stalling(&reference, insecure(&registry.host())).await;
    match &err {
        RegistryError::Stalled {
            registry: host,
            what: "layer",
            digest: Some(digest),
            window,
            min_bytes: 64,
            received,
            ..
        } => {
            assert_eq!(host, &registry.host());
            assert_eq!(digest, &SLOW.layer_digest);
            assert_eq!(*window, Duration::from_secs(2));
            assert!(*received < 64, "{received} bytes received");
        }
        other => panic!("expected a stall, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(10),
        "cut off only after {took:?}"
    );
    let sent = registry.seen.body_bytes.load(Ordering::SeqCst);
    assert!(sent < SLOW.layer.len() as u64, "the whole layer was sent");
    println!("cut off after {took:?}: {err}");
}

/// The stall bound of the trickle tests: 10 bytes a second fall short of 64 bytes in 2 s.
fn test_stall() -> Stall {
    Stall {
        window: Duration::from_secs(2),
        min_bytes: 64,
    }
}

/// [`pull_fails_with`] [`test_stall`].
async fn pull_fails_stalling(
    reference: &str,
    registries: RegistriesConfig,
) -> (RegistryError, Duration) {
    pull_fails_with(reference, registries, test_stall()).await
}

/// The token service's error under [`RegistryError::Auth`].
fn auth_error(err: RegistryError) -> AuthError {
    match err {
        RegistryError::Auth { source, .. } => source,
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg07_a_token_answer_is_read_no_further_than_its_limit_nor_past_a_stall() {
    let registry = Hostile::start();
    let host = registry.host();

    // 10 MB announced, and an answer with no end: refused at 64 KiB.
    for kind in ["big", "endless"] {
        registry.seen.body_bytes.store(0, Ordering::SeqCst);
        let err = pull_fails(&format!("{host}/tok-{kind}:v1"), insecure(&host)).await;
        println!("{kind}: {}", error_chain(&err));
        match auth_error(err) {
            AuthError::TooLarge { service, limit } => {
                assert_eq!(service, host);
                assert_eq!(limit, MAX_TOKEN_BYTES);
            }
            other => panic!("{kind}: expected TooLarge, got {other:?}"),
        }
        let sent = registry.seen.body_bytes.load(Ordering::SeqCst);
        assert!(sent < 32 << 20, "{kind}: the client took {sent} bytes");
    }

    // A trickled answer: cut off after one stall window.
    let (err, took) = pull_fails_stalling(&format!("{host}/tok-trickle:v1"), insecure(&host)).await;
    println!("trickle, after {took:?}: {}", error_chain(&err));
    match auth_error(err) {
        AuthError::Stalled {
            service,
            window,
            min_bytes: 64,
            received,
        } => {
            assert_eq!(service, host);
            assert_eq!(window, Duration::from_secs(2));
            assert!(received < 64, "{received} bytes received");
        }
        other => panic!("trickle: expected Stalled, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(10),
        "cut off only after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg07_auth_challenge_loops_end_after_a_bounded_number_of_rounds() {
    let registry = Hostile::start();
    let host = registry.host();
    let seen = &registry.seen;

    // The registry refuses every fresh token with a new challenge.
    let err = pull_fails(&format!("{host}/tok-loop:v1"), insecure(&host)).await;
    println!("loop: {}", error_chain(&err));
    assert!(
        matches!(
            err.cause(),
            Some(coffer_image::registry::FailureCause::Unauthorized)
        ),
        "{err:?}"
    );
    match auth_error(err) {
        AuthError::ChallengeLoop {
            registry: r,
            rounds,
            ..
        } => {
            assert_eq!(r, host);
            assert_eq!(rounds, MAX_AUTH_ROUNDS);
        }
        other => panic!("expected ChallengeLoop, got {other:?}"),
    }
    assert_eq!(seen.token_requests.load(Ordering::SeqCst), MAX_AUTH_ROUNDS);
    assert_eq!(seen.challenged.load(Ordering::SeqCst), MAX_AUTH_ROUNDS + 1);

    // The token service refuses every request: one request, a typed refusal.
    seen.token_requests.store(0, Ordering::SeqCst);
    let err = pull_fails(&format!("{host}/tok-refuse:v1"), insecure(&host)).await;
    println!("refuse: {}", error_chain(&err));
    match auth_error(err) {
        AuthError::Status { service, status } => {
            assert_eq!(service, host);
            assert_eq!(status, 401);
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert_eq!(seen.token_requests.load(Ordering::SeqCst), 1);

    // A registry reached over HTTPS naming a token service over plain HTTP: the credentials are
    // not sent there.
    seen.token_requests.store(0, Ordering::SeqCst);
    let front = TlsFront::start(registry.port);
    let registries = front.registries();
    let err = pull_fails(
        &format!("127.0.0.1:{}/tok-plain:v1", front.port),
        registries,
    )
    .await;
    println!("plain realm: {}", error_chain(&err));
    assert!(
        matches!(auth_error(err), AuthError::InsecureRealm { .. }),
        "expected InsecureRealm"
    );
    assert_eq!(seen.token_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reg07_a_trickled_or_silent_manifest_is_cut_off_after_the_stall_window() {
    let registry = Hostile::start();
    let host = registry.host();
    for (name, most) in [("slowmanifest", 64), ("silent", 1)] {
        let reference = format!("{host}/{name}:v1");
        let (err, took) = pull_fails_stalling(&reference, insecure(&host)).await;
        println!("{name}, after {took:?}: {}", error_chain(&err));
        match &err {
            RegistryError::Stalled {
                registry: r,
                what: "manifest",
                reference: named,
                digest: None,
                window,
                min_bytes: 64,
                received,
            } => {
                assert_eq!(r, &host);
                assert_eq!(named, &reference);
                assert_eq!(*window, Duration::from_secs(2));
                assert!(*received < most, "{received} bytes received");
            }
            other => panic!("{name}: expected a stall, got {other:?}"),
        }
        assert!(
            took < Duration::from_secs(10),
            "{name}: cut off only after {took:?}"
        );
    }
    let sent = registry.seen.body_bytes.load(Ordering::SeqCst);
    assert!(
        sent < SLOW.manifest.len() as u64,
        "the whole manifest was sent"
    );
}

/// `err` and its sources, as the CLI prints them.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(err), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
