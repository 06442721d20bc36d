//! A throwaway PostgreSQL cluster for tests of the broker's shared store, from Debian's package:
//! `initdb` and `pg_ctl` run as the unprivileged `nobody` (when the caller is root) in a new
//! temporary directory, listening on a Unix socket in that directory only (no TCP), with
//! password (SCRAM) authentication from a password file, as a mounted Secret would hold it.
//! Missing binaries are an error naming the fix (`tests/setup.sh`: `apt-get install -y
//! postgresql`), never a skip. Stopped (immediate) and removed on drop. [`Postgres::start_tls`]
//! also listens on 127.0.0.1 with TLS (a given certificate and key).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand_core::{OsRng, RngCore};

const NOBODY: u32 = 65534;
/// The cluster's superuser.
pub const USER: &str = "coffer";
const PORT: &str = "5432";

/// Failures starting or using the cluster.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) are missing under /usr/lib/postgresql: run \
         tests/setup.sh (apt-get install -y postgresql postgresql-client)"
    )]
    Missing,
    /// A file or directory operation failed.
    #[error("{op} {path}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{what} failed: {output}")]
    Command {
        /// The command.
        what: &'static str,
        /// Its status and output.
        output: String,
    },
}

/// A running cluster. `Drop` stops it and removes its directory.
#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    /// The TCP port on 127.0.0.1 (TLS), when listening there.
    tcp_port: Option<u16>,
    bin: PathBuf,
    password: String,
    next_db: AtomicUsize,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PostgresError {
    let path = path.to_path_buf();
    move |source| PostgresError::Io { op, path, source }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The newest installed server's `bin` directory.
fn server_bin() -> Result<PathBuf, PostgresError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or(PostgresError::Missing)
}

/// Runs `cmd` (as `nobody` when `unprivileged` and root); its output, or an error with it.
fn run(mut cmd: Command, what: &'static str, unprivileged: bool) -> Result<Output, PostgresError> {
    if unprivileged && is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = cmd.output().map_err(|e| PostgresError::Command {
        what,
        output: format!("cannot run: {e}"),
    })?;
    if !out.status.success() {
        return Err(PostgresError::Command {
            what,
            output: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

impl Postgres {
    /// Creates and starts a cluster in a new temporary directory (Unix socket only).
    pub fn start() -> Result<Self, PostgresError> {
        Self::start_with(None)
    }

    /// Like [`Self::start`], also listening on 127.0.0.1 with TLS: `cert_pem` (the chain) and
    /// `key_pem` (its key); see [`Self::tcp_connection`].
    pub fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, PostgresError> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&[u8], &[u8])>) -> Result<Self, PostgresError> {
        let bin = server_bin()?;
        let mut suffix = [0u8; 6];
        OsRng.fill_bytes(&mut suffix);
        let dir = std::env::temp_dir().join(format!("coffer-pg-{}", hex::encode(suffix)));
        std::fs::create_dir(&dir).map_err(io("create", &dir))?;
        let mut password = [0u8; 16];
        OsRng.fill_bytes(&mut password);
        let tcp_port = match tls {
            Some(_) => Some(
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map_err(io("bind", &dir))?
                    .port(),
            ),
            None => None,
        };
        let pg = Self {
            dir,
            tcp_port,
            bin,
            password: hex::encode(password),
            next_db: AtomicUsize::new(0),
        };
        let pwfile = pg.password_file();
        std::fs::write(&pwfile, format!("{}\n", pg.password)).map_err(io("write", &pwfile))?;
        if is_root() {
            for path in [&pg.dir, &pwfile] {
                std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
                    .map_err(io("chown", path))?;
            }
        }
        let mut initdb = Command::new(pg.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(pg.data())
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .env("LC_ALL", "C");
        run(initdb, "initdb", true)?;
        let mut options = format!(
            "-c unix_socket_directories='{}' -c max_connections=400 -c fsync=off \
             -c synchronous_commit=off",
            pg.dir.display()
        );
        match (tls, pg.tcp_port) {
            (Some((cert, key)), Some(port)) => {
                for (name, bytes) in [("server.crt", cert), ("server.key", key)] {
                    let path = pg.dir.join(name);
                    std::fs::write(&path, bytes).map_err(io("write", &path))?;
                    std::fs::set_permissions(
                        &path,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .map_err(io("chmod", &path))?;
                    if is_root() {
                        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))
                            .map_err(io("chown", &path))?;
                    }
                }
                options += &format!(
                    " -c listen_addresses='127.0.0.1' -c port={port} -c ssl=on \
                     -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                    pg.dir.join("server.crt").display(),
                    pg.dir.join("server.key").display()
                );
            }
            _ => options += &format!(" -c listen_addresses='' -c port={PORT}"),
        }
        let mut ctl = Command::new(pg.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(pg.data())
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(pg.dir.join("postgres.log"))
            .arg("start");
        run(ctl, "pg_ctl start", true)?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory (it holds the Unix socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the superuser's password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    /// A connection string (no password) for `db` as the superuser.
    pub fn connection(&self, db: &str) -> String {
        format!(
            "host={} port={} user={USER} dbname={db}",
            self.dir.display(),
            self.port()
        )
    }

    /// The port (the Unix socket's name carries it too).
    fn port(&self) -> String {
        self.tcp_port
            .map_or_else(|| PORT.to_owned(), |p| p.to_string())
    }

    /// A connection string (no password) for `db` over TCP to 127.0.0.1 (TLS), when listening.
    pub fn tcp_connection(&self, db: &str) -> Option<String> {
        self.tcp_port
            .map(|port| format!("host=127.0.0.1 port={port} user={USER} dbname={db}"))
    }

    /// Runs `sql` with `psql` against `db`; its unaligned, tuples-only output, trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PostgresError> {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port(), "-U", USER, "-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password);
        let out = run(cmd, "psql", false)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A new, empty database; its name.
    pub fn create_db(&self) -> Result<String, PostgresError> {
        let name = format!(
            "kbs_{}_{}",
            std::process::id(),
            self.next_db.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }

    /// Stops the server at once, as a crash would (the directory stays until drop).
    pub fn stop(&self) -> Result<(), PostgresError> {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        run(ctl, "pg_ctl stop", true).map(drop)
    }

    /// A shell command that, once process `pid` has exited, stops this cluster and removes its
    /// directory: for a cluster held in a `static`, which is never dropped.
    pub fn reaper_script(&self, pid: u32) -> String {
        format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             kill -QUIT $(head -n1 '{data}/postmaster.pid') 2>/dev/null; sleep 2; rm -rf '{dir}'",
            data = self.data().display(),
            dir = self.dir.display(),
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
