//! Service-mesh init inside the guest (issue #9 scopes 1 and 2), on one real VM shared by every
//! case: an Istio-style pod whose `mesh-init` init container (Debian's iptables, pinned by digest
//! and argv, allowed CAP_NET_ADMIN and CAP_NET_RAW) installs a REDIRECT rule in the pod's network
//! namespace before the app starts, and the app's connection to port 9080 lands on the listener at
//! 15001. The initdata comes from `coffer policy gen` of the pod YAML; images are pulled in the
//! guest through a registry tunnel. The policy refuses the mesh image with other arguments, the app
//! asking for CAP_NET_ADMIN, and any network-capable container created or started after the first
//! start (AGT-NW, AGT-ORD).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use coffer_agent_protocol::v1 as pb;
use coffer_initdata::Initdata;
use coffer_runtime::agent_client::AgentClient;
use coffer_runtime::hypervisor::qemu::{Qemu, QemuConfig};
use coffer_runtime::sandbox::{InitdataDisk, SandboxConfig};
use coffer_runtime::spec::{self, ProcessOptions};
use coffer_runtime::tunnel::RegistryTunnel;
use coffer_tests::registry::Registry;
use coffer_tests::{
    Suite, agent, assert_stopped_sandbox_gone, case, coffer, guest_image, vm_config,
};
use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};

/// The mesh init's command: istio-iptables' outbound capture, reduced to one port.
const MESH_ARGS: &[&str] = &[
    "/usr/sbin/iptables",
    "-t",
    "nat",
    "-A",
    "OUTPUT",
    "-p",
    "tcp",
    "--dport",
    "9080",
    "-j",
    "REDIRECT",
    "--to-ports",
    "15001",
];

/// The app: a "sidecar" listener on 15001 answers; a port the rule does not name (9081) is refused,
/// the app's connection to 9080 reaches the listener and prints its reply.
/// The proxy's listener is waited for in `/proc/net/tcp{,6}` (port 15001 = 0x3A99, 0A = LISTEN)
/// rather than slept for: under emulation on a loaded host a fixed sleep can be too short.
const APP_SCRIPT: &str = "echo reply-from-15001 | nc -l -p 15001 > /tmp/heard & i=0; until cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qE ':3A99 [0-9A-F]+:0000 0A' || [ $i -ge 100 ]; do sleep 0.2; i=$((i+1)); done; echo x | nc -w 5 127.0.0.1 9081 || echo 9081-refused; echo hello | nc -w 5 127.0.0.1 9080; wait; echo listener-heard:$(cat /tmp/heard)";

const REPLY: &str = "9081-refused\nreply-from-15001\nlistener-heard:hello\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A one-layer image with busybox (and its `nc`) plus Debian's iptables-nft: the
/// `xtables-nft-multi` binary as `/usr/sbin/iptables`, the shared libraries and loader it links
/// (as `ldd` lists them), and the xtables extensions. Returns the OCI layout (tag v1).
fn mesh_layout(work: &Path) -> anyhow::Result<PathBuf> {
    let xtables = Path::new("/usr/sbin/xtables-nft-multi");
    ensure!(
        xtables.is_file(),
        "{} is missing: run tests/setup.sh (iptables)",
        xtables.display()
    );
    coffer_tests::umoci_layout(work, "mesh", |root| {
        std::os::unix::fs::symlink("busybox", root.join("bin/nc"))?;
        // The file's content under its path in the image (symlinks on the host are followed).
        let copy_in = |host: &Path| -> anyhow::Result<()> {
            let dest = root.join(host.strip_prefix("/")?);
            std::fs::create_dir_all(dest.parent().context("no parent")?)?;
            std::fs::copy(host, &dest).with_context(|| format!("copying {}", host.display()))?;
            Ok(())
        };
        copy_in(xtables)?;
        std::os::unix::fs::symlink("xtables-nft-multi", root.join("usr/sbin/iptables"))?;
        let ldd = Command::new("ldd").arg(xtables).output()?;
        ensure!(ldd.status.success(), "ldd: {}", text(&ldd.stderr));
        for line in text(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(path) = path {
                copy_in(Path::new(path))?;
            }
        }
        for entry in std::fs::read_dir("/usr/lib/x86_64-linux-gnu/xtables")? {
            copy_in(&entry?.path())?;
        }
        Ok(())
    })
}

