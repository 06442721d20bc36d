//! An external load generator for any KBS 0.4.0 broker: `coffer kbs load` and `kbs-load`, which
//! share [`LoadArgs`] (the command line) and [`command`] (run and print), so both are this one
//! implementation.
//!
//! Each handshake is what a starting pod does, with nothing shared: a new [`KbsClient`] (so a
//! new connection and a new TEE key), `auth` → `attest` with sample evidence → one resource
//! fetch, no retries ([`KbsClient::handshake_and_fetch`], `max_attempts` 1). `concurrency`
//! workers run handshakes back to back until `total` handshakes were started or `duration`
//! passed; a handshake in flight then finishes (each request is bounded by the client timeout).
//!
//! Reported: handshakes/s, latency percentiles (a log-linear histogram, 1.6 % resolution),
//! failures by kind; with the broker's PID, its CPU time per handshake (`/proc/PID/stat`) and
//! its RSS (`/proc/PID/status`: VmRSS sampled, VmHWM at the end); optionally the kernel's
//! `TcpExt: ListenOverflows`/`ListenDrops` delta (`/proc/net/netstat`: the whole network
//! namespace, so other traffic on the machine counts too).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{ClientConfig, KbsClient, KbsClientError, KeyKind};
use super::path::ResourcePath;
use crate::attester::{Attester, SampleAttester};

/// Load generator failures (not handshake failures: those are counted).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file named on the command line could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A command-line value is unusable.
    #[error("{flag}: {reason}")]
    Argument {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The report could not be encoded as JSON.
    #[error("encoding the report")]
    Json(#[source] serde_json::Error),
    /// Neither a handshake count nor a duration bounds the run, or a bound is zero.
    #[error("a run needs a total > 0 or a duration > 0, and concurrency > 0")]
    Unbounded,
    /// The client configuration is unusable.
    #[error("kbs client")]
    Client(#[source] KbsClientError),
    /// `/proc` of the broker's PID could not be read.
    #[error("cannot read /proc/{pid}")]
    Proc {
        /// The PID.
        pid: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Broker base URL.
    pub url: String,
    /// More replicas of the broker: worker `i` sends its handshakes to URL `i mod n` of `url`
    /// and these (a client-side spread, like a Service's per-connection balancing).
    pub also_urls: Vec<String>,
    /// CA certificate(s) for HTTPS.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// The resource each handshake fetches.
    pub resource: ResourcePath,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Handshakes to start at most.
    pub total: Option<u64>,
    /// How long to start handshakes.
    pub duration: Option<Duration>,
    /// The broker's PID (CPU and RSS figures).
    pub server_pid: Option<u32>,
    /// Read the kernel's listen-queue overflow counters before and after.
    pub nstat: bool,
    /// Progress sample interval.
    pub sample_every: Duration,
    /// Per-request timeout of each client.
    pub timeout: Duration,
    /// TEE key type.
    pub key: KeyKind,
}

/// A progress sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub secs: f64,
    /// Successful handshakes so far.
    pub ok: u64,
    /// Failed handshakes so far.
    pub failed: u64,
    /// Successful handshakes per second since the previous sample.
    pub rate: f64,
    /// The broker's resident set, KiB.
    pub server_rss_kib: Option<u64>,
    /// The broker's CPU ms per successful handshake since the previous sample.
    pub server_cpu_ms_per_handshake: Option<f64>,
    /// The machine's 1-minute load average (`/proc/loadavg`): on a shared machine, what else ran.
    pub load_1m: Option<f64>,
}

/// The broker's resource use over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    /// PID.
    pub pid: u32,
    /// User + system CPU time during the run, ms.
    pub cpu_ms: f64,
    /// CPU ms per successful handshake.
    pub cpu_ms_per_handshake: f64,
    /// VmRSS at the start, KiB.
    pub rss_start_kib: u64,
    /// VmRSS at the end, KiB.
    pub rss_end_kib: u64,
    /// Peak resident set over the process's life, KiB: VmHWM, or the largest VmRSS seen if
    /// larger (the kernel updates VmHWM lazily).
    pub rss_peak_kib: u64,
}

/// The kernel's listen-queue counters (deltas over the run).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ListenCounters {
    /// `TcpExt: ListenOverflows`: SYNs or ACKs dropped because an accept queue was full.
    pub listen_overflows: u64,
    /// `TcpExt: ListenDrops`.
    pub listen_drops: u64,
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Broker URL.
    pub url: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Wall-clock time from the first start to the last completion, s.
    pub elapsed_secs: f64,
    /// Successful handshakes (auth, attest, resource decrypted).
    pub ok: u64,
    /// Failed handshakes.
    pub failed: u64,
    /// Successful handshakes per second.
    pub handshakes_per_sec: f64,
    /// Latency of successful handshakes.
    pub latency: Latency,
    /// Failures by kind (`refused:attest:AttestationError`, `transport:auth:connect`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The broker's CPU and memory, with its PID.
    pub server: Option<ServerUsage>,
    /// This load generator's own CPU ms per successful handshake (client side: key generation,
    /// evidence, decryption, HTTP), to tell which side a shared machine's cores went to.
    pub client_cpu_ms_per_handshake: Option<f64>,
    /// Listen-queue counters, with `nstat`.
    pub listen: Option<ListenCounters>,
    /// Progress samples.
    pub samples: Vec<Sample>,
}

