//! Test harness: a real `coffer-kbs` (library `serve`) on a loopback port, over HTTP or HTTPS
//! with a freshly generated CA (rcgen), with an admin key and a token signing key the tests hold.

#![allow(dead_code)]

pub mod keys;
pub mod pg;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use coffer_attestation::attester::{Attester, SampleAttester};
use coffer_attestation::kbs::client::{AuthMode, ClientConfig, KbsClient, KeyKind};
use coffer_attestation::kbs::jwe::TeeKeyPair;
use coffer_attestation::kbs::jwt::TokenSigner;
use coffer_attestation::kbs::server::config::Config;
use coffer_attestation::kbs::server::{Broker, bind, serve, tls_config_from_pem};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// A policy that releases to any attested requester (like Trustee's allow-all upload).
pub const ALLOW_ALL: &str = "package policy\nimport rego.v1\ndefault allow := false\nallow if { data.plugin == \"resource\" }\n";

pub struct Options {
    pub tls: bool,
    pub allow_sample: bool,
    pub policy: Option<&'static str>,
    pub ttl_secs: u64,
    pub max_body: usize,
    pub anonymous_admin: bool,
    /// Configure `admin.public_key` (the P-256 key in `TestKbs::admin`).
    pub es256_admin: bool,
    /// Configure `admin.ed25519_public_key` (the key in `TestKbs::admin_ed25519`).
    pub ed25519_admin: bool,
    /// `[identity] trust_domain` (CA generated under the test directory); none: disabled.
    pub identity: Option<&'static str>,
    /// More `[http]` lines (timeouts, caps), each ending in a newline.
    pub http_lines: &'static str,
    /// Whole TOML sections appended to the configuration (`[attestation.snp]`, `[testing]`, ...).
    pub extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: false,
            allow_sample: true,
            policy: Some(ALLOW_ALL),
            ttl_secs: 300,
            max_body: 1024 * 1024,
            anonymous_admin: false,
            es256_admin: true,
            ed25519_admin: false,
            identity: None,
            http_lines: "",
            extra: String::new(),
        }
    }
}

/// Which store the test brokers use: `COFFER_KBS_STORE=postgres` runs a suite against
/// PostgreSQL (a cluster per test binary, a database per broker); default the directory.
pub fn store_is_postgres() -> bool {
    match std::env::var("COFFER_KBS_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("directory") | Err(_) => false,
        Ok(other) => panic!("COFFER_KBS_STORE={other}: directory or postgres"),
    }
}

pub struct TestKbs {
    pub url: String,
    /// The broker's database, when on PostgreSQL.
    pub db: Option<String>,
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub ca_pem: Option<Vec<u8>>,
    /// Holds the admin private key.
    pub admin: TokenSigner,
    /// Holds the Ed25519 admin private key (EdDSA tokens, as the kbs-client of Trustee's `simple` admin backend signs).
    pub admin_ed25519: ring::signature::Ed25519KeyPair,
    /// Holds the broker's token signing key (to forge tokens in tests).
    pub token_key: p256::SecretKey,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestKbs {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn tls_material() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "coffer test ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
            127, 0, 0, 1,
        ])));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
        ca.pem().into_bytes(),
    )
}

/// The RSA-3072 fixture key (see tests/fixtures/README.md).
pub fn rsa_fixture_key() -> TeeKeyPair {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa3072-tee-key.pem"
    ))
    .unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let key = TeeKeyPair::from_pkcs8_der(&der).unwrap();
    assert!(matches!(key, TeeKeyPair::Rsa(_)));
    key
}

pub async fn start(opts: Options) -> TestKbs {
    let dir = tempfile::tempdir().unwrap();
    let admin = TokenSigner::generate().unwrap();
    let admin_pub = admin
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.path().join("admin.pub"), admin_pub).unwrap();
    let admin_ed25519 = {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    };
    std::fs::write(
        dir.path().join("admin-ed25519.pub"),
        ed25519_spki_pem(&admin_ed25519),
    )
    .unwrap();
    let mut admin_lines = String::new();
    if opts.es256_admin {
        admin_lines += &format!("public_key = {:?}\n", dir.path().join("admin.pub"));
    }
    if opts.ed25519_admin {
        admin_lines += &format!(
            "ed25519_public_key = {:?}\n",
            dir.path().join("admin-ed25519.pub")
        );
    }
    let token_key = p256::SecretKey::random(&mut rand_core::OsRng);
    std::fs::write(
        dir.path().join("token.key"),
        token_key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let identity_lines = opts.identity.map_or(String::new(), |td| {
        format!(
            "[identity]\ntrust_domain = {td:?}\nca_key = {:?}\nca_cert = {:?}\n",
            dir.path().join("identity/ca.key"),
            dir.path().join("identity/ca.crt"),
        )
    });
    let mut policy_line = String::new();
    if let Some(p) = opts.policy {
        std::fs::write(dir.path().join("policy.rego"), p).unwrap();
        policy_line = format!("[policy]\nfile = {:?}\n", dir.path().join("policy.rego"));
    }
    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\ninsecure_http = {insecure}\nmax_body_bytes = {max_body}\n{http_lines}\
         [token]\nsigning_key = {token:?}\n\
         [admin]\n{admin_lines}insecure_allow_anonymous = {anon}\n\
         [sessions]\nttl_secs = {ttl}\n\
         [resources]\ndir = {res:?}\n{policy_line}\
         [attestation]\nallow_sample = {sample}\n{identity_lines}{extra}",
        insecure = !opts.tls,
        max_body = opts.max_body,
        http_lines = opts.http_lines,
        token = dir.path().join("token.key"),
        anon = opts.anonymous_admin,
        ttl = opts.ttl_secs,
        res = dir.path().join("resources"),
        sample = opts.allow_sample,
        extra = opts.extra,
    );
    let mut config: Config = toml::from_str(&toml).unwrap();
    let db = store_is_postgres().then(|| {
        let pg = pg::shared();
        let db = pg.create_db().unwrap();
        config.store.backend = coffer_attestation::kbs::server::config::StoreBackend::Postgres;
        config.store.postgres.connection = Some(pg.connection(&db));
        config.store.postgres.password_file = Some(pg.password_file());
        db
    });
    if opts.tls {
        config.http.tls_cert = Some(dir.path().join("tls.crt"));
        config.http.tls_key = Some(dir.path().join("tls.key"));
    }
    let broker = Broker::from_config(&config).unwrap();
    // The broker's own listener (its backlog), as coffer-kbs binds it.
    let listener = bind(&config.http).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tls, ca_pem, scheme) = if opts.tls {
        let (cert, key, ca) = tls_material();
        (
            Some(tls_config_from_pem(&cert, &key).unwrap()),
            Some(ca),
            "https",
        )
    } else {
        (None, None, "http")
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, tls, broker.clone(), async move {
        let _ = rx.await;
    }));
    TestKbs {
        url: format!("{scheme}://127.0.0.1:{port}"),
        db,
        broker,
        dir,
        ca_pem,
        admin,
        admin_ed25519,
        token_key,
        shutdown: Some(tx),
    }
}

