//! A native evaluation of the shipped `confidential.rego` for the requests it **allows**.
//!
//! regorus's interpreter needs ~200 µs for a `CreateContainer` against a ten-entry policy (see
//! the README's benchmark section): a few hundred field reads and comparisons, each costing
//! thousands of instructions. Most requests of a running pod are allowed, so [`Engine`] answers
//! those natively when — and only when — the loaded policy is byte for byte
//! [`CONFIDENTIAL_POLICY`](crate::CONFIDENTIAL_POLICY) and its data parses into the strict shape
//! below.
//!
//! The Rego stays the specification and the authority:
//! - The fast path only ever *allows*. Anything it does not allow — a deviation, a corner it does
//!   not model, policy data of an unexpected shape — goes to the interpreter, which decides and
//!   words the denial. So the fast path can be conservative (return `None` where unsure) but must
//!   never allow what the Rego denies, and must record exactly what the Rego records.
//! - That property is tested, not assumed: every table case of `tests/confidential_policy.rs`
//!   compares both paths, and `tests/confidential_fast_path.rs` compares them on thousands of
//!   generated requests, states and policy data around each rule's edge.
//! - Any change to `confidential.rego` changes its bytes, so a policy edited by its owner (or a
//!   new version shipped without updating this module) is evaluated by the interpreter alone
//!   until this module is brought in line; the differential tests fail on the shipped one if it
//!   drifts.
//!
//! Each function below names the Rego rule it mirrors.
//!
//! [`Engine`]: crate::Engine

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::engine::MAX_RECORD_BYTES;
use crate::input::{
    Capabilities, ContainerState, CreateContainer, Device, DeviceRule, Mount, NamespaceType,
    PodNetwork, PolicyInput, Process, Request, RootfsSource, SandboxState,
};

/// `default_capabilities`.
const DEFAULT_CAPABILITIES: [&str; 13] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// `network_capabilities`.
const NETWORK_CAPABILITIES: [&str; 2] = ["CAP_NET_ADMIN", "CAP_NET_RAW"];

/// `standard_mounts`, as (type, destination).
const STANDARD_MOUNTS: [(&str, &str); 9] = [
    ("proc", "/proc"),
    ("tmpfs", "/dev"),
    ("devpts", "/dev/pts"),
    ("tmpfs", "/dev/shm"),
    ("shm", "/dev/shm"),
    ("mqueue", "/dev/mqueue"),
    ("sysfs", "/sys"),
    ("cgroup", "/sys/fs/cgroup"),
    ("cgroup2", "/sys/fs/cgroup"),
];

/// `pod_files`, as (source, destination).
const POD_FILES: [(&str, &str); 3] = [
    ("resolv.conf", "/etc/resolv.conf"),
    ("hosts", "/etc/hosts"),
    ("hostname", "/etc/hostname"),
];

/// `read_only_types`.
const READ_ONLY_TYPES: [&str; 3] = ["sysfs", "cgroup", "cgroup2"];

/// `required_masked_paths`.
const REQUIRED_MASKED_PATHS: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
];

/// `standard_char_devices`, as (major, minor); `standard_device_rule` also admits major 136.
const STANDARD_CHAR_DEVICES: [(i64, i64); 8] = [
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
];

/// `required_readonly_paths`.
const REQUIRED_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The policy data, in exactly the shape `POLICY-DATA.md` documents: any other member, type or
/// number format (say a uid written `1000.0`) means no fast path for this policy, not a guess.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    #[serde(default)]
    containers: Vec<Entry>,
    #[serde(default)]
    network: Option<NetworkPin>,
}

/// The optional `network` pin: each list, when present, holds every value a `CreateSandbox` may
/// name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkPin {
    #[serde(default)]
    dns_servers: Option<BTreeSet<String>>,
    #[serde(default)]
    dns_searches: Option<BTreeSet<String>>,
}

/// One policy entry. Defaults are those of the Rego's `object.get(e, field, default)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    image: String,
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    env_names_any_value: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default = "root_directory")]
    cwd: String,
    #[serde(default)]
    user: EntryUser,
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    allow_privilege_escalation: bool,
    #[serde(default)]
    host_namespaces: Vec<String>,
    #[serde(default)]
    mounts: Vec<EntryMount>,
    #[serde(default)]
    devices: Vec<EntryDevice>,
    #[serde(default)]
    sysctls: BTreeMap<String, String>,
    #[serde(default)]
    exec: Vec<Vec<String>>,
    #[serde(default)]
    logs: bool,
    #[serde(default)]
    stdin: bool,
}

