//! Registry transport against a real docker-registry: HTTPS with an extra CA (no plain-HTTP
//! fallback), HTTP basic auth with credentials from an auth.json file, bearer tokens — and that
//! the token never reaches a log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use coffer_image::{BlobStore, Credentials, PullError, PullOptions, RegistriesConfig, pull};
use common::{RegistryOptions, TestRegistry, VECTORS, skopeo_copy};

/// Everything logged at TRACE in this test binary: unfiltered, and through `may_log` as the agent
/// and the CLI log.
struct Logs {
    unfiltered: Arc<Mutex<Vec<u8>>>,
    filtered: Arc<Mutex<Vec<u8>>>,
}

struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::Layer;
        use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
        use tracing_subscriber::layer::SubscriberExt;
        let logs = Logs {
            unfiltered: Arc::default(),
            filtered: Arc::default(),
        };
        let (all, kept) = (logs.unfiltered.clone(), logs.filtered.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || Captured(all.clone()))
                    .with_filter(LevelFilter::TRACE),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || Captured(kept.clone()))
                    .with_filter(LevelFilter::TRACE.and(filter_fn(coffer_image::logging::may_log))),
            );
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

const SRC_MANIFEST: &str =
    "sha256:4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312";

#[tokio::test]
async fn https_registry_is_trusted_only_with_its_ca() {
    let registry = TestRegistry::start_with(RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    });
    let reference = format!("{}/tls/hello:v1", registry.host());
    let cert_dir = registry.cert_dir();
    skopeo_copy(
        &format!("oci:{VECTORS}/src:latest"),
        &format!("docker://{reference}"),
        &[
            "--dest-tls-verify=true",
            "--dest-cert-dir",
            cert_dir.to_str().unwrap(),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&work.path().join("store")).unwrap();

    // Without the CA: refused (and never downgraded to HTTP).
    let dest = work.path().join("untrusted");
    let err = pull(&reference, &dest, &PullOptions::new(Arc::clone(&store)))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    assert!(!dest.exists());

    let registries =
        RegistriesConfig::from_toml(&format!("ca_files = [{:?}]\n", registry.ca_pem())).unwrap();
    let options = PullOptions::new(Arc::clone(&store)).with_registries(registries);
    let pulled = pull(&reference, &work.path().join("trusted"), &options)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), SRC_MANIFEST);
    assert!(work.path().join("trusted/app/hello.txt").exists());
}

#[tokio::test]
async fn basic_auth_credentials_come_from_an_auth_file() {
    let registry = TestRegistry::start_with(RegistryOptions {
        basic_auth: Some(("coffer".to_owned(), "s3cret".to_owned())),
        ..RegistryOptions::default()
    });
    let reference = format!("{}/private/hello:v1", registry.host());
    skopeo_copy(
        &format!("oci:{VECTORS}/src:latest"),
        &format!("docker://{reference}"),
        &["--dest-creds", "coffer:s3cret"],
    );
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&work.path().join("store")).unwrap();
    let mut registries = RegistriesConfig::default();
    registries.add_insecure(&registry.host()).unwrap();

    let dest = work.path().join("anonymous");
    let options = PullOptions::new(Arc::clone(&store)).with_registries(registries.clone());
    let err = pull(&reference, &dest, &options).await.unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    assert!(!dest.exists());

    let wrong = Credentials::from_json(&format!(
        r#"{{"auths":{{"{}":{{"username":"coffer","password":"wrong"}}}}}}"#,
        registry.host()
    ))
    .unwrap();
    let mut options = PullOptions::new(Arc::clone(&store)).with_registries(registries.clone());
    options.credentials = wrong;
    assert!(
        pull(&reference, &work.path().join("wrong"), &options)
            .await
            .is_err()
    );

    let auth_file = work.path().join("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Y29mZmVyOnMzY3JldA=="}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let mut options = PullOptions::new(Arc::clone(&store)).with_registries(registries);
    options.credentials = Credentials::load(Path::new(&auth_file)).unwrap();
    let pulled = pull(&reference, &work.path().join("authorized"), &options)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), SRC_MANIFEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_obtained_with_basic_credentials() {
    let logs = logs();
    let work = tempfile::tempdir().unwrap();
    let tokens = common::token::TokenServer::start(work.path(), "coffer", "t0ken-pass").await;
    let registry = TestRegistry::start_with(RegistryOptions {
        token_auth: Some((tokens.realm.clone(), tokens.cert.clone())),
        ..RegistryOptions::default()
    });
    let reference = format!("{}/bearer/hello:v1", registry.host());
    let src = format!("oci:{VECTORS}/src:latest");
    let dest_ref = format!("docker://{reference}");
    let status = tokio::task::spawn_blocking(move || {
        skopeo_copy(&src, &dest_ref, &["--dest-creds", "coffer:t0ken-pass"]);
    })
    .await;
    status.unwrap();
    let after_push = tokens.issued.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after_push > 0, "skopeo did not use the token service");

    let store = BlobStore::open(&work.path().join("store")).unwrap();
    let mut registries = RegistriesConfig::default();
    registries.add_insecure(&registry.host()).unwrap();
    let dest = work.path().join("anonymous");
    let err = pull(
        &reference,
        &dest,
        &PullOptions::new(Arc::clone(&store)).with_registries(registries.clone()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    assert!(!dest.exists());

    let mut options = PullOptions::new(Arc::clone(&store)).with_registries(registries);
    options.credentials = Credentials::from_json(&format!(
        r#"{{"auths":{{"{}":{{"username":"coffer","password":"t0ken-pass"}}}}}}"#,
        registry.host()
    ))
    .unwrap();
    let pulled = pull(&reference, &work.path().join("bearer"), &options)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), SRC_MANIFEST);
    assert!(
        tokens.issued.load(std::sync::atomic::Ordering::SeqCst) > after_push,
        "no token was issued to the puller"
    );

    // The token exchange is Coffer's own (REG-07): nothing logs the token service's answer or
    // the token, even unfiltered (oci-client, which logged it at DEBUG, no longer sees it; the
    // filter stays for what dependencies print).
    let logged = |buf: &Mutex<Vec<u8>>| String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    let (unfiltered, filtered) = (logged(&logs.unfiltered), logged(&logs.filtered));
    for log in [&unfiltered, &filtered] {
        assert!(!log.contains("access_token"), "a token answer was logged");
        // Every token this service issues is a JWT: base64url of `{"`.
        assert!(!log.contains("eyJ"), "a token was logged");
    }
    assert!(
        filtered.contains("coffer_image"),
        "Coffer's own DEBUG/TRACE events stay: {filtered}"
    );
}