impl TestKbs {
    pub fn client_config(&self, key: KeyKind, auth: AuthMode) -> ClientConfig {
        let mut c = ClientConfig::new(&self.url);
        c.ca_cert_pem = self.ca_pem.clone();
        c.key = key;
        c.auth = auth;
        if key == KeyKind::Rsa {
            c.pregenerated_key = Some(Arc::new(rsa_fixture_key()));
        }
        c
    }

    pub fn sample_client(&self, key: KeyKind, auth: AuthMode) -> KbsClient {
        let attester: Arc<dyn Attester> = Arc::new(SampleAttester::new());
        KbsClient::new(self.client_config(key, auth), attester).unwrap()
    }

    /// Stores a resource directly in the broker's store (its directory or its database).
    pub fn put(&self, path: &str, bytes: &[u8]) {
        if let Some(db) = &self.db {
            pg::shared()
                .psql(
                    db,
                    &format!(
                        "{} INSERT INTO kbs_resources (path, value) VALUES ('{path}', '\\x{}') \
                     ON CONFLICT (path) DO UPDATE SET value = EXCLUDED.value",
                        coffer_attestation::kbs::server::pg::SCHEMA,
                        hex::encode(bytes)
                    ),
                )
                .unwrap();
            return;
        }
        let file = self.dir.path().join("resources").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }

    /// A resource as stored (its file or its database row); `None` when absent.
    pub fn stored(&self, path: &str) -> Option<Vec<u8>> {
        if let Some(db) = &self.db {
            let hex = pg::shared()
                .psql(
                    db,
                    &format!(
                        "{} SELECT encode(value, 'hex') FROM kbs_resources WHERE path = '{path}'",
                        coffer_attestation::kbs::server::pg::SCHEMA,
                    ),
                )
                .unwrap();
            return (!hex.is_empty()).then(|| hex::decode(hex).unwrap());
        }
        std::fs::read(self.dir.path().join("resources").join(path)).ok()
    }

    pub fn admin_token(&self) -> String {
        self.admin
            .sign(&serde_json::json!({"iat": now(), "exp": now() + 60}))
            .unwrap()
    }

    /// An EdDSA admin token over `claims`, shaped as Trustee's kbs-client makes them.
    pub fn eddsa_admin_token(&self, header: &str, claims: &serde_json::Value) -> String {
        eddsa_token(header, claims, &self.admin_ed25519)
    }

    /// A signer holding the broker's own token key.
    pub fn token_signer(&self) -> TokenSigner {
        TokenSigner::from_pkcs8_pem(&self.token_key.to_pkcs8_pem(LineEnding::LF).unwrap()).unwrap()
    }

    /// The broker's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let reply = self
            .http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        reply.text().await.unwrap()
    }

    pub fn http(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        if let Some(ca) = &self.ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap());
        }
        b.build().unwrap()
    }
}

/// The SPKI PEM (RFC 8410) of an Ed25519 key pair, as `openssl pkey -pubout` writes it.
pub fn ed25519_spki_pem(pair: &ring::signature::Ed25519KeyPair) -> String {
    use ring::signature::KeyPair as _;
    use x509_cert::der::EncodePem as _;
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned {
        algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
            oid: x509_cert::der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112"),
            parameters: None,
        },
        subject_public_key: x509_cert::der::asn1::BitString::from_bytes(pair.public_key().as_ref())
            .unwrap(),
    };
    spki.to_pem(x509_cert::der::pem::LineEnding::LF).unwrap()
}

/// A compact JWS with `header` over `claims` signed with Ed25519.
pub fn eddsa_token(
    header: &str,
    claims: &serde_json::Value,
    pair: &ring::signature::Ed25519KeyPair,
) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", b64.encode(header), b64.encode(claims.to_string()));
    let sig = pair.sign(input.as_bytes());
    format!("{input}.{}", b64.encode(sig.as_ref()))
}
