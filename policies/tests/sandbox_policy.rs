//! `sandbox.rego`, table-driven: every RPC is allowed in its ordinary form; CreateContainer with
//! hooks, bind mounts of guest paths, joined namespaces, every device, writable kernel
//! filesystems, an OOM-killer exemption or LSM labels is denied with a precise reason (AGT-CC).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test-only file: panics are failures

mod common;

use coffer_policies::{
    CreateContainer, Engine, Limits, Namespace, NamespaceType, Request, SANDBOX_POLICY,
};
use common::{create_container, input, mount, one_of_each};

fn engine() -> Engine {
    Engine::new(SANDBOX_POLICY, None, Limits::default()).unwrap()
}

fn create(edit: impl FnOnce(&mut CreateContainer)) -> Request {
    let mut c = create_container();
    edit(&mut c);
    Request::CreateContainer(Box::new(c))
}

#[test]
fn one_of_each_covers_every_rpc() {
    let names: Vec<_> = one_of_each().iter().map(Request::name).collect();
    assert_eq!(names, Request::NAMES);
}

#[test]
fn allows_every_rpc_in_ordinary_form() {
    let engine = engine();
    for request in one_of_each() {
        let name = request.name();
        let decision = engine.decide(&input(request));
        assert!(decision.allowed, "{name} denied: {}", decision.reason);
        assert_eq!(decision.reason, "", "{name}");
    }
}

#[test]
fn allow_table() {
    let cases: Vec<(&str, Request)> = vec![
        (
            "no mounts, no namespaces",
            create(|c| {
                c.mounts.clear();
                c.namespaces.clear();
            }),
        ),
        (
            "empty namespace path means a new namespace",
            create(|c| {
                c.namespaces.push(Namespace {
                    kind: NamespaceType::User,
                    path: Some(String::new()),
                });
            }),
        ),
        (
            "non-bind filesystem with a host-looking source",
            create(|c| {
                c.mounts.push(mount("/data", "/dev/vdb", "ext4", &["rw"]));
            }),
        ),
        (
            "option merely containing the word bind",
            create(|c| {
                c.mounts.push(mount(
                    "/run",
                    "tmpfs",
                    "tmpfs",
                    &["nobinding", "rbind-like"],
                ));
            }),
        ),
        (
            "image rootfs",
            create(|c| {
                c.rootfs.source = coffer_policies::RootfsSource::Image;
                c.rootfs.image = Some("registry.example/app@sha256:00".into());
            }),
        ),
        (
            "hardening as the host sends it: seccomp, rlimits, groups, cgroup limits, OOM score",
            create(|c| {
                c.seccomp = Some(coffer_policies::Seccomp {
                    default_action: "SCMP_ACT_ERRNO".into(),
                    ..Default::default()
                });
                c.process.rlimits = vec![coffer_policies::Rlimit {
                    kind: "RLIMIT_NOFILE".into(),
                    soft: 1024,
                    hard: 1024,
                }];
                c.process.user.additional_gids = vec![0, 10];
                c.process.oom_score_adj = Some(-997);
                c.resources.memory.limit = Some(64 << 20);
                c.resources.pids_limit = Some(100);
                c.resources
                    .unified
                    .insert("memory.high".into(), "32M".into());
            }),
        ),
        (
            "sysfs and cgroup2 read-only whatever the option order, or recursively",
            create(|c| {
                c.mounts
                    .retain(|m| m.kind != "sysfs" && m.kind != "cgroup2");
                c.mounts
                    .push(mount("/sys", "sysfs", "sysfs", &["ro", "nosuid", "nodev"]));
                c.mounts.push(mount(
                    "/sys/fs/cgroup",
                    "cgroup",
                    "cgroup2",
                    &["rro", "nosuid"],
                ));
            }),
        ),
        (
            "exec as root with a terminal",
            Request::ExecProcess {
                container_id: "c1".into(),
                exec_id: "e2".into(),
                process: Box::new({
                    let mut p = common::process(&["sh"]);
                    p.user.uid = 0;
                    p.terminal = true;
                    p
                }),
            },
        ),
    ];
    let engine = engine();
    for (name, request) in cases {
        let decision = engine.decide(&input(request));
        assert!(decision.allowed, "{name}: {}", decision.reason);
    }
}

