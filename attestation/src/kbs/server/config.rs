//! `coffer-kbs` configuration (TOML). Unknown keys are refused; every default is documented here
//! and in the reference file `attestation/coffer-kbs.toml`. Loaded once, validated, passed down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Configuration failures.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("invalid config {path}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse {
        /// File.
        path: PathBuf,
        /// The line the parser stopped at.
        line: Option<usize>,
        /// The parser's complaint (one line, without the quoted source).
        message: String,
    },
    /// A semantic check failed.
    #[error("invalid config: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener and transport.
    pub http: HttpConfig,
    /// Attestation tokens.
    pub token: TokenConfig,
    /// Admin API authentication.
    pub admin: AdminConfig,
    /// Session store.
    pub sessions: SessionConfig,
    /// Resource storage (the directory store).
    pub resources: ResourceConfig,
    /// Which store holds resources, policy, reference values and used challenges.
    pub store: StoreConfig,
    /// Resource policy.
    pub policy: PolicyConfig,
    /// Evidence verification.
    pub attestation: AttestationConfig,
    /// Workload identity CA (`POST /kbs/v0/identity`). Default: disabled.
    pub identity: IdentityConfig,
    /// A test chain trusted in addition to AMD's and Intel's roots (development and CI only).
    /// Default: none.
    pub testing: TestingConfig,
}

/// `[testing]`: **development and CI only.** Trust the test chain that `coffer attestation
/// testing-ca` wrote to `ca_dir` (its SNP ARK/ASK, its TDX root) in addition to AMD's and
/// Intel's, so evidence `coffer attestation forge` signs with it verifies like real evidence
/// (the same checks, only the root differs). Logged loudly at start; every token for such
/// evidence says `testing_root: true`. Never set on a production broker: whoever holds the
/// test chain's keys can then forge any measurement.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// The test chain's directory (`snp/ark.pem`, `snp/ask.pem`, `tdx/root.der`). Default none.
    pub ca_dir: Option<PathBuf>,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS. Default false (explicit opt-in, logged loudly).
    pub insecure_http: bool,
    /// PEM certificate chain for HTTPS (required unless `insecure_http`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (required unless `insecure_http`).
    pub tls_key: Option<PathBuf>,
    /// Largest request body in bytes (evidence, uploads). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once, all connections together: a body's declared
    /// length (else `max_body_bytes`) is reserved before it is read. Default 64 MiB.
    pub max_body_memory_bytes: usize,
    /// Listen backlog (the kernel caps it at `net.core.somaxconn`). Default 1024.
    pub backlog: u32,
    /// Seconds a client has to deliver a request's complete headers: from the connection's accept
    /// for its first request (the TLS handshake has as long again), from the request's first byte
    /// for later ones. Default 10.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may sit with no request in progress (keep-alive idle, or its last
    /// response not yet taken by the client) before it is closed. Default 30.
    pub idle_timeout_secs: u64,
    /// Seconds a client has to deliver a request body once its headers are in; then HTTP 408.
    /// Default 30.
    pub body_timeout_secs: u64,
    /// Open connections at most; more are accepted and closed at once. Default 4096.
    pub max_connections: usize,
    /// Open connections at most from one client address (an IPv4 address, an IPv6 /64).
    /// Default 1024.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            insecure_http: false,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 1024 * 1024,
            max_body_memory_bytes: 64 * 1024 * 1024,
            backlog: 1024,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 30,
            body_timeout_secs: 30,
            max_connections: 4096,
            max_connections_per_ip: 1024,
        }
    }
}

/// `[token]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// `iss` of issued tokens, checked on bearer tokens. Default `coffer-kbs`.
    pub issuer: String,
    /// Token lifetime in seconds. Default 300.
    pub lifetime_secs: u64,
    /// P-256 PKCS#8 PEM signing key. Default: a fresh key per start (tokens die with the process).
    pub signing_key: Option<PathBuf>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "coffer-kbs".into(),
            lifetime_secs: 300,
            signing_key: None,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// P-256 SPKI PEM public key that verifies admin ES256 JWTs. Default none.
    pub public_key: Option<PathBuf>,
    /// Ed25519 SPKI PEM public key that verifies admin EdDSA JWTs (what Trustee's `kbs-client`
    /// signs with). Default none. With neither key, admin is disabled unless anonymous.
    pub ed25519_public_key: Option<PathBuf>,
    /// Accept admin requests without a token. Default false (development only, logged loudly).
    pub insecure_allow_anonymous: bool,
}

