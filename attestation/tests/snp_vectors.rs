//! SEV-SNP verification against the real vectors in `tests/vectors/snp/` (see its README and
//! EXPECTED.json). Test names cite catalogue ID KBS-05. A missing vector fails the test.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_attestation::snp::{
    CertRole, Cpuid, Expected, Generation, MinimumTcb, Report, SigningKey, SnpError, SnpPolicy,
    SnpVerifier, TcbVersion, check_tcb_binding, verify_endorsement_key, verify_report_signature,
};
use serde_json::Value;

/// 2026-01-01T00:00:00Z: inside every VCEK's validity, after the VLEK expired.
const JAN_2026: u64 = 1_767_225_600;
/// 2025-06-01T00:00:00Z: inside the VLEK's validity (2024-12-10 .. 2025-12-10).
const JUN_2025: u64 = 1_748_736_000;
/// 2025-12-11T00:00:00Z: the day after the VLEK expired.
const DEC_11_2025: u64 = 1_765_411_200;

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

fn vector_path(name: &str) -> PathBuf {
    common::vectors_dir().join("snp").join(name)
}

fn vector(name: &str) -> Vec<u8> {
    let path = vector_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "SNP test vector {} is missing or unreadable: {e}",
            path.display()
        )
    })
}

/// A report by its EXPECTED.json name (the `.hex` one is hex-decoded).
fn report_bytes(name: &str) -> Vec<u8> {
    let raw = vector(name);
    if name.ends_with(".hex") {
        let text: String = String::from_utf8(raw)
            .unwrap_or_else(|e| panic!("{name} is not UTF-8: {e}"))
            .split_whitespace()
            .collect();
        hex::decode(text).unwrap_or_else(|e| panic!("{name} is not hex: {e}"))
    } else {
        raw
    }
}

fn expected_json() -> Value {
    serde_json::from_slice(&vector("EXPECTED.json"))
        .unwrap_or_else(|e| panic!("EXPECTED.json: {e}"))
}

/// (report, signing certificate, a time at which that certificate is valid)
const REPORTS: [(&str, &str, u64); 3] = [
    ("trustee-test-report.bin", "trustee-test-vcek.der", JAN_2026),
    (
        "virtee-sev-report_milan.hex",
        "virtee-sev-vcek_milan.der",
        JAN_2026,
    ),
    (
        "trustee-test-vlek-report.bin",
        "trustee-test-vlek.der",
        JUN_2025,
    ),
];

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("EXPECTED.json lacks {key}")),
    )
    .unwrap_or_else(|e| panic!("EXPECTED.json {key}: {e}"))
}

fn int_field(v: &Value, key: &str) -> u64 {
    match &v[key] {
        Value::Number(n) => n
            .as_u64()
            .unwrap_or_else(|| panic!("EXPECTED.json {key} is not unsigned")),
        Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16)
            .unwrap_or_else(|e| panic!("EXPECTED.json {key}: {e}")),
        other => panic!("EXPECTED.json field {key} is {other}"),
    }
}

fn assert_tcb(tcb: &TcbVersion, v: &Value, what: &str) {
    let got = [tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode].map(u64::from);
    let want = ["bootloader", "tee", "snp", "microcode"].map(|k| int_field(v, k));
    assert_eq!(got, want, "{what}");
    assert_eq!(tcb.raw.to_vec(), hex_field(v, "raw"), "{what} raw");
}

fn expected_for(report: &Report) -> Expected {
    Expected {
        report_data: report.report_data,
        host_data: Some(report.host_data),
    }
}

fn trustee() -> (Vec<u8>, Vec<u8>) {
    (
        report_bytes("trustee-test-report.bin"),
        vector("trustee-test-vcek.der"),
    )
}

fn verify_default(report: &[u8], vcek: &[u8]) -> Result<(), SnpError> {
    let parsed = Report::parse(report)?;
    SnpVerifier::default()
        .verify(report, vcek, at(JAN_2026), &expected_for(&parsed))
        .map(|_| ())
}

// ---- chain ----------------------------------------------------------------------------------

