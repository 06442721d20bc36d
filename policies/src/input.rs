//! The policy input: a typed, versioned document owned by this crate.
//!
//! The agent converts each decoded request into a [`Request`] and the sandbox state it keeps into a
//! [`SandboxState`]; the engine serializes the resulting [`PolicyInput`] to JSON and hands it to Rego
//! as `input`. Every field is always present (absent optionals are `null`, absent lists are `[]`), so
//! a policy can rely on the shape of schema version [`INPUT_VERSION`].
//!
//! Changing the meaning or shape of any field is a new schema version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema version of [`PolicyInput`] this crate produces (`input.version`).
pub const INPUT_VERSION: u32 = 1;

/// The whole `input` document for one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Schema version, [`INPUT_VERSION`].
    pub version: u32,
    /// The request being decided.
    pub request: Request,
    /// What the guest knows about the sandbox before this request.
    pub state: SandboxState,
}

impl PolicyInput {
    /// An input of the current schema version.
    pub fn new(request: Request, state: SandboxState) -> Self {
        Self {
            version: INPUT_VERSION,
            request,
            state,
        }
    }
}

/// One agent RPC, tagged by `kind` (the RPC name, see [`Request::name`]).
///
/// Exec ids are `null` where the request names a container's init process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Request {
    /// `CreateSandbox`.
    CreateSandbox {
        /// Sandbox id.
        sandbox_id: String,
        /// Requested guest hostname; `null` keeps the default.
        hostname: Option<String>,
        /// Registry tunnels the host asks the guest to open, as `"<guest listen>-><host vsock
        /// port>"` (e.g. `"127.0.0.1:5000->20000"`).
        #[serde(default)]
        registry_tunnels: Vec<String>,
        /// Ports the host asks the guest to publish, as `"<guest vsock port>-><guest address>"`
        /// (e.g. `"30000->127.0.0.2:8443"`): the host's connections to that vsock port reach the
        /// guest address, always on `127.0.0.2`.
        #[serde(default)]
        published_ports: Vec<String>,
        /// The pod's network as the host describes it (NICs, routes, DNS, extra hosts entries),
        /// validated by the agent and written in canonical form; `null` when the request has
        /// none (the guest keeps its loopback only). The agent applies it once, before any
        /// container exists. (Added to schema version 1 as an optional member: absent means
        /// `null`.)
        #[serde(default)]
        network: Option<PodNetwork>,
    },
    /// `DestroySandbox`.
    DestroySandbox,
    /// `UploadRootfs`: a tar stream for a container's root filesystem.
    UploadRootfs {
        /// Target container id.
        container_id: String,
    },
    /// `PullImage`: the guest pulls an image for a container ahead of its `CreateContainer`.
    PullImage {
        /// The container the image is for.
        container_id: String,
        /// The image reference as the host sent it.
        image: String,
    },
    /// `CreateContainer`.
    CreateContainer(Box<CreateContainer>),
    /// `StartContainer`.
    StartContainer {
        /// Container id.
        container_id: String,
    },
    /// `RemoveContainer`.
    RemoveContainer {
        /// Container id.
        container_id: String,
        /// Kill the container first if it still runs.
        force: bool,
    },
    /// `StatsContainer`.
    StatsContainer {
        /// Container id.
        container_id: String,
    },
    /// `ExecProcess`.
    ExecProcess {
        /// Target container id.
        container_id: String,
        /// The new exec id.
        exec_id: String,
        /// The process to start.
        process: Box<Process>,
    },
    /// `WaitProcess`.
    WaitProcess {
        /// Container id.
        container_id: String,
        /// Exec id; `null` for the init process.
        exec_id: Option<String>,
    },
    /// `SignalProcess`.
    SignalProcess {
        /// Container id.
        container_id: String,
        /// Exec id; `null` for the init process.
        exec_id: Option<String>,
        /// Signal name as in signal(7), e.g. `SIGTERM`.
        signal: String,
        /// Signal every process of the container.
        all: bool,
    },
    /// `WriteStdin`.
    WriteStdin {
        /// Container id.
        container_id: String,
        /// Exec id; `null` for the init process.
        exec_id: Option<String>,
    },
    /// `CloseStdin`.
    CloseStdin {
        /// Container id.
        container_id: String,
        /// Exec id; `null` for the init process.
        exec_id: Option<String>,
    },
    /// `ReadStdout`.
    ReadStdout {
        /// Container id.
        container_id: String,
        /// Exec id; `null` for the init process.
        exec_id: Option<String>,
    },
    /// `ReadStderr`.
    ReadStderr {
        /// Container id.
        container_id: String,
        /// Exec id; `null` for the init process.
        exec_id: Option<String>,
    },
    /// `TtyWinResize`.
    TtyWinResize {
        /// Container id.
        container_id: String,
        /// Exec id; `null` for the init process.
        exec_id: Option<String>,
    },
    /// `GetGuestDetails`.
    GetGuestDetails,
    /// `GetOOMEvent`.
    #[serde(rename = "GetOOMEvent")]
    GetOomEvent,
}

