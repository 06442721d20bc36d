//! Crash-only host side: `coffer sandbox run` killed with SIGKILL at random points of every phase
//! — the accelerator probe, the launch, the boot, the guest pull, the container running, the
//! teardown — 20 times in a loop, each kill timed from the phase's own marker plus a seeded
//! random delay (the seed is printed; `COFFER_CRASH_SEED` repeats a run). After every kill no
//! process of the killed run may outlive it (its VM dies with it, before any collector runs), and
//! once the next run started nothing of it may be left: no process, socket, mount or state
//! directory. Around the loop: a `gc` while another sandbox runs leaves that one alone, and a
//! killed sandbox on a pod network leaves a qdisc that the next `gc` removes.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use coffer_policies::initdata::{Algorithm, Entry, Initdata};
use coffer_tests::netns::{NetNs, veth_pair};
use coffer_tests::registry::Registry;
use coffer_tests::{
    Suite, assert_nothing_left, busybox_rootfs, case, coffer, eventually, guest_image,
    leftover_sandboxes, mounts_under, processes_mentioning, unix_sockets_under,
};

/// Kills in the loop.
const KILLS: usize = 20;
/// The whole loop's bound.
const LOOP_LIMIT: Duration = Duration::from_secs(40 * 60);
/// How long a run may take to reach a phase's marker (a TCG boot under load, then a pull).
const MARKER_LIMIT: Duration = Duration::from_secs(240);
/// How long the processes of a killed run may take to die (SIGKILL from the kernel, then a
/// QEMU with 512 MiB of guest memory exiting).
const DEATH_LIMIT: Duration = Duration::from_secs(10);
/// Fewest kills each phase must have hit.
const MIN_HITS: usize = 2;
/// `--timings` lines that mark the phases of a run.
const BOOTED: &str = "boot (VM launch to agent ready)";
const PULLED: &str = "pull (";
const RAN: &str = "run (to exit, output drained)";

/// The QEMU the probe phase's runs are configured with: the real one, with `-accel kvm -cpu host`
/// turned into `-accel tcg -cpu max`. The probe then boots the guest under emulation, which takes
/// seconds, as a probe does on a host whose KVM boots the guest slowly or never (the case the
/// issue saw left running); on this kind of host a KVM probe otherwise fails within milliseconds,
/// and on one with a working KVM it succeeds within one or two seconds. Either way the probe's
/// QEMU runs when the kill comes. The VM that follows a probe that finished boots the same way.
const SLOW_PROBE: &str = r#"#!/bin/sh
for a do
  shift
  case "$a" in
    kvm) set -- "$@" tcg ;;
    host) set -- "$@" max ;;
    *) set -- "$@" "$a" ;;
  esac
done
exec qemu-system-x86_64 "$@"
"#;

/// SplitMix64: small, seeded, good enough to pick delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A delay in `0..max_ms` milliseconds.
    fn delay(&mut self, max_ms: u64) -> Duration {
        Duration::from_millis(self.next() % max_ms.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Probe,
    Launch,
    Boot,
    GuestPull,
    Running,
    Teardown,
}

const PHASES: [Phase; 6] = [
    Phase::Probe,
    Phase::Launch,
    Phase::Boot,
    Phase::GuestPull,
    Phase::Running,
    Phase::Teardown,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::Launch => "launch",
            Self::Boot => "boot",
            Self::GuestPull => "guest pull",
            Self::Running => "container running",
            Self::Teardown => "teardown",
        }
    }

    /// The window after the marker the kill falls in, in milliseconds: within the phase's
    /// typical length on a loaded two-core host under TCG.
    fn window_ms(self) -> u64 {
        match self {
            // The probe's QEMU boots under emulation for seconds (see `SLOW_PROBE`).
            Self::Probe => 2000,
            // Backend socket, QEMU up, QMP and the console socket: ~90 ms on a quiet host (a
            // 150 ms window missed 3 kills of 4 there), longer under load.
            Self::Launch => 60,
            // 5–12 s from the console's start to the agent.
            Self::Boot => 2500,
            // A one-layer busybox image from a loopback registry: 1–3 s.
            Self::GuestPull => 400,
            Self::Running => 1000,
            // DestroySandbox, QMP quit, QEMU's exit, the backend, the directory.
            Self::Teardown => 60,
        }
    }
}