/// `[sessions]` (the model: [`super::session`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Seconds between `/auth` and the `/attest` that answers it (never more than `ttl_secs`).
    /// The challenge travels sealed in the cookie: no broker memory. Default 30; 1..=300.
    pub challenge_ttl_secs: u64,
    /// Lifetime of an attested cookie session in seconds (never longer than its token). The
    /// session travels sealed in the cookie `/attest` sets: no broker memory, any replica.
    /// Default 300; 1..=86400.
    pub ttl_secs: u64,
    /// Challenges answered by a successful `/attest` that are remembered until they expire, so
    /// each nonce is used once. When more are live, the closest to expiry are forgotten and every
    /// challenge expiring no later is refused. At most 40 bytes each. Default 262144 (10 MiB;
    /// 8,700 attestations/s sustained with `challenge_ttl_secs` = 30).
    pub max_used_challenges: usize,
    /// Files holding the keys (base64 of 32 random bytes each) that seal session cookies: the
    /// first seals, every one opens (rotation: put the new key first, drop the old one after
    /// `ttl_secs`). Replicas sharing a key set accept each other's cookies: replicas must share
    /// it (a Kubernetes Secret). Default none: a fresh key per start (one broker only).
    pub keys: Vec<PathBuf>,
    /// Removed (#23: attested sessions travel in their cookie, the broker keeps no table).
    /// Accepted and ignored, with a warning at start, for one release so existing files load.
    #[serde(rename = "max")]
    pub removed_max: Option<u64>,
    /// Removed with `max`; accepted and ignored, with a warning, for one release.
    #[serde(rename = "max_bytes")]
    pub removed_max_bytes: Option<u64>,
}

impl SessionConfig {
    /// The removed keys this file still sets, for the start-up warning.
    pub fn removed_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.removed_max.is_some() {
            keys.push("sessions.max");
        }
        if self.removed_max_bytes.is_some() {
            keys.push("sessions.max_bytes");
        }
        keys
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            challenge_ttl_secs: 30,
            ttl_secs: 300,
            max_used_challenges: 262_144,
            keys: Vec::new(),
            removed_max: None,
            removed_max_bytes: None,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `directory` (default: `[resources] dir` on this machine; the policy and reference values
    /// in this broker's memory) or `postgres` (`[store.postgres]`: shared by every replica).
    pub backend: StoreBackend,
    /// `[store.postgres]`
    pub postgres: PostgresConfig,
}

/// The store backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Files under `[resources] dir`.
    #[default]
    Directory,
    /// PostgreSQL.
    Postgres,
}

/// `[store.postgres]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// libpq-style connection string (`host=/run/postgresql user=kbs dbname=kbs` or
    /// `postgresql://kbs@db:5432/kbs`) without a password. Required with `backend = "postgres"`.
    pub connection: Option<String>,
    /// File holding the database password (a mounted Secret); trailing newlines are ignored.
    /// Default none (trust or peer authentication).
    pub password_file: Option<PathBuf>,
    /// Connections kept (each pipelines concurrent requests). Default 4; 1..=64.
    pub pool_size: usize,
    /// Milliseconds allowed to connect and to each request; a store slower than this is
    /// unreachable (requests fail, `/ready` answers 503). Default 2000; 100..=60000.
    pub timeout_ms: u64,
    /// PEM CA certificate(s) the database's TLS certificate must chain to (its name must be the
    /// connection's host): required for a TCP host. Unix-socket hosts never use TLS. Default none.
    pub tls_ca: Option<PathBuf>,
    /// Connect to a TCP host without TLS (resources then cross the network in clear).
    /// Default false (development only, logged loudly).
    pub insecure_plaintext_tcp: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            connection: None,
            password_file: None,
            pool_size: 4,
            timeout_ms: 2000,
            tls_ca: None,
            insecure_plaintext_tcp: false,
        }
    }
}

