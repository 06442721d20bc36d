//! What the shim reads from a container's OCI bundle: which pod the container belongs to (CRI
//! annotations), and the spec as the guest receives it.

use coffer_runtime::spec::POD_FILES;
use serde_json::Value;

/// CRI annotation: `sandbox` for a pod's pause container, `container` for its workloads.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI annotation: the pod (sandbox) a workload container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// CRI annotation: the container's name in its pod.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Pod annotation prefix (containerd passes it to containers through `pod_annotations`): the
/// container named after it gets the pod's workload identity in the directory it names.
pub const IDENTITY_ANNOTATION_PREFIX: &str = "coffer.dev/workload-identity.";

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

// Files CRI writes per pod under its sandbox directory and bind-mounts into every container of
// the pod are named as the pod files the guest agent writes (from what `CreateSandbox` told it):
// `POD_FILES`, each (file name, destination in the container). A bind of CRI's file becomes a
// mount of type `POD_MOUNT_TYPE` whose source is that file name.

/// The kubelet's own `/etc/hosts` for a pod's containers (`/var/lib/kubelet/pods/<uid>/etc-hosts`),
/// which it mounts in place of CRI's.
const KUBELET_HOSTS_FILE: &str = "etc-hosts";

/// What [`for_guest`] does with one of the spec's mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GuestMount {
    /// Sent as it is: the guest agent and its policy decide.
    Keep,
    /// A host file of the pod's (CRI's or the kubelet's `/etc/hosts`, `/etc/hostname`,
    /// `/etc/resolv.conf`): no host file reaches the VM, the container gets the guest's own file
    /// of that name, which the agent wrote from the pod's network description.
    PodFile(&'static str),
    /// CRI's pod `/dev/shm` (a host tmpfs): the container gets a tmpfs of its own in the guest.
    GuestShm,
    /// A bind of a Secret volume (or one file of it) whose values are sealed references: each
    /// file becomes a `sealed` mount the guest agent resolves from the key broker. Only the
    /// references are read here; the host never has the secrets.
    Sealed(Vec<Value>),
}

/// The prefix of a sealed value (`sealed.kbs:///<repo>/<type>/<tag>`).
const SEALED_PREFIX: &str = "sealed.";
/// Largest file read as a possible sealed reference.
const MAX_REFERENCE_BYTES: u64 = 4096;
/// Most sealed files one volume may hold.
const MAX_SEALED_FILES: usize = 64;
/// Deepest directory nesting followed in a volume (Secret items may have nested paths).
const MAX_SEALED_DEPTH: usize = 4;

