//! Attested workload identity (issue #9): a real `coffer-kbs` over loopback HTTP and HTTPS issues
//! SPIFFE certificates to attested guests only, and two such identities complete rustls mTLS.
//! Catalogue IDs: KBS-03 (initdata binding), KBS-04 (sample refused by the default policy),
//! KBS-07 (no, forged and expired tokens), INV-4 (initdata verified before it is used).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod kbs_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use coffer_attestation::attester::{Attester, SampleAttester};
use coffer_attestation::identity::guest::{GuestIdentityError, WorkloadIdentity, new_key_and_csr};
use coffer_attestation::identity::mtls::{SpiffeClientVerifier, SpiffeServerVerifier};
use coffer_attestation::identity::{AttestationBinding, inspect_certificate};
use coffer_attestation::kbs::binding::{self, canonical_json};
use coffer_attestation::kbs::client::{AuthMode, KbsClient, KbsClientError, KeyKind};
use coffer_attestation::kbs::jwe::TeeKeyPair;
use coffer_attestation::kbs::types::{InitData, RuntimeData};
use kbs_support::{Options, TestKbs, now, start};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use x509_cert::der::{Decode as _, DecodePem as _, Encode as _};

const TRUST_DOMAIN: &str = "coffer.test";

/// Resources to anyone attested; identities in the test trust domain to anyone attested (sample
/// included, as a development broker would).
const IDENTITY_POLICY: &str = "package policy\nimport rego.v1\ndefault allow := false\n\
    allow if { data.plugin == \"resource\" }\n\
    allow if { data.plugin == \"identity\"; startswith(data[\"resource-path\"], \"spiffe://coffer.test/ns/\") }\n";

fn initdata(workload: Option<&str>) -> InitData {
    let mut body = String::from("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n");
    body.push_str("\"kbs-evidence\" = \"sample\"\n");
    if let Some(w) = workload {
        body.push_str(&format!("\"workload-identity\" = \"{w}\"\n"));
    }
    InitData {
        format: "toml".into(),
        body,
    }
}

fn digest(init: &InitData) -> Vec<u8> {
    Sha256::digest(init.body.as_bytes()).to_vec()
}

async fn identity_kbs(tls: bool) -> TestKbs {
    start(Options {
        tls,
        policy: Some(IDENTITY_POLICY),
        identity: Some(TRUST_DOMAIN),
        ..Options::default()
    })
    .await
}

/// A sample guest whose evidence binds `init` (as a TEE's HOSTDATA would).
fn guest(kbs: &TestKbs, init: &InitData, auth: AuthMode) -> KbsClient {
    let mut config = kbs.client_config(KeyKind::Ec, auth);
    config.init_data = Some(init.clone());
    let attester: Arc<dyn Attester> = Arc::new(SampleAttester::with_init_data_digest(digest(init)));
    KbsClient::new(config, attester).unwrap()
}

/// The identity of an attested sample guest whose initdata names `workload`.
async fn obtain(kbs: &TestKbs, workload: &str, auth: AuthMode) -> WorkloadIdentity {
    WorkloadIdentity::obtain(&guest(kbs, &initdata(Some(workload)), auth), None)
        .await
        .unwrap()
}

fn refusal_kind(err: &GuestIdentityError) -> String {
    match err {
        GuestIdentityError::Kbs(KbsClientError::IdentityRefused { info })
        | GuestIdentityError::Kbs(KbsClientError::AttestationRefused { info, .. }) => {
            info.kind().to_owned()
        }
        other => panic!("unexpected error {other:?}"),
    }
}

