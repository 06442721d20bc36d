//! KBS-05 "revoked VCEK (CRL)": SNP evidence against AMD-shaped CRLs (X.509 v2, issued and
//! signed by the ARK with RSASSA-PSS/SHA-384, DER as KDS's `/vcek/v1/{product}/crl` serves it)
//! that the test chain's ARK signs (`SnpTestChain::issue_crl`). There is no real AMD CRL in
//! `tests/vectors/` (none was published with provenance we could copy), so the real format is
//! exercised through these: DER and PEM, parsed by the same code a KDS file goes through.
//!
//! A revoked VCEK or ASK is refused naming the certificate and its serial; an unrelated serial
//! is accepted; a CRL signed by another key, out of date at the (injected) clock, filed for the
//! wrong product, or missing where one is required is refused.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_attestation::snp::{
    AmdCrl, AmdRoots, CertRole, CrlKind, CrlSet, Expected, Generation, Report, SnpError, SnpPolicy,
    SnpVerifier, VerifiedReport,
};
use coffer_attestation::testing::SNP_GENERATION;
use coffer_attestation::testing::snp::{CrlSpec, SnpFields, SnpTestChain};

const HOUR: Duration = Duration::from_secs(3600);

/// The chain the evidence comes from (RSA-3072 keys take a moment: one per file).
fn chain() -> &'static SnpTestChain {
    static CHAIN: OnceLock<SnpTestChain> = OnceLock::new();
    CHAIN.get_or_init(|| SnpTestChain::generate(30).unwrap())
}

/// Another chain with the same names and other keys.
fn impostor() -> &'static SnpTestChain {
    static CHAIN: OnceLock<SnpTestChain> = OnceLock::new();
    CHAIN.get_or_init(|| SnpTestChain::generate(30).unwrap())
}

fn fields() -> SnpFields {
    SnpFields {
        measurement: [3; 48],
        report_data: [4; 64],
        ..SnpFields::default()
    }
}

/// A CRL as the test chain's ARK issues it, required, filed as `generation`'s `kind` CRL.
fn crls(der: &[u8], generation: Generation, kind: CrlKind) -> CrlSet {
    let mut set = CrlSet::new(true);
    set.insert(generation, kind, AmdCrl::from_der(der).unwrap())
        .unwrap();
    set
}

fn milan(der: &[u8]) -> CrlSet {
    crls(der, SNP_GENERATION, CrlKind::Vcek)
}

/// Forges `fields` with the test chain and verifies it with `crls` at `now`.
fn verify(fields: &SnpFields, crls: CrlSet, now: SystemTime) -> Result<VerifiedReport, SnpError> {
    let forged = chain().forge(fields).unwrap();
    let (ark, ask) = chain().roots_pem().unwrap();
    let roots = AmdRoots::testing(SNP_GENERATION, ark.as_bytes(), ask.as_bytes()).unwrap();
    SnpVerifier::new(SnpPolicy::default())
        .trusting_testing_roots(vec![roots])
        .with_crls(crls)
        .verify(
            &forged.report,
            &forged.vcek_der,
            now,
            &Expected {
                report_data: fields.report_data,
                host_data: None,
            },
        )
}

fn revoking(serials: Vec<Vec<u8>>) -> Vec<u8> {
    chain()
        .issue_crl(&CrlSpec {
            revoked: serials,
            ..CrlSpec::default()
        })
        .unwrap()
}

#[test]
fn kbs05_crl_revoked_vcek_refused_naming_certificate_and_serial() {
    let f = fields();
    let serial = SnpTestChain::vcek_serial(&f);
    let err = verify(
        &f,
        milan(&revoking(vec![serial.clone()])),
        SystemTime::now(),
    )
    .unwrap_err();
    match &err {
        SnpError::Revoked {
            role,
            serial: quoted,
            generation,
            kind,
        } => {
            assert_eq!(*role, CertRole::Vcek);
            assert_eq!(*quoted, hex::encode(&serial));
            assert_eq!((*generation, *kind), (SNP_GENERATION, CrlKind::Vcek));
        }
        other => panic!("expected Revoked, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "VCEK certificate serial {} is revoked",
            hex::encode(&serial)
        )),
        "{message}"
    );
    // Another chip (so another VCEK) of the same chain is not affected.
    let other_chip = SnpFields {
        chip_id: [0xC1; 64],
        ..f
    };
    verify(
        &other_chip,
        milan(&revoking(vec![serial])),
        SystemTime::now(),
    )
    .unwrap();
}