/// Log-linear latency histogram over microseconds: 64 buckets per power of two.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered (2^40 µs is 12 days).
const OCTAVES: usize = 40;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; (OCTAVES + 1) * SUB as usize],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros();
        let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
        let i = (u64::from(exp - SUB_BITS + 1) * SUB + sub) as usize;
        i.min(OCTAVES * SUB as usize + (SUB as usize - 1))
    }

    /// The middle of bucket `i`, µs.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let exp = i / SUB + u64::from(SUB_BITS) - 1;
        let sub = i % SUB;
        let low = (SUB + sub) << (exp - u64::from(SUB_BITS));
        low + (1 << (exp - u64::from(SUB_BITS))) / 2
    }

    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The `q` quantile (0..=1), µs; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }

    fn latency(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(self.quantile(0.50)),
            p90_ms: ms(self.quantile(0.90)),
            p99_ms: ms(self.quantile(0.99)),
            p999_ms: ms(self.quantile(0.999)),
            max_ms: ms(self.max),
        }
    }
}

/// A failure's kind: its stage and cause, without anything variable.
pub fn error_kind(e: &KbsClientError) -> String {
    match e {
        KbsClientError::Transport { stage, source } => {
            let cause = if source.is_connect() {
                "connect"
            } else if source.is_timeout() {
                "timeout"
            } else if source.is_body() || source.is_decode() {
                "body"
            } else {
                "other"
            };
            format!("transport:{stage}:{cause}")
        }
        KbsClientError::AttestationRefused { stage, info } => {
            format!("refused:{stage}:{}", info.kind())
        }
        KbsClientError::Unauthorized { info, .. } => format!("refused:resource:{}", info.kind()),
        KbsClientError::PolicyDenied { .. } => "refused:resource:PolicyDeny".into(),
        KbsClientError::NotFound { .. } => "refused:resource:ResourceNotFound".into(),
        KbsClientError::Protocol { stage, .. } => format!("protocol:{stage}"),
        KbsClientError::Config { .. } => "config".into(),
        KbsClientError::Path(_) => "path".into(),
        KbsClientError::Attester(_) => "attester".into(),
        KbsClientError::Jwe(_) => "decrypt".into(),
        KbsClientError::IdentityRefused { .. } | KbsClientError::IdentityMismatch { .. } => {
            "identity".into()
        }
    }
}

/// `utime + stime` of `pid`, clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, LoadError> {
    let proc_err = |source| LoadError::Proc { pid, source };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(proc_err)?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    match (field(14), field(15)) {
        (Some(utime), Some(stime)) => Ok(utime + stime),
        _ => Err(proc_err(std::io::Error::other("unexpected /proc/PID/stat"))),
    }
}

fn ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .map_or(100.0, |t| t as f64)
}

/// (VmRSS, VmHWM) of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<(u64, u64), LoadError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| LoadError::Proc { pid, source })?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// The 1-minute load average.
fn load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `TcpExt: ListenOverflows` and `ListenDrops` of this network namespace.
pub fn listen_counters() -> Option<ListenCounters> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ListenCounters {
        listen_overflows: get("ListenOverflows")?,
        listen_drops: get("ListenDrops")?,
    })
}

struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    started: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

