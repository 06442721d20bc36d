//! INI-01 / INI-02 on real VMs: a guest whose initdata is tampered, absent, truncated, a gzip bomb,
//! not TOML or of an unknown version never serves the agent API. Each case boots its own VM and
//! expects it to die during boot with the reason on its console (the guest powers off).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::ensure;
use coffer_initdata::{Algorithm, Initdata, device};
use coffer_runtime::hypervisor::qemu::{Qemu, QemuConfig};
use coffer_runtime::image::GuestImage;
use coffer_runtime::sandbox::{InitdataDisk, Sandbox, SandboxConfig, SandboxError};
use coffer_tests::{Suite, case, guest_image, leftover_sandboxes, vm_config};

const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"kbs-url\" = \"https://kbs.example:8080\"\n";

struct Boot<'a> {
    qemu: &'a Qemu,
    image: &'a GuestImage,
    state: std::path::PathBuf,
}

impl Boot<'_> {
    /// Boots with `initdata` and extra kernel parameters; the guest must refuse to serve and the
    /// console must say `reason`.
    async fn expect_refusal(
        &self,
        id: &str,
        initdata: Option<InitdataDisk>,
        kernel_params: Vec<String>,
        reason: &str,
    ) -> anyhow::Result<()> {
        let config = SandboxConfig {
            boot_timeout: Some(Duration::from_secs(60)),
            initdata,
            kernel_params,
            ..vm_config(self.image, id, &self.state)
        };
        let console = match Sandbox::start(self.qemu, config).await {
            Ok(sandbox) => {
                sandbox.stop().await;
                anyhow::bail!("the guest served its API");
            }
            Err(SandboxError::DiedDuringBoot { console, .. }) => console,
            Err(other) => anyhow::bail!("expected the guest to power off, got: {other}"),
        };
        let log = std::fs::read_to_string(&console)?;
        ensure!(
            !log.contains("coffer-agent: ready"),
            "the agent reached ready:\n{log}"
        );
        ensure!(log.contains(reason), "console lacks {reason:?}:\n{log}");
        ensure!(
            leftover_sandboxes(&self.state).is_empty(),
            "sandbox files left behind"
        );
        Ok(())
    }
}

fn disk(image: Vec<u8>, digest_of: &[u8]) -> InitdataDisk {
    InitdataDisk {
        image,
        digest: Algorithm::Sha256.digest(digest_of),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn main() -> ExitCode {
    let image = guest_image();
    let work = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut suite = Suite::new("initdata");
    rt.block_on(async {
        let qemu = Qemu::new(QemuConfig {
            probe_cache: Some(work.path().join("accel-probe")),
            ..QemuConfig::default()
        });
        let boot = Boot {
            qemu: &qemu,
            image: &image,
            state: work.path().join("state"),
        };

        case!(
            suite,
            "ini02_tampered_disk",
            async {
                // The host measured DOC but hands the guest another document.
                let other = DOC.replace("kbs.example", "evil.example");
                boot.expect_refusal(
                    "tampered",
                    Some(disk(device::encode(other.as_bytes()), DOC.as_bytes())),
                    vec![],
                    "does not match the measured",
                )
                .await
            }
            .await
        );

        case!(
            suite,
            "ini01_absent_disk",
            async {
                let digest = Algorithm::Sha256.digest(DOC.as_bytes());
                boot.expect_refusal(
                    "absent",
                    None,
                    vec![format!("coffer.initdata={digest}")],
                    "no initdata disk is attached",
                )
                .await
            }
            .await
        );

        case!(
            suite,
            "ini01_truncated_disk",
            async {
                let long = format!(
                    "{DOC}\"policy.rego\" = '''\n{}'''\n",
                    "# padding\n".repeat(150)
                );
                let mut image = device::encode(long.as_bytes());
                ensure!(image.len() > 1024, "document too short to truncate");
                image.truncate(1024);
                boot.expect_refusal(
                    "truncated",
                    Some(disk(image, long.as_bytes())),
                    vec![],
                    "truncated payload",
                )
                .await
            }
            .await
        );

        case!(
            suite,
            "ini01_gzip_bomb",
            async {
                let bomb = gzip(&vec![b'#'; 32 << 20]);
                boot.expect_refusal(
                    "bomb",
                    Some(disk(device::encode(&bomb), b"unused")),
                    vec![],
                    "initdata is larger than 1048576 bytes",
                )
                .await
            }
            .await
        );

        case!(
            suite,
            "ini01_invalid_toml",
            async {
                let bad = b"version = \"0.1.0\"\nalgorithm = [\n";
                boot.expect_refusal(
                    "badtoml",
                    Some(disk(device::encode(bad), bad)),
                    vec![],
                    "initdata is not a valid document",
                )
                .await
            }
            .await
        );

        case!(
            suite,
            "ini01_unknown_version",
            async {
                let v2 = DOC.replace("0.1.0", "0.2.0");
                boot.expect_refusal(
                    "version",
                    Some(disk(device::encode(v2.as_bytes()), v2.as_bytes())),
                    vec![],
                    "initdata version \"0.2.0\" is not supported",
                )
                .await
            }
            .await
        );

        case!(
            suite,
            "ini01_policy_that_does_not_compile",
            async {
                // A broken policy in valid initdata: no fallback to the default policy.
                let entries = std::collections::BTreeMap::from([(
                    coffer_initdata::Entry::Policy,
                    "package coffer.policy\ndecision := {\"allow\": true\n".to_owned(),
                )]);
                let init = Initdata::build(Algorithm::Sha256, &entries)?;
                boot.expect_refusal(
                    "badpolicy",
                    Some(InitdataDisk::new(&init)),
                    vec![],
                    "loading the agent policy",
                )
                .await
            }
            .await
        );
    });
    suite.finish()
}
