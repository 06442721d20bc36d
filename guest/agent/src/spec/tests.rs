use super::*;
use serde_json::json;

fn image_rootfs() -> pol::Rootfs {
    pol::Rootfs {
        source: pol::RootfsSource::Image,
        image: Some("registry.example/app@sha256:0123".into()),
    }
}

/// A spec as containerd's CRI plugin writes it for a Kubernetes container (the fields
/// containerd 1.6 sets; the shim has dropped namespace paths and hooks).
fn cri_spec() -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0, 10]},
            "args": ["/app/server", "--port", "8080"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=pod"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                             "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                             "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
                "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_KILL", "CAP_CHOWN"]
            },
            "noNewPrivileges": true,
            "oomScoreAdj": 1000
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/etc/hosts", "type": "pod", "source": "hosts", "options": []}
        ],
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "p1"
        },
        "linux": {
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": 67108864, "swap": 67108864},
                "cpu": {"shares": 2, "quota": 50000, "period": 100000}
            },
            "cgroupsPath": "kubepods-besteffort-pod1.slice:cri-containerd:c1",
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore"],
            "readonlyPaths": ["/proc/bus", "/proc/sys"]
        }
    })
}

fn decode(spec: &Value) -> Result<pol::CreateContainer, SpecError> {
    decode_container("c1", image_rootfs(), &serde_json::to_vec(spec).unwrap())
}

/// Sets `value` at the dotted `path` of `spec` (creating objects on the way; `[i]` indexes).
fn set(spec: &mut Value, path: &str, value: Value) {
    let mut at = spec;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (
                k,
                Some(rest.trim_end_matches(']').parse::<usize>().unwrap()),
            ),
            None => (*part, None),
        };
        let last = i == parts.len() - 1 && index.is_none();
        if last {
            at.as_object_mut().unwrap().insert(key.to_owned(), value);
            return;
        }
        at = at
            .as_object_mut()
            .unwrap()
            .entry(key.to_owned())
            .or_insert_with(|| json!({}));
        if let Some(index) = index {
            at = &mut at[index];
            if i == parts.len() - 1 {
                *at = value;
                return;
            }
        }
    }
}

#[test]
fn a_cri_spec_decodes_with_every_setting() {
    let c = decode(&cri_spec()).unwrap();
    assert_eq!(c.container_id, "c1");
    assert_eq!(c.process.user.additional_gids, [0, 10]);
    assert_eq!(c.process.oom_score_adj, Some(1000));
    assert!(c.process.no_new_privileges);
    // Sets are sorted; absent sets are empty (none held), not "the runtime's default".
    assert_eq!(c.process.capabilities.effective, ["CAP_CHOWN", "CAP_KILL"]);
    assert_eq!(c.process.capabilities.permitted, ["CAP_CHOWN", "CAP_KILL"]);
    assert!(c.process.capabilities.ambient.is_empty());
    // A device rule without type or numbers is "every device".
    assert_eq!(
        c.device_cgroup,
        [pol::DeviceRule {
            allow: false,
            kind: "a".into(),
            major: None,
            minor: None,
            access: "rwm".into()
        }]
    );
    assert_eq!(c.resources.memory.limit, Some(64 << 20));
    assert_eq!(c.resources.cpu.quota, Some(50000));
    assert_eq!(c.annotations.len(), 2);
    assert!(!c.root_readonly && c.seccomp.is_none());
}

/// The specs Coffer's own host side writes decode: `coffer sandbox run`'s (oci-spec's default
/// with rlimits, capabilities, masked paths) as the shim's tests and the VM suites send it.
#[test]
fn the_runtime_default_spec_decodes() {
    let spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
    let c = decode(&spec).unwrap();
    assert_eq!(
        c.process.rlimits,
        [pol::Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            soft: 1024,
            hard: 1024
        }]
    );
    assert!(c.root_readonly);
    assert!(!c.masked_paths.is_empty());
}

