//! Where the shim's settings come from. The settings themselves are the runtime's configuration
//! file ([`coffer_runtime::config::RuntimeConfig`], `/etc/coffer/runtime.toml`); this module only
//! decides which file, in one function ([`settings`]):
//! 1. the runtime options containerd passes with a task (`ConfigPath` of
//!    `containerd.runc.v1.Options`: `ctr run --runtime-config-path FILE`, or `ConfigPath` under
//!    `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.coffer.options]` for CRI);
//! 2. the environment variable [`CONFIG_ENV`] (shims inherit containerd's environment);
//! 3. [`coffer_runtime::config::DEFAULT_PATH`] if it exists, else the documented defaults.
//!
//! A file named explicitly (1 or 2) must exist and parse. `guest.published_ports` is refused: it
//! is for `coffer sandbox run`; one configuration serves every pod of a node, which would all bind
//! the same host addresses.

use std::path::{Path, PathBuf};

use coffer_runtime::config::{ConfigError, RuntimeConfig};

/// Environment variable naming the runtime configuration file.
pub const CONFIG_ENV: &str = "COFFER_RUNTIME_CONFIG";

/// Loads the settings; `explicit` is the path from containerd's runtime options, if any.
pub fn settings(explicit: Option<&Path>) -> Result<RuntimeConfig, ConfigError> {
    let named = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    let config = RuntimeConfig::load_or_default(named.as_deref())?;
    if !config.guest.published_ports.is_empty() {
        return Err(ConfigError::Invalid {
            path: named.unwrap_or_else(|| coffer_runtime::config::DEFAULT_PATH.into()),
            reason: "guest.published_ports is for `coffer sandbox run`: every pod of the node \
                     would bind the same host addresses"
                .into(),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_file_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, "state_dir = \"/tmp/s\"\n[guest]\nmemory_mib = 256\n").unwrap();
        let s = settings(Some(&path)).unwrap();
        assert_eq!(s.state_dir, Path::new("/tmp/s"));
        assert_eq!(s.guest.memory_mib, 256);
        assert!(matches!(
            settings(Some(Path::new("/nonexistent/coffer.toml"))),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn published_ports_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.toml");
        std::fs::write(
            &path,
            "[guest]\npublished_ports = [\"127.0.0.1:8443:443\"]\n",
        )
        .unwrap();
        let err = settings(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("guest.published_ports is for `coffer sandbox run`"),
            "{err}"
        );
    }
}
