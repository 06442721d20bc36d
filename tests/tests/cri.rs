//! `containerd-shim-coffer-v2` under Kubernetes' CRI: a private containerd (Debian's 1.6) with its
//! CRI plugin, driven through its CRI socket by a small client (`coffer_tests::cri`) as the
//! kubelet drives it — RunPodSandbox, CreateContainer, StartContainer, ContainerStatus, ExecSync,
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox — with the runtime handlers
//! `coffer` and `coffer-gp` (guest pull).
//!
//! Nothing is pulled: the pause image (an empty layer whose entrypoint `/pause` does not exist,
//! so it cannot have run anywhere) and the busybox image are built with `umoci` and imported into
//! CRI's `k8s.io` namespace. Pods use the node's network (`NamespaceMode::Node`): the pod VM has
//! no network device for a CNI-made network namespace to reach, so CNI would only configure a
//! host namespace nothing in the pod uses.
//!
//! The two containers prove they share one VM: both print the same guest boot id (the host's
//! differs), and exactly one QEMU process exists for the pod, in the pod sandbox's directory.
//!
//! `COFFER_CRI_KEEP=1` keeps the suite's directories (containerd's log, the coffer state).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use coffer_policies::initdata::{Algorithm, Entry, Initdata};
use coffer_tests::containerd::{Containerd, busybox_oci_archive, oci_archive};
use coffer_tests::cri::{self, CriConfig, ImageClient, RuntimeClient, v1};
use coffer_tests::registry::Registry;
use coffer_tests::{
    Suite, bin, case, eventually, guest_image, leftover_sandboxes, processes_mentioning,
};

const RUNTIME: &str = "io.containerd.coffer.v2";
const HANDLER: &str = "coffer";
/// A handler whose runtime config (CRI's `options.ConfigPath`) asks for guest pull, as the TEE
/// handlers' do.
const GUEST_PULL_HANDLER: &str = "coffer-gp";
const IMAGE: &str = "coffer.test/busybox:latest";
const PAUSE_IMAGE: &str = "coffer.test/pause:latest";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// What the pod's first container serves on localhost, for the second to read.
const LOOPBACK_REPLY: &str = "hello-over-the-pod-loopback";
const LOOPBACK_PORT: u16 = 8080;
/// Deadline of one CRI call: RunPodSandbox boots the pod VM (≈10 s under TCG, more on a loaded box).
const CRI_TIMEOUT: Duration = Duration::from_secs(300);

struct Ctx {
    containerd: Containerd,
    containerd_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeClient,
    images: ImageClient,
    work: PathBuf,
    state: PathBuf,
    /// Holds `state`.
    _state_dir: tempfile::TempDir,
    /// The registry the guest pulls from (through a tunnel) with [`GUEST_PULL_HANDLER`].
    _registry: Registry,
    /// The guest-pull test image: in CRI's store without a marker file, in the registry with one.
    pulled_image: String,
}

fn node_namespaces() -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: v1::NamespaceMode::Node.into(),
        pid: v1::NamespaceMode::Container.into(),
        ipc: v1::NamespaceMode::Pod.into(),
        target_id: String::new(),
    }
}

