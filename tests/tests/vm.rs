//! One real VM (QEMU, TCG unless a KVM probe boot succeeds), booted once and shared by every case:
//! containers, stdio, exec, signals, env/cwd/user, stats and OOM events through the agent API; and
//! enforcement (#20): for each restriction the policy checks, a container admitted with it tries
//! to break it from inside (`coffer-escape-probe`, one system call per run) and gets the errno
//! the restriction stands for.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use coffer_agent_protocol::v1 as pb;
use coffer_initdata::{Algorithm, Entry, Initdata};
use coffer_runtime::agent_client::AgentClient;
use coffer_runtime::hypervisor::qemu::{Qemu, QemuConfig};
use coffer_runtime::sandbox::Sandbox;
use coffer_runtime::sandbox::{InitdataDisk, SandboxConfig};
use coffer_runtime::spec::{self, ProcessOptions};
use coffer_tests::{
    Suite, agent, assert_nothing_left, assert_stopped_sandbox_gone, busybox_rootfs, case,
    guest_image, vm_config,
};
use oci_spec::runtime::Spec;

struct Env {
    agent: AgentClient,
    rootfs: std::path::PathBuf,
}

/// Where the suite's rootfs has the escape probe.
const PROBE: &str = "/bin/coffer-escape-probe";

/// A container spec (`spec::container`'s defaults, root) running `script`, as JSON to edit.
fn script_spec(script: &str) -> serde_json::Value {
    serde_json::to_value(spec::container(&opts(&["sh", "-c", script]), "coffer")).expect("spec")
}

fn from_json(value: serde_json::Value) -> Spec {
    serde_json::from_value(value).expect("an OCI spec")
}

/// Adds `caps` to the bounding, effective and permitted sets of `spec`'s process.
fn add_caps(spec: &mut serde_json::Value, caps: &[&str]) {
    for set in ["bounding", "effective", "permitted"] {
        let list = spec["process"]["capabilities"][set]
            .as_array_mut()
            .expect("capability set");
        list.extend(caps.iter().map(|c| serde_json::json!(c)));
    }
}

/// Sets the options of `spec`'s mount at `destination`.
fn mount_options(spec: &mut serde_json::Value, destination: &str, options: &[&str]) {
    let mount = spec["mounts"]
        .as_array_mut()
        .expect("mounts")
        .iter_mut()
        .find(|m| m["destination"] == destination)
        .expect("the mount");
    mount["options"] = serde_json::json!(options);
}