impl Request {
    /// Every RPC name, in protocol order; `kind` is always one of these.
    pub const NAMES: [&'static str; 18] = [
        "CreateSandbox",
        "DestroySandbox",
        "UploadRootfs",
        "PullImage",
        "CreateContainer",
        "StartContainer",
        "RemoveContainer",
        "StatsContainer",
        "ExecProcess",
        "WaitProcess",
        "SignalProcess",
        "WriteStdin",
        "CloseStdin",
        "ReadStdout",
        "ReadStderr",
        "TtyWinResize",
        "GetGuestDetails",
        "GetOOMEvent",
    ];

    /// The RPC name, which is also the serialized `kind`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateSandbox { .. } => "CreateSandbox",
            Self::DestroySandbox => "DestroySandbox",
            Self::UploadRootfs { .. } => "UploadRootfs",
            Self::PullImage { .. } => "PullImage",
            Self::CreateContainer(_) => "CreateContainer",
            Self::StartContainer { .. } => "StartContainer",
            Self::RemoveContainer { .. } => "RemoveContainer",
            Self::StatsContainer { .. } => "StatsContainer",
            Self::ExecProcess { .. } => "ExecProcess",
            Self::WaitProcess { .. } => "WaitProcess",
            Self::SignalProcess { .. } => "SignalProcess",
            Self::WriteStdin { .. } => "WriteStdin",
            Self::CloseStdin { .. } => "CloseStdin",
            Self::ReadStdout { .. } => "ReadStdout",
            Self::ReadStderr { .. } => "ReadStderr",
            Self::TtyWinResize { .. } => "TtyWinResize",
            Self::GetGuestDetails => "GetGuestDetails",
            Self::GetOomEvent => "GetOOMEvent",
        }
    }
}

/// The pod's network of a `CreateSandbox` request. Every string is in canonical form, as the agent
/// renders it from the validated value: IPv4 addresses dotted-decimal, IPv6 addresses as RFC 5952
/// writes them (lowercase, `::` for the longest run of zeros), MACs lowercase with colons, DNS
/// names (search domains, host names) lowercase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetwork {
    /// The NICs, in request order.
    pub interfaces: Vec<NetworkInterface>,
    /// Routes of the main table, in request order.
    pub routes: Vec<NetworkRoute>,
    /// The resolver configuration (empty lists when the request has none).
    pub dns: DnsConfig,
    /// Extra `/etc/hosts` entries.
    pub hosts: Vec<HostEntry>,
}

/// One NIC of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Its name in the guest, e.g. `eth0`.
    pub name: String,
    /// Its MAC address, e.g. `02:42:ac:11:00:05`.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Addresses with prefix length, e.g. `10.1.0.5/24`, `fd00::5/64`.
    pub addresses: Vec<String>,
}

/// One route of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRoute {
    /// Destination network, e.g. `0.0.0.0/0`.
    pub destination: String,
    /// Next hop; `null` for an on-link route.
    pub gateway: Option<String>,
    /// The interface, by name.
    pub device: String,
    /// Preferred source address; `null` for none.
    pub source: Option<String>,
    /// Metric (priority); 0 for the kernel's default.
    pub metric: u32,
}

