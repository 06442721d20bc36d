//! `cargo bench -p coffer-attestation --bench kbs_replicas`: sample handshakes per second (auth,
//! attest, resource fetch and decrypt) against 1, 2 and 3 `coffer-kbs` processes sharing one
//! PostgreSQL store (a throwaway cluster, Unix socket) and one session key set, driven by the load
//! generator's library (`kbs::load::run`, what `kbs-load --also-url` runs) with its workers spread
//! over the replicas, a new client and connection per handshake.
//!
//! Every process here (load generator, replicas, PostgreSQL) shares the machine's cores, so the
//! figures measure the replicas' overhead and the store's cost, not scale-out: on a 2-core box
//! more replicas cannot add CPU. The brokers' and the generator's CPU per handshake are printed
//! beside the rate to show where the cores went.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: failures abort the run

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_attestation::kbs::client::KeyKind;
use coffer_attestation::kbs::load::{LoadConfig, run};
use coffer_attestation::testing::postgres::Postgres;

#[path = "../tests/kbs_support/keys.rs"]
mod keys;

const CONCURRENCY: usize = 32;
const SECONDS: u64 = 15;
const ALLOW_ALL: &str = "package policy\nimport rego.v1\ndefault allow := false\nallow if { data.plugin == \"resource\" }\n";

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit(')').next()?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU ticks of a process, and its parent.
fn ticks_and_parent(pid: u32) -> Option<(u64, u32)> {
    let f = stat_fields(pid)?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ticks, f.get(1)?.parse().ok()?))
}

fn cpu_ticks(pid: u32) -> u64 {
    ticks_and_parent(pid).map_or(0, |(t, _)| t)
}

/// CPU ticks of the PostgreSQL server: the postmaster and its children (the backends).
fn postgres_ticks(pg: &Postgres) -> u64 {
    let pid_file = pg.dir().join("data/postmaster.pid");
    let postmaster: u32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let children: u64 = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(ticks_and_parent)
        .filter(|(_, parent)| *parent == postmaster)
        .map(|(t, _)| t)
        .sum();
    cpu_ticks(postmaster) + children
}

fn write_config(dir: &Path, name: &str, listen: SocketAddr, store: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"{listen}\"\ninsecure_http = true\n\
             [token]\nsigning_key = {token:?}\n[admin]\npublic_key = {admin:?}\n\
             [sessions]\nkeys = [{key:?}]\n[policy]\nfile = {policy:?}\n\
             [attestation]\nallow_sample = true\n{store}",
            token = dir.join("token.key"),
            admin = dir.join("admin.pub"),
            key = dir.join("session.key"),
            policy = dir.join("policy.rego"),
        ),
    )
    .unwrap();
    path
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{url}/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} not ready");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let pg = Postgres::start().expect("postgresql");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = keys::write_shared_keys(d, &["session"]);
    std::fs::write(d.join("policy.rego"), ALLOW_ALL).unwrap();
    let http = reqwest::Client::new();
    println!(
        "kbs_replicas: {CONCURRENCY} concurrent clients, {SECONDS} s per run, {} cores, PostgreSQL store",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // One replica on the directory store first (no database: the store's cost), then 1, 2 and 3
    // replicas on PostgreSQL.
    for (replicas, postgres) in [(1usize, false), (1, true), (2, true), (3, true)] {
        let store = if postgres {
            let db = pg.create_db().unwrap();
            format!(
                "[store]\nbackend = \"postgres\"\n[store.postgres]\nconnection = {:?}\npassword_file = {:?}\n",
                pg.connection(&db),
                pg.password_file()
            )
        } else {
            let resources = d.join("resources");
            format!("[resources]\ndir = {resources:?}\n")
        };
        let mut urls = Vec::new();
        let mut procs = Vec::new();
        for i in 0..replicas {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let config = write_config(d, &format!("r{replicas}-{i}"), addr, &store);
            let child = Command::new(env!("CARGO_BIN_EXE_coffer-kbs"))
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            urls.push(format!("http://{addr}"));
            procs.push(Replica(child));
        }
        for url in &urls {
            wait_ready(&http, url).await;
        }
        let admin_token = admin
            .sign(&serde_json::json!({"exp": coffer_now() + 600}))
            .unwrap();
        let r = http
            .post(format!("{}/kbs/v0/resource/default/load/key", urls[0]))
            .header("authorization", format!("Bearer {admin_token}"))
            .body(vec![7u8; 32])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let before: Vec<u64> = procs.iter().map(|p| cpu_ticks(p.0.id())).collect();
        let pg_before = postgres_ticks(&pg);
        let report = run(
            LoadConfig {
                url: urls[0].clone(),
                also_urls: urls[1..].to_vec(),
                ca_cert_pem: None,
                resource: "default/load/key".parse().unwrap(),
                concurrency: CONCURRENCY,
                total: None,
                duration: Some(Duration::from_secs(SECONDS)),
                server_pid: None,
                nstat: false,
                sample_every: Duration::from_secs(60),
                timeout: Duration::from_secs(30),
                key: KeyKind::Ec,
            },
            |_| {},
        )
        .await
        .unwrap();
        let ticks: u64 = procs
            .iter()
            .zip(&before)
            .map(|(p, b)| cpu_ticks(p.0.id()) - b)
            .sum();
        // clock ticks are 1/100 s on Linux.
        let per = |ticks: u64| ticks as f64 * 10.0 / report.ok.max(1) as f64;
        let broker_ms = per(ticks);
        let pg_ms = per(postgres_ticks(&pg) - pg_before);
        println!(
            "kbs_replicas: {replicas} replica(s), {}: {:.0} handshakes/s ({} ok, {} failed in {:.1} s), p50 {:.1} ms, p99 {:.1} ms, CPU per handshake: brokers {broker_ms:.2} ms, postgres {pg_ms:.2} ms, load generator {:.2} ms",
            if postgres { "postgres" } else { "directory" },
            report.handshakes_per_sec,
            report.ok,
            report.failed,
            report.elapsed_secs,
            report.latency.p50_ms,
            report.latency.p99_ms,
            report.client_cpu_ms_per_handshake.unwrap_or(0.0),
        );
        drop(procs);
    }
}

fn coffer_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