/// Fails unless the refusal is the policy's and names `reason`.
fn ensure_denied(result: anyhow::Result<()>, reason: &str) -> anyhow::Result<()> {
    let err = match result {
        Ok(()) => anyhow::bail!("admitted; expected a denial naming {reason:?}"),
        Err(err) => err,
    };
    let status = err
        .downcast_ref::<tonic::Status>()
        .context("not a gRPC status")?;
    ensure!(status.code() == tonic::Code::PermissionDenied, "{status:?}");
    ensure!(status.message().contains(reason), "{status:?}");
    Ok(())
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

    /// Creates, starts and waits for a container of `spec`; returns (stdout, status).
    async fn run_spec(&self, id: &str, spec: serde_json::Value) -> anyhow::Result<(String, i32)> {
        agent::run(&self.agent, &self.rootfs, id, &from_json(spec)).await
    }

    /// Runs `process` (an OCI process document) as exec `exec` of the running container `id`;
    /// its stdout and exit status.
    async fn exec_json(
        &self,
        id: &str,
        exec: &str,
        process: serde_json::Value,
    ) -> anyhow::Result<(String, i32)> {
        self.agent
            .clone()
            .exec_process(pb::ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec.into(),
                oci_process_json: serde_json::to_vec(&process)?,
            })
            .await
            .context("ExecProcess")?;
        let out = self.read(id, exec);
        let status = self.wait(id, exec).await?;
        let out = tokio::time::timeout(Duration::from_secs(10), out).await???;
        Ok((out, status))
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

/// Descriptors open in this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
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
    std::fs::copy(
        env!("CARGO_BIN_EXE_coffer-escape-probe"),
        rootfs_dir.join(PROBE.trim_start_matches('/')),
    )
    .expect("copy the escape probe");
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

        // --- Enforcement (#20): each restriction, tried from inside the container. ---

        case!(suite, "enforced_device_cgroup_refuses_unlisted_devices", async {
            // Root with CAP_MKNOD on a /dev without nodev: creating any node is allowed (the
            // runtime's `m` rules), opening one the device cgroup does not list is not (EPERM from
            // the eBPF filter); /dev/null, standard, opens. /dev/kmsg (1:11) opens for writing
            // without any capability, so the only thing refusing it is the filter.
            let script = format!(
                "{PROBE} mknod /dev/kmsg2 c 1 11; {PROBE} open /dev/kmsg2 w; \
                 {PROBE} mknod /dev/vda2 b 254 0; {PROBE} open /dev/vda2 r; {PROBE} open /dev/null w"
            );
            let mut denied = script_spec(&script);
            add_caps(&mut denied, &["CAP_MKNOD"]);
            let (out, status) = env.run_spec("devdeny", denied.clone()).await?;
            ensure!(
                status == 0 && out == "mknod: ok\nopen: EPERM\nmknod: ok\nopen: EPERM\nopen: ok\n",
                "{status}: {out:?}"
            );
            // The same container with 1:11 listed opens it: the filter is what refused.
            let mut listed = denied;
            listed["linux"]["resources"]["devices"]
                .as_array_mut()
                .context("device rules")?
                .push(serde_json::json!({"allow": true, "type": "c", "major": 1, "minor": 11, "access": "rwm"}));
            let (out, _) = env.run_spec("devlisted", listed).await?;
            ensure!(out.starts_with("mknod: ok\nopen: ok\n"), "{out:?}");
            // An allow rule of type a (every device), whatever its access, is refused.
            let mut all = script_spec("true");
            all["linux"]["resources"]["devices"] =
                serde_json::json!([{"allow": true, "type": "a", "access": "m"}]);
            ensure_denied(
                env.create("devall", from_json(all)).await,
                "device cgroup rule of type a allows every device",
            )
        }.await);

        case!(suite, "enforced_read_only_sysfs_and_cgroup2_whatever_the_option_order", async {
            // sysfs and cgroup2 read-only with `ro` first or last: a root process gets EROFS.
            let script = format!(
                "{PROBE} mkdir /sys/escape; {PROBE} mkdir /sys/fs/cgroup/escape; \
                 {PROBE} open /sys/fs/cgroup/cgroup.procs w"
            );
            for (id, sys, cgroup) in [
                ("ro-first", ["ro", "nosuid", "noexec", "nodev"], ["ro", "nosuid", "noexec", "nodev", "relatime"]),
                ("ro-last", ["nosuid", "noexec", "nodev", "ro"], ["nosuid", "noexec", "nodev", "relatime", "ro"]),
            ] {
                let mut spec = script_spec(&script);
                mount_options(&mut spec, "/sys", &sys);
                mount_options(&mut spec, "/sys/fs/cgroup", &cgroup);
                let (out, status) = env.run_spec(id, spec).await?;
                ensure!(
                    status == 0 && out == "mkdir: EROFS\nmkdir: EROFS\nopen: EROFS\n",
                    "{id}: {status}: {out:?}"
                );
            }
            // `rw` after `ro` (the runtime applies the last) is refused, for both.
            for (id, destination, kind) in [("rw-sys", "/sys", "sysfs"), ("rw-cgroup", "/sys/fs/cgroup", "cgroup")] {
                let mut spec = script_spec("true");
                mount_options(&mut spec, destination, &["ro", "nosuid", "rw"]);
                ensure_denied(
                    env.create(id, from_json(spec)).await,
                    &format!("{kind} mount at {destination} is not read-only"),
                )?;
            }
            Ok(())
        }.await);

        case!(suite, "enforced_dropped_capabilities", async {
            // The default set has neither CAP_CHOWN nor CAP_MKNOD: root gets EPERM for both; with
            // CAP_CHOWN added, chown works.
            let script = format!(
                "{PROBE} write /tmp/f 1; {PROBE} chown /tmp/f 1 1; {PROBE} mknod /tmp/null c 1 3"
            );
            let (out, status) = env.run_spec("nocaps", script_spec(&script)).await?;
            ensure!(
                status == 0 && out == "write: ok, 1 bytes\nchown: EPERM\nmknod: EPERM\n",
                "{status}: {out:?}"
            );
            let mut chown = script_spec(&script);
            add_caps(&mut chown, &["CAP_CHOWN"]);
            let (out, _) = env.run_spec("chown", chown).await?;
            ensure!(out.contains("chown: ok\n"), "{out:?}");
            Ok(())
        }.await);

        case!(suite, "enforced_masked_paths_read_nothing", async {
            // Masked files read as empty (/dev/null bound over them), masked directories list
            // nothing; an unmasked /proc file reads.
            let script = format!(
                "{PROBE} read /proc/kcore; {PROBE} read /proc/keys; {PROBE} read /proc/timer_list; \
                 ls -A /sys/firmware | wc -l; {PROBE} read /proc/version | grep -qv ' 0 bytes' && echo version-read"
            );
            let (out, status) = env.run_spec("masked", script_spec(&script)).await?;
            ensure!(
                status == 0
                    && out == "read: 0 bytes\nread: 0 bytes\nread: 0 bytes\n0\nversion-read\n",
                "{status}: {out:?}"
            );
            Ok(())
        }.await);

        case!(suite, "enforced_rlimits", async {
            // RLIMIT_FSIZE 1024: writing 4096 bytes stops at 1024 with EFBIG (SIGXFSZ ignored);
            // RLIMIT_NOFILE 64: the shell sees it.
            let script = format!("ulimit -n; trap '' XFSZ; exec {PROBE} write /tmp/big 4096");
            let mut spec = script_spec(&script);
            spec["process"]["rlimits"] = serde_json::json!([
                {"type": "RLIMIT_FSIZE", "soft": 1024, "hard": 1024},
                {"type": "RLIMIT_NOFILE", "soft": 64, "hard": 64}
            ]);
            let (out, status) = env.run_spec("rlimit", spec).await?;
            ensure!(status == 0 && out == "64\nwrite: EFBIG after 1024 bytes\n", "{status}: {out:?}");
            Ok(())
        }.await);

        case!(suite, "enforced_seccomp_profile", async {
            // A profile that allows everything but mkdir/mkdirat, answered with EDQUOT (an errno
            // nothing else here would give): mkdir fails with it; without the profile it works.
            let script = format!("{PROBE} mkdir /tmp/d");
            let mut spec = script_spec(&script);
            spec["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}]
            });
            let (out, status) = env.run_spec("seccomp", spec).await?;
            ensure!(status == 0 && out == "mkdir: EDQUOT\n", "{status}: {out:?}");
            let (out, _) = env.run_spec("noseccomp", script_spec(&script)).await?;
            ensure!(out == "mkdir: ok\n", "{out:?}");
            Ok(())
        }.await);

        case!(suite, "enforced_no_new_privileges_against_setuid", async {
            // A setuid-root copy of the probe on a tmpfs without nosuid: run as 65534 under
            // no_new_privileges it stays 65534; without, it becomes root (the control).
            let mut spec = script_spec("sleep 600");
            spec["mounts"].as_array_mut().context("mounts")?.push(serde_json::json!(
                {"destination": "/suid", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]}
            ));
            env.create("nnp", from_json(spec)).await?;
            env.start("nnp").await?;
            let process = |args: &[&str], uid: u32, nnp: bool| serde_json::json!({
                "args": args, "cwd": "/", "env": ["PATH=/bin"],
                "user": {"uid": uid, "gid": uid},
                "noNewPrivileges": nnp,
            });
            let setup = format!("busybox cp {PROBE} /suid/probe && busybox chmod 4755 /suid/probe");
            let (_, status) = env.exec_json("nnp", "setup", process(&["sh", "-c", &setup], 0, true)).await?;
            ensure!(status == 0, "setup: {status}");
            let (guarded, _) = env.exec_json("nnp", "guarded", process(&["/suid/probe", "euid"], 65534, true)).await?;
            let (open, _) = env.exec_json("nnp", "open", process(&["/suid/probe", "euid"], 65534, false)).await?;
            env.remove("nnp").await?;
            ensure!(guarded == "euid: 65534\n", "under no_new_privileges: {guarded:?}");
            ensure!(open == "euid: 0\n", "the control (setuid without no_new_privileges): {open:?}");
            Ok(())
        }.await);

        case!(suite, "streams_reach_only_their_own_process", async {
            // AGT-ST: a stream names one process; another container's exec id, a guessed one, or
            // a process that has ended gets nothing of anyone else's.
            env.create("streams-a", spec::container(&opts(&["sleep", "600"]), "coffer")).await?;
            env.start("streams-a").await?;
            env.create("streams-b", spec::container(&opts(&["sleep", "600"]), "coffer")).await?;
            env.start("streams-b").await?;
            let (out, status) = agent::exec(&env.agent, "streams-a", "e1", &["echo", "a's secret"]).await?;
            ensure!(out == "a's secret\n" && status == 0, "{out:?} {status}");
            let mut agent = env.agent.clone();
            let read = |container: &str, exec: &str| pb::ReadOutputRequest { container_id: container.into(), exec_id: exec.into() };
            for (container, exec) in [("streams-b", "e1"), ("streams-a", "e2"), ("streams-c", "e1")] {
                let err = agent.read_stdout(read(container, exec)).await.err()
                    .with_context(|| format!("ReadStdout {container}/{exec} answered"))?;
                ensure!(err.code() == tonic::Code::NotFound, "{container}/{exec}: {err:?}");
            }
            let err = agent.write_stdin(pb::WriteStdinRequest { container_id: "streams-b".into(), exec_id: "e1".into(), data: b"x".to_vec() }).await.err()
                .context("WriteStdin to another container's exec id answered")?;
            ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
            env.remove("streams-a").await?;
            env.remove("streams-b").await?;
            Ok(())
        }.await);

        case!(suite, "load04_exec_storm_with_background_children_keeps_the_agent_whole", async {
            // LOAD-04: twenty execs in quick succession into one container, each leaving a
            // background child that holds its stdout open (an exec probe that forks: the pattern
            // behind hung exec probes). Each exec's wait returns when its own process exits, its
            // output arrives while the pipe stays open, the agent keeps answering, and removing
            // the container ends the children and with them every stream.
            env.create("storm", spec::container(&opts(&["sleep", "600"]), "coffer")).await?;
            env.start("storm").await?;
            let mut held = Vec::new();
            for i in 0..20 {
                let exec = format!("bg{i}");
                let process = ProcessOptions {
                    args: vec!["sh".into(), "-c".into(), format!("sleep 600 & echo {i}")],
                    ..Default::default()
                };
                env.agent.clone().exec_process(pb::ExecProcessRequest {
                    container_id: "storm".into(),
                    exec_id: exec.clone(),
                    oci_process_json: serde_json::to_vec(&spec::process(&process))?,
                }).await.context("ExecProcess")?;
                let mut stream = env.agent.clone()
                    .read_stdout(pb::ReadOutputRequest { container_id: "storm".into(), exec_id: exec.clone() })
                    .await?
                    .into_inner();
                let status = tokio::time::timeout(Duration::from_secs(30), env.wait("storm", &exec))
                    .await
                    .with_context(|| format!("{exec}: its wait did not return while its child runs"))??;
                ensure!(status == 0, "{exec}: status {status}");
                let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .with_context(|| format!("{exec}: no output while its child holds the pipe"))??
                    .with_context(|| format!("{exec}: the stream ended before its output"))?;
                ensure!(first.data == format!("{i}\n").as_bytes(), "{exec}: {:?}", first.data);
                held.push((exec, stream));
            }
            let (out, status) = agent::exec(&env.agent, "storm", "alive", &["echo", "alive"]).await?;
            ensure!(out == "alive\n" && status == 0, "an exec after the storm: {out:?} {status}");
            tokio::time::timeout(
                Duration::from_secs(10),
                env.agent.clone().get_guest_details(pb::GetGuestDetailsRequest {}),
            )
            .await
            .context("GetGuestDetails after the storm")??;
            env.remove("storm").await?;
            for (exec, mut stream) in held {
                let ended = tokio::time::timeout(Duration::from_secs(20), async {
                    while let Ok(Some(_)) = stream.message().await {}
                })
                .await;
                ensure!(ended.is_ok(), "{exec}: its stream outlived the container");
            }
            Ok(())
        }.await);

        let dir = sandbox.dir().to_path_buf();
        sandbox.stop().await;
        case!(suite, "teardown_leaves_nothing", assert_stopped_sandbox_gone(&dir, &state));

        case!(suite, "load01_concurrent_sandboxes_leave_nothing_after_each_round", async {
            // LOAD-01: sandboxes started at once (three: a 2-core TCG host boots them in
            // parallel), each running a container, then all stopped, for two rounds. After each
            // round nothing is left: no VMM or backend process, no sandbox state, no mount, and
            // not one descriptor more in this process (the runtime's). No CID leaks by design:
            // each VM has its own vsock backend, so no CID is allocated host-wide.
            let load_state = work.path().join("load01");
            let fds_before = open_fds();
            for round in 0..2 {
                let start = |i: usize| {
                    Sandbox::start(&qemu, vm_config(&image, &format!("load01-{round}-{i}"), &load_state))
                };
                let (a, b, c) = tokio::join!(start(0), start(1), start(2));
                let sandboxes = [a?, b?, c?];
                for (i, sandbox) in sandboxes.iter().enumerate() {
                    let line = format!("round {round} sandbox {i}");
                    let (out, status) = agent::run(
                        &sandbox.agent(),
                        &rootfs_dir,
                        "c",
                        &spec::container(&opts(&["echo", &line]), "coffer"),
                    )
                    .await?;
                    ensure!(out == format!("{line}\n") && status == 0, "{out:?} {status}");
                }
                for sandbox in sandboxes {
                    sandbox.stop().await;
                }
                assert_nothing_left(&load_state)?;
                let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
                ensure!(!mounts.contains(&load_state.display().to_string()), "a mount left: {mounts}");
                let fds = open_fds();
                ensure!(fds <= fds_before, "round {round}: {fds} descriptors open, {fds_before} before");
            }
            Ok(())
        }.await);
    });
    suite.finish()
}
