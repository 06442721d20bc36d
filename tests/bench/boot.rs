//! Boot benchmark: median launch→agent-ready for a Coffer sandbox against median
//! launch→/init-marker for bare QEMU on the same kernel, initramfs and flags (minus the vsock device
//! and monitor, which bare QEMU has no use for). Runs interleaved, prints both medians and the
//! ratio. Run with `cargo bench -p coffer-tests --bench boot [-- RUNS]`.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use coffer_runtime::hypervisor::VmSpec;
use coffer_runtime::hypervisor::qemu::{
    Accel, AccelMode, Machine, Qemu, QemuConfig, VmPaths, argv, host_tsc_khz,
};
use coffer_runtime::sandbox::{Sandbox, SandboxConfig};
use coffer_tests::guest_image;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn bare(spec: &VmSpec, accel: Accel) -> anyhow::Result<Duration> {
    let paths = VmPaths::new(&spec.dir);
    let full = argv(spec, Machine::Microvm, accel, &paths, host_tsc_khz(), &[]);
    // Drop the vsock chardev/device and the monitor; the console goes straight to a file.
    let mut args = Vec::new();
    let mut it = full.into_iter();
    while let Some(a) = it.next() {
        if matches!(a.as_str(), "-chardev" | "-device" | "-qmp") {
            it.next();
            continue;
        }
        if a == "-serial" {
            it.next();
            args.push(a);
            args.push(format!("file:{}", paths.console_log.display()));
            continue;
        }
        args.push(a);
    }
    let _ = std::fs::remove_file(&paths.console_log);
    let started = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = started + Duration::from_secs(60);
    loop {
        if std::fs::read_to_string(&paths.console_log)
            .is_ok_and(|c| c.contains(coffer_agent_protocol::GUEST_INIT_MARKER))
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "bare QEMU never reached /init");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    child.kill().await?;
    Ok(took)
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let image = guest_image();
    let work = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let qemu = Qemu::new(QemuConfig {
            probe_cache: Some(work.path().join("accel-probe")),
            ..QemuConfig::default()
        });
        let bare_dir = work.path().join("bare");
        std::fs::create_dir_all(&bare_dir)?;
        let spec = VmSpec {
            id: "bare".into(),
            dir: bare_dir,
            kernel: image.vmlinux.clone(),
            initrd: image.initramfs.clone(),
            vcpus: 1,
            memory_mib: 512,
            kernel_params: Vec::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            confidential: None,
        };
        let accel = qemu.resolve_accel(&spec).await?;
        println!("accelerator: {accel:?} (auto-detected)");
        let _ = AccelMode::Auto;
        let (mut coffer, mut plain) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let started = Instant::now();
            let sandbox = Sandbox::start(
                &qemu,
                SandboxConfig {
                    boot_timeout: Some(Duration::from_secs(60)),
                    ..coffer_tests::vm_config(
                        &image,
                        &format!("bench-{i}"),
                        &work.path().join("state"),
                    )
                },
            )
            .await?;
            let took = started.elapsed();
            sandbox.stop().await;
            let b = bare(&spec, accel).await?;
            println!(
                "run {i}: coffer launch->agent-ready {:>5} ms   bare qemu launch->/init {:>5} ms",
                took.as_millis(),
                b.as_millis()
            );
            coffer.push(took);
            plain.push(b);
        }
        let (c, b) = (median(coffer), median(plain));
        println!("median coffer launch->agent-ready: {} ms", c.as_millis());
        println!("median bare qemu launch->/init:    {} ms", b.as_millis());
        println!(
            "ratio coffer/bare: {:.2}x (goal <= 1.20x)",
            c.as_secs_f64() / b.as_secs_f64()
        );
        anyhow::Ok(())
    })
}
