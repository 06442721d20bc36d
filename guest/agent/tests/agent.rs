//! The agent without a VM: the real `coffer-agent` binary serves on a unix socket and runs real
//! containers on this host (as root), through the same code path as in the guest.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use coffer_agent_protocol::v1 as pb;
use coffer_agent_protocol::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

struct AgentProc {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    assert!(
        p.exists(),
        "/bin/busybox is missing: run tests/setup.sh (installs busybox-static)"
    );
    p
}

/// A tar of a minimal busybox rootfs.
fn rootfs_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "work"] {
        dir(&mut b, d, if d == "tmp" { 0o1777 } else { 0o755 });
    }
    b.append_path_with_name(busybox(), "bin/busybox").unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "id", "pwd", "env", "true", "kill", "ls",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(passwd.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "etc/passwd", &passwd[..]).unwrap();
    b.into_inner().unwrap()
}

fn spec(args: &[&str]) -> Vec<u8> {
    spec_with_terminal(args, false)
}

fn spec_with_terminal(args: &[&str], terminal: bool) -> Vec<u8> {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_terminal(Some(terminal));
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_env(Some(vec!["PATH=/bin".into(), "GREETING=hi there".into()]));
    spec.set_process(Some(process));
    serde_json::to_vec(&spec).unwrap()
}

fn process_json(args: &[&str]) -> Vec<u8> {
    let spec: oci_spec::runtime::Spec = serde_json::from_slice(&spec(args)).unwrap();
    serde_json::to_vec(spec.process().as_ref().unwrap()).unwrap()
}

async fn start_agent() -> (AgentProc, AgentClient<Channel>) {
    let (agent, mut client) = start_bare_agent().await;
    client
        .create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: "test".into(),
            hostname: String::new(),
            registry_tunnels: Vec::new(),
            published_ports: Vec::new(),
            network: None,
        })
        .await
        .unwrap();
    (agent, client)
}

/// An agent that has not been asked to create its sandbox yet.
async fn start_bare_agent() -> (AgentProc, AgentClient<Channel>) {
    start_agent_with_policy(None).await
}

/// An agent using the Rego policy `policy` (default: the built-in sandbox policy).
async fn start_agent_with_policy(policy: Option<&str>) -> (AgentProc, AgentClient<Channel>) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "agent tests run real containers and must run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer-agent"));
    if let Some(policy) = policy {
        let path = dir.path().join("policy.rego");
        std::fs::write(&path, policy).unwrap();
        cmd.arg("--policy").arg(path);
    }
    let child = cmd
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("COFFER_LOG", "debug")
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "agent did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = connect(&sock).await;
    (AgentProc { child, dir }, AgentClient::new(channel))
}

async fn connect(sock: &Path) -> Channel {
    let sock = sock.to_path_buf();
    Endpoint::try_from("http://agent")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap()
}

async fn upload(client: &mut AgentClient<Channel>, id: &str) {
    let tar = rootfs_tar();
    let mut chunks = vec![pb::RootfsChunk {
        container_id: id.into(),
        data: Vec::new(),
        last: false,
    }];
    for c in tar.chunks(64 * 1024) {
        chunks.push(pb::RootfsChunk {
            container_id: String::new(),
            data: c.to_vec(),
            last: false,
        });
    }
    chunks.push(pb::RootfsChunk {
        container_id: String::new(),
        data: Vec::new(),
        last: true,
    });
    client
        .upload_rootfs(futures::stream::iter(chunks))
        .await
        .unwrap();
}

async fn create(client: &mut AgentClient<Channel>, id: &str, args: &[&str]) {
    upload(client, id).await;
    client
        .create_container(pb::CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec(args),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        })
        .await
        .unwrap();
}

