//! `coffer kbs get-resource` against a real `coffer-kbs` on loopback: the broker releases the
//! resource to sample evidence only when its configuration enables sample evidence *and* its
//! resource policy admits it; under the shipped default policy nothing is released (KBS-04).
//! `coffer kbs check` against the same brokers: every case reported, none failing against a
//! correctly configured `coffer-kbs`, and the expected failures (exit 1) against one whose
//! policy allows everything and whose admin API takes anonymous writes. `coffer kbs load` prints
//! its figures against one.
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

/// `coffer kbs check --url URL ARGS`.
fn check(url: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(coffer())
        .args(["kbs", "check", "--url", url])
        .args(args)
        .output()?)
}