/// No field of an incoming spec reaches the runtime unless the model has it: each member the
/// guest does not model, set, is refused by name; at its default it is accepted.
#[test]
fn unmodelled_fields_are_refused_by_name() {
    let cases: &[(&str, Value)] = &[
        ("hooks.prestart", json!([{"path": "/bin/sh"}])),
        ("hooks.createRuntime", json!([{"path": "/bin/sh"}])),
        ("linux.personality", json!({"domain": "LINUX32"})),
        (
            "linux.uidMappings",
            json!([{"containerID": 0, "hostID": 1000, "size": 1}]),
        ),
        (
            "linux.gidMappings",
            json!([{"containerID": 0, "hostID": 1000, "size": 1}]),
        ),
        ("linux.rootfsPropagation", json!("shared")),
        ("linux.intelRdt", json!({"closID": "x"})),
        ("linux.timeOffsets", json!({"monotonic": {"secs": 1}})),
        ("linux.netDevices", json!({"eth1": {"name": "eth1"}})),
        ("linux.memoryPolicy", json!({"mode": "MPOL_BIND"})),
        ("linux.resources.blockIO", json!({"weight": 10})),
        ("linux.resources.network", json!({"classID": 1})),
        ("linux.resources.rdma", json!({"mlx": {"hcaHandles": 1}})),
        ("linux.resources.memory.kernel", json!(1024)),
        ("linux.resources.memory.kernelTCP", json!(1024)),
        ("linux.resources.memory.disableOOMKiller", json!(true)),
        ("linux.resources.memory.useHierarchy", json!(true)),
        ("linux.resources.cpu.realtimeRuntime", json!(950000)),
        ("linux.resources.cpu.realtimePeriod", json!(1000000)),
        ("linux.resources.cpu.burst", json!(1000)),
        ("linux.resources.cpu.idle", json!(1)),
        ("linux.seccomp.listenerPath", json!("/run/seccomp.sock")),
        (
            "process.ioPriority",
            json!({"class": "IOPRIO_CLASS_RT", "priority": 0}),
        ),
        ("process.scheduler", json!({"policy": "SCHED_FIFO"})),
        ("process.execCPUAffinity", json!({"initial": "0"})),
        ("process.commandLine", json!("cmd /c")),
        ("process.user.username", json!("root")),
        ("process.capabilities.extra", json!(["CAP_SYS_ADMIN"])),
        (
            "mounts[0].uidMappings",
            json!([{"containerID": 0, "hostID": 0, "size": 1}]),
        ),
        ("root.extra", json!(1)),
        ("solaris", json!({"milestone": "x"})),
        ("windows", json!({"layerFolders": ["x"]})),
        ("vm", json!({"kernel": {"path": "/k"}})),
        ("zos", json!({"namespaces": [{"type": "pid"}]})),
        // A member a future runtime-spec adds is refused the same way.
        (
            "linux.landlock",
            json!({"ruleset": {"handledAccessFS": ["execute"]}}),
        ),
        ("futureSetting", json!("on")),
    ];
    let base = |field: &str| {
        let mut spec = cri_spec();
        if field.starts_with("linux.seccomp") {
            set(
                &mut spec,
                "linux.seccomp.defaultAction",
                json!("SCMP_ACT_ALLOW"),
            );
        }
        spec
    };
    for (field, value) in cases {
        let mut spec = base(field);
        set(&mut spec, field, value.clone());
        let err = decode(&spec).expect_err(field);
        // Named down to the innermost member that is set.
        let SpecError::Unsupported { field: named } = &err else {
            panic!("{field}: {err}");
        };
        assert!(
            named == field || named.starts_with(&format!("{field}.")),
            "{field}: {err}"
        );
        assert!(err.to_string().contains(field), "{err}");
        // The same member at its default is no setting at all.
        let mut spec = base(field);
        let default = match value {
            Value::Array(_) => json!([]),
            Value::Object(_) => json!({}),
            Value::String(_) => json!(""),
            Value::Bool(_) => json!(false),
            Value::Number(_) => json!(0),
            Value::Null => Value::Null,
        };
        set(&mut spec, field, default);
        decode(&spec).unwrap_or_else(|e| panic!("{field} at its default: {e}"));
    }
}