fn leaf_der(id: &WorkloadIdentity) -> Vec<u8> {
    CertificateDer::pem_slice_iter(id.bundle().cert_chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn extension(
    cert: &x509_cert::Certificate,
    oid: x509_cert::der::oid::ObjectIdentifier,
) -> &x509_cert::ext::Extension {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid)
        .unwrap()
}

#[tokio::test]
async fn attested_guest_gets_the_spiffe_id_of_its_initdata_http_and_https() {
    use x509_cert::der::oid::db::rfc5280 as oid;
    use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
    for (tls, auth) in [(false, AuthMode::Cookie), (true, AuthMode::Bearer)] {
        let kbs = identity_kbs(tls).await;
        let init = initdata(Some("ns/prod/sa/frontend"));
        let client = guest(&kbs, &init, auth);
        let id = WorkloadIdentity::obtain(&client, Some(Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(id.spiffe_id(), "spiffe://coffer.test/ns/prod/sa/frontend");
        let leaf = leaf_der(&id);
        let seen = inspect_certificate(&leaf).unwrap();
        assert_eq!(seen.uris, vec![id.spiffe_id().to_owned()]);
        assert_eq!(seen.not_after - seen.not_before, 600 + 60);
        let binding = seen.attestation.unwrap();
        assert_eq!(
            (binding.tee.as_str(), binding.ear_status.as_str()),
            ("sample", "warning")
        );
        assert!(id.renew_at() < id.not_after() && id.renew_at() > SystemTime::now());
        // The trust bundle is the broker's CA, and the chain ends with it.
        assert_eq!(
            Some(id.bundle().ca_bundle_pem.as_str()),
            kbs.broker.identity_ca_pem()
        );
        assert!(
            id.bundle()
                .cert_chain_pem
                .ends_with(&id.bundle().ca_bundle_pem)
        );

        // What rustls needs: SAN URI (critical: empty subject), EKU client+server, KU
        // digitalSignature, not a CA; the CA is CA:true with pathlen 0.
        let cert = x509_cert::Certificate::from_der(&leaf).unwrap();
        assert!(cert.tbs_certificate.subject.0.is_empty());
        assert!(extension(&cert, oid::ID_CE_SUBJECT_ALT_NAME).critical);
        let eku = ExtendedKeyUsage::from_der(
            extension(&cert, oid::ID_CE_EXT_KEY_USAGE)
                .extn_value
                .as_bytes(),
        )
        .unwrap();
        assert!(
            eku.0
                .contains(&x509_cert::der::oid::db::rfc5280::ID_KP_CLIENT_AUTH)
        );
        assert!(
            eku.0
                .contains(&x509_cert::der::oid::db::rfc5280::ID_KP_SERVER_AUTH)
        );
        let ku = KeyUsage::from_der(extension(&cert, oid::ID_CE_KEY_USAGE).extn_value.as_bytes())
            .unwrap();
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.key_encipherment());
        let bc = BasicConstraints::from_der(
            extension(&cert, oid::ID_CE_BASIC_CONSTRAINTS)
                .extn_value
                .as_bytes(),
        )
        .unwrap();
        assert!(!bc.ca);
        let ca = x509_cert::Certificate::from_pem(id.bundle().ca_bundle_pem.as_bytes()).unwrap();
        let ca_bc = BasicConstraints::from_der(
            extension(&ca, oid::ID_CE_BASIC_CONSTRAINTS)
                .extn_value
                .as_bytes(),
        )
        .unwrap();
        assert!(ca_bc.ca && ca_bc.path_len_constraint == Some(0));
        assert_eq!(cert.tbs_certificate.issuer, ca.tbs_certificate.subject);
    }
}

#[tokio::test]
async fn csr_names_are_ignored_only_its_key_is_certified() {
    let kbs = identity_kbs(false).await;
    let init = initdata(Some("ns/prod/sa/frontend"));
    let client = guest(&kbs, &init, AuthMode::Cookie);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["admin.example".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://coffer.test/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap();
    let bundle = client.request_identity(csr.der()).await.unwrap();
    assert_eq!(bundle.spiffe_id, "spiffe://coffer.test/ns/prod/sa/frontend");
    let leaf = CertificateDer::pem_slice_iter(bundle.cert_chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let seen = inspect_certificate(&leaf).unwrap();
    assert_eq!(seen.uris, vec![bundle.spiffe_id.clone()]);
    assert_eq!(seen.spki_der, key.public_key_der());
    let cert = x509_cert::Certificate::from_der(&leaf).unwrap();
    assert!(cert.tbs_certificate.subject.0.is_empty());
    let ku = x509_cert::ext::pkix::KeyUsage::from_der(
        extension(&cert, x509_cert::der::oid::db::rfc5280::ID_CE_KEY_USAGE)
            .extn_value
            .as_bytes(),
    )
    .unwrap();
    assert!(!ku.key_cert_sign());
}

/// `/auth` + `/attest` by hand, returning the cookie and the token.
async fn attest_by_hand(
    kbs: &TestKbs,
    init: &InitData,
    measured: Option<&[u8]>,
) -> (String, String) {
    let http = kbs.http();
    let r = http
        .post(format!("{}/kbs/v0/auth", kbs.url))
        .header("content-type", "application/json")
        .body(json!({"version": "0.4.0", "tee": "sample", "extra-params": {}}).to_string())
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let challenge: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let key = TeeKeyPair::generate_ec();
    let runtime = RuntimeData {
        nonce: challenge["nonce"].as_str().unwrap().to_owned(),
        tee_pubkey: key.public_jwk(),
    };
    let rd = binding::report_data(&runtime, "");
    let mut evidence = json!({"svn": "1", "report_data": B64.encode(rd)});
    if let Some(m) = measured {
        evidence["init_data"] = json!(hex::encode(m));
    }
    let r = http
        .post(format!("{}/kbs/v0/attest", kbs.url))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body(
            json!({
                "init-data": init,
                "runtime-data": runtime,
                "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    (cookie, token["token"].as_str().unwrap().to_owned())
}

/// POST /kbs/v0/identity with `header` (cookie or authorization) and a fresh CSR.
async fn post_identity(kbs: &TestKbs, header: Option<(&str, String)>, csr: &[u8]) -> (u16, Value) {
    let mut req = kbs
        .http()
        .post(format!("{}/kbs/v0/identity", kbs.url))
        .header("content-type", "application/json")
        .body(json!({"csr": B64.encode(csr)}).to_string());
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

fn token_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn certificate_binds_the_sha256_of_the_token_claims() {
    let kbs = identity_kbs(false).await;
    let init = initdata(Some("ns/prod/sa/frontend"));
    let (_cookie, token) = attest_by_hand(&kbs, &init, Some(&digest(&init))).await;
    let (_key, csr) = new_key_and_csr().unwrap();
    let (status, reply) = post_identity(
        &kbs,
        Some(("authorization", format!("Bearer {token}"))),
        &csr,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let leaf = x509_cert::Certificate::from_pem(reply["certificate"].as_str().unwrap().as_bytes())
        .unwrap()
        .to_der()
        .unwrap();
    let binding = inspect_certificate(&leaf).unwrap().attestation.unwrap();
    let expected: [u8; 32] = Sha256::digest(canonical_json(&token_claims(&token))).into();
    assert_eq!(
        binding,
        AttestationBinding {
            claims_sha256: expected,
            tee: "sample".into(),
            ear_status: "warning".into(),
        }
    );
}

#[tokio::test]
async fn identity_needs_a_valid_token_kbs07() {
    let kbs = identity_kbs(false).await;
    let init = initdata(Some("ns/prod/sa/frontend"));
    let (_key, csr) = new_key_and_csr().unwrap();

    // No cookie, no token.
    let (status, reply) = post_identity(&kbs, None, &csr).await;
    assert_eq!(
        (status, reply["type"].as_str().unwrap().rsplit('/').next()),
        (401, Some("TokenNotFound"))
    );
    // An unknown session cookie.
    let (status, _) =
        post_identity(&kbs, Some(("cookie", "kbs-session-id=00ff".into())), &csr).await;
    assert_eq!(status, 401);

    // Claims exactly as the broker signs them for this guest, from an attestation by hand.
    let (_cookie, token) = attest_by_hand(&kbs, &init, Some(&digest(&init))).await;
    let claims = token_claims(&token);
    let with_times = |iat: u64, exp: u64| {
        let mut c = claims.clone();
        c["iat"] = json!(iat);
        c["exp"] = json!(exp);
        c
    };
    let bearer = |t: String| Some(("authorization", format!("Bearer {t}")));
    // Signed by the broker's key and valid: issued (the control for the two refusals below).
    let good = kbs
        .token_signer()
        .sign(&with_times(now(), now() + 60))
        .unwrap();
    assert_eq!(post_identity(&kbs, bearer(good), &csr).await.0, 200);
    // Expired.
    let expired = kbs
        .token_signer()
        .sign(&with_times(now() - 600, now() - 300))
        .unwrap();
    let (status, reply) = post_identity(&kbs, bearer(expired), &csr).await;
    assert_eq!(status, 401);
    assert!(
        reply["type"]
            .as_str()
            .unwrap()
            .ends_with("JwtVerificationFailed")
    );
    // Forged: same claims, another key.
    let forged = coffer_attestation::kbs::jwt::TokenSigner::generate()
        .unwrap()
        .sign(&with_times(now(), now() + 60))
        .unwrap();
    let (status, reply) = post_identity(&kbs, bearer(forged), &csr).await;
    assert_eq!(status, 401);
    assert!(
        reply["type"]
            .as_str()
            .unwrap()
            .ends_with("JwtVerificationFailed")
    );
    // A broker-signed token whose initdata is not marked bound (as for legacy sample evidence).
    let mut unbound = with_times(now(), now() + 60);
    unbound["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data_bound"] = json!(false);
    let unbound = kbs.token_signer().sign(&unbound).unwrap();
    let (status, reply) = post_identity(&kbs, bearer(unbound), &csr).await;
    assert_eq!(status, 401);
    assert!(reply["type"].as_str().unwrap().ends_with("IdentityRefused"));
}

#[tokio::test]
async fn failed_or_insufficient_attestation_gets_no_certificate() {
    let workload = Some("ns/prod/sa/frontend");
    // Sample evidence not accepted by the broker: attestation fails (KBS-04).
    let strict = start(Options {
        allow_sample: false,
        policy: Some(IDENTITY_POLICY),
        identity: Some(TRUST_DOMAIN),
        ..Options::default()
    })
    .await;
    let err =
        WorkloadIdentity::obtain(&guest(&strict, &initdata(workload), AuthMode::Cookie), None)
            .await
            .unwrap_err();
    assert!(matches!(
        err,
        GuestIdentityError::Kbs(KbsClientError::AttestationRefused { .. })
    ));

    // The shipped default policy: sample evidence gets no identity (KBS-04).
    let default_policy = start(Options {
        policy: None,
        identity: Some(TRUST_DOMAIN),
        ..Options::default()
    })
    .await;
    let err = WorkloadIdentity::obtain(
        &guest(&default_policy, &initdata(workload), AuthMode::Cookie),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(refusal_kind(&err), "PolicyDeny");

    let kbs = identity_kbs(false).await;
    // Evidence binding another initdata than the one sent: attestation fails (KBS-03).
    let init = initdata(workload);
    let mut config = kbs.client_config(KeyKind::Ec, AuthMode::Cookie);
    config.init_data = Some(init.clone());
    let other = digest(&initdata(Some("ns/prod/sa/admin")));
    let liar = KbsClient::new(
        config,
        Arc::new(SampleAttester::with_init_data_digest(other)),
    )
    .unwrap();
    let err = WorkloadIdentity::obtain(&liar, None).await.unwrap_err();
    assert_eq!(refusal_kind(&err), "AttestationError");

    // Evidence that binds no initdata (INV-4: the broker does not act on unbound initdata).
    let mut config = kbs.client_config(KeyKind::Ec, AuthMode::Cookie);
    config.init_data = Some(init.clone());
    let unbound = KbsClient::new(config, Arc::new(SampleAttester::new())).unwrap();
    let err = WorkloadIdentity::obtain(&unbound, None).await.unwrap_err();
    assert_eq!(refusal_kind(&err), "IdentityRefused");
    // ...while the same guest still gets resources: only the identity depends on the binding.
    kbs.put("default/key/1", b"k");
    unbound
        .get_resource(&"default/key/1".parse().unwrap())
        .await
        .unwrap();

    // Initdata without a workload entry, or with an invalid one.
    for init in [initdata(None), initdata(Some("ns/Prod/sa/x"))] {
        let err = WorkloadIdentity::obtain(&guest(&kbs, &init, AuthMode::Cookie), None)
            .await
            .unwrap_err();
        assert_eq!(refusal_kind(&err), "IdentityRefused");
    }
    // No initdata at all.
    let mut config = kbs.client_config(KeyKind::Ec, AuthMode::Cookie);
    config.init_data = None;
    let none = KbsClient::new(config, Arc::new(SampleAttester::new())).unwrap();
    let err = WorkloadIdentity::obtain(&none, None).await.unwrap_err();
    assert_eq!(refusal_kind(&err), "IdentityRefused");

    // A broker without an identity CA.
    let plain = start(Options::default()).await;
    let err = WorkloadIdentity::obtain(&guest(&plain, &initdata(workload), AuthMode::Cookie), None)
        .await
        .unwrap_err();
    assert_eq!(refusal_kind(&err), "PluginNotFound");
    let text = kbs.metrics_text().await;
    assert!(
        text.contains("coffer_kbs_identity_refused_total 4"),
        "{text}"
    );
    assert!(
        text.contains("coffer_kbs_identity_issued_total 0"),
        "{text}"
    );
}

/// A DER CSR for an RSA key of `bits`, signed with it (RSASSA-PKCS1-v1_5, SHA-256): rcgen (ring)
/// cannot sign with keys under 2048 bits.
fn rsa_csr(bits: usize) -> Vec<u8> {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use x509_cert::der::asn1::{BitString, Null};
    use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits).unwrap();
    let null = Some(x509_cert::der::Any::from(Null));
    let info = x509_cert::request::CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject: Default::default(),
        public_key: SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: "1.2.840.113549.1.1.1".parse().unwrap(),
                parameters: null.clone(),
            },
            subject_public_key: BitString::from_bytes(
                key.to_public_key().to_pkcs1_der().unwrap().as_bytes(),
            )
            .unwrap(),
        },
        attributes: Default::default(),
    };
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    let signature = signer.sign(&info.to_der().unwrap()).to_vec();
    x509_cert::request::CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned {
            oid: "1.2.840.113549.1.1.11".parse().unwrap(),
            parameters: null,
        },
        signature: BitString::from_bytes(&signature).unwrap(),
    }
    .to_der()
    .unwrap()
}

#[tokio::test]
async fn bad_csrs_and_lifetimes_are_refused() {
    let kbs = identity_kbs(false).await;
    let client = guest(
        &kbs,
        &initdata(Some("ns/prod/sa/frontend")),
        AuthMode::Cookie,
    );
    let refused = |r: Result<_, KbsClientError>| match r {
        Err(KbsClientError::IdentityRefused { info }) => (info.kind().to_owned(), info.detail),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (_key, csr) = new_key_and_csr().unwrap();
    // Signature flipped in its last byte.
    let mut bad = csr.clone();
    *bad.last_mut().unwrap() ^= 1;
    let (kind, detail) = refused(client.request_identity(&bad).await);
    assert_eq!(kind, "InvalidRequest");
    assert!(detail.contains("signature does not verify"), "{detail}");
    // A public key swapped under the signature (the signed info changed).
    let other = new_key_and_csr().unwrap().1;
    let spliced = splice_key(&csr, &other);
    let (_, detail) = refused(client.request_identity(&spliced).await);
    assert!(detail.contains("signature does not verify"), "{detail}");
    // RSA-1024: refused for its size; RSA-2048 accepted.
    let (kind, detail) = refused(client.request_identity(&rsa_csr(1024)).await);
    assert_eq!(kind, "InvalidRequest");
    assert!(detail.contains("rsa-1024"), "{detail}");
    client.request_identity(&rsa_csr(2048)).await.unwrap();
    // Not a CSR.
    let (kind, _) = refused(client.request_identity(b"not a csr").await);
    assert_eq!(kind, "InvalidRequest");
    // Lifetime over the maximum (default 86400 s) is refused, not shortened.
    let (kind, detail) = refused(
        client
            .request_identity_for(&csr, Some(Duration::from_secs(86_401)))
            .await,
    );
    assert_eq!(kind, "InvalidRequest");
    assert!(detail.contains("lifetime"), "{detail}");
    // The untouched CSR is fine.
    client.request_identity(&csr).await.unwrap();
}

/// `csr` with the SubjectPublicKeyInfo of `donor` (signature left as it was).
fn splice_key(csr: &[u8], donor: &[u8]) -> Vec<u8> {
    let mut req = x509_cert::request::CertReq::from_der(csr).unwrap();
    req.info.public_key = x509_cert::request::CertReq::from_der(donor)
        .unwrap()
        .info
        .public_key;
    req.to_der().unwrap()
}

// ---- mTLS with broker-issued identities -------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(roots)
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn server_config(id: &WorkloadIdentity) -> Arc<rustls::ServerConfig> {
    let verifier =
        SpiffeClientVerifier::new(roots(&id.bundle().ca_bundle_pem), TRUST_DOMAIN, provider())
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(id.private_key_pem().as_bytes()).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(chain(&id.bundle().cert_chain_pem), key)
            .unwrap(),
    )
}

fn client_config(
    ca_pem: &str,
    expected: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Arc<rustls::ClientConfig> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        roots(ca_pem),
        expected,
        provider(),
    ));
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain(cert_pem), key)
            .unwrap(),
    )
}

fn peer_spiffe_id(certs: Option<&[CertificateDer<'_>]>) -> String {
    let leaf = certs.and_then(|c| c.first()).unwrap();
    inspect_certificate(leaf)
        .unwrap()
        .spiffe_id()
        .unwrap()
        .to_owned()
}

/// One mTLS exchange; returns (what the server saw, what the client saw) or the server's error.
async fn mtls_exchange(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (
    Result<String, std::io::Error>,
    Result<String, std::io::Error>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(peer)
    });
    let client_result = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("workload.invalid").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates());
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok::<_, std::io::Error>(peer)
    }
    .await;
    (server_task.await.unwrap(), client_result)
}

