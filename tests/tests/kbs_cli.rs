//! `coffer kbs get-resource` against a real `coffer-kbs` on loopback: the broker releases the
//! resource to sample evidence only when its configuration enables sample evidence *and* its
//! resource policy admits it; under the shipped default policy nothing is released (KBS-04).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use coffer_tests::{Suite, bin, case, coffer};

const SECRET: &[u8] = b"the image key-encryption key\n";

/// A `coffer-kbs` serving plain HTTP on a free port; killed on drop.
struct Broker {
    child: Child,
    url: String,
}

impl Broker {
    fn start(dir: &Path, name: &str, policy: Option<&str>) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let resources = dir.join(format!("{name}-resources"));
        std::fs::create_dir_all(resources.join("default/key"))?;
        std::fs::write(resources.join("default/key/1"), SECRET)?;
        let policy_line = match policy {
            Some(rego) => {
                let file = dir.join(format!("{name}-policy.rego"));
                std::fs::write(&file, rego)?;
                format!("file = {:?}\n", file.display().to_string())
            }
            None => String::new(),
        };
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\ninsecure_http = true\n\n[resources]\ndir = {:?}\n\n[policy]\n{policy_line}\n[attestation]\nallow_sample = true\n",
                resources.display().to_string()
            ),
        )?;
        let child = Command::new(bin("coffer-kbs"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting coffer-kbs")?;
        let broker = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "coffer-kbs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    fn get(&self, extra: &[&str]) -> anyhow::Result<Output> {
        Command::new(coffer())
            .args([
                "kbs",
                "get-resource",
                "--url",
                &self.url,
                "--path",
                "default/key/1",
                "--tee",
                "sample",
            ])
            .args(extra)
            .output()
            .context("running coffer")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let mut suite = Suite::new("kbs_cli");

    case!(
        suite,
        "sample_released_only_when_policy_admits_it",
        (|| {
            let allow_sample = "package policy\n\nimport rego.v1\n\ndefault allow := false\n\nallow if data.plugin == \"resource\"\n";
            let broker = Broker::start(dir, "open", Some(allow_sample))?;
            for extra in [&[][..], &["--bearer"][..]] {
                let out = broker.get(extra)?;
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
            let broker = Broker::start(dir, "default", None)?;
            let out = broker.get(&[])?;
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