/// The sealed reference a file holds, if that is all it holds.
fn sealed_file(path: &std::path::Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_REFERENCE_BYTES {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let reference = text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .strip_prefix(SEALED_PREFIX)?;
    (!reference.is_empty() && !reference.contains(char::is_whitespace))
        .then(|| reference.to_owned())
}

/// Collects `(destination, reference)` for every file under `dir` (the kubelet's `..`-named
/// bookkeeping entries skipped); `None` unless every file is a sealed reference.
fn sealed_dir(
    dir: &std::path::Path,
    destination: &str,
    depth: usize,
    out: &mut Vec<(String, String)>,
) -> Option<()> {
    if depth > MAX_SEALED_DEPTH {
        return None;
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect::<Option<_>>()?;
    names.retain(|n| !n.starts_with(".."));
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let dest = format!("{}/{name}", destination.trim_end_matches('/'));
        if std::fs::metadata(&path).ok()?.is_dir() {
            sealed_dir(&path, &dest, depth + 1, out)?;
        } else {
            out.push((dest, sealed_file(&path)?));
        }
        if out.len() > MAX_SEALED_FILES {
            return None;
        }
    }
    Some(())
}

/// The sealed mounts a bind of `source` at `destination` stands for, if it is a sealed file or a
/// directory of them.
fn sealed_mounts(source: &str, destination: &str) -> Option<Vec<Value>> {
    let path = std::path::Path::new(source);
    let mut files = Vec::new();
    if std::fs::metadata(path).ok()?.is_dir() {
        sealed_dir(path, destination, 0, &mut files)?;
    } else {
        files.push((destination.to_owned(), sealed_file(path)?));
    }
    (!files.is_empty()).then(|| {
        files
            .into_iter()
            .map(|(destination, reference)| {
                serde_json::json!({"destination": destination, "type": "sealed", "source": reference})
            })
            .collect()
    })
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
    if let Some((file, _)) = POD_FILES
        .iter()
        .find(|(file, dest)| destination == *dest && in_pod_dir(file))
    {
        return GuestMount::PodFile(file);
    }
    if destination == "/etc/hosts"
        && std::path::Path::new(source).file_name()
            == Some(std::ffi::OsStr::new(KUBELET_HOSTS_FILE))
    {
        return GuestMount::PodFile("hosts");
    }
    if destination == "/dev/shm" && in_pod_dir("shm") {
        return GuestMount::GuestShm;
    }
    if let Some(sealed) = sealed_mounts(source, destination) {
        return GuestMount::Sealed(sealed);
    }
    GuestMount::Keep
}

/// The guest's own pod file `file` at `mount`'s destination.
fn pod_file(mount: &Value, file: &str) -> Value {
    serde_json::json!({
        "destination": mount.get("destination").cloned().unwrap_or(Value::Null),
        "type": coffer_runtime::spec::POD_MOUNT_TYPE,
        "source": file,
        "options": [],
    })
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
/// `/etc/hostname`, `/etc/resolv.conf`, and the kubelet's `/etc/hosts`) become mounts of the
/// guest's own pod files (type [`coffer_runtime::spec::POD_MOUNT_TYPE`]); `/dev/shm` becomes a
/// guest tmpfs. Binds of Secret
/// volumes holding only sealed references become `sealed` mounts, and a container the pod's
/// `coffer.dev/workload-identity.<name>` annotation names gets an `identity` mount there.
/// A network namespace with a `path` (CRI's: the pod's, held by its pause container) is dropped,
/// so the container shares the VM's namespace: the VM is the pod, and its network (loopback, the
/// tunnels' guest ends) the one all of the pod's containers share, as in Kubernetes — a sidecar
/// reaches the app on localhost, and a mesh init's redirect rules reach both. A network namespace
/// without a path (a fresh one, `ctr run`'s default) stays fresh; other namespaces lose their path
/// and are made fresh in the guest.
/// Everything else is the guest agent's to validate and its policy's to decide.
pub fn for_guest(mut spec: Value, pod_id: &str) -> Value {
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("hooks");
    }
    let identity = annotation(&spec, CONTAINER_NAME)
        .and_then(|name| annotation(&spec, &format!("{IDENTITY_ANNOTATION_PREFIX}{name}")))
        .map(|dir| serde_json::json!({"destination": dir, "type": "identity", "source": "spiffe"}));
    if let (Some(identity), Some(obj)) = (identity, spec.as_object_mut()) {
        let mounts = obj
            .entry("mounts")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(mounts) = mounts.as_array_mut() {
            mounts.push(identity);
        }
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        let mut kept = Vec::with_capacity(mounts.len());
        for mount in mounts.drain(..) {
            match guest_mount(&mount, pod_id) {
                GuestMount::Keep => kept.push(mount),
                GuestMount::PodFile(file) => kept.push(pod_file(&mount, file)),
                GuestMount::GuestShm => kept.push(guest_shm()),
                GuestMount::Sealed(sealed) => kept.extend(sealed),
            }
        }
        *mounts = kept;
    }
    if let Some(namespaces) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    {
        namespaces.retain(|ns| {
            !(ns.get("type").and_then(Value::as_str) == Some("network") && ns.get("path").is_some())
        });
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
            "linux": {"namespaces": [
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "ipc", "path": "/proc/1/ns/ipc"},
                {"type": "pid"}
            ]},
            "process": {"args": ["echo"]}
        });
        let guest = for_guest(spec, "p1");
        assert!(guest.get("hooks").is_none());
        // The pod's network namespace is the VM's; the others become fresh in the guest.
        assert_eq!(
            guest["linux"]["namespaces"],
            json!([{"type": "ipc"}, {"type": "pid"}])
        );
        assert_eq!(guest["process"]["args"], json!(["echo"]));
        // A fresh network namespace asked for (no path) stays fresh.
        let spec = json!({"linux": {"namespaces": [{"type": "network"}, {"type": "mount"}]}});
        assert_eq!(
            for_guest(spec, "p1")["linux"]["namespaces"],
            json!([{"type": "network"}, {"type": "mount"}])
        );
    }

    #[test]
    fn pod_files_become_the_guests_and_other_binds_reach_the_policy() {
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
            // A CRI file mounted with another type whose options bind: the pod file too.
            {"destination": "/etc/resolv.conf", "type": "none", "source": format!("{dir}/resolv.conf"), "options": ["bind"]},
        ]});
        let guest = for_guest(spec, "p1");
        let pod = |dest: &str, file: &str| json!({"destination": dest, "type": "pod", "source": file, "options": []});
        assert_eq!(
            guest["mounts"],
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                pod("/etc/hosts", "hosts"),
                pod("/etc/hostname", "hostname"),
                pod("/etc/resolv.conf", "resolv.conf"),
                guest_shm(),
                bind("/etc/hosts", "/x/sandboxes/p2/hosts"),
                bind("/data", "/srv/data"),
                bind("/etc/passwd", &format!("{dir}/hosts")),
                pod("/etc/resolv.conf", "resolv.conf"),
            ])
        );
        // The kubelet's /etc/hosts is the pod's too; its file at another destination is not.
        let kubelet = "/var/lib/kubelet/pods/uid-1/etc-hosts";
        let spec = json!({"mounts": [bind("/etc/hosts", kubelet), bind("/x", kubelet)]});
        assert_eq!(
            for_guest(spec, "p1")["mounts"],
            json!([pod("/etc/hosts", "hosts"), bind("/x", kubelet)])
        );
        // A relative source is no CRI file.
        let relative = json!({"mounts": [bind("/etc/hosts", "p1/hosts")]});
        assert_eq!(for_guest(relative.clone(), "p1"), relative);
    }

    #[test]
    fn identity_annotation_adds_the_identity_mount_for_its_container() {
        let spec = |name: &str| {
            json!({"annotations": {
                CONTAINER_NAME: name,
                "coffer.dev/workload-identity.app": "/run/spiffe",
            }, "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]})
        };
        assert_eq!(
            for_guest(spec("app"), "p1")["mounts"],
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/run/spiffe", "type": "identity", "source": "spiffe"},
            ])
        );
        assert_eq!(
            for_guest(spec("sidecar"), "p1")["mounts"],
            spec("sidecar")["mounts"]
        );
    }

    #[test]
    fn sealed_secret_volumes_become_sealed_mounts() {
        // The kubelet's Secret volume layout: `..data` → a timestamped directory, keys as links.
        let vol = tempfile::tempdir().unwrap();
        let data = vol.path().join("..2026_12_02_07_00_00.1");
        std::fs::create_dir_all(data.join("tls")).unwrap();
        std::fs::write(data.join("password"), "sealed.kbs:///default/secret/db\n").unwrap();
        std::fs::write(data.join("tls/key"), "sealed.kbs:///default/secret/tls").unwrap();
        std::os::unix::fs::symlink(&data, vol.path().join("..data")).unwrap();
        for key in ["password", "tls"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), vol.path().join(key)).unwrap();
        }
        let source = vol.path().display().to_string();
        let bind = |dest: &str, src: &str| json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "ro"]});
        let sealed =
            |dest: &str, r: &str| json!({"destination": dest, "type": "sealed", "source": r});
        let spec = json!({"mounts": [
            bind("/run/secrets/", &source),
            bind("/etc/app/pw", &format!("{source}/password")),
        ]});
        assert_eq!(
            for_guest(spec, "p1")["mounts"],
            json!([
                sealed("/run/secrets/password", "kbs:///default/secret/db"),
                sealed("/run/secrets/tls/key", "kbs:///default/secret/tls"),
                sealed("/etc/app/pw", "kbs:///default/secret/db"),
            ])
        );
        // One plain value in the volume: the bind is kept as it is (and the guest's policy
        // refuses a host mount), nothing is half-translated.
        std::fs::write(data.join("plain"), "hunter2").unwrap();
        std::os::unix::fs::symlink("..data/plain", vol.path().join("plain")).unwrap();
        let spec = json!({"mounts": [bind("/run/secrets", &source)]});
        assert_eq!(for_guest(spec.clone(), "p1")["mounts"], spec["mounts"]);
        // An empty directory or a large file is no sealed volume either.
        let empty = tempfile::tempdir().unwrap();
        let spec = json!({"mounts": [bind("/e", &empty.path().display().to_string())]});
        assert_eq!(for_guest(spec.clone(), "p1")["mounts"], spec["mounts"]);
        let big = empty.path().join("big");
        std::fs::write(&big, format!("sealed.kbs:///a/b/{}", "c".repeat(5000))).unwrap();
        let spec = json!({"mounts": [bind("/b", &big.display().to_string())]});
        assert_eq!(for_guest(spec.clone(), "p1")["mounts"], spec["mounts"]);
    }
}
