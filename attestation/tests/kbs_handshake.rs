//! Full client ↔ broker handshakes over loopback HTTP and HTTPS (generated CA), EC and RSA keys,
//! cookie and bearer modes; the server's replies compared in shape with Trustee's recorded
//! replies (`tests/vectors/kbs/kbs-client-exchange.jsonl`); 1000 concurrent handshakes.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;
mod kbs_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use coffer_attestation::kbs::client::{AuthMode, KbsClientError, KeyKind};
use coffer_attestation::kbs::path::ResourcePath;
use kbs_support::{Options, start};
use serde_json::Value;

async fn full_handshake(tls: bool, key: KeyKind, auth: AuthMode) {
    let kbs = start(Options {
        tls,
        ..Options::default()
    })
    .await;
    kbs.put("default/key/1", b"key-one");
    kbs.put("default/key/2", b"key-two");
    let client = kbs.sample_client(key, auth);
    let one: ResourcePath = "default/key/1".parse().unwrap();
    let two: ResourcePath = "default/key/2".parse().unwrap();
    assert_eq!(
        client.get_resource(&one).await.unwrap().expose(),
        b"key-one"
    );
    // The token is cached: a second resource needs no new handshake.
    assert_eq!(
        client.get_resource(&two).await.unwrap().expose(),
        b"key-two"
    );
    let text = kbs.metrics_text().await;
    assert!(text.contains("coffer_kbs_auth_total 1\n"), "{text}");
    assert!(
        text.contains("coffer_kbs_resource_released_total 2\n"),
        "{text}"
    );
}

#[tokio::test]
async fn handshake_http_ec_cookie() {
    full_handshake(false, KeyKind::Ec, AuthMode::Cookie).await;
}

#[tokio::test]
async fn handshake_http_ec_bearer() {
    full_handshake(false, KeyKind::Ec, AuthMode::Bearer).await;
}

#[tokio::test]
async fn handshake_https_ec_cookie() {
    full_handshake(true, KeyKind::Ec, AuthMode::Cookie).await;
}

#[tokio::test]
async fn handshake_https_ec_bearer() {
    full_handshake(true, KeyKind::Ec, AuthMode::Bearer).await;
}

#[tokio::test]
async fn handshake_https_rsa_cookie() {
    full_handshake(true, KeyKind::Rsa, AuthMode::Cookie).await;
}

#[tokio::test]
async fn handshake_http_rsa_bearer() {
    full_handshake(false, KeyKind::Rsa, AuthMode::Bearer).await;
}

/// A P-521 TEE key (Trustee's other ECDH-ES+A256KW curve), end to end through the broker.
#[tokio::test]
async fn handshake_http_p521_cookie() {
    full_handshake(false, KeyKind::EcP521, AuthMode::Cookie).await;
}

#[tokio::test]
async fn handshake_https_p521_bearer() {
    full_handshake(true, KeyKind::EcP521, AuthMode::Bearer).await;
}

