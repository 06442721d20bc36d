//! What the pod's sandbox (pause) container tells the shim about the pod's network: the network
//! namespace CRI made and CNI configured (`linux.namespaces[type=network].path`), the pod's
//! hostname (`hostname`), and the resolver configuration CRI wrote for it from the pod's
//! `DNSConfig` (the file its `/etc/resolv.conf` bind mount names). The runtime wires that
//! namespace's interfaces into the VM; the hostname and the resolver settings travel to the guest
//! as content in `CreateSandbox`, never as a host file.
//!
//! Nothing read here is trusted by the guest: the agent validates it and its policy decides.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Largest resolv.conf read (a Kubernetes pod's has a few hundred bytes).
const MAX_RESOLV_CONF_BYTES: u64 = 64 * 1024;
/// Name servers the resolver uses (glibc's and musl's MAXNS); later lines are ignored, as the
/// resolver itself does.
const MAX_NAME_SERVERS: usize = 3;

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

/// Resolver settings, as `resolv.conf` states them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` addresses, in order (at most [`MAX_NAME_SERVERS`]).
    pub servers: Vec<String>,
    /// `search` domains (a `domain` line counts as a one-domain search list; the last of the two
    /// wins, as in the resolver).
    pub searches: Vec<String>,
    /// `options` words.
    pub options: Vec<String>,
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

/// Reads and parses `path` (at most [`MAX_RESOLV_CONF_BYTES`]).
pub fn read_resolv_conf(path: &Path) -> Result<ResolvConf, ResolvConfError> {
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
    Ok(parse_resolv_conf(&text))
}

/// Parses resolv.conf text the way the resolver reads it: one keyword per line, `#` and `;` start
/// comments, unknown keywords are ignored.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(server) = words.next()
                    && conf.servers.len() < MAX_NAME_SERVERS
                {
                    conf.servers.push(server.to_owned());
                }
            }
            Some("search" | "domain") => conf.searches = words.map(str::to_owned).collect(),
            Some("options") => conf.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    conf
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
    fn resolv_conf_is_read_as_the_resolver_reads_it() {
        let conf = parse_resolv_conf(
            "# written by CRI\nsearch ns.svc.cluster.local svc.cluster.local\n\
             nameserver 192.0.2.10\nnameserver 2001:db8::a ; second\n\
             options ndots:5\noptions edns0 timeout:2\nsortlist 1.2.3.4\n\
             nameserver 1.1.1.1\nnameserver 8.8.8.8\n   \nnameserver\n",
        );
        assert_eq!(conf.servers, ["192.0.2.10", "2001:db8::a", "1.1.1.1"]);
        assert_eq!(conf.searches, ["ns.svc.cluster.local", "svc.cluster.local"]);
        assert_eq!(conf.options, ["ndots:5", "edns0", "timeout:2"]);
        // `domain` and `search` replace each other: the last wins.
        let conf = parse_resolv_conf("search a.example b.example\ndomain c.example\n");
        assert_eq!(conf.searches, ["c.example"]);
        assert_eq!(parse_resolv_conf(""), ResolvConf::default());
    }

    #[test]
    fn a_resolv_conf_file_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "nameserver 192.0.2.53\n").unwrap();
        assert_eq!(read_resolv_conf(&ok).unwrap().servers, ["192.0.2.53"]);
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
    }
}
