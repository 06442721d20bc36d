//! A one-node Kubernetes pod network for the `cri` suite and the network benchmark: containerd
//! (Debian's 1.6, its CRI plugin) running inside a network namespace the test creates (the
//! "node"), CNI's `bridge` (`cbr0`, [`BRIDGE_IP`]) with `host-local` addresses from [`POD_SUBNET`]
//! (198.18.0.0/24, the RFC 2544 benchmarking range, routed nowhere) and `portmap`, the runtime
//! handlers `coffer` (Coffer's shim) and `runc`, the busybox and pause images imported (nothing
//! is pulled), and a CRI client driving it as the kubelet does. Every packet stays between
//! namespaces the test made; the test process stands in for the node (and kube-proxy) when it
//! connects to pods from the node's namespace.
//!
//! `COFFER_CRI_KEEP=1` keeps the state directory (the coffer state of the pods).

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};

use crate::containerd::{Containerd, busybox_oci_archive, oci_archive};
use crate::cri::{self, CriConfig, ImageClient, RuntimeClient, v1};
use crate::netns::NetNs;
use crate::{bin, eventually, guest_image, leftover_sandboxes, processes_mentioning};

/// containerd's runtime type of Coffer's shim.
pub const RUNTIME: &str = "io.containerd.coffer.v2";
/// The handler of Coffer pods.
pub const HANDLER: &str = "coffer";
/// runc pods on the same bridge, as a cluster mixing runtimes has them.
pub const RUNC_HANDLER: &str = "runc";
/// The pods' subnet (CNI `host-local`), a `/24`.
pub const POD_SUBNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The bridge's address in it: the pods' gateway, and the node's address on the pod network.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The busybox image (`sh -c` workloads) in CRI's store.
pub const IMAGE: &str = "coffer.test/busybox:latest";
/// The pause image: busybox sleeping. Only runc pods run it; a Coffer pod's sandbox container
/// holds the VM and runs nothing.
pub const PAUSE_IMAGE: &str = "coffer.test/pause:latest";
/// The masked paths the kubelet asks for in every unprivileged container (its default
/// `procMount`); containerd applies the request's list, not defaults of its own.
const KUBELET_MASKED_PATHS: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// The read-only paths the kubelet asks for with them.
const KUBELET_READONLY_PATHS: [&str; 6] = [
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Deadline of one CRI call: RunPodSandbox boots the pod VM (≈10 s under TCG, more on a loaded box).
const CRI_TIMEOUT: Duration = Duration::from_secs(300);

/// A runtime handler beyond `coffer` and `runc`: name, containerd runtime type, the runtime
/// options' `ConfigPath`.
pub type Handler = (String, String, Option<PathBuf>);

/// The node, its containerd and CRI clients. Dropping it stops containerd, then removes the node.
#[derive(Debug)]
pub struct Cluster {
    /// The node's containerd.
    pub containerd: Containerd,
    containerd_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    /// The CRI runtime service.
    pub runtime: RuntimeClient,
    /// The CRI image service.
    pub images: ImageClient,
    /// The suite's working directory (pod log directories live under `pods/`).
    pub work: PathBuf,
    /// Coffer's state directory (`state_dir` of the runtime config).
    pub state: PathBuf,
    /// The guest image directory.
    pub image_dir: PathBuf,
    /// The busybox image archive, for importing it under more names.
    pub busybox_archive: PathBuf,
    /// Holds `state`.
    _state_dir: tempfile::TempDir,
    /// Every pod network namespace the cluster's pods had (path, inode): once a pod is removed,
    /// its namespace must be gone and held by nothing (no tap fd, no process left in it).
    pod_netns: std::cell::RefCell<Vec<(PathBuf, u64)>>,
    /// The node: containerd, CNI's bridge and the pods' host ends live in it. Dropped last.
    pub node: NetNs,
}

fn pod_namespaces() -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: v1::NamespaceMode::Pod.into(),
        pid: v1::NamespaceMode::Container.into(),
        ipc: v1::NamespaceMode::Pod.into(),
        target_id: String::new(),
    }
}

