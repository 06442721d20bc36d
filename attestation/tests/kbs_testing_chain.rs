//! Forged SNP and TDX evidence, signed by a test chain (`coffer attestation testing-ca`), through
//! a real broker configured for it (`[testing] ca_dir`) and for reference values (an SNP
//! measurement and minimum TCB, a TDX MRTD) under the shipped default policy: the right
//! measurement gets the resource; each wrong field is refused with a reason naming it; a
//! broker without the `[testing]` section refuses the very evidence it accepted, at the chain.
//! The verifiers are the ones real evidence goes through: only the trusted roots differ.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod kbs_support;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use coffer_attestation::attester::Attester;
use coffer_attestation::kbs::client::{ClientConfig, KbsClient, KbsClientError};
use coffer_attestation::kbs::jwe::TeeKeyPair;
use coffer_attestation::kbs::probe::{self, Probe};
use coffer_attestation::tdx::TdAttributes;
use coffer_attestation::testing::snp::{CrlSpec, POLICY_DEBUG, SnpFields, SnpTestChain, Tcb};
use coffer_attestation::testing::tdx::{TEE_TCB_SVN_OUT_OF_DATE, TdxFields, TdxTestChain};
use coffer_attestation::testing::{self, ForgingAttester, TDX_COLLATERAL_DIR};
use kbs_support::{Options, TestKbs, start};

const SECRET: &[u8] = b"released only to the pinned measurement";
const MEASUREMENT: [u8; 48] = [0x5a; 48];
const OTHER: [u8; 48] = [0x5b; 48];

/// One test chain for the whole file (two RSA-3072 keys take a moment).
fn chain_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        testing::create(dir.path(), 30).unwrap();
        dir
    })
    .path()
}

/// A broker with reference values for both TEEs, the shipped default policy (affirming,
/// non-sample evidence only), TDX collateral from the test chain, and `[testing]` when asked.
async fn broker(trust_test_chain: bool) -> TestKbs {
    broker_with(trust_test_chain, "").await
}

/// [`broker`] with `more` appended to its configuration.
async fn broker_with(trust_test_chain: bool, more: &str) -> TestKbs {
    let dir = chain_dir();
    let m = hex::encode(MEASUREMENT);
    let testing = if trust_test_chain {
        format!("[testing]\nca_dir = {:?}\n", dir.display().to_string())
    } else {
        String::new()
    };
    let kbs = start(Options {
        allow_sample: false,
        policy: None,
        extra: format!(
            "[attestation.snp]\nmeasurements = [\"{m}\"]\n\
             [attestation.snp.min_reported_tcb]\nbootloader = 4\ntee = 0\nsnp = 22\nmicrocode = 213\n\
             [attestation.tdx]\nmr_td = [\"{m}\"]\ncollateral = {:?}\n{testing}{more}",
            dir.join(TDX_COLLATERAL_DIR).display().to_string()
        ),
        ..Options::default()
    })
    .await;
    kbs.put("default/key/1", SECRET);
    kbs
}

fn snp(fields: SnpFields) -> ForgingAttester {
    ForgingAttester::snp(SnpTestChain::load(chain_dir()).unwrap(), fields)
}

fn tdx(fields: TdxFields) -> ForgingAttester {
    ForgingAttester::tdx(TdxTestChain::load(chain_dir()).unwrap(), fields)
}

async fn fetch(kbs: &TestKbs, attester: ForgingAttester) -> Result<Vec<u8>, KbsClientError> {
    let attester: Arc<dyn Attester> = Arc::new(attester);
    let client = KbsClient::new(ClientConfig::new(&kbs.url), attester).unwrap();
    let path = "default/key/1".parse().unwrap();
    client
        .get_resource(&path)
        .await
        .map(|r| r.expose().to_vec())
}

/// The broker's refusal of `/attest`: its problem detail.
async fn refusal(kbs: &TestKbs, attester: ForgingAttester) -> String {
    match fetch(kbs, attester).await {
        Err(KbsClientError::AttestationRefused {
            stage: "attest",
            info,
        }) => {
            assert_eq!(info.kind(), "AttestationError");
            info.detail
        }
        other => panic!("expected a refused /attest, got {other:?}"),
    }
}