#[test]
fn kbs05_chain_ok_for_milan_vceks() {
    for name in ["trustee-test-vcek.der", "virtee-sev-vcek_milan.der"] {
        let key = verify_endorsement_key(&vector(name), at(JAN_2026))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (key.role, key.generation),
            (CertRole::Vcek, Generation::Milan),
            "{name}"
        );
        assert_eq!(
            (
                key.tcb.bootloader,
                key.tcb.tee,
                key.tcb.snp,
                key.tcb.microcode
            ),
            (3, 0, 8, 115),
            "{name}"
        );
        assert_eq!(key.hw_id.as_ref().map(Vec::len), Some(64), "{name}");
    }
}

#[test]
fn kbs05_chain_ok_for_turin_vcek() {
    let key = verify_endorsement_key(&vector("virtee-sev-vcek_turin.der"), at(JAN_2026)).unwrap();
    assert_eq!(
        (key.role, key.generation),
        (CertRole::Vcek, Generation::Turin)
    );
    assert_eq!(key.tcb.fmc, Some(0));
    assert_eq!(key.tcb.microcode, 9);
    assert_eq!(key.hw_id.as_ref().map(Vec::len), Some(8));
}

#[test]
fn kbs05_invalid_vceks_fail_ask_signature() {
    for name in [
        "trustee-test-vcek-invalid-legacy.der",
        "trustee-test-vcek-invalid-new.der",
    ] {
        let err = verify_endorsement_key(&vector(name), at(JAN_2026)).unwrap_err();
        assert!(
            matches!(
                err,
                SnpError::CertificateSignature {
                    role: CertRole::Vcek,
                    issuer: CertRole::Ask
                }
            ),
            "{name}: {err}"
        );
    }
}

/// Verified signatures are remembered per process; that memo must never turn a bad signature or
/// an expired certificate into an acceptance once the chain has been verified before.
#[test]
fn kbs05_remembered_chain_still_refuses_bad_and_expired() {
    let good = vector("trustee-test-vcek.der");
    for _ in 0..2 {
        verify_endorsement_key(&good, at(JAN_2026)).unwrap();
    }
    for name in [
        "trustee-test-vcek-invalid-legacy.der",
        "trustee-test-vcek-invalid-new.der",
    ] {
        assert!(
            verify_endorsement_key(&vector(name), at(JAN_2026)).is_err(),
            "{name}"
        );
    }
    let vlek = vector("trustee-test-vlek.der");
    verify_endorsement_key(&vlek, at(JUN_2025)).unwrap();
    assert!(
        verify_endorsement_key(&vlek, at(JAN_2026)).is_err(),
        "expired VLEK accepted"
    );
}