/// A `coffer sandbox run` in progress, its output read as it comes.
struct Run {
    child: Child,
    pid: u32,
    dir: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn reader(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Run {
    fn start(mut cmd: Command, state: &Path) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning coffer")?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            reader(child.stdout.take().context("stdout")?, stdout.clone()),
            reader(child.stderr.take().context("stderr")?, stderr.clone()),
        ];
        let pid = child.id();
        Ok(Self {
            child,
            pid,
            // `coffer sandbox run` names its sandbox after its pid.
            dir: state.join("sandboxes").join(format!("run-{pid}")),
            stdout,
            stderr,
            readers,
        })
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The processes of this run's sandbox (they name files in its directory).
    fn vm_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning(&format!("{}/", self.dir.display()))
    }

    /// Waits until `marker` holds, polling every `every`; fails if the run ends first or the
    /// marker does not come within [`MARKER_LIMIT`].
    fn wait_for(
        &mut self,
        what: &str,
        every: Duration,
        mut marker: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + MARKER_LIMIT;
        loop {
            if marker(self) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "coffer ended ({status}) before {what}; stderr: {}",
                    self.stderr()
                );
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                bail!(
                    "{what}: not within {MARKER_LIMIT:?}; stderr: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(every);
        }
    }

    /// SIGKILL, then the exit status.
    fn kill(mut self) -> anyhow::Result<ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.pid)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let status = self.child.wait()?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(status)
    }

    /// Waits (bounded) for the run to end on its own; (status, stdout, stderr).
    fn finish(mut self, limit: Duration) -> anyhow::Result<(ExitStatus, String, String)> {
        let until = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                bail!("coffer did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok((status, self.stdout(), self.stderr()))
    }
}

impl Drop for Run {
    /// A run a failed case leaves is killed (its VM goes with it).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Ctx {
    image_dir: PathBuf,
    rootfs: PathBuf,
    state: PathBuf,
    work: PathBuf,
    /// The loopback registry (`127.0.0.1:PORT`).
    registry: String,
    /// The pushed busybox image, by digest.
    image: String,
    /// Initdata trusting the registry over plain HTTP.
    initdata: PathBuf,
    /// [`SLOW_PROBE`], installed.
    slow_probe: PathBuf,
}