/// AGT-CC: hooks, host binds (incl. rbind and binds disguised as kernel filesystems) and joined
/// namespaces, each with the exact reason.
#[test]
fn agt_cc_deny_table() {
    let cases: Vec<(&str, Request, &str)> = vec![
        (
            "hooks",
            create(|c| c.hooks_present = true),
            "CreateContainer: OCI hooks are present (they would run as guest root)",
        ),
        (
            "bind type",
            create(|c| c.mounts.push(mount("/mnt", "/host", "bind", &[]))),
            "CreateContainer: mount /host → /mnt is a bind mount of a host path",
        ),
        (
            "rbind option",
            create(|c| c.mounts.push(mount("/mnt", "/", "none", &["rbind", "rw"]))),
            "CreateContainer: mount / → /mnt is a bind mount of a host path",
        ),
        (
            "bind option",
            create(|c| {
                c.mounts
                    .push(mount("/etc/hosts", "/etc/hosts", "", &["bind", "ro"]))
            }),
            "CreateContainer: mount /etc/hosts → /etc/hosts is a bind mount of a host path",
        ),
        (
            "rbind disguised as proc (MS_BIND ignores the type)",
            create(|c| c.mounts.push(mount("/proc", "/", "proc", &["rbind"]))),
            "CreateContainer: mount / → /proc is a bind mount of a host path",
        ),
        (
            "bind of a TEE device disguised as tmpfs",
            create(|c| {
                c.mounts
                    .push(mount("/dev/x", "/dev/sev-guest", "tmpfs", &["bind"]))
            }),
            "CreateContainer: mount /dev/sev-guest → /dev/x is a bind mount of a host path",
        ),
        (
            "bind of the agent socket directory",
            create(|c| {
                c.mounts
                    .push(mount("/a", "/run/coffer", "bind", &["rbind", "rshared"]))
            }),
            "CreateContainer: mount /run/coffer → /a is a bind mount of a host path",
        ),
        (
            "host network namespace",
            create(|c| c.namespaces[1].path = Some("/proc/1/ns/net".into())),
            "CreateContainer: network namespace joins the existing namespace /proc/1/ns/net (host namespace)",
        ),
        (
            "host pid namespace",
            create(|c| c.namespaces[0].path = Some("/proc/1/ns/pid".into())),
            "CreateContainer: pid namespace joins the existing namespace /proc/1/ns/pid (host namespace)",
        ),
        (
            "every device (a rule of type a)",
            create(|c| {
                c.device_cgroup.push(coffer_policies::DeviceRule {
                    access: "m".into(),
                    ..common::device_rule(true, "a", None, None)
                })
            }),
            "CreateContainer: device cgroup rule of type a allows every device of the guest",
        ),
        (
            "writable sysfs",
            create(|c| {
                c.mounts.retain(|m| m.kind != "sysfs");
                c.mounts
                    .push(mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec"]));
            }),
            "CreateContainer: sysfs mount at /sys is not read-only (ro or rro, and no rw or rrw)",
        ),
        (
            "cgroup2 ro then rw",
            create(|c| {
                c.mounts.retain(|m| m.kind != "cgroup2");
                c.mounts
                    .push(mount("/sys/fs/cgroup", "cgroup", "cgroup2", &["ro", "rw"]));
            }),
            "CreateContainer: cgroup2 mount at /sys/fs/cgroup is not read-only (ro or rro, and no rw or rrw)",
        ),
        (
            "exempt from the OOM killer",
            create(|c| c.process.oom_score_adj = Some(-1000)),
            "CreateContainer: oom_score_adj -1000 exempts the process from the guest's OOM killer",
        ),
        (
            "an AppArmor profile",
            create(|c| c.process.apparmor_profile = Some("docker-default".into())),
            "CreateContainer: apparmor_profile docker-default names a policy the guest does not load",
        ),
        (
            "an SELinux mount label",
            create(|c| c.mount_label = Some("system_u:object_r:x:s0".into())),
            "CreateContainer: mount_label system_u:object_r:x:s0 names a policy the guest does not load",
        ),
        (
            "an exec with an SELinux label",
            Request::ExecProcess {
                container_id: "c1".into(),
                exec_id: "e2".into(),
                process: Box::new({
                    let mut p = common::process(&["sh"]);
                    p.selinux_label = Some("spc_t".into());
                    p
                }),
            },
            "ExecProcess: selinux_label spc_t names a policy the guest does not load",
        ),
        (
            "several denials are all reported, sorted",
            create(|c| {
                c.hooks_present = true;
                c.namespaces[2].path = Some("/proc/1/ns/ipc".into());
                c.mounts.push(mount("/b", "/srv", "bind", &[]));
            }),
            "CreateContainer: OCI hooks are present (they would run as guest root); \
             CreateContainer: ipc namespace joins the existing namespace /proc/1/ns/ipc (host namespace); \
             CreateContainer: mount /srv → /b is a bind mount of a host path",
        ),
    ];
    let engine = engine();
    for (name, request, reason) in cases {
        let decision = engine.decide(&input(request));
        assert!(!decision.allowed, "{name} allowed");
        assert_eq!(decision.reason, reason, "{name}");
    }
}

#[test]
fn decisions_are_consistent_across_threads() {
    let engine = engine();
    let bad = create(|c| c.hooks_present = true);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    assert!(engine.decide(&input(Request::GetGuestDetails)).allowed);
                    assert!(!engine.decide(&input(bad.clone())).allowed);
                }
            });
        }
    });
}