#[test]
fn kbs05_crl_revoked_ask_refused() {
    let crl = revoking(vec![chain().ask_serial()]);
    let err = verify(&fields(), milan(&crl), SystemTime::now()).unwrap_err();
    assert!(
        matches!(
            &err,
            SnpError::Revoked { role: CertRole::Ask, serial, .. }
                if *serial == hex::encode(chain().ask_serial())
        ),
        "{err}"
    );
}

#[test]
fn kbs05_crl_unrelated_serial_accepted() {
    let f = fields();
    let unrelated = vec![0x42; 16];
    assert_ne!(unrelated, SnpTestChain::vcek_serial(&f));
    let verified = verify(&f, milan(&revoking(vec![unrelated])), SystemTime::now()).unwrap();
    assert!(verified.testing);
    // An empty CRL too.
    verify(&f, milan(&revoking(Vec::new())), SystemTime::now()).unwrap();
}

#[test]
fn kbs05_crl_signed_by_another_key_refused() {
    // Same issuer name (the test ARK's), another ARK key: only the signature tells them apart,
    // and it is checked even though the CRL would revoke nothing.
    let forged_crl = impostor().issue_crl(&CrlSpec::default()).unwrap();
    let err = verify(&fields(), milan(&forged_crl), SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, SnpError::CrlSignature { generation, kind: CrlKind::Vcek } if generation == SNP_GENERATION),
        "{err}"
    );
}

#[test]
fn kbs05_crl_expired_refused_at_the_injected_clock() {
    let now = SystemTime::now();
    let crl = chain()
        .issue_crl(&CrlSpec {
            revoked: Vec::new(),
            this_update: now - HOUR,
            next_update: Some(now + HOUR),
        })
        .unwrap();
    // Current now; two hours later (nextUpdate past) refused, as before its thisUpdate.
    verify(&fields(), milan(&crl), now).unwrap();
    for at in [now + 2 * HOUR, now - 2 * HOUR] {
        let err = verify(&fields(), milan(&crl), at).unwrap_err();
        assert!(matches!(err, SnpError::CrlValidity { .. }), "{err}");
    }
    // A CRL already past its nextUpdate at the real clock.
    let expired = chain()
        .issue_crl(&CrlSpec {
            revoked: Vec::new(),
            this_update: now - 48 * HOUR,
            next_update: Some(now - HOUR),
        })
        .unwrap();
    let err = verify(&fields(), milan(&expired), now).unwrap_err();
    assert!(err.to_string().contains("CRL is not current"), "{err}");
    // Without nextUpdate its freshness cannot be judged: refused.
    let open_ended = chain()
        .issue_crl(&CrlSpec {
            next_update: None,
            ..CrlSpec::default()
        })
        .unwrap();
    let err = verify(&fields(), milan(&open_ended), now).unwrap_err();
    assert!(
        matches!(&err, SnpError::CrlFormat { reason } if reason.contains("nextUpdate")),
        "{err}"
    );
}

#[test]
fn kbs05_crl_for_the_wrong_product_refused() {
    let crl = AmdCrl::from_der(&revoking(Vec::new())).unwrap();
    // The test ARK is `CN=ARK-Milan-TESTING`: filing its CRL as Genoa's (or Turin's) is refused.
    for generation in [Generation::Genoa, Generation::Turin] {
        let err = CrlSet::new(true)
            .insert(generation, CrlKind::Vcek, crl.clone())
            .unwrap_err();
        assert!(
            matches!(&err, SnpError::CrlProduct { generation: g, issuer, .. }
                if *g == generation && issuer.contains("ARK-Milan-TESTING")),
            "{err}"
        );
    }
    // The same through a CRL directory: `genoa.crl` holding a Milan CRL names the file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("genoa.crl"), revoking(Vec::new())).unwrap();
    let err = CrlSet::load_dir(dir.path(), true).unwrap_err();
    match &err {
        SnpError::CrlFile { path, source } => {
            assert!(path.ends_with("genoa.crl"));
            assert!(matches!(**source, SnpError::CrlProduct { .. }), "{source}");
        }
        other => panic!("expected CrlFile, got {other}"),
    }
    // And Milan evidence with only a Genoa slot filled (had it been accepted) has no CRL.
    let err = verify(&fields(), CrlSet::new(true), SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, SnpError::CrlMissing { generation, kind: CrlKind::Vcek } if generation == SNP_GENERATION),
        "{err}"
    );
}

