//! Reference values written by `coffer measure` are what `coffer-kbs` loads and what its SNP
//! verifier enforces: the document's measurements go through the broker's config loader
//! (`[attestation.snp] measurements`) and its admin-upload decoder (`parse_measurements`), and
//! the resulting allow-list admits a report carrying the computed digest and refuses one that
//! differs in a single bit. The report is synthetic (unsigned): signature checks are covered by
//! the attestation crate's vectors; this checks the measurement step of the same verifier.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_attestation::kbs::server::config::{Config, parse_measurements};
use coffer_attestation::snp::{REPORT_LEN, Report, SnpError, SnpPolicy, SnpVerifier};
use coffer_measure::ovmf::{Ovmf, build_image, encode_sev_metadata, guids};
use coffer_measure::reference::ReferenceValues;
use coffer_measure::snp::{SnpLaunch, VcpuType, VmmType, launch_digest};

fn firmware() -> Ovmf {
    let len = 0x40000usize;
    let mut image = build_image(
        len,
        &[
            (
                guids::SEV_ES_RESET_BLOCK,
                0xffff_b000u32.to_le_bytes().to_vec(),
            ),
            (
                guids::SEV_METADATA,
                ((len - 0x800) as u32).to_le_bytes().to_vec(),
            ),
        ],
    );
    let meta = encode_sev_metadata(&[
        (0x80_0000, 0x9000, 1),
        (0x80_d000, 0x1000, 2),
        (0x80_e000, 0x1000, 3),
    ]);
    image[0x800..0x800 + meta.len()].copy_from_slice(&meta);
    Ovmf::parse(image).unwrap()
}

/// A version-2 report whose only meaningful field is the measurement (offset 0x90).
fn report_with(measurement: &[u8; 48]) -> Report {
    let mut bytes = vec![0u8; REPORT_LEN];
    bytes[0..4].copy_from_slice(&2u32.to_le_bytes());
    bytes[0x90..0xC0].copy_from_slice(measurement);
    Report::parse(&bytes).unwrap()
}

#[test]
fn emitted_values_pin_the_snp_measurement() {
    let launch = SnpLaunch {
        vcpus: 2,
        vcpu_signature: "EPYC-Milan".parse::<VcpuType>().unwrap().signature(),
        vmm: VmmType::Qemu,
        guest_features: 1,
        kernel_hashes: None,
    };
    let digest = launch_digest(&firmware(), &launch).unwrap();
    let mut doc = ReferenceValues::default();
    doc.add_snp(&digest);
    let json: serde_json::Value = serde_json::from_str(&doc.to_json()).unwrap();
    let listed: Vec<String> = serde_json::from_value(json["snp_measurements"].clone()).unwrap();
    assert_eq!(
        json.as_object().unwrap().len(),
        1,
        "only the key the broker accepts"
    );

    // The admin upload's decoder and the config loader.
    let uploaded = parse_measurements(&listed).unwrap();
    let config_text = format!(
        "[http]\ninsecure_http = true\n\n[attestation.snp]\nmeasurements = {}\n",
        serde_json::to_string(&listed).unwrap()
    );
    let config: Config = toml::from_str(&config_text).unwrap();
    config.validate().unwrap();
    let configured = config.snp_measurements().unwrap();
    assert_eq!(configured, uploaded);
    assert_eq!(configured, vec![digest]);

    let verifier = SnpVerifier::new(SnpPolicy {
        allowed_measurements: configured,
        ..SnpPolicy::default()
    });
    verifier.check_measurement(&report_with(&digest)).unwrap();

    let mut other = digest;
    other[47] ^= 1;
    assert!(matches!(
        verifier.check_measurement(&report_with(&other)),
        Err(SnpError::MeasurementNotAllowed { .. })
    ));
    // A different launch (one more vCPU) is refused too.
    let more = launch_digest(&firmware(), &SnpLaunch { vcpus: 3, ..launch }).unwrap();
    assert!(verifier.check_measurement(&report_with(&more)).is_err());
}