#[test]
fn kbs05_vlek_chain_accepted_only_before_expiry() {
    let vlek = vector("trustee-test-vlek.der");
    let key = verify_endorsement_key(&vlek, at(JUN_2025)).unwrap();
    assert_eq!(
        (key.role, key.generation, key.hw_id.clone()),
        (CertRole::Vlek, Generation::Milan, None)
    );
    for now in [SystemTime::now(), at(DEC_11_2025)] {
        let err = verify_endorsement_key(&vlek, now).unwrap_err();
        assert!(
            matches!(
                err,
                SnpError::CertificateValidity {
                    role: CertRole::Vlek,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn kbs05_vcek_rejected_outside_validity() {
    // 2022-01-01 (before its 2023-01-24 start) and 2031-01-01 (after its 2030-01-24 end), both
    // inside the ARK/ASK validity.
    for now in [1_640_995_200, 1_924_992_000] {
        let err = verify_endorsement_key(&vector("trustee-test-vcek.der"), at(now)).unwrap_err();
        assert!(
            matches!(
                err,
                SnpError::CertificateValidity {
                    role: CertRole::Vcek,
                    ..
                }
            ),
            "{err}"
        );
    }
}

// ---- report signature -----------------------------------------------------------------------

#[test]
fn kbs05_report_signature_valid_with_its_key() {
    for (report_name, key_name, now) in REPORTS {
        let bytes = report_bytes(report_name);
        let key = verify_endorsement_key(&vector(key_name), at(now)).unwrap();
        let report = Report::parse(&bytes).unwrap();
        verify_report_signature(&bytes, &report, &key)
            .unwrap_or_else(|e| panic!("{report_name}: {e}"));
    }
}

#[test]
fn kbs05_report_signature_fails_with_another_key() {
    let bytes = report_bytes("trustee-test-report.bin");
    let other = verify_endorsement_key(&vector("virtee-sev-vcek_milan.der"), at(JAN_2026)).unwrap();
    let report = Report::parse(&bytes).unwrap();
    assert!(matches!(
        verify_report_signature(&bytes, &report, &other),
        Err(SnpError::Signature { .. })
    ));
}

#[test]
fn kbs05_flipped_byte_in_signed_range_fails_signature() {
    // version, guest_svn, policy, family_id, vmpl, current_tcb, plat_info, report_data (first,
    // last), measurement (first, last), host_data, id_key_digest, report_id, reported_tcb,
    // chip_id, committed_tcb, launch_tcb, last signed byte.
    let named = [
        0x00, 0x04, 0x08, 0x0A, 0x10, 0x30, 0x38, 0x40, 0x50, 0x8F, 0x90, 0xBF, 0xC0, 0xE0, 0x140,
        0x180, 0x1A0, 0x1E0, 0x1F0, 0x29F,
    ];
    for (report_name, key_name, now) in REPORTS {
        let original = report_bytes(report_name);
        let key = verify_endorsement_key(&vector(key_name), at(now)).unwrap();
        for pos in named {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x01;
            let report =
                Report::parse(&bytes).unwrap_or_else(|e| panic!("{report_name} @{pos:#x}: {e}"));
            let err = verify_report_signature(&bytes, &report, &key).unwrap_err();
            assert!(
                matches!(err, SnpError::Signature { .. }),
                "{report_name} @{pos:#x}: {err}"
            );
        }
        // A sweep over the whole signed range (every 23rd byte): any flip must be rejected,
        // either by parsing (e.g. version) or by the signature.
        for pos in (1..0x2A0).step_by(23) {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x80;
            let rejected =
                Report::parse(&bytes).and_then(|r| verify_report_signature(&bytes, &r, &key));
            assert!(rejected.is_err(), "{report_name}: flip @{pos:#x} accepted");
        }
    }
}

// ---- parsing ----------------------------------------------------------------------------------

#[test]
fn kbs05_parsed_fields_equal_expected_json() {
    let json = expected_json();
    for (name, _, _) in REPORTS {
        let v = &json[name];
        let bytes = report_bytes(name);
        assert_eq!(bytes.len() as u64, int_field(v, "len"), "{name} len");
        let r = Report::parse(&bytes).unwrap();
        assert_eq!(u64::from(r.version), int_field(v, "version"), "{name}");
        assert_eq!(u64::from(r.guest_svn), int_field(v, "guest_svn"), "{name}");
        assert_eq!(r.policy.raw, int_field(v, "policy"), "{name}");
        assert_eq!(r.family_id.to_vec(), hex_field(v, "family_id"), "{name}");
        assert_eq!(r.image_id.to_vec(), hex_field(v, "image_id"), "{name}");
        assert_eq!(u64::from(r.vmpl), int_field(v, "vmpl"), "{name}");
        assert_eq!(u64::from(r.sig_algo), int_field(v, "sig_algo"), "{name}");
        assert_eq!(r.plat_info, int_field(v, "plat_info"), "{name}");
        let signing_key = match v["signing_key"].as_str() {
            Some("VCEK") => SigningKey::Vcek,
            Some("VLEK") => SigningKey::Vlek,
            other => panic!("{name}: signing_key {other:?}"),
        };
        assert_eq!(r.signing_key, signing_key, "{name}");
        assert_eq!(
            r.report_data.to_vec(),
            hex_field(v, "report_data"),
            "{name}"
        );
        assert_eq!(
            r.measurement.to_vec(),
            hex_field(v, "measurement"),
            "{name}"
        );
        assert_eq!(r.host_data.to_vec(), hex_field(v, "host_data"), "{name}");
        assert_eq!(
            r.id_key_digest.to_vec(),
            hex_field(v, "id_key_digest"),
            "{name}"
        );
        assert_eq!(
            r.author_key_digest.to_vec(),
            hex_field(v, "author_key_digest"),
            "{name}"
        );
        assert_eq!(r.report_id.to_vec(), hex_field(v, "report_id"), "{name}");
        assert_eq!(
            r.report_id_ma.to_vec(),
            hex_field(v, "report_id_ma"),
            "{name}"
        );
        assert_eq!(
            r.cpuid
                .map(|c| vec![c.family, c.model, c.stepping])
                .unwrap_or_else(|| vec![0; 3]),
            hex_field(v, "cpuid_fam_mod_step"),
            "{name}"
        );
        assert_eq!(r.chip_id.to_vec(), hex_field(v, "chip_id"), "{name}");
        assert_eq!(
            r.current_build_minor_major.to_vec(),
            hex_field(v, "current_build_minor_major"),
            "{name}"
        );
        assert_eq!(
            r.committed_build_minor_major.to_vec(),
            hex_field(v, "committed_build_minor_major"),
            "{name}"
        );
        assert_tcb(&r.current_tcb, &v["current_tcb"], name);
        assert_tcb(&r.reported_tcb, &v["reported_tcb"], name);
        assert_tcb(&r.committed_tcb, &v["committed_tcb"], name);
        assert_tcb(&r.launch_tcb, &v["launch_tcb"], name);
    }
}

#[test]
fn kbs05_trustee_report_policy_bits_decoded() {
    let r = Report::parse(&report_bytes("trustee-test-report.bin")).unwrap();
    assert_eq!((r.policy.abi_major, r.policy.abi_minor), (0, 0x1f));
    assert!(r.policy.smt_allowed);
    assert!(!r.policy.debug_allowed && !r.policy.migrate_ma_allowed && !r.policy.single_socket);
}

#[test]
fn kbs05_truncated_report_is_a_length_error() {
    let bytes = report_bytes("trustee-test-report.bin");
    let err = Report::parse(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::ReportLength {
                expected: 0x4A0,
                found: 0x49F
            }
        ),
        "{err}"
    );
}

// ---- full verification --------------------------------------------------------------------------

#[test]
fn kbs05_full_verify_accepts_genuine_vcek_reports() {
    for (report_name, key_name, now) in &REPORTS[..2] {
        let bytes = report_bytes(report_name);
        let expected = expected_for(&Report::parse(&bytes).unwrap());
        let verified = SnpVerifier::new(SnpPolicy::default())
            .verify(&bytes, &vector(key_name), at(*now), &expected)
            .unwrap_or_else(|e| panic!("{report_name}: {e}"));
        assert_eq!(
            (verified.signer, verified.generation),
            (CertRole::Vcek, Generation::Milan)
        );
    }
}

#[test]
fn kbs05_tcb_binding_fails_when_reported_tcb_incremented() {
    let (mut bytes, vcek) = trustee();
    let key = verify_endorsement_key(&vcek, at(JAN_2026)).unwrap();
    check_tcb_binding(&Report::parse(&bytes).unwrap(), &key).unwrap();
    bytes[0x180] += 1;
    let err = check_tcb_binding(&Report::parse(&bytes).unwrap(), &key).unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::TcbMismatch {
                component: "bootloader",
                report: 4,
                certificate: 3
            }
        ),
        "{err}"
    );
    // Through the full verifier the forged report is also refused (the signature breaks first).
    assert!(verify_default(&bytes, &vcek).is_err());
}

#[test]
fn kbs05_chip_id_must_match_vcek_hwid_and_be_nonzero() {
    let (mut bytes, _) = trustee();
    // Same TCB (3/0/8/115) but another chip: only the hwID binding tells them apart.
    let other = verify_endorsement_key(&vector("virtee-sev-vcek_milan.der"), at(JAN_2026)).unwrap();
    let err = check_tcb_binding(&Report::parse(&bytes).unwrap(), &other).unwrap_err();
    assert!(matches!(err, SnpError::ChipIdMismatch), "{err}");
    bytes[0x1A0..0x1E0].fill(0);
    let own = verify_endorsement_key(&vector("trustee-test-vcek.der"), at(JAN_2026)).unwrap();
    let err = check_tcb_binding(&Report::parse(&bytes).unwrap(), &own).unwrap_err();
    assert!(matches!(err, SnpError::ChipIdZero), "{err}");
}

#[test]
fn kbs05_debug_policy_rejected() {
    let (mut bytes, vcek) = trustee();
    bytes[0x08 + 2] |= 1 << 3; // policy bit 19
    let err = verify_default(&bytes, &vcek).unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::GuestPolicy {
                bit: "debug allowed",
                ..
            }
        ),
        "{err}"
    );
    // Allowing debug moves the failure on to the (now broken) signature.
    let policy = SnpPolicy {
        allow_debug: true,
        ..SnpPolicy::default()
    };
    let expected = expected_for(&Report::parse(&bytes).unwrap());
    let err = SnpVerifier::new(policy)
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap_err();
    assert!(matches!(err, SnpError::Signature { .. }), "{err}");
}

