//! Shared harness of the end-to-end suites: locating the built binaries, building the guest image
//! once, making a busybox rootfs, named cases with a closing `N passed, N failed` line, and leak
//! checks (processes, runtime state).
//!
//! The suites need real components: `qemu-system-x86_64`, `vhost-device-vsock`, Debian's kernel and
//! `busybox-static`. `tests/setup.sh` installs them; a missing one is a failure, never a skip.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod agent;
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod kbs;
pub mod layout;
pub mod netns;
pub mod registry;
pub mod scan;

use std::path::{Path, PathBuf};
use std::time::Instant;

use coffer_runtime::hypervisor::Hypervisor;
use coffer_runtime::image::{self, GuestImage, GuestImageSpec};
use coffer_runtime::sandbox::{Sandbox, SandboxConfig};

/// The directory holding the workspace's binaries (`coffer`, `coffer-agent`) for this build.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<triple>/<profile>/deps/<test> → target/<triple>/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <profile>/deps")
        .to_path_buf()
}

/// Path of the workspace binary `name` of this build profile; panics if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace` with the same profile)",
        path.display()
    );
    path
}

/// Path of the `coffer` CLI.
pub fn coffer() -> PathBuf {
    bin("coffer")
}

/// The workspace's test vectors: `tests/vectors/` of the repository (provenance and expected
/// results in its README).
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors"))
}

/// Checks that a required host tool is installed; panics naming the setup script otherwise.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is not installed: run tests/setup.sh");
}

/// The guest agent as guests run it: `guest/build.sh`'s build (its own cargo invocation with only
/// the guest's features, the `guest` profile) in this build's target directory. Panics if it is
/// missing or older than a source it is built from (tests/run.sh builds it after the workspace),
/// so a suite never boots a stale agent or the workspace build's (whose features are unified
/// with the broker's). A test does not run cargo itself: a cargo inside `cargo test`/`cargo
/// bench` waits on the outer one's jobserver.
pub fn guest_agent() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    // target/<triple>/<profile> → target/<triple>/guest
    let agent = bin_dir()
        .parent()
        .expect("target directory")
        .join("guest/coffer-agent");
    let built = std::fs::metadata(&agent)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `bash guest/build.sh` (tests/run.sh does)",
                agent.display()
            )
        });
    let sources = [
        "Cargo.toml",
        "Cargo.lock",
        "guest",
        "image-rs/src",
        "attestation/src",
        "policies",
        "initdata/src",
    ];
    if let Some(newer) = sources
        .iter()
        .filter_map(|s| newest_file(&root.join(s)))
        .find(|(_, modified)| *modified > built)
    {
        panic!(
            "{} is older than {}: run `bash guest/build.sh` (tests/run.sh does)",
            agent.display(),
            newer.0.display()
        );
    }
    agent
}

/// The most recently modified file under `path` (itself if a file), skipping what the agent
/// binary is not built from (documentation, tests, benches, examples).
fn newest_file(path: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        if path.extension().is_some_and(|e| e == "md") {
            return None;
        }
        return Some((path.to_path_buf(), meta.modified().ok()?));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if matches!(name, "tests" | "benches" | "examples" | "testdata" | "fuzz") {
        return None;
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_file(&e.path()))
        .max_by_key(|(_, m)| *m)
}

/// Builds (or reuses, keyed by its inputs) the guest image for the guest build of the agent
/// ([`guest_agent`]), in `<profile>/coffer-test-image`.
pub fn guest_image() -> GuestImage {
    require_tool("qemu-system-x86_64");
    require_tool("vhost-device-vsock");
    let spec = GuestImageSpec::detect(guest_agent())
        .expect("no guest kernel: run tests/setup.sh (installs linux-image-amd64)");
    let out = bin_dir().join("coffer-test-image");
    image::build(&spec, &out).expect("building the guest image")
}

