//! A real registry for the CLI suites: Debian's `docker-registry` on a free loopback port with its
//! own storage, killed on drop, filled with `skopeo copy` from OCI layouts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// Debian's `docker-registry` on a free loopback port with its own storage; killed on drop.
#[derive(Debug)]
pub struct Registry {
    child: std::process::Child,
    /// The loopback port it serves plain HTTP on.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_auth(None)
    }

    /// Starts it requiring HTTP basic auth for `(user, password)` when given (htpasswd, bcrypt).
    pub fn start_with_auth(basic: Option<(&str, &str)>) -> anyhow::Result<Self> {
        crate::require_tool("docker-registry");
        crate::require_tool("skopeo");
        let dir = tempfile::tempdir()?;
        let mut auth = String::new();
        if let Some((user, password)) = basic {
            crate::require_tool("htpasswd");
            let file = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbc", &file.display().to_string(), user, password])
                .output()
                .context("running htpasswd")?;
            ensure!(out.status.success(), "htpasswd failed");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: coffer-test\n    path: {}\n",
                file.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .args(["serve", &config.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let registry = Self { child, port, dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Copies an OCI layout into the registry with skopeo; returns the manifest digest.
    pub fn push(&self, layout: &Path, name: &str) -> anyhow::Result<String> {
        self.push_as(layout, name, None)
    }

    /// [`Registry::push`] with `user:password` credentials.
    pub fn push_as(
        &self,
        layout: &Path,
        name: &str,
        creds: Option<&str>,
    ) -> anyhow::Result<String> {
        let creds: Vec<String> = creds
            .map(|c| vec![format!("--dest-creds={c}")])
            .unwrap_or_default();
        let inspect_creds: Vec<String> = creds
            .iter()
            .map(|c| c.replace("--dest-creds", "--creds"))
            .collect();
        let dest = format!("docker://127.0.0.1:{}/{name}", self.port);
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(&creds)
            .arg(format!("oci:{}", layout.display()))
            .arg(&dest)
            .output()?;
        ensure!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--tls-verify=false",
                "--format",
                "{{.Digest}}",
                &dest,
            ])
            .args(&inspect_creds)
            .output()?;
        ensure!(
            out.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}

impl Registry {
    /// The file holding blob `digest` (`sha256:…`) in the registry's storage, for tampering tests.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Whether the registry holds anything for repository `name` (manifests, tags, layer links
    /// or upload sessions).
    pub fn has_repository(&self, name: &str) -> bool {
        self.storage().join("repositories").join(name).exists()
    }

    /// The registry's storage (blobs, manifests, tags), for scans and tampering tests.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data/docker/registry/v2")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