async fn worker(
    config: Arc<LoadConfig>,
    client_config: ClientConfig,
    attester: Arc<dyn Attester>,
    tally: Arc<Tally>,
    deadline: Option<Instant>,
) -> Histogram {
    let mut histogram = Histogram::default();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = tally.started.fetch_add(1, Ordering::Relaxed);
        if config.total.is_some_and(|t| n >= t) {
            break;
        }
        let started = Instant::now();
        let outcome = match KbsClient::new(client_config.clone(), attester.clone()) {
            Ok(client) => client.handshake_and_fetch(&config.resource).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(_) => {
                histogram.record(started.elapsed());
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                let kind = error_kind(&e);
                tracing::debug!(kind, error = %e, "handshake failed");
                *tally
                    .errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(kind)
                    .or_default() += 1;
            }
        }
    }
    histogram
}

/// Runs the load described by `config`, calling `on_sample` every `sample_every`.
pub async fn run(
    config: LoadConfig,
    on_sample: impl Fn(&Sample) + Send + Sync + 'static,
) -> Result<LoadReport, LoadError> {
    if config.concurrency == 0
        || (config.total.is_none_or(|t| t == 0) && config.duration.is_none_or(|d| d.is_zero()))
    {
        return Err(LoadError::Unbounded);
    }
    let mut client_config = ClientConfig::new(&config.url);
    client_config.ca_cert_pem = config.ca_cert_pem.clone();
    client_config.key = config.key;
    client_config.max_attempts = 1;
    client_config.timeout = config.timeout;
    // Fails here on a bad URL or CA, rather than once per handshake.
    let attester: Arc<dyn Attester> = Arc::new(SampleAttester::new());
    KbsClient::new(client_config.clone(), attester.clone()).map_err(LoadError::Client)?;

    let pid = config.server_pid;
    let own_pid = std::process::id();
    let own_before = cpu_ticks(own_pid).ok();
    let cpu_before = pid.map(cpu_ticks).transpose()?;
    let rss_start = pid.map(rss_kib).transpose()?.map(|(rss, _)| rss);
    let listen_before = config.nstat.then(listen_counters).flatten();

    let config = Arc::new(config);
    let tally = Arc::new(Tally {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        started: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
    });
    let start = Instant::now();
    let deadline = config.duration.map(|d| start + d);
    let urls: Vec<String> = std::iter::once(config.url.clone())
        .chain(config.also_urls.iter().cloned())
        .collect();
    let workers: Vec<_> = (0..config.concurrency)
        .map(|i| {
            let mut client_config = client_config.clone();
            client_config.url = urls[i % urls.len()].clone();
            tokio::spawn(worker(
                config.clone(),
                client_config,
                attester.clone(),
                tally.clone(),
                deadline,
            ))
        })
        .collect();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = {
        let tally = tally.clone();
        let every = config.sample_every.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let (mut last_ok, mut last_t) = (0u64, Instant::now());
            let mut last_cpu = pid.and_then(|p| cpu_ticks(p).ok());
            // Ends when the workers have (or the run is dropped).
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let ok = tally.ok.load(Ordering::Relaxed);
                let now = Instant::now();
                let cpu = pid.and_then(|p| cpu_ticks(p).ok());
                let server_cpu_ms_per_handshake = match (last_cpu, cpu) {
                    (Some(a), Some(b)) if ok > last_ok => Some(
                        b.saturating_sub(a) as f64 * 1000.0
                            / ticks_per_sec()
                            / (ok - last_ok) as f64,
                    ),
                    _ => None,
                };
                last_cpu = cpu;
                let sample = Sample {
                    secs: start.elapsed().as_secs_f64(),
                    ok,
                    failed: tally.failed.load(Ordering::Relaxed),
                    rate: (ok - last_ok) as f64 / now.duration_since(last_t).as_secs_f64(),
                    server_rss_kib: pid.and_then(|p| rss_kib(p).ok()).map(|(rss, _)| rss),
                    server_cpu_ms_per_handshake,
                    load_1m: load_1m(),
                };
                on_sample(&sample);
                samples.push(sample);
                (last_ok, last_t) = (ok, now);
            }
            samples
        })
    };
    let mut histogram = Histogram::default();
    for w in workers {
        // A worker only ends by returning its histogram (a panic is a bug: count nothing).
        if let Ok(h) = w.await {
            histogram.merge(&h);
        }
    }
    let elapsed = start.elapsed();
    let _ = stop.send(());
    let samples = sampler.await.unwrap_or_default();
    let ok = tally.ok.load(Ordering::Relaxed);
    let server = match (pid, cpu_before) {
        (Some(pid), Some(before)) => {
            let cpu_ms = cpu_ticks(pid)?.saturating_sub(before) as f64 * 1000.0 / ticks_per_sec();
            let (rss_end, peak) = rss_kib(pid)?;
            Some(ServerUsage {
                pid,
                cpu_ms,
                cpu_ms_per_handshake: if ok > 0 { cpu_ms / ok as f64 } else { 0.0 },
                rss_start_kib: rss_start.unwrap_or(0),
                rss_end_kib: rss_end,
                rss_peak_kib: samples
                    .iter()
                    .filter_map(|s| s.server_rss_kib)
                    .chain([peak, rss_end])
                    .max()
                    .unwrap_or(peak),
            })
        }
        _ => None,
    };
    let client_cpu_ms_per_handshake = own_before
        .zip(cpu_ticks(own_pid).ok())
        .filter(|_| ok > 0)
        .map(|(a, b)| b.saturating_sub(a) as f64 * 1000.0 / ticks_per_sec() / ok as f64);
    let listen = match (listen_before, config.nstat.then(listen_counters).flatten()) {
        (Some(a), Some(b)) => Some(ListenCounters {
            listen_overflows: b.listen_overflows.saturating_sub(a.listen_overflows),
            listen_drops: b.listen_drops.saturating_sub(a.listen_drops),
        }),
        _ => None,
    };
    let errors = std::mem::take(&mut *tally.errors.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(LoadReport {
        url: config.url.clone(),
        concurrency: config.concurrency,
        elapsed_secs: elapsed.as_secs_f64(),
        ok,
        failed: tally.failed.load(Ordering::Relaxed),
        handshakes_per_sec: ok as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        latency: histogram.latency(),
        errors,
        server,
        client_cpu_ms_per_handshake,
        listen,
        samples,
    })
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency;
        writeln!(
            f,
            "{} clients, {:.1} s: {} handshakes ok, {} failed, {:.1} handshakes/s",
            self.concurrency, self.elapsed_secs, self.ok, self.failed, self.handshakes_per_sec
        )?;
        writeln!(
            f,
            "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        )?;
        for (kind, n) in &self.errors {
            writeln!(f, "errors: {kind}: {n}")?;
        }
        if let Some(s) = &self.server {
            writeln!(
                f,
                "server pid {}: cpu {:.0} ms = {:.3} ms/handshake; rss start {} KiB, end {} KiB, peak {} KiB",
                s.pid,
                s.cpu_ms,
                s.cpu_ms_per_handshake,
                s.rss_start_kib,
                s.rss_end_kib,
                s.rss_peak_kib
            )?;
        }
        if let Some(ms) = self.client_cpu_ms_per_handshake {
            writeln!(f, "load generator: cpu {ms:.3} ms/handshake")?;
        }
        if let Some(c) = &self.listen {
            writeln!(
                f,
                "kernel: ListenOverflows +{}, ListenDrops +{}",
                c.listen_overflows, c.listen_drops
            )?;
        }
        Ok(())
    }
}

