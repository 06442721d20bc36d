//! What the pod's sandbox (pause) container tells the shim about the pod's network: the network
//! namespace CRI made and CNI configured (`linux.namespaces[type=network].path`), the pod's
//! hostname (`hostname`), and the resolver configuration CRI wrote for it from the pod's
//! `DNSConfig` (the file its `/etc/resolv.conf` bind mount names). The runtime wires that
//! namespace's interfaces into the VM; the hostname and the resolver settings travel to the guest
//! as content in `CreateSandbox`, never as a host file.
//!
//! Nothing read here is trusted by the guest: the agent validates it and its policy decides.
//! The resolver file is parsed by the runtime's [`DnsConfig::from_resolv_conf`].

use std::io::Read as _;
use std::path::{Path, PathBuf};

use coffer_runtime::network::{DnsConfig, NetworkConfig};
use serde_json::Value;

/// Largest resolv.conf read (a Kubernetes pod's has a few hundred bytes).
const MAX_RESOLV_CONF_BYTES: u64 = 64 * 1024;

/// The pod's network as its sandbox container's spec describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetworkSource {
    /// The pod's network namespace; `None` for a pod on the node's network.
    pub netns: Option<PathBuf>,
    /// The pod's hostname; `None` when the spec names none.
    pub hostname: Option<String>,
    /// The file CRI wrote the pod's resolver configuration to.
    pub resolv_conf: Option<PathBuf>,
}

/// Reads the pod network from a sandbox container's `config.json` value.
pub fn source(spec: &Value) -> PodNetworkSource {
    let netns = spec
        .get("linux")
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))
        .and_then(|ns| ns.get("path"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let hostname = spec
        .get("hostname")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_owned);
    let resolv_conf = spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|m| m.get("destination").and_then(Value::as_str) == Some("/etc/resolv.conf"))
        .and_then(|m| m.get("source"))
        .and_then(Value::as_str)
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from);
    PodNetworkSource {
        netns,
        hostname,
        resolv_conf,
    }
}

/// A resolv.conf that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any resolver configuration.
    #[error("{path} is larger than {MAX_RESOLV_CONF_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the resolver configuration in `path` (at most [`MAX_RESOLV_CONF_BYTES`]), as the
/// resolver reads it ([`DnsConfig::from_resolv_conf`]).
pub fn read_resolv_conf(path: &Path) -> Result<DnsConfig, ResolvConfError> {
    let read_err = |source| ResolvConfError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_RESOLV_CONF_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_RESOLV_CONF_BYTES {
        return Err(ResolvConfError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(DnsConfig::from_resolv_conf(&text))
}

impl PodNetworkSource {
    /// The sandbox's network: the namespace's interfaces with the resolver settings of the file
    /// CRI wrote (none when it names none); `None` for a pod on the node's network.
    pub fn config(&self) -> Result<Option<NetworkConfig>, ResolvConfError> {
        let Some(netns) = &self.netns else {
            return Ok(None);
        };
        let dns = match &self.resolv_conf {
            Some(path) => read_resolv_conf(path)?,
            None => DnsConfig::default(),
        };
        Ok(Some(NetworkConfig {
            dns,
            ..NetworkConfig::new(netns)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_pause_spec_names_the_netns_hostname_and_resolver_file() {
        let spec = json!({
            "hostname": "web-0",
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1234"},
            ]},
            "mounts": [
                {"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm"},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/c/sandboxes/p1/resolv.conf", "options": ["rbind", "ro"]},
            ],
        });
        assert_eq!(
            source(&spec),
            PodNetworkSource {
                netns: Some("/var/run/netns/cni-1234".into()),
                hostname: Some("web-0".into()),
                resolv_conf: Some("/var/lib/c/sandboxes/p1/resolv.conf".into()),
            }
        );
        // The node's network: no namespace path (or no network namespace at all), no hostname.
        let node = json!({"linux": {"namespaces": [{"type": "network"}]}, "hostname": ""});
        assert_eq!(source(&node), PodNetworkSource::default());
        assert_eq!(source(&json!({})), PodNetworkSource::default());
        // A relative source names no host file.
        let relative =
            json!({"mounts": [{"destination": "/etc/resolv.conf", "source": "resolv.conf"}]});
        assert_eq!(source(&relative).resolv_conf, None);
    }

    #[test]
    fn a_resolv_conf_file_is_bounded_and_makes_the_network_config() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "nameserver 192.0.2.53\n").unwrap();
        assert_eq!(
            read_resolv_conf(&ok).unwrap().servers,
            ["192.0.2.53".parse::<std::net::IpAddr>().unwrap()]
        );
        let big = dir.path().join("big");
        std::fs::write(&big, "#".repeat(70_000)).unwrap();
        assert!(matches!(
            read_resolv_conf(&big),
            Err(ResolvConfError::TooLarge { .. })
        ));
        assert!(matches!(
            read_resolv_conf(&dir.path().join("absent")),
            Err(ResolvConfError::Read { .. })
        ));
        let mut source = PodNetworkSource {
            netns: Some("/run/netns/p".into()),
            hostname: None,
            resolv_conf: Some(ok),
        };
        let config = source.config().unwrap().unwrap();
        assert_eq!(config.netns, Path::new("/run/netns/p"));
        assert_eq!(config.dns.servers.len(), 1);
        source.resolv_conf = Some(big);
        assert!(source.config().is_err());
        source.netns = None;
        assert!(source.config().unwrap().is_none());
    }
}
