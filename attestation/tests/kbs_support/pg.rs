//! A throwaway PostgreSQL cluster from Debian's package: `initdb` and `pg_ctl` run as the
//! unprivileged `nobody` (when the tests run as root) in a temporary directory, listening on a
//! Unix socket in that directory only (no TCP). Password authentication (SCRAM) with a password
//! file, as a Kubernetes Secret would mount it. Missing binaries fail the test: `tests/setup.sh`
//! installs them (`apt-get install -y postgresql`).

#![allow(clippy::expect_used)] // test helpers: a failed expect is a failed test

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const NOBODY: u32 = 65534;
const USER: &str = "coffer";
const PASSWORD: &str = "pg-test-password-not-a-secret";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    next_db: AtomicUsize,
}

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) are missing under /usr/lib/postgresql: \
             run tests/setup.sh (apt-get install -y postgresql)"
        )
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `cmd` as `nobody` when root; panics with its output on failure.
fn run(mut cmd: Command, what: &str) {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    pub fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("coffer-pg")
            .tempdir()
            .unwrap();
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&pwfile, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .env("LC_ALL", "C");
        run(initdb, "initdb");
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c port=5432 \
             -c max_connections=400 -c fsync=off -c synchronous_commit=off",
            dir.path().display()
        );
        let mut ctl = Command::new(bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(&data)
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(dir.path().join("postgres.log"))
            .arg("start");
        run(ctl, "pg_ctl start");
        Self {
            dir,
            bin,
            next_db: AtomicUsize::new(0),
        }
    }

    /// One cluster for the whole test binary (each broker gets its own database): stopped and
    /// removed by a watchdog shell when the test process exits (statics are never dropped).
    pub fn shared() -> &'static Postgres {
        static SHARED: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let pg = Postgres::start();
            let script = format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
                 kill -QUIT $(head -n1 '{data}/postmaster.pid') 2>/dev/null; sleep 2; rm -rf '{dir}'",
                pid = std::process::id(),
                data = pg.dir.path().join("data").display(),
                dir = pg.dir.path().display(),
            );
            // Never waited for: it must outlive this process to clean up after it.
            #[allow(clippy::zombie_processes)]
            Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .expect("sh");
            pg
        })
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The password file (a Secret's mounted file).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// A connection string (no password) for `db`.
    pub fn connection(&self, db: &str) -> String {
        format!(
            "host={} port=5432 user={USER} dbname={db}",
            self.dir.path().display()
        )
    }

    /// Runs SQL with psql against `db`.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", "5432", "-U", USER, "-d", db, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql (postgresql-client) missing: run tests/setup.sh");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database.
    pub fn create_db(&self) -> String {
        let name = format!(
            "kbs_{}_{}",
            std::process::id(),
            self.next_db.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Stops the server at once (as a crash would).
    pub fn stop(&self) {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run(ctl, "pg_ctl stop");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut ctl = Command::new(self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        if is_root() {
            ctl.uid(NOBODY).gid(NOBODY);
        }
        let _ = ctl.output();
    }
}
