//! A real registry for tests: Debian's `docker-registry` (distribution 2.x) on 127.0.0.1 with a
//! free port and a temporary storage directory, stopped on drop. Installs nothing: a missing
//! binary fails the test with a clear message (tests/setup.sh installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `service` a token-auth registry expects.
pub const TOKEN_SERVICE: &str = "coffer-test-registry";
/// The token `iss` a token-auth registry expects.
pub const TOKEN_ISSUER: &str = "coffer-test-issuer";

/// A running registry.
pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
}

/// How to run the registry.
#[derive(Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a leaf certificate for 127.0.0.1 signed by a fresh test CA.
    pub tls: bool,
    /// Require HTTP basic auth (htpasswd, bcrypt) for this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Require bearer tokens: `(realm URL, PEM certificate of the token signer)`.
    pub token_auth: Option<(String, PathBuf)>,
}

/// Fails with a clear message when a tool the tests need is not installed.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: install the Debian package `{package}` (tests/setup.sh does)"
    );
}

impl TestRegistry {
    /// Starts a plain-HTTP registry without auth.
    pub fn start() -> Self {
        Self::start_with(RegistryOptions::default())
    }

    /// Starts a registry and waits until it accepts requests.
    pub fn start_with(options: RegistryOptions) -> Self {
        require_tool("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let mut extra = String::new();
        if options.tls {
            make_certs(dir.path());
            extra.push_str(&format!(
                "  tls:\n    certificate: {0}/leaf.pem\n    key: {0}/leaf.key\n",
                dir.path().display()
            ));
        }
        if let Some((user, pass)) = &options.basic_auth {
            require_tool("htpasswd", "apache2-utils");
            let file = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbc", file.to_str().unwrap(), user, pass])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed");
            extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: coffer-test\n    path: {}\n",
                file.display()
            ));
        }
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        if let Some((realm, cert)) = &options.token_auth {
            extra.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                cert.display()
            ));
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Self {
            child,
            dir,
            port,
            tls: options.tls,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = if registry.tls {
                TcpStream::connect(("127.0.0.1", registry.port)).is_ok()
            } else {
                registry.get_status("/v2/").is_some()
            };
            if ready {
                break;
            }
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited early ({status}): {}",
                    registry.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn get_status(&self, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests for the API root `/v2/` (a client's auth probe) served so far, from the access log;
    /// the harness's own readiness probes (HTTP/1.0) are not counted.
    pub fn api_root_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/ HTTP/1.1\""))
            .count()
    }

    /// Blob GETs (any blob, any status) served so far, from the access log.
    pub fn blob_requests(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// Successful GETs of blob `digest` (`sha256:…`) served so far, from the access log.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} HTTP/1.1\" 200");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&needle))
            .count()
    }

    /// Where the registry stores blob `digest`'s bytes (to tamper with them).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The test CA certificate (TLS registries).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A directory holding the CA as `ca.crt`, for skopeo's `--dest-cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("certs.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.ca_pem(), dir.join("ca.crt")).unwrap();
        dir
    }

    /// The temporary directory (for scratch files of the test).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }
}

/// A test CA and a leaf for 127.0.0.1 signed by it, made with openssl.
pub fn make_certs(dir: &Path) {
    require_tool("openssl", "openssl");
    let d = dir.display();
    let steps: [&str; 4] = [
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=coffer-test-ca -keyout {d}/ca.key -out {d}/ca.pem",
        "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 -keyout {d}/leaf.key -out {d}/leaf.csr",
        "x509 -req -in {d}/leaf.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 2 -extfile {d}/ext.cnf -out {d}/leaf.pem",
        "verify -CAfile {d}/ca.pem {d}/leaf.pem",
    ];
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for step in steps {
        let args: Vec<String> = step
            .replace("{d}", &d.to_string())
            .split(' ')
            .map(str::to_owned)
            .collect();
        let out = Command::new("openssl").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
