//! Intel TDX verification against the real vectors in `tests/vectors/tdx/` (see its README,
//! EXPECTED-signature-chain.json and EXPECTED-dcap-qvl.json). Test names cite catalogue ID KBS-06
//! (TDX evidence, §1.7) and KBS-03 (MRCONFIGID binding). A missing vector fails the test.
// Test code: a failed expectation (in helpers too) is a test failure.
#![allow(clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_attestation::tdx::ccel::EventLog;
use coffer_attestation::tdx::{
    CertRole, Collateral, Expected, TcbStatus, TdQuote, TdxError, TdxPolicy, TdxVerifier,
    verify_signatures,
};
use serde_json::Value;

/// 2026-11-28T09:00:00Z: the "current date" of EXPECTED-dcap-qvl.json (collateral expired), and
/// inside the validity of every PCK certificate in the vectors.
const NOV_2026: u64 = 1_795_866_000;

const DCAP_TDX: &str = "dcap-qvl-tdx_quote";
const DCAP_TDX_COLLATERAL: &str = "dcap-qvl-tdx_quote_collateral.json";
const DCAP_SGX: &str = "dcap-qvl-sgx_quote";
const DCAP_SGX_COLLATERAL: &str = "dcap-qvl-sgx_quote_collateral.json";
const TRUSTEE_V4: &str = "trustee-tdx_quote_4.dat";
const TRUSTEE_V5: &str = "trustee-tdx_quote_5.dat";
/// The quotes present in the vector directory (EXPECTED-signature-chain.json also describes
/// quotes that were not copied; those are not tested).
const QUOTES: [&str; 3] = [DCAP_TDX, TRUSTEE_V4, TRUSTEE_V5];

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

fn vector_path(name: &str) -> PathBuf {
    common::vectors_dir().join("tdx").join(name)
}

