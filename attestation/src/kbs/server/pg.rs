//! The PostgreSQL store: what replicas share (resources, the resource policy, reference values
//! and the used-challenge record), in one database every replica reads on each request, so an
//! admin write on one replica is served by all at once and no replica keeps state of its own.
//!
//! Schema (created at each new connection, under an advisory lock so replicas starting together
//! do not race):
//! - `kbs_resources (path TEXT PRIMARY KEY, value BYTEA, updated TIMESTAMPTZ)`;
//! - `kbs_settings (name TEXT PRIMARY KEY, value TEXT, rev BIGINT)`: the resource policy
//!   (`resource-policy`, Rego) and reference values (`snp-measurements`, `tdx-mr-td`, JSON lists of
//!   hex); `rev` grows by one per write, and a replica recompiles only when it changed;
//! - `kbs_used_challenges (id BYTEA PRIMARY KEY, expires_ms BIGINT)`: a challenge answered by a
//!   successful `/attest` is inserted once (`ON CONFLICT DO NOTHING`: of two replicas, one wins);
//!   rows past their expiry are pruned by every replica's sweeper.
//!
//! Connections: a fixed pool of `pool_size` pipelined clients, each reconnected on first use
//! after it closed; connecting and every query are bounded by `timeout_ms`. The password comes
//! from a file (a mounted Secret), never from the configuration text, and is never logged.
//! A TCP host is reached over TLS, its certificate checked against `tls_ca` and the host name
//! ([`super::pg_tls`]); plain TCP only with `insecure_plaintext_tcp`; a Unix socket without TLS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Socket};
use zeroize::Zeroizing;

use super::config::{PostgresConfig, postgres_over_tcp};
use super::metrics::Metrics;
use super::pg_tls::RustlsConnect;
use super::store::StoreError;
use crate::kbs::path::ResourcePath;