impl Ctx {
    /// Runs one CRI call (at most [`CRI_TIMEOUT`]).
    fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        self.rt
            .block_on(async { tokio::time::timeout(CRI_TIMEOUT, call).await })
            .map_err(|_| anyhow!("{what}: no answer within {CRI_TIMEOUT:?}"))?
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow!("{what}: {:?}: {}", s.code(), s.message()))
    }

    fn pod_config(&self, name: &str) -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "coffer-test".into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: self.work.join("pods").join(name).display().to_string(),
            labels: HashMap::new(),
            annotations: HashMap::new(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(node_namespaces()),
                }),
            }),
        }
    }

    fn container_config(name: &str, image: &str, script: &str) -> v1::ContainerConfig {
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: image.into(),
                annotations: HashMap::new(),
            }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            linux: Some(v1::LinuxContainerConfig {
                security_context: Some(v1::LinuxContainerSecurityContext {
                    privileged: false,
                    namespace_options: Some(node_namespaces()),
                }),
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox of `pod` with `handler`; the sandbox id and the pod shim's socket (read from
    /// the sandbox task's bundle, to check it goes with the pod).
    fn run_pod(
        &self,
        pod: &v1::PodSandboxConfig,
        handler: &str,
    ) -> anyhow::Result<(String, Option<PathBuf>)> {
        std::fs::create_dir_all(&pod.log_directory)?;
        let sandbox_id = self
            .call(
                "RunPodSandbox",
                self.runtime
                    .clone()
                    .run_pod_sandbox(v1::RunPodSandboxRequest {
                        config: Some(pod.clone()),
                        runtime_handler: handler.into(),
                    }),
            )?
            .pod_sandbox_id;
        let shim_socket = self
            .containerd
            .bundles()
            .into_iter()
            .find(|b| b.ends_with(&sandbox_id))
            .and_then(|b| std::fs::read_to_string(b.join("address")).ok())
            .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")));
        Ok((sandbox_id, shim_socket))
    }

    /// CreateContainer of `sh -c script` from `image` in the pod, then StartContainer; its id.
    fn create_and_start(
        &self,
        sandbox_id: &str,
        pod: &v1::PodSandboxConfig,
        name: &str,
        image: &str,
        script: &str,
    ) -> anyhow::Result<String> {
        let id = self
            .call(
                "CreateContainer",
                self.runtime
                    .clone()
                    .create_container(v1::CreateContainerRequest {
                        pod_sandbox_id: sandbox_id.into(),
                        config: Some(Ctx::container_config(name, image, script)),
                        sandbox_config: Some(pod.clone()),
                    }),
            )?
            .container_id;
        self.call(
            "StartContainer",
            self.runtime
                .clone()
                .start_container(v1::StartContainerRequest {
                    container_id: id.clone(),
                }),
        )?;
        Ok(id)
    }

    fn container_status(&self, id: &str) -> anyhow::Result<v1::ContainerStatus> {
        self.call(
            "ContainerStatus",
            self.runtime
                .clone()
                .container_status(v1::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                }),
        )?
        .status
        .context("ContainerStatus without a status")
    }

    /// Waits until container `id` is in `state`; its status then.
    fn wait_state(
        &self,
        id: &str,
        state: v1::ContainerState,
    ) -> anyhow::Result<v1::ContainerStatus> {
        eventually(Duration::from_secs(120), &format!("{id} {state:?}"), || {
            let status = self.container_status(id)?;
            Ok((status.state == i32::from(state)).then_some(status))
        })
    }

    /// The stdout lines of a container's CRI log, once it has at least `n` of them.
    fn stdout_lines(&self, log: &Path, n: usize) -> anyhow::Result<Vec<String>> {
        eventually(
            Duration::from_secs(60),
            &format!("{n} lines in {}", log.display()),
            || {
                if !log.exists() {
                    return Ok(None);
                }
                let lines: Vec<String> = cri::log_lines(log)?
                    .into_iter()
                    .filter(|(stream, _)| stream == "stdout")
                    .map(|(_, line)| line)
                    .collect();
                Ok((lines.len() >= n).then_some(lines))
            },
        )
    }

    fn stop_and_remove(&self, sandbox_id: &str) -> anyhow::Result<()> {
        self.call(
            "StopPodSandbox",
            self.runtime
                .clone()
                .stop_pod_sandbox(v1::StopPodSandboxRequest {
                    pod_sandbox_id: sandbox_id.into(),
                }),
        )?;
        self.call(
            "RemovePodSandbox",
            self.runtime
                .clone()
                .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: sandbox_id.into(),
                }),
        )?;
        Ok(())
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }

    fn qemu_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning("qemu-system")
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&self.state.display().to_string()))
            .collect()
    }

    fn shim_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning("containerd-shim-coffer-v2")
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&self.work.display().to_string()))
            .collect()
    }

    /// Everything a removed pod could leave behind, listed. `shim_socket` is the pod shim's.
    fn leftovers(&self, sandbox_id: &str, shim_socket: Option<&Path>) -> Vec<String> {
        let mut left = Vec::new();
        for dir in leftover_sandboxes(&self.state) {
            left.push(format!("sandbox directory {}", dir.display()));
        }
        for (pid, cmd) in processes_mentioning(&self.state.display().to_string()) {
            left.push(format!("VM process {pid}: {cmd}"));
        }
        for (pid, cmd) in self.shim_processes() {
            left.push(format!("shim process {pid}: {cmd}"));
        }
        if let Some(socket) = shim_socket.filter(|s| s.exists()) {
            left.push(format!("shim socket {}", socket.display()));
        }
        for bundle in self.containerd.bundles() {
            left.push(format!("bundle {}", bundle.display()));
        }
        for base in ["root", "state"] {
            let dir = self
                .containerd_dir
                .join(base)
                .join("io.containerd.grpc.v1.cri/sandboxes")
                .join(sandbox_id);
            if dir.exists() {
                left.push(format!("CRI sandbox directory {}", dir.display()));
            }
        }
        let work = self.work.display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in mounts.lines().filter(|l| l.contains(&work)) {
                left.push(format!("mount {line}"));
            }
        }
        left
    }

    fn assert_clean(&self, sandbox_id: &str, shim_socket: Option<&Path>) -> anyhow::Result<()> {
        let clean = eventually(Duration::from_secs(30), "cleanup", || {
            Ok(self
                .leftovers(sandbox_id, shim_socket)
                .is_empty()
                .then_some(()))
        });
        if clean.is_err() {
            bail!(
                "left behind: {:#?}",
                self.leftovers(sandbox_id, shim_socket)
            );
        }
        Ok(())
    }
}