/// TEE key type on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyArg {
    /// EC P-256 (`ECDH-ES+A256KW`).
    Ec,
    /// RSA-3072 (`RSA-OAEP-256`).
    Rsa,
}

/// The command line of `coffer kbs load` and `kbs-load`: drives a separate KBS 0.4.0 broker with
/// fresh clients, one handshake each (auth → attest with sample evidence → one resource), and
/// prints handshakes/s, latency percentiles, failures by kind, and with `--server-pid` the
/// broker's CPU per handshake and RSS, with `--nstat` the kernel's listen-queue overflows. The
/// broker must accept sample evidence and release `--resource` to it.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Broker base URL (http:// or https://).
    #[arg(long = "kbs-url", alias = "url", value_name = "URL")]
    pub url: String,
    /// Another replica's base URL (repeatable): workers are spread over all URLs.
    #[arg(long = "also-url", value_name = "URL")]
    pub also_urls: Vec<String>,
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,
    /// Handshakes to run in all.
    #[arg(short = 'n', long)]
    pub total: Option<u64>,
    /// Seconds to keep starting handshakes.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Resource each handshake fetches.
    #[arg(long, default_value = "default/load/key")]
    pub resource: String,
    /// PEM CA certificate for HTTPS.
    #[arg(long = "kbs-ca", alias = "cert", value_name = "PEM")]
    pub cert: Option<std::path::PathBuf>,
    /// The broker's PID: report its CPU time per handshake and its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Report the kernel's ListenOverflows/ListenDrops delta (/proc/net/netstat).
    #[arg(long)]
    pub nstat: bool,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// TEE key type.
    #[arg(long, value_enum, default_value = "ec")]
    pub key: KeyArg,
    /// Print the report as JSON (progress lines still go to stderr).
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    /// The run these arguments describe (reads `--kbs-ca`).
    pub fn config(&self) -> Result<LoadConfig, LoadError> {
        let ca_cert_pem = self
            .cert
            .as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|source| LoadError::Read {
                    path: path.clone(),
                    source,
                })
            })
            .transpose()?;
        Ok(LoadConfig {
            url: self.url.clone(),
            also_urls: self.also_urls.clone(),
            ca_cert_pem,
            resource: self.resource.parse().map_err(|e: super::path::PathError| {
                LoadError::Argument {
                    flag: "--resource",
                    reason: e.to_string(),
                }
            })?,
            concurrency: self.concurrency,
            total: self.total,
            duration: self.duration.map(Duration::from_secs),
            server_pid: self.server_pid,
            nstat: self.nstat,
            sample_every: Duration::from_secs(self.sample_secs.max(1)),
            timeout: Duration::from_secs(self.timeout.max(1)),
            key: match self.key {
                KeyArg::Ec => KeyKind::Ec,
                KeyArg::Rsa => KeyKind::Rsa,
            },
        })
    }
}

