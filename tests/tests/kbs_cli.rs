//! `coffer kbs get-resource` against a real `coffer-kbs` on loopback: the broker releases the
//! resource to sample evidence only when its configuration enables sample evidence *and* its
//! resource policy admits it; under the shipped default policy nothing is released (KBS-04).
//! `coffer kbs check` against the same brokers: every case reported, none failing against a
//! correctly configured `coffer-kbs`, and the expected failures (exit 1) against one whose
//! policy allows everything and whose admin API takes anonymous writes. `coffer kbs load` prints
//! its figures against one. Evidence forged with a test chain (`coffer attestation testing-ca`)
//! through a `coffer-kbs` whose `[testing]` section trusts it: the pinned measurement gets the
//! resource, a wrong field is refused naming it, and without the section nothing is accepted.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Command, ExitCode};

use anyhow::ensure;
use coffer_tests::{Suite, case, coffer};

const SECRET: &[u8] = b"the image key-encryption key\n";

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut suite = Suite::new("kbs_cli");

    case!(
        suite,
        "sample_released_only_when_policy_admits_it",
        (|| {
            let allow_sample = coffer_tests::kbs::ALLOW_SAMPLE_POLICY;
            let broker = coffer_tests::kbs::Broker::start(dir, "open", Some(allow_sample), SECRET)?;
            for extra in [&[][..], &["--bearer"][..]] {
                let out = broker.get_resource(extra)?;
                ensure!(
                    out.status.success(),
                    "{extra:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ensure!(
                    out.stdout == SECRET,
                    "{extra:?}: resource {:?}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "kbs04_default_policy_refuses_sample",
        (|| {
            let broker = coffer_tests::kbs::Broker::start(dir, "default", None, SECRET)?;
            let out = broker.get_resource(&[])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                out.stdout.is_empty(),
                "something was released: {:?}",
                out.stdout
            );
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(err.contains("fetching default/key/1"), "{err}");
            ensure!(
                !err.contains("key-encryption"),
                "the secret leaked into the error: {err}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "detection_never_falls_back_to_sample",
        (|| {
            // This host has no TEE: detection is an error, not sample evidence.
            let out = Command::new(coffer())
                .args([
                    "kbs",
                    "get-resource",
                    "--url",
                    "http://127.0.0.1:1",
                    "--path",
                    "default/key/1",
                ])
                .output()?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(err.contains("no tee found"), "{err}");
            Ok(())
        })()
    );

    case!(
        suite,
        "check_passes_against_coffer_kbs",
        (|| {
            let broker = coffer_tests::kbs::Broker::start(
                dir,
                "check-dev",
                Some(coffer_tests::kbs::ALLOW_SAMPLE_POLICY),
                SECRET,
            )?;
            // A development broker: it accepts sample evidence on purpose.
            let out = check(
                &broker.url,
                &["--resource", "default/key/1", "--allow-sample"],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.code() == Some(0), "{out:?}\n{text}");
            for id in CASES {
                ensure!(
                    text.lines()
                        .any(|l| l.split_whitespace().nth(1) == Some(id)),
                    "case {id} not reported:\n{text}"
                );
            }
            ensure!(!text.contains("FAIL"), "{text}");
            ensure!(
                text.contains("15 passed, 0 failed, 2 not applicable"),
                "{text}"
            );
            // The same as JSON.
            let out = check(
                &broker.url,
                &["--resource", "default/key/1", "--allow-sample", "--json"],
            )?;
            ensure!(out.status.code() == Some(0), "{out:?}");
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            ensure!(report["failed"] == 0, "{report}");
            ensure!(
                report["cases"].as_array().map(Vec::len) == Some(CASES.len()),
                "{report}"
            );
            // The shipped default policy: nothing is released to sample evidence, which is
            // what a production broker must do, so the check passes without --allow-sample.
            let strict = coffer_tests::kbs::Broker::start(dir, "check-default", None, SECRET)?;
            let out = check(&strict.url, &["--resource", "default/key/1"])?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.code() == Some(0), "{out:?}\n{text}");
            ensure!(
                text.lines()
                    .any(|l| l.starts_with("pass") && l.contains("sample-evidence")),
                "{text}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "check_reports_a_misconfigured_broker",
        (|| {
            // Sample evidence enabled, a policy allowing everything instead of denying by
            // default, and anonymous admin writes.
            let broker = coffer_tests::kbs::Broker::start_with_config(
                dir,
                "check-misconfigured",
                Some("package policy\nimport rego.v1\ndefault allow := true\n"),
                SECRET,
                "\n[admin]\ninsecure_allow_anonymous = true\n",
            )?;
            let out = check(&broker.url, &["--resource", "default/key/1"])?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.code() == Some(1), "{out:?}\n{text}");
            let failed: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("FAIL"))
                .filter_map(|l| l.split_whitespace().nth(1))
                .collect();
            ensure!(
                failed == ["sample-evidence", "admin-without-token"],
                "failed: {failed:?}\n{text}"
            );
            ensure!(text.contains("2 failed"), "{text}");
            Ok(())
        })()
    );

    case!(
        suite,
        "replicated_broker_serves_the_cli_unchanged",
        (|| {
            // #23: three coffer-kbs processes on one PostgreSQL, no session affinity. The check
            // sends one request per connection, so through the round-robin proxy every step of
            // every handshake (and its admin write) reaches another replica than the one before.
            let set_dir = dir.join("replicated");
            std::fs::create_dir_all(&set_dir)?;
            let set = coffer_tests::kbs::Replicas::start(
                &set_dir,
                coffer_tests::kbs::ALLOW_SAMPLE_POLICY,
                false,
            )?;
            let token_file = set_dir.join("admin.jwt");
            std::fs::write(&token_file, set.admin_token()?)?;
            let token_arg = token_file.display().to_string();
            let out = check(&set.url(), &["--allow-sample", "--admin-token", &token_arg])?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.code() == Some(0), "{out:?}\n{text}");
            ensure!(
                text.contains("16 passed, 0 failed, 1 not applicable"),
                "{text}"
            );
            ensure!(set.connections() > 30, "{} connections", set.connections());
            // coffer kbs get-resource, a keep-alive client, unchanged: the proxy makes each
            // replica close after one answer, so its /auth, /attest and /resource go to three
            // replicas in turn; with the cookie and with the token as bearer.
            let closing_dir = set_dir.join("closing");
            std::fs::create_dir_all(&closing_dir)?;
            let closing = coffer_tests::kbs::Replicas::start(
                &closing_dir,
                coffer_tests::kbs::ALLOW_SAMPLE_POLICY,
                true,
            )?;
            let probe = closing_probe_write(&closing)?;
            for extra in [&[][..], &["--bearer"][..]] {
                let before = closing.connections();
                let out = Command::new(coffer())
                    .args(["kbs", "get-resource", "--kbs-url", &closing.url()])
                    .args(["--path", "coffer-check/probe/1", "--kbs-evidence", "sample"])
                    .args(extra)
                    .output()?;
                ensure!(
                    out.status.success(),
                    "{extra:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ensure!(out.stdout == probe, "{extra:?}: another resource's value");
                let used = closing.connections() - before;
                ensure!(used >= 3, "{extra:?}: {used} connections for a handshake");
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "load_prints_the_figures",
        (|| {
            let broker = coffer_tests::kbs::Broker::start(
                dir,
                "load",
                Some(coffer_tests::kbs::ALLOW_SAMPLE_POLICY),
                SECRET,
            )?;
            let pid = broker.pid().to_string();
            let out = Command::new(coffer())
                .args(["kbs", "load", "--url", &broker.url, "-c", "4", "-n", "40"])
                .args([
                    "--resource",
                    "default/key/1",
                    "--server-pid",
                    &pid,
                    "--nstat",
                ])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.code() == Some(0), "{out:?}\n{text}");
            ensure!(text.contains("40 handshakes ok, 0 failed"), "{text}");
            ensure!(text.contains("handshakes/s"), "{text}");
            ensure!(text.contains("latency ms: p50"), "{text}");
            ensure!(text.contains(&format!("server pid {pid}: cpu")), "{text}");
            ensure!(text.contains("kernel: ListenOverflows"), "{text}");
            // A resource the broker does not have: every handshake fails, counted by kind.
            let out = Command::new(coffer())
                .args([
                    "kbs",
                    "load",
                    "--url",
                    &broker.url,
                    "-c",
                    "2",
                    "-n",
                    "4",
                    "--json",
                ])
                .args(["--resource", "default/key/missing"])
                .output()?;
            ensure!(out.status.code() == Some(1), "{out:?}");
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            ensure!(report["failed"] == 4, "{report}");
            ensure!(
                report["errors"]["refused:resource:ResourceNotFound"] == 4,
                "{report}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "forged_evidence_through_coffer_kbs_with_a_testing_section",
        (|| {
            let chain = dir.join("test-chain");
            let o = Command::new(coffer())
                .args(["attestation", "testing-ca", "--out"])
                .arg(&chain)
                .output()?;
            ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let m = "5a".repeat(48);
            let reference = format!(
                "\n[attestation.snp]\nmeasurements = [\"{m}\"]\n\
                 [attestation.snp.min_reported_tcb]\nbootloader = 4\n\
                 [attestation.tdx]\nmr_td = [\"{m}\"]\ncollateral = {:?}\n",
                chain.join("tdx/collateral").display().to_string()
            );
            let testing = format!(
                "{reference}[testing]\nca_dir = {:?}\n",
                chain.display().to_string()
            );
            // The shipped default policy: affirming, non-sample evidence only.
            let broker = coffer_tests::kbs::Broker::start_with_config(
                dir, "testing", None, SECRET, &testing,
            )?;
            let get = |url: &str, tee: &str, fields: &[&str]| {
                Command::new(coffer())
                    .args([
                        "kbs",
                        "get-resource",
                        "--url",
                        url,
                        "--path",
                        "default/key/1",
                    ])
                    .args(["--tee", tee, "--testing-ca"])
                    .arg(&chain)
                    .args(fields)
                    .output()
            };
            for tee in ["snp", "tdx"] {
                let out = get(&broker.url, tee, &["--measurement", &m])?;
                ensure!(
                    out.status.success() && out.stdout == SECRET,
                    "{tee}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let other = "5b".repeat(48);
            for (tee, fields, reason) in [
                (
                    "snp",
                    vec!["--measurement", &other],
                    "is not an allowed reference value",
                ),
                ("snp", vec!["--measurement", &m, "--debug"], "debug allowed"),
                (
                    "snp",
                    vec!["--measurement", &m, "--tcb", "bootloader=3"],
                    "bootloader is 3, below minimum 4",
                ),
                ("tdx", vec!["--measurement", &other], "mr_td"),
                ("tdx", vec!["--measurement", &m, "--debug"], "Debug"),
            ] {
                let out = get(&broker.url, tee, &fields)?;
                let err = String::from_utf8_lossy(&out.stderr);
                ensure!(out.status.code() == Some(125), "{tee} {fields:?}: {out:?}");
                ensure!(out.stdout.is_empty(), "{tee} {fields:?}: released");
                ensure!(err.contains(reason), "{tee} {fields:?}: {err}");
            }
            let log = std::fs::read_to_string(&broker.log)?;
            ensure!(log.contains("TESTING CHAIN TRUSTED"), "{log}");
            // `kbs check` with forged evidence: every hostile case runs against the default
            // policy, no sample evidence needed.
            let out = Command::new(coffer())
                .args([
                    "kbs",
                    "check",
                    "--url",
                    &broker.url,
                    "--resource",
                    "default/key/1",
                ])
                .args(["--tee", "snp", "--testing-ca"])
                .arg(&chain)
                .args(["--measurement", &m])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.code() == Some(0), "{out:?}\n{text}");
            ensure!(text.contains("(evidence: snp)"), "{text}");
            for id in ["replayed-nonce", "swapped-tee-key", "report-data-mismatch"] {
                ensure!(
                    text.lines()
                        .any(|l| l.starts_with("pass") && l.contains(id)),
                    "{id}: {text}"
                );
            }
            // The same reference values without [testing]: the same evidence is refused.
            let plain = coffer_tests::kbs::Broker::start_with_config(
                dir,
                "no-testing",
                None,
                SECRET,
                &reference,
            )?;
            let out = get(&plain.url, "snp", &["--measurement", &m])?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(125) && out.stdout.is_empty(),
                "{out:?}"
            );
            ensure!(err.contains("is not an embedded AMD ASK or ASVK"), "{err}");
            let out = get(&plain.url, "tdx", &["--measurement", &m])?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(125) && out.stdout.is_empty(),
                "{out:?}"
            );
            ensure!(err.contains("is not a trusted root"), "{err}");
            let log = std::fs::read_to_string(&plain.log)?;
            ensure!(!log.contains("TESTING CHAIN"), "{log}");
            Ok(())
        })()
    );

    suite.finish()
}

/// Every case `coffer kbs check` reports, in order.
const CASES: [&str; 17] = [
    "protocol-version",
    "challenge-shape",
    "admin-with-token",
    "attest",
    "resource-cookie",
    "resource-bearer",
    "rsa-key",
    "forged-token",
    "sample-evidence",
    "replayed-nonce",
    "other-session-nonce",
    "swapped-tee-key",
    "report-data-mismatch",
    "tee-switched",
    "resource-traversal",
    "oversized-body",
    "admin-without-token",
];

/// Writes the check's probe resource through `set` (`coffer kbs check --admin-token` against
/// it, which also fetches it back) and returns what the check wrote there.
fn closing_probe_write(set: &coffer_tests::kbs::Replicas) -> anyhow::Result<Vec<u8>> {
    let token = tempfile::NamedTempFile::new()?;
    std::fs::write(token.path(), set.admin_token()?)?;
    let token_arg = token.path().display().to_string();
    let out = check(
        &set.url(),
        &["--allow-sample", "--admin-token", &token_arg, "--json"],
    )?;
    ensure!(out.status.code() == Some(0), "{out:?}");
    // The value the check writes is fixed by the check; read it back through a replica.
    let replica = &set.urls[2];
    let out = Command::new(coffer())
        .args(["kbs", "get-resource", "--kbs-url", replica])
        .args(["--path", "coffer-check/probe/1", "--kbs-evidence", "sample"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// `coffer kbs check --url URL ARGS`.
fn check(url: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(coffer())
        .args(["kbs", "check", "--url", url])
        .args(args)
        .output()?)
}