#[test]
fn kbs05_migrate_ma_policy_rejected() {
    let (mut bytes, vcek) = trustee();
    bytes[0x08 + 2] |= 1 << 2; // policy bit 18
    let err = verify_default(&bytes, &vcek).unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::GuestPolicy {
                bit: "migration agent allowed",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn kbs05_smt_and_single_socket_rules() {
    let (bytes, vcek) = trustee();
    let expected = expected_for(&Report::parse(&bytes).unwrap());
    for policy in [
        SnpPolicy {
            allow_smt: false,
            ..SnpPolicy::default()
        },
        SnpPolicy {
            require_single_socket: true,
            ..SnpPolicy::default()
        },
    ] {
        let err = SnpVerifier::new(policy)
            .verify(&bytes, &vcek, at(JAN_2026), &expected)
            .unwrap_err();
        assert!(matches!(err, SnpError::GuestPolicy { .. }), "{err}");
    }
}

#[test]
fn kbs05_nonzero_vmpl_rejected() {
    for vmpl in [1u8, 2, 3] {
        let (mut bytes, vcek) = trustee();
        bytes[0x30] = vmpl;
        let err = verify_default(&bytes, &vcek).unwrap_err();
        assert!(
            matches!(err, SnpError::Vmpl { found } if found == u32::from(vmpl)),
            "{err}"
        );
    }
    // The genuine VLEK report was requested from VMPL 1.
    let bytes = report_bytes("trustee-test-vlek-report.bin");
    let policy = SnpPolicy {
        allow_vlek: true,
        ..SnpPolicy::default()
    };
    let expected = expected_for(&Report::parse(&bytes).unwrap());
    let err = SnpVerifier::new(policy)
        .verify(
            &bytes,
            &vector("trustee-test-vlek.der"),
            at(JUN_2025),
            &expected,
        )
        .unwrap_err();
    assert!(matches!(err, SnpError::Vmpl { found: 1 }), "{err}");
}

#[test]
fn kbs05_report_version_minimum_is_a_policy_field() {
    let (bytes, vcek) = trustee();
    let report = Report::parse(&bytes).unwrap();
    assert_eq!(report.version, 2);
    SnpVerifier::default().check_fields(&report).unwrap();
    let strict = SnpVerifier::new(SnpPolicy {
        min_report_version: 3,
        ..SnpPolicy::default()
    });
    let err = strict
        .verify(&bytes, &vcek, at(JAN_2026), &expected_for(&report))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::VersionBelowMinimum {
                minimum: 3,
                found: 2
            }
        ),
        "{err}"
    );
    // The v3 VLEK report passes the version check under the strict minimum (and stops at VMPL).
    let v3 = Report::parse(&report_bytes("trustee-test-vlek-report.bin")).unwrap();
    assert!(matches!(
        strict.check_fields(&v3),
        Err(SnpError::Vmpl { found: 1 })
    ));
}

