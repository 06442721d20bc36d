//! One real VM (QEMU, TCG unless a KVM probe boot succeeds), booted once and shared by every case:
//! containers, stdio, exec, signals, env/cwd/user, stats and OOM events through the agent API.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use coffer_agent_protocol::v1 as pb;
use coffer_policies::initdata::{Algorithm, Entry, Initdata};
use coffer_runtime::agent_client::AgentClient;
use coffer_runtime::hypervisor::qemu::{Qemu, QemuConfig};
use coffer_runtime::sandbox::{InitdataDisk, SandboxConfig};
use coffer_runtime::spec::{self, ProcessOptions};
use coffer_tests::{
    Suite, agent, assert_stopped_sandbox_gone, busybox_rootfs, case, guest_image, vm_config,
};
use oci_spec::runtime::Spec;

struct Env {
    agent: AgentClient,
    rootfs: std::path::PathBuf,
}

fn opts(args: &[&str]) -> ProcessOptions {
    ProcessOptions {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..ProcessOptions::default()
    }
}

impl Env {
    async fn create(&self, id: &str, spec: Spec) -> anyhow::Result<()> {
        agent::create(&self.agent, &self.rootfs, id, &spec).await
    }

    async fn start(&self, id: &str) -> anyhow::Result<()> {
        agent::start(&self.agent, id)
            .await
            .context("StartContainer")
    }

    fn read(&self, id: &str, exec: &str) -> tokio::task::JoinHandle<anyhow::Result<String>> {
        agent::read_output(&self.agent, id, exec, false)
    }

    async fn wait(&self, id: &str, exec: &str) -> anyhow::Result<i32> {
        agent::wait(&self.agent, id, exec).await
    }

    async fn remove(&self, id: &str) -> anyhow::Result<()> {
        agent::remove(&self.agent, id).await
    }

    /// Creates, starts and waits for a container; returns (stdout, status).
    async fn run(&self, id: &str, o: ProcessOptions) -> anyhow::Result<(String, i32)> {
        agent::run(
            &self.agent,
            &self.rootfs,
            id,
            &spec::container(&o, "coffer"),
        )
        .await
    }
}

/// The suite VM's initdata: `sandbox.rego` plus a rule refusing one marker command.
fn suite_initdata() -> Initdata {
    let policy = format!(
        "{}\n{}",
        coffer_policies::SANDBOX_POLICY,
        r#"denials contains "CreateContainer: the initdata policy forbids initdata-forbidden" if {
	input.request.kind == "CreateContainer"
	input.request.process.args[0] == "initdata-forbidden"
}"#
    );
    let entries = std::collections::BTreeMap::from([(Entry::Policy, policy)]);
    Initdata::build(Algorithm::Sha256, &entries).expect("suite initdata")
}