#[test]
fn modelled_fields_with_values_the_guest_cannot_run_are_refused() {
    let cases: &[(&str, Value, &str)] = &[
        (
            "process.args",
            json!([]),
            "process.args must name a program",
        ),
        (
            "process.cwd",
            json!("relative"),
            "process.cwd must be an absolute path",
        ),
        (
            "process.capabilities.bounding",
            json!(["CAP_NOPE"]),
            "process.capabilities.bounding[0]",
        ),
        (
            "process.capabilities.bounding",
            json!(["SYS_ADMIN"]),
            "must be a capability name",
        ),
        (
            "process.rlimits",
            json!([{"type": "RLIMIT_NOFILE", "soft": 2, "hard": 1}]),
            "soft limit above",
        ),
        (
            "process.rlimits",
            json!([{"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}, {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}]),
            "a second time",
        ),
        (
            "process.rlimits",
            json!([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]),
            "process.rlimits[0].type",
        ),
        ("process.oomScoreAdj", json!(-1001), "-1000..=1000"),
        (
            "process.user.uid",
            json!(-1),
            "process.user.uid must be an integer",
        ),
        ("process.user.umask", json!(0o1777), "at most 0o777"),
        (
            "linux.namespaces",
            json!([{"type": "pid"}, {"type": "pid", "path": "/proc/1/ns/pid"}]),
            "lists the pid namespace twice",
        ),
        (
            "linux.namespaces",
            json!([{"type": "bogus"}]),
            "is not a namespace type",
        ),
        (
            "linux.resources.unified",
            json!({"../../../proc/sys/kernel/core_pattern": "|/x"}),
            "is not a cgroup v2 controller file",
        ),
        (
            "linux.resources.unified",
            json!({"cgroup.procs": "1"}),
            "is not a cgroup v2 controller file",
        ),
        (
            "linux.resources.unified",
            json!({"memory./x": "1"}),
            "is not a cgroup v2 controller file",
        ),
        (
            "linux.resources.devices",
            json!([{"allow": true, "type": "c", "major": -1, "access": "rwm"}]),
            "must not be negative",
        ),
        (
            "linux.resources.devices",
            json!([{"allow": true, "type": "c", "access": "rwx"}]),
            "must combine r, w and m",
        ),
        (
            "linux.resources.devices",
            json!([{"allow": true, "type": "c", "access": ""}]),
            "must combine r, w and m",
        ),
        (
            "linux.devices",
            json!([{"path": "/dev/x", "type": "q"}]),
            "must be c, b, u or p",
        ),
        (
            "linux.seccomp",
            json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
            "not a seccomp action",
        ),
        (
            "linux.seccomp",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}),
            "architectures[0]",
        ),
        (
            "linux.seccomp",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}]}),
            "must be in 0..=5",
        ),
        (
            "linux.sysctl",
            json!({"kernel.x": 1}),
            "linux.sysctl.kernel.x must be a string",
        ),
        (
            "mounts",
            json!([{"type": "tmpfs"}]),
            "mounts[0].destination is required",
        ),
    ];
    for (field, value, expected) in cases {
        let mut spec = cri_spec();
        set(&mut spec, field, value.clone());
        let err = decode(&spec).expect_err(field).to_string();
        assert!(err.contains(expected), "{field}: {err}");
    }
    assert!(
        decode_container("c1", image_rootfs(), br#"{"ociVersion": "1.0.2"}"#)
            .unwrap_err()
            .to_string()
            .contains("process is required")
    );
}

/// The guest chooses the rootfs path and the cgroup: whatever the host wrote there, the rendered
/// document has the guest's.
#[test]
fn root_path_and_cgroup_are_the_guests() {
    let mut spec = cri_spec();
    set(&mut spec, "root.path", json!("/"));
    set(&mut spec, "linux.cgroupsPath", json!("/../../agent"));
    let c = decode(&spec).unwrap();
    let config = render_container(&c, "/run/coffer/c1/rootfs", "coffer/c1");
    assert_eq!(config["root"]["path"], "/run/coffer/c1/rootfs");
    assert_eq!(config["linux"]["cgroupsPath"], "coffer/c1");
}

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        if self.coin() { Some(f(self)) } else { None }
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn word(&mut self) -> String {
        let len = 1 + self.below(8);
        (0..len)
            .map(|_| char::from(b'a' + u8::try_from(self.below(26)).unwrap()))
            .collect()
    }
    fn list<T>(&mut self, max: usize, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.below(max + 1);
        (0..n).map(|_| f(self)).collect()
    }
    fn subset(&mut self, from: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = from
            .iter()
            .filter(|_| self.coin())
            .map(|s| (*s).to_owned())
            .collect();
        out.sort();
        out
    }
}

const CAPS: [&str; 8] = [
    "CAP_CHOWN",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
];
const RLIMITS: [&str; 5] = [
    "RLIMIT_NOFILE",
    "RLIMIT_NPROC",
    "RLIMIT_CORE",
    "RLIMIT_FSIZE",
    "RLIMIT_STACK",
];

