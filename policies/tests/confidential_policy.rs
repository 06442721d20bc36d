//! `confidential.rego`, table-driven per request kind: the listed pod is admitted exactly, and each
//! deviation the host could make is denied with a reason naming the field (AGT-CC, AGT-EX, AGT-ST,
//! AGT-MISC, AGT-NW, AGT-ORD, POL-01, POL-03).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test-only file: panics are failures

mod common;

use std::collections::BTreeMap;

use coffer_policies::{
    CONFIDENTIAL_POLICY, ContainerState, CreateContainer, Decision, Device, DeviceRule, Engine,
    Limits, Namespace, NamespaceType, PolicyInput, Process, Request, Rootfs, RootfsSource,
    SandboxState,
};
use common::confidential::{IMAGE, SIDECAR, app, app_process, data, state};
use common::{mount, one_of_each};
use serde_json::json;

fn engine_with(data: &serde_json::Value) -> Engine {
    Engine::new(
        CONFIDENTIAL_POLICY,
        Some(&data.to_string()),
        Limits::default(),
    )
    .unwrap()
}

fn decide(request: Request) -> Decision {
    common::decide(&engine_with(&data()), &PolicyInput::new(request, state()))
}

fn create(edit: impl FnOnce(&mut CreateContainer)) -> Request {
    let mut c = app();
    edit(&mut c);
    Request::CreateContainer(Box::new(c))
}

fn rlimit(kind: &str, soft: u64, hard: u64) -> coffer_policies::Rlimit {
    coffer_policies::Rlimit {
        kind: kind.into(),
        soft,
        hard,
    }
}

fn exec(container: &str, edit: impl FnOnce(&mut Process)) -> Request {
    let mut p = app_process();
    p.args = vec!["/app/health".into(), "--ready".into()];
    edit(&mut p);
    Request::ExecProcess {
        container_id: container.into(),
        exec_id: "e1".into(),
        process: Box::new(p),
    }
}

#[test]
fn listed_container_is_admitted_and_recorded() {
    let d = decide(create(|_| {}));
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.record.get("entry").map(String::as_str), Some("app"));
}

#[test]
fn sidecar_entry_is_matched_by_its_own_image() {
    let d = decide(create(|c| {
        c.rootfs.image = Some(SIDECAR.into());
        c.process = common::process(&["/side"]);
        c.process.user.uid = 0;
        c.process.user.gid = 0;
        c.process.env.clear();
    }));
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.record.get("entry").map(String::as_str), Some("side"));
}

