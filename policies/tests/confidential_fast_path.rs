//! The native fast path of `confidential.rego` against the interpreter, on generated inputs.
//!
//! The fast path may only allow what the Rego allows, recording exactly what it records
//! (`Engine::decide_fast_path`). This test generates policy data and requests around every rule's
//! edge — near-miss copies of listed containers, one or two fields changed, resolver pins and the
//! DNS a CreateSandbox names — and checks that property on each; it also checks that the fast
//! path is not vacuous (it answers nearly every request the Rego allows). Deterministic: a fixed seed, so a failure reproduces.
//! (AGT-CC, AGT-EX, AGT-ST, AGT-NW, AGT-ORD, POL-03.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test-only file: panics are failures

mod common;

use std::collections::BTreeMap;

use coffer_policies::{
    CONFIDENTIAL_POLICY, Capabilities, ContainerState, CreateContainer, Device, DeviceRule, Engine,
    Limits, Mount, Namespace, NamespaceType, PolicyInput, Process, Request, RootfsSource,
    SandboxState, User,
};
use serde_json::{Value, json};

/// splitmix64: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A random subset, in the pool's order.
    fn subset<T: Clone>(&mut self, items: &[T], percent: u64) -> Vec<T> {
        items
            .iter()
            .filter(|_| self.chance(percent))
            .cloned()
            .collect()
    }
}

const IMAGES: [&str; 3] = [
    "registry.example/a@sha256:1111111111111111111111111111111111111111111111111111111111111111",
    "registry.example/b@sha256:2222222222222222222222222222222222222222222222222222222222222222",
    "registry.example/c@sha256:3333333333333333333333333333333333333333333333333333333333333333",
];
const NAMES: [&str; 4] = ["app", "b", "zed", "a"];
const ARGS: [&[&str]; 4] = [
    &["/app"],
    &["/app", "--x"],
    &["sh", "-c", "echo hi"],
    &["sh -c", "echo", "hi"],
];
const ENV: [&str; 6] = [
    "PATH=/bin",
    "MODE=prod",
    "S=sealed.kbs:///r/t/a",
    "É=sealed.kbs:///r/t/a",
    "NOEQUALS",
    "K=v=w",
];
const REQUEST_ENV: [&str; 9] = [
    "HOSTNAME=pod",
    "X",
    "É=v",
    "A=b=sealed.kbs:///r/t/b",
    "S=sealed.kbs:///r/t/b",
    "Ü=sealed.kbs:///r/t/a",
    "MODE=dev",
    "=sealed.kbs:///r/t/a",
    "HOSTNAME",
];
const ANY_VALUE: [&str; 4] = ["HOSTNAME", "É", "X", "Ü"];
const SECRETS: [&str; 2] = ["kbs:///r/t/a", "kbs:///r/t/b"];
const CAPS: [&str; 5] = [
    "CAP_CHOWN",
    "CAP_SYS_NICE",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SYS_ADMIN",
];
const ENTRY_CAPS: [&str; 3] = ["CAP_SYS_NICE", "CAP_NET_ADMIN", "CAP_NET_RAW"];
const HOST_NAMESPACES: [&str; 3] = ["pid", "mount", "network"];
const EXECS: [&[&str]; 3] = [&["/health"], &["sh", "-c", "echo hi"], &["/app"]];
const CONTAINER_IDS: [&str; 3] = ["c1", "c2", "c3"];
const DNS_SERVERS: [&str; 4] = ["10.96.0.10", "fd00:10:96::a", "192.0.2.53", "10.96.0.1"];
const DNS_SEARCHES: [&str; 4] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
    "evil.example",
];