fn vector(name: &str) -> Vec<u8> {
    let path = vector_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "TDX test vector {} is missing or unreadable: {e}",
            path.display()
        )
    })
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&vector(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn collateral(name: &str) -> Collateral {
    Collateral::from_json(&vector(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The `now_unix` EXPECTED-dcap-qvl.json pins for `quote`, and whether dcap-qvl accepted it.
fn pinned_dcap(quote: &str, ok: bool) -> (u64, Value) {
    let expected = json("EXPECTED-dcap-qvl.json");
    let results = expected["results"].as_array().expect("results array");
    let entry = results
        .iter()
        .find(|r| r["quote"] == quote && r["dcap_qvl_0_5_3_result"]["ok"] == ok)
        .unwrap_or_else(|| panic!("EXPECTED-dcap-qvl.json has no ok={ok} entry for {quote}"));
    (
        entry["now_unix"].as_u64().expect("now_unix"),
        entry["dcap_qvl_0_5_3_result"].clone(),
    )
}

fn expected_for(quote: &[u8]) -> Expected {
    let parsed = TdQuote::parse(quote).expect("parses");
    Expected {
        report_data: parsed.report.report_data,
        mr_config_id: Some(parsed.report.mr_config_id),
    }
}

fn hex_of(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("EXPECTED lacks {key}")),
    )
    .unwrap_or_else(|e| panic!("EXPECTED {key}: {e}"))
}

/// Unix time of "YYYY-MM-DD HH:MM:SS+00:00".
fn parse_utc(s: &str) -> u64 {
    let num = |r: std::ops::Range<usize>| -> i64 { s[r].parse().expect("date digits") };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
    // Days from civil (proleptic Gregorian), 1970-01-01 = 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).expect("after 1970")
}

// ---- full verification with collateral ------------------------------------------------------

#[test]
fn kbs06_dcap_tdx_quote_up_to_date_at_pinned_time() {
    let (now, result) = pinned_dcap(DCAP_TDX, true);
    assert_eq!(result["status"], "UpToDate");
    let quote = vector(DCAP_TDX);
    let verified = TdxVerifier::default()
        .verify(
            &quote,
            &collateral(DCAP_TDX_COLLATERAL),
            at(now),
            &expected_for(&quote),
        )
        .expect("UpToDate at the pinned time");
    let tcb = verified.tcb.expect("collateral verdict");
    assert_eq!(tcb.status, TcbStatus::UpToDate);
    let advisories: Vec<String> = result["advisory_ids"]
        .as_array()
        .expect("advisory_ids")
        .iter()
        .map(|a| a.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(tcb.advisory_ids, advisories);
    assert_eq!(hex::encode_upper(verified.pck.fmspc), "B0C06F000000");
}

#[test]
fn kbs06_expired_collateral_refused_at_current_date() {
    let quote = vector(DCAP_TDX);
    let expected = expected_for(&quote);
    let verifier = TdxVerifier::default();
    let collateral = collateral(DCAP_TDX_COLLATERAL);
    // The date EXPECTED-dcap-qvl.json records as failing with CrlExpired.
    let (now, result) = pinned_dcap(DCAP_TDX, false);
    assert!(
        result["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("CrlExpired"))
    );
    match verifier.verify(&quote, &collateral, at(now), &expected) {
        Err(TdxError::Dcap { reason }) => assert!(reason.contains("CrlExpired"), "{reason}"),
        other => panic!("expected a CrlExpired refusal, got {other:?}"),
    }
    // And at the real current time (later than every nextUpdate in the collateral).
    assert!(matches!(
        verifier.verify(&quote, &collateral, SystemTime::now(), &expected),
        Err(TdxError::Dcap { .. })
    ));
}

#[test]
fn kbs06_collateral_not_yet_valid_refused() {
    // One day before the TCB info was issued (2025-06-19T10:16:03Z).
    let quote = vector(DCAP_TDX);
    let err = TdxVerifier::default()
        .verify(
            &quote,
            &collateral(DCAP_TDX_COLLATERAL),
            at(parse_utc("2025-06-18 10:16:03+00:00")),
            &expected_for(&quote),
        )
        .expect_err("collateral from the future");
    assert!(matches!(err, TdxError::Dcap { .. }), "{err}");
}

#[test]
fn kbs06_sgx_quote_refused_as_td_evidence() {
    let sgx = vector(DCAP_SGX);
    // The SGX vector itself is genuine: dcap-qvl accepts it as an SGX quote at its pinned time.
    let (now, result) = pinned_dcap(DCAP_SGX, true);
    let sgx_collateral: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_slice(&vector(DCAP_SGX_COLLATERAL)).expect("collateral");
    let as_sgx = dcap_qvl::verify::QuoteVerifier::new_prod()
        .verify(&sgx, &sgx_collateral, now)
        .expect("genuine SGX quote");
    assert_eq!(as_sgx.status, result["status"].as_str().expect("status"));
    // As TD evidence it is refused, with and without collateral.
    let expected = Expected {
        report_data: [0; 64],
        mr_config_id: None,
    };
    let verifier = TdxVerifier::default();
    for result in [
        verifier.verify(&sgx, &collateral(DCAP_SGX_COLLATERAL), at(now), &expected),
        verifier.verify(&sgx, &collateral(DCAP_TDX_COLLATERAL), at(now), &expected),
        verifier.verify_signature_only(&sgx, at(now), &expected),
    ] {
        assert!(
            matches!(result, Err(TdxError::NotTdQuote { tee_type: 0, .. })),
            "{result:?}"
        );
    }
    assert!(matches!(
        TdQuote::parse(&sgx),
        Err(TdxError::NotTdQuote { .. })
    ));
}

#[test]
fn kbs06_trustee_quote_with_foreign_collateral_fmspc_mismatch() {
    let quote = vector(TRUSTEE_V4);
    let err = TdxVerifier::default()
        .verify(
            &quote,
            &collateral(DCAP_TDX_COLLATERAL),
            at(NOV_2026),
            &expected_for(&quote),
        )
        .expect_err("FMSPC mismatch");
    match err {
        TdxError::FmspcMismatch { quote, collateral } => {
            assert_eq!(quote, "50806F000000");
            assert_eq!(collateral, "B0C06F000000");
        }
        other => panic!("expected FmspcMismatch, got {other}"),
    }
}

#[test]
fn kbs06_tampered_collateral_refused() {
    let (now, _) = pinned_dcap(DCAP_TDX, true);
    let quote = vector(DCAP_TDX);
    let mut raw: Value = json(DCAP_TDX_COLLATERAL);
    let tcb_info = raw["tcb_info"].as_str().expect("tcb_info").to_owned();
    assert!(tcb_info.contains("\"OutOfDate\""));
    // Promote the first OutOfDate level: the TCB info signature must no longer verify.
    raw["tcb_info"] = Value::String(tcb_info.replacen("\"OutOfDate\"", "\"UpToDate\"", 1));
    let tampered =
        Collateral::from_json(&serde_json::to_vec(&raw).expect("json")).expect("still parses");
    let err = TdxVerifier::default()
        .verify(&quote, &tampered, at(now), &expected_for(&quote))
        .expect_err("tampered TCB info");
    assert!(matches!(err, TdxError::Dcap { .. }), "{err}");
}

#[test]
fn kbs06_pck_chain_in_collateral_is_ignored() {
    // The quote's own PCK chain is verified; a chain smuggled into the collateral is not used.
    let (now, _) = pinned_dcap(DCAP_TDX, true);
    let quote = vector(DCAP_TDX);
    let mut raw: Value = json(DCAP_TDX_COLLATERAL);
    raw["pck_certificate_chain"] =
        Value::String("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned());
    let collateral =
        Collateral::from_json(&serde_json::to_vec(&raw).expect("json")).expect("parses");
    let verified = TdxVerifier::default()
        .verify(&quote, &collateral, at(now), &expected_for(&quote))
        .expect("verified with the quote's chain");
    assert_eq!(verified.tcb.map(|t| t.status), Some(TcbStatus::UpToDate));
}

#[test]
fn kbs06_tcb_status_outside_allow_list_refused() {
    let (now, _) = pinned_dcap(DCAP_TDX, true);
    let quote = vector(DCAP_TDX);
    let policy = TdxPolicy {
        allowed_tcb_statuses: vec![TcbStatus::SwHardeningNeeded],
        ..TdxPolicy::default()
    };
    let err = TdxVerifier::new(policy)
        .verify(
            &quote,
            &collateral(DCAP_TDX_COLLATERAL),
            at(now),
            &expected_for(&quote),
        )
        .expect_err("UpToDate not in the allow-list");
    assert!(
        matches!(
            err,
            TdxError::TcbStatusNotAllowed {
                status: TcbStatus::UpToDate,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn collateral_loads_from_a_directory_by_fmspc() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("B0C06F000000.json"),
        vector(DCAP_TDX_COLLATERAL),
    )
    .expect("write");
    let fmspc = [0xb0, 0xc0, 0x6f, 0, 0, 0];
    let loaded = Collateral::load(dir.path(), &fmspc).expect("by FMSPC");
    assert_eq!(loaded.fmspc(), fmspc);
    assert!(matches!(
        Collateral::load(dir.path(), &[0x50, 0x80, 0x6f, 0, 0, 0]),
        Err(TdxError::Collateral { .. })
    ));
    assert!(matches!(
        Collateral::from_json(b"{\"tcb_info\": 1}"),
        Err(TdxError::Collateral { .. })
    ));
}

// ---- reference values and expected data -----------------------------------------------------

#[test]
fn kbs06_reference_values_on_a_real_quote() {
    let (now, _) = pinned_dcap(DCAP_TDX, true);
    let quote = vector(DCAP_TDX);
    let body = &json("EXPECTED-signature-chain.json")[DCAP_TDX]["body"];
    let reg = |k: &str| <[u8; 48]>::try_from(hex_of(body, k)).expect("48 bytes");
    let collateral = collateral(DCAP_TDX_COLLATERAL);
    let expected = expected_for(&quote);

    let mut policy = TdxPolicy::default();
    policy.reference.mr_td = Some(vec![reg("mr_td")]);
    policy.reference.rtmr = [
        Some(vec![reg("rtmr0")]),
        Some(vec![reg("rtmr1")]),
        Some(vec![reg("rtmr2")]),
        None,
    ];
    policy.reference.mr_seam = Some(vec![reg("mr_seam")]);
    let verify =
        |p: &TdxPolicy| TdxVerifier::new(p.clone()).verify(&quote, &collateral, at(now), &expected);
    assert!(verify(&policy).is_ok());

    // Same MRTD, another kernel (RTMR1): refused.
    let mut other_kernel = policy.clone();
    other_kernel.reference.rtmr[1] = Some(vec![[0x11; 48]]);
    assert!(matches!(
        verify(&other_kernel),
        Err(TdxError::ReferenceMismatch {
            register: "rtmr1",
            ..
        })
    ));
    // A pinned register with no accepted value: refused.
    let mut empty = policy.clone();
    empty.reference.rtmr[2] = Some(Vec::new());
    assert!(matches!(
        verify(&empty),
        Err(TdxError::PinnedWithoutValue { register: "rtmr2" })
    ));
    let mut other_td = policy;
    other_td.reference.mr_td = Some(vec![[0x22; 48]]);
    assert!(matches!(
        verify(&other_td),
        Err(TdxError::ReferenceMismatch {
            register: "mr_td",
            ..
        })
    ));
}

#[test]
fn kbs03_report_data_and_mr_config_id_exact() {
    let (now, _) = pinned_dcap(DCAP_TDX, true);
    let quote = vector(DCAP_TDX);
    let collateral = collateral(DCAP_TDX_COLLATERAL);
    let good = expected_for(&quote);
    let verifier = TdxVerifier::default();

    let mut other_nonce = good.clone();
    other_nonce.report_data[0] ^= 0x80;
    assert!(matches!(
        verifier.verify(&quote, &collateral, at(now), &other_nonce),
        Err(TdxError::ReportDataMismatch { .. })
    ));
    // The quote's MRCONFIGID is zero: an init-data digest is expected, so it must not pass.
    let with_initdata = Expected {
        mr_config_id: Some([0x5a; 48]),
        ..good
    };
    assert!(matches!(
        verifier.verify(&quote, &collateral, at(now), &with_initdata),
        Err(TdxError::MrConfigIdMismatch { .. })
    ));
}

// ---- signatures and chain without collateral -----------------------------------------------

#[test]
fn kbs06_signatures_and_pck_chain_verify_for_every_quote() {
    let expected_json = json("EXPECTED-signature-chain.json");
    for name in QUOTES {
        let e = &expected_json[name];
        assert_eq!(e["quote_sig_valid"], true, "{name}");
        assert_eq!(e["pck_chain_valid_internal"], true, "{name}");
        let bytes = vector(name);
        assert_eq!(
            bytes.len() as u64,
            e["len"].as_u64().expect("len"),
            "{name}"
        );
        let quote = TdQuote::parse(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        let pck = verify_signatures(&bytes, &quote, at(NOV_2026))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(
            hex::encode_upper(pck.fmspc),
            e["fmspc"].as_str().expect("fmspc"),
            "{name}"
        );
        let not_after = pck
            .pck_not_after
            .duration_since(UNIX_EPOCH)
            .expect("after epoch")
            .as_secs();
        assert_eq!(
            not_after,
            parse_utc(e["pck_leaf_not_after"].as_str().expect("not_after")),
            "{name}"
        );
        // The CA is the second subject of the chain (component order aside).
        let mut want: Vec<&str> = e["pck_chain_subjects"][1]
            .as_str()
            .expect("subject")
            .split(',')
            .collect();
        let mut got: Vec<&str> = pck.ca_subject.split(',').collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "{name}");
        // The QE report identifies Intel's TD QE.
        assert_eq!(
            quote.qe_report[64..96].to_vec(),
            hex_of(e, "qe_mr_enclave"),
            "{name}"
        );
        assert_eq!(
            quote.qe_report[128..160].to_vec(),
            hex_of(e, "qe_mr_signer"),
            "{name}"
        );
    }
}

#[test]
fn kbs06_header_and_body_fields_match_expected() {
    let expected_json = json("EXPECTED-signature-chain.json");
    for name in QUOTES {
        let e = &expected_json[name];
        let body = &e["body"];
        let quote = TdQuote::parse(&vector(name)).unwrap_or_else(|err| panic!("{name}: {err}"));
        let r = &quote.report;
        assert_eq!(
            u64::from(quote.version),
            e["version"].as_u64().expect("v"),
            "{name}"
        );
        assert_eq!(e["tee_type"], "0x81", "{name}");
        assert_eq!(e["att_key_type"], 2, "{name}");
        assert_eq!(
            hex_of(e, "qe_vendor_id"),
            coffer_attestation::tdx::INTEL_QE_VENDOR_ID.to_vec()
        );
        let fields: [(&str, &[u8]); 15] = [
            ("tee_tcb_svn", &r.tee_tcb_svn),
            ("mr_seam", &r.mr_seam),
            ("mr_signer_seam", &r.mr_signer_seam),
            ("seam_attributes", &r.seam_attributes),
            ("td_attributes", &r.td_attributes.raw.to_le_bytes()),
            ("xfam", &r.xfam),
            ("mr_td", &r.mr_td),
            ("mr_config_id", &r.mr_config_id),
            ("mr_owner", &r.mr_owner),
            ("mr_owner_config", &r.mr_owner_config),
            ("rtmr0", &r.rtmr[0]),
            ("rtmr1", &r.rtmr[1]),
            ("rtmr2", &r.rtmr[2]),
            ("rtmr3", &r.rtmr[3]),
            ("report_data", &r.report_data),
        ];
        for (key, value) in fields {
            assert_eq!(value.to_vec(), hex_of(body, key), "{name} {key}");
        }
        match quote.version {
            5 => {
                assert_eq!(e["v5_body_type"], 3, "{name}: TDX 1.5 body");
                assert_eq!(
                    r.tee_tcb_svn2.map(|v| v.to_vec()),
                    Some(hex_of(body, "tee_tcb_svn2"))
                );
                assert_eq!(
                    r.mr_service_td.map(|v| v.to_vec()),
                    Some(hex_of(body, "mr_servicetd"))
                );
            }
            _ => assert!(
                r.tee_tcb_svn2.is_none() && r.mr_service_td.is_none(),
                "{name}"
            ),
        }
    }
}

#[test]
fn kbs06_v5_quote_parses_as_tdx15() {
    let quote = TdQuote::parse(&vector(TRUSTEE_V5)).expect("v5");
    assert_eq!(quote.version, 5);
    // Header (48) + body descriptor (6) + TD report 1.5 (648).
    assert_eq!(quote.signed_len, 48 + 6 + 648);
    assert!(quote.report.mr_service_td.is_some());
}

/// Checks `bytes` fails verification, without collateral, at NOV_2026.
fn rejected(bytes: &[u8]) -> Result<(), String> {
    match TdQuote::parse(bytes) {
        Err(_) => Ok(()),
        Ok(quote) => match verify_signatures(bytes, &quote, at(NOV_2026)) {
            Err(_) => Ok(()),
            Ok(_) => Err("accepted".to_owned()),
        },
    }
}

#[test]
fn kbs06_flipped_byte_in_signed_range_fails() {
    for name in QUOTES {
        let original = vector(name);
        let quote = TdQuote::parse(&original).expect("parses");
        // Every byte of the header (and v5 body descriptor), then a sweep over the body (every 13th byte), then the
        // registers that matter most (MRTD, RTMR1, REPORTDATA's last byte).
        let descriptor = if quote.version == 5 { 6 } else { 0 };
        let body = 48 + descriptor..quote.signed_len;
        let positions = (0..body.start).chain(body.clone().step_by(13)).chain([
            quote.signed_len - 1,
            quote.signed_len - 64,
            quote.signed_len - 64 - 48 * 3,
        ]);
        for pos in positions {
            let mut tampered = original.clone();
            tampered[pos] ^= 0x01;
            if let Err(why) = rejected(&tampered) {
                panic!("{name}: flip @{pos:#x} {why}");
            }
            if body.contains(&pos) {
                // A body flip decodes fine: only the signature can catch it.
                let parsed = TdQuote::parse(&tampered).expect("body flips still decode");
                assert!(
                    matches!(
                        verify_signatures(&tampered, &parsed, at(NOV_2026)),
                        Err(TdxError::QuoteSignature)
                    ),
                    "{name}: flip @{pos:#x}"
                );
            }
        }
    }
}

#[test]
fn kbs06_tampered_auth_data_fails_each_check() {
    let original = vector(DCAP_TDX);
    let quote = TdQuote::parse(&original).expect("parses");
    // Auth data: size(4) sig(64) att_key(64) cert_type(2) cert_size(4) qe_report(384) qe_sig(64)
    // qe_auth_size(2) qe_auth ...
    let auth = quote.signed_len + 4;
    let cases = [
        (auth, "quote signature"),
        (auth + 64, "attestation key"),
        (auth + 64 + 64 + 6 + 10, "QE report"),
        (auth + 64 + 64 + 6 + 384, "QE report signature"),
        (auth + 64 + 64 + 6 + 384 + 64 + 2, "QE auth data"),
    ];
    for (pos, what) in cases {
        let mut tampered = original.clone();
        tampered[pos] ^= 0x01;
        let parsed = TdQuote::parse(&tampered).expect("still decodes");
        let err = verify_signatures(&tampered, &parsed, at(NOV_2026)).expect_err(what);
        let fits = match what {
            "quote signature" => matches!(err, TdxError::QuoteSignature),
            "attestation key" | "QE auth data" => matches!(err, TdxError::QeReportBinding),
            _ => matches!(err, TdxError::QeReportSignature),
        };
        assert!(fits, "{what}: {err}");
    }
}

#[test]
fn kbs06_pck_chain_checked_at_now() {
    let bytes = vector(TRUSTEE_V4);
    let quote = TdQuote::parse(&bytes).expect("parses");
    // After the PCK certificate's notAfter (2030-02-07).
    let err = verify_signatures(&bytes, &quote, at(parse_utc("2030-02-08 00:00:00+00:00")))
        .expect_err("expired PCK");
    assert!(
        matches!(
            err,
            TdxError::CertificateValidity {
                role: CertRole::Pck,
                ..
            }
        ),
        "{err}"
    );
}

// ---- TD attributes -------------------------------------------------------------------------

#[test]
fn kbs06_debug_td_refused() {
    // trustee-tdx_quote_4.dat is a real debug TD (td_attributes 0x10000001): its signatures
    // verify, and the attribute policy refuses it.
    let bytes = vector(TRUSTEE_V4);
    let quote = TdQuote::parse(&bytes).expect("parses");
    assert!(quote.report.td_attributes.debug());
    assert!(verify_signatures(&bytes, &quote, at(NOV_2026)).is_ok());
    let err = TdxVerifier::default()
        .verify_signature_only(&bytes, at(NOV_2026), &expected_for(&bytes))
        .expect_err("debug TD");
    assert!(
        matches!(
            err,
            TdxError::TdAttributes {
                reason: "debug TD",
                ..
            }
        ),
        "{err}"
    );
    // Setting DEBUG in a copy of a non-debug quote breaks the signature before any policy.
    let mut debug = vector(DCAP_TDX);
    let attrs_at = 48 + 16 + 48 + 48 + 8; // header, tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes
    assert_eq!(debug[attrs_at] & 1, 0);
    debug[attrs_at] |= 1;
    let parsed = TdQuote::parse(&debug).expect("parses");
    assert!(parsed.report.td_attributes.debug());
    assert!(matches!(
        TdxVerifier::default().verify_signature_only(&debug, at(NOV_2026), &expected_for(&debug)),
        Err(TdxError::QuoteSignature)
    ));
}

#[test]
fn kbs06_v5_quote_with_service_td_needs_policy() {
    let bytes = vector(TRUSTEE_V5);
    let expected = expected_for(&bytes);
    let err = TdxVerifier::default()
        .verify_signature_only(&bytes, at(NOV_2026), &expected)
        .expect_err("MRSERVICETD is non-zero");
    assert!(matches!(err, TdxError::ServiceTd { .. }), "{err}");
    let allowing = TdxVerifier::new(TdxPolicy {
        allow_service_td: true,
        ..TdxPolicy::default()
    });
    let verified = allowing
        .verify_signature_only(&bytes, at(NOV_2026), &expected)
        .expect("signatures verify and the policy allows the service TD");
    assert!(verified.tcb.is_none(), "no collateral, no TCB verdict");
}

// ---- CCEL event log ------------------------------------------------------------------------

#[test]
fn kbs06_ccel_parses_and_replays() {
    let log = EventLog::parse(&vector("trustee-CCEL_data")).expect("CCEL parses");
    // td-shim's log: the TD HOB and a separator in RTMR0; a separator, the payload and the
    // payload info (kernel command line) in RTMR1.
    assert_eq!(log.events.len(), 5);
    let cmdline = log.events.last().expect("events");
    assert_eq!(cmdline.mr_index, 2, "payload info is measured into RTMR1");
    let text = String::from_utf8_lossy(&cmdline.data);
    assert!(text.contains("root=/dev/vda1"), "{text}");
    let replayed = log.replay();
    // Computed independently (Python hashlib over the same log).
    assert_eq!(
        hex::encode(replayed[0]),
        "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4"
    );
    assert_eq!(
        hex::encode(replayed[1]),
        "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf"
    );
    assert_eq!(replayed[2], [0; 48]);
    assert_eq!(replayed[3], [0; 48]);
}

#[test]
fn kbs06_ccel_that_does_not_replay_is_refused() {
    let log = EventLog::parse(&vector("trustee-CCEL_data")).expect("CCEL parses");
    // The log belongs to none of the quotes: checking it against one refuses at RTMR0.
    for name in QUOTES {
        let quote = TdQuote::parse(&vector(name)).expect("parses");
        assert!(
            matches!(
                log.check_against(&quote.report),
                Err(TdxError::EventLogReplay { index: 0, .. })
            ),
            "{name}"
        );
    }
    // Against a report carrying exactly the replayed registers it passes; altering one logged
    // digest (a different kernel command line) is caught at RTMR1.
    let mut report = TdQuote::parse(&vector(DCAP_TDX)).expect("parses").report;
    report.rtmr = log.replay();
    assert!(log.check_against(&report).is_ok());
    let mut altered = log.clone();
    if let Some(last) = altered.events.last_mut() {
        last.digest[0] ^= 1;
    }
    assert!(matches!(
        altered.check_against(&report),
        Err(TdxError::EventLogReplay { index: 1, .. })
    ));
}