/// AGT-CC, POL-01: each deviation from the listed container, with the reason it must give.
#[test]
fn create_container_deny_table() {
    let cases: Vec<(&str, Request, &str)> = vec![
        (
            "host-uploaded rootfs",
            create(|c| {
                c.rootfs = Rootfs {
                    source: RootfsSource::Uploaded,
                    image: None,
                }
            }),
            "root filesystem source uploaded is not allowed",
        ),
        (
            "device cgroup allowing every device (a privileged container's rule)",
            create(|c| {
                c.device_cgroup
                    .push(common::device_rule(true, "a", None, None))
            }),
            "device cgroup rule allows a null:null (rwm), which is not a listed device",
        ),
        (
            "device cgroup allowing a block device",
            create(|c| {
                c.device_cgroup
                    .push(common::device_rule(true, "b", Some(8), Some(0)))
            }),
            "device cgroup rule allows b 8:0 (rwm), which is not a listed device",
        ),
        (
            "image by tag",
            create(|c| c.rootfs.image = Some("registry.example/app:latest".into())),
            "image registry.example/app:latest is not pinned by digest",
        ),
        (
            "other digest",
            create(|c| c.rootfs.image = Some(IMAGE.replace("1111", "3333"))),
            "is not listed in the policy data",
        ),
        (
            "changed command",
            create(|c| c.process.args.push("--debug".into())),
            "args [\"/app/server\", \"--port\", \"8080\", \"--debug\"] differ",
        ),
        (
            "argv joined differently (AGT-EX split trick)",
            create(|c| c.process.args = vec!["/app/server --port".into(), "8080".into()]),
            "args [\"/app/server --port\", \"8080\"] differ",
        ),
        (
            "unlisted environment value",
            create(|c| c.process.env.push("LD_PRELOAD=/tmp/x.so".into())),
            "environment variable LD_PRELOAD is not listed",
        ),
        (
            "listed variable with another value",
            create(|c| c.process.env[1] = "MODE=debug".into()),
            "environment variable MODE is not listed",
        ),
        (
            "root instead of the listed user",
            create(|c| c.process.user.uid = 0),
            "user {\"gid\": 1000, \"uid\": 0} differs",
        ),
        (
            "other working directory",
            create(|c| c.process.cwd = "/".into()),
            "working directory / differs from /app",
        ),
        (
            "terminal",
            create(|c| c.process.terminal = true),
            "terminal true differs from false",
        ),
        (
            "extra capability (privileged)",
            create(|c| {
                c.process
                    .capabilities
                    .effective
                    .push("CAP_SYS_ADMIN".into())
            }),
            "capability CAP_SYS_ADMIN (effective set) is not allowed",
        ),
        (
            "NET_RAW is not in the confidential default set",
            create(|c| c.process.capabilities.ambient.push("CAP_NET_RAW".into())),
            "capability CAP_NET_RAW (ambient set) is not allowed",
        ),
        (
            "privilege escalation",
            create(|c| c.process.no_new_privileges = false),
            "no_new_privileges is off",
        ),
        (
            "OCI hooks",
            create(|c| c.hooks_present = true),
            "OCI hooks are present",
        ),
        (
            "host network namespace",
            create(|c| {
                c.namespaces[1].path = Some("/proc/1/ns/net".into());
            }),
            "network namespace joins the existing namespace /proc/1/ns/net",
        ),
        (
            "guest pid namespace shared",
            create(|c| c.namespaces.retain(|n| n.kind != NamespaceType::Pid)),
            "no new pid namespace",
        ),
        (
            "bind mount of a guest path",
            create(|c| c.mounts.push(mount("/host", "/", "bind", &["rbind", "rw"]))),
            "mount /host (type bind, source /) is not allowed",
        ),
        (
            "bind disguised as tmpfs",
            create(|c| {
                c.mounts
                    .push(mount("/dev/shm", "/dev/sev-guest", "tmpfs", &["bind"]))
            }),
            "mount /dev/shm (type tmpfs, source /dev/sev-guest) is not allowed",
        ),
        (
            "writable sysfs",
            create(|c| c.mounts.push(mount("/sys", "sysfs", "sysfs", &["rw"]))),
            "mount /sys (type sysfs, source sysfs) is not allowed",
        ),
        (
            "listed mount with other options",
            create(|c| {
                c.mounts
                    .push(mount("/data", "tmpfs", "tmpfs", &["size=1m"]))
            }),
            "mount /data (type tmpfs, source tmpfs) is not allowed",
        ),
        (
            "device node",
            create(|c| {
                c.devices.push(Device {
                    path: "/dev/sev-guest".into(),
                    kind: "c".into(),
                    major: 10,
                    minor: 124,
                    ..Device::default()
                })
            }),
            "device /dev/sev-guest is not listed",
        ),
        (
            "sysctl",
            create(|c| {
                c.sysctls
                    .insert("kernel.core_pattern".into(), "|/tmp/x".into());
            }),
            "sysctl kernel.core_pattern=|/tmp/x is not listed",
        ),
        (
            "masked path dropped",
            create(|c| c.masked_paths.retain(|p| p != "/proc/kcore")),
            "masked paths [\"/proc/kcore\"] are not masked",
        ),
        (
            "read-only path dropped",
            create(|c| c.readonly_paths.clear()),
            "paths [\"/proc/bus\", \"/proc/fs\", \"/proc/irq\", \"/proc/sys\", \"/proc/sysrq-trigger\"] are not read-only",
        ),
        (
            "sysfs ro then rw (the runtime applies the last)",
            create(|c| {
                c.mounts.retain(|m| m.kind != "sysfs");
                c.mounts
                    .push(mount("/sys", "sysfs", "sysfs", &["nosuid", "ro", "rw"]));
            }),
            "mount /sys (type sysfs, source sysfs) is not allowed",
        ),
        (
            "cgroup2 ro then rrw",
            create(|c| {
                c.mounts.retain(|m| m.destination != "/sys/fs/cgroup");
                c.mounts.push(mount(
                    "/sys/fs/cgroup",
                    "cgroup",
                    "cgroup2",
                    &["ro", "nosuid", "rrw"],
                ));
            }),
            "mount /sys/fs/cgroup (type cgroup2, source cgroup) is not allowed",
        ),
        (
            "device rule of type a, mknod only",
            create(|c| {
                c.device_cgroup.push(DeviceRule {
                    access: "m".into(),
                    ..common::device_rule(true, "a", None, None)
                })
            }),
            "device cgroup rule of type a allows every device",
        ),
        (
            "a seccomp profile the entry does not list",
            create(|c| {
                c.seccomp = Some(coffer_policies::Seccomp {
                    default_action: "SCMP_ACT_ALLOW".into(),
                    ..Default::default()
                })
            }),
            "seccomp profile (default SCMP_ACT_ALLOW, 0 rules) differs from the entry's none",
        ),
        (
            "RLIMIT_NOFILE above the default bound",
            create(|c| c.process.rlimits = vec![rlimit("RLIMIT_NOFILE", 1024, 2_000_000)]),
            "rlimit RLIMIT_NOFILE (soft 1024, hard 2000000) is above its bound (soft 1048576, hard 1048576)",
        ),
        (
            "an rlimit the entry does not list",
            create(|c| c.process.rlimits = vec![rlimit("RLIMIT_CORE", 0, 1 << 40)]),
            "rlimit RLIMIT_CORE is not listed",
        ),
        (
            "a supplementary group",
            create(|c| c.process.user.additional_gids = vec![1000, 6]),
            "supplementary group 6 is not listed",
        ),
        (
            "an AppArmor profile",
            create(|c| c.process.apparmor_profile = Some("unconfined".into())),
            "AppArmor profile unconfined differs from null",
        ),
        (
            "an SELinux label",
            create(|c| c.process.selinux_label = Some("system_u:system_r:spc_t:s0".into())),
            "SELinux label system_u:system_r:spc_t:s0 differs from null",
        ),
        (
            "a mount label",
            create(|c| c.mount_label = Some("system_u:object_r:x:s0".into())),
            "mount label system_u:object_r:x:s0 differs from null",
        ),
        (
            "exempt from the OOM killer",
            create(|c| c.process.oom_score_adj = Some(-1000)),
            "oom_score_adj -1000 exempts it from the OOM killer",
        ),
        (
            "a raw cgroup setting",
            create(|c| {
                c.resources
                    .unified
                    .insert("memory.oom.group".into(), "0".into());
            }),
            "cgroup setting memory.oom.group=0 is not listed",
        ),
    ];
    for (name, request, reason) in cases {
        let d = decide(request);
        assert!(!d.allowed, "{name}: allowed");
        assert!(d.record.is_empty(), "{name}: a denial records nothing");
        assert!(
            d.reason.contains(reason),
            "{name}: reason {:?} lacks {reason:?}",
            d.reason
        );
        assert!(
            d.reason.starts_with("CreateContainer c1: "),
            "{name}: {}",
            d.reason
        );
    }
}

/// AGT-EX: exec only for listed argv, argument by argument, in the right container.
#[test]
fn exec_table() {
    let allowed = [
        exec("c1", |_| {}),
        exec("c1", |p| {
            p.args = vec!["sh".into(), "-c".into(), "echo ok".into()];
        }),
    ];
    for request in allowed {
        let d = decide(request);
        assert!(d.allowed, "{}", d.reason);
        assert!(d.record.is_empty());
    }
    let denied: Vec<(&str, Request, &str)> = vec![
        (
            "unlisted command",
            exec("c1", |p| p.args = vec!["sh".into()]),
            "argv [\"sh\"] is not listed for policy entry app",
        ),
        (
            "split differently",
            exec("c1", |p| {
                p.args = vec!["sh".into(), "-c echo".into(), "ok".into()];
            }),
            "argv [\"sh\", \"-c echo\", \"ok\"] is not listed",
        ),
        (
            "joined",
            exec("c1", |p| p.args = vec!["sh -c echo ok".into()]),
            "is not listed",
        ),
        (
            "trailing space",
            exec("c1", |p| {
                p.args = vec!["/app/health".into(), "--ready ".into()]
            }),
            "is not listed",
        ),
        (
            "terminal",
            exec("c1", |p| p.terminal = true),
            "a terminal is not allowed",
        ),
        (
            "other user",
            exec("c1", |p| p.user.uid = 0),
            "user {\"gid\": 1000, \"uid\": 0} differs",
        ),
        (
            "extra capability",
            exec("c1", |p| {
                p.capabilities.permitted.push("CAP_SYS_PTRACE".into())
            }),
            "capability CAP_SYS_PTRACE (permitted set) is not allowed",
        ),
        (
            "container without a policy entry",
            exec("c2", |_| {}),
            "container c2 was not admitted by a policy entry",
        ),
        (
            "unknown container",
            exec("nope", |_| {}),
            "container nope was not admitted",
        ),
    ];
    for (name, request, reason) in denied {
        let d = decide(request);
        assert!(!d.allowed, "{name}: allowed");
        assert!(d.reason.contains(reason), "{name}: {:?}", d.reason);
        assert!(
            d.reason.starts_with("ExecProcess e1: "),
            "{name}: {}",
            d.reason
        );
    }
}