/// The pod's network is the host's to describe in sandbox mode: `sandbox.rego` has no data and
/// pins no resolver, so any DNS server the agent validated is allowed, as is no network; the
/// pod's files (`pod` mounts, which the agent binds read-only from files it wrote) are not binds
/// of guest paths the request chooses, so they pass too.
#[test]
fn pod_network_and_pod_files_are_allowed() {
    let engine = engine();
    let sandbox = |servers: &[&str]| {
        let mut network = common::pod_network();
        network.dns.servers = servers.iter().map(|s| (*s).to_owned()).collect();
        Request::CreateSandbox {
            sandbox_id: "sb".into(),
            hostname: Some("web-0".into()),
            registry_tunnels: vec![],
            published_ports: vec![],
            network: Some(network),
        }
    };
    for (name, request) in [
        ("the cluster's DNS server", sandbox(&["10.96.0.10"])),
        (
            "another DNS server",
            sandbox(&["192.0.2.53", "2001:db8::53"]),
        ),
        ("no DNS server", sandbox(&[])),
        (
            "no network",
            Request::CreateSandbox {
                sandbox_id: "sb".into(),
                hostname: None,
                registry_tunnels: vec![],
                published_ports: vec![],
                network: None,
            },
        ),
        (
            "the pod's files",
            create(|c| {
                c.mounts
                    .push(common::pod_mount("resolv.conf", "/etc/resolv.conf"));
                c.mounts.push(common::pod_mount("hosts", "/etc/hosts"));
                c.mounts
                    .push(common::pod_mount("hostname", "/etc/hostname"));
            }),
        ),
    ] {
        let decision = engine.decide(&input(request));
        assert!(decision.allowed, "{name}: {}", decision.reason);
    }
    // A bind of the host's copy instead is what the sandbox policy refuses.
    let decision = engine.decide(&input(create(|c| {
        c.mounts
            .push(mount("/etc/hosts", "/etc/hosts", "bind", &["rbind", "ro"]))
    })));
    assert!(!decision.allowed);
}
