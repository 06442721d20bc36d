//! The confidential policy's fixture: the policy data of a two-entry pod (`app` and its sidecar
//! `side`), the CreateContainer containerd would send for `app`, and a sandbox where `c1` was
//! admitted as `app`. Shared by `confidential_policy.rs` and the differential test (POL-04).

use std::collections::BTreeMap;

use coffer_policies::{ContainerState, CreateContainer, Process, SandboxState};
use serde_json::json;

pub const IMAGE: &str =
    "registry.example/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";
pub const SIDECAR: &str =
    "registry.example/side@sha256:2222222222222222222222222222222222222222222222222222222222222222";

pub fn data() -> serde_json::Value {
    json!({
        "containers": [
            {
                "name": "app",
                "image": IMAGE,
                "args": ["/app/server", "--port", "8080"],
                "env": ["PATH=/usr/bin:/bin", "MODE=prod"],
                "env_names_any_value": ["HOSTNAME"],
                "cwd": "/app",
                "user": {"uid": 1000, "gid": 1000},
                "capabilities": ["CAP_SYS_NICE"],
                "mounts": [{"destination": "/data", "source": "tmpfs", "type": "tmpfs", "options": ["nosuid", "size=1m"]}],
                "exec": [["/app/health", "--ready"], ["sh", "-c", "echo ok"]],
                "logs": true
            },
            {
                "name": "side",
                "image": SIDECAR,
                "args": ["/side"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0}
            }
        ]
    })
}

pub fn app_process() -> Process {
    let mut p = super::process(&["/app/server", "--port", "8080"]);
    p.env = vec![
        "PATH=/usr/bin:/bin".into(),
        "MODE=prod".into(),
        "HOSTNAME=pod-7".into(),
    ];
    p.cwd = "/app".into();
    p.capabilities.bounding = vec!["CAP_CHOWN".into(), "CAP_SYS_NICE".into()];
    p
}

/// The CreateContainer containerd would send for the `app` entry.
pub fn app() -> CreateContainer {
    super::image_container(IMAGE, app_process())
}

/// A sandbox where `c1` was admitted as `app` and `c2` exists without a record.
pub fn state() -> SandboxState {
    super::sandbox(vec![
        ContainerState {
            id: "c1".into(),
            image_digest: None,
            started: true,
            record: BTreeMap::from([("entry".to_owned(), "app".to_owned())]),
        },
        ContainerState {
            id: "c2".into(),
            image_digest: None,
            started: true,
            record: BTreeMap::new(),
        },
    ])
}
