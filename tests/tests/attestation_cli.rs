//! `coffer attestation verify` end to end: the real `coffer` binary on every SEV-SNP and TDX
//! vector in `tests/vectors/` with the verdict its README (and EXPECTED*.json) gives: exit 0 and
//! claims JSON when verified, exit 1 and the reason on stderr when refused. Catalogue IDs:
//! KBS-05 (SNP evidence), KBS-06 (TDX evidence), KBS-02/KBS-03 (report_data / init-data binding).
//! `coffer attestation testing-ca` and `forge`: forged evidence verifies with `--testing-ca` and
//! is refused without it, each wrong field refused like real evidence.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};

use anyhow::{Context, ensure};
use coffer_tests::{Suite, case, coffer};
use serde_json::Value;

/// 2025-06-01: before the VLEK expired (2025-12-10).
const JUN_2025: &str = "1748736000";
/// 2025-12-11: the day after the VLEK expired.
const DEC_11_2025: &str = "1765411200";
/// EXPECTED-dcap-qvl.json's pinned time for dcap-qvl-tdx_quote (UpToDate).
const DCAP_TDX_NOW: &str = "1752919234";
/// EXPECTED-dcap-qvl.json's pinned time for the SGX quote.
const DCAP_SGX_NOW: &str = "1752919277";
/// EXPECTED-dcap-qvl.json's "current date" (CrlExpired); inside every PCK's validity.
const NOV_2026: &str = "1795866000";

fn vectors() -> PathBuf {
    coffer_tests::vectors_dir()
}

fn snp(name: &str) -> PathBuf {
    vectors().join("snp").join(name)
}

fn tdx(name: &str) -> PathBuf {
    vectors().join("tdx").join(name)
}