fn root_directory() -> String {
    "/".to_owned()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryUser {
    uid: u32,
    gid: u32,
}

/// A listed mount: all four members required, as the Rego compares whole objects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryMount {
    destination: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    options: Vec<String>,
}

impl PartialEq<Mount> for EntryMount {
    fn eq(&self, m: &Mount) -> bool {
        self.destination == m.destination
            && self.source == m.source
            && self.kind == m.kind
            && self.options == m.options
    }
}

/// A listed device: all four members required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDevice {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    major: i64,
    minor: i64,
}

impl PartialEq<Device> for EntryDevice {
    fn eq(&self, d: &Device) -> bool {
        self.path == d.path && self.kind == d.kind && self.major == d.major && self.minor == d.minor
    }
}

/// An entry with its string lists as sets: a request's lists are the host's to make long, so each
/// of their items costs one lookup, not a scan of the entry.
#[derive(Debug)]
struct Listed {
    entry: Entry,
    env: BTreeSet<String>,
    env_names_any_value: BTreeSet<String>,
    secrets: BTreeSet<String>,
    capabilities: BTreeSet<String>,
    host_namespaces: BTreeSet<String>,
}

impl Listed {
    fn new(entry: Entry) -> Self {
        let set = |list: &[String]| list.iter().cloned().collect::<BTreeSet<_>>();
        Self {
            env: set(&entry.env),
            env_names_any_value: set(&entry.env_names_any_value),
            secrets: set(&entry.secrets),
            capabilities: set(&entry.capabilities),
            host_namespaces: set(&entry.host_namespaces),
            entry,
        }
    }
}

/// Requests with more mounts or devices than this (compared object by object with the entry's)
/// go to the interpreter, whose evaluation timer bounds them.
const MAX_SCANNED_ITEMS: usize = 256;

/// The fast path of one loaded `confidential.rego` and its data.
#[derive(Debug)]
pub(crate) struct ConfidentialFastPath {
    entries: Vec<Listed>,
    network: NetworkPin,
}

/// What the fast path concluded: the Rego allows the request and records exactly this.
pub(crate) type Allowed = BTreeMap<String, String>;

impl ConfidentialFastPath {
    /// The fast path for `data_json` (already accepted by the Rego's `data_problems` check), or
    /// `None` when the data has a shape this module does not model.
    pub(crate) fn new(data_json: Option<&str>) -> Option<Self> {
        let data = match data_json {
            None => Data {
                containers: Vec::new(),
                network: None,
            },
            Some(json) => serde_json::from_str::<Data>(json).ok()?,
        };
        let network = data.network.unwrap_or_default();
        let entries = data.containers;
        // The Rego refuses duplicate names at load; a record must fit the engine's limit.
        let mut names = BTreeSet::new();
        for e in &entries {
            if e.name.len() > MAX_RECORD_BYTES || !names.insert(e.name.as_str()) {
                return None;
            }
        }
        Some(Self {
            entries: entries.into_iter().map(Listed::new).collect(),
            network,
        })
    }

