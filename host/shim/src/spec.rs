//! What the shim reads from a container's OCI bundle: which pod the container belongs to (CRI
//! annotations), and the spec as the guest receives it.

use serde_json::Value;

/// CRI annotation: `sandbox` for a pod's pause container, `container` for its workloads.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the pod (sandbox) a workload container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container's part in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The pod's pause container: it holds the pod VM and runs nothing in the guest.
    PodSandbox,
    /// A container that runs in the pod VM.
    Workload,
}

/// The pod a container belongs to and its role there. A container without CRI annotations (e.g.
/// from `ctr run`) is a pod of its own: it boots the VM and owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The pod (and VM sandbox) id.
    pub pod_id: String,
    /// The container's role.
    pub role: Role,
}

impl Membership {
    /// Whether this container's lifetime is the VM's (it started the pod).
    pub fn owns_vm(&self, container_id: &str) -> bool {
        self.pod_id == container_id
    }
}

/// CRI's annotation naming the container's image (the reference the kubelet pulled).
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// Kata's initdata annotation (base64 of gzip of the TOML), accepted as is.
pub const KATA_INITDATA: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// Coffer's own name for the same annotation.
pub const COFFER_INITDATA: &str = "io.coffer.initdata";

/// A non-empty string annotation of a bundle's `config.json` value.
pub fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

/// Reads the membership from a bundle's `config.json` value.
pub fn membership(spec: &Value, container_id: &str) -> Membership {
    match (
        annotation(spec, CONTAINER_TYPE),
        annotation(spec, SANDBOX_ID),
    ) {
        (Some("sandbox"), _) => Membership {
            pod_id: container_id.to_owned(),
            role: Role::PodSandbox,
        },
        (Some("container"), Some(pod)) => Membership {
            pod_id: pod.to_owned(),
            role: Role::Workload,
        },
        _ => Membership {
            pod_id: container_id.to_owned(),
            role: Role::Workload,
        },
    }
}

/// The spec sent to the guest: host-side settings that mean nothing inside the VM are removed —
/// namespace `path`s (they name host processes' namespaces) and hooks (host binaries). Everything
/// else is the guest agent's to validate and its policy's to decide.
pub fn for_guest(mut spec: Value) -> Value {
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("hooks");
    }
    if let Some(namespaces) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    {
        for ns in namespaces {
            if let Some(ns) = ns.as_object_mut() {
                ns.remove("path");
            }
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cri_annotations_group_containers_into_pods() {
        let plain = json!({"ociVersion": "1.0.2"});
        assert_eq!(
            membership(&plain, "c1"),
            Membership {
                pod_id: "c1".into(),
                role: Role::Workload
            }
        );
        assert!(membership(&plain, "c1").owns_vm("c1"));
        let pause = json!({"annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: "p1"}});
        assert_eq!(membership(&pause, "p1").role, Role::PodSandbox);
        let workload = json!({"annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "p1"}});
        let m = membership(&workload, "c2");
        assert_eq!((m.pod_id.as_str(), m.role), ("p1", Role::Workload));
        assert!(!m.owns_vm("c2"));
    }

    #[test]
    fn guest_spec_drops_host_paths_and_hooks() {
        let spec = json!({
            "hooks": {"prestart": [{"path": "/usr/bin/x"}]},
            "linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}, {"type": "pid"}]},
            "process": {"args": ["echo"]}
        });
        let guest = for_guest(spec);
        assert!(guest.get("hooks").is_none());
        assert_eq!(
            guest["linux"]["namespaces"],
            json!([{"type": "network"}, {"type": "pid"}])
        );
        assert_eq!(guest["process"]["args"], json!(["echo"]));
    }
}
