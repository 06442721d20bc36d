//! Prometheus counters for the broker, rendered in the text exposition format. Every figure is
//! this replica's own (Prometheus sums replicas by their `instance` label); none depends on
//! another replica's memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::session::Stats;

/// Broker counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `/auth` challenges issued.
    pub auth: AtomicU64,
    /// Successful attestations.
    pub attest_ok: AtomicU64,
    /// Refused attestations.
    pub attest_refused: AtomicU64,
    /// Resources released.
    pub resource_released: AtomicU64,
    /// Resource requests refused (token, policy, path, missing).
    pub resource_refused: AtomicU64,
    /// Identity certificates issued.
    pub identity_issued: AtomicU64,
    /// Identity requests refused (token, initdata, policy, CSR, lifetime).
    pub identity_refused: AtomicU64,
    /// Admin requests accepted.
    pub admin_ok: AtomicU64,
    /// Admin requests refused.
    pub admin_refused: AtomicU64,
    /// Open connections (a gauge).
    pub connections_open: AtomicU64,
    /// Connections closed at accept because a cap was reached.
    pub connections_refused: AtomicU64,
    /// Connections closed by the header, idle or TLS-handshake timeout.
    pub connections_timed_out: AtomicU64,
    /// Requests answered 408 because their body did not arrive in time.
    pub body_timeouts: AtomicU64,
    /// Refusals by request kind and reason.
    refusals: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Store request latency.
    store: Mutex<StoreLatency>,
}

/// Upper bounds (seconds) of the store latency histogram's buckets.
const STORE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
struct StoreLatency {
    buckets: [u64; STORE_BUCKETS.len()],
    count: u64,
    sum: f64,
    errors: u64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `result` in `ok` or `refused` and passes it on.
    pub fn outcome<T, E>(
        result: Result<T, E>,
        ok: &AtomicU64,
        refused: &AtomicU64,
    ) -> Result<T, E> {
        Self::inc(if result.is_ok() { ok } else { refused });
        result
    }

    /// Counts a refusal of a `kind` request (`attest`, `resource`, ...) for `reason`.
    pub fn refused(&self, kind: &'static str, reason: &'static str) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((kind, reason))
            .or_default() += 1;
    }

    /// Records one store request that took `elapsed` (and failed unless `ok`).
    pub fn store_observe(&self, elapsed: Duration, ok: bool) {
        let secs = elapsed.as_secs_f64();
        let mut s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        for (bound, count) in STORE_BUCKETS.iter().zip(s.buckets.iter_mut()) {
            if secs <= *bound {
                *count += 1;
            }
        }
        s.count += 1;
        s.sum += secs;
        if !ok {
            s.errors += 1;
        }
    }

    fn render_labelled(&self, out: &mut String) {
        let name = "coffer_kbs_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Refused requests by kind and reason.\n# TYPE {name} counter"
        );
        for ((kind, reason), n) in self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\",reason=\"{reason}\"}} {n}");
        }
        let s = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let name = "coffer_kbs_store_request_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of store (database) requests.\n# TYPE {name} histogram"
        );
        for (bound, count) in STORE_BUCKETS.iter().zip(s.buckets.iter()) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", s.sum, s.count);
        let name = "coffer_kbs_store_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed or timed-out store requests.\n# TYPE {name} counter\n{name} {}",
            s.errors
        );
    }

    /// The exposition text, with the session counts as gauges and counters.
    pub fn render(&self, sessions: &Stats) -> String {
        let mut out = String::new();
        self.render_labelled(&mut out);
        let counters = [
            ("coffer_kbs_auth_total", "Challenges issued.", &self.auth),
            (
                "coffer_kbs_attest_ok_total",
                "Successful attestations.",
                &self.attest_ok,
            ),
            (
                "coffer_kbs_attest_refused_total",
                "Refused attestations.",
                &self.attest_refused,
            ),
            (
                "coffer_kbs_resource_released_total",
                "Resources released.",
                &self.resource_released,
            ),
            (
                "coffer_kbs_resource_refused_total",
                "Refused resource requests.",
                &self.resource_refused,
            ),
            (
                "coffer_kbs_identity_issued_total",
                "Identity certificates issued.",
                &self.identity_issued,
            ),
            (
                "coffer_kbs_identity_refused_total",
                "Refused identity requests.",
                &self.identity_refused,
            ),
            (
                "coffer_kbs_admin_ok_total",
                "Accepted admin requests.",
                &self.admin_ok,
            ),
            (
                "coffer_kbs_admin_refused_total",
                "Refused admin requests.",
                &self.admin_refused,
            ),
            (
                "coffer_kbs_connections_refused_total",
                "Connections closed at accept: a connection cap was reached.",
                &self.connections_refused,
            ),
            (
                "coffer_kbs_connections_timed_out_total",
                "Connections closed by the header, idle or TLS handshake timeout.",
                &self.connections_timed_out,
            ),
            (
                "coffer_kbs_body_timeouts_total",
                "Requests answered 408: the body did not arrive in time.",
                &self.body_timeouts,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let evicted = [(
            "coffer_kbs_used_challenges_forgotten_total",
            "Used challenges forgotten before expiry (sessions.max_used_challenges); challenges expiring no later are refused.",
            sessions.used_forgotten,
        )];
        for (name, help, value) in evicted {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges = [
            (
                "coffer_kbs_used_challenges",
                "Used challenges remembered until they expire.",
                sessions.used as u64,
            ),
            (
                "coffer_kbs_connections",
                "Open connections.",
                self.connections_open.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