/// The Istio-style pod: the mesh init (NET_ADMIN, NET_RAW) and the app, one image.
fn pod_yaml(image: &str) -> String {
    let path = spec::DEFAULT_ENV[0].trim_start_matches("PATH=");
    let quoted = |args: &[&str]| {
        args.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: mesh
  annotations:
    coffer.dev/allow-logs: "true"
spec:
  initContainers:
    - name: mesh-init
      image: {image}
      command: [{mesh}]
      env: [{{name: PATH, value: "{path}"}}, {{name: HOME, value: /root}}]
      securityContext:
        runAsUser: 0
        capabilities: {{add: [NET_ADMIN, NET_RAW]}}
  containers:
    - name: app
      image: {image}
      command: [{app}]
      env: [{{name: PATH, value: "{path}"}}, {{name: HOME, value: /root}}]
"#,
        mesh = quoted(MESH_ARGS),
        app = quoted(&["/bin/sh", "-c", APP_SCRIPT]),
    )
}

/// `coffer policy gen` of the pod: the initdata the sandbox boots with.
fn policy_gen(work: &Path, yaml: &str, registry: &str) -> anyhow::Result<Initdata> {
    let pod = work.join("mesh-pod.yaml");
    std::fs::write(&pod, yaml)?;
    let out_file = work.join("mesh-initdata.toml");
    let out = Command::new(coffer())
        .args(["policy", "gen"])
        .arg(&pod)
        .args(["--insecure-registry", registry, "-o"])
        .arg(&out_file)
        .output()?;
    ensure!(out.status.success(), "policy gen: {}", text(&out.stderr));
    Ok(Initdata::parse(std::fs::read(&out_file)?)?)
}

/// A container spec for `args` sharing the guest's network namespace (the pod's, as every
/// container of a Kubernetes pod shares one), holding `caps` in addition to the defaults.
fn pod_spec(args: &[&str], caps: &[Capability]) -> anyhow::Result<Spec> {
    let opts = ProcessOptions {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..ProcessOptions::default()
    };
    let mut spec = spec::container(&opts, "mesh");
    let linux = spec.linux_mut().as_mut().context("linux section")?;
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .collect();
    linux.set_namespaces(Some(namespaces));
    if !caps.is_empty() {
        let process = spec.process_mut().as_mut().context("process")?;
        let mut sets = process.capabilities().clone().unwrap_or_default();
        let add = |set: &Option<std::collections::HashSet<Capability>>| {
            let mut set = set.clone().unwrap_or_default();
            set.extend(caps.iter().copied());
            Some(set)
        };
        sets.set_bounding(add(sets.bounding()));
        sets.set_effective(add(sets.effective()));
        sets.set_permitted(add(sets.permitted()));
        process.set_capabilities(Some(sets));
    }
    Ok(spec)
}

struct Pod {
    agent: AgentClient,
    image: String,
}

impl Pod {
    async fn create(&self, id: &str, spec: &Spec) -> Result<(), tonic::Status> {
        let json = serde_json::to_vec(spec).map_err(|e| tonic::Status::internal(e.to_string()))?;
        self.agent
            .clone()
            .create_container(pb::CreateContainerRequest {
                container_id: id.into(),
                oci_spec_json: json,
                rootfs: Some(pb::create_container_request::Rootfs::Image(
                    pb::PulledImage {
                        reference: self.image.clone(),
                    },
                )),
            })
            .await
            .map(drop)
    }

    async fn start(&self, id: &str) -> Result<(), tonic::Status> {
        agent::start(&self.agent, id).await
    }

    /// Starts the created container `id` and waits for it: (exit status, stdout, stderr).
    async fn run(&self, id: &str) -> anyhow::Result<(i32, String, String)> {
        let out = agent::read_output(&self.agent, id, "", false);
        let err = agent::read_output(&self.agent, id, "", true);
        self.start(id).await.context("StartContainer")?;
        let status = agent::wait(&self.agent, id, "").await?;
        let out = tokio::time::timeout(Duration::from_secs(10), out).await???;
        let err = tokio::time::timeout(Duration::from_secs(10), err).await???;
        Ok((status, out, err))
    }

    async fn remove(&self, id: &str) -> anyhow::Result<()> {
        agent::remove(&self.agent, id).await
    }
}

/// `result` is a policy denial whose reason contains `why`.
fn denied(result: Result<(), tonic::Status>, why: &str) -> anyhow::Result<()> {
    let status = match result {
        Ok(()) => anyhow::bail!("allowed; expected a denial containing {why:?}"),
        Err(status) => status,
    };
    ensure!(
        status.code() == tonic::Code::PermissionDenied && status.message().contains(why),
        "{status:?}, expected a denial containing {why:?}"
    );
    Ok(())
}

struct Ctx {
    work: tempfile::TempDir,
    registry: Registry,
    image: String,
    initdata: Initdata,
}