/// The claims of the token a handshake with `attester` gets.
async fn token_claims(kbs: &TestKbs, attester: &ForgingAttester) -> serde_json::Value {
    let probe = Probe::new(&kbs.url, None).unwrap();
    let tee = attester.tee().as_str();
    let challenge = probe.auth(tee).await.unwrap();
    let nonce = challenge.json()["nonce"].as_str().unwrap().to_owned();
    let body = probe::attestation(&nonce, &TeeKeyPair::generate_ec(), attester).unwrap();
    let reply = probe
        .attest(challenge.cookie.as_deref(), body.to_string())
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.summary());
    // The attested session travels sealed in the cookie (#23): with SNP and TDX claims it must
    // still fit the 8 KiB request-header buffers of common proxies and ingresses.
    let cookie = reply.cookie.as_deref().unwrap();
    eprintln!("{tee}: attested session cookie {} bytes", cookie.len());
    assert!(
        cookie.len() < 7 * 1024,
        "{tee} session cookie {} bytes",
        cookie.len()
    );
    probe::token_claims(reply.json()["token"].as_str().unwrap())
}

#[tokio::test]
async fn snp_forged_evidence_the_right_measurement_gets_the_resource_and_each_wrong_field_is_named()
{
    let kbs = broker(true).await;
    let good = SnpFields {
        measurement: MEASUREMENT,
        ..SnpFields::default()
    };
    assert_eq!(fetch(&kbs, snp(good.clone())).await.unwrap(), SECRET);
    // The appraisal is affirming (pinned) and says which root certified it.
    let claims = token_claims(&kbs, &snp(good.clone())).await;
    let cpu = &claims["submods"]["cpu0"];
    assert_eq!(cpu["ear.status"], "affirming", "{claims}");
    assert_eq!(cpu["ear.veraison.annotated-evidence"]["testing_root"], true);

    let cases = [
        (
            "another measurement",
            SnpFields {
                measurement: OTHER,
                ..good.clone()
            },
            "measurement",
        ),
        (
            "the debug policy bit",
            SnpFields {
                policy: good.policy | POLICY_DEBUG,
                ..good.clone()
            },
            "debug allowed",
        ),
        (
            "an old TCB",
            SnpFields {
                tcb: Tcb {
                    bootloader: 3,
                    ..good.tcb
                },
                ..good.clone()
            },
            "reported TCB bootloader is 3, below minimum 4",
        ),
        (
            "host data without init-data",
            SnpFields {
                host_data: [1; 32],
                ..good.clone()
            },
            "host_data mismatch",
        ),
        (
            "VMPL 1",
            SnpFields {
                vmpl: 1,
                ..good.clone()
            },
            "VMPL 1",
        ),
    ];
    for (what, fields, reason) in cases {
        let detail = refusal(&kbs, snp(fields)).await;
        assert!(detail.contains(reason), "{what}: {detail}");
    }
    // report_data that does not bind this handshake's nonce and key.
    let stale = snp(SnpFields {
        report_data: [7; 64],
        ..good.clone()
    })
    .keeping_report_data();
    let detail = refusal(&kbs, stale).await;
    assert!(detail.contains("report_data mismatch"), "{detail}");
}

#[tokio::test]
async fn tdx_forged_evidence_the_right_mrtd_gets_the_resource_and_each_wrong_field_is_named() {
    let kbs = broker(true).await;
    let good = TdxFields {
        mr_td: MEASUREMENT,
        ..TdxFields::default()
    };
    assert_eq!(fetch(&kbs, tdx(good.clone())).await.unwrap(), SECRET);
    let claims = token_claims(&kbs, &tdx(good.clone())).await;
    let cpu = &claims["submods"]["cpu0"];
    assert_eq!(cpu["ear.status"], "affirming", "{claims}");
    assert_eq!(cpu["ear.veraison.annotated-evidence"]["testing_root"], true);
    assert_eq!(
        cpu["ear.veraison.annotated-evidence"]["tdx"]["tcb_status"],
        "UpToDate"
    );

    let cases = [
        (
            "another MRTD",
            TdxFields {
                mr_td: OTHER,
                ..good.clone()
            },
            "mr_td",
        ),
        (
            "the DEBUG attribute",
            TdxFields {
                td_attributes: good.td_attributes | TdAttributes::DEBUG,
                ..good.clone()
            },
            "Debug",
        ),
        (
            "an old TEE TCB",
            TdxFields {
                tee_tcb_svn: TEE_TCB_SVN_OUT_OF_DATE,
                ..good.clone()
            },
            "OutOfDate",
        ),
        (
            "MRCONFIGID without init-data",
            TdxFields {
                mr_config_id: [1; 48],
                ..good.clone()
            },
            "mr_config_id mismatch",
        ),
        (
            "SEPT_VE_DISABLE clear",
            TdxFields {
                td_attributes: 0,
                ..good.clone()
            },
            "SEPT_VE_DISABLE",
        ),
    ];
    for (what, fields, reason) in cases {
        let detail = refusal(&kbs, tdx(fields)).await;
        assert!(detail.contains(reason), "{what}: {detail}");
    }
    let stale = tdx(TdxFields {
        report_data: [7; 64],
        ..good.clone()
    })
    .keeping_report_data();
    let detail = refusal(&kbs, stale).await;
    assert!(detail.contains("report_data mismatch"), "{detail}");
}

