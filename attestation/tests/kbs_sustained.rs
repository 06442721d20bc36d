//! A long-running `coffer-kbs` process on its defaults under sustained handshakes (issue #24):
//! 10,500 handshakes (more than the 10,000 sessions brokers used to hold before sessions were
//! sealed into the cookie, #23) within one `sessions.ttl_secs` window all succeed, the broker's
//! used-challenge record stays within its bound, and its log at the default level has
//! no line per handshake. Driven from outside by the load generator's library
//! (`kbs::load::run`, what `kbs-load` runs): a new client, key and connection per handshake,
//! no retries.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_attestation::kbs::client::KeyKind;
use coffer_attestation::kbs::load::{LoadConfig, run};
use coffer_attestation::kbs::server::config::Config;

/// `sessions.max_used_challenges` and `sessions.ttl_secs` on the broker's defaults.
fn session_defaults() -> (usize, u64) {
    let c = Config::default();
    (c.sessions.max_used_challenges, c.sessions.ttl_secs)
}

/// A metric's value in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_handshakes_than_sessions_max_within_one_ttl_window_on_defaults_and_a_quiet_log() {
    let (max, ttl_secs) = session_defaults();
    let handshakes: u64 = 10_500;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("resources/default/load")).unwrap();
    std::fs::write(dir.path().join("resources/default/load/key"), [7u8; 32]).unwrap();
    std::fs::write(
        dir.path().join("policy.rego"),
        "package policy\nimport rego.v1\ndefault allow := false\nallow if { data.plugin == \"resource\" }\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Only what a development broker must say; every limit, timeout and session key default.
    std::fs::write(
        dir.path().join("kbs.toml"),
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\ninsecure_http = true\n\
             [resources]\ndir = {:?}\n[policy]\nfile = {:?}\n[attestation]\nallow_sample = true\n",
            dir.path().join("resources"),
            dir.path().join("policy.rego"),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("kbs.log")).unwrap();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_coffer-kbs"))
        .arg("--config")
        .arg(dir.path().join("kbs.toml"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = Instant::now();
    while http.get(format!("{url}/health")).send().await.is_err() {
        assert!(ready.elapsed() < Duration::from_secs(30), "broker not up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report = run(
        LoadConfig {
            url: url.clone(),
            also_urls: Vec::new(),
            ca_cert_pem: None,
            resource: "default/load/key".parse().unwrap(),
            concurrency: 32,
            total: Some(handshakes),
            duration: None,
            server_pid: Some(broker.id()),
            nstat: false,
            sample_every: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            key: KeyKind::Ec,
        },
        |s| eprintln!("{:.0} s: {} ok, {} failed", s.secs, s.ok, s.failed),
    )
    .await
    .unwrap();
    eprint!("{report}");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.ok, handshakes);
    assert!(
        report.elapsed_secs < ttl_secs as f64,
        "{handshakes} handshakes took {:.0} s, more than one {ttl_secs} s window: proves nothing",
        report.elapsed_secs
    );
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let used = metric(&metrics, "coffer_kbs_used_challenges");
    assert!(used <= max as u64, "{used} used challenges held, max {max}");
    assert_eq!(metric(&metrics, "coffer_kbs_attest_ok_total"), handshakes);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(broker.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = broker.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "broker ignores SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    let mut text = String::new();
    std::fs::File::open(dir.path().join("kbs.log"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    eprintln!("broker log:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    // Start-up warnings, the sample warning at most once a minute, shutdown.
    let minutes = (report.elapsed_secs / 60.0).ceil() as usize;
    assert!(
        lines.len() <= 6 + minutes,
        "{} log lines for {handshakes} handshakes",
        lines.len()
    );
    for per_handshake in [
        "challenge issued",
        "attested",
        "resource released",
        "refused",
    ] {
        assert!(
            !lines.iter().any(|l| l.contains(per_handshake)),
            "a per-handshake line ({per_handshake}) at the default level"
        );
    }
    let sample_lines = lines
        .iter()
        .filter(|l| l.contains("accepting sample evidence"))
        .count();
    assert!(
        (1..=minutes + 1).contains(&sample_lines),
        "{sample_lines} sample-evidence warnings in {minutes} min"
    );
}