/// Whether a PostgreSQL connection string names a TCP host (else Unix sockets only).
pub fn postgres_over_tcp(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().is_empty()
        || config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)))
}

/// `[resources]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceConfig {
    /// Resource directory. Default `/var/lib/coffer-kbs/resources`.
    pub dir: PathBuf,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/coffer-kbs/resources"),
        }
    }
}

/// `[policy]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Rego file with `package policy`. Default: the shipped policy (affirming, non-sample).
    pub file: Option<PathBuf>,
}

/// `[attestation]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationConfig {
    /// Accept development-only sample evidence. Default false.
    pub allow_sample: bool,
    /// `[attestation.snp]`
    pub snp: SnpConfig,
    /// `[attestation.tdx]`
    pub tdx: TdxConfig,
}

/// `[attestation.snp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpConfig {
    /// Offline VCEK store (`<chip_id hex>.der`). Default none (certificate table only).
    pub vcek_dir: Option<PathBuf>,
    /// Minimum report version. Default 2.
    pub min_report_version: u32,
    /// Accept the DEBUG policy bit. Default false.
    pub allow_debug: bool,
    /// Accept MIGRATE_MA. Default false.
    pub allow_migrate_ma: bool,
    /// Accept VLEK-signed reports. Default false.
    pub allow_vlek: bool,
    /// Accepted launch measurements (hex, 48 bytes). Default none: evidence is `warning`.
    pub measurements: Vec<String>,
    /// `[attestation.snp.min_reported_tcb]`: each component of the reported TCB (the one the
    /// VCEK certifies) must be at least this. Default none.
    pub min_reported_tcb: Option<MinTcbConfig>,
    /// `[attestation.snp.crl]`: AMD's revocation lists. Default: none, revocation not checked.
    pub crl: SnpCrlConfig,
}

/// `[attestation.snp.crl]`: the AMD KDS CRLs the SNP verifier checks every chain against
/// (`crate::snp::crl`). The broker fetches nothing: an operator (or a job with internet access)
/// puts the files in `dir` and refreshes them before their `nextUpdate`; they are read again for
/// every SNP evidence, so a refresh needs no restart.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpCrlConfig {
    /// Directory of CRLs as AMD KDS serves them (DER, or PEM): `<product>.crl` from
    /// `https://kdsintf.amd.com/vcek/v1/<Product>/crl` and `<product>-vlek.crl` from
    /// `/vlek/v1/<Product>/crl`, product `milan`, `genoa` or `turin`. Missing files are skipped;
    /// an unreadable, malformed or other product's file refuses the start (and, appearing
    /// later, the evidence). Default none: revocation is not checked.
    pub dir: Option<PathBuf>,
    /// Refuse SNP evidence whose product and key kind (VCEK or VLEK) has no CRL in `dir`.
    /// Default false (a broker without CRLs keeps accepting evidence, unchecked for
    /// revocation); production brokers should set it, with `dir`.
    pub require: bool,
}

impl SnpCrlConfig {
    /// `require` needs `dir`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.require && self.dir.is_none() {
            return Err(ConfigError::Invalid {
                reason: "attestation.snp.crl.require needs attestation.snp.crl.dir".to_owned(),
            });
        }
        Ok(())
    }
}

/// A minimum TCB: security patch levels per component. Missing components are 0.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinTcbConfig {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin only).
    pub fmc: u8,
}

impl From<MinTcbConfig> for crate::snp::MinimumTcb {
    fn from(c: MinTcbConfig) -> Self {
        Self {
            fmc: c.fmc,
            bootloader: c.bootloader,
            tee: c.tee,
            snp: c.snp,
            microcode: c.microcode,
        }
    }
}

impl Default for SnpConfig {
    fn default() -> Self {
        Self {
            vcek_dir: None,
            min_report_version: crate::snp::REPORT_VERSION_MIN,
            allow_debug: false,
            allow_migrate_ma: false,
            allow_vlek: false,
            measurements: Vec::new(),
            min_reported_tcb: None,
            crl: SnpCrlConfig::default(),
        }
    }
}

