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

/// Files CRI writes per pod under its sandbox directory and bind-mounts into every container of
/// the pod, by destination in the container and file name on the host.
const CRI_POD_FILES: [(&str, &str); 3] = [
    ("/etc/hosts", "hosts"),
    ("/etc/hostname", "hostname"),
    ("/etc/resolv.conf", "resolv.conf"),
];

/// What [`for_guest`] does with one of the spec's mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GuestMount {
    /// Sent as it is: the guest agent and its policy decide.
    Keep,
    /// A host file of CRI's pod directory: no host file reaches the VM, so the container keeps
    /// its image's file.
    Drop,
    /// CRI's pod `/dev/shm` (a host tmpfs): the container gets a tmpfs of its own in the guest.
    GuestShm,
}

fn is_bind(mount: &Value) -> bool {
    mount.get("type").and_then(Value::as_str) == Some("bind")
        || mount
            .get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| {
                o.iter()
                    .any(|v| matches!(v.as_str(), Some("bind" | "rbind")))
            })
}

/// Recognises the bind mounts CRI adds for pod `pod_id` (its sources are in CRI's directory of
/// that sandbox, `.../<pod_id>/<file>`). Any other mount, binds of volumes included, is kept: the
/// guest's policy refuses what it does not allow.
fn guest_mount(mount: &Value, pod_id: &str) -> GuestMount {
    if !is_bind(mount) {
        return GuestMount::Keep;
    }
    let (Some(destination), Some(source)) = (
        mount.get("destination").and_then(Value::as_str),
        mount.get("source").and_then(Value::as_str),
    ) else {
        return GuestMount::Keep;
    };
    let in_pod_dir = |file: &str| {
        std::path::Path::new(source)
            .strip_prefix("/")
            .is_ok_and(|p| p.ends_with(std::path::Path::new(pod_id).join(file)))
    };
    if CRI_POD_FILES
        .iter()
        .any(|(dest, file)| destination == *dest && in_pod_dir(file))
    {
        return GuestMount::Drop;
    }
    if destination == "/dev/shm" && in_pod_dir("shm") {
        return GuestMount::GuestShm;
    }
    GuestMount::Keep
}

/// The guest's own `/dev/shm` for a container, as runc's default spec has it.
fn guest_shm() -> Value {
    serde_json::json!({
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
    })
}

/// The spec sent to the guest: host-side settings that mean nothing inside the VM are removed —
/// namespace `path`s (they name host processes' namespaces), hooks (host binaries), and the
/// bind mounts of CRI's per-pod host files for a container of pod `pod_id` (`/etc/hosts`,
/// `/etc/hostname`, `/etc/resolv.conf`; `/dev/shm` becomes a guest tmpfs). Everything else is
/// the guest agent's to validate and its policy's to decide.
pub fn for_guest(mut spec: Value, pod_id: &str) -> Value {
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("hooks");
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        let mut kept = Vec::with_capacity(mounts.len());
        for mount in mounts.drain(..) {
            match guest_mount(&mount, pod_id) {
                GuestMount::Keep => kept.push(mount),
                GuestMount::Drop => {
                    tracing::debug!(sandbox_id = %pod_id, destination = ?mount.get("destination"), "CRI pod file not sent to the guest");
                }
                GuestMount::GuestShm => kept.push(guest_shm()),
            }
        }
        *mounts = kept;
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
        let guest = for_guest(spec, "p1");
        assert!(guest.get("hooks").is_none());
        assert_eq!(
            guest["linux"]["namespaces"],
            json!([{"type": "network"}, {"type": "pid"}])
        );
        assert_eq!(guest["process"]["args"], json!(["echo"]));
    }

    #[test]
    fn cri_pod_files_stay_on_the_host_and_other_binds_reach_the_policy() {
        let dir = "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/p1";
        let bind = |dest: &str, src: &str| json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rw"]});
        let spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            bind("/etc/hosts", &format!("{dir}/hosts")),
            bind("/etc/hostname", &format!("{dir}/hostname")),
            bind("/etc/resolv.conf", &format!("{dir}/resolv.conf")),
            {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/p1/shm", "options": ["rbind", "ro"]},
            // Another pod's file, a volume, and a pod file at another destination: kept.
            bind("/etc/hosts", "/x/sandboxes/p2/hosts"),
            bind("/data", "/srv/data"),
            bind("/etc/passwd", &format!("{dir}/hosts")),
            // A CRI file mounted with another type whose options bind: dropped too.
            {"destination": "/etc/resolv.conf", "type": "none", "source": format!("{dir}/resolv.conf"), "options": ["bind"]},
        ]});
        let guest = for_guest(spec, "p1");
        assert_eq!(
            guest["mounts"],
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                guest_shm(),
                bind("/etc/hosts", "/x/sandboxes/p2/hosts"),
                bind("/data", "/srv/data"),
                bind("/etc/passwd", &format!("{dir}/hosts")),
            ])
        );
        // A relative source is no CRI file.
        let relative = json!({"mounts": [bind("/etc/hosts", "p1/hosts")]});
        assert_eq!(for_guest(relative.clone(), "p1"), relative);
    }
}
