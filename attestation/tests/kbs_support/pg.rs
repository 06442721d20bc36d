//! The PostgreSQL cluster of a test binary ([`coffer_attestation::testing::postgres`]).

pub use coffer_attestation::testing::postgres::Postgres;

/// One cluster for the whole test binary (each broker gets its own database), stopped and
/// removed by a reaper shell once the test process exits (statics are never dropped).
pub fn shared() -> &'static Postgres {
    static SHARED: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let pg = Postgres::start().unwrap_or_else(|e| panic!("{e}"));
        // Never waited for: it must outlive this process to clean up after it.
        #[allow(clippy::zombie_processes)]
        std::process::Command::new("sh")
            .args(["-c", &pg.reaper_script(std::process::id())])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        pg
    })
}
