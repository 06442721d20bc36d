//! `kbs::check` (what `coffer kbs check` runs) against real brokers: a development broker over
//! HTTPS passes every case, a production broker passes what it can be checked for without
//! accepted evidence, and a deliberately misconfigured broker fails exactly the cases its
//! misconfiguration breaks. A broken broker that verifies nothing (a stand-in written here)
//! fails every hostile case: each can fail.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod kbs_support;

use std::sync::Arc;

use coffer_attestation::attester::{Attester, SampleAttester};
use coffer_attestation::kbs::check::{self, CheckConfig, CheckReport, Outcome, PROBE_RESOURCE};
use kbs_support::{Options, TestKbs, rsa_fixture_key, start};
use zeroize::Zeroizing;

fn config(kbs: &TestKbs) -> CheckConfig {
    let attester: Arc<dyn Attester> = Arc::new(SampleAttester::default());
    let mut c = CheckConfig::new(&kbs.url, attester);
    c.ca_cert_pem = kbs.ca_pem.clone();
    c.rsa_key = Some(Arc::new(rsa_fixture_key()));
    c
}

fn outcome(report: &CheckReport, id: &str) -> Outcome {
    report
        .case(id)
        .unwrap_or_else(|| panic!("no case {id}"))
        .outcome
}

const ALL: [&str; 17] = [
    "protocol-version",
    "challenge-shape",
    "admin-with-token",
    "attest",
    "resource-cookie",
    "resource-bearer",
    "rsa-key",
    "forged-token",
    "sample-evidence",
    "replayed-nonce",
    "other-session-nonce",
    "swapped-tee-key",
    "report-data-mismatch",
    "tee-switched",
    "resource-traversal",
    "oversized-body",
    "admin-without-token",
];