fn random_process(rng: &mut Rng) -> pol::Process {
    let mut kinds = RLIMITS.to_vec();
    let rlimits = rng.list(3, |rng| {
        let kind = kinds.remove(rng.below(kinds.len()));
        let hard = rng.next() >> rng.below(64);
        let soft = hard >> rng.below(8);
        pol::Rlimit {
            kind: kind.to_owned(),
            soft,
            hard,
        }
    });
    pol::Process {
        args: std::iter::once(format!("/bin/{}", rng.word()))
            .chain(rng.list(3, Rng::word))
            .collect(),
        env: rng.list(3, |rng| format!("{}={}", rng.word(), rng.word())),
        cwd: format!("/{}", rng.word()),
        user: pol::User {
            uid: u32::try_from(rng.next() >> 33).unwrap(),
            gid: u32::try_from(rng.next() >> 33).unwrap(),
            additional_gids: rng.list(3, |rng| u32::try_from(rng.next() >> 40).unwrap()),
            umask: rng.maybe(|rng| u32::try_from(rng.below(0o1000)).unwrap()),
        },
        terminal: rng.coin(),
        capabilities: pol::Capabilities {
            bounding: rng.subset(&CAPS),
            effective: rng.subset(&CAPS),
            permitted: rng.subset(&CAPS),
            inheritable: rng.subset(&CAPS),
            ambient: rng.subset(&CAPS),
        },
        no_new_privileges: rng.coin(),
        rlimits,
        oom_score_adj: rng.maybe(|rng| i32::try_from(rng.below(2001)).unwrap() - 1000),
        apparmor_profile: rng.maybe(Rng::word),
        selinux_label: rng.maybe(Rng::word),
        console_size: rng.maybe(|rng| pol::ConsoleSize {
            height: u32::try_from(rng.below(200)).unwrap(),
            width: u32::try_from(rng.below(400)).unwrap(),
        }),
    }
}

fn random_seccomp(rng: &mut Rng) -> pol::Seccomp {
    const ACTIONS: [&str; 4] = [
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_LOG",
    ];
    pol::Seccomp {
        default_action: rng.pick(&ACTIONS).to_owned(),
        default_errno_ret: rng.maybe(|rng| u32::try_from(rng.below(140)).unwrap()),
        architectures: rng.subset(&["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        flags: rng.subset(&["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]),
        syscalls: rng.list(3, |rng| pol::SeccompRule {
            names: (0..=rng.below(2)).map(|_| rng.word()).collect(),
            action: rng.pick(&ACTIONS).to_owned(),
            errno_ret: rng.maybe(|rng| u32::try_from(rng.below(140)).unwrap()),
            args: rng.list(2, |rng| pol::SeccompArg {
                index: u32::try_from(rng.below(6)).unwrap(),
                value: rng.next(),
                value_two: rng.next() >> rng.below(64),
                op: rng
                    .pick(&[
                        "SCMP_CMP_EQ",
                        "SCMP_CMP_NE",
                        "SCMP_CMP_MASKED_EQ",
                        "SCMP_CMP_GT",
                    ])
                    .to_owned(),
            }),
        }),
    }
}

