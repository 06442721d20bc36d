//! coffer-kbs request handling: requests built from the input go through the broker's real
//! router (`Broker::router`, as `serve` mounts it) with a broker from a TOML config, the way the
//! broker's own tests and benches build one: sample evidence allowed, SNP with AMD's roots, TDX
//! with the `tests/vectors/tdx` collateral, an admin ES256 key, a resource directory.
//!
//! Input: a route byte, then `path line \n bearer line \n body`:
//! - 0: `POST /kbs/v0/auth` with the body (the KBS `Request` JSON);
//! - 1..=3: a well-formed `/auth` for sample, SNP or TDX, then `POST /kbs/v0/attest` with its
//!   cookie and the body, every `NONCE` in it replaced by the challenge's nonce (the fuzzer cannot
//!   guess a fresh nonce; the replacement lets it past the nonce check to the runtime data, the
//!   TEE key, init-data and the evidence verifiers);
//! - 4: `GET /kbs/v0/resource/<path line>` (the resource path parser, then the bearer token);
//! - 5..=8: the admin `POST`s (resource, resource policy, reference values, admin keys) with the
//!   bearer line as the admin JWT;
//! - 9: `POST /kbs/v0/identity` with the body and the bearer line.
//!
//! Properties: every answer is a well-formed HTTP response, and a refused request never answers
//! 2xx; no request panics the handler.
#![no_main]

use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use coffer_attestation::kbs::server::Broker;
use coffer_attestation::kbs::server::config::Config;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

/// The broker's resource directory and policy file: one directory under the build directory,
/// made afresh by each process (a static is never dropped, so a temporary directory would be
/// left behind by every run).
const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/kbs_request-broker");

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let dir = std::path::Path::new(STATE);
    let _ = std::fs::remove_dir_all(dir);
    let resources = dir.join("resources");
    std::fs::create_dir_all(resources.join("fuzz/key")).expect("resource directory");
    std::fs::write(resources.join("fuzz/key/1"), [7u8; 32]).expect("resource");
    let policy = dir.join("policy.rego");
    std::fs::write(
        &policy,
        "package policy\nimport rego.v1\ndefault allow := false\n\
         allow if { input[\"submods\"][\"cpu0\"][\"ear.status\"] == \"affirming\" }\n",
    )
    .expect("policy");
    let admin_key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/ocicrypt/keys/ec-pub.pem"
    );
    let collateral = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/tdx/dcap-qvl-tdx_quote_collateral.json"
    );
    let config: Config = toml::from_str(&format!(
        "[http]\ninsecure_http = true\n[resources]\ndir = {resources:?}\n\
         [policy]\nfile = {policy:?}\n[admin]\npublic_key = {admin_key:?}\n\
         [attestation]\nallow_sample = true\n[attestation.tdx]\ncollateral = {collateral:?}\n"
    ))
    .expect("config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let router = runtime.block_on(async { Broker::from_config(&config).expect("broker").router() });
    Harness { runtime, router }
});

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Vec<u8>) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a bounded reply body")
        .to_vec();
    (status, cookie, body)
}

fn post(path: &str, bearer: &[u8], cookie: Option<&str>, body: Vec<u8>) -> Option<Request<Body>> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if !bearer.is_empty() {
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(bearer);
        builder = builder.header(header::AUTHORIZATION, value);
    }
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::from(body)).ok()
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(needle) {
            out.extend_from_slice(with);
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

async fn one(router: &Router, route: u8, path: &[u8], bearer: &[u8], body: &[u8]) {
    let request = match route {
        0 => post("/kbs/v0/auth", bearer, None, body.to_vec()),
        1..=3 => {
            let tee = ["sample", "snp", "tdx"][usize::from(route - 1)];
            let auth = format!(r#"{{"version":"0.4.0","tee":"{tee}","extra-params":{{}}}}"#);
            let Some(auth) = post("/kbs/v0/auth", b"", None, auth.into_bytes()) else {
                return;
            };
            let (status, cookie, reply) = call(router, auth).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "a well-formed /auth for {tee} is refused"
            );
            let challenge: serde_json::Value =
                serde_json::from_slice(&reply).expect("the challenge is JSON");
            let nonce = challenge["nonce"]
                .as_str()
                .expect("the challenge has a nonce");
            let cookie = cookie.expect("the challenge sets a cookie");
            let body = replace(body, b"NONCE", nonce.as_bytes());
            post("/kbs/v0/attest", bearer, Some(&cookie), body)
        }
        4 => {
            let Ok(path) = std::str::from_utf8(path) else {
                return;
            };
            let mut builder = Request::builder()
                .method(Method::GET)
                .uri(format!("/kbs/v0/resource/{path}"));
            if !bearer.is_empty() {
                let mut value = b"Bearer ".to_vec();
                value.extend_from_slice(bearer);
                builder = builder.header(header::AUTHORIZATION, value);
            }
            builder.body(Body::empty()).ok()
        }
        5 => match std::str::from_utf8(path) {
            Ok(path) => post(
                &format!("/kbs/v0/resource/{path}"),
                bearer,
                None,
                body.to_vec(),
            ),
            Err(_) => return,
        },
        6 => post("/kbs/v0/resource-policy", bearer, None, body.to_vec()),
        7 => post("/kbs/v0/reference-values", bearer, None, body.to_vec()),
        8 => post("/kbs/v0/admin-keys", bearer, None, body.to_vec()),
        _ => post("/kbs/v0/identity", bearer, None, body.to_vec()),
    };
    // A request `http` itself refuses to build never reaches a broker.
    let Some(request) = request else {
        return;
    };
    let (status, _, _) = call(router, request).await;
    // No input here carries valid evidence or a valid token: nothing is released or changed.
    if route != 0 {
        assert!(
            !status.is_success(),
            "route {route} answered {status} to a forged request"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let path = parts.next().unwrap_or_default();
    let bearer = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let harness = &*HARNESS;
    harness
        .runtime
        .block_on(one(&harness.router, route % 10, path, bearer, body));
});
