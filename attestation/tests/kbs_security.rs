//! Hostile-input cases for the broker, one or more per catalogue ID KBS-01..KBS-10
//! (`shared/SECURITY-CATALOGUE.md` §4.3). Each drives the real broker over loopback HTTP and checks
//! the refusal and that nothing was released.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;
mod kbs_support;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use coffer_attestation::attester::SampleAttester;
use coffer_attestation::kbs::jwe::TeeKeyPair;
use coffer_attestation::kbs::jwt::TokenSigner;
use coffer_attestation::kbs::probe::{self, Credential, Probe, Reply};
use coffer_attestation::kbs::server::verify::{
    EvidenceVerifier, SnpSettings, TdxSettings, VerifyError, digest_init_data,
};
use coffer_attestation::kbs::types::{InitData, Tee};
use kbs_support::{Options, TestKbs, now, start};
use serde_json::{Value, json};

const SECRET: &[u8] = b"top-secret-resource";

/// The broker's hand-made requests go through the library's probe (the same requests
/// `coffer kbs check` sends).
fn probe_of(kbs: &TestKbs) -> Probe {
    Probe::new(&kbs.url, kbs.ca_pem.as_deref()).unwrap()
}

async fn auth(kbs: &TestKbs, tee: &str) -> Reply {
    probe_of(kbs).auth(tee).await.unwrap()
}

async fn auth_raw(kbs: &TestKbs, body: String) -> Reply {
    probe_of(kbs).auth_raw(body.into_bytes()).await.unwrap()
}

async fn attest(kbs: &TestKbs, cookie: Option<&str>, body: String) -> Reply {
    probe_of(kbs).attest(cookie, body).await.unwrap()
}

/// A correct sample attestation body for `nonce` and `key`.
fn attest_body(nonce: &str, key: &TeeKeyPair) -> Value {
    probe::attestation(nonce, key, &SampleAttester::default()).unwrap()
}

async fn get(kbs: &TestKbs, path: &str, cookie: Option<&str>, bearer: Option<&str>) -> Reply {
    let credential = match (cookie, bearer) {
        (Some(c), _) => Credential::Cookie(c),
        (None, Some(t)) => Credential::Bearer(t),
        (None, None) => Credential::None,
    };
    probe_of(kbs).resource(path, credential).await.unwrap()
}

fn nonce(r: &Reply) -> String {
    r.json()["nonce"].as_str().unwrap().to_owned()
}

/// A refusal: 401 problem JSON, and certainly no JWE.
fn assert_refused(r: &Reply, expected_kind: &str) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.kind().as_deref(), Some(expected_kind), "{r:?}");
    assert!(!r.is_jwe());
}

async fn open_kbs(opts: Options) -> TestKbs {
    let kbs = start(opts).await;
    kbs.put("default/key/1", SECRET);
    kbs
}

#[tokio::test]
async fn kbs01_replayed_nonce_and_second_attest_on_a_session_refused() {
    let kbs = open_kbs(Options::default()).await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let cookie = a.cookie.clone().unwrap();
    let body = attest_body(&nonce(&a), &key).to_string();
    assert_eq!(attest(&kbs, Some(&cookie), body.clone()).await.status, 200);
    // The nonce is single use: the same evidence again on the same session is refused.
    let again = attest(&kbs, Some(&cookie), body.clone()).await;
    assert_refused(&again, "AttestationError");
    // Same evidence on a new session (new nonce) is refused too.
    let b = auth(&kbs, "sample").await;
    let replay = attest(&kbs, b.cookie.as_deref(), body).await;
    assert_refused(&replay, "AttestationError");
    assert_refused(
        &get(&kbs, "default/key/1", b.cookie.as_deref(), None).await,
        "TokenNotFound",
    );
}

#[tokio::test]
async fn kbs01_stale_nonce_after_session_timeout_refused() {
    let kbs = open_kbs(Options {
        ttl_secs: 1,
        ..Options::default()
    })
    .await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = attest_body(&nonce(&a), &key).to_string();
    let r = attest(&kbs, a.cookie.as_deref(), body).await;
    assert_refused(&r, "AttestationError");
}

