//! Registry configuration (a `registries.conf`-like TOML file), credentials and pull limits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

/// Why configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("reading {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The registries TOML does not parse.
    #[error("parsing registries config")]
    Toml(#[source] toml::de::Error),
    /// The credentials JSON does not parse.
    #[error("parsing credentials file")]
    Json(#[source] serde_json::Error),
    /// A semantic problem.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// One mirror of a registry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// `host[:port]` of the mirror.
    pub host: String,
    /// Plain HTTP to this mirror (dev only; logged loudly). Default false.
    #[serde(default)]
    pub insecure: bool,
}

/// Settings for one registry host.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// `host[:port]` as it appears in references (`docker.io` for Docker Hub).
    pub host: String,
    /// Plain HTTP to this registry (dev only; logged loudly). Default false.
    #[serde(default)]
    pub insecure: bool,
    /// Mirrors tried in order before the registry itself. Default none.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
    /// Where GPG simple-signing signatures are read (`file:///dir` or `https://…`, laid out as
    /// skopeo's lookaside). Default none.
    #[serde(default)]
    pub lookaside: Option<String>,
}

/// The registries configuration.
///
/// ```toml
/// ca_files = ["/etc/coffer/registry-ca.pem"]
/// [[registry]]
/// host = "docker.io"
/// mirrors = [{ host = "mirror.internal:5000" }]
/// [[registry]]
/// host = "127.0.0.1:5000"
/// insecure = true
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Extra PEM CA certificates trusted for HTTPS. Default none.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    /// Per-registry settings. Default none (HTTPS everywhere, no mirrors).
    #[serde(default, rename = "registry")]
    pub registries: Vec<RegistryEntry>,
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.contains("://")
        && !host.contains('/')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

impl RegistriesConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(ConfigError::Toml)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Checks hosts and duplicates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for entry in &self.registries {
            if !valid_host(&entry.host) {
                return Err(ConfigError::Invalid(format!(
                    "bad registry host {:?}",
                    entry.host
                )));
            }
            if !seen.insert(entry.host.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "registry {:?} listed twice",
                    entry.host
                )));
            }
            for mirror in &entry.mirrors {
                if !valid_host(&mirror.host) {
                    return Err(ConfigError::Invalid(format!(
                        "bad mirror host {:?}",
                        mirror.host
                    )));
                }
            }
        }
        Ok(())
    }

    /// Marks `host` as plain-HTTP (the CLI's `--insecure-registry`).
    pub fn add_insecure(&mut self, host: &str) -> Result<(), ConfigError> {
        if !valid_host(host) {
            return Err(ConfigError::Invalid(format!("bad registry host {host:?}")));
        }
        match self.registries.iter_mut().find(|e| e.host == host) {
            Some(entry) => entry.insecure = true,
            None => self.registries.push(RegistryEntry {
                host: host.to_owned(),
                insecure: true,
                mirrors: Vec::new(),
                lookaside: None,
            }),
        }
        Ok(())
    }

    pub(crate) fn entry(&self, host: &str) -> Option<&RegistryEntry> {
        self.registries.iter().find(|e| e.host == host)
    }

    /// Every host to be spoken to over plain HTTP.
    pub(crate) fn insecure_hosts(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for entry in &self.registries {
            if entry.insecure {
                hosts.push(entry.host.clone());
            }
            hosts.extend(
                entry
                    .mirrors
                    .iter()
                    .filter(|m| m.insecure)
                    .map(|m| m.host.clone()),
            );
        }
        hosts
    }
}

/// Credentials for one registry.
#[derive(Clone)]
pub enum Credential {
    /// HTTP basic (also used to obtain bearer tokens from the registry's token service).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Zeroizing<String>,
    },
    /// A ready bearer token.
    Bearer(Zeroizing<String>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Registry credentials by host.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
}