/// AGT-ST: init-process output only when the entry allows logs, stdin only when it allows stdin.
#[test]
fn stream_table() {
    let read = |container: &str, exec: Option<&str>| Request::ReadStdout {
        container_id: container.into(),
        exec_id: exec.map(str::to_owned),
    };
    assert!(decide(read("c1", None)).allowed);
    assert!(decide(read("c1", Some("e1"))).allowed);
    let hidden = decide(read("c2", None));
    assert!(!hidden.allowed);
    assert_eq!(
        hidden.reason,
        "ReadStdout: output of container c2 is not readable (its policy entry does not allow logs)"
    );
    let stderr = decide(Request::ReadStderr {
        container_id: "nope".into(),
        exec_id: None,
    });
    assert!(!stderr.allowed, "unknown containers are hidden too");
    let stdin = decide(Request::WriteStdin {
        container_id: "c1".into(),
        exec_id: None,
    });
    assert!(!stdin.allowed);
    assert!(
        stdin
            .reason
            .contains("stdin of container c1 is not writable")
    );
}

#[test]
fn plain_requests_are_allowed_and_host_rootfs_refused() {
    for request in one_of_each() {
        let name = request.name();
        let d = decide(request);
        match name {
            // one_of_each's PullImage names an image the policy data does not list.
            "UploadRootfs" | "PullImage" | "CreateContainer" | "ExecProcess" => {
                assert!(!d.allowed, "{name} allowed")
            }
            _ => assert!(d.allowed, "{name}: {}", d.reason),
        }
    }
}

/// REG-01 in the policy: a pull ahead of CreateContainer only for a listed, pinned image.
#[test]
fn pull_image_only_for_listed_pinned_images() {
    let pull = |image: &str| {
        decide(Request::PullImage {
            container_id: "c1".into(),
            image: image.into(),
        })
    };
    for listed in [IMAGE, SIDECAR] {
        let d = pull(listed);
        assert!(d.allowed, "{listed}: {}", d.reason);
    }
    let unlisted = format!("registry.example/app@sha256:{}", "2".repeat(64));
    let d = pull(&unlisted);
    assert!(!d.allowed);
    assert!(
        d.reason
            .contains(&format!("PullImage c1: image {unlisted} is not listed")),
        "{}",
        d.reason
    );
    let tag = IMAGE.split('@').next().unwrap().to_owned() + ":latest";
    let d = pull(&tag);
    assert!(!d.allowed);
    assert!(d.reason.contains("is not pinned by digest"), "{}", d.reason);
    // Without policy data nothing may be pulled.
    let engine = Engine::new(CONFIDENTIAL_POLICY, None, Limits::default()).unwrap();
    let d = common::decide(
        &engine,
        &PolicyInput::new(
            Request::PullImage {
                container_id: "c1".into(),
                image: IMAGE.into(),
            },
            state(),
        ),
    );
    assert!(!d.allowed);
}

/// With no policy data (the built-in default), no container is admitted.
#[test]
fn without_policy_data_nothing_runs() {
    let engine = Engine::new(CONFIDENTIAL_POLICY, None, Limits::default()).unwrap();
    let d = common::decide(&engine, &PolicyInput::new(create(|_| {}), state()));
    assert!(!d.allowed);
    assert!(
        d.reason.contains("is not listed in the policy data"),
        "{}",
        d.reason
    );
    let details = common::decide(
        &engine,
        &PolicyInput::new(Request::GetGuestDetails, state()),
    );
    assert!(details.allowed);
}