fn random_container(rng: &mut Rng) -> pol::CreateContainer {
    let mut ns_kinds = pol::NamespaceType::ALL.to_vec();
    let namespaces = rng.list(5, |rng| pol::Namespace {
        kind: ns_kinds.remove(rng.below(ns_kinds.len())),
        path: rng.maybe(|rng| format!("/proc/1/ns/{}", rng.word())),
    });
    let limit = |rng: &mut Rng| i64::try_from(rng.next() >> 2).unwrap() - (1 << 61);
    pol::CreateContainer {
        container_id: "c1".into(),
        rootfs: image_rootfs(),
        process: random_process(rng),
        namespaces,
        mounts: rng.list(4, |rng| pol::Mount {
            destination: format!("/{}", rng.word()),
            source: if rng.coin() {
                rng.word()
            } else {
                String::new()
            },
            kind: if rng.coin() {
                rng.pick(&["bind", "tmpfs", "proc", "pod", "sealed"])
                    .to_owned()
            } else {
                String::new()
            },
            options: rng.list(3, Rng::word),
        }),
        devices: rng.list(2, |rng| pol::Device {
            path: format!("/dev/{}", rng.word()),
            kind: rng.pick(&["c", "b", "u", "p"]).to_owned(),
            major: i64::try_from(rng.below(300)).unwrap(),
            minor: i64::try_from(rng.below(300)).unwrap(),
            file_mode: rng.maybe(|rng| u32::try_from(rng.below(0o1000)).unwrap()),
            uid: rng.maybe(|rng| u32::try_from(rng.below(70000)).unwrap()),
            gid: rng.maybe(|rng| u32::try_from(rng.below(70000)).unwrap()),
        }),
        device_cgroup: rng.list(3, |rng| pol::DeviceRule {
            allow: rng.coin(),
            kind: rng.pick(&["a", "c", "b"]).to_owned(),
            major: rng.maybe(|rng| i64::try_from(rng.below(300)).unwrap()),
            minor: rng.maybe(|rng| i64::try_from(rng.below(300)).unwrap()),
            access: rng.pick(&["r", "w", "m", "rw", "rwm", "mr"]).to_owned(),
        }),
        hooks_present: false,
        sysctls: rng
            .list(2, |rng| (format!("net.{}", rng.word()), rng.word()))
            .into_iter()
            .collect(),
        masked_paths: rng.list(3, |rng| format!("/proc/{}", rng.word())),
        readonly_paths: rng.list(3, |rng| format!("/proc/{}", rng.word())),
        hostname: rng.maybe(Rng::word),
        domainname: rng.maybe(Rng::word),
        root_readonly: rng.coin(),
        annotations: rng
            .list(3, |rng| (format!("io.x/{}", rng.word()), rng.word()))
            .into_iter()
            .collect(),
        seccomp: rng.maybe(random_seccomp),
        resources: pol::Resources {
            memory: pol::MemoryLimits {
                limit: rng.maybe(limit),
                reservation: rng.maybe(limit),
                swap: rng.maybe(limit),
                swappiness: rng.maybe(|rng| u64::try_from(rng.below(101)).unwrap()),
            },
            cpu: pol::CpuLimits {
                shares: rng.maybe(|rng| u64::try_from(rng.below(262_144)).unwrap()),
                quota: rng.maybe(limit),
                period: rng.maybe(|rng| rng.next() >> 20),
                cpus: rng.maybe(|rng| format!("0-{}", rng.below(8))),
                mems: rng.maybe(|_| "0".to_owned()),
            },
            pids_limit: rng.maybe(limit),
            hugepage_limits: rng.list(2, |rng| pol::HugepageLimit {
                page_size: rng.pick(&["2MB", "1GB"]).to_owned(),
                limit: limit(rng),
            }),
            unified: rng
                .list(2, |rng| {
                    (
                        format!("{}.{}", rng.pick(&["memory", "pids", "cpu"]), rng.word()),
                        rng.word(),
                    )
                })
                .into_iter()
                .collect(),
        },
        mount_label: rng.maybe(Rng::word),
    }
}

/// What runs is what was authorized: for random values of the model, the `config.json`
/// rendered from it, read as libcontainer reads it (`oci_spec`), decodes back to exactly that
/// value, with the guest's root path and cgroup.
#[test]
fn rendered_config_is_the_authorized_value() {
    for seed in 1..=500u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let authorized = random_container(&mut rng);
        let rendered = render_container(&authorized, "/run/coffer/c1/rootfs", "coffer/c1");
        let bytes = serde_json::to_vec(&rendered).unwrap();
        let runtime: oci_spec::runtime::Spec = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("seed {seed}: libcontainer cannot read it: {e}"));
        let seen = serde_json::to_vec(&runtime).unwrap();
        let back = decode_container("c1", image_rootfs(), &seen)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(back, authorized, "seed {seed}");
        assert_eq!(
            runtime.root().as_ref().map(|r| r.path().clone()),
            Some("/run/coffer/c1/rootfs".into()),
            "seed {seed}"
        );
        assert_eq!(
            runtime
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().clone()),
            Some("coffer/c1".into()),
            "seed {seed}"
        );
        // An exec's process document likewise.
        let process = render_process(&authorized.process);
        let runtime: oci_spec::runtime::Process =
            serde_json::from_value(process).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let back = decode_process(&serde_json::to_vec(&runtime).unwrap())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(back, authorized.process, "seed {seed}");
    }
}

