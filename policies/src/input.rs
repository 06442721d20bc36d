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

/// A `CreateContainer` request: the container's closed spec.
///
/// This is the whole of what the guest honours in a host's OCI runtime spec, decoded by the agent
/// (`guest/agent/src/spec.rs`): a field of the OCI spec outside this model that is not at its
/// default refuses the request, naming the field, and the agent renders the `config.json` the OCI
/// runtime runs from this value alone (after the policy admitted it), so what runs is what the
/// policy decided. The only parts of the runtime's configuration the guest chooses itself are the
/// root filesystem's path and the cgroup path (the host's values are never used), and the typed
/// mounts the agent resolves after the decision (`sealed`, `identity`, `pod`: documented on
/// [`Mount`]), and sealed environment values.
///
/// Members marked "added to schema version 1" are optional in the input's JSON (absent means their
/// default), so documents written before them still parse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    /// Container id.
    pub container_id: String,
    /// Where the root filesystem comes from.
    pub rootfs: Rootfs,
    /// The container's init process.
    pub process: Process,
    /// Linux namespaces, as listed in the spec (each type at most once).
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
    /// Always `false`: the agent refuses a spec with OCI hooks when it decodes it (they would run
    /// as guest root). Kept so policies written against schema version 1 still read it.
    pub hooks_present: bool,
    /// Sysctls to set.
    pub sysctls: BTreeMap<String, String>,
    /// Paths masked inside the container.
    pub masked_paths: Vec<String>,
    /// Paths mounted read-only inside the container.
    pub readonly_paths: Vec<String>,
    /// The container's hostname (in its own UTS namespace); `null` keeps the guest's. (Added to
    /// schema version 1.)
    #[serde(default)]
    pub hostname: Option<String>,
    /// The container's NIS domain name; `null` keeps the guest's. (Added to schema version 1.)
    #[serde(default)]
    pub domainname: Option<String>,
    /// Whether the root filesystem is mounted read-only (`root.readonly`). (Added to schema
    /// version 1.)
    #[serde(default)]
    pub root_readonly: bool,
    /// The spec's annotations: metadata the OCI runtime records and nothing in the guest acts on.
    /// (Added to schema version 1.)
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The seccomp filter of the container's processes; `null`: none (every syscall the
    /// capabilities allow). (Added to schema version 1.)
    #[serde(default)]
    pub seccomp: Option<Seccomp>,
    /// The container's cgroup limits (the device rules are [`CreateContainer::device_cgroup`]).
    /// (Added to schema version 1.)
    #[serde(default)]
    pub resources: Resources,
    /// The SELinux label of the container's mounts (`linux.mountLabel`); `null`: none. (Added to
    /// schema version 1.)
    #[serde(default)]
    pub mount_label: Option<String>,
}

/// A container's root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    /// The source kind.
    pub source: RootfsSource,
    /// Image reference (pinned by digest where known) for [`RootfsSource::Image`]; `null` otherwise.
    pub image: Option<String>,
}

/// Where a root filesystem comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsSource {
    /// A tar stream sent with `UploadRootfs` (`"uploaded"`).
    #[default]
    Uploaded,
    /// An image pulled inside the guest (`"image"`).
    Image,
}

/// An OCI process, for `CreateContainer` and `ExecProcess`: every process setting the guest
/// honours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// argv, exactly as it will be passed to execve.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE` strings in spec order.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User and groups.
    pub user: User,
    /// Whether a terminal is allocated.
    pub terminal: bool,
    /// Capability sets; each list holds names such as `CAP_NET_ADMIN`, sorted, each once. An empty
    /// list is an empty set: the process holds no capability the spec does not list.
    pub capabilities: Capabilities,
    /// Whether `no_new_privs` is set.
    pub no_new_privileges: bool,
    /// Resource limits (`setrlimit`), each type at most once, in spec order; a type not listed is
    /// inherited from the guest's defaults. (Added to schema version 1.)
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// The OOM killer's score adjustment (-1000..=1000); `null` inherits the guest's (0). (Added
    /// to schema version 1.)
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// The AppArmor profile to run under; `null`: none. (Added to schema version 1.)
    #[serde(default)]
    pub apparmor_profile: Option<String>,
    /// The SELinux process label; `null`: none. (Added to schema version 1.)
    #[serde(default)]
    pub selinux_label: Option<String>,
    /// The terminal's initial size, for a process with a terminal; `null`: the runtime's default.
    /// (Added to schema version 1.)
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
}

/// The user a process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary group ids, in spec order (containerd lists the primary group among them).
    /// (Added to schema version 1.)
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// The process's umask; `null` inherits the runtime's (0022). (Added to schema version 1.)
    #[serde(default)]
    pub umask: Option<u32>,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSize {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

/// One resource limit of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// The limit (`"type"` in the input), named as in setrlimit(2): `RLIMIT_NOFILE`, ….
    #[serde(rename = "type")]
    pub kind: String,
    /// Soft limit (at most `hard`).
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
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

impl NamespaceType {
    /// Every type, in the order above.
    pub const ALL: [Self; 8] = [
        Self::Pid,
        Self::Network,
        Self::Mount,
        Self::Ipc,
        Self::Uts,
        Self::User,
        Self::Cgroup,
        Self::Time,
    ];

    /// The OCI name, e.g. `pid`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pid => "pid",
            Self::Network => "network",
            Self::Mount => "mount",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::User => "user",
            Self::Cgroup => "cgroup",
            Self::Time => "time",
        }
    }
}

