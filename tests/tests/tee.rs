//! Confidential launch without TEE hardware: the SEV-SNP argv the runtime generates is run by a
//! QEMU that knows `sev-snp-guest` (QEMU 10 from bookworm-backports, installed by tests/setup.sh)
//! and must fail only for lack of SNP support in KVM, never on an option; and a confidential
//! sandbox asked for on this host fails with the clear error, leaving nothing behind. (TDX argv is
//! checked against QEMU's documented syntax in `coffer-runtime`'s unit tests: no local QEMU has
//! `tdx-guest`, which needs 10.1.)
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use coffer_policies::initdata::{Algorithm, Entry, Initdata};
use coffer_runtime::hypervisor::qemu::{Accel, Machine, VmPaths, argv};
use coffer_runtime::hypervisor::{DiskSpec, VmSpec};
use coffer_runtime::tee::{ConfidentialSpec, SnpConfig};
use coffer_tests::{Suite, assert_nothing_left, busybox_rootfs, case, coffer, guest_image};

/// Debian's OVMF (SEV metadata, no kernel-hashes page: enough for QEMU to parse the launch).
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// How QEMU ended a launch attempt.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Refused only because KVM cannot run an SNP guest here.
    NoSnpHardware,
    /// Refused an option: the argv is wrong.
    BadOption(String),
    /// Anything else.
    Other(String),
}

/// Messages QEMU prints when the argv is fine but KVM cannot create an SNP VM.
const HARDWARE_REFUSALS: &[&str] = &[
    "not supported by KVM",
    "KVM required",
    "sev-snp-guest requires",
];
/// Messages of an argv problem.
const OPTION_ERRORS: &[&str] = &[
    "Invalid parameter",
    "invalid",
    "not found",
    "unknown",
    "Unsupported",
    "parameter length",
    "Property",
    "expects",
];

fn classify(stderr: &str) -> Verdict {
    if let Some(line) = stderr
        .lines()
        .find(|l| OPTION_ERRORS.iter().any(|e| l.contains(e)))
    {
        return Verdict::BadOption(line.to_owned());
    }
    if HARDWARE_REFUSALS.iter().any(|r| stderr.contains(r)) {
        Verdict::NoSnpHardware
    } else {
        Verdict::Other(stderr.to_owned())
    }
}

fn qemu_version() -> anyhow::Result<(u32, u32)> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .context("running qemu-system-x86_64")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (major, minor, _) = coffer_runtime::tee::detect::parse_version(&text)
        .with_context(|| format!("no version in {text:?}"))?;
    Ok((major, minor))
}

/// The SNP argv for a one-disk sandbox whose HOSTDATA is the digest of a real initdata document.
fn snp_argv(dir: &Path, firmware: &str) -> anyhow::Result<Vec<String>> {
    let image = guest_image();
    let initdata = Initdata::build(Algorithm::Sha256, &BTreeMap::new())?;
    let disk = dir.join("initdata.img");
    std::fs::write(
        &disk,
        coffer_policies::initdata::device::encode(initdata.raw()),
    )?;
    let host_data: [u8; 32] = initdata.digest().value().try_into()?;
    let spec = VmSpec {
        id: "snp-argv".into(),
        dir: dir.to_owned(),
        kernel: image.vmlinuz.clone(),
        initrd: image.initramfs.clone(),
        vcpus: 1,
        memory_mib: 512,
        kernel_params: Vec::new(),
        disks: vec![DiskSpec {
            path: disk,
            serial: "coffer-initdata".into(),
            read_only: true,
        }],
        nics: Vec::new(),
        confidential: Some(ConfidentialSpec::Snp {
            config: SnpConfig {
                firmware: firmware.into(),
                ..SnpConfig::default()
            },
            cbitpos: 51,
            host_data,
        }),
    };
    Ok(argv(
        &spec,
        Machine::Microvm,
        Accel::Tcg,
        &VmPaths::new(dir),
        None,
        &[],
    ))
}