#[test]
fn kbs05_vlek_where_vcek_expected_rejected() {
    let vlek = vector("trustee-test-vlek.der");
    // A VCEK-signed report presented with a VLEK certificate.
    let (bytes, _) = trustee();
    let expected = expected_for(&Report::parse(&bytes).unwrap());
    let policy = SnpPolicy {
        allow_vlek: true,
        ..SnpPolicy::default()
    };
    let err = SnpVerifier::new(policy)
        .verify(&bytes, &vlek, at(JUN_2025), &expected)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::SigningKeyMismatch {
                report: SigningKey::Vcek,
                certificate: CertRole::Vlek
            }
        ),
        "{err}"
    );
    // A VLEK report (VMPL forced to 0) under the default VCEK-only policy.
    let mut bytes = report_bytes("trustee-test-vlek-report.bin");
    bytes[0x30] = 0;
    let expected = expected_for(&Report::parse(&bytes).unwrap());
    let err = SnpVerifier::default()
        .verify(&bytes, &vlek, at(JUN_2025), &expected)
        .unwrap_err();
    assert!(matches!(err, SnpError::VlekNotAllowed), "{err}");
}

#[test]
fn kbs05_report_generation_must_match_chain() {
    let (mut bytes, vcek) = trustee();
    bytes[0x00] = 3;
    bytes[0x188] = 0x1A; // Turin family
    let err = verify_default(&bytes, &vcek).unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::GenerationMismatch {
                report: Generation::Turin,
                chain: Generation::Milan
            }
        ),
        "{err}"
    );
}

