//! Prometheus counters for the broker, rendered in the text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

    /// The exposition text, with the current session count as a gauge.
    pub fn render(&self, sessions: usize) -> String {
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
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP coffer_kbs_sessions Sessions in the store.\n# TYPE coffer_kbs_sessions gauge\ncoffer_kbs_sessions {sessions}"
        );
        out
    }
}