fn expected(dir: &str, name: &str) -> anyhow::Result<Value> {
    let path = vectors().join(dir).join(name);
    let bytes = std::fs::read(&path).with_context(|| format!("vector {}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Runs `coffer attestation verify ARGS` (mixed literal and path arguments).
fn verify(args: &[&dyn AsRef<OsStr>]) -> anyhow::Result<Output> {
    verify_args(args)
}

/// Runs `coffer attestation verify ARGS`.
fn verify_args<I, S>(args: I) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(coffer())
        .args(["attestation", "verify"])
        .args(args)
        .output()
        .context("running coffer")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit 0 and the claims JSON.
fn accepted(o: &Output) -> anyhow::Result<Value> {
    ensure!(
        o.status.code() == Some(0),
        "expected exit 0, got {:?}; stderr: {}",
        o.status,
        text(&o.stderr)
    );
    let claims: Value = serde_json::from_slice(&o.stdout).context("claims are JSON")?;
    ensure!(claims["verified"] == true, "claims: {claims}");
    Ok(claims)
}

/// Exit 1, nothing on stdout, and stderr mentions `reason`.
fn refused(o: &Output, reason: &str) -> anyhow::Result<()> {
    let stderr = text(&o.stderr);
    ensure!(
        o.status.code() == Some(1),
        "expected exit 1, got {:?}; stdout: {}; stderr: {stderr}",
        o.status,
        text(&o.stdout)
    );
    ensure!(
        o.stdout.is_empty(),
        "refusal printed claims: {}",
        text(&o.stdout)
    );
    ensure!(
        stderr.contains("attestation refused") && stderr.contains(reason),
        "stderr does not give the reason {reason:?}: {stderr}"
    );
    ensure!(
        stderr.lines().count() == 1,
        "the error chain is printed once, on one line: {stderr}"
    );
    Ok(())
}

/// A copy of `src` in `dir` with byte `pos` xor-ed with 1.
fn flipped(dir: &Path, src: &Path, pos: usize) -> anyhow::Result<PathBuf> {
    let mut bytes = std::fs::read(src)?;
    *bytes.get_mut(pos).context("position in file")? ^= 1;
    let out = dir.join(format!(
        "{}-flip-{pos:x}",
        src.file_name().context("name")?.to_string_lossy()
    ));
    std::fs::write(&out, bytes)?;
    Ok(out)
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let tmp = work.path();
    let mut suite = Suite::new("attestation_cli");

    // ---- SEV-SNP (KBS-05) ----------------------------------------------------------------

    case!(
        suite,
        "kbs05_snp_trustee_report_verifies_today",
        (|| {
            let o = verify(&[
                &"--tee",
                &"snp",
                &"--evidence",
                &snp("trustee-test-report.bin"),
                &"--vcek",
                &snp("trustee-test-vcek.der"),
            ])?;
            let claims = accepted(&o)?;
            ensure!(claims["report_version"] == 2, "{claims}");
            ensure!(claims["policy"] == "0x3001f", "{claims}");
            ensure!(
                claims["measurement"]
                    == "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
                "{claims}"
            );
            ensure!(
                claims["report_data"]
                    == format!(
                        "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2{}",
                        "0".repeat(64)
                    ),
                "{claims}"
            );
            let tcb = &claims["reported_tcb"];
            ensure!(
                (
                    tcb["bootloader"].clone(),
                    tcb["tee"].clone(),
                    tcb["snp"].clone(),
                    tcb["microcode"].clone()
                ) == (3.into(), 0.into(), 8.into(), 115.into()),
                "{claims}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs02_snp_report_data_exact",
        (|| {
            let rd = format!(
                "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2{}",
                "0".repeat(64)
            );
            let base = |extra: &str| -> anyhow::Result<Output> {
                verify(&[
                    &"--tee",
                    &"snp",
                    &"--evidence",
                    &snp("trustee-test-report.bin"),
                    &"--vcek",
                    &snp("trustee-test-vcek.der"),
                    &"--report-data",
                    &extra.to_owned(),
                ])
            };
            let ok = accepted(&base(&rd)?)?;
            ensure!(ok["report_data_checked"] == true, "{ok}");
            // The 32-byte hash alone is not padded to match.
            refused(
                &base("ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2")?,
                "expected exactly 64",
            )?;
            let mut other = rd.clone();
            other.replace_range(0..2, "ed");
            refused(&base(&other)?, "report_data mismatch")
        })()
    );

    case!(
        suite,
        "kbs03_snp_wrong_init_data_digest_refused",
        (|| {
            let o = verify(&[
                &"--tee",
                &"snp",
                &"--evidence",
                &snp("trustee-test-report.bin"),
                &"--vcek",
                &snp("trustee-test-vcek.der"),
                &"--init-data-digest",
                &"11".repeat(32),
            ])?;
            refused(&o, "host_data mismatch")
        })()
    );

    case!(
        suite,
        "kbs05_snp_virtee_hex_report_verifies",
        (|| {
            let o = verify(&[
                &"--tee",
                &"snp",
                &"--evidence",
                &snp("virtee-sev-report_milan.hex"),
                &"--vcek",
                &snp("virtee-sev-vcek_milan.der"),
            ])?;
            let claims = accepted(&o)?;
            ensure!(claims["policy"] == "0x30000", "{claims}");
            ensure!(
                claims["measurement"]
                    == "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
                "{claims}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs05_snp_invalid_vceks_refused",
        (|| {
            for vcek in [
                "trustee-test-vcek-invalid-legacy.der",
                "trustee-test-vcek-invalid-new.der",
            ] {
                let o = verify(&[
                    &"--tee",
                    &"snp",
                    &"--evidence",
                    &snp("trustee-test-report.bin"),
                    &"--vcek",
                    &snp(vcek),
                ])?;
                refused(&o, "signature does not verify").context(vcek)?;
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs05_snp_report_with_another_chips_vcek_refused",
        (|| {
            let o = verify(&[
                &"--tee",
                &"snp",
                &"--evidence",
                &snp("virtee-sev-report_milan.hex"),
                &"--vcek",
                &snp("trustee-test-vcek.der"),
            ])?;
            refused(&o, "snp evidence")
        })()
    );

    case!(
        suite,
        "kbs05_snp_vlek_expired_at_todays_date",
        (|| {
            for now in [None, Some(DEC_11_2025)] {
                let mut args: Vec<OsString> = vec![
                    "--tee".into(),
                    "snp".into(),
                    "--evidence".into(),
                    snp("trustee-test-vlek-report.bin").into(),
                    "--vcek".into(),
                    snp("trustee-test-vlek.der").into(),
                    "--allow-vlek".into(),
                ];
                if let Some(now) = now {
                    args.extend(["--now".into(), now.into()]);
                }
                let o = verify_args(args)?;
                refused(&o, "VLEK certificate is not valid")
                    .with_context(|| format!("now {now:?}"))?;
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs05_snp_vlek_valid_with_pinned_clock_then_vmpl_refused",
        (|| {
            // With the clock pinned before 2025-12-10 the VLEK → ASVK → ARK chain verifies; the
            // report itself was requested from VMPL 1 (EXPECTED.json "vmpl": 1), which the SNP
            // policy refuses (VMPL 0 only), so the verdict moves from "expired" to "VMPL".
            let o = verify(&[
                &"--tee",
                &"snp",
                &"--evidence",
                &snp("trustee-test-vlek-report.bin"),
                &"--vcek",
                &snp("trustee-test-vlek.der"),
                &"--allow-vlek",
                &"--now",
                &JUN_2025,
            ])?;
            refused(&o, "VMPL 1")?;
            ensure!(
                !text(&o.stderr).contains("not valid"),
                "{}",
                text(&o.stderr)
            );
            let exp = expected("snp", "EXPECTED.json")?;
            ensure!(
                exp.to_string().contains("\"vmpl\":1"),
                "EXPECTED.json records VMPL 1"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs05_snp_flipped_bytes_refused",
        (|| {
            let report = snp("trustee-test-report.bin");
            // 0x180: reported TCB (≠ VCEK TCB); 0x90: measurement; 0x50: report_data; 0x29f: last
            // signed byte.
            for pos in [0x180, 0x90, 0x50, 0x29f] {
                let bad = flipped(tmp, &report, pos)?;
                let o = verify(&[
                    &"--tee",
                    &"snp",
                    &"--evidence",
                    &bad,
                    &"--vcek",
                    &snp("trustee-test-vcek.der"),
                ])?;
                refused(&o, "snp evidence").with_context(|| format!("flip @{pos:#x}"))?;
            }
            Ok(())
        })()
    );

    // ---- Intel TDX (KBS-06) ---------------------------------------------------------------

    let sig =
        expected("tdx", "EXPECTED-signature-chain.json").expect("EXPECTED-signature-chain.json");

    case!(
        suite,
        "kbs06_tdx_dcap_quote_up_to_date_at_pinned_time",
        (|| {
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("dcap-qvl-tdx_quote"),
                &"--collateral",
                &tdx("dcap-qvl-tdx_quote_collateral.json"),
                &"--now",
                &DCAP_TDX_NOW,
            ])?;
            let claims = accepted(&o)?;
            let body = &sig["dcap-qvl-tdx_quote"]["body"];
            ensure!(claims["tcb_status"] == "UpToDate", "{claims}");
            ensure!(claims["verification"] == "collateral", "{claims}");
            ensure!(
                claims["fmspc"] == sig["dcap-qvl-tdx_quote"]["fmspc"],
                "{claims}"
            );
            ensure!(claims["mr_td"] == body["mr_td"], "{claims}");
            ensure!(claims["report_data"] == body["report_data"], "{claims}");
            for i in 0..4 {
                ensure!(
                    claims["rtmr"][i] == body[format!("rtmr{i}")],
                    "rtmr{i}: {claims}"
                );
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs06_tdx_collateral_directory_by_fmspc",
        (|| {
            let dir = tmp.join("collateral");
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(
                tdx("dcap-qvl-tdx_quote_collateral.json"),
                dir.join("B0C06F000000.json"),
            )?;
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("dcap-qvl-tdx_quote"),
                &"--collateral",
                &dir,
                &"--now",
                &DCAP_TDX_NOW,
            ])?;
            accepted(&o).map(|_| ())
        })()
    );

    case!(
        suite,
        "kbs06_tdx_expired_collateral_refused",
        (|| {
            let base = |now: Option<&str>| -> anyhow::Result<Output> {
                let mut args: Vec<OsString> = vec![
                    "--tee".into(),
                    "tdx".into(),
                    "--evidence".into(),
                    tdx("dcap-qvl-tdx_quote").into(),
                    "--collateral".into(),
                    tdx("dcap-qvl-tdx_quote_collateral.json").into(),
                ];
                if let Some(now) = now {
                    args.extend(["--now".into(), now.into()]);
                }
                verify_args(args)
            };
            refused(&base(Some(NOV_2026))?, "CrlExpired")?;
            // Today (no --now): the collateral's nextUpdate dates are long past.
            refused(
                &base(None)?,
                "DCAP quote verification with collateral failed",
            )
        })()
    );

    case!(
        suite,
        "kbs06_tdx_sgx_quote_refused",
        (|| {
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("dcap-qvl-sgx_quote"),
                &"--collateral",
                &tdx("dcap-qvl-sgx_quote_collateral.json"),
                &"--now",
                &DCAP_SGX_NOW,
            ])?;
            refused(&o, "not a TD quote")
        })()
    );

    case!(
        suite,
        "kbs06_tdx_trustee_quote_with_foreign_collateral_fmspc_mismatch",
        (|| {
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("trustee-tdx_quote_4.dat"),
                &"--collateral",
                &tdx("dcap-qvl-tdx_quote_collateral.json"),
                &"--now",
                &NOV_2026,
            ])?;
            refused(&o, "FMSPC mismatch")
        })()
    );

    case!(
        suite,
        "kbs06_tdx_trustee_v4_debug_td_refused",
        (|| {
            // Signatures and PCK chain verify; the TD runs in debug mode.
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("trustee-tdx_quote_4.dat"),
                &"--signature-only",
                &"--now",
                &NOV_2026,
            ])?;
            refused(&o, "debug TD")
        })()
    );

    case!(
        suite,
        "kbs06_tdx_trustee_v5_service_td_refused",
        (|| {
            // A v5 (TDX 1.5) quote whose signatures verify, bound to a service TD.
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("trustee-tdx_quote_5.dat"),
                &"--signature-only",
                &"--now",
                &NOV_2026,
            ])?;
            refused(&o, "service TD bound")
        })()
    );

    case!(
        suite,
        "kbs06_tdx_signature_only_is_labelled",
        (|| {
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("dcap-qvl-tdx_quote"),
                &"--signature-only",
            ])?;
            let claims = accepted(&o)?;
            ensure!(claims["verification"] == "signature-only", "{claims}");
            ensure!(claims["tcb_status"].is_null(), "{claims}");
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs06_tdx_without_collateral_needs_explicit_mode",
        (|| {
            let o = verify(&[&"--tee", &"tdx", &"--evidence", &tdx("dcap-qvl-tdx_quote")])?;
            ensure!(
                o.status.code() == Some(125),
                "status {:?}: {}",
                o.status,
                text(&o.stderr)
            );
            ensure!(
                text(&o.stderr).contains("--collateral"),
                "{}",
                text(&o.stderr)
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs06_tdx_flipped_bytes_refused",
        (|| {
            // Header, TD attributes (DEBUG), MRTD, RTMR1, last REPORTDATA byte, quote signature.
            for (pos, reason) in [
                (2, "tdx evidence"),
                (48 + 16 + 48 + 48 + 8, "quote signature"),
                (48 + 136, "quote signature"),
                (48 + 376, "quote signature"),
                (48 + 583, "quote signature"),
                (48 + 584 + 4, "quote signature"),
            ] {
                let bad = flipped(tmp, &tdx("dcap-qvl-tdx_quote"), pos)?;
                let o = verify(&[
                    &"--tee",
                    &"tdx",
                    &"--evidence",
                    &bad,
                    &"--collateral",
                    &tdx("dcap-qvl-tdx_quote_collateral.json"),
                    &"--now",
                    &DCAP_TDX_NOW,
                ])?;
                refused(&o, reason).with_context(|| format!("flip @{pos:#x}"))?;
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs03_tdx_init_data_digest_and_report_data_exact",
        (|| {
            let body = &sig["dcap-qvl-tdx_quote"]["body"];
            let run = |flag: &str, value: &str| -> anyhow::Result<Output> {
                verify(&[
                    &"--tee",
                    &"tdx",
                    &"--evidence",
                    &tdx("dcap-qvl-tdx_quote"),
                    &"--collateral",
                    &tdx("dcap-qvl-tdx_quote_collateral.json"),
                    &"--now",
                    &DCAP_TDX_NOW,
                    &flag.to_owned(),
                    &value.to_owned(),
                ])
            };
            let mr_config_id = body["mr_config_id"].as_str().context("mr_config_id")?;
            let claims = accepted(&run("--init-data-digest", mr_config_id)?)?;
            ensure!(claims["init_data_checked"] == true, "{claims}");
            refused(
                &run("--init-data-digest", &"5a".repeat(48))?,
                "mr_config_id mismatch",
            )?;
            // A 32-byte (SNP-sized) digest is not padded.
            refused(
                &run("--init-data-digest", &"00".repeat(32))?,
                "expected exactly 48",
            )?;
            let report_data = body["report_data"].as_str().context("report_data")?;
            accepted(&run("--report-data", report_data)?)?;
            refused(
                &run("--report-data", &"00".repeat(64))?,
                "report_data mismatch",
            )
        })()
    );

    case!(
        suite,
        "kbs06_tdx_event_log_that_does_not_replay_refused",
        (|| {
            // trustee-CCEL_data is a td-shim log of another TD: its replay is not this quote's
            // RTMR0, so the evidence is refused.
            let o = verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &tdx("dcap-qvl-tdx_quote"),
                &"--collateral",
                &tdx("dcap-qvl-tdx_quote_collateral.json"),
                &"--now",
                &DCAP_TDX_NOW,
                &"--event-log",
                &tdx("trustee-CCEL_data"),
            ])?;
            refused(&o, "event log replay gives rtmr0")
        })()
    );

    // ---- Test chain and forged evidence (#26) --------------------------------------------

    let chain = tmp.join("test-chain");
    case!(
        suite,
        "testing_ca_writes_a_test_chain_with_private_keys_0600",
        (|| {
            let o = coffer_cmd(&["attestation", "testing-ca", "--out"], &chain)?;
            ensure!(o.status.success(), "{}", text(&o.stderr));
            let out = text(&o.stdout);
            ensure!(
                out.contains("TEST chain") && out.contains("[testing]"),
                "{out}"
            );
            use std::os::unix::fs::PermissionsExt as _;
            for (file, mode) in [
                ("TESTING-ONLY", None),
                ("snp/ark.pem", None),
                ("snp/ask.pem", None),
                ("snp/ask-key.pem", Some(0o600)),
                ("snp/ark-key.pem", Some(0o600)),
                ("tdx/root.der", None),
                ("tdx/pck-chain.pem", None),
                ("tdx/pck-key.pem", Some(0o600)),
                ("tdx/collateral/C0FFE2000000.json", None),
            ] {
                let meta = std::fs::metadata(chain.join(file)).with_context(|| file.to_owned())?;
                if let Some(mode) = mode {
                    ensure!(meta.permissions().mode() & 0o777 == mode, "{file} mode");
                }
            }
            // A directory that is not a test chain is not written into.
            let other = tmp.join("not-a-chain");
            std::fs::create_dir_all(&other)?;
            std::fs::write(other.join("keep"), b"x")?;
            let o = coffer_cmd(&["attestation", "testing-ca", "--out"], &other)?;
            ensure!(o.status.code() == Some(125), "{o:?}");
            Ok(())
        })()
    );

    case!(
        suite,
        "forged_snp_report_verifies_only_with_the_test_chain",
        (|| {
            let out = tmp.join("forged-snp");
            let m = "5a".repeat(48);
            forge(&chain, "snp", &out, &["--measurement", &m])?;
            let (report, vcek) = (out.join("report.bin"), out.join("vcek.der"));
            let claims = accepted(&verify(&[
                &"--tee",
                &"snp",
                &"--evidence",
                &report,
                &"--vcek",
                &vcek,
                &"--testing-ca",
                &chain,
            ])?)?;
            ensure!(claims["measurement"] == m.as_str(), "{claims}");
            ensure!(claims["testing_root"] == true, "{claims}");
            // AMD's roots alone: refused at the chain.
            refused(
                &verify(&[&"--tee", &"snp", &"--evidence", &report, &"--vcek", &vcek])?,
                "is not an embedded AMD ASK or ASVK",
            )?;
            // The same checks as real evidence: a flipped measurement byte breaks the signature.
            let bad = flipped(tmp, &report, 0x90)?;
            refused(
                &verify(&[
                    &"--tee",
                    &"snp",
                    &"--evidence",
                    &bad,
                    &"--vcek",
                    &vcek,
                    &"--testing-ca",
                    &chain,
                ])?,
                "report signature does not verify",
            )?;
            let debug = tmp.join("forged-snp-debug");
            forge(&chain, "snp", &debug, &["--debug"])?;
            refused(
                &verify(&[
                    &"--tee",
                    &"snp",
                    &"--evidence",
                    &debug.join("report.bin"),
                    &"--vcek",
                    &debug.join("vcek.der"),
                    &"--testing-ca",
                    &chain,
                ])?,
                "debug allowed",
            )
        })()
    );

    case!(
        suite,
        "forged_tdx_quote_verifies_only_with_the_test_chain",
        (|| {
            let out = tmp.join("forged-tdx");
            let m = "5a".repeat(48);
            forge(&chain, "tdx", &out, &["--measurement", &m])?;
            let quote = out.join("quote.dat");
            let collateral = chain.join("tdx/collateral");
            let claims = accepted(&verify(&[
                &"--tee",
                &"tdx",
                &"--evidence",
                &quote,
                &"--collateral",
                &collateral,
                &"--testing-ca",
                &chain,
            ])?)?;
            ensure!(claims["mr_td"] == m.as_str(), "{claims}");
            ensure!(claims["tcb_status"] == "UpToDate", "{claims}");
            ensure!(claims["testing_root"] == true, "{claims}");
            refused(
                &verify(&[
                    &"--tee",
                    &"tdx",
                    &"--evidence",
                    &quote,
                    &"--collateral",
                    &collateral,
                ])?,
                "is not a trusted root",
            )?;
            let old = tmp.join("forged-tdx-old");
            forge(
                &chain,
                "tdx",
                &old,
                &["--tcb", &format!("03000200{}", "00".repeat(12))],
            )?;
            refused(
                &verify(&[
                    &"--tee",
                    &"tdx",
                    &"--evidence",
                    &old.join("quote.dat"),
                    &"--collateral",
                    &collateral,
                    &"--testing-ca",
                    &chain,
                ])?,
                "OutOfDate",
            )
        })()
    );

    suite.finish()
}

/// `coffer ARGS PATH`.
fn coffer_cmd(args: &[&str], path: &Path) -> anyhow::Result<Output> {
    Command::new(coffer())
        .args(args)
        .arg(path)
        .output()
        .context("running coffer")
}

/// `coffer attestation forge --tee TEE --testing-ca CHAIN --out OUT EXTRA`, which must succeed.
fn forge(chain: &Path, tee: &str, out: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let o = Command::new(coffer())
        .args(["attestation", "forge", "--tee", tee, "--testing-ca"])
        .arg(chain)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .context("running coffer")?;
    ensure!(o.status.success(), "forge: {}", text(&o.stderr));
    ensure!(out.join("evidence.json").exists(), "no evidence.json");
    Ok(())
}