fn argv(rng: &mut Rng, pool: &[&[&str]]) -> Vec<String> {
    let chosen: &[&str] = pool[rng.below(pool.len())];
    strings(chosen)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Mounts an entry may list and a request may carry.
fn extra_mounts() -> Vec<Mount> {
    vec![
        common::mount("/data", "tmpfs", "tmpfs", &["nosuid", "size=1m"]),
        common::mount("/data", "tmpfs", "tmpfs", &["size=1m", "nosuid"]),
        common::mount("/run/secret", "kbs:///r/t/a", "sealed", &[]),
        common::mount("/run/other", "kbs:///r/t/b", "sealed", &[]),
        common::mount("/host", "/etc", "bind", &["rbind", "ro"]),
        common::mount("/proc", "proc", "proc", &["bind"]),
        common::mount("/sys", "sysfs", "sysfs", &["nosuid"]),
        common::mount("/sys/fs/cgroup", "cgroup", "cgroup2", &["ro"]),
        common::mount("/dev/shm", "shm", "shm", &[]),
        common::mount("/id", "spiffe", "identity", &[]),
        common::pod_mount("hosts", "/etc/hosts"),
        common::pod_mount("resolv.conf", "/etc/resolv.conf"),
        common::pod_mount("resolv.conf", "/etc/hosts"),
        common::mount("/etc/hostname", "hostname", "pod", &["ro"]),
    ]
}

fn mount_json(m: &Mount) -> Value {
    json!({"destination": m.destination, "source": m.source, "type": m.kind, "options": m.options})
}

fn fuse() -> Device {
    Device {
        path: "/dev/fuse".into(),
        kind: "c".into(),
        major: 10,
        minor: 229,
    }
}

/// One policy entry, each optional member present or not.
fn entry(rng: &mut Rng, name: &str) -> Value {
    let mut e = serde_json::Map::new();
    e.insert("name".into(), json!(name));
    e.insert("image".into(), json!(rng.pick(&IMAGES[..2])));
    e.insert("args".into(), json!(argv(rng, &ARGS)));
    let mut optional = |rng: &mut Rng, key: &str, value: Value| {
        if rng.chance(60) {
            e.insert(key.into(), value);
        }
    };
    let v = json!(rng.subset(&ENV, 50));
    optional(rng, "env", v);
    let v = json!(rng.subset(&ANY_VALUE, 40));
    optional(rng, "env_names_any_value", v);
    let v = json!(rng.subset(&SECRETS, 50));
    optional(rng, "secrets", v);
    let v = json!(rng.pick(&["/", "/app"]));
    optional(rng, "cwd", v);
    let v = rng
        .pick(&[
            json!({"uid": 0, "gid": 0}),
            json!({"uid": 1000, "gid": 1000}),
        ])
        .clone();
    optional(rng, "user", v);
    let v = json!(rng.chance(30));
    optional(rng, "terminal", v);
    let v = json!(rng.subset(&ENTRY_CAPS, 35));
    optional(rng, "capabilities", v);
    let v = json!(rng.chance(30));
    optional(rng, "allow_privilege_escalation", v);
    let v = json!(rng.subset(&HOST_NAMESPACES, 25));
    optional(rng, "host_namespaces", v);
    let v = Value::Array(
        rng.subset(&extra_mounts(), 30)
            .iter()
            .map(mount_json)
            .collect(),
    );
    optional(rng, "mounts", v);
    let v = if rng.chance(50) {
        json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}])
    } else {
        json!([])
    };
    optional(rng, "devices", v);
    let v = if rng.chance(50) {
        json!({"net.ipv4.ip_forward": "1"})
    } else {
        json!({})
    };
    optional(rng, "sysctls", v);
    let v = json!(
        rng.subset(&EXECS, 50)
            .iter()
            .map(|a| strings(a))
            .collect::<Vec<_>>()
    );
    optional(rng, "exec", v);
    let v = json!(rng.chance(60));
    optional(rng, "logs", v);
    let v = json!(rng.chance(40));
    optional(rng, "stdin", v);
    Value::Object(e)
}

fn policy_data(rng: &mut Rng) -> Value {
    let count = 1 + rng.below(3);
    let mut names = NAMES.to_vec();
    let entries: Vec<Value> = (0..count)
        .map(|_| {
            let name = names.remove(rng.below(names.len()));
            entry(rng, name)
        })
        .collect();
    let mut data = json!({ "containers": entries });
    // The optional resolver pin, each list present or not.
    if rng.chance(50) {
        let mut pin = serde_json::Map::new();
        if rng.chance(70) {
            pin.insert("dns_servers".into(), json!(rng.subset(&DNS_SERVERS, 60)));
        }
        if rng.chance(50) {
            pin.insert("dns_searches".into(), json!(rng.subset(&DNS_SEARCHES, 60)));
        }
        data["network"] = Value::Object(pin);
    }
    data
}

