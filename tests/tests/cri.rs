//! `containerd-shim-coffer-v2` under Kubernetes' CRI: a private containerd (Debian's 1.6) with its
//! CRI plugin, driven through its CRI socket by a small client (`coffer_tests::cri`) as the
//! kubelet drives it — RunPodSandbox, CreateContainer, StartContainer, ContainerStatus, ExecSync,
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox — with the runtime handlers
//! `coffer` and `coffer-gp` (guest pull).
//!
//! Nothing is pulled: the pause image (busybox sleeping, which only runc pods run: a Coffer pod's
//! sandbox container runs nothing in the guest) and the busybox image are built with `umoci` and
//! imported into CRI's `k8s.io` namespace.
//!
//! Pods are on a real pod network (`NamespaceMode::Pod`): containerd runs inside a network
//! namespace the suite creates (the "node"), where CRI runs Debian's CNI plugins — `bridge` with
//! `host-local` addresses from 198.18.0.0/24 (the RFC 2544 benchmarking range; nothing outside
//! the node namespace routes it) and `portmap` — so every packet stays between namespaces the test
//! made. A Coffer pod's VM gets the CNI interface's address and MAC on a virtio-net NIC wired to
//! it; runc pods (handler `runc`) share the bridge. The suite itself stands in for the node and
//! kube-proxy when it connects to pod addresses from the node namespace.
//!
//! The two containers prove they share one VM: both print the same guest boot id (the host's
//! differs), and exactly one QEMU process exists for the pod, in the pod sandbox's directory.
//!
//! `COFFER_CRI_KEEP=1` keeps the suite's directories (containerd's log, the coffer state).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use coffer_policies::initdata::{Algorithm, Entry, Initdata};
use coffer_tests::cluster::{
    BRIDGE_IP, Cluster, HANDLER, IMAGE, PAUSE_IMAGE, RUNC_HANDLER, RUNTIME,
};
use coffer_tests::cri::{self, v1};
use coffer_tests::kbs::{ALLOW_SAMPLE_POLICY, Broker, TRUST_DOMAIN};
use coffer_tests::netns::{Forwarder, NetNs};
use coffer_tests::registry::Registry;
use coffer_tests::{Suite, case, coffer, eventually, identity_pod};

/// A handler whose runtime config (CRI's `options.ConfigPath`) asks for guest pull, as the TEE
/// handlers' do.
const GUEST_PULL_HANDLER: &str = "coffer-gp";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// What the pod's first container serves on localhost, for the second to read.
const LOOPBACK_REPLY: &str = "hello-over-the-pod-loopback";
const LOOPBACK_PORT: u16 = 8080;
/// The port the network cases' HTTP servers listen on in their pods, and pod A's host port.
const HTTP_PORT: u16 = 8080;
const HOST_PORT: u16 = 18080;

struct Ctx {
    cluster: Cluster,
    /// The registry the guest pulls from (over its pod network) with [`GUEST_PULL_HANDLER`], and
    /// its address on the node.
    registry: (Registry, Forwarder),
    /// The guest-pull test image: in CRI's store without a marker file, in the registry with one.
    pulled_image: String,
    /// The key broker (workload identities for sample evidence) and its address on the node.
    broker: (Broker, Forwarder),
}

impl std::ops::Deref for Ctx {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// A container script serving `reply` over HTTP on [`HTTP_PORT`] (busybox `httpd`), after printing
/// nothing (or, with `print_resolv`, its `/etc/resolv.conf`).
fn serve_script(reply: &str, print_resolv: bool) -> String {
    format!(
        "{}mkdir -p /www && echo {reply} > /www/index.html && exec httpd -f -p {HTTP_PORT} -h /www",
        if print_resolv {
            "cat /etc/resolv.conf; "
        } else {
            ""
        }
    )
}

/// A container script fetching `http://addr/`, retrying every second for at most 60 tries; the
/// body on stdout, exit 0 once it got one.
fn fetch_script(addr: std::net::SocketAddr) -> String {
    format!(
        "for i in $(seq 60); do b=$({}); [ -n \"$b\" ] && echo \"$b\" && exit 0; sleep 1; done; exit 1",
        coffer_tests::netns::http_get_script(addr)
    )
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
/// archive imported into CRI's store has none), reached by the pods at `<bridge>:<port>` on the
/// node (a forwarder there to the registry on the test's loopback), and the runtime config of
/// [`GUEST_PULL_HANDLER`]: guest pull over the pod network from that registry, whose plain HTTP
/// the pod's initdata allows. No tunnel: the guest reaches it like any pod reaches a service.
fn guest_pull_setup(
    work: &Path,
    state: &Path,
    image_dir: &Path,
    node: &NetNs,
) -> anyhow::Result<(Registry, Forwarder, PathBuf, String)> {
    let registry = Registry::start()?;
    let forwarder = Forwarder::start(
        node,
        (BRIDGE_IP, 0).into(),
        (std::net::Ipv4Addr::LOCALHOST, registry.port).into(),
    )?;
    let host = format!("{BRIDGE_IP}:{}", forwarder.addr.port());
    // The cluster's busybox image, with the marker added.
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
             boot_timeout_secs = 120\nguest_pull = true\n\
             [qemu]\nprobe_cache = \"{}\"\n",
            state.display(),
            initdata.display(),
            image_dir.display(),
            work.join("accel-probe").display()
        ),
    )?;
    Ok((
        registry,
        forwarder,
        config,
        format!("{host}/cri/busybox:latest"),
    ))
}