/// AGT-CC: the settings that harden a container (seccomp, resource limits, groups, LSM labels,
/// cgroup ceilings, a read-only root) as its entry lists them: admitted exactly, and the host
/// cannot drop, loosen or swap them.
#[test]
fn hardening_is_pinned_by_the_entry() {
    let profile = json!({
        "default_action": "SCMP_ACT_ERRNO",
        "default_errno_ret": null,
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": [],
        "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW", "errno_ret": null, "args": []}]
    });
    let mut data = data();
    let entry = &mut data["containers"][0];
    entry["seccomp"] = profile.clone();
    entry["rlimits"] = json!({"RLIMIT_NOFILE": {"soft": 4096, "hard": 8192}, "RLIMIT_NPROC": {"soft": 512, "hard": 512}});
    entry["additional_gids"] = json!([2000]);
    entry["apparmor_profile"] = json!("coffer-app");
    entry["resources"] =
        json!({"memory_limit": 268435456, "pids_limit": 256, "unified": {"memory.high": "200M"}});
    entry["readonly_rootfs"] = json!(true);
    let engine = engine_with(&data);
    let hardened = |c: &mut CreateContainer| {
        c.seccomp = Some(serde_json::from_value(profile.clone()).unwrap());
        c.process.rlimits = vec![
            rlimit("RLIMIT_NOFILE", 4096, 8192),
            rlimit("RLIMIT_NPROC", 256, 512),
        ];
        c.process.user.additional_gids = vec![1000, 2000];
        c.process.apparmor_profile = Some("coffer-app".into());
        c.resources.memory.limit = Some(128 << 20);
        c.resources.pids_limit = Some(256);
        c.resources
            .unified
            .insert("memory.high".into(), "200M".into());
        c.root_readonly = true;
    };
    let decide = |edit: &dyn Fn(&mut CreateContainer)| {
        let mut c = app();
        hardened(&mut c);
        edit(&mut c);
        common::decide(
            &engine,
            &PolicyInput::new(Request::CreateContainer(Box::new(c)), state()),
        )
    };
    let d = decide(&|_| {});
    assert!(d.allowed, "{}", d.reason);
    type Edit<'a> = &'a dyn Fn(&mut CreateContainer);
    let cases: [(&str, Edit, &str); 12] = [
        (
            "seccomp dropped",
            &|c| c.seccomp = None,
            "seccomp profile none differs from the entry's (default SCMP_ACT_ERRNO, 1 rules)",
        ),
        (
            "seccomp loosened",
            &|c| {
                c.seccomp.as_mut().unwrap().default_action = "SCMP_ACT_ALLOW".into();
            },
            "seccomp profile (default SCMP_ACT_ALLOW, 1 rules) differs",
        ),
        (
            "a syscall added to the allow rule",
            &|c| {
                c.seccomp.as_mut().unwrap().syscalls[0]
                    .names
                    .push("ptrace".into());
            },
            "seccomp profile (default SCMP_ACT_ERRNO, 1 rules) differs",
        ),
        (
            "rlimit above its listed bound",
            &|c| c.process.rlimits[0].hard = 65536,
            "rlimit RLIMIT_NOFILE (soft 4096, hard 65536) is above its bound (soft 4096, hard 8192)",
        ),
        (
            "soft rlimit above its bound",
            &|c| c.process.rlimits[1].soft = 1024,
            "rlimit RLIMIT_NPROC (soft 1024, hard 512)",
        ),
        (
            "an unlisted group",
            &|c| c.process.user.additional_gids.push(0),
            "supplementary group 0 is not listed",
        ),
        (
            "AppArmor profile swapped",
            &|c| c.process.apparmor_profile = Some("unconfined".into()),
            "AppArmor profile unconfined differs from coffer-app",
        ),
        (
            "AppArmor profile dropped",
            &|c| c.process.apparmor_profile = None,
            "AppArmor profile null differs from coffer-app",
        ),
        (
            "memory limit above the ceiling",
            &|c| c.resources.memory.limit = Some(1 << 30),
            "memory limit 1073741824 is not within the entry's 268435456",
        ),
        (
            "memory limit removed",
            &|c| c.resources.memory.limit = None,
            "memory limit null is not within the entry's 268435456",
        ),
        (
            "no pids limit",
            &|c| c.resources.pids_limit = Some(-1),
            "pids limit -1 is not within the entry's 256",
        ),
        (
            "a writable root",
            &|c| c.root_readonly = false,
            "the root filesystem is not read-only",
        ),
    ];
    for (name, edit, reason) in cases {
        let d = decide(edit);
        assert!(!d.allowed, "{name}: allowed");
        assert!(d.reason.contains(reason), "{name}: {}", d.reason);
    }
    // The raw setting exactly as listed, or not at all, is fine; another value is not.
    assert!(decide(&|c| c.resources.unified.clear()).allowed);
    let d = decide(&|c| {
        c.resources
            .unified
            .insert("memory.high".into(), "max".into());
    });
    assert!(
        d.reason
            .contains("cgroup setting memory.high=max is not listed"),
        "{}",
        d.reason
    );
    // Exec'd processes get the same process rules.
    let exec_with = |edit: &dyn Fn(&mut Process)| {
        let request = exec("c1", |p| {
            p.user.additional_gids = vec![2000];
            p.apparmor_profile = Some("coffer-app".into());
            edit(p);
        });
        common::decide(&engine, &PolicyInput::new(request, state()))
    };
    assert!(exec_with(&|_| {}).allowed);
    let d = exec_with(&|p| p.rlimits = vec![rlimit("RLIMIT_NOFILE", 1 << 20, 1 << 20)]);
    assert!(
        d.reason.contains("ExecProcess e1: rlimit RLIMIT_NOFILE"),
        "{}",
        d.reason
    );
    let d = exec_with(&|p| p.user.additional_gids.push(4));
    assert!(
        d.reason
            .contains("ExecProcess e1: supplementary group 4 is not listed"),
        "{}",
        d.reason
    );
}

/// POL-01: policy data with wrong types does not load (the agent never serves), never read leniently.
#[test]
fn malformed_policy_data_does_not_load() {
    let cases = [
        (
            json!({"containers": {"app": {}}}),
            "containers must be an array",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x:latest", "args": []}]}),
            "containers[0].image must be a reference pinned by digest",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": "/app/server"}]}),
            "containers[0].args must be an array of strings",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "logs": "yes"}]}),
            "containers[0].logs must be a boolean",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "env": [null]}]}),
            "containers[0].env must be an array of strings",
        ),
        (
            json!({"containers": [
                {"name": "a", "image": IMAGE, "args": []},
                {"name": "a", "image": SIDECAR, "args": []}
            ]}),
            "container name a is listed twice",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "rlimits": {"RLIMIT_NOFILE": 1024}}]}),
            "containers[0].rlimits must map RLIMIT_… names",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "additional_gids": ["wheel"]}]}),
            "containers[0].additional_gids must be an array of numbers",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "seccomp": "runtime/default"}]}),
            "containers[0].seccomp must be a profile",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "resources": {"memory": 1}}]}),
            "containers[0].resources may hold memory_limit and pids_limit",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "apparmor_profile": true}]}),
            "containers[0].apparmor_profile must be a string",
        ),
        (
            json!({"containers": [{"name": "a", "image": IMAGE, "args": [], "readonly_rootfs": "yes"}]}),
            "containers[0].readonly_rootfs must be a boolean",
        ),
    ];
    for (data, reason) in cases {
        let err = Engine::new(
            CONFIDENTIAL_POLICY,
            Some(&data.to_string()),
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, coffer_policies::PolicyError::Data { .. }),
            "{data}: {err}"
        );
        assert!(err.to_string().contains(reason), "{data}: {err}");
    }
}

