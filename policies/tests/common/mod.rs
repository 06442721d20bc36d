//! Builders shared by the integration tests: one well-formed request per RPC.
#![allow(dead_code)]

pub mod confidential;

use std::collections::BTreeMap;

use coffer_policies::{
    Capabilities, ContainerState, CreateContainer, Decision, DeviceRule, DnsConfig, Engine,
    HostEntry, Mount, Namespace, NamespaceType, NetworkInterface, NetworkRoute, PodNetwork,
    PolicyInput, Process, Request, Rootfs, RootfsSource, SandboxState, User,
};

pub fn process(args: &[&str]) -> Process {
    Process {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        cwd: "/".into(),
        user: User {
            uid: 1000,
            gid: 1000,
            ..User::default()
        },
        terminal: false,
        capabilities: Capabilities {
            bounding: vec!["CAP_CHOWN".into()],
            effective: vec!["CAP_CHOWN".into()],
            permitted: vec!["CAP_CHOWN".into()],
            inheritable: vec![],
            ambient: vec![],
        },
        no_new_privileges: true,
        ..Process::default()
    }
}

pub fn mount(destination: &str, source: &str, kind: &str, options: &[&str]) -> Mount {
    Mount {
        destination: destination.into(),
        source: source.into(),
        kind: kind.into(),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

/// The mounts of `runc spec`'s default configuration: standard kernel filesystems, no binds.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup2",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

pub fn new_namespaces() -> Vec<Namespace> {
    [
        NamespaceType::Pid,
        NamespaceType::Network,
        NamespaceType::Ipc,
        NamespaceType::Uts,
        NamespaceType::Mount,
        NamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|kind| Namespace { kind, path: None })
    .collect()
}

/// containerd's device cgroup default: deny everything (the runtime allows the standard devices).
pub fn deny_all_devices() -> DeviceRule {
    device_rule(false, "a", None, None)
}

/// A device cgroup rule with access `rwm`.
pub fn device_rule(allow: bool, kind: &str, major: Option<i64>, minor: Option<i64>) -> DeviceRule {
    DeviceRule {
        allow,
        kind: kind.into(),
        major,
        minor,
        access: "rwm".into(),
    }
}

/// The masked paths of containerd's default spec.
pub const MASKED: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// The read-only paths of containerd's default spec.
pub const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A CreateContainer of `process` in a pulled `image`, as containerd would send it: new
/// namespaces, the default mounts, masked and read-only paths.
pub fn image_container(image: &str, process: Process) -> CreateContainer {
    CreateContainer {
        container_id: "c1".into(),
        rootfs: Rootfs {
            source: RootfsSource::Image,
            image: Some(image.into()),
        },
        process,
        namespaces: new_namespaces(),
        mounts: default_mounts(),
        devices: vec![],
        device_cgroup: vec![deny_all_devices()],
        hooks_present: false,
        sysctls: BTreeMap::new(),
        masked_paths: MASKED.iter().map(|s| (*s).to_owned()).collect(),
        readonly_paths: READONLY.iter().map(|s| (*s).to_owned()).collect(),
        ..CreateContainer::default()
    }
}

/// A CreateContainer the sandbox policy allows.
pub fn create_container() -> CreateContainer {
    CreateContainer {
        container_id: "c1".into(),
        rootfs: Rootfs {
            source: RootfsSource::Uploaded,
            image: None,
        },
        process: process(&["/bin/sh", "-c", "echo hi"]),
        namespaces: new_namespaces(),
        mounts: default_mounts(),
        devices: vec![],
        device_cgroup: vec![deny_all_devices()],
        hooks_present: false,
        sysctls: BTreeMap::from([("net.ipv4.ip_forward".to_owned(), "0".to_owned())]),
        masked_paths: vec!["/proc/kcore".into()],
        readonly_paths: vec!["/proc/sys".into()],
        ..CreateContainer::default()
    }
}

/// A pod network as the agent shows it to the policy: one dual-stack NIC, its default routes, the
/// cluster's DNS.
pub fn pod_network() -> PodNetwork {
    PodNetwork {
        interfaces: vec![NetworkInterface {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:05".into(),
            mtu: 1450,
            addresses: vec!["10.244.1.5/24".into(), "fd00:10:244:1::5/64".into()],
        }],
        routes: vec![
            NetworkRoute {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.244.1.1".into()),
                device: "eth0".into(),
                source: None,
                metric: 0,
            },
            NetworkRoute {
                destination: "::/0".into(),
                gateway: Some("fe80::1".into()),
                device: "eth0".into(),
                source: None,
                metric: 1024,
            },
        ],
        dns: DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        },
        hosts: vec![HostEntry {
            ip: "10.244.1.9".into(),
            names: vec!["db.internal".into()],
        }],
    }
}

/// The `mount` of one of the pod's files (type `pod`).
pub fn pod_mount(source: &str, destination: &str) -> Mount {
    mount(destination, source, "pod", &[])
}

/// One well-formed request of every RPC, in [`Request::NAMES`] order.
pub fn one_of_each() -> Vec<Request> {
    let c = || "c1".to_owned();
    vec![
        Request::CreateSandbox {
            sandbox_id: "sb".into(),
            hostname: Some("pod".into()),
            registry_tunnels: vec!["127.0.0.1:5000->20000".into()],
            published_ports: vec!["30000->127.0.0.2:8443".into()],
            network: Some(pod_network()),
        },
        Request::DestroySandbox,
        Request::UploadRootfs { container_id: c() },
        Request::PullImage {
            container_id: c(),
            image: format!("registry.example/other@sha256:{}", "1".repeat(64)),
        },
        Request::CreateContainer(Box::new(create_container())),
        Request::StartContainer { container_id: c() },
        Request::RemoveContainer {
            container_id: c(),
            force: true,
        },
        Request::StatsContainer { container_id: c() },
        Request::ExecProcess {
            container_id: c(),
            exec_id: "e1".into(),
            process: Box::new(process(&["/bin/ls", "-l"])),
        },
        Request::WaitProcess {
            container_id: c(),
            exec_id: None,
        },
        Request::SignalProcess {
            container_id: c(),
            exec_id: None,
            signal: "SIGTERM".into(),
            all: true,
        },
        Request::WriteStdin {
            container_id: c(),
            exec_id: Some("e1".into()),
        },
        Request::CloseStdin {
            container_id: c(),
            exec_id: Some("e1".into()),
        },
        Request::ReadStdout {
            container_id: c(),
            exec_id: None,
        },
        Request::ReadStderr {
            container_id: c(),
            exec_id: Some("e1".into()),
        },
        Request::TtyWinResize {
            container_id: c(),
            exec_id: Some("e1".into()),
        },
        Request::GetGuestDetails,
        Request::GetOomEvent,
    ]
}

pub fn state() -> SandboxState {
    sandbox(vec![ContainerState {
        id: "c1".into(),
        image_digest: Some(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        ),
        started: true,
        record: BTreeMap::new(),
    }])
}

/// The state the agent reports with these containers: the started ones are also remembered in
/// `ever_started`.
pub fn sandbox(containers: Vec<ContainerState>) -> SandboxState {
    let mut ever_started = Vec::new();
    for c in containers.iter().filter(|c| c.started) {
        coffer_policies::note_started(&mut ever_started, &c.id);
    }
    SandboxState {
        containers,
        ever_started,
    }
}

pub fn input(request: Request) -> PolicyInput {
    PolicyInput::new(request, state())
}

/// Decides `input` with `engine`.
pub fn decide(engine: &Engine, input: &PolicyInput) -> Decision {
    engine.decide(input)
}