#[tokio::test]
async fn a_broker_without_the_testing_section_refuses_the_same_evidence_at_the_chain() {
    let kbs = broker(false).await;
    let detail = refusal(
        &kbs,
        snp(SnpFields {
            measurement: MEASUREMENT,
            ..SnpFields::default()
        }),
    )
    .await;
    assert!(
        detail.contains("is not an embedded AMD ASK or ASVK"),
        "{detail}"
    );
    let detail = refusal(
        &kbs,
        tdx(TdxFields {
            mr_td: MEASUREMENT,
            ..TdxFields::default()
        }),
    )
    .await;
    assert!(
        detail.contains("is not a trusted root (the embedded Intel SGX Root CA)"),
        "{detail}"
    );
}

/// KBS-05 through the broker: `[attestation.snp.crl]` with a CRL (signed by the test chain's ARK)
/// revoking one chip's VCEK. That chip is refused at `/attest` with a reason naming the VCEK and
/// its serial, another chip gets the resource; the CRL file is read again for each evidence, so
/// replacing it with an expired one refuses every chip, and an unusable one is reported to the
/// client without the broker's path.
#[tokio::test]
async fn kbs05_broker_refuses_a_revoked_vcek_at_attestation_naming_it() {
    let chain = SnpTestChain::load(chain_dir()).unwrap();
    let good = SnpFields {
        measurement: MEASUREMENT,
        ..SnpFields::default()
    };
    let revoked = SnpFields {
        chip_id: [0xD0; 64],
        ..good.clone()
    };
    let serial = SnpTestChain::vcek_serial(&revoked);
    let crl_dir = tempfile::tempdir().unwrap();
    let crl_file = crl_dir.path().join("milan.crl");
    let crl = chain
        .issue_crl(&CrlSpec {
            revoked: vec![serial.clone()],
            ..CrlSpec::default()
        })
        .unwrap();
    std::fs::write(&crl_file, crl).unwrap();
    let kbs = broker_with(
        true,
        &format!(
            "[attestation.snp.crl]\ndir = {:?}\nrequire = true\n",
            crl_dir.path().display().to_string()
        ),
    )
    .await;
    assert_eq!(fetch(&kbs, snp(good.clone())).await.unwrap(), SECRET);
    let detail = refusal(&kbs, snp(revoked)).await;
    assert!(
        detail.contains(&format!(
            "VCEK certificate serial {} is revoked by the Milan VCEK CRL",
            hex::encode(&serial)
        )),
        "{detail}"
    );

    let now = std::time::SystemTime::now();
    let hour = std::time::Duration::from_secs(3600);
    let expired = chain
        .issue_crl(&CrlSpec {
            revoked: Vec::new(),
            this_update: now - 48 * hour,
            next_update: Some(now - hour),
        })
        .unwrap();
    std::fs::write(&crl_file, expired).unwrap();
    let detail = refusal(&kbs, snp(good.clone())).await;
    assert!(detail.contains("Milan VCEK CRL is not current"), "{detail}");

    std::fs::write(&crl_file, b"not a CRL").unwrap();
    let detail = refusal(&kbs, snp(good)).await;
    assert!(detail.contains("no usable CRL"), "{detail}");
    let dir = crl_dir.path().display().to_string();
    assert!(!detail.contains(&dir), "the broker's path leaked: {detail}");
}
