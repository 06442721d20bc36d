//! `coffer kbs get-resource` against a real `coffer-kbs` on loopback: the broker releases the
//! resource to sample evidence only when its configuration enables sample evidence *and* its
//! resource policy admits it; under the shipped default policy nothing is released (KBS-04).
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

    suite.finish()
}
