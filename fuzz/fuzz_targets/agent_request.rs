//! Agent requests as the agent decodes them: protobuf bytes into a `coffer.agent.v1` message
//! (prost), then the agent's own validation into its typed `AgentRequest` (`request::Decode`:
//! ids, signals, sizes, image references, registry tunnels, published ports, the pod network
//! description, and the closed OCI spec decoder `spec::decode_container` / `decode_process` with
//! the mount checks).
//!
//! The first byte picks the message (see `Kind`); the last two kinds feed the rest straight to the
//! spec decoders, so the fuzzer need not learn the protobuf framing around the JSON.
//!
//! Property (the one `spec/tests.rs` checks on random values, here on hostile ones): a decoded
//! spec rendered into the runtime's `config.json`, read as libcontainer reads it (`oci_spec`),
//! decodes back to exactly the authorized value; likewise an exec's process.
#![no_main]

use coffer_agent::request::{self, Decode, OutputKind};
use coffer_agent::spec::{decode_container, decode_process, render_container, render_process};
use coffer_agent_protocol::v1 as pb;
use coffer_policies as pol;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn decode<M: Message + Default + Decode>(bytes: &[u8]) -> Option<request::AgentRequest> {
    Decode::decode(<M as Message>::decode(bytes).ok()?).ok()
}

/// What runs is what was authorized.
fn check_container(authorized: &pol::CreateContainer) {
    let rendered = render_container(authorized, "/run/coffer/c1/rootfs", "coffer/c1");
    let bytes = serde_json::to_vec(&rendered).expect("rendered spec serializes");
    let runtime: oci_spec::runtime::Spec =
        serde_json::from_slice(&bytes).expect("libcontainer reads the rendered spec");
    let seen = serde_json::to_vec(&runtime).expect("runtime spec serializes");
    let back = decode_container(&authorized.container_id, authorized.rootfs.clone(), &seen)
        .expect("the rendered spec decodes");
    assert_eq!(
        &back, authorized,
        "the rendered spec is not the authorized one"
    );
    check_process(&authorized.process);
}

fn check_process(authorized: &pol::Process) {
    let runtime: oci_spec::runtime::Process = serde_json::from_value(render_process(authorized))
        .expect("libcontainer reads the rendered process");
    let seen = serde_json::to_vec(&runtime).expect("runtime process serializes");
    let back = decode_process(&seen).expect("the rendered process decodes");
    assert_eq!(
        &back, authorized,
        "the rendered process is not the authorized one"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let decoded = match kind % 16 {
        0 => decode::<pb::CreateSandboxRequest>(rest),
        1 => decode::<pb::DestroySandboxRequest>(rest),
        2 => decode::<pb::CreateContainerRequest>(rest),
        3 => decode::<pb::PullImageRequest>(rest),
        4 => decode::<pb::StartContainerRequest>(rest),
        5 => decode::<pb::RemoveContainerRequest>(rest),
        6 => decode::<pb::StatsContainerRequest>(rest),
        7 => decode::<pb::ExecProcessRequest>(rest),
        8 => decode::<pb::WaitProcessRequest>(rest),
        9 => decode::<pb::SignalProcessRequest>(rest),
        10 => decode::<pb::WriteStdinRequest>(rest),
        11 => decode::<pb::CloseStdinRequest>(rest),
        12 => <pb::ReadOutputRequest as Message>::decode(rest)
            .ok()
            .and_then(|r| request::decode_read_output(r, OutputKind::Stdout).ok()),
        13 => decode::<pb::TtyWinResizeRequest>(rest),
        14 => {
            let rootfs = request::RootfsSource::Uploaded.policy_view();
            if let Ok(spec) = decode_container("c1", rootfs, rest) {
                check_container(&spec);
            }
            None
        }
        _ => {
            if let Ok(process) = decode_process(rest) {
                check_process(&process);
            }
            None
        }
    };
    match decoded {
        Some(request::AgentRequest::CreateContainer { spec, .. }) => check_container(&spec),
        Some(request::AgentRequest::ExecProcess { spec, .. }) => check_process(&spec),
        _ => {}
    }
});
