//! OCI runtime specs for the containers the CLI runs: runc's defaults (mount, pid, ipc, uts and
//! cgroup namespaces; masked and read-only paths; default capabilities and rlimits) with the
//! user's command, environment, working directory and user. The container shares the guest's
//! network namespace: the VM is the pod, and its network (loopback, the registry tunnels' and
//! published ports' ends) is the pod's, as a Kubernetes pod's containers share theirs. With a
//! pod network the container's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` are the
//! pod's, which the agent generates from `CreateSandbox` ([`pod_file_mount`]).

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Mount, Process, Spec, User};

/// What to run and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Command and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to the default `PATH`/`TERM`.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Sealed files: `(destination, kbs:///<repo>/<type>/<tag>)`, resolved by the guest agent
    /// from the key broker after attestation (the host names only the reference).
    pub sealed_files: Vec<(String, String)>,
    /// Where the pod's workload identity (the broker-issued SVID, its key and trust bundle)
    /// appears in the container, placed there by the guest agent; `None`: no identity.
    pub identity_dir: Option<String>,
    /// Give the container the pod's network files ([`POD_FILES`]) in place of the image's.
    pub pod_files: bool,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            sealed_files: Vec::new(),
            identity_dir: None,
            pod_files: false,
        }
    }
}

/// Default environment of a container process: each variable the process is not given otherwise
/// ([`default_env`]). `coffer sandbox run` adds them; `coffer policy gen` lists them for the
/// variables neither the image nor the pod sets; containerd (hence the shim) adds the same `PATH`.
pub const DEFAULT_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
];

/// The [`DEFAULT_ENV`] entries whose variable `is_set` says is not set otherwise.
pub fn default_env(is_set: impl Fn(&str) -> bool) -> Vec<String> {
    DEFAULT_ENV
        .iter()
        .filter(|d| !is_set(d.split('=').next().unwrap_or_default()))
        .map(|s| (*s).to_owned())
        .collect()
}

/// The OCI `process` for `opts` (no terminal).
pub fn process(opts: &ProcessOptions) -> Process {
    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_args(Some(opts.args.clone()));
    let mut env = default_env(|key| opts.env.iter().any(|e| e.split('=').next() == Some(key)));
    env.extend(opts.env.iter().cloned());
    process.set_env(Some(env));
    process.set_cwd(opts.cwd.clone().into());
    let mut user = User::default();
    user.set_uid(opts.uid);
    user.set_gid(opts.gid);
    process.set_user(user);
    process
}

/// The mount type the guest agent resolves into a broker-held file.
pub const SEALED_MOUNT_TYPE: &str = "sealed";

/// A sealed-file mount in its canonical form (no options: the agent alone decides how it is
/// mounted), as the policy data lists it.
pub fn sealed_mount(destination: &str, reference: &str) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some(SEALED_MOUNT_TYPE.into()));
    m.set_source(Some(reference.into()));
    m.set_options(None);
    m
}

/// The mount type the guest agent resolves into the workload identity's files.
pub const IDENTITY_MOUNT_TYPE: &str = "identity";

/// The workload-identity mount in its canonical form (source `spiffe`, no options), as the
/// policy data lists it.
pub fn identity_mount(destination: &str) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some(IDENTITY_MOUNT_TYPE.into()));
    m.set_source(Some("spiffe".into()));
    m.set_options(None);
    m
}

/// The mount type the guest agent resolves into one of the pod's files, which it generates from
/// `CreateSandbox` (its network's resolver and hosts entries, its hostname) and binds read-only.
pub const POD_MOUNT_TYPE: &str = "pod";

/// The pod's files (the mount's source) and where a container sees them.
pub const POD_FILES: [(&str, &str); 3] = [
    ("resolv.conf", "/etc/resolv.conf"),
    ("hosts", "/etc/hosts"),
    ("hostname", "/etc/hostname"),
];

