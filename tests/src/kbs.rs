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

/// Three `coffer-kbs` processes on one throwaway PostgreSQL cluster (Unix socket), sharing one
/// key set and no memory, behind a loopback proxy that sends each connection to the next replica
/// (no affinity). Everything is stopped on drop.
#[derive(Debug)]
pub struct Replicas {
    brokers: Vec<Child>,
    proxy: Proxy,
    admin: coffer_attestation::kbs::jwt::TokenSigner,
    /// The replicas' own base URLs.
    pub urls: Vec<String>,
    // Declared last: the brokers stop before their database.
    _pg: coffer_attestation::testing::postgres::Postgres,
}

impl Replicas {
    /// Starts the database, the three replicas (sample evidence enabled, `policy` Rego as the
    /// resource policy, admin tokens from [`Replicas::admin_token`]) and the proxy. With
    /// `close_after_each_request` the proxy asks the replica to close the connection after its
    /// answer (`Connection: close`), so a keep-alive client such as `coffer kbs get-resource`
    /// also sends each request of its handshake to another replica.
    pub fn start(dir: &Path, policy: &str, close_after_each_request: bool) -> anyhow::Result<Self> {
        let pg = coffer_attestation::testing::postgres::Postgres::start()?;
        let db = pg.create_db()?;
        let admin = coffer_attestation::testing::replicas::write_shared_keys(dir, &["session"])?;
        std::fs::write(dir.join("policy.rego"), policy)?;
        let mut brokers = Vec::new();
        let mut urls = Vec::new();
        for i in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let config = dir.join(format!("replica{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[http]\nlisten = \"127.0.0.1:{port}\"\ninsecure_http = true\n\
                     [token]\nsigning_key = {token:?}\n[admin]\npublic_key = {admin:?}\n\
                     [sessions]\nkeys = [{session:?}]\n[policy]\nfile = {policy:?}\n\
                     [attestation]\nallow_sample = true\n\
                     [store]\nbackend = \"postgres\"\n[store.postgres]\nconnection = {conn:?}\n\
                     password_file = {pw:?}\n",
                    token = dir.join("token.key"),
                    admin = dir.join("admin.pub"),
                    session = dir.join("session.key"),
                    policy = dir.join("policy.rego"),
                    conn = pg.connection(&db),
                    pw = pg.password_file(),
                ),
            )?;
            let log = std::fs::File::create(dir.join(format!("replica{i}.log")))?;
            brokers.push(
                Command::new(crate::bin("coffer-kbs"))
                    .arg("--config")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .context("starting coffer-kbs")?,
            );
            urls.push(format!("http://127.0.0.1:{port}"));
        }
        let ports: Vec<u16> = urls
            .iter()
            .filter_map(|u| u.rsplit(':').next()?.parse().ok())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in &ports {
            while !ready(*port) {
                ensure!(
                    Instant::now() < deadline,
                    "replica on port {port} not ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let proxy = Proxy::start(ports, close_after_each_request)?;
        Ok(Self {
            brokers,
            proxy,
            admin,
            urls,
            _pg: pg,
        })
    }

    /// The proxy's URL: the replicated set as a Service without session affinity shows it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy.port)
    }

    /// Connections the proxy has handed to a replica.
    pub fn connections(&self) -> usize {
        self.proxy.next.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An admin token (ES256) every replica accepts, valid for ten minutes.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        Ok(self
            .admin
            .sign(&serde_json::json!({"iat": now, "exp": now + 600}))?)
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.brokers {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.proxy.stop();
    }
}

/// `GET /ready` on 127.0.0.1:`port` answers 200.
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: kbs\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Round robin over loopback ports, one thread pair per connection.
#[derive(Debug)]
struct Proxy {
    port: u16,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start(backends: Vec<u16>, close: bool) -> anyhow::Result<Self> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let next = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (next.clone(), stop.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                let backend = backends[n.fetch_add(1, Ordering::Relaxed) % backends.len()];
                std::thread::spawn(move || {
                    let _ = relay(inbound, backend, close);
                });
            }
        });
        Ok(Self { port, next, stop })
    }

    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Relays one connection to `backend`; with `close`, the first request's head gets
/// `Connection: close` (the replica answers once and closes).
fn relay(mut inbound: std::net::TcpStream, backend: u16, close: bool) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let timeout = Some(Duration::from_secs(60));
    inbound.set_read_timeout(timeout)?;
    let mut outbound = std::net::TcpStream::connect(("127.0.0.1", backend))?;
    outbound.set_read_timeout(timeout)?;
    if close {
        // Read up to the end of the request line (bounded), then insert the header after it.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            ensure_io(line.len() < 65536, "request line too long")?;
            if inbound.read(&mut byte)? == 0 {
                return Ok(());
            }
            line.push(byte[0]);
        }
        outbound.write_all(&line)?;
        outbound.write_all(b"Connection: close\r\n")?;
    }
    let (mut up_in, mut up_out) = (inbound.try_clone()?, outbound.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_in, &mut up_out);
        let _ = up_out.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut outbound, &mut inbound);
    let _ = inbound.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    Ok(())
}

fn ensure_io(ok: bool, what: &str) -> std::io::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::other(what.to_owned()))
    }
}