    /// `Some(record)` when `confidential.rego` allows `input` with that record (empty except for
    /// `CreateContainer`); `None` when it denies it or this module cannot tell.
    pub(crate) fn allows(&self, input: &PolicyInput) -> Option<Allowed> {
        // `decision`'s first body and `version_denials`.
        if input.version != 1 {
            return None;
        }
        let state = &input.state;
        match &input.request {
            Request::CreateSandbox { network, .. } => {
                self.sandbox_allowed(network.as_ref()).then(Allowed::new)
            }
            // The kinds `decision` allows by kind alone.
            Request::DestroySandbox
            | Request::RemoveContainer { .. }
            | Request::StatsContainer { .. }
            | Request::WaitProcess { .. }
            | Request::SignalProcess { .. }
            | Request::TtyWinResize { .. }
            | Request::GetGuestDetails
            | Request::GetOomEvent => Some(Allowed::new()),
            Request::UploadRootfs { .. } => None,
            // `pull_denials`: a listed image is pinned (`data_problems`).
            Request::PullImage { image, .. } => self
                .entries
                .iter()
                .any(|e| e.entry.image == *image)
                .then(Allowed::new),
            Request::CreateContainer(create) => self.create(create, state),
            Request::StartContainer { container_id } => {
                start_allowed(container_id, state).then(Allowed::new)
            }
            Request::ExecProcess {
                container_id,
                process,
                ..
            } => self.exec(container_id, process, state),
            Request::ReadStdout {
                container_id,
                exec_id,
            }
            | Request::ReadStderr {
                container_id,
                exec_id,
            } => self
                .stream(container_id, exec_id.as_deref(), state, |e| e.entry.logs)
                .then(Allowed::new),
            Request::WriteStdin {
                container_id,
                exec_id,
            }
            | Request::CloseStdin {
                container_id,
                exec_id,
            } => self
                .stream(container_id, exec_id.as_deref(), state, |e| e.entry.stdin)
                .then(Allowed::new),
        }
    }

    /// `sandbox_denials` empty: every DNS server and search domain is listed where the data pins
    /// them.
    fn sandbox_allowed(&self, network: Option<&PodNetwork>) -> bool {
        let Some(dns) = network.map(|n| &n.dns) else {
            return true;
        };
        let listed = |pin: &Option<BTreeSet<String>>, values: &[String]| {
            pin.as_ref()
                .is_none_or(|pin| values.iter().all(|v| pin.contains(v)))
        };
        listed(&self.network.dns_servers, &dns.servers)
            && listed(&self.network.dns_searches, &dns.searches)
    }

    /// `create_denials` empty, with `create_record`.
    fn create(&self, c: &CreateContainer, state: &SandboxState) -> Option<Allowed> {
        if c.rootfs.source != RootfsSource::Image
            || c.hooks_present
            || c.mounts.len() > MAX_SCANNED_ITEMS
            || c.devices.len() > MAX_SCANNED_ITEMS
            || c.device_cgroup.len() > MAX_SCANNED_ITEMS
        {
            return None;
        }
        let image = c.rootfs.image.as_deref()?;
        // `candidates`
        let candidates: Vec<&Listed> = self
            .entries
            .iter()
            .filter(|e| e.entry.image == image)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        // `nonstandard_mounts`, `nonstandard_device_rules`
        let nonstandard = Nonstandard {
            mounts: c.mounts.iter().filter(|m| !standard_mount(m)).collect(),
            device_rules: c
                .device_cgroup
                .iter()
                .filter(|r| r.allow && !standard_device_rule(r))
                .collect(),
        };
        // `matching`, `admitted_entry`: the smallest name among the entries with no problem.
        let admitted = candidates
            .iter()
            .filter(|e| entry_admits(c, e, &nonstandard))
            .map(|e| e.entry.name.as_str())
            .min()?;
        // `held_network_capabilities`: looked for only when a candidate lists one.
        let network_listed = candidates.iter().any(|e| {
            NETWORK_CAPABILITIES
                .iter()
                .any(|cap| e.capabilities.contains(*cap))
        });
        let holds_network = network_listed && holds_network_capability(&c.process.capabilities);
        if holds_network && started_ids(state).next().is_some() {
            return None;
        }
        let mut record = Allowed::from([("entry".to_owned(), admitted.to_owned())]);
        if holds_network {
            record.insert("network".to_owned(), "set-up".to_owned());
        }
        Some(record)
    }

    /// `exec_denials` empty.
    fn exec(&self, container_id: &str, p: &Process, state: &SandboxState) -> Option<Allowed> {
        let e = self.entry_of(container_id, state)?;
        let admitted = e.entry.exec.contains(&p.args)
            && !p.terminal
            && process_admitted(p, e)
            && !(holds_network_capability(&p.capabilities)
                && started_ids(state).any(|id| id != container_id));
        admitted.then(Allowed::new)
    }

    /// `stream_denials` empty: an exec's streams, or the init process's when its entry allows.
    fn stream(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        state: &SandboxState,
        allows: impl Fn(&Listed) -> bool,
    ) -> bool {
        exec_id.is_some() || self.entry_of(container_id, state).is_some_and(allows)
    }