fn setup(work: &Path) -> anyhow::Result<Ctx> {
    let mut gp = None;
    let cluster = Cluster::start(work, |state, image_dir, node| {
        let (registry, forwarder, config, image) = guest_pull_setup(work, state, image_dir, node)?;
        gp = Some((registry, forwarder, image));
        Ok(vec![(
            GUEST_PULL_HANDLER.to_owned(),
            RUNTIME.to_owned(),
            Some(config),
        )])
    })?;
    let (registry, forwarder, pulled_image) = gp.context("guest pull set-up")?;
    let base = pulled_image.trim_end_matches(":latest").to_owned();
    cluster.import(&cluster.busybox_archive, &base, &pulled_image)?;
    let broker = Broker::start(work, "kbs", Some(ALLOW_SAMPLE_POLICY), b"unused-key")?;
    let broker_on_node = Forwarder::start(
        &cluster.node,
        (BRIDGE_IP, 0).into(),
        broker.url.trim_start_matches("http://").parse()?,
    )?;
    Ok(Ctx {
        cluster,
        registry: (registry, forwarder),
        pulled_image,
        broker: (broker, broker_on_node),
    })
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

    case!(suite, "coffer_and_runc_pods_share_the_pod_network", {
        (|| {
            // Pod A (Coffer) serves HTTP on its pod IP, with a host port and the pod's own DNS
            // settings; pod B (Coffer) and pod R (runc) on the same bridge reach it, it reaches R,
            // and the node reaches it directly and through the host port.
            let mut pod_a = ctx.pod_config("net-a");
            pod_a.hostname = "net-a".into();
            pod_a.dns_config = Some(v1::DnsConfig {
                servers: vec!["198.18.0.53".into()],
                searches: vec!["coffer.test".into(), "svc.coffer.test".into()],
                options: vec!["ndots:2".into()],
            });
            pod_a.port_mappings = vec![v1::PortMapping {
                protocol: v1::Protocol::Tcp.into(),
                container_port: i32::from(HTTP_PORT),
                host_port: i32::from(HOST_PORT),
                host_ip: String::new(),
            }];
            let pod_b = ctx.pod_config("net-b");
            let pod_r = ctx.pod_config("net-r");
            let mut pods: Vec<(String, Option<PathBuf>)> = Vec::new();
            let result = (|| {
                pods.push(ctx.run_pod(&pod_a, HANDLER)?);
                let a = pods[0].0.clone();
                pods.push(ctx.run_pod(&pod_r, RUNC_HANDLER)?);
                let r = pods[1].0.clone();
                let (ip_a, ip_r) = (ctx.pod_ip(&a)?, ctx.pod_ip(&r)?);
                ensure!(ip_a != ip_r, "two pods with one address {ip_a}");

                let web = ctx.create_and_start(
                    &a,
                    &pod_a,
                    "web",
                    IMAGE,
                    &serve_script("hello-from-coffer", true),
                )?;
                let runc_web = ctx.create_and_start(
                    &r,
                    &pod_r,
                    "runc-web",
                    IMAGE,
                    &serve_script("hello-from-runc", false),
                )?;
                ctx.wait_state(&web, v1::ContainerState::ContainerRunning)?;
                ctx.wait_state(&runc_web, v1::ContainerState::ContainerRunning)?;

                // The node (and kube-proxy acting there) reaches the pod IP, and the host port.
                let http = |ip: std::net::Ipv4Addr| std::net::SocketAddr::from((ip, HTTP_PORT));
                let body = ctx.http_get_from_node(http(ip_a))?;
                ensure!(body == "hello-from-coffer\n", "node → pod A: {body:?}");
                let body =
                    ctx.http_get_from_node(std::net::SocketAddr::from((BRIDGE_IP, HOST_PORT)))?;
                ensure!(body == "hello-from-coffer\n", "node → host port: {body:?}");

                // Coffer → runc and runc → Coffer, over the bridge.
                let fetch = |container: &str, ip: std::net::Ipv4Addr| {
                    ctx.exec_sync(container, &["sh", "-c", &fetch_script(http(ip))])
                };
                let got = fetch(&web, ip_r)?;
                ensure!(
                    got.exit_code == 0 && got.stdout == b"hello-from-runc\n",
                    "pod A → runc pod: {got:?}"
                );
                let got = fetch(&runc_web, ip_a)?;
                ensure!(
                    got.exit_code == 0 && got.stdout == b"hello-from-coffer\n",
                    "runc pod → pod A: {got:?}"
                );

                // Coffer → Coffer: pod B's container fetches A's page and exits.
                pods.push(ctx.run_pod(&pod_b, HANDLER)?);
                let b = pods[2].0.clone();
                let client =
                    ctx.create_and_start(&b, &pod_b, "client", IMAGE, &fetch_script(http(ip_a)))?;
                let exited = ctx.wait_state(&client, v1::ContainerState::ContainerExited)?;
                let lines =
                    ctx.stdout_lines(&Path::new(&pod_b.log_directory).join("client.log"), 1)?;
                ensure!(
                    exited.exit_code == 0 && lines == ["hello-from-coffer"],
                    "pod B → pod A: exit {}, {lines:?}",
                    exited.exit_code
                );

                // Pod A's resolver configuration is the one the CRI request asked for, its
                // hostname the pod's.
                let resolv = ctx.exec_sync(&web, &["cat", "/etc/resolv.conf"])?;
                let words = |keyword: &str| -> Vec<String> {
                    String::from_utf8_lossy(&resolv.stdout)
                        .lines()
                        .filter_map(|l| l.strip_prefix(keyword))
                        .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
                        .collect()
                };
                let want = pod_a.dns_config.clone().unwrap_or_default();
                ensure!(
                    words("nameserver ") == want.servers
                        && words("search ") == want.searches
                        && words("options ") == want.options,
                    "pod A's /etc/resolv.conf: {:?}",
                    String::from_utf8_lossy(&resolv.stdout)
                );
                // The address CRI reports (CNI's) is the one the guest has on its NIC.
                let addr = ctx.exec_sync(&web, &["sh", "-c", "ip addr show dev eth0"])?;
                ensure!(
                    String::from_utf8_lossy(&addr.stdout).contains(&format!("inet {ip_a}/24")),
                    "the guest's eth0 lacks the pod IP {ip_a}: {addr:?}"
                );
                let hostname = ctx.exec_sync(&web, &["hostname"])?;
                ensure!(
                    hostname.stdout == b"net-a\n",
                    "pod A's hostname: {hostname:?}"
                );
                let hosts = ctx.exec_sync(&web, &["cat", "/etc/hosts"])?;
                ensure!(
                    String::from_utf8_lossy(&hosts.stdout)
                        .lines()
                        .any(|l| l.split_whitespace().collect::<Vec<_>>()
                            == [ip_a.to_string().as_str(), "net-a"]),
                    "pod A's /etc/hosts does not name it: {hosts:?}"
                );
                Ok(())
            })();
            for (id, _) in &pods {
                let removed = ctx.stop_and_remove(id);
                if result.is_ok() {
                    removed?;
                }
            }
            result?;
            for (id, socket) in &pods {
                ctx.assert_clean(id, socket.as_deref())?;
            }
            Ok(())
        })()
    });

    case!(
        suite,
        "a_killed_vmm_makes_the_pod_notready_and_removal_leaves_nothing",
        {
            (|| {
                let pod = ctx.pod_config("net-kill");
                let (sandbox_id, shim_socket) = ctx.run_pod(&pod, HANDLER)?;
                let result = (|| {
                    let id = ctx.create_and_start(
                        &sandbox_id,
                        &pod,
                        "sleeper",
                        IMAGE,
                        "exec sleep 1000",
                    )?;
                    ctx.wait_state(&id, v1::ContainerState::ContainerRunning)?;
                    let qemu = ctx.qemu_processes();
                    ensure!(qemu.len() == 1, "one QEMU expected: {qemu:?}");
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(i32::try_from(qemu[0].0)?),
                        nix::sys::signal::Signal::SIGKILL,
                    )?;
                    eventually(Duration::from_secs(60), "the pod NOTREADY", || {
                        let status = ctx.pod_status(&sandbox_id)?.status.context("no status")?;
                        Ok(
                            (status.state == i32::from(v1::PodSandboxState::SandboxNotready))
                                .then_some(()),
                        )
                    })?;
                    let exited = ctx.wait_state(&id, v1::ContainerState::ContainerExited)?;
                    ensure!(
                        exited.exit_code != 0,
                        "the container exited cleanly: {exited:?}"
                    );
                    Ok(())
                })();
                let removed = ctx.stop_and_remove(&sandbox_id);
                result?;
                removed?;
                ctx.assert_clean(&sandbox_id, shim_socket.as_deref())
            })()
        }
    );

    case!(suite, "mesh_mtls_between_two_pods_over_pod_ips", {
        (|| {
            let mut pods = Vec::new();
            let result = mesh_mtls(&ctx, &mut pods);
            for id in &pods {
                let removed = ctx.stop_and_remove(id);
                if result.is_ok() {
                    removed?;
                }
            }
            result?;
            for id in &pods {
                ctx.assert_clean(id, None)?;
            }
            Ok(())
        })()
    });

    let code = suite.finish();
    drop(ctx);
    if std::env::var_os("COFFER_CRI_KEEP").is_some() {
        println!("kept {}", work.keep().display());
    }
    code
}