/// The pod's resolver configuration (its `/etc/resolv.conf`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name server addresses.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Resolver options, e.g. `ndots:5`.
    pub options: Vec<String>,
}

/// An extra `/etc/hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The address.
    pub ip: String,
    /// Its names.
    pub names: Vec<String>,
}

/// The policy-relevant facts of a `CreateContainer` request (from its OCI runtime spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    /// Container id.
    pub container_id: String,
    /// Where the root filesystem comes from.
    pub rootfs: Rootfs,
    /// The container's init process.
    pub process: Process,
    /// Linux namespaces, as listed in the spec.
    pub namespaces: Vec<Namespace>,
    /// Mounts, in spec order.
    pub mounts: Vec<Mount>,
    /// Device nodes to create.
    pub devices: Vec<Device>,
    /// The device cgroup rules (`linux.resources.devices`), in spec order: what the container may
    /// open or create (with `CAP_MKNOD`, in the default set) beyond its device nodes. (Added to
    /// schema version 1 as an optional member: absent means `[]`.)
    #[serde(default)]
    pub device_cgroup: Vec<DeviceRule>,
    /// Whether the spec carries any OCI hook (these run as guest root).
    pub hooks_present: bool,
    /// Sysctls to set.
    pub sysctls: BTreeMap<String, String>,
    /// Paths masked inside the container.
    pub masked_paths: Vec<String>,
    /// Paths mounted read-only inside the container.
    pub readonly_paths: Vec<String>,
}

/// A container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    /// The source kind.
    pub source: RootfsSource,
    /// Image reference (pinned by digest where known) for [`RootfsSource::Image`]; `null` otherwise.
    pub image: Option<String>,
}

/// Where a root filesystem comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsSource {
    /// A tar stream sent with `UploadRootfs` (`"uploaded"`).
    Uploaded,
    /// An image pulled inside the guest (`"image"`).
    Image,
}

/// An OCI process, for `CreateContainer` and `ExecProcess`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// argv, exactly as it will be passed to execve.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE` strings in spec order.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User and group.
    pub user: User,
    /// Whether a terminal is allocated.
    pub terminal: bool,
    /// Capability sets; each list holds names such as `CAP_NET_ADMIN`.
    pub capabilities: Capabilities,
    /// Whether `no_new_privs` is set.
    pub no_new_privileges: bool,
}

/// The user a process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The five Linux capability sets (missing sets in the spec are empty lists).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Bounding set.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
    /// Inheritable set.
    pub inheritable: Vec<String>,
    /// Ambient set.
    pub ambient: Vec<String>,
}

/// A Linux namespace entry of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Namespace type (`"type"` in the input).
    #[serde(rename = "type")]
    pub kind: NamespaceType,
    /// An existing namespace to join; `null` creates a new one.
    pub path: Option<String>,
}

/// Linux namespace types, named as in the OCI runtime spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceType {
    /// `pid`.
    Pid,
    /// `network`.
    Network,
    /// `mount`.
    Mount,
    /// `ipc`.
    Ipc,
    /// `uts`.
    Uts,
    /// `user`.
    User,
    /// `cgroup`.
    Cgroup,
    /// `time`.
    Time,
}

/// A mount of the spec. Absent `source`/`type` in the spec are empty strings here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Mount point inside the container.
    pub destination: String,
    /// Source path or filesystem name.
    pub source: String,
    /// Filesystem type (`"type"` in the input), e.g. `proc`, `tmpfs`, `bind`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Mount options, e.g. `rbind`, `ro`, `nosuid`.
    pub options: Vec<String>,
}

/// A device node of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Path inside the container.
    pub path: String,
    /// Device type (`"type"` in the input): `c`, `b`, `u` or `p`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
}