fn main() -> ExitCode {
    let image = guest_image();
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs_dir = work.path().join("rootfs");
    busybox_rootfs(&rootfs_dir);
    let state = work.path().join("state");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut suite = Suite::new("vm");
    rt.block_on(async {
        let qemu = Qemu::new(QemuConfig {
            probe_cache: Some(work.path().join("accel-probe")),
            ..QemuConfig::default()
        });
        let config = SandboxConfig {
            // The suite's VM takes its policy from initdata: the sandbox policy plus one rule of
            // its own, which the `initdata_policy_is_enforced` case observes.
            initdata: Some(InitdataDisk::new(&suite_initdata())),
            ..vm_config(&image, "vm-suite", &state)
        };
        let Some(sandbox) = suite.boot(&qemu, config).await else {
            return;
        };
        let env = Env { agent: sandbox.agent(), rootfs: rootfs_dir.clone() };

        case!(suite, "qmp_status_running", async {
            let status = sandbox.vm_status().await?;
            ensure!(status == "running", "QMP status {status:?}");
            Ok(())
        }.await);

        case!(suite, "guest_details", async {
            let d = sandbox.guest_details();
            ensure!(d.kernel_release == image.kernel_release, "kernel {:?}", d.kernel_release);
            ensure!(d.cgroup_version == "v2", "cgroup {:?}", d.cgroup_version);
            // Reported before CreateSandbox at connect time; asked again now, the sandbox exists.
            let now = env.agent.clone().get_guest_details(pb::GetGuestDetailsRequest {}).await?.into_inner();
            ensure!(now.sandbox_id == "vm-suite", "sandbox id {:?}", now.sandbox_id);
            Ok(())
        }.await);

        case!(suite, "initdata_policy_is_enforced", async {
            let spec = spec::container(&opts(&["initdata-forbidden"]), "coffer");
            let err = match env.create("forbidden", spec).await {
                Ok(()) => anyhow::bail!("the initdata policy's own rule did not apply"),
                Err(err) => err,
            };
            let status = err.downcast_ref::<tonic::Status>().context("not a gRPC status")?;
            ensure!(status.code() == tonic::Code::PermissionDenied, "{status:?}");
            ensure!(status.message().contains("the initdata policy forbids initdata-forbidden"), "{status:?}");
            Ok(())
        }.await);

        case!(suite, "echo_hello", async {
            let (out, status) = env.run("echo", opts(&["echo", "hello"])).await?;
            ensure!(out == "hello\n" && status == 0, "{out:?} {status}");
            Ok(())
        }.await);

        case!(suite, "exit_status_7", async {
            let (_, status) = env.run("exit7", opts(&["sh", "-c", "exit 7"])).await?;
            ensure!(status == 7, "status {status}");
            Ok(())
        }.await);

        case!(suite, "env_cwd_user", async {
            let o = ProcessOptions {
                args: vec!["sh".into(), "-c".into(), "echo $GREETING; pwd; id -u; id -g".into()],
                env: vec!["GREETING=hello from env".into()],
                cwd: "/tmp".into(),
                uid: 65534,
                gid: 65534,
                ..ProcessOptions::default()
            };
            let (out, status) = env.run("envcwd", o).await?;
            ensure!(out == "hello from env\n/tmp\n65534\n65534\n" && status == 0, "{out:?} {status}");
            Ok(())
        }.await);

        case!(suite, "isolation_defaults", async {
            // The OCI defaults the CLI uses: own pid/uts/net namespaces, masked (/dev/null bound over
            // /proc/kcore) and read-only (/proc/sys) paths, the minimal default capability set
            // (AUDIT_WRITE, KILL, NET_BIND_SERVICE), RLIMIT_NOFILE 1024.
            let script = concat!(
                "echo pid=$$; echo host=$(hostname); echo net=$(ls /sys/class/net | tr '\\n' ' ');",
                "echo nofile=$(ulimit -n);",
                "grep CapEff /proc/self/status | tr -d '\\t';",
                "test -c /proc/kcore && echo kcore=masked || echo kcore=visible;",
                "(echo 1 > /proc/sys/kernel/domainname) 2>/dev/null && echo procsys=writable || echo procsys=readonly;",
            );
            let (out, status) = env.run("iso", opts(&["sh", "-c", script])).await?;
            ensure!(status == 0, "status {status}: {out}");
            for want in ["pid=1\n", "host=coffer\n", "net=lo\n", "nofile=1024\n", "CapEff:0000000020000420\n", "kcore=masked\n", "procsys=readonly\n"] {
                ensure!(out.contains(want), "missing {want:?} in {out:?}");
            }
            Ok(())
        }.await);

        case!(suite, "stdin_round_trip", async {
            env.create("cat", spec::container(&opts(&["cat"]), "coffer")).await?;
            let out = env.read("cat", "");
            env.start("cat").await?;
            let mut agent = env.agent.clone();
            agent.write_stdin(pb::WriteStdinRequest { container_id: "cat".into(), exec_id: String::new(), data: b"through the VM and back\n".to_vec() }).await?;
            agent.close_stdin(pb::CloseStdinRequest { container_id: "cat".into(), exec_id: String::new() }).await?;
            let status = env.wait("cat", "").await?;
            let out = out.await??;
            env.remove("cat").await?;
            ensure!(out == "through the VM and back\n" && status == 0, "{out:?} {status}");
            Ok(())
        }.await);

        case!(suite, "exec_signal_and_stats", async {
            let script = "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.1; done";
            env.create("svc", spec::container(&opts(&["sh", "-c", script]), "coffer")).await?;
            let init_out = env.read("svc", "");
            env.start("svc").await?;
            let mut agent = env.agent.clone();
            agent.exec_process(pb::ExecProcessRequest {
                container_id: "svc".into(),
                exec_id: "probe".into(),
                oci_process_json: serde_json::to_vec(&spec::process(&opts(&["sh", "-c", "echo exec says hi; exit 3"])))?,
            }).await.context("ExecProcess")?;
            let exec_out = env.read("svc", "probe").await??;
            let exec_status = env.wait("svc", "probe").await?;
            ensure!(exec_out == "exec says hi\n" && exec_status == 3, "{exec_out:?} {exec_status}");
            let stats = agent.stats_container(pb::StatsContainerRequest { container_id: "svc".into() }).await?.into_inner();
            ensure!(stats.pids_current >= 1 && stats.memory_usage_bytes > 0, "{stats:?}");
            agent.signal_process(pb::SignalProcessRequest { container_id: "svc".into(), exec_id: String::new(), signal: 15, all: false }).await?;
            let status = env.wait("svc", "").await?;
            let out = init_out.await??;
            ensure!(status == 42 && out == "ready\ngot TERM\n", "{out:?} {status}");
            let err = agent.exec_process(pb::ExecProcessRequest {
                container_id: "svc".into(),
                exec_id: "late".into(),
                oci_process_json: serde_json::to_vec(&spec::process(&opts(&["true"])))?,
            }).await.err().context("exec into a stopped container must fail")?;
            ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");
            env.remove("svc").await?;
            Ok(())
        }.await);

        case!(suite, "sigkill_reports_137", async {
            env.create("victim", spec::container(&opts(&["sleep", "1000"]), "coffer")).await?;
            env.start("victim").await?;
            env.agent.clone().signal_process(pb::SignalProcessRequest { container_id: "victim".into(), exec_id: String::new(), signal: 9, all: false }).await?;
            let status = env.wait("victim", "").await?;
            env.remove("victim").await?;
            ensure!(status == 137, "status {status}");
            Ok(())
        }.await);

        case!(suite, "oom_event", async {
            let mut s = spec::container(&opts(&["sh", "-c", "x=0123456789; while true; do x=$x$x; done"]), "coffer");
            let linux = s.linux_mut().as_mut().context("linux section")?;
            let mut resources = linux.resources().clone().unwrap_or_default();
            let mut memory = (*resources.memory()).unwrap_or_default();
            memory.set_limit(Some(32 * 1024 * 1024));
            memory.set_swap(Some(32 * 1024 * 1024));
            resources.set_memory(Some(memory));
            linux.set_resources(Some(resources));
            let mut agent = env.agent.clone();
            let oom = tokio::spawn(async move { agent.get_oom_event(pb::GetOomEventRequest {}).await });
            env.create("hog", s).await?;
            env.start("hog").await?;
            let status = env.wait("hog", "").await?;
            let event = tokio::time::timeout(Duration::from_secs(10), oom).await???.into_inner();
            env.remove("hog").await?;
            ensure!(status == 137, "status {status}");
            ensure!(event.container_id == "hog", "{event:?}");
            Ok(())
        }.await);

        let dir = sandbox.dir().to_path_buf();
        sandbox.stop().await;
        case!(suite, "teardown_leaves_nothing", assert_stopped_sandbox_gone(&dir, &state));
    });
    suite.finish()
}