async fn read_all(client: &mut AgentClient<Channel>, id: &str, exec: &str, stderr: bool) -> String {
    let req = pb::ReadOutputRequest {
        container_id: id.into(),
        exec_id: exec.into(),
    };
    let mut stream = if stderr {
        client.read_stderr(req).await.unwrap().into_inner()
    } else {
        client.read_stdout(req).await.unwrap().into_inner()
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.extend(chunk.data);
    }
    String::from_utf8(out).unwrap()
}

async fn wait(client: &mut AgentClient<Channel>, id: &str, exec: &str) -> i32 {
    client
        .wait_process(pb::WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .exit_status
}

async fn run(client: &mut AgentClient<Channel>, id: &str, args: &[&str]) -> (String, i32) {
    create(client, id, args).await;
    let mut reader = client.clone();
    let idc = id.to_owned();
    let out = tokio::spawn(async move { read_all(&mut reader, &idc, "", false).await });
    client
        .start_container(pb::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
    let status = wait(client, id, "").await;
    let out = out.await.unwrap();
    remove(client, id).await;
    (out, status)
}

async fn remove(client: &mut AgentClient<Channel>, id: &str) {
    client
        .remove_container(pb::RemoveContainerRequest {
            container_id: id.into(),
            force: true,
        })
        .await
        .unwrap();
}

/// The agent runs here with `COFFER_LOG=debug`: its own DEBUG events are logged, its
/// dependencies' (h2 logs every frame at DEBUG) are not — they are not reviewed for secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logging_is_coffers_own_only() {
    let (agent, mut c) = start_agent().await;
    let (out, _) = run(&mut c, "logged", &["echo", "hello"]).await;
    assert_eq!(out, "hello\n");
    let log = std::fs::read_to_string(agent.dir.path().join("agent.log")).unwrap();
    let verbose: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" DEBUG ") || l.contains(" TRACE "))
        .collect();
    let foreign: Vec<&&str> = verbose.iter().filter(|l| !l.contains("coffer")).collect();
    assert!(
        foreign.is_empty(),
        "dependency DEBUG/TRACE lines: {foreign:#?}"
    );
    assert!(
        log.contains("INFO") && log.contains("coffer_agent"),
        "the agent's own events are logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_and_report_status() {
    let (agent, mut c) = start_agent().await;

    let (out, status) = run(&mut c, "echo", &["echo", "hello"]).await;
    assert_eq!((out.as_str(), status), ("hello\n", 0));

    let (_, status) = run(&mut c, "exit7", &["sh", "-c", "exit 7"]).await;
    assert_eq!(status, 7);

    let (out, _) = run(
        &mut c,
        "envcwd",
        &["sh", "-c", "echo $GREETING; pwd; id -u"],
    )
    .await;
    assert_eq!(out, "hi there\n/\n0\n");

    // stdin round trip
    create(&mut c, "cat", &["cat"]).await;
    let mut reader = c.clone();
    let out = tokio::spawn(async move { read_all(&mut reader, "cat", "", false).await });
    c.start_container(pb::StartContainerRequest {
        container_id: "cat".into(),
    })
    .await
    .unwrap();
    c.write_stdin(pb::WriteStdinRequest {
        container_id: "cat".into(),
        exec_id: String::new(),
        data: b"round trip\n".to_vec(),
    })
    .await
    .unwrap();
    c.close_stdin(pb::CloseStdinRequest {
        container_id: "cat".into(),
        exec_id: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "cat", "").await, 0);
    assert_eq!(out.await.unwrap(), "round trip\n");
    remove(&mut c, "cat").await;

    // exec into a running container, then signal its init
    // (PID 1 of a pid namespace ignores signals it has no handler for, so trap TERM.)
    create(
        &mut c,
        "sleeper",
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 0.1; done",
        ],
    )
    .await;
    c.start_container(pb::StartContainerRequest {
        container_id: "sleeper".into(),
    })
    .await
    .unwrap();
    let exec_pid = c
        .exec_process(pb::ExecProcessRequest {
            container_id: "sleeper".into(),
            exec_id: "e1".into(),
            oci_process_json: process_json(&["sh", "-c", "echo from exec; exit 3"]),
        })
        .await
        .unwrap()
        .into_inner()
        .pid;
    assert!(exec_pid > 1, "the exec reports its pid: {exec_pid}");
    assert_eq!(
        read_all(&mut c, "sleeper", "e1", false).await,
        "from exec\n"
    );
    assert_eq!(wait(&mut c, "sleeper", "e1").await, 3);
    let stats = c
        .stats_container(pb::StatsContainerRequest {
            container_id: "sleeper".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.pids_current >= 1, "{stats:?}");
    c.signal_process(pb::SignalProcessRequest {
        container_id: "sleeper".into(),
        exec_id: String::new(),
        signal: 15,
        all: false,
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "sleeper", "").await, 42);

    // exec into the stopped container is refused
    let err = c
        .exec_process(pb::ExecProcessRequest {
            container_id: "sleeper".into(),
            exec_id: "e2".into(),
            oci_process_json: process_json(&["true"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    remove(&mut c, "sleeper").await;

    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_processes_get_a_pty_that_resizes() {
    let (agent, mut c) = start_agent().await;
    upload(&mut c, "tty").await;
    c.create_container(pb::CreateContainerRequest {
        container_id: "tty".into(),
        oci_spec_json: spec_with_terminal(
            &["sh", "-c", "read x; stty size; test -t 0 && echo is-a-tty"],
            true,
        ),
        rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
            pb::UploadedRootfs {},
        )),
    })
    .await
    .unwrap();
    let mut reader = c.clone();
    let out = tokio::spawn(async move { read_all(&mut reader, "tty", "", false).await });
    c.start_container(pb::StartContainerRequest {
        container_id: "tty".into(),
    })
    .await
    .unwrap();
    c.tty_win_resize(pb::TtyWinResizeRequest {
        container_id: "tty".into(),
        exec_id: String::new(),
        rows: 40,
        columns: 100,
    })
    .await
    .unwrap();
    c.write_stdin(pb::WriteStdinRequest {
        container_id: "tty".into(),
        exec_id: String::new(),
        data: b"go\n".to_vec(),
    })
    .await
    .unwrap();
    assert_eq!(wait(&mut c, "tty", "").await, 0);
    let out = out.await.unwrap();
    assert!(out.contains("40 100\r\n"), "{out:?}");
    assert!(out.contains("is-a-tty"), "{out:?}");
    // The terminal has one output stream; stderr is empty.
    assert_eq!(read_all(&mut c, "tty", "", true).await, "");
    remove(&mut c, "tty").await;

    // A process without a terminal cannot be resized.
    create(&mut c, "notty", &["sleep", "100"]).await;
    let err = c
        .tty_win_resize(pb::TtyWinResizeRequest {
            container_id: "notty".into(),
            exec_id: String::new(),
            rows: 1,
            columns: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    remove(&mut c, "notty").await;
    drop(agent);
}

const DENY_EXEC: &str = r#"
package coffer.policy
import rego.v1
default decision := {"allow": true, "reason": "allowed"}
decision := {"allow": false, "reason": "ExecProcess: exec is not allowed here"} if {
    input.request.kind == "ExecProcess"
}
"#;

/// The gate is in the request path: a policy denial is PERMISSION_DENIED with the policy's reason,
/// nothing runs, and the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denials_are_enforced() {
    let (agent, mut c) = start_agent_with_policy(Some(DENY_EXEC)).await;
    c.create_sandbox(pb::CreateSandboxRequest {
        sandbox_id: "p".into(),
        hostname: String::new(),
        registry_tunnels: Vec::new(),
        published_ports: Vec::new(),
        network: None,
    })
    .await
    .unwrap();
    create(&mut c, "svc", &["sleep", "100"]).await;
    c.start_container(pb::StartContainerRequest {
        container_id: "svc".into(),
    })
    .await
    .unwrap();
    let err = c
        .exec_process(pb::ExecProcessRequest {
            container_id: "svc".into(),
            exec_id: "e".into(),
            oci_process_json: process_json(&["touch", "/tmp/ran"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "ExecProcess denied by policy: ExecProcess: exec is not allowed here"
    );
    let err = c
        .wait_process(pb::WaitProcessRequest {
            container_id: "svc".into(),
            exec_id: "e".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the denied exec must not exist");
    remove(&mut c, "svc").await;
    drop(agent);
}

const DENY_ALL: &str = r#"
package coffer.policy
import rego.v1
decision := {"allow": false, "reason": sprintf("%s is not allowed", [input.request.kind])}
"#;

/// INV-5 / AGT-00: every RPC of the protocol passes the gate. The list of RPCs is read from the
/// .proto itself, so an RPC added to the protocol without a gate check here fails this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_passes_the_gate() {
    let proto = include_str!("../../agent-protocol/proto/coffer/agent/v1/agent.proto");
    let declared: std::collections::BTreeSet<String> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim().to_owned())
        .collect();

    let (agent, mut c) = start_agent_with_policy(Some(DENY_ALL)).await;
    let mut checked = std::collections::BTreeSet::new();
    let mut expect_denied = |rpc: &str, result: Result<(), tonic::Status>| {
        let err = result.expect_err(rpc);
        assert_eq!(err.code(), Code::PermissionDenied, "{rpc}: {err:?}");
        assert!(
            err.message()
                .starts_with(&format!("{rpc} denied by policy")),
            "{rpc}: {}",
            err.message()
        );
        checked.insert(rpc.to_owned());
    };
    let (cid, eid) = (String::from("c"), String::from("e"));
    expect_denied(
        "CreateSandbox",
        c.create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: "s".into(),
            hostname: String::new(),
            registry_tunnels: Vec::new(),
            published_ports: Vec::new(),
            network: None,
        })
        .await
        .map(drop),
    );
    expect_denied(
        "DestroySandbox",
        c.destroy_sandbox(pb::DestroySandboxRequest { power_off: false })
            .await
            .map(drop),
    );
    expect_denied(
        "UploadRootfs",
        c.upload_rootfs(futures::stream::iter(vec![pb::RootfsChunk {
            container_id: cid.clone(),
            data: Vec::new(),
            last: true,
        }]))
        .await
        .map(drop),
    );
    expect_denied(
        "PullImage",
        c.pull_image(pb::PullImageRequest {
            container_id: cid.clone(),
            reference: format!("127.0.0.1:5000/app@sha256:{}", "a".repeat(64)),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "CreateContainer",
        c.create_container(pb::CreateContainerRequest {
            container_id: cid.clone(),
            oci_spec_json: spec(&["true"]),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "StartContainer",
        c.start_container(pb::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "RemoveContainer",
        c.remove_container(pb::RemoveContainerRequest {
            container_id: cid.clone(),
            force: true,
        })
        .await
        .map(drop),
    );
    expect_denied(
        "StatsContainer",
        c.stats_container(pb::StatsContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "ExecProcess",
        c.exec_process(pb::ExecProcessRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
            oci_process_json: process_json(&["true"]),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "WaitProcess",
        c.wait_process(pb::WaitProcessRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "SignalProcess",
        c.signal_process(pb::SignalProcessRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
            signal: 15,
            all: false,
        })
        .await
        .map(drop),
    );
    expect_denied(
        "WriteStdin",
        c.write_stdin(pb::WriteStdinRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
            data: b"x".to_vec(),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "CloseStdin",
        c.close_stdin(pb::CloseStdinRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "ReadStdout",
        c.read_stdout(pb::ReadOutputRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "ReadStderr",
        c.read_stderr(pb::ReadOutputRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
        })
        .await
        .map(drop),
    );
    expect_denied(
        "TtyWinResize",
        c.tty_win_resize(pb::TtyWinResizeRequest {
            container_id: cid.clone(),
            exec_id: eid.clone(),
            rows: 24,
            columns: 80,
        })
        .await
        .map(drop),
    );
    expect_denied(
        "GetGuestDetails",
        c.get_guest_details(pb::GetGuestDetailsRequest {})
            .await
            .map(drop),
    );
    expect_denied(
        "GetOOMEvent",
        c.get_oom_event(pb::GetOomEventRequest {}).await.map(drop),
    );
    assert_eq!(
        checked, declared,
        "every RPC declared in agent.proto must be checked here"
    );
    drop(agent);
}

/// AGT-NW: protocol v1 has no network-mutating RPC, so the host has no call that changes the
/// guest's interfaces, routes, neighbours or packet filter. Kata's network RPCs, sent as raw gRPC
/// to an agent whose policy allows everything, under Kata's service name and under ours, reach
/// no handler (Unimplemented), and agent.proto declares none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kata_network_rpcs_do_not_exist() {
    const KATA_NETWORK_RPCS: [&str; 7] = [
        "UpdateInterface",
        "UpdateRoutes",
        "AddARPNeighbors",
        "SetIPTables",
        "GetIPTables",
        "ListInterfaces",
        "ListRoutes",
    ];
    let proto = include_str!("../../agent-protocol/proto/coffer/agent/v1/agent.proto");
    let (agent, _client) = start_agent().await;
    let channel = connect(&agent.dir.path().join("agent.sock")).await;
    for service in ["grpc.AgentService", "coffer.agent.v1.Agent"] {
        for rpc in KATA_NETWORK_RPCS {
            assert!(
                !proto.contains(&format!("rpc {rpc}(")),
                "agent.proto declares {rpc}"
            );
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let path: tonic::codegen::http::uri::PathAndQuery =
                format!("/{service}/{rpc}").parse().unwrap();
            let err = grpc
                .unary(
                    tonic::Request::new(()),
                    path,
                    tonic_prost::ProstCodec::<(), ()>::default(),
                )
                .await
                .expect_err(rpc);
            assert_eq!(err.code(), Code::Unimplemented, "{service}/{rpc}: {err:?}");
        }
    }
    drop(agent);
}

/// INI-01 (agent side): a policy that does not load means the agent never serves — no fallback.
#[test]
fn a_broken_policy_means_no_service() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rego");
    std::fs::write(&policy, "package coffer.policy\ndecision := {").unwrap();
    let sock = dir.path().join("agent.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_coffer-agent"))
        .arg("--policy")
        .arg(&policy)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!sock.exists(), "the agent listened despite a broken policy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loading the agent policy"), "{stderr}");
}

/// AGT-ORD: container requests before CreateSandbox are refused; after DestroySandbox too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_a_sandbox_are_refused() {
    let (agent, mut c) = start_bare_agent().await;
    let err = c
        .create_container(pb::CreateContainerRequest {
            container_id: "early".into(),
            oci_spec_json: spec(&["true"]),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("sandbox not created"),
        "{}",
        err.message()
    );
    // Guest details are available before the sandbox exists.
    c.get_guest_details(pb::GetGuestDetailsRequest {})
        .await
        .unwrap();

    c.create_sandbox(pb::CreateSandboxRequest {
        sandbox_id: "s".into(),
        hostname: String::new(),
        registry_tunnels: Vec::new(),
        published_ports: Vec::new(),
        network: None,
    })
    .await
    .unwrap();
    create(&mut c, "left-running", &["sleep", "100"]).await;
    c.start_container(pb::StartContainerRequest {
        container_id: "left-running".into(),
    })
    .await
    .unwrap();
    // An upload no container claimed.
    upload(&mut c, "unclaimed").await;
    // DestroySandbox removes the running container and the upload; later requests are refused.
    c.destroy_sandbox(pb::DestroySandboxRequest { power_off: false })
        .await
        .unwrap();
    let err = c
        .start_container(pb::StartContainerRequest {
            container_id: "left-running".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let state = agent.dir.path().join("state");
    for sub in ["containers", "uploads", "oci"] {
        let left: Vec<_> = std::fs::read_dir(state.join(sub)).unwrap().collect();
        assert!(
            left.is_empty(),
            "{sub} not empty after DestroySandbox: {left:?}"
        );
    }
    drop(agent);
}

/// AGT-00 / AGT-ORD: malformed input, unknown and duplicate ids, wrong states — each a clear gRPC
/// error, nothing left behind, and the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_agent_keeps_serving() {
    let (agent, mut c) = start_agent().await;

    let err = c
        .start_container(pb::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"), "{}", err.message());

    let err = c
        .start_container(pb::StartContainerRequest {
            container_id: "../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = c
        .create_container(pb::CreateContainerRequest {
            container_id: "bad".into(),
            oci_spec_json: b"{\"ociVersion\": 1".to_vec(),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = c
        .create_container(pb::CreateContainerRequest {
            container_id: "norootfs".into(),
            oci_spec_json: spec(&["true"]),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    create(&mut c, "dup", &["sleep", "100"]).await;
    let err = c
        .create_container(pb::CreateContainerRequest {
            container_id: "dup".into(),
            oci_spec_json: spec(&["true"]),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = c
        .exec_process(pb::ExecProcessRequest {
            container_id: "dup".into(),
            exec_id: "x".into(),
            oci_process_json: process_json(&["true"]),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "exec before start: {err:?}"
    );
    remove(&mut c, "dup").await;

    // A rootfs stream that ends without its last chunk is discarded as truncated.
    let tar = rootfs_tar();
    let err = c
        .upload_rootfs(futures::stream::iter(vec![pb::RootfsChunk {
            container_id: "trunc".into(),
            data: tar[..tar.len() / 2].to_vec(),
            last: false,
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("truncated"), "{}", err.message());

    let err = c
        .create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: "again".into(),
            hostname: String::new(),
            registry_tunnels: Vec::new(),
            published_ports: Vec::new(),
            network: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let err = c
        .signal_process(pb::SignalProcessRequest {
            container_id: "x".into(),
            exec_id: String::new(),
            signal: 999,
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Still serving, and nothing was left behind by the failures.
    let (out, status) = run(&mut c, "after", &["echo", "still here"]).await;
    assert_eq!((out.as_str(), status), ("still here\n", 0));
    let state = agent.dir.path().join("state");
    for sub in ["containers", "uploads", "oci"] {
        let left: Vec<_> = std::fs::read_dir(state.join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{sub} not empty: {left:?}");
    }
    drop(agent);
}

/// A pod network as the host describes it (documentation addresses).
fn pod_network() -> pb::PodNetwork {
    pb::PodNetwork {
        interfaces: vec![pb::NetworkInterface {
            name: "eth0".into(),
            mac: "02:42:AC:11:00:05".into(),
            mtu: 1450,
            addresses: vec!["192.0.2.5/24".into(), "2001:db8::5/64".into()],
        }],
        routes: vec![pb::NetworkRoute {
            destination: "0.0.0.0/0".into(),
            gateway: "192.0.2.1".into(),
            device: "eth0".into(),
            source: String::new(),
            metric: 0,
        }],
        dns: Some(pb::DnsConfig {
            servers: vec!["192.0.2.53".into()],
            searches: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        hosts: vec![pb::HostEntry {
            ip: "192.0.2.99".into(),
            names: vec!["db.internal".into()],
        }],
    }
}

/// A spec running `args` with the pod mounts `files` (source, destination).
fn spec_with_pod_mounts(args: &[&str], files: &[(&str, &str)]) -> Vec<u8> {
    let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(&spec(args)).unwrap();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (source, destination) in files {
        mounts.push(
            serde_json::from_value(serde_json::json!({
                "type": "pod", "source": source, "destination": destination, "options": []
            }))
            .unwrap(),
        );
    }
    spec.set_mounts(Some(mounts));
    serde_json::to_vec(&spec).unwrap()
}

/// The pod's network end to end outside a guest (the agent is not PID 1 here, so it changes no
/// interface): CreateSandbox validates it (a bad field is INVALID_ARGUMENT naming it, and no
/// sandbox is created), writes the pod files into its state directory, and a container's `pod`
/// mounts become read-only binds of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_files_reach_containers() {
    let (agent, mut c) = start_bare_agent().await;
    let mut bad = pod_network();
    bad.interfaces[0].mtu = 70000;
    let err = c
        .create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: "pod".into(),
            hostname: "web-0".into(),
            registry_tunnels: Vec::new(),
            published_ports: Vec::new(),
            network: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "invalid request: network.interfaces[0].mtu: 70000 is outside 68..=65535"
    );
    let pod = agent.dir.path().join("state").join("pod");
    assert!(!pod.exists(), "a refused CreateSandbox wrote pod files");

    c.create_sandbox(pb::CreateSandboxRequest {
        sandbox_id: "pod".into(),
        hostname: "web-0".into(),
        registry_tunnels: Vec::new(),
        published_ports: Vec::new(),
        network: Some(pod_network()),
    })
    .await
    .unwrap();
    let resolv = "# The pod's resolver configuration, written by coffer-agent at CreateSandbox.\n\
                  nameserver 192.0.2.53\n\
                  search default.svc.cluster.local cluster.local\n\
                  options ndots:5\n";
    let hosts = "# The pod's hosts file, written by coffer-agent at CreateSandbox.\n\
                 127.0.0.1\tlocalhost\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\n\
                 192.0.2.5\tweb-0\n\
                 2001:db8::5\tweb-0\n\
                 192.0.2.99\tdb.internal\n";
    assert_eq!(
        std::fs::read_to_string(pod.join("resolv.conf")).unwrap(),
        resolv
    );
    assert_eq!(std::fs::read_to_string(pod.join("hosts")).unwrap(), hosts);
    assert_eq!(
        std::fs::read_to_string(pod.join("hostname")).unwrap(),
        "web-0\n"
    );

    let files = [
        ("resolv.conf", "/etc/resolv.conf"),
        ("hosts", "/etc/hosts"),
        ("hostname", "/etc/hostname"),
    ];
    let create_with =
        |id: &str, args: &[&str], files: &[(&str, &str)]| pb::CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec_with_pod_mounts(args, files),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        };
    // A pod mount of the wrong pairing is refused at decode time.
    let err = c
        .create_container(create_with(
            "bad",
            &["true"],
            &[("hosts", "/etc/resolv.conf")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("the pod's hosts can only be mounted at /etc/hosts"),
        "{}",
        err.message()
    );

    for (id, args, expected) in [
        (
            "reader",
            &["cat", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname"][..],
            format!("{resolv}{hosts}web-0\n"),
        ),
        (
            "writer",
            &[
                "sh",
                "-c",
                "echo 6.6.6.6 evil >> /etc/hosts || echo read-only",
            ][..],
            "read-only\n".to_owned(),
        ),
    ] {
        upload(&mut c, id).await;
        c.create_container(create_with(id, args, &files))
            .await
            .unwrap();
        let mut reader = c.clone();
        let owned = id.to_owned();
        let out = tokio::spawn(async move { read_all(&mut reader, &owned, "", false).await });
        c.start_container(pb::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
        assert_eq!(wait(&mut c, id, "").await, 0, "{id}");
        assert_eq!(out.await.unwrap(), expected, "{id}");
        remove(&mut c, id).await;
    }
    assert_eq!(std::fs::read_to_string(pod.join("hosts")).unwrap(), hosts);
    drop(agent);
}