#[test]
fn kbs05_crl_required_covers_the_key_kind_and_optional_passes_without_one() {
    // The VLEK CRL (of the ASVK) does not stand in for the VCEK CRL of a VCEK chain.
    let vlek_only = crls(&revoking(Vec::new()), SNP_GENERATION, CrlKind::Vlek);
    let err = verify(&fields(), vlek_only, SystemTime::now()).unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::CrlMissing {
                kind: CrlKind::Vcek,
                ..
            }
        ),
        "{err}"
    );
    // Not required and none configured: accepted, revocation unchecked (the default).
    verify(&fields(), CrlSet::default(), SystemTime::now()).unwrap();
    verify(&fields(), CrlSet::new(false), SystemTime::now()).unwrap();
}

#[test]
fn kbs05_crl_parses_der_and_pem_as_kds_and_openssl_write_them() {
    let f = fields();
    let serial = SnpTestChain::vcek_serial(&f);
    let der = revoking(vec![serial.clone(), vec![0x42; 16]]);
    let pem =
        x509_cert::der::pem::encode_string("X509 CRL", x509_cert::der::pem::LineEnding::LF, &der)
            .unwrap();
    for bytes in [&der[..], pem.as_bytes()] {
        let crl = AmdCrl::parse(bytes).unwrap();
        assert!(
            crl.issuer().contains("CN=ARK-Milan-TESTING"),
            "{}",
            crl.issuer()
        );
        let serials: Vec<&[u8]> = crl.revoked_serials().collect();
        assert_eq!(serials, [&serial[..], &[0x42; 16][..]]);
        assert!(crl.next_update().unwrap() > crl.this_update());
    }
    // A directory of PEM files (`openssl crl -outform PEM`) works as DER ones do.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("milan.crl"), &pem).unwrap();
    let set = CrlSet::load_dir(dir.path(), true).unwrap();
    assert_eq!(set.len(), 1);
    let err = verify(&f, set, SystemTime::now()).unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::Revoked {
                role: CertRole::Vcek,
                ..
            }
        ),
        "{err}"
    );
    // Refused: another PEM label, trailing bytes after the DER, a truncated DER.
    let cert_label = pem.replace("X509 CRL", "CERTIFICATE");
    let mut trailing = der.clone();
    trailing.push(0);
    for bad in [cert_label.as_bytes(), &trailing[..], &der[..der.len() - 1]] {
        let err = AmdCrl::parse(bad).unwrap_err();
        assert!(matches!(err, SnpError::CrlFormat { .. }), "{err}");
    }
}

#[test]
fn kbs05_crl_of_another_ark_refused_for_real_amd_evidence() {
    let vector = |name: &str| {
        let path = common::vectors_dir().join("snp").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let report = vector("trustee-test-report.bin");
    let vcek = vector("trustee-test-vcek.der");
    let parsed = Report::parse(&report).unwrap();
    let expected = Expected {
        report_data: parsed.report_data,
        host_data: Some(parsed.host_data),
    };
    // 2026-01-01: inside the VCEK's validity (tests/vectors/README.md).
    let jan_2026 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    SnpVerifier::default()
        .verify(&report, &vcek, jan_2026, &expected)
        .unwrap();
    // The Milan slot holds a CRL, but not one AMD's ARK-Milan issued: never "no CRL".
    for required in [true, false] {
        let mut set = CrlSet::new(required);
        set.insert(
            Generation::Milan,
            CrlKind::Vcek,
            AmdCrl::from_der(&revoking(Vec::new())).unwrap(),
        )
        .unwrap();
        let err = SnpVerifier::default()
            .with_crls(set)
            .verify(&report, &vcek, jan_2026, &expected)
            .unwrap_err();
        assert!(
            matches!(&err, SnpError::CrlIssuer { issuer, ark, .. }
                if issuer.contains("CN=ARK-Milan-TESTING") && ark.contains("CN=ARK-Milan")),
            "{err}"
        );
    }
}
