//! Prometheus counters for the broker, rendered in the text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

    /// The exposition text, with the session counts as gauges and counters.
    pub fn render(&self, sessions: &Stats) -> String {
        let mut out = String::new();
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
        let evicted = [
            (
                "coffer_kbs_sessions_evicted_total",
                "Attested sessions dropped before expiry to stay within sessions.max/max_bytes.",
                sessions.evicted,
            ),
            (
                "coffer_kbs_used_challenges_forgotten_total",
                "Used challenges forgotten before expiry (sessions.max_used_challenges); challenges expiring no later are refused.",
                sessions.used_forgotten,
            ),
        ];
        for (name, help, value) in evicted {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges = [
            (
                "coffer_kbs_sessions",
                "Attested sessions held.",
                sessions.sessions as u64,
            ),
            (
                "coffer_kbs_session_bytes",
                "Bytes accounted to attested sessions.",
                sessions.bytes as u64,
            ),
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