/// A mount of the spec. Absent `source`/`type` in the spec are empty strings here.
///
/// Three types are the agent's own, resolved after the decision into read-only binds of files the
/// guest made: `sealed` (a broker secret), `identity` (the workload identity), `pod` (the pod's
/// `resolv.conf`, `hosts` or `hostname`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The node's permission bits; `null`: the runtime's default. (Added to schema version 1.)
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// The node's owner; `null`: root. (Added to schema version 1.)
    #[serde(default)]
    pub uid: Option<u32>,
    /// The node's group; `null`: root. (Added to schema version 1.)
    #[serde(default)]
    pub gid: Option<u32>,
}

/// A device cgroup rule of the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRule {
    /// Whether the rule allows (or denies) access.
    pub allow: bool,
    /// Device type (`"type"` in the input): `a` (all, also when the spec omits it), `c` or `b`.
    /// The OCI runtime reads an `a` rule as "every device", whatever its numbers and access.
    #[serde(rename = "type")]
    pub kind: String,
    /// Major number; `null` for every major.
    pub major: Option<i64>,
    /// Minor number; `null` for every minor.
    pub minor: Option<i64>,
    /// Access, a combination of `r`, `w` and `m` (`rwm` when the spec omits it).
    pub access: String,
}

/// A seccomp filter, as the OCI runtime spec describes it (names as in libseccomp).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seccomp {
    /// The action for a syscall no rule matches, e.g. `SCMP_ACT_ERRNO`.
    pub default_action: String,
    /// The errno of a `SCMP_ACT_ERRNO` default action; `null`: `EPERM`.
    pub default_errno_ret: Option<u32>,
    /// The architectures the filter covers, e.g. `SCMP_ARCH_X86_64`.
    pub architectures: Vec<String>,
    /// Filter flags, e.g. `SECCOMP_FILTER_FLAG_LOG`.
    pub flags: Vec<String>,
    /// The rules, in spec order.
    pub syscalls: Vec<SeccompRule>,
}

/// One seccomp rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompRule {
    /// The syscalls it applies to.
    pub names: Vec<String>,
    /// Its action, e.g. `SCMP_ACT_ALLOW`.
    pub action: String,
    /// The errno of a `SCMP_ACT_ERRNO` action; `null`: `EPERM`.
    pub errno_ret: Option<u32>,
    /// Argument conditions, all of which must hold.
    pub args: Vec<SeccompArg>,
}

/// A seccomp argument condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompArg {
    /// The argument's index (0..=5).
    pub index: u32,
    /// The value compared with.
    pub value: u64,
    /// The second value (`SCMP_CMP_MASKED_EQ`'s).
    pub value_two: u64,
    /// The comparison, e.g. `SCMP_CMP_EQ`.
    pub op: String,
}

/// A container's cgroup limits (cgroup v2). A member at `null` (or empty) sets nothing: the
/// container's cgroup keeps the kernel's default (no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limits.
    pub memory: MemoryLimits,
    /// CPU limits.
    pub cpu: CpuLimits,
    /// Most tasks the container may have (`pids.max`); `-1`: no limit.
    pub pids_limit: Option<i64>,
    /// Huge page limits, by page size.
    pub hugepage_limits: Vec<HugepageLimit>,
    /// Raw cgroup v2 settings, file name → value (e.g. `memory.high`), written into the
    /// container's cgroup. The agent accepts only `<controller>.<file>` names of the cgroup v2
    /// controllers (no path, no `cgroup.` file).
    pub unified: BTreeMap<String, String>,
}

/// Memory limits of a container, in bytes (`-1`: no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimits {
    /// Hard limit (`memory.max`).
    pub limit: Option<i64>,
    /// Soft limit (`memory.low`).
    pub reservation: Option<i64>,
    /// Memory plus swap.
    pub swap: Option<i64>,
    /// Swappiness (cgroup v1 only; ignored on v2).
    pub swappiness: Option<u64>,
}

/// CPU limits of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuLimits {
    /// Relative weight (cgroup v1 shares, converted to `cpu.weight`).
    pub shares: Option<u64>,
    /// Microseconds of CPU time per period (`cpu.max`); `-1`: no limit.
    pub quota: Option<i64>,
    /// The period of `quota`, microseconds.
    pub period: Option<u64>,
    /// The CPUs it may run on (`cpuset.cpus`), e.g. `0-1`.
    pub cpus: Option<String>,
    /// The memory nodes it may use (`cpuset.mems`).
    pub mems: Option<String>,
}

/// A huge page limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HugepageLimit {
    /// The page size, e.g. `2MB`.
    pub page_size: String,
    /// The limit, bytes.
    pub limit: i64,
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
    /// For a container whose rootfs the guest pulled (`rootfs.source = "image"`): the digest
    /// (`sha256:<64 hex>`) of the image manifest the guest itself resolved, checked against the
    /// signature policy and unpacked — for a reference pinned to an image index, the linux/amd64
    /// manifest's digest, not the index's. `null` for an uploaded rootfs.
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
            user: User::default(),
            terminal: false,
            capabilities: Capabilities::default(),
            no_new_privileges: true,
            ..Process::default()
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
                ..CreateContainer::default()
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