/// The test VM every VM suite boots: sandbox `id` under `state_root` on `image`, one vCPU, 512 MiB,
/// the runtime's default boot timeout (120 s under TCG, 30 s under KVM, as `coffer sandbox run`
/// has), no initdata, tunnels, published ports or TEE. Suites set what they need on top.
pub fn vm_config(image: &GuestImage, id: &str, state_root: &Path) -> SandboxConfig {
    SandboxConfig {
        id: id.into(),
        state_root: state_root.to_path_buf(),
        kernel: image.vmlinux.clone(),
        initrd: image.initramfs.clone(),
        vcpus: 1,
        memory_mib: 512,
        boot_timeout: None,
        initdata: None,
        kernel_params: Vec::new(),
        tee: None,
        registry_tunnels: Vec::new(),
        published_ports: Vec::new(),
        network: None,
        hostname: None,
    }
}

/// Fails unless no sandbox directory under `state_root` and no process mentioning one is left.
pub fn assert_nothing_left(state_root: &Path) -> anyhow::Result<()> {
    let left = leftover_sandboxes(state_root);
    anyhow::ensure!(left.is_empty(), "sandbox state left behind: {left:?}");
    let procs = processes_mentioning(&state_root.join("sandboxes").display().to_string());
    anyhow::ensure!(procs.is_empty(), "processes left behind: {procs:?}");
    Ok(())
}

/// Writes a busybox rootfs into `dir`.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: run tests/setup.sh (busybox-static)"
    );
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "work"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "sleep", "id", "pwd", "env", "true", "false", "ls", "head", "tr",
        "wc", "grep", "hostname", "stty", "test",
    ] {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).expect("symlink");
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
}

/// Fails unless the stopped sandbox whose directory was `sandbox_dir` left no process and nothing
/// under `state_root`.
pub fn assert_stopped_sandbox_gone(sandbox_dir: &Path, state_root: &Path) -> anyhow::Result<()> {
    let procs = processes_mentioning(&sandbox_dir.display().to_string());
    anyhow::ensure!(procs.is_empty(), "processes left: {procs:?}");
    let left = leftover_sandboxes(state_root);
    anyhow::ensure!(left.is_empty(), "state left: {left:?}");
    Ok(())
}

/// A one-layer image made by umoci as the OCI layout `<work>/<name>-layout` (tag v1): a busybox
/// root, then whatever `fill` adds to it (given the root directory).
pub fn umoci_layout(
    work: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    require_tool("umoci");
    let layout = work.join(format!("{name}-layout"));
    let bundle = work.join(format!("{name}-bundle"));
    let umoci = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("umoci").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let l = layout.display().to_string();
    let b = bundle.display().to_string();
    umoci(&["init", "--layout", &l])?;
    umoci(&["new", "--image", &format!("{l}:v1")])?;
    umoci(&["unpack", "--rootless", "--image", &format!("{l}:v1"), &b])?;
    busybox_rootfs(&bundle.join("rootfs"));
    fill(&bundle.join("rootfs"))?;
    umoci(&["repack", "--image", &format!("{l}:v1"), &b])?;
    Ok(layout)
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            found.push((pid, cmd));
        }
    }
    found
}