#[tokio::test]
async fn two_broker_identities_complete_mtls_and_see_each_others_spiffe_id() {
    let kbs = identity_kbs(true).await;
    let frontend = obtain(&kbs, "ns/prod/sa/frontend", AuthMode::Cookie).await;
    let backend = obtain(&kbs, "ns/prod/sa/backend", AuthMode::Bearer).await;
    let (server_saw, client_saw) = mtls_exchange(
        server_config(&backend),
        client_config(
            &frontend.bundle().ca_bundle_pem,
            backend.spiffe_id(),
            &frontend.bundle().cert_chain_pem,
            frontend.private_key_pem(),
        ),
    )
    .await;
    assert_eq!(
        server_saw.unwrap(),
        "spiffe://coffer.test/ns/prod/sa/frontend"
    );
    assert_eq!(
        client_saw.unwrap(),
        "spiffe://coffer.test/ns/prod/sa/backend"
    );

    // The client refuses a server that is broker-issued but not the workload it dials.
    let (_, client_saw) = mtls_exchange(
        server_config(&backend),
        client_config(
            &frontend.bundle().ca_bundle_pem,
            "spiffe://coffer.test/ns/prod/sa/payments",
            &frontend.bundle().cert_chain_pem,
            frontend.private_key_pem(),
        ),
    )
    .await;
    assert!(client_saw.is_err());
}

#[tokio::test]
async fn clients_without_a_broker_issued_identity_are_refused() {
    let kbs = identity_kbs(false).await;
    let backend = obtain(&kbs, "ns/prod/sa/backend", AuthMode::Cookie).await;
    // A self-made certificate claiming a SPIFFE ID of the trust domain.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://coffer.test/ns/prod/sa/frontend"
            .try_into()
            .unwrap(),
    ));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let self_made = params.self_signed(&key).unwrap();
    // An identity from another broker (another CA, same trust domain name).
    let other_kbs = identity_kbs(false).await;
    let foreign = obtain(&other_kbs, "ns/prod/sa/frontend", AuthMode::Cookie).await;
    for (cert_pem, key_pem) in [
        (self_made.pem(), key.serialize_pem()),
        (
            foreign.bundle().cert_chain_pem.clone(),
            foreign.private_key_pem().to_owned(),
        ),
    ] {
        let (server_saw, client_saw) = mtls_exchange(
            server_config(&backend),
            client_config(
                &backend.bundle().ca_bundle_pem,
                backend.spiffe_id(),
                &cert_pem,
                &key_pem,
            ),
        )
        .await;
        let err = server_saw.unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        assert!(client_saw.is_err());
    }
}