/// A guest boot id as the kernel prints it: a UUID.
fn boot_id(line: &str) -> anyhow::Result<String> {
    let id = line.trim();
    ensure!(
        id.len() == 36
            && id.chars().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            }),
        "not a boot id: {line:?}"
    );
    Ok(id.to_owned())
}

/// A registry holding the busybox image of `work/image` with a marker file `/guest-pulled` (the
/// archive imported into CRI's store has none), and the runtime config of
/// [`GUEST_PULL_HANDLER`]: guest pull through a tunnel to that registry, whose plain HTTP the
/// pod's initdata allows.
fn guest_pull_setup(
    work: &Path,
    state: &Path,
    image_dir: &Path,
) -> anyhow::Result<(Registry, PathBuf)> {
    let registry = Registry::start()?;
    let host = format!("127.0.0.1:{}", registry.port);
    let layout = work.join("image/layout");
    let bundle = work.join("gp-bundle");
    let image = format!("{}:latest", layout.display());
    for args in [
        vec!["unpack", "--image", &image, &bundle.display().to_string()],
        vec!["repack", "--image", &image, &bundle.display().to_string()],
    ] {
        if args[0] == "repack" {
            std::fs::write(bundle.join("rootfs/guest-pulled"), "yes\n")?;
        }
        let out = std::process::Command::new("umoci").args(&args).output()?;
        ensure!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    registry.push(&layout, "cri/busybox:latest")?;
    let mut entries = std::collections::BTreeMap::new();
    entries.insert(
        Entry::Registries,
        format!("[[registry]]\nhost = \"{host}\"\ninsecure = true\n"),
    );
    let initdata = work.join("gp-initdata.toml");
    std::fs::write(
        &initdata,
        Initdata::build(Algorithm::Sha256, &entries)?.raw(),
    )?;
    let config = work.join("gp-runtime.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\ninitdata = \"{}\"\n[guest]\nimage_dir = \"{}\"\n\
             boot_timeout_secs = 120\nguest_pull = true\nregistry_tunnels = [\"{host}\"]\n\
             [qemu]\nprobe_cache = \"{}\"\n",
            state.display(),
            initdata.display(),
            image_dir.display(),
            work.join("accel-probe").display()
        ),
    )?;
    Ok((registry, config))
}