#[tokio::test]
async fn kbs01_attest_without_cookie_or_with_other_sessions_nonce_refused() {
    let kbs = open_kbs(Options::default()).await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let b = auth(&kbs, "sample").await;
    let body_a = attest_body(&nonce(&a), &key).to_string();
    assert_refused(
        &attest(&kbs, None, body_a.clone()).await,
        "AttestationError",
    );
    // Evidence for session A presented on session B.
    let cross = attest(&kbs, b.cookie.as_deref(), body_a).await;
    assert_refused(&cross, "AttestationError");
    assert_refused(
        &get(&kbs, "default/key/1", b.cookie.as_deref(), None).await,
        "TokenNotFound",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kbs01_concurrent_attests_on_one_cookie_exactly_one_wins() {
    let kbs = std::sync::Arc::new(open_kbs(Options::default()).await);
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let cookie = a.cookie.clone().unwrap();
    let body = attest_body(&nonce(&a), &key).to_string();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (kbs, cookie, body) = (kbs.clone(), cookie.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            attest(&kbs, Some(&cookie), body).await.status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn kbs02_swapped_tee_pubkey_and_tampered_report_data_refused() {
    let kbs = open_kbs(Options::default()).await;
    let bound = TeeKeyPair::generate_ec();
    let attacker = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let mut body = attest_body(&nonce(&a), &bound);
    body["runtime-data"]["tee-pubkey"] = serde_json::to_value(attacker.public_jwk()).unwrap();
    let r = attest(&kbs, a.cookie.as_deref(), body.to_string()).await;
    assert_refused(&r, "AttestationError");
    assert_refused(
        &get(&kbs, "default/key/1", a.cookie.as_deref(), None).await,
        "TokenNotFound",
    );

    let b = auth(&kbs, "sample").await;
    let mut body = attest_body(&nonce(&b), &bound);
    let mut rd = B64
        .decode(
            body["tee-evidence"]["primary_evidence"]["report_data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    rd[0] ^= 1;
    body["tee-evidence"]["primary_evidence"]["report_data"] = json!(B64.encode(&rd));
    let r = attest(&kbs, b.cookie.as_deref(), body.to_string()).await;
    assert_refused(&r, "AttestationError");

    // A binding over the additional evidence: changing it after binding is refused.
    let c = auth(&kbs, "sample").await;
    let mut body = attest_body(&nonce(&c), &bound);
    body["tee-evidence"]["additional_evidence"] = json!("{\"gpu\":1}");
    let r = attest(&kbs, c.cookie.as_deref(), body.to_string()).await;
    assert_refused(&r, "AttestationError");
}

/// Trustee's ECDH-ES+A256KW curves are P-256 and P-521: a P-521 key is accepted and the
/// resource comes back wrapped to it; a key on any other curve is refused at `/attest`, with a
/// detail naming the curve, before anything is bound to it.
#[tokio::test]
async fn p521_tee_key_accepted_and_other_curves_refused_at_attest() {
    let kbs = open_kbs(Options::default()).await;
    let key = TeeKeyPair::generate_ec_p521();
    let a = auth(&kbs, "sample").await;
    let body = attest_body(&nonce(&a), &key);
    assert_eq!(body["runtime-data"]["tee-pubkey"]["crv"], "P-521");
    let r = attest(&kbs, a.cookie.as_deref(), body.to_string()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.cookie.clone().or(a.cookie.clone());
    let reply = get(&kbs, "default/key/1", cookie.as_deref(), None).await;
    assert!(reply.is_jwe(), "{reply:?}");
    let jwe: coffer_attestation::kbs::types::Response =
        serde_json::from_slice(&reply.body).unwrap();
    let header: Value = serde_json::from_slice(&B64URL.decode(&jwe.protected).unwrap()).unwrap();
    assert_eq!(header["epk"]["crv"], "P-521", "{header}");
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);

    for crv in ["P-384", "secp256k1"] {
        let b = auth(&kbs, "sample").await;
        let mut body = attest_body(&nonce(&b), &TeeKeyPair::generate_ec_p521());
        body["runtime-data"]["tee-pubkey"]["crv"] = json!(crv);
        let r = attest(&kbs, b.cookie.as_deref(), body.to_string()).await;
        assert_refused(&r, "AttestationError");
        let detail = r.problem().unwrap().detail;
        println!("{crv}: {detail}");
        assert!(
            detail.contains(&format!("ec curve \"{crv}\" is not supported")),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn kbs02_key_order_and_whitespace_do_not_change_the_binding() {
    let kbs = open_kbs(Options::default()).await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let body = attest_body(&nonce(&a), &key);
    let jwk = &body["runtime-data"]["tee-pubkey"];
    // Hand-written JSON: members reordered, extra whitespace.
    let raw = format!(
        "{{ \"tee-evidence\" : {evidence} ,\n \"runtime-data\": {{ \"tee-pubkey\": {{ \"y\": {y}, \"x\": {x}, \"kty\": \"EC\", \"alg\": {alg}, \"crv\": {crv} }}, \"nonce\": {nonce} }}, \"init-data\": null }}",
        evidence = body["tee-evidence"],
        y = jwk["y"],
        x = jwk["x"],
        alg = jwk["alg"],
        crv = jwk["crv"],
        nonce = body["runtime-data"]["nonce"],
    );
    let r = attest(&kbs, a.cookie.as_deref(), raw).await;
    assert_eq!(r.status, 200, "{r:?}");
}

fn snp_vector(name: &str) -> Vec<u8> {
    let path = common::vectors_dir().join("snp").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("missing vector {}: {e}", path.display()))
}

/// SNP evidence as the configfs-tsm attester sends it, with the VCEK in a certificate table.
fn snp_evidence(report: &[u8]) -> Value {
    let vcek = snp_vector("trustee-test-vcek.der");
    let guid: [u8; 16] = [
        0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ];
    let mut table = Vec::new();
    table.extend_from_slice(&guid);
    table.extend_from_slice(&48u32.to_le_bytes());
    table.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
    table.extend_from_slice(&[0u8; 24]);
    table.extend_from_slice(&vcek);
    json!({"report": B64.encode(report), "cert_table": B64.encode(table)})
}

/// The Trustee SNP vector's report_data is SHA-384-sized binding ‖ zeros; take it as the binding.
fn snp_binding(report: &[u8]) -> [u8; 48] {
    report[0x50..0x80].try_into().unwrap()
}

fn snp_verifier() -> EvidenceVerifier {
    EvidenceVerifier::new(false, SnpSettings::default(), TdxSettings::default())
}

fn init_data(algorithm: &str) -> InitData {
    InitData {
        format: "toml".into(),
        body: format!(
            "version = \"0.1.0\"\nalgorithm = \"{algorithm}\"\n[data]\n\"policy.rego\" = \"package agent_policy\"\n"
        ),
    }
}

#[test]
fn kbs03_hostdata_must_equal_the_initdata_digest_exactly() {
    let report = snp_vector("trustee-test-report.bin");
    let verifier = snp_verifier();
    let evidence = snp_evidence(&report);
    let binding = snp_binding(&report);
    let now = SystemTime::now();
    // The vector's HOSTDATA is zero: accepted without init-data (and marked "warning": no
    // reference measurement is configured).
    let ok = verifier
        .verify(Tee::Snp, &evidence, &binding, None, now)
        .unwrap();
    assert_eq!(ok.status.as_str(), "warning");
    // Any init-data now needs HOSTDATA == its SHA-256 digest: refused.
    let sha256 = digest_init_data(&init_data("sha256")).unwrap();
    let err = verifier
        .verify(Tee::Snp, &evidence, &binding, Some(&sha256), now)
        .unwrap_err();
    assert!(matches!(err, VerifyError::Snp(_)), "{err:?}");
    // A sha384/sha512 digest never fits the 32-byte HOSTDATA: no truncation, refused.
    for alg in ["sha384", "sha512"] {
        let d = digest_init_data(&init_data(alg)).unwrap();
        let err = verifier
            .verify(Tee::Snp, &evidence, &binding, Some(&d), now)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::InitDataAlgorithm { .. }),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn kbs03_malformed_initdata_refused_over_http() {
    let kbs = open_kbs(Options::default()).await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let mut body = attest_body(&nonce(&a), &key);
    body["init-data"] =
        json!({"format": "toml", "body": "version = \"0.1.0\"\nalgorithm = \"md5\"\n"});
    let r = attest(&kbs, a.cookie.as_deref(), body.to_string()).await;
    assert_refused(&r, "AttestationError");
}

#[test]
fn kbs05_snp_report_with_flipped_byte_or_wrong_binding_refused() {
    let report = snp_vector("trustee-test-report.bin");
    let verifier = snp_verifier();
    let binding = snp_binding(&report);
    let now = SystemTime::now();
    for offset in [0x0, 0x50, 0x90, 0x180, 0x29F] {
        let mut bad = report.clone();
        bad[offset] ^= 1;
        let r = verifier.verify(Tee::Snp, &snp_evidence(&bad), &binding, None, now);
        assert!(r.is_err(), "flipped byte {offset:#x} accepted");
    }
    let mut other = binding;
    other[0] ^= 1;
    let err = verifier
        .verify(Tee::Snp, &snp_evidence(&report), &other, None, now)
        .unwrap_err();
    assert!(matches!(err, VerifyError::Snp(_)), "{err:?}");
    // Without a certificate table or offline store there is no VCEK: refused.
    let err = verifier
        .verify(
            Tee::Snp,
            &json!({"report": B64.encode(&report)}),
            &binding,
            None,
            now,
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::NoEndorsementKey { .. }),
        "{err:?}"
    );
}

#[test]
fn kbs06_tdx_refused_without_collateral_and_sgx_quote_refused() {
    let quote = std::fs::read(common::vectors_dir().join("tdx/dcap-qvl-sgx_quote")).unwrap();
    let evidence = json!({"quote": B64.encode(&quote)});
    let none = snp_verifier();
    assert!(matches!(
        none.verify(Tee::Tdx, &evidence, &[0; 48], None, SystemTime::now()),
        Err(VerifyError::TdxDisabled)
    ));
    let with_collateral = EvidenceVerifier::new(
        false,
        SnpSettings::default(),
        TdxSettings {
            collateral: Some(common::vectors_dir().join("tdx/dcap-qvl-tdx_quote_collateral.json")),
            ..TdxSettings::default()
        },
    );
    let err = with_collateral
        .verify(Tee::Tdx, &evidence, &[0; 48], None, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, VerifyError::Tdx(_)), "{err:?}");
}

#[tokio::test]
async fn kbs04_tee_checks_at_auth_and_attest() {
    let kbs = open_kbs(Options::default()).await;
    assert_refused(&auth(&kbs, "nonsense").await, "AttestationError");
    // No TDX collateral configured: TDX is not offered.
    assert_refused(&auth(&kbs, "tdx").await, "AttestationError");
    // Wrong protocol version.
    let r = auth_raw(
        &kbs,
        json!({"version": "0.1.0", "tee": "sample", "extra-params": {}}).to_string(),
    )
    .await;
    assert_refused(&r, "AttestationError");
    // Session opened for SNP, sample evidence presented: refused.
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "snp").await;
    let body = attest_body(&nonce(&a), &key).to_string();
    assert_refused(
        &attest(&kbs, a.cookie.as_deref(), body).await,
        "AttestationError",
    );

    // A broker without sample enabled refuses it at auth (INV-10).
    let strict = open_kbs(Options {
        allow_sample: false,
        ..Options::default()
    })
    .await;
    assert_refused(&auth(&strict, "sample").await, "AttestationError");
}

#[tokio::test]
async fn kbs04_sample_evidence_under_the_default_policy_gets_nothing() {
    let kbs = open_kbs(Options {
        policy: None,
        ..Options::default()
    })
    .await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let body = attest_body(&nonce(&a), &key).to_string();
    let r = attest(&kbs, a.cookie.as_deref(), body).await;
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    assert_refused(
        &get(&kbs, "default/key/1", r.cookie.as_deref(), None).await,
        "PolicyDeny",
    );
    assert_refused(
        &get(&kbs, "default/key/1", None, Some(&token)).await,
        "PolicyDeny",
    );
    // Policy is checked before existence: a missing resource gives the same answer (no oracle).
    assert_refused(
        &get(&kbs, "default/key/nope", None, Some(&token)).await,
        "PolicyDeny",
    );
}

fn forge(header: &Value, claims: &Value, signer: Option<&TokenSigner>) -> String {
    match signer {
        Some(s) => {
            // Re-sign with the signer, then swap in the custom header (signature then invalid
            // unless the header is the standard one).
            let t = s.sign(claims).unwrap();
            let parts: Vec<&str> = t.split('.').collect();
            if header.is_null() {
                t
            } else {
                format!(
                    "{}.{}.{}",
                    B64URL.encode(header.to_string()),
                    parts[1],
                    parts[2]
                )
            }
        }
        None => format!(
            "{}.{}.",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        ),
    }
}

#[tokio::test]
async fn kbs07_bad_tokens_refused_and_nothing_released() {
    let kbs = open_kbs(Options::default()).await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let body = attest_body(&nonce(&a), &key).to_string();
    let r = attest(&kbs, a.cookie.as_deref(), body).await;
    let token = r.json()["token"].as_str().unwrap().to_owned();
    // Control: the genuine token works as a bearer token.
    assert_eq!(
        get(&kbs, "default/key/1", None, Some(&token)).await.status,
        200
    );

    let claims: Value =
        serde_json::from_slice(&B64URL.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let real = kbs.token_signer();
    let foreign = TokenSigner::generate().unwrap();
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 7200);
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("some-other-as");
    let mut future = claims.clone();
    future["nbf"] = json!(now() + 3600);
    let mut swapped = claims.clone();
    swapped["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"]["tee-pubkey"] =
        serde_json::to_value(TeeKeyPair::generate_ec().public_jwk()).unwrap();
    let swapped_unsigned = {
        let parts: Vec<&str> = token.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(swapped.to_string()),
            parts[2]
        )
    };
    let foreign_jwk = json!({"alg": "ES256", "typ": "JWT", "jwk": {"kty": "EC", "crv": "P-256"}});
    let cases = [
        (
            "alg none",
            forge(&json!({"alg": "none", "typ": "JWT"}), &claims, None),
        ),
        (
            "alg HS256",
            forge(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &claims,
                Some(&foreign),
            ),
        ),
        (
            "foreign signer",
            forge(&Value::Null, &claims, Some(&foreign)),
        ),
        (
            "self-issued jwk header",
            forge(&foreign_jwk, &claims, Some(&foreign)),
        ),
        ("expired", forge(&Value::Null, &expired, Some(&real))),
        ("wrong issuer", forge(&Value::Null, &wrong_iss, Some(&real))),
        ("future nbf", forge(&Value::Null, &future, Some(&real))),
        ("tee-pubkey replaced", swapped_unsigned),
        (
            "200 KB token",
            format!("{}{}", token, "A".repeat(200 * 1024)),
        ),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (name, bad) in cases {
        let r = get(&kbs, "default/key/1", None, Some(&bad)).await;
        assert!(r.status == 401 && !r.is_jwe(), "{name}: {r:?}");
        assert!(
            matches!(
                r.kind().as_deref(),
                Some("JwtVerificationFailed" | "TokenNotFound")
            ) || r.status == 431,
            "{name}: {r:?}"
        );
    }
}

#[tokio::test]
async fn kbs09_path_traversal_and_odd_paths_refused() {
    let kbs = open_kbs(Options::default()).await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let body = attest_body(&nonce(&a), &key).to_string();
    let attested = attest(&kbs, a.cookie.as_deref(), body).await;
    assert_eq!(attested.status, 200);
    let cookie = attested.cookie.clone().unwrap();
    // A secret outside the resource directory that traversal would reach.
    std::fs::write(kbs.dir.path().join("outside"), SECRET).unwrap();
    let long = "a".repeat(10 * 1024);
    let paths = [
        "../outside".to_owned(),
        "default/../../outside".to_owned(),
        "default/key/../../../outside".to_owned(),
        "%2e%2e/%2e%2e/outside".to_owned(),
        "default/key/%2e%2e".to_owned(),
        "default//1".to_owned(),
        "default/key/1/extra".to_owned(),
        ".well-known/key/1".to_owned(),
        format!("default/key/{long}"),
    ];
    for p in &paths {
        // Sent as written: no client-side resolution of the dot segments.
        let r = get(&kbs, p, Some(&cookie), None).await;
        assert!(
            matches!(r.status, 400 | 401 | 404 | 431),
            "{p}: {}",
            r.status
        );
        assert!(!r.is_jwe(), "{p}: released");
    }
    // The proper path still works with the same session.
    assert_eq!(
        get(&kbs, "default/key/1", Some(&cookie), None).await.status,
        200
    );

    // Admin writes through traversal are refused and create nothing.
    let admin = kbs.admin_token();
    for p in ["../evil", "default/../../evil", "default/key/.evil"] {
        let r = probe_of(&kbs)
            .admin_post(&format!("/kbs/v0/resource/{p}"), Some(&admin), "bad")
            .await
            .unwrap();
        assert!(r.status == 401 || r.status == 404, "{p}: {}", r.status);
    }
    assert!(!kbs.dir.path().join("evil").exists());
}

/// KBS-10: oversized and deeply nested bodies are refused; a flood of `/auth` calls stores
/// nothing and locks nobody out (issue #21: it used to fill the session table and refuse every
/// client with "too many sessions"); attested sessions are sealed in their cookies (#23), so
/// every one of them stays usable and the broker holds none.
#[tokio::test]
async fn kbs10_oversized_nested_bodies_refused_and_auth_flood_locks_nobody_out() {
    let kbs = open_kbs(Options {
        max_body: 64 * 1024,
        ..Options::default()
    })
    .await;
    let key = TeeKeyPair::generate_ec();
    let a = auth(&kbs, "sample").await;
    let mut body = attest_body(&nonce(&a), &key);
    body["tee-evidence"]["primary_evidence"]["padding"] = json!("A".repeat(1024 * 1024));
    let r = attest(&kbs, a.cookie.as_deref(), body.to_string()).await;
    assert_eq!(r.status, 413);
    // Deeply nested JSON hits the decoder's recursion limit: refused, server unharmed.
    let b = auth(&kbs, "sample").await;
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = attest(&kbs, b.cookie.as_deref(), nested).await;
    assert_refused(&r, "AttestationError");

    // An /auth flood: every call answered, nothing stored.
    let mut challenges = Vec::new();
    for _ in 0..100 {
        let c = auth(&kbs, "sample").await;
        assert_eq!(c.status, 200, "{c:?}");
        challenges.push(c);
    }
    assert_eq!(kbs.broker.session_stats().used, 0);

    // Every challenge can still be answered: 25 attestations all succeed.
    let mut attested = Vec::new();
    for c in challenges.iter().take(25) {
        let key = TeeKeyPair::generate_ec();
        let cookie = c.cookie.clone().unwrap();
        let body = attest_body(&nonce(c), &key).to_string();
        let r = attest(&kbs, Some(&cookie), body.clone()).await;
        assert_eq!(r.status, 200, "{r:?}");
        let token = r.json()["token"].as_str().unwrap().to_owned();
        let session = r.cookie.clone().unwrap();
        attested.push((cookie, session, token, body));
    }
    assert_eq!(kbs.broker.session_stats().used, 25);
    // Every attested session cookie and bearer token authenticates; the challenge cookie does
    // not, and its challenge stays used.
    for (_, session, token, _) in &attested {
        assert_eq!(
            get(&kbs, "default/key/1", Some(session), None).await.status,
            200
        );
        assert_eq!(
            get(&kbs, "default/key/1", None, Some(token)).await.status,
            200
        );
    }
    let (cookie0, _, _, body0) = &attested[0];
    assert_refused(
        &get(&kbs, "default/key/1", Some(cookie0), None).await,
        "TokenNotFound",
    );
    assert_refused(
        &attest(&kbs, Some(cookie0), body0.clone()).await,
        "AttestationError",
    );
    let health = kbs
        .http()
        .get(format!("{}/health", kbs.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn admin_requires_a_jwt_from_the_configured_key() {
    let kbs = open_kbs(Options::default()).await;
    let upload = |token: Option<String>| {
        let mut req = kbs
            .http()
            .post(format!("{}/kbs/v0/resource/default/key/2", kbs.url))
            .body("new");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    assert_eq!(upload(None).await.unwrap().status().as_u16(), 401);
    let foreign = TokenSigner::generate()
        .unwrap()
        .sign(&json!({"exp": now() + 60}))
        .unwrap();
    assert_eq!(upload(Some(foreign)).await.unwrap().status().as_u16(), 401);
    let expired = kbs.admin.sign(&json!({"exp": now() - 3600})).unwrap();
    assert_eq!(upload(Some(expired)).await.unwrap().status().as_u16(), 401);
    assert!(kbs.stored("default/key/2").is_none());
    assert_eq!(
        upload(Some(kbs.admin_token()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(kbs.stored("default/key/2").unwrap(), b"new");
    // Policy and reference-value uploads: bad content refused even with a valid token.
    let r = kbs
        .http()
        .post(format!("{}/kbs/v0/resource-policy", kbs.url))
        .header("authorization", format!("Bearer {}", kbs.admin_token()))
        .body(json!({"policy": B64URL.encode("package policy\nallow if {")}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = kbs
        .http()
        .post(format!("{}/kbs/v0/reference-values", kbs.url))
        .header("authorization", format!("Bearer {}", kbs.admin_token()))
        .body(json!({"snp_measurements": ["00".repeat(48)]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Uploads `body` to `default/key/2` as admin with `token`; returns the HTTP status.
async fn admin_upload(kbs: &TestKbs, token: &str, body: &'static str) -> u16 {
    kbs.http()
        .post(format!("{}/kbs/v0/resource/default/key/2", kbs.url))
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn kbs07_eddsa_admin_tokens_like_trustee_kbs_client() {
    let kbs = open_kbs(Options {
        ed25519_admin: true,
        ..Options::default()
    })
    .await;
    let stored = || kbs.stored("default/key/2");
    let eddsa = r#"{"alg":"EdDSA","typ":"JWT"}"#;
    let live = json!({"iat": now(), "nbf": now(), "exp": now() + 60});
    // Refusals first; nothing is written by any of them.
    let expired = kbs.eddsa_admin_token(eddsa, &json!({"iat": now() - 7200, "exp": now() - 3600}));
    let foreign_pair = {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    };
    let foreign = kbs_support::eddsa_token(eddsa, &live, &foreign_pair);
    let good = kbs.eddsa_admin_token(eddsa, &live);
    let parts: Vec<&str> = good.split('.').collect();
    let alg_none = format!(
        "{}.{}.",
        B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    // The Ed25519 signature relabelled as ES256, and the ES256 admin token relabelled EdDSA.
    let as_es256 = format!(
        "{}.{}.{}",
        B64URL.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
        parts[1],
        parts[2]
    );
    let es_token = kbs.admin_token();
    let es_parts: Vec<&str> = es_token.split('.').collect();
    let as_eddsa = format!("{}.{}.{}", B64URL.encode(eddsa), es_parts[1], es_parts[2]);
    for (name, token) in [
        ("expired", &expired),
        ("foreign signer", &foreign),
        ("alg none", &alg_none),
        ("ed25519 signature labelled ES256", &as_es256),
        ("es256 signature labelled EdDSA", &as_eddsa),
    ] {
        assert_eq!(admin_upload(&kbs, token, "forged").await, 401, "{name}");
        assert!(stored().is_none(), "{name} wrote the resource");
    }
    // The configured Ed25519 key's token is accepted; ES256 stays accepted alongside it.
    assert_eq!(admin_upload(&kbs, &good, "from eddsa").await, 200);
    assert_eq!(stored().unwrap(), b"from eddsa");
    assert_eq!(admin_upload(&kbs, &es_token, "from es256").await, 200);
    assert_eq!(stored().unwrap(), b"from es256");
}

#[tokio::test]
async fn kbs07_admin_token_whose_alg_has_no_configured_key_refused() {
    // Only the Ed25519 key is configured: a valid ES256 token from the (unconfigured) P-256 key
    // is refused, and the EdDSA one works.
    let kbs = open_kbs(Options {
        es256_admin: false,
        ed25519_admin: true,
        ..Options::default()
    })
    .await;
    let stored = || kbs.stored("default/key/2");
    assert_eq!(admin_upload(&kbs, &kbs.admin_token(), "es256").await, 401);
    assert!(stored().is_none());
    let eddsa = kbs.eddsa_admin_token(
        r#"{"alg":"EdDSA","typ":"JWT"}"#,
        &json!({"exp": now() + 60}),
    );
    assert_eq!(admin_upload(&kbs, &eddsa, "eddsa").await, 200);
    // And the other way round: only ES256 configured, EdDSA refused.
    let kbs = open_kbs(Options::default()).await;
    let stored = || kbs.stored("default/key/2");
    let eddsa = kbs.eddsa_admin_token(
        r#"{"alg":"EdDSA","typ":"JWT"}"#,
        &json!({"exp": now() + 60}),
    );
    assert_eq!(admin_upload(&kbs, &eddsa, "eddsa").await, 401);
    assert!(stored().is_none());
}