/// AGT-MISC: RPCs the policy does not know (SetPolicy, SetIPTables, ...) are refused: the input
/// schema has no such kind, so a forged input naming one is denied by the policy itself.
#[test]
fn unknown_kinds_are_refused() {
    let engine = engine_with(&data());
    for kind in [
        "SetPolicy",
        "SetIPTables",
        "UpdateRoutes",
        "AddARPNeighbors",
    ] {
        let input = json!({"version": 1, "request": {"kind": kind}, "state": {"containers": []}});
        let d = engine.decide_json(&input.to_string());
        assert!(!d.allowed, "{kind}");
        assert!(
            d.reason
                .contains(&format!("{kind} is not an RPC this policy allows")),
            "{}",
            d.reason
        );
    }
}

/// POL-03: the record is the only state a policy keeps, and only CreateContainer may set it.
#[test]
fn record_only_on_create_container() {
    let policy = r#"package coffer.policy
decision := {"allow": true, "reason": "", "record": {"entry": "x"}}"#;
    let engine = Engine::new(policy, None, Limits::default()).unwrap();
    let d = common::decide(
        &engine,
        &PolicyInput::new(Request::GetGuestDetails, state()),
    );
    assert!(!d.allowed);
    assert!(
        d.reason
            .contains("record is only valid for CreateContainer")
    );
    let d = common::decide(&engine, &PolicyInput::new(create(|_| {}), state()));
    assert!(d.allowed);
    let bad = r#"package coffer.policy
decision := {"allow": true, "reason": "", "record": {"entry": 1}}"#;
    let engine = Engine::new(bad, None, Limits::default()).unwrap();
    let d = common::decide(&engine, &PolicyInput::new(create(|_| {}), state()));
    assert!(!d.allowed);
    assert!(
        d.reason.contains("record must map strings to strings"),
        "{}",
        d.reason
    );
}

#[test]
fn namespaces_listed_as_host_are_allowed() {
    let mut data = data();
    data["containers"][0]["host_namespaces"] = json!(["network"]);
    let engine = engine_with(&data);
    let mut c = app();
    c.namespaces[1] = Namespace {
        kind: NamespaceType::Network,
        path: Some("/proc/1/ns/net".into()),
    };
    let d = common::decide(
        &engine,
        &PolicyInput::new(Request::CreateContainer(Box::new(c)), state()),
    );
    assert!(d.allowed, "{}", d.reason);
}

