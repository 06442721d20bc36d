//! Boot benchmark: median launch→agent-ready for a Coffer sandbox against median
//! launch→/init-marker for bare QEMU on the same kernel, initramfs and flags (minus the vsock device
//! and monitor, which bare QEMU has no use for), both on q35, the machine type the runtime uses.
//! Coffer's launch→agent-ready is the sum of its phases, from the VMM backend's start to the
//! agent's first answer: the span `coffer sandbox run` prints as its boot line. Each pair also
//! shows when the host saw the guest reach `/init` on the console (polled as bare QEMU's is, so
//! the two launches compare up to there) and the whole `Sandbox::start` (state directory, launch,
//! first answer, `CreateSandbox`), whose median is printed against bare QEMU's as well.
//! Runs interleaved pairs (default 10, alternating which goes first), prints each pair, the
//! median of each phase of the Coffer launches, both medians and the ratio. Run with
//! `cargo bench -p coffer-tests --bench boot [-- PAIRS]`, after `bash guest/build.sh`.
//! `COFFER_BENCH_IMAGE_DIR=DIR` boots a guest image built elsewhere (its `guest-image.json`)
//! instead of the one built from this host's kernel, to compare kernels or initramfs variants.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use coffer_runtime::hypervisor::VmSpec;
use coffer_runtime::hypervisor::qemu::{
    Accel, Machine, Qemu, QemuConfig, VmPaths, argv, host_tsc_khz,
};
use coffer_runtime::image::GuestImage;
use coffer_runtime::sandbox::{Sandbox, SandboxConfig};
use coffer_tests::guest_image;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn bare(spec: &VmSpec, accel: Accel) -> anyhow::Result<Duration> {
    let paths = VmPaths::new(&spec.dir);
    // The machine type the runtime launches (q35), so the ratio compares like with like.
    let full = argv(spec, Machine::Q35, accel, &paths, host_tsc_khz(), &[]);
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
    let deadline = started + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(&paths.console_log)
            .is_ok_and(|c| c.contains(coffer_agent_protocol::GUEST_INIT_MARKER))
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "bare QEMU exited ({status}) before /init; console: {:?}",
                std::fs::read_to_string(&paths.console_log).unwrap_or_default()
            );
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
        .unwrap_or(10);
    let image: GuestImage = match std::env::var_os("COFFER_BENCH_IMAGE_DIR") {
        Some(dir) => {
            let manifest = std::path::Path::new(&dir).join("guest-image.json");
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", manifest.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?
        }
        None => guest_image(),
    };
    println!(
        "guest image: {} ({} bytes, uncompressed), kernel {}",
        image.initramfs.display(),
        std::fs::metadata(&image.initramfs)?.len(),
        image.kernel_release
    );
    let work = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let qemu = Qemu::new(QemuConfig {
            probe_cache: Some(coffer_runtime::hypervisor::probe_cache::DEFAULT_PATH.into()),
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
        println!("accelerator: {accel:?} (auto-detected), {runs} interleaved pairs");
        let (mut coffer, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut coffer_init, mut coffer_start) = (Vec::new(), Vec::new());
        let mut phases: Vec<(String, Vec<Duration>)> = Vec::new();
        for i in 0..runs {
            // Alternate which goes first, so a drift in the machine's load hits both alike.
            let bare_first = i % 2 == 1;
            let b_early = if bare_first { Some(bare(&spec, accel).await?) } else { None };
            let console_log = work
                .path()
                .join("state/sandboxes")
                .join(format!("bench-{i}"))
                .join("console.log");
            let started = Instant::now();
            // The host's view of the guest reaching /init, polled like bare QEMU's: comparable
            // with the bare launch, unlike the guest's own clock.
            let init_seen = tokio::spawn(async move {
                let deadline = started + Duration::from_secs(120);
                while Instant::now() < deadline {
                    if std::fs::read_to_string(&console_log)
                        .is_ok_and(|c| c.contains(coffer_agent_protocol::GUEST_INIT_MARKER))
                    {
                        return Some(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            });
            let sandbox = Sandbox::start(
                &qemu,
                SandboxConfig {
                    boot_timeout: Some(Duration::from_secs(120)),
                    ..coffer_tests::vm_config(
                        &image,
                        &format!("bench-{i}"),
                        &work.path().join("state"),
                    )
                },
            )
            .await?;
            let start_total = started.elapsed();
            let init_seen = init_seen.await?;
            let breakdown = sandbox.boot_phases().clone();
            // Launch (the backend's start) to the agent's first answer: the phases below, the
            // same span the runtime's boot line prints.
            let took = breakdown.total();
            sandbox.stop().await;
            let b = match b_early {
                Some(b) => b,
                None => bare(&spec, accel).await?,
            };
            println!(
                "pair {i:>2}: coffer launch->agent-ready {:>5} ms (/init seen at {:>5} ms, sandbox start {:>5} ms)   bare qemu launch->/init {:>5} ms   ratio {:.2}",
                took.as_millis(),
                init_seen.map_or(0, |d| d.as_millis()),
                start_total.as_millis(),
                b.as_millis(),
                took.as_secs_f64() / b.as_secs_f64()
            );
            let beside = breakdown
                .concurrent
                .iter()
                .map(|(name, d)| (format!("{name} (beside the connect)"), *d));
            for (name, d) in breakdown
                .phases
                .iter()
                .map(|(name, d)| ((*name).to_owned(), *d))
                .chain(beside)
            {
                match phases.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(d),
                    None => phases.push((name, vec![d])),
                }
            }
            if let Some(d) = init_seen {
                coffer_init.push(d);
            }
            ratios.push(took.as_secs_f64() / b.as_secs_f64());
            coffer.push(took);
            coffer_start.push(start_total);
            plain.push(b);
        }
        println!("median phases of the coffer launches:");
        for (name, v) in phases {
            println!("  {name:<36} {:>6} ms", median(v).as_millis());
        }
        if !coffer_init.is_empty() {
            println!(
                "median coffer launch->/init (the host seeing it on the console): {} ms",
                median(coffer_init).as_millis()
            );
        }
        let (c, b) = (median(coffer), median(plain));
        let s = median(coffer_start);
        println!(
            "median coffer sandbox start (state, launch, agent ready, CreateSandbox): {} ms ({:.2}x bare)",
            s.as_millis(),
            s.as_secs_f64() / b.as_secs_f64()
        );
        println!("median coffer launch->agent-ready: {} ms", c.as_millis());
        println!("median bare qemu launch->/init:    {} ms", b.as_millis());
        println!(
            "ratio coffer/bare: {:.2}x of the medians, {:.2}x median of the pairs (goal <= 1.20x)",
            c.as_secs_f64() / b.as_secs_f64(),
            median_f64(ratios)
        );
        anyhow::Ok(())
    })
}