/// A pod-file mount in its canonical form: source the file's name, no options (the agent alone
/// decides how it is mounted).
pub fn pod_file_mount(source: &str, destination: &str) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some(POD_MOUNT_TYPE.into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(Vec::new()));
    m
}

/// A container spec running `opts`, with a read-write root.
pub fn container(opts: &ProcessOptions, hostname: &str) -> Spec {
    let mut spec = Spec::default();
    spec.set_process(Some(process(opts)));
    spec.set_hostname(Some(hostname.to_owned()));
    if let Some(mut root) = spec.root().clone() {
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
    }
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            linux.set_namespaces(Some(
                namespaces
                    .into_iter()
                    .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
                    .collect(),
            ));
        }
        spec.set_linux(Some(linux));
    }
    if !opts.sealed_files.is_empty() || opts.identity_dir.is_some() || opts.pod_files {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(opts.sealed_files.iter().map(|(d, r)| sealed_mount(d, r)));
        mounts.extend(opts.identity_dir.as_deref().map(identity_mount));
        if opts.pod_files {
            mounts.retain(|m| {
                !POD_FILES
                    .iter()
                    .any(|(_, d)| m.destination() == Path::new(d))
            });
            mounts.extend(POD_FILES.iter().map(|(s, d)| pod_file_mount(s, d)));
        }
        spec.set_mounts(Some(mounts));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults_and_user_is_set() {
        let opts = ProcessOptions {
            args: vec!["id".into()],
            env: vec!["PATH=/bin".into(), "A=b".into()],
            cwd: "/work".into(),
            uid: 1000,
            gid: 100,
            sealed_files: vec![("/run/secrets/db".into(), "kbs:///default/secret/db".into())],
            identity_dir: Some("/var/run/secrets/spiffe".into()),
            pod_files: false,
        };
        let spec = container(&opts, "h");
        let mounts = spec.mounts().as_ref().unwrap();
        assert_eq!(
            serde_json::to_value(&mounts[mounts.len() - 2..]).unwrap(),
            serde_json::json!([
                {"destination": "/run/secrets/db", "type": "sealed", "source": "kbs:///default/secret/db"},
                {"destination": "/var/run/secrets/spiffe", "type": "identity", "source": "spiffe"}
            ])
        );
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["HOME=/root", "PATH=/bin", "A=b"]
        );
        assert_eq!(p.cwd().to_str(), Some("/work"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
        assert_eq!(p.terminal(), Some(false));
        let ns: Vec<_> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        use oci_spec::runtime::LinuxNamespaceType as Ns;
        for want in [Ns::Pid, Ns::Ipc, Ns::Uts, Ns::Mount, Ns::Cgroup] {
            assert!(ns.contains(&want), "{want:?} missing from {ns:?}");
        }
        // The guest's network is the pod's.
        assert!(!ns.contains(&Ns::Network), "{ns:?}");
    }

    #[test]
    fn pod_files_are_typed_mounts_in_place_of_the_images() {
        let plain = container(&ProcessOptions::default(), "h");
        let mounts = plain.mounts().as_ref().expect("mounts");
        assert!(
            !mounts
                .iter()
                .any(|m| m.typ().as_deref() == Some(POD_MOUNT_TYPE)),
            "{mounts:?}"
        );
        let opts = ProcessOptions {
            pod_files: true,
            ..ProcessOptions::default()
        };
        let spec = container(&opts, "h");
        let mounts = spec.mounts().as_ref().expect("mounts");
        let pod: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination().starts_with("/etc"))
            .collect();
        assert_eq!(
            serde_json::to_value(&pod).expect("json"),
            serde_json::json!([
                {"destination": "/etc/resolv.conf", "type": "pod", "source": "resolv.conf", "options": []},
                {"destination": "/etc/hosts", "type": "pod", "source": "hosts", "options": []},
                {"destination": "/etc/hostname", "type": "pod", "source": "hostname", "options": []}
            ])
        );
    }
}