#[derive(Deserialize)]
struct AuthFile {
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl Credentials {
    /// Parses a Docker/containers `auth.json`: `{"auths": {"host": {"auth": base64("user:pass")}}}`
    /// (or `username`/`password`, or `registrytoken` for a bearer token).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        use base64::Engine as _;
        let file: AuthFile = serde_json::from_str(text).map_err(ConfigError::Json)?;
        let mut by_host = BTreeMap::new();
        for (host, entry) in file.auths {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
            let credential = if let Some(token) = entry.registrytoken {
                Credential::Bearer(Zeroizing::new(token))
            } else if let Some(auth) = entry.auth {
                let decoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| ConfigError::Invalid(format!("bad auth for {host:?}")))?,
                );
                let text = std::str::from_utf8(&decoded)
                    .map_err(|_| ConfigError::Invalid(format!("bad auth for {host:?}")))?;
                let (user, pass) = text
                    .split_once(':')
                    .ok_or_else(|| ConfigError::Invalid(format!("bad auth for {host:?}")))?;
                Credential::Basic {
                    username: user.to_owned(),
                    password: Zeroizing::new(pass.to_owned()),
                }
            } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
                Credential::Basic {
                    username,
                    password: Zeroizing::new(password),
                }
            } else {
                return Err(ConfigError::Invalid(format!("no credential for {host:?}")));
            };
            by_host.insert(host, credential);
        }
        Ok(Self { by_host })
    }

    /// Reads an `auth.json` file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            );
        Self::from_json(&text)
    }

    /// Adds or replaces a credential.
    pub fn insert(&mut self, host: impl Into<String>, credential: Credential) {
        self.by_host.insert(host.into(), credential);
    }

    pub(crate) fn get(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(host)
    }

    /// Whether a credential for `host` (`host[:port]`) is held.
    pub fn has(&self, host: &str) -> bool {
        self.by_host.contains_key(host)
    }

    /// Adds `other`'s credentials; where both hold one for a host, `other`'s wins.
    pub fn extend(&mut self, other: Self) {
        self.by_host.extend(other.by_host);
    }
}

/// Bounds on what a pull may consume (INV-9).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest manifest or index. Default 4 MiB.
    pub max_manifest_bytes: u64,
    /// Largest image config. Default 8 MiB.
    pub max_config_bytes: u64,
    /// Most layers. Default 128.
    pub max_layers: usize,
    /// Largest single compressed layer. Default 16 GiB.
    pub max_layer_bytes: u64,
    /// Most file content bytes in the unpacked image. Default 32 GiB.
    pub max_unpacked_bytes: u64,
    /// Largest uncompressed/compressed ratio of a layer above `ratio_floor_bytes`. Default 200.
    pub max_ratio: u64,
    /// Uncompressed size a layer may always reach regardless of ratio. Default 64 MiB.
    pub ratio_floor_bytes: u64,
    /// Layers downloaded at once. Default 4.
    pub max_parallel_downloads: usize,
    /// When a download (manifest, index, config, layer, token service answer) counts as stalled
    /// and is cut off. Default: fewer than 1 KiB in 60 s, or no response headers in 60 s.
    pub stall: crate::registry::Stall,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            max_layers: 128,
            max_layer_bytes: 16 << 30,
            max_unpacked_bytes: 32 << 30,
            max_ratio: 200,
            ratio_floor_bytes: 64 << 20,
            max_parallel_downloads: 4,
            stall: crate::registry::Stall::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_toml_parses_and_rejects_unknown_fields() {
        let config = RegistriesConfig::from_toml(
            r#"
            ca_files = ["/etc/ca.pem"]
            [[registry]]
            host = "docker.io"
            mirrors = [{ host = "127.0.0.1:5000", insecure = true }]
            [[registry]]
            host = "localhost:5000"
            insecure = true
            "#,
        )
        .unwrap();
        assert_eq!(config.registries.len(), 2);
        assert_eq!(
            config.insecure_hosts(),
            vec!["127.0.0.1:5000", "localhost:5000"]
        );
        assert!(matches!(
            RegistriesConfig::from_toml("[[registry]]\nhost = \"a\"\nverify = false\n"),
            Err(ConfigError::Toml(_))
        ));
        assert!(matches!(
            RegistriesConfig::from_toml("[[registry]]\nhost = \"https://a/b\"\n"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn credentials_file_forms() {
        let creds = Credentials::from_json(
            r#"{"auths":{"https://r.example/":{"auth":"dXNlcjpwYTpzcw=="},
                "t.example":{"registrytoken":"tok"},
                "u.example":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        match creds.get("r.example") {
            Some(Credential::Basic { username, password }) => {
                assert_eq!(username, "user");
                assert_eq!(password.as_str(), "pa:ss");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            creds.get("t.example"),
            Some(Credential::Bearer(_))
        ));
        assert!(format!("{:?}", creds.get("u.example")).contains("redacted"));
        assert!(Credentials::from_json(r#"{"auths":{"x":{}}}"#).is_err());
    }
}