/// The mesh case over the pod network (`mesh_mtls_between_two_sandboxes`' sibling, #10): two
/// Coffer pods (guest pull, initdata from `coffer policy gen` in the pod annotation, the workload
/// identity from the broker the pods reach on the node) talk mTLS over their pod IPs. The server
/// (`payments/api`) sees the client's SPIFFE ID bound to its attestation, the client
/// (`web/frontend`) the server's. `pods` gets every pod started, for the caller to remove.
fn mesh_mtls(ctx: &Ctx, pods: &mut Vec<String>) -> anyhow::Result<()> {
    // The mTLS workload (stripped) in a busybox image, in the registry and, under the same
    // digest, in CRI's store (nothing is pulled on the node).
    let probe = ctx.work.join("coffer-mesh-probe");
    let out = std::process::Command::new("strip")
        .arg("-o")
        .arg(&probe)
        .arg(env!("CARGO_BIN_EXE_coffer-mesh-probe"))
        .output()?;
    ensure!(
        out.status.success(),
        "strip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = ctx.work.join("mesh");
    let archive = coffer_tests::containerd::oci_archive(
        &dir,
        "mesh-oci.tar",
        |root| {
            coffer_tests::busybox_rootfs(root);
            std::fs::copy(&probe, root.join("bin/coffer-mesh-probe")).expect("copy the probe");
        },
        &["--config.cmd", "/bin/sh"],
    )?;
    let registry = &ctx.registry;
    let digest = registry.0.push(&dir.join("layout"), "guest/mesh:v1")?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("layout/index.json"))?)?;
    ensure!(
        index["manifests"][0]["digest"] == digest.as_str(),
        "the registry holds manifest {digest}, the archive {}",
        index["manifests"][0]["digest"]
    );
    let host = format!("{BRIDGE_IP}:{}", registry.1.addr.port());
    let repository = format!("{host}/guest/mesh");
    ctx.import(&archive, &repository, &format!("{repository}:latest"))?;
    ctx.rename(
        &format!("{repository}:latest"),
        &format!("{repository}@{digest}"),
    )?;
    let image = format!("{repository}@{digest}");
    let broker_url = format!("http://{}", ctx.broker.1.addr);
    let server_id = format!("spiffe://{TRUST_DOMAIN}/ns/payments/sa/api");
    let client_id = format!("spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend");

    // A pod per side; its initdata comes from `coffer policy gen` (run on the node, where the
    // registry is) for its manifest, in the pod's annotation.
    let start = |name: &str,
                 namespace: &str,
                 account: &str,
                 script: &str|
     -> anyhow::Result<(String, v1::PodSandboxConfig)> {
        let yaml = identity_pod(name, namespace, account, &image, script);
        let manifest = ctx.work.join(format!("{name}-pod.yaml"));
        std::fs::write(&manifest, yaml)?;
        let out = ctx
            .node
            .command(coffer())
            .args(["policy", "gen"])
            .arg(&manifest)
            .args(["--insecure-registry", &host, "--kbs-url", &broker_url])
            .args(["--kbs-evidence", "sample", "--annotation"])
            .output()?;
        ensure!(
            out.status.success(),
            "policy gen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pod = ctx.pod_config(name);
        pod.metadata.as_mut().context("metadata")?.namespace = namespace.into();
        pod.annotations = HashMap::from([
            (
                "io.coffer.initdata".to_owned(),
                String::from_utf8(out.stdout)?.trim().to_owned(),
            ),
            ("coffer.dev/allow-logs".to_owned(), "true".to_owned()),
            (
                "coffer.dev/workload-identity.app".to_owned(),
                "/run/spiffe".to_owned(),
            ),
        ]);
        let (id, _) = ctx.run_pod(&pod, GUEST_PULL_HANDLER)?;
        Ok((id, pod))
    };
    let serve = format!(
        "exec /bin/coffer-mesh-probe server --listen 0.0.0.0:8443 --svid /run/spiffe --trust-domain {TRUST_DOMAIN} --connections 1"
    );
    let (server_pod, server_config) = start("mesh-api", "payments", "api", &serve)?;
    pods.push(server_pod.clone());
    let server_ip = ctx.pod_ip(&server_pod)?;
    let server =
        ctx.start_container(&server_pod, &server_config, mesh_container(&image, &serve))?;
    let server_log = Path::new(&server_config.log_directory).join("app.log");
    let first = ctx.stdout_lines(&server_log, 1)?;
    ensure!(first == ["listening on 0.0.0.0:8443"], "server: {first:?}");

    let connect = format!(
        "exec /bin/coffer-mesh-probe client --connect {server_ip}:8443 --server-id {server_id} --bundle /run/spiffe/svid_bundle.pem --svid /run/spiffe"
    );
    let (client_pod, client_config) = start("mesh-frontend", "web", "frontend", &connect)?;
    pods.push(client_pod.clone());
    let client = ctx.start_container(
        &client_pod,
        &client_config,
        mesh_container(&image, &connect),
    )?;
    let exited = ctx.wait_state(&client, v1::ContainerState::ContainerExited)?;
    let client_lines =
        ctx.stdout_lines(&Path::new(&client_config.log_directory).join("app.log"), 2)?;
    ensure!(
        exited.exit_code == 0
            && client_lines
                == [
                    format!("server {server_id}"),
                    format!("reply hello {client_id}")
                ],
        "client: exit {}, {client_lines:?}",
        exited.exit_code
    );
    let server_lines = ctx.stdout_lines(&server_log, 2)?;
    ensure!(
        server_lines[1] == format!("accepted {client_id} tee=sample"),
        "server: {server_lines:?}"
    );
    let exited = ctx.wait_state(&server, v1::ContainerState::ContainerExited)?;
    ensure!(exited.exit_code == 0, "server exit {}", exited.exit_code);
    for log in [
        &server_log,
        &Path::new(&client_config.log_directory).join("app.log"),
    ] {
        ensure!(
            !std::fs::read_to_string(log)?.contains("PRIVATE KEY"),
            "a key reached the host in {}",
            log.display()
        );
    }
    Ok(())
}

/// The CRI container config the kubelet makes of [`identity_pod`]'s container.
fn mesh_container(image: &str, script: &str) -> v1::ContainerConfig {
    let mut config = Cluster::container_config("app", image, script);
    config.command = vec!["/bin/sh".into(), "-c".into(), script.into()];
    // No environment: the image sets none and the pod neither; containerd adds the default PATH,
    // which `coffer policy gen` lists (coffer_runtime::spec::DEFAULT_ENV).
    config.envs = Vec::new();
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.run_as_user = Some(v1::Int64Value { value: 1000 });
        sc.run_as_group = Some(v1::Int64Value { value: 1000 });
        sc.capabilities = Some(v1::Capability {
            add_capabilities: Vec::new(),
            drop_capabilities: vec!["NET_RAW".into()],
        });
    }
    config
}
