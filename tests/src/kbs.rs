//! A real `coffer-kbs` for the CLI suites.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

/// The trust domain of the test broker's workload identities.
pub const TRUST_DOMAIN: &str = "coffer.test";

/// A resource policy admitting every resource and identity request, sample evidence included
/// (tests only).
pub const ALLOW_SAMPLE_POLICY: &str = "package policy\n\nimport rego.v1\n\ndefault allow := false\n\nallow if data.plugin in {\"resource\", \"identity\"}\n";

/// A `coffer-kbs` serving plain HTTP on a free port; killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    resources: std::path::PathBuf,
    /// Its base URL.
    pub url: String,
    /// Its log (stderr), for scans of what the host side gets to see.
    pub log: std::path::PathBuf,
}

impl Broker {
    /// Starts a broker whose resource `default/key/1` holds `secret`, with sample evidence enabled
    /// and `policy` (Rego) or the shipped default policy.
    pub fn start(
        dir: &Path,
        name: &str,
        policy: Option<&str>,
        secret: &[u8],
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, name, policy, secret, None, "", None)
    }

    /// [`Broker::start`] serving HTTPS with the certificate chain `cert` and its key `key` (PEM
    /// files), with the shipped default policy.
    pub fn start_https(dir: &Path, name: &str, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, name, None, b"unused", None, "", Some((cert, key)))
    }

    /// [`Broker::start`] with `extra` appended to the configuration (whole TOML sections, e.g.
    /// a deliberately insecure `[admin]`).
    pub fn start_with_config(
        dir: &Path,
        name: &str,
        policy: Option<&str>,
        secret: &[u8],
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, name, policy, secret, None, extra, None)
    }

    /// [`Broker::start`] with workload identities issued for `lifetime_secs` (the broker's
    /// `default_lifetime_secs`, at least 60) rather than the configured default of an hour, so a
    /// test sees the guest rotate its identity.
    pub fn start_with_identity_lifetime(
        dir: &Path,
        name: &str,
        policy: Option<&str>,
        secret: &[u8],
        lifetime_secs: u64,
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, name, policy, secret, Some(lifetime_secs), "", None)
    }

    fn start_with(
        dir: &Path,
        name: &str,
        policy: Option<&str>,
        secret: &[u8],
        identity_lifetime_secs: Option<u64>,
        extra: &str,
        tls: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let resources = dir.join(format!("{name}-resources"));
        std::fs::create_dir_all(resources.join("default/key"))?;
        std::fs::write(resources.join("default/key/1"), secret)?;
        let policy_line = match policy {
            Some(rego) => {
                let file = dir.join(format!("{name}-policy.rego"));
                std::fs::write(&file, rego)?;
                format!("file = {:?}\n", file.display().to_string())
            }
            None => String::new(),
        };
        let config = dir.join(format!("{name}.toml"));
        // The workload-identity CA of trust domain TRUST_DOMAIN, generated at first start.
        let ca = |file: &str| {
            dir.join(format!("{name}-identity"))
                .join(file)
                .display()
                .to_string()
        };
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n{transport}\n[resources]\ndir = {:?}\n\n[policy]\n{policy_line}\n[attestation]\nallow_sample = true\n\n[identity]\ntrust_domain = {TRUST_DOMAIN:?}\nca_key = {:?}\nca_cert = {:?}\n{lifetime}{extra}",
                resources.display().to_string(),
                ca("ca.key"),
                ca("ca.crt"),
                transport = match tls {
                    Some((cert, key)) => format!(
                        "tls_cert = {:?}\ntls_key = {:?}\n",
                        cert.display().to_string(),
                        key.display().to_string()
                    ),
                    None => "insecure_http = true\n".to_owned(),
                },
                lifetime = identity_lifetime_secs
                    .map(|secs| format!("default_lifetime_secs = {secs}\n"))
                    .unwrap_or_default(),
            ),
        )?;
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(crate::bin("coffer-kbs"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the broker log")?)
            .spawn()
            .context("starting coffer-kbs")?;
        let broker = Self {
            child,
            resources,
            url: format!(
                "{}://127.0.0.1:{port}",
                if tls.is_some() { "https" } else { "http" }
            ),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "coffer-kbs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stores another resource at `path` (repo/type/tag).
    pub fn put(&self, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let file = self.resources.join(path);
        std::fs::create_dir_all(file.parent().context("resource path")?)?;
        std::fs::write(file, bytes)?;
        Ok(())
    }

    /// `coffer kbs get-resource` of `default/key/1` with sample evidence.
    pub fn get_resource(&self, extra: &[&str]) -> anyhow::Result<Output> {
        Command::new(crate::coffer())
            .args([
                "kbs",
                "get-resource",
                "--url",
                &self.url,
                "--path",
                "default/key/1",
                "--tee",
                "sample",
            ])
            .args(extra)
            .output()
            .context("running coffer")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