#[test]
fn kbs05_report_data_mismatch_rejected() {
    let (bytes, vcek) = trustee();
    let mut expected = expected_for(&Report::parse(&bytes).unwrap());
    expected.report_data[63] ^= 1;
    let err = SnpVerifier::default()
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap_err();
    assert!(matches!(err, SnpError::ReportDataMismatch { .. }), "{err}");
}

#[test]
fn kbs05_host_data_mismatch_rejected() {
    let (bytes, vcek) = trustee();
    let mut expected = expected_for(&Report::parse(&bytes).unwrap());
    expected.host_data = Some([0xAB; 32]);
    let err = SnpVerifier::default()
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap_err();
    assert!(matches!(err, SnpError::HostDataMismatch { .. }), "{err}");
    // Not expecting host_data skips the check.
    expected.host_data = None;
    SnpVerifier::default()
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap();
}

#[test]
fn kbs05_minimum_tcb_and_measurement_reference_values() {
    let (bytes, vcek) = trustee();
    let report = Report::parse(&bytes).unwrap();
    let expected = expected_for(&report);
    let min = MinimumTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: 0,
    };
    let ok = SnpPolicy {
        min_reported_tcb: Some(min),
        min_launch_tcb: Some(min),
        ..SnpPolicy::default()
    };
    SnpVerifier::new(ok)
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap();
    let high = SnpPolicy {
        min_reported_tcb: Some(MinimumTcb {
            microcode: 116,
            ..min
        }),
        ..SnpPolicy::default()
    };
    let err = SnpVerifier::new(high)
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::TcbBelowMinimum {
                which: "reported",
                component: "microcode",
                minimum: 116,
                found: 115
            }
        ),
        "{err}"
    );
    let listed = SnpPolicy {
        allowed_measurements: vec![report.measurement],
        ..SnpPolicy::default()
    };
    SnpVerifier::new(listed)
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap();
    let other = SnpPolicy {
        allowed_measurements: vec![[0u8; 48]],
        ..SnpPolicy::default()
    };
    let err = SnpVerifier::new(other)
        .verify(&bytes, &vcek, at(JAN_2026), &expected)
        .unwrap_err();
    assert!(
        matches!(err, SnpError::MeasurementNotAllowed { .. }),
        "{err}"
    );
}

// ---- report versions v2..v5 -------------------------------------------------------------------
//
// No vector is v4 or v5, so the real reports are rewritten: the version field (and the bytes a
// version defines) lie in the signed range, so such a report can only test parsing; the
// signature tests below show that the same rewrite is refused by the signature check.

const LAUNCH_MIT: u64 = 0x0102_0304_0506_0708;
const CURRENT_MIT: u64 = 0x1112_1314_1516_1718;

/// The genuine `bytes` rewritten to `version`, with CPUID `cpuid` at 0x188 and the two
/// mitigation vectors at 0x1F8/0x200 (reserved bytes in the versions that do not define them).
fn rewritten(bytes: &[u8], version: u32, cpuid: [u8; 3]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[0x00..0x04].copy_from_slice(&version.to_le_bytes());
    b[0x188..0x18B].copy_from_slice(&cpuid);
    b[0x1F8..0x200].copy_from_slice(&LAUNCH_MIT.to_le_bytes());
    b[0x200..0x208].copy_from_slice(&CURRENT_MIT.to_le_bytes());
    b
}