/// A device cgroup rule of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRule {
    /// Whether the rule allows (or denies) access.
    pub allow: bool,
    /// Device type (`"type"` in the input): `a` (all, also when the spec omits it), `c` or `b`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Major number; `null` for every major.
    pub major: Option<i64>,
    /// Minor number; `null` for every minor.
    pub minor: Option<i64>,
    /// Access, a combination of `r`, `w` and `m` (`rwm` when the spec omits it).
    pub access: String,
}

/// The sandbox state a decision may depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxState {
    /// Containers that exist in the sandbox.
    pub containers: Vec<ContainerState>,
    /// Ids of containers this sandbox has started, removed ones included: the first
    /// [`EVER_STARTED_KEPT`] distinct ids, in start order (recorded when the start is attempted).
    /// Enough for a policy to tell whether any container, or any container other than a given
    /// one, has ever started; `containers[].started` alone forgets a started container once the
    /// host removes it. (Added to schema version 1 as an optional member: absent means `[]`.)
    #[serde(default)]
    pub ever_started: Vec<String>,
}

/// How many distinct ids [`SandboxState::ever_started`] keeps: two answer "has a container other
/// than X ever started" for every X, and keep the state bounded however many containers the host
/// starts and removes.
pub const EVER_STARTED_KEPT: usize = 2;

/// Notes in `ever_started` (see [`SandboxState::ever_started`]) that container `id` is being
/// started. Call it before the start, so a start that fails half-way still counts.
pub fn note_started(ever_started: &mut Vec<String>, id: &str) {
    if ever_started.len() < EVER_STARTED_KEPT && !ever_started.iter().any(|e| e == id) {
        ever_started.push(id.to_owned());
    }
}

/// One existing container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Digest of the image its rootfs came from, when known.
    pub image_digest: Option<String>,
    /// Whether it has been started.
    pub started: bool,
    /// What the decision that admitted it recorded ([`crate::Decision::record`]).
    pub record: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> Process {
        Process {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: User { uid: 0, gid: 0 },
            terminal: false,
            capabilities: Capabilities::default(),
            no_new_privileges: true,
        }
    }

    #[test]
    fn kind_tag_is_the_rpc_name() {
        let requests = [
            Request::DestroySandbox,
            Request::GetOomEvent,
            Request::ReadStderr {
                container_id: "c".into(),
                exec_id: None,
            },
            Request::ExecProcess {
                container_id: "c".into(),
                exec_id: "e".into(),
                process: Box::new(process()),
            },
        ];
        for request in requests {
            let json = serde_json::to_value(&request).unwrap();
            assert_eq!(json["kind"], request.name());
            assert!(Request::NAMES.contains(&request.name()));
        }
    }

    #[test]
    fn input_round_trips_with_explicit_nulls() {
        let input = PolicyInput::new(
            Request::CreateContainer(Box::new(CreateContainer {
                container_id: "c1".into(),
                rootfs: Rootfs {
                    source: RootfsSource::Uploaded,
                    image: None,
                },
                process: process(),
                namespaces: vec![Namespace {
                    kind: NamespaceType::Network,
                    path: None,
                }],
                mounts: vec![],
                devices: vec![],
                device_cgroup: vec![],
                hooks_present: false,
                sysctls: BTreeMap::new(),
                masked_paths: vec![],
                readonly_paths: vec![],
            })),
            SandboxState::default(),
        );
        let json = serde_json::to_value(&input).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["request"]["kind"], "CreateContainer");
        assert_eq!(json["request"]["rootfs"]["source"], "uploaded");
        assert!(json["request"]["rootfs"]["image"].is_null());
        assert_eq!(json["request"]["namespaces"][0]["type"], "network");
        assert!(json["request"]["namespaces"][0]["path"].is_null());
        let back: PolicyInput = serde_json::from_value(json).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn unknown_kind_and_fields_are_rejected() {
        let bad = [
            r#"{"kind":"SetPolicy"}"#,
            r#"{"kind":"StartContainer","container_id":"c","extra":1}"#,
            r#"{"container_id":"c"}"#,
        ];
        for json in bad {
            assert!(serde_json::from_str::<Request>(json).is_err(), "{json}");
        }
    }
}
