//! AMD SEV-SNP attestation reports and VCEK/VLEK certificates, as the SNP verifier reads them.
//!
//! The first byte picks the parser:
//! - even: `snp::Report::parse` of the rest; a parsed report is then held against the VCEK of
//!   `tests/vectors/snp/trustee-test-vcek.der` (`check_tcb_binding`), and, when bit 1 is set, its
//!   signature is checked (`verify_report_signature`: algorithm, the r/s encoding, ECDSA P-384);
//! - odd: `snp::verify_endorsement_key` of the rest as a DER certificate against the embedded AMD
//!   roots, at a fixed time inside the vectors' validity (so runs are reproducible).
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_attestation::snp::{
    EndorsementKey, Report, check_tcb_binding, verify_endorsement_key, verify_report_signature,
};
use libfuzzer_sys::fuzz_target;

/// 2026-01-01T00:00:00Z: inside the validity of every VCEK in `tests/vectors/snp`.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

static VCEK: LazyLock<EndorsementKey> = LazyLock::new(|| {
    verify_endorsement_key(
        include_bytes!("../../tests/vectors/snp/trustee-test-vcek.der"),
        now(),
    )
    .expect("vector VCEK verifies")
});

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    if form & 1 == 0 {
        let Ok(report) = Report::parse(rest) else {
            return;
        };
        let _ = report.generation();
        let _ = check_tcb_binding(&report, &VCEK);
        if form & 2 != 0 {
            let _ = verify_report_signature(rest, &report, &VCEK);
        }
    } else {
        let _ = verify_endorsement_key(rest, now());
    }
});