/// Paths of the bound unix sockets (`/proc/net/unix`, this process's network namespace) under
/// `dir`: a socket some process still holds open there.
pub fn unix_sockets_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter(|path| path.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Lines of `/proc/self/mountinfo` naming a path under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Entries left in `state_root/sandboxes`.
pub fn leftover_sandboxes(state_root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state_root.join("sandboxes"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Polls `f` (every 200 ms) until it returns `Some` or `timeout` passes.
pub fn eventually<T>(
    timeout: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Runs named cases in order and prints a `N passed, N failed` closing line. Returns the exit code.
#[derive(Debug)]
pub struct Suite {
    name: &'static str,
    passed: usize,
    failed: Vec<String>,
}

impl Suite {
    /// A new suite.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            passed: 0,
            failed: Vec::new(),
        }
    }

    /// Runs the suite's setup as its first case; `None` (recorded as failed) if it fails.
    pub fn setup<C>(&mut self, setup: impl FnOnce() -> anyhow::Result<C>) -> Option<C> {
        let started = Instant::now();
        match setup() {
            Ok(ctx) => {
                self.record("setup", started, Ok(()));
                Some(ctx)
            }
            Err(err) => {
                self.record("setup", started, Err(err));
                None
            }
        }
    }

    /// Boots the suite's shared VM as its `boot` case; `None` (recorded as failed) if it fails.
    pub async fn boot<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        config: SandboxConfig,
    ) -> Option<Sandbox> {
        let started = Instant::now();
        match Sandbox::start(hypervisor, config).await {
            Ok(sandbox) => {
                self.record("boot", started, Ok(()));
                Some(sandbox)
            }
            Err(err) => {
                self.record("boot", started, Err(err.into()));
                None
            }
        }
    }

    /// Records the outcome of one case.
    pub fn record(&mut self, case: &str, started: Instant, result: anyhow::Result<()>) {
        let ms = started.elapsed().as_millis();
        match result {
            Ok(()) => {
                println!("case {}::{case} ... ok ({ms} ms)", self.name);
                self.passed += 1;
            }
            Err(err) => {
                let message = format!("{err:#}");
                println!("case {}::{case} ... FAILED ({ms} ms): {message}", self.name);
                print_console_tail(&message);
                self.failed.push(case.to_owned());
            }
        }
    }

    /// Prints the summary; the process exit code.
    pub fn finish(self) -> std::process::ExitCode {
        if !self.failed.is_empty() {
            println!("failed cases: {}", self.failed.join(", "));
        }
        println!(
            "{}: {} passed, {} failed",
            self.name,
            self.passed,
            self.failed.len()
        );
        if self.failed.is_empty() && self.passed > 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs `f` as case `name` of `suite`.
#[macro_export]
macro_rules! case {
    ($suite:expr, $name:literal, $body:expr) => {{
        let started = std::time::Instant::now();
        let result: anyhow::Result<()> = $body;
        $suite.record($name, started, result);
    }};
}

/// Lines of a kept console log printed under a failed case.
const CONSOLE_TAIL_LINES: usize = 60;

/// A failed case whose error names a kept console log (`console log: PATH`) gets the log's last
/// lines printed under it: the temporary directory holding it is gone by the time anyone reads CI
/// output, and a guest that did not come up is otherwise undiagnosable.
/// Lines shown of each VMM log kept beside a failed case's console log.
const VMM_LOG_TAIL_LINES: usize = 20;

fn print_console_tail(message: &str) {
    let Some((_, rest)) = message.split_once("console log: ") else {
        return;
    };
    let path = rest.split_whitespace().next().unwrap_or_default();
    let path = path.trim_end_matches([')', ',', ';']);
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    println!("  --- last {} lines of {path} ---", lines.len() - from);
    for line in &lines[from..] {
        println!("  | {line}");
    }
    println!("  --- end of console log ---");
    // The VMM's own logs the runtime kept beside it (`<id>-qemu.log`, `<id>-vhost.err`…).
    let kept = std::path::Path::new(path);
    let (Some(dir), Some(name)) = (kept.parent(), kept.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Some(id) = name.strip_suffix("-console.log") else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file == name || !file.starts_with(&format!("{id}-")) {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(VMM_LOG_TAIL_LINES);
        println!(
            "  --- last {} lines of {} ---",
            lines.len() - from,
            entry.path().display()
        );
        for line in &lines[from..] {
            println!("  | {line}");
        }
    }
}

/// A pod manifest (user 1000) whose one container `app` runs `sh -c script` from `image` with the
/// workload identity at `/run/spiffe` (SPIFFE ID `ns/<namespace>/sa/<account>`) and its output
/// readable by the host, dropping `NET_RAW` as a confidential pod's containers must (containerd's
/// default set has it, the confidential policy's does not). It sets no environment: the
/// runtime's default `PATH` and `HOME` are what `coffer policy gen` lists for an image without them.
pub fn identity_pod(
    name: &str,
    namespace: &str,
    account: &str,
    image: &str,
    script: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  annotations:
    coffer.dev/allow-logs: "true"
    coffer.dev/workload-identity.app: /run/spiffe
spec:
  serviceAccountName: {account}
  securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
  containers:
    - name: app
      image: {image}
      command: ["/bin/sh", "-c", "{script}"]
      securityContext: {{capabilities: {{drop: [NET_RAW]}}}}
"#,
        script = yaml_quoted(script),
    )
}

/// `s` escaped for a YAML double-quoted scalar.
pub fn yaml_quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