/// `[attestation.tdx]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TdxConfig {
    /// Collateral JSON file or directory of `<FMSPC>.json`. Default none: TDX refused.
    pub collateral: Option<PathBuf>,
    /// Accept MIGRATABLE TDs. Default false.
    pub allow_migratable: bool,
    /// Accepted MRTD values (hex, 48 bytes; `coffer measure tdx`). Default none: MRTD is not
    /// pinned.
    pub mr_td: Vec<String>,
}

/// `[identity]`: the workload identity CA. Disabled unless `trust_domain` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// SPIFFE trust domain of issued identities (e.g. `coffer.test`). Default none: the identity
    /// endpoint refuses every request.
    pub trust_domain: Option<String>,
    /// CA private key, PKCS#8 PEM. Default `/var/lib/coffer-kbs/identity/ca.key`. With `ca_cert`
    /// absent too, a P-256 CA is generated at first start and both are written (key mode 0600).
    pub ca_key: PathBuf,
    /// CA certificate, PEM. Default `/var/lib/coffer-kbs/identity/ca.crt`.
    pub ca_cert: PathBuf,
    /// Lifetime of a generated CA certificate in days. Default 365.
    pub ca_lifetime_days: u64,
    /// Lifetime of a certificate when the request names none, seconds. Default 3600.
    pub default_lifetime_secs: u64,
    /// Longest lifetime a request may ask for, seconds. Default 86400.
    pub max_lifetime_secs: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            trust_domain: None,
            ca_key: PathBuf::from("/var/lib/coffer-kbs/identity/ca.key"),
            ca_cert: PathBuf::from("/var/lib/coffer-kbs/identity/ca.crt"),
            ca_lifetime_days: 365,
            default_lifetime_secs: 3600,
            max_lifetime_secs: 86400,
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.matches('\n').count() + 1),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: &str| {
            Err(ConfigError::Invalid {
                reason: reason.to_owned(),
            })
        };
        if !self.http.insecure_http && (self.http.tls_cert.is_none() || self.http.tls_key.is_none())
        {
            return invalid(
                "https needs http.tls_cert and http.tls_key (or set http.insecure_http)",
            );
        }
        if self.http.max_body_bytes == 0 || self.http.max_body_bytes > 64 * 1024 * 1024 {
            return invalid("http.max_body_bytes must be in 1..=64 MiB");
        }
        let h = &self.http;
        if h.max_body_memory_bytes < h.max_body_bytes || h.max_body_memory_bytes > u32::MAX as usize
        {
            return invalid("http.max_body_memory_bytes must be in max_body_bytes..=4 GiB");
        }
        if h.backlog == 0 || h.backlog > 65535 {
            return invalid("http.backlog must be in 1..=65535");
        }
        if !(1..=300).contains(&h.header_read_timeout_secs)
            || !(1..=3600).contains(&h.idle_timeout_secs)
            || !(1..=600).contains(&h.body_timeout_secs)
        {
            return invalid(
                "http: header_read_timeout_secs in 1..=300, idle_timeout_secs in 1..=3600, \
                 body_timeout_secs in 1..=600",
            );
        }
        if h.max_connections == 0
            || h.max_connections > 1_000_000
            || h.max_connections_per_ip == 0
            || h.max_connections_per_ip > h.max_connections
        {
            return invalid("http: need 1 <= max_connections_per_ip <= max_connections <= 1000000");
        }
        let s = &self.sessions;
        if !(1..=300).contains(&s.challenge_ttl_secs) || !(1..=86400).contains(&s.ttl_secs) {
            return invalid("sessions: challenge_ttl_secs in 1..=300, ttl_secs in 1..=86400");
        }
        let pg = &self.store.postgres;
        if self.store.backend == StoreBackend::Postgres {
            let Some(connection) = pg.connection.as_deref() else {
                return invalid(
                    "store.postgres.connection is required with backend = \"postgres\"",
                );
            };
            match connection.parse::<tokio_postgres::Config>() {
                Ok(c) if c.get_password().is_some() => {
                    return invalid(
                        "store.postgres.connection must not hold a password: use password_file",
                    );
                }
                Ok(c)
                    if postgres_over_tcp(&c)
                        && pg.tls_ca.is_none()
                        && !pg.insecure_plaintext_tcp =>
                {
                    return invalid(
                        "store.postgres: a TCP host needs tls_ca (or insecure_plaintext_tcp = true, development only)",
                    );
                }
                Ok(_) => {}
                Err(_) => return invalid("store.postgres.connection is not a connection string"),
            }
            if pg.pool_size == 0 || pg.pool_size > 64 {
                return invalid("store.postgres.pool_size must be in 1..=64");
            }
            if !(100..=60_000).contains(&pg.timeout_ms) {
                return invalid("store.postgres.timeout_ms must be in 100..=60000");
            }
        }
        if s.max_used_challenges < 1024 || s.max_used_challenges > 100_000_000 {
            return invalid("sessions.max_used_challenges must be in 1024..=100000000");
        }
        if s.keys.len() > 4 {
            return invalid("sessions.keys: at most 4 keys (the sealing key and older ones)");
        }
        if self.token.lifetime_secs == 0 || self.token.issuer.is_empty() {
            return invalid("token.lifetime_secs must be > 0 and token.issuer non-empty");
        }
        self.snp_measurements()?;
        self.attestation.snp.crl.validate()?;
        self.tdx_mr_td()?;
        let id = &self.identity;
        if let Some(td) = &id.trust_domain {
            crate::identity::validate_trust_domain(td).map_err(|e| ConfigError::Invalid {
                reason: format!("identity.trust_domain: {e}"),
            })?;
        }
        if id.default_lifetime_secs < 60
            || id.default_lifetime_secs > id.max_lifetime_secs
            || id.ca_lifetime_days == 0
            || id.ca_lifetime_days.saturating_mul(86400) < id.max_lifetime_secs
        {
            return invalid(
                "identity: need 60 <= default_lifetime_secs <= max_lifetime_secs <= ca_lifetime_days",
            );
        }
        Ok(())
    }

    /// The configured TDX MRTD values, decoded.
    pub fn tdx_mr_td(&self) -> Result<Vec<[u8; 48]>, ConfigError> {
        parse_measurements(&self.attestation.tdx.mr_td).map_err(|reason| ConfigError::Invalid {
            reason: format!("attestation.tdx.mr_td: {reason}"),
        })
    }

    /// The configured SNP measurements, decoded.
    pub fn snp_measurements(&self) -> Result<Vec<[u8; 48]>, ConfigError> {
        parse_measurements(&self.attestation.snp.measurements).map_err(|reason| {
            ConfigError::Invalid {
                reason: format!("attestation.snp.measurements: {reason}"),
            }
        })
    }
}