#[test]
fn kbs05_report_versions_2_to_5_parse_with_their_fields() {
    for (name, _, _) in REPORTS {
        let genuine = report_bytes(name);
        let base = Report::parse(&genuine).unwrap();
        for version in 2..=5u32 {
            let r = Report::parse(&rewritten(&genuine, version, [0x19, 0x01, 0x01])).unwrap();
            let what = format!("{name} as v{version}");
            assert_eq!(r.version, version, "{what}");
            // The fields every version shares are the genuine report's.
            assert_eq!(r.measurement, base.measurement, "{what}");
            assert_eq!(r.report_data, base.report_data, "{what}");
            assert_eq!(r.host_data, base.host_data, "{what}");
            assert_eq!(r.chip_id, base.chip_id, "{what}");
            assert_eq!(r.reported_tcb, base.reported_tcb, "{what}");
            assert_eq!(r.launch_tcb, base.launch_tcb, "{what}");
            assert_eq!(r.policy, base.policy, "{what}");
            assert_eq!(r.signing_key, base.signing_key, "{what}");
            assert_eq!(
                (r.signature_r, r.signature_s),
                (base.signature_r, base.signature_s),
                "{what}"
            );
            if version >= 3 {
                let milan = Cpuid {
                    family: 0x19,
                    model: 0x01,
                    stepping: 0x01,
                };
                assert_eq!(r.cpuid, Some(milan), "{what}");
                assert_eq!(r.generation(), Some(Generation::Milan), "{what}");
            } else {
                // v2: 0x188 is reserved and not read.
                assert_eq!((r.cpuid, r.generation()), (None, None), "{what}");
            }
            if version >= 5 {
                assert_eq!(r.launch_mit_vector, Some(LAUNCH_MIT), "{what}");
                assert_eq!(r.current_mit_vector, Some(CURRENT_MIT), "{what}");
            } else {
                // Before v5, 0x1F8..0x208 is reserved and not read.
                assert_eq!(
                    (r.launch_mit_vector, r.current_mit_vector),
                    (None, None),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn kbs05_turin_cpuid_selects_the_turin_tcb_layout_in_v3_to_v5() {
    let genuine = report_bytes("trustee-test-report.bin");
    let raw = Report::parse(&genuine).unwrap().reported_tcb.raw;
    for version in 3..=5u32 {
        let r = Report::parse(&rewritten(&genuine, version, [0x1A, 0x02, 0x00])).unwrap();
        assert_eq!(r.generation(), Some(Generation::Turin), "v{version}");
        assert_eq!(r.reported_tcb, TcbVersion::decode(raw, true), "v{version}");
        assert_eq!(r.reported_tcb.fmc, Some(raw[0]), "v{version}");
    }
    // v2 has no CPUID: the same bytes keep the Milan/Genoa layout.
    let r = Report::parse(&rewritten(&genuine, 2, [0x1A, 0x02, 0x00])).unwrap();
    assert_eq!(r.reported_tcb, TcbVersion::decode(raw, false));
}

#[test]
fn kbs05_other_report_versions_are_a_typed_error() {
    for (name, _, _) in REPORTS {
        let genuine = report_bytes(name);
        for version in [0u32, 1, 6, 7, 0x100, u32::MAX] {
            let err = Report::parse(&rewritten(&genuine, version, [0x19, 0x01, 0x01])).unwrap_err();
            assert!(
                matches!(err, SnpError::UnsupportedVersion { found } if found == version),
                "{name} as v{version}: {err}"
            );
        }
    }
}

#[test]
fn kbs05_rewritten_version_fails_the_signature_check() {
    for (name, cert, valid_at) in REPORTS {
        let genuine = report_bytes(name);
        let key = verify_endorsement_key(&vector(cert), at(valid_at)).unwrap();
        let base = Report::parse(&genuine).unwrap();
        verify_report_signature(&genuine, &base, &key).unwrap();
        for version in (2..=5u32).filter(|&v| v != base.version) {
            let mut bytes = genuine.clone();
            bytes[0x00..0x04].copy_from_slice(&version.to_le_bytes());
            let r = Report::parse(&bytes).unwrap();
            assert!(
                matches!(
                    verify_report_signature(&bytes, &r, &key),
                    Err(SnpError::Signature { .. })
                ),
                "{name} as v{version} passed the signature check"
            );
        }
    }
    // And through the full verifier: the genuine v2 report verifies, its v5 rewrite does not.
    let (bytes, vcek) = trustee();
    verify_default(&bytes, &vcek).unwrap();
    let v5 = rewritten(&bytes, 5, [0, 0, 0]);
    assert!(matches!(
        verify_default(&v5, &vcek),
        Err(SnpError::Signature { .. })
    ));
}