/// #8: a container receives only the sealed secrets its entry lists, even where its environment
/// rules would admit any value for the variable.
#[test]
fn sealed_secrets_only_when_listed() {
    let mut data = data();
    data["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("DB=sealed.kbs:///default/secret/db"));
    data["containers"][0]["secrets"] = json!(["kbs:///default/secret/db"]);
    data["containers"][0]["env_names_any_value"] = json!(["HOSTNAME", "TOKEN"]);
    let engine = engine_with(&data);
    let decide = |env: &[&str]| {
        let request = create(|c| {
            c.process.env = env.iter().map(|s| (*s).to_owned()).collect();
        });
        common::decide(&engine, &PolicyInput::new(request, state()))
    };
    let listed = decide(&["PATH=/usr/bin:/bin", "DB=sealed.kbs:///default/secret/db"]);
    assert!(listed.allowed, "{}", listed.reason);
    // An any-value variable cannot smuggle in a secret the entry does not list.
    let other = decide(&[
        "PATH=/usr/bin:/bin",
        "TOKEN=sealed.kbs:///default/secret/other",
    ]);
    assert!(!other.allowed);
    assert!(
        other
            .reason
            .contains("names secret kbs:///default/secret/other"),
        "{}",
        other.reason
    );
    // The sidecar's entry lists no secrets at all.
    let d = common::decide(
        &engine,
        &PolicyInput::new(
            create(|c| {
                c.rootfs.image = Some(SIDECAR.into());
                c.process.args = vec!["/side".into()];
                c.process.cwd = "/".into();
                c.process.user = coffer_policies::User {
                    uid: 0,
                    gid: 0,
                    ..coffer_policies::User::default()
                };
                c.process.env = vec!["DB=sealed.kbs:///default/secret/db".into()];
            }),
            state(),
        ),
    );
    assert!(!d.allowed);
}

/// #8: a sealed file must be listed exactly among its entry's mounts (the destination is pinned:
/// the host cannot make the secret land where the workload would serve or print it) and name a
/// secret the entry lists.
#[test]
fn sealed_files_only_as_listed() {
    let sealed = |destination: &str, source: &str| mount(destination, source, "sealed", &[]);
    let listed = json!({"destination": "/run/secrets/db", "source": "kbs:///default/secret/db", "type": "sealed", "options": []});
    let mut data = data();
    data["containers"][0]["secrets"] = json!(["kbs:///default/secret/db"]);
    data["containers"][0]["mounts"]
        .as_array_mut()
        .unwrap()
        .push(listed.clone());
    let engine = engine_with(&data);
    let decide = |m: coffer_policies::Mount| {
        common::decide(
            &engine,
            &PolicyInput::new(create(|c| c.mounts.push(m)), state()),
        )
    };
    let d = decide(sealed("/run/secrets/db", "kbs:///default/secret/db"));
    assert!(d.allowed, "{}", d.reason);
    // The same secret somewhere else: the host would choose where it lands.
    let d = decide(sealed("/var/www/index.html", "kbs:///default/secret/db"));
    assert!(!d.allowed);
    assert!(
        d.reason.contains("mount /var/www/index.html") && d.reason.contains("is not allowed"),
        "{}",
        d.reason
    );
    // Another secret at the listed destination.
    let d = decide(sealed("/run/secrets/db", "kbs:///default/secret/other"));
    assert!(!d.allowed);
    assert!(
        d.reason
            .contains("names secret kbs:///default/secret/other, which its entry does not list"),
        "{}",
        d.reason
    );
    // A listed mount whose secret the entry forgot to list is still refused.
    let engine = engine_with(&data_without_secrets(listed));
    let d = common::decide(
        &engine,
        &PolicyInput::new(
            create(|c| {
                c.mounts
                    .push(sealed("/run/secrets/db", "kbs:///default/secret/db"))
            }),
            state(),
        ),
    );
    assert!(!d.allowed);
    assert!(d.reason.contains("names secret"), "{}", d.reason);
}

fn data_without_secrets(mount: serde_json::Value) -> serde_json::Value {
    let mut data = data();
    data["containers"][0]["mounts"]
        .as_array_mut()
        .unwrap()
        .push(mount);
    data
}

const MESH: &str = "registry.example/mesh-init@sha256:3333333333333333333333333333333333333333333333333333333333333333";

/// The `app` and `side` entries plus an Istio-style mesh init allowed CAP_NET_ADMIN and CAP_NET_RAW.
fn mesh_data() -> serde_json::Value {
    let mut data = data();
    data["containers"].as_array_mut().unwrap().push(json!({
        "name": "mesh-init",
        "image": MESH,
        "args": ["/bin/iptables", "-t", "nat", "-A", "OUTPUT", "-j", "REDIRECT"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "capabilities": ["CAP_NET_ADMIN", "CAP_NET_RAW"],
        "exec": [["/bin/iptables", "-t", "nat", "-L"]]
    }));
    data
}

/// The mesh init's CreateContainer as `id`, its process holding `caps` in the sets `edit` picks.
fn mesh_create(id: &str, edit: impl FnOnce(&mut Process)) -> Request {
    let mut c = app();
    c.container_id = id.into();
    c.rootfs.image = Some(MESH.into());
    c.process = common::process(&[
        "/bin/iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-j",
        "REDIRECT",
    ]);
    c.process.user.uid = 0;
    c.process.user.gid = 0;
    c.process.env.clear();
    edit(&mut c.process);
    Request::CreateContainer(Box::new(c))
}

/// A listed exec into the mesh init container `init`, holding CAP_NET_ADMIN.
fn mesh_exec() -> Request {
    let mut p = common::process(&["/bin/iptables", "-t", "nat", "-L"]);
    p.user.uid = 0;
    p.user.gid = 0;
    p.env.clear();
    with_caps(&["CAP_NET_ADMIN"])(&mut p);
    Request::ExecProcess {
        container_id: "init".into(),
        exec_id: "e1".into(),
        process: Box::new(p),
    }
}

fn with_caps<'a>(caps: &'a [&'a str]) -> impl FnOnce(&mut Process) + 'a {
    move |p| {
        for cap in caps {
            p.capabilities.bounding.push((*cap).into());
            p.capabilities.effective.push((*cap).into());
            p.capabilities.permitted.push((*cap).into());
        }
    }
}

fn container(id: &str, started: bool, record: &[(&str, &str)]) -> ContainerState {
    ContainerState {
        id: id.into(),
        image_digest: None,
        started,
        record: record
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A state whose `ever_started` remembers containers that are no longer there.
fn removed(containers: Vec<ContainerState>, ever_started: &[&str]) -> SandboxState {
    SandboxState {
        containers,
        ever_started: ever_started.iter().map(|id| (*id).to_owned()).collect(),
    }
}

fn start(id: &str) -> Request {
    Request::StartContainer {
        container_id: id.into(),
    }
}

/// A network set-up case: name, request, the sandbox state it is decided in, and the record of the
/// allow or a part of the denial's reason.
type NetworkCase<'a> = (
    &'a str,
    Request,
    SandboxState,
    Result<&'a [(&'a str, &'a str)], &'a str>,
);

/// AGT-NW, AGT-ORD: protocol v1 has no network RPC, so a container holding CAP_NET_ADMIN or
/// CAP_NET_RAW is the only way to change the pod's network; the policy runs one (listed, pinned)
/// only during set-up: created and started while no container has started (issue #9196's order:
/// the mesh init must not run after, or without, the workload's start being held back).
#[test]
fn network_set_up_table() {
    let engine = engine_with(&mesh_data());
    let mesh = [("entry", "mesh-init"), ("network", "set-up")];
    let app_record = [("entry", "app")];
    let nothing_started = common::sandbox(vec![]);
    let app_started = common::sandbox(vec![container("app1", true, &app_record)]);
    let mesh_created = common::sandbox(vec![container("init", false, &mesh)]);
    let mesh_created_app_started = common::sandbox(vec![
        container("app1", true, &app_record),
        container("init", false, &mesh),
    ]);
    let mesh_started = common::sandbox(vec![container("init", true, &mesh)]);
    let app_created = common::sandbox(vec![container("app1", false, &app_record)]);
    let cases: Vec<NetworkCase> = vec![
        (
            "NET_ADMIN init created before any start",
            mesh_create("init", with_caps(&["CAP_NET_ADMIN"])),
            nothing_started.clone(),
            Ok(&[("entry", "mesh-init"), ("network", "set-up")]),
        ),
        (
            "NET_ADMIN and NET_RAW init created while the app is only created",
            mesh_create("init", with_caps(&["CAP_NET_ADMIN", "CAP_NET_RAW"])),
            app_created.clone(),
            Ok(&[("entry", "mesh-init"), ("network", "set-up")]),
        ),
        (
            "NET_RAW alone (ambient set) before any start",
            mesh_create("init", |p| {
                p.capabilities.ambient.push("CAP_NET_RAW".into())
            }),
            nothing_started.clone(),
            Ok(&[("entry", "mesh-init"), ("network", "set-up")]),
        ),
        (
            "the mesh entry without network capabilities is recorded plainly",
            mesh_create("init", |_| {}),
            app_started.clone(),
            Ok(&[("entry", "mesh-init")]),
        ),
        (
            "NET_ADMIN init created after the app started",
            mesh_create("init", with_caps(&["CAP_NET_ADMIN"])),
            app_started.clone(),
            Err(
                "CreateContainer init: capabilities CAP_NET_ADMIN change the pod's network, allowed only before the first container starts (app1 started)",
            ),
        ),
        (
            "NET_RAW init created after the app started",
            mesh_create("init", with_caps(&["CAP_NET_RAW"])),
            app_started.clone(),
            Err(
                "CreateContainer init: capabilities CAP_NET_RAW change the pod's network, allowed only before the first container starts (app1 started)",
            ),
        ),
        (
            "NET_RAW in the inheritable set only, after the app started",
            mesh_create("init", |p| {
                p.capabilities.inheritable.push("CAP_NET_RAW".into())
            }),
            app_started.clone(),
            Err("capabilities CAP_NET_RAW change the pod's network"),
        ),
        (
            "a second NET_ADMIN container after the mesh init started",
            mesh_create("init2", with_caps(&["CAP_NET_ADMIN"])),
            mesh_started.clone(),
            Err(
                "CreateContainer init2: capabilities CAP_NET_ADMIN change the pod's network, allowed only before the first container starts (init started)",
            ),
        ),
        (
            "NET_ADMIN init started first",
            start("init"),
            mesh_created.clone(),
            Ok(&[]),
        ),
        (
            "NET_ADMIN init created early, started after the app",
            start("init"),
            mesh_created_app_started.clone(),
            Err(
                "StartContainer init: it holds capabilities that change the pod's network, allowed only before the first container starts (app1 started)",
            ),
        ),
        (
            "the app starts after the mesh init",
            start("app1"),
            common::sandbox(vec![
                container("app1", false, &app_record),
                container("init", true, &mesh),
            ]),
            Ok(&[]),
        ),
        (
            "an unlisted NET_ADMIN is refused even before any start",
            create(|c| {
                c.process
                    .capabilities
                    .effective
                    .push("CAP_NET_ADMIN".into())
            }),
            nothing_started.clone(),
            Err(
                "CreateContainer c1: policy entry app: capability CAP_NET_ADMIN (effective set) is not allowed",
            ),
        ),
        (
            "an unlisted NET_RAW is refused even before any start",
            create(|c| c.process.capabilities.bounding.push("CAP_NET_RAW".into())),
            nothing_started.clone(),
            Err("capability CAP_NET_RAW (bounding set) is not allowed"),
        ),
        (
            "listed NET_ADMIN exec into the mesh init while it is the only one started",
            mesh_exec(),
            mesh_started.clone(),
            Ok(&[]),
        ),
        (
            "listed NET_ADMIN exec into the mesh init after the app started",
            mesh_exec(),
            common::sandbox(vec![
                container("app1", true, &app_record),
                container("init", true, &mesh),
            ]),
            Err(
                "ExecProcess e1: capability CAP_NET_ADMIN changes the pod's network, allowed only before the first container starts (app1 started)",
            ),
        ),
        // The host removes the started containers: set-up stays closed (`ever_started`).
        (
            "NET_ADMIN init created after the started app was removed",
            mesh_create("init", with_caps(&["CAP_NET_ADMIN"])),
            removed(vec![], &["app1"]),
            Err(
                "CreateContainer init: capabilities CAP_NET_ADMIN change the pod's network, allowed only before the first container starts (app1 started)",
            ),
        ),
        (
            "NET_ADMIN init created early, started after the app started and was removed",
            start("init"),
            removed(vec![container("init", false, &mesh)], &["app1"]),
            Err(
                "StartContainer init: it holds capabilities that change the pod's network, allowed only before the first container starts (app1 started)",
            ),
        ),
        (
            "listed NET_ADMIN exec into the mesh init after the app started and was removed",
            mesh_exec(),
            removed(vec![container("init", true, &mesh)], &["init", "app1"]),
            Err(
                "ExecProcess e1: capability CAP_NET_ADMIN changes the pod's network, allowed only before the first container starts (app1 started)",
            ),
        ),
        (
            "listed NET_ADMIN exec into the mesh init, the only container ever started",
            mesh_exec(),
            removed(vec![container("init", true, &mesh)], &["init"]),
            Ok(&[]),
        ),
        (
            "the mesh init started and was removed: a new NET_ADMIN container is refused",
            mesh_create("init2", with_caps(&["CAP_NET_ADMIN"])),
            removed(vec![], &["init"]),
            Err("(init started)"),
        ),
    ];
    for (name, request, state, want) in cases {
        let d = common::decide(&engine, &PolicyInput::new(request, state));
        match want {
            Ok(record) => {
                assert!(d.allowed, "{name}: {}", d.reason);
                let want: BTreeMap<String, String> = record
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                assert_eq!(d.record, want, "{name}");
            }
            Err(reason) => {
                assert!(!d.allowed, "{name}: allowed");
                assert!(d.reason.contains(reason), "{name}: {:?}", d.reason);
            }
        }
    }
}

/// AGT-CC ("no devices unless listed"): device cgroup rules may allow the standard character
/// devices and the entry's listed devices, nothing else; deny rules are always fine.
#[test]
fn device_cgroup_rules_follow_listed_devices() {
    let mut data = data();
    data["containers"][0]["devices"] =
        json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
    let engine = engine_with(&data);
    let fuse = Device {
        path: "/dev/fuse".into(),
        kind: "c".into(),
        major: 10,
        minor: 229,
        ..Device::default()
    };
    let allowed = [
        (
            "standard null",
            common::device_rule(true, "c", Some(1), Some(3)),
        ),
        (
            "pseudo-terminals",
            common::device_rule(true, "c", Some(136), None),
        ),
        (
            "the listed device",
            common::device_rule(true, "c", Some(10), Some(229)),
        ),
        ("a deny rule", common::device_rule(false, "a", None, None)),
        (
            "mknod of any block device (no read or write)",
            DeviceRule {
                access: "m".into(),
                ..common::device_rule(true, "b", None, None)
            },
        ),
    ];
    for (name, rule) in allowed {
        let request = create(|c| {
            c.devices.push(fuse.clone());
            c.device_cgroup.push(rule);
        });
        let d = common::decide(&engine, &PolicyInput::new(request, state()));
        assert!(d.allowed, "{name}: {}", d.reason);
    }
    let denied = [
        (
            "every char device",
            common::device_rule(true, "c", None, None),
            "c null:null",
        ),
        (
            "every minor of major 10",
            common::device_rule(true, "c", Some(10), None),
            "c 10:null",
        ),
        (
            "the listed numbers as a block device",
            common::device_rule(true, "b", Some(10), Some(229)),
            "b 10:229",
        ),
        (
            "/dev/mem",
            common::device_rule(true, "c", Some(1), Some(1)),
            "c 1:1",
        ),
    ];
    for (name, rule, shown) in denied {
        let request = create(|c| c.device_cgroup.push(rule));
        let d = common::decide(&engine, &PolicyInput::new(request, state()));
        assert!(!d.allowed, "{name}: allowed");
        assert!(
            d.reason.contains(&format!(
                "device cgroup rule allows {shown} (rwm), which is not a listed device"
            )),
            "{name}: {}",
            d.reason
        );
    }
}

fn create_sandbox(edit: impl FnOnce(&mut coffer_policies::PodNetwork)) -> Request {
    let mut network = common::pod_network();
    edit(&mut network);
    Request::CreateSandbox {
        sandbox_id: "sb".into(),
        hostname: Some("web-0".into()),
        registry_tunnels: vec![],
        published_ports: vec![],
        network: Some(network),
    }
}

/// AGT-NW: the policy data may pin the pod's resolver. With `network.dns_servers` (and
/// `network.dns_searches`) listed, a CreateSandbox naming another DNS server (search domain) is
/// refused with a reason naming it; without a pin, any network the agent validated is allowed.
#[test]
fn network_dns_pin_table() {
    let mut pinned = data();
    pinned["network"] = json!({
        "dns_servers": ["10.96.0.10", "fd00:10:96::a"],
        "dns_searches": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    });
    let mut servers_only = data();
    servers_only["network"] = json!({"dns_servers": ["10.96.0.10"]});
    let mut empty_pin = data();
    empty_pin["network"] = json!({});
    let unpinned = data();
    let no_network = Request::CreateSandbox {
        sandbox_id: "sb".into(),
        hostname: None,
        registry_tunnels: vec![],
        published_ports: vec![],
        network: None,
    };
    let cases: Vec<(&str, &serde_json::Value, Request, Option<&str>)> = vec![
        (
            "listed server and searches",
            &pinned,
            create_sandbox(|_| {}),
            None,
        ),
        (
            "a listed IPv6 server too",
            &pinned,
            create_sandbox(|n| n.dns.servers.push("fd00:10:96::a".into())),
            None,
        ),
        (
            "no DNS at all",
            &pinned,
            create_sandbox(|n| n.dns = Default::default()),
            None,
        ),
        ("no network at all", &pinned, no_network.clone(), None),
        (
            "an unlisted server",
            &pinned,
            create_sandbox(|n| n.dns.servers = vec!["10.96.0.10".into(), "192.0.2.53".into()]),
            Some(
                "CreateSandbox sb: DNS server 192.0.2.53 is not listed in the policy data (network.dns_servers)",
            ),
        ),
        (
            "an unlisted search domain",
            &pinned,
            create_sandbox(|n| n.dns.searches.push("evil.example".into())),
            Some(
                "CreateSandbox sb: DNS search domain evil.example is not listed in the policy data (network.dns_searches)",
            ),
        ),
        (
            "searches are free when only servers are pinned",
            &servers_only,
            create_sandbox(|n| n.dns.searches.push("anything.example".into())),
            None,
        ),
        (
            "servers pinned, one unlisted",
            &servers_only,
            create_sandbox(|n| n.dns.servers = vec!["10.96.0.11".into()]),
            Some("DNS server 10.96.0.11 is not listed"),
        ),
        (
            "an empty pin pins nothing",
            &empty_pin,
            create_sandbox(|n| n.dns.servers = vec!["192.0.2.53".into()]),
            None,
        ),
        (
            "no pin: any validated network",
            &unpinned,
            create_sandbox(|n| n.dns.servers = vec!["192.0.2.53".into()]),
            None,
        ),
        ("no pin, no network", &unpinned, no_network, None),
    ];
    for (name, data, request, denied) in cases {
        let engine = engine_with(data);
        let d = common::decide(&engine, &PolicyInput::new(request, SandboxState::default()));
        match denied {
            None => assert!(d.allowed, "{name}: {}", d.reason),
            Some(reason) => {
                assert!(!d.allowed, "{name} allowed");
                assert!(d.reason.contains(reason), "{name}: {}", d.reason);
            }
        }
    }
    // Both denials at once, sorted into one reason.
    let d = common::decide(
        &engine_with(&pinned),
        &PolicyInput::new(
            create_sandbox(|n| {
                n.dns.servers = vec!["192.0.2.53".into()];
                n.dns.searches = vec!["evil.example".into()];
            }),
            SandboxState::default(),
        ),
    );
    assert_eq!(
        d.reason,
        "CreateSandbox sb: DNS search domain evil.example is not listed in the policy data (network.dns_searches); \
         CreateSandbox sb: DNS server 192.0.2.53 is not listed in the policy data (network.dns_servers)"
    );
}

/// A malformed `network` pin stops the policy from loading, like any other data problem: a
/// misspelt member is not "no pin".
#[test]
fn malformed_network_pin_does_not_load() {
    for (pin, reason) in [
        (json!("10.96.0.10"), "network must be an object"),
        (
            json!({"dns_server": ["10.96.0.10"]}),
            "network.dns_server is not a member this policy knows",
        ),
        (
            json!({"dns_servers": "10.96.0.10"}),
            "network.dns_servers must be an array of strings",
        ),
        (
            json!({"dns_searches": [5]}),
            "network.dns_searches must be an array of strings",
        ),
    ] {
        let mut data = data();
        data["network"] = pin.clone();
        let err = Engine::new(
            CONFIDENTIAL_POLICY,
            Some(&data.to_string()),
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, coffer_policies::PolicyError::Data { .. }),
            "{pin}: {err}"
        );
        assert!(err.to_string().contains(reason), "{pin}: {err}");
    }
}

/// The pod's resolv.conf, hosts and hostname (`pod` mounts, bound read-only by the agent from the
/// files it wrote at CreateSandbox) are standard mounts: no entry lists them. Only the exact
/// pairing without options is.
#[test]
fn pod_files_are_standard_mounts() {
    let pod_files = [
        common::pod_mount("resolv.conf", "/etc/resolv.conf"),
        common::pod_mount("hosts", "/etc/hosts"),
        common::pod_mount("hostname", "/etc/hostname"),
    ];
    let d = decide(create(|c| c.mounts.extend(pod_files.clone())));
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.record.get("entry").map(String::as_str), Some("app"));
    for (m, shown) in [
        (
            common::pod_mount("resolv.conf", "/etc/hosts"),
            "mount /etc/hosts (type pod, source resolv.conf) is not allowed",
        ),
        (
            mount("/etc/hosts", "hosts", "pod", &["rw"]),
            "mount /etc/hosts (type pod, source hosts) is not allowed",
        ),
        (
            common::pod_mount("/etc/passwd", "/etc/hosts"),
            "mount /etc/hosts (type pod, source /etc/passwd) is not allowed",
        ),
        (
            mount("/etc/hosts", "hosts", "bind", &["rbind", "ro"]),
            "mount /etc/hosts (type bind, source hosts) is not allowed",
        ),
    ] {
        let d = decide(create(|c| c.mounts.push(m)));
        assert!(!d.allowed, "{shown}");
        assert!(d.reason.contains(shown), "{}", d.reason);
    }
}