    /// `entry_of`: the entry named by the record of the one container with this id.
    fn entry_of(&self, container_id: &str, state: &SandboxState) -> Option<&Listed> {
        let mut containers = state.containers.iter().filter(|c| c.id == container_id);
        let container: &ContainerState = containers.next()?;
        if containers.next().is_some() {
            return None;
        }
        let name = container.record.get("entry")?;
        self.entries.iter().find(|e| e.entry.name == *name)
    }
}

/// `start_denials` empty.
fn start_allowed(container_id: &str, state: &SandboxState) -> bool {
    let sets_up_network = state.containers.iter().any(|c| {
        c.id == container_id && c.record.get("network").map(String::as_str) == Some("set-up")
    });
    !sets_up_network || !started_ids(state).any(|id| id != container_id)
}

/// `started_ids`: the containers that have started, present or remembered.
fn started_ids(state: &SandboxState) -> impl Iterator<Item = &str> {
    state
        .containers
        .iter()
        .filter(|c| c.started)
        .map(|c| c.id.as_str())
        .chain(state.ever_started.iter().map(String::as_str))
}

/// The parts of a request that need a listing, decided once per request.
struct Nonstandard<'a> {
    mounts: Vec<&'a Mount>,
    device_rules: Vec<&'a DeviceRule>,
}

/// `standard_device_rule(rule)`.
fn standard_device_rule(rule: &DeviceRule) -> bool {
    let standard_char = rule.kind == "c"
        && match (rule.major, rule.minor) {
            (Some(136), _) => true,
            (Some(major), Some(minor)) => STANDARD_CHAR_DEVICES.contains(&(major, minor)),
            _ => false,
        };
    standard_char || !(rule.access.contains('r') || rule.access.contains('w'))
}

/// `entry_problems(r, e)` empty.
fn entry_admits(c: &CreateContainer, e: &Listed, nonstandard: &Nonstandard<'_>) -> bool {
    let listed = &e.entry;
    c.process.args == listed.args
        && process_admitted(&c.process, e)
        && c.namespaces
            .iter()
            .all(|ns| ns.path.is_none() || e.host_namespaces.contains(namespace_name(ns.kind)))
        && ["mount", "pid"].iter().all(|required| {
            c.namespaces
                .iter()
                .any(|ns| namespace_name(ns.kind) == *required)
                || e.host_namespaces.contains(*required)
        })
        && nonstandard
            .mounts
            .iter()
            .all(|m| listed.mounts.iter().any(|l| l == *m))
        && nonstandard.device_rules.iter().all(|rule| {
            listed.devices.iter().any(|d| {
                d.kind == rule.kind && Some(d.major) == rule.major && Some(d.minor) == rule.minor
            })
        })
        && c.mounts
            .iter()
            .filter(|m| m.kind == "sealed")
            .all(|m| e.secrets.contains(&m.source))
        && c.devices
            .iter()
            .all(|d| listed.devices.iter().any(|l| l == d))
        && c.sysctls
            .iter()
            .all(|(key, value)| listed.sysctls.get(key) == Some(value))
        && REQUIRED_MASKED_PATHS
            .iter()
            .all(|p| c.masked_paths.iter().any(|m| m == p))
        && REQUIRED_READONLY_PATHS
            .iter()
            .all(|p| c.readonly_paths.iter().any(|r| r == p))
        && c.process.terminal == listed.terminal
}

/// `process_problems(p, e)` empty (with `capability_problems`, `env_problems`,
/// `sealed_problems`).
fn process_admitted(p: &Process, e: &Listed) -> bool {
    let listed = &e.entry;
    p.user.uid == listed.user.uid
        && p.user.gid == listed.user.gid
        && p.cwd == listed.cwd
        && (p.no_new_privileges || listed.allow_privilege_escalation)
        && capability_sets(&p.capabilities)
            .all(|cap| DEFAULT_CAPABILITIES.contains(&cap.as_str()) || e.capabilities.contains(cap))
        && p.env
            .iter()
            .all(|var| env_allowed(var, e) && sealed_allowed(var, e))
}

/// `env_allowed` (a listed `NAME=value`, or a name whose value is free).
fn env_allowed(var: &str, e: &Listed) -> bool {
    e.env.contains(var)
        || var
            .split_once('=')
            .is_some_and(|(name, _)| e.env_names_any_value.contains(name))
}