/// The schema, idempotent (run at each new connection).
pub const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7316028145);
CREATE TABLE IF NOT EXISTS kbs_resources (
    path TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    updated TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS kbs_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    rev BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS kbs_used_challenges (
    id BYTEA PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS kbs_used_challenges_expiry ON kbs_used_challenges (expires_ms);
COMMIT;
";

/// One pool slot: a connected client, if any.
#[derive(Default)]
struct Slot {
    client: Mutex<Option<Arc<Client>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// The PostgreSQL store. `Debug` shows no connection parameters.
pub struct PgStore {
    config: tokio_postgres::Config,
    /// TLS for TCP hosts; none: Unix sockets (or, explicitly, plain TCP).
    tls: Option<RustlsConnect>,
    slots: Vec<Slot>,
    next: AtomicUsize,
    timeout: Duration,
    max_len: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool_size", &self.slots.len())
            .finish_non_exhaustive()
    }
}

fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

impl PgStore {
    /// A store for `config` (validated: a connection string without a password); the password is
    /// read from `password_file` now. Connects lazily.
    pub fn new(
        config: &PostgresConfig,
        max_len: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = config
            .connection
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(db("parse connection"))?;
        if let Some(path) = &config.password_file {
            let password =
                Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|source| StoreError::Io {
                        op: "read password",
                        path: path.clone(),
                        source,
                    })?,
                );
            pg.password(password.trim_end_matches(['\r', '\n']));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        pg.connect_timeout(timeout);
        let tls = match (&config.tls_ca, postgres_over_tcp(&pg)) {
            (Some(ca), true) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(RustlsConnect::new(ca)?)
            }
            (None, true) => {
                tracing::warn!(
                    "store.postgres: PLAIN TCP to the database (insecure_plaintext_tcp)"
                );
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            (_, false) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        Ok(Self {
            config: pg,
            tls,
            slots: (0..config.pool_size.max(1))
                .map(|_| Slot::default())
                .collect(),
            next: AtomicUsize::new(0),
            timeout,
            max_len,
            metrics,
        })
    }

    /// A connected client, round robin over the pool; (re)connects a closed slot.
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let live = |slot: &Slot| {
            slot.client
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|c| !c.is_closed())
                .cloned()
        };
        if let Some(c) = live(slot) {
            return Ok(c);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = live(slot) {
            return Ok(c);
        }
        let client = match &self.tls {
            Some(tls) => self.connect_with(tls.clone()).await?,
            None => self.connect_with(NoTls).await?,
        };
        tokio::time::timeout(self.timeout, client.batch_execute(SCHEMA))
            .await
            .map_err(|_| StoreError::Timeout { op: "schema" })?
            .map_err(db("schema"))?;
        let client = Arc::new(client);
        *slot.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }

    /// Connects with `tls` and runs the connection in a task of its own.
    async fn connect_with<T>(&self, tls: T) -> Result<Client, StoreError>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = tokio::time::timeout(self.timeout, self.config.connect(tls))
            .await
            .map_err(|_| StoreError::Timeout { op: "connect" })?
            .map_err(db("connect"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "store connection closed");
            }
        });
        Ok(client)
    }

    /// Runs one statement returning rows, bounded by the timeout and timed in the metrics.
    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let result = async {
            let client = self.client().await?;
            tokio::time::timeout(self.timeout, client.query_typed(sql, params))
                .await
                .map_err(|_| StoreError::Timeout { op })?
                .map_err(db(op))
        }
        .await;
        self.metrics
            .store_observe(started.elapsed(), result.is_ok());
        result
    }

    /// A resource; `None` when absent.
    pub async fn read(
        &self,
        path: &ResourcePath,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let key = path.to_string();
        let rows = self
            .query(
                "read resource",
                "SELECT value FROM kbs_resources WHERE path = $1",
                &[(&key, Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let value: Vec<u8> = row.try_get(0).map_err(db("read resource"))?;
        Ok(Some(Zeroizing::new(value)))
    }

    /// Writes (or replaces) a resource.
    pub async fn write(&self, path: &ResourcePath, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > self.max_len {
            return Err(StoreError::TooLarge {
                path: path.to_string(),
                limit: self.max_len,
            });
        }
        let key = path.to_string();
        self.query(
            "write resource",
            "INSERT INTO kbs_resources (path, value) VALUES ($1, $2) \
             ON CONFLICT (path) DO UPDATE SET value = EXCLUDED.value, updated = now()",
            &[(&key, Type::TEXT), (&bytes, Type::BYTEA)],
        )
        .await
        .map(drop)
    }

    /// Every setting's revision.
    pub async fn revisions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .query("settings", "SELECT name, rev FROM kbs_settings", &[])
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db("settings"))
    }

    /// A setting's value and revision.
    pub async fn setting(&self, name: &str) -> Result<Option<(String, i64)>, StoreError> {
        let name = name.to_owned();
        let rows = self
            .query(
                "setting",
                "SELECT value, rev FROM kbs_settings WHERE name = $1",
                &[(&name, Type::TEXT)],
            )
            .await?;
        rows.first()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .transpose()
            .map_err(db("setting"))
    }

    /// Replaces a setting; returns its new revision.
    pub async fn put_setting(&self, name: &str, value: &str) -> Result<i64, StoreError> {
        let name = name.to_owned();
        let value = value.to_owned();
        let rows = self
            .query(
                "put setting",
                "INSERT INTO kbs_settings (name, value, rev) VALUES ($1, $2, 1) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, rev = kbs_settings.rev + 1 \
                 RETURNING rev",
                &[(&name, Type::TEXT), (&value, Type::TEXT)],
            )
            .await?;
        rows.first()
            .ok_or(StoreError::NoRow { op: "put setting" })
            .and_then(|r| r.try_get(0).map_err(db("put setting")))
    }

    /// Claims a challenge in the shared record: false when some replica already did.
    pub async fn claim_challenge(&self, id: &[u8], expires_ms: u64) -> Result<bool, StoreError> {
        let expires = i64::try_from(expires_ms).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "claim challenge",
                "INSERT INTO kbs_used_challenges (id, expires_ms) VALUES ($1, $2) \
                 ON CONFLICT (id) DO NOTHING RETURNING 1",
                &[(&id, Type::BYTEA), (&expires, Type::INT8)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Drops used challenges that expired before `now_ms`; returns how many.
    pub async fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "prune challenges",
                "WITH gone AS (DELETE FROM kbs_used_challenges WHERE expires_ms < $1 RETURNING 1) \
                 SELECT count(*) FROM gone",
                &[(&now, Type::INT8)],
            )
            .await?;
        let count: i64 = rows
            .first()
            .ok_or(StoreError::NoRow {
                op: "prune challenges",
            })?
            .try_get(0)
            .map_err(db("prune challenges"))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query("ping", "SELECT 1", &[]).await.map(drop)
    }
}