/// A CreateSandbox whose DNS is drawn from the pools the pins are (so often, not always, listed).
fn create_sandbox(rng: &mut Rng) -> Request {
    let network = rng.chance(85).then(|| {
        let mut network = common::pod_network();
        network.dns.servers = strings(&rng.subset(&DNS_SERVERS, 40));
        network.dns.searches = strings(&rng.subset(&DNS_SEARCHES, 40));
        network
    });
    Request::CreateSandbox {
        sandbox_id: "sb".into(),
        hostname: Some("web-0".into()),
        registry_tunnels: vec![],
        published_ports: vec![],
        network,
    }
}

fn entry_strings(e: &Value, key: &str) -> Vec<String> {
    e.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn entry_mounts(e: &Value) -> Vec<Mount> {
    e.get("mounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    common::mount(
                        m["destination"].as_str().unwrap(),
                        m["source"].as_str().unwrap(),
                        m["type"].as_str().unwrap(),
                        &m["options"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|o| o.as_str().unwrap())
                            .collect::<Vec<_>>(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A process as the entry `e` would list it (its argv, user, cwd, env, capabilities).
fn process_for(rng: &mut Rng, e: &Value, args: Vec<String>) -> Process {
    let user = e.get("user").map_or(User { uid: 0, gid: 0 }, |u| User {
        uid: u["uid"].as_u64().unwrap() as u32,
        gid: u["gid"].as_u64().unwrap() as u32,
    });
    let mut caps = vec!["CAP_CHOWN".to_owned()];
    caps.extend(rng.subset(&entry_strings(e, "capabilities"), 60));
    let mut env = rng.subset(&entry_strings(e, "env"), 70);
    for name in rng.subset(&entry_strings(e, "env_names_any_value"), 50) {
        env.push(format!("{name}=anything"));
    }
    Process {
        args,
        env,
        cwd: e
            .get("cwd")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned(),
        user,
        terminal: false,
        capabilities: Capabilities {
            bounding: caps.clone(),
            effective: caps.clone(),
            permitted: caps,
            inheritable: vec![],
            ambient: vec![],
        },
        no_new_privileges: true,
    }
}

/// One random change to a process.
fn mutate_process(rng: &mut Rng, p: &mut Process) {
    match rng.below(9) {
        0 => p.args = argv(rng, &ARGS),
        1 => p.env.push((*rng.pick(&REQUEST_ENV)).to_owned()),
        2 => p.env.push((*rng.pick(&ENV)).to_owned()),
        3 => p.cwd = (*rng.pick(&["/", "/app", "/tmp"])).to_owned(),
        4 => {
            p.user = *rng.pick(&[
                User { uid: 0, gid: 0 },
                User {
                    uid: 1000,
                    gid: 1000,
                },
                User { uid: 1000, gid: 0 },
            ])
        }
        5 => p.terminal = !p.terminal,
        6 => p.no_new_privileges = !p.no_new_privileges,
        7 => {
            let cap = (*rng.pick(&CAPS)).to_owned();
            match rng.below(5) {
                0 => p.capabilities.bounding.push(cap),
                1 => p.capabilities.effective.push(cap),
                2 => p.capabilities.permitted.push(cap),
                3 => p.capabilities.inheritable.push(cap),
                _ => p.capabilities.ambient.push(cap),
            }
        }
        _ => {
            if !p.env.is_empty() {
                let i = rng.below(p.env.len());
                p.env.remove(i);
            }
        }
    }
}

/// A CreateContainer built from an entry (so it is often admitted), then changed a little.
fn create(rng: &mut Rng, data: &Value) -> CreateContainer {
    let entries = data["containers"].as_array().unwrap();
    let e = rng.pick(entries);
    let args = e["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let process = process_for(rng, e, args);
    let mut c = common::image_container(e["image"].as_str().unwrap(), process);
    c.container_id = (*rng.pick(&CONTAINER_IDS)).to_owned();
    c.process.terminal = e.get("terminal").and_then(Value::as_bool) == Some(true);
    c.mounts.extend(rng.subset(&entry_mounts(e), 60));
    if rng.chance(20) {
        c.devices.push(fuse());
    }
    if rng.chance(35) {
        let rules = [
            common::device_rule(true, "c", Some(1), Some(3)),
            common::device_rule(true, "c", Some(136), None),
            common::device_rule(true, "c", Some(10), Some(229)),
            common::device_rule(true, "b", Some(10), Some(229)),
            common::device_rule(true, "a", None, None),
            common::device_rule(true, "c", Some(1), None),
            common::device_rule(true, "c", Some(1), Some(1)),
            common::device_rule(false, "a", None, None),
            DeviceRule {
                access: "m".into(),
                ..common::device_rule(true, "b", None, None)
            },
            DeviceRule {
                access: "mr".into(),
                ..common::device_rule(true, "c", None, None)
            },
        ];
        c.device_cgroup.push(rng.pick(&rules).clone());
    }
    if rng.chance(15) {
        c.sysctls.insert(
            "net.ipv4.ip_forward".into(),
            (*rng.pick(&["1", "0"])).into(),
        );
    }
    for _ in 0..rng.below(3) {
        match rng.below(12) {
            0..=4 => mutate_process(rng, &mut c.process),
            5 => c.rootfs.image = Some((*rng.pick(&IMAGES)).to_owned()),
            6 => match rng.below(3) {
                0 => c.rootfs.source = RootfsSource::Uploaded,
                1 => c.rootfs.image = None,
                _ => c.hooks_present = true,
            },
            7 => {
                let kind = *rng.pick(&[
                    NamespaceType::Pid,
                    NamespaceType::Mount,
                    NamespaceType::Network,
                ]);
                if rng.chance(50) {
                    c.namespaces.retain(|ns| ns.kind != kind);
                } else {
                    c.namespaces.push(Namespace {
                        kind,
                        path: Some("/proc/1/ns/x".into()),
                    });
                }
            }
            8 => c.mounts.push(rng.pick(&extra_mounts()).clone()),
            9 => {
                if !c.mounts.is_empty() {
                    let i = rng.below(c.mounts.len());
                    c.mounts.remove(i);
                }
            }
            10 => {
                if rng.chance(50) {
                    let i = rng.below(c.masked_paths.len());
                    c.masked_paths.remove(i);
                } else {
                    let i = rng.below(c.readonly_paths.len());
                    c.readonly_paths.remove(i);
                }
            }
            _ => {
                c.sysctls
                    .insert("kernel.shm_rmid_forced".into(), "1".into());
            }
        }
    }
    c
}

fn state(rng: &mut Rng) -> SandboxState {
    let mut containers = Vec::new();
    for id in CONTAINER_IDS {
        if !rng.chance(70) {
            continue;
        }
        let mut record = BTreeMap::new();
        if rng.chance(85) {
            record.insert("entry".to_owned(), (*rng.pick(&NAMES)).to_owned());
        }
        if rng.chance(15) {
            record.insert("network".to_owned(), "set-up".to_owned());
        }
        containers.push(ContainerState {
            id: id.to_owned(),
            image_digest: None,
            started: rng.chance(50),
            record,
        });
    }
    if rng.chance(5)
        && let Some(first) = containers.first().cloned()
    {
        containers.push(first); // the same id twice: the host cannot make this, the agent's
        // state could only by a bug, and the Rego's entry_of then conflicts
    }
    // What the agent remembers starting: usually the started ones, sometimes removed ones too
    // (the host removed them), sometimes less (a state a test hand-made).
    let mut ever_started = Vec::new();
    if rng.chance(80) {
        for c in containers.iter().filter(|c| c.started) {
            coffer_policies::note_started(&mut ever_started, &c.id);
        }
    }
    if rng.chance(25) {
        let id = *rng.pick(&["gone", "c1", "c2"]);
        coffer_policies::note_started(&mut ever_started, id);
    }
    SandboxState {
        containers,
        ever_started,
    }
}

fn request(rng: &mut Rng, data: &Value, state: &SandboxState) -> Request {
    let entries = data["containers"].as_array().unwrap();
    let container_id = (*rng.pick(&CONTAINER_IDS)).to_owned();
    let exec_id = rng.chance(30).then(|| "e1".to_owned());
    match rng.below(15) {
        0..=5 => Request::CreateContainer(Box::new(create(rng, data))),
        13 => create_sandbox(rng),
        6 | 7 => {
            // Usually a container the state records as admitted by an entry, with that entry's
            // process: the case the exec rules actually have to check.
            let admitted: Vec<(&ContainerState, &Value)> = state
                .containers
                .iter()
                .filter_map(|c| {
                    let name = c.record.get("entry")?;
                    entries.iter().find(|e| e["name"] == **name).map(|e| (c, e))
                })
                .collect();
            let (container_id, e) = if rng.chance(80) && !admitted.is_empty() {
                let (c, e) = *rng.pick(&admitted);
                (c.id.clone(), e)
            } else {
                (container_id, rng.pick(entries))
            };
            let listed = e
                .get("exec")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let args = if rng.chance(80) && !listed.is_empty() {
                rng.pick(&listed)
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect()
            } else {
                argv(rng, &EXECS)
            };
            let mut process = process_for(rng, e, args);
            if rng.chance(50) {
                mutate_process(rng, &mut process);
            }
            Request::ExecProcess {
                container_id,
                exec_id: "e1".into(),
                process: Box::new(process),
            }
        }
        8 => Request::ReadStdout {
            container_id,
            exec_id,
        },
        9 => Request::ReadStderr {
            container_id,
            exec_id,
        },
        10 => {
            if rng.chance(50) {
                Request::WriteStdin {
                    container_id,
                    exec_id,
                }
            } else {
                Request::CloseStdin {
                    container_id,
                    exec_id,
                }
            }
        }
        11 => Request::StartContainer { container_id },
        12 => Request::PullImage {
            container_id,
            image: (*rng.pick(&IMAGES)).to_owned(),
        },
        _ => rng.pick(&common::one_of_each()).clone(),
    }
}

/// Thousands of generated inputs: the fast path never allows what the interpreter denies, records
/// what it records, and answers almost every request the interpreter allows.
#[test]
fn fast_path_never_allows_what_the_rego_denies() {
    let mut rng = Rng(0x00C0_FFEE);
    let (mut fast, mut interpreted_allows, mut missed) = (0usize, 0usize, Vec::new());
    let mut network_set_up = 0usize;
    let mut by_kind: BTreeMap<&'static str, (usize, usize, usize)> = BTreeMap::new();
    for _ in 0..150 {
        let data = policy_data(&mut rng);
        let engine = Engine::new(
            CONFIDENTIAL_POLICY,
            Some(&data.to_string()),
            Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}: {data}"));
        assert!(engine.has_fast_path(), "{data}");
        for _ in 0..30 {
            let state = state(&mut rng);
            let input = PolicyInput::new(request(&mut rng, &data, &state), state);
            let interpreted = engine.decide_interpreted(&input);
            let native = engine.decide_fast_path(&input);
            let counts = by_kind.entry(input.request.name()).or_default();
            counts.2 += 1;
            if let Some(native) = &native {
                assert_eq!(
                    native,
                    &interpreted,
                    "the fast path allowed what the Rego decides otherwise\ndata {data}\ninput {}",
                    serde_json::to_string(&input).unwrap()
                );
                fast += 1;
                counts.0 += 1;
                network_set_up += usize::from(native.record.contains_key("network"));
            }
            if interpreted.allowed {
                interpreted_allows += 1;
                counts.1 += 1;
                if native.is_none() {
                    missed.push(serde_json::to_string(&input).unwrap());
                }
            }
        }
    }
    println!("fast-path allows / interpreter allows / generated, by kind: {by_kind:?}");
    println!("{fast} fast-path allows of {interpreted_allows} allows; missed {missed:?}");
    // Not vacuous: the generator yields allows of every kind with checks, and the fast path
    // answers all of them except where the state names a container twice (`entry_of` is then a
    // conflict or a duplicate the fast path does not model).
    for kind in [
        "CreateSandbox",
        "CreateContainer",
        "ExecProcess",
        "ReadStdout",
        "WriteStdin",
        "StartContainer",
        "PullImage",
    ] {
        let (native, allowed, _) = by_kind.get(kind).copied().unwrap_or_default();
        assert!(allowed >= 10, "only {allowed} allowed {kind} generated");
        assert!(native > 0, "no {kind} on the fast path");
    }
    assert!(
        network_set_up > 0,
        "no network set-up container was admitted"
    );
    assert!(
        missed.len() * 50 <= interpreted_allows,
        "the fast path missed {} of {interpreted_allows} allows",
        missed.len()
    );
}

/// Only the shipped policy, byte for byte, has a fast path.
#[test]
fn an_edited_policy_is_interpreted() {
    let data = json!({"containers": []}).to_string();
    let shipped = Engine::new(CONFIDENTIAL_POLICY, Some(&data), Limits::default()).unwrap();
    assert!(shipped.has_fast_path());
    let edited = format!("{CONFIDENTIAL_POLICY}\n# edited\n");
    let engine = Engine::new(&edited, Some(&data), Limits::default()).unwrap();
    assert!(!engine.has_fast_path());
    let input = PolicyInput::new(Request::GetGuestDetails, SandboxState::default());
    assert!(engine.decide_fast_path(&input).is_none());
    assert!(engine.decide(&input).allowed);
    let sandbox = Engine::new(coffer_policies::SANDBOX_POLICY, None, Limits::default()).unwrap();
    assert!(!sandbox.has_fast_path());
}

/// The input size cap holds on the fast path too: an oversized allowed request is denied by the
/// interpreter's check, with the same reason.
#[test]
fn input_size_cap_applies_to_the_fast_path() {
    let limits = Limits {
        max_input_bytes: 200,
        ..Limits::default()
    };
    let engine = Engine::new(CONFIDENTIAL_POLICY, None, limits).unwrap();
    let small = PolicyInput::new(Request::GetGuestDetails, SandboxState::default());
    assert!(engine.decide_fast_path(&small).is_some());
    let large = PolicyInput::new(
        Request::CreateSandbox {
            sandbox_id: "s".repeat(300),
            hostname: None,
            registry_tunnels: vec![],
            published_ports: vec![],
            network: None,
        },
        SandboxState::default(),
    );
    assert!(engine.decide_fast_path(&large).is_none());
    let d = common::decide(&engine, &large);
    assert!(!d.allowed);
    assert!(d.reason.starts_with("policy input is "), "{}", d.reason);
}

/// A request with more mounts than the fast path compares goes to the interpreter (its evaluation
/// timer bounds the work), which decides it as ever.
#[test]
fn long_mount_lists_are_interpreted() {
    let image = IMAGES[0];
    let data = json!({"containers": [{"name": "app", "image": image, "args": ["/app"]}]});
    let engine = Engine::new(
        CONFIDENTIAL_POLICY,
        Some(&data.to_string()),
        Limits::default(),
    )
    .unwrap();
    let process = Process {
        args: strings(&["/app"]),
        env: vec![],
        cwd: "/".into(),
        user: User { uid: 0, gid: 0 },
        terminal: false,
        capabilities: Capabilities::default(),
        no_new_privileges: true,
    };
    let mut c = common::image_container(image, process);
    let input = |c: &CreateContainer| {
        PolicyInput::new(
            Request::CreateContainer(Box::new(c.clone())),
            SandboxState::default(),
        )
    };
    assert!(engine.decide_fast_path(&input(&c)).is_some());
    while c.mounts.len() <= 256 {
        c.mounts
            .push(common::mount("/proc", "proc", "proc", &["nosuid"]));
    }
    assert!(engine.decide_fast_path(&input(&c)).is_none());
    assert!(common::decide(&engine, &input(&c)).allowed);
}