#[tokio::test]
async fn a_development_broker_over_https_passes_every_case() {
    let kbs = start(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    let mut c = config(&kbs);
    c.admin_token = Some(Zeroizing::new(kbs.admin_token()));
    c.allow_sample = true;
    let report = check::run(c).await.unwrap();
    let ids: Vec<&str> = report.cases.iter().map(|c| c.id).collect();
    assert_eq!(ids, ALL, "{report}");
    for id in ALL {
        let want = if id == "sample-evidence" {
            Outcome::NotApplicable
        } else {
            Outcome::Pass
        };
        assert_eq!(outcome(&report, id), want, "{id}\n{report}");
    }
    // The resource cases fetched what the check wrote, and said so.
    let cookie = report.case("resource-cookie").unwrap();
    assert!(cookie.reason.contains(PROBE_RESOURCE), "{report}");
    assert!(cookie.reason.contains("as written"), "{report}");
    assert!(
        report
            .case("rsa-key")
            .unwrap()
            .reason
            .contains("RSA-OAEP-256"),
        "{report}"
    );
    assert_eq!(report.failed, 0);
}

#[tokio::test]
async fn a_production_broker_passes_what_can_be_checked_without_accepted_evidence() {
    let kbs = start(Options {
        allow_sample: false,
        policy: None,
        ..Options::default()
    })
    .await;
    kbs.put("default/key/1", b"secret");
    let mut c = config(&kbs);
    c.resource = Some("default/key/1".parse().unwrap());
    let report = check::run(c).await.unwrap();
    assert_eq!(report.failed, 0, "{report}");
    for id in [
        "protocol-version",
        "challenge-shape",
        "sample-evidence",
        "oversized-body",
        "admin-without-token",
    ] {
        assert_eq!(outcome(&report, id), Outcome::Pass, "{id}\n{report}");
    }
    // Everything that needs evidence the broker accepts says why it did not run.
    let attest = report.case("replayed-nonce").unwrap();
    assert_eq!(attest.outcome, Outcome::NotApplicable, "{report}");
    assert!(
        attest.reason.contains("refuses sample evidence"),
        "{report}"
    );
    assert_eq!(report.not_applicable, ALL.len() - 5, "{report}");
}

#[tokio::test]
async fn a_misconfigured_broker_fails_the_cases_its_configuration_breaks() {
    // Sample evidence enabled, a policy allowing everything (default allow, instead of denied),
    // and anonymous admin.
    let kbs = start(Options {
        policy: Some("package policy\nimport rego.v1\ndefault allow := true\n"),
        anonymous_admin: true,
        ..Options::default()
    })
    .await;
    kbs.put("default/key/1", b"secret");
    let mut c = config(&kbs);
    c.resource = Some("default/key/1".parse().unwrap());
    let report = check::run(c).await.unwrap();
    assert_eq!(
        outcome(&report, "sample-evidence"),
        Outcome::Fail,
        "{report}"
    );
    assert!(
        report
            .case("sample-evidence")
            .unwrap()
            .reason
            .contains("released to development-only sample evidence"),
        "{report}"
    );
    assert_eq!(
        outcome(&report, "admin-without-token"),
        Outcome::Fail,
        "{report}"
    );
    assert_eq!(report.failed, 2, "{report}");
    // The protocol itself is still right: every other case that can run passes.
    assert_eq!(report.not_applicable, 1, "{report}"); // admin-with-token: no token given
    assert!(
        report.to_string().contains("2 failed"),
        "the summary line: {report}"
    );
}

/// A broker that speaks the protocol and checks nothing: any challenge answered, any evidence
/// accepted, every resource path released to the key of the last `/attest` of the session (or
/// of the bearer token, read unverified), admin writes accepted, bodies of any size read.
mod broken {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{DefaultBodyLimit, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use base64::Engine as _;
    use coffer_attestation::kbs::types::{Attestation, TeePubKey};
    use coffer_attestation::kbs::{jwe, probe};
    use serde_json::json;

    type Keys = Arc<Mutex<HashMap<String, TeePubKey>>>;

    fn cookie(headers: &HeaderMap) -> Option<String> {
        let v = headers.get(header::COOKIE)?.to_str().ok()?;
        v.split(';')
            .find_map(|kv| kv.trim().strip_prefix("kbs-session-id="))
            .map(str::to_owned)
    }

    async fn auth() -> Response {
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let id = hex::encode(&nonce[..16]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(nonce);
        (
            [
                (header::SET_COOKIE, format!("kbs-session-id={id}")),
                (header::CONTENT_TYPE, "application/json".to_owned()),
            ],
            json!({"nonce": b64, "extra-params": ""}).to_string(),
        )
            .into_response()
    }

    async fn attest(State(keys): State<Keys>, headers: HeaderMap, body: Bytes) -> Response {
        let Ok(a) = serde_json::from_slice::<Attestation>(&body) else {
            return (StatusCode::UNAUTHORIZED, "bad").into_response();
        };
        let key = a.runtime_data.tee_pubkey;
        if let Some(c) = cookie(&headers) {
            keys.lock().unwrap().insert(c, key.clone());
        }
        let token = probe::unsigned_token(&json!({"exp": u32::MAX, "key": key}));
        json!({"token": token}).to_string().into_response()
    }

    async fn resource(State(keys): State<Keys>, headers: HeaderMap) -> Response {
        let from_cookie = cookie(&headers).and_then(|c| keys.lock().unwrap().get(&c).cloned());
        let from_token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| serde_json::from_value(probe::token_claims(t)["key"].clone()).ok());
        match from_cookie.or(from_token) {
            Some(key) => serde_json::to_string(&jwe::encrypt(&key, b"secret").unwrap())
                .unwrap()
                .into_response(),
            None => (StatusCode::UNAUTHORIZED, "no key").into_response(),
        }
    }

    /// Serves the broken broker on a loopback port; returns its URL.
    pub async fn start() -> String {
        let keys: Keys = Arc::default();
        let app = Router::new()
            .route("/kbs/v0/auth", post(auth))
            .route("/kbs/v0/attest", post(attest))
            .route(
                "/kbs/v0/resource/{*path}",
                get(resource).post(|| async { StatusCode::OK }),
            )
            .route("/kbs/v0/resource-policy", post(|| async { StatusCode::OK }))
            .layer(DefaultBodyLimit::disable())
            .with_state(keys);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

#[tokio::test]
async fn a_broker_that_verifies_nothing_fails_every_hostile_case() {
    let url = broken::start().await;
    let attester: Arc<dyn Attester> = Arc::new(SampleAttester::default());
    let mut c = CheckConfig::new(url, attester);
    c.rsa_key = Some(Arc::new(rsa_fixture_key()));
    c.resource = Some("default/key/1".parse().unwrap());
    let report = check::run(c).await.unwrap();
    for id in [
        "protocol-version",
        "forged-token",
        "sample-evidence",
        "replayed-nonce",
        "other-session-nonce",
        "swapped-tee-key",
        "report-data-mismatch",
        "tee-switched",
        "resource-traversal",
        "oversized-body",
        "admin-without-token",
    ] {
        assert_eq!(outcome(&report, id), Outcome::Fail, "{id}\n{report}");
    }
    // What it does right (speak the protocol, encrypt to the TEE key) still passes.
    for id in [
        "challenge-shape",
        "attest",
        "resource-cookie",
        "resource-bearer",
        "rsa-key",
    ] {
        assert_eq!(outcome(&report, id), Outcome::Pass, "{id}\n{report}");
    }
}