impl Cluster {
    /// Starts the node under `work`. `more_handlers` gets the coffer state directory and the
    /// node (created before containerd, so services can be put there) and returns runtime
    /// handlers beyond `coffer` and `runc`.
    pub fn start(
        work: &Path,
        more_handlers: impl FnOnce(&Path, &Path, &NetNs) -> anyhow::Result<Vec<Handler>>,
    ) -> anyhow::Result<Self> {
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
        let node = NetNs::create("cri-node")?;
        // The bridge and its address exist before the first pod (CNI's `bridge` adopts them), so
        // services of the node can listen on the pods' gateway address from the start.
        node.ip(&["link", "add", "cbr0", "type", "bridge"])?;
        node.ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", "cbr0"])?;
        node.ip(&["link", "set", "cbr0", "up"])?;
        let busybox_archive = busybox_oci_archive(&work.join("image"))?;
        let pause = oci_archive(
            &work.join("pause"),
            "pause-oci.tar",
            crate::busybox_rootfs,
            &[
                "--config.entrypoint",
                "/bin/sleep",
                "--config.cmd",
                "2147483647",
            ],
        )?;
        let mut handlers = vec![
            (HANDLER.to_owned(), RUNTIME.to_owned(), None),
            (
                RUNC_HANDLER.to_owned(),
                "io.containerd.runc.v2".to_owned(),
                None,
            ),
        ];
        handlers.extend(more_handlers(&state, &image_dir, &node)?);
        let cni_conf_dir = work.join("cni");
        std::fs::create_dir_all(&cni_conf_dir)?;
        std::fs::write(
            cni_conf_dir.join("10-coffer-test.conflist"),
            cri::bridge_conflist("coffer-test", "cbr0", POD_SUBNET, &work.join("cni-ipam")),
        )?;
        let containerd_dir = work.join("containerd");
        let cri_config = CriConfig {
            sandbox_image: PAUSE_IMAGE.into(),
            handlers,
            cni_conf_dir,
        };
        let mut containerd = Containerd::start_with_cri(
            &containerd_dir,
            vec![(
                "COFFER_RUNTIME_CONFIG".into(),
                OsString::from(config.as_os_str()),
            )],
            &cri_config.toml(),
            &node,
        )?;
        containerd.set_namespace(cri::NAMESPACE);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (runtime, images) = rt.block_on(cri::connect(&containerd.socket()))?;
        let cluster = Self {
            containerd,
            containerd_dir,
            rt,
            runtime,
            images,
            work: work.to_path_buf(),
            state,
            image_dir,
            busybox_archive: busybox_archive.clone(),
            _state_dir: state_dir,
            pod_netns: std::cell::RefCell::new(Vec::new()),
            node,
        };
        cluster.import(&busybox_archive, "coffer.test/busybox", IMAGE)?;
        cluster.import(&pause, "coffer.test/pause", PAUSE_IMAGE)?;
        Ok(cluster)
    }

    /// Imports the OCI archive `archive` (tag `latest`) into CRI's store as `<base>:latest` and
    /// waits until CRI lists `image` (that name).
    pub fn import(&self, archive: &Path, base: &str, image: &str) -> anyhow::Result<()> {
        self.containerd.ctr_ok(&[
            "images",
            "import",
            "--base-name",
            base,
            &archive.display().to_string(),
        ])?;
        self.wait_known(image)
    }

    /// Renames the image `source` (in CRI's store) `target` — e.g. its digest reference
    /// `repo@sha256:…`, the one name an image pulled by digest has (CRI names a container's image
    /// by its first name) — and waits until CRI lists it under that name only.
    pub fn rename(&self, source: &str, target: &str) -> anyhow::Result<()> {
        self.containerd.ctr_ok(&["images", "tag", source, target])?;
        self.wait_known(target)?;
        self.containerd.ctr_ok(&["images", "rm", source])?;
        eventually(
            Duration::from_secs(30),
            &format!("CRI forgets {source}"),
            || {
                let status = self.call(
                    "ImageStatus",
                    self.images.clone().image_status(v1::ImageStatusRequest {
                        image: Some(v1::ImageSpec {
                            image: target.into(),
                            annotations: HashMap::new(),
                        }),
                        verbose: false,
                    }),
                )?;
                Ok(status
                    .image
                    .is_some_and(|i| !i.repo_tags.iter().any(|t| t == source))
                    .then_some(()))
            },
        )
    }