/// A progress line (stderr): `  10.0 s: 13680 ok, 0 failed, 1368.0/s, server rss …`.
pub fn progress_line(s: &Sample) -> String {
    let rss = s
        .server_rss_kib
        .map_or(String::new(), |r| format!(", server rss {r} KiB"));
    let cpu = s.server_cpu_ms_per_handshake.map_or(String::new(), |c| {
        format!(", server cpu {c:.3} ms/handshake")
    });
    let load = s
        .load_1m
        .map_or(String::new(), |l| format!(", load {l:.2}"));
    format!(
        "{:>7.1} s: {} ok, {} failed, {:.1}/s{rss}{cpu}{load}",
        s.secs, s.ok, s.failed, s.rate
    )
}

/// Runs `args` as both commands do: progress lines on stderr every `--sample-secs`, then the
/// report on stdout (text, or JSON with `--json`). Returns the report; the caller turns failed
/// handshakes into its exit status.
pub async fn command(args: &LoadArgs) -> Result<LoadReport, LoadError> {
    let report = run(args.config()?, |s| eprintln!("{}", progress_line(s))).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(LoadError::Json)?
        );
    } else {
        print!("{report}");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_becomes_the_run() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            load: LoadArgs,
        }
        let cli = Cli::parse_from(["x", "--url", "http://127.0.0.1:1", "-c", "8", "-n", "100"]);
        let c = cli.load.config().unwrap();
        assert_eq!((c.concurrency, c.total, c.duration), (8, Some(100), None));
        assert_eq!(c.resource.to_string(), "default/load/key");
        assert_eq!(c.key, KeyKind::Ec);
        let cli = Cli::parse_from(["x", "--url", "u", "--resource", "../x", "--key", "rsa"]);
        assert!(matches!(
            cli.load.config(),
            Err(LoadError::Argument {
                flag: "--resource",
                ..
            })
        ));
        assert!(Cli::try_parse_from(["x", "--url", "u", "--key", "dsa"]).is_err());
    }

    #[test]
    fn histogram_quantiles_within_two_percent() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, want) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
        let mut small = Histogram::default();
        small.record(Duration::from_micros(7));
        h.merge(&small);
        assert_eq!(h.quantile(0.0), 7);
        assert_eq!(Histogram::default().quantile(0.5), 0);
        // Every bucket's middle maps back to itself.
        for i in [0usize, 63, 64, 65, 127, 128, 1000, 2000] {
            assert_eq!(Histogram::index(Histogram::value(i)), i, "bucket {i}");
        }
    }

    #[test]
    fn proc_readers_read_this_process() {
        let pid = std::process::id();
        cpu_ticks(pid).unwrap();
        let (rss, peak) = rss_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss);
        assert!(listen_counters().is_some());
        assert!(matches!(rss_kib(u32::MAX), Err(LoadError::Proc { .. })));
    }
}
