//! `containerd-shim-coffer-v2` under Kubernetes' CRI: a private containerd (Debian's 1.6) with its
//! CRI plugin, driven through its CRI socket by a small client (`coffer_tests::cri`) as the
//! kubelet drives it — RunPodSandbox, CreateContainer ×2, StartContainer, ContainerStatus,
//! ExecSync, StopPodSandbox, RemovePodSandbox — with the runtime handler `coffer`.
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
use coffer_tests::containerd::{Containerd, busybox_oci_archive, oci_archive};
use coffer_tests::cri::{self, CriConfig, ImageClient, RuntimeClient, v1};
use coffer_tests::{
    Suite, bin, case, eventually, guest_image, leftover_sandboxes, processes_mentioning,
};

const RUNTIME: &str = "io.containerd.coffer.v2";
const HANDLER: &str = "coffer";
const IMAGE: &str = "coffer.test/busybox:latest";
const PAUSE_IMAGE: &str = "coffer.test/pause:latest";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
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

    fn container_config(name: &str, script: &str) -> v1::ContainerConfig {
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: IMAGE.into(),
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
        handlers: vec![(HANDLER.into(), RUNTIME.into(), None)],
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
    };
    for (archive, name) in [
        (&busybox, "coffer.test/busybox"),
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
    for image in [IMAGE, PAUSE_IMAGE] {
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

    case!(suite, "pod_of_two_containers_runs_in_one_vm", {
        (|| {
            let pod = ctx.pod_config("pod-a");
            std::fs::create_dir_all(&pod.log_directory)?;
            let sandbox_id = ctx
                .call(
                    "RunPodSandbox",
                    ctx.runtime
                        .clone()
                        .run_pod_sandbox(v1::RunPodSandboxRequest {
                            config: Some(pod.clone()),
                            runtime_handler: HANDLER.into(),
                        }),
                )?
                .pod_sandbox_id;
            // The shim's socket, from the sandbox task's bundle (to check it goes with the pod).
            let shim_socket = ctx
                .containerd
                .bundles()
                .into_iter()
                .find(|b| b.ends_with(&sandbox_id))
                .and_then(|b| std::fs::read_to_string(b.join("address")).ok())
                .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")));
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
                let create = |name: &str, script: &str| {
                    ctx.call(
                        "CreateContainer",
                        ctx.runtime
                            .clone()
                            .create_container(v1::CreateContainerRequest {
                                pod_sandbox_id: sandbox_id.clone(),
                                config: Some(Ctx::container_config(name, script)),
                                sandbox_config: Some(pod.clone()),
                            }),
                    )
                    .map(|r| r.container_id)
                };
                let first = create("first", &format!("cat {BOOT_ID}; exec sleep 1000"))?;
                let second = create("second", &format!("cat {BOOT_ID}; exit 7"))?;
                for id in [&first, &second] {
                    ctx.call(
                        "StartContainer",
                        ctx.runtime
                            .clone()
                            .start_container(v1::StartContainerRequest {
                                container_id: id.clone(),
                            }),
                    )?;
                }
                let running = ctx.wait_state(&first, v1::ContainerState::ContainerRunning)?;
                ensure!(running.started_at > 0, "no start time: {running:?}");
                let exited = ctx.wait_state(&second, v1::ContainerState::ContainerExited)?;
                ensure!(
                    exited.exit_code == 7,
                    "the second container's exit code did not propagate: {exited:?}"
                );

                let log_dir = Path::new(&pod.log_directory);
                let id_first = boot_id(&ctx.stdout_lines(&log_dir.join("first.log"), 1)?[0])?;
                let id_second = boot_id(&ctx.stdout_lines(&log_dir.join("second.log"), 1)?[0])?;
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

    let code = suite.finish();
    drop(ctx);
    if std::env::var_os("COFFER_CRI_KEEP").is_some() {
        println!("kept {}", work.keep().display());
    }
    code
}