    /// Waits until CRI lists `image` (it learns of imported images from containerd's events).
    fn wait_known(&self, image: &str) -> anyhow::Result<()> {
        let mut images = self.images.clone();
        eventually(
            Duration::from_secs(30),
            &format!("CRI knows {image}"),
            || {
                let status = self.call(
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
        )
    }

    /// Runs one CRI call (at most [`CRI_TIMEOUT`]).
    pub fn call<T>(
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

    pub fn pod_config(&self, name: &str) -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "coffer-test".into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: self.work.join("pods").join(name).display().to_string(),
            dns_config: None,
            port_mappings: Vec::new(),
            labels: HashMap::new(),
            annotations: HashMap::new(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(pod_namespaces()),
                }),
            }),
        }
    }

    pub fn container_config(name: &str, image: &str, script: &str) -> v1::ContainerConfig {
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
                    namespace_options: Some(pod_namespaces()),
                    masked_paths: KUBELET_MASKED_PATHS.map(str::to_owned).to_vec(),
                    readonly_paths: KUBELET_READONLY_PATHS.map(str::to_owned).to_vec(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox of `pod` with `handler`; the sandbox id and the pod shim's socket (read from
    /// the sandbox task's bundle, to check it goes with the pod).
    pub fn run_pod(
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
        match self.pod_netns(&sandbox_id) {
            Ok(netns) => self.pod_netns.borrow_mut().push(netns),
            Err(err) => {
                let _ = self.stop_and_remove(&sandbox_id);
                return Err(err.context("the pod's network namespace"));
            }
        }
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
    pub fn create_and_start(
        &self,
        sandbox_id: &str,
        pod: &v1::PodSandboxConfig,
        name: &str,
        image: &str,
        script: &str,
    ) -> anyhow::Result<String> {
        self.start_container(
            sandbox_id,
            pod,
            Cluster::container_config(name, image, script),
        )
    }

    /// CreateContainer of `config` in the pod, then StartContainer; its id.
    pub fn start_container(
        &self,
        sandbox_id: &str,
        pod: &v1::PodSandboxConfig,
        config: v1::ContainerConfig,
    ) -> anyhow::Result<String> {
        let id = self
            .call(
                "CreateContainer",
                self.runtime
                    .clone()
                    .create_container(v1::CreateContainerRequest {
                        pod_sandbox_id: sandbox_id.into(),
                        config: Some(config),
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

    pub fn container_status(&self, id: &str) -> anyhow::Result<v1::ContainerStatus> {
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
    pub fn wait_state(
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
    pub fn stdout_lines(&self, log: &Path, n: usize) -> anyhow::Result<Vec<String>> {
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

    pub fn stop_and_remove(&self, sandbox_id: &str) -> anyhow::Result<()> {
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

    /// PodSandboxStatus of `id` (verbose: with containerd's info).
    pub fn pod_status(&self, id: &str) -> anyhow::Result<v1::PodSandboxStatusResponse> {
        self.call(
            "PodSandboxStatus",
            self.runtime
                .clone()
                .pod_sandbox_status(v1::PodSandboxStatusRequest {
                    pod_sandbox_id: id.into(),
                    verbose: true,
                }),
        )
    }

    /// The pod's IPv4 address as CRI reports it (CNI's `host-local` assigned it).
    pub fn pod_ip(&self, id: &str) -> anyhow::Result<Ipv4Addr> {
        let status = self.pod_status(id)?.status.context("no status")?;
        let ip = status.network.context("no network status")?.ip;
        let ip: Ipv4Addr = ip.parse().with_context(|| format!("pod IP {ip:?}"))?;
        ensure!(
            ip.octets()[..3] == POD_SUBNET.octets()[..3] && ip != BRIDGE_IP,
            "pod IP {ip} is not CNI's, from {POD_SUBNET}/24"
        );
        Ok(ip)
    }

    /// The pod's network namespace file (containerd's verbose info names it) and its inode.
    pub fn pod_netns(&self, id: &str) -> anyhow::Result<(PathBuf, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let response = self.pod_status(id)?;
        let info: serde_json::Value = serde_json::from_str(
            response
                .info
                .get("info")
                .context("no verbose info")?
                .as_str(),
        )?;
        let path = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .map(PathBuf::from)
            .context("no network namespace path in the pod's runtime spec")?;
        let inode = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .ino();
        Ok((path, inode))
    }

    /// ExecSync of `cmd` in container `id`.
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> anyhow::Result<v1::ExecSyncResponse> {
        self.call(
            "ExecSync",
            self.runtime.clone().exec_sync(v1::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                timeout: 120,
            }),
        )
    }

    /// `GET /` of an HTTP server at `addr` from the node's namespace (as the node itself, or
    /// kube-proxy, would reach a pod), retried until it answers (at most 60 s); the body.
    pub fn http_get_from_node(&self, addr: SocketAddr) -> anyhow::Result<String> {
        eventually(
            Duration::from_secs(60),
            &format!("HTTP from the node to {addr}"),
            || Ok(self.node.run(|| http_get(addr))?.ok()),
        )
    }

    /// The node namespace's links other than its loopback and the CNI bridge (a pod's host-side
    /// veth while it exists), and every tc qdisc left on them.
    pub fn node_links(&self) -> anyhow::Result<Vec<String>> {
        let links = self.node.ip(&["-o", "link", "show"])?;
        Ok(links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .filter(|name| name != "lo" && name != "cbr0")
            .collect())
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }

    pub fn qemu_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning("qemu-system")
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&self.state.display().to_string()))
            .collect()
    }

    pub fn shim_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning("containerd-shim-coffer-v2")
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&self.work.display().to_string()))
            .collect()
    }

    /// Everything a removed pod could leave behind, listed. `shim_socket` is the pod shim's.
    pub fn leftovers(&self, sandbox_id: &str, shim_socket: Option<&Path>) -> Vec<String> {
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
            for line in mounts
                .lines()
                .filter(|l| l.contains(&work) || l.contains("/netns/cni-"))
            {
                left.push(format!("mount {line}"));
            }
        }
        // The pods' networks: no namespace file, nothing holding a namespace (a tap's QEMU, a
        // process in it), no host-side veth of a pod on the node.
        for (path, inode) in self.pod_netns.borrow().iter() {
            if path.exists() {
                left.push(format!("network namespace {}", path.display()));
            }
            for (pid, cmd) in crate::netns::holders(*inode) {
                left.push(format!("process {pid} holding {}: {cmd}", path.display()));
            }
        }
        match self.node_links() {
            Ok(links) => left.extend(links.into_iter().map(|l| format!("node link {l}"))),
            Err(err) => left.push(format!("listing the node's links: {err:#}")),
        }
        left
    }

    pub fn assert_clean(&self, sandbox_id: &str, shim_socket: Option<&Path>) -> anyhow::Result<()> {
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

/// One `GET /` over HTTP/1.0 to `addr` (5 s to connect, 10 s to answer); the body.
pub fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
    let mut reply = String::new();
    stream.take(1 << 20).read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {reply:?}")))?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(std::io::Error::other(format!("HTTP answer {head:?}")));
    }
    Ok(body.to_owned())
}

impl Drop for Cluster {
    /// Stops containerd, then kills whatever a failed case left running: the pods' shims and VMs
    /// (their command lines name the cluster's directories) and any process still in a pod's
    /// network namespace (a runc pod's containers), so a failure never leaks a VM into the rest of
    /// the test run.
    fn drop(&mut self) {
        self.containerd.stop();
        let kill = |pid: u32| {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        };
        for dir in [&self.work, &self.state] {
            for (pid, _) in processes_mentioning(&dir.display().to_string()) {
                kill(pid);
            }
        }
        for (_, inode) in self.pod_netns.borrow().iter() {
            for (pid, _) in crate::netns::holders(*inode) {
                kill(pid);
            }
        }
    }
}