impl Ctx {
    /// `coffer sandbox run` on this suite's state directory, with `--timings` (the phase lines).
    fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(coffer());
        c.args(["sandbox", "run", "--timings", "--image-dir"])
            .arg(&self.image_dir)
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra);
        c
    }

    /// A run from the host rootfs of `sh -c script`.
    fn rootfs_run(&self, extra: &[&str], script: &str) -> Command {
        let mut c = self.command(extra);
        c.arg("--rootfs")
            .arg(&self.rootfs)
            .args(["--", "sh", "-c", script]);
        c
    }

    /// A run of `sh -c script` in the image the guest pulls.
    fn pull_run(&self, script: &str) -> Command {
        let mut c = self.command(&[]);
        c.args(["--image", &self.image, "--registry", &self.registry])
            .arg("--initdata")
            .arg(&self.initdata)
            .args(["--", "/bin/sh", "-c", script]);
        c
    }

    /// `coffer sandbox gc` on this suite's state directory: (exit status, stdout, stderr).
    fn gc(&self) -> anyhow::Result<(ExitStatus, String, String)> {
        let out = Command::new(coffer())
            .args(["sandbox", "gc", "--state-dir"])
            .arg(&self.state)
            .output()
            .context("coffer sandbox gc")?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// Fails listing what of the run whose sandbox directory was `dir` is left: processes, bound
/// sockets, mounts, the directory itself.
fn nothing_of(dir: &Path) -> anyhow::Result<()> {
    let mut left = Vec::new();
    for (pid, cmd) in processes_mentioning(&format!("{}/", dir.display())) {
        left.push(format!("process {pid}: {cmd}"));
    }
    for socket in unix_sockets_under(dir) {
        left.push(format!("socket {socket}"));
    }
    for mount in mounts_under(dir) {
        left.push(format!("mount {mount}"));
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    ensure!(left.is_empty(), "left behind: {left:#?}");
    Ok(())
}

/// The processes of a killed run must die with it, with no collector's help.
fn died_with_it(dir: &Path) -> anyhow::Result<Duration> {
    let killed = Instant::now();
    let needle = format!("{}/", dir.display());
    loop {
        if processes_mentioning(&needle).is_empty() && unix_sockets_under(dir).is_empty() {
            return Ok(killed.elapsed());
        }
        ensure!(
            killed.elapsed() < DEATH_LIMIT,
            "the killed run's processes outlived it by {DEATH_LIMIT:?}: {:?}",
            processes_mentioning(&needle)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One kill of the loop: a run started for `phase`, killed `delay` after the phase's marker.
/// Returns whether the kill landed in the phase, and the killed run's sandbox directory.
fn kill_in(ctx: &Ctx, phase: Phase, n: usize, rng: &mut Rng) -> anyhow::Result<(bool, PathBuf)> {
    let delay = rng.delay(phase.window_ms());
    let cmd = match phase {
        Phase::Probe => {
            // A probe cache of its own, empty: this run probes, with a QEMU that takes seconds
            // to answer (see `SLOW_PROBE`).
            let config = ctx.work.join(format!("probe-{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[qemu]\nbinary = \"{}\"\nprobe_cache = \"{}\"\n",
                    ctx.slow_probe.display(),
                    ctx.work.join(format!("probe-cache-{n}")).display()
                ),
            )?;
            let config = config.display().to_string();
            ctx.rootfs_run(&["--config", &config], "echo running; exec sleep 1000")
        }
        Phase::GuestPull => ctx.pull_run("echo running; exec sleep 1000"),
        Phase::Teardown => ctx.rootfs_run(&[], "echo bye"),
        _ => ctx.rootfs_run(&[], "echo running; exec sleep 1000"),
    };
    let mut run = Run::start(cmd, &ctx.state)?;
    let dir = run.dir.clone();
    let probe = format!("{}/kvm-probe/", dir.display());
    let console = dir.join("console.log");
    let fast = Duration::from_millis(2);
    let scan = Duration::from_millis(20);
    match phase {
        Phase::Probe => run.wait_for("the probe's QEMU", scan, |_| {
            !processes_mentioning(&probe).is_empty()
        })?,
        Phase::Launch => run.wait_for("the sandbox directory", fast, |r| r.dir.exists())?,
        Phase::Boot => run.wait_for("the console log", fast, |_| console.exists())?,
        Phase::GuestPull => run.wait_for("the agent", fast, |r| r.stderr().contains(BOOTED))?,
        Phase::Running => run.wait_for("the container's output", fast, |r| {
            r.stdout().contains("running")
        })?,
        Phase::Teardown => {
            run.wait_for("the command's end", fast, |r| r.stderr().contains(RAN))?;
        }
    }
    std::thread::sleep(delay);
    // Where the run is at the kill.
    let still_in_phase = match phase {
        Phase::Probe => !processes_mentioning(&probe).is_empty(),
        Phase::Launch => !console.exists(),
        Phase::Boot => !run.stderr().contains(BOOTED),
        Phase::GuestPull => !run.stderr().contains(PULLED),
        Phase::Running | Phase::Teardown => true,
    };
    let status = run.kill()?;
    let hit = still_in_phase && status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32);
    let died_in = died_with_it(&dir)?;
    println!(
        "  kill {n:2}: {:<17} {:>4} ms after the marker: {} (run-{}); its VM died within {} ms{}",
        phase.name(),
        delay.as_millis(),
        if hit { "hit" } else { "missed (phase over)" },
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("run-"))
            .unwrap_or("?"),
        died_in.as_millis(),
        if dir.exists() {
            "; its directory is left for the next run"
        } else {
            ""
        }
    );
    if phase == Phase::Probe {
        let cache = ctx.work.join(format!("probe-cache-{n}"));
        ensure!(
            !hit || !cache.exists(),
            "a killed probe wrote its verdict to {}",
            cache.display()
        );
    }
    Ok((hit, dir))
}

#[derive(Debug, Default)]
struct Tally {
    tries: usize,
    hits: usize,
    dirs_left: usize,
}

fn kill_loop(ctx: &Ctx) -> anyhow::Result<()> {
    let seed = std::env::var("COFFER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("  kill loop: {KILLS} kills, seed {seed} (COFFER_CRASH_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut tally: BTreeMap<Phase, Tally> = BTreeMap::new();
    let mut previous: Option<PathBuf> = None;
    for n in 0..KILLS {
        ensure!(
            started.elapsed() < LOOP_LIMIT,
            "the loop took over {LOOP_LIMIT:?} after {n} kills"
        );
        let phase = PHASES[n % PHASES.len()];
        let (hit, dir) = kill_in(ctx, phase, n, &mut rng)?;
        // This run collected what the one killed before it left.
        if let Some(previous) = previous.take() {
            nothing_of(&previous).context("after the next run")?;
        }
        let entry = tally.entry(phase).or_default();
        entry.tries += 1;
        entry.hits += usize::from(hit);
        entry.dirs_left += usize::from(dir.exists());
        previous = Some(dir);
    }
    // The last one is collected by an explicit gc, which names it.
    let last = previous.context("no kill")?;
    let (status, out, err) = ctx.gc()?;
    ensure!(status.success(), "gc: {status}: {err}");
    ensure!(
        !last.exists() || out.contains(&last.display().to_string()),
        "gc did not report {}: {out}",
        last.display()
    );
    nothing_of(&last).context("after gc")?;
    println!(
        "  kill loop: {KILLS} kills in {} s; per phase (tries / hits / left a directory for the next run):",
        started.elapsed().as_secs()
    );
    for (phase, t) in &tally {
        println!(
            "    {:<17} {} / {} / {}",
            phase.name(),
            t.tries,
            t.hits,
            t.dirs_left
        );
    }
    for phase in PHASES {
        let hits = tally.get(&phase).map_or(0, |t| t.hits);
        ensure!(
            hits >= MIN_HITS,
            "only {hits} kills hit the {} phase",
            phase.name()
        );
    }
    // And a run after all that works and leaves nothing.
    let run = Run::start(ctx.rootfs_run(&[], "echo after"), &ctx.state)?;
    let (status, out, err) = run.finish(Duration::from_secs(240))?;
    ensure!(
        status.success() && out == "after\n",
        "{status}: {out:?} {err}"
    );
    assert_nothing_left(&ctx.state)?;
    ensure!(unix_sockets_under(&ctx.state).is_empty());
    ensure!(mounts_under(&ctx.state).is_empty());
    Ok(())
}

/// A sandbox started and killed while another runs: `gc` (and a third run's own collection)
/// removes the killed one's state and leaves the live one's alone.
fn gc_beside_a_live_sandbox(ctx: &Ctx) -> anyhow::Result<()> {
    let script = "echo running; exec sleep 1000";
    let mut live = Run::start(ctx.rootfs_run(&[], script), &ctx.state)?;
    live.wait_for(
        "the live sandbox's container",
        Duration::from_millis(20),
        |r| r.stdout().contains("running"),
    )?;
    let live_vm = live.vm_processes();
    ensure!(!live_vm.is_empty(), "no VM processes for the live sandbox");
    let owner = std::fs::read_to_string(live.dir.join("owner.json"))?;

    let mut killed = Run::start(ctx.rootfs_run(&[], script), &ctx.state)?;
    killed.wait_for(
        "the second sandbox's container",
        Duration::from_millis(20),
        |r| r.stdout().contains("running"),
    )?;
    let killed_dir = killed.dir.clone();
    killed.kill()?;
    died_with_it(&killed_dir)?;
    ensure!(
        killed_dir.exists(),
        "the killed run's directory is the test's subject"
    );

    let (status, out, err) = ctx.gc()?;
    ensure!(status.success(), "gc: {status}: {err}");
    ensure!(
        out.contains(&killed_dir.display().to_string())
            && !out.contains(&live.dir.display().to_string()),
        "gc printed {out:?}"
    );
    nothing_of(&killed_dir)?;
    // The live sandbox: its directory, owner and VM as they were, still running.
    ensure!(
        std::fs::read_to_string(live.dir.join("owner.json"))? == owner,
        "the live sandbox's owner record changed"
    );
    ensure!(
        live.vm_processes() == live_vm,
        "the live sandbox's VM changed"
    );
    ensure!(live.child.try_wait()?.is_none(), "the live run ended");

    // A run's own collection leaves it alone too.
    let other = Run::start(ctx.rootfs_run(&[], "echo beside"), &ctx.state)?;
    let (status, out, err) = other.finish(Duration::from_secs(240))?;
    ensure!(
        status.success() && out == "beside\n",
        "{status}: {out:?} {err}"
    );
    ensure!(
        live.vm_processes() == live_vm,
        "a run's collection touched the live sandbox"
    );

    // The live one tears down as usual.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(live.pid)?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let (status, _, err) = live.finish(Duration::from_secs(60))?;
    ensure!(status.code() == Some(130), "{status}: {err}");
    assert_nothing_left(&ctx.state)
}

/// A run on a pod network killed while its container runs leaves the ingress qdisc on the CNI
/// interface (its tap went with QEMU); `gc` removes it, and the namespace attaches again.
fn netns_kill_and_gc(ctx: &Ctx) -> anyhow::Result<()> {
    let node = NetNs::create("crash-node")?;
    let pod = NetNs::create("crash-pod")?;
    veth_pair(
        &node,
        "vcrash0",
        Ipv4Addr::new(198, 18, 3, 1),
        &pod,
        Ipv4Addr::new(198, 18, 3, 2),
    )?;
    let netns = pod.path().display().to_string();
    let qdisc = || -> anyhow::Result<bool> {
        let out = Command::new("tc")
            .args(["-n", pod.name(), "qdisc", "show", "dev", "eth0"])
            .output()?;
        ensure!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).contains("qdisc ingress"))
    };
    let tap = || pod.ip(&["link", "show", "tap0_coffer"]).is_ok();

    let mut run = Run::start(
        ctx.rootfs_run(&["--netns", &netns], "echo running; exec sleep 1000"),
        &ctx.state,
    )?;
    run.wait_for("the container's output", Duration::from_millis(20), |r| {
        r.stdout().contains("running")
    })?;
    ensure!(qdisc()? && tap(), "the pod network is not attached");
    let dir = run.dir.clone();
    run.kill()?;
    died_with_it(&dir)?;
    eventually(DEATH_LIMIT, "the tap to go with QEMU", || {
        Ok((!tap()).then_some(()))
    })?;
    ensure!(
        qdisc()?,
        "the crash left no qdisc: nothing for the gc to show"
    );
    ensure!(dir.join("network.json").exists(), "no network record");

    let (status, out, err) = ctx.gc()?;
    ensure!(status.success(), "gc: {status}: {err}");
    ensure!(
        out.contains(&dir.display().to_string()) && out.contains("ingress qdiscs of eth0"),
        "gc printed {out:?}"
    );
    ensure!(!qdisc()?, "the qdisc is left after gc");
    nothing_of(&dir)?;

    // The namespace works for the next sandbox, which leaves nothing.
    let run = Run::start(
        ctx.rootfs_run(&["--netns", &netns], "echo again"),
        &ctx.state,
    )?;
    let (status, out, err) = run.finish(Duration::from_secs(240))?;
    ensure!(
        status.success() && out == "again\n",
        "{status}: {out:?} {err}"
    );
    ensure!(!qdisc()? && !tap(), "the second run left its attachment");
    assert_nothing_left(&ctx.state)
}

fn setup(work: &Path, registry: &Registry) -> anyhow::Result<Ctx> {
    let image = guest_image();
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    let layout = coffer_tests::umoci_layout(work, "busybox", |_| Ok(()))?;
    let digest = registry.push(&layout, "crash/busybox:v1")?;
    let host = format!("127.0.0.1:{}", registry.port);
    let entries = BTreeMap::from([(
        Entry::Registries,
        format!("[[registry]]\nhost = \"{host}\"\ninsecure = true\n"),
    )]);
    let initdata = work.join("initdata.toml");
    std::fs::write(
        &initdata,
        Initdata::build(Algorithm::Sha384, &entries)?.raw(),
    )?;
    // The probe phase needs a host where the probe runs: KVM openable.
    ensure!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "/dev/kvm cannot be opened: the accelerator probe (one of the phases killed) never runs"
    );
    let slow_probe = work.join("slow-probe-qemu");
    std::fs::write(&slow_probe, SLOW_PROBE)?;
    std::fs::set_permissions(
        &slow_probe,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let ctx = Ctx {
        slow_probe,
        image_dir: image.vmlinux.parent().context("image dir")?.to_path_buf(),
        rootfs,
        state: work.join("state"),
        work: work.to_path_buf(),
        registry: host.clone(),
        image: format!("{host}/crash/busybox@{digest}"),
        initdata,
    };
    // One full run: it probes the accelerator once (if this host has not yet) and caches the
    // verdict host-wide, so only the probe phase's runs (given caches of their own) probe again.
    let run = Run::start(ctx.rootfs_run(&[], "echo ready"), &ctx.state)?;
    let (status, out, err) = run.finish(Duration::from_secs(300))?;
    ensure!(
        status.success() && out == "ready\n",
        "{status}: {out:?} {err}"
    );
    ensure!(
        std::path::Path::new(coffer_runtime::hypervisor::probe_cache::DEFAULT_PATH).exists(),
        "no probe verdict cached host-wide"
    );
    assert_nothing_left(&ctx.state)?;
    Ok(ctx)
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let mut suite = Suite::new("crash");
    let registry = match Registry::start() {
        Ok(r) => r,
        Err(err) => {
            suite.record("registry", Instant::now(), Err(err));
            return suite.finish();
        }
    };
    let Some(ctx) = suite.setup(|| setup(work.path(), &registry)) else {
        return suite.finish();
    };

    case!(
        suite,
        "sigkill_in_every_phase_leaves_nothing",
        kill_loop(&ctx)
    );
    case!(
        suite,
        "gc_leaves_a_live_sandbox_alone",
        gc_beside_a_live_sandbox(&ctx)
    );
    case!(
        suite,
        "killed_netns_sandbox_qdisc_removed_by_gc",
        netns_kill_and_gc(&ctx)
    );
    case!(suite, "nothing_left_at_the_end", {
        let left = leftover_sandboxes(&ctx.state);
        if left.is_empty() {
            assert_nothing_left(&ctx.state)
        } else {
            Err(anyhow::anyhow!("left: {left:?}"))
        }
    });
    suite.finish()
}