#[tokio::test]
async fn https_client_without_the_ca_is_refused() {
    let kbs = start(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    let mut config = kbs.client_config(KeyKind::Ec, AuthMode::Cookie);
    config.ca_cert_pem = None;
    config.max_attempts = 1;
    let attester: Arc<dyn coffer_attestation::attester::Attester> =
        Arc::new(coffer_attestation::attester::SampleAttester::new());
    let client = coffer_attestation::kbs::client::KbsClient::new(config, attester).unwrap();
    let err = client
        .get_resource(&"default/key/1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, KbsClientError::Transport { stage: "auth", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_server_session_triggers_one_fresh_handshake() {
    let kbs = start(Options {
        ttl_secs: 1,
        ..Options::default()
    })
    .await;
    kbs.put("default/key/1", b"k");
    let client = kbs.sample_client(KeyKind::Ec, AuthMode::Cookie);
    let path: ResourcePath = "default/key/1".parse().unwrap();
    client.get_resource(&path).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // The cached token outlives the server session: 401 TokenNotFound, then one new handshake.
    assert_eq!(client.get_resource(&path).await.unwrap().expose(), b"k");
    let text = kbs.metrics_text().await;
    assert!(text.contains("coffer_kbs_auth_total 2\n"), "{text}");
}

#[tokio::test]
async fn typed_errors_policy_denied_not_found_and_transport() {
    // Default policy: sample evidence is attested but never released (KBS-04).
    let kbs = start(Options {
        policy: None,
        ..Options::default()
    })
    .await;
    kbs.put("default/key/1", b"k");
    let client = kbs.sample_client(KeyKind::Ec, AuthMode::Cookie);
    let err = client
        .get_resource(&"default/key/1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, KbsClientError::PolicyDenied { .. }),
        "{err:?}"
    );

    let open = start(Options::default()).await;
    let client = open.sample_client(KeyKind::Ec, AuthMode::Cookie);
    let err = client
        .get_resource(&"default/key/missing".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, KbsClientError::NotFound { .. }), "{err:?}");

    // Nothing listens: bounded retries, then a transport error that keeps its cause.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config =
        coffer_attestation::kbs::client::ClientConfig::new(format!("http://127.0.0.1:{port}"));
    config.max_attempts = 3;
    config.initial_backoff = std::time::Duration::from_millis(20);
    let attester: Arc<dyn coffer_attestation::attester::Attester> =
        Arc::new(coffer_attestation::attester::SampleAttester::new());
    let client = coffer_attestation::kbs::client::KbsClient::new(config, attester).unwrap();
    let started = std::time::Instant::now();
    let err = client
        .get_resource(&"default/key/1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, KbsClientError::Transport { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(started.elapsed() >= std::time::Duration::from_millis(60));
}

fn exchange() -> Vec<Value> {
    let path = common::vectors_dir().join("kbs/kbs-client-exchange.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("missing vector {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn recorded<'a>(lines: &'a [Value], method: &str, path: &str, status: u64) -> &'a Value {
    lines
        .iter()
        .find(|l| {
            l["request"]["method"] == method
                && l["request"]["path"] == path
                && l["response"]["status"] == status
        })
        .unwrap_or_else(|| panic!("no recorded {method} {path} {status}"))
}

/// Replays Trustee's `kbs-client` requests (bodies as recorded) against our broker and checks
/// every reply has the shape Trustee's KBS gave: status, JSON members, cookie name and format,
/// `"extra-params": ""`, problem-JSON types, JWE members and protected-header members.
#[tokio::test]
async fn server_replies_have_trustee_shapes() {
    let lines = exchange();
    let kbs = start(Options {
        policy: None,
        anonymous_admin: true,
        ..Options::default()
    })
    .await;
    let http = kbs.http();
    let url = |p: &str| format!("{}{p}", kbs.url);

    // GET without a token → 401 TokenNotFound, like line 0.
    let rec = recorded(&lines, "GET", "/kbs/v0/resource/default/test/secret", 401);
    let r = http
        .get(url("/kbs/v0/resource/default/test/secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(keys(&body), keys(&rec["response"]["body"]));
    assert_eq!(body["type"], rec["response"]["body"]["type"]);

    // Admin uploads exactly as Trustee's client sends them (anonymous, as recorded).
    let upload = recorded(&lines, "POST", "/kbs/v0/resource/default/test/secret", 200);
    let r = http
        .post(url("/kbs/v0/resource/default/test/secret"))
        .header("content-type", "application/octet-stream")
        .body(upload["request"]["body"].as_str().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // auth with the recorded body.
    let auth = recorded(&lines, "POST", "/kbs/v0/auth", 200);
    let r = http
        .post(url("/kbs/v0/auth"))
        .header("content-type", "application/json")
        .body(auth["request"]["body"].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let rec_cookie = auth["response"]["headers"]["set-cookie"].as_str().unwrap();
    let shape = |c: &str| {
        let (name, rest) = c.split_once('=').unwrap();
        let attrs: Vec<String> = rest
            .split("; ")
            .skip(1)
            .map(|a| a.split('=').next().unwrap().to_owned())
            .collect();
        (name.to_owned(), attrs)
    };
    assert_eq!(shape(&set_cookie), shape(rec_cookie));
    assert_eq!(r.headers()["content-type"], "application/json");
    let challenge: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(keys(&challenge), keys(&auth["response"]["body"]));
    assert_eq!(challenge["extra-params"], "");
    assert_eq!(
        B64.decode(challenge["nonce"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );

    // attest with a Trustee-shaped body (recorded layout, our nonce and binding).
    let attest = recorded(&lines, "POST", "/kbs/v0/attest", 200);
    let mut body = attest["request"]["body"].clone();
    body["runtime-data"]["nonce"] = challenge["nonce"].clone();
    let runtime: coffer_attestation::kbs::types::RuntimeData =
        serde_json::from_value(body["runtime-data"].clone()).unwrap();
    let rd = coffer_attestation::kbs::binding::report_data(&runtime, "");
    body["tee-evidence"]["primary_evidence"]["report_data"] = Value::String(B64.encode(rd));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let r = http
        .post(url("/kbs/v0/attest"))
        .header("content-type", "application/json")
        .header("cookie", &cookie)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Trustee answers the same value; ours is the attested session sealed (#23). The shape is
    // Trustee's, and Trustee's kbs-client keeps cookies in a jar (the recorded exchange sends
    // the jar's value), so it sends this one from now on, as we do below.
    let attested_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let rec_attest_cookie = attest["response"]["headers"]["set-cookie"]
        .as_str()
        .unwrap();
    assert_eq!(shape(&attested_cookie), shape(rec_attest_cookie));
    let cookie = attested_cookie.split(';').next().unwrap().to_owned();
    let token: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(keys(&token), keys(&attest["response"]["body"]));
    // EAR-shaped claims like Trustee's token: same top-level members and submods.cpu0 layout.
    let payload = |t: &str| -> Value {
        serde_json::from_slice(&B64URL.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap()
    };
    let ours = payload(token["token"].as_str().unwrap());
    let theirs = payload(attest["response"]["body"]["token"].as_str().unwrap());
    for k in [
        "eat_profile",
        "iat",
        "exp",
        "iss",
        "ear.verifier-id",
        "submods",
    ] {
        assert!(ours.get(k).is_some() && theirs.get(k).is_some(), "{k}");
    }
    let cpu = &ours["submods"]["cpu0"];
    assert_eq!(cpu["ear.status"], "warning");
    let annotated = &cpu["ear.veraison.annotated-evidence"];
    assert_eq!(
        keys(&annotated["runtime_data_claims"]),
        keys(&theirs["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"])
    );
    assert_eq!(annotated["tee"], "sample");

    // Default policy denies sample → 401 PolicyDeny, like line 3.
    let deny = lines
        .iter()
        .find(|l| {
            l["response"]["body"]["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("PolicyDeny"))
        })
        .unwrap();
    let r = http
        .get(url("/kbs/v0/resource/default/test/secret"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["type"], deny["response"]["body"]["type"]);

    // Trustee's allow-all policy upload, byte for byte → accepted; the resource is released as a
    // JWE with the recorded members and protected-header members.
    let policy = recorded(&lines, "POST", "/kbs/v0/resource-policy", 200);
    let r = http
        .post(url("/kbs/v0/resource-policy"))
        .header("content-type", "application/json")
        .body(policy["request"]["body"].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let released = recorded(&lines, "GET", "/kbs/v0/resource/default/test/secret", 200);
    let r = http
        .get(url("/kbs/v0/resource/default/test/secret"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let jwe: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(keys(&jwe), keys(&released["response"]["body"]));
    let header = |v: &Value| -> Value {
        serde_json::from_slice(&B64URL.decode(v["protected"].as_str().unwrap()).unwrap()).unwrap()
    };
    let (ours, theirs) = (header(&jwe), header(&released["response"]["body"]));
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!(keys(&ours["epk"]), keys(&theirs["epk"]));
    assert_eq!(ours["alg"], theirs["alg"]);
    assert_eq!(ours["enc"], theirs["enc"]);
}

/// 1000 concurrent sample handshakes (sample explicitly enabled): zero errors, and every client
/// decrypts exactly its own resource with its own key (LOAD-03: no cross-session mix-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_handshakes_no_mixups() {
    const N: usize = 1000;
    let kbs = Arc::new(start(Options::default()).await);
    for i in 0..N {
        kbs.put(
            &format!("load/client/{i}"),
            format!("secret-{i}").as_bytes(),
        );
    }
    let started = std::time::Instant::now();
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let kbs = kbs.clone();
        tasks.push(tokio::spawn(async move {
            let auth = if i % 2 == 0 {
                AuthMode::Cookie
            } else {
                AuthMode::Bearer
            };
            let client = kbs.sample_client(KeyKind::Ec, auth);
            let path: ResourcePath = format!("load/client/{i}").parse().unwrap();
            let got = client
                .get_resource(&path)
                .await
                .map(|r| r.expose().to_vec());
            (i, got)
        }));
    }
    let mut errors = 0;
    for t in tasks {
        let (i, got) = t.await.unwrap();
        match got {
            Ok(bytes) => assert_eq!(bytes, format!("secret-{i}").into_bytes(), "client {i}"),
            Err(e) => {
                errors += 1;
                eprintln!("client {i}: {e:?}");
            }
        }
    }
    assert_eq!(errors, 0);
    eprintln!("{N} handshakes in {:?}", started.elapsed());
}