/// Decodes 48-byte hex measurements.
pub fn parse_measurements(hexes: &[String]) -> Result<Vec<[u8; 48]>, String> {
    hexes
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 48]>::try_from(b).ok())
                .ok_or_else(|| format!("{h:?} is not 48 bytes of hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_config_parses_and_unknown_keys_fail() {
        let text = include_str!("../../../coffer-kbs.toml");
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert!(!c.attestation.allow_sample);
        assert!(toml::from_str::<Config>("[http]\nlisten_typo = 1\n").is_err());
        assert!(toml::from_str::<Config>("bogus = true\n").is_err());
    }

    #[test]
    fn identity_section_validates() {
        let ok: Config = toml::from_str(
            "[http]\ninsecure_http = true\n[identity]\ntrust_domain = \"coffer.test\"\n",
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.identity.default_lifetime_secs, 3600);
        for bad in [
            "trust_domain = \"Coffer.Test\"",
            "trust_domain = \"a/b\"",
            "default_lifetime_secs = 7200\nmax_lifetime_secs = 3600",
            "default_lifetime_secs = 1",
            "ca_lifetime_days = 0",
        ] {
            let c: Config = toml::from_str(&format!(
                "[http]\ninsecure_http = true\n[identity]\n{bad}\n"
            ))
            .unwrap();
            assert!(c.validate().is_err(), "{bad} accepted");
        }
        assert!(toml::from_str::<Config>("[identity]\ntrust = 1\n").is_err());
    }

    #[test]
    fn testing_section_and_minimum_tcb() {
        let c: Config = toml::from_str(
            "[http]\ninsecure_http = true\n[testing]\nca_dir = \"/ci/ca\"\n\
             [attestation.snp.min_reported_tcb]\nbootloader = 3\nmicrocode = 115\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.testing.ca_dir.as_deref(), Some(Path::new("/ci/ca")));
        let tcb = c.attestation.snp.min_reported_tcb.unwrap();
        assert_eq!((tcb.bootloader, tcb.snp, tcb.microcode), (3, 0, 115));
        assert!(toml::from_str::<Config>("[testing]\nroots = 1\n").is_err());
        assert!(toml::from_str::<Config>("[attestation.snp.min_reported_tcb]\nbl = 1\n").is_err());
        // Off by default.
        assert!(c.attestation.snp.crl.dir.is_none() && !c.attestation.snp.crl.require);
        let c: Config = toml::from_str("[http]\ninsecure_http = true\n").unwrap();
        assert!(c.testing.ca_dir.is_none());
    }

    #[test]
    fn transport_and_session_limits_have_safe_defaults_and_validate() {
        let c: Config = toml::from_str("[http]\ninsecure_http = true\n").unwrap();
        c.validate().unwrap();
        assert!(c.http.backlog >= 1024);
        assert_eq!(c.http.header_read_timeout_secs, 10);
        assert_eq!(c.sessions.challenge_ttl_secs, 30);
        assert!(c.sessions.keys.is_empty());
        for bad in [
            "[http]\nbacklog = 0",
            "[http]\nmax_body_memory_bytes = 1000",
            "[http]\nbacklog = 70000",
            "[http]\nheader_read_timeout_secs = 0",
            "[http]\nidle_timeout_secs = 0",
            "[http]\nbody_timeout_secs = 601",
            "[http]\nmax_connections = 0",
            "[http]\nmax_connections = 10\nmax_connections_per_ip = 11",
            "[sessions]\nchallenge_ttl_secs = 0",
            "[sessions]\nchallenge_ttl_secs = 301",
            "[sessions]\nttl_secs = 0",
            "[sessions]\nmax_used_challenges = 10",
            "[sessions]\nkeys = [\"a\", \"b\", \"c\", \"d\", \"e\"]",
            "[store]\nbackend = \"postgres\"",
            "[store]\nbackend = \"postgres\"\n[store.postgres]\nconnection = \"host=/tmp user=k password=secret\"",
            "[store]\nbackend = \"postgres\"\n[store.postgres]\nconnection = \"host=/tmp\"\npool_size = 0",
            "[store]\nbackend = \"postgres\"\n[store.postgres]\nconnection = \"host=db.example port=5432\"",
        ] {
            let text = format!("{bad}\n").replacen("[http]\n", "[http]\ninsecure_http = true\n", 1);
            let text = if text.starts_with("[sessions]") || text.starts_with("[store]") {
                format!("[http]\ninsecure_http = true\n{text}")
            } else {
                text
            };
            let c: Config = toml::from_str(&text).unwrap();
            assert!(c.validate().is_err(), "{bad} accepted");
        }
        assert!(toml::from_str::<Config>("[sessions]\nmax_session = 1\n").is_err());
        // The keys #23 removed still load (ignored, warned about) for one release.
        let old: Config =
            toml::from_str("[sessions]\nmax = 100000\nmax_bytes = 67108864\n").unwrap();
        assert_eq!(
            old.sessions.removed_keys(),
            ["sessions.max", "sessions.max_bytes"]
        );
    }

    #[test]
    fn kbs05_crl_section_validates() {
        let c: Config = toml::from_str(
            "[http]\ninsecure_http = true\n[attestation.snp.crl]\ndir = \"/var/lib/crl\"\nrequire = true\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.attestation.snp.crl.require);
        let c: Config =
            toml::from_str("[http]\ninsecure_http = true\n[attestation.snp.crl]\nrequire = true\n")
                .unwrap();
        assert!(c.validate().is_err(), "require without dir accepted");
        assert!(toml::from_str::<Config>("[attestation.snp.crl]\nfiles = []\n").is_err());
    }

    #[test]
    fn https_required_unless_explicit() {
        let c: Config = toml::from_str("").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[http]\ninsecure_http = true\n").unwrap();
        c.validate().unwrap();
    }
}