/// Runs QEMU with `args` (it must exit by itself: no hardware) and classifies its complaint.
/// The vsock backend the runtime would start runs too, so QEMU gets past its chardev.
fn run_qemu(dir: &Path, args: &[String]) -> anyhow::Result<Verdict> {
    let paths = VmPaths::new(dir);
    let _ = std::fs::remove_file(&paths.vhost_socket);
    let mut backend = Command::new("vhost-device-vsock")
        .arg("--vm")
        .arg(format!(
            "guest-cid=3,socket={},uds-path={}",
            paths.vhost_socket.display(),
            paths.vsock_socket.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning vhost-device-vsock")?;
    let verdict = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !paths.vhost_socket.exists() {
            ensure!(
                Instant::now() < deadline,
                "vhost-device-vsock did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        qemu_verdict(args)
    })();
    let _ = backend.kill();
    let _ = backend.wait();
    verdict
}

fn qemu_verdict(args: &[String]) -> anyhow::Result<Verdict> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning qemu-system-x86_64")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)?;
            ensure!(
                !status.success(),
                "QEMU launched an SNP guest on a host without SNP: {stderr}"
            );
            return Ok(classify(&stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("QEMU neither ran nor failed within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn snp_argv_parses(work: &Path) -> anyhow::Result<()> {
    let version = qemu_version()?;
    ensure!(
        version >= (10, 0),
        "QEMU {version:?} has no sev-snp-guest: tests/setup.sh installs QEMU 10 from \
         bookworm-backports"
    );
    ensure!(
        Path::new(OVMF).is_file(),
        "{OVMF} missing: tests/setup.sh installs ovmf"
    );
    let dir = work.join("parse");
    std::fs::create_dir_all(&dir)?;
    let args = snp_argv(&dir, OVMF)?;
    let verdict = run_qemu(&dir, &args)?;
    ensure!(
        verdict == Verdict::NoSnpHardware,
        "QEMU {version:?} did not fail for lack of SNP hardware only: {verdict:?}\nargv: {args:?}"
    );
    Ok(())
}

/// The check above can tell a broken argv from a hardware refusal.
fn broken_argv_is_told_apart(work: &Path) -> anyhow::Result<()> {
    let dir = work.join("broken");
    std::fs::create_dir_all(&dir)?;
    let good = snp_argv(&dir, OVMF)?;
    let object = good
        .iter()
        .position(|a| a.starts_with("sev-snp-guest,"))
        .context("no sev-snp-guest object in the argv")?;
    type Mutation = fn(&str) -> String;
    let mutations: [(&str, Mutation); 3] = [
        ("unknown property", |o| format!("{o},bogus-flag=on")),
        ("short host-data", |o| {
            let cut = o.find("host-data=").unwrap();
            format!("{}host-data=AAAA", &o[..cut])
        }),
        ("bad policy syntax", |o| {
            o.replace("policy=0x30000", "policy=smt")
        }),
    ];
    for (what, mutate) in mutations {
        let mut args = good.clone();
        args[object] = mutate(&args[object]);
        match run_qemu(&dir, &args)? {
            Verdict::BadOption(_) => {}
            other => bail!("{what}: expected an option error, got {other:?}"),
        }
    }
    Ok(())
}

struct Refusal {
    image_dir: PathBuf,
    rootfs: PathBuf,
    state: PathBuf,
}

impl Refusal {
    fn run(&self, tee: &str, algorithm: Algorithm) -> anyhow::Result<(i32, String)> {
        let initdata = Initdata::build(algorithm, &BTreeMap::<Entry, String>::new())?;
        let path = self.state.with_file_name(format!("initdata-{tee}.toml"));
        std::fs::write(&path, initdata.raw())?;
        let out = Command::new(coffer())
            .args(["sandbox", "run", "--tee", tee, "--rootfs"])
            .arg(&self.rootfs)
            .arg("--image-dir")
            .arg(&self.image_dir)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--initdata")
            .arg(&path)
            .args(["--", "echo", "must-not-run"])
            .stdin(Stdio::null())
            .output()
            .context("running coffer")?;
        ensure!(
            !String::from_utf8_lossy(&out.stdout).contains("must-not-run"),
            "the command ran"
        );
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn assert_clean(&self) -> anyhow::Result<()> {
        // No sandbox was created at all: nothing under the state directory, no VM process.
        assert_nothing_left(&self.state)
    }
}

fn confidential_refused(work: &Path) -> anyhow::Result<()> {
    let image = guest_image();
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    let ctx = Refusal {
        image_dir: image.vmlinux.parent().unwrap().to_owned(),
        rootfs,
        state: work.join("state"),
    };
    for (tee, algorithm, name, missing) in [
        (
            "snp",
            Algorithm::Sha256,
            "AMD SEV-SNP",
            "/sys/module/kvm_amd/parameters/sev_snp",
        ),
        (
            "tdx",
            Algorithm::Sha384,
            "Intel TDX",
            "/sys/module/kvm_intel/parameters/tdx",
        ),
    ] {
        let (code, stderr) = ctx.run(tee, algorithm)?;
        ensure!(code == 125, "{tee}: exit {code}, stderr: {stderr}");
        let want = format!(
            "{name} is not available on this host, refusing to start a non-confidential VM"
        );
        ensure!(stderr.contains(&want), "{tee}: {stderr}");
        ensure!(
            stderr.contains(missing),
            "{tee}: does not name {missing}: {stderr}"
        );
        ctx.assert_clean()?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let mut suite = Suite::new("tee");
    case!(
        suite,
        "snp_argv_parses_in_qemu_10",
        snp_argv_parses(work.path())
    );
    case!(
        suite,
        "broken_snp_argv_is_told_apart",
        broken_argv_is_told_apart(work.path())
    );
    case!(
        suite,
        "confidential_sandbox_refused_on_this_host",
        confidential_refused(work.path())
    );
    suite.finish()
}