fn setup(work: &Path) -> anyhow::Result<Ctx> {
    let image = guest_image();
    let image_dir = image
        .vmlinux
        .parent()
        .context("guest image directory")?
        .to_path_buf();
    // containerd finds the shim on its PATH, which leads with this build's binary directory.
    bin("containerd-shim-coffer-v2");
    // The pod VM's sockets live in `state/sandboxes/<64-character CRI id>/`: a unix socket
    // address holds 107 bytes, so the state directory must be short (as `/run/coffer` is).
    let mut state_dir = tempfile::Builder::new().prefix("cc").tempdir_in("/tmp")?;
    state_dir.disable_cleanup(std::env::var_os("COFFER_CRI_KEEP").is_some());
    let state = state_dir.path().to_path_buf();
    let config = work.join("runtime.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[guest]\nimage_dir = \"{}\"\nboot_timeout_secs = 120\n\
             [qemu]\nprobe_cache = \"{}\"\n",
            state.display(),
            image_dir.display(),
            work.join("accel-probe").display()
        ),
    )?;
    let busybox = busybox_oci_archive(&work.join("image"))?;
    let (registry, gp_config) = guest_pull_setup(work, &state, &image_dir)?;
    let pulled_image = format!("127.0.0.1:{}/cri/busybox:latest", registry.port);
    // The pause image: one empty layer. Its entrypoint does not exist, so a pod whose sandbox
    // runs proves the pause container ran nowhere.
    let pause = oci_archive(
        &work.join("pause"),
        "pause-oci.tar",
        |_| {},
        &["--config.entrypoint", "/pause"],
    )?;
    let containerd_dir = work.join("containerd");
    let cri_config = CriConfig {
        sandbox_image: PAUSE_IMAGE.into(),
        handlers: vec![
            (HANDLER.into(), RUNTIME.into(), None),
            (GUEST_PULL_HANDLER.into(), RUNTIME.into(), Some(gp_config)),
        ],
        cni_dir: work.join("cni"),
    };
    let mut containerd = Containerd::start_with_cri(
        &containerd_dir,
        vec![(
            "COFFER_RUNTIME_CONFIG".into(),
            OsString::from(config.as_os_str()),
        )],
        &cri_config.toml(),
    )?;
    containerd.set_namespace(cri::NAMESPACE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (runtime, images) = rt.block_on(cri::connect(&containerd.socket()))?;
    let ctx = Ctx {
        containerd,
        containerd_dir,
        rt,
        runtime,
        images,
        work: work.to_path_buf(),
        state,
        _state_dir: state_dir,
        _registry: registry,
        pulled_image,
    };
    let pulled_name = ctx.pulled_image.trim_end_matches(":latest").to_owned();
    for (archive, name) in [
        (&busybox, "coffer.test/busybox"),
        (&busybox, pulled_name.as_str()),
        (&pause, "coffer.test/pause"),
    ] {
        ctx.containerd.ctr_ok(&[
            "images",
            "import",
            "--base-name",
            name,
            &archive.display().to_string(),
        ])?;
    }
    // CRI learns of imported images from containerd's events: wait until it lists both.
    for image in [IMAGE, PAUSE_IMAGE, ctx.pulled_image.as_str()] {
        let mut images = ctx.images.clone();
        eventually(
            Duration::from_secs(30),
            &format!("CRI knows {image}"),
            || {
                let status = ctx.call(
                    "ImageStatus",
                    images.image_status(v1::ImageStatusRequest {
                        image: Some(v1::ImageSpec {
                            image: image.into(),
                            annotations: HashMap::new(),
                        }),
                        verbose: false,
                    }),
                )?;
                Ok(status.image.map(|_| ()))
            },
        )?;
    }
    Ok(ctx)
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let mut suite = Suite::new("cri");
    let Some(ctx) = suite.setup(|| setup(work.path())) else {
        return suite.finish();
    };

    case!(suite, "cri_socket_answers_as_containerd", {
        (|| {
            let version = ctx.call(
                "Version",
                ctx.runtime.clone().version(v1::VersionRequest {
                    version: "v1".into(),
                }),
            )?;
            ensure!(
                version.runtime_name == "containerd",
                "runtime {:?}",
                version.runtime_name
            );
            Ok(())
        })()
    });

    case!(suite, "pod_containers_run_in_one_vm", {
        (|| {
            let pod = ctx.pod_config("pod-a");
            let (sandbox_id, shim_socket) = ctx.run_pod(&pod, HANDLER)?;
            let result = (|| {
                let status = ctx
                    .call(
                        "PodSandboxStatus",
                        ctx.runtime
                            .clone()
                            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                                pod_sandbox_id: sandbox_id.clone(),
                                verbose: false,
                            }),
                    )?
                    .status
                    .context("PodSandboxStatus without a status")?;
                ensure!(
                    status.state == i32::from(v1::PodSandboxState::SandboxReady),
                    "pod not ready: {status:?}"
                );
                ensure!(status.runtime_handler == HANDLER, "handler {status:?}");
                let first = ctx.create_and_start(
                    &sandbox_id,
                    &pod,
                    "first",
                    IMAGE,
                    &format!(
                        "cat {BOOT_ID}; echo {LOOPBACK_REPLY} | nc -l -p {LOOPBACK_PORT} & exec sleep 1000"
                    ),
                )?;
                // The pod's containers share one network namespace, the VM's: the second reaches
                // the first's listener on localhost (retrying until it listens).
                let second = ctx.create_and_start(
                    &sandbox_id,
                    &pod,
                    "second",
                    IMAGE,
                    &format!(
                        "cat {BOOT_ID}; for i in $(seq 100); do echo hi | nc -w 5 127.0.0.1 {LOOPBACK_PORT} 2>/dev/null && break; sleep 0.1; done; exit 7"
                    ),
                )?;
                let running = ctx.wait_state(&first, v1::ContainerState::ContainerRunning)?;
                ensure!(running.started_at > 0, "no start time: {running:?}");
                let exited = ctx.wait_state(&second, v1::ContainerState::ContainerExited)?;
                ensure!(
                    exited.exit_code == 7,
                    "the second container's exit code did not propagate: {exited:?}"
                );

                let log_dir = Path::new(&pod.log_directory);
                let id_first = boot_id(&ctx.stdout_lines(&log_dir.join("first.log"), 1)?[0])?;
                let second_lines = ctx.stdout_lines(&log_dir.join("second.log"), 2)?;
                let id_second = boot_id(&second_lines[0])?;
                ensure!(
                    second_lines[1] == LOOPBACK_REPLY,
                    "the second container did not reach the first on localhost: {second_lines:?}"
                );
                let host = std::fs::read_to_string(BOOT_ID)?;
                ensure!(
                    id_first == id_second,
                    "two kernels: {id_first} and {id_second}"
                );
                ensure!(
                    id_first != host.trim(),
                    "the containers saw the host's kernel ({id_first})"
                );
                let qemu = ctx.qemu_processes();
                ensure!(qemu.len() == 1, "one QEMU for the pod expected: {qemu:?}");
                let pod_dir = format!("{}/", ctx.sandbox_dir(&sandbox_id).display());
                ensure!(
                    qemu[0].1.contains(&pod_dir),
                    "the VM is not the pod sandbox's ({pod_dir}): {qemu:?}"
                );
                let shims = ctx.shim_processes();
                ensure!(shims.len() == 1, "one shim for the pod expected: {shims:?}");
                // The one shim's lines about each container reach containerd's log.
                let log = std::fs::read_to_string(ctx.containerd.log())?;
                for id in [&sandbox_id, &first, &second] {
                    ensure!(
                        log.lines().any(|l| l.contains("task created")
                            && l.contains(&format!("container_id={id}"))),
                        "no shim line for {id} in {}",
                        ctx.containerd.log().display()
                    );
                }

                // ExecSync reaches the same VM; exit codes come back.
                let exec_sync = |cmd: &[&str]| {
                    ctx.call(
                        "ExecSync",
                        ctx.runtime.clone().exec_sync(v1::ExecSyncRequest {
                            container_id: first.clone(),
                            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                            timeout: 120,
                        }),
                    )
                };
                let exec = exec_sync(&["cat", BOOT_ID])?;
                ensure!(
                    exec.exit_code == 0
                        && boot_id(&String::from_utf8_lossy(&exec.stdout))? == id_first,
                    "exec: {exec:?}"
                );
                let exec = exec_sync(&["sh", "-c", "echo oops >&2; exit 3"])?;
                ensure!(
                    exec.exit_code == 3 && exec.stderr == b"oops\n",
                    "exec: {exec:?}"
                );

                // A container stopped (SIGTERM, then SIGKILL after the grace period: `sleep` is
                // its PID namespace's init and ignores SIGTERM) and removed on its own leaves the
                // pod, its VM and its other containers running.
                let third =
                    ctx.create_and_start(&sandbox_id, &pod, "third", IMAGE, "exec sleep 1000")?;
                ctx.wait_state(&third, v1::ContainerState::ContainerRunning)?;
                ctx.call(
                    "StopContainer",
                    ctx.runtime
                        .clone()
                        .stop_container(v1::StopContainerRequest {
                            container_id: third.clone(),
                            timeout: 2,
                        }),
                )?;
                let stopped = ctx.wait_state(&third, v1::ContainerState::ContainerExited)?;
                ensure!(stopped.exit_code == 137, "StopContainer: {stopped:?}");
                ctx.call(
                    "RemoveContainer",
                    ctx.runtime
                        .clone()
                        .remove_container(v1::RemoveContainerRequest {
                            container_id: third.clone(),
                        }),
                )?;
                ensure!(
                    ctx.container_status(&third).is_err(),
                    "RemoveContainer left the container"
                );
                let running = ctx.container_status(&first)?;
                ensure!(
                    running.state == i32::from(v1::ContainerState::ContainerRunning),
                    "another container's removal stopped this one: {running:?}"
                );
                ensure!(
                    ctx.qemu_processes() == qemu,
                    "the pod VM changed: {:?} then {:?}",
                    qemu,
                    ctx.qemu_processes()
                );

                // Stopping the pod stops its containers; removing it removes them and the VM.
                ctx.call(
                    "StopPodSandbox",
                    ctx.runtime
                        .clone()
                        .stop_pod_sandbox(v1::StopPodSandboxRequest {
                            pod_sandbox_id: sandbox_id.clone(),
                        }),
                )?;
                let stopped = ctx.container_status(&first)?;
                ensure!(
                    stopped.state == i32::from(v1::ContainerState::ContainerExited),
                    "still running after StopPodSandbox: {stopped:?}"
                );
                ctx.call(
                    "RemovePodSandbox",
                    ctx.runtime
                        .clone()
                        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                            pod_sandbox_id: sandbox_id.clone(),
                        }),
                )?;
                ensure!(
                    ctx.container_status(&first).is_err(),
                    "the container outlived its pod"
                );
                Ok(())
            })();
            if result.is_err() {
                let _ = ctx.stop_and_remove(&sandbox_id);
            }
            result?;
            ctx.assert_clean(&sandbox_id, shim_socket.as_deref())
        })()
    });

    case!(
        suite,
        "guest_pull_handler_pulls_in_the_guest_and_never_the_pause_image",
        {
            (|| {
                // Through CRI's runtime options (`ConfigPath`) the handler's config asks for guest
                // pull: the container's root is the registry's image (it has the marker), pulled by
                // the guest — not CRI's snapshot. The pod's pause container is never pulled.
                let pod = ctx.pod_config("pod-gp");
                let (sandbox_id, shim_socket) = ctx.run_pod(&pod, GUEST_PULL_HANDLER)?;
                let result = (|| {
                    let id = ctx.create_and_start(
                        &sandbox_id,
                        &pod,
                        "pulled",
                        &ctx.pulled_image,
                        "cat /guest-pulled",
                    )?;
                    let exited = ctx.wait_state(&id, v1::ContainerState::ContainerExited)?;
                    let log = Path::new(&pod.log_directory).join("pulled.log");
                    ensure!(
                        exited.exit_code == 0,
                        "exit {}; log {:?}",
                        exited.exit_code,
                        cri::log_lines(&log)
                    );
                    let lines = ctx.stdout_lines(&log, 1)?;
                    ensure!(lines == ["yes"], "not the registry's image: {lines:?}");
                    let containerd_log = std::fs::read_to_string(ctx.containerd.log())?;
                    let guest: Vec<&str> = containerd_log
                        .lines()
                        .filter(|l| l.contains(" guest: ") && l.contains(&sandbox_id))
                        .collect();
                    let pulls: Vec<&&str> = guest
                        .iter()
                        .filter(|l| l.contains("image pulled in the guest"))
                        .collect();
                    ensure!(
                        pulls.len() == 1 && pulls[0].contains(&ctx.pulled_image),
                        "one guest pull of {} expected: {pulls:#?}",
                        ctx.pulled_image
                    );
                    ensure!(
                        !guest.iter().any(|l| l.contains(PAUSE_IMAGE)),
                        "the guest saw the pause image: {guest:#?}"
                    );
                    ctx.stop_and_remove(&sandbox_id)
                })();
                if result.is_err() {
                    let _ = ctx.stop_and_remove(&sandbox_id);
                }
                result?;
                ctx.assert_clean(&sandbox_id, shim_socket.as_deref())
            })()
        }
    );

    let code = suite.finish();
    drop(ctx);
    if std::env::var_os("COFFER_CRI_KEEP").is_some() {
        println!("kept {}", work.keep().display());
    }
    code
}
