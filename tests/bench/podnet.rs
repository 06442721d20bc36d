//! Pod network benchmark: TCP connect latency and throughput between two Coffer pods and between
//! two runc pods on the same CNI bridge (the `cri` suite's one-node cluster: containerd in a
//! network namespace of the benchmark's own, Debian's CNI `bridge` + `host-local`), measured by
//! `coffer-net-probe` inside the pods, in interleaved rounds (the order alternates each round),
//! then the medians and the Coffer / runc ratios. Under TCG the absolute figures mean little; the
//! ratio and its trend do.
//!
//! `cargo build --release --workspace && cargo bench -p coffer-tests --bench podnet [-- ROUNDS]`
//! (default 5 rounds; the shim and the guest agent come from the release build); `NET_BENCH_BYTES` sets the
//! stream size (default 16 MiB), `NET_BENCH_CONNECTS` the connect probes per round (default 50).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, ensure};
use coffer_tests::cluster::{Cluster, HANDLER, RUNC_HANDLER};
use coffer_tests::containerd::oci_archive;
use coffer_tests::cri::v1;

const PROBE_IMAGE: &str = "coffer.test/netprobe:latest";
const PORT: u16 = 5201;

/// One round's figures for one pair.
#[derive(Debug, Clone, Copy)]
struct Round {
    connect_p50_us: f64,
    connect_p99_us: f64,
    mbit_s: f64,
}

/// A server pod and a client pod of one runtime, both running the probe image.
struct Pair {
    runtime: &'static str,
    pods: Vec<String>,
    client: String,
    server: SocketAddr,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pair(cluster: &Cluster, runtime: &'static str, handler: &str) -> anyhow::Result<Pair> {
    let mut pods = Vec::new();
    let mut ids = Vec::new();
    for role in ["server", "client"] {
        let name = format!("{runtime}-{role}");
        let pod = cluster.pod_config(&name);
        let (id, _) = cluster.run_pod(&pod, handler)?;
        pods.push(id.clone());
        let script = if role == "server" {
            format!("exec /bin/coffer-net-probe server --listen 0.0.0.0:{PORT}")
        } else {
            "exec sleep 100000".to_owned()
        };
        let container = cluster.create_and_start(&id, &pod, role, PROBE_IMAGE, &script)?;
        cluster.wait_state(&container, v1::ContainerState::ContainerRunning)?;
        ids.push((id, container));
    }
    let server = SocketAddr::from((cluster.pod_ip(&ids[0].0)?, PORT));
    Ok(Pair {
        runtime,
        pods,
        client: ids[1].1.clone(),
        server,
    })
}

fn round(cluster: &Cluster, pair: &Pair, connects: u32, bytes: u64) -> anyhow::Result<Round> {
    let run = cluster.exec_sync(
        &pair.client,
        &[
            "/bin/coffer-net-probe",
            "client",
            "--connect",
            &pair.server.to_string(),
            "--connects",
            &connects.to_string(),
            "--bytes",
            &bytes.to_string(),
        ],
    )?;
    ensure!(
        run.exit_code == 0,
        "{} client: exit {}, {}",
        pair.runtime,
        run.exit_code,
        String::from_utf8_lossy(&run.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&run.stdout)
        .with_context(|| format!("probe output {:?}", String::from_utf8_lossy(&run.stdout)))?;
    let mut connect: Vec<u64> = out["connect_us"]
        .as_array()
        .context("connect_us")?
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    connect.sort_unstable();
    ensure!(!connect.is_empty(), "no connect probes");
    let stream_us = out["stream_us"].as_u64().context("stream_us")?.max(1) as f64;
    Ok(Round {
        connect_p50_us: percentile(&connect, 0.5),
        connect_p99_us: percentile(&connect, 0.99),
        mbit_s: bytes as f64 * 8.0 / stream_us,
    })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let bytes: u64 = env_or("NET_BENCH_BYTES", 16 << 20);
    let connects: u32 = env_or("NET_BENCH_CONNECTS", 50);
    let work = tempfile::tempdir()?;
    let cluster = Cluster::start(work.path(), |_, _, _| Ok(Vec::new()))?;

    // The probe image: busybox and the (stripped) probe.
    let probe = work.path().join("coffer-net-probe");
    let out = Command::new("strip")
        .arg("-o")
        .arg(&probe)
        .arg(env!("CARGO_BIN_EXE_coffer-net-probe"))
        .output()?;
    ensure!(
        out.status.success(),
        "strip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = oci_archive(
        &work.path().join("netprobe"),
        "netprobe-oci.tar",
        |root| {
            coffer_tests::busybox_rootfs(root);
            std::fs::copy(&probe, root.join("bin/coffer-net-probe")).expect("copy the probe");
        },
        &["--config.cmd", "/bin/sh"],
    )?;
    cluster.import(&archive, "coffer.test/netprobe", PROBE_IMAGE)?;

    let mut pairs = Vec::new();
    let result = (|| {
        pairs.push(pair(&cluster, "coffer", HANDLER)?);
        pairs.push(pair(&cluster, "runc", RUNC_HANDLER)?);
        measure_rounds(&cluster, &pairs, rounds, connects, bytes)
    })();
    for pair in &pairs {
        for pod in &pair.pods {
            let _ = cluster.stop_and_remove(pod);
        }
    }
    result
}

fn measure_rounds(
    cluster: &Cluster,
    pairs: &[Pair],
    rounds: usize,
    connects: u32,
    bytes: u64,
) -> anyhow::Result<()> {
    println!(
        "rounds: {rounds}, {connects} connects and a {} MiB stream each",
        bytes >> 20
    );
    let mut results: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        // Alternate which pair goes first, so neither always runs on a machine the other warmed.
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let result = round(cluster, &pairs[i], connects, bytes)?;
            println!(
                "round {r} {:<6}: connect p50 {:>8.0} µs, p99 {:>8.0} µs, stream {:>8.1} Mbit/s",
                pairs[i].runtime, result.connect_p50_us, result.connect_p99_us, result.mbit_s
            );
            results[i].push(result);
        }
    }
    let summary = |rs: &[Round]| {
        (
            median(rs.iter().map(|r| r.connect_p50_us).collect()),
            median(rs.iter().map(|r| r.connect_p99_us).collect()),
            median(rs.iter().map(|r| r.mbit_s).collect()),
        )
    };
    let (c50, c99, cbw) = summary(&results[0]);
    let (r50, r99, rbw) = summary(&results[1]);
    println!("median coffer: connect p50 {c50:.0} µs, p99 {c99:.0} µs, stream {cbw:.1} Mbit/s");
    println!("median runc:   connect p50 {r50:.0} µs, p99 {r99:.0} µs, stream {rbw:.1} Mbit/s");
    println!(
        "ratio coffer/runc: connect latency p50 {:.2}x, p99 {:.2}x; throughput {:.3}x",
        c50 / r50,
        c99 / r99,
        cbw / rbw
    );
    Ok(())
}