fn setup() -> anyhow::Result<Ctx> {
    let work = tempfile::tempdir()?;
    let registry = Registry::start()?;
    let host = format!("127.0.0.1:{}", registry.port);
    let layout = mesh_layout(work.path())?;
    let digest = registry.push(&layout, "mesh/iptables:v1")?;
    let image = format!("{host}/mesh/iptables@{digest}");
    // policy gen resolves the tag to the digest pushed above and pins both entries to it.
    let initdata = policy_gen(
        work.path(),
        &pod_yaml(&format!("{host}/mesh/iptables:v1")),
        &host,
    )?;
    Ok(Ctx {
        work,
        registry,
        image,
        initdata,
    })
}

fn main() -> ExitCode {
    let image = guest_image();
    let mut suite = Suite::new("mesh");
    let Some(ctx) = suite.setup(setup) else {
        return suite.finish();
    };
    let state = ctx.work.path().join("state");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let qemu = Qemu::new(QemuConfig {
            probe_cache: Some(ctx.work.path().join("accel-probe")),
            ..QemuConfig::default()
        });
        let registry_addr = std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            ctx.registry.port,
        );
        let config = SandboxConfig {
            initdata: Some(InitdataDisk::new(&ctx.initdata)),
            registry_tunnels: vec![RegistryTunnel::same_address(registry_addr)],
            ..vm_config(&image, "mesh-suite", &state)
        };
        let Some(sandbox) = suite.boot(&qemu, config).await else {
            return;
        };
        let pod = Pod {
            agent: sandbox.agent(),
            image: ctx.image.clone(),
        };
        let app_args = ["/bin/sh", "-c", APP_SCRIPT];
        let net = [Capability::NetAdmin, Capability::NetRaw];

        case!(suite, "mesh_image_with_other_args_is_refused", async {
            // The pinned image with a rule of the host's choosing (flush the nat table).
            let spec = pod_spec(&["/usr/sbin/iptables", "-t", "nat", "-F"], &net)?;
            denied(pod.create("rogue", &spec).await, "policy entry mesh-init: args")
        }.await);

        case!(suite, "app_asking_net_admin_is_refused", async {
            let spec = pod_spec(&app_args, &[Capability::NetAdmin])?;
            denied(
                pod.create("app-admin", &spec).await,
                "capability CAP_NET_ADMIN (bounding set) is not allowed",
            )
        }.await);

        case!(suite, "mesh_init_redirects_the_app_connection", async {
            let mesh = pod_spec(MESH_ARGS, &net)?;
            // A second mesh init created during set-up (allowed), to be started late below. This
            // first network-capable container makes the agent load the netfilter modules.
            let t = Instant::now();
            pod.create("early", &mesh).await.context("CreateContainer early")?;
            println!("  first NET_ADMIN CreateContainer (pull + netfilter modules): {} ms", t.elapsed().as_millis());
            pod.create("mesh-init", &mesh).await.context("CreateContainer mesh-init")?;
            let (status, out, err) = pod.run("mesh-init").await?;
            ensure!(status == 0, "mesh-init exited {status}: {out}{err}");
            pod.create("app", &pod_spec(&app_args, &[])?).await.context("CreateContainer app")?;
            let (status, out, err) = pod.run("app").await?;
            ensure!(status == 0 && out == REPLY, "app exited {status}, stdout {out:?}, stderr {err:?}");
            Ok(())
        }.await);

        case!(suite, "net_admin_after_the_first_start_is_refused", async {
            let mesh = pod_spec(MESH_ARGS, &net)?;
            denied(
                pod.create("late", &mesh).await,
                "CreateContainer late: capabilities CAP_NET_ADMIN, CAP_NET_RAW change the pod's network, allowed only before the first container starts",
            )
        }.await);

        case!(suite, "net_admin_created_early_cannot_start_late", async {
            denied(
                pod.start("early").await,
                "StartContainer early: it holds capabilities that change the pod's network, allowed only before the first container starts",
            )
        }.await);

        let console = std::fs::read_to_string(sandbox.dir().join("console.log")).unwrap_or_default();
        for line in console.lines().filter(|l| l.contains("netfilter modules loaded")) {
            println!("  guest: {}", line.trim());
        }
        case!(suite, "removing_the_started_containers_does_not_reopen_set_up", async {
            // The host removes every container, so none is started any more: the agent still
            // remembers that containers started, and set-up stays closed.
            for id in ["early", "mesh-init", "app"] {
                pod.remove(id).await.with_context(|| format!("RemoveContainer {id}"))?;
            }
            let mesh = pod_spec(MESH_ARGS, &net)?;
            denied(
                pod.create("after-removal", &mesh).await,
                "CreateContainer after-removal: capabilities CAP_NET_ADMIN, CAP_NET_RAW change the pod's network, allowed only before the first container starts (app started)",
            )
        }.await);
        let dir = sandbox.dir().to_path_buf();
        sandbox.stop().await;
        case!(suite, "teardown_leaves_nothing", assert_stopped_sandbox_gone(&dir, &state));
    });
    suite.finish()
}