/// `sealed_problems` empty for `var`: a value `sealed.<ref>` names a listed secret.
fn sealed_allowed(var: &str, e: &Listed) -> bool {
    match var.split_once('=') {
        Some((_, value)) => match value.strip_prefix("sealed.") {
            Some(reference) => e.secrets.contains(reference),
            None => true,
        },
        None => true,
    }
}

/// `standard_mount(m)`: a standard kernel filesystem, or one of the pod's files.
fn standard_mount(m: &Mount) -> bool {
    let kernel = STANDARD_MOUNTS.contains(&(m.kind.as_str(), m.destination.as_str()))
        && m.kind != "bind"
        && !m.options.iter().any(|o| o == "bind" || o == "rbind")
        && (!READ_ONLY_TYPES.contains(&m.kind.as_str()) || m.options.iter().any(|o| o == "ro"));
    let pod_file = m.kind == "pod"
        && POD_FILES.contains(&(m.source.as_str(), m.destination.as_str()))
        && m.options.is_empty();
    kernel || pod_file
}

fn capability_sets(caps: &Capabilities) -> impl Iterator<Item = &String> {
    caps.bounding
        .iter()
        .chain(&caps.effective)
        .chain(&caps.permitted)
        .chain(&caps.inheritable)
        .chain(&caps.ambient)
}

fn is_network(cap: &str) -> bool {
    NETWORK_CAPABILITIES.contains(&cap)
}

fn holds_network_capability(caps: &Capabilities) -> bool {
    capability_sets(caps).any(|cap| is_network(cap))
}

/// The namespace type as the input document spells it (`NamespaceType`'s serde name).
fn namespace_name(kind: NamespaceType) -> &'static str {
    match kind {
        NamespaceType::Pid => "pid",
        NamespaceType::Network => "network",
        NamespaceType::Mount => "mount",
        NamespaceType::Ipc => "ipc",
        NamespaceType::Uts => "uts",
        NamespaceType::User => "user",
        NamespaceType::Cgroup => "cgroup",
        NamespaceType::Time => "time",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_the_input_spelling() {
        for kind in [
            NamespaceType::Pid,
            NamespaceType::Network,
            NamespaceType::Mount,
            NamespaceType::Ipc,
            NamespaceType::Uts,
            NamespaceType::User,
            NamespaceType::Cgroup,
            NamespaceType::Time,
        ] {
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::from(namespace_name(kind)))
            );
        }
    }

    #[test]
    fn data_of_another_shape_has_no_fast_path() {
        let entry = r#"{"name": "a", "image": "r@sha256:00", "args": []"#;
        for json in [
            format!(r#"{{"containers": [{entry}, "note": "x"}}]}}"#),
            format!(r#"{{"containers": [{entry}, "user": {{"uid": 1000.0, "gid": 0}}}}]}}"#),
            format!(r#"{{"containers": [{entry}, "cwd": null}}]}}"#),
            format!(
                r#"{{"containers": [{entry}, "mounts": [{{"destination": "/d", "source": "s", "type": "tmpfs"}}]}}]}}"#
            ),
            format!(r#"{{"containers": [{entry}}}], "other": 1}}"#),
            format!(
                r#"{{"containers": [{entry}}}], "network": {{"dns_server": ["192.0.2.53"]}}}}"#
            ),
            format!(r#"{{"containers": [{entry}}}], "network": {{"dns_servers": "192.0.2.53"}}}}"#),
            format!(r#"{{"containers": [{entry}}}, {entry}}}]}}"#),
        ] {
            assert!(ConfidentialFastPath::new(Some(&json)).is_none(), "{json}");
        }
        let ok = format!(r#"{{"containers": [{entry}}}]}}"#);
        assert!(ConfidentialFastPath::new(Some(&ok)).is_some());
        let pinned = format!(
            r#"{{"containers": [{entry}}}], "network": {{"dns_servers": ["192.0.2.53"]}}}}"#
        );
        assert!(
            ConfidentialFastPath::new(Some(&pinned)).is_some_and(|f| f
                .network
                .dns_servers
                .is_some()
                && f.network.dns_searches.is_none())
        );
        assert!(ConfidentialFastPath::new(None).is_some());
    }
}