/// Capabilities the model says are none are rendered as empty sets, which the runtime applies
/// as "drop everything" (an absent set would keep its own default, all of root's).
#[test]
fn empty_capability_sets_are_rendered_explicitly() {
    let mut spec = cri_spec();
    set(&mut spec, "process.capabilities", Value::Null);
    let c = decode(&spec).unwrap();
    let rendered = render_container(&c, "/r", "coffer/c1");
    assert_eq!(
        rendered["process"]["capabilities"],
        json!({"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []})
    );
    let runtime: oci_spec::runtime::Spec = serde_json::from_value(rendered).unwrap();
    let caps = runtime
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert_eq!(caps.bounding().as_ref().map(|s| s.len()), Some(0));
}

#[test]
fn exec_processes_are_closed_too() {
    let ok = json!({"args": ["/app/health"], "cwd": "/", "user": {"uid": 1000, "gid": 1000}});
    let p = decode_process(&serde_json::to_vec(&ok).unwrap()).unwrap();
    assert_eq!(p.args, ["/app/health"]);
    let mut bad = ok.clone();
    set(&mut bad, "ioPriority", json!({"class": "IOPRIO_CLASS_RT"}));
    assert_eq!(
        decode_process(&serde_json::to_vec(&bad).unwrap()).unwrap_err(),
        SpecError::Unsupported {
            field: "process.ioPriority.class".into()
        }
    );
}

/// REG-04 (`Env` injection): the environment an image config or the host supplies reaches the
/// process as the exact list the policy judged. Entries execve cannot pass as they are (a NUL
/// would cut the entry, `A=b\0LD_PRELOAD=…` read as `A=b` by the process) or that name no
/// variable are refused by field, for containers and exec'd processes; newlines, `=` in values
/// and duplicate names are legal bytes of an entry and are rendered exactly, in order.
#[test]
fn reg04_environment_is_validated_and_passed_as_the_exact_list() {
    let refused: &[(&str, Value, &str)] = &[
        (
            "process.env",
            json!(["PATH=/bin", "LD_PRELOAD"]),
            "process.env[1] must be NAME=VALUE",
        ),
        (
            "process.env",
            json!(["=/tmp/x.so"]),
            "process.env[0] names no variable",
        ),
        (
            "process.env",
            json!(["MODE=prod\u{0}LD_PRELOAD=/tmp/x.so"]),
            "process.env[0] contains a NUL byte",
        ),
        (
            "process.env",
            json!(["\u{0}=x"]),
            "process.env[0] contains a NUL byte",
        ),
        (
            "process.args",
            json!(["/bin/sh", "-c\u{0}id"]),
            "process.args[1] contains a NUL byte",
        ),
    ];
    for (path, value, expected) in refused {
        let mut spec = cri_spec();
        set(&mut spec, path, value.clone());
        let err = decode(&spec).unwrap_err().to_string();
        assert!(err.contains(expected), "{value}: {err}");
        // The same process document through ExecProcess.
        let process = serde_json::to_vec(&spec["process"]).unwrap();
        let err = decode_process(&process).unwrap_err().to_string();
        assert!(err.contains(expected), "exec {value}: {err}");
    }

    let exact = vec![
        "MODE=prod\nLD_PRELOAD=/tmp/x.so".to_owned(),
        "A=b=c".to_owned(),
        "EMPTY=".to_owned(),
        "MODE=prod".to_owned(),
        "MODE=debug".to_owned(),
        "PATH=/usr/bin:/bin".to_owned(),
    ];
    let mut spec = cri_spec();
    set(&mut spec, "process.env", json!(exact));
    let authorized = decode(&spec).unwrap();
    assert_eq!(authorized.process.env, exact);
    let rendered = render_container(&authorized, "/run/coffer/c1/rootfs", "coffer/c1");
    let runtime: oci_spec::runtime::Spec =
        serde_json::from_slice(&serde_json::to_vec(&rendered).unwrap()).unwrap();
    let seen = runtime.process().as_ref().and_then(|p| p.env().clone());
    assert_eq!(seen, Some(exact.clone()), "what the runtime reads");
    let process: oci_spec::runtime::Process =
        serde_json::from_value(render_process(&authorized.process)).unwrap();
    assert_eq!(process.env().clone(), Some(exact), "an exec's environment");
}
