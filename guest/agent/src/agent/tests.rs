//! The agent core without root: requests through [`Agent::handle`] against a recording
//! [`Host`](crate::host::Host) — the sandbox's creation, its atomic reservation, and what the
//! guest machine is asked to do.

use std::sync::Arc;

use coffer_agent_protocol::v1 as pb;

use super::*;
use crate::host::fake::{Call, RecordingHost};
use crate::policy::RegoPolicy;
use crate::request::Decode;

mod faults;

struct Core {
    agent: Arc<Agent>,
    host: Arc<RecordingHost>,
    _dir: tempfile::TempDir,
}

/// The agent configuration of these tests, with its state in `dir`. No container operation runs
/// the real helper here: it is never started.
fn test_config(dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        state_dir: dir.to_path_buf(),
        helper_exe: dir.join("no-helper"),
        is_init: false,
        max_rootfs_bytes: 1 << 20,
        images: None,
    }
}

fn core(host: RecordingHost) -> Core {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Arc::new(host);
    let config = test_config(dir.path());
    let gate = Gate::new(Box::new(RegoPolicy::sandbox_default().expect("policy")));
    let reaper = Reaper::start().expect("reaper");
    let agent =
        Agent::new(config, gate, reaper, Arc::clone(&host) as Arc<dyn Host>).expect("agent");
    Core {
        agent,
        host,
        _dir: dir,
    }
}

pub(super) fn create_sandbox(hostname: &str, network: bool) -> AgentRequest {
    pb::CreateSandboxRequest {
        sandbox_id: "sb".into(),
        hostname: hostname.into(),
        network: network.then(|| pb::PodNetwork {
            interfaces: vec![pb::NetworkInterface {
                name: "eth0".into(),
                mac: "02:42:ac:11:00:05".into(),
                mtu: 1500,
                addresses: vec!["192.0.2.5/24".into()],
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .decode()
    .expect("a valid request")
}

fn pull(id: &str) -> AgentRequest {
    pb::PullImageRequest {
        container_id: id.into(),
        reference: "registry.example/app@sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
    }
    .decode()
    .expect("a valid request")
}

#[tokio::test]
async fn create_sandbox_names_the_guest_then_applies_its_network_once() {
    let core = core(RecordingHost::default());
    core.agent
        .handle(create_sandbox("web-0", true))
        .await
        .expect("CreateSandbox");
    assert_eq!(
        core.host.calls(),
        [
            Call::SetHostname("web-0".into()),
            Call::ApplyNetwork(Some(vec!["eth0".into()])),
        ]
    );
    // The pod's files were written from it.
    let hosts =
        std::fs::read_to_string(crate::pod_files::dir(&core.agent.config.state_dir).join("hosts"))
            .expect("hosts");
    assert!(hosts.contains("192.0.2.5\tweb-0"), "{hosts}");
    let details = core
        .agent
        .handle(AgentRequest::GetGuestDetails)
        .await
        .expect("details");
    let Reply::Details(details) = details else {
        panic!("not details")
    };
    assert_eq!(details.sandbox_id, "sb");
    // A second one is refused and asks nothing of the guest.
    let err = core
        .agent
        .handle(create_sandbox("other", true))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::SandboxExists(_)), "{err}");
    assert_eq!(core.host.calls().len(), 2);
}

/// AGT-ORD: a `CreateSandbox` still applying the network holds the sandbox: a concurrent one
/// is refused before it touches the guest, and requests that need the sandbox wait for none.
#[tokio::test]
async fn a_create_sandbox_in_progress_holds_the_sandbox() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let core = core(RecordingHost {
        network_gate: Some(Arc::clone(&gate)),
        ..RecordingHost::default()
    });
    let agent = Arc::clone(&core.agent);
    let first = tokio::spawn(async move { agent.handle(create_sandbox("web-0", true)).await });
    // Until the first reached the network, nothing else may start creating.
    for _ in 0..200 {
        if core.host.calls().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(core.host.calls().len(), 2, "{:?}", core.host.calls());
    let err = core
        .agent
        .handle(create_sandbox("web-1", false))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already in progress"),
        "the second CreateSandbox: {err}"
    );
    let err = core.agent.handle(pull("c1")).await.unwrap_err();
    assert!(matches!(err, AgentError::NoSandbox), "{err}");
    gate.notify_one();
    first.await.expect("task").expect("CreateSandbox");
    // Only the first asked anything of the guest.
    assert_eq!(
        core.host.calls(),
        [
            Call::SetHostname("web-0".into()),
            Call::ApplyNetwork(Some(vec!["eth0".into()])),
        ]
    );
}

#[tokio::test]
async fn a_failed_create_sandbox_leaves_no_sandbox() {
    let core = core(RecordingHost {
        network_fails: true,
        ..RecordingHost::default()
    });
    let err = core
        .agent
        .handle(create_sandbox("web-0", true))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the fake network fails"), "{err}");
    assert!(matches!(
        core.agent.handle(pull("c1")).await.unwrap_err(),
        AgentError::NoSandbox
    ));
    assert!(matches!(
        core.agent
            .handle(AgentRequest::DestroySandbox { power_off: false })
            .await
            .unwrap_err(),
        AgentError::NoSandbox
    ));
}

#[tokio::test]
async fn destroy_powers_off_through_the_host_after_replying() {
    let core = core(RecordingHost::default());
    core.agent
        .handle(create_sandbox("web-0", false))
        .await
        .expect("CreateSandbox");
    core.agent
        .handle(AgentRequest::DestroySandbox { power_off: true })
        .await
        .expect("DestroySandbox");
    assert!(!core.host.calls().contains(&Call::PowerOff));
    for _ in 0..100 {
        if core.host.calls().contains(&Call::PowerOff) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(core.host.calls().last(), Some(&Call::PowerOff));
    // The sandbox is gone: a new one may be created.
    core.agent
        .handle(create_sandbox("web-1", false))
        .await
        .expect("CreateSandbox after destroy");
}

/// A request that fails gives its reservation back: the id is free for the next one.
#[tokio::test]
async fn a_failed_request_gives_its_id_back() {
    let core = core(RecordingHost::default());
    core.agent
        .handle(create_sandbox("web-0", false))
        .await
        .expect("CreateSandbox");
    // Guest pull is not configured here: the pull itself fails, after its reservation.
    let err = core.agent.handle(pull("c1")).await.unwrap_err();
    assert!(err.to_string().contains("not configured"), "{err}");
    // The failed pull gave its id back.
    let err = core.agent.handle(pull("c1")).await.unwrap_err();
    assert!(err.to_string().contains("not configured"), "{err}");
    assert!(core.agent.state.lock().busy.is_empty());
}
